//! Ops: Prometheus `/metrics`, a live view of the actors (`/ops/actors`, `/ops/live`), the
//! dispatch decision trail of any request, and a dashboard page (`/ops`) served by the
//! engine itself.
//!
//! The page holds no data: it asks for an ops token, keeps it in `sessionStorage`, and
//! calls the JSON endpoints below with it. Every data endpoint under `/ops` requires an
//! ops JWT (`Authorization: Bearer`). `/metrics` is protected by configuration: a
//! `METRICS_TOKEN` (or an ops JWT) on the main port, or `METRICS_ADDR`, a separate
//! listener (bind it to a private interface) without auth.

pub mod metrics;

use std::{collections::BTreeMap, convert::Infallible, sync::Arc, time::Duration};

use axum::{
    extract::{FromRequestParts, Path, State},
    http::{header, request::Parts, StatusCode},
    response::{
        sse::{Event, KeepAlive, Sse},
        Html, IntoResponse, Response,
    },
    routing::get,
    Json, Router,
};
use chrono::{DateTime, Utc};
use futures::Stream;
use serde::Serialize;
use uuid::Uuid;

use crate::{
    auth::{bearer_token, Role, TokenKeys},
    dispatch::Dispatcher,
    dispatch::{city::CityStats, request::RequestSnapshot},
    gateway::Sessions,
    jobs::outbox_relay::RelayHandle,
    pricing::Pricing,
    store::OfferRow,
    store::Store,
};

/// What the ops surface needs, and nothing more (built by `startup`).
#[derive(Clone)]
pub struct OpsContext {
    pub keys: TokenKeys,
    /// `METRICS_TOKEN`: a bearer token `/metrics` accepts besides an ops JWT.
    pub metrics_token: Option<String>,
    /// `/metrics` has its own listener (`METRICS_ADDR`), so not on the main port.
    pub metrics_elsewhere: bool,
    pub store: Store,
    pub dispatcher: Dispatcher,
    pub sessions: Arc<Sessions>,
    pub pricing: Arc<Pricing>,
    pub relay: RelayHandle,
}

/// The dashboard page (no data inside; it fetches with the operator's token).
const DASHBOARD: &str = include_str!("dashboard.html");

/// An authenticated operator.
pub struct Operator(pub Uuid);

impl FromRequestParts<OpsContext> for Operator {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &OpsContext,
    ) -> Result<Self, Self::Rejection> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token)
            .ok_or_else(|| {
                (
                    StatusCode::UNAUTHORIZED,
                    Json(serde_json::json!({"error": "ops token required"})),
                )
                    .into_response()
            })?;
        match state.keys.verify_role(token, Role::Ops) {
            Ok(claims) => Ok(Operator(claims.sub)),
            Err(crate::auth::AuthError::WrongRole(_)) => Err((
                StatusCode::FORBIDDEN,
                Json(serde_json::json!({"error": "ops role required"})),
            )
                .into_response()),
            Err(e) => Err((
                StatusCode::UNAUTHORIZED,
                Json(serde_json::json!({"error": e.to_string()})),
            )
                .into_response()),
        }
    }
}

/// One city as ops see it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CityView {
    pub id: String,
    pub name: String,
    #[serde(flatten)]
    pub stats: CityStats,
    pub mailbox_depth: i64,
    /// Open requests of this city by status.
    pub open_requests: BTreeMap<String, usize>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OldestOpen {
    pub request_id: Uuid,
    pub status: String,
    pub created_at: DateTime<Utc>,
    pub age_seconds: i64,
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestActorsView {
    pub total: usize,
    pub by_status: BTreeMap<String, usize>,
    pub oldest_open: Option<OldestOpen>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Counters {
    pub offers_sent: u64,
    pub offers_accepted: u64,
    pub offers_rejected: u64,
    pub offers_expired: u64,
    pub unassigned: u64,
    pub cancelled: u64,
    pub completed: u64,
    pub conflicts: u64,
    pub actor_restarts: u64,
    pub actor_escalations: u64,
}

/// Everything `/ops/actors` answers and `/ops/live` streams.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ActorsSnapshot {
    pub at: DateTime<Utc>,
    pub cities: Vec<CityView>,
    pub request_actors: RequestActorsView,
    pub counters: Counters,
    pub websocket_sessions: usize,
    pub outbox: crate::jobs::outbox_relay::RelayMetrics,
    pub pricing: crate::pricing::PricingStats,
    #[serde(skip)]
    pub requests: Vec<RequestSnapshot>,
}

impl ActorsSnapshot {
    pub async fn collect(state: &OpsContext) -> ActorsSnapshot {
        let dispatcher = &state.dispatcher;
        let requests = dispatcher.snapshots().await;
        let now = Utc::now();
        let mut view = RequestActorsView {
            total: requests.len(),
            ..Default::default()
        };
        let mut per_city: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
        for r in &requests {
            let status = r.status.as_str().to_string();
            *view.by_status.entry(status.clone()).or_default() += 1;
            *per_city
                .entry(r.city_id.clone().unwrap_or_default())
                .or_default()
                .entry(status)
                .or_default() += 1;
        }
        view.oldest_open = requests
            .iter()
            .min_by_key(|r| r.created_at)
            .map(|r| OldestOpen {
                request_id: r.request_id,
                status: r.status.as_str().into(),
                created_at: r.created_at,
                age_seconds: (now - r.created_at).num_seconds(),
            });
        let mut cities = Vec::new();
        for stats in dispatcher.city_stats().await {
            let info = dispatcher.city_info(&stats.city_id);
            cities.push(CityView {
                id: stats.city_id.clone(),
                name: info.as_ref().map(|i| i.name.clone()).unwrap_or_default(),
                mailbox_depth: info.map(|i| i.mailbox_depth()).unwrap_or(0),
                open_requests: per_city.remove(&stats.city_id).unwrap_or_default(),
                stats,
            });
        }
        let s = dispatcher.stats();
        ActorsSnapshot {
            at: now,
            cities,
            request_actors: view,
            counters: Counters {
                offers_sent: s.offers_sent.get(),
                offers_accepted: s.offers_accepted.get(),
                offers_rejected: s.offers_rejected.get(),
                offers_expired: s.offers_expired.get(),
                unassigned: s.unassigned.get(),
                cancelled: s.cancelled.get(),
                completed: s.completed.get(),
                conflicts: s.conflicts.get(),
                actor_restarts: s.actor_restarts.get(),
                actor_escalations: s.actors_escalated.get(),
            },
            websocket_sessions: websocket_sessions(state),
            outbox: state.relay.metrics().await,
            pricing: state.pricing.stats(),
            requests,
        }
    }
}

fn websocket_sessions(state: &OpsContext) -> usize {
    state.sessions.connected_workers()
}

/// Routes under `/ops`, plus `/metrics` unless it has its own listener.
pub fn routes(state: OpsContext) -> Router {
    let mut router = Router::new()
        .route("/ops", get(|| async { Html(DASHBOARD) }))
        .route("/ops/actors", get(actors))
        .route("/ops/live", get(live))
        .route("/ops/map", get(map))
        .route("/ops/requests/{id}/trail", get(trail));
    if !state.metrics_elsewhere {
        router = router.route("/metrics", get(protected_metrics));
    }
    router.with_state(state)
}

/// `/metrics` alone, without auth, for a separate listener (`METRICS_ADDR`).
pub fn metrics_only(state: OpsContext) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State(state): State<OpsContext>| async move { prometheus(&state).await }),
        )
        .with_state(state)
}

async fn prometheus(state: &OpsContext) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics::render(state).await,
    )
        .into_response()
}

async fn protected_metrics(
    State(state): State<OpsContext>,
    headers: axum::http::HeaderMap,
) -> Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    let allowed = match token {
        Some(t) => {
            state.metrics_token.as_deref() == Some(t)
                || state.keys.verify_role(t, Role::Ops).is_ok()
        }
        None => false,
    };
    if !allowed {
        return (
            StatusCode::UNAUTHORIZED,
            "metrics need METRICS_TOKEN or an ops token",
        )
            .into_response();
    }
    prometheus(&state).await
}

async fn actors(_op: Operator, State(state): State<OpsContext>) -> Json<ActorsSnapshot> {
    Json(ActorsSnapshot::collect(&state).await)
}

/// Server-sent events: a `snapshot` every second and an `event` per committed outbox row.
async fn live(
    _op: Operator,
    State(state): State<OpsContext>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let events = state.relay.subscribe();
    let stream = futures::stream::unfold(
        (state, events, tokio::time::interval(Duration::from_secs(1))),
        |(state, mut events, mut tick)| async move {
            let event = tokio::select! {
                _ = tick.tick() => {
                    let snapshot = ActorsSnapshot::collect(&state).await;
                    Event::default().event("snapshot").json_data(&snapshot).unwrap_or_default()
                }
                received = events.recv() => match received {
                    Ok(e) => Event::default().event("event").json_data(&*e).unwrap_or_default(),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        Event::default().event("lagged").data(n.to_string())
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                },
            };
            Some((Ok(event), (state, events, tick)))
        },
    );
    Sse::new(stream).keep_alive(KeepAlive::default())
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MapCity {
    id: String,
    name: String,
    /// Service area outline, [lon, lat] pairs.
    outline: Vec<[f64; 2]>,
    workers: Vec<crate::dispatch::city::OnlineWorker>,
    requests: Vec<RequestSnapshot>,
}

/// Map data: every city's outline, online workers and open requests.
async fn map(_op: Operator, State(state): State<OpsContext>) -> Json<Vec<MapCity>> {
    let requests = state.dispatcher.snapshots().await;
    let mut out = Vec::new();
    for info in state.dispatcher.cities() {
        let id = info.id.clone();
        out.push(MapCity {
            name: info.name.clone(),
            outline: info.outline(),
            workers: state.dispatcher.city_workers(&id).await,
            requests: requests
                .iter()
                .filter(|r| r.city_id.as_deref() == Some(id.as_str()))
                .cloned()
                .collect(),
            id,
        });
    }
    Json(out)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Trail {
    request: crate::store::ServiceRequest,
    /// Each offer: who, how far, in which radius step, among how many candidates, outcome.
    offers: Vec<OfferRow>,
    /// Candidates passed over because something about them refused the offer.
    skipped: Vec<crate::store::CandidateSkip>,
    /// Every committed event of the request, oldest first.
    events: Vec<TrailEvent>,
    /// In plain words, why the request is where it is.
    explanation: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TrailEvent {
    id: i64,
    #[serde(rename = "type")]
    event_type: String,
    payload: serde_json::Value,
    created_at: DateTime<Utc>,
}

/// The dispatch decisions of one request: "why was nothing assigned?"
async fn trail(_op: Operator, State(state): State<OpsContext>, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<Uuid>() else {
        return (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({"error": "not a request id"})),
        )
            .into_response();
    };
    let request = match state.store.get_request(id).await {
        Ok(r) => r,
        Err(crate::store::StoreError::NotFound { .. }) => {
            return (
                StatusCode::NOT_FOUND,
                Json(serde_json::json!({"error": "no such request"})),
            )
                .into_response()
        }
        Err(e) => {
            tracing::error!(target: "Ops", error = %e, "trail failed");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    };
    let offers = state.store.offers_for_request(id).await.unwrap_or_default();
    let skipped = state.store.candidate_skips(id).await.unwrap_or_default();
    let events: Vec<TrailEvent> = state
        .store
        .request_events(id)
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|e| TrailEvent {
            id: e.id,
            event_type: e.event_type,
            payload: e.payload,
            created_at: e.created_at,
        })
        .collect();
    let mut explanation = explain(&request, &offers);
    if !skipped.is_empty() {
        explanation.push_str(&format!(
            " {} candidate(s) passed over: {}.",
            skipped.len(),
            skipped
                .iter()
                .map(|s| s.reason.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Json(Trail {
        request,
        offers,
        skipped,
        events,
        explanation,
    })
    .into_response()
}

fn explain(r: &crate::store::ServiceRequest, offers: &[OfferRow]) -> String {
    use crate::domain::Status::*;
    let tried = offers.len();
    let count = |o: &str| {
        offers
            .iter()
            .filter(|x| x.outcome.as_deref() == Some(o))
            .count()
    };
    match r.status {
        Unassigned => format!(
            "Unassigned: {}. {tried} offer(s) made: {} rejected, {} expired.",
            r.unassigned_reason
                .as_deref()
                .unwrap_or("no reason recorded"),
            count("REJECTED"),
            count("EXPIRED")
        ),
        Pending => format!("Looking for the next worker; {tried} offer(s) made so far."),
        Offering => format!(
            "Offer {} is out, expiring at {}.",
            tried,
            r.worker_timeout_at
                .map(|t| t.to_rfc3339())
                .unwrap_or_default()
        ),
        other => format!("{other} after {tried} offer(s)."),
    }
}
