//! Issue 2: schema and seeds keep the guide's contract; transitions are version-guarded
//! with one outbox row; migrations revert; health and readiness over real HTTP.

use arreglame::{
    domain::Status,
    store::{Change, Store, StoreError},
};
use chrono::Utc;
use uuid::Uuid;

use crate::helpers::*;

/// The guide's SQL, copied verbatim into tests/fixtures (checked against the guide itself
/// when `../shared` is beside the checkout).
const GUIDE_SQL: &str = include_str!("../fixtures/guide_queries.sql");

pub(crate) fn guide_statements() -> Vec<String> {
    GUIDE_SQL
        .split(';')
        .map(|s| {
            s.lines()
                .filter(|l| !l.trim_start().starts_with("--"))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

#[test]
fn the_fixture_is_the_guides_sql_verbatim() {
    let guide_path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/seed/ENTERPRISE_MIGRATION_GUIDE.md"
    );
    let Ok(guide) = std::fs::read_to_string(guide_path) else {
        eprintln!("guide not found beside the checkout; fixture check skipped");
        return;
    };
    let statements = guide_statements();
    assert_eq!(statements.len(), 11);
    for statement in statements {
        assert!(
            guide.contains(&statement),
            "not verbatim in the guide:\n{statement}"
        );
    }
}

#[tokio::test]
async fn the_guides_sql_runs_unchanged_and_does_what_it_says() {
    let url = fresh_database().await;
    let store = Store::connect(&url, 2).await.unwrap();
    // A legacy request and a legacy worker, as the old system left them: no city.
    let legacy_request: Uuid = sqlx::query_scalar(
        "insert into service_requests (description) values ('legacy') returning id",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    let legacy_worker = insert_worker(&store, "x").await;
    sqlx::query(r#"update worker_profiles set "cityId" = null where id = $1"#)
        .bind(legacy_worker)
        .execute(store.pool())
        .await
        .unwrap();

    for statement in guide_statements() {
        sqlx::raw_sql(&statement)
            .execute(store.pool())
            .await
            .unwrap_or_else(|e| panic!("guide statement failed: {e}\n{statement}"));
    }

    let (version, city): (i32, Option<String>) =
        sqlx::query_as(r#"select version, "cityId" from service_requests where id = $1"#)
            .bind(legacy_request)
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!((version, city.as_deref()), (1, Some("default")));
    let (worker_city, active): (Option<String>, Option<chrono::DateTime<Utc>>) =
        sqlx::query_as(r#"select "cityId", "lastActiveAt" from worker_profiles where id = $1"#)
            .bind(legacy_worker)
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!(worker_city.as_deref(), Some("buenos-aires"));
    assert!(active.is_some());

    let rows = store.system_config_rows().await.unwrap();
    assert_eq!(rows["worker_timeout_minutes"], "20");
    assert_eq!(rows["cancellation_window_hours"], "48");
    assert_eq!(rows["commission_percentage"], "0.20");

    let indexes: Vec<(String, String)> = sqlx::query_as(
        "select tablename::text, indexname::text from pg_indexes
         where tablename in ('service_requests', 'worker_profiles', 'outbox_events')",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    for expected in [
        "service_requests_open_city_id_idx",
        "service_requests_unassigned_closed_at_idx",
        "service_requests_customer_id_created_at_idx",
        "service_requests_assigned_worker_id_idx",
        "worker_profiles_city_id_idx",
        "worker_profiles_last_active_at_idx",
        "outbox_events_unprocessed_id_idx",
    ] {
        assert!(
            indexes.iter().any(|(_, i)| i == expected),
            "missing index {expected}"
        );
    }
}

#[tokio::test]
async fn seeding_twice_leaves_the_same_data_and_keeps_tuned_values() {
    let url = fresh_database().await; // already seeded once
    let store = Store::connect(&url, 2).await.unwrap();
    sqlx::query("update system_config set value = '7' where key = 'worker_timeout_minutes'")
        .execute(store.pool())
        .await
        .unwrap();
    let count = |store: Store| async move {
        let q = "select (select count(*) from system_config) + (select count(*) from cities)
                 + (select count(*) from difficulty_multipliers) + (select count(*) from extra_multipliers)
                 + (select count(*) from customers) + (select count(*) from worker_profiles)";
        sqlx::query_scalar::<_, i64>(q)
            .fetch_one(store.pool())
            .await
            .unwrap()
    };
    let before = count(store.clone()).await;
    store.seed().await.unwrap();
    store.seed().await.unwrap();
    assert_eq!(count(store.clone()).await, before);
    assert!(before > 20);
    assert_eq!(
        store.system_config_rows().await.unwrap()["worker_timeout_minutes"],
        "7"
    );
}

#[tokio::test]
async fn migrations_revert_and_apply_again() {
    let url = fresh_database().await;
    let store = Store::connect(&url, 2).await.unwrap();
    // What each migration adds, counted (1 while it is applied, 0 once reverted).
    let edges =
        "select count(*) from service_request_transitions where \"fromStatus\" = 'COMPLETED'";
    let skips_table = "select count(*) from pg_tables where tablename = 'dispatch_skips'";
    let strikes_table = "select count(*) from pg_tables where tablename = 'worker_strikes'";
    let rollout_function =
        "select count(*) from pg_proc where proname = 'arreglame_rollout_bucket'";
    let leases_table = "select count(*) from pg_tables where tablename = 'city_leases'";
    let closed_at_column = "select count(*) from information_schema.columns
             where table_name = 'service_requests' and column_name = 'closedAt'";
    let status_index =
        "select count(*) from pg_indexes where indexname = 'service_requests_status_idx'";
    let guard_rebuild = "select count(*) from pg_trigger
             where tgname = 'service_request_transitions_rebuild_guard'";
    let guard_when = "select count(*) from pg_trigger
             where tgname = 'service_requests_status_transition' and tgqual is not null";
    let guard =
        "select count(*) from pg_trigger where tgname = 'service_requests_status_transition'";
    let compact_status_check = "select count(*) from pg_constraint
             where conname = 'service_requests_status_check' and pg_get_constraintdef(oid) like '%::text[]%'";
    // One migration at a time, newest first: the compact CHECK constraints (the former
    // forms come back), the status guard in the trigger's WHEN clause (the plain trigger
    // comes back), the five of the HOT-friendly schema (the dropped
    // indexes come back, then the new ones go, then "closedAt"), the city leases, the
    // rollout bucket, booked slots, the identity migration, then the dispute edge.
    assert_eq!(count(&store, compact_status_check).await, 1);
    assert!(store.revert_latest_migration().await.unwrap().is_some());
    assert_eq!(count(&store, compact_status_check).await, 0);
    assert_eq!(count(&store, guard_rebuild).await, 1);
    assert_eq!(count(&store, guard_when).await, 1);
    assert!(store.revert_latest_migration().await.unwrap().is_some());
    assert_eq!(count(&store, guard_rebuild).await, 0);
    assert_eq!(count(&store, guard_when).await, 0);
    assert_eq!(count(&store, guard).await, 1);
    assert_eq!(count(&store, status_index).await, 0);
    assert!(store.revert_latest_migration().await.unwrap().is_some());
    assert_eq!(count(&store, status_index).await, 1);
    for _ in 0..3 {
        assert!(store.revert_latest_migration().await.unwrap().is_some());
    }
    assert_eq!(count(&store, closed_at_column).await, 1);
    assert!(store.revert_latest_migration().await.unwrap().is_some());
    assert_eq!(count(&store, closed_at_column).await, 0);
    assert_eq!(count(&store, leases_table).await, 1);
    assert!(store.revert_latest_migration().await.unwrap().is_some());
    assert_eq!(count(&store, leases_table).await, 0);
    assert_eq!(count(&store, rollout_function).await, 1);
    assert!(store.revert_latest_migration().await.unwrap().is_some());
    assert_eq!(count(&store, rollout_function).await, 0);
    assert_eq!(count(&store, strikes_table).await, 1);
    assert!(store.revert_latest_migration().await.unwrap().is_some());
    assert_eq!(count(&store, strikes_table).await, 0);
    assert_eq!(count(&store, skips_table).await, 1);
    assert!(store.revert_latest_migration().await.unwrap().is_some());
    assert_eq!(count(&store, skips_table).await, 0);
    assert_eq!(count(&store, edges).await, 1);
    assert!(store.revert_latest_migration().await.unwrap().is_some());
    assert_eq!(count(&store, edges).await, 0);
    // All the way back: nothing of ours is left.
    while store.revert_latest_migration().await.unwrap().is_some() {}
    let tables: i64 = sqlx::query_scalar("select count(*) from pg_tables where schemaname = 'public' and tablename <> '_sqlx_migrations'")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(tables, 0, "revert drops the schema");
    store.migrate().await.unwrap();
    store.seed().await.unwrap();
    let cities: i64 = sqlx::query_scalar("select count(*) from cities")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert!(cities >= 2);
    assert_eq!(count(&store, edges).await, 1);
}

#[tokio::test]
async fn two_writers_racing_the_same_version_one_commits_one_conflicts() {
    let url = fresh_database().await;
    let store = Store::connect(&url, 4).await.unwrap();
    let (request, created) = store
        .create_request(&new_request(CUSTOMER, -58.40, -34.60))
        .await
        .unwrap();
    assert!(created);
    let (w1, w2) = (
        insert_worker(&store, "buenos-aires").await,
        insert_worker(&store, "buenos-aires").await,
    );

    let (a, b) = tokio::join!(
        store.transition(&request, offer_to(w1, 1)),
        store.transition(&request, offer_to(w2, 1))
    );
    let (ok, err) = match (a, b) {
        (Ok(row), Err(e)) | (Err(e), Ok(row)) => (row, e),
        other => panic!("expected exactly one winner, got {other:?}"),
    };
    assert!(
        matches!(
            err,
            StoreError::ConcurrencyConflict {
                expected_version: 1,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        (ok.status, ok.version, ok.assignment_attempts),
        (Status::Offering, 2, 1)
    );
    assert_eq!(
        outbox_of(&store, request.id).await,
        vec![("ServiceRequestCreated".into(), 1), ("OfferSent".into(), 2)]
    );
    let offers: i64 = sqlx::query_scalar(r#"select count(*) from offers where "requestId" = $1"#)
        .bind(request.id)
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(offers, 1, "the loser's offer row rolled back with it");
}

#[tokio::test]
async fn the_database_refuses_illegal_transitions_and_double_acceptance() {
    let url = fresh_database().await;
    let store = Store::connect(&url, 2).await.unwrap();
    let (request, _) = store
        .create_request(&new_request(CUSTOMER, -58.40, -34.60))
        .await
        .unwrap();
    // The engine refuses first...
    let err = store
        .transition(&request, Change::JobStarted)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::IllegalTransition(_)), "{err:?}");
    // ...and the database refuses a hand-written shortcut too.
    let err = sqlx::query("update service_requests set status = 'COMPLETED', \"assignedWorkerId\" = (select id from worker_profiles limit 1) where id = $1")
        .bind(request.id)
        .execute(store.pool())
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("illegal service request transition"),
        "{err}"
    );

    let w = insert_worker(&store, "buenos-aires").await;
    let offered = store.transition(&request, offer_to(w, 1)).await.unwrap();
    let offer_id: Uuid = sqlx::query_scalar(r#"select id from offers where "requestId" = $1"#)
        .bind(request.id)
        .fetch_one(store.pool())
        .await
        .unwrap();
    sqlx::query("update offers set outcome = 'ACCEPTED', \"respondedAt\" = now() where id = $1")
        .bind(offer_id)
        .execute(store.pool())
        .await
        .unwrap();
    let second: Uuid = sqlx::query_scalar(
        r#"insert into offers ("requestId", "workerId", attempt, "expiresAt") values ($1, $2, 2, now()) returning id"#,
    )
    .bind(request.id)
    .bind(w)
    .fetch_one(store.pool())
    .await
    .unwrap();
    let err = sqlx::query(
        "update offers set outcome = 'ACCEPTED', \"respondedAt\" = now() where id = $1",
    )
    .bind(second)
    .execute(store.pool())
    .await
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("offers_one_accepted_per_request_idx"),
        "{err}"
    );
    assert_eq!(offered.version, 2);
}

#[tokio::test]
async fn a_repeated_idempotency_key_returns_the_same_request() {
    let url = fresh_database().await;
    let store = Store::connect(&url, 2).await.unwrap();
    let mut new = new_request(CUSTOMER, -58.40, -34.60);
    new.idempotency_key = Some("key-1".into());
    let (first, created) = store.create_request(&new).await.unwrap();
    let (again, created_again) = store.create_request(&new).await.unwrap();
    assert!(created && !created_again);
    assert_eq!(first.id, again.id);
    assert_eq!(outbox_of(&store, first.id).await.len(), 1);
    // Another customer's identical key is a different request.
    new.customer_id = OTHER_CUSTOMER;
    let (other, created_other) = store.create_request(&new).await.unwrap();
    assert!(created_other && other.id != first.id);
}

#[tokio::test]
async fn health_and_readiness_answer_over_http() {
    let app = TestApp::spawn().await;
    let client = reqwest::Client::new();
    let health = client
        .get(format!("{}/health", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.text().await.unwrap(), r#"{"status":"ok"}"#);
    let ready = client
        .get(format!("{}/ready", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);

    // Without its database the engine stays alive but stops being ready: refuse new
    // connections to it and cut the open ones.
    let db = app.database_url.rsplit('/').next().unwrap().to_string();
    let admin = sqlx::PgPool::connect(&app.database_url.replace(&format!("/{db}"), "/postgres"))
        .await
        .unwrap();
    sqlx::query(&format!(r#"alter database "{db}" allow_connections false"#))
        .execute(&admin)
        .await
        .unwrap();
    sqlx::query("select pg_terminate_backend(pid) from pg_stat_activity where datname = $1")
        .bind(&db)
        .execute(&admin)
        .await
        .unwrap();
    let ready = client
        .get(format!("{}/ready", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let health = client
        .get(format!("{}/health", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);

    app.handle.shutdown();
    app.server.await.unwrap().unwrap();
}

#[tokio::test]
async fn the_guides_config_update_applies_without_a_restart() {
    let url = fresh_database().await;
    let store = Store::connect(&url, 4).await.unwrap();
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    let (mut settings, _task) = store.watch_settings(shutdown).await.unwrap();
    assert_eq!(
        settings.borrow().worker_timeout,
        std::time::Duration::from_secs(300)
    );
    sqlx::query("UPDATE system_config SET value = '20' WHERE key = 'worker_timeout_minutes'")
        .execute(store.pool())
        .await
        .unwrap();
    // LISTEN/NOTIFY wakes the watcher; no restart, no polling wait.
    settings.changed().await.unwrap();
    assert_eq!(
        settings.borrow().worker_timeout,
        std::time::Duration::from_secs(1200)
    );
}

/// The database's status machine (`service_request_transitions`, enforced by a trigger) and
/// the engine's (`domain::status::TRANSITIONS`) have exactly the same edges.
#[tokio::test]
async fn the_database_and_the_engine_share_one_status_machine() {
    let url = fresh_database().await;
    let store = Store::connect(&url, 2).await.unwrap();
    let stored: std::collections::BTreeSet<(String, String)> =
        sqlx::query_as(r#"select "fromStatus", "toStatus" from service_request_transitions"#)
            .fetch_all(store.pool())
            .await
            .unwrap()
            .into_iter()
            .collect();
    let engine: std::collections::BTreeSet<(String, String)> =
        arreglame::domain::status::TRANSITIONS
            .iter()
            .filter(|(from, _, to)| from != to)
            .map(|(from, _, to)| (from.as_str().to_string(), to.as_str().to_string()))
            .collect();
    assert_eq!(stored, engine);
}

/// Migration 20261202000002 rewrote seven CHECK constraints of `service_requests` in a form
/// PostgreSQL reads faster: each still refuses exactly what it refused, under its own name,
/// and lets the edge values and NULLs through.
#[tokio::test]
async fn the_compact_checks_refuse_what_they_refused_under_the_same_names() {
    let url = fresh_database().await;
    let store = Store::connect(&url, 2).await.unwrap();
    let refused = [
        (r#"status"#, "'BOGUS'", "service_requests_status_check"),
        (
            r#""cancelledBy""#,
            "'NOBODY'",
            "service_requests_cancelledBy_check",
        ),
        (r#"status"#, "'ASSIGNED'", "service_requests_assignee_check"),
        (r#""closedAt""#, "now()", "service_requests_closed_at_check"),
        (r#"latitude"#, "90.5", "service_requests_latitude_check"),
        (r#"latitude"#, "-90.5", "service_requests_latitude_check"),
        (r#"longitude"#, "180.5", "service_requests_longitude_check"),
        (r#"longitude"#, "-180.5", "service_requests_longitude_check"),
        (
            r#""squareMeters""#,
            "0",
            "service_requests_squareMeters_check",
        ),
    ];
    for (column, value, constraint) in refused {
        let sql =
            format!("insert into service_requests (description, {column}) values ('x', {value})");
        let err = sqlx::query(&sql).execute(store.pool()).await.unwrap_err();
        let db = err.as_database_error().expect("refused by the database");
        assert_eq!(db.constraint(), Some(constraint), "{sql}: {db}");
    }
    let accepted = [
        r#"(description) values ('x')"#,
        r#"(description, latitude, longitude, "squareMeters") values ('x', -90, 180, 0.5)"#,
        r#"(description, latitude, longitude) values ('x', 90, -180)"#,
        r#"(description, status, "cancelledBy", "closedAt") values ('x', 'CANCELLED', 'OPS', now())"#,
        r#"(description, status, "closedAt") values ('x', 'UNASSIGNED', now())"#,
    ];
    for columns_and_values in accepted {
        sqlx::query(&format!(
            "insert into service_requests {columns_and_values}"
        ))
        .execute(store.pool())
        .await
        .unwrap_or_else(|e| panic!("{columns_and_values}: {e}"));
    }
}

/// Sets one request's status in a transaction of its own; returns how many times the status
/// trigger's function ran in it (pg_stat_xact_user_functions, with `track_functions` on).
async fn set_status_counting_calls(conn: &mut sqlx::PgConnection, id: Uuid, status: &str) -> i64 {
    let mut tx = sqlx::Connection::begin(&mut *conn).await.unwrap();
    let changed = sqlx::query("update service_requests set status = $2 where id = $1")
        .bind(id)
        .bind(status)
        .execute(&mut *tx)
        .await
        .unwrap();
    assert_eq!(changed.rows_affected(), 1, "{status}");
    let called = sqlx::query_scalar(
        "select coalesce(sum(calls), 0)::int8 from pg_stat_xact_user_functions
         where funcname = 'service_requests_check_transition'",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    called
}

/// The status trigger carries the edges of `service_request_transitions` in its WHEN clause
/// (migration 20261202000001): a legal change calls no function at all, an illegal one is
/// refused as before, and the clause follows the table when an edge is added or removed.
#[tokio::test]
async fn the_status_guard_follows_its_table_and_calls_no_function_for_a_legal_change() {
    let url = fresh_database().await;
    let store = Store::connect(&url, 2).await.unwrap();
    let (request, _) = store
        .create_request(&new_request(CUSTOMER, -58.40, -34.60))
        .await
        .unwrap();
    let mut conn = store.pool().acquire().await.unwrap();
    // Function calls of this session's open transaction (pg_stat_xact_user_functions).
    sqlx::query("set track_functions = 'pl'")
        .execute(&mut *conn)
        .await
        .unwrap();
    let set_status = "update service_requests set status = $2 where id = $1";

    // Legal (PENDING -> CANCELLED): written, and the trigger's function was never called.
    let called = set_status_counting_calls(&mut conn, request.id, "CANCELLED").await;
    assert_eq!(called, 0, "a legal change calls no function");

    // Illegal (CANCELLED -> PENDING): refused with the same error as before.
    let refused = |e: sqlx::Error| {
        let db = e.as_database_error().expect("the database refuses it");
        assert!(db
            .message()
            .contains("illegal service request transition CANCELLED -> PENDING"));
        assert_eq!(
            db.constraint(),
            Some("service_requests_status_transition_check")
        );
    };
    let err = sqlx::query(set_status)
        .bind(request.id)
        .bind("PENDING")
        .execute(&mut *conn)
        .await
        .unwrap_err();
    refused(err);

    // An edge added to the table is allowed at once, again without a call...
    sqlx::query(
        r#"insert into service_request_transitions ("fromStatus", "toStatus") values ('CANCELLED', 'PENDING')"#,
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    let called = set_status_counting_calls(&mut conn, request.id, "PENDING").await;
    assert_eq!(called, 0);

    // ...and one removed is refused again.
    sqlx::query(set_status)
        .bind(request.id)
        .bind("CANCELLED")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query(
        r#"delete from service_request_transitions where "fromStatus" = 'CANCELLED' and "toStatus" = 'PENDING'"#,
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    let err = sqlx::query(set_status)
        .bind(request.id)
        .bind("PENDING")
        .execute(&mut *conn)
        .await
        .unwrap_err();
    refused(err);
}

// Migration 8 gives the requests closed before "closedAt" existed their closing time, in
// batches of its own transactions, so the open-request index leaves them out.
#[tokio::test]
async fn the_closed_at_backfill_closes_the_requests_that_ended_before_it() {
    let url = fresh_database().await;
    let store = Store::connect(&url, 2).await.unwrap();
    // Back to just before migration 8, however many came after it.
    let from_eight = arreglame::store::MIGRATOR
        .iter()
        .filter(|m| m.version >= 20261201000008 && m.migration_type.is_up_migration())
        .count();
    for _ in 0..from_eight {
        store.revert_latest_migration().await.unwrap();
    }
    let cancelled_at: chrono::DateTime<chrono::Utc> = sqlx::query_scalar(
        r#"insert into service_requests ("customerId", "cityId", status, "cancelledAt", "cancelledBy")
           values ($1, 'buenos-aires', 'CANCELLED', now() - interval '3 days', 'CUSTOMER')
           returning "cancelledAt""#,
    )
    .bind(CUSTOMER)
    .fetch_one(store.pool())
    .await
    .unwrap();
    let (open, _) = store
        .create_request(&new_request(CUSTOMER, -58.40, -34.60))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let rows: Vec<(String, Option<chrono::DateTime<chrono::Utc>>)> =
        sqlx::query_as(r#"select status, "closedAt" from service_requests order by status"#)
            .fetch_all(store.pool())
            .await
            .unwrap();
    assert_eq!(
        rows,
        vec![
            ("CANCELLED".to_string(), Some(cancelled_at)),
            ("PENDING".to_string(), None)
        ]
    );
    let open_now: Vec<uuid::Uuid> = store
        .open_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(open_now, vec![open.id]);
}

/// The single count a catalog query returns.
async fn count(store: &Store, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(store.pool())
        .await
        .unwrap()
}
