//! Issue 16: adopting the legacy NestJS/Prisma database in place, the gradual rollout, the
//! engine and a legacy dispatcher on the same rows, and the rollback (docs/migration.md).
//! The legacy database is tests/fixtures/legacy_prisma_schema.sql + legacy_prisma_rows.sql.

use std::collections::BTreeMap;

use arreglame::{
    domain::{rollout, RolloutPercentage, Status},
    jobs::cron::worker_assignment_sweep,
    store::{DatabaseKind, Reverted, Settings, Store},
};
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

use crate::helpers::*;

const LEGACY_SCHEMA: &str = include_str!("../fixtures/legacy_prisma_schema.sql");
const LEGACY_ROWS: &str = include_str!("../fixtures/legacy_prisma_rows.sql");
const LEGACY_DISPATCHER: &str = include_str!("../fixtures/legacy_dispatcher.sql");

/// The fixture's rows by their legacy status.
const CREATED_1: Uuid = Uuid::from_u128(0x40000000_0000_4000_8000_000000000001);
const CREATED_2: Uuid = Uuid::from_u128(0x40000000_0000_4000_8000_000000000002);
const ACCEPTED: Uuid = Uuid::from_u128(0x40000000_0000_4000_8000_000000000003);
const ASSIGNED: Uuid = Uuid::from_u128(0x40000000_0000_4000_8000_000000000004);
const IN_PROGRESS: Uuid = Uuid::from_u128(0x40000000_0000_4000_8000_000000000005);
const ACCEPTED_WORKER_GONE: Uuid = Uuid::from_u128(0x40000000_0000_4000_8000_00000000000c);
/// The legacy worker with jobs in hand, and the one without.
const BUSY_WORKER: Uuid = Uuid::from_u128(0x30000000_0000_4000_8000_000000000001);
const FREE_WORKER: Uuid = Uuid::from_u128(0x30000000_0000_4000_8000_000000000002);
const LEGACY_CUSTOMER: Uuid = Uuid::from_u128(0x20000000_0000_4000_8000_000000000001);

/// The legacy tables and the migration's status mapping, as docs/migration.md states it.
const LEGACY_TABLES: [&str; 4] = ["users", "customers", "worker_profiles", "service_requests"];
const STATUS_MAPPING: [(&str, bool, &str); 12] = [
    ("CREATED", false, "PENDING"),
    ("ACCEPTED", true, "ASSIGNED"),
    ("ACCEPTED", false, "PENDING"),
    ("ASSIGNED", true, "ASSIGNED"),
    ("IN_PROGRESS", true, "IN_PROGRESS"),
    ("PENDING_CLIENT_APPROVAL", true, "IN_PROGRESS"),
    ("COMPLETED", true, "COMPLETED"),
    ("CANCELLED", false, "CANCELLED"),
    ("DISPUTED", true, "COMPLETED"),
    ("UNDER_REVIEW", true, "COMPLETED"),
    ("RESOLVED", true, "COMPLETED"),
    ("CANCELLED", true, "CANCELLED"),
];

/// A new database holding the legacy fixture; returns its URL.
pub async fn legacy_database() -> String {
    let url = empty_database().await;
    let mut conn = PgConnection::connect(&url).await.unwrap();
    sqlx::raw_sql(LEGACY_SCHEMA)
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::raw_sql(LEGACY_ROWS).execute(&mut conn).await.unwrap();
    url
}

async fn empty_database() -> String {
    let server = database_url();
    let name = format!("test_{}", Uuid::new_v4().simple());
    let (base, _) = server.rsplit_once('/').unwrap();
    let mut admin = PgConnection::connect(&format!("{base}/postgres"))
        .await
        .unwrap();
    sqlx::query(&format!(r#"create database "{name}""#))
        .execute(&mut admin)
        .await
        .unwrap();
    format!("{base}/{name}")
}

/// The legacy fixture adopted by `migrate`, the guide's backfill run and `seed` applied:
/// the operator's Phase 1.
async fn adopted_database() -> (String, Store) {
    let url = legacy_database().await;
    let store = Store::connect(&url, 4).await.unwrap();
    store.migrate().await.unwrap();
    for statement in crate::foundation::guide_statements() {
        sqlx::raw_sql(&statement)
            .execute(store.pool())
            .await
            .unwrap();
    }
    store.seed().await.unwrap();
    (url, store)
}

/// Every legacy table's columns with their types, nullability and defaults (the status
/// column by its legacy or adopted name), and a checksum of each table's rows over those
/// columns. Times are compared as instants (epoch seconds), so the adoption's timestamptz
/// view of Prisma's UTC timestamps counts as the same data.
async fn legacy_fingerprint(pool: &PgPool, columns: &BTreeMap<String, Vec<String>>) -> Vec<String> {
    let mut out = Vec::new();
    for table in LEGACY_TABLES {
        let mut exprs = Vec::new();
        for column in &columns[table] {
            let stored = if table == "service_requests" && column == "status" {
                legacy_status_column(pool).await
            } else {
                column.clone()
            };
            let kind: String = sqlx::query_scalar(
                "select data_type from information_schema.columns where table_name = $1 and column_name = $2",
            )
            .bind(table)
            .bind(&stored)
            .fetch_one(pool)
            .await
            .unwrap_or_else(|_| panic!("legacy column {table}.{column} is gone"));
            exprs.push(if kind.starts_with("timestamp") {
                format!(r#"extract(epoch from "{stored}")::text"#)
            } else {
                format!(r#""{stored}"::text"#)
            });
        }
        let checksum: Option<String> = sqlx::query_scalar(&format!(
            "select md5(string_agg(concat_ws('|', {}), E'\\n' order by id)) from {table}",
            exprs.join(", ")
        ))
        .fetch_one(pool)
        .await
        .unwrap();
        out.push(format!("{table}: {}", checksum.unwrap_or_default()));
    }
    out
}

/// `status` before the adoption, `"legacyStatus"` after its status swap.
async fn legacy_status_column(pool: &PgPool) -> String {
    let enum_column: String = sqlx::query_scalar(
        r#"select attname::text from pg_attribute
           where attrelid = 'service_requests'::regclass and atttypid = '"JobStatus"'::regtype
             and not attisdropped"#,
    )
    .fetch_one(pool)
    .await
    .unwrap();
    enum_column
}

/// The legacy tables' columns, by table.
async fn legacy_columns(pool: &PgPool) -> BTreeMap<String, Vec<String>> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "select table_name::text, column_name::text from information_schema.columns
         where table_schema = 'public' and table_name = any($1) order by table_name, ordinal_position",
    )
    .bind(LEGACY_TABLES.map(String::from).to_vec())
    .fetch_all(pool)
    .await
    .unwrap();
    let mut by_table: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (table, column) in rows {
        by_table.entry(table).or_default().push(column);
    }
    by_table
}

/// The whole schema of the public tables, one line per object: columns with type,
/// nullability and default, constraints and indexes with their definitions, triggers,
/// functions, enum types.
async fn schema_lines(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar(
        r#"select 'col ' || table_name || '.' || column_name || ' ' || data_type
                  || coalesce('(' || datetime_precision || ')', '') || ' ' || is_nullable
                  || ' ' || coalesce(column_default, '')
           from information_schema.columns where table_schema = 'public'
           union all
           select 'con ' || conrelid::regclass::text || '.' || conname || ' ' || pg_get_constraintdef(oid)
           from pg_constraint where connamespace = 'public'::regnamespace
           union all
           select 'idx ' || indexdef from pg_indexes where schemaname = 'public'
           union all
           select 'trg ' || tgrelid::regclass::text || '.' || tgname from pg_trigger where not tgisinternal
           union all
           select 'fn ' || proname from pg_proc where pronamespace = 'public'::regnamespace
           union all
           select 'type ' || typname from pg_type where typnamespace = 'public'::regnamespace and typtype = 'e'
           order by 1"#,
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

/// A worker as the legacy system registers one (a user, then its profile).
async fn legacy_worker(pool: &PgPool) -> Uuid {
    let user = Uuid::new_v4();
    sqlx::query(
        r#"insert into users (id, email, "passwordHash", role, "updatedAt")
           values ($1, $1::text || '@example.com', 'x', 'WORKER', now())"#,
    )
    .bind(user)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query_scalar(
        r#"insert into worker_profiles ("userId", name, "cityId", skills) values ($1, 'Legacy worker', 'buenos-aires', '{lawn_mowing}')
           returning id"#,
    )
    .bind(user)
    .fetch_one(pool)
    .await
    .unwrap()
}

fn at_percentage(percent: u8) -> Settings {
    Settings {
        dispatch_rollout: RolloutPercentage::new(percent).unwrap(),
        ..quick_settings()
    }
}

/// The cut-over docs/migration.md describes: the engine starts at 0 % (an engine that
/// dispatched at once, before any worker connected, would find nobody and give the legacy
/// requests up), its workers come online, then the percentage goes up and the next sweep
/// takes the open requests on.
async fn cut_over(url: String, workers: &[Uuid], percent: u8) -> DispatchHarness {
    let harness = DispatchHarness::start_on(url, at_percentage(0)).await;
    for worker in workers {
        harness
            .dispatcher
            .worker_online(
                "buenos-aires",
                *worker,
                LON,
                LAT,
                vec!["lawn_mowing".into()],
            )
            .await
            .unwrap();
    }
    set_rollout(&harness, percent).await;
    harness
}

/// A new `dispatch_rollout_percentage` (as its reload would publish it), then a sweep.
async fn set_rollout(harness: &DispatchHarness, percent: u8) {
    harness
        .settings
        .send(std::sync::Arc::new(at_percentage(percent)))
        .unwrap();
    worker_assignment_sweep(&harness.store, &harness.dispatcher)
        .await
        .unwrap();
}

/// Waits until every one of `ids` was written (its version moved past `start`'s).
async fn wait_all_written(store: &Store, ids: &[Uuid], start: &BTreeMap<Uuid, i32>) {
    wait_until(PATIENCE, || async {
        let now = request_versions(store).await;
        ids.iter().all(|id| now[id] > start[id])
    })
    .await;
}

async fn request_versions(store: &Store) -> BTreeMap<Uuid, i32> {
    sqlx::query_as::<_, (Uuid, i32)>("select id, version from service_requests")
        .fetch_all(store.pool())
        .await
        .unwrap()
        .into_iter()
        .collect()
}

async fn next_offer(harness: &mut DispatchHarness) -> arreglame::dispatch::gateway::OfferNotice {
    loop {
        match tokio::time::timeout(PATIENCE, harness.next_notice())
            .await
            .unwrap()
        {
            arreglame::dispatch::gateway::WorkerNotice::Offer(o) => return o,
            _ => continue,
        }
    }
}

/// The adopted fixture cut over at 100 %, with the free legacy worker assigned by the
/// engine to one of the waiting legacy requests (returned).
async fn one_legacy_request_assigned_by_the_engine() -> (Store, DispatchHarness, Uuid) {
    let (url, store) = adopted_database().await;
    let mut harness = cut_over(url, &[FREE_WORKER], 100).await;
    let offer = next_offer(&mut harness).await;
    harness
        .dispatcher
        .accept_offer(FREE_WORKER, offer.request_id, offer.offer_id)
        .await
        .unwrap();
    (store, harness, offer.request_id)
}

async fn status_of(pool: &PgPool, id: Uuid) -> (String, String, Option<Uuid>, Option<Uuid>, i32) {
    sqlx::query_as(
        r#"select status, "legacyStatus"::text, "assignedWorkerId", "workerId", version
           from service_requests where id = $1"#,
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_legacy_database_is_adopted_in_place_and_keeps_every_row_and_column() {
    let url = legacy_database().await;
    let store = Store::connect(&url, 2).await.unwrap();
    assert_eq!(
        store.database_kind().await.unwrap(),
        DatabaseKind::Legacy { steps_done: 0 }
    );
    let columns = legacy_columns(store.pool()).await;
    let before = legacy_fingerprint(store.pool(), &columns).await;
    let index_names = |pool: PgPool| async move {
        sqlx::query_scalar::<_, String>(
            "select indexname::text from pg_indexes where tablename = any($1) order by 1",
        )
        .bind(LEGACY_TABLES.map(String::from).to_vec())
        .fetch_all(&pool)
        .await
        .unwrap()
    };
    let indexes_before = index_names(store.pool().clone()).await;
    let statuses_before: Vec<(Uuid, String)> =
        sqlx::query_as("select id, status::text from service_requests order by id")
            .fetch_all(store.pool())
            .await
            .unwrap();

    store.migrate().await.unwrap();

    assert_eq!(store.database_kind().await.unwrap(), DatabaseKind::Engine);
    assert_eq!(legacy_fingerprint(store.pool(), &columns).await, before);
    // Every legacy index is still there (the retyped columns' ones rebuilt concurrently;
    // the enum's status index under its new name).
    let indexes_after = index_names(store.pool().clone()).await;
    for index in &indexes_before {
        let now = if index == "service_requests_status_idx" {
            "service_requests_legacyStatus_idx"
        } else {
            index
        };
        assert!(
            indexes_after.iter().any(|i| i == now),
            "legacy index {index} is gone"
        );
    }
    // The legacy labels are all still there, beside the engine's status.
    let after: Vec<(Uuid, String, String, Option<Uuid>)> = sqlx::query_as(
        r#"select id, "legacyStatus"::text, status, "workerId" from service_requests order by id"#,
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(
        after
            .iter()
            .map(|(id, l, _, _)| (*id, l.clone()))
            .collect::<Vec<_>>(),
        statuses_before
    );
    // Every legacy label occurs, and each maps as the documented table says.
    let mut seen = std::collections::BTreeSet::new();
    for (id, legacy, engine, worker) in &after {
        let expected = STATUS_MAPPING
            .iter()
            .find(|(l, w, _)| l == legacy && *w == worker.is_some())
            .unwrap_or_else(|| panic!("no documented mapping for {legacy} (worker: {worker:?})"));
        assert_eq!(engine, expected.2, "request {id} ({legacy})");
        assert!(Status::parse(engine).is_some());
        seen.insert(legacy.clone());
    }
    assert_eq!(
        seen.len(),
        arreglame::store::legacy::LEGACY_JOB_STATUSES.len()
    );
    // The guide's promise for existing rows.
    let odd: i64 = sqlx::query_scalar(
        r#"select count(*) from service_requests where version <> 1 or "assignmentAttempts" <> 0"#,
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(odd, 0);
    // Each column the adoption added is nullable or defaulted.
    let added_not_null_without_default: Vec<String> = sqlx::query_scalar(
        r#"select table_name || '.' || column_name from information_schema.columns
           where table_name in ('service_requests', 'worker_profiles', 'customers')
             and not (table_name || '.' || column_name = any($1))
             and is_nullable = 'NO' and column_default is null
             and column_name not in ('status', 'legacyStatus')"#,
    )
    .bind(
        columns
            .iter()
            .flat_map(|(t, cs)| cs.iter().map(move |c| format!("{t}.{c}")))
            .collect::<Vec<_>>(),
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert!(
        added_not_null_without_default.is_empty(),
        "{added_not_null_without_default:?}"
    );
    // Legacy money became centavos that split exactly.
    let (total, net, fee): (i64, i64, i64) = sqlx::query_as(
        r#"select "priceTotalCents", "workerNetCents", "platformFeeCents" from service_requests where id = $1"#,
    )
    .bind(CREATED_2)
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!((total, fee, net), (1_250_050, 187_508, 1_062_542));
    // Migrating again is a no-op.
    store.migrate().await.unwrap();
    assert_eq!(legacy_fingerprint(store.pool(), &columns).await, before);
}

#[tokio::test]
async fn a_legacy_enum_with_an_unknown_label_is_refused_before_anything_changes() {
    let url = legacy_database().await;
    let store = Store::connect(&url, 2).await.unwrap();
    sqlx::query(r#"alter type "JobStatus" add value 'ON_HOLD'"#)
        .execute(store.pool())
        .await
        .unwrap();
    let schema = schema_lines(store.pool()).await;
    let error = store.migrate().await.unwrap_err().to_string();
    assert!(error.contains("ON_HOLD"), "{error}");
    assert_eq!(schema_lines(store.pool()).await, schema);
}

#[tokio::test]
async fn the_adopted_schema_has_every_object_of_a_fresh_engine_schema() {
    let fresh = Store::connect(&fresh_database().await, 2).await.unwrap();
    let (_, adopted) = adopted_database().await;
    let adopted_lines: std::collections::BTreeSet<String> =
        schema_lines(adopted.pool()).await.into_iter().collect();
    let missing: Vec<String> = schema_lines(fresh.pool())
        .await
        .into_iter()
        .filter(|l| !adopted_lines.contains(l))
        .collect();
    // What the legacy tables keep of their own: Prisma's types, NOT NULLs and foreign key
    // actions. Nothing else may differ (docs/migration.md lists these too).
    let kept_from_legacy = [
        "col customers.createdAt timestamp with time zone(6) NO now()",
        "col service_requests.createdAt timestamp with time zone(6) NO now()",
        "col service_requests.customerId uuid YES ",
        "col service_requests.latitude double precision YES ",
        "col service_requests.longitude double precision YES ",
        "col service_requests.squareMeters double precision YES ",
        "col worker_profiles.createdAt timestamp with time zone(6) NO now()",
        "col worker_profiles.rating numeric NO 5.00",
        "col worker_profiles.updatedAt timestamp with time zone(6) NO now()",
        "con service_requests.service_requests_customerId_fkey FOREIGN KEY (\"customerId\") REFERENCES customers(id)",
        "con worker_profiles.worker_profiles_rating_check CHECK (((rating >= (0)::numeric) AND (rating <= (5)::numeric)))",
    ];
    assert_eq!(missing, kept_from_legacy.map(String::from).to_vec());
}

#[tokio::test]
async fn the_guides_backfill_works_as_written_and_seed_adds_only_configuration() {
    let (_, store) = adopted_database().await; // migrate, the guide's SQL, seed
    let (default_city, legacy_workers_placed): (i64, i64) = sqlx::query_as(
        r#"select (select count(*) from service_requests where "cityId" = 'default'),
                  (select count(*) from worker_profiles where "cityId" = 'buenos-aires' and "lastActiveAt" is not null)"#,
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!((default_city, legacy_workers_placed), (12, 2));
    let rows = store.system_config_rows().await.unwrap();
    // The guide's tuning statements ran before the seed, on an empty table: they updated
    // nothing, and the seed then wrote the defaults.
    assert_eq!(rows["worker_timeout_minutes"], "5");
    assert_eq!(rows["dispatch_rollout_percentage"], "100");
    let (customers, multipliers, cities): (i64, i64, i64) = sqlx::query_as(
        "select (select count(*) from customers), (select count(*) from difficulty_multipliers),
                (select count(*) from cities)",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(customers, 1, "no demo people in a production database");
    assert!(multipliers >= 4 && cities >= 2);
    // The guide's tuning works once the rows exist.
    for statement in crate::foundation::guide_statements() {
        sqlx::raw_sql(&statement)
            .execute(store.pool())
            .await
            .unwrap();
    }
    assert_eq!(
        store.system_config_rows().await.unwrap()["worker_timeout_minutes"],
        "20"
    );
}

#[tokio::test]
async fn serve_dispatches_the_open_legacy_requests() {
    let (url, store) = adopted_database().await;
    let mut harness = cut_over(url, &[FREE_WORKER], 100).await;
    // Recovery placed the guide's 'default' city by location and gave every open legacy
    // request an actor; the free legacy worker is offered one of the waiting ones.
    for id in [ACCEPTED, ASSIGNED, IN_PROGRESS] {
        assert!(harness.dispatcher.has_actor(id), "{id} has no actor");
    }
    let city: String = sqlx::query_scalar(r#"select "cityId" from service_requests where id = $1"#)
        .bind(ASSIGNED)
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(city, "buenos-aires");
    let offer = next_offer(&mut harness).await;
    assert_eq!(offer.worker_id, FREE_WORKER);
    assert!([CREATED_1, CREATED_2, ACCEPTED_WORKER_GONE].contains(&offer.request_id));
    harness
        .dispatcher
        .accept_offer(FREE_WORKER, offer.request_id, offer.offer_id)
        .await
        .unwrap();
    let (status, legacy, assignee, legacy_worker, version) =
        status_of(store.pool(), offer.request_id).await;
    assert_eq!((status.as_str(), legacy.as_str()), ("ASSIGNED", "ASSIGNED"));
    assert_eq!(
        (assignee, legacy_worker),
        (Some(FREE_WORKER), Some(FREE_WORKER))
    );
    assert_eq!(version, 3);
    assert_eq!(outbox_of(&store, offer.request_id).await.len(), 2);
    // The legacy worker with jobs in hand is busy with them: started, a job completes.
    harness
        .dispatcher
        .start_job(BUSY_WORKER, ASSIGNED)
        .await
        .unwrap();
    let done = harness
        .dispatcher
        .complete_job(BUSY_WORKER, IN_PROGRESS)
        .await
        .unwrap();
    assert_eq!(done.status, Status::Completed);
}
#[tokio::test]
async fn sql_and_rust_compute_the_same_rollout_bucket() {
    let store = Store::connect(&fresh_database().await, 2).await.unwrap();
    let ids: Vec<Uuid> = (0..2000).map(|_| Uuid::new_v4()).collect();
    let buckets: Vec<i32> = sqlx::query_scalar(
        "select arreglame_rollout_bucket(id) from unnest($1::uuid[]) with ordinality as t (id, n) order by n",
    )
    .bind(&ids)
    .fetch_all(store.pool())
    .await
    .unwrap();
    for (id, sql) in ids.iter().zip(buckets) {
        assert_eq!(i32::from(rollout::bucket(*id)), sql, "{id}");
    }
}

#[tokio::test]
async fn the_rollout_percentage_reloads_without_a_restart() {
    let url = fresh_database().await;
    let store = Store::connect(&url, 2).await.unwrap();
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    let (mut settings, _task) = store.watch_settings(shutdown).await.unwrap();
    assert_eq!(settings.borrow().dispatch_rollout, RolloutPercentage::ALL);
    sqlx::query("update system_config set value = '10' where key = 'dispatch_rollout_percentage'")
        .execute(store.pool())
        .await
        .unwrap();
    tokio::time::timeout(PATIENCE, settings.changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(settings.borrow().dispatch_rollout.percent(), 10);
}

/// Legacy requests split by the rollout: the engine's share is dispatched; the rest is never
/// touched by recovery nor by the sweep, until the percentage covers them.
#[tokio::test]
async fn the_engine_dispatches_only_requests_under_the_rollout_percentage() {
    let (url, store) = adopted_database().await;
    // More waiting legacy requests (stale for an hour: the backstop would pick them up).
    let extra: Vec<Uuid> = (0..60).map(|_| Uuid::new_v4()).collect();
    sqlx::query(
        r#"insert into service_requests (id, "legacyStatus", status, "customerId", latitude, longitude,
                                         "squareMeters", "cityId", "updatedAt")
           select id, 'CREATED', 'PENDING', $2, $3, $4, 50, 'buenos-aires', now() - interval '1 hour'
           from unnest($1::uuid[]) id"#,
    )
    .bind(&extra)
    .bind(LEGACY_CUSTOMER)
    .bind(LAT)
    .bind(LON)
    .execute(store.pool())
    .await
    .unwrap();
    let start = request_versions(&store).await;
    // At 0 % neither the start-up recovery nor a sweep touches anything.
    let harness = DispatchHarness::start_on(url, at_percentage(0)).await;
    let report = worker_assignment_sweep(&store, &harness.dispatcher)
        .await
        .unwrap();
    assert_eq!(report, Default::default());
    assert_eq!(request_versions(&store).await, start);
    assert!(start.keys().all(|id| !harness.dispatcher.has_actor(*id)));
    assert!(matches!(
        harness.dispatcher.ensure_actor(CREATED_1).await,
        Err(arreglame::dispatch::CommandError::NotInRollout)
    ));
    // At 50 % the sweep takes exactly the requests whose bucket is under 50.
    let half = RolloutPercentage::new(50).unwrap();
    set_rollout(&harness, 50).await;
    let (ours, theirs): (Vec<Uuid>, Vec<Uuid>) = extra.iter().partition(|id| half.includes(**id));
    assert!(
        ours.len() >= 10 && theirs.len() >= 10,
        "{} / {}",
        ours.len(),
        theirs.len()
    );
    wait_all_written(&store, &ours, &start).await;
    let now = request_versions(&store).await;
    for id in &theirs {
        assert_eq!(
            now[id], start[id],
            "{id} is outside the rollout and was written"
        );
        assert!(!harness.dispatcher.has_actor(*id));
    }
    // At 100 % the rest follows.
    set_rollout(&harness, 100).await;
    wait_all_written(&store, &theirs, &start).await;
}

/// Runs step `n` of the legacy dispatcher (tests/fixtures/legacy_dispatcher.sql) with
/// the version it read; the new version, or `None` when someone else wrote first.
async fn legacy_step(pool: &PgPool, n: usize, id: Uuid, version: i32, worker: Uuid) -> Option<i32> {
    let step = LEGACY_DISPATCHER.split("\n-- step\n").nth(n).unwrap();
    sqlx::query_scalar(step)
        .bind(id)
        .bind(version)
        .bind(worker)
        .fetch_optional(pool)
        .await
        .unwrap()
}

/// Offers the job to the legacy dispatcher's worker: PENDING -> OFFERING.
async fn legacy_offer(pool: &PgPool, id: Uuid, version: i32) -> Option<i32> {
    legacy_step(pool, 0, id, version, FREE_WORKER).await
}

/// The worker accepts: OFFERING -> ASSIGNED.
async fn legacy_assign(pool: &PgPool, id: Uuid, version: i32, worker: Uuid) -> Option<i32> {
    legacy_step(pool, 1, id, version, worker).await
}

async fn version_of(pool: &PgPool, id: Uuid) -> i32 {
    sqlx::query_scalar("select version from service_requests where id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// No request with two assignees: the row's assignee is the worker of its one ACCEPTED
/// offer, if it has one, and no offer stays pending on a row that is not OFFERING (the
/// engine withdraws those once it notices; this waits for that).
async fn assert_one_assignee_each(pool: &PgPool) {
    let mismatched = || async {
        sqlx::query_scalar::<_, Uuid>(
            r#"select r.id from service_requests r
               where exists (select 1 from offers o where o."requestId" = r.id and o.outcome = 'ACCEPTED'
                               and o."workerId" is distinct from r."assignedWorkerId")
                  or (r.status <> 'OFFERING' and exists (select 1 from offers o
                               where o."requestId" = r.id and o.outcome is null))
                  or r."workerId" is distinct from r."assignedWorkerId""#,
        )
        .fetch_all(pool)
        .await
        .unwrap()
    };
    let settled = tokio::time::timeout(PATIENCE, async {
        while !mismatched().await.is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        settled.is_ok(),
        "requests with two assignees or a stale offer: {:?}",
        mismatched().await
    );
}

#[tokio::test]
async fn side_by_side_whoever_writes_late_loses_on_the_version() {
    let (url, store) = adopted_database().await;
    let pool = store.pool().clone();
    // The legacy dispatcher reads every waiting row now; the engine then starts.
    let stale: BTreeMap<Uuid, i32> = sqlx::query_as::<_, (Uuid, i32)>(
        "select id, version from service_requests where status = 'PENDING'",
    )
    .fetch_all(&pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    let engine_worker = legacy_worker(&pool).await;
    let second_worker = legacy_worker(&pool).await;
    let mut harness = cut_over(url, &[engine_worker, second_worker], 100).await;
    let first = next_offer(&mut harness).await;
    let second = next_offer(&mut harness).await;
    let (offer, other) = if first.worker_id == engine_worker {
        (first, second)
    } else {
        (second, first)
    };

    // 1. The engine offered and its worker accepted; the legacy writes, from its earlier
    //    read, come late and change nothing.
    let late_request = offer.request_id;
    harness
        .dispatcher
        .accept_offer(engine_worker, late_request, offer.offer_id)
        .await
        .unwrap();
    assert_eq!(
        legacy_offer(&pool, late_request, stale[&late_request]).await,
        None
    );
    assert_eq!(
        legacy_assign(&pool, late_request, stale[&late_request], FREE_WORKER).await,
        None
    );
    let (status, legacy, assignee, ..) = status_of(&pool, late_request).await;
    assert_eq!(
        (status.as_str(), legacy.as_str(), assignee),
        ("ASSIGNED", "ASSIGNED", Some(engine_worker))
    );

    // 2. The engine's other offer is out to the second worker; the legacy dispatcher
    //    assigns that request first, with the version it just read: the engine's accept
    //    comes late.
    let offer = other;
    assert_eq!(offer.worker_id, second_worker);
    let contested = offer.request_id;
    let read = version_of(&pool, contested).await;
    let won = legacy_assign(&pool, contested, read, FREE_WORKER).await;
    assert_eq!(won, Some(read + 1));
    let late = harness
        .dispatcher
        .accept_offer(second_worker, contested, offer.offer_id)
        .await;
    assert!(
        late.is_err(),
        "the engine's late accept must lose: {late:?}"
    );
    let (status, legacy, assignee, legacy_worker_id, _) = status_of(&pool, contested).await;
    assert_eq!((status.as_str(), legacy.as_str()), ("ASSIGNED", "ASSIGNED"));
    assert_eq!(
        (assignee, legacy_worker_id),
        (Some(FREE_WORKER), Some(FREE_WORKER))
    );
    // The engine let go of its offer: the second worker is free for the next request.
    assert_one_assignee_each(&pool).await;

    // 3. A writer that does not know the version column (the old code) still moves it on,
    //    so the engine's next write on that row loses instead of overwriting it.
    let before = version_of(&pool, ASSIGNED).await;
    sqlx::query(r#"update service_requests set status = 'CANCELLED' where id = $1"#)
        .bind(ASSIGNED)
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(version_of(&pool, ASSIGNED).await, before + 1);
    let start = harness.dispatcher.start_job(BUSY_WORKER, ASSIGNED).await;
    assert!(
        start.is_err(),
        "a stale start must not overwrite the cancel: {start:?}"
    );
    let (status, legacy, ..) = status_of(&pool, ASSIGNED).await;
    assert_eq!(
        (status.as_str(), legacy.as_str()),
        ("CANCELLED", "CANCELLED")
    );
}

/// Both dispatchers race for the same requests: every write either side was told succeeded
/// is in the final row, and no request ends with two assignees.
#[tokio::test]
async fn side_by_side_racing_the_same_requests_loses_no_update_and_assigns_once() {
    let (url, store) = adopted_database().await;
    let pool = store.pool().clone();
    let mut workers = Vec::new();
    for _ in 0..3 {
        workers.push(legacy_worker(&pool).await);
    }
    let mut harness = cut_over(url, &workers, 100).await;
    let mut won = BTreeMap::new();
    let (mut engine_wins, mut legacy_wins) = (0, 0);
    // Each offer the engine makes (one per worker, three legacy requests waiting) is raced
    // by the legacy dispatcher assigning the same row to its own worker.
    for round in 0..3 {
        let offer = next_offer(&mut harness).await;
        let read = version_of(&pool, offer.request_id).await;
        let dispatcher = harness.dispatcher.clone();
        let engine = tokio::spawn(async move {
            dispatcher
                .accept_offer(offer.worker_id, offer.request_id, offer.offer_id)
                .await
        });
        let legacy = legacy_assign(&pool, offer.request_id, read, FREE_WORKER);
        let (engine, legacy) = tokio::join!(engine, legacy);
        let engine = engine.unwrap();
        assert!(
            engine.is_ok() != legacy.is_some(),
            "round {round}: exactly one of the two writes commits ({engine:?}, {legacy:?})"
        );
        if engine.is_ok() {
            engine_wins += 1;
            won.insert(offer.request_id, offer.worker_id);
        } else {
            legacy_wins += 1;
            won.insert(offer.request_id, FREE_WORKER);
        }
    }
    assert_eq!(engine_wins + legacy_wins, 3);
    for (id, worker) in &won {
        let (status, _, assignee, ..) = status_of(&pool, *id).await;
        assert_eq!(
            (status.as_str(), assignee),
            ("ASSIGNED", Some(*worker)),
            "{id}: a lost update"
        );
    }
    assert_one_assignee_each(&pool).await;
}

#[tokio::test]
async fn revert_walks_back_to_the_legacy_schema_with_every_row_and_column_intact() {
    let url = legacy_database().await;
    let store = Store::connect(&url, 2).await.unwrap();
    let columns = legacy_columns(store.pool()).await;
    let data_before = legacy_fingerprint(store.pool(), &columns).await;
    let schema_before = schema_lines(store.pool()).await;
    let tables_before: Vec<String> = sqlx::query_scalar(
        "select tablename::text from pg_tables where schemaname = 'public' order by 1",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();

    store.migrate().await.unwrap();
    let mut reverted = Vec::new();
    while let Some(step) = store.revert_latest_migration().await.unwrap() {
        reverted.push(step);
    }
    // Migrations after the baseline first, then every adoption step, newest first.
    let steps = arreglame::store::legacy::STEPS;
    let newest_first: Vec<Reverted> = arreglame::store::MIGRATOR
        .iter()
        .rev()
        .filter(|m| {
            m.version > arreglame::store::legacy::ADOPTION_BASELINE
                && m.migration_type.is_up_migration()
        })
        .map(|m| Reverted::Migration(m.version))
        .collect();
    assert!(newest_first.len() >= 9, "{newest_first:?}");
    assert_eq!(
        reverted.len(),
        newest_first.len() + steps.len(),
        "{reverted:?}"
    );
    assert_eq!(reverted[..newest_first.len()], newest_first[..]);
    assert_eq!(
        reverted.last(),
        Some(&Reverted::AdoptionStep {
            step: 1,
            name: "engine_tables"
        })
    );
    assert_eq!(
        store.database_kind().await.unwrap(),
        DatabaseKind::Legacy { steps_done: 0 }
    );
    assert_eq!(
        legacy_fingerprint(store.pool(), &columns).await,
        data_before
    );
    // The schema is the legacy one again, but for the precision of the retyped times:
    // restoring timestamp(3) would rewrite the table (docs/migration.md, rollback).
    let schema_after = schema_lines(store.pool()).await;
    assert_eq!(schema_after.len(), schema_before.len());
    let changed: Vec<(&String, &String)> = schema_before
        .iter()
        .zip(&schema_after)
        .filter(|(b, a)| b != a)
        .collect();
    for (before, after) in &changed {
        assert!(
            before.starts_with("col service_requests.")
                && after.replace("time zone(6)", "time zone(3)") == **before,
            "{before} became {after}"
        );
    }
    assert_eq!(changed.len(), 6, "{changed:#?}");
    let tables_after: Vec<String> = sqlx::query_scalar(
        "select tablename::text from pg_tables where schemaname = 'public' order by 1",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(tables_after, tables_before);
    // And forward again.
    store.migrate().await.unwrap();
    assert_eq!(store.database_kind().await.unwrap(), DatabaseKind::Engine);
}

#[tokio::test]
async fn what_the_engine_did_while_adopted_is_in_the_legacy_columns_after_the_rollback() {
    let (store, harness, request) = one_legacy_request_assigned_by_the_engine().await;
    harness
        .dispatcher
        .start_job(FREE_WORKER, request)
        .await
        .unwrap();
    drop(harness);
    while store.revert_latest_migration().await.unwrap().is_some() {}
    let (status, worker): (String, Option<Uuid>) =
        sqlx::query_as(r#"select status::text, "workerId" from service_requests where id = $1"#)
            .bind(request)
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!(
        (status.as_str(), worker),
        ("IN_PROGRESS", Some(FREE_WORKER))
    );
    // Untouched rows keep their legacy label, even those the engine saw as COMPLETED.
    let disputed: String =
        sqlx::query_scalar("select status::text from service_requests where id = $1")
            .bind(Uuid::from_u128(0x40000000_0000_4000_8000_000000000009))
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!(disputed, "DISPUTED");
}

/// The guide's rollback statements, verbatim.
const GUIDE_DROPS: [&str; 2] = [
    "DROP TABLE IF EXISTS outbox_events;",
    "DROP TABLE IF EXISTS system_config;",
];

#[tokio::test]
async fn the_guides_drop_statements_work_as_written_on_an_adopted_database() {
    let guide_path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/seed/ENTERPRISE_MIGRATION_GUIDE.md"
    );
    if let Ok(guide) = std::fs::read_to_string(guide_path) {
        for statement in GUIDE_DROPS {
            assert!(guide.contains(statement), "not in the guide: {statement}");
        }
    }
    let (_, store) = adopted_database().await;
    let columns = legacy_columns(store.pool()).await;
    for statement in GUIDE_DROPS {
        sqlx::raw_sql(statement)
            .execute(store.pool())
            .await
            .unwrap();
    }
    let left: i64 = sqlx::query_scalar(
        "select count(*) from pg_tables where tablename in ('outbox_events', 'system_config')",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(left, 0);
    // The rest of the rollback still walks back to the legacy schema.
    while store.revert_latest_migration().await.unwrap().is_some() {}
    assert_eq!(
        store.database_kind().await.unwrap(),
        DatabaseKind::Legacy { steps_done: 0 }
    );
    assert_eq!(legacy_columns(store.pool()).await.len(), columns.len());
}

#[tokio::test]
async fn a_pg_dump_restored_with_psql_is_a_working_engine_database() {
    let (url, store) = adopted_database().await;
    let dump = tokio::process::Command::new("pg_dump")
        .arg("--no-owner")
        .arg(&url)
        .output()
        .await
        .expect("pg_dump on PATH");
    assert!(
        dump.status.success(),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    let restored = empty_database().await;
    let mut psql = tokio::process::Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", &restored])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("psql on PATH");
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = psql.stdin.take().unwrap();
        stdin.write_all(&dump.stdout).await.unwrap();
    }
    assert!(psql.wait().await.unwrap().success());

    let copy = Store::connect(&restored, 2).await.unwrap();
    assert_eq!(
        schema_lines(copy.pool()).await,
        schema_lines(store.pool()).await
    );
    assert_eq!(copy.database_kind().await.unwrap(), DatabaseKind::Engine);
    copy.migrate().await.unwrap(); // nothing left to apply
    let columns = legacy_columns(store.pool()).await;
    assert_eq!(
        legacy_fingerprint(copy.pool(), &columns).await,
        legacy_fingerprint(store.pool(), &columns).await
    );
    // It dispatches: a legacy request is offered and assigned on the restored copy.
    let mut harness = cut_over(restored, &[FREE_WORKER], 100).await;
    let offer = next_offer(&mut harness).await;
    let assigned = harness
        .dispatcher
        .accept_offer(FREE_WORKER, offer.request_id, offer.offer_id)
        .await
        .unwrap();
    assert_eq!(assigned.status, Status::Assigned);
}

#[tokio::test]
async fn the_rollout_arms_are_measured_from_each_arms_rows() {
    let (store, _harness, _) = one_legacy_request_assigned_by_the_engine().await;
    // The legacy dispatcher assigns a request of its own arm (at 0 % every request is).
    let legacy_request = Uuid::new_v4();
    sqlx::query(
        r#"insert into service_requests (id, "customerId", latitude, longitude, "squareMeters", "cityId",
                                         status, "assignedWorkerId", "assignedAt", "createdAt")
           values ($1, $2, $3, $4, 50, 'buenos-aires', 'PENDING', null, null, now() - interval '90 seconds')"#,
    )
    .bind(legacy_request)
    .bind(LEGACY_CUSTOMER)
    .bind(LAT)
    .bind(LON)
    .execute(store.pool())
    .await
    .unwrap();
    let v = version_of(store.pool(), legacy_request).await;
    let v = legacy_offer(store.pool(), legacy_request, v).await.unwrap();
    legacy_assign(store.pool(), legacy_request, v, BUSY_WORKER)
        .await
        .unwrap();

    let at = |percent| {
        let store = store.clone();
        async move {
            let rows = store.rollout_arms(15, percent).await.unwrap();
            assert_eq!(
                rows.iter().map(|r| r.arm.as_str()).collect::<Vec<_>>(),
                ["engine", "legacy"]
            );
            rows
        }
    };
    // At 100 % both assignments are the engine arm's; at 0 % both the legacy arm's, and the
    // engine's offers go with their request.
    let all = at(100).await;
    assert_eq!((all[0].assigned, all[1].assigned), (2, 0));
    assert_eq!((all[0].offers_decided, all[0].offers_accepted), (1, 1));
    let none = at(0).await;
    assert_eq!((none[0].assigned, none[1].assigned), (0, 2));
    assert_eq!(none[1].offers_accepted, 1);
    // The legacy dispatcher's time to assignment is its own row's: 90 s and more.
    let p99 = none[1].time_to_assignment_p99.unwrap();
    assert!(p99 >= 90.0, "{p99}");
}
