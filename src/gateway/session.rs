//! One worker connection, from the first frame to the close code.
//!
//! 1. **Auth**: the first message must be `auth` with a worker token, within
//!    `auth_timeout`; anything else closes with 1008.
//! 2. **Register**: the connection becomes the worker's current one (an older one is closed
//!    with 4001), gets `auth_ok`, then every offer still pending for the worker that the app
//!    has not acknowledged (resume).
//! 3. **Run**: a reader and a writer, two futures of one task (one task per connection keeps
//!    an idle session small). The reader handles one message at a time, so answers come in
//!    order; the writer drains the bounded send queue that the reader's answers and
//!    dispatch's notices share. The first of reader, writer, kill signal (takeover, queue
//!    full) or engine shutdown to finish ends the session.
//! 4. **End**: presence is settled (see [`End::presence`]), then the close frame is sent.

use std::{sync::Arc, time::Duration};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use chrono::{DateTime, Utc};
use futures::{Sink, SinkExt, Stream, StreamExt};
use serde::Serialize;
use serde_json::Value;
use tokio::{
    sync::{mpsc, watch},
    time::{timeout, timeout_at, Instant},
};
use uuid::Uuid;

use super::{
    limits::{Limits, TokenBucket},
    protocol::{
        self, close, AcceptOffer, Accepted, AcceptedJob, Acked, AuthOk, CancelAssignment,
        ClientMsg, ErrorCode, GoOnline, Inbound, JobRef, JobResult, Location, Nothing, Online,
        Pong, RejectOffer, RejectedOffer, SessionLimits, WireError,
    },
    sessions::{KillReason, Registration, Sessions, Shared, WorkerEntry},
};
use crate::{
    auth::{unix_now, AuthError, Role},
    dispatch::gateway::{JobParts, OfferNotice, OfferParts},
    dispatch::CommandError,
    domain::Position,
    store::ServiceRequest,
};

/// How long the engine waits for the worker's close reply after sending its close frame.
const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// Most frames written per flush.
const WRITE_BATCH: usize = 64;

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    AuthTimeout,
    AuthRejected(&'static str),
    /// The worker sent a close frame (the transport already answered it).
    ClientClosed,
    /// End of stream, reset, or a failed write.
    TransportLost,
    TooBig,
    /// A text frame that is not UTF-8.
    InvalidUtf8,
    /// The worker's identity could not be checked (database unavailable).
    AuthUnavailable,
    /// The worker was deactivated or deleted while connected.
    Deactivated,
    Abuse,
    HeartbeatTimeout,
    TokenExpired,
    SlowConsumer,
    Replaced,
    ShuttingDown,
}

/// What the end of a session means for the worker's presence in its city.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Presence {
    /// Unchanged: a newer connection has the worker, or the engine is stopping (the next
    /// engine resumes from the database).
    Keep,
    /// The connection just dropped: keep the worker online and its offer pending for the
    /// reconnect grace, then take it offline unless it came back.
    Grace,
    /// The engine closed the session for cause (silent, not reading, abusive): offline now,
    /// its offer settled as a timeout.
    OfflineNow,
}

impl End {
    fn close_frame(self) -> Option<(u16, &'static str)> {
        Some(match self {
            End::AuthTimeout => (close::POLICY_VIOLATION, "auth: no auth message in time"),
            End::AuthRejected(reason) => (close::POLICY_VIOLATION, reason),
            End::ClientClosed | End::TransportLost => return None,
            End::TooBig => (close::MESSAGE_TOO_BIG, "frame above the transport limit"),
            End::InvalidUtf8 => (close::INVALID_PAYLOAD, "text frame is not valid UTF-8"),
            End::AuthUnavailable => (
                close::TRY_AGAIN_LATER,
                "auth: identity check unavailable; retry",
            ),
            End::Deactivated => (close::DEACTIVATED, "account deactivated"),
            End::Abuse => (close::POLICY_VIOLATION, "message rate limit exceeded"),
            End::HeartbeatTimeout => (close::HEARTBEAT_TIMEOUT, "heartbeat timeout"),
            End::TokenExpired => (close::TOKEN_EXPIRED, "token expired"),
            End::SlowConsumer => (close::SLOW_CONSUMER, "slow consumer: messages not read"),
            End::Replaced => (close::REPLACED, "replaced by a newer connection"),
            End::ShuttingDown => (close::GOING_AWAY, "engine shutting down; reconnect"),
        })
    }

    fn presence(self) -> Presence {
        match self {
            End::Replaced | End::ShuttingDown => Presence::Keep,
            End::ClientClosed
            | End::TransportLost
            | End::TokenExpired
            | End::AuthTimeout
            | End::AuthUnavailable
            | End::AuthRejected(_) => Presence::Grace,
            End::TooBig
            | End::InvalidUtf8
            | End::Deactivated
            | End::Abuse
            | End::HeartbeatTimeout
            | End::SlowConsumer => Presence::OfflineNow,
        }
    }
}

/// A verified `auth` message.
struct Authed {
    worker_id: Uuid,
    token_expires_at: DateTime<Utc>,
    last_seq: u64,
    reply_to: Option<String>,
}

/// Serves one upgraded connection until it ends.
pub(super) async fn run(
    socket: WebSocket,
    sessions: Arc<Sessions>,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
    limits: Arc<Limits>,
) {
    let _live = sessions.open();
    let (mut sink, mut stream) = socket.split();
    let authed = tokio::select! {
        authed = authenticate(&mut stream, &shared, &limits) => authed,
        _ = shutting_down(&mut shutdown) => Err(End::ShuttingDown),
    };
    let authed = match authed {
        Ok(a) => a,
        Err(end) => {
            if matches!(
                end,
                End::AuthTimeout | End::AuthRejected(_) | End::AuthUnavailable
            ) {
                sessions.stats.auth_failures.inc();
                tracing::debug!(target: "Gateway", ?end, "connection refused");
            }
            close_with(&mut sink, &mut stream, end).await;
            return;
        }
    };
    let Registration {
        entry,
        conn_id,
        tx,
        mut rx,
        kill,
    } = sessions.register(authed.worker_id, authed.last_seq, limits.send_queue);
    tracing::debug!(target: "Gateway", worker_id = %entry.id, conn_id, "session opened");

    let end = match greet(&mut sink, &authed, &entry, conn_id, &limits).await {
        Err(end) => end,
        Ok(()) => {
            resume(&shared, &sessions, &entry, authed.last_seq, &tx).await;
            let mut reader = Reader {
                shared: &shared,
                sessions: &sessions,
                limits: &limits,
                entry: &entry,
                conn_id,
                tx: &tx,
                token_expires: instant_of(authed.token_expires_at),
                last_inbound: Instant::now(),
                messages: TokenBucket::full(limits.message_rate, Instant::now()),
                locations: TokenBucket::full(limits.location_rate, Instant::now()),
                last_fix: None,
            };
            tokio::select! {
                end = reader.run(&mut stream) => end,
                end = write_loop(&mut sink, &mut rx, limits.write_timeout) => end,
                reason = kill.fired() => match reason {
                    KillReason::Replaced => End::Replaced,
                    KillReason::SlowConsumer => End::SlowConsumer,
                    KillReason::Deactivated => End::Deactivated,
                },
                _ = shutting_down(&mut shutdown) => End::ShuttingDown,
            }
        }
    };
    drop(rx);
    finish(&sessions, &shared, &limits, entry, conn_id, end).await;
    close_with(&mut sink, &mut stream, end).await;
}

/// Reads the first message: `auth` with a valid worker token, for a worker that exists and
/// is active, before the deadline.
async fn authenticate<St>(stream: &mut St, shared: &Shared, limits: &Limits) -> Result<Authed, End>
where
    St: Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    const NOT_AUTH: &str = "auth: the first message must be auth";
    const MALFORMED_AUTH: &str = "auth: malformed auth (token: string, lastSeq: integer >= 0)";
    let deadline = Instant::now() + limits.auth_timeout;
    loop {
        let message = match timeout_at(deadline, stream.next()).await {
            Err(_) => return Err(End::AuthTimeout),
            Ok(None) => return Err(End::TransportLost),
            Ok(Some(Err(e))) => return Err(transport_end(e)),
            Ok(Some(Ok(m))) => m,
        };
        let text = match message {
            Message::Text(text) => text,
            Message::Ping(_) | Message::Pong(_) => continue,
            Message::Close(_) => return Err(End::ClientClosed),
            Message::Binary(_) => return Err(End::AuthRejected(NOT_AUTH)),
        };
        if text.len() > limits.max_message_bytes {
            return Err(End::AuthRejected(NOT_AUTH));
        }
        let (id, auth) = match protocol::parse(text.as_str()) {
            Ok(Inbound {
                id,
                msg: ClientMsg::Auth(auth),
            }) => (id, auth),
            Err(rejected) if rejected.kind.as_deref() == Some("auth") => {
                return Err(End::AuthRejected(MALFORMED_AUTH))
            }
            _ => return Err(End::AuthRejected(NOT_AUTH)),
        };
        let claims = verify_worker(shared, &auth.token)
            .await
            .map_err(refused_at_the_door)?;
        return Ok(Authed {
            worker_id: claims.sub,
            token_expires_at: utc_of(claims.exp),
            last_seq: auth.last_seq,
            reply_to: id,
        });
    }
}

/// A worker token whose subject exists and is active. A refusal is the session's end.
/// Why a worker token does not admit its bearer.
enum Refused {
    /// The token itself (invalid, expired, not yet valid, wrong role).
    Token(AuthError),
    /// Its worker does not exist or is deactivated.
    Gone(AuthError),
    /// The database did not answer the identity check.
    Unavailable,
}

async fn verify_worker(shared: &Shared, token: &str) -> Result<crate::auth::Claims, Refused> {
    let claims = shared
        .keys
        .verify_role(token, Role::Worker)
        .map_err(Refused::Token)?;
    match shared.identities.worker(claims.sub).await {
        Ok(_) => Ok(claims),
        Err(crate::identity::IdentityError::Unavailable) => Err(Refused::Unavailable),
        Err(e) => Err(Refused::Gone(AuthError::from(e))),
    }
}

/// How a refusal ends the first `auth`: 1008 with the reason, or 1013 to retry.
fn refused_at_the_door(refused: Refused) -> End {
    match refused {
        Refused::Token(e) | Refused::Gone(e) => {
            End::AuthRejected(protocol::auth_failure_reason(&e))
        }
        Refused::Unavailable => End::AuthUnavailable,
    }
}

/// Sends `auth_ok` straight to the socket, so it always precedes queued notices.
async fn greet<Si>(
    sink: &mut Si,
    authed: &Authed,
    entry: &WorkerEntry,
    conn_id: u64,
    limits: &Limits,
) -> Result<(), End>
where
    Si: Sink<Message> + Unpin,
{
    let text = auth_ok_frame(authed, entry, conn_id, limits);
    match timeout(limits.write_timeout, sink.send(Message::Text(text.into()))).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(End::TransportLost),
        Err(_) => Err(End::SlowConsumer),
    }
}

fn auth_ok_frame(authed: &Authed, entry: &WorkerEntry, conn_id: u64, limits: &Limits) -> String {
    protocol::frame(
        "auth_ok",
        authed.reply_to.as_deref(),
        &AuthOk {
            worker_id: entry.id,
            session_id: conn_id,
            protocol_version: protocol::PROTOCOL_VERSION,
            heartbeat_interval_ms: limits.heartbeat_interval.as_millis() as u64,
            heartbeat_timeout_ms: limits.heartbeat_timeout.as_millis() as u64,
            token_expires_at: authed.token_expires_at,
            online_city: entry.online_city(),
            limits: SessionLimits {
                max_message_bytes: limits.max_message_bytes,
                location_per_second: limits.location_rate.per_second,
                location_burst: limits.location_rate.burst,
                messages_per_second: limits.message_rate.per_second,
                messages_burst: limits.message_rate.burst,
            },
        },
    )
}

/// Queues every still-valid offer of the worker that the app does not have yet. The
/// database, not memory, says what is pending: this survives engine restarts.
async fn resume(
    shared: &Shared,
    sessions: &Sessions,
    entry: &WorkerEntry,
    last_seq: u64,
    tx: &mpsc::Sender<String>,
) {
    let pending = match shared.store.pending_offers_of(entry.id).await {
        Ok(rows) => rows,
        Err(e) => {
            // Not fatal: the request actor's timer still settles the offer.
            tracing::warn!(target: "Gateway", worker_id = %entry.id, error = %e, "could not load pending offers to resume");
            return;
        }
    };
    for p in pending {
        let area = p
            .city_id
            .as_ref()
            .and_then(|c| shared.dispatcher.city_info(c))
            .map(|city| city.name.clone())
            .unwrap_or_default();
        let notice = OfferNotice::new(
            OfferParts {
                offer_id: p.offer_id,
                request_id: p.request_id,
                worker_id: entry.id,
                attempt: p.attempt,
                expires_at: p.expires_at,
                distance_meters: p.distance_meters.unwrap_or_default(),
            },
            JobParts {
                description: p.description.as_deref(),
                square_meters: p.square_meters,
                worker_net_cents: p.worker_net_cents,
                currency: &p.currency,
                position: p
                    .longitude
                    .zip(p.latitude)
                    .and_then(|(lon, lat)| Position::new(lon, lat).ok()),
                area: &area,
                slot: p.scheduled_start.zip(p.scheduled_end),
            },
        );
        if let Some(frame) = entry.resume_frame(&notice, last_seq) {
            if tx.try_send(frame).is_ok() {
                sessions.stats.offers_resent.inc();
            }
        }
    }
    // The worker's jobs in hand (assigned or started), so an app that lost its state
    // across the reconnect learns what it is working on.
    match shared.store.jobs_in_hand(entry.id).await {
        Ok(jobs) => {
            for job in jobs {
                let _ = tx.try_send(protocol::job_update_frame(job.request_id, job.status));
            }
        }
        Err(e) => {
            tracing::warn!(target: "Gateway", worker_id = %entry.id, error = %e, "could not load the jobs in hand to resume");
        }
    }
}

/// The reading half of a session: one message at a time, each answered in order.
struct Reader<'a> {
    shared: &'a Shared,
    sessions: &'a Sessions,
    limits: &'a Limits,
    entry: &'a WorkerEntry,
    conn_id: u64,
    tx: &'a mpsc::Sender<String>,
    token_expires: Instant,
    last_inbound: Instant,
    messages: TokenBucket,
    locations: TokenBucket,
    /// Timestamp of the newest location fix applied (older fixes arriving late are dropped).
    last_fix: Option<DateTime<Utc>>,
}

impl Reader<'_> {
    async fn run<St>(&mut self, stream: &mut St) -> End
    where
        St: Stream<Item = Result<Message, axum::Error>> + Unpin,
    {
        loop {
            let deadline =
                (self.last_inbound + self.limits.heartbeat_timeout).min(self.token_expires);
            let message = match timeout_at(deadline, stream.next()).await {
                Err(_) if Instant::now() >= self.token_expires => return End::TokenExpired,
                Err(_) => return End::HeartbeatTimeout,
                Ok(None) => return End::TransportLost,
                Ok(Some(Err(e))) => return transport_end(e),
                Ok(Some(Ok(m))) => m,
            };
            let now = Instant::now();
            self.last_inbound = now;
            if !self.messages.try_take(self.limits.message_rate, now) {
                return End::Abuse;
            }
            let step = match message {
                // Boxed: the command futures are large and rare, and an idle session's
                // memory is the size of its task's future.
                Message::Text(text) => Box::pin(self.on_text(text.as_str())).await,
                Message::Binary(_) => self.error(
                    None,
                    WireError::new(
                        ErrorCode::BinaryNotSupported,
                        "binary frames are not part of the protocol; send JSON text",
                    ),
                ),
                Message::Ping(_) | Message::Pong(_) => Ok(()),
                Message::Close(_) => return End::ClientClosed,
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    async fn on_text(&mut self, text: &str) -> Result<(), End> {
        if text.len() > self.limits.max_message_bytes {
            return self.error(
                protocol::readable_id(text).as_deref(),
                WireError::new(
                    ErrorCode::MessageTooLarge,
                    format!(
                        "{} bytes; messages are at most {} bytes",
                        text.len(),
                        self.limits.max_message_bytes
                    ),
                ),
            );
        }
        let Inbound { id, msg } = match protocol::parse(text) {
            Ok(inbound) => inbound,
            Err(rejected) => {
                count_inbound("invalid");
                return self.error(rejected.id.as_deref(), rejected.error);
            }
        };
        count_inbound(msg.kind());
        let id = id.as_deref();
        let shared = self.shared;
        let worker = self.entry.id;
        match msg {
            ClientMsg::Ping => self.reply(
                id,
                "pong",
                &Pong {
                    server_time: Utc::now(),
                },
            ),
            ClientMsg::Auth(auth) => self.refresh_token(id, &auth.token).await,
            ClientMsg::GoOnline(m) => self.go_online(id, m).await,
            ClientMsg::GoOffline => self.go_offline(id).await,
            ClientMsg::Location(m) => self.location(id, m).await,
            ClientMsg::AckOffer(m) => {
                if self.entry.ack(m.offer_id) {
                    self.ok(
                        id,
                        &Acked {
                            offer_id: m.offer_id,
                        },
                    )
                } else {
                    self.error(id, CommandError::OfferNotPending.into())
                }
            }
            ClientMsg::AcceptOffer(m) => self.accept(id, m).await,
            ClientMsg::RejectOffer(RejectOffer {
                offer_id,
                request_id,
                reason,
            }) => {
                let answer = shared
                    .dispatcher
                    .reject_offer(worker, request_id, offer_id, reason)
                    .await;
                if answer.is_ok() {
                    self.entry.untrack(offer_id);
                }
                self.answer(
                    id,
                    answer.map(|()| RejectedOffer {
                        offer_id,
                        request_id,
                    }),
                )
            }
            ClientMsg::StartJob(JobRef { request_id }) => {
                let answer = shared.dispatcher.start_job(worker, request_id).await;
                self.answer(id, answer.map(|row| job_data(&row)))
            }
            ClientMsg::CompleteJob(JobRef { request_id }) => {
                let answer = shared.dispatcher.complete_job(worker, request_id).await;
                self.answer(id, answer.map(|row| job_data(&row)))
            }
            ClientMsg::CancelAssignment(CancelAssignment { request_id, reason }) => {
                let answer = shared
                    .dispatcher
                    .cancel_assignment(worker, request_id, reason)
                    .await;
                self.answer(id, answer.map(|row| job_data(&row)))
            }
        }
    }

    /// A fresh token extends the session; a token for someone else, or a bad one, ends it.
    async fn refresh_token(&mut self, id: Option<&str>, token: &str) -> Result<(), End> {
        let claims = match verify_worker(self.shared, token).await {
            Ok(claims) => claims,
            Err(Refused::Token(e)) => {
                return Err(End::AuthRejected(protocol::auth_failure_reason(&e)))
            }
            // A worker gone or deactivated mid-session ends as the watcher would end it:
            // 4005, offline at once.
            Err(Refused::Gone(_)) => return Err(End::Deactivated),
            // The session is fine; only the check could not be made: say so, stay up.
            Err(Refused::Unavailable) => {
                return self.error(
                    id,
                    WireError::new(
                        ErrorCode::Unavailable,
                        "identity check unavailable; refresh again shortly",
                    ),
                )
            }
        };
        if claims.sub != self.entry.id {
            return Err(End::AuthRejected("auth: token for another worker"));
        }
        self.token_expires = instant_of(utc_of(claims.exp));
        // The same `auth_ok` as at the start (heartbeat, limits and all), so an app handles
        // both alike.
        let authed = Authed {
            worker_id: claims.sub,
            token_expires_at: utc_of(claims.exp),
            last_seq: 0,
            reply_to: id.map(str::to_string),
        };
        self.send(auth_ok_frame(
            &authed,
            self.entry,
            self.conn_id,
            self.limits,
        ))
    }

    async fn go_online(&mut self, id: Option<&str>, m: GoOnline) -> Result<(), End> {
        // What the worker may do comes from its profile, not from what the app claims.
        let profile = match self.shared.identities.worker(self.entry.id).await {
            Ok(profile) => profile,
            Err(crate::identity::IdentityError::Unavailable) => {
                return self.error(
                    id,
                    WireError::new(ErrorCode::Unavailable, "identity check unavailable; retry"),
                )
            }
            Err(_) => return Err(End::Deactivated),
        };
        let (skills, ignored) = crate::identity::effective_skills(&profile.skills, &m.skills);
        if skills.is_empty() {
            return self.error(
                id,
                WireError::new(
                    ErrorCode::NoMatchingSkills,
                    format!(
                        "your profile's skills are {:?}; go_online asked for {:?}",
                        profile.skills, m.skills
                    ),
                ),
            );
        }
        let dispatcher = &self.shared.dispatcher;
        let Some(city) = dispatcher.city_at(m.lon, m.lat).map(|c| c.id.clone()) else {
            return self.error(
                id,
                WireError::new(
                    ErrorCode::OutsideServiceArea,
                    format!("({}, {}) is outside every served city", m.lat, m.lon),
                ),
            );
        };
        let _presence = self.entry.presence.lock().await;
        if !self.entry.is_current(self.conn_id) {
            return Err(End::Replaced);
        }
        if let Some(previous) = self.entry.online_city().filter(|c| *c != city) {
            dispatcher.worker_offline(&previous, self.entry.id).await;
            self.entry.set_online_city(None);
        }
        match dispatcher
            .worker_online(&city, self.entry.id, m.lon, m.lat, skills.clone())
            .await
        {
            Ok(()) => {
                let announced = super::sessions::Announced {
                    lon: m.lon,
                    lat: m.lat,
                    skills: skills.clone(),
                };
                self.entry.set_online(city.clone(), announced);
                tracing::debug!(target: "Gateway", worker_id = %self.entry.id, city, "worker online");
                self.ok(
                    id,
                    &Online {
                        city_id: &city,
                        skills: &skills,
                        ignored_skills: &ignored,
                    },
                )
            }
            Err(e) => self.error(id, e.into()),
        }
    }

    async fn go_offline(&mut self, id: Option<&str>) -> Result<(), End> {
        let _presence = self.entry.presence.lock().await;
        if !self.entry.is_current(self.conn_id) {
            return Err(End::Replaced);
        }
        if let Some(city) = self.entry.set_online_city(None) {
            self.shared
                .dispatcher
                .worker_offline(&city, self.entry.id)
                .await;
        }
        self.ok(id, &Nothing {})
    }

    async fn location(&mut self, id: Option<&str>, m: Location) -> Result<(), End> {
        let rate = self.limits.location_rate;
        if !self.locations.try_take(rate, Instant::now()) {
            self.sessions.stats.rate_limited.inc();
            let wait = self.locations.retry_after(rate).as_millis();
            return self.error(
                id,
                WireError::new(
                    ErrorCode::RateLimited,
                    format!(
                        "at most {} location updates per second (burst {}); next one in {wait} ms",
                        rate.per_second, rate.burst
                    ),
                ),
            );
        }
        let Some(city) = self.entry.online_city() else {
            return self.error(
                id,
                WireError::new(
                    ErrorCode::NotOnline,
                    "send go_online before location updates",
                ),
            );
        };
        let dispatcher = &self.shared.dispatcher;
        let inside = dispatcher
            .city_info(&city)
            .is_some_and(|c| c.serves(m.lon, m.lat));
        if !inside {
            return self.error(
                id,
                WireError::new(
                    ErrorCode::OutsideServiceArea,
                    format!(
                        "({}, {}) is outside the service area of {city}",
                        m.lat, m.lon
                    ),
                ),
            );
        }
        if self.last_fix.is_some_and(|t| m.timestamp < t) {
            return Ok(()); // an older fix that arrived late: the newer one stands
        }
        self.last_fix = Some(m.timestamp);
        self.entry.moved_to(m.lon, m.lat);
        // Fire and forget: the city actor applies updates in order.
        let _ = dispatcher
            .worker_moved(&city, self.entry.id, m.lon, m.lat, false)
            .await;
        self.sessions.stats.location_updates.inc();
        Ok(())
    }

    /// Accepts an offer once per idempotency key: a repeated key gets the first answer.
    async fn accept(&mut self, id: Option<&str>, m: AcceptOffer) -> Result<(), End> {
        let AcceptOffer {
            offer_id,
            request_id,
            idempotency_key: key,
        } = m;
        match self.entry.accept_answer(&key, offer_id) {
            Some(Ok(answer)) => return self.answer(id, answer),
            Some(Err(reused)) => return self.error(id, reused),
            None => {}
        }
        let worker = self.entry.id;
        let answer = match self
            .shared
            .dispatcher
            .accept_offer(worker, request_id, offer_id)
            .await
        {
            Ok(row) => Ok(accepted_data(offer_id, &row)),
            // Our own earlier accept whose answer was lost (connection or engine gone):
            // the truthful answer is still "it is yours".
            Err(CommandError::OfferNotPending) => {
                match self.accepted_by_me(offer_id, request_id).await {
                    Ok(Some(row)) => Ok(accepted_data(offer_id, &row)),
                    Ok(None) => Err(CommandError::OfferNotPending.into()),
                    // Not known either way: a transient answer, never cached.
                    Err(e) => {
                        tracing::warn!(target: "Gateway", %offer_id, error = %e, "could not check an earlier accept");
                        Err(CommandError::Unavailable.into())
                    }
                }
            }
            Err(e) => Err(WireError::from(e)),
        };
        if answer.is_ok() {
            self.entry.untrack(offer_id);
        }
        let definitive = answer
            .as_ref()
            .map_or_else(|e| !e.code.is_transient(), |_| true);
        if definitive {
            self.entry.remember_accept(&key, offer_id, answer.clone());
        }
        self.answer(id, answer)
    }

    /// The request, when this worker's offer for it was accepted (an earlier accept whose
    /// answer was lost).
    async fn accepted_by_me(
        &self,
        offer_id: Uuid,
        request_id: Uuid,
    ) -> Result<Option<ServiceRequest>, crate::store::StoreError> {
        let store = &self.shared.store;
        if !store
            .offer_accepted_by(offer_id, request_id, self.entry.id)
            .await?
        {
            return Ok(None);
        }
        store.get_request(request_id).await.map(Some)
    }

    // ---- answering --------------------------------------------------------------------

    /// Queues a frame; a full queue means the worker is not reading.
    fn send(&self, frame: String) -> Result<(), End> {
        self.tx.try_send(frame).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => End::SlowConsumer,
            mpsc::error::TrySendError::Closed(_) => End::TransportLost,
        })
    }

    fn reply<T: Serialize>(
        &self,
        id: Option<&str>,
        kind: &'static str,
        data: &T,
    ) -> Result<(), End> {
        self.send(protocol::frame(kind, id, data))
    }

    fn ok<T: Serialize>(&self, id: Option<&str>, data: &T) -> Result<(), End> {
        self.reply(id, "ok", data)
    }

    fn error(&self, id: Option<&str>, error: WireError) -> Result<(), End> {
        self.sessions.stats.errors_sent.inc();
        self.send(protocol::error_frame(id, &error))
    }

    fn answer<T: Serialize, E: Into<WireError>>(
        &self,
        id: Option<&str>,
        answer: Result<T, E>,
    ) -> Result<(), End> {
        match answer {
            Ok(data) => self.ok(id, &data),
            Err(e) => self.error(id, e.into()),
        }
    }
}

/// What the worker learns on accepting: the job, now with its exact address. Kept as JSON
/// in the idempotency cache, so a repeated accept gets the very same answer.
fn accepted_data(offer_id: Uuid, row: &ServiceRequest) -> Value {
    serde_json::to_value(Accepted {
        offer_id,
        request_id: row.id,
        status: row.status,
        job: AcceptedJob {
            description: row.description.clone(),
            address: row.address.clone(),
            latitude: row.latitude,
            longitude: row.longitude,
            square_meters: row.square_meters,
            worker_net_cents: row.worker_net_cents,
            currency: row.currency.clone(),
        },
    })
    .expect("protocol frames always serialise")
}

fn job_data(row: &ServiceRequest) -> JobResult {
    JobResult {
        request_id: row.id,
        status: row.status,
    }
}

/// Drains the send queue into the socket, a batch per flush. A write that stalls past
/// `write_timeout` means the worker stopped reading.
async fn write_loop<Si>(
    sink: &mut Si,
    rx: &mut mpsc::Receiver<String>,
    write_timeout: Duration,
) -> End
where
    Si: Sink<Message> + Unpin,
{
    while let Some(first) = rx.recv().await {
        let batch = async {
            sink.feed(Message::Text(first.into())).await?;
            for _ in 1..WRITE_BATCH {
                let Ok(more) = rx.try_recv() else { break };
                sink.feed(Message::Text(more.into())).await?;
            }
            sink.flush().await
        };
        match timeout(write_timeout, batch).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return End::TransportLost,
            Err(_) => return End::SlowConsumer,
        }
    }
    End::TransportLost
}

/// Settles the worker's presence for how the session ended, and counts it.
async fn finish(
    sessions: &Arc<Sessions>,
    shared: &Arc<Shared>,
    limits: &Limits,
    entry: Arc<WorkerEntry>,
    conn_id: u64,
    end: End,
) {
    let stats = &sessions.stats;
    stats.sessions_closed.inc();
    match end {
        End::HeartbeatTimeout => stats.heartbeat_timeouts.inc(),
        End::SlowConsumer => stats.slow_consumers.inc(),
        End::Abuse | End::TooBig => stats.abuse_closes.inc(),
        _ => {}
    }
    let current = sessions.unregister(&entry, conn_id);
    match end.presence() {
        Presence::OfflineNow | Presence::Grace if !current => {}
        Presence::Keep => {}
        Presence::OfflineNow => {
            tracing::info!(target: "Gateway", worker_id = %entry.id, ?end, "session closed by the engine");
            sessions
                .take_offline(&shared.dispatcher, &entry, None)
                .await;
        }
        Presence::Grace => {
            tracing::debug!(target: "Gateway", worker_id = %entry.id, ?end, "connection lost; waiting for a reconnect");
            let (sessions, shared, grace) =
                (sessions.clone(), shared.clone(), limits.reconnect_grace);
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                sessions
                    .take_offline(&shared.dispatcher, &entry, Some(conn_id))
                    .await;
            });
        }
    }
}

fn count_inbound(kind: &'static str) {
    metrics::counter!("arreglame_ws_messages_total", "direction" => "in", "type" => kind)
        .increment(1);
}

/// Sends the close frame for `end` (if it has one) and waits briefly for the worker's
/// answer, so the frame is not lost to a reset of a socket closed with unread data.
async fn close_with<Si, St>(sink: &mut Si, stream: &mut St, end: End)
where
    Si: Sink<Message> + Unpin,
    St: Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    let Some((code, reason)) = end.close_frame() else {
        if end == End::ClientClosed {
            // The transport queued its answer to the worker's close frame; flush it, or the
            // app sees the connection drop (1006) instead of a clean 1000 close.
            let _ = timeout(CLOSE_LINGER, sink.flush()).await;
        }
        return;
    };
    metrics::counter!("arreglame_ws_closes_total", "code" => code.to_string()).increment(1);
    let frame = Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }));
    let _ = timeout(CLOSE_LINGER, async {
        if sink.send(frame).await.is_err() {
            return;
        }
        while let Some(Ok(message)) = stream.next().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

/// An error from the transport: a frame over the limit, or a dead connection.
fn transport_end(error: axum::Error) -> End {
    use tokio_tungstenite::tungstenite::Error as WsError;
    match error.into_inner().downcast::<WsError>() {
        Ok(e) if matches!(*e, WsError::Capacity(_)) => End::TooBig,
        Ok(e) if matches!(*e, WsError::Utf8(_)) => End::InvalidUtf8,
        _ => End::TransportLost,
    }
}

async fn shutting_down(shutdown: &mut watch::Receiver<bool>) {
    if shutdown.wait_for(|stopping| *stopping).await.is_err() {
        // The engine dropped its shutdown switch: it will never flip.
        std::future::pending::<()>().await;
    }
}

fn utc_of(unix_seconds: u64) -> DateTime<Utc> {
    DateTime::from_timestamp(unix_seconds.min(i64::MAX as u64) as i64, 0)
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// The monotonic instant of a wall-clock time (now, when it is in the past).
fn instant_of(at: DateTime<Utc>) -> Instant {
    let now = unix_now() as i64;
    let ahead = (at.timestamp() - now).clamp(0, 10 * 365 * 86_400) as u64;
    Instant::now() + Duration::from_secs(ahead)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ends_map_to_close_codes_and_presence() {
        assert_eq!(End::AuthTimeout.close_frame().unwrap().0, 1008);
        assert_eq!(End::ShuttingDown.close_frame().unwrap().0, 1001);
        assert_eq!(End::Replaced.close_frame().unwrap().0, 4001);
        assert_eq!(End::HeartbeatTimeout.close_frame().unwrap().0, 4002);
        assert_eq!(End::TokenExpired.close_frame().unwrap().0, 4003);
        assert_eq!(End::SlowConsumer.close_frame().unwrap().0, 4004);
        assert_eq!(End::TooBig.close_frame().unwrap().0, 1009);
        assert!(End::ClientClosed.close_frame().is_none());
        for end in [
            End::HeartbeatTimeout,
            End::SlowConsumer,
            End::Abuse,
            End::TooBig,
        ] {
            assert_eq!(end.presence(), Presence::OfflineNow, "{end:?}");
        }
        assert_eq!(End::TransportLost.presence(), Presence::Grace);
        assert_eq!(End::ShuttingDown.presence(), Presence::Keep);
        assert_eq!(End::Replaced.presence(), Presence::Keep);
        // Close reasons fit a control frame (125 bytes, 2 of them the code).
        for end in [End::AuthTimeout, End::SlowConsumer, End::ShuttingDown] {
            assert!(end.close_frame().unwrap().1.len() <= 123);
        }
    }

    #[tokio::test]
    async fn the_writer_ends_as_a_slow_consumer_when_a_write_stalls() {
        // A sink that never gets ready: the worker stopped reading and the socket is full.
        struct Stalled;
        impl Sink<Message> for Stalled {
            type Error = axum::Error;
            fn poll_ready(
                self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
            ) -> std::task::Poll<Result<(), Self::Error>> {
                std::task::Poll::Pending
            }
            fn start_send(self: std::pin::Pin<&mut Self>, _: Message) -> Result<(), Self::Error> {
                Ok(())
            }
            fn poll_flush(
                self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
            ) -> std::task::Poll<Result<(), Self::Error>> {
                std::task::Poll::Pending
            }
            fn poll_close(
                self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
            ) -> std::task::Poll<Result<(), Self::Error>> {
                std::task::Poll::Pending
            }
        }
        tokio::time::pause();
        let (tx, mut rx) = mpsc::channel(4);
        tx.try_send("{}".to_string()).unwrap();
        let end = write_loop(&mut Stalled, &mut rx, Duration::from_secs(10)).await;
        assert_eq!(end, End::SlowConsumer);
    }

    #[tokio::test]
    async fn the_writer_forwards_queued_frames_in_order() {
        let (tx, mut rx) = mpsc::channel(8);
        for i in 0..3 {
            tx.try_send(format!("{i}")).unwrap();
        }
        drop(tx);
        let mut sink = futures::sink::drain().sink_map_err(|_| axum::Error::new("never"));
        let mut written = Vec::new();
        let mut recording = (&mut sink).with(|m: Message| {
            if let Message::Text(t) = &m {
                written.push(t.as_str().to_string());
            }
            futures::future::ready(Ok::<_, axum::Error>(m))
        });
        assert_eq!(
            write_loop(&mut recording, &mut rx, Duration::from_secs(1)).await,
            End::TransportLost
        );
        drop(recording);
        assert_eq!(written, ["0", "1", "2"]);
    }
}
