//! HTTP surface: health and readiness, GraphQL for customers (`graphql`), ops. The worker
//! WebSocket lives in `crate::gateway`.

pub mod graphql;

use axum::{extract::State, http::StatusCode, response::IntoResponse, routing::get, Json, Router};
use serde_json::json;

use crate::store::Store;

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

/// Everything under `/graphql` (and, later, `/ops` and `/metrics`).
pub fn routes(state: crate::startup::AppState) -> Router {
    graphql::routes(state)
}
