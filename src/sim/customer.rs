//! Simulated customers: real GraphQL clients creating requests at a steady total rate.

use std::{
    collections::HashMap,
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use serde_json::{json, Value};
use uuid::Uuid;

use super::{random_point, report::Bars, Fleet, Rng};
use crate::auth::Role;

const CREATE: &str =
    "mutation($i: CreateServiceRequestInput!) { createServiceRequest(input: $i) { id status } }";

/// Creates requests at `rate` per second, round-robin over the customers, for `duration`.
/// Returns (request id, owning customer) of every created request.
pub async fn run_all(fleet: Arc<Fleet>, bars: &Bars) -> Vec<(Uuid, Uuid)> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .expect("http client");
    let tokens: Vec<(Uuid, String)> = fleet
        .customer_ids
        .iter()
        .map(|c| (*c, fleet.token(Role::Customer, *c)))
        .collect();
    let period = Duration::from_secs_f64(1.0 / fleet.args.rate.max(0.001));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let end = Instant::now() + fleet.args.duration;
    let mut inflight = tokio::task::JoinSet::new();
    let mut created = Vec::new();
    let mut n = 0usize;
    let mut rng = Rng::new(0xC0FFEE);
    while Instant::now() < end && !fleet.stop_creating.load(Ordering::Relaxed) {
        tick.tick().await;
        let (customer, token) = tokens[n % tokens.len()].clone();
        n += 1;
        let (lon, lat) = random_point(&fleet.city, &mut rng);
        let m2 = 20.0 + rng.next_f64() * 480.0;
        let cancel = rng.next_f64() < fleet.args.cancel_rate;
        let (client, fleet2) = (client.clone(), fleet.clone());
        inflight.spawn(async move {
            let input = json!({"i": {"latitude": lat, "longitude": lon, "address": "Calle simulada 123",
                "description": "Corte de pasto (simulado)", "squareMeters": (m2 * 10.0).round() / 10.0}});
            let sent = Instant::now();
            let answer = client
                .post(format!("{}/graphql", fleet2.args.url))
                .bearer_auth(&token)
                .json(&json!({"query": CREATE, "variables": input}))
                .send()
                .await;
            let answered = Instant::now();
            let id = match answer {
                Ok(r) => r.json::<Value>().await.ok().and_then(|v| v["data"]["createServiceRequest"]["id"].as_str().and_then(|s| s.parse::<Uuid>().ok())),
                Err(_) => None,
            };
            match id {
                Some(id) => {
                    fleet2.stats.created.fetch_add(1, Ordering::Relaxed);
                    fleet2.stats.created_at.lock().unwrap().insert(id, (sent, answered));
                    if cancel {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        let q = "mutation($id: ID!) { cancelServiceRequest(id: $id, reason: \"simulated\") { status } }";
                        let _ = client
                            .post(format!("{}/graphql", fleet2.args.url))
                            .bearer_auth(&token)
                            .json(&json!({"query": q, "variables": {"id": id}}))
                            .send()
                            .await;
                        fleet2.stats.cancels_sent.fetch_add(1, Ordering::Relaxed);
                    }
                    Some((id, customer))
                }
                None => {
                    fleet2.stats.create_errors.fetch_add(1, Ordering::Relaxed);
                    None
                }
            }
        });
        while let Some(done) = inflight.try_join_next() {
            if let Ok(Some(pair)) = done {
                created.push(pair);
            }
        }
        bars.tick(&fleet);
    }
    while let Some(done) = inflight.join_next().await {
        if let Ok(Some(pair)) = done {
            created.push(pair);
        }
    }
    created
}

/// Reads every created request's status back over GraphQL, as its customer.
pub async fn final_statuses(fleet: &Fleet, created: &[(Uuid, Uuid)]) -> HashMap<Uuid, String> {
    let client = reqwest::Client::new();
    let mut by_customer: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
    for (request, customer) in created {
        by_customer.entry(*customer).or_default().push(*request);
    }
    let mut out = HashMap::new();
    for (customer, requests) in by_customer {
        let token = fleet.token(Role::Customer, customer);
        // Page through the customer's requests (newest first).
        let mut after: Option<String> = None;
        let wanted: std::collections::HashSet<Uuid> = requests.into_iter().collect();
        loop {
            let q = "query($a: String) { myServiceRequests(first: 100, after: $a) { edges { node { id status } } pageInfo { hasNextPage endCursor } } }";
            let Ok(resp) = client
                .post(format!("{}/graphql", fleet.args.url))
                .bearer_auth(&token)
                .json(&json!({"query": q, "variables": {"a": after}}))
                .send()
                .await
            else {
                break;
            };
            let Ok(v) = resp.json::<Value>().await else {
                break;
            };
            let page = &v["data"]["myServiceRequests"];
            for edge in page["edges"].as_array().into_iter().flatten() {
                if let (Some(id), Some(status)) = (
                    edge["node"]["id"].as_str().and_then(|s| s.parse().ok()),
                    edge["node"]["status"].as_str(),
                ) {
                    if wanted.contains(&id) {
                        out.insert(id, status.to_string());
                    }
                }
            }
            if page["pageInfo"]["hasNextPage"] != true {
                break;
            }
            after = page["pageInfo"]["endCursor"].as_str().map(str::to_string);
        }
    }
    out
}
