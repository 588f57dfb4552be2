//! HTTP and graphql-ws: the caller and the per-operation budget go into each request's
//! data; refusals that happen before the schema runs get the usual coded error shape.

use std::time::Duration;

use async_graphql::Data;
use async_graphql_axum::{GraphQLRequest, GraphQLResponse};
use axum::{
    extract::{Path, State, WebSocketUpgrade},
    http::{header, HeaderMap, StatusCode},
    response::{Html, IntoResponse, Response},
    routing::get,
    Router,
};
use tower_http::limit::RequestBodyLimitLayer;

use super::{build_schema, caller::PeerAddress, guard, ArreglameSchema, Caller, MAX_BODY_BYTES};
use crate::{
    api::ApiContext,
    auth::{bearer_token, AuthError},
};

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
        router
            .route("/graphql", get(graphiql_page).post(graphql))
            .route("/graphql/assets/{file}", get(graphiql_asset))
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
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    let caller = Caller::identify(&gql.app.keys, &gql.app.identities, token).await;
    let mut request = request.data(caller);
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

/// GraphiQL's page: it loads only the files of [`ASSETS`], from this engine.
const GRAPHIQL_PAGE: &str = include_str!("graphiql/index.html");

/// GraphiQL and React, vendored (versions and checksums in `graphiql/README.md`): name
/// under `/graphql/assets/`, content type, bytes.
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "graphiql-3.9.0.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("graphiql/graphiql-3.9.0.min.js"),
    ),
    (
        "graphiql-3.9.0.min.css",
        "text/css; charset=utf-8",
        include_bytes!("graphiql/graphiql-3.9.0.min.css"),
    ),
    (
        "react-18.3.1.production.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("graphiql/react-18.3.1.production.min.js"),
    ),
    (
        "react-dom-18.3.1.production.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("graphiql/react-dom-18.3.1.production.min.js"),
    ),
];

async fn graphiql_page() -> impl IntoResponse {
    Html(GRAPHIQL_PAGE)
}

/// One vendored file. The names carry their versions, so a browser may keep them.
async fn graphiql_asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, content_type, bytes)) => (
            [
                (header::CONTENT_TYPE, *content_type),
                (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            *bytes,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such asset").into_response(),
    }
}

async fn subscriptions(
    State(gql): State<GraphqlState>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let protocol = headers
        .get(header::SEC_WEBSOCKET_PROTOCOL)
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
/// The identity could not be checked (database unavailable): retry later (RFC 6455 1013).
const CLOSE_TRY_AGAIN_LATER: u16 = 1013;

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
    // Who the connection speaks for and until when, set when init succeeds: re-checked
    // every few seconds, so a token that expires or a customer deactivated mid-connection
    // does not keep a socket (and its mutations) open.
    let session = std::sync::Arc::new(std::sync::OnceLock::<(Caller, u64)>::new());
    let app = gql.app.clone();
    let (refused, admitted) = (refusal.clone(), session.clone());
    let on_init = move |payload: serde_json::Value| async move {
        let token = connection_token(&payload);
        let caller = Caller::identify(&app.keys, &app.identities, token.as_deref()).await;
        match caller {
            Caller::Customer(_) | Caller::Ops(_) => {
                let expires = token
                    .as_deref()
                    .and_then(|t| app.keys.verify(t).ok())
                    .map_or(0, |c| c.exp);
                let _ = admitted.set((caller.clone(), expires));
                let mut data = Data::default();
                data.insert(caller);
                Ok(data)
            }
            Caller::Worker(_) => {
                let _ = refused.set(CLOSE_FORBIDDEN);
                Err(async_graphql::Error::new(
                    "Forbidden: subscriptions need a customer or ops token",
                ))
            }
            Caller::Invalid(AuthError::Unverifiable) => {
                let _ = refused.set(CLOSE_TRY_AGAIN_LATER);
                Err(async_graphql::Error::new(
                    "identity check unavailable; retry shortly",
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
    let mut recheck = tokio::time::interval(crate::identity::CACHE_TTL);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let message = tokio::select! {
            frame = frames.next() => match frame {
                None => break,
                Some(async_graphql::http::WsMessage::Text(text)) => Message::Text(text.into()),
                Some(async_graphql::http::WsMessage::Close(code, reason)) => {
                    let code = refusal.get().copied().unwrap_or(code);
                    Message::Close(Some(CloseFrame {
                        code,
                        reason: reason.chars().take(100).collect::<String>().into(),
                    }))
                }
            },
            _ = recheck.tick() => match still_admitted(&gql.app, session.get()).await {
                None => continue,
                Some((code, reason)) => {
                    let _ = sink.send(Message::Close(Some(CloseFrame { code, reason: reason.into() }))).await;
                    break;
                }
            },
        };
        if sink.send(message).await.is_err() {
            break;
        }
    }
    // A close from the client was answered by the transport; make sure that answer leaves.
    let _ = tokio::time::timeout(Duration::from_secs(2), sink.flush()).await;
}

/// `None` while the connection's caller may go on; else the close code and reason.
async fn still_admitted(
    app: &ApiContext,
    session: Option<&(Caller, u64)>,
) -> Option<(u16, &'static str)> {
    let (caller, expires) = session?;
    if crate::auth::unix_now() >= *expires {
        return Some((CLOSE_UNAUTHORIZED, "token expired"));
    }
    match caller {
        Caller::Customer(id) => match app.identities.customer(*id).await {
            Ok(()) | Err(crate::identity::IdentityError::Unavailable) => None,
            Err(_) => Some((CLOSE_FORBIDDEN, "account deactivated")),
        },
        _ => None,
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
