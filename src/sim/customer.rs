//! Simulated customers: real GraphQL clients creating requests open-loop (issue 13).
//!
//! Request `n` is due at `start + n / rate`, and is sent then whether or not earlier
//! creates have been answered: a slow engine makes answers late, never requests fewer
//! (a closed loop, or a ticker that drops missed ticks, quietly offers less load than asked
//! and hides the queueing it causes). Latencies count from the due time, so time spent
//! waiting to be sent is the engine's delay too (coordinated omission, as wrk2 corrects it).

use std::{
    collections::{HashMap, HashSet},
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{behaviour::mix, random_point, report::Bars, Created, Fleet, Rng};
use crate::auth::Role;

const CREATE: &str =
    "mutation($i: CreateServiceRequestInput!) { createServiceRequest(input: $i) { id status } }";
const CANCEL: &str =
    "mutation($id: ID!) { cancelServiceRequest(id: $id, reason: \"simulated\") { status } }";
const STATUSES: &str = "query($a: String) { myServiceRequests(first: 100, after: $a) { edges { node { id status } } pageInfo { hasNextPage endCursor } } }";

/// The description tag that carries a request's index in the run to the worker's offer
/// frame, so that a worker's answer to request n is the same draw in every compared mode.
const TAG: &str = "(simulado #";

/// The request index tagged in an offer's description.
pub fn index_in(description: &str) -> Option<u64> {
    let rest = &description[description.find(TAG)? + TAG.len()..];
    rest[..rest.find(')')?].parse().ok()
}

#[derive(Serialize)]
struct GraphqlRequest<'a, V: Serialize> {
    query: &'a str,
    variables: V,
}

#[derive(Serialize)]
struct CreateVariables {
    i: CreateInput,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CreateInput {
    latitude: f64,
    longitude: f64,
    address: &'static str,
    description: String,
    idempotency_key: String,
    square_meters: f64,
    /// Booked requests only: an engine without slots rejects the unknown fields.
    #[serde(skip_serializing_if = "Option::is_none")]
    scheduled_start: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scheduled_end: Option<DateTime<Utc>>,
}

#[derive(Serialize)]
struct IdVariables {
    id: Uuid,
}

#[derive(Serialize)]
struct PageVariables {
    a: Option<String>,
}

#[derive(Deserialize)]
struct Answer<T> {
    data: Option<T>,
    #[serde(default)]
    errors: Vec<GraphqlError>,
}

#[derive(Deserialize)]
struct GraphqlError {
    #[serde(default)]
    extensions: Option<ErrorExtensions>,
}

#[derive(Deserialize)]
struct ErrorExtensions {
    #[serde(default)]
    code: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateData {
    create_service_request: Option<Node>,
}

#[derive(Deserialize)]
struct Node {
    id: Uuid,
    #[serde(default)]
    status: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StatusData {
    my_service_requests: Page,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Page {
    edges: Vec<Edge>,
    page_info: PageInfo,
}

#[derive(Deserialize)]
struct Edge {
    node: Node,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PageInfo {
    has_next_page: bool,
    end_cursor: Option<String>,
}

/// What request `n` of a run is: the same in every run with the same seed.
struct Planned {
    input: CreateInput,
    booked: bool,
    cancel: bool,
}

fn plan(fleet: &Fleet, n: u64) -> Planned {
    let args = &fleet.args;
    let mut rng = Rng::new(mix(args.seed, 0xC057, n));
    let (lon, lat) = random_point(&fleet.city, &mut rng);
    let m2 = 20.0 + rng.next_f64() * 480.0;
    let booked = rng.next_f64() < args.booked_share;
    let cancel = rng.next_f64() < args.cancel_rate;
    let (scheduled_start, scheduled_end) = if booked {
        let start =
            Utc::now() + chrono::Duration::milliseconds((args.slot_in_seconds * 1e3) as i64);
        let end = start + chrono::Duration::milliseconds((args.slot_seconds * 1e3) as i64);
        (Some(start), Some(end))
    } else {
        (None, None)
    };
    Planned {
        input: CreateInput {
            latitude: lat,
            longitude: lon,
            address: "Calle simulada 123",
            description: format!("Corte de pasto {TAG}{n})"),
            // A create retried on another node (its first one unreachable) is the same
            // request, never a second one.
            idempotency_key: format!("sim-{n}"),
            square_meters: (m2 * 10.0).round() / 10.0,
            scheduled_start,
            scheduled_end,
        },
        booked,
        cancel,
    }
}

/// Creates `rate` requests per second from `start` for `duration`, round-robin over the
/// customers, each at its due time. Returns (request id, owning customer) of every created
/// request.
pub async fn run_all(fleet: Arc<Fleet>, bars: &Bars, start: Instant) -> Vec<(Uuid, Uuid)> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .build()
        .expect("http client");
    let tokens: Vec<(Uuid, Arc<str>)> = fleet
        .customer_ids
        .iter()
        .map(|c| (*c, fleet.token(Role::Customer, *c).into()))
        .collect();
    let rate = fleet.args.rate.max(0.001);
    let due_count = (fleet.args.duration.as_secs_f64() * rate).ceil() as u64;
    let measured_from = start + fleet.args.effective_warmup();
    let mut inflight = tokio::task::JoinSet::new();
    let mut created = Vec::new();
    for n in 0..due_count {
        if fleet.stop_creating.load(Ordering::Relaxed) {
            break;
        }
        let intended = start + Duration::from_secs_f64(n as f64 / rate);
        // Late (the loop was starved)? Send at once: the due time stays the reference.
        tokio::time::sleep_until(intended.into()).await;
        fleet.stats.due.fetch_add(1, Ordering::Relaxed);
        let (customer, token) = tokens[n as usize % tokens.len()].clone();
        let planned = plan(&fleet, n);
        let (client, fleet2) = (client.clone(), fleet.clone());
        let measured = intended >= measured_from;
        inflight.spawn(async move {
            let id = create(&client, &fleet2, n, &token, planned.input).await;
            let answered = Instant::now();
            let id = match id {
                Ok(id) => id,
                Err(code) => {
                    fleet2.stats.create_errors.fetch_add(1, Ordering::Relaxed);
                    *fleet2
                        .stats
                        .error_codes
                        .lock()
                        .unwrap()
                        .entry(code)
                        .or_default() += 1;
                    return None;
                }
            };
            fleet2.stats.created.fetch_add(1, Ordering::Relaxed);
            let seen = Created {
                intended,
                answered,
                booked: planned.booked,
                measured,
            };
            fleet2.stats.created_at.lock().unwrap().insert(id, seen);
            fleet2.stats.owners.lock().unwrap().insert(id, customer);
            if planned.cancel {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let body = GraphqlRequest {
                    query: CANCEL,
                    variables: IdVariables { id },
                };
                let _ = post(&client, &fleet2, n, &token, &body).await;
                fleet2.stats.cancels_sent.fetch_add(1, Ordering::Relaxed);
            }
            Some((id, customer))
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

/// POSTs to the `n`th node of `--url`, and to the next ones while a node cannot be reached
/// (connection refused: a node that died) or dropped the connection before answering (a
/// node killed after it took the request, which may have committed it: the create's
/// idempotency key makes the next node answer with the same request instead of a second
/// one). A node that is only slow is not tried again (a timeout is the run's answer).
async fn post<V: Serialize>(
    client: &reqwest::Client,
    fleet: &Fleet,
    n: u64,
    token: &str,
    body: &GraphqlRequest<'_, V>,
) -> reqwest::Result<reqwest::Response> {
    post_to(client, &fleet.args.urls(), n, token, body).await
}

async fn post_to<V: Serialize>(
    client: &reqwest::Client,
    urls: &[&str],
    n: u64,
    token: &str,
    body: &GraphqlRequest<'_, V>,
) -> reqwest::Result<reqwest::Response> {
    let nodes = urls.len().max(1) as u64;
    let mut attempt = 0;
    loop {
        let url = urls[((n + attempt) % nodes) as usize];
        let sent = client
            .post(format!("{url}/graphql"))
            .bearer_auth(token)
            .json(body)
            .send()
            .await;
        match sent {
            Err(e)
                if (e.is_connect() || e.is_request()) && !e.is_timeout() && attempt + 1 < nodes =>
            {
                attempt += 1
            }
            other => return other,
        }
    }
}

/// Creates one request; on failure, what went wrong: the GraphQL error code, or the
/// transport's failure.
async fn create(
    client: &reqwest::Client,
    fleet: &Fleet,
    n: u64,
    token: &str,
    input: CreateInput,
) -> Result<Uuid, String> {
    let body = GraphqlRequest {
        query: CREATE,
        variables: CreateVariables { i: input },
    };
    let response = post(client, fleet, n, token, &body).await.map_err(|e| {
        if e.is_timeout() {
            "create TIMEOUT"
        } else {
            "create HTTP_FAILED"
        }
        .to_string()
    })?;
    let status = response.status();
    let answer: Answer<CreateData> = response
        .json()
        .await
        .map_err(|_| format!("create HTTP_{}", status.as_u16()))?;
    if let Some(node) = answer.data.and_then(|d| d.create_service_request) {
        return Ok(node.id);
    }
    let code = answer
        .errors
        .into_iter()
        .find_map(|e| e.extensions?.code)
        .unwrap_or_else(|| "UNKNOWN".into());
    Err(format!("create {code}"))
}

/// Cancels, as their customers, the requests still open at the end of a run (so a next
/// run does not dispatch them). Best effort: one that moved on meanwhile refuses.
pub async fn cancel_open(fleet: &Fleet, finals: &HashMap<Uuid, String>) {
    let open: Vec<Uuid> = finals
        .iter()
        .filter(|(_, s)| {
            matches!(
                s.as_str(),
                "SCHEDULED" | "PENDING" | "OFFERING" | "ASSIGNED"
            )
        })
        .map(|(id, _)| *id)
        .collect();
    if open.is_empty() {
        return;
    }
    let owners: HashMap<Uuid, Uuid> = fleet.stats.owners.lock().unwrap().clone();
    let client = reqwest::Client::new();
    for (n, id) in open.into_iter().enumerate() {
        let Some(customer) = owners.get(&id) else {
            continue;
        };
        let token = fleet.token(Role::Customer, *customer);
        let body = GraphqlRequest {
            query: CANCEL,
            variables: IdVariables { id },
        };
        let _ = post(&client, fleet, n as u64, &token, &body).await;
    }
}

/// Reads every created request's status back over GraphQL, as its customer.
pub async fn final_statuses(fleet: &Fleet, created: &[(Uuid, Uuid)]) -> HashMap<Uuid, String> {
    let client = reqwest::Client::new();
    let mut by_customer: HashMap<Uuid, HashSet<Uuid>> = HashMap::new();
    for (request, customer) in created {
        by_customer.entry(*customer).or_default().insert(*request);
    }
    let mut out = HashMap::new();
    for (customer, wanted) in by_customer {
        let token = fleet.token(Role::Customer, customer);
        // Page through the customer's requests (newest first).
        let mut after: Option<String> = None;
        loop {
            let body = GraphqlRequest {
                query: STATUSES,
                variables: PageVariables { a: after.take() },
            };
            let Ok(resp) = post(&client, fleet, 0, &token, &body).await else {
                break;
            };
            let Some(page) = resp
                .json::<Answer<StatusData>>()
                .await
                .ok()
                .and_then(|a| a.data)
                .map(|d| d.my_service_requests)
            else {
                break;
            };
            for edge in page.edges {
                if wanted.contains(&edge.node.id) {
                    out.insert(edge.node.id, edge.node.status);
                }
            }
            if !page.page_info.has_next_page {
                break;
            }
            after = page.page_info.end_cursor;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node that reads the request and drops the connection (killed after taking it): the
    /// create goes to the next node, with the same body (and so the same idempotency key).
    #[tokio::test]
    async fn a_create_whose_node_drops_the_connection_is_sent_to_the_next_node() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dropping = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let answering = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let urls = [
            format!("http://{}", dropping.local_addr().unwrap()),
            format!("http://{}", answering.local_addr().unwrap()),
        ];
        tokio::spawn(async move {
            let (mut socket, _) = dropping.accept().await.unwrap();
            let mut request = [0u8; 4096];
            let _ = socket.read(&mut request).await;
            // Dropped here, before any answer.
        });
        let seen = tokio::spawn(async move {
            let (mut socket, _) = answering.accept().await.unwrap();
            let mut request = vec![0u8; 8192];
            let n = socket.read(&mut request).await.unwrap();
            let body = "{\"data\":{}}";
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            socket.write_all(answer.as_bytes()).await.unwrap();
            String::from_utf8_lossy(&request[..n]).to_string()
        });
        let body = GraphqlRequest {
            query: "mutation { x }",
            variables: serde_json::json!({"i": {"idempotencyKey": "sim-7"}}),
        };
        let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
        let response = post_to(&reqwest::Client::new(), &urls, 0, "token", &body)
            .await
            .expect("the second node answers");
        assert_eq!(response.status(), 200);
        assert!(
            seen.await.unwrap().contains("sim-7"),
            "the same idempotency key"
        );
    }

    #[test]
    fn the_request_index_travels_in_the_description() {
        assert_eq!(index_in("Corte de pasto (simulado #42)"), Some(42));
        assert_eq!(index_in("Corte de pasto"), None);
        assert_eq!(index_in("(simulado #x)"), None);
    }
}
