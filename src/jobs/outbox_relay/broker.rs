//! NATS JetStream: the connection (made in the background and re-made by the client), the
//! stream (created when missing), and the publishing of one batch with every ack awaited.
//!
//! Each outcome says who is at fault, because only an event's own fault may count towards
//! parking it: an event the broker refuses ([`Delivery::Refused`]) is charged an attempt;
//! an event that could not be delivered because NATS is down, slow or out of resources
//! ([`Delivery::Undelivered`]) is not, so an outage never parks the backlog.

use std::{sync::Arc, time::Duration};

use async_nats::{
    connection::State,
    jetstream::{
        self,
        context::{CreateStreamErrorKind, GetStreamErrorKind, PublishError, PublishErrorKind},
        message::PublishMessage,
        publish::PublishAck,
        stream, ErrorCode,
    },
    ConnectOptions, Event,
};
use chrono::{DateTime, Utc};
use futures::{
    future::{BoxFuture, FutureExt},
    stream::{FuturesUnordered, StreamExt},
};
use serde::Serialize;
use std::future::IntoFuture;
use tokio::sync::Notify;

use super::{metrics::Counters, retry::Backoff, RelayOptions, PIPELINE_DEPTH};
use crate::store::OutboxEvent;

/// What happened to one event of a batch.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Delivery {
    /// The broker stored it (or recognised it as a duplicate of a stored message).
    Acked { duplicate: bool },
    /// The event cannot be delivered as it is: charged an attempt.
    Refused(String),
    /// NATS could not take it right now: retried later, not charged.
    Undelivered(String),
}

/// NATS cannot be used at the moment; nothing was claimed or charged.
#[derive(Debug, thiserror::Error)]
pub(super) enum BrokerUnavailable {
    #[error("cannot use NATS_URL: {0}")]
    Connect(String),
    #[error("NATS is not connected")]
    NotConnected,
    #[error("JetStream stream {stream} unavailable: {reason}")]
    Stream { stream: String, reason: String },
}

/// The broker's default `max_payload`, used until the server has told us its own.
const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;
/// Room left in `max_payload` for the protocol line and the `Nats-Msg-Id` header.
const HEADER_ALLOWANCE: usize = 256;
/// How fast the client redials a NATS that went away (the client retries forever).
const RECONNECT: Backoff = Backoff {
    initial: Duration::from_millis(50),
    max: Duration::from_secs(2),
};
/// Broker error codes that describe the broker's state rather than the message.
const BROKER_SIDE_CODES: [ErrorCode; 10] = [
    ErrorCode::JETSTREAM_NOT_ENABLED,
    ErrorCode::JETSTREAM_NOT_ENABLED_FOR_ACCOUNT,
    ErrorCode::INSUFFICIENT_RESOURCES,
    ErrorCode::STORAGE_RESOURCES_EXCEEDED,
    ErrorCode::MEMORY_RESOURCES_EXCEEDED,
    ErrorCode::ACCOUNT_RESOURCES_EXCEEDED,
    ErrorCode::STREAM_STORE_FAILED,
    ErrorCode::CLUSTER_NOT_AVAILABLE,
    ErrorCode::CLUSTER_NOT_LEADER,
    ErrorCode::CLUSTER_NO_PEERS,
];

/// The relay's side of NATS.
pub(super) struct Broker {
    url: String,
    stream: String,
    subject_prefix: String,
    duplicate_window: Duration,
    ack_timeout: Duration,
    max_in_flight: usize,
    counters: Arc<Counters>,
    /// Notified when the connection comes (back) up, to end an outage pause early.
    up: Arc<Notify>,
    link: Option<Link>,
    /// The stream was found or created since the relay started.
    stream_ready: bool,
    /// A stream that does not capture every event subject was reported once.
    narrow_stream_reported: bool,
}

struct Link {
    client: async_nats::Client,
    js: jetstream::Context,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamCheck {
    Existed,
    Created,
}

/// An ack's outcome before a missing stream is told apart from a narrow one.
#[derive(Clone)]
enum Sent {
    Done(Delivery),
    NoStream,
}

type AckFuture = BoxFuture<'static, (usize, Result<PublishAck, PublishError>)>;

/// A sent batch whose acks are outstanding. It owns everything it needs, so the relay can
/// wait for it while it sends the next batch.
pub(super) struct Sending {
    sent: Vec<Option<Sent>>,
    in_flight: FuturesUnordered<AckFuture>,
}

/// Every ack of a batch is in (or timed out).
pub(super) struct Acked(Vec<Option<Sent>>);

impl Sending {
    /// A batch delivered without a broker: every event is handed off as it is.
    pub fn in_process(n: usize) -> Sending {
        Sending {
            sent: (0..n)
                .map(|_| Some(Sent::Done(Delivery::Acked { duplicate: false })))
                .collect(),
            in_flight: FuturesUnordered::new(),
        }
    }

    async fn collect_one(&mut self) {
        if let Some((i, ack)) = self.in_flight.next().await {
            self.sent[i] = Some(classify_ack(ack));
        }
    }

    pub async fn acked(mut self) -> Acked {
        while !self.in_flight.is_empty() {
            self.collect_one().await;
        }
        Acked(self.sent)
    }
}

impl Acked {
    /// Whether some event got "no responders", which only the broker can settle.
    pub fn needs_broker(&self) -> bool {
        self.0.iter().any(|s| matches!(s, Some(Sent::NoStream)))
    }

    /// The outcomes when no event needs the broker ([`Acked::needs_broker`] is false).
    pub fn deliveries(self) -> Vec<Delivery> {
        self.0
            .into_iter()
            .map(|s| match s {
                Some(Sent::Done(delivery)) => delivery,
                Some(Sent::NoStream) => Delivery::Undelivered("no stream".into()),
                None => Delivery::Undelivered("not attempted".into()),
            })
            .collect()
    }
}

impl Broker {
    pub fn new(
        url: String,
        options: &RelayOptions,
        counters: Arc<Counters>,
        up: Arc<Notify>,
    ) -> Broker {
        Broker {
            url,
            stream: options.stream.clone(),
            subject_prefix: options.subject_prefix.clone(),
            duplicate_window: options.duplicate_window,
            ack_timeout: options.ack_timeout,
            max_in_flight: options.max_in_flight.max(1),
            counters,
            up,
            link: None,
            stream_ready: false,
            narrow_stream_reported: false,
        }
    }

    /// Connected, with the stream in place. Returns at once when NATS is down: the
    /// client keeps redialling in the background and `up` tells when it is back.
    pub async fn ready(&mut self) -> Result<(), BrokerUnavailable> {
        if self.link.is_none() {
            self.link = Some(self.connect().await?);
        }
        let connected = self
            .link
            .as_ref()
            .is_some_and(|l| l.client.connection_state() == State::Connected);
        if !connected {
            return Err(BrokerUnavailable::NotConnected);
        }
        if !self.stream_ready {
            self.ensure_stream().await?;
            self.stream_ready = true;
        }
        Ok(())
    }

    /// Starts the client; the first connection is made in the background, so a NATS that
    /// is down never holds up the engine. Fails only for an unusable URL.
    async fn connect(&self) -> Result<Link, BrokerUnavailable> {
        let servers: Vec<&str> = self
            .url
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        if servers.is_empty() {
            return Err(BrokerUnavailable::Connect("no server given".into()));
        }
        let (up, counters) = (self.up.clone(), self.counters.clone());
        let options = ConnectOptions::new()
            .name("arreglame-outbox-relay")
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(self.ack_timeout)
            .reconnect_delay_callback(|attempt| {
                RECONNECT.delay(u32::try_from(attempt).unwrap_or(u32::MAX))
            })
            .event_callback(move |event| {
                let (up, counters) = (up.clone(), counters.clone());
                async move { on_connection_event(event, &up, &counters) }
            });
        // With `retry_on_initial_connect` this only parses the addresses and spawns the
        // connection task; it does not wait for a server.
        let client = options
            .connect(servers.as_slice())
            .await
            .map_err(|e| BrokerUnavailable::Connect(e.to_string()))?;
        // Room for the acks of every batch the relay keeps in flight at once.
        let js = jetstream::ContextBuilder::new()
            .timeout(self.ack_timeout)
            .max_ack_inflight((PIPELINE_DEPTH + 1) * self.max_in_flight)
            .build(client.clone());
        Ok(Link { client, js })
    }

    fn stream_config(&self) -> stream::Config {
        stream::Config {
            name: self.stream.clone(),
            description: Some("Arreglame Ya events, relayed from outbox_events".into()),
            subjects: vec![format!("{}.>", self.subject_prefix)],
            storage: stream::StorageType::File,
            // Replicated over a NATS cluster (up to 3 of the servers the URL lists), so
            // losing one server neither stops the relay nor loses a published event.
            num_replicas: self
                .url
                .split(',')
                .filter(|s| !s.trim().is_empty())
                .count()
                .clamp(1, 3),
            duplicate_window: self.duplicate_window,
            ..Default::default()
        }
    }

    /// Finds the stream, creating it when missing. An existing stream is left as the
    /// operators configured it (replicas, limits, subjects).
    async fn ensure_stream(&mut self) -> Result<StreamCheck, BrokerUnavailable> {
        let Some(link) = &self.link else {
            return Err(BrokerUnavailable::NotConnected);
        };
        let unavailable = |reason: String| BrokerUnavailable::Stream {
            stream: self.stream.clone(),
            reason,
        };
        match link.js.get_stream(&self.stream).await {
            Ok(existing) => {
                let wanted = format!("{}.>", self.subject_prefix);
                let subjects = &existing.cached_info().config.subjects;
                if !subjects.contains(&wanted) && !self.narrow_stream_reported {
                    self.narrow_stream_reported = true;
                    tracing::warn!(target: "OutboxRelay", stream = %self.stream, ?subjects,
                        "[OutboxRelay] the stream does not capture {wanted}: events outside its subjects are refused and parked");
                }
                Ok(StreamCheck::Existed)
            }
            Err(e) if is_missing_stream(e.kind()) => {
                match link.js.create_stream(self.stream_config()).await {
                    Ok(_) => {
                        tracing::info!(target: "OutboxRelay", stream = %self.stream,
                            subjects = %format!("{}.>", self.subject_prefix),
                            duplicate_window_s = self.duplicate_window.as_secs(),
                            "[OutboxRelay] created the JetStream stream");
                        Ok(StreamCheck::Created)
                    }
                    // Another engine created it between our look and our create.
                    Err(e) if is_name_taken(e.kind()) => Ok(StreamCheck::Existed),
                    Err(e) => Err(unavailable(e.to_string())),
                }
            }
            Err(e) => Err(unavailable(e.to_string())),
        }
    }

    /// Publishes the batch in id order and returns without waiting for the acks (beyond
    /// keeping at most `max_in_flight` of this batch outstanding).
    pub async fn send(&mut self, events: &[OutboxEvent]) -> Sending {
        let mut sending = Sending {
            sent: events.iter().map(|_| None).collect(),
            in_flight: FuturesUnordered::new(),
        };
        let Some(link) = &self.link else {
            let reason = BrokerUnavailable::NotConnected.to_string();
            sending
                .sent
                .fill(Some(Sent::Done(Delivery::Undelivered(reason))));
            return sending;
        };
        let js = link.js.clone();
        let max_payload = match link.client.server_info().max_payload {
            0 => DEFAULT_MAX_PAYLOAD,
            n => n,
        };
        let mut broken: Option<String> = None;
        for (i, event) in events.iter().enumerate() {
            if let Some(reason) = &broken {
                sending.sent[i] = Some(Sent::Done(Delivery::Undelivered(reason.clone())));
                continue;
            }
            let (subject, message) = match outbound(&self.subject_prefix, event, max_payload) {
                Ok(m) => m,
                Err(refusal) => {
                    sending.sent[i] = Some(Sent::Done(Delivery::Refused(refusal)));
                    continue;
                }
            };
            while sending.in_flight.len() >= self.max_in_flight {
                sending.collect_one().await;
            }
            match js.send_publish(subject, message).await {
                Ok(ack) => sending
                    .in_flight
                    .push(ack.into_future().map(move |ack| (i, ack)).boxed()),
                Err(e) => {
                    // The client could not even queue it: the rest would fail the same way.
                    let reason = e.to_string();
                    sending.sent[i] = Some(Sent::Done(Delivery::Undelivered(reason.clone())));
                    broken = Some(reason);
                }
            }
        }
        sending
    }

    /// The outcomes of an acked batch, in the order of `events`. Only a "no responders"
    /// answer needs the broker again (to tell a missing stream from a narrow one).
    pub async fn resolve(&mut self, events: &[OutboxEvent], acked: Acked) -> Vec<Delivery> {
        self.settle_missing_streams(events, acked.0).await
    }

    /// "No responders" means no stream captures the subject. If our stream is missing
    /// (NATS lost its storage, an operator deleted it) it is created again and nobody is
    /// charged; if it exists, this subject is outside it and the event is refused.
    async fn settle_missing_streams(
        &mut self,
        events: &[OutboxEvent],
        sent: Vec<Option<Sent>>,
    ) -> Vec<Delivery> {
        let any_missing = sent.iter().any(|s| matches!(s, Some(Sent::NoStream)));
        let check = if any_missing {
            Some(self.ensure_stream().await)
        } else {
            None
        };
        sent.into_iter()
            .zip(events)
            .map(|(s, event)| match s {
                Some(Sent::Done(delivery)) => delivery,
                Some(Sent::NoStream) => match &check {
                    Some(Ok(StreamCheck::Existed)) => Delivery::Refused(format!(
                        "no JetStream stream captures subject {}.{}",
                        self.subject_prefix, event.event_type
                    )),
                    Some(Ok(StreamCheck::Created)) => {
                        Delivery::Undelivered(format!("stream {} was missing", self.stream))
                    }
                    Some(Err(e)) => Delivery::Undelivered(e.to_string()),
                    None => Delivery::Undelivered("no stream".into()),
                },
                None => Delivery::Undelivered("not attempted".into()),
            })
            .collect()
    }
}

fn on_connection_event(event: Event, up: &Notify, counters: &Counters) {
    match event {
        Event::Connected => {
            counters.set_broker_connected(true);
            up.notify_one();
            tracing::info!(target: "OutboxRelay", "[OutboxRelay] connected to NATS");
        }
        Event::Disconnected => {
            counters.set_broker_connected(false);
            tracing::warn!(target: "OutboxRelay", "[OutboxRelay] NATS connection lost; events wait in outbox_events");
        }
        other => tracing::debug!(target: "OutboxRelay", event = %other, "NATS event"),
    }
}

fn is_missing_stream(kind: GetStreamErrorKind) -> bool {
    matches!(kind, GetStreamErrorKind::JetStream(e) if e.error_code() == ErrorCode::STREAM_NOT_FOUND)
}

fn is_name_taken(kind: CreateStreamErrorKind) -> bool {
    matches!(kind, CreateStreamErrorKind::JetStream(e) if e.error_code() == ErrorCode::STREAM_NAME_EXIST)
}

/// What the broker's answer means for the event.
fn classify_ack(ack: Result<PublishAck, PublishError>) -> Sent {
    let error = match ack {
        Ok(ack) => {
            return Sent::Done(Delivery::Acked {
                duplicate: ack.duplicate,
            })
        }
        Err(e) => e,
    };
    match error.kind() {
        PublishErrorKind::StreamNotFound => Sent::NoStream,
        PublishErrorKind::TimedOut
        | PublishErrorKind::BrokenPipe
        | PublishErrorKind::MaxAckPending => Sent::Done(Delivery::Undelivered(error.to_string())),
        PublishErrorKind::WrongLastMessageId
        | PublishErrorKind::WrongLastSequence
        | PublishErrorKind::Other => {
            if is_broker_side(&error) {
                Sent::Done(Delivery::Undelivered(error.to_string()))
            } else {
                Sent::Done(Delivery::Refused(error.to_string()))
            }
        }
    }
}

/// The broker answered with an error about itself (JetStream off, storage full, no
/// leader) rather than about the message.
fn is_broker_side(error: &PublishError) -> bool {
    std::error::Error::source(error)
        .and_then(|source| source.downcast_ref::<jetstream::Error>())
        .is_some_and(|api| api.code() == 503 || BROKER_SIDE_CODES.contains(&api.error_code()))
}

/// The message published for an event: its envelope as JSON, with the event id as
/// `Nats-Msg-Id` so the broker drops a re-publish within the duplicate window.
fn outbound(
    prefix: &str,
    event: &OutboxEvent,
    max_payload: usize,
) -> Result<(String, PublishMessage), String> {
    let subject = subject_for(prefix, &event.event_type)?;
    let body = serde_json::to_vec(&Envelope::of(event))
        .map_err(|e| format!("cannot encode the event: {e}"))?;
    if body.len() + HEADER_ALLOWANCE > max_payload {
        return Err(format!(
            "the event is {} bytes; the broker accepts at most {max_payload}",
            body.len()
        ));
    }
    let message = PublishMessage::build()
        .payload(body.into())
        .message_id(event.id.to_string());
    Ok((subject, message))
}

/// `<prefix>.<type>`, when the type makes valid subject tokens: no wildcard, no
/// whitespace, no empty token. Anything else would be a protocol error for the whole
/// connection, so such an event is refused before it reaches NATS.
pub(super) fn subject_for(prefix: &str, event_type: &str) -> Result<String, String> {
    let valid = event_type.split('.').all(|token| {
        !token.is_empty()
            && token
                .chars()
                .all(|c| !c.is_whitespace() && !c.is_control() && c != '*' && c != '>')
    });
    if valid {
        Ok(format!("{prefix}.{event_type}"))
    } else {
        Err(format!(
            "event type {event_type:?} is not a valid NATS subject token"
        ))
    }
}

/// The published body: the row without the relay's bookkeeping.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Envelope<'a> {
    id: i64,
    aggregate_type: &'a str,
    aggregate_id: &'a str,
    aggregate_version: i32,
    #[serde(rename = "type")]
    event_type: &'a str,
    payload: &'a serde_json::Value,
    created_at: DateTime<Utc>,
}

impl<'a> Envelope<'a> {
    fn of(event: &'a OutboxEvent) -> Envelope<'a> {
        Envelope {
            id: event.id,
            aggregate_type: &event.aggregate_type,
            aggregate_id: &event.aggregate_id,
            aggregate_version: event.aggregate_version,
            event_type: &event.event_type,
            payload: &event.payload,
            created_at: event.created_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(event_type: &str, payload: serde_json::Value) -> OutboxEvent {
        OutboxEvent {
            id: 42,
            aggregate_type: "service_request".into(),
            aggregate_id: "r-1".into(),
            aggregate_version: 3,
            event_type: event_type.into(),
            payload,
            processed: false,
            attempts: 0,
            created_at: Utc::now(),
        }
    }

    #[test]
    fn event_types_become_subject_tokens_or_are_refused() {
        let p = "arreglame.events";
        assert_eq!(
            subject_for(p, "ServiceRequestCreated").unwrap(),
            "arreglame.events.ServiceRequestCreated"
        );
        assert_eq!(
            subject_for(p, "payout.released").unwrap(),
            "arreglame.events.payout.released"
        );
        assert_eq!(
            subject_for(p, "AsignaciónHecha").unwrap(),
            "arreglame.events.AsignaciónHecha"
        );
        for bad in [
            "",
            "two words",
            "tab\there",
            "wild*",
            "all>",
            "a..b",
            ".lead",
            "trail.",
            "nl\n",
        ] {
            assert!(subject_for(p, bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn outbound_message_carries_the_envelope_and_the_event_id_as_msg_id() {
        let e = event("JobStarted", serde_json::json!({"requestId": "r-1"}));
        let (subject, message) = outbound("x.events", &e, DEFAULT_MAX_PAYLOAD).unwrap();
        assert_eq!(subject, "x.events.JobStarted");
        let message = message.outbound_message(subject);
        let headers = message.headers.as_ref().expect("headers");
        assert_eq!(
            headers
                .get(async_nats::header::NATS_MESSAGE_ID)
                .map(|v| v.as_str()),
            Some("42")
        );
        let body: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
        assert_eq!(body["id"], 42);
        assert_eq!(body["type"], "JobStarted");
        assert_eq!(body["aggregateVersion"], 3);
        assert_eq!(body["payload"]["requestId"], "r-1");
        assert!(body.get("processed").is_none() && body.get("attempts").is_none());
    }

    #[test]
    fn an_event_over_the_broker_payload_limit_is_refused_before_sending() {
        let big = serde_json::json!({"blob": "x".repeat(2_000)});
        let refusal = outbound("x.events", &event("Big", big), 1_024).unwrap_err();
        assert!(
            refusal.contains("the broker accepts at most 1024"),
            "{refusal}"
        );
    }

    #[test]
    fn transport_failures_are_not_charged_but_broker_refusals_are() {
        let undelivered = |kind| {
            matches!(
                classify_ack(Err(PublishError::new(kind))),
                Sent::Done(Delivery::Undelivered(_))
            )
        };
        assert!(undelivered(PublishErrorKind::TimedOut));
        assert!(undelivered(PublishErrorKind::BrokenPipe));
        assert!(undelivered(PublishErrorKind::MaxAckPending));
        assert!(matches!(
            classify_ack(Err(PublishError::new(PublishErrorKind::StreamNotFound))),
            Sent::NoStream
        ));
        assert!(matches!(
            classify_ack(Err(PublishError::new(PublishErrorKind::Other))),
            Sent::Done(Delivery::Refused(_))
        ));
        assert!(matches!(
            classify_ack(Ok(PublishAck {
                duplicate: true,
                ..Default::default()
            })),
            Sent::Done(Delivery::Acked { duplicate: true })
        ));
    }
}
