//! arreglame: the realtime dispatch engine of the Arreglame Ya home-services marketplace.
//!
//! See `docs/architecture.md` for the modules and how a request flows through them.

pub mod api;
pub mod auth;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod dispatch;
pub mod domain;
pub mod gateway;
pub mod identity;
pub mod jobs;
pub mod ops;
pub mod pricing;
pub mod sim;
pub mod startup;
pub mod store;
pub mod telemetry;
