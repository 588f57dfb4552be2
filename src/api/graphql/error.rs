//! The GraphQL error boundary: every error carries `extensions.code`; internal details are
//! logged, never returned.

use async_graphql::ErrorExtensions;

use crate::{auth::AuthError, dispatch::CommandError, pricing::PricingError, store::StoreError};

/// Errors a GraphQL client can see. Deliberately not `Display`: async-graphql converts any
/// `Display` error with a blanket `From`, which would drop `extensions.code`; this type
/// converts only through the impl below.
#[derive(Debug)]
pub enum ApiError {
    BadUserInput(String),
    Unauthenticated(String),
    Forbidden(String),
    NotFound(String),
    Conflict(String),
    /// Something the engine depends on (the database) did not answer: retry shortly.
    Unavailable(String),
    /// Logged with its detail; the client only sees "internal error".
    Internal(String),
}

impl ApiError {
    /// The message shown to the client.
    pub fn message(&self) -> &str {
        match self {
            ApiError::BadUserInput(m)
            | ApiError::Unauthenticated(m)
            | ApiError::Forbidden(m)
            | ApiError::NotFound(m)
            | ApiError::Conflict(m)
            | ApiError::Unavailable(m) => m,
            ApiError::Internal(_) => "internal error",
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadUserInput(_) => "BAD_USER_INPUT",
            ApiError::Unauthenticated(_) => "UNAUTHENTICATED",
            ApiError::Forbidden(_) => "FORBIDDEN",
            ApiError::NotFound(_) => "NOT_FOUND",
            ApiError::Conflict(_) => "CONFLICT",
            ApiError::Unavailable(_) => "UNAVAILABLE",
            ApiError::Internal(_) => "INTERNAL",
        }
    }
}

impl From<ApiError> for async_graphql::Error {
    fn from(e: ApiError) -> Self {
        if let ApiError::Internal(detail) = &e {
            tracing::error!(target: "GraphQL", %detail, "internal error");
        }
        let code = e.code();
        async_graphql::Error::new(e.message()).extend_with(|_, ext| ext.set("code", code))
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::WrongRole(_) => ApiError::Forbidden(e.to_string()),
            AuthError::Unverifiable => ApiError::Unavailable(e.to_string()),
            _ => ApiError::Unauthenticated(e.to_string()),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { .. } => ApiError::NotFound(e.to_string()),
            StoreError::ConcurrencyConflict { .. }
            | StoreError::IllegalTransition(_)
            | StoreError::WindowClosed => ApiError::Conflict(e.to_string()),
            StoreError::InvalidValue(_) => ApiError::BadUserInput(e.to_string()),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<CommandError> for ApiError {
    fn from(e: CommandError) -> Self {
        match e {
            CommandError::NotFound => ApiError::NotFound(e.to_string()),
            CommandError::NotYourOffer | CommandError::NotYourJob => {
                ApiError::Forbidden(e.to_string())
            }
            CommandError::OfferNotPending
            | CommandError::IllegalState { .. }
            | CommandError::WindowClosed
            | CommandError::SlotStarted
            | CommandError::Conflict
            | CommandError::Unavailable
            | CommandError::NotInRollout => ApiError::Conflict(e.to_string()),
            // Another node owns the city: retry shortly (it may be taking over right now).
            CommandError::NotOwner { .. } => ApiError::Unavailable(e.to_string()),
            CommandError::InvalidInput(_) => ApiError::BadUserInput(e.to_string()),
            CommandError::Internal(detail) => ApiError::Internal(detail),
        }
    }
}

impl From<PricingError> for ApiError {
    fn from(e: PricingError) -> Self {
        match e {
            PricingError::Internal(detail) => ApiError::Internal(detail),
            other => ApiError::BadUserInput(other.to_string()),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        ApiError::Internal(e.to_string())
    }
}
