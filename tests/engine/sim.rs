//! Issue 8: a short simulated run against the real engine (WebSocket workers, GraphQL
//! customers), then the database cross-check.

use std::{sync::Arc, time::Duration};

use arreglame::sim::{compare::compare, provision, report::cross_check, Mode, SimArgs};

use crate::helpers::*;

#[tokio::test]
async fn a_short_simulation_agrees_with_the_database() {
    let app = TestApp::spawn().await;
    let args = SimArgs {
        url: app.address.clone(),
        workers: 8,
        customers: 3,
        duration: Duration::from_secs(3),
        warmup: Duration::ZERO,
        rate: 4.0,
        accept_rate: 0.7,
        cancel_rate: 0.1,
        job_seconds: 0.5,
        location_every: 1.0,
        drain_seconds: 20.0,
        json: true,
        check: true,
        ..SimArgs::default()
    };
    let fleet = Arc::new(provision(app.store(), &args, "test-secret").await.unwrap());
    let summary = fleet.clone().run(false).await.unwrap();
    assert!(summary.created >= 5, "{}", summary.table());
    assert_eq!(
        summary.open,
        0,
        "every request settled: {}",
        summary.table()
    );
    // `assigned` counts every request a worker took (completed included).
    assert_eq!(
        summary.created,
        summary.assigned + summary.unassigned + summary.cancelled,
        "{}",
        summary.table()
    );
    assert!(summary.offers as usize >= summary.assigned);
    assert!(summary.location_updates > 0);
    // Open loop: every due create was sent; workers were online by the engine's answer.
    assert_eq!(summary.created, 12, "{}", summary.table());
    assert_eq!(summary.online, 8, "{}", summary.table());
    let check = cross_check(app.store(), &fleet, &summary).await.unwrap();
    assert!(check.ok, "{}", check.table());
}

/// The real binary, killed with SIGKILL in the middle of a run and started again on the
/// same database and port: workers reconnect, nothing is lost, nothing assigned twice.
#[tokio::test]
async fn an_engine_killed_with_sigkill_mid_run_loses_nothing_and_assigns_nothing_twice() {
    let database_url = fresh_database().await;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let start = || {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_arreglame"))
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", &database_url)
            .env("PORT", port.to_string())
            .env("HOST", "127.0.0.1")
            .env("JWT_SECRET", "test-secret")
            .env("LOG_LEVEL", "error")
            .kill_on_drop(true)
            .spawn()
            .expect("start the engine binary")
    };
    let url = format!("http://127.0.0.1:{port}");
    let wait_healthy = || async {
        loop {
            if let Ok(r) = reqwest::get(format!("{url}/health")).await {
                if r.status() == 200 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let mut engine = start();
    wait_healthy().await;

    let store = arreglame::store::Store::connect(&database_url, 4)
        .await
        .unwrap();
    let args = SimArgs {
        url: url.clone(),
        workers: 10,
        customers: 3,
        duration: Duration::from_secs(5),
        warmup: Duration::ZERO,
        rate: 6.0,
        accept_rate: 0.8,
        cancel_rate: 0.0,
        job_seconds: 1.0,
        location_every: 1.0,
        drain_seconds: 60.0,
        json: true,
        check: true,
        ..SimArgs::default()
    };
    let fleet = Arc::new(provision(&store, &args, "test-secret").await.unwrap());
    let run = tokio::spawn(fleet.clone().run(false));

    // Let offers flow, then kill -9 and start again.
    while fleet
        .stats
        .offers
        .load(std::sync::atomic::Ordering::Relaxed)
        < 5
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    engine.start_kill().unwrap();
    engine.wait().await.unwrap();
    let _engine = start();
    wait_healthy().await;

    let summary = run.await.unwrap().unwrap();
    assert_eq!(summary.open, 0, "{}", summary.table());
    assert!(summary.reconnects > 0, "workers reconnected after the kill");
    let open: i64 = sqlx::query_scalar("select count(*) from service_requests where status in ('PENDING', 'OFFERING', 'ASSIGNED', 'IN_PROGRESS')")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(open, 0, "no request left behind");
    let check = cross_check(&store, &fleet, &summary).await.unwrap();
    assert_eq!(check.double_accepted, 0, "{}", check.table());
    assert_eq!(check.outbox_mismatches, 0, "{}", check.table());
    // Every request the customers were told about is in the database, settled.
    let known: i64 = sqlx::query_scalar("select count(*) from service_requests where id = any($1)")
        .bind(summary.finals.keys().copied().collect::<Vec<_>>())
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(known as usize, summary.created);
}

/// Issue 15: `simulate --compare` runs the same seeded scenario once per mode, each on a
/// fresh fleet, cross-checks each against the database, and puts `system_config` back.
#[tokio::test]
async fn compare_runs_every_mode_on_the_same_scenario_and_restores_the_configuration() {
    let app = TestApp::spawn().await;
    let store = app.store();
    let before = store.system_config_rows().await.unwrap();
    let modes = vec![
        Mode::Sequential,
        Mode::Parallel,
        Mode::Adaptive,
        Mode::Ranked,
    ];
    let args = SimArgs {
        url: app.address.clone(),
        workers: 6,
        customers: 2,
        duration: Duration::from_secs(2),
        warmup: Duration::ZERO,
        rate: 3.0,
        seed: 42,
        accept_half_distance_m: 3_000.0,
        unreliable_share: 0.5,
        cancel_rate: 0.0,
        job_seconds: 0.5,
        location_every: 1.0,
        drain_seconds: 20.0,
        offer_timeout_seconds: 3.0,
        compare: modes.clone(),
        ..SimArgs::default()
    };
    let report = compare(store, &args, "test-secret", false).await.unwrap();
    let table = report.table();
    assert_eq!(
        report.modes.iter().map(|m| m.mode).collect::<Vec<_>>(),
        modes,
        "{table}"
    );
    let mut workers = std::collections::HashSet::new();
    for m in &report.modes {
        // The same open-loop schedule in every mode.
        assert_eq!(m.summary.created, 6, "{table}");
        assert!(m.check.ok, "{}: {}", m.mode.name(), m.check.table());
        assert_eq!(m.double_assigned, 0, "{table}");
        assert_eq!(m.summary.open, 0, "{table}");
        assert!((0.0..=1.0).contains(&m.earnings_gini), "{table}");
        assert!(m.summary.assigned > 0, "{table}");
        workers.insert(m.summary.workers);
    }
    assert_eq!(workers.len(), 1, "the same fleet size for every mode");
    assert!(report.modes[0].vs_sequential.is_none());
    assert!(report.modes[1].vs_sequential.is_some(), "{table}");
    // Every mode had its own fleet: four times the workers and customers in the database.
    let fleets: i64 =
        sqlx::query_scalar("select count(*) from worker_profiles where name like 'sim-%'")
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!(fleets, 24);
    assert_eq!(
        store.system_config_rows().await.unwrap(),
        before,
        "system_config restored"
    );
    let json = serde_json::to_value(&report).unwrap();
    for key in [
        "mode",
        "time_to_assign_ms",
        "time_to_assignment_ms",
        "offers_per_assignment",
        "acceptance_rate",
        "share_assigned",
        "worker_cancellations",
        "no_shows",
        "mean_distance_m",
        "earnings_gini",
    ] {
        assert!(
            json["modes"][0].get(key).is_some(),
            "--json has {key}: {json}"
        );
    }
}
