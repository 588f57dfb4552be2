//! The service-request status machine. `TRANSITIONS` is the one table of allowed moves; the
//! database holds the same edges (`service_request_transitions`, checked by a trigger), and a
//! test keeps the two in step.

use serde::{Deserialize, Serialize};

/// Where a service request is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, async_graphql::Enum)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[graphql(rename_items = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    /// Booked for a time slot: waits until `scheduledStart - dispatch_lead_minutes`.
    Scheduled,
    /// Created, or between offers: the engine is looking for a worker.
    Pending,
    /// One worker (or, with parallel offers, several) holds an offer and its timer runs
    /// (`"workerTimeoutAt"`).
    Offering,
    /// A worker accepted.
    Assigned,
    /// The worker started the job.
    InProgress,
    /// The worker finished; a payout waits for the cancellation window.
    Completed,
    /// Cancelled by the customer, ops or the system.
    Cancelled,
    /// Nobody suitable within the largest radius, or max attempts reached.
    Unassigned,
}

impl Status {
    pub const ALL: [Status; 8] = [
        Status::Scheduled,
        Status::Pending,
        Status::Offering,
        Status::Assigned,
        Status::InProgress,
        Status::Completed,
        Status::Cancelled,
        Status::Unassigned,
    ];

    /// The value stored in `service_requests.status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Scheduled => "SCHEDULED",
            Status::Pending => "PENDING",
            Status::Offering => "OFFERING",
            Status::Assigned => "ASSIGNED",
            Status::InProgress => "IN_PROGRESS",
            Status::Completed => "COMPLETED",
            Status::Cancelled => "CANCELLED",
            Status::Unassigned => "UNASSIGNED",
        }
    }

    pub fn parse(text: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// The request's actor stops here: nothing more to dispatch or to follow. (A COMPLETED
    /// request can still be cancelled inside its cancellation window, without an actor.)
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Status::Completed | Status::Cancelled | Status::Unassigned
        )
    }

    /// Still being dispatched: an offer may be made or is out.
    pub fn is_dispatching(self) -> bool {
        matches!(self, Status::Pending | Status::Offering)
    }

    /// Waiting for its dispatch time, or being dispatched: not (or no longer) assigned.
    pub fn is_open_for_dispatch(self) -> bool {
        matches!(self, Status::Scheduled | Status::Pending | Status::Offering)
    }

    /// Applies a command, or says why it is not allowed from here.
    pub fn apply(self, command: Command) -> Result<Status, IllegalTransition> {
        TRANSITIONS
            .iter()
            .find(|(from, cmd, _)| *from == self && *cmd == command)
            .map(|(_, _, to)| *to)
            .ok_or(IllegalTransition {
                from: self,
                command,
            })
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What can happen to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    /// An offer goes to a worker.
    SendOffer,
    /// The worker holding the offer accepts it.
    AcceptOffer,
    /// The worker rejects the offer, or its timer runs out: look for the next worker.
    SettleOffer,
    /// One offer of a parallel batch is rejected or expires while others are still out.
    SettleOneOfMany,
    /// A booked request reaches its dispatch time (`scheduledStart - dispatch_lead_minutes`).
    OpenDispatch,
    /// The assigned worker cancels before the job starts, or does not show up: the request
    /// goes back to dispatch without that worker.
    ReleaseAssignment,
    /// No candidate left within the largest radius, or max attempts reached.
    GiveUp,
    /// Customer, ops or system cancel.
    Cancel,
    StartJob,
    CompleteJob,
}

impl Command {
    pub const ALL: [Command; 10] = [
        Command::SendOffer,
        Command::AcceptOffer,
        Command::SettleOffer,
        Command::SettleOneOfMany,
        Command::OpenDispatch,
        Command::ReleaseAssignment,
        Command::GiveUp,
        Command::Cancel,
        Command::StartJob,
        Command::CompleteJob,
    ];
}

/// The allowed moves: (from, command, to). Anything not listed is refused.
pub const TRANSITIONS: &[(Status, Command, Status)] = &[
    (Status::Scheduled, Command::OpenDispatch, Status::Pending),
    (Status::Scheduled, Command::Cancel, Status::Cancelled),
    (Status::Pending, Command::SendOffer, Status::Offering),
    (Status::Pending, Command::GiveUp, Status::Unassigned),
    (Status::Pending, Command::Cancel, Status::Cancelled),
    // Parallel offers: more offers of the same batch go out while the first is pending.
    (Status::Offering, Command::SendOffer, Status::Offering),
    (Status::Offering, Command::SettleOneOfMany, Status::Offering),
    (Status::Offering, Command::AcceptOffer, Status::Assigned),
    (Status::Offering, Command::SettleOffer, Status::Pending),
    (Status::Offering, Command::GiveUp, Status::Unassigned),
    (Status::Offering, Command::Cancel, Status::Cancelled),
    (Status::Assigned, Command::StartJob, Status::InProgress),
    (Status::Assigned, Command::Cancel, Status::Cancelled),
    (
        Status::Assigned,
        Command::ReleaseAssignment,
        Status::Pending,
    ),
    (Status::InProgress, Command::CompleteJob, Status::Completed),
    // A dispute inside the cancellation window (the payout has not been released yet).
    (Status::Completed, Command::Cancel, Status::Cancelled),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cannot {command:?} a request that is {from}")]
pub struct IllegalTransition {
    pub from: Status,
    pub command: Command,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn any_command() -> impl Strategy<Value = Command> {
        proptest::sample::select(Command::ALL.to_vec())
    }

    proptest! {
        /// Random command sequences never reach an illegal state: every accepted step is an
        /// edge of the table, CANCELLED and UNASSIGNED absorb everything, COMPLETED accepts
        /// only a cancellation, and a request only reaches
        /// ASSIGNED, IN_PROGRESS or COMPLETED through an accepted offer.
        #[test]
        fn random_command_sequences_only_follow_allowed_edges(booked in any::<bool>(), commands in proptest::collection::vec(any_command(), 0..64)) {
            let mut status = if booked { Status::Scheduled } else { Status::Pending };
            let mut accepted = false;
            let mut offers_out = 0u32;
            for command in commands {
                match status.apply(command) {
                    Ok(next) => {
                        prop_assert!(!matches!(status, Status::Cancelled | Status::Unassigned), "{status} accepted {command:?}");
                        if status == Status::Scheduled {
                            prop_assert!(matches!(command, Command::OpenDispatch | Command::Cancel), "a booked request only opens or is cancelled");
                        }
                        if status == Status::Completed {
                            prop_assert_eq!(command, Command::Cancel, "a completed job only accepts a dispute");
                        }
                        prop_assert!(TRANSITIONS.contains(&(status, command, next)));
                        if command == Command::SendOffer { offers_out += 1; }
                        if command == Command::AcceptOffer { accepted = true; prop_assert!(offers_out > 0); }
                        if command == Command::ReleaseAssignment { accepted = false; }
                        if matches!(next, Status::Assigned | Status::InProgress | Status::Completed) {
                            prop_assert!(accepted);
                        }
                        status = next;
                    }
                    Err(e) => {
                        prop_assert_eq!(e.from, status);
                        prop_assert!(!TRANSITIONS.iter().any(|(f, c, _)| *f == status && *c == command));
                    }
                }
            }
        }
    }

    #[test]
    fn every_status_round_trips_through_its_column_value() {
        for s in Status::ALL {
            assert_eq!(Status::parse(s.as_str()), Some(s));
        }
        assert_eq!(Status::parse("offering"), None);
    }

    #[test]
    fn each_from_and_command_pair_has_one_destination() {
        for (i, a) in TRANSITIONS.iter().enumerate() {
            for b in &TRANSITIONS[i + 1..] {
                assert!(!(a.0 == b.0 && a.1 == b.1), "duplicate edge {a:?} {b:?}");
            }
        }
    }
}
