//! Issue 7: metrics, the live actor view, the decision trail, and ops auth.

use std::time::Duration;

use arreglame::auth::Role;
use serde_json::Value;
use uuid::Uuid;

use crate::helpers::*;

const LON: f64 = -58.3816;
const LAT: f64 = -34.6037;

fn ops_token(app: &TestApp) -> String {
    app.handle
        .state
        .keys
        .issue(Role::Ops, Uuid::new_v4(), Duration::from_secs(3600))
}

async fn get(app: &TestApp, path: &str, token: Option<&str>) -> reqwest::Response {
    let mut req = reqwest::Client::new().get(format!("{}{path}", app.address));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap()
}

/// A request whose actor is live, holding an offer to the one online worker.
async fn offering_request(app: &TestApp) -> (Uuid, Uuid) {
    let worker = insert_worker(app.store(), "buenos-aires").await;
    let d = &app.handle.state.dispatcher;
    d.worker_online("buenos-aires", worker, LON, LAT, vec!["lawn_mowing".into()])
        .await
        .unwrap();
    let (row, _) = app
        .store()
        .create_request(&new_request(CUSTOMER, LON, LAT))
        .await
        .unwrap();
    d.ensure_actor(row.id).await.unwrap();
    while app.store().pending_offer(row.id).await.unwrap().is_none() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (row.id, worker)
}

#[tokio::test]
async fn ops_endpoints_refuse_without_an_ops_token() {
    let app = TestApp::spawn().await;
    let customer = app
        .handle
        .state
        .keys
        .issue(Role::Customer, CUSTOMER, Duration::from_secs(60));
    for path in [
        "/ops/actors",
        "/ops/live",
        "/ops/map",
        "/ops/requests/00000000-0000-4000-8000-000000000001/trail",
        "/metrics",
    ] {
        assert_eq!(
            get(&app, path, None).await.status(),
            401,
            "{path} without a token"
        );
        let with_customer = get(&app, path, Some(&customer)).await.status();
        assert!(
            with_customer == 403 || with_customer == 401,
            "{path} with a customer token: {with_customer}"
        );
    }
    // The page itself holds no data: it is served and asks for the token.
    let page = get(&app, "/ops", None).await;
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("Ops token"));
}

#[tokio::test]
async fn ops_actors_shows_a_freshly_spawned_request_actor() {
    let app = TestApp::spawn().await;
    let (request, _) = offering_request(&app).await;
    let snapshot: Value = get(&app, "/ops/actors", Some(&ops_token(&app)))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(snapshot["requestActors"]["total"], 1, "{snapshot}");
    assert_eq!(snapshot["requestActors"]["byStatus"]["OFFERING"], 1);
    assert_eq!(
        snapshot["requestActors"]["oldestOpen"]["requestId"],
        request.to_string()
    );
    let ba = snapshot["cities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "buenos-aires")
        .unwrap();
    assert_eq!(
        (ba["online"].as_i64(), ba["holding_offer"].as_i64()),
        (Some(1), Some(1)),
        "{ba}"
    );
    assert_eq!(ba["openRequests"]["OFFERING"], 1);
    assert_eq!(ba["mailboxDepth"], 0, "an idle city has an empty mailbox");
    assert_eq!(snapshot["counters"]["offersSent"], 1);
}

#[tokio::test]
async fn metrics_reflect_a_dispatch_flow() {
    let app = TestApp::spawn().await;
    let (request, worker) = offering_request(&app).await;
    let offer = app.store().pending_offer(request).await.unwrap().unwrap();
    let d = &app.handle.state.dispatcher;
    d.accept_offer(worker, request, offer.id).await.unwrap();
    d.start_job(worker, request).await.unwrap();
    d.complete_job(worker, request).await.unwrap();

    let text = get(&app, "/metrics", Some(&ops_token(&app)))
        .await
        .text()
        .await
        .unwrap();
    let value = |name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from\n{text}"))
    };
    assert_eq!(value("arreglame_offers_sent_total"), 1.0);
    assert_eq!(value("arreglame_offers_accepted_total"), 1.0);
    assert_eq!(value("arreglame_requests_completed_total"), 1.0);
    assert_eq!(value("arreglame_worker_acceptance_ratio"), 1.0);
    assert!(value("arreglame_time_to_assignment_seconds_count") >= 1.0);
    assert!(value("arreglame_worker_finder_duration_seconds_count") >= 1.0);
    assert!(value("arreglame_db_query_duration_seconds_count") >= 4.0);
    assert!(
        text.contains("arreglame_live_actors{kind=\"city\"} 3"),
        "{text}"
    );
    // A Prometheus text-format sanity check: every sample line is `name{labels} number`.
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let v = line.rsplit(' ').next().unwrap();
        assert!(
            v.parse::<f64>().is_ok() || v == "+Inf" || v == "NaN",
            "bad sample line {line:?}"
        );
    }
}

#[tokio::test]
async fn the_trail_explains_why_nothing_was_assigned() {
    let app = TestApp::spawn().await;
    let (request, worker) = offering_request(&app).await;
    let offer = app.store().pending_offer(request).await.unwrap().unwrap();
    app.handle
        .state
        .dispatcher
        .reject_offer(worker, request, offer.id, Some("busy".into()))
        .await
        .unwrap();
    while !app
        .store()
        .get_request(request)
        .await
        .unwrap()
        .status
        .is_terminal()
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let trail: Value = get(
        &app,
        &format!("/ops/requests/{request}/trail"),
        Some(&ops_token(&app)),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(trail["request"]["status"], "UNASSIGNED");
    assert_eq!(trail["offers"][0]["outcome"], "REJECTED");
    assert_eq!(trail["offers"][0]["rejectReason"], "busy");
    assert!(trail["offers"][0]["distanceMeters"].as_f64().unwrap() < 1.0);
    assert_eq!(trail["offers"][0]["radiusMeters"], 2000);
    let explanation = trail["explanation"].as_str().unwrap();
    assert!(
        explanation.contains("no available worker within") && explanation.contains("1 rejected"),
        "{explanation}"
    );
    let types: Vec<&str> = trail["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "ServiceRequestCreated",
            "OfferSent",
            "OfferRejected",
            "ServiceRequestUnassigned"
        ]
    );
    assert_eq!(
        get(&app, "/ops/requests/nope/trail", Some(&ops_token(&app)))
            .await
            .status(),
        400
    );
}

#[tokio::test]
async fn the_live_stream_pushes_snapshots() {
    let app = TestApp::spawn().await;
    let mut response = get(&app, "/ops/live", Some(&ops_token(&app))).await;
    assert_eq!(response.status(), 200);
    let mut seen = String::new();
    while !(seen.contains("event: snapshot") && seen.contains("\n\n")) {
        let chunk = response.chunk().await.unwrap().expect("stream ended");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    let data = seen.lines().find(|l| l.starts_with("data:")).unwrap();
    let snapshot: Value = serde_json::from_str(data.trim_start_matches("data:").trim()).unwrap();
    assert_eq!(snapshot["cities"].as_array().unwrap().len(), 3);
}
