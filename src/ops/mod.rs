//! Ops: Prometheus `/metrics`, a live view of the actors (`/ops/actors`, `/ops/live`), the
//! dispatch decision trail of any request, the requests that need attention
//! (`/ops/attention`), the last 15 minutes per minute (`/ops/history`), and a dashboard page
//! (`/ops`) served by the engine itself, with nothing loaded from elsewhere (it works
//! offline: styles, script and charts are inline).
//!
//! The page holds no data: it asks for an ops token, keeps it in `sessionStorage`, and
//! calls the JSON endpoints below with it. Every data endpoint under `/ops` requires an
//! ops JWT (`Authorization: Bearer`). `/metrics` is protected by configuration: a
//! `METRICS_TOKEN` (or an ops JWT) on the main port, or `METRICS_ADDR`, a separate
//! listener (bind it to a private interface) without auth.

mod attention;
mod cluster;
mod error;
mod history;
pub mod metrics;
mod rollout;
mod snapshot;
mod trail;

pub use error::OpsError;
pub use snapshot::ActorsSnapshot;

use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::{
    extract::{FromRequestParts, Path, State},
    http::{header, request::Parts},
    response::{
        sse::{Event, KeepAlive, Sse},
        Html, IntoResponse, Response,
    },
    routing::get,
    Json, Router,
};
use futures::Stream;
use serde::Serialize;
use uuid::Uuid;

use crate::{
    auth::{bearer_token, Role, TokenKeys},
    dispatch::request::RequestSnapshot,
    dispatch::Dispatcher,
    gateway::Sessions,
    jobs::outbox_relay::RelayHandle,
    pricing::Pricing,
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
    /// This node's part in a cluster (`ARREGLAME_CLUSTER=nats`), or none alone.
    pub cluster: Option<crate::cluster::ClusterView>,
}

/// The dashboard page (no data inside; it fetches with the operator's token).
const DASHBOARD: &str = include_str!("dashboard.html");

/// An authenticated operator.
pub struct Operator(pub Uuid);

impl FromRequestParts<OpsContext> for Operator {
    type Rejection = OpsError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &OpsContext,
    ) -> Result<Self, Self::Rejection> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token)
            .ok_or_else(|| OpsError::Unauthenticated("ops token required".into()))?;
        match state.keys.verify_role(token, Role::Ops) {
            Ok(claims) => Ok(Operator(claims.sub)),
            Err(crate::auth::AuthError::WrongRole(_)) => {
                Err(OpsError::Forbidden("ops role required".into()))
            }
            Err(e) => Err(OpsError::Unauthenticated(e.to_string())),
        }
    }
}

/// Routes under `/ops`, plus `/metrics` unless it has its own listener.
pub fn routes(state: OpsContext) -> Router {
    let mut router = Router::new()
        .route("/ops", get(|| async { Html(DASHBOARD) }))
        .route("/ops/actors", get(actors))
        .route("/ops/live", get(live))
        .route("/ops/map", get(map))
        .route("/ops/attention", get(attention))
        .route("/ops/history", get(history))
        .route("/ops/rollout", get(rollout))
        .route("/ops/cluster", get(cluster_view))
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
        return OpsError::Unauthenticated("metrics need METRICS_TOKEN or an ops token".into())
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

/// Stuck and recently unassigned requests.
async fn attention(
    _op: Operator,
    State(state): State<OpsContext>,
) -> Result<Json<attention::Attention>, OpsError> {
    Ok(Json(attention::Attention::load(&state).await?))
}

/// The last 15 minutes, per minute, from the database.
async fn history(
    _op: Operator,
    State(state): State<OpsContext>,
) -> Result<Json<history::History>, OpsError> {
    Ok(Json(history::History::load(&state.store).await?))
}

/// The gradual rollout's two arms, each from its own rows (docs/migration.md).
async fn rollout(
    _op: Operator,
    State(state): State<OpsContext>,
) -> Result<Json<rollout::Rollout>, OpsError> {
    Ok(Json(rollout::Rollout::load(&state).await?))
}

/// The nodes, and who owns each city at which epoch (docs/scale-out.md).
async fn cluster_view(
    _op: Operator,
    State(state): State<OpsContext>,
) -> Result<Json<cluster::Cluster>, OpsError> {
    Ok(Json(cluster::Cluster::load(&state).await?))
}

/// The dispatch decisions of one request: "why was nothing assigned?"
async fn trail(
    _op: Operator,
    State(state): State<OpsContext>,
    Path(id): Path<String>,
) -> Result<Json<trail::Trail>, OpsError> {
    let id = id
        .parse::<Uuid>()
        .map_err(|_| OpsError::BadRequest(format!("{id:?} is not a request id")))?;
    Ok(Json(trail::Trail::load(&state.store, id).await?))
}
