//! Issue 7: metrics, the live actor view, the decision trail, and ops auth.

use arreglame::auth::Role;
use serde_json::Value;
use uuid::Uuid;

use crate::helpers::*;

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
    wait_until(PATIENCE, || async {
        app.store().pending_offer(row.id).await.unwrap().is_some()
    })
    .await;
    (row.id, worker)
}

#[tokio::test]
async fn ops_endpoints_refuse_without_an_ops_token() {
    let app = TestApp::spawn().await;
    let customer = app.token(Role::Customer, CUSTOMER);
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
    let snapshot: Value = get(
        &app,
        "/ops/actors",
        Some(&app.token(Role::Ops, Uuid::new_v4())),
    )
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
        (ba["online"].as_i64(), ba["holdingOffer"].as_i64()),
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
    let ops = app.token(Role::Ops, Uuid::new_v4());
    let scrape = || async {
        get(&app, "/metrics", Some(&ops))
            .await
            .text()
            .await
            .unwrap()
    };
    // A family's value summed over its label sets (0 when it has none yet).
    let sum = |text: &str, name: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let before = scrape().await;
    let d = &app.handle.state.dispatcher;
    d.accept_offer(worker, request, offer.id).await.unwrap();
    d.start_job(worker, request).await.unwrap();
    d.complete_job(worker, request).await.unwrap();
    let text = scrape().await;
    let value = |name: &str| -> f64 {
        assert!(text.contains(name), "{name} missing from\n{text}");
        sum(&text, name)
    };
    // Deltas over the flow, so another test's recordings (a shared recorder under `cargo
    // test`) cannot make them pass.
    let delta = |name: &str| sum(&text, name) - sum(&before, name);
    assert_eq!(value("arreglame_offers_sent_total"), 1.0);
    assert_eq!(value("arreglame_offers_accepted_total"), 1.0);
    assert_eq!(value("arreglame_requests_completed_total"), 1.0);
    assert_eq!(value("arreglame_worker_acceptance_ratio"), 1.0);
    assert_eq!(
        delta("arreglame_time_to_assignment_seconds_count"),
        1.0,
        "one assignment"
    );
    assert_eq!(
        delta("arreglame_worker_finder_duration_seconds_count"),
        0.0,
        "no search after the offer"
    );
    assert_eq!(
        delta("arreglame_db_query_duration_seconds_count"),
        3.0,
        "accept, start, complete"
    );
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
    wait_until(PATIENCE, || async {
        app.store()
            .get_request(request)
            .await
            .unwrap()
            .status
            .is_terminal()
    })
    .await;
    let trail: Value = get(
        &app,
        &format!("/ops/requests/{request}/trail"),
        Some(&app.token(Role::Ops, Uuid::new_v4())),
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
        get(
            &app,
            "/ops/requests/nope/trail",
            Some(&app.token(Role::Ops, Uuid::new_v4()))
        )
        .await
        .status(),
        400
    );
}

#[tokio::test]
async fn the_live_stream_pushes_snapshots() {
    let app = TestApp::spawn().await;
    let mut response = get(
        &app,
        "/ops/live",
        Some(&app.token(Role::Ops, Uuid::new_v4())),
    )
    .await;
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

/// One JSON convention on every ops surface: every key camelCase (the keys of status maps
/// are statuses), every enum value in capitals, and every error `{"error": {"code",
/// "message"}}`. Walks every key of every ops response.
#[tokio::test]
async fn every_ops_response_follows_one_json_convention() {
    fn walk(path: &str, v: &Value, problems: &mut Vec<String>) {
        let camel = |k: &str| {
            k.chars().next().is_some_and(|c| c.is_ascii_lowercase())
                && k.chars().all(|c| c.is_ascii_alphanumeric())
        };
        let screaming =
            |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_uppercase() || c == '_');
        match v {
            Value::Object(map) => {
                let keys_are_statuses =
                    path.ends_with(".byStatus") || path.ends_with(".openRequests");
                for (k, child) in map {
                    if keys_are_statuses {
                        if !screaming(k) {
                            problems.push(format!("{path}: status key {k:?}"));
                        }
                    } else if !camel(k) {
                        problems.push(format!("{path}: key {k:?} is not camelCase"));
                    }
                    if matches!(
                        k.as_str(),
                        "status" | "state" | "outcome" | "circuitState" | "code" | "cancelledBy"
                    ) {
                        if let Some(s) = child.as_str() {
                            if !screaming(s) {
                                problems.push(format!(
                                    "{path}.{k}: value {s:?} is not SCREAMING_SNAKE"
                                ));
                            }
                        }
                    }
                    walk(&format!("{path}.{k}"), child, problems);
                }
            }
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    walk(&format!("{path}[{i}]"), item, problems);
                }
            }
            _ => {}
        }
    }

    let app = TestApp::spawn().await;
    let (request, _worker) = offering_request(&app).await;
    let ops = app.token(Role::Ops, Uuid::new_v4());
    let customer = app.token(Role::Customer, CUSTOMER);
    let mut problems = Vec::new();
    for path in [
        "/ops/actors".to_string(),
        "/ops/map".to_string(),
        format!("/ops/requests/{request}/trail"),
    ] {
        let response = get(&app, &path, Some(&ops)).await;
        assert_eq!(response.status(), 200, "{path}");
        let body: Value = response.json().await.unwrap();
        walk(&path, &body, &mut problems);
    }
    // Every refusal, in the one error shape.
    for (path, token, status) in [
        ("/ops/actors".to_string(), None, 401),
        ("/ops/actors".to_string(), Some(customer.as_str()), 403),
        (
            "/ops/requests/not-an-id/trail".to_string(),
            Some(ops.as_str()),
            400,
        ),
        (
            format!("/ops/requests/{}/trail", Uuid::new_v4()),
            Some(ops.as_str()),
            404,
        ),
        ("/metrics".to_string(), None, 401),
    ] {
        let response = get(&app, &path, token).await;
        assert_eq!(response.status(), status, "{path}");
        let body: Value = response.json().await.unwrap();
        assert!(body["error"]["code"].is_string(), "{path}: {body}");
        assert!(body["error"]["message"].is_string(), "{path}: {body}");
        walk(&path, &body, &mut problems);
    }
    assert!(problems.is_empty(), "{problems:#?}");
}
