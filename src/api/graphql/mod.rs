//! The customer GraphQL API: `POST /graphql`, GraphiQL at `GET /graphql` outside production,
//! subscriptions at `/graphql/ws` (graphql-transport-ws, the protocol of the reference
//! `graphql-ws` client; the token goes in the `connection_init` payload).
//!
//! Callers authenticate with `Authorization: Bearer <jwt>`. `estimateJob` is open to
//! anyone; everything else needs a customer token (ops tokens may read everything and
//! cancel). Every id is checked for ownership.

mod caller;
mod error;
pub mod guard;
mod types;

use std::time::Duration;

use async_graphql::{http::GraphiQLSource, Context, Data, Object, Schema, Subscription, ID};
use async_graphql_axum::{GraphQLRequest, GraphQLResponse};
use axum::{
    extract::{State, WebSocketUpgrade},
    http::{HeaderMap, StatusCode},
    response::{Html, IntoResponse, Response},
    routing::get,
    Router,
};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use futures::Stream;
use tower_http::limit::RequestBodyLimitLayer;
use uuid::Uuid;

pub use caller::Caller;
use caller::{rate_limited, OperationBudget, PricingLimiter, QuotaKey};
pub use error::ApiError;
use types::*;

use crate::{
    api::ApiContext,
    auth::bearer_token,
    domain::{Position, Status},
    pricing::{AiUse, JobInput},
    store::{
        events::{self, RequestState},
        CancelledBy, NewServiceRequest, ServiceRequest,
    },
};

/// The schema type.
pub type ArreglameSchema = Schema<QueryRoot, MutationRoot, SubscriptionRoot>;

/// Largest accepted request body: a photo of up to ~6 MiB once base64-encoded, plus text.
pub const MAX_BODY_BYTES: usize = 9 * 1024 * 1024;
const MAX_DESCRIPTION_CHARS: usize = 2000;
const MAX_ADDRESS_CHARS: usize = 300;
const MAX_PAGE: i32 = 100;

fn state<'a>(ctx: &'a Context<'_>) -> &'a ApiContext {
    ctx.data_unchecked::<ApiContext>()
}

fn caller<'a>(ctx: &'a Context<'_>) -> &'a Caller {
    ctx.data_unchecked::<Caller>()
}

fn parse_id(id: &ID) -> Result<Uuid, ApiError> {
    id.parse::<Uuid>()
        .map_err(|_| ApiError::BadUserInput(format!("{:?} is not a valid id", id.as_str())))
}

async fn load_readable(ctx: &Context<'_>, id: &ID) -> Result<ServiceRequest, ApiError> {
    let caller = caller(ctx);
    caller.require_customer_or_ops()?;
    let row = state(ctx).store.get_request(parse_id(id)?).await?;
    caller.may_read(&row)?;
    Ok(row)
}

fn check_text(field: &str, value: &str, max: usize) -> Result<(), ApiError> {
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

fn check_square_meters(state: &ApiContext, m2: f64) -> Result<(), ApiError> {
    let max = state.settings.borrow().max_square_meters;
    if !m2.is_finite() || m2 <= 0.0 || m2 > max {
        return Err(ApiError::BadUserInput(format!(
            "squareMeters must be greater than 0 and at most {max}"
        )));
    }
    Ok(())
}

/// Takes one quote from the caller's quota and says whether it may ask the AI.
fn pricing_gate(ctx: &Context<'_>) -> async_graphql::Result<AiUse> {
    let peer = ctx.data_opt::<PeerAddress>().map(|p| p.0);
    let key = QuotaKey::of(caller(ctx), peer);
    ctx.data_unchecked::<PricingLimiter>()
        .take(key)
        .map_err(rate_limited)?;
    Ok(ctx
        .data_opt::<OperationBudget>()
        .map_or(AiUse::Denied("operation_budget"), OperationBudget::ai_use))
}

/// The client's address, for the anonymous pricing quota.
#[derive(Debug, Clone, Copy)]
struct PeerAddress(std::net::IpAddr);

pub struct QueryRoot;

#[Object]
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

pub struct MutationRoot;

#[Object]
impl MutationRoot {
    /// Prices a job from a photo, a description and its size. Open to anyone.
    async fn estimate_job(
        &self,
        ctx: &Context<'_>,
        input: EstimateJobInput,
    ) -> async_graphql::Result<JobEstimate> {
        let state = state(ctx);
        check_text("description", &input.description, MAX_DESCRIPTION_CHARS)?;
        check_square_meters(state, input.square_meters)?;
        let ai = pricing_gate(ctx)?;
        let quote = state
            .pricing
            .quote_with(
                &JobInput {
                    image_base64: input.image,
                    description: input.description,
                    square_meters: input.square_meters,
                    category: input.category,
                    extras: input.extras.unwrap_or_default(),
                    difficulty: input.difficulty,
                },
                ai,
            )
            .await
            .map_err(ApiError::from)?;
        Ok(quote.into())
    }

    /// Posts a request: priced now (the price is locked), then dispatched to the nearest
    /// suitable worker. The same idempotency key returns the request it first created.
    async fn create_service_request(
        &self,
        ctx: &Context<'_>,
        input: CreateServiceRequestInput,
    ) -> async_graphql::Result<ServiceRequestNode> {
        let customer = caller(ctx).require_customer()?;
        let state = state(ctx);
        check_text("description", &input.description, MAX_DESCRIPTION_CHARS)?;
        check_text("address", &input.address, MAX_ADDRESS_CHARS)?;
        check_square_meters(state, input.square_meters)?;
        if let Some(key) = &input.idempotency_key {
            check_text("idempotencyKey", key, 100)?;
        }
        let Position { lon, lat } = Position::new(input.longitude, input.latitude)
            .map_err(|e| ApiError::BadUserInput(format!("latitude/longitude: {e}")))?;
        let city = state
            .dispatcher
            .city_at(lon, lat)
            .ok_or_else(|| {
                ApiError::BadUserInput("this location is outside every city we serve".into())
            })?
            .id
            .clone();
        let ai = pricing_gate(ctx)?;
        let quote = state
            .pricing
            .quote_with(
                &JobInput {
                    image_base64: input.image,
                    description: input.description.clone(),
                    square_meters: input.square_meters,
                    category: input.category,
                    extras: input.extras.unwrap_or_default(),
                    difficulty: input.difficulty,
                },
                ai,
            )
            .await
            .map_err(ApiError::from)?;
        let new = NewServiceRequest {
            customer_id: customer,
            city_id: city,
            latitude: lat,
            longitude: lon,
            address: input.address,
            description: input.description,
            square_meters: input.square_meters,
            image_ref: quote.image_ref.clone(),
            service_category: quote.breakdown.category.clone(),
            difficulty_level: quote.breakdown.difficulty_level.clone(),
            extras: quote
                .breakdown
                .extras
                .iter()
                .map(|(c, _)| c.clone())
                .collect(),
            currency: quote.currency.clone(),
            price_total: quote.total,
            worker_net: quote.worker_net,
            platform_fee: quote.platform_fee,
            pricing_engine: quote.engine.as_str().to_string(),
            idempotency_key: input.idempotency_key,
        };
        let (row, created) = state
            .store
            .create_request(&new)
            .await
            .map_err(ApiError::from)?;
        if created || row.status.is_dispatching() {
            // The request is committed: the customer gets it whatever happens to its actor
            // now. One that cannot start (the database just went away, say) is brought back
            // by the WorkerAssignmentCron backstop within a sweep.
            if let Err(e) = state.dispatcher.ensure_actor(row.id).await {
                tracing::warn!(target: "GraphQL", request_id = %row.id, error = %e,
                    "request committed but its actor did not start; the backstop will start it");
            }
        }
        if created {
            metrics::counter!("arreglame_service_requests_created_total", "city" => new.city_id.clone()).increment(1);
            tracing::info!(target: "GraphQL", request_id = %row.id, customer = %customer, "service request created");
        }
        Ok((&row).into())
    }

    /// Cancels a request under the cancellation policy (docs/cancellation-policy.md):
    /// free while no worker is committed; a late fee once assigned; not once started;
    /// a completed job may be disputed while its cancellation window is open.
    async fn cancel_service_request(
        &self,
        ctx: &Context<'_>,
        id: ID,
        reason: Option<String>,
    ) -> async_graphql::Result<ServiceRequestNode> {
        let row = load_readable(ctx, &id).await?;
        let by = match caller(ctx) {
            Caller::Ops(_) => CancelledBy::Ops,
            _ => CancelledBy::Customer,
        };
        if let Some(r) = &reason {
            check_text("reason", r, 500)?;
        }
        let state = state(ctx);
        let cancelled = if row.status == Status::Completed {
            let change = crate::store::Change::Cancelled {
                by,
                reason,
                fee: crate::domain::Cents::ZERO,
            };
            state
                .store
                .transition(&row, change)
                .await
                .map_err(ApiError::from)?
        } else {
            state
                .dispatcher
                .cancel(row.id, by, reason)
                .await
                .map_err(ApiError::from)?
        };
        Ok((&cancelled).into())
    }
}

pub struct SubscriptionRoot;

#[Subscription]
impl SubscriptionRoot {
    /// The request's state now, then every committed change (fed from the outbox: a
    /// subscriber never sees a change that did not commit).
    async fn service_request_updated(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> async_graphql::Result<impl Stream<Item = ServiceRequestUpdate>> {
        let row = load_readable(ctx, &id).await?;
        let state = state(ctx).clone();
        // Subscribe before reading the snapshot, so nothing falls between the two.
        let events = state.relay.subscribe();
        let row = state
            .store
            .get_request(row.id)
            .await
            .map_err(ApiError::from)?;
        Ok(updates(state, row, events))
    }
}

fn updates(
    state: ApiContext,
    first: ServiceRequest,
    events: tokio::sync::broadcast::Receiver<std::sync::Arc<crate::store::OutboxEvent>>,
) -> impl Stream<Item = ServiceRequestUpdate> {
    let id = first.id;
    let key = id.to_string();
    futures::stream::unfold(
        (state, Some(first), events, 0i32, key),
        move |(state, first, mut events, mut seen, key)| async move {
            if let Some(row) = first {
                seen = row.version;
                let assigned = worker_summary(&state, row.assigned_worker_id)
                    .await
                    .ok()
                    .flatten();
                let update = ServiceRequestUpdate {
                    request_id: ID(row.id.to_string()),
                    status: row.status,
                    version: row.version,
                    assignment_attempts: row.assignment_attempts,
                    event: "Snapshot".into(),
                    assigned_worker: assigned,
                    occurred_at: row.updated_at,
                };
                return Some((update, (state, None, events, seen, key)));
            }
            loop {
                match events.recv().await {
                    Ok(e)
                        if e.aggregate_type == events::SERVICE_REQUEST
                            && e.aggregate_id == key
                            && e.aggregate_version > seen =>
                    {
                        seen = e.aggregate_version;
                        let Ok(p) = RequestState::decode(&e.payload) else {
                            tracing::error!(target: "GraphQL", event = e.id, "outbox payload does not decode; skipped");
                            continue;
                        };
                        let assigned = worker_summary(&state, p.assigned_worker_id)
                            .await
                            .ok()
                            .flatten();
                        let update = ServiceRequestUpdate {
                            request_id: ID(key.clone()),
                            status: p.status,
                            version: e.aggregate_version,
                            assignment_attempts: p.assignment_attempts,
                            event: e.event_type.clone(),
                            assigned_worker: assigned,
                            occurred_at: e.created_at,
                        };
                        return Some((update, (state, None, events, seen, key)));
                    }
                    Ok(_) => continue,
                    // Fell behind: the database has the truth; send its current state.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        let row = state.store.get_request(id).await.ok()?;
                        if row.version > seen {
                            return Some((
                                snapshot_update(&state, &row).await,
                                (state, None, events, row.version, key),
                            ));
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                }
            }
        },
    )
}

async fn snapshot_update(state: &ApiContext, row: &ServiceRequest) -> ServiceRequestUpdate {
    ServiceRequestUpdate {
        request_id: ID(row.id.to_string()),
        status: row.status,
        version: row.version,
        assignment_attempts: row.assignment_attempts,
        event: "Snapshot".into(),
        assigned_worker: worker_summary(state, row.assigned_worker_id)
            .await
            .ok()
            .flatten(),
        occurred_at: row.updated_at,
    }
}

/// Builds the schema with the engine's limits (enforced by [`guard::Guard`], before
/// anything recursive runs).
pub fn build_schema(state: ApiContext) -> ArreglameSchema {
    let production = state.production;
    let limiter = PricingLimiter::new(state.pricing_rate_per_minute, state.pricing_rate_burst);
    let mut builder = Schema::build(QueryRoot, MutationRoot, SubscriptionRoot)
        .data(state)
        .data(limiter)
        .extension(guard::Guard(guard::Limits::default()));
    if production {
        // Neither the schema nor "did you mean ...?" hints leak in production.
        builder = builder.disable_introspection().disable_suggestions();
    }
    builder.finish()
}

/// The schema in SDL, as exported to docs/schema.graphql.
pub fn sdl() -> String {
    Schema::build(QueryRoot, MutationRoot, SubscriptionRoot)
        .finish()
        .sdl()
}

#[derive(Clone)]
struct GraphqlState {
    app: ApiContext,
    schema: ArreglameSchema,
}

pub fn routes(state: ApiContext) -> Router {
    let schema = build_schema(state.clone());
    let graphiql = !state.production;
    let gql = GraphqlState { app: state, schema };
    let mut router = Router::new().route("/graphql/ws", get(subscriptions));
    router = if graphiql {
        router.route("/graphql", get(graphiql_page).post(graphql))
    } else {
        router.route("/graphql", axum::routing::post(graphql))
    };
    router
        .layer(RequestBodyLimitLayer::new(MAX_BODY_BYTES))
        .with_state(gql)
}

async fn graphql(
    State(gql): State<GraphqlState>,
    headers: HeaderMap,
    peer: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    request: Result<GraphQLRequest, async_graphql_axum::rejection::GraphQLRejection>,
) -> Response {
    let request = match request {
        Ok(r) => r.into_inner(),
        Err(rejection) => return bad_request(rejection),
    };
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    let caller = Caller::identify(&gql.app.keys, &gql.app.identities, token).await;
    let mut request = request.data(caller).data(OperationBudget::default());
    if let Some(axum::Extension(axum::extract::ConnectInfo(addr))) = peer {
        request = request.data(PeerAddress(addr.ip()));
    }
    GraphQLResponse::from(gql.schema.execute(request).await).into_response()
}

/// A body that is not a GraphQL request (bad JSON, wrong content type): 400 with the usual
/// GraphQL error shape and a code, like every other refusal.
fn bad_request(rejection: async_graphql_axum::rejection::GraphQLRejection) -> Response {
    let status = match rejection.0 {
        async_graphql::ParseRequestError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        _ => StatusCode::BAD_REQUEST,
    };
    let body = serde_json::json!({
        "errors": [{
            "message": format!("not a GraphQL request: {}", rejection.0),
            "extensions": { "code": guard::codes::BAD_REQUEST },
        }]
    });
    (status, axum::Json(body)).into_response()
}

async fn graphiql_page() -> impl IntoResponse {
    Html(
        GraphiQLSource::build()
            .endpoint("/graphql")
            .subscription_endpoint("/graphql/ws")
            .finish(),
    )
}

async fn subscriptions(
    State(gql): State<GraphqlState>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let protocol = headers
        .get(axum::http::header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|value| value.to_str().ok())
        .and_then(|offered| {
            offered.split(',').find_map(|p| {
                p.trim()
                    .parse::<async_graphql::http::WebSocketProtocols>()
                    .ok()
            })
        });
    let Some(protocol) = protocol else {
        return (
            StatusCode::BAD_REQUEST,
            "use the graphql-transport-ws subprotocol",
        )
            .into_response();
    };
    upgrade
        .protocols(async_graphql::http::ALL_WEBSOCKET_PROTOCOLS)
        .on_upgrade(move |socket| serve_subscriptions(socket, gql, protocol))
}

/// The graphql-ws close codes for a refused `connection_init`.
const CLOSE_UNAUTHORIZED: u16 = 4401;
const CLOSE_FORBIDDEN: u16 = 4403;

/// One graphql-ws connection: async-graphql runs the protocol; this loop carries frames
/// and gives a refused `connection_init` the close code graphql-ws defines (4401 without
/// valid credentials, 4403 with a token of a role that may not subscribe) instead of the
/// generic 1002.
async fn serve_subscriptions(
    socket: axum::extract::ws::WebSocket,
    gql: GraphqlState,
    protocol: async_graphql::http::WebSocketProtocols,
) {
    use axum::extract::ws::{CloseFrame, Message};
    use futures::{SinkExt, StreamExt};

    let (mut sink, stream) = socket.split();
    let input = stream
        .take_while(|frame| futures::future::ready(frame.is_ok()))
        .filter_map(|frame| {
            futures::future::ready(match frame {
                Ok(Message::Text(text)) => Some(text.as_str().as_bytes().to_vec()),
                Ok(Message::Binary(bytes)) => Some(bytes.to_vec()),
                _ => None,
            })
        });
    // Set by the init callback when it refuses, read when async-graphql closes.
    let refusal = std::sync::Arc::new(std::sync::OnceLock::<u16>::new());
    let app = gql.app.clone();
    let refused = refusal.clone();
    let on_init = move |payload: serde_json::Value| async move {
        let token = connection_token(&payload);
        let caller = Caller::identify(&app.keys, &app.identities, token.as_deref()).await;
        match caller {
            Caller::Customer(_) | Caller::Ops(_) => {
                let mut data = Data::default();
                data.insert(caller);
                data.insert(OperationBudget::default());
                Ok(data)
            }
            Caller::Worker(_) => {
                let _ = refused.set(CLOSE_FORBIDDEN);
                Err(async_graphql::Error::new(
                    "Forbidden: subscriptions need a customer or ops token",
                ))
            }
            Caller::Anonymous | Caller::Invalid(_) => {
                let _ = refused.set(CLOSE_UNAUTHORIZED);
                Err(async_graphql::Error::new(
                    "Unauthorized: a valid customer or ops token is required in connection_init",
                ))
            }
        }
    };
    let frames = async_graphql::http::WebSocket::new(gql.schema.clone(), input, protocol)
        .on_connection_init(on_init)
        .keepalive_timeout(Duration::from_secs(30));
    futures::pin_mut!(frames);
    while let Some(frame) = frames.next().await {
        let message = match frame {
            async_graphql::http::WsMessage::Text(text) => Message::Text(text.into()),
            async_graphql::http::WsMessage::Close(code, reason) => {
                let code = refusal.get().copied().unwrap_or(code);
                Message::Close(Some(CloseFrame {
                    code,
                    reason: reason.chars().take(100).collect::<String>().into(),
                }))
            }
        };
        if sink.send(message).await.is_err() {
            break;
        }
    }
}

/// The token of a graphql-ws `connection_init` payload, in the shapes clients send:
/// `{"Authorization": "Bearer <jwt>"}` (either case), `{"token": "<jwt>"}`, and Apollo's
/// `{"headers": {"Authorization": "Bearer <jwt>"}}`.
fn connection_token(payload: &serde_json::Value) -> Option<String> {
    let bearer = |v: &serde_json::Value| {
        v.get("Authorization")
            .or_else(|| v.get("authorization"))
            .and_then(|v| v.as_str())
            .and_then(bearer_token)
            .map(str::to_string)
    };
    bearer(payload)
        .or_else(|| payload.get("headers").and_then(bearer))
        .or_else(|| {
            payload
                .get("token")
                .and_then(|v| v.as_str())
                .map(str::to_string)
        })
}
