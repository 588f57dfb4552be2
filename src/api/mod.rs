//! HTTP surface: health and readiness, GraphQL for customers (`graphql`), ops. The worker
//! WebSocket lives in `crate::gateway`.

pub mod graphql;

use axum::{extract::State, http::StatusCode, response::IntoResponse, routing::get, Json, Router};
use serde_json::json;

use std::sync::Arc;

use crate::{
    auth::TokenKeys,
    dispatch::Dispatcher,
    identity::Identities,
    jobs::outbox_relay::RelayHandle,
    pricing::Pricing,
    store::{SettingsWatch, Store},
};

/// What the customer API needs, and nothing more (built by `startup`).
#[derive(Clone)]
pub struct ApiContext {
    /// Production: no GraphiQL, no introspection, no "did you mean" hints.
    pub production: bool,
    /// Quotes per caller per minute, and the burst (`PRICING_RATE_*`).
    pub pricing_rate_per_minute: u32,
    pub pricing_rate_burst: u32,
    pub store: Store,
    pub dispatcher: Dispatcher,
    pub settings: SettingsWatch,
    pub keys: TokenKeys,
    pub identities: Arc<Identities>,
    pub pricing: Arc<Pricing>,
    /// Committed outbox events, for subscriptions.
    pub relay: RelayHandle,
}

/// Routes every deployment needs: `/health` (the guide's check) and `/ready`.
pub fn health_routes(store: Store) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .with_state(store)
}

/// Liveness: the process answers. Exactly `{"status":"ok"}`, as the guide's check expects.
async fn health() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

/// How long readiness waits for the database: a load balancer's probe usually allows 1 s.
const READY_WITHIN: std::time::Duration = std::time::Duration::from_millis(800);

/// Readiness: 200 only while the database answers, so a load balancer stops routing to an
/// engine that lost its database. Answers within a second either way.
async fn ready(State(store): State<Store>) -> impl IntoResponse {
    if store.ping(READY_WITHIN).await {
        (StatusCode::OK, Json(json!({"status": "ready"})))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unavailable", "reason": "database not answering"})),
        )
    }
}

/// Everything under `/graphql`.
pub fn routes(ctx: ApiContext) -> Router {
    graphql::routes(ctx)
}
