//! Worker WebSocket gateway: `GET /ws/worker`.
//!
//! Worker apps keep one session open all day on flaky phone networks. The protocol (JSON
//! text frames in a versioned envelope) is in `protocol.rs` and, for app developers, in
//! `docs/worker-protocol.md` and `docs/asyncapi.yaml`.
//!
//! - `protocol.rs`: the envelope, every message, error and close codes.
//! - `session.rs`: one connection: auth, reader and writer, how it ends.
//! - `sessions.rs`: the registry of live sessions (takeover, send queues) and what the
//!   engine remembers about a worker between connections; dispatch pushes through it.
//! - `limits.rs`: time limits, buffer sizes, rate limits.

pub mod limits;
pub mod protocol;
mod session;
mod sessions;

use axum::{
    extract::{State, WebSocketUpgrade},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
    Router,
};

pub use limits::{Limits, Rate};
pub use sessions::{GatewayStats, Sessions};

use std::{sync::Arc, time::Duration};

use tokio::{sync::watch, task::JoinHandle};

use crate::{auth::TokenKeys, dispatch::Dispatcher, identity::Identities, store::Store};
use sessions::{KillReason, Shared};

/// Frames that may wait in a connection's write buffer while the socket is not writable
/// (the send queue in front of it is the real bound).
const MAX_WRITE_BACKLOG: usize = 256 * 1024;

/// What the worker gateway needs, and nothing more (built by `startup`): the live
/// sessions, what every session shares, and the engine's shutdown switch.
#[derive(Clone)]
pub struct GatewayContext {
    sessions: Arc<Sessions>,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
}

impl GatewayContext {
    pub fn new(
        sessions: Arc<Sessions>,
        dispatcher: Dispatcher,
        store: Store,
        keys: TokenKeys,
        identities: Arc<Identities>,
        shutdown: watch::Receiver<bool>,
    ) -> GatewayContext {
        GatewayContext {
            sessions,
            shared: Arc::new(Shared {
                dispatcher,
                store,
                keys,
                identities,
            }),
            shutdown,
        }
    }
}

/// `GET /ws/worker`.
pub fn routes(ctx: GatewayContext) -> Router {
    Router::new()
        .route("/ws/worker", get(worker_socket))
        .with_state(ctx)
}

/// Upgrades to a worker session. No credentials here: the token comes in the first message,
/// so it never lands in URLs, proxies' access logs or browser history.
async fn worker_socket(State(ctx): State<GatewayContext>, ws: WebSocketUpgrade) -> Response {
    if *ctx.shutdown.borrow() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    let sessions = ctx.sessions.clone();
    let limits = sessions.limits();
    if sessions.open_connections() >= limits.max_connections {
        tracing::warn!(target: "Gateway", limit = limits.max_connections, "connection refused: too many open connections");
        return (StatusCode::SERVICE_UNAVAILABLE, "too many connections").into_response();
    }
    let (shared, shutdown) = (ctx.shared.clone(), ctx.shutdown.clone());
    ws.read_buffer_size(limits.read_buffer_bytes)
        .write_buffer_size(limits.write_buffer_bytes)
        .max_write_buffer_size(limits.write_buffer_bytes + MAX_WRITE_BACKLOG)
        .max_message_size(limits.max_frame_bytes)
        .max_frame_size(limits.max_frame_bytes)
        .on_failed_upgrade(|e| tracing::debug!(target: "Gateway", error = %e, "upgrade failed"))
        .on_upgrade(move |socket| session::run(socket, sessions, shared, shutdown, limits))
}

/// Re-checks the workers with a live session every `every`: one whose profile was deleted
/// or deactivated is closed with 4005 (`account deactivated`) and taken offline, its
/// pending offer settled, within seconds of the change.
pub fn watch_identities(
    sessions: Arc<Sessions>,
    store: Store,
    identities: Arc<Identities>,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            let connected = sessions.connected_worker_ids();
            if connected.is_empty() {
                continue;
            }
            let gone = match store.workers_not_active(&connected).await {
                Ok(gone) => gone,
                Err(e) => {
                    tracing::warn!(target: "Gateway", error = %e, "identity re-check failed; next round retries");
                    continue;
                }
            };
            for worker_id in gone {
                identities.forget_worker(worker_id);
                if sessions.kill(worker_id, KillReason::Deactivated) {
                    tracing::info!(target: "Gateway", %worker_id, "session closed: worker deactivated or deleted");
                }
            }
        }
    })
}
