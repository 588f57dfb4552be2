//! `arreglame simulate`: a fleet of workers as real WebSocket clients and customers as
//! real GraphQL clients, against a running engine. It provisions its own workers and
//! customers (rows in the database at `DATABASE_URL`, tokens signed with `JWT_SECRET`), so
//! it runs against any freshly seeded engine; `serve --demo-fleet N` runs one in-process.
//!
//! Workers random-walk inside the city's service area (a location every 4 s) and answer
//! offers by a behaviour model (`behaviour.rs`: acceptance falling with distance, think
//! time, reliability); they start and complete jobs after a simulated time. Customers are
//! open-loop (issue 13): each create is sent at its intended time, whatever the engine's
//! answers, and every latency counts from that intended time. After the run, every
//! request's final status is read back over GraphQL, and `--check` cross-checks the
//! database. `--compare` (`compare.rs`) runs the same seeded scenario once per dispatch mode.

mod behaviour;
pub mod compare;
mod customer;
pub mod report;
mod wire;
mod worker;

use std::{
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use clap::Args;
use tokio::sync::watch;
use uuid::Uuid;

pub use behaviour::{mix, Answer, Behaviour, Commitment, Traits};
pub use compare::Mode;
pub use report::{gini, Summary};

use crate::{
    auth::{Role, TokenKeys},
    dispatch::city::CityInfo,
    store::Store,
};

/// Options of `arreglame simulate`.
#[derive(Debug, Clone, Args)]
pub struct SimArgs {
    /// The engine's base URL, or several nodes' as a comma-separated list: workers and
    /// customers are spread over them round-robin, and a worker or create whose node does
    /// not answer moves on to the next one.
    #[arg(long, default_value = "http://127.0.0.1:3000")]
    pub url: String,
    /// Workers connected over WebSocket.
    #[arg(long, default_value_t = 50)]
    pub workers: usize,
    /// Customers creating requests over GraphQL.
    #[arg(long, default_value_t = 10)]
    pub customers: usize,
    #[arg(long, default_value = "buenos-aires")]
    pub city: String,
    /// How long customers keep creating requests (e.g. 60s, 5m), warm-up included.
    #[arg(long, default_value = "60s", value_parser = crate::auth::parse_ttl)]
    pub duration: Duration,
    /// The first part of the run left out of the latency figures and rates (a cold engine
    /// and fresh connections are not what is measured). 0s measures everything.
    #[arg(long, default_value = "5s", value_parser = crate::auth::parse_ttl)]
    pub warmup: Duration,
    /// Requests per second across all customers, sent open-loop at their intended times.
    #[arg(long, default_value_t = 2.0)]
    pub rate: f64,
    /// Seeds every random draw: positions, requests, workers' traits and answers.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Chance that a worker accepts an offer at 0 m (the rest are rejected).
    #[arg(long, default_value_t = 0.8)]
    pub accept_rate: f64,
    /// Distance (m) at which the chance of accepting halves; 0: distance does not matter.
    #[arg(long, default_value_t = 0.0)]
    pub accept_half_distance_m: f64,
    /// Share of offers a worker never answers (they time out).
    #[arg(long, default_value_t = 0.0)]
    pub ignore_share: f64,
    /// Mean seconds a worker takes to answer an offer (exponential, cut at 4x); 0 answers
    /// at once.
    #[arg(long, default_value_t = 0.0)]
    pub think_seconds: f64,
    /// Share of workers who are unreliable: they keep only 30-60 % of the jobs they
    /// accept, cancelling a job wanted now and not showing up for a booked one.
    #[arg(long, default_value_t = 0.0)]
    pub unreliable_share: f64,
    /// Share of requests booked ahead (`scheduledStart`/`scheduledEnd`) instead of now.
    #[arg(long, default_value_t = 0.0)]
    pub booked_share: f64,
    /// A booked slot starts this many seconds after its create.
    #[arg(long, default_value_t = 40.0)]
    pub slot_in_seconds: f64,
    /// Length of a booked slot in seconds.
    #[arg(long, default_value_t = 120.0)]
    pub slot_seconds: f64,
    /// With `--compare`: the engine's offer timeout for the run (`worker_timeout_minutes`);
    /// 0 leaves the engine's.
    #[arg(long, default_value_t = 0.0)]
    pub offer_timeout_seconds: f64,
    /// With `--compare`: seconds after a slot's start before a worker who has not started
    /// is a no-show (`no_show_grace_minutes`).
    #[arg(long, default_value_t = 6.0)]
    pub no_show_grace_seconds: f64,
    /// Share of requests their customer cancels a second after creating them.
    #[arg(long, default_value_t = 0.05)]
    pub cancel_rate: f64,
    /// Seconds a simulated job takes, from acceptance (or the slot's start) to completion.
    #[arg(long, default_value_t = 5.0)]
    pub job_seconds: f64,
    /// Seconds between location updates of each worker.
    #[arg(long, default_value_t = 4.0)]
    pub location_every: f64,
    /// Seconds to wait after the run for open requests to settle.
    #[arg(long, default_value_t = 20.0)]
    pub drain_seconds: f64,
    /// Run the same seeded scenario once per dispatch mode against the engine and print the
    /// modes side by side, e.g. `sequential,parallel,adaptive,ranked` (needs DATABASE_URL:
    /// the modes are switched in `system_config`, and restored afterwards).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub compare: Vec<Mode>,
    /// Print the summary as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Append one JSON line per offer frame a worker receives (`atMs`: Unix milliseconds,
    /// `city`, `requestId`, `offerId`), as it arrives: the failover drill times takeovers from it.
    #[arg(long)]
    pub offer_log: Option<std::path::PathBuf>,
    /// After the run, cross-check the database against the summary (needs DATABASE_URL).
    #[arg(long)]
    pub check: bool,
}

impl Default for SimArgs {
    /// The command line's defaults (one source: clap's), for tests and the demo fleet.
    fn default() -> Self {
        #[derive(clap::Parser)]
        struct Defaults {
            #[command(flatten)]
            args: SimArgs,
        }
        <Defaults as clap::Parser>::parse_from(["simulate"]).args
    }
}

impl SimArgs {
    pub fn behaviour(&self) -> Behaviour {
        Behaviour {
            accept_near: self.accept_rate,
            accept_half_distance_m: self.accept_half_distance_m,
            ignore_share: self.ignore_share,
            think_seconds: self.think_seconds,
            unreliable_share: self.unreliable_share,
        }
    }

    /// The engine nodes of `--url`, in order.
    pub fn urls(&self) -> Vec<&str> {
        let urls: Vec<&str> = self
            .url
            .split(',')
            .map(|u| u.trim().trim_end_matches('/'))
            .filter(|u| !u.is_empty())
            .collect();
        if urls.is_empty() {
            vec![self.url.as_str()]
        } else {
            urls
        }
    }

    /// The node for the `n`th worker, create or attempt (round-robin over `--url`).
    pub fn url_for(&self, n: u64) -> &str {
        let urls = self.urls();
        urls[(n % urls.len() as u64) as usize]
    }

    /// The warm-up actually left out: none when it would leave nothing to measure.
    pub fn effective_warmup(&self) -> Duration {
        if self.warmup < self.duration {
            self.warmup
        } else {
            Duration::ZERO
        }
    }
}

/// One created request, as its customer saw it.
#[derive(Debug, Clone, Copy)]
pub struct Created {
    /// When the create was due (open loop: latencies count from here, not from the send).
    pub intended: Instant,
    pub answered: Instant,
    /// Booked ahead: dispatch waits for its slot, so its latencies are not dispatch's.
    pub booked: bool,
    /// Due after the warm-up.
    pub measured: bool,
}

/// Shared counters and timings of one run.
#[derive(Default)]
pub struct Stats {
    /// Creates due so far (sent or not yet answered).
    pub due: AtomicU64,
    pub created: AtomicU64,
    pub create_errors: AtomicU64,
    pub cancels_sent: AtomicU64,
    pub offers: AtomicU64,
    pub accepts_sent: AtomicU64,
    pub rejects_sent: AtomicU64,
    /// Offers left to expire by the behaviour model.
    pub ignored: AtomicU64,
    /// Offers withdrawn before the worker had answered (another worker took the job).
    pub withdrawn_before_answer: AtomicU64,
    /// Assignment confirmations (a request re-dispatched after a cancellation counts again).
    pub assigned: AtomicU64,
    pub completed: AtomicU64,
    /// `cancel_assignment` sent by workers.
    pub worker_cancellations: AtomicU64,
    /// `assignment_revoked` with reason `no_show` received by workers.
    pub no_shows: AtomicU64,
    /// Of those, revoked from a worker who meant to show up (it had not missed anything
    /// yet: the engine's no-show deadline had passed before the job reached it).
    pub no_shows_while_keeping: AtomicU64,
    pub error_frames: AtomicU64,
    pub reconnects: AtomicU64,
    pub locations: AtomicU64,
    /// Workers the engine answered `ok` to `go_online` (online by the engine's word).
    pub online: AtomicU64,
    /// Per request: when it was due, answered, whether it is booked and measured.
    pub created_at: Mutex<HashMap<Uuid, Created>>,
    /// Request id → the customer who created it.
    pub owners: Mutex<HashMap<Uuid, Uuid>>,
    /// Offer id → when the worker received it.
    pub offer_seen: Mutex<HashMap<Uuid, Instant>>,
    /// Request id → when its first offer frame reached a worker.
    pub first_offer_at: Mutex<HashMap<Uuid, Instant>>,
    /// Request id → when the (first) assignment confirmation reached the worker.
    pub assigned_at: Mutex<HashMap<Uuid, Instant>>,
    /// Milliseconds from offer arrival to assignment confirmation (accepted offers).
    pub offer_to_accept_ms: Mutex<Vec<f64>>,
    /// `job.distanceMeters` of every confirmed assignment.
    pub assigned_distance_m: Mutex<Vec<f64>>,
    /// Requests whose worker received `job_reminder`.
    pub reminded: Mutex<HashSet<Uuid>>,
    /// Error frames received, by code (a late accept after a cancellation is expected).
    pub error_codes: Mutex<HashMap<String, u64>>,
}

/// Everything the fleet needs to run.
pub struct Fleet {
    pub args: SimArgs,
    pub behaviour: Behaviour,
    pub city: CityInfo,
    pub keys: TokenKeys,
    pub worker_ids: Vec<Uuid>,
    pub customer_ids: Vec<Uuid>,
    pub stats: Arc<Stats>,
    /// Set when customers stop creating requests.
    pub stop_creating: Arc<AtomicBool>,
    /// Turns true when workers should go offline and disconnect: each session waits on it
    /// (no per-worker polling timer).
    pub stop: watch::Sender<bool>,
    /// `--offer-log`, opened for appending, and the offers written to it.
    pub offer_log: Option<Mutex<(std::fs::File, HashSet<Uuid>)>>,
}

/// Creates the simulated workers and customers in the database (tagged by name, so a
/// later run can tell them apart) and loads the city's service area.
pub async fn provision(store: &Store, args: &SimArgs, jwt_secret: &str) -> anyhow::Result<Fleet> {
    let row = store.city(&args.city).await?.ok_or_else(|| {
        anyhow::anyhow!(
            "city {:?} is not in the database (was it seeded?)",
            args.city
        )
    })?;
    let city = CityInfo::from_geojson(args.city.clone(), row.name, &row.service_area)
        .map_err(anyhow::Error::msg)?;
    let run = Uuid::new_v4().simple().to_string();
    let worker_ids = store
        .provision_workers(&run[..8], &args.city, args.workers)
        .await?;
    let customer_ids = store.provision_customers(&run[..8], args.customers).await?;
    let offer_log = match &args.offer_log {
        Some(path) => Some(Mutex::new((
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| anyhow::anyhow!("--offer-log {}: {e}", path.display()))?,
            HashSet::new(),
        ))),
        None => None,
    };
    Ok(Fleet {
        args: args.clone(),
        behaviour: args.behaviour(),
        city,
        keys: TokenKeys::new(jwt_secret),
        worker_ids,
        customer_ids,
        stats: Arc::new(Stats::default()),
        stop_creating: Arc::new(AtomicBool::new(false)),
        stop: watch::channel(false).0,
        offer_log,
    })
}

impl Fleet {
    pub fn token(&self, role: Role, id: Uuid) -> String {
        self.keys.issue(role, id, Duration::from_secs(24 * 3600))
    }

    /// Notes a new offer in `--offer-log` (one write per line, so a reader sees each offer
    /// as it arrives). Only an offer's first frame: a frame sent again (a resume after a
    /// reconnect, a new owner's recovery) is not a new offer, and a takeover is timed to
    /// the new owner's first new one.
    pub fn log_offer(&self, offer_id: Uuid, request_id: Uuid) {
        use std::io::Write;
        let Some(log) = &self.offer_log else { return };
        let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
        let (file, logged) = &mut *log;
        if !logged.insert(offer_id) {
            return;
        }
        let at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default();
        let line = serde_json::json!({"atMs": at_ms as u64, "city": self.city.id,
            "requestId": request_id, "offerId": offer_id});
        let _ = writeln!(file, "{line}");
    }

    /// Runs the fleet: workers connect, customers create requests for `duration`, then the
    /// run drains and every request's final status is read back.
    pub async fn run(self: Arc<Self>, progress: bool) -> anyhow::Result<Summary> {
        let bars = report::Bars::new(progress, &self);
        let mut tasks = tokio::task::JoinSet::new();
        for (i, id) in self.worker_ids.iter().enumerate() {
            tasks.spawn(worker::run(self.clone(), *id, i as u64));
        }
        // Customers start once the engine has answered every go_online (or after a minute:
        // a fleet that cannot all come online is still measured, and `online` says so).
        let deadline = Instant::now() + Duration::from_secs(60);
        while (self.stats.online.load(Ordering::Relaxed) as usize) < self.worker_ids.len()
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let online = self.stats.online.load(Ordering::Relaxed) as usize;
        let started = Instant::now();
        let started_wall = std::time::SystemTime::now();
        let created = customer::run_all(self.clone(), &bars, started).await;
        self.stop_creating.store(true, Ordering::Relaxed);
        let running = started.elapsed();

        // Drain: wait until every created request is settled, or the drain time is up.
        let drain_until = Instant::now() + Duration::from_secs_f64(self.args.drain_seconds);
        let finals = loop {
            let finals = customer::final_statuses(&self, &created).await;
            let open = finals
                .values()
                .filter(|s| {
                    matches!(
                        s.as_str(),
                        "SCHEDULED" | "PENDING" | "OFFERING" | "ASSIGNED" | "IN_PROGRESS"
                    )
                })
                .count();
            bars.drain(open);
            if open == 0 || Instant::now() >= drain_until {
                break finals;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        let ended = Instant::now();
        // Workers go offline properly: a dropped socket would keep them online (and
        // offerable) for the engine's 30 s reconnect grace, into whatever runs next.
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        tasks.abort_all();
        bars.finish();
        Ok(Summary::build(
            &self,
            &finals,
            running,
            ended,
            online,
            started_wall,
        ))
    }
}

/// `arreglame simulate`: provision, run, print, optionally cross-check; with `--compare`,
/// one run per dispatch mode.
pub async fn simulate(args: SimArgs, database_url: &str, jwt_secret: &str) -> anyhow::Result<()> {
    let store = Store::connect(database_url, 4).await?;
    if !args.compare.is_empty() {
        let report = compare::compare(&store, &args, jwt_secret, !args.json).await?;
        if args.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            println!("{}", report.table());
        }
        if report.modes.iter().any(|m| !m.check.ok) {
            anyhow::bail!("the database disagrees with a mode's summary");
        }
        return Ok(());
    }
    let fleet = Arc::new(provision(&store, &args, jwt_secret).await?);
    // Ctrl-C (SIGINT) ends the creating early; the run still drains and reports.
    tokio::spawn({
        let stop_creating = fleet.stop_creating.clone();
        async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                stop_creating.store(true, Ordering::Relaxed);
            }
        }
    });
    let summary = fleet.clone().run(!args.json).await?;
    let check = if args.check {
        Some(report::cross_check(&store, &fleet, &summary).await?)
    } else {
        None
    };
    if args.json {
        let mut v = serde_json::to_value(&summary)?;
        if let Some(c) = &check {
            v["check"] = serde_json::to_value(c)?;
        }
        println!("{v}");
    } else {
        println!("{}", summary.table());
        if let Some(c) = &check {
            println!("{}", c.table());
        }
    }
    if check.as_ref().is_some_and(|c| !c.ok) {
        anyhow::bail!("the database disagrees with the summary");
    }
    Ok(())
}

/// A demo fleet inside `serve --demo-fleet N`: runs until the process stops.
pub async fn demo(url: String, workers: usize, store: Store, jwt_secret: String, city: String) {
    let args = SimArgs {
        url,
        workers,
        customers: (workers / 5).max(1),
        city,
        duration: Duration::from_secs(365 * 24 * 3600),
        rate: (workers as f64 / 25.0).max(0.2),
        job_seconds: 20.0,
        drain_seconds: 0.0,
        json: true,
        ..SimArgs::default()
    };
    match provision(&store, &args, &jwt_secret).await {
        Ok(fleet) => {
            tracing::info!(target: "Simulator", workers, "[Simulator] demo fleet started: open /ops to watch dispatch");
            if let Err(e) = Arc::new(fleet).run(false).await {
                tracing::error!(target: "Simulator", error = %e, "demo fleet stopped");
            }
        }
        Err(e) => tracing::error!(target: "Simulator", error = %e, "demo fleet could not start"),
    }
}

/// Small deterministic PRNG per task (no shared RNG lock on the hot path).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A random point inside the city's service area (rejection sampling in its bounding box).
pub(crate) fn random_point(city: &CityInfo, rng: &mut Rng) -> (f64, f64) {
    use geo::BoundingRect;
    let rect = city
        .area
        .bounding_rect()
        .expect("a city polygon has a bounding box");
    for _ in 0..1000 {
        let lon = rect.min().x + rng.next_f64() * rect.width();
        let lat = rect.min().y + rng.next_f64() * rect.height();
        if city.serves(lon, lat) {
            return (lon, lat);
        }
    }
    let c = rect.center();
    (c.x, c.y)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_lists_spread_round_robin_and_one_url_is_every_node() {
        let mut args = SimArgs {
            url: "http://a:3001, http://b:3002/,http://c:3003".into(),
            ..SimArgs::default()
        };
        assert_eq!(
            args.urls(),
            ["http://a:3001", "http://b:3002", "http://c:3003"]
        );
        let spread: Vec<&str> = (0..4).map(|n| args.url_for(n)).collect();
        assert_eq!(
            spread,
            [
                "http://a:3001",
                "http://b:3002",
                "http://c:3003",
                "http://a:3001"
            ]
        );
        args.url = "http://127.0.0.1:3000".into();
        assert_eq!(args.url_for(7), "http://127.0.0.1:3000");
    }
}
