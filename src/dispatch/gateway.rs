//! How dispatch talks to workers. The WebSocket gateway implements [`WorkerGateway`]; tests
//! and the in-process engine use [`InProcessGateway`], which records every notice.
//!
//! Methods do not wait: a slow phone must never stall a request actor. Delivery guarantees
//! come from the database (an offer is persisted before it is pushed; a reconnecting worker
//! resumes its pending offer), not from this call.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::domain::{Position, Status};

/// Everything a worker needs to decide on an offer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OfferNotice {
    pub offer_id: Uuid,
    pub request_id: Uuid,
    pub worker_id: Uuid,
    pub attempt: i32,
    pub expires_at: DateTime<Utc>,
    pub description: String,
    pub square_meters: f64,
    pub worker_net_cents: i64,
    pub currency: String,
    pub distance_meters: f64,
    /// Neighbourhood-level area (address without the street number is not known here:
    /// the city and a rounded position).
    pub area: String,
    pub latitude: f64,
    pub longitude: f64,
    /// The booked slot, for a booked job.
    pub scheduled_start: Option<DateTime<Utc>>,
    pub scheduled_end: Option<DateTime<Utc>>,
}

/// The offer side of an [`OfferNotice`].
#[derive(Debug, Clone, Copy)]
pub struct OfferParts {
    pub offer_id: Uuid,
    pub request_id: Uuid,
    pub worker_id: Uuid,
    pub attempt: i32,
    pub expires_at: DateTime<Utc>,
    pub distance_meters: f64,
}

/// The job side of an [`OfferNotice`], as the request's row has it.
#[derive(Debug, Clone, Copy)]
pub struct JobParts<'a> {
    pub description: Option<&'a str>,
    pub square_meters: Option<f64>,
    pub worker_net_cents: Option<i64>,
    pub currency: &'a str,
    pub position: Option<Position>,
    /// The city's name (the notice says where, not the address).
    pub area: &'a str,
    pub slot: Option<(DateTime<Utc>, DateTime<Utc>)>,
}

impl OfferNotice {
    /// The one way an offer notice is made (a fresh offer, or one resumed after a
    /// reconnect): the job's position rounded to about 100 m, since the exact address is
    /// shared only after acceptance.
    pub fn new(offer: OfferParts, job: JobParts<'_>) -> OfferNotice {
        let place = job
            .position
            .map(Position::rounded_for_privacy)
            .unwrap_or(Position { lon: 0.0, lat: 0.0 });
        OfferNotice {
            offer_id: offer.offer_id,
            request_id: offer.request_id,
            worker_id: offer.worker_id,
            attempt: offer.attempt,
            expires_at: offer.expires_at,
            description: job.description.unwrap_or_default().to_string(),
            square_meters: job.square_meters.unwrap_or_default(),
            worker_net_cents: job.worker_net_cents.unwrap_or_default(),
            currency: job.currency.to_string(),
            distance_meters: offer.distance_meters,
            area: job.area.to_string(),
            latitude: place.lat,
            longitude: place.lon,
            scheduled_start: job.slot.map(|(start, _)| start),
            scheduled_end: job.slot.map(|(_, end)| end),
        }
    }
}

/// What dispatch tells a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WorkerNotice {
    Offer(OfferNotice),
    OfferWithdrawn {
        worker_id: Uuid,
        offer_id: Uuid,
        request_id: Uuid,
        /// `expired`, `cancelled`, `unassigned`, or `taken` (parallel offers: another
        /// worker accepted first).
        reason: String,
    },
    AssignmentConfirmed {
        worker_id: Uuid,
        offer_id: Uuid,
        request_id: Uuid,
    },
    JobUpdate {
        worker_id: Uuid,
        request_id: Uuid,
        status: Status,
    },
    /// A booked job the worker accepted starts soon (`job_reminder_minutes` before the slot).
    JobReminder {
        worker_id: Uuid,
        request_id: Uuid,
        scheduled_start: DateTime<Utc>,
        scheduled_end: DateTime<Utc>,
    },
    /// The job was taken back from the worker (`no_show`: not started within
    /// `no_show_grace_minutes` after the slot start).
    AssignmentRevoked {
        worker_id: Uuid,
        request_id: Uuid,
        reason: String,
    },
}

impl WorkerNotice {
    pub fn worker_id(&self) -> Uuid {
        match self {
            WorkerNotice::Offer(o) => o.worker_id,
            WorkerNotice::OfferWithdrawn { worker_id, .. }
            | WorkerNotice::AssignmentConfirmed { worker_id, .. }
            | WorkerNotice::JobUpdate { worker_id, .. }
            | WorkerNotice::JobReminder { worker_id, .. }
            | WorkerNotice::AssignmentRevoked { worker_id, .. } => *worker_id,
        }
    }
}

/// Pushes notices to workers.
pub trait WorkerGateway: Send + Sync + 'static {
    fn notify(&self, notice: WorkerNotice);

    /// True when this gateway holds a live connection of the worker. A cluster node asks
    /// before pushing: a worker connected to another node is reached over NATS instead.
    fn has_session(&self, _worker_id: Uuid) -> bool {
        true
    }
}

/// Sends every notice down a channel: the engine without WebSockets, and tests.
#[derive(Clone)]
pub struct InProcessGateway {
    tx: mpsc::UnboundedSender<WorkerNotice>,
}

impl InProcessGateway {
    pub fn new() -> (InProcessGateway, mpsc::UnboundedReceiver<WorkerNotice>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (InProcessGateway { tx }, rx)
    }
}

impl WorkerGateway for InProcessGateway {
    fn notify(&self, notice: WorkerNotice) {
        tracing::debug!(target: "Gateway", ?notice, "worker notice");
        let _ = self.tx.send(notice);
    }
}
