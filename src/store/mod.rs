//! PostgreSQL access. Every state change of a service request goes through
//! [`Store::transition`]: one transaction with the version-guarded update and one
//! `outbox_events` row. SQL is written inline, next to the code that uses it.

mod cities;
mod dashboard;
pub mod events;
mod fleet;
mod group_commit;
mod identities;
mod leases;
pub mod legacy;
mod outbox;
pub mod outbox_batch;
mod payouts;
mod pricing_tables;
mod requests;
mod rollout;
pub mod system_config;
mod transition;
mod transition_batch;
mod workers;

use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};

use tokio::sync::Notify;

use sqlx::{migrate::Migrator, postgres::PgPoolOptions, PgPool};
use uuid::Uuid;

pub use cities::CityRow;
pub use dashboard::{AttentionKind, AttentionRow, AttentionWindow, MinuteRow};
pub use fleet::FleetCounts;
pub use identities::{CandidateSkip, WorkerProfile};
pub use leases::CityLeaseRow;
pub use legacy::{AdoptionError, DatabaseKind, Reverted};
pub use outbox::{insert_outbox_event, OutboxEvent};
pub use payouts::Payout;
pub use pricing_tables::PricingRows;
pub use requests::{NewServiceRequest, RequestPage, ServiceRequest};
pub use rollout::ArmRow;
pub use system_config::{Settings, SettingsWatch};
pub use transition::{CancelledBy, Change, NewOffer, OfferOutcome, OfferRow, StrikeKind, TAKEN};
pub use workers::{JobInHand, PendingOfferView};

use crate::domain::IllegalTransition;

/// The migrations in `migrations/`, embedded in the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// The seed files in `seeds/`, embedded in the binary and applied in this order.
const SEEDS: &[(&str, &str)] = &[
    (
        "01_system_config.sql",
        include_str!("../../seeds/01_system_config.sql"),
    ),
    ("02_pricing.sql", include_str!("../../seeds/02_pricing.sql")),
    ("03_cities.sql", include_str!("../../seeds/03_cities.sql")),
    (
        "04_demo_people.sql",
        include_str!("../../seeds/04_demo_people.sql"),
    ),
];

/// The seed file of demo customers and workers, left out on an adopted legacy database.
const DEMO_PEOPLE: &str = "04_demo_people.sql";

/// Errors at the storage boundary.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The row moved on since it was read: someone else won the race. Reload and decide again.
    #[error("service request {id} is no longer at version {expected_version}")]
    ConcurrencyConflict { id: Uuid, expected_version: i32 },
    #[error("{what} {id} not found")]
    NotFound { what: &'static str, id: String },
    #[error(transparent)]
    IllegalTransition(#[from] IllegalTransition),
    /// The cancellation window of a completed job has closed (its payout is released or due).
    #[error("the cancellation window has closed")]
    WindowClosed,
    /// A named database constraint refused the change (a business rule held by the schema).
    #[error("constraint {constraint} refused the change")]
    Constraint { constraint: String },
    /// PostgreSQL refused a value (SQLSTATE class 22, e.g. a NUL byte in text): the input's
    /// fault, never a reason to restart anything.
    #[error("invalid value: {0}")]
    InvalidValue(String),
    /// A cluster node wrote for a city it no longer owns: the city's epoch in
    /// `city_leases` moved past the one it carries (docs/scale-out.md).
    #[error("city {city_id} is no longer owned at epoch {epoch}")]
    Fenced { city_id: String, epoch: i64 },
    #[error("database error: {0}")]
    Database(sqlx::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &error {
            if let Some(constraint) = db.constraint() {
                return StoreError::Constraint {
                    constraint: constraint.to_string(),
                };
            }
            // Only the values a client can send that PostgreSQL refuses: NUL or an
            // unencodable character, a string too long for its column. Other data
            // exceptions (numeric overflow, bad casts) are the engine's faults.
            if db
                .code()
                .is_some_and(|c| matches!(c.as_ref(), "22021" | "22P05" | "22001"))
            {
                return StoreError::InvalidValue(db.message().to_string());
            }
        }
        StoreError::Database(error)
    }
}

impl StoreError {
    pub fn is_conflict(&self) -> bool {
        matches!(self, StoreError::ConcurrencyConflict { .. })
    }
}

/// Handle to the database, cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: PgPool,
    /// Transitions that arrive together are committed together (`group_commit`).
    group_commit: group_commit::GroupCommit,
    outbox: Arc<OutboxSignal>,
    /// The one-connection pool of the outbox LISTEN, made on first use.
    listener_pool: Arc<OnceLock<PgPool>>,
}

/// How long commits gather before one `NOTIFY outbox_events` tells the other engines.
const REMOTE_NOTIFY_GATHER: Duration = Duration::from_millis(200);

/// Tells outbox consumers that new rows were committed. The local relay is woken directly;
/// other engines hear a `NOTIFY outbox_events` sent *after* the commit, from outside the
/// write transaction (a NOTIFY inside it would serialise every commit on Postgres's
/// notification lock). The other engines' relays are a second pair of hands: they are
/// told only while this engine's relay is not delivering by itself (NATS down here, an
/// outage backoff, behind on full batches, or no relay at all), and commits within 200 ms
/// coalesce into one NOTIFY. Otherwise this engine's relay, woken at once, relays its own
/// rows, and a NOTIFY per commit would only cost statements (issue 13).
#[derive(Debug)]
struct OutboxSignal {
    /// Statements that wrote outbox rows through this store: the relay claims after a
    /// local wake only if this moved since its last claim.
    written: std::sync::atomic::AtomicU64,
    local: Notify,
    remote: Notify,
    sender_started: OnceLock<()>,
    /// Set by this engine's relay while its rounds deliver and keep up.
    relay_delivering: std::sync::atomic::AtomicBool,
    /// Sent as the NOTIFY payload, so this engine's relay can ignore its own announcements
    /// (it was already woken directly): only other engines' commits wake it through LISTEN.
    origin: String,
}

impl Default for OutboxSignal {
    fn default() -> Self {
        OutboxSignal {
            written: std::sync::atomic::AtomicU64::new(0),
            local: Notify::new(),
            remote: Notify::new(),
            sender_started: OnceLock::new(),
            relay_delivering: std::sync::atomic::AtomicBool::new(false),
            origin: Uuid::new_v4().simple().to_string(),
        }
    }
}

/// How long a caller waits for a pooled connection (or for the database to come back)
/// before the call fails and its caller retries: the actor's supervisor, the cron, the client.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// The most transitions one group commit carries by default.
pub const DEFAULT_GROUP_COMMIT_ROWS: usize = 64;

/// Group commit writers by default (`DATABASE_GROUP_COMMIT_WRITERS`). Two on the 2-core
/// machine the benchmarks ran on: 10 816 transitions/s at 32 clients, against 6 320 with
/// four writers and 8 313 with one (docs/benchmarks.md). Fewer writers make larger groups,
/// which cost PostgreSQL less per row; two still overlap one group's commit with the next.
pub const DEFAULT_GROUP_COMMIT_WRITERS: usize = 2;

/// The channel on which committed outbox rows are announced.
pub const OUTBOX_CHANNEL: &str = "outbox_events";

impl Store {
    /// Connects a pool with the default [`ACQUIRE_TIMEOUT`].
    pub async fn connect(database_url: &str, max_connections: u32) -> Result<Store, sqlx::Error> {
        Store::connect_with(database_url, max_connections, ACQUIRE_TIMEOUT).await
    }

    /// Connects a pool. The acquire timeout bounds more than the wait for a free connection:
    /// sqlx retries a refused connect with a backoff capped at a fifth of it, so an hour-long
    /// timeout meant a caller could sleep 12 minutes after the database came back (a
    /// request committed during an outage sat PENDING with a stalled actor for 150 s).
    pub async fn connect_with(
        database_url: &str,
        max_connections: u32,
        acquire_timeout: Duration,
    ) -> Result<Store, sqlx::Error> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .min_connections(1)
            .acquire_timeout(acquire_timeout)
            // No liveness ping before every acquire (one extra round trip per statement):
            // a dead connection fails its statement, is dropped, and the caller's retry or
            // the next acquire gets a fresh one.
            .test_before_acquire(false)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect(database_url)
            .await?;
        Ok(Store::from_pool(pool))
    }

    pub fn from_pool(pool: PgPool) -> Store {
        Store {
            pool,
            group_commit: group_commit::GroupCommit::new(
                DEFAULT_GROUP_COMMIT_ROWS,
                DEFAULT_GROUP_COMMIT_WRITERS,
            ),
            outbox: Arc::default(),
            listener_pool: Arc::default(),
        }
    }

    /// At most `max_rows` transitions per commit (`DATABASE_GROUP_COMMIT_MAX`); 1 commits
    /// each transition alone.
    pub fn with_group_commit(mut self, max_rows: usize) -> Store {
        self.group_commit = group_commit::GroupCommit::new(max_rows, self.group_commit.writers());
        self
    }

    /// At most `writers` groups written at once (`DATABASE_GROUP_COMMIT_WRITERS`), each on
    /// a pooled connection it keeps; never more than a quarter of the pool (at least one).
    pub fn with_group_commit_writers(mut self, writers: usize) -> Store {
        self.group_commit = group_commit::GroupCommit::new(self.group_commit.max_rows(), writers);
        self
    }

    /// The most transitions one commit carries.
    pub fn group_commit_max_rows(&self) -> usize {
        self.group_commit.max_rows()
    }

    /// Called after every commit that wrote outbox rows.
    pub fn outbox_written(&self) {
        self.outbox
            .written
            .fetch_add(1, std::sync::atomic::Ordering::Release);
        self.outbox.local.notify_one();
        self.outbox.remote.notify_one();
        self.outbox.sender_started.get_or_init(|| {
            let (pool, signal) = (self.pool.clone(), self.outbox.clone());
            let origin = signal.origin.clone();
            tokio::spawn(async move {
                loop {
                    signal.remote.notified().await;
                    // Gather the burst: commits within 200 ms share one NOTIFY (the local
                    // relay was already woken directly; this is for other engines).
                    tokio::time::sleep(REMOTE_NOTIFY_GATHER).await;
                    if pool.is_closed() {
                        return;
                    }
                    if signal
                        .relay_delivering
                        .load(std::sync::atomic::Ordering::Acquire)
                    {
                        continue;
                    }
                    let _ = sqlx::query("select pg_notify($1, $2)")
                        .bind(OUTBOX_CHANNEL)
                        .bind(&origin)
                        .execute(&pool)
                        .await;
                }
            });
        });
    }

    /// This engine's relay says whether it delivers its rows by itself now (its last round
    /// succeeded and was not full): while it does, other engines are not asked to help.
    pub fn set_outbox_relay_delivering(&self, delivering: bool) {
        self.outbox
            .relay_delivering
            .store(delivering, std::sync::atomic::Ordering::Release);
    }

    /// The payload this store's NOTIFYs carry (see [`OutboxSignal`]).
    pub fn outbox_origin(&self) -> &str {
        &self.outbox.origin
    }

    /// Resolves when this process committed outbox rows since the last call (one waiter).
    pub async fn outbox_committed(&self) {
        self.outbox.local.notified().await
    }

    /// How many outbox-writing commits this store has made (see [`Store::outbox_written`]).
    /// Read before a claim: a commit counted after the read may or may not be in the claim,
    /// but one counted before it always is.
    pub fn outbox_writes(&self) -> u64 {
        self.outbox
            .written
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// The pool itself, for fixtures in the tests and benches only (feature
    /// `test-support`, which the crate's dev-dependency on itself turns on): the engine's
    /// every statement is a named method of this module.
    #[cfg(feature = "test-support")]
    #[doc(hidden)]
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Applies pending migrations. A legacy (NestJS/Prisma) database is first adopted in
    /// place ([`legacy`]), which leaves it at the schema of the baseline migration.
    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        self.adopt_legacy().await.map_err(|e| match e {
            AdoptionError::Database(e) | AdoptionError::Step { source: e, .. } => {
                sqlx::migrate::MigrateError::Execute(e)
            }
            other => sqlx::migrate::MigrateError::Source(Box::new(other)),
        })?;
        MIGRATOR.run(&self.pool).await
    }

    /// Reverts the latest applied migration (the rollback plan). On an adopted legacy
    /// database the migrations after the adoption baseline go first, then the adoption's
    /// steps one by one, back to the legacy schema.
    pub async fn revert_latest_migration(&self) -> Result<Option<Reverted>, anyhow::Error> {
        let adopted = self.is_adopted_legacy().await?;
        let applied: Vec<i64> = self
            .applied_migrations()
            .await?
            .into_iter()
            .filter(|v| !adopted || *v > legacy::ADOPTION_BASELINE)
            .collect();
        let Some(&latest) = applied.last() else {
            return Ok(self.revert_adoption_step().await?);
        };
        let floor = if adopted {
            legacy::ADOPTION_BASELINE
        } else {
            0
        };
        let target = applied.iter().rev().nth(1).copied().unwrap_or(floor);
        MIGRATOR.undo(&self.pool, target).await?;
        Ok(Some(Reverted::Migration(latest)))
    }

    /// Applies the seed files. Each insert is `on conflict do nothing`, so seeding twice
    /// leaves the same data and never overwrites values an operator tuned.
    pub async fn seed(&self) -> Result<(), sqlx::Error> {
        // An adopted production database gets the configuration, not the demo people.
        let adopted = self.is_adopted_legacy().await?;
        let mut tx = self.pool.begin().await?;
        for (name, sql) in SEEDS {
            if adopted && *name == DEMO_PEOPLE {
                continue;
            }
            tracing::debug!(seed = name, "applying seed");
            sqlx::raw_sql(sql).execute(&mut *tx).await?;
        }
        tx.commit().await
    }

    /// The pool's connections now: (open, idle, most allowed).
    pub fn pool_stats(&self) -> (u32, usize, u32) {
        (
            self.pool.size(),
            self.pool.num_idle(),
            self.pool.options().get_max_connections(),
        )
    }

    /// True while the database answers a trivial query within `within`.
    pub async fn ping(&self, within: Duration) -> bool {
        let query = sqlx::query_scalar::<_, i32>("select 1").fetch_one(&self.pool);
        matches!(tokio::time::timeout(within, query).await, Ok(Ok(1)))
    }
}
