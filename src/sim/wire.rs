//! The worker protocol as the simulated app speaks it (docs/worker-protocol.md): one type
//! per frame it sends, one per frame it reads. The engine's own types (`gateway::protocol`)
//! decode the other direction and sit in a layer the simulator may not import.

use chrono::{DateTime, Utc};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

/// An app → engine envelope.
#[derive(Serialize)]
struct Outbound<'a, T: Serialize> {
    v: u8,
    #[serde(rename = "type")]
    kind: &'static str,
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<T>,
}

/// One app → engine message: its `type` and its `data`.
pub trait ClientFrame: Serialize {
    const KIND: &'static str;

    /// The text frame for this message, answered with `replyTo` = `id`.
    fn frame(&self, id: &str) -> Message {
        let text = serde_json::to_string(&Outbound {
            v: 1,
            kind: Self::KIND,
            id,
            data: Some(self),
        })
        .expect("client frames serialize");
        Message::text(text)
    }
}

macro_rules! client_frame {
    ($ty:ty, $kind:literal) => {
        impl ClientFrame for $ty {
            const KIND: &'static str = $kind;
        }
    };
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Auth<'a> {
    pub token: &'a str,
    pub last_seq: u64,
}
client_frame!(Auth<'_>, "auth");

#[derive(Serialize)]
pub struct GoOnline<'a> {
    pub lat: f64,
    pub lon: f64,
    pub skills: &'a [&'a str],
}
client_frame!(GoOnline<'_>, "go_online");

#[derive(Serialize)]
pub struct GoOffline {}
client_frame!(GoOffline, "go_offline");

#[derive(Serialize)]
pub struct Location {
    pub lat: f64,
    pub lon: f64,
    pub accuracy: f64,
    pub timestamp: DateTime<Utc>,
}
client_frame!(Location, "location");

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AckOffer {
    pub offer_id: Uuid,
}
client_frame!(AckOffer, "ack_offer");

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AcceptOffer {
    pub offer_id: Uuid,
    pub request_id: Uuid,
    pub idempotency_key: String,
}
client_frame!(AcceptOffer, "accept_offer");

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RejectOffer {
    pub offer_id: Uuid,
    pub request_id: Uuid,
    pub reason: &'static str,
}
client_frame!(RejectOffer, "reject_offer");

/// A job step: the job named by its request, nothing else.
macro_rules! job_step {
    ($ty:ident, $kind:literal) => {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        pub struct $ty {
            pub request_id: Uuid,
        }
        client_frame!($ty, $kind);
    };
}

job_step!(StartJob, "start_job");
job_step!(CompleteJob, "complete_job");

/// The worker gives an accepted job back (issue 15): it counts against them.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CancelAssignment {
    pub request_id: Uuid,
    pub reason: &'static str,
}
client_frame!(CancelAssignment, "cancel_assignment");

#[derive(Serialize)]
pub struct Ping {}
client_frame!(Ping, "ping");

// ---- engine → app -----------------------------------------------------------------------

/// An engine → app envelope; `data` is decoded by `type` with [`Envelope::data`].
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub reply_to: Option<String>,
    #[serde(default)]
    pub data: Value,
}

impl Envelope {
    pub fn parse(text: &str) -> Option<Envelope> {
        serde_json::from_str(text).ok()
    }

    /// The body as the type its `type` announces; `None` when it does not fit (an engine
    /// newer than this client adds fields, never removes them, so that is a bug to count).
    pub fn data<T: DeserializeOwned>(&self) -> Option<T> {
        T::deserialize(&self.data).ok()
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthOk {
    #[serde(default)]
    pub heartbeat_interval_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Offer {
    pub offer_id: Uuid,
    pub request_id: Uuid,
    #[serde(default)]
    pub seq: u64,
    pub job: OfferJob,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OfferJob {
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub distance_meters: Option<f64>,
    /// A booked job's slot (null for a job wanted now).
    #[serde(default)]
    pub scheduled_start: Option<DateTime<Utc>>,
}

/// `assignment_confirmed`, `offer_withdrawn`: an offer of a request.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OfferEvent {
    pub offer_id: Uuid,
    pub request_id: Uuid,
}

/// `job_update`, `assignment_revoked`, `job_reminder` and the `ok` answers about a job.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobEvent {
    pub request_id: Uuid,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct ErrorBody {
    #[serde(default)]
    pub code: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_frame_carries_version_type_id_and_camel_case_data() {
        let request_id = Uuid::nil();
        let Message::Text(text) = (CancelAssignment {
            request_id,
            reason: "simulated",
        })
        .frame("m7") else {
            panic!("a text frame")
        };
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["v"], 1);
        assert_eq!(v["type"], "cancel_assignment");
        assert_eq!(v["id"], "m7");
        assert_eq!(v["data"]["requestId"], request_id.to_string());
        assert_eq!(v["data"]["reason"], "simulated");
    }

    #[test]
    fn an_offer_frame_reads_distance_and_slot() {
        let text = r#"{"v":1,"type":"offer","data":{"seq":5,"offerId":"00000000-0000-0000-0000-000000000001",
            "requestId":"00000000-0000-0000-0000-000000000002","attempt":1,"expiresAt":"2026-03-14T15:14:26.535Z",
            "job":{"description":"x","distanceMeters":458.3,"workerNetCents":1275000,
                   "scheduledStart":"2026-03-14T16:00:00.000Z","scheduledEnd":"2026-03-14T18:00:00.000Z"}}}"#;
        let env = Envelope::parse(text).unwrap();
        assert_eq!(env.kind, "offer");
        let offer: Offer = env.data().unwrap();
        assert_eq!(offer.seq, 5);
        assert_eq!(offer.job.distance_meters, Some(458.3));
        assert!(offer.job.scheduled_start.is_some());
        let now_job = r#"{"type":"offer","data":{"offerId":"00000000-0000-0000-0000-000000000001",
            "requestId":"00000000-0000-0000-0000-000000000002","job":{"scheduledStart":null}}}"#;
        let offer: Offer = Envelope::parse(now_job).unwrap().data().unwrap();
        assert_eq!(offer.job.scheduled_start, None);
    }
}
