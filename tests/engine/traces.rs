//! Issue 17, traces: the engine binary with `OTEL_EXPORTER_OTLP_ENDPOINT` set exports its
//! spans over OTLP/HTTP to a local receiver that decodes them with the real protobuf types;
//! one trace follows a request from the GraphQL create through its actor to the offer
//! frame, every span carrying `request_id`.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use arreglame::auth::{Role, TokenKeys};
use axum::{body::Bytes, extract::State, routing::post, Router};
use futures::{SinkExt, StreamExt};
use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest, common::v1::any_value,
};
use prost::Message as _;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

use crate::helpers::*;

/// One exported span, as the receiver decoded it.
#[derive(Debug, Clone)]
struct Received {
    name: String,
    span_id: Vec<u8>,
    parent: Vec<u8>,
    trace_id: Vec<u8>,
    attributes: HashMap<String, String>,
}

type Spans = Arc<Mutex<Vec<Received>>>;

async fn export(State(spans): State<Spans>, body: Bytes) -> &'static str {
    let request = ExportTraceServiceRequest::decode(body).expect("an OTLP trace export");
    let mut spans = spans.lock().unwrap();
    for resource in request.resource_spans {
        for scope in resource.scope_spans {
            for span in scope.spans {
                let attributes = span
                    .attributes
                    .iter()
                    .map(|kv| {
                        let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                            Some(any_value::Value::StringValue(s)) => s.clone(),
                            Some(other) => format!("{other:?}"),
                            None => String::new(),
                        };
                        (kv.key.clone(), value)
                    })
                    .collect();
                spans.push(Received {
                    name: span.name.clone(),
                    span_id: span.span_id.clone(),
                    parent: span.parent_span_id.clone(),
                    trace_id: span.trace_id.clone(),
                    attributes,
                });
            }
        }
    }
    ""
}

#[tokio::test]
async fn one_trace_follows_a_request_from_the_create_to_the_offer_frame() {
    // The receiver.
    let spans: Spans = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let receiver = format!("http://{}", listener.local_addr().unwrap());
    let app = Router::new()
        .route("/v1/traces", post(export))
        .with_state(spans.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    // The engine binary, exporting to it.
    let url = fresh_database().await;
    let port = free_port();
    let mut engine = tokio::process::Command::new(env!("CARGO_BIN_EXE_arreglame"))
        .arg("serve")
        .env("DATABASE_URL", &url)
        .env("PORT", port.to_string())
        .env("HOST", "127.0.0.1")
        .env("JWT_SECRET", "trace-secret")
        .env("LOG_LEVEL", "warn")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver)
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env_remove("NATS_URL")
        .env_remove("LOG_FILE")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    wait_until(PATIENCE, || async {
        reqwest::get(format!("{base}/health")).await.is_ok()
    })
    .await;

    // A worker online nearby, then a customer's create.
    let store = arreglame::store::Store::connect(&url, 2).await.unwrap();
    let worker = insert_worker(&store, "buenos-aires").await;
    let keys = TokenKeys::new("trace-secret");
    let ws_url = format!("ws://127.0.0.1:{port}/ws/worker");
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url).await.unwrap();
    let token = keys.issue(Role::Worker, worker, Duration::from_secs(600));
    let send = |kind: &str, id: &str, data: Value| {
        Message::text(json!({"v":1,"type":kind,"id":id,"data":data}).to_string())
    };
    ws.send(send("auth", "a", json!({"token": token})))
        .await
        .unwrap();
    ws.send(send("go_online", "o", json!({"lat": LAT, "lon": LON})))
        .await
        .unwrap();
    // Online before the create, or the request may find nobody and end UNASSIGNED.
    tokio::time::timeout(PATIENCE, async {
        loop {
            if let Some(Ok(Message::Text(t))) = ws.next().await {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if v["replyTo"] == "o" {
                    assert_eq!(v["type"], "ok", "{v}");
                    return;
                }
            }
        }
    })
    .await
    .expect("go_online answered");
    let customer = keys.issue(Role::Customer, CUSTOMER, Duration::from_secs(600));
    let created: Value = reqwest::Client::new()
        .post(format!("{base}/graphql"))
        .bearer_auth(customer)
        .json(&json!({
            "query": "mutation($i: CreateServiceRequestInput!) { createServiceRequest(input: $i) { id } }",
            "variables": {"i": {"latitude": LAT, "longitude": LON, "address": "Av. Corrientes 1234",
                                "description": "Corte de pasto", "squareMeters": 100}}
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let request_id = created["data"]["createServiceRequest"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{created}"))
        .to_string();
    // The offer frame reaches the worker.
    let offer = tokio::time::timeout(PATIENCE, async {
        loop {
            if let Some(Ok(Message::Text(t))) = ws.next().await {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if v["type"] == "offer" {
                    return v;
                }
            }
        }
    })
    .await
    .expect("an offer frame");
    assert_eq!(offer["data"]["requestId"], request_id.as_str());

    // The receiver gets one trace with the create, the dispatch, the transition and the
    // offer frame, each carrying the request's id.
    let wanted = [
        "createServiceRequest",
        "dispatch",
        "transition",
        "offer_frame",
    ];
    let trace = wait_for(PATIENCE, || {
        let spans = spans.lock().unwrap().clone();
        let request_id = request_id.clone();
        async move {
            let root = spans.iter().find(|s| {
                s.name == "createServiceRequest"
                    && s.attributes.get("request_id") == Some(&request_id)
            })?;
            let same: Vec<&Received> = spans
                .iter()
                .filter(|s| s.trace_id == root.trace_id)
                .collect();
            wanted
                .iter()
                .all(|name| same.iter().any(|s| s.name == *name))
                .then(|| same.into_iter().cloned().collect::<Vec<_>>())
        }
    })
    .await;
    for name in wanted {
        let span = trace.iter().find(|s| s.name == name).unwrap();
        assert_eq!(
            span.attributes.get("request_id"),
            Some(&request_id),
            "{name}: {span:?}"
        );
    }
    // And they nest: create → dispatch → (transition, offer frame).
    let id_of = |name: &str| {
        trace
            .iter()
            .find(|s| s.name == name)
            .unwrap()
            .span_id
            .clone()
    };
    let parent_of = |name: &str| {
        trace
            .iter()
            .find(|s| s.name == name)
            .unwrap()
            .parent
            .clone()
    };
    assert_eq!(parent_of("dispatch"), id_of("createServiceRequest"));
    assert_eq!(parent_of("transition"), id_of("dispatch"));
    assert_eq!(parent_of("offer_frame"), id_of("dispatch"));
    assert!(Uuid::parse_str(&request_id).is_ok());
    let _ = engine.kill().await;
}
