//! The one error shape of every ops endpoint: `{"error": {"code": "...", "message": "..."}}`
//! with the matching HTTP status. Internal details are logged, never returned.

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};
use serde::Serialize;

#[derive(Debug)]
pub enum OpsError {
    /// No token, or not a valid one.
    Unauthenticated(String),
    /// A valid token without the ops role.
    Forbidden(String),
    BadRequest(String),
    NotFound(String),
    /// Logged with its detail; the caller sees "internal error".
    Internal(String),
}

#[derive(Serialize)]
struct Body<'a> {
    error: Detail<'a>,
}

#[derive(Serialize)]
struct Detail<'a> {
    code: &'static str,
    message: &'a str,
}

impl OpsError {
    fn parts(&self) -> (StatusCode, &'static str, &str) {
        match self {
            OpsError::Unauthenticated(m) => (StatusCode::UNAUTHORIZED, "UNAUTHENTICATED", m),
            OpsError::Forbidden(m) => (StatusCode::FORBIDDEN, "FORBIDDEN", m),
            OpsError::BadRequest(m) => (StatusCode::BAD_REQUEST, "BAD_REQUEST", m),
            OpsError::NotFound(m) => (StatusCode::NOT_FOUND, "NOT_FOUND", m),
            OpsError::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "INTERNAL",
                "internal error",
            ),
        }
    }
}

impl IntoResponse for OpsError {
    fn into_response(self) -> Response {
        if let OpsError::Internal(detail) = &self {
            tracing::error!(target: "Ops", %detail, "ops request failed");
        }
        let (status, code, message) = self.parts();
        (
            status,
            Json(Body {
                error: Detail { code, message },
            }),
        )
            .into_response()
    }
}

impl From<crate::store::StoreError> for OpsError {
    fn from(e: crate::store::StoreError) -> Self {
        match e {
            crate::store::StoreError::NotFound { .. } => OpsError::NotFound(e.to_string()),
            other => OpsError::Internal(other.to_string()),
        }
    }
}
