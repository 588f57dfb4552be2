//! Issue 5: the customer GraphQL API over real HTTP and WebSocket on loopback.

use arreglame::{auth::Role, domain::Status};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};
use uuid::Uuid;

use crate::helpers::*;

/// The guide's example, character for character.
const GUIDE_ESTIMATE: &str = r#"mutation {
  estimateJob(input: {
    image: "base64...",
    description: "Corte de pasto",
    squareMeters: 100
  }) {
    price {
      total
      workerNet
      platformFee
    }
  }
}"#;

impl TestApp {
    /// POSTs a GraphQL operation; returns the whole JSON answer.
    pub async fn gql(&self, token: Option<&str>, query: &str, variables: Value) -> Value {
        let mut req = reqwest::Client::new()
            .post(format!("{}/graphql", self.address))
            .json(&json!({"query": query, "variables": variables}));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.unwrap().json().await.unwrap()
    }
}

fn error_code(answer: &Value) -> &str {
    answer["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error code in {answer}"))
}

pub(crate) const CREATE: &str = r#"mutation($input: CreateServiceRequestInput!) {
  createServiceRequest(input: $input) { id status version price { total workerNet platformFee } pricingEngine cityId }
}"#;

pub(crate) fn create_input(key: Option<&str>) -> Value {
    json!({"input": {
        "latitude": LAT, "longitude": LON, "address": "Av. Corrientes 1234",
        "description": "Corte de pasto en jardín trasero", "squareMeters": 120.5,
        "image": "base64...", "idempotencyKey": key
    }})
}

async fn create(app: &TestApp, token: &str) -> Uuid {
    let answer = app.gql(Some(token), CREATE, create_input(None)).await;
    answer["data"]["createServiceRequest"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{answer}"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn the_guides_estimate_job_works_exactly_as_written() {
    let app = TestApp::spawn().await;
    let answer = app.gql(None, GUIDE_ESTIMATE, Value::Null).await;
    assert!(answer["errors"].is_null(), "{answer}");
    let price = &answer["data"]["estimateJob"]["price"];
    let (total, net, fee) = (
        price["total"].as_i64().unwrap(),
        price["workerNet"].as_i64().unwrap(),
        price["platformFee"].as_i64().unwrap(),
    );
    assert!(total > 0);
    assert_eq!(total, net + fee, "{price}");
}

#[tokio::test]
async fn the_exported_schema_matches_docs() {
    let exported = arreglame::api::graphql::sdl();
    let documented =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/schema.graphql"))
            .unwrap();
    assert!(
        exported == documented,
        "docs/schema.graphql is stale: run `cargo run -- schema > docs/schema.graphql`"
    );
}

#[tokio::test]
async fn a_created_request_is_dispatched_and_the_subscription_follows_it() {
    let app = TestApp::spawn().await;
    let customer = app.token(Role::Customer, CUSTOMER);
    let dispatcher = app.handle.state.dispatcher.clone();
    let worker = app.worker_online(LON + 0.001, LAT).await;

    let created = app.gql(Some(&customer), CREATE, create_input(None)).await;
    let request = &created["data"]["createServiceRequest"];
    assert!(created["errors"].is_null(), "{created}");
    assert_eq!(request["cityId"], "buenos-aires");
    let id: Uuid = request["id"].as_str().unwrap().parse().unwrap();

    let mut sub = Subscription::open(&app, &customer, id).await;
    let mut seen = vec![sub.next_status().await];
    // The worker answers through the dispatcher as its app would.
    let offer = wait_offer(&app, id).await;
    dispatcher.accept_offer(worker, id, offer).await.unwrap();
    dispatcher.start_job(worker, id).await.unwrap();
    dispatcher.complete_job(worker, id).await.unwrap();
    while *seen.last().unwrap() != "COMPLETED" {
        seen.push(sub.next_status().await);
    }
    seen.dedup();
    // The snapshot may already be OFFERING (dispatch is fast); every later state follows in order.
    let from = seen
        .iter()
        .position(|s| s == "OFFERING")
        .expect("saw OFFERING");
    assert_eq!(
        &seen[from..],
        ["OFFERING", "ASSIGNED", "IN_PROGRESS", "COMPLETED"],
        "{seen:?}"
    );
}

/// A graphql-transport-ws client (the protocol the reference `graphql-ws` client speaks).
struct Subscription {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

impl Subscription {
    async fn connect(app: &TestApp, init_payload: Value) -> Result<Self, String> {
        let url = format!("{}/graphql/ws", app.address.replace("http://", "ws://"));
        let mut req = url.into_client_request().unwrap();
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            "graphql-transport-ws".parse().unwrap(),
        );
        let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        ws.send(Message::text(
            json!({"type": "connection_init", "payload": init_payload}).to_string(),
        ))
        .await
        .unwrap();
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.contains("connection_ack") => Ok(Subscription { ws }),
            other => Err(format!("{other:?}")),
        }
    }

    async fn open(app: &TestApp, token: &str, id: Uuid) -> Self {
        let mut s = Self::connect(app, json!({"Authorization": format!("Bearer {token}")}))
            .await
            .unwrap();
        let query = "subscription($id: ID!) { serviceRequestUpdated(id: $id) { status version event assignmentAttempts assignedWorker { id } } }";
        let msg = json!({"id": "1", "type": "subscribe", "payload": {"query": query, "variables": {"id": id}}});
        s.ws.send(Message::text(msg.to_string())).await.unwrap();
        s
    }

    async fn next_message(&mut self) -> Value {
        loop {
            match self.ws.next().await.expect("subscription closed").unwrap() {
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    if v["type"] == "ping" {
                        continue;
                    }
                    return v;
                }
                _ => continue,
            }
        }
    }

    async fn next_status(&mut self) -> String {
        let v = self.next_message().await;
        assert_eq!(v["type"], "next", "{v}");
        v["payload"]["data"]["serviceRequestUpdated"]["status"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

#[tokio::test]
async fn a_repeated_idempotency_key_returns_the_same_request() {
    let app = TestApp::spawn().await;
    let customer = app.token(Role::Customer, CUSTOMER);
    let first = app
        .gql(Some(&customer), CREATE, create_input(Some("order-42")))
        .await;
    let again = app
        .gql(Some(&customer), CREATE, create_input(Some("order-42")))
        .await;
    assert!(first["errors"].is_null(), "{first}");
    assert_eq!(
        first["data"]["createServiceRequest"]["id"],
        again["data"]["createServiceRequest"]["id"]
    );
    let count: i64 = sqlx::query_scalar("select count(*) from service_requests")
        .fetch_one(app.store().pool())
        .await
        .unwrap();
    assert_eq!(count, 1);
}

const CANCEL: &str = r#"mutation($id: ID!) { cancelServiceRequest(id: $id, reason: "plans changed") { status cancellationFee price { total } } }"#;

#[tokio::test]
async fn the_cancellation_policy_cases() {
    let app = TestApp::spawn().await;
    let customer = app.token(Role::Customer, CUSTOMER);
    let dispatcher = app.handle.state.dispatcher.clone();
    let worker = app.worker_online(LON + 0.001, LAT).await;

    // While dispatching: free.
    let id = create(&app, &customer).await;
    let answer = app.gql(Some(&customer), CANCEL, json!({"id": id})).await;
    assert_eq!(
        answer["data"]["cancelServiceRequest"]["status"], "CANCELLED",
        "{answer}"
    );
    assert_eq!(answer["data"]["cancelServiceRequest"]["cancellationFee"], 0);

    // Assigned: the late fee (10 % of the total by default).
    let assigned = create(&app, &customer).await;
    let offer = wait_offer(&app, assigned).await;
    dispatcher
        .accept_offer(worker, assigned, offer)
        .await
        .unwrap();
    let answer = app
        .gql(Some(&customer), CANCEL, json!({"id": assigned}))
        .await;
    let c = &answer["data"]["cancelServiceRequest"];
    assert_eq!(c["status"], "CANCELLED", "{answer}");
    let total = c["price"]["total"].as_i64().unwrap();
    assert_eq!(
        c["cancellationFee"].as_i64().unwrap(),
        (total as f64 * 0.10).round() as i64
    );

    // In progress: refused.
    let started = create(&app, &customer).await;
    let offer = wait_offer(&app, started).await;
    dispatcher
        .accept_offer(worker, started, offer)
        .await
        .unwrap();
    dispatcher.start_job(worker, started).await.unwrap();
    let answer = app
        .gql(Some(&customer), CANCEL, json!({"id": started}))
        .await;
    assert_eq!(error_code(&answer), "CONFLICT", "{answer}");

    // Completed, window open: a dispute cancels the held payout.
    dispatcher.complete_job(worker, started).await.unwrap();
    let answer = app
        .gql(Some(&customer), CANCEL, json!({"id": started}))
        .await;
    assert_eq!(
        answer["data"]["cancelServiceRequest"]["status"], "CANCELLED",
        "{answer}"
    );
    let payout = app
        .store()
        .payout_for_request(started)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(payout.status, "CANCELLED");

    // Completed, window closed (payout released): refused.
    let late = create(&app, &customer).await;
    let offer = wait_offer(&app, late).await;
    dispatcher.accept_offer(worker, late, offer).await.unwrap();
    dispatcher.start_job(worker, late).await.unwrap();
    dispatcher.complete_job(worker, late).await.unwrap();
    sqlx::query(
        r#"update payouts set "releaseAt" = now() - interval '1 minute' where "requestId" = $1"#,
    )
    .bind(late)
    .execute(app.store().pool())
    .await
    .unwrap();
    app.store().release_due_payouts(10).await.unwrap();
    let answer = app.gql(Some(&customer), CANCEL, json!({"id": late})).await;
    assert_eq!(error_code(&answer), "CONFLICT", "{answer}");
    assert_eq!(
        app.store().get_request(late).await.unwrap().status,
        Status::Completed
    );
}

async fn wait_offer(app: &TestApp, id: Uuid) -> Uuid {
    wait_for(PATIENCE, || async {
        app.store()
            .pending_offers(id)
            .await
            .unwrap()
            .first()
            .map(|o| o.id)
    })
    .await
}

#[tokio::test]
async fn nobody_reads_or_changes_what_is_not_theirs() {
    let app = TestApp::spawn().await;
    let owner = app.token(Role::Customer, CUSTOMER);
    let other = app.token(Role::Customer, OTHER_CUSTOMER);
    let worker = app.token(Role::Worker, Uuid::new_v4());
    let ops = app.token(Role::Ops, Uuid::new_v4());
    // A worker online keeps the request open (OFFERING) throughout.
    let w = insert_worker(app.store(), "buenos-aires").await;
    app.handle
        .state
        .dispatcher
        .worker_online("buenos-aires", w, LON, LAT, vec!["lawn_mowing".into()])
        .await
        .unwrap();
    let id = create(&app, &owner).await;
    let read = "query($id: ID!) { serviceRequest(id: $id) { id status } }";

    // Reading.
    assert!(app.gql(Some(&owner), read, json!({"id": id})).await["errors"].is_null());
    assert!(app.gql(Some(&ops), read, json!({"id": id})).await["errors"].is_null());
    assert_eq!(
        error_code(&app.gql(Some(&other), read, json!({"id": id})).await),
        "FORBIDDEN"
    );
    assert_eq!(
        error_code(&app.gql(Some(&worker), read, json!({"id": id})).await),
        "FORBIDDEN"
    );
    assert_eq!(
        error_code(&app.gql(None, read, json!({"id": id})).await),
        "UNAUTHENTICATED"
    );
    assert_eq!(
        error_code(&app.gql(Some("garbage"), read, json!({"id": id})).await),
        "UNAUTHENTICATED"
    );
    assert_eq!(
        error_code(
            &app.gql(Some(&owner), read, json!({"id": Uuid::new_v4()}))
                .await
        ),
        "NOT_FOUND"
    );

    // Listing shows only one's own.
    let list = "{ myServiceRequests { edges { node { id } } } }";
    let mine = app.gql(Some(&owner), list, Value::Null).await;
    assert_eq!(
        mine["data"]["myServiceRequests"]["edges"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let theirs = app.gql(Some(&other), list, Value::Null).await;
    assert_eq!(
        theirs["data"]["myServiceRequests"]["edges"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    assert_eq!(
        error_code(&app.gql(Some(&ops), list, Value::Null).await),
        "FORBIDDEN"
    );

    // The dispatch trail is for ops.
    let trail = "query($id: ID!) { serviceRequest(id: $id) { dispatchTrail { attempt } } }";
    assert!(app.gql(Some(&ops), trail, json!({"id": id})).await["errors"].is_null());
    assert_eq!(
        error_code(&app.gql(Some(&owner), trail, json!({"id": id})).await),
        "FORBIDDEN"
    );

    // Subscribing to someone else's request.
    let mut sub = Subscription::open(&app, &other, id).await;
    let refused = sub.next_message().await;
    assert_eq!(
        refused["payload"]["errors"][0]["extensions"]["code"], "FORBIDDEN",
        "{refused}"
    );
    assert!(refused["payload"]["data"].is_null());
    assert!(
        Subscription::connect(&app, json!({})).await.is_err(),
        "connection_init without a token is refused"
    );

    // Cancelling.
    assert_eq!(
        error_code(&app.gql(Some(&other), CANCEL, json!({"id": id})).await),
        "FORBIDDEN"
    );
    assert_eq!(
        error_code(&app.gql(Some(&worker), CANCEL, json!({"id": id})).await),
        "FORBIDDEN"
    );
    assert!(!app
        .store()
        .get_request(id)
        .await
        .unwrap()
        .status
        .is_terminal());
    let by_ops = app.gql(Some(&ops), CANCEL, json!({"id": id})).await;
    assert_eq!(
        by_ops["data"]["cancelServiceRequest"]["status"], "CANCELLED",
        "{by_ops}"
    );
}

#[tokio::test]
async fn bad_input_gets_a_coded_error_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let customer = app.token(Role::Customer, CUSTOMER);
    let mut cases: Vec<(Value, &str)> = Vec::new();
    for (field, value) in [
        ("squareMeters", json!(0)),
        ("squareMeters", json!(-5)),
        ("squareMeters", json!(1e12)),
        ("description", json!("")),
        ("description", json!("x".repeat(2001))),
        ("address", json!("   ")),
        ("latitude", json!(-31.4201)), // Córdoba latitude with a Buenos Aires longitude: nowhere served
        ("latitude", json!(95.0)),
        ("category", json!("rocket_repair")),
        ("extras", json!(["teleportation"])),
    ] {
        let mut input = create_input(None);
        input["input"][field] = value;
        cases.push((input, field));
    }
    for (input, field) in cases {
        let answer = app.gql(Some(&customer), CREATE, input).await;
        assert_eq!(error_code(&answer), "BAD_USER_INPUT", "{field}: {answer}");
    }
    let count: i64 = sqlx::query_scalar("select count(*) from service_requests")
        .fetch_one(app.store().pool())
        .await
        .unwrap();
    assert_eq!(count, 0);

    let read = "query($id: ID!) { serviceRequest(id: $id) { id } }";
    assert_eq!(
        error_code(
            &app.gql(Some(&customer), read, json!({"id": "not-a-uuid"}))
                .await
        ),
        "BAD_USER_INPUT"
    );
    let page = "query($after: String) { myServiceRequests(after: $after) { edges { cursor } } }";
    assert_eq!(
        error_code(&app.gql(Some(&customer), page, json!({"after": "!!"})).await),
        "BAD_USER_INPUT"
    );
    assert_eq!(
        error_code(
            &app.gql(
                Some(&customer),
                "{ myServiceRequests(first: 1000) { edges { cursor } } }",
                Value::Null
            )
            .await
        ),
        "BAD_USER_INPUT"
    );

    // Query depth is limited: 12 for any document with a field of ours, 20 for one that only
    // introspects (the standard introspection query is 15 deep).
    let deep = |with_field: &str, levels: usize| {
        format!(
            "{{ {with_field} __schema {{ types {{ fields {{ type {{ {} name {} }} }} }} }} }}",
            "ofType {".repeat(levels),
            "}".repeat(levels)
        )
    };
    for query in [
        deep("myServiceRequests { edges { cursor } }", 8),
        deep("", 16),
    ] {
        let answer = app.gql(Some(&customer), &query, Value::Null).await;
        assert!(
            answer["errors"][0]["message"]
                .as_str()
                .unwrap_or("")
                .contains("deep"),
            "{answer}"
        );
        assert_eq!(error_code(&answer), "QUERY_TOO_COMPLEX");
    }
    let answer = app.gql(Some(&customer), &deep("", 8), Value::Null).await;
    assert!(answer["errors"].is_null(), "{answer}");

    // An oversized body is refused before parsing.
    let huge = "a".repeat(arreglame::api::graphql::MAX_BODY_BYTES + 10);
    let status = reqwest::Client::new()
        .post(format!("{}/graphql", app.address))
        .json(&json!({"query": "{ __typename }", "variables": {"x": huge}}))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 413);
}

#[tokio::test]
async fn pages_follow_cursors_and_filter_by_status() {
    let app = TestApp::spawn().await;
    let customer = app.token(Role::Customer, CUSTOMER);
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(create(&app, &customer).await);
    }
    let q = "query($after: String) { myServiceRequests(first: 2, after: $after) { edges { cursor node { id } } pageInfo { hasNextPage endCursor } } }";
    let first = app.gql(Some(&customer), q, json!({"after": null})).await;
    let page = &first["data"]["myServiceRequests"];
    assert_eq!(page["edges"].as_array().unwrap().len(), 2, "{first}");
    assert_eq!(page["pageInfo"]["hasNextPage"], true);
    let second = app
        .gql(
            Some(&customer),
            q,
            json!({"after": page["pageInfo"]["endCursor"]}),
        )
        .await;
    let page2 = &second["data"]["myServiceRequests"];
    assert_eq!(page2["edges"].as_array().unwrap().len(), 1);
    assert_eq!(page2["pageInfo"]["hasNextPage"], false);
    let mut all: Vec<String> = page["edges"]
        .as_array()
        .unwrap()
        .iter()
        .chain(page2["edges"].as_array().unwrap())
        .map(|e| e["node"]["id"].as_str().unwrap().to_string())
        .collect();
    all.sort();
    let mut expected: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
    expected.sort();
    assert_eq!(all, expected);

    // No worker is online: all three end UNASSIGNED; filtering by another status finds none.
    for id in &ids {
        wait_until(PATIENCE, || async {
            app.store().get_request(*id).await.unwrap().status == Status::Unassigned
        })
        .await;
    }
    let by_status = "query($s: Status) { myServiceRequests(status: $s) { edges { node { id } } } }";
    let unassigned = app
        .gql(Some(&customer), by_status, json!({"s": "UNASSIGNED"}))
        .await;
    assert_eq!(
        unassigned["data"]["myServiceRequests"]["edges"]
            .as_array()
            .unwrap()
            .len(),
        3,
        "{unassigned}"
    );
    let assigned = app
        .gql(Some(&customer), by_status, json!({"s": "ASSIGNED"}))
        .await;
    assert_eq!(
        assigned["data"]["myServiceRequests"]["edges"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
}

/// `getIntrospectionQuery()` of the `graphql` npm package 16.15.0 with its default options,
/// byte for byte (17.1.0 returns the same text; scripts/check-graphql-tooling.sh checks the
/// fixture against the installed package). GraphiQL, graphql-codegen, graphql-inspector and
/// Python's `gql` send this document.
const GRAPHQL_JS_INTROSPECTION: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/graphql-js-16.15.0-introspection-query.graphql"
));

#[tokio::test]
async fn the_standard_introspection_query_of_graphql_js_answers() {
    let app = TestApp::spawn().await;
    // As GraphiQL sends it: the operation named, no token.
    let answer: Value = reqwest::Client::new()
        .post(format!("{}/graphql", app.address))
        .json(&json!({"query": GRAPHQL_JS_INTROSPECTION, "operationName": "IntrospectionQuery"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(answer["errors"].is_null(), "{answer}");
    let schema = &answer["data"]["__schema"];
    assert_eq!(schema["queryType"]["name"], "Query", "{answer}");
    assert_eq!(schema["mutationType"]["name"], "Mutation");
    assert_eq!(schema["subscriptionType"]["name"], "Subscription");
    let types = schema["types"].as_array().unwrap();
    let kind_of = |name: &str| {
        types
            .iter()
            .find(|t| t["name"] == name)
            .map(|t| t["kind"].clone())
            .unwrap_or_else(|| panic!("no type {name}"))
    };
    for name in ["Difficulty", "OfferOutcome", "PricingEngine", "Status"] {
        assert_eq!(kind_of(name), "ENUM", "{name}");
    }
    assert!(!schema["directives"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn graphiql_is_served_in_development_with_every_asset_from_the_engine() {
    let app = TestApp::spawn().await;
    let page = reqwest::get(format!("{}/graphql", app.address))
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = page.text().await.unwrap();
    assert!(html.contains("GraphiQL"), "{html}");
    // No external host anywhere in the page: no URL with a host after its scheme (the page
    // builds ws:// + its own location.host), no protocol-relative URL, no known CDN.
    for (at, _) in html.match_indices("://") {
        let next = html[at + 3..].chars().next().unwrap_or(' ');
        assert!(
            !(next.is_ascii_alphanumeric() || next == '['),
            "the page names a host: {}",
            &html[at.saturating_sub(10)..(at + 40).min(html.len())]
        );
    }
    for external in ["\"//", "'//", "unpkg", "jsdelivr", "esm.sh", "cdnjs"] {
        assert!(!html.contains(external), "the page names {external}");
    }
    // Every src= and href= is one of the engine's assets, and each is served.
    let mut referenced = Vec::new();
    for attribute in ["src=\"", "href=\""] {
        for (start, _) in html.match_indices(attribute) {
            let rest = &html[start + attribute.len()..];
            referenced.push(rest[..rest.find('"').unwrap()].to_string());
        }
    }
    assert_eq!(referenced.len(), 4, "{referenced:?}");
    for path in &referenced {
        assert!(path.starts_with("/graphql/assets/"), "{path}");
        let asset = reqwest::get(format!("{}{path}", app.address))
            .await
            .unwrap();
        assert_eq!(asset.status(), 200, "{path}");
        let content_type = asset.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_string();
        let expected = if path.ends_with(".css") {
            "text/css"
        } else {
            "text/javascript"
        };
        assert!(content_type.starts_with(expected), "{path}: {content_type}");
        let body = asset.bytes().await.unwrap();
        assert!(body.len() > 5_000, "{path}: {} bytes", body.len());
    }
    let missing = reqwest::get(format!("{}/graphql/assets/nope.js", app.address))
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

#[tokio::test]
async fn production_serves_no_graphiql_and_no_assets() {
    let app = TestApp::spawn_with(&[
        ("APP_ENV", "production"),
        ("JWT_SECRET", "a-production-secret-of-32-characters!"),
    ])
    .await;
    for path in ["/graphql", "/graphql/assets/graphiql-3.9.0.min.js"] {
        let status = reqwest::get(format!("{}{path}", app.address))
            .await
            .unwrap()
            .status();
        assert!(status == 404 || status == 405, "{path}: {status}");
    }
}

/// A family's value in a scrape, summed over the label sets whose line has every `label`.
fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter(|l| labels.iter().all(|label| l.contains(label)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn every_operation_is_timed_by_name_and_type_and_every_error_counted_by_code() {
    let app = TestApp::spawn().await;
    let ops = app.token(Role::Ops, Uuid::new_v4());
    let customer = app.token(Role::Customer, CUSTOMER);
    let scrape = || async {
        let response = reqwest::Client::new()
            .get(format!("{}/metrics", app.address))
            .bearer_auth(&ops)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.text().await.unwrap()
    };
    let duration = "arreglame_graphql_operation_duration_seconds_count";
    let errors = "arreglame_graphql_errors_total";
    let before = scrape().await;

    let named = "mutation MetricsEstimate { estimateJob(input: {description: \"pasto\", squareMeters: 10}) { price { total } } }";
    for _ in 0..2 {
        let answer = app.gql(None, named, Value::Null).await;
        assert!(answer["errors"].is_null(), "{answer}");
    }
    let answer = app.gql(None, "{ __typename }", Value::Null).await;
    assert_eq!(answer["data"]["__typename"], "Query");
    // Refusals: two UNAUTHENTICATED, one GRAPHQL_VALIDATION_FAILED, one GRAPHQL_PARSE_FAILED.
    for _ in 0..2 {
        let answer = app
            .gql(
                None,
                "query MetricsRead { myServiceRequests { edges { cursor } } }",
                Value::Null,
            )
            .await;
        assert_eq!(error_code(&answer), "UNAUTHENTICATED");
    }
    assert_eq!(
        error_code(&app.gql(None, "{ noSuchField }", Value::Null).await),
        "GRAPHQL_VALIDATION_FAILED"
    );
    assert_eq!(
        error_code(&app.gql(None, "{ __typename ", Value::Null).await),
        "GRAPHQL_PARSE_FAILED"
    );
    // A subscription over graphql-ws: timed to its first message (the snapshot).
    let id = create(&app, &customer).await;
    let mut sub = Subscription::connect(
        &app,
        json!({"headers": {"Authorization": format!("Bearer {customer}")}}),
    )
    .await
    .unwrap();
    let query = "subscription MetricsWatch($id: ID!) { serviceRequestUpdated(id: $id) { event } }";
    let msg = json!({"id": "1", "type": "subscribe", "payload": {"query": query, "variables": {"id": id}, "operationName": "MetricsWatch"}});
    sub.ws.send(Message::text(msg.to_string())).await.unwrap();
    let first = sub.next_message().await;
    assert_eq!(
        first["payload"]["data"]["serviceRequestUpdated"]["event"], "Snapshot",
        "{first}"
    );

    let after = wait_for(PATIENCE, || async {
        let text = scrape().await;
        let delta =
            |labels: &[&str]| metric(&text, duration, labels) - metric(&before, duration, labels);
        (delta(&["operation=\"MetricsWatch\"", "type=\"subscription\""]) >= 1.0).then_some(text)
    })
    .await;
    let delta =
        |name: &str, labels: &[&str]| metric(&after, name, labels) - metric(&before, name, labels);
    assert!(
        after.contains("# TYPE arreglame_graphql_operation_duration_seconds histogram"),
        "{after}"
    );
    assert!(
        after.contains("# TYPE arreglame_graphql_errors_total counter"),
        "{after}"
    );
    // The estimate's second send reused the first one's parse; the refused documents were
    // parsed (or failed to parse) each time.
    let documents = "arreglame_graphql_documents_total";
    assert!(delta(documents, &["source=\"cache\""]) >= 1.0, "{after}");
    assert!(delta(documents, &["source=\"parsed\""]) >= 4.0, "{after}");
    assert_eq!(
        delta(
            duration,
            &["operation=\"MetricsEstimate\"", "type=\"mutation\""]
        ),
        2.0
    );
    assert_eq!(
        delta(duration, &["operation=\"MetricsRead\"", "type=\"query\""]),
        2.0
    );
    assert!(delta(duration, &["operation=\"anonymous\"", "type=\"query\""]) >= 2.0);
    assert_eq!(
        delta(
            duration,
            &["operation=\"MetricsWatch\"", "type=\"subscription\""]
        ),
        1.0
    );
    assert_eq!(delta(errors, &["code=\"UNAUTHENTICATED\""]), 2.0);
    assert_eq!(delta(errors, &["code=\"GRAPHQL_VALIDATION_FAILED\""]), 1.0);
    assert_eq!(delta(errors, &["code=\"GRAPHQL_PARSE_FAILED\""]), 1.0);
    // The histogram's sum moved too: real durations, in seconds.
    let sum = "arreglame_graphql_operation_duration_seconds_sum";
    let took = delta(sum, &["operation=\"MetricsEstimate\""]);
    assert!(took > 0.0 && took < 60.0, "{took}");
}

/// Issue 15: a customer books a slot over GraphQL; bad slots are `BAD_USER_INPUT` and
/// create nothing; when the assigned worker gives the job back, the customer's
/// subscription sees it go back to dispatch.
#[tokio::test]
async fn a_booked_slot_is_scheduled_bad_slots_are_refused_and_the_subscription_sees_a_worker_cancel(
) {
    use chrono::{Duration, SubsecRound, Utc};
    let app = TestApp::spawn().await;
    let customer = app.token(Role::Customer, CUSTOMER);
    let booking = |start: chrono::DateTime<Utc>, end: chrono::DateTime<Utc>| {
        let mut input = create_input(None);
        input["input"]["scheduledStart"] = json!(start.to_rfc3339());
        input["input"]["scheduledEnd"] = json!(end.to_rfc3339());
        input
    };
    const BOOK: &str = r#"mutation($input: CreateServiceRequestInput!) {
      createServiceRequest(input: $input) { id status scheduledStart scheduledEnd }
    }"#;
    let saturday_10 = (Utc::now() + Duration::days(4)).trunc_subsecs(0);
    let answer = app
        .gql(
            Some(&customer),
            BOOK,
            booking(saturday_10, saturday_10 + Duration::hours(2)),
        )
        .await;
    let booked = &answer["data"]["createServiceRequest"];
    assert_eq!(booked["status"], "SCHEDULED", "{answer}");
    let start: chrono::DateTime<Utc> = booked["scheduledStart"].as_str().unwrap().parse().unwrap();
    assert_eq!(start, saturday_10);
    let rows = || async {
        sqlx::query_scalar::<_, i64>("select count(*) from service_requests")
            .fetch_one(app.store().pool())
            .await
            .unwrap()
    };
    let before = rows().await;
    let now = Utc::now();
    let mut half = create_input(None);
    half["input"]["scheduledStart"] = json!(saturday_10.to_rfc3339());
    for (bad, why) in [
        (
            booking(now - Duration::hours(1), now + Duration::hours(1)),
            "in the past",
        ),
        (
            booking(saturday_10, saturday_10 - Duration::hours(1)),
            "after scheduledStart",
        ),
        (
            booking(saturday_10, saturday_10 + Duration::hours(9)),
            "max_slot_hours",
        ),
        (
            booking(
                now + Duration::days(45),
                now + Duration::days(45) + Duration::hours(1),
            ),
            "booking_horizon_days",
        ),
        (half, "both or neither"),
    ] {
        let answer = app.gql(Some(&customer), BOOK, bad).await;
        assert_eq!(error_code(&answer), "BAD_USER_INPUT", "{answer}");
        let message = answer["errors"][0]["message"].as_str().unwrap();
        assert!(message.contains(why), "{message}");
    }
    assert_eq!(rows().await, before, "a refused booking writes nothing");

    // A job wanted now: assigned, then given back by the worker.
    let dispatcher = app.handle.state.dispatcher.clone();
    let worker = app.worker_online(LON + 0.001, LAT).await;
    let id = create(&app, &customer).await;
    let mut sub = Subscription::open(&app, &customer, id).await;
    let offer = wait_offer(&app, id).await;
    dispatcher.accept_offer(worker, id, offer).await.unwrap();
    loop {
        if sub.next_status().await == "ASSIGNED" {
            break;
        }
    }
    dispatcher
        .cancel_assignment(worker, id, Some("sick".into()))
        .await
        .unwrap();
    let released = loop {
        let v = sub.next_message().await;
        let update = v["payload"]["data"]["serviceRequestUpdated"].clone();
        if update["event"] == "AssignmentReleased" {
            break update;
        }
    };
    assert_eq!(released["status"], "PENDING", "{released}");
    assert!(released["assignedWorker"].is_null(), "{released}");
}
