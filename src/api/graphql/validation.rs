//! The checks of what customers send, with messages they understand.

use async_graphql::ID;
use uuid::Uuid;

use super::ApiError;
use crate::api::ApiContext;

pub const MAX_DESCRIPTION_CHARS: usize = 2000;
pub const MAX_ADDRESS_CHARS: usize = 300;
/// Largest page of `myServiceRequests`.
pub const MAX_PAGE: i32 = 100;

pub fn parse_id(id: &ID) -> Result<Uuid, ApiError> {
    id.parse::<Uuid>()
        .map_err(|_| ApiError::BadUserInput(format!("{:?} is not a valid id", id.as_str())))
}

pub fn check_text(field: &str, value: &str, max: usize) -> Result<(), ApiError> {
    if value.trim().is_empty() {
        return Err(ApiError::BadUserInput(format!("{field} must not be empty")));
    }
    // PostgreSQL refuses NUL in text; refused here, before anything is priced or stored.
    if value.contains('\0') {
        return Err(ApiError::BadUserInput(format!(
            "{field} must not contain NUL (\\u0000)"
        )));
    }
    if value.chars().count() > max {
        return Err(ApiError::BadUserInput(format!(
            "{field} is longer than {max} characters"
        )));
    }
    Ok(())
}

pub fn check_square_meters(state: &ApiContext, m2: f64) -> Result<(), ApiError> {
    let max = state.settings.borrow().max_square_meters;
    if !m2.is_finite() || m2 <= 0.0 || m2 > max {
        return Err(ApiError::BadUserInput(format!(
            "squareMeters must be greater than 0 and at most {max}"
        )));
    }
    Ok(())
}
