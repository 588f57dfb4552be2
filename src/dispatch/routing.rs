//! Commands that reach a city's owner from another cluster node (docs/scale-out.md).
//!
//! Alone, a node owns every city and nothing here runs. In a cluster, a command for a city
//! this node does not own (a worker going online there, an accept, a GraphQL cancel) is a
//! [`RoutedCommand`] sent through the [`OwnerLink`] to the one node that owns the city; that
//! node runs it with [`Dispatcher::execute_local`], which never forwards again (a node that
//! lost the city meanwhile answers `NotOwner`, retryable). The `cluster` module implements
//! the link over NATS; dispatch only sees this narrow interface.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{city::CityError, CommandError, Dispatcher};
use crate::store::{CancelledBy, ServiceRequest};

/// What one node asks a city's owner to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum RoutedCommand {
    /// A worker connected to the sender comes online in the owner's city (the owner reads
    /// the worker's jobs and pending offer itself, as for a local worker).
    WorkerOnline {
        city_id: String,
        worker_id: Uuid,
        lon: f64,
        lat: f64,
        skills: Vec<String>,
    },
    WorkerOffline {
        city_id: String,
        worker_id: Uuid,
    },
    /// A request the sender just stored: the owner starts its actor (which reads the row).
    StartDispatch {
        request_id: Uuid,
    },
    AcceptOffer {
        worker_id: Uuid,
        request_id: Uuid,
        offer_id: Uuid,
    },
    RejectOffer {
        worker_id: Uuid,
        request_id: Uuid,
        offer_id: Uuid,
        reason: Option<String>,
    },
    StartJob {
        worker_id: Uuid,
        request_id: Uuid,
    },
    CompleteJob {
        worker_id: Uuid,
        request_id: Uuid,
    },
    CancelAssignment {
        worker_id: Uuid,
        request_id: Uuid,
        reason: Option<String>,
    },
    Cancel {
        request_id: Uuid,
        by: CancelledBy,
        reason: Option<String>,
    },
}

impl RoutedCommand {
    /// The metric label of the command.
    pub fn kind(&self) -> &'static str {
        match self {
            RoutedCommand::WorkerOnline { .. } => "worker_online",
            RoutedCommand::WorkerOffline { .. } => "worker_offline",
            RoutedCommand::StartDispatch { .. } => "start_dispatch",
            RoutedCommand::AcceptOffer { .. } => "accept_offer",
            RoutedCommand::RejectOffer { .. } => "reject_offer",
            RoutedCommand::StartJob { .. } => "start_job",
            RoutedCommand::CompleteJob { .. } => "complete_job",
            RoutedCommand::CancelAssignment { .. } => "cancel_assignment",
            RoutedCommand::Cancel { .. } => "cancel",
        }
    }
}

/// The owner's answer to a [`RoutedCommand`] that it ran.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "answer", content = "data", rename_all = "snake_case")]
pub enum RoutedAnswer {
    Done,
    /// The request's row after the command (accept, start, complete, cancel).
    Request(Box<ServiceRequest>),
    /// What the owner's city actor said to a worker going online.
    Online(Result<(), CityError>),
}

impl RoutedAnswer {
    pub(super) fn request(self) -> Result<ServiceRequest, CommandError> {
        match self {
            RoutedAnswer::Request(row) => Ok(*row),
            other => Err(unexpected(other)),
        }
    }

    pub(super) fn done(self) -> Result<(), CommandError> {
        match self {
            RoutedAnswer::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }
}

fn unexpected(answer: RoutedAnswer) -> CommandError {
    CommandError::Internal(format!("the owner answered {answer:?}"))
}

/// How a node reaches the owners of the cities it does not own.
#[async_trait::async_trait]
pub trait OwnerLink: Send + Sync + 'static {
    /// Runs `command` on the node that owns `city_id` and returns its answer. No owner
    /// reachable now: `NotOwner` (retryable: a takeover is under way); no answer in time:
    /// `Unavailable`.
    async fn forward(
        &self,
        city_id: &str,
        command: RoutedCommand,
    ) -> Result<RoutedAnswer, CommandError>;

    /// A worker's position, fire and forget (a lost one is replaced by the next, seconds
    /// later).
    fn moved(&self, city_id: &str, worker_id: Uuid, lon: f64, lat: f64);
}

/// The gateway's side of a takeover: the workers this node's sessions hold online in a
/// city are announced again, to the city's new owner.
#[async_trait::async_trait]
pub trait Presence: Send + Sync + 'static {
    /// Announces every worker online in `city_id` on this node again; returns how many.
    async fn reannounce(&self, dispatcher: &Dispatcher, city_id: &str) -> usize;
}
