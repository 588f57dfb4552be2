//! Transitions with their outbox rows persisted per second through `Store::transition`,
//! beside `pgbench` running the same SQL on the same database with the same client count,
//! in the same run.
//!
//! Each of `C` clients cycles its own request PENDING → OFFERING (`Change::OfferSent`) →
//! PENDING (`Change::OfferSettled`, rejected), against its own worker, so no two clients
//! ever touch the same rows. The engine's transition is one statement (a data-modifying
//! CTE, `src/store/transition.rs`). The pgbench side is the fixed baseline (issue 13): the
//! per-transition SQL as the engine sent it before that change, one transaction of the
//! version-guarded `update service_requests ... returning *`, the `offers` insert (or
//! settle) and one `outbox_events` insert.
//!
//! - **engine**: `C` tokio tasks calling `Store::transition` through one pool of `C + 2`
//!   connections (the store's coalesced post-commit `NOTIFY` sender takes one), with the
//!   engine's Prometheus recorder installed, as in production: transitions that arrive
//!   together share a commit (group commit, `DATABASE_GROUP_COMMIT_MAX` 64), each kind in
//!   a group one multi-row statement.
//! - **engine-alone**: the same with group commit off (`with_group_commit(1)`): each
//!   transition its own statement and commit, the engine before group commit.
//! - **pgbench**: `C` clients (`-M prepared`, `-j` up to the core count) running
//!   [`PGBENCH_SCRIPT`]: the pre-CTE statements and transaction boundaries. One
//!   pgbench "transaction" is one script run: two transitions.
//!
//! Every phase gets fresh requests and workers (created through `Store::create_request`),
//! starts after `vacuum analyze` and `checkpoint`, and is checked afterwards: its outbox
//! rows must match the transitions it reported. Runs alternate which side goes first.
//!
//! `eval "$(scripts/dev-env.sh)"; cargo bench --bench transitions`
//! (`BENCH_RUNS`, default 5; `BENCH_SECONDS`, 5; `BENCH_CLIENTS`, a list, default `1,8,32`;
//! `PGBENCH`, the pgbench binary, found under /usr/lib/postgresql/*/bin otherwise;
//! `DATABASE_GROUP_COMMIT_WRITERS`, the engine's own setting, its default otherwise)

#[path = "common/mod.rs"]
#[allow(dead_code)] // each benchmark uses some of the shared helpers
mod common;
use common::*;

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _};
use arreglame::{
    domain::Cents,
    store::{
        Change, NewOffer, NewServiceRequest, OfferOutcome, ServiceRequest, Store, OUTBOX_CHANNEL,
    },
};
use chrono::{TimeDelta, Utc};
use sqlx::postgres::PgListener;
use tokio::sync::Barrier;
use uuid::Uuid;

/// A seeded customer (seeds/04_demo_people.sql).
const CUSTOMER: Uuid = Uuid::from_u128(0x00000000_0000_4000_8000_000000000c01);

/// One OfferSent and one OfferSettled, each in its own transaction, with the statements
/// `Store::transition` sent before transitions became one statement (kept as the fixed
/// baseline every later run compares against); the engine's bind parameters that are
/// constants here are written as literals. `\gset` after `returning *` keeps the row's
/// new version for the next guard, as the engine keeps the `ServiceRequest` it got back.
///
/// The first run of each client looks up its request and worker (keyed by
/// `:prefix || :client_id`); `-D version=0` marks "not looked up yet".
const PGBENCH_SCRIPT: &str = r#"
\if :version = 0
select r.id as rid, w.id as wid, r.version as version
  from service_requests r join worker_profiles w on w.name = r."idempotencyKey"
  where r."idempotencyKey" = cast(:prefix as text) || cast(:client_id as text) \gset
\endif
begin;
update service_requests set
     status = 'OFFERING',
     version = version + 1,
     "assignmentAttempts" = "assignmentAttempts" + 1,
     "workerTimeoutAt" = now() + interval '60 seconds',
     "assignedWorkerId" = coalesce(null::uuid, "assignedWorkerId"),
     "assignedAt" = case when 'OFFERING' = 'ASSIGNED' then now() else "assignedAt" end,
     "startedAt" = case when 'OFFERING' = 'IN_PROGRESS' then now() else "startedAt" end,
     "completedAt" = case when 'OFFERING' = 'COMPLETED' then now() else "completedAt" end,
     "cancelledAt" = case when 'OFFERING' = 'CANCELLED' then now() else "cancelledAt" end,
     "cancelledBy" = coalesce(null::text, "cancelledBy"),
     "cancellationReason" = coalesce(null::text, "cancellationReason"),
     "cancellationFeeCents" = coalesce(null::bigint, "cancellationFeeCents"),
     "unassignedReason" = coalesce(null::text, "unassignedReason"),
     "updatedAt" = now()
   where id = :rid and version = :version
   returning * \gset
insert into offers (id, "requestId", "workerId", attempt, "expiresAt",
                    "distanceMeters", "radiusMeters", "candidatesConsidered")
   values (gen_random_uuid(), :rid, :wid, :assignmentAttempts, :workerTimeoutAt, 850, 2000, 3)
   returning id as offer_id \gset
insert into outbox_events ("aggregateType", "aggregateId", "aggregateVersion", type, payload)
   values ('service_request', :rid, :version, 'OfferSent', jsonb_build_object(
     'requestId', cast(:rid as text), 'customerId', cast(:customerId as text),
     'cityId', cast(:cityId as text), 'status', 'OFFERING', 'version', cast(:version as int),
     'assignmentAttempts', cast(:assignmentAttempts as int),
     'workerTimeoutAt', cast(:workerTimeoutAt as text), 'assignedWorkerId', null::text,
     'offerId', cast(:offer_id as text), 'workerId', cast(:wid as text),
     'attempt', cast(:assignmentAttempts as int), 'expiresAt', cast(:workerTimeoutAt as text),
     'distanceMeters', 850.0, 'radiusMeters', 2000))
   returning id;
commit;
begin;
update service_requests set
     status = 'PENDING',
     version = version + 1,
     "assignmentAttempts" = "assignmentAttempts" + 0,
     "workerTimeoutAt" = null,
     "assignedWorkerId" = coalesce(null::uuid, "assignedWorkerId"),
     "assignedAt" = case when 'PENDING' = 'ASSIGNED' then now() else "assignedAt" end,
     "startedAt" = case when 'PENDING' = 'IN_PROGRESS' then now() else "startedAt" end,
     "completedAt" = case when 'PENDING' = 'COMPLETED' then now() else "completedAt" end,
     "cancelledAt" = case when 'PENDING' = 'CANCELLED' then now() else "cancelledAt" end,
     "cancelledBy" = coalesce(null::text, "cancelledBy"),
     "cancellationReason" = coalesce(null::text, "cancellationReason"),
     "cancellationFeeCents" = coalesce(null::bigint, "cancellationFeeCents"),
     "unassignedReason" = coalesce(null::text, "unassignedReason"),
     "updatedAt" = now()
   where id = :rid and version = :version
   returning * \gset
update offers set outcome = 'REJECTED', "respondedAt" = now(), "rejectReason" = null
   where "requestId" = :rid and (cast(:offer_id as uuid) is null or id = cast(:offer_id as uuid))
     and outcome is null
   returning "workerId";
insert into outbox_events ("aggregateType", "aggregateId", "aggregateVersion", type, payload)
   values ('service_request', :rid, :version, 'OfferRejected', jsonb_build_object(
     'requestId', cast(:rid as text), 'customerId', cast(:customerId as text),
     'cityId', cast(:cityId as text), 'status', 'PENDING', 'version', cast(:version as int),
     'assignmentAttempts', cast(:assignmentAttempts as int),
     'workerTimeoutAt', null::text, 'assignedWorkerId', null::text,
     'offerId', cast(:offer_id as text), 'workerId', cast(:wid as text),
     'outcome', 'REJECTED', 'reason', null::text))
   returning id;
commit;
"#;

struct Params {
    runs: usize,
    seconds: f64,
    clients: Vec<usize>,
    /// `Store::with_group_commit_writers` for the engine side.
    writers: usize,
    pgbench: PathBuf,
    script: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Side {
    Engine,
    EngineAlone,
    Pgbench,
}

impl Side {
    fn label(self) -> &'static str {
        match self {
            Side::Engine => "engine",
            Side::EngineAlone => "alone",
            Side::Pgbench => "pgbench",
        }
    }
}

/// One measured phase of one side.
#[derive(Debug, Clone, Copy)]
struct Phase {
    transitions: u64,
    per_s: f64,
    /// CPU time the client side spent (this process for the engine, the pgbench child for
    /// pgbench), in microseconds per transition. Postgres shares the same cores.
    client_cpu_us: f64,
    /// `NOTIFY outbox_events` heard per transition: the engine announces commits from
    /// outside the transaction (coalesced), one more statement and commit each; pgbench
    /// sends none.
    notifies_per_transition: f64,
}

fn main() -> anyhow::Result<()> {
    let database_url = std::env::var("DATABASE_URL")
        .context("DATABASE_URL: run `eval \"$(scripts/dev-env.sh)\"` first")?;
    let script = std::env::temp_dir().join(format!(
        "arreglame-transitions-{}.sql",
        Uuid::new_v4().simple()
    ));
    std::fs::write(&script, PGBENCH_SCRIPT)?;
    let params = Params {
        runs: env_num("BENCH_RUNS", 5.0) as usize,
        seconds: env_num("BENCH_SECONDS", 5.0),
        clients: env_list("BENCH_CLIENTS", &[1, 8, 32]),
        writers: env_num(
            "DATABASE_GROUP_COMMIT_WRITERS",
            arreglame::store::DEFAULT_GROUP_COMMIT_WRITERS as f64,
        ) as usize,
        pgbench: find_pgbench()?,
        script,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(bench(&params, database_url));
    let _ = std::fs::remove_file(&params.script);
    result
}

async fn bench(params: &Params, server_url: String) -> anyhow::Result<()> {
    println!(
        "# transitions (+ outbox row) per second: Store::transition vs pgbench, medians of {} runs of {} s",
        params.runs, params.seconds
    );
    println!(
        "machine: {} cores (shared: other work may run beside this benchmark), load average at start {}",
        cores(),
        loadavg()
    );
    println!("pgbench: {}", params.pgbench.display());
    println!("engine: {} group-commit writers", params.writers);
    // The engine records its query histograms; so does this process.
    arreglame::ops::metrics::handle();
    let (db_name, url) = create_database(&server_url, "bench_transitions").await?;
    let result = measure_all(params, &url).await;
    drop_database(&server_url, &db_name).await?;
    println!("load average at end {}", loadavg());
    result
}

async fn measure_all(params: &Params, url: &str) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for &clients in &params.clients {
        let db = Db {
            store: Store::connect(url, clients as u32 + 2)
                .await?
                .with_group_commit_writers(params.writers),
            url: url.to_string(),
        };
        // Warm-up: the pool's connections, their statement caches, the tables' pages.
        for side in [Side::Engine, Side::EngineAlone, Side::Pgbench] {
            phase(side, &db, params, clients, "warmup", 1.0).await?;
        }
        let (mut engine, mut alone, mut pgbench) = (Vec::new(), Vec::new(), Vec::new());
        for run in 1..=params.runs {
            let order = if run % 2 == 1 {
                [Side::Engine, Side::EngineAlone, Side::Pgbench]
            } else {
                [Side::Pgbench, Side::EngineAlone, Side::Engine]
            };
            for side in order {
                let result =
                    phase(side, &db, params, clients, &run.to_string(), params.seconds).await?;
                println!(
                    "C={clients:<3} run {run} {:<8} {:>8.0} transitions/s  client CPU {:>5.0} µs/transition  {:.2} NOTIFY/transition  ({} transitions, outbox rows match)",
                    side.label(),
                    result.per_s,
                    result.client_cpu_us,
                    result.notifies_per_transition,
                    result.transitions
                );
                match side {
                    Side::Engine => engine.push(result),
                    Side::EngineAlone => alone.push(result),
                    Side::Pgbench => pgbench.push(result),
                }
            }
        }
        db.store.pool().close().await;
        rows.push((clients, engine, alone, pgbench));
    }
    print_table(params.runs, &rows);
    Ok(())
}

/// The bench database: a pool for the engine side, the URL for pgbench.
struct Db {
    store: Store,
    url: String,
}

/// Fresh rows, a settled database, one measured phase, and the outbox check.
async fn phase(
    side: Side,
    db: &Db,
    params: &Params,
    clients: usize,
    run: &str,
    seconds: f64,
) -> anyhow::Result<Phase> {
    let store = &db.store;
    let prefix = format!("{}:{clients}:{run}:", side.label());
    let pairs = prepare_rows(store, &prefix, clients).await?;
    settle(store).await?;
    let notifies = NotifyCounter::start(store).await?;
    let duration = Duration::from_secs_f64(seconds);
    let mut result = match side {
        Side::Engine => run_engine(store, pairs, duration).await?,
        Side::EngineAlone => {
            run_engine(&store.clone().with_group_commit(1), pairs, duration).await?
        }
        Side::Pgbench => run_pgbench(params, db, &prefix, clients, seconds).await?,
    };
    result.notifies_per_transition = notifies.stop().await? as f64 / result.transitions as f64;
    let rows = outbox_rows(store, &prefix).await?;
    ensure!(
        rows == result.transitions,
        "{prefix}: {rows} outbox rows for {} transitions",
        result.transitions
    );
    Ok(result)
}

/// `clients` PENDING requests (each with its `ServiceRequestCreated` row) and as many
/// workers, keyed `prefix || i`.
async fn prepare_rows(
    store: &Store,
    prefix: &str,
    clients: usize,
) -> anyhow::Result<Vec<(ServiceRequest, Uuid)>> {
    let mut pairs = Vec::with_capacity(clients);
    for i in 0..clients {
        let key = format!("{prefix}{i}");
        let (request, _) = store.create_request(&new_request(&key)).await?;
        let worker: Uuid = sqlx::query_scalar(
            r#"insert into worker_profiles (name, "cityId", skills)
               values ($1, 'buenos-aires', '{lawn_mowing}') returning id"#,
        )
        .bind(&key)
        .fetch_one(store.pool())
        .await?;
        pairs.push((request, worker));
    }
    Ok(pairs)
}

fn new_request(key: &str) -> NewServiceRequest {
    NewServiceRequest {
        customer_id: CUSTOMER,
        city_id: "buenos-aires".into(),
        latitude: -34.6037,
        longitude: -58.3816,
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
        idempotency_key: Some(key.to_string()),
        slot: None,
        status: arreglame::domain::Status::Pending,
    }
}

/// Neither side inherits the other's dead tuples or dirty buffers. VACUUM refuses to run
/// inside a transaction block, so each statement goes alone.
async fn settle(store: &Store) -> anyhow::Result<()> {
    for sql in [
        "vacuum analyze service_requests, offers, outbox_events",
        "checkpoint",
    ] {
        sqlx::raw_sql(sql).execute(store.pool()).await?;
    }
    Ok(())
}

/// One task per (request, worker), cycling until `duration` has passed; a cycle is never
/// cut in half, so every request ends PENDING.
async fn run_engine(
    store: &Store,
    pairs: Vec<(ServiceRequest, Uuid)>,
    duration: Duration,
) -> anyhow::Result<Phase> {
    let barrier = Arc::new(Barrier::new(pairs.len() + 1));
    let mut tasks = Vec::with_capacity(pairs.len());
    for (request, worker) in pairs {
        let (store, barrier) = (store.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let deadline = Instant::now() + duration;
            let mut current = request;
            let mut transitions = 0u64;
            while Instant::now() < deadline {
                current = offer_and_settle(&store, current, worker).await?;
                transitions += 2;
            }
            anyhow::Ok(transitions)
        }));
    }
    barrier.wait().await;
    let (started, cpu) = (Instant::now(), cpu_seconds()?);
    let mut transitions = 0;
    for task in tasks {
        transitions += task.await??;
    }
    let (elapsed, cpu) = (started.elapsed().as_secs_f64(), cpu_seconds()?.0 - cpu.0);
    Ok(Phase {
        transitions,
        per_s: transitions as f64 / elapsed,
        client_cpu_us: cpu * 1e6 / transitions as f64,
        notifies_per_transition: f64::NAN,
    })
}

/// What the request actor does for an offer that comes back rejected.
async fn offer_and_settle(
    store: &Store,
    current: ServiceRequest,
    worker: Uuid,
) -> anyhow::Result<ServiceRequest> {
    let offer = NewOffer {
        id: Uuid::new_v4(),
        worker_id: worker,
        attempt: current.assignment_attempts + 1,
        expires_at: Utc::now() + TimeDelta::seconds(60),
        distance_meters: 850.0,
        radius_meters: 2000,
        candidates_considered: 3,
        candidate_scores: vec![],
    };
    let offer_id = offer.id;
    let offering = store.transition(&current, Change::OfferSent(offer)).await?;
    let settled = Change::OfferSettled {
        offer_id,
        outcome: OfferOutcome::Rejected,
        reason: None,
        others_pending: false,
    };
    Ok(store.transition(&offering, settled).await?)
}

async fn run_pgbench(
    params: &Params,
    db: &Db,
    prefix: &str,
    clients: usize,
    seconds: f64,
) -> anyhow::Result<Phase> {
    let threads = clients.min(cores());
    let mut command = Command::new(&params.pgbench);
    command
        .args(["-n", "-M", "prepared"])
        .args(["-c", &clients.to_string(), "-j", &threads.to_string()])
        .args(["-T", &format!("{}", seconds.round().max(1.0) as u64)])
        .args(["-D", "version=0", "-D", &format!("prefix={prefix}")])
        .arg("-f")
        .arg(&params.script)
        // libpq reads a URI in the database-name position.
        .arg(&db.url);
    let children_cpu = cpu_seconds()?.1;
    let output = tokio::task::spawn_blocking(move || command.output()).await??;
    let children_cpu = cpu_seconds()?.1 - children_cpu;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "pgbench failed ({}):\n{stdout}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let scripts: u64 = field(&stdout, "number of transactions actually processed: ")
        .and_then(|v| v.split('/').next()?.parse().ok())
        .context("pgbench: no transaction count")?;
    let failed: u64 = field(&stdout, "number of failed transactions: ")
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    ensure!(failed == 0, "pgbench: {failed} failed transactions");
    let tps: f64 = field(&stdout, "tps = ")
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("pgbench: no tps")?;
    // One script run is two transitions.
    Ok(Phase {
        transitions: 2 * scripts,
        per_s: 2.0 * tps,
        client_cpu_us: children_cpu * 1e6 / (2 * scripts) as f64,
        notifies_per_transition: f64::NAN,
    })
}

/// CPU seconds (user + system) of this process and of its waited-for children, from
/// /proc/self/stat (clock ticks of 1/100 s, Linux's USER_HZ).
fn cpu_seconds() -> anyhow::Result<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the command name, which ends at the last ')': field 3 comes first.
    let fields: Vec<u64> = stat
        .rsplit_once(')')
        .context("/proc/self/stat")?
        .1
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    ensure!(fields.len() > 14, "/proc/self/stat is too short");
    let ticks = |a: usize, b: usize| (fields[a - 3] + fields[b - 3]) as f64 / 100.0;
    Ok((ticks(14, 15), ticks(16, 17)))
}

/// The value after `label` on pgbench's summary line that starts with it.
fn field<'a>(stdout: &'a str, label: &str) -> Option<&'a str> {
    stdout.lines().find_map(|line| line.strip_prefix(label))
}

/// Counts the notifications on the outbox channel while a phase runs.
struct NotifyCounter {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<u64>>,
}

impl NotifyCounter {
    async fn start(store: &Store) -> anyhow::Result<NotifyCounter> {
        let mut listener = PgListener::connect_with(store.pool()).await?;
        listener.listen(OUTBOX_CHANNEL).await?;
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut heard = 0;
            loop {
                tokio::select! {
                    note = listener.recv() => { note?; heard += 1; }
                    _ = &mut stopped => return Ok(heard),
                }
            }
        });
        Ok(NotifyCounter { stop, task })
    }

    /// Stops once the last notifications sent have had time to arrive.
    async fn stop(self) -> anyhow::Result<u64> {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = self.stop.send(());
        self.task.await?
    }
}

/// Outbox rows written by the phase's transitions (creation rows left out).
async fn outbox_rows(store: &Store, prefix: &str) -> anyhow::Result<u64> {
    let n: i64 = sqlx::query_scalar(
        r#"select count(*) from outbox_events
           where "aggregateType" = 'service_request' and type <> 'ServiceRequestCreated'
             and "aggregateId" in (select id::text from service_requests
                                   where starts_with("idempotencyKey", $1))"#,
    )
    .bind(prefix)
    .fetch_one(store.pool())
    .await?;
    Ok(n as u64)
}

/// `$PGBENCH`, else the newest /usr/lib/postgresql/*/bin/pgbench (where scripts/dev-env.sh
/// finds initdb), else `pgbench` on the PATH.
fn find_pgbench() -> anyhow::Result<PathBuf> {
    if let Ok(path) = std::env::var("PGBENCH") {
        return Ok(PathBuf::from(path));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|dir| {
            let version = dir.file_name().to_str()?.parse().ok()?;
            let path = dir.path().join("bin/pgbench");
            is_executable(&path).then_some((version, path))
        })
        .collect();
    found.sort();
    if let Some((_, path)) = found.pop() {
        return Ok(path);
    }
    let on_path = std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|dir| dir.join("pgbench"))
                .find(|p| is_executable(p))
        })
        .context("pgbench not found: install postgresql (or set PGBENCH)")?;
    Ok(on_path)
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

type Row = (usize, Vec<Phase>, Vec<Phase>, Vec<Phase>);

fn print_table(runs: usize, rows: &[Row]) {
    let m = |runs: &[Phase], f: fn(&Phase) -> f64| median(runs.iter().map(f).collect::<Vec<f64>>());
    println!();
    println!(
        "| C clients | engine transitions/s | engine, one commit each | pgbench transitions/s | engine / pgbench | target ≥ 3 | engine / one commit each | engine client CPU µs/transition | pgbench client CPU µs/transition | engine NOTIFY/transition |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |");
    for (clients, engine, alone, pgbench) in rows {
        let (e, a, p) = (
            m(engine, |r| r.per_s),
            m(alone, |r| r.per_s),
            m(pgbench, |r| r.per_s),
        );
        let ratio = e / p;
        println!(
            "| {clients} | {e:.0} | {a:.0} | {p:.0} | {ratio:.2} | {} | {:.2} | {:.0} | {:.0} | {:.2} |",
            if ratio >= 3.0 { "met" } else { "not met" },
            e / a,
            m(engine, |r| r.client_cpu_us),
            m(pgbench, |r| r.client_cpu_us),
            m(engine, |r| r.notifies_per_transition),
        );
    }
    println!("(medians of {runs} runs each; engine / pgbench is the ratio of the medians)");
}
