//! Test fixtures: a fresh, migrated and seeded database per test; the whole application on
//! an ephemeral port; or just the dispatch core with an in-process worker gateway.

use std::{collections::HashMap, sync::Arc};

use arreglame::{
    config::Config,
    dispatch::{
        gateway::{InProcessGateway, WorkerNotice},
        Dispatcher,
    },
    domain::Cents,
    startup::{AppHandle, Application},
    store::{NewServiceRequest, ServiceRequest, Settings, Store},
};
use sqlx::{postgres::PgPoolOptions, Connection, PgConnection};
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

/// A point in Buenos Aires (Obelisco), inside the seeded service area.
pub const LON: f64 = -58.3816;
pub const LAT: f64 = -34.6037;

pub const CUSTOMER: Uuid = Uuid::from_u128(0x00000000_0000_4000_8000_000000000c01);
pub const OTHER_CUSTOMER: Uuid = Uuid::from_u128(0x00000000_0000_4000_8000_000000000c02);

/// The server's URL with another database name.
fn with_database(url: &str, db: &str) -> String {
    let (base, _) = url
        .rsplit_once('/')
        .expect("DATABASE_URL has a database name");
    let base = base.to_string();
    let query = url
        .split_once('?')
        .map(|(_, q)| format!("?{q}"))
        .unwrap_or_default();
    format!("{base}/{db}{query}")
}

pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .expect("DATABASE_URL: run the tests through scripts/test.sh (make test)")
}

/// Creates a fresh database, migrated and seeded; returns its URL.
pub async fn fresh_database() -> String {
    let server = database_url();
    let name = format!("test_{}", Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(&with_database(&server, "postgres"))
        .await
        .expect("connect to postgres");
    sqlx::query(&format!(r#"create database "{name}""#))
        .execute(&mut admin)
        .await
        .unwrap();
    let url = with_database(&server, &name);
    let store = Store::connect(&url, 2).await.unwrap();
    store.migrate().await.unwrap();
    store.seed().await.unwrap();
    store.pool().close().await;
    url
}

/// A pool that never opens a connection lazily: every connection is opened up front, so a
/// paused test clock cannot time out a connect in progress.
pub async fn warm_store(url: &str, connections: u32) -> Store {
    let pool = PgPoolOptions::new()
        .max_connections(connections)
        .min_connections(connections)
        .acquire_timeout(std::time::Duration::from_secs(24 * 3600))
        // A liveness ping inside `acquire` is I/O under the acquire timeout; on a paused
        // clock tokio would jump straight to that timeout.
        .test_before_acquire(false)
        .idle_timeout(None)
        .max_lifetime(None)
        .connect(url)
        .await
        .unwrap();
    // Touch every connection once so all of them exist before the clock is paused.
    let mut held = Vec::new();
    for _ in 0..connections {
        held.push(pool.acquire().await.unwrap());
    }
    drop(held);
    Store::from_pool(pool)
}

pub fn test_config(database_url: &str) -> Config {
    test_config_with(database_url, &[])
}

/// [`test_config`] with some variables added or overridden.
pub fn test_config_with(database_url: &str, extra: &[(&str, &str)]) -> Config {
    let mut vars: HashMap<String, String> = [
        ("DATABASE_URL", database_url),
        ("PORT", "0"),
        ("HOST", "127.0.0.1"),
        ("JWT_SECRET", "test-secret"),
        ("LOG_LEVEL", "warn"),
        ("DATABASE_MAX_CONNECTIONS", "8"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for (k, v) in extra {
        vars.insert(k.to_string(), v.to_string());
    }
    Config::from_vars(vars).unwrap()
}

/// The whole engine on an ephemeral loopback port.
pub struct TestApp {
    pub address: String,
    pub handle: AppHandle,
    pub database_url: String,
    pub server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        TestApp::spawn_with(&[]).await
    }

    /// The engine with some environment variables set (APP_ENV, GEMINI_*, limits).
    pub async fn spawn_with(vars: &[(&str, &str)]) -> TestApp {
        let database_url = fresh_database().await;
        TestApp::spawn_on(database_url, vars).await
    }

    /// The engine on an existing (migrated, seeded) database, reached at `database_url`.
    pub async fn spawn_on(database_url: String, vars: &[(&str, &str)]) -> TestApp {
        let app = Application::build(test_config_with(&database_url, vars))
            .await
            .expect("build app");
        let address = format!("http://127.0.0.1:{}", app.port());
        let handle = app.handle();
        let server = tokio::spawn(app.run_until_stopped());
        TestApp {
            address,
            handle,
            database_url,
            server,
        }
    }

    /// A new worker, online in Buenos Aires at (lon, lat) with the lawn-mowing skill.
    pub async fn worker_online(&self, lon: f64, lat: f64) -> Uuid {
        let worker = insert_worker(self.store(), "buenos-aires").await;
        self.handle
            .state
            .dispatcher
            .worker_online("buenos-aires", worker, lon, lat, vec!["lawn_mowing".into()])
            .await
            .unwrap();
        worker
    }

    /// A customer's request at (lon, lat), created in the database with its actor started.
    pub async fn open_request(&self, lon: f64, lat: f64) -> Uuid {
        let (row, _) = self
            .store()
            .create_request(&new_request(CUSTOMER, lon, lat))
            .await
            .unwrap();
        self.handle
            .state
            .dispatcher
            .ensure_actor(row.id)
            .await
            .unwrap();
        row.id
    }

    /// A token for `sub` in `role`, valid for an hour: the one way tests mint tokens.
    pub fn token(&self, role: arreglame::auth::Role, sub: Uuid) -> String {
        self.token_for(role, sub, std::time::Duration::from_secs(3600))
    }

    pub fn token_for(
        &self,
        role: arreglame::auth::Role,
        sub: Uuid,
        ttl: std::time::Duration,
    ) -> String {
        self.handle.state.keys.issue(role, sub, ttl)
    }

    #[allow(dead_code)] // used by the API suites
    pub fn store(&self) -> &Store {
        &self.handle.state.store
    }
}

/// The dispatch core alone: real PostgreSQL, real actors, an in-process worker gateway, and
/// settings the test controls. No cron, no reload task: the test owns time.
pub struct DispatchHarness {
    pub store: Store,
    pub dispatcher: Dispatcher,
    pub notices: mpsc::UnboundedReceiver<WorkerNotice>,
    pub settings: watch::Sender<Arc<Settings>>,
    pub database_url: String,
}

pub fn quick_settings() -> Settings {
    Settings {
        worker_timeout: std::time::Duration::from_secs(60),
        max_assignment_attempts: 5,
        search_radius_steps_m: vec![2_000, 5_000, 10_000],
        ..Settings::default()
    }
}

impl DispatchHarness {
    pub async fn start(settings: Settings) -> DispatchHarness {
        let database_url = fresh_database().await;
        Self::start_on(database_url, settings).await
    }

    /// Starts dispatch on an existing database (a "restarted engine").
    pub async fn start_on(database_url: String, settings: Settings) -> DispatchHarness {
        Self::start_owning(
            database_url,
            settings,
            arreglame::dispatch::ownership::Ownership::Single,
        )
        .await
    }

    /// Starts dispatch on an existing database as a cluster node that dispatches only the
    /// cities `ownership` says.
    pub async fn start_owning(
        database_url: String,
        settings: Settings,
        ownership: arreglame::dispatch::ownership::Ownership,
    ) -> DispatchHarness {
        init_test_logging();
        let store = warm_store(&database_url, 16).await;
        let (settings, rx) = watch::channel(Arc::new(settings));
        let (gateway, notices) = InProcessGateway::new();
        let dispatcher = Dispatcher::start_owning(store.clone(), rx, Arc::new(gateway), ownership)
            .await
            .unwrap();
        DispatchHarness {
            store,
            dispatcher,
            notices,
            settings,
            database_url,
        }
    }

    /// Puts a worker online in Buenos Aires at (lon, lat).
    pub async fn worker_online(&self, lon: f64, lat: f64, skills: &[&str]) -> Uuid {
        let id = insert_worker(&self.store, "buenos-aires").await;
        self.dispatcher
            .worker_online(
                "buenos-aires",
                id,
                lon,
                lat,
                skills.iter().map(|s| s.to_string()).collect(),
            )
            .await
            .unwrap();
        id
    }

    /// Creates a request at (lon, lat) and starts its actor.
    pub async fn create_request(&self, lon: f64, lat: f64) -> ServiceRequest {
        let (row, _) = self
            .store
            .create_request(&new_request(CUSTOMER, lon, lat))
            .await
            .unwrap();
        self.dispatcher.ensure_actor(row.id).await.unwrap();
        row
    }

    /// Creates a request booked for `slot` at (lon, lat) and starts its actor: SCHEDULED
    /// when its dispatch time (`slot.0 - dispatch_lead`) is still ahead, else PENDING.
    #[allow(dead_code)] // used by the home-services suite
    pub async fn create_booked(
        &self,
        lon: f64,
        lat: f64,
        slot: (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>),
    ) -> ServiceRequest {
        let lead = self.dispatcher.settings().dispatch_lead;
        let new = NewServiceRequest {
            slot: Some(slot),
            status: arreglame::domain::booking::initial_status(
                Some(slot),
                lead,
                chrono::Utc::now(),
            ),
            ..new_request(CUSTOMER, lon, lat)
        };
        let (row, _) = self.store.create_request(&new).await.unwrap();
        self.dispatcher.ensure_actor(row.id).await.unwrap();
        row
    }

    /// The next notice a worker gets.
    pub async fn next_notice(&mut self) -> WorkerNotice {
        self.notices.recv().await.expect("gateway closed")
    }
}

/// `TEST_LOG=debug cargo nextest run ...` shows the engine's logs for a failing test.
pub fn init_test_logging() {
    let level = std::env::var("TEST_LOG").unwrap_or_else(|_| "off".into());
    let _ = arreglame::telemetry::init(&level, None);
}

pub async fn insert_worker(store: &Store, city: &str) -> Uuid {
    sqlx::query_scalar(r#"insert into worker_profiles (name, "cityId", skills) values ('Test Worker', $1, '{lawn_mowing}') returning id"#)
        .bind(city)
        .fetch_one(store.pool())
        .await
        .unwrap()
}

pub fn new_request(customer: Uuid, lon: f64, lat: f64) -> NewServiceRequest {
    NewServiceRequest {
        customer_id: customer,
        city_id: "buenos-aires".into(),
        latitude: lat,
        longitude: lon,
        address: "Av. Corrientes 1234".into(),
        description: "Corte de pasto".into(),
        square_meters: 100.0,
        image_ref: None,
        service_category: "lawn_mowing".into(),
        difficulty_level: "EASY".into(),
        extras: vec![],
        currency: "ARS".into(),
        price_total: Cents(1_500_000),
        worker_net: Cents(1_275_000),
        platform_fee: Cents(225_000),
        pricing_engine: "rules".into(),
        idempotency_key: None,
        slot: None,
        status: arreglame::domain::Status::Pending,
    }
}

/// Outbox rows of one aggregate, in order: (type, aggregate version).
pub async fn outbox_of(store: &Store, aggregate_id: Uuid) -> Vec<(String, i32)> {
    sqlx::query_as(r#"select type, "aggregateVersion" from outbox_events where "aggregateId" = $1 order by id"#)
        .bind(aggregate_id.to_string())
        .fetch_all(store.pool())
        .await
        .unwrap()
}

/// How long a test waits for something that should happen (generous: a loaded CI box).
pub const PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);

/// Polls `check` until it holds; fails the test after `timeout` instead of hanging. The one
/// poll every test uses (under a paused clock too: the deadline is wall-clock time).
pub async fn wait_until<F, Fut>(timeout: std::time::Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    wait_for(timeout, || {
        let checked = check();
        async move { checked.await.then_some(()) }
    })
    .await
}

/// Polls `probe` until it answers something; fails the test after `timeout`.
pub async fn wait_for<T, F, Fut>(timeout: std::time::Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "condition not met within {timeout:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// A TCP proxy in front of PostgreSQL that a test can cut and restore: cut, every
/// connection through it dies and its port refuses new ones (as a stopped server's does);
/// restored, it listens on the same port again. The database outage of a drill, in a test.
pub struct DbProxy {
    pub port: u16,
    upstream: std::net::SocketAddr,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl DbProxy {
    pub async fn start(database_url: &str) -> std::sync::Arc<DbProxy> {
        let upstream_port: u16 = database_url
            .rsplit_once(':')
            .and_then(|(_, rest)| rest.split('/').next())
            .and_then(|p| p.parse().ok())
            .expect("DATABASE_URL has host:port");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = std::sync::Arc::new(DbProxy {
            port: listener.local_addr().unwrap().port(),
            upstream: ([127, 0, 0, 1], upstream_port).into(),
            task: std::sync::Mutex::new(None),
        });
        proxy.serve(listener);
        proxy
    }

    /// `database_url` with the proxy's port instead of the server's.
    pub fn url(&self, database_url: &str) -> String {
        let (head, tail) = database_url.rsplit_once(':').unwrap();
        let db = tail.split_once('/').map(|(_, d)| d).unwrap();
        format!("{head}:{}/{db}", self.port)
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let upstream = self.upstream;
        let task = tokio::spawn(async move {
            let mut pipes = tokio::task::JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                pipes.spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        *self.task.lock().unwrap() = Some(task);
    }

    /// The outage begins: live connections drop, new ones are refused.
    pub fn cut(&self) {
        if let Some(task) = self.task.lock().unwrap().take() {
            // Aborting the accept loop drops the listener and, with the JoinSet, every pipe.
            task.abort();
        }
    }

    /// The database is back, on the same port.
    pub async fn restore(&self) {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
        let listener = loop {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
        };
        self.serve(listener);
    }
}

/// A first offer of a request to `worker` (attempt `attempt`), as dispatch would send it.
pub fn offer_to(worker: Uuid, attempt: i32) -> arreglame::store::Change {
    arreglame::store::Change::OfferSent(arreglame::store::NewOffer {
        id: Uuid::new_v4(),
        worker_id: worker,
        attempt,
        expires_at: chrono::Utc::now() + chrono::Duration::minutes(5),
        distance_meters: 100.0,
        radius_meters: 2000,
        candidates_considered: 1,
        candidate_scores: vec![],
    })
}

/// A TCP port free on loopback now (for an engine process a test starts).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A NATS server (JetStream on) of one test alone: the cluster suites run engine nodes whose
/// buckets and subjects have their deployment names, which must not meet another test's.
pub struct NatsServer {
    pub url: String,
    _process: tokio::process::Child,
    dir: std::path::PathBuf,
}

impl NatsServer {
    pub async fn start() -> NatsServer {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("arreglame-nats-{}", Uuid::new_v4().simple()));
        let process = tokio::process::Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(&dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("nats-server on PATH (scripts/dev-env.sh installs it)");
        let url = format!("nats://127.0.0.1:{port}");
        wait_until(PATIENCE, || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await;
        NatsServer {
            url,
            _process: process,
            dir,
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
