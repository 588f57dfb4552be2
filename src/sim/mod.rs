//! `arreglame simulate`: a fleet of workers as real WebSocket clients and customers as
//! real GraphQL clients, against a running engine. It provisions its own workers and
//! customers (rows in the database at `DATABASE_URL`, tokens signed with `JWT_SECRET`), so
//! it runs against any freshly seeded engine; `serve --demo-fleet N` runs one in-process.
//!
//! Workers random-walk inside the city's service area (a location every 4 s), accept offers
//! at the given rate (reject otherwise), and start and complete jobs after a simulated
//! time. Customers create requests at a steady total rate. After the run, every request's
//! final status is read back over GraphQL, and `--check` cross-checks the database.

mod customer;
pub mod report;
mod worker;

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use std::collections::HashMap;

use clap::Args;
use uuid::Uuid;

pub use report::Summary;

use crate::{
    auth::{Role, TokenKeys},
    dispatch::city::CityInfo,
    store::Store,
};

/// Options of `arreglame simulate`.
#[derive(Debug, Clone, Args)]
pub struct SimArgs {
    /// The engine's base URL.
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
    /// How long customers keep creating requests (e.g. 60s, 5m).
    #[arg(long, default_value = "60s", value_parser = crate::auth::parse_ttl)]
    pub duration: Duration,
    /// Requests per second across all customers.
    #[arg(long, default_value_t = 2.0)]
    pub rate: f64,
    /// Share of offers a worker accepts (the rest are rejected).
    #[arg(long, default_value_t = 0.8)]
    pub accept_rate: f64,
    /// Share of requests their customer cancels a second after creating them.
    #[arg(long, default_value_t = 0.05)]
    pub cancel_rate: f64,
    /// Seconds a simulated job takes, from acceptance to completion.
    #[arg(long, default_value_t = 5.0)]
    pub job_seconds: f64,
    /// Seconds between location updates of each worker.
    #[arg(long, default_value_t = 4.0)]
    pub location_every: f64,
    /// Seconds to wait after the run for open requests to settle.
    #[arg(long, default_value_t = 20.0)]
    pub drain_seconds: f64,
    /// Print the summary as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// After the run, cross-check the database against the summary (needs DATABASE_URL).
    #[arg(long)]
    pub check: bool,
}

/// Shared counters and timings of one run.
#[derive(Default)]
pub struct Stats {
    pub created: AtomicU64,
    pub create_errors: AtomicU64,
    pub cancels_sent: AtomicU64,
    pub offers: AtomicU64,
    pub accepts_sent: AtomicU64,
    pub rejects_sent: AtomicU64,
    pub assigned: AtomicU64,
    pub completed: AtomicU64,
    pub error_frames: AtomicU64,
    pub reconnects: AtomicU64,
    pub locations: AtomicU64,
    pub connected: AtomicU64,
    /// Per request: when the customer sent the create mutation and when it got the answer.
    pub created_at: Mutex<HashMap<Uuid, (Instant, Instant)>>,
    /// Offer id → when the worker received it.
    pub offer_seen: Mutex<HashMap<Uuid, Instant>>,
    /// Request id → when its first offer frame reached a worker.
    pub first_offer_at: Mutex<HashMap<Uuid, Instant>>,
    /// Request id → when the assignment confirmation reached the worker.
    pub assigned_at: Mutex<HashMap<Uuid, Instant>>,
    /// Milliseconds from offer arrival to assignment confirmation (accepted offers).
    pub offer_to_accept_ms: Mutex<Vec<f64>>,
    /// Error frames received, by code (a late accept after a cancellation is expected).
    pub error_codes: Mutex<HashMap<String, u64>>,
}

/// Everything the fleet needs to run.
pub struct Fleet {
    pub args: SimArgs,
    pub city: CityInfo,
    pub keys: TokenKeys,
    pub worker_ids: Vec<Uuid>,
    pub customer_ids: Vec<Uuid>,
    pub stats: Arc<Stats>,
    /// Set when customers stop creating requests.
    pub stop_creating: Arc<AtomicBool>,
    /// Set when workers should disconnect.
    pub stop_all: Arc<AtomicBool>,
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
    Ok(Fleet {
        args: args.clone(),
        city,
        keys: TokenKeys::new(jwt_secret),
        worker_ids,
        customer_ids,
        stats: Arc::new(Stats::default()),
        stop_creating: Arc::new(AtomicBool::new(false)),
        stop_all: Arc::new(AtomicBool::new(false)),
    })
}

impl Fleet {
    pub fn token(&self, role: Role, id: Uuid) -> String {
        self.keys.issue(role, id, Duration::from_secs(24 * 3600))
    }

    /// Runs the fleet: workers connect, customers create requests for `duration`, then the
    /// run drains and every request's final status is read back.
    pub async fn run(self: Arc<Self>, progress: bool) -> anyhow::Result<Summary> {
        let bars = report::Bars::new(progress, &self);
        let mut tasks = Vec::new();
        for (i, id) in self.worker_ids.iter().enumerate() {
            tasks.push(tokio::spawn(worker::run(self.clone(), *id, i as u64)));
        }
        // Let the fleet come online before customers start.
        let deadline = Instant::now() + Duration::from_secs(30);
        while (self.stats.connected.load(Ordering::Relaxed) as usize) < self.worker_ids.len()
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let started = Instant::now();
        let created = customer::run_all(self.clone(), &bars).await;
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
                        "PENDING" | "OFFERING" | "ASSIGNED" | "IN_PROGRESS"
                    )
                })
                .count();
            bars.drain(open);
            if open == 0 || Instant::now() >= drain_until {
                break finals;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        self.stop_all.store(true, Ordering::Relaxed);
        for t in tasks {
            t.abort();
        }
        bars.finish();
        Ok(Summary::build(&self, &finals, running))
    }
}

/// `arreglame simulate`: provision, run, print, optionally cross-check.
pub async fn simulate(args: SimArgs, database_url: &str, jwt_secret: &str) -> anyhow::Result<()> {
    let store = Store::connect(database_url, 4).await?;
    let fleet = Arc::new(provision(&store, &args, jwt_secret).await?);
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
        accept_rate: 0.8,
        cancel_rate: 0.05,
        job_seconds: 20.0,
        location_every: 4.0,
        drain_seconds: 0.0,
        json: true,
        check: false,
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
pub(crate) struct Rng(u64);

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
