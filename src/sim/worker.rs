//! One simulated worker: a real WebSocket client of `/ws/worker` (docs/worker-protocol.md),
//! answering offers by the behaviour model.

use std::{
    collections::{HashMap, HashSet},
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use futures::{SinkExt, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::{protocol::WebSocketConfig, Message};
use uuid::Uuid;

use super::{
    behaviour::{mix, Answer, Commitment, Traits},
    random_point,
    wire::{self, ClientFrame},
    Fleet, Rng, Stats,
};
use crate::auth::Role;

/// Engine frames are a few hundred bytes. tungstenite's default 128 KiB read buffer is
/// zero-filled on every read: with 10k sockets that alone cost the simulator a core.
const READ_BUFFER_BYTES: usize = 4 * 1024;
/// The skills every simulated worker has (the provisioned profiles carry the same).
const SKILLS: &[&str] = &["lawn_mowing", "gardening", "cleaning"];
/// A worker who gives a job back does it this long after accepting.
const CANCEL_AFTER: Duration = Duration::from_secs(1);
/// The `id` of the go_online message, so its answer is recognised.
const ONLINE_ID: &str = "online";

/// One worker across its sessions: who it is, where it is, what it has seen.
struct Worker {
    fleet: Arc<Fleet>,
    id: Uuid,
    index: u64,
    traits: Traits,
    /// Walks and backoff jitter (answers have their own per-request streams).
    rng: Rng,
    position: (f64, f64),
    last_seq: u64,
    /// Sessions opened so far: each reconnect tries the next node of `--url`.
    sessions: u64,
}

/// Follows a worker for the whole run, reconnecting with backoff when the engine restarts.
pub async fn run(fleet: Arc<Fleet>, worker_id: Uuid, index: u64) {
    let seed = fleet.args.seed;
    let position = random_point(&fleet.city, &mut Rng::new(mix(seed, 0x9051, index)));
    let mut stop = fleet.stop.subscribe();
    let mut w = Worker {
        traits: fleet.behaviour.traits(seed, index),
        rng: Rng::new(mix(seed, 0x3A1C, index)),
        fleet,
        id: worker_id,
        index,
        position,
        last_seq: 0,
        sessions: 0,
    };
    let mut backoff = Duration::from_millis(200);
    let mut first = true;
    while !*stop.borrow() {
        if !first {
            w.fleet.stats.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        first = false;
        if w.session(&mut stop).await.is_ok() {
            backoff = Duration::from_millis(200);
        }
        if *stop.borrow() {
            break;
        }
        // Jittered exponential backoff, capped at 5 s.
        let jitter = Duration::from_millis((w.rng.next_f64() * 200.0) as u64);
        tokio::select! {
            _ = tokio::time::sleep(backoff + jitter) => {}
            _ = stop.changed() => break,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Something the worker does later: after thinking, at the slot's start, after the job.
#[derive(Debug, Clone, Copy)]
enum Action {
    /// `go_online` again, after the engine said to retry.
    GoOnline,
    Answer {
        offer: Uuid,
        accept: bool,
    },
    Start(Uuid),
    Complete(Uuid),
    Cancel(Uuid),
}

/// An offer on the worker's screen.
#[derive(Debug, Clone, Copy)]
struct Shown {
    request: Uuid,
    /// The request's index in the run (from its description), when readable.
    request_index: Option<u64>,
    distance_m: f64,
    slot_start: Option<DateTime<Utc>>,
}

/// One connection's state.
struct Session {
    actions: mpsc::UnboundedSender<Action>,
    /// Offers received and not yet answered (an ignored one is dropped at once).
    undecided: HashMap<Uuid, Shown>,
    /// Offers accepted, until confirmed.
    accepted: HashMap<Uuid, Shown>,
    /// Offers ever seen on this connection: a resent offer is shown once.
    seen: HashSet<Uuid>,
    /// Jobs this session drives (a replayed job_update must not start a second timer).
    jobs: HashSet<Uuid>,
    /// Jobs among them the worker means to do (its behaviour said keep).
    keeping: HashSet<Uuid>,
    online: bool,
    next_id: u64,
    /// Job commands sent and not answered yet, by message id: one refused as
    /// `UNAVAILABLE` (a city changing owner) is sent again, as an app would.
    in_flight: HashMap<String, Action>,
}

impl Session {
    /// The next message id, `<type>-<n>`: an error frame's `replyTo` then says what it
    /// refused.
    fn id(&mut self, kind: &str) -> String {
        self.next_id += 1;
        format!("{kind}-{}", self.next_id)
    }

    /// A message id for a job command, remembered until answered (to send it again on
    /// `UNAVAILABLE`).
    fn in_flight_id(&mut self, kind: &str, action: Action) -> String {
        let id = self.id(kind);
        self.in_flight.insert(id.clone(), action);
        id
    }

    /// Keeps an offer on screen while the worker thinks, then answers it.
    fn hold(&mut self, offer: Uuid, shown: Shown, after: Duration, accept: bool) {
        self.undecided.insert(offer, shown);
        self.later(after, Action::Answer { offer, accept });
    }

    fn later(&self, after: Duration, action: Action) {
        let tx = self.actions.clone();
        if after.is_zero() {
            let _ = tx.send(action);
            return;
        }
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let _ = tx.send(action);
        });
    }
}

type Sink = futures::stream::SplitSink<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    Message,
>;

impl Worker {
    fn stats(&self) -> &Stats {
        &self.fleet.stats
    }

    async fn session(&mut self, stop: &mut watch::Receiver<bool>) -> anyhow::Result<()> {
        // Spread over the nodes; after a lost session, the next node (the last one may be
        // the one that died).
        let node = self.fleet.args.url_for(self.index + self.sessions);
        self.sessions += 1;
        let url = format!("{}/ws/worker", node.replacen("http", "ws", 1));
        let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER_BYTES);
        let (ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), true).await?;
        let (mut tx, mut rx) = ws.split();
        let token = self.fleet.token(Role::Worker, self.id);
        let auth = wire::Auth {
            token: &token,
            last_seq: self.last_seq,
        };
        tx.send(auth.frame("auth")).await?;
        let mut heartbeat = Duration::from_secs(15);
        // Wait for auth_ok (or a close).
        loop {
            let Some(msg) = rx.next().await else {
                anyhow::bail!("closed during auth")
            };
            if let Message::Text(t) = msg? {
                if let Some(env) = wire::Envelope::parse(&t).filter(|e| e.kind == "auth_ok") {
                    if let Some(ms) = env
                        .data::<wire::AuthOk>()
                        .and_then(|a| a.heartbeat_interval_ms)
                    {
                        heartbeat = Duration::from_millis(ms.max(1000));
                    }
                    break;
                }
            }
        }
        let (lon, lat) = self.position;
        tx.send(
            wire::GoOnline {
                lat,
                lon,
                skills: SKILLS,
            }
            .frame(ONLINE_ID),
        )
        .await?;

        let (actions, mut actions_rx) = mpsc::unbounded_channel();
        let mut s = Session {
            actions,
            undecided: HashMap::new(),
            accepted: HashMap::new(),
            seen: HashSet::new(),
            jobs: HashSet::new(),
            keeping: HashSet::new(),
            online: false,
            next_id: 0,
            in_flight: HashMap::new(),
        };
        // Each worker's fixes start at a random phase: a fleet that connected together
        // would otherwise send all its locations in the same instant every period.
        let every = Duration::from_secs_f64(self.fleet.args.location_every);
        let phase = every.mul_f64(self.rng.next_f64());
        let mut location = tokio::time::interval_at(tokio::time::Instant::now() + phase, every);
        // Locations keep the session alive when they come often enough; a ping timer per
        // worker is only needed when they do not.
        let mut ping =
            (location.period() * 2 > heartbeat).then(|| tokio::time::interval(heartbeat));
        if let Some(p) = ping.as_mut() {
            p.tick().await;
        }
        let outcome = loop {
            tokio::select! {
                msg = rx.next() => {
                    let text = match msg {
                        None => break Ok(()),
                        Some(Err(e)) => break Err(e.into()),
                        Some(Ok(Message::Text(t))) => t,
                        Some(Ok(Message::Close(_))) => break Ok(()),
                        Some(Ok(_)) => continue,
                    };
                    let Some(env) = wire::Envelope::parse(&text) else { continue };
                    if let Err(e) = self.on_frame(&mut s, &mut tx, env).await {
                        break Err(e);
                    }
                }
                Some(action) = actions_rx.recv() => {
                    if let Err(e) = self.act(&mut s, &mut tx, action).await {
                        break Err(e);
                    }
                }
                _ = location.tick() => {
                    if let Err(e) = self.walk(&mut s, &mut tx).await {
                        break Err(e);
                    }
                }
                _ = async {
                    match ping.as_mut() {
                        Some(p) => p.tick().await,
                        None => std::future::pending().await,
                    }
                } => {
                    let id = s.id(wire::Ping::KIND);
                    if let Err(e) = tx.send(wire::Ping {}.frame(&id)).await {
                        break Err(e.into());
                    }
                }
                _ = stop.changed() => {
                    let _ = tx.send(wire::GoOffline {}.frame("offline")).await;
                    let _ = tx.send(Message::Close(None)).await;
                    break Ok(());
                }
            }
        };
        if s.online {
            self.stats().online.fetch_sub(1, Ordering::Relaxed);
        }
        outcome
    }

    async fn walk(&mut self, s: &mut Session, tx: &mut Sink) -> anyhow::Result<()> {
        // A random walk of up to ~150 m, kept inside the service area.
        let (lon, lat) = self.position;
        let next = (
            lon + (self.rng.next_f64() - 0.5) * 0.003,
            lat + (self.rng.next_f64() - 0.5) * 0.003,
        );
        if self.fleet.city.serves(next.0, next.1) {
            self.position = next;
        }
        self.stats().locations.fetch_add(1, Ordering::Relaxed);
        let fix = wire::Location {
            lat: self.position.1,
            lon: self.position.0,
            accuracy: 8.0,
            timestamp: Utc::now(),
        };
        let id = s.id(wire::Location::KIND);
        tx.send(fix.frame(&id)).await?;
        Ok(())
    }

    async fn on_frame(
        &mut self,
        s: &mut Session,
        tx: &mut Sink,
        env: wire::Envelope,
    ) -> anyhow::Result<()> {
        match env.kind.as_str() {
            "ok" if env.reply_to.as_deref() == Some(ONLINE_ID) && !s.online => {
                s.online = true;
                self.stats().online.fetch_add(1, Ordering::Relaxed);
            }
            "ok" if env
                .reply_to
                .as_deref()
                .is_some_and(|r| s.in_flight.contains_key(r)) =>
            {
                let answered = env.reply_to.as_deref().and_then(|r| s.in_flight.remove(r));
                if let Some(Action::Cancel(request)) = answered {
                    s.jobs.remove(&request);
                    self.stats()
                        .worker_cancellations
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
            "offer" => {
                if let Some(offer) = env.data::<wire::Offer>() {
                    self.on_offer(s, tx, offer).await?;
                }
            }
            "offer_withdrawn" => {
                if let Some(e) = env.data::<wire::OfferEvent>() {
                    if s.undecided.remove(&e.offer_id).is_some() {
                        self.stats()
                            .withdrawn_before_answer
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    s.accepted.remove(&e.offer_id);
                }
            }
            "assignment_confirmed" => {
                if let Some(e) = env.data::<wire::OfferEvent>() {
                    self.on_assigned(s, e.offer_id, e.request_id);
                }
            }
            "job_update" => {
                if let Some(job) = env.data::<wire::JobEvent>() {
                    self.on_job_update(s, job);
                }
            }
            "assignment_revoked" => {
                if let Some(job) = env.data::<wire::JobEvent>() {
                    s.jobs.remove(&job.request_id);
                    let meant_to_show = s.keeping.remove(&job.request_id);
                    if job.reason.as_deref() == Some("no_show") {
                        self.stats().no_shows.fetch_add(1, Ordering::Relaxed);
                        if meant_to_show {
                            self.stats()
                                .no_shows_while_keeping
                                .fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
            "job_reminder" => {
                if let Some(job) = env.data::<wire::JobEvent>() {
                    self.stats().reminded.lock().unwrap().insert(job.request_id);
                }
            }
            "error" => {
                let jitter = Duration::from_millis((self.rng.next_f64() * 300.0) as u64);
                let stats = self.stats();
                stats.error_frames.fetch_add(1, Ordering::Relaxed);
                let code = env
                    .data::<wire::ErrorBody>()
                    .map(|e| e.code)
                    .unwrap_or_else(|| "UNKNOWN".into());
                // Retryable (no owner for the city right now: a takeover under way): try
                // again shortly, as the protocol says an app should.
                if code == "UNAVAILABLE" {
                    let retry = match env.reply_to.as_deref() {
                        Some(ONLINE_ID) => Some(Action::GoOnline),
                        Some(id) => s.in_flight.remove(id),
                        None => None,
                    };
                    if let Some(action) = retry {
                        s.later(Duration::from_millis(300) + jitter, action);
                    }
                } else if let Some(Action::Cancel(request)) = env
                    .reply_to
                    .as_deref()
                    .and_then(|id| s.in_flight.remove(id))
                {
                    s.jobs.remove(&request);
                }
                // Keyed by what was refused too: "start_job NOT_YOUR_JOB".
                let code = match env.reply_to.as_deref().and_then(|r| r.rsplit_once('-')) {
                    Some((kind, _)) => format!("{kind} {code}"),
                    None => code,
                };
                *stats.error_codes.lock().unwrap().entry(code).or_default() += 1;
            }
            _ => {}
        }
        Ok(())
    }

    async fn on_offer(
        &mut self,
        s: &mut Session,
        tx: &mut Sink,
        offer: wire::Offer,
    ) -> anyhow::Result<()> {
        self.last_seq = self.last_seq.max(offer.seq);
        let ack_id = s.id(wire::AckOffer::KIND);
        tx.send(
            wire::AckOffer {
                offer_id: offer.offer_id,
            }
            .frame(&ack_id),
        )
        .await?;
        if !s.seen.insert(offer.offer_id) {
            return Ok(());
        }
        note_offer(self.stats(), offer.offer_id, offer.request_id);
        self.fleet.log_offer(offer.offer_id, offer.request_id);
        let shown = Shown {
            request: offer.request_id,
            request_index: super::customer::index_in(&offer.job.description),
            distance_m: offer.job.distance_meters.unwrap_or(0.0),
            slot_start: offer.job.scheduled_start,
        };
        let mut rng = self.rng_for(shown.request_index, 0);
        match self
            .fleet
            .behaviour
            .answer(&self.traits, shown.distance_m, &mut rng)
        {
            Answer::Ignore => {
                self.stats().ignored.fetch_add(1, Ordering::Relaxed);
            }
            Answer::Accept { after } => s.hold(offer.offer_id, shown, after, true),
            Answer::Reject { after } => s.hold(offer.offer_id, shown, after, false),
        }
        Ok(())
    }

    /// The stream a decision about one request draws from: the same for this worker and
    /// that request in every mode of a comparison (`purpose` separates the decisions).
    fn rng_for(&mut self, request_index: Option<u64>, purpose: u64) -> Rng {
        match request_index {
            Some(r) => Rng::new(mix(
                self.fleet.args.seed ^ purpose.wrapping_mul(0xD1B5_4A32_D192_ED03),
                self.index,
                r,
            )),
            // A request of another run (a demo fleet's neighbours): this worker's own stream.
            None => Rng::new(mix(self.rng.next_f64().to_bits(), self.index, purpose)),
        }
    }

    fn on_assigned(&mut self, s: &mut Session, offer: Uuid, request: Uuid) {
        let shown = s.accepted.remove(&offer);
        note_assigned(self.stats(), offer, request, shown.map(|o| o.distance_m));
        if !s.jobs.insert(request) {
            return;
        }
        let (index, slot_start) = shown
            .map(|o| (o.request_index, o.slot_start))
            .unwrap_or((None, None));
        let mut rng = self.rng_for(index, 1);
        match self
            .fleet
            .behaviour
            .commitment(&self.traits, slot_start.is_some(), &mut rng)
        {
            Commitment::Keep => {
                s.keeping.insert(request);
                self.schedule_job(s, request, slot_start, true)
            }
            Commitment::Cancel => s.later(CANCEL_AFTER, Action::Cancel(request)),
            // Accepted, and then nothing: the engine revokes it after the grace period.
            Commitment::NoShow => {}
        }
    }

    fn on_job_update(&mut self, s: &mut Session, job: wire::JobEvent) {
        match job.status.as_deref() {
            Some("COMPLETED") => {
                s.jobs.remove(&job.request_id);
                self.stats().completed.fetch_add(1, Ordering::Relaxed);
            }
            Some("CANCELLED") => {
                s.jobs.remove(&job.request_id);
            }
            // Replayed after a reconnect: pick the job up where it was.
            Some("ASSIGNED") if s.jobs.insert(job.request_id) => {
                self.schedule_job(s, job.request_id, None, true)
            }
            Some("IN_PROGRESS") if s.jobs.insert(job.request_id) => {
                self.schedule_job(s, job.request_id, None, false)
            }
            _ => {}
        }
    }

    /// Starts (when `from_start`) and completes the job: a booked job at its slot's start,
    /// a job wanted now half the job time after acceptance.
    fn schedule_job(
        &self,
        s: &Session,
        request: Uuid,
        slot_start: Option<DateTime<Utc>>,
        from_start: bool,
    ) {
        let half = Duration::from_secs_f64(self.fleet.args.job_seconds / 2.0);
        let start_in = match slot_start {
            Some(at) => (at - Utc::now()).to_std().unwrap_or_default(),
            None => half,
        };
        if from_start {
            s.later(start_in, Action::Start(request));
            s.later(start_in + half, Action::Complete(request));
        } else {
            s.later(half, Action::Complete(request));
        }
    }

    async fn act(&mut self, s: &mut Session, tx: &mut Sink, action: Action) -> anyhow::Result<()> {
        let frame = match action {
            Action::GoOnline if !s.online => {
                let (lon, lat) = self.position;
                wire::GoOnline {
                    lat,
                    lon,
                    skills: SKILLS,
                }
                .frame(ONLINE_ID)
            }
            Action::GoOnline => return Ok(()),
            Action::Answer { offer, accept } => {
                // Withdrawn meanwhile (taken by another worker, expired, cancelled).
                let Some(shown) = s.undecided.remove(&offer) else {
                    return Ok(());
                };
                let request_id = shown.request;
                if accept {
                    self.stats().accepts_sent.fetch_add(1, Ordering::Relaxed);
                    s.accepted.insert(offer, shown);
                    wire::AcceptOffer {
                        offer_id: offer,
                        request_id,
                        idempotency_key: format!("accept-{offer}"),
                    }
                    .frame(&s.id(wire::AcceptOffer::KIND))
                } else {
                    self.stats().rejects_sent.fetch_add(1, Ordering::Relaxed);
                    wire::RejectOffer {
                        offer_id: offer,
                        request_id,
                        reason: "simulated rejection",
                    }
                    .frame(&s.id(wire::RejectOffer::KIND))
                }
            }
            Action::Start(request) if s.jobs.contains(&request) => {
                let id = s.in_flight_id(wire::StartJob::KIND, action);
                wire::StartJob {
                    request_id: request,
                }
                .frame(&id)
            }
            Action::Complete(request) if s.jobs.contains(&request) => {
                let id = s.in_flight_id(wire::CompleteJob::KIND, action);
                wire::CompleteJob {
                    request_id: request,
                }
                .frame(&id)
            }
            Action::Cancel(request) if s.jobs.contains(&request) => {
                let id = s.in_flight_id(wire::CancelAssignment::KIND, action);
                wire::CancelAssignment {
                    request_id: request,
                    reason: "simulated: something came up",
                }
                .frame(&id)
            }
            // A job that ended meanwhile (cancelled by its customer, revoked).
            Action::Start(_) | Action::Complete(_) | Action::Cancel(_) => return Ok(()),
        };
        tx.send(frame).await?;
        Ok(())
    }
}

fn note_offer(s: &Stats, offer: Uuid, request: Uuid) {
    let now = Instant::now();
    s.offers.fetch_add(1, Ordering::Relaxed);
    s.offer_seen.lock().unwrap().insert(offer, now);
    s.first_offer_at
        .lock()
        .unwrap()
        .entry(request)
        .or_insert(now);
}

fn note_assigned(s: &Stats, offer: Uuid, request: Uuid, distance_m: Option<f64>) {
    let now = Instant::now();
    s.assigned.fetch_add(1, Ordering::Relaxed);
    if let Some(seen) = s.offer_seen.lock().unwrap().remove(&offer) {
        s.offer_to_accept_ms
            .lock()
            .unwrap()
            .push(now.duration_since(seen).as_secs_f64() * 1000.0);
    }
    if let Some(d) = distance_m {
        s.assigned_distance_m.lock().unwrap().push(d);
    }
    s.assigned_at.lock().unwrap().entry(request).or_insert(now);
}
