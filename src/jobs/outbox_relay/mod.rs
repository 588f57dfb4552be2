//! The outbox relay: delivers every committed `outbox_events` row to NATS JetStream (when
//! `NATS_URL` is set) and to in-process subscribers, exactly once in the stream, whatever
//! crashes in between.
//!
//! # Claiming, never tailing
//!
//! Each batch is one transaction: `select ... where processed = false and "parkedAt" is
//! null order by id limit <outbox_batch_size> for update skip locked`, publish, await the
//! broker's acks, `update ... set processed = true` for what was acked, commit. Batches are
//! pipelined: while batch N is marked and committed, batch N+1 is claimed (N's rows, still
//! locked, are skipped) and published; while the relay is behind, two batches await their
//! acks at once (see `Relay::run`).
//!
//! The relay keeps no position (no "last id seen"): ids are taken when a row is inserted
//! but become visible when its transaction commits, so id 41 can appear after id 42 was
//! relayed. A high-water mark would skip 41 for good; a claim of *all* unprocessed rows
//! finds it on the next claim. `skip locked` lets several engines drain the table side by
//! side on disjoint batches; a crashed engine's locks vanish with its connection and its
//! rows return.
//!
//! # Wake-ups: local signal + LISTEN/NOTIFY + a slow safety poll
//!
//! - **Local signal.** Every writer calls `Store::outbox_written()` after its commit, which
//!   wakes this relay directly ([`Store::outbox_committed`]): no round trip, lowest lag.
//! - **LISTEN `outbox_events`.** The same call sends `NOTIFY outbox_events`, coalesced, from
//!   *outside* the write transaction, so other engines' commits wake this relay too. Sent
//!   after the commit, a notification never arrives before its row is visible; sent
//!   outside the transaction, it does not serialise every commit on PostgreSQL's
//!   notification queue lock (a trigger or an in-transaction NOTIFY would).
//! - **Safety poll** ([`RelayOptions::safety_poll`], 2 s). Notifications are lost while the
//!   listener reconnects; a crashed engine's claimed rows come back with no notification;
//!   an operator may un-park rows or insert them by hand. The poll bounds the delay of all
//!   of these to a couple of seconds at the cost of one indexed query per poll.
//!
//! Short polling alone would trade latency against load (a 10 ms poll is 100 queries a
//! second per engine, idle or not); notifications give millisecond lag for free, and
//! because every wake-up re-reads the table, a lost or coalesced wake-up can only delay a
//! row, never skip it. While batches keep coming the relay does not wait at all.
//!
//! # Delivery and faults
//!
//! - A row is marked processed only after the broker acked it (acks are awaited, with up
//!   to [`RelayOptions::max_in_flight`] publishes pipelined). Without NATS the in-process
//!   hand-off alone marks it.
//! - Each message carries `Nats-Msg-Id: <event id>`: a re-publish after a crash between
//!   publish and mark (or after a lost ack) is dropped by the broker's duplicate window.
//! - An event the broker *refuses* (no stream captures its subject, over the size limit,
//!   not a valid subject) is charged an attempt and its error, and waits out an
//!   exponential backoff while the rest flow; at `outbox_max_attempts` it is parked
//!   (`"parkedAt"`), counted, and logged as ERROR. Un-park with
//!   `update outbox_events set "parkedAt" = null, attempts = 0 where id = ...`.
//! - When NATS is unreachable or out of resources nothing is charged: the relay pauses
//!   with backoff (ended early when the connection comes back), the backlog piles up in
//!   the table, and the relay resumes by itself.
//! - In-process subscribers get each event after its mark committed, in id order within
//!   a batch: the same facts as the stream, once per engine. With several engines each
//!   engine's subscribers see the events that engine relayed.
mod broker;
mod metrics;
mod retry;
mod wake;

use std::{
    collections::VecDeque,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{
    sync::{broadcast, watch, Notify},
    task::JoinHandle,
};

use self::{
    broker::{Acked, Broker, BrokerUnavailable, Delivery, Sending},
    metrics::Counters,
    retry::Deferrals,
};
use crate::store::{
    outbox_batch::{self, Charged},
    OutboxEvent, SettingsWatch, Store,
};

pub use self::{metrics::RelayMetrics, retry::Backoff};

/// The stream the relay creates when it is missing.
pub const DEFAULT_STREAM: &str = "ARREGLAME_EVENTS";
/// Events are published on `<prefix>.<type>`.
pub const DEFAULT_SUBJECT_PREFIX: &str = "arreglame.events";

/// Batches awaiting their acks at once while the relay is behind (see [`Relay::run`]).
const PIPELINE_DEPTH: usize = 2;

/// Events buffered for in-process subscribers; a subscriber further behind than this
/// gets `RecvError::Lagged` and skips ahead (the table and the stream still hold all).
const SUBSCRIBER_BUFFER: usize = 8192;

/// How the relay runs. [`RelayOptions::new`] gives the production values.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// NATS server(s), comma-separated; `None`: in-process subscribers only.
    pub nats_url: Option<String>,
    /// The JetStream stream; created when missing, capturing `<subject_prefix>.>`.
    pub stream: String,
    /// Subjects are `<subject_prefix>.<type>`.
    pub subject_prefix: String,
    /// How long the broker remembers a `Nats-Msg-Id` (set when the relay creates the
    /// stream). A re-publish after a crash is de-duplicated if the engine is back within
    /// it; longer windows cost broker memory for every id in the window.
    pub duplicate_window: Duration,
    /// The longest the relay sleeps without looking at the table.
    pub safety_poll: Duration,
    /// Waits between the attempts of one event the broker refused.
    pub event_retry: Backoff,
    /// Waits while NATS or PostgreSQL is unavailable.
    pub outage_retry: Backoff,
    /// Longest wait for one publish ack or JetStream API answer.
    pub ack_timeout: Duration,
    /// Publishes awaiting their ack at once.
    pub max_in_flight: usize,
}

impl RelayOptions {
    pub fn new(nats_url: Option<String>) -> RelayOptions {
        RelayOptions {
            nats_url,
            stream: DEFAULT_STREAM.into(),
            subject_prefix: DEFAULT_SUBJECT_PREFIX.into(),
            duplicate_window: Duration::from_secs(120),
            safety_poll: Duration::from_secs(2),
            event_retry: Backoff {
                initial: Duration::from_millis(500),
                max: Duration::from_secs(60),
            },
            outage_retry: Backoff {
                initial: Duration::from_millis(100),
                max: Duration::from_secs(5),
            },
            ack_timeout: Duration::from_secs(5),
            max_in_flight: 1024,
        }
    }
}

/// Handle to the running relay, cheap to clone.
#[derive(Clone)]
pub struct RelayHandle {
    events: broadcast::Sender<Arc<OutboxEvent>>,
    counters: Arc<Counters>,
    store: Store,
    stopped: watch::Receiver<bool>,
}

impl RelayHandle {
    /// Every outbox event this relay delivers, after its row is marked processed, in id
    /// order within each batch.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<OutboxEvent>> {
        self.events.subscribe()
    }

    /// Counters of this relay, with backlog, lag and parked rows read from the table.
    pub async fn metrics(&self) -> RelayMetrics {
        self.counters.snapshot(&self.store).await
    }

    /// Resolves once the relay has stopped after shutdown (a relay that panics is
    /// restarted, not stopped).
    pub async fn stopped(&self) {
        let mut stopped = self.stopped.clone();
        let _ = stopped.wait_for(|s| *s).await;
    }
}

/// Starts the relay with the production options. Returns at once: NATS is connected in
/// the background, and while it is down events wait in the table.
pub fn spawn(
    store: Store,
    settings: SettingsWatch,
    nats_url: Option<String>,
    shutdown: watch::Receiver<bool>,
) -> RelayHandle {
    spawn_with(store, settings, RelayOptions::new(nats_url), shutdown)
}

/// Starts the relay with explicit options (tests and benchmarks use their own stream).
/// It stops when `shutdown` turns true or its sender is dropped.
pub fn spawn_with(
    store: Store,
    settings: SettingsWatch,
    options: RelayOptions,
    shutdown: watch::Receiver<bool>,
) -> RelayHandle {
    let (events, _) = broadcast::channel(SUBSCRIBER_BUFFER);
    let counters = Arc::new(Counters::new(options.nats_url.is_some()));
    let (stopped_tx, stopped) = watch::channel(false);
    let new_rows = Arc::new(Notify::new());
    let listener = AbortOnDrop(wake::spawn_listener(
        &store,
        new_rows.clone(),
        shutdown.clone(),
    ));
    let parts = Parts {
        store: store.clone(),
        settings,
        options,
        events: events.clone(),
        counters: counters.clone(),
        new_rows,
    };
    tokio::spawn(async move {
        let _listener = listener;
        supervise(parts, shutdown).await;
        let _ = stopped_tx.send(true);
    });
    RelayHandle {
        events,
        counters,
        store,
        stopped,
    }
}

/// Pauses before restarting a relay that panicked.
const RESTART: Backoff = Backoff {
    initial: Duration::from_millis(500),
    max: Duration::from_secs(30),
};

/// What a relay is built from, kept to build it again after a panic.
struct Parts {
    store: Store,
    settings: SettingsWatch,
    options: RelayOptions,
    events: broadcast::Sender<Arc<OutboxEvent>>,
    counters: Arc<Counters>,
    new_rows: Arc<Notify>,
}

/// Runs the relay until shutdown. A panic (a bug) must not end the flow of events for
/// good: the relay is logged as ERROR and rebuilt (new NATS client, empty backoffs) after
/// a pause; its open transaction rolled back with it.
async fn supervise(parts: Parts, mut shutdown: watch::Receiver<bool>) {
    let mut panics = 0u32;
    loop {
        let relay = Relay::new(&parts);
        match tokio::spawn(relay.run(shutdown.clone())).await {
            Err(e) if e.is_panic() => {
                panics = panics.saturating_add(1);
                tracing::error!(target: "OutboxRelay", panics, "[OutboxRelay] relay panicked; restarting it");
                tokio::select! {
                    _ = tokio::time::sleep(RESTART.delay(panics)) => {}
                    _ = shutdown.wait_for(|stop| *stop) => return,
                }
            }
            _ => return,
        }
    }
}

/// Stops the listener with the relay, even if the relay panics.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Relay {
    store: Store,
    settings: SettingsWatch,
    options: RelayOptions,
    events: broadcast::Sender<Arc<OutboxEvent>>,
    counters: Arc<Counters>,
    /// `None` without NATS.
    broker: Option<Broker>,
    /// Refused events waiting out their backoff.
    deferrals: Deferrals,
    /// Other engines committed rows (LISTEN).
    new_rows: Arc<Notify>,
    /// The NATS connection came (back) up.
    broker_up: Arc<Notify>,
    /// Consecutive rounds that failed as a whole.
    failed_rounds: u32,
    /// When the relay started: NATS connects in the background, so a round that finds no
    /// broker yet in the first seconds is the normal start, not worth a WARN.
    started: std::time::Instant,
    /// Why the relay last woke, and what it knew at its last claim: a claim is made only
    /// when there may be something to claim (no empty claim transactions).
    wake: Wake,
    writes_at_last_claim: Option<u64>,
    last_claim_full: bool,
}

/// What woke the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wake {
    /// This engine committed outbox rows (the store told the relay directly).
    LocalCommit,
    /// Another engine's NOTIFY, the safety poll, a retry coming due, or the start: only the
    /// table can say whether there is work.
    Elsewhere,
}

/// How long after start a missing NATS connection is still "connecting", not an outage.
const CONNECTING_GRACE: Duration = Duration::from_secs(15);

/// A claimed batch, sent, whose transaction (holding the rows' locks) is still open.
struct InFlight {
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
    claimed: Vec<OutboxEvent>,
    sending: Sending,
    max_attempts: i32,
}

/// The oldest batch in flight, after its acks came in.
enum Front {
    Settled(Settled),
    /// Some event got "no responders": the broker must look at the stream first.
    NeedsBroker {
        tx: sqlx::Transaction<'static, sqlx::Postgres>,
        claimed: Vec<OutboxEvent>,
        acked: Acked,
        max_attempts: i32,
    },
}

/// A batch whose marks and charges committed.
struct Settled {
    outcomes: Outcomes,
    charged: Vec<Charged>,
}

/// Something outside the events kept the relay from delivering.
#[derive(Debug, thiserror::Error)]
enum RoundError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Broker(#[from] BrokerUnavailable),
    #[error("NATS did not take every event: {0}")]
    Undelivered(String),
}

/// A claimed batch sorted by outcome.
#[derive(Default)]
struct Outcomes {
    delivered: Vec<OutboxEvent>,
    duplicates: u64,
    refused: Vec<(i64, String)>,
    /// The first reason NATS did not take an event, if any.
    undelivered: Option<String>,
}

impl Outcomes {
    fn sort(claimed: Vec<OutboxEvent>, deliveries: Vec<Delivery>) -> Outcomes {
        let mut out = Outcomes::default();
        for (event, delivery) in claimed.into_iter().zip(deliveries) {
            match delivery {
                Delivery::Acked { duplicate } => {
                    out.duplicates += u64::from(duplicate);
                    out.delivered.push(event);
                }
                Delivery::Refused(error) => out.refused.push((event.id, error)),
                Delivery::Undelivered(reason) => {
                    out.undelivered.get_or_insert(reason);
                }
            }
        }
        out
    }
}

/// Waits for the batch's acks; then, unless the broker is needed, marks the delivered
/// rows, charges the refused ones, and commits.
async fn settle_front(batch: InFlight) -> Result<Front, sqlx::Error> {
    let InFlight {
        tx,
        claimed,
        sending,
        max_attempts,
    } = batch;
    let acked = sending.acked().await;
    if acked.needs_broker() {
        return Ok(Front::NeedsBroker {
            tx,
            claimed,
            acked,
            max_attempts,
        });
    }
    let outcomes = Outcomes::sort(claimed, acked.deliveries());
    settle(tx, outcomes, max_attempts).await.map(Front::Settled)
}

/// Marks the delivered rows, charges the refused ones, and commits.
async fn settle(
    mut tx: sqlx::Transaction<'static, sqlx::Postgres>,
    outcomes: Outcomes,
    max_attempts: i32,
) -> Result<Settled, sqlx::Error> {
    let delivered: Vec<i64> = outcomes.delivered.iter().map(|e| e.id).collect();
    outbox_batch::mark_processed(&mut tx, &delivered).await?;
    let charged = outbox_batch::charge_failures(&mut tx, &outcomes.refused, max_attempts).await?;
    tx.commit().await?;
    Ok(Settled { outcomes, charged })
}

impl Relay {
    fn new(parts: &Parts) -> Relay {
        let broker_up = Arc::new(Notify::new());
        let broker = parts.options.nats_url.clone().map(|url| {
            Broker::new(
                url,
                &parts.options,
                parts.counters.clone(),
                broker_up.clone(),
            )
        });
        Relay {
            store: parts.store.clone(),
            settings: parts.settings.clone(),
            options: parts.options.clone(),
            events: parts.events.clone(),
            counters: parts.counters.clone(),
            broker,
            deferrals: Deferrals::default(),
            new_rows: parts.new_rows.clone(),
            broker_up,
            failed_rounds: 0,
            started: std::time::Instant::now(),
            wake: Wake::Elsewhere,
            writes_at_last_claim: None,
            last_claim_full: false,
        }
    }

    /// Whether the next claim may find rows: after a local wake, only if this engine wrote
    /// since the last claim began (or that claim was full); otherwise the table is asked
    /// with one plain read first.
    async fn worth_claiming(&mut self, skip: &[i64]) -> Result<bool, sqlx::Error> {
        let writes = self.store.outbox_writes();
        let worth = match self.wake {
            Wake::LocalCommit => self.last_claim_full || self.writes_at_last_claim != Some(writes),
            Wake::Elsewhere => self.store.outbox_has_unclaimed(skip).await?,
        };
        if worth {
            self.writes_at_last_claim = Some(writes);
        }
        Ok(worth)
    }

    /// The loop: a pipeline of batches in flight. Each step settles the oldest batch
    /// (awaits its acks, marks, commits, tells subscribers) while it claims and sends the
    /// next. While the relay is behind (its last claim was full) it keeps
    /// [`PIPELINE_DEPTH`] batches awaiting acks, so a slow ack round trip does not cap
    /// throughput at one batch per round trip; once caught up it settles each batch at
    /// once, for the lowest lag. A batch in flight holds its rows' locks, so a newer claim
    /// skips them; batches settle in claim order, so subscribers see id order.
    async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        tracing::info!(target: "OutboxRelay", nats = self.broker.is_some(), stream = %self.options.stream,
            "[OutboxRelay] started");
        let mut pipeline: VecDeque<InFlight> = VecDeque::new();
        let mut behind = false;
        loop {
            if *shutdown.borrow() {
                break;
            }
            let fill = pipeline.is_empty() || (behind && pipeline.len() < PIPELINE_DEPTH);
            let front = if fill { None } else { pipeline.pop_front() };
            let step = tokio::select! {
                step = self.step(front) => step,
                // Dropping a step (and the pipeline) rolls the transactions back: at worst
                // their events were published and not marked; the broker drops the re-publish.
                changed = shutdown.changed() => match changed {
                    Ok(()) => continue,
                    Err(_) => break,
                },
            };
            let (settled, next) = step;
            let mut error = match settled {
                Some(Ok(settled)) => self.told(settled).map(RoundError::Undelivered),
                Some(Err(e)) => Some(e),
                None => None,
            };
            match next {
                Ok(Some((batch, full))) => {
                    behind = full;
                    pipeline.push_back(batch);
                }
                Ok(None) => behind = false,
                Err(e) => error = error.or(Some(e)),
            }
            // While this relay delivers and keeps up, other engines need not be woken for
            // this engine's rows (`Store::outbox_written`).
            self.store
                .set_outbox_relay_delivering(error.is_none() && !behind);
            let carry_on = if let Some(error) = error {
                // What is in flight rolls back; it is claimed again after the pause.
                pipeline.clear();
                behind = false;
                let pause = self.failed(&error);
                // The rolled-back rows are unclaimed again: ask the table next time.
                self.wake = Wake::Elsewhere;
                self.pause(pause, &mut shutdown).await
            } else {
                self.recovered();
                !pipeline.is_empty() || self.wait_for_work(&mut shutdown).await
            };
            if !carry_on {
                break;
            }
        }
        self.store.set_outbox_relay_delivering(false);
        tracing::info!(target: "OutboxRelay", "[OutboxRelay] stopped");
    }

    /// Settles `front` (if any) while claiming and sending the next batch. Returns what
    /// settled, and the new batch with whether it was full.
    async fn step(
        &mut self,
        front: Option<InFlight>,
    ) -> (
        Option<Result<Settled, RoundError>>,
        Result<Option<(InFlight, bool)>, RoundError>,
    ) {
        let Some(front) = front else {
            return (None, self.send_next(&[]).await);
        };
        // The front may commit before the next claim runs; none of its rows may be claimed
        // again in this step (a refused one must wait out its backoff).
        let front_ids: Vec<i64> = front.claimed.iter().map(|e| e.id).collect();
        let (settled, next) = tokio::join!(settle_front(front), self.send_next(&front_ids));
        let settled = match settled {
            Ok(Front::Settled(settled)) => Ok(settled),
            Ok(Front::NeedsBroker {
                tx,
                claimed,
                acked,
                max_attempts,
            }) => {
                self.settle_with_broker(tx, claimed, acked, max_attempts)
                    .await
            }
            Err(e) => Err(RoundError::Database(e)),
        };
        (Some(settled), next)
    }

    /// The rare path: "no responders" for some event; the broker checks the stream first.
    async fn settle_with_broker(
        &mut self,
        tx: sqlx::Transaction<'static, sqlx::Postgres>,
        claimed: Vec<OutboxEvent>,
        acked: Acked,
        max_attempts: i32,
    ) -> Result<Settled, RoundError> {
        let deliveries = match self.broker.as_mut() {
            Some(broker) => broker.resolve(&claimed, acked).await,
            None => acked.deliveries(),
        };
        let outcomes = Outcomes::sort(claimed, deliveries);
        Ok(settle(tx, outcomes, max_attempts).await?)
    }

    /// Claims the next batch (never `also_skip`) and sends it; `None` when there is
    /// nothing to claim. The flag says whether the batch was full.
    async fn send_next(
        &mut self,
        also_skip: &[i64],
    ) -> Result<Option<(InFlight, bool)>, RoundError> {
        let settings = self.settings.borrow().clone();
        if let Some(broker) = self.broker.as_mut() {
            broker.ready().await?;
        }
        let batch_size = settings.outbox_batch_size.max(1);
        let mut skip = self.deferrals.waiting(Instant::now());
        skip.extend_from_slice(also_skip);
        if !self.worth_claiming(&skip).await? {
            self.last_claim_full = false;
            return Ok(None);
        }
        let mut tx = self.store.begin_outbox_batch().await?;
        let claimed = outbox_batch::claim(&mut tx, batch_size, &skip).await?;
        let full = claimed.len() as i64 >= batch_size;
        self.last_claim_full = full;
        // What the claim did not see waits for the next wake: later claims are local-wake
        // gated by the write counter read before this one.
        self.wake = Wake::LocalCommit;
        if claimed.is_empty() {
            tx.commit().await?;
            return Ok(None);
        }
        let sending = match self.broker.as_mut() {
            Some(broker) => broker.send(&claimed).await,
            None => Sending::in_process(claimed.len()),
        };
        let batch = InFlight {
            tx,
            claimed,
            sending,
            max_attempts: settings.outbox_max_attempts,
        };
        Ok(Some((batch, full)))
    }

    /// After a batch committed: counts it, defers or reports the charged events, and hands
    /// the delivered ones to subscribers. Returns why NATS did not take some, if it did not.
    fn told(&mut self, settled: Settled) -> Option<String> {
        let Settled { outcomes, charged } = settled;
        self.record(&outcomes, &charged);
        for event in outcomes.delivered {
            self.deferrals.forget(event.id);
            // No subscriber is not an error: the stream and the table have the event.
            let _ = self.events.send(Arc::new(OutboxEvent {
                processed: true,
                ..event
            }));
        }
        outcomes.undelivered
    }

    /// Counts a committed batch, defers the charged events and reports the parked ones.
    fn record(&mut self, outcomes: &Outcomes, charged: &[Charged]) {
        let c = &self.counters;
        Counters::add(&c.published, outcomes.delivered.len() as u64);
        Counters::add(&c.duplicates, outcomes.duplicates);
        Counters::add(&c.failures, charged.len() as u64);
        let now = Instant::now();
        for charge in charged {
            let error = outcomes
                .refused
                .iter()
                .find(|(id, _)| *id == charge.id)
                .map_or("", |(_, e)| e.as_str());
            if charge.parked {
                self.deferrals.forget(charge.id);
                Counters::add(&c.parked, 1);
                tracing::error!(target: "OutboxRelay", event_id = charge.id, attempts = charge.attempts, error,
                    "[OutboxRelay] outbox event parked after its last attempt; see outbox_events.\"lastError\"");
            } else {
                self.deferrals
                    .defer(charge.id, charge.attempts, &self.options.event_retry, now);
                tracing::warn!(target: "OutboxRelay", event_id = charge.id, attempts = charge.attempts, error,
                    "[OutboxRelay] outbox event refused; retrying later");
            }
        }
    }

    /// Sleeps until new rows may be there: a local commit, another engine's NOTIFY, a
    /// deferred event falling due, or the safety poll. False on shutdown.
    async fn wait_for_work(&mut self, shutdown: &mut watch::Receiver<bool>) -> bool {
        let mut deadline = Instant::now() + self.options.safety_poll;
        if let Some(due) = self.deferrals.next_due() {
            deadline = deadline.min(due);
        }
        let (wake, carry_on) = tokio::select! {
            _ = self.store.outbox_committed() => (Wake::LocalCommit, true),
            _ = self.new_rows.notified() => (Wake::Elsewhere, true),
            _ = tokio::time::sleep_until(deadline.into()) => (Wake::Elsewhere, true),
            changed = shutdown.changed() => (Wake::Elsewhere, changed.is_ok() && !*shutdown.borrow()),
        };
        self.wake = wake;
        // A light trickle (one event per commit, commits apart) is gathered into one batch:
        // a batch costs the same four statements for one event or five hundred. While
        // behind (the last claim was full) there is no waiting.
        let linger = self.settings.borrow().outbox_linger;
        if carry_on && wake == Wake::LocalCommit && !self.last_claim_full && !linger.is_zero() {
            return tokio::select! {
                _ = tokio::time::sleep(linger) => true,
                changed = shutdown.changed() => changed.is_ok() && !*shutdown.borrow(),
            };
        }
        carry_on
    }

    /// Sleeps out an outage backoff, or less if NATS comes back. False on shutdown.
    async fn pause(&mut self, pause: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(pause) => true,
            _ = self.broker_up.notified() => true,
            changed = shutdown.changed() => changed.is_ok() && !*shutdown.borrow(),
        }
    }

    /// Counts a failed round, logs it without flooding the log (the 1st, 2nd, 4th, 8th...
    /// failure in a row), and returns the backoff.
    fn failed(&mut self, error: &RoundError) -> Duration {
        self.failed_rounds = self.failed_rounds.saturating_add(1);
        Counters::add(&self.counters.outages, 1);
        let connecting =
            matches!(error, RoundError::Broker(_)) && self.started.elapsed() < CONNECTING_GRACE;
        if connecting {
            tracing::debug!(target: "OutboxRelay", "[OutboxRelay] waiting for the NATS connection");
        } else if self.failed_rounds.is_power_of_two() {
            tracing::warn!(target: "OutboxRelay", error = %error, failed_rounds = self.failed_rounds,
                "[OutboxRelay] relay round failed; events wait in outbox_events and will be retried");
        } else {
            tracing::debug!(target: "OutboxRelay", error = %error, failed_rounds = self.failed_rounds, "relay round failed");
        }
        self.options.outage_retry.delay(self.failed_rounds)
    }

    fn recovered(&mut self) {
        if self.failed_rounds > 0 {
            tracing::info!(target: "OutboxRelay", failed_rounds = self.failed_rounds, "[OutboxRelay] relay resumed");
            self.failed_rounds = 0;
        }
    }
}
