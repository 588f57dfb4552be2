//! The wire protocol of `/ws/worker`, version 1: JSON text frames in one envelope,
//! `{"v":1,"type":"…","id":"…","data":{…}}` from the worker and
//! `{"v":1,"type":"…","replyTo":"…","data":{…}}` from the engine.
//!
//! This file only translates between bytes and typed messages; what a message does is the
//! session's business (`session.rs`). `docs/worker-protocol.md` is the developer-facing
//! description of the same contract and `docs/asyncapi.yaml` the machine-readable one.

use chrono::{DateTime, Utc};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::{
    auth::AuthError,
    dispatch::{city::CityError, gateway::OfferNotice, CommandError},
    domain::Status,
};

/// The only protocol version this engine speaks.
pub const PROTOCOL_VERSION: u64 = 1;
/// Longest message id the engine echoes back in `replyTo`.
pub const MAX_ID_CHARS: usize = 64;
/// Longest idempotency key of `accept_offer`.
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 64;
/// Longest reject reason kept.
pub const MAX_REASON_CHARS: usize = 500;
/// Most skills one `go_online` may declare, and the longest skill name.
pub const MAX_SKILLS: usize = 32;
pub const MAX_SKILL_CHARS: usize = 64;

/// Close codes the engine sends. 1000–1011 are RFC 6455's; 4000–4999 are this protocol's.
pub mod close {
    /// The engine answered the worker's own close.
    pub const NORMAL: u16 = 1000;
    /// The engine is shutting down: reconnect (with backoff) and resume.
    pub const GOING_AWAY: u16 = 1001;
    /// Authentication failed (missing, late, invalid, expired, wrong role) or an abuse limit
    /// was exceeded.
    pub const POLICY_VIOLATION: u16 = 1008;
    /// A frame larger than the transport limit; the stream cannot be resynchronised.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// A bug on the engine's side.
    pub const INTERNAL_ERROR: u16 = 1011;
    /// Another connection of the same worker took over this one. Do not reconnect from here.
    pub const REPLACED: u16 = 4001;
    /// Nothing arrived within the heartbeat timeout.
    pub const HEARTBEAT_TIMEOUT: u16 = 4002;
    /// The session's token expired: get a fresh token and reconnect.
    pub const TOKEN_EXPIRED: u16 = 4003;
    /// The worker did not read its messages fast enough (send queue full or write stalled).
    pub const SLOW_CONSUMER: u16 = 4004;
    /// The worker's account was deactivated or deleted while connected. Do not reconnect.
    pub const DEACTIVATED: u16 = 4005;
    /// A text frame that is not valid UTF-8 (RFC 6455 §8.1).
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// The engine could not check the worker's identity (its database is unavailable).
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

/// Error codes of `error` frames. The session stays up after every one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// Not JSON text.
    MalformedJson,
    /// JSON, but not an envelope (not an object, `type` missing or not a string, bad `id`).
    InvalidEnvelope,
    /// `v` is missing or not 1.
    UnsupportedVersion,
    /// `type` is not a worker-to-engine message type.
    UnknownType,
    /// A known type whose `data` is missing fields or has fields of the wrong type.
    InvalidMessage,
    /// A binary frame; the protocol is JSON text only.
    BinaryNotSupported,
    /// A text frame above the message size limit (but under the transport limit).
    MessageTooLarge,
    /// Latitude or longitude out of range, or accuracy negative.
    InvalidCoordinates,
    /// The position is outside every served city, or outside the worker's city.
    OutsideServiceArea,
    /// A location update before `go_online`.
    NotOnline,
    /// Too many location updates; this one was dropped.
    RateLimited,
    /// The offer is addressed to another worker.
    NotYourOffer,
    /// The offer expired, was withdrawn, was already answered, or is unknown.
    OfferNotPending,
    /// The job is assigned to another worker.
    NotYourJob,
    /// The request is not in a state that allows the action.
    IllegalState,
    /// No such service request.
    NotFound,
    /// The idempotency key was already used for another offer.
    IdempotencyKeyReused,
    /// The request changed concurrently; retry.
    Conflict,
    /// The request's actor is restarting; retry.
    Unavailable,
    /// The worker's profile has none of the skills `go_online` asked for (or none at all).
    NoMatchingSkills,
    /// `cancel_assignment` after the booked slot started.
    SlotStarted,
    /// An engine fault; retry later.
    Internal,
}

impl ErrorCode {
    /// Errors that say nothing definitive about the offer: not cached for idempotent replay.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            ErrorCode::Conflict | ErrorCode::Unavailable | ErrorCode::Internal
        )
    }
}

/// The body of an `error` frame.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WireError {
    pub code: ErrorCode,
    pub message: String,
}

impl WireError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> WireError {
        WireError {
            code,
            message: message.into(),
        }
    }
}

impl From<CommandError> for WireError {
    fn from(e: CommandError) -> Self {
        let code = match &e {
            CommandError::NotFound => ErrorCode::NotFound,
            CommandError::OfferNotPending => ErrorCode::OfferNotPending,
            CommandError::NotYourOffer => ErrorCode::NotYourOffer,
            CommandError::NotYourJob => ErrorCode::NotYourJob,
            CommandError::IllegalState { .. }
            | CommandError::WindowClosed
            | CommandError::NotInRollout => ErrorCode::IllegalState,
            CommandError::SlotStarted => ErrorCode::SlotStarted,
            CommandError::Conflict => ErrorCode::Conflict,
            CommandError::Unavailable | CommandError::NotOwner { .. } => ErrorCode::Unavailable,
            CommandError::InvalidInput(_) => ErrorCode::InvalidMessage,
            CommandError::Internal(_) => ErrorCode::Internal,
        };
        let message = match e {
            // The detail of an engine fault is for the logs, not for the phone.
            CommandError::Internal(detail) => {
                tracing::error!(target: "Gateway", %detail, "command failed");
                "internal error; retry later".to_string()
            }
            other => other.to_string(),
        };
        WireError { code, message }
    }
}

impl From<CityError> for WireError {
    fn from(e: CityError) -> Self {
        let code = match &e {
            CityError::OutsideServiceArea { .. } => ErrorCode::OutsideServiceArea,
            CityError::InvalidCoordinates => ErrorCode::InvalidCoordinates,
            CityError::NotOnline(_) | CityError::NotAvailable(_) => ErrorCode::NotOnline,
            CityError::Unavailable => ErrorCode::Unavailable,
        };
        WireError::new(code, e.to_string())
    }
}

/// Why the first message did not authenticate (the session closes with 1008 and this text).
pub fn auth_failure_reason(e: &AuthError) -> &'static str {
    match e {
        AuthError::Missing => "auth: token missing",
        AuthError::Expired => "auth: token expired",
        AuthError::Invalid => "auth: invalid token",
        AuthError::WrongRole(_) => "auth: not a worker token",
        AuthError::NotYetValid => "auth: token not valid yet",
        AuthError::UnknownSubject(_) => "auth: unknown worker",
        AuthError::Deactivated(_) => "auth: worker account deactivated",
        AuthError::Unverifiable => "auth: identity check unavailable; retry",
    }
}

// ---- worker → engine --------------------------------------------------------------------

/// `auth`: the first message of every connection (and, later, a token refresh).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Auth {
    pub token: String,
    /// The highest offer `seq` the app has processed; 0 or absent after a fresh install.
    #[serde(default)]
    pub last_seq: u64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GoOnline {
    /// `latitude` is accepted too (the engine's own frames spell positions out).
    #[serde(alias = "latitude")]
    pub lat: f64,
    #[serde(alias = "longitude")]
    pub lon: f64,
    /// The skills to be offered jobs for today: narrows the profile's skills, never widens
    /// them. Absent or empty: every skill on the profile.
    #[serde(default)]
    pub skills: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Location {
    #[serde(alias = "latitude")]
    pub lat: f64,
    #[serde(alias = "longitude")]
    pub lon: f64,
    /// Horizontal accuracy in metres, as the phone reports it.
    #[serde(default)]
    pub accuracy: Option<f64>,
    /// When the phone took the fix (RFC 3339).
    pub timestamp: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OfferRef {
    pub offer_id: Uuid,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AcceptOffer {
    pub offer_id: Uuid,
    pub request_id: Uuid,
    pub idempotency_key: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RejectOffer {
    pub offer_id: Uuid,
    pub request_id: Uuid,
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobRef {
    pub request_id: Uuid,
}

/// `cancel_assignment`: the assigned worker gives the job back before it starts.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CancelAssignment {
    pub request_id: Uuid,
    #[serde(default)]
    pub reason: Option<String>,
}

/// Every worker-to-engine message, validated.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientMsg {
    Auth(Auth),
    GoOnline(GoOnline),
    GoOffline,
    Location(Location),
    AckOffer(OfferRef),
    AcceptOffer(AcceptOffer),
    RejectOffer(RejectOffer),
    StartJob(JobRef),
    CompleteJob(JobRef),
    CancelAssignment(CancelAssignment),
    Ping,
}

impl ClientMsg {
    /// The message's `type`, as the metrics count it.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientMsg::Auth(_) => "auth",
            ClientMsg::GoOnline(_) => "go_online",
            ClientMsg::GoOffline => "go_offline",
            ClientMsg::Location(_) => "location",
            ClientMsg::AckOffer(_) => "ack_offer",
            ClientMsg::AcceptOffer(_) => "accept_offer",
            ClientMsg::RejectOffer(_) => "reject_offer",
            ClientMsg::StartJob(_) => "start_job",
            ClientMsg::CompleteJob(_) => "complete_job",
            ClientMsg::CancelAssignment(_) => "cancel_assignment",
            ClientMsg::Ping => "ping",
        }
    }
}

/// A parsed message and the id to answer it with.
#[derive(Debug, Clone, PartialEq)]
pub struct Inbound {
    pub id: Option<String>,
    pub msg: ClientMsg,
}

/// A message that could not be parsed: the error to answer, and the id and type when they
/// were readable.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    pub id: Option<String>,
    pub kind: Option<String>,
    pub error: WireError,
}

/// Parses and validates one text frame.
pub fn parse(text: &str) -> Result<Inbound, Rejected> {
    let reject = |id: Option<String>, code, message: String| Rejected {
        id,
        kind: None,
        error: WireError::new(code, message),
    };
    let value: Value = serde_json::from_str(text)
        .map_err(|e| reject(None, ErrorCode::MalformedJson, format!("not JSON: {e}")))?;
    let Value::Object(mut envelope) = value else {
        return Err(reject(
            None,
            ErrorCode::InvalidEnvelope,
            "a message is a JSON object".into(),
        ));
    };
    let id = match envelope.remove("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.chars().count() <= MAX_ID_CHARS && !s.contains('\0') => Some(s),
        Some(_) => {
            return Err(reject(
                None,
                ErrorCode::InvalidEnvelope,
                format!("id must be a string of at most {MAX_ID_CHARS} characters, without NUL"),
            ))
        }
    };
    match envelope.get("v") {
        Some(Value::Number(n)) if n.as_u64() == Some(PROTOCOL_VERSION) => {}
        other => {
            return Err(reject(
                id,
                ErrorCode::UnsupportedVersion,
                format!(
                    "this engine speaks protocol version {PROTOCOL_VERSION}; got v = {other:?}"
                ),
            ))
        }
    }
    let kind = match envelope.get("type") {
        Some(Value::String(kind)) => kind.clone(),
        _ => {
            return Err(reject(
                id,
                ErrorCode::InvalidEnvelope,
                "type must be a string".into(),
            ))
        }
    };
    let data = envelope.remove("data").unwrap_or(Value::Null);
    match decode(&kind, data) {
        Ok(msg) => Ok(Inbound { id, msg }),
        Err(error) => Err(Rejected {
            id,
            kind: Some(kind.chars().take(40).collect()),
            error,
        }),
    }
}

fn decode(kind: &str, data: Value) -> Result<ClientMsg, WireError> {
    let msg = match kind {
        "auth" => ClientMsg::Auth(fields(kind, data)?),
        "go_online" => ClientMsg::GoOnline(fields(kind, data)?),
        "go_offline" => ClientMsg::GoOffline,
        "location" => ClientMsg::Location(fields(kind, data)?),
        "ack_offer" => ClientMsg::AckOffer(fields(kind, data)?),
        "accept_offer" => ClientMsg::AcceptOffer(fields(kind, data)?),
        "reject_offer" => ClientMsg::RejectOffer(fields(kind, data)?),
        "start_job" => ClientMsg::StartJob(fields(kind, data)?),
        "complete_job" => ClientMsg::CompleteJob(fields(kind, data)?),
        "cancel_assignment" => ClientMsg::CancelAssignment(fields(kind, data)?),
        "ping" => ClientMsg::Ping,
        other => {
            let shown: String = other.chars().take(40).collect();
            return Err(WireError::new(
                ErrorCode::UnknownType,
                format!("unknown message type {shown:?}"),
            ));
        }
    };
    validate(&msg)?;
    Ok(msg)
}

fn fields<T: DeserializeOwned>(kind: &str, data: Value) -> Result<T, WireError> {
    serde_json::from_value(data)
        .map_err(|e| WireError::new(ErrorCode::InvalidMessage, format!("{kind}: {e}")))
}

fn invalid(message: impl Into<String>) -> WireError {
    WireError::new(ErrorCode::InvalidMessage, message)
}

/// PostgreSQL refuses NUL in text, and no honest client sends one: refused at the door, so
/// a reason or a key never reaches the database (where it failed the request's actor).
fn no_nul(field: &str, value: &str) -> Result<(), WireError> {
    if value.contains('\0') {
        return Err(invalid(format!("{field} must not contain NUL (\\u0000)")));
    }
    Ok(())
}

/// Checks what types alone cannot say.
fn validate(msg: &ClientMsg) -> Result<(), WireError> {
    match msg {
        ClientMsg::Auth(m) => no_nul("auth: token", &m.token)?,
        ClientMsg::AcceptOffer(m) => no_nul("accept_offer: idempotencyKey", &m.idempotency_key)?,
        ClientMsg::RejectOffer(RejectOffer {
            reason: Some(r), ..
        }) => no_nul("reject_offer: reason", r)?,
        ClientMsg::GoOnline(m) => {
            for skill in &m.skills {
                no_nul("go_online: skills", skill)?;
            }
        }
        _ => {}
    }
    match msg {
        ClientMsg::GoOnline(m) => {
            check_position(m.lon, m.lat)?;
            if m.skills.len() > MAX_SKILLS {
                return Err(invalid(format!("go_online: at most {MAX_SKILLS} skills")));
            }
            if m.skills
                .iter()
                .any(|s| s.is_empty() || s.chars().count() > MAX_SKILL_CHARS)
            {
                return Err(invalid(format!(
                    "go_online: a skill is 1 to {MAX_SKILL_CHARS} characters"
                )));
            }
        }
        ClientMsg::Location(m) => {
            check_position(m.lon, m.lat)?;
            if m.accuracy.is_some_and(|a| !(a.is_finite() && a >= 0.0)) {
                return Err(WireError::new(
                    ErrorCode::InvalidCoordinates,
                    "accuracy must be a non-negative number of metres",
                ));
            }
        }
        ClientMsg::AcceptOffer(m) => {
            let len = m.idempotency_key.chars().count();
            if len == 0 || len > MAX_IDEMPOTENCY_KEY_CHARS {
                return Err(invalid(format!(
                    "accept_offer: idempotencyKey is 1 to {MAX_IDEMPOTENCY_KEY_CHARS} characters"
                )));
            }
        }
        ClientMsg::RejectOffer(m)
            if m.reason
                .as_ref()
                .is_some_and(|r| r.chars().count() > MAX_REASON_CHARS) =>
        {
            return Err(invalid(format!(
                "reject_offer: reason is at most {MAX_REASON_CHARS} characters"
            )));
        }
        ClientMsg::CancelAssignment(m)
            if m.reason
                .as_ref()
                .is_some_and(|r| r.chars().count() > MAX_REASON_CHARS) =>
        {
            return Err(invalid(format!(
                "cancel_assignment: reason is at most {MAX_REASON_CHARS} characters"
            )));
        }
        _ => {}
    }
    Ok(())
}

/// Longitude in [-180, 180] and latitude in [-90, 90] (`domain::Position`'s rule; longitude
/// first, as everywhere in the engine).
pub fn check_position(lon: f64, lat: f64) -> Result<crate::domain::Position, WireError> {
    crate::domain::Position::new(lon, lat)
        .map_err(|e| WireError::new(ErrorCode::InvalidCoordinates, e.to_string()))
}

// ---- engine → worker --------------------------------------------------------------------

/// Every timestamp on the wire: RFC 3339, UTC, exactly milliseconds
/// (`2026-12-01T10:00:00.123Z`), so the same instant always reads the same, whether it was
/// just made or read back from the database (microseconds) after a reconnect.
pub mod wire_time {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::Serializer;

    pub fn format(at: &DateTime<Utc>) -> String {
        at.to_rfc3339_opts(SecondsFormat::Millis, true)
    }

    pub fn serialize<S: Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(at))
    }

    pub mod option {
        use super::*;

        pub fn serialize<S: Serializer>(
            at: &Option<DateTime<Utc>>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match at {
                Some(at) => s.serialize_str(&format(at)),
                None => s.serialize_none(),
            }
        }
    }
}

/// The message id of a frame too large to handle, when it can be read (the frame is under
/// the transport limit, so parsing it costs at most that).
pub fn readable_id(text: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct IdOnly {
        id: Option<String>,
    }
    serde_json::from_str::<IdOnly>(text)
        .ok()?
        .id
        .filter(|id| id.chars().count() <= MAX_ID_CHARS && !id.contains('\0'))
}

/// `data` of `pong`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Pong {
    #[serde(with = "wire_time")]
    pub server_time: DateTime<Utc>,
}

/// `data` of the `ok` answering `ack_offer`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Acked {
    pub offer_id: Uuid,
}

/// `data` of the `ok` answering `reject_offer`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RejectedOffer {
    pub offer_id: Uuid,
    pub request_id: Uuid,
}

/// `data` of the `ok` answering `go_online`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Online<'a> {
    pub city_id: &'a str,
    /// The skills the worker is offered jobs for (the profile's, narrowed by the claim).
    pub skills: &'a [String],
    /// Skills the claim named that the profile does not have.
    pub ignored_skills: &'a [String],
}

/// `data` of the `ok` answering `go_offline`.
#[derive(Debug, Serialize)]
pub struct Nothing {}

/// `data` of the `ok` answering `accept_offer`: the job, now with its exact address.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Accepted {
    pub offer_id: Uuid,
    pub request_id: Uuid,
    pub status: Status,
    pub job: AcceptedJob,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AcceptedJob {
    pub description: Option<String>,
    pub address: Option<String>,
    pub latitude: Option<f64>,
    pub longitude: Option<f64>,
    pub square_meters: Option<f64>,
    pub worker_net_cents: Option<i64>,
    pub currency: String,
}

/// `data` of the `ok` answering `start_job` and `complete_job`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobResult {
    pub request_id: Uuid,
    pub status: Status,
}

#[derive(Serialize)]
struct Envelope<'a, T: Serialize> {
    v: u64,
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(rename = "replyTo", skip_serializing_if = "Option::is_none")]
    reply_to: Option<&'a str>,
    data: T,
}

/// One engine-to-worker frame as JSON text (counted by type).
pub fn frame<T: Serialize>(kind: &'static str, reply_to: Option<&str>, data: &T) -> String {
    metrics::counter!("arreglame_ws_messages_total", "direction" => "out", "type" => kind)
        .increment(1);
    serde_json::to_string(&Envelope {
        v: PROTOCOL_VERSION,
        kind,
        reply_to,
        data,
    })
    .expect("protocol frames always serialise")
}

pub fn error_frame(reply_to: Option<&str>, error: &WireError) -> String {
    frame("error", reply_to, error)
}

/// `data` of an `offer` frame.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OfferData<'a> {
    /// Per worker, strictly increasing, 64 bits (milliseconds since 1970 or more).
    pub seq: u64,
    pub offer_id: Uuid,
    pub request_id: Uuid,
    pub attempt: i32,
    #[serde(with = "wire_time")]
    pub expires_at: DateTime<Utc>,
    pub job: JobSummary<'a>,
}

/// What a worker needs to decide on an offer. The position is rounded to about 100 m: the
/// exact address comes with the accept answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobSummary<'a> {
    pub description: &'a str,
    pub square_meters: f64,
    pub worker_net_cents: i64,
    pub currency: &'a str,
    pub distance_meters: f64,
    pub area: &'a str,
    pub latitude: f64,
    pub longitude: f64,
    /// The booked slot; null for a job wanted now.
    #[serde(with = "wire_time::option")]
    pub scheduled_start: Option<DateTime<Utc>>,
    #[serde(with = "wire_time::option")]
    pub scheduled_end: Option<DateTime<Utc>>,
}

/// `data` of `auth_ok`: who the engine thinks you are and the rules of this session.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthOk {
    pub worker_id: Uuid,
    /// This connection's number (for support logs).
    pub session_id: u64,
    pub protocol_version: u64,
    pub heartbeat_interval_ms: u64,
    pub heartbeat_timeout_ms: u64,
    #[serde(with = "wire_time")]
    pub token_expires_at: DateTime<Utc>,
    /// The city the engine still has the worker online in (after a takeover or a quick
    /// reconnect); `null` means send `go_online` to receive offers.
    pub online_city: Option<String>,
    pub limits: SessionLimits,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionLimits {
    pub max_message_bytes: usize,
    pub location_per_second: f64,
    pub location_burst: u32,
    pub messages_per_second: f64,
    pub messages_burst: u32,
}

pub fn offer_frame(offer: &OfferNotice, seq: u64) -> String {
    frame(
        "offer",
        None,
        &OfferData {
            seq,
            offer_id: offer.offer_id,
            request_id: offer.request_id,
            attempt: offer.attempt,
            expires_at: offer.expires_at,
            job: JobSummary {
                description: &offer.description,
                square_meters: offer.square_meters,
                worker_net_cents: offer.worker_net_cents,
                currency: &offer.currency,
                distance_meters: (offer.distance_meters * 10.0).round() / 10.0,
                area: &offer.area,
                latitude: offer.latitude,
                longitude: offer.longitude,
                scheduled_start: offer.scheduled_start,
                scheduled_end: offer.scheduled_end,
            },
        },
    )
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Withdrawn<'a> {
    offer_id: Uuid,
    request_id: Uuid,
    reason: &'a str,
}

pub fn withdrawn_frame(offer_id: Uuid, request_id: Uuid, reason: &str) -> String {
    frame(
        "offer_withdrawn",
        None,
        &Withdrawn {
            offer_id,
            request_id,
            reason,
        },
    )
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Confirmed {
    offer_id: Uuid,
    request_id: Uuid,
}

pub fn confirmed_frame(offer_id: Uuid, request_id: Uuid) -> String {
    frame(
        "assignment_confirmed",
        None,
        &Confirmed {
            offer_id,
            request_id,
        },
    )
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JobUpdate {
    request_id: Uuid,
    status: Status,
}

pub fn job_update_frame(request_id: Uuid, status: Status) -> String {
    frame("job_update", None, &JobUpdate { request_id, status })
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JobReminder {
    request_id: Uuid,
    #[serde(with = "wire_time")]
    scheduled_start: DateTime<Utc>,
    #[serde(with = "wire_time")]
    scheduled_end: DateTime<Utc>,
}

/// `job_reminder`: a booked job the worker accepted starts soon.
pub fn job_reminder_frame(
    request_id: Uuid,
    scheduled_start: DateTime<Utc>,
    scheduled_end: DateTime<Utc>,
) -> String {
    frame(
        "job_reminder",
        None,
        &JobReminder {
            request_id,
            scheduled_start,
            scheduled_end,
        },
    )
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AssignmentRevoked<'a> {
    request_id: Uuid,
    reason: &'a str,
}

/// `assignment_revoked`: the job was taken back from the worker (`no_show`).
pub fn assignment_revoked_frame(request_id: Uuid, reason: &str) -> String {
    frame(
        "assignment_revoked",
        None,
        &AssignmentRevoked { request_id, reason },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn code_of(text: &str) -> ErrorCode {
        parse(text).expect_err(text).error.code
    }

    #[test]
    fn a_cancel_assignment_reason_longer_than_the_limit_is_refused() {
        let long = "x".repeat(MAX_REASON_CHARS + 1);
        let text = format!(
            r#"{{"v":1,"type":"cancel_assignment","id":"1","data":{{"requestId":"{}","reason":"{long}"}}}}"#,
            Uuid::nil()
        );
        assert_eq!(code_of(&text), ErrorCode::InvalidMessage);
    }

    #[test]
    fn every_message_type_parses_with_its_id() {
        let offer = Uuid::new_v4();
        let request = Uuid::new_v4();
        let cases = [
            (
                r#"{"v":1,"type":"auth","id":"1","data":{"token":"t","lastSeq":7}}"#.to_string(),
                ClientMsg::Auth(Auth {
                    token: "t".into(),
                    last_seq: 7,
                }),
            ),
            (
                r#"{"v":1,"type":"go_online","id":"1","data":{"lat":-34.6,"lon":-58.38,"skills":["lawn_mowing"]}}"#.into(),
                ClientMsg::GoOnline(GoOnline {
                    lat: -34.6,
                    lon: -58.38,
                    skills: vec!["lawn_mowing".into()],
                }),
            ),
            (
                r#"{"v":1,"type":"go_offline","id":"1"}"#.into(),
                ClientMsg::GoOffline,
            ),
            (
                format!(r#"{{"v":1,"type":"ack_offer","id":"1","data":{{"offerId":"{offer}"}}}}"#),
                ClientMsg::AckOffer(OfferRef { offer_id: offer }),
            ),
            (
                format!(r#"{{"v":1,"type":"accept_offer","id":"1","data":{{"offerId":"{offer}","requestId":"{request}","idempotencyKey":"k"}}}}"#),
                ClientMsg::AcceptOffer(AcceptOffer {
                    offer_id: offer,
                    request_id: request,
                    idempotency_key: "k".into(),
                }),
            ),
            (
                format!(r#"{{"v":1,"type":"reject_offer","id":"1","data":{{"offerId":"{offer}","requestId":"{request}"}}}}"#),
                ClientMsg::RejectOffer(RejectOffer {
                    offer_id: offer,
                    request_id: request,
                    reason: None,
                }),
            ),
            (
                format!(r#"{{"v":1,"type":"start_job","id":"1","data":{{"requestId":"{request}"}}}}"#),
                ClientMsg::StartJob(JobRef { request_id: request }),
            ),
            (
                format!(r#"{{"v":1,"type":"complete_job","id":"1","data":{{"requestId":"{request}"}}}}"#),
                ClientMsg::CompleteJob(JobRef { request_id: request }),
            ),
            (
                format!(r#"{{"v":1,"type":"cancel_assignment","id":"1","data":{{"requestId":"{request}","reason":"sick"}}}}"#),
                ClientMsg::CancelAssignment(CancelAssignment { request_id: request, reason: Some("sick".into()) }),
            ),
            (r#"{"v":1,"type":"ping","id":"1"}"#.into(), ClientMsg::Ping),
        ];
        for (text, expected) in cases {
            let parsed = parse(&text).unwrap_or_else(|e| panic!("{text}: {e:?}"));
            assert_eq!(parsed.msg, expected, "{text}");
            assert_eq!(parsed.id.as_deref(), Some("1"));
        }
        let loc = parse(r#"{"v":1,"type":"location","data":{"lat":-34.6,"lon":-58.4,"accuracy":8.5,"timestamp":"2026-01-02T03:04:05Z"}}"#).unwrap();
        assert!(
            matches!(loc.msg, ClientMsg::Location(Location { accuracy: Some(a), .. }) if a == 8.5)
        );
        assert_eq!(loc.id, None);
    }

    #[test]
    fn bad_input_is_classified_and_keeps_a_readable_id() {
        assert_eq!(code_of("{not json"), ErrorCode::MalformedJson);
        assert_eq!(code_of(""), ErrorCode::MalformedJson);
        assert_eq!(code_of("[1,2]"), ErrorCode::InvalidEnvelope);
        assert_eq!(code_of(r#"{"v":1,"type":7}"#), ErrorCode::InvalidEnvelope);
        assert_eq!(
            code_of(r#"{"v":1,"type":"ping","id":5}"#),
            ErrorCode::InvalidEnvelope
        );
        assert_eq!(code_of(r#"{"type":"ping"}"#), ErrorCode::UnsupportedVersion);
        assert_eq!(
            code_of(r#"{"v":2,"type":"ping"}"#),
            ErrorCode::UnsupportedVersion
        );
        assert_eq!(
            code_of(r#"{"v":1,"type":"launch"}"#),
            ErrorCode::UnknownType
        );
        assert_eq!(
            code_of(r#"{"v":1,"type":"go_online","data":{"lat":1}}"#),
            ErrorCode::InvalidMessage
        );
        assert_eq!(
            code_of(r#"{"v":1,"type":"ack_offer","data":{"offerId":"nope"}}"#),
            ErrorCode::InvalidMessage
        );
        assert_eq!(
            code_of(r#"{"v":1,"type":"go_online","data":{"lat":91,"lon":0,"skills":[]}}"#),
            ErrorCode::InvalidCoordinates
        );
        assert_eq!(
            code_of(
                r#"{"v":1,"type":"location","data":{"lat":0,"lon":-181,"timestamp":"2026-01-02T03:04:05Z"}}"#
            ),
            ErrorCode::InvalidCoordinates
        );
        assert_eq!(
            code_of(
                r#"{"v":1,"type":"location","data":{"lat":0,"lon":0,"accuracy":-1,"timestamp":"2026-01-02T03:04:05Z"}}"#
            ),
            ErrorCode::InvalidCoordinates
        );
        assert_eq!(
            code_of(
                r#"{"v":1,"type":"location","data":{"lat":0,"lon":0,"timestamp":"yesterday"}}"#
            ),
            ErrorCode::InvalidMessage
        );
        assert_eq!(
            code_of(r#"{"v":1,"type":"go_online","data":{"lat":1e999,"lon":0,"skills":[]}}"#),
            ErrorCode::MalformedJson
        );
        let r = parse(r#"{"v":1,"type":"accept_offer","id":"a-1","data":{"offerId":"00000000-0000-0000-0000-000000000000","requestId":"00000000-0000-0000-0000-000000000000","idempotencyKey":""}}"#).unwrap_err();
        assert_eq!(
            (r.id.as_deref(), r.error.code),
            (Some("a-1"), ErrorCode::InvalidMessage)
        );
        let r = parse(r#"{"v":1,"type":"nope","id":"x"}"#).unwrap_err();
        assert_eq!(r.id.as_deref(), Some("x"));
    }

    #[test]
    fn frames_carry_version_type_and_reply_to() {
        let text = error_frame(Some("9"), &WireError::new(ErrorCode::NotYourOffer, "no"));
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"v":1,"type":"error","replyTo":"9","data":{"code":"NOT_YOUR_OFFER","message":"no"}})
        );
        let v: Value =
            serde_json::from_str(&job_update_frame(Uuid::nil(), Status::InProgress)).unwrap();
        assert_eq!(v["data"]["status"], "IN_PROGRESS");
        assert!(v.get("replyTo").is_none());
    }

    #[test]
    fn command_errors_map_to_codes_without_leaking_internals() {
        let e = WireError::from(CommandError::Internal("db password wrong".into()));
        assert_eq!(e.code, ErrorCode::Internal);
        assert!(!e.message.contains("password"));
        assert_eq!(
            WireError::from(CommandError::NotYourOffer).code,
            ErrorCode::NotYourOffer
        );
        assert!(ErrorCode::Conflict.is_transient() && !ErrorCode::NotYourOffer.is_transient());
    }

    #[test]
    fn engine_timestamps_are_milliseconds_whatever_their_source_precision() {
        let at = DateTime::parse_from_rfc3339("2026-03-14T15:09:26.535123456Z")
            .unwrap()
            .with_timezone(&Utc);
        let pong = frame("pong", None, &Pong { server_time: at });
        assert!(
            pong.contains(r#""serverTime":"2026-03-14T15:09:26.535Z""#),
            "{pong}"
        );
        let whole = DateTime::parse_from_rfc3339("2026-03-14T15:09:26Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(wire_time::format(&whole), "2026-03-14T15:09:26.000Z");
    }

    #[test]
    fn positions_may_be_spelled_out() {
        let text = r#"{"v":1,"type":"go_online","data":{"latitude":-34.6,"longitude":-58.4}}"#;
        let Ok(Inbound {
            msg: ClientMsg::GoOnline(m),
            ..
        }) = parse(text)
        else {
            panic!("{text}")
        };
        assert_eq!((m.lat, m.lon, m.skills.len()), (-34.6, -58.4, 0));
        assert_eq!(
            readable_id(r#"{"id":"big","pad":"xx"}"#).as_deref(),
            Some("big")
        );
        assert_eq!(readable_id("not json"), None);
    }

    /// Pieces of worker frames, valid and hostile, in hostile proportions: deep brackets,
    /// NUL escapes, huge numbers, wrong types, unknown types, every real message type.
    fn hostile_frame() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just(r#"{"v":1,"type":""#.to_string()),
            prop_oneof![
                Just("auth"),
                Just("go_online"),
                Just("go_offline"),
                Just("location"),
                Just("ack_offer"),
                Just("accept_offer"),
                Just("reject_offer"),
                Just("start_job"),
                Just("complete_job"),
                Just("ping"),
                Just("nope"),
            ]
            .prop_map(str::to_string),
            Just(r#"","id":"#.to_string()),
            Just(r#","data":"#.to_string()),
            Just(r#"{"lat":-34.6,"lon":-58.4,"skills":["#.to_string()),
            Just(r#""reason":"\u0000""#.to_string()),
            Just(r#""lastSeq":"#.to_string()),
            Just("18446744073709551616".to_string()),
            Just("-1e400".to_string()),
            Just("[".repeat(200)),
            Just("{\"a\":".repeat(100)),
            Just("]".repeat(50)),
            Just("}".to_string()),
            Just("null".to_string()),
            Just("\"\\ud800\"".to_string()),
            any::<char>().prop_map(String::from),
        ];
        prop::collection::vec(piece, 0..40).prop_map(|p| p.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: crate::telemetry::fuzz_cases(), ..ProptestConfig::default() })]

        /// No frame makes the decoder panic, and every refusal is a typed error whose
        /// message fits an error frame; nothing accepted carries a NUL to the database.
        #[test]
        fn hostile_frames_decode_or_get_a_coded_error(text in hostile_frame()) {
            match parse(&text) {
                Ok(inbound) => {
                    let shown = format!("{:?}", inbound.msg);
                    prop_assert!(!shown.contains('\0'), "a NUL got through: {shown}");
                }
                Err(rejected) => {
                    let frame = error_frame(rejected.id.as_deref(), &rejected.error);
                    let back: Value = serde_json::from_str(&frame).unwrap();
                    prop_assert_eq!(&back["type"], "error");
                    prop_assert!(back["data"]["code"].is_string());
                }
            }
        }
    }
}
