//! Issue 7: metrics, the live actor view, the decision trail, and ops auth.

use arreglame::{auth::Role, domain::Status};
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
        !app.store().pending_offers(row.id).await.unwrap().is_empty()
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
        "/ops/attention",
        "/ops/history",
        "/ops/rollout",
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
    let offer = app.store().pending_offers(request).await.unwrap().remove(0);
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
    let offer = app.store().pending_offers(request).await.unwrap().remove(0);
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
                        "status"
                            | "state"
                            | "outcome"
                            | "circuitState"
                            | "code"
                            | "cancelledBy"
                            | "kind"
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
    // A second request finds the only worker holding an offer: UNASSIGNED, so the attention
    // list and the history have something to walk.
    let unassigned = app.open_request(LON, LAT).await;
    wait_until(PATIENCE, || async {
        app.store().get_request(unassigned).await.unwrap().status == Status::Unassigned
    })
    .await;
    let ops = app.token(Role::Ops, Uuid::new_v4());
    let customer = app.token(Role::Customer, CUSTOMER);
    let mut problems = Vec::new();
    for path in [
        "/ops/actors".to_string(),
        "/ops/map".to_string(),
        "/ops/attention".to_string(),
        "/ops/history".to_string(),
        "/ops/rollout".to_string(),
        format!("/ops/requests/{request}/trail"),
    ] {
        let response = get(&app, &path, Some(&ops)).await;
        assert_eq!(response.status(), 200, "{path}");
        let body: Value = response.json().await.unwrap();
        if path == "/ops/attention" {
            assert_eq!(body["items"][0]["kind"], "UNASSIGNED", "{body}");
        }
        if path == "/ops/rollout" {
            // Both arms, side by side; at the default 100 % every request is the engine's.
            assert_eq!(body["percentage"], 100, "{body}");
            let arms: Vec<&str> = body["arms"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a["arm"].as_str().unwrap())
                .collect();
            assert_eq!(arms, ["ENGINE", "LEGACY"], "{body}");
            assert_eq!(body["arms"][0]["created"], 2, "{body}");
            assert_eq!(body["arms"][1]["created"], 0, "{body}");
        }
        walk(&path, &body, &mut problems);
    }
    // Every refusal, in the one error shape.
    for (path, token, status) in [
        ("/ops/actors".to_string(), None, 401),
        ("/ops/actors".to_string(), Some(customer.as_str()), 403),
        ("/ops/attention".to_string(), None, 401),
        ("/ops/history".to_string(), Some(customer.as_str()), 403),
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

/// The engine on a fresh database whose WorkerAssignmentCron never runs during the test, so
/// requests without an actor stay as the test leaves them.
async fn app_without_backstop() -> TestApp {
    let url = fresh_database().await;
    let store = arreglame::store::Store::connect(&url, 1).await.unwrap();
    sqlx::query(
        "update system_config set value = '0 0 1 1 *' where key = 'worker_assignment_cron'",
    )
    .execute(store.pool())
    .await
    .unwrap();
    TestApp::spawn_on(url, &[]).await
}

async fn wait_status(app: &TestApp, id: Uuid, status: Status) {
    wait_until(PATIENCE, || async {
        app.store().get_request(id).await.unwrap().status == status
    })
    .await;
}

async fn create(app: &TestApp, with_actor: bool) -> Uuid {
    if with_actor {
        return app.open_request(LON, LAT).await;
    }
    let (row, _) = app
        .store()
        .create_request(&new_request(CUSTOMER, LON, LAT))
        .await
        .unwrap();
    row.id
}

/// Issue 17: the charts' numbers, from a scripted flow: three requests, one accepted offer
/// and one rejected one.
#[tokio::test]
async fn the_history_counts_a_scripted_flow() {
    let app = app_without_backstop().await;
    let d = &app.handle.state.dispatcher;
    // r1: offered to the only worker, accepted.
    let first_worker = app.worker_online(LON, LAT).await;
    let r1 = create(&app, true).await;
    let offer = wait_for(PATIENCE, || async {
        app.store()
            .pending_offers(r1)
            .await
            .unwrap()
            .into_iter()
            .next()
    })
    .await;
    d.accept_offer(first_worker, r1, offer.id).await.unwrap();
    wait_status(&app, r1, Status::Assigned).await;
    // r2: the first worker is busy, so offered to a second one, who rejects: UNASSIGNED.
    let second_worker = app.worker_online(LON, LAT).await;
    let r2 = create(&app, true).await;
    let offer = wait_for(PATIENCE, || async {
        app.store()
            .pending_offers(r2)
            .await
            .unwrap()
            .into_iter()
            .next()
    })
    .await;
    assert_eq!(offer.worker_id, second_worker);
    d.reject_offer(second_worker, r2, offer.id, None)
        .await
        .unwrap();
    wait_status(&app, r2, Status::Unassigned).await;
    // r3: created, never dispatched.
    create(&app, false).await;

    let history: Value = get(
        &app,
        "/ops/history",
        Some(&app.token(Role::Ops, Uuid::new_v4())),
    )
    .await
    .json()
    .await
    .unwrap();
    let totals = &history["totals"];
    assert_eq!(totals["created"], 3, "{history}");
    assert_eq!(totals["assigned"], 1, "{history}");
    assert_eq!(totals["offersDecided"], 2, "{history}");
    assert_eq!(totals["offersAccepted"], 1, "{history}");
    assert_eq!(totals["acceptanceRate"], 0.5, "{history}");

    let buckets = history["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 15);
    assert_eq!(history["minutes"], 15);
    let minute = |b: &Value| {
        b["minute"]
            .as_str()
            .unwrap()
            .parse::<chrono::DateTime<chrono::Utc>>()
            .unwrap()
    };
    for pair in buckets.windows(2) {
        assert_eq!((minute(&pair[1]) - minute(&pair[0])).num_seconds(), 60);
    }
    let sum = |key: &str| {
        buckets
            .iter()
            .map(|b| b[key].as_i64().unwrap())
            .sum::<i64>()
    };
    assert_eq!(
        (
            sum("created"),
            sum("assigned"),
            sum("offersDecided"),
            sum("offersAccepted")
        ),
        (3, 1, 2, 1)
    );
    for b in buckets {
        let (decided, accepted) = (
            b["offersDecided"].as_i64().unwrap(),
            b["offersAccepted"].as_i64().unwrap(),
        );
        if decided == 0 {
            assert!(b["acceptanceRate"].is_null(), "{b}");
        } else {
            assert_eq!(
                b["acceptanceRate"].as_f64().unwrap(),
                accepted as f64 / decided as f64
            );
        }
        if b["assigned"] == 0 {
            assert!(b["timeToAssignmentP50Seconds"].is_null(), "{b}");
            assert!(b["timeToAssignmentP99Seconds"].is_null(), "{b}");
        }
    }
    // The one assignment: its minute holds its time to assignment as both percentiles.
    let row = app.store().get_request(r1).await.unwrap();
    let assigned_at = row.assigned_at.unwrap();
    let expected = (assigned_at - row.created_at).num_microseconds().unwrap() as f64 / 1e6;
    let bucket = buckets
        .iter()
        .find(|b| b["assigned"] == 1)
        .expect("a minute with the assignment");
    assert!(
        minute(bucket) <= assigned_at
            && assigned_at - minute(bucket) < chrono::Duration::seconds(60)
    );
    for key in ["timeToAssignmentP50Seconds", "timeToAssignmentP99Seconds"] {
        let got = bucket[key].as_f64().unwrap();
        assert!((got - expected).abs() < 1e-6, "{key}: {got} vs {expected}");
    }
}

/// Issue 17: stuck and recently unassigned requests, each with what the page needs to open
/// its trail.
#[tokio::test]
async fn the_attention_list_shows_stuck_and_unassigned_requests() {
    let app = app_without_backstop().await;
    let pool = app.store().pool().clone();
    let age = |id: Uuid, column: &'static str, interval: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query(&format!(
                r#"update service_requests set "{column}" = now() - interval '{interval}' where id = $1"#
            ))
            .bind(id)
            .execute(&pool)
            .await
            .unwrap();
        }
    };
    // Nobody online: two requests end UNASSIGNED; one of them gave up two hours ago.
    let unassigned = create(&app, true).await;
    wait_status(&app, unassigned, Status::Unassigned).await;
    let long_ago = create(&app, true).await;
    wait_status(&app, long_ago, Status::Unassigned).await;
    age(long_ago, "updatedAt", "2 hours").await;
    // PENDING without an actor: one untouched for a minute (stuck), one just created.
    let stuck = create(&app, false).await;
    age(stuck, "updatedAt", "1 minute").await;
    let fresh = create(&app, false).await;
    // OFFERING, its deadline a minute gone (the actor's timer is still minutes away).
    app.worker_online(LON, LAT).await;
    let offering = create(&app, true).await;
    wait_status(&app, offering, Status::Offering).await;
    age(offering, "workerTimeoutAt", "1 minute").await;

    let body: Value = get(
        &app,
        "/ops/attention",
        Some(&app.token(Role::Ops, Uuid::new_v4())),
    )
    .await
    .json()
    .await
    .unwrap();
    let items = body["items"].as_array().unwrap();
    let listed: Vec<(String, &str, &str)> = items
        .iter()
        .map(|i| {
            (
                i["requestId"].as_str().unwrap().to_string(),
                i["kind"].as_str().unwrap(),
                i["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            (stuck.to_string(), "STALLED_PENDING", "PENDING"),
            (offering.to_string(), "OFFER_OVERDUE", "OFFERING"),
            (unassigned.to_string(), "UNASSIGNED", "UNASSIGNED"),
        ],
        "{body}"
    );
    assert!(!listed
        .iter()
        .any(|(id, ..)| *id == fresh.to_string() || *id == long_ago.to_string()));
    assert_eq!(items[0]["hasActor"], false);
    assert_eq!(items[1]["hasActor"], true);
    assert!(items[0]["idleSeconds"].as_i64().unwrap() >= 60, "{body}");
    assert_eq!(items[2]["cityId"], "buenos-aires");
    assert!(items[2]["unassignedReason"].is_string(), "{body}");
    assert_eq!(body["stalledPendingAfterSeconds"], 15);
    assert_eq!(body["unassignedWithinSeconds"], 3600);
    // Each one opens its trail.
    for (id, ..) in &listed {
        let trail = get(
            &app,
            &format!("/ops/requests/{id}/trail"),
            Some(&app.token(Role::Ops, Uuid::new_v4())),
        )
        .await;
        assert_eq!(trail.status(), 200, "{id}");
    }
}
