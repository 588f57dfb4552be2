//! Reads: one request, a customer's requests (cursor pages).

use async_graphql::{Context, Object, ID};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{
    caller, state,
    types::*,
    validation::{parse_id, MAX_PAGE},
    ApiError,
};
use crate::{domain::Status, store::ServiceRequest};

/// A request the caller may read: their own (customers), any (ops).
pub(super) async fn load_readable(ctx: &Context<'_>, id: &ID) -> Result<ServiceRequest, ApiError> {
    let caller = caller(ctx);
    caller.require_customer_or_ops()?;
    let row = state(ctx).store.get_request(parse_id(id)?).await?;
    caller.may_read(&row)?;
    Ok(row)
}

pub struct QueryRoot;

/// The root of reads.
#[Object(name = "Query")]
impl QueryRoot {
    /// One service request: your own (customers) or any (ops).
    async fn service_request(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> async_graphql::Result<ServiceRequestNode> {
        Ok((&load_readable(ctx, &id).await?).into())
    }

    /// Your service requests, newest first, optionally by status; cursor pagination.
    async fn my_service_requests(
        &self,
        ctx: &Context<'_>,
        status: Option<Status>,
        #[graphql(default = 20)] first: i32,
        after: Option<String>,
    ) -> async_graphql::Result<ServiceRequestConnection> {
        let customer = caller(ctx).require_customer()?;
        if !(1..=MAX_PAGE).contains(&first) {
            return Err(
                ApiError::BadUserInput(format!("first must be between 1 and {MAX_PAGE}")).into(),
            );
        }
        let after = after.as_deref().map(decode_cursor).transpose()?;
        let page = state(ctx)
            .store
            .customer_requests(customer, status, after, first as i64)
            .await
            .map_err(ApiError::from)?;
        let edges: Vec<ServiceRequestEdge> = page
            .items
            .iter()
            .map(|r| ServiceRequestEdge {
                cursor: encode_cursor(r.created_at, r.id),
                node: r.into(),
            })
            .collect();
        Ok(ServiceRequestConnection {
            page_info: PageInfo {
                has_next_page: page.has_more,
                end_cursor: edges.last().map(|e| e.cursor.clone()),
            },
            edges,
        })
    }
}

fn encode_cursor(at: DateTime<Utc>, id: Uuid) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(format!("{}|{id}", at.timestamp_micros()))
}

fn decode_cursor(cursor: &str) -> Result<(DateTime<Utc>, Uuid), ApiError> {
    let bad = || ApiError::BadUserInput("invalid cursor".into());
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let (micros, id) = text.split_once('|').ok_or_else(bad)?;
    let at = DateTime::from_timestamp_micros(micros.parse().map_err(|_| bad())?).ok_or_else(bad)?;
    Ok((at, id.parse().map_err(|_| bad())?))
}
