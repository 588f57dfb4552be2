//! Pure types and rules of the marketplace: no I/O here.

pub mod booking;
pub mod cancellation;
pub mod money;
pub mod offer_policy;
pub mod position;
pub mod rate;
pub mod rollout;
pub mod schedule;
pub mod status;

pub use money::{Cents, Ratio};
pub use position::{InvalidPosition, Position};
pub use rollout::RolloutPercentage;
pub use status::{Command, IllegalTransition, Status};
