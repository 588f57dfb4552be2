//! Adopting the legacy NestJS/Prisma database in place (docs/migration.md).
//!
//! A legacy database has `service_requests` with a `"JobStatus"` enum `status`, Prisma's
//! `_prisma_migrations` and none of the engine's tables. `Store::migrate` brings it to the
//! schema migrations 1–4 produce, in the steps of `legacy/adopt/`, each with its way back, so
//! that `migrate --revert` walks back to the legacy schema one step at a time. Every step
//! takes short locks only: catalog-only column changes, `CONCURRENTLY` indexes, constraints
//! added NOT VALID and validated separately, keyset-batched backfills, and renames instead of
//! an enum-to-text rewrite. DDL waits at most [`LOCK_TIMEOUT`] for its lock and retries, so a
//! long-running reader never makes the writers queue behind a waiting `alter table`.
//!
//! The last step records migrations 1–4 as applied (with their checksums) in
//! `_sqlx_migrations`: the adopted schema is theirs, and the migrations after them apply to
//! an adopted database exactly as to a fresh one. `_arreglame_adoption` lists the steps done.

use std::time::Duration;

use sqlx::{pool::PoolConnection, Postgres};
use uuid::Uuid;

use super::{Store, StoreError, MIGRATOR};

/// The engine migration the adoption brings a legacy database to (the schema of migrations
/// 1 to 4). Later migrations run on top of it as usual.
pub const ADOPTION_BASELINE: i64 = 20261201000004;

/// The `"JobStatus"` labels the status mapping knows (docs/migration.md has the table).
pub const LEGACY_JOB_STATUSES: &[&str] = &[
    "CREATED",
    "ACCEPTED",
    "ASSIGNED",
    "IN_PROGRESS",
    "PENDING_CLIENT_APPROVAL",
    "COMPLETED",
    "CANCELLED",
    "DISPUTED",
    "UNDER_REVIEW",
    "RESOLVED",
];

/// How long one DDL statement waits for its lock before it gives up and tries again. Writers
/// that arrive meanwhile queue behind the waiting statement, so this bounds their wait too.
pub const LOCK_TIMEOUT: Duration = Duration::from_millis(200);
const LOCK_RETRIES: u32 = 100;
/// Rows per backfill batch: a batch's row locks last a few milliseconds.
pub const BACKFILL_BATCH: i64 = 5_000;

/// How a step's SQL is run.
#[derive(Debug, Clone, Copy)]
enum Sql {
    /// One transaction.
    Transaction(&'static str),
    /// Each statement on its own, outside a transaction (`CONCURRENTLY` needs that, and a
    /// VALIDATE must not hold the lock of the ADD before it).
    Statements(&'static str),
    /// Keyset batches until each statement answers no last id (see 04_backfill.up.sql).
    Batches(&'static str),
}

/// One step of the adoption and its way back.
#[derive(Debug, Clone, Copy)]
pub struct Step {
    pub number: i32,
    pub name: &'static str,
    up: Sql,
    down: Sql,
}

/// One step from its two files in `legacy/adopt/` and how each is run.
macro_rules! step {
    ($number:literal, $prefix:literal, $name:literal, $up:ident, $down:ident) => {
        Step {
            number: $number,
            name: $name,
            up: Sql::$up(include_str!(concat!(
                "../../legacy/adopt/",
                $prefix,
                $name,
                ".up.sql"
            ))),
            down: Sql::$down(include_str!(concat!(
                "../../legacy/adopt/",
                $prefix,
                $name,
                ".down.sql"
            ))),
        }
    };
}

/// The adoption, in order. Steps 3 and 8 are partly Rust: step 3 moves the indexes of the
/// columns it retypes out of its lock's way, step 8 needs the migrations' checksums.
pub const STEPS: &[Step] = &[
    step!(1, "01_", "engine_tables", Transaction, Transaction),
    step!(2, "02_", "columns", Transaction, Transaction),
    step!(3, "03_", "timestamps_utc", Transaction, Transaction),
    step!(4, "04_", "backfill", Batches, Statements),
    step!(5, "05_", "indexes", Statements, Statements),
    step!(6, "06_", "constraints", Statements, Transaction),
    step!(7, "07_", "status_swap", Transaction, Transaction),
    Step {
        number: 8,
        name: "baseline",
        up: Sql::Statements(""),
        down: Sql::Statements(""),
    },
];

/// What `migrate` found in the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseKind {
    /// No service_requests yet: the migrations create everything.
    Fresh,
    /// The engine's schema (fresh or adopted and finished).
    Engine,
    /// A legacy database, adopted up to this step (0: not yet).
    Legacy { steps_done: i32 },
}

/// Why a database cannot be adopted, or a step failed.
#[derive(Debug, thiserror::Error)]
pub enum AdoptionError {
    #[error(
        "service_requests exists but neither _sqlx_migrations nor _prisma_migrations does: \
         not a database this engine knows how to adopt"
    )]
    Unrecognised,
    #[error(
        "service_requests.status has JobStatus labels the status mapping does not know: {0:?} \
         (add them to arreglame_engine_status and docs/migration.md first)"
    )]
    UnknownLegacyStatuses(Vec<String>),
    #[error("adoption step {step} ({name}) failed: {source}")]
    Step {
        step: i32,
        name: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// One step walked back by `migrate --revert`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reverted {
    Migration(i64),
    AdoptionStep { step: i32, name: &'static str },
}

impl std::fmt::Display for Reverted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reverted::Migration(v) => write!(f, "migration {v}"),
            Reverted::AdoptionStep { step, name } => {
                write!(f, "legacy adoption step {step} ({name})")
            }
        }
    }
}

impl Store {
    /// Tells a fresh database, the engine's own, and a legacy one (adopted how far).
    pub async fn database_kind(&self) -> Result<DatabaseKind, AdoptionError> {
        let (requests, prisma, adoption): (bool, bool, bool) = sqlx::query_as(
            r#"select to_regclass('public.service_requests') is not null,
                      to_regclass('public._prisma_migrations') is not null,
                      to_regclass('public._arreglame_adoption') is not null"#,
        )
        .fetch_one(&self.pool)
        .await?;
        if adoption {
            let done: i32 =
                sqlx::query_scalar("select coalesce(max(step), 0) from _arreglame_adoption")
                    .fetch_one(&self.pool)
                    .await?;
            return Ok(if done as usize == STEPS.len() {
                DatabaseKind::Engine
            } else {
                DatabaseKind::Legacy { steps_done: done }
            });
        }
        if !requests {
            return Ok(DatabaseKind::Fresh);
        }
        match (self.sqlx_migrations_rows().await? > 0, prisma) {
            (true, _) => Ok(DatabaseKind::Engine),
            (false, true) => Ok(DatabaseKind::Legacy { steps_done: 0 }),
            (false, false) => Err(AdoptionError::Unrecognised),
        }
    }

    async fn sqlx_migrations_rows(&self) -> Result<i64, sqlx::Error> {
        let exists: bool =
            sqlx::query_scalar("select to_regclass('public._sqlx_migrations') is not null")
                .fetch_one(&self.pool)
                .await?;
        if !exists {
            return Ok(0);
        }
        sqlx::query_scalar("select count(*) from _sqlx_migrations")
            .fetch_one(&self.pool)
            .await
    }

    /// True once a legacy database has been (at least partly) adopted: the seed then leaves
    /// out its demo people, and the revert walks the adoption back.
    pub async fn is_adopted_legacy(&self) -> Result<bool, sqlx::Error> {
        sqlx::query_scalar("select to_regclass('public._arreglame_adoption') is not null")
            .fetch_one(&self.pool)
            .await
    }

    /// Runs the adoption steps not done yet, when the database is a legacy one; returns the
    /// steps it ran with how long each took. A no-op on a fresh or engine database.
    pub async fn adopt_legacy(&self) -> Result<Vec<(&'static str, Duration)>, AdoptionError> {
        let DatabaseKind::Legacy { steps_done } = self.database_kind().await? else {
            return Ok(Vec::new());
        };
        if steps_done == 0 {
            self.check_legacy_statuses().await?;
            sqlx::query(
                r#"create table if not exists _arreglame_adoption (
                       step        integer primary key,
                       name        text not null,
                       "appliedAt" timestamptz not null default now())"#,
            )
            .execute(&self.pool)
            .await?;
        }
        let mut ran = Vec::new();
        for step in STEPS.iter().filter(|s| s.number > steps_done) {
            let started = std::time::Instant::now();
            self.run_step_up(step)
                .await
                .map_err(|source| AdoptionError::Step {
                    step: step.number,
                    name: step.name,
                    source,
                })?;
            tracing::info!(target: "Migrate", step = step.number, name = step.name,
                elapsed_ms = started.elapsed().as_millis() as u64, "legacy adoption step applied");
            ran.push((step.name, started.elapsed()));
        }
        Ok(ran)
    }

    /// Refuses a legacy enum with labels the mapping would turn into no status at all.
    async fn check_legacy_statuses(&self) -> Result<(), AdoptionError> {
        let labels: Vec<String> = sqlx::query_scalar(
            r#"select e.enumlabel::text from pg_attribute a
               join pg_enum e on e.enumtypid = a.atttypid
               where a.attrelid = 'service_requests'::regclass and a.attname = 'status'
               order by e.enumsortorder"#,
        )
        .fetch_all(&self.pool)
        .await?;
        let unknown: Vec<String> = labels
            .into_iter()
            .filter(|l| !LEGACY_JOB_STATUSES.contains(&l.as_str()))
            .collect();
        if unknown.is_empty() {
            Ok(())
        } else {
            Err(AdoptionError::UnknownLegacyStatuses(unknown))
        }
    }

    async fn run_step_up(&self, step: &Step) -> Result<(), sqlx::Error> {
        let mut conn = self.pool.acquire().await?;
        if step.number == 5 {
            drop_invalid_indexes(&mut conn).await?;
        }
        match step.name {
            "baseline" => record_baseline(&mut conn).await?,
            "timestamps_utc" => retype_without_rebuilding_under_lock(&mut conn, step.up).await?,
            _ => run_sql(&mut conn, step.up).await?,
        }
        sqlx::query("insert into _arreglame_adoption (step, name) values ($1, $2)")
            .bind(step.number)
            .bind(step.name)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    /// Walks back the latest adoption step; `None` when the database was not adopted.
    pub(super) async fn revert_adoption_step(&self) -> Result<Option<Reverted>, sqlx::Error> {
        if !self.is_adopted_legacy().await? {
            return Ok(None);
        }
        let latest: Option<i32> = sqlx::query_scalar("select max(step) from _arreglame_adoption")
            .fetch_one(&self.pool)
            .await?;
        let Some(step) = latest.and_then(|n| STEPS.iter().find(|s| s.number == n)) else {
            sqlx::query("drop table _arreglame_adoption")
                .execute(&self.pool)
                .await?;
            return Ok(None);
        };
        let mut conn = self.pool.acquire().await?;
        match step.name {
            "baseline" => forget_baseline(&mut conn).await?,
            "timestamps_utc" => retype_without_rebuilding_under_lock(&mut conn, step.down).await?,
            _ => run_sql(&mut conn, step.down).await?,
        }
        sqlx::query("delete from _arreglame_adoption where step = $1")
            .bind(step.number)
            .execute(&mut *conn)
            .await?;
        if step.number == 1 {
            // Back to the legacy schema: nothing of the engine's is left.
            sqlx::query("drop table _arreglame_adoption")
                .execute(&mut *conn)
                .await?;
        }
        Ok(Some(Reverted::AdoptionStep {
            step: step.number,
            name: step.name,
        }))
    }

    /// The engine migrations applied on top of the adoption baseline, newest last.
    pub(super) async fn applied_migrations(&self) -> Result<Vec<i64>, sqlx::Error> {
        match sqlx::query_scalar(
            "select version from _sqlx_migrations where success order by version",
        )
        .fetch_all(&self.pool)
        .await
        {
            Ok(v) => Ok(v),
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => Ok(vec![]),
            Err(e) => Err(e),
        }
    }
}

/// An open request whose "cityId" names no city the engine serves.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UnplacedRequest {
    pub id: Uuid,
    pub version: i32,
    pub latitude: f64,
    pub longitude: f64,
}

impl Store {
    /// Open requests with a location whose "cityId" is null or none of `served` (legacy
    /// rows, or the guide's `'default'` backfill).
    pub async fn unplaced_open_requests(
        &self,
        served: &[String],
    ) -> Result<Vec<UnplacedRequest>, StoreError> {
        Ok(sqlx::query_as(
            r#"select id, version, latitude, longitude from service_requests
               where status in ('PENDING', 'OFFERING', 'ASSIGNED', 'IN_PROGRESS') and "closedAt" is null
                 and ("cityId" is null or not ("cityId" = any($1)))
                 and latitude is not null and longitude is not null
               order by "createdAt"
               limit 10000"#,
        )
        .bind(served)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Sets the request's city if the row is still at `version`; false when it moved on
    /// (its writer decides again with the row as it is now). Not a transition: the status
    /// and version stay, and no event is due.
    pub async fn place_request(
        &self,
        id: Uuid,
        version: i32,
        city_id: &str,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            r#"update service_requests set "cityId" = $3 where id = $1 and version = $2"#,
        )
        .bind(id)
        .bind(version)
        .bind(city_id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}

impl Store {
    /// Withdraws the pending offers of a request that is no longer OFFERING (another writer
    /// assigned or cancelled it while the offers were out); returns (offer, worker) of each.
    pub async fn withdraw_orphaned_offers(
        &self,
        request_id: Uuid,
    ) -> Result<Vec<(Uuid, Uuid)>, StoreError> {
        Ok(sqlx::query_as(
            r#"update offers o set outcome = 'WITHDRAWN', "respondedAt" = now(),
                      "rejectReason" = 'the request moved on without this offer'
               where o."requestId" = $1 and o.outcome is null
                 and exists (select 1 from service_requests r where r.id = $1 and r.status <> 'OFFERING')
               returning o.id, o."workerId""#,
        )
        .bind(request_id)
        .fetch_all(&self.pool)
        .await?)
    }
}

/// Runs one step's SQL on `conn`, each lock-taking statement bounded by [`LOCK_TIMEOUT`].
async fn run_sql(conn: &mut PoolConnection<Postgres>, sql: Sql) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "set lock_timeout = '{}ms'",
        LOCK_TIMEOUT.as_millis()
    ))
    .execute(&mut **conn)
    .await?;
    let result = match sql {
        Sql::Transaction(text) => {
            let mut tries = 0;
            loop {
                let attempt = async {
                    let mut tx = sqlx::Connection::begin(&mut **conn).await?;
                    sqlx::raw_sql(text).execute(&mut *tx).await?;
                    tx.commit().await
                }
                .await;
                if !retry_on_lock_timeout(&attempt, &mut tries).await {
                    break attempt;
                }
            }
        }
        Sql::Statements(text) => {
            let mut result = Ok(());
            for statement in statements(text) {
                result = execute_with_lock_retries(conn, &statement).await;
                if result.is_err() {
                    break;
                }
            }
            result
        }
        Sql::Batches(text) => {
            let mut result = Ok(());
            for statement in text.split("\n-- batch\n") {
                result = run_batches(conn, statement).await;
                if result.is_err() {
                    break;
                }
            }
            result
        }
    };
    sqlx::query("reset lock_timeout")
        .execute(&mut **conn)
        .await?;
    result
}

async fn run_batches(
    conn: &mut PoolConnection<Postgres>,
    statement: &str,
) -> Result<(), sqlx::Error> {
    let mut after = Uuid::nil();
    loop {
        let last: Option<Uuid> = sqlx::query_scalar(statement)
            .bind(after)
            .bind(BACKFILL_BATCH)
            .fetch_one(&mut **conn)
            .await?;
        match last {
            Some(id) => after = id,
            None => return Ok(()),
        }
    }
}

/// One statement outside a transaction, tried again while it fails on its lock timeout.
async fn execute_with_lock_retries(
    conn: &mut PoolConnection<Postgres>,
    statement: &str,
) -> Result<(), sqlx::Error> {
    let mut tries = 0;
    loop {
        let attempt = sqlx::raw_sql(statement)
            .execute(&mut **conn)
            .await
            .map(|_| ());
        if !retry_on_lock_timeout(&attempt, &mut tries).await {
            return attempt;
        }
    }
}

/// True (after a short pause that lets the queued writers through) when `attempt` failed
/// on its lock timeout (SQLSTATE 55P03) and may be tried again.
async fn retry_on_lock_timeout(attempt: &Result<(), sqlx::Error>, tries: &mut u32) -> bool {
    let Err(sqlx::Error::Database(e)) = attempt else {
        return false;
    };
    if e.code().as_deref() != Some("55P03") || *tries >= LOCK_RETRIES {
        return false;
    }
    *tries += 1;
    tracing::info!(target: "Migrate", tries = *tries, "lock not granted within the timeout; retrying");
    tokio::time::sleep(Duration::from_millis(50 * u64::from((*tries).min(10)))).await;
    true
}

/// The statements of a file, split at the `;` that ends a line (the files that run
/// statement by statement hold no function bodies).
fn statements(text: &str) -> Vec<String> {
    text.split_inclusive('\n')
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<String>()
        .split(";\n")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// The service_requests columns step 3 retypes.
const RETYPED_TIMES: [&str; 6] = [
    "createdAt",
    "acceptedAt",
    "startedAt",
    "completedAt",
    "cancelledAt",
    "updatedAt",
];

/// Step 3 (either way): timestamp(3) ↔ timestamptz(3) in UTC rewrites no rows, but every
/// index on a retyped column would be rebuilt inside the ALTER, under its ACCESS EXCLUSIVE
/// lock (2 s for one index of a million rows, every writer waiting). So those indexes are
/// dropped CONCURRENTLY first and built again CONCURRENTLY after, from definitions kept in
/// `_arreglame_saved_indexes` (an interrupted run rebuilds them on the next). Meanwhile the
/// legacy system's queries on those columns go without their index for a few seconds.
async fn retype_without_rebuilding_under_lock(
    conn: &mut PoolConnection<Postgres>,
    alter: Sql,
) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(
        "create table if not exists _arreglame_saved_indexes (name text primary key, definition text not null)",
    )
    .execute(&mut **conn)
    .await?;
    sqlx::query(
        r#"insert into _arreglame_saved_indexes (name, definition)
           select c.relname, pg_get_indexdef(i.indexrelid)
           from pg_index i join pg_class c on c.oid = i.indexrelid
           where i.indrelid = 'service_requests'::regclass and not i.indisprimary
             and exists (select 1 from pg_attribute a
                         where a.attrelid = i.indrelid and a.attnum = any(i.indkey) and a.attname = any($1))
           on conflict (name) do nothing"#,
    )
    .bind(RETYPED_TIMES.map(String::from).to_vec())
    .execute(&mut **conn)
    .await?;
    let saved: Vec<(String, String)> =
        sqlx::query_as("select name, definition from _arreglame_saved_indexes order by name")
            .fetch_all(&mut **conn)
            .await?;
    sqlx::query(&format!(
        "set lock_timeout = '{}ms'",
        LOCK_TIMEOUT.as_millis()
    ))
    .execute(&mut **conn)
    .await?;
    for (name, _) in &saved {
        let drop = format!(
            r#"drop index concurrently if exists "{}""#,
            name.replace('"', "\"\"")
        );
        execute_with_lock_retries(conn, &drop).await?;
    }
    run_sql(conn, alter).await?;
    for (_, definition) in &saved {
        let concurrently = definition
            .replacen(
                "CREATE INDEX ",
                "CREATE INDEX CONCURRENTLY IF NOT EXISTS ",
                1,
            )
            .replacen(
                "CREATE UNIQUE INDEX ",
                "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS ",
                1,
            );
        sqlx::raw_sql(&concurrently).execute(&mut **conn).await?;
    }
    sqlx::raw_sql("drop table _arreglame_saved_indexes")
        .execute(&mut **conn)
        .await?;
    Ok(())
}

/// An interrupted `create index concurrently` leaves an invalid index that `if not exists`
/// would then skip: drop such leftovers before building again.
async fn drop_invalid_indexes(conn: &mut PoolConnection<Postgres>) -> Result<(), sqlx::Error> {
    let invalid: Vec<String> = sqlx::query_scalar(
        r#"select quote_ident(c.relname) from pg_index i join pg_class c on c.oid = i.indexrelid
           where not i.indisvalid
             and i.indrelid in ('service_requests'::regclass, 'worker_profiles'::regclass, 'customers'::regclass)"#,
    )
    .fetch_all(&mut **conn)
    .await?;
    for index in invalid {
        tracing::warn!(target: "Migrate", index, "dropping an invalid index left by an interrupted build");
        sqlx::raw_sql(&format!("drop index concurrently if exists {index}"))
            .execute(&mut **conn)
            .await?;
    }
    Ok(())
}

/// Records migrations up to [`ADOPTION_BASELINE`] as applied, in sqlx's own table and with
/// their checksums, so the migrator validates them and applies only what follows.
async fn record_baseline(conn: &mut PoolConnection<Postgres>) -> Result<(), sqlx::Error> {
    let mut tx = sqlx::Connection::begin(&mut **conn).await?;
    sqlx::raw_sql(
        r#"create table if not exists _sqlx_migrations (
               version bigint primary key,
               description text not null,
               installed_on timestamptz not null default now(),
               success boolean not null,
               checksum bytea not null,
               execution_time bigint not null)"#,
    )
    .execute(&mut *tx)
    .await?;
    for m in MIGRATOR
        .iter()
        .filter(|m| m.version <= ADOPTION_BASELINE && m.migration_type.is_up_migration())
    {
        sqlx::query(
            r#"insert into _sqlx_migrations (version, description, success, checksum, execution_time)
               values ($1, $2, true, $3, 0) on conflict (version) do nothing"#,
        )
        .bind(m.version)
        .bind(&*m.description)
        .bind(&*m.checksum)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}

/// Undoes [`record_baseline`]; the legacy database had no `_sqlx_migrations` before.
async fn forget_baseline(conn: &mut PoolConnection<Postgres>) -> Result<(), sqlx::Error> {
    let mut tx = sqlx::Connection::begin(&mut **conn).await?;
    sqlx::query("delete from _sqlx_migrations where version <= $1")
        .bind(ADOPTION_BASELINE)
        .execute(&mut *tx)
        .await?;
    sqlx::raw_sql(
        "do $$ begin
             if not exists (select 1 from _sqlx_migrations) then drop table _sqlx_migrations; end if;
         end $$",
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

#[cfg(test)]
mod tests {
    use super::*;

    macro_rules! adopt_sql {
        ($file:literal) => {
            include_str!(concat!("../../legacy/adopt/", $file))
        };
    }

    #[test]
    fn statement_files_split_into_whole_statements() {
        let parts = statements(adopt_sql!("06_constraints.up.sql"));
        assert!(
            parts.iter().all(|s| s.starts_with("alter table")),
            "{parts:#?}"
        );
        assert_eq!(
            parts
                .iter()
                .filter(|s| s.contains("validate constraint"))
                .count(),
            parts.iter().filter(|s| s.contains("not valid")).count()
        );
        let indexes = statements(adopt_sql!("05_indexes.up.sql"));
        assert!(
            indexes.iter().all(|s| s.contains("concurrently")),
            "{indexes:#?}"
        );
    }

    #[test]
    fn steps_are_numbered_in_order_and_end_with_the_baseline() {
        for (i, step) in STEPS.iter().enumerate() {
            assert_eq!(step.number as usize, i + 1);
        }
        assert_eq!(STEPS.last().map(|s| s.name), Some("baseline"));
    }

    #[test]
    fn the_baseline_is_an_engine_migration() {
        assert!(MIGRATOR.iter().any(|m| m.version == ADOPTION_BASELINE));
    }
}
