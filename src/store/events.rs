//! The outbox payloads of a service request, one type per event. Serialized here and only
//! here ([`RequestEvent::payload`]); read back with the same types ([`RequestState`]) by
//! whoever consumes them (GraphQL subscriptions, the ops feed). The JSON keys are the
//! contract with the stream's consumers: camelCase, statuses and outcomes in capitals.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{CancelledBy, OfferOutcome, ServiceRequest, StrikeKind};
use crate::domain::Status;

/// The `aggregateType` of service request events.
pub const SERVICE_REQUEST: &str = "service_request";

/// The `aggregateType` of payout events.
pub const PAYOUT: &str = "payout";

/// `PayoutReleased` (aggregate `payout`): the worker's money left the cancellation window.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PayoutReleased {
    pub payout_id: Uuid,
    pub request_id: Uuid,
    pub worker_id: Uuid,
    pub amount_cents: i64,
    pub currency: String,
    pub released_at: Option<DateTime<Utc>>,
}

/// The request's state after the change, carried by every service request event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestState {
    pub request_id: Uuid,
    pub customer_id: Option<Uuid>,
    pub city_id: Option<String>,
    pub status: Status,
    pub version: i32,
    pub assignment_attempts: i32,
    pub worker_timeout_at: Option<DateTime<Utc>>,
    pub assigned_worker_id: Option<Uuid>,
}

impl RequestState {
    pub fn of(row: &ServiceRequest) -> RequestState {
        RequestState {
            request_id: row.id,
            customer_id: row.customer_id,
            city_id: row.city_id.clone(),
            status: row.status,
            version: row.version,
            assignment_attempts: row.assignment_attempts,
            worker_timeout_at: row.worker_timeout_at,
            assigned_worker_id: row.assigned_worker_id,
        }
    }

    /// Reads the state part of any service request event's payload.
    pub fn decode(payload: &serde_json::Value) -> Result<RequestState, serde_json::Error> {
        RequestState::deserialize(payload)
    }
}

/// `ServiceRequestCreated`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Created {
    pub price_total_cents: Option<i64>,
    pub pricing_engine: Option<String>,
}

/// `OfferSent`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OfferSent {
    pub offer_id: Uuid,
    pub worker_id: Uuid,
    pub attempt: i32,
    pub expires_at: DateTime<Utc>,
    pub distance_meters: f64,
    pub radius_meters: i32,
}

/// `OfferRejected` and `OfferExpired`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OfferSettled {
    pub offer_id: Uuid,
    /// Added by the database in the transition's statement (the worker who held it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<Uuid>,
    pub outcome: OfferOutcome,
    pub reason: Option<String>,
}

/// `WorkerAssigned`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerAssigned {
    pub offer_id: Uuid,
    pub worker_id: Uuid,
    /// Parallel offers: the other workers of the batch, told `offer_withdrawn` (`taken`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub withdrawn_from_worker_ids: Vec<Uuid>,
}

/// `DispatchOpened`: a booked request reached its dispatch time.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DispatchOpened {
    pub scheduled_start: Option<DateTime<Utc>>,
    pub scheduled_end: Option<DateTime<Utc>>,
}

/// `AssignmentReleased`: the assigned worker cancelled or did not show up; the request is
/// back in dispatch without them.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AssignmentReleased {
    pub worker_id: Uuid,
    /// The accepted offer, now RELEASED or NO_SHOW.
    pub offer_id: Option<Uuid>,
    pub kind: StrikeKind,
    pub reason: Option<String>,
}

/// `ServiceRequestUnassigned`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Unassigned {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub withdrawn_from_worker_id: Option<Uuid>,
    pub reason: String,
}

/// `ServiceRequestCancelled`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Cancelled {
    /// The held payout a dispute cancelled (a completed job cancelled inside its window).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payout_cancelled_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub withdrawn_from_worker_id: Option<Uuid>,
    pub cancelled_by: CancelledBy,
    pub reason: Option<String>,
    pub cancellation_fee_cents: i64,
}

/// `JobStarted`: the state says it all.
#[derive(Debug, Clone, Serialize)]
pub struct JobStarted {}

/// `JobCompleted`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobCompleted {
    pub payout_id: Uuid,
    pub payout_amount_cents: Option<i64>,
    pub payout_release_at: DateTime<Utc>,
}

/// One event: the state after the change and what the change itself recorded, flattened
/// into one JSON object.
#[derive(Debug, Serialize)]
pub struct RequestEvent<'a, D: Serialize> {
    #[serde(flatten)]
    pub state: RequestState,
    #[serde(flatten)]
    pub detail: &'a D,
}

impl<D: Serialize> RequestEvent<'_, D> {
    /// The `payload` column.
    pub fn payload(row: &ServiceRequest, detail: &D) -> serde_json::Value {
        serde_json::to_value(RequestEvent {
            state: RequestState::of(row),
            detail,
        })
        .expect("event payloads always serialize")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_keep_the_published_keys_and_decode_into_the_state() {
        let state = RequestState {
            request_id: Uuid::nil(),
            customer_id: None,
            city_id: Some("buenos-aires".into()),
            status: Status::Offering,
            version: 2,
            assignment_attempts: 1,
            worker_timeout_at: None,
            assigned_worker_id: None,
        };
        let detail = OfferSent {
            offer_id: Uuid::nil(),
            worker_id: Uuid::nil(),
            attempt: 1,
            expires_at: DateTime::<Utc>::MIN_UTC,
            distance_meters: 12.5,
            radius_meters: 2000,
        };
        let value = serde_json::to_value(RequestEvent {
            state: state.clone(),
            detail: &detail,
        })
        .unwrap();
        for key in [
            "requestId",
            "customerId",
            "cityId",
            "status",
            "version",
            "assignmentAttempts",
            "workerTimeoutAt",
            "assignedWorkerId",
            "offerId",
            "workerId",
            "attempt",
            "expiresAt",
            "distanceMeters",
            "radiusMeters",
        ] {
            assert!(value.get(key).is_some(), "{key} missing in {value}");
        }
        assert_eq!(value["status"], "OFFERING");
        assert_eq!(RequestState::decode(&value).unwrap(), state);
    }
}
