//! Issue 8: a short simulated run against the real engine (WebSocket workers, GraphQL
//! customers), then the database cross-check.

use std::{sync::Arc, time::Duration};

use arreglame::sim::{provision, report::cross_check, SimArgs};

use crate::helpers::*;

#[tokio::test]
async fn a_short_simulation_agrees_with_the_database() {
    let app = TestApp::spawn().await;
    let args = SimArgs {
        url: app.address.clone(),
        workers: 8,
        customers: 3,
        city: "buenos-aires".into(),
        duration: Duration::from_secs(3),
        rate: 4.0,
        accept_rate: 0.7,
        cancel_rate: 0.1,
        job_seconds: 0.5,
        location_every: 1.0,
        drain_seconds: 20.0,
        json: true,
        check: true,
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
    let check = cross_check(app.store(), &fleet, &summary).await.unwrap();
    assert!(check.ok, "{}", check.table());
}
