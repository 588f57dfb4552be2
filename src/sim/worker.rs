//! One simulated worker: a real WebSocket client of `/ws/worker` (docs/worker-protocol.md).

use std::{
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

use super::{random_point, Fleet, Rng};
use crate::auth::Role;

/// Follows a worker for the whole run, reconnecting with backoff when the engine restarts.
pub async fn run(fleet: Arc<Fleet>, worker_id: Uuid, index: u64) {
    let mut rng = Rng::new(index + 1);
    let mut position = random_point(&fleet.city, &mut rng);
    let mut last_seq = 0u64;
    let mut backoff = Duration::from_millis(200);
    let mut first = true;
    while !fleet.stop_all.load(Ordering::Relaxed) {
        if !first {
            fleet.stats.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        first = false;
        if session(&fleet, worker_id, &mut rng, &mut position, &mut last_seq)
            .await
            .is_ok()
        {
            backoff = Duration::from_millis(200);
        }
        if fleet.stop_all.load(Ordering::Relaxed) {
            break;
        }
        // Jittered exponential backoff, capped at 5 s.
        let jitter = Duration::from_millis((rng.next_f64() * 200.0) as u64);
        tokio::time::sleep(backoff + jitter).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

fn envelope(kind: &str, id: &str, data: Value) -> Message {
    Message::text(json!({"v": 1, "type": kind, "id": id, "data": data}).to_string())
}

/// What a job timer reports back to the session loop.
enum JobStep {
    Start(Uuid),
    Complete(Uuid),
}

async fn session(
    fleet: &Fleet,
    worker_id: Uuid,
    rng: &mut Rng,
    position: &mut (f64, f64),
    last_seq: &mut u64,
) -> anyhow::Result<()> {
    let url = format!("{}/ws/worker", fleet.args.url.replacen("http", "ws", 1));
    let (ws, _) = tokio_tungstenite::connect_async(url).await?;
    let (mut tx, mut rx) = ws.split();
    let token = fleet.token(Role::Worker, worker_id);
    tx.send(envelope(
        "auth",
        "auth",
        json!({"token": token, "lastSeq": *last_seq}),
    ))
    .await?;
    let mut heartbeat = Duration::from_secs(15);
    // Wait for auth_ok (or a close).
    loop {
        let Some(msg) = rx.next().await else {
            anyhow::bail!("closed during auth")
        };
        if let Message::Text(t) = msg? {
            let v: Value = serde_json::from_str(&t)?;
            if v["type"] == "auth_ok" {
                if let Some(ms) = v["data"]["heartbeatIntervalMs"].as_u64() {
                    heartbeat = Duration::from_millis(ms.max(1000));
                }
                break;
            }
        }
    }
    tx.send(envelope(
        "go_online",
        "online",
        json!({"lat": position.1, "lon": position.0, "skills": ["lawn_mowing", "gardening", "cleaning"]}),
    ))
    .await?;
    fleet.stats.connected.fetch_add(1, Ordering::Relaxed);
    let _connected = ConnectedGuard(fleet);

    let (jobs_tx, mut jobs_rx) = mpsc::unbounded_channel::<JobStep>();
    // Jobs this session is driving (a replayed job_update must not start a second timer).
    let mut scheduled = std::collections::HashSet::new();
    let mut location = tokio::time::interval(Duration::from_secs_f64(fleet.args.location_every));
    location.tick().await;
    let mut ping = tokio::time::interval(heartbeat);
    ping.tick().await;
    let mut stop_check = tokio::time::interval(Duration::from_millis(250));
    let mut next_id = 0u64;
    let mut id = || {
        next_id += 1;
        format!("m{next_id}")
    };
    loop {
        tokio::select! {
            msg = rx.next() => {
                let Some(msg) = msg else { return Ok(()) };
                let text = match msg? {
                    Message::Text(t) => t,
                    Message::Close(_) => return Ok(()),
                    _ => continue,
                };
                let v: Value = match serde_json::from_str(&text) { Ok(v) => v, Err(_) => continue };
                match v["type"].as_str().unwrap_or("") {
                    "offer" => {
                        let d = &v["data"];
                        let (Some(offer), Some(request)) = (uuid(&d["offerId"]), uuid(&d["requestId"])) else { continue };
                        *last_seq = (*last_seq).max(d["seq"].as_u64().unwrap_or(0));
                        on_offer(fleet, offer, request);
                        tx.send(envelope("ack_offer", &id(), json!({"offerId": offer}))).await?;
                        if rng.next_f64() < fleet.args.accept_rate {
                            fleet.stats.accepts_sent.fetch_add(1, Ordering::Relaxed);
                            let key = format!("accept-{offer}");
                            tx.send(envelope("accept_offer", &id(), json!({"offerId": offer, "requestId": request, "idempotencyKey": key}))).await?;
                        } else {
                            fleet.stats.rejects_sent.fetch_add(1, Ordering::Relaxed);
                            tx.send(envelope("reject_offer", &id(), json!({"offerId": offer, "requestId": request, "reason": "simulated rejection"}))).await?;
                        }
                    }
                    "assignment_confirmed" => {
                        let d = &v["data"];
                        let (Some(offer), Some(request)) = (uuid(&d["offerId"]), uuid(&d["requestId"])) else { continue };
                        on_assigned(fleet, offer, request);
                        if scheduled.insert(request) {
                            schedule_job(fleet, &jobs_tx, request, true);
                        }
                    }
                    "job_update" => {
                        let Some(request) = uuid(&v["data"]["requestId"]) else { continue };
                        match v["data"]["status"].as_str().unwrap_or("") {
                            "COMPLETED" => { fleet.stats.completed.fetch_add(1, Ordering::Relaxed); }
                            // Replayed after a reconnect: pick the job up where it was.
                            "ASSIGNED" if scheduled.insert(request) => schedule_job(fleet, &jobs_tx, request, true),
                            "IN_PROGRESS" if scheduled.insert(request) => schedule_job(fleet, &jobs_tx, request, false),
                            _ => {}
                        }
                    }
                    "error" => {
                        fleet.stats.error_frames.fetch_add(1, Ordering::Relaxed);
                        let code = v["data"]["code"].as_str().unwrap_or("UNKNOWN").to_string();
                        *fleet.stats.error_codes.lock().unwrap().entry(code).or_default() += 1;
                    }
                    _ => {}
                }
            }
            Some(step) = jobs_rx.recv() => {
                match step {
                    JobStep::Start(r) => tx.send(envelope("start_job", &id(), json!({"requestId": r}))).await?,
                    JobStep::Complete(r) => tx.send(envelope("complete_job", &id(), json!({"requestId": r}))).await?,
                }
            }
            _ = location.tick() => {
                // A random walk of up to ~150 m, kept inside the service area.
                let (lon, lat) = *position;
                let next = (lon + (rng.next_f64() - 0.5) * 0.003, lat + (rng.next_f64() - 0.5) * 0.003);
                if fleet.city.serves(next.0, next.1) {
                    *position = next;
                }
                fleet.stats.locations.fetch_add(1, Ordering::Relaxed);
                let data = json!({"lat": position.1, "lon": position.0, "accuracy": 8.0, "timestamp": chrono::Utc::now()});
                tx.send(envelope("location", &id(), data)).await?;
            }
            _ = ping.tick() => tx.send(envelope("ping", &id(), Value::Null)).await?,
            _ = stop_check.tick() => {
                if fleet.stop_all.load(Ordering::Relaxed) {
                    let _ = tx.send(Message::Close(None)).await;
                    return Ok(());
                }
            }
        }
    }
}

/// Starts (when `from_start`) and completes the job after the simulated job time.
fn schedule_job(
    fleet: &Fleet,
    jobs: &mpsc::UnboundedSender<JobStep>,
    request: Uuid,
    from_start: bool,
) {
    let jobs = jobs.clone();
    let half = Duration::from_secs_f64(fleet.args.job_seconds / 2.0);
    tokio::spawn(async move {
        tokio::time::sleep(half).await;
        if from_start {
            let _ = jobs.send(JobStep::Start(request));
        }
        tokio::time::sleep(half).await;
        let _ = jobs.send(JobStep::Complete(request));
    });
}

struct ConnectedGuard<'a>(&'a Fleet);

impl Drop for ConnectedGuard<'_> {
    fn drop(&mut self) {
        self.0.stats.connected.fetch_sub(1, Ordering::Relaxed);
    }
}

fn uuid(v: &Value) -> Option<Uuid> {
    v.as_str()?.parse().ok()
}

fn on_offer(fleet: &Fleet, offer: Uuid, request: Uuid) {
    let now = Instant::now();
    let s = &fleet.stats;
    s.offers.fetch_add(1, Ordering::Relaxed);
    s.offer_seen.lock().unwrap().insert(offer, now);
    s.first_offer_at
        .lock()
        .unwrap()
        .entry(request)
        .or_insert(now);
}

fn on_assigned(fleet: &Fleet, offer: Uuid, request: Uuid) {
    let now = Instant::now();
    let s = &fleet.stats;
    s.assigned.fetch_add(1, Ordering::Relaxed);
    if let Some(seen) = s.offer_seen.lock().unwrap().remove(&offer) {
        s.offer_to_accept_ms
            .lock()
            .unwrap()
            .push(now.duration_since(seen).as_secs_f64() * 1000.0);
    }
    s.assigned_at.lock().unwrap().entry(request).or_insert(now);
}
