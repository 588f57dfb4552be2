//! The cancellation policy (docs/cancellation-policy.md): what a customer pays to cancel.

use super::{Cents, Ratio, Status};

/// Cancelling is not allowed from this status (the job has started, or has ended).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a request that is {0} cannot be cancelled")]
pub struct NotCancellable(pub Status);

/// What the customer pays when cancelling from `status`: free while no worker is
/// committed; after assignment, `late_fee` of the total, which compensates the worker who
/// set out; never once the job started. (A completed job's dispute inside its window is a
/// separate, free path: the payout is cancelled instead.)
pub fn cancellation_fee(
    status: Status,
    total: Cents,
    late_fee: Ratio,
) -> Result<Cents, NotCancellable> {
    match status {
        Status::Scheduled | Status::Pending | Status::Offering => Ok(Cents::ZERO),
        Status::Assigned => Ok(total.times(late_fee)),
        other => Err(NotCancellable(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_until_assigned_then_the_late_fee_never_once_started() {
        let total = Cents(1_000_000);
        let fee = Ratio::parse("0.10").unwrap();
        for free in [Status::Scheduled, Status::Pending] {
            assert_eq!(cancellation_fee(free, total, fee), Ok(Cents::ZERO));
        }
        assert_eq!(
            cancellation_fee(Status::Offering, total, fee),
            Ok(Cents::ZERO)
        );
        assert_eq!(
            cancellation_fee(Status::Assigned, total, fee),
            Ok(Cents(100_000))
        );
        for status in [
            Status::InProgress,
            Status::Completed,
            Status::Cancelled,
            Status::Unassigned,
        ] {
            assert_eq!(
                cancellation_fee(status, total, fee),
                Err(NotCancellable(status))
            );
        }
    }
}
