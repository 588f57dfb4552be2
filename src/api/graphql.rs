//! Customer GraphQL API (issue 5). Being built.

use axum::Router;

use crate::startup::AppState;

pub fn routes(_state: AppState) -> Router {
    Router::new()
}
