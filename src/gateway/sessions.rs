//! The registry of live worker sessions, and what the engine remembers about a worker
//! between connections: its offer sequence, which offers it acknowledged, its recent
//! `accept_offer` answers (idempotency) and whether it is online in a city.
//!
//! Dispatch reaches workers through [`Sessions`]'s [`WorkerGateway`] implementation: a
//! notice becomes a frame on the worker's bounded send queue without waiting; a full queue
//! closes that connection as a slow consumer instead of holding anyone up.

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering},
        Arc, Mutex, RwLock,
    },
    time::Duration,
};

use chrono::{DateTime, Utc};
use dashmap::DashMap;
use serde_json::Value;
use tokio::{
    sync::{mpsc, Notify},
    time::Instant,
};
use uuid::Uuid;

use super::{
    limits::Limits,
    protocol::{self, WireError},
};
use crate::{
    auth::TokenKeys,
    dispatch::{
        gateway::{OfferNotice, WorkerGateway, WorkerNotice},
        routing::Presence,
        Dispatcher,
    },
    identity::Identities,
    store::Store,
    telemetry::Counter,
};

/// Answers kept per worker for `accept_offer` replays.
const ACCEPT_ANSWERS_KEPT: usize = 8;
/// How often disconnected workers' state is swept.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Counters of the gateway (metrics export them, tests and the benchmark read them).
#[derive(Debug, Default)]
pub struct GatewayStats {
    pub sessions_opened: Counter,
    pub sessions_closed: Counter,
    pub auth_failures: Counter,
    pub takeovers: Counter,
    pub heartbeat_timeouts: Counter,
    pub slow_consumers: Counter,
    pub abuse_closes: Counter,
    /// Frames handed to a connection's send queue by dispatch.
    pub notices_queued: Counter,
    /// Notices for a worker with no live connection (offers are resumed from the database).
    pub notices_undelivered: Counter,
    pub offers_resent: Counter,
    pub location_updates: Counter,
    pub rate_limited: Counter,
    pub errors_sent: Counter,
    /// Workers announced again to a city's new owner (a cluster takeover).
    pub workers_reannounced: Counter,
}

/// Why the engine ends a connection from outside its own task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum KillReason {
    Replaced = 1,
    SlowConsumer = 2,
    /// The worker was deactivated or deleted while connected.
    Deactivated = 3,
}

/// The signal that ends a connection from outside (takeover, full send queue).
#[derive(Debug, Default)]
pub struct Kill {
    notify: Notify,
    reason: AtomicU8,
}

impl Kill {
    /// The first reason wins; later ones are ignored.
    pub fn fire(&self, reason: KillReason) {
        if self
            .reason
            .compare_exchange(0, reason as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            // `notify_one` keeps a permit when the session is not waiting yet.
            self.notify.notify_one();
        }
    }

    pub async fn fired(&self) -> KillReason {
        loop {
            match self.reason.load(Ordering::Acquire) {
                1 => return KillReason::Replaced,
                2 => return KillReason::SlowConsumer,
                3 => return KillReason::Deactivated,
                _ => self.notify.notified().await,
            }
        }
    }
}

/// A live connection as the registry sees it.
#[derive(Debug)]
struct Conn {
    id: u64,
    tx: mpsc::Sender<String>,
    kill: Arc<Kill>,
}

/// How a worker online in a city was announced to the city's actor, kept up to date with
/// its position.
#[derive(Debug, Clone)]
pub struct Announced {
    pub lon: f64,
    pub lat: f64,
    pub skills: Vec<String>,
}

/// An offer pushed to a worker and still believed pending.
#[derive(Debug, Clone, Copy)]
struct TrackedOffer {
    offer_id: Uuid,
    seq: u64,
    acked: bool,
    expires_at: DateTime<Utc>,
}

/// A remembered `accept_offer` answer.
#[derive(Debug, Clone)]
struct AcceptAnswer {
    key: String,
    offer_id: Uuid,
    answer: Result<Value, WireError>,
}

/// What the engine remembers about one worker. A std `Mutex`: every critical section is a
/// few field updates, never an `.await`.
#[derive(Debug, Default)]
struct WorkerState {
    conn: Option<Conn>,
    /// The id of the last connection that ended (for the reconnect grace).
    last_conn: u64,
    /// The city the worker is online in, whichever of its connections put it there.
    online_city: Option<String>,
    /// Where and as what it went online (its last position since): what a cluster node
    /// announces again to a city's new owner.
    announced: Option<Announced>,
    last_seq: u64,
    offers: Vec<TrackedOffer>,
    accepts: VecDeque<AcceptAnswer>,
    disconnected_at: Option<Instant>,
}

impl WorkerState {
    /// Strictly increasing per worker, and across engine restarts too: the wall clock in
    /// milliseconds unless that would not increase.
    fn next_seq(&mut self) -> u64 {
        let now = Utc::now().timestamp_millis().max(0) as u64;
        self.last_seq = (self.last_seq + 1).max(now);
        self.last_seq
    }

    fn forget_stale_offers(&mut self) {
        let now = Utc::now();
        self.offers.retain(|o| o.expires_at > now);
    }

    /// The sequence number of an offer, assigning one the first time it is seen.
    fn track(&mut self, offer: &OfferNotice) -> TrackedOffer {
        self.forget_stale_offers();
        if let Some(t) = self.offers.iter().find(|o| o.offer_id == offer.offer_id) {
            return *t;
        }
        let t = TrackedOffer {
            offer_id: offer.offer_id,
            seq: self.next_seq(),
            acked: false,
            expires_at: offer.expires_at,
        };
        self.offers.push(t);
        t
    }

    fn untrack(&mut self, offer_id: Uuid) {
        self.offers.retain(|o| o.offer_id != offer_id);
    }
}

/// One worker's entry in the registry.
#[derive(Debug)]
pub struct WorkerEntry {
    pub id: Uuid,
    state: Mutex<WorkerState>,
    /// Serialises going online and offline (a command, a takeover, a lost connection's
    /// clean-up), which await the city actor: the last word is always the latest event's.
    pub(super) presence: tokio::sync::Mutex<()>,
}

impl WorkerEntry {
    fn lock(&self) -> std::sync::MutexGuard<'_, WorkerState> {
        // A panic while holding this lock cannot leave the state half-written in a way
        // that matters more than losing the session, so poisoning is ignored.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn online_city(&self) -> Option<String> {
        self.lock().online_city.clone()
    }

    /// True while `conn_id` is the worker's current connection.
    pub fn is_current(&self, conn_id: u64) -> bool {
        self.lock().conn.as_ref().is_some_and(|c| c.id == conn_id)
    }

    pub fn set_online_city(&self, city: Option<String>) -> Option<String> {
        let mut st = self.lock();
        if city.is_none() {
            st.announced = None;
        }
        std::mem::replace(&mut st.online_city, city)
    }

    /// The worker is online in `city` at (lon, lat) with `skills`.
    pub fn set_online(&self, city: String, announced: Announced) {
        let mut st = self.lock();
        st.online_city = Some(city);
        st.announced = Some(announced);
    }

    /// The worker's latest position, once online.
    pub fn moved_to(&self, lon: f64, lat: f64) {
        if let Some(a) = self.lock().announced.as_mut() {
            (a.lon, a.lat) = (lon, lat);
        }
    }

    /// The city it is online in and how it was announced there.
    pub fn announced(&self) -> Option<(String, Announced)> {
        let st = self.lock();
        Some((st.online_city.clone()?, st.announced.clone()?))
    }

    /// Marks an offer acknowledged; false when it is unknown or no longer pending.
    pub fn ack(&self, offer_id: Uuid) -> bool {
        let mut st = self.lock();
        st.forget_stale_offers();
        match st.offers.iter_mut().find(|o| o.offer_id == offer_id) {
            Some(o) => {
                o.acked = true;
                true
            }
            None => false,
        }
    }

    pub fn untrack(&self, offer_id: Uuid) {
        self.lock().untrack(offer_id);
    }

    /// The `offer` frame to send on resume, or `None` when the app already has it (acked
    /// and within the sequence it says it has seen).
    pub fn resume_frame(&self, offer: &OfferNotice, last_seen: u64) -> Option<String> {
        let mut st = self.lock();
        let t = st.track(offer);
        if t.acked && t.seq <= last_seen {
            return None;
        }
        Some(protocol::offer_frame(offer, t.seq))
    }

    /// A remembered answer for this idempotency key: `Some(Err)` when the key was used for
    /// another offer.
    pub fn accept_answer(
        &self,
        key: &str,
        offer_id: Uuid,
    ) -> Option<Result<Result<Value, WireError>, WireError>> {
        let st = self.lock();
        let found = st.accepts.iter().find(|a| a.key == key)?;
        if found.offer_id != offer_id {
            return Some(Err(WireError::new(
                protocol::ErrorCode::IdempotencyKeyReused,
                "this idempotencyKey was already used to accept another offer",
            )));
        }
        Some(Ok(found.answer.clone()))
    }

    pub fn remember_accept(&self, key: &str, offer_id: Uuid, answer: Result<Value, WireError>) {
        let mut st = self.lock();
        if st.accepts.len() >= ACCEPT_ANSWERS_KEPT {
            st.accepts.pop_front();
        }
        st.accepts.push_back(AcceptAnswer {
            key: key.to_string(),
            offer_id,
            answer,
        });
    }
}

/// What every session shares, set once from the application state.
pub(super) struct Shared {
    pub dispatcher: Dispatcher,
    pub store: Store,
    pub keys: TokenKeys,
    pub identities: Arc<Identities>,
}

/// A connection's registration: its id, its send queue and its kill signal.
pub(super) struct Registration {
    pub entry: Arc<WorkerEntry>,
    pub conn_id: u64,
    pub tx: mpsc::Sender<String>,
    pub rx: mpsc::Receiver<String>,
    pub kill: Arc<Kill>,
}

/// Live worker sessions; dispatch pushes notices through it.
pub struct Sessions {
    workers: DashMap<Uuid, Arc<WorkerEntry>>,
    limits: RwLock<Arc<Limits>>,
    next_conn: AtomicU64,
    /// Upgraded connections whose task is still running.
    live: AtomicUsize,
    /// Workers with an authenticated connection.
    connected: AtomicUsize,
    all_closed: Notify,
    /// Seconds since `started` of the last prune.
    last_prune: AtomicU64,
    started: Instant,
    pub stats: GatewayStats,
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions::new()
    }
}

impl Sessions {
    /// A registry with the default [`Limits`].
    pub fn new() -> Sessions {
        Sessions::with_limits(Limits::default())
    }

    pub fn with_limits(limits: Limits) -> Sessions {
        Sessions {
            workers: DashMap::new(),
            limits: RwLock::new(Arc::new(limits)),
            next_conn: AtomicU64::new(1),
            live: AtomicUsize::new(0),
            connected: AtomicUsize::new(0),
            all_closed: Notify::new(),
            last_prune: AtomicU64::new(0),
            started: Instant::now(),
            stats: GatewayStats::default(),
        }
    }

    /// The limits new connections get.
    pub fn limits(&self) -> Arc<Limits> {
        self.limits
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Changes the limits of connections opened from now on.
    pub fn set_limits(&self, limits: Limits) {
        *self.limits.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(limits);
    }

    /// Connections currently open (authenticated or not).
    pub fn open_connections(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }

    /// Workers with an authenticated connection (the ops dashboard's "ws sessions").
    pub fn connected_workers(&self) -> usize {
        self.connected.load(Ordering::Acquire)
    }

    /// True when the worker has an authenticated connection.
    pub fn is_connected(&self, worker_id: Uuid) -> bool {
        self.workers
            .get(&worker_id)
            .is_some_and(|e| e.lock().conn.is_some())
    }

    /// Workers with an authenticated connection right now.
    pub fn connected_worker_ids(&self) -> Vec<Uuid> {
        self.workers
            .iter()
            .filter(|e| e.value().lock().conn.is_some())
            .map(|e| *e.key())
            .collect()
    }

    /// Closes the worker's live connection, if it has one, for `reason`. True when one was.
    pub fn kill(&self, worker_id: Uuid, reason: KillReason) -> bool {
        let Some(entry) = self.workers.get(&worker_id).map(|e| e.value().clone()) else {
            return false;
        };
        let st = entry.lock();
        match &st.conn {
            Some(conn) => {
                conn.kill.fire(reason);
                true
            }
            None => false,
        }
    }

    /// The city the worker is online in, as the gateway knows it.
    pub fn online_city(&self, worker_id: Uuid) -> Option<String> {
        self.workers.get(&worker_id)?.online_city()
    }

    /// Waits until every connection task has finished (after the shutdown signal closed
    /// them with 1001), at most `timeout`. Returns true when all finished.
    pub async fn drain(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.all_closed.notified();
            if self.live.load(Ordering::Acquire) == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.live.load(Ordering::Acquire) == 0;
            }
        }
    }

    /// Counts a connection task; the guard uncounts it when dropped.
    pub(super) fn open(self: &Arc<Self>) -> LiveGuard {
        self.live.fetch_add(1, Ordering::AcqRel);
        LiveGuard(self.clone())
    }

    fn entry(&self, worker_id: Uuid) -> Arc<WorkerEntry> {
        self.workers
            .entry(worker_id)
            .or_insert_with(|| {
                Arc::new(WorkerEntry {
                    id: worker_id,
                    // Not connected yet: forgotten after the retention like a worker gone.
                    state: Mutex::new(WorkerState {
                        disconnected_at: Some(Instant::now()),
                        ..WorkerState::default()
                    }),
                    presence: tokio::sync::Mutex::new(()),
                })
            })
            .clone()
    }

    /// Registers an authenticated connection; an older connection of the same worker is
    /// told to close (takeover).
    pub(super) fn register(&self, worker_id: Uuid, last_seen: u64, queue: usize) -> Registration {
        self.prune_if_due();
        let entry = self.entry(worker_id);
        let conn_id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(queue.max(1));
        let kill = Arc::new(Kill::default());
        let old = {
            let mut st = entry.lock();
            st.disconnected_at = None;
            // New sequence numbers must exceed what the app has seen, whatever our clock says.
            st.last_seq = st.last_seq.max(last_seen);
            st.conn.replace(Conn {
                id: conn_id,
                tx: tx.clone(),
                kill: kill.clone(),
            })
        };
        match old {
            Some(old) => {
                old.kill.fire(KillReason::Replaced);
                self.stats.takeovers.inc();
            }
            None => {
                self.connected.fetch_add(1, Ordering::AcqRel);
            }
        }
        self.stats.sessions_opened.inc();
        Registration {
            entry,
            conn_id,
            tx,
            rx,
            kill,
        }
    }

    /// Unregisters a connection. True when it was the worker's current one (so its ending
    /// concerns the worker's presence); false when a newer connection took over.
    pub(super) fn unregister(&self, entry: &WorkerEntry, conn_id: u64) -> bool {
        let mut st = entry.lock();
        if st.conn.as_ref().is_some_and(|c| c.id == conn_id) {
            st.conn = None;
            st.last_conn = conn_id;
            st.disconnected_at = Some(Instant::now());
            self.connected.fetch_sub(1, Ordering::AcqRel);
            true
        } else {
            false
        }
    }

    /// Takes the worker offline (its offer, if any, settled as a timeout) unless a newer
    /// connection holds it by now. With `after_conn`, only if that connection is still the
    /// last one that ended (the reconnect grace of a connection nobody replaced).
    pub(super) async fn take_offline(
        &self,
        dispatcher: &Dispatcher,
        entry: &WorkerEntry,
        after_conn: Option<u64>,
    ) {
        let _presence = entry.presence.lock().await;
        let city = {
            let mut st = entry.lock();
            let superseded = after_conn.is_some_and(|c| st.last_conn != c);
            if st.conn.is_some() || superseded {
                return;
            }
            st.online_city.take()
        };
        if let Some(city) = city {
            dispatcher.worker_offline(&city, entry.id).await;
            tracing::info!(target: "Gateway", worker_id = %entry.id, city, "worker offline: connection gone");
        }
    }

    /// Drops the state of workers gone for longer than `retain_worker_state` (at most once
    /// a minute; the sweep is linear in the number of known workers).
    fn prune_if_due(&self) {
        let now = self.started.elapsed().as_secs();
        let last = self.last_prune.load(Ordering::Relaxed);
        if now < last + PRUNE_EVERY.as_secs()
            || self
                .last_prune
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let keep_for = self.limits().retain_worker_state;
        self.workers.retain(|_, e| {
            let mut st = e.lock();
            st.forget_stale_offers();
            let gone_long = st.disconnected_at.is_some_and(|t| t.elapsed() >= keep_for);
            !(st.conn.is_none() && st.online_city.is_none() && gone_long && st.offers.is_empty())
        });
    }

    fn push(&self, entry: &WorkerEntry, st: &WorkerState, frame: String) {
        let Some(conn) = &st.conn else {
            self.stats.notices_undelivered.inc();
            return;
        };
        match conn.tx.try_send(frame) {
            Ok(()) => self.stats.notices_queued.inc(),
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::info!(target: "Gateway", worker_id = %entry.id, "send queue full: closing as a slow consumer");
                conn.kill.fire(KillReason::SlowConsumer);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => self.stats.notices_undelivered.inc(),
        }
    }
}

#[async_trait::async_trait]
impl Presence for Sessions {
    /// Announces again, to the city's (new) owner, every worker whose session here holds
    /// it online in `city_id`: the takeover of a city starts with an empty city actor.
    async fn reannounce(&self, dispatcher: &Dispatcher, city_id: &str) -> usize {
        use futures::StreamExt;
        let entries: Vec<Arc<WorkerEntry>> = self
            .workers
            .iter()
            .filter(|e| e.value().online_city().as_deref() == Some(city_id))
            .map(|e| e.value().clone())
            .collect();
        let announced = futures::stream::iter(entries)
            .map(|entry| async move {
                // Serialised with the worker's own going online and offline.
                let _presence = entry.presence.lock().await;
                let (city, at) = entry.announced().filter(|(c, _)| c == city_id)?;
                match dispatcher
                    .worker_online(&city, entry.id, at.lon, at.lat, at.skills)
                    .await
                {
                    Ok(()) => Some(()),
                    Err(e) => {
                        tracing::warn!(target: "Gateway", worker_id = %entry.id, city, error = %e, "worker not announced to the new owner");
                        None
                    }
                }
            })
            .buffer_unordered(32)
            .filter_map(|done| async move { done })
            .count()
            .await;
        self.stats.workers_reannounced.add(announced as u64);
        announced
    }
}

impl WorkerGateway for Sessions {
    fn has_session(&self, worker_id: Uuid) -> bool {
        self.is_connected(worker_id)
    }

    fn notify(&self, notice: WorkerNotice) {
        let worker_id = notice.worker_id();
        let entry = match &notice {
            // Offers are tracked even without a connection, so a resume sends them with
            // the sequence number they were given.
            WorkerNotice::Offer(_) => self.entry(worker_id),
            _ => match self.workers.get(&worker_id) {
                Some(e) => e.clone(),
                None => {
                    self.stats.notices_undelivered.inc();
                    return;
                }
            },
        };
        let mut st = entry.lock();
        let frame = match &notice {
            WorkerNotice::Offer(offer) => {
                let _frame = tracing::info_span!("offer_frame", request_id = %offer.request_id,
                    worker_id = %offer.worker_id, offer_id = %offer.offer_id)
                .entered();
                let t = st.track(offer);
                if t.acked {
                    // Dispatch re-pushes offers after a restart; the app already has it.
                    return;
                }
                protocol::offer_frame(offer, t.seq)
            }
            WorkerNotice::OfferWithdrawn {
                offer_id,
                request_id,
                reason,
                ..
            } => {
                st.untrack(*offer_id);
                protocol::withdrawn_frame(*offer_id, *request_id, reason)
            }
            WorkerNotice::AssignmentConfirmed {
                offer_id,
                request_id,
                ..
            } => {
                st.untrack(*offer_id);
                protocol::confirmed_frame(*offer_id, *request_id)
            }
            WorkerNotice::JobUpdate {
                request_id, status, ..
            } => protocol::job_update_frame(*request_id, *status),
            WorkerNotice::JobReminder {
                request_id,
                scheduled_start,
                scheduled_end,
                ..
            } => protocol::job_reminder_frame(*request_id, *scheduled_start, *scheduled_end),
            WorkerNotice::AssignmentRevoked {
                request_id, reason, ..
            } => protocol::assignment_revoked_frame(*request_id, reason),
        };
        self.push(&entry, &st, frame);
    }
}

/// Keeps [`Sessions::open_connections`] right whatever way a connection task ends.
pub(super) struct LiveGuard(Arc<Sessions>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        if self.0.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.all_closed.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Status;

    fn offer_for(worker_id: Uuid) -> OfferNotice {
        OfferNotice {
            offer_id: Uuid::new_v4(),
            request_id: Uuid::new_v4(),
            worker_id,
            attempt: 1,
            expires_at: Utc::now() + chrono::Duration::minutes(5),
            description: "Corte de pasto".into(),
            square_meters: 100.0,
            worker_net_cents: 1_275_000,
            currency: "ARS".into(),
            distance_meters: 458.3,
            area: "Buenos Aires".into(),
            latitude: -34.604,
            longitude: -58.382,
            scheduled_start: None,
            scheduled_end: None,
        }
    }

    fn frame_json(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    #[tokio::test]
    async fn notices_reach_the_current_connection_with_increasing_sequence_numbers() {
        let sessions = Sessions::new();
        let worker = Uuid::new_v4();
        let mut reg = sessions.register(worker, 0, 8);
        let (a, b) = (offer_for(worker), offer_for(worker));
        sessions.notify(WorkerNotice::Offer(a.clone()));
        sessions.notify(WorkerNotice::Offer(b.clone()));
        sessions.notify(WorkerNotice::JobUpdate {
            worker_id: worker,
            request_id: b.request_id,
            status: Status::Assigned,
        });
        let first = frame_json(&reg.rx.recv().await.unwrap());
        let second = frame_json(&reg.rx.recv().await.unwrap());
        assert_eq!(first["type"], "offer");
        assert_eq!(first["data"]["offerId"], a.offer_id.to_string());
        assert!(second["data"]["seq"].as_u64() > first["data"]["seq"].as_u64());
        assert_eq!(
            frame_json(&reg.rx.recv().await.unwrap())["type"],
            "job_update"
        );
        // The same offer pushed again keeps its number.
        sessions.notify(WorkerNotice::Offer(a.clone()));
        let again = frame_json(&reg.rx.recv().await.unwrap());
        assert_eq!(again["data"]["seq"], first["data"]["seq"]);
    }

    #[tokio::test]
    async fn a_second_registration_takes_over_and_fires_the_old_kill() {
        let sessions = Sessions::new();
        let worker = Uuid::new_v4();
        let old = sessions.register(worker, 0, 8);
        let new = sessions.register(worker, 0, 8);
        assert_eq!(old.kill.fired().await, KillReason::Replaced);
        assert!(!sessions.unregister(&old.entry, old.conn_id));
        assert!(sessions.is_connected(worker));
        assert!(sessions.unregister(&new.entry, new.conn_id));
        assert!(!sessions.is_connected(worker));
    }

    #[tokio::test]
    async fn a_full_send_queue_marks_the_connection_a_slow_consumer() {
        let sessions = Sessions::new();
        let worker = Uuid::new_v4();
        let reg = sessions.register(worker, 0, 2);
        for _ in 0..3 {
            sessions.notify(WorkerNotice::JobUpdate {
                worker_id: worker,
                request_id: Uuid::new_v4(),
                status: Status::InProgress,
            });
        }
        assert_eq!(reg.kill.fired().await, KillReason::SlowConsumer);
    }

    #[tokio::test]
    async fn resume_skips_only_acked_offers_the_app_has_seen() {
        let sessions = Sessions::new();
        let worker = Uuid::new_v4();
        let reg = sessions.register(worker, 0, 8);
        let offer = offer_for(worker);
        let seq = frame_json(&reg.entry.resume_frame(&offer, 0).unwrap())["data"]["seq"]
            .as_u64()
            .unwrap();
        // Not acked: sent again whatever the app says it saw.
        assert!(reg.entry.resume_frame(&offer, seq).is_some());
        assert!(reg.entry.ack(offer.offer_id));
        assert!(reg.entry.resume_frame(&offer, seq).is_none());
        // Acked but the app lost it (fresh install): sent again.
        assert!(reg.entry.resume_frame(&offer, seq - 1).is_some());
        assert!(!reg.entry.ack(Uuid::new_v4()));
    }

    #[test]
    fn sequence_numbers_never_go_below_what_the_app_saw() {
        let sessions = Sessions::new();
        let worker = Uuid::new_v4();
        let far_future = u64::MAX / 4;
        let reg = sessions.register(worker, far_future, 8);
        let offer = offer_for(worker);
        let seq = frame_json(&reg.entry.resume_frame(&offer, 0).unwrap())["data"]["seq"]
            .as_u64()
            .unwrap();
        assert_eq!(seq, far_future + 1);
    }

    #[tokio::test(start_paused = true)]
    async fn workers_gone_past_the_retention_are_forgotten_unless_an_offer_is_pending() {
        let sessions = Sessions::with_limits(Limits {
            retain_worker_state: Duration::from_secs(5),
            ..Limits::default()
        });
        let (gone, waiting, connected) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let reg = sessions.register(gone, 0, 8);
        assert!(sessions.unregister(&reg.entry, reg.conn_id));
        // Never connected, but holds a pending offer that a reconnect must resume.
        sessions.notify(WorkerNotice::Offer(offer_for(waiting)));
        // Never connected, and its offer has expired since: nothing left to resume.
        let stale = Uuid::new_v4();
        sessions.notify(WorkerNotice::Offer(OfferNotice {
            expires_at: Utc::now() - chrono::Duration::seconds(1),
            ..offer_for(stale)
        }));
        let _live = sessions.register(connected, 0, 8);
        tokio::time::advance(PRUNE_EVERY + Duration::from_secs(1)).await;
        let _trigger = sessions.register(Uuid::new_v4(), 0, 8);
        assert!(!sessions.workers.contains_key(&gone));
        assert!(!sessions.workers.contains_key(&stale));
        assert!(sessions.workers.contains_key(&waiting));
        assert!(sessions.workers.contains_key(&connected));
    }

    #[test]
    fn idempotency_keys_replay_answers_and_refuse_reuse() {
        let entry = WorkerEntry {
            id: Uuid::new_v4(),
            state: Mutex::default(),
            presence: tokio::sync::Mutex::new(()),
        };
        let offer = Uuid::new_v4();
        assert!(entry.accept_answer("k", offer).is_none());
        entry.remember_accept("k", offer, Ok(serde_json::json!({"status": "ASSIGNED"})));
        assert_eq!(
            entry.accept_answer("k", offer),
            Some(Ok(Ok(serde_json::json!({"status": "ASSIGNED"}))))
        );
        let reused = entry
            .accept_answer("k", Uuid::new_v4())
            .unwrap()
            .unwrap_err();
        assert_eq!(reused.code, protocol::ErrorCode::IdempotencyKeyReused);
        for i in 0..ACCEPT_ANSWERS_KEPT {
            entry.remember_accept(&format!("k{i}"), offer, Ok(Value::Null));
        }
        assert!(
            entry.accept_answer("k", offer).is_none(),
            "oldest answer evicted"
        );
    }
}
