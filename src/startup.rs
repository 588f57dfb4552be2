//! Wiring, shared by `main` and the tests: `Application::build` connects the database,
//! loads settings, starts dispatch and the sweeps, binds the HTTP listener;
//! `run_until_stopped` serves until SIGTERM, Ctrl-C or `AppHandle::shutdown`.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::Router;
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};
use tower_http::timeout::TimeoutLayer;

use crate::{
    api,
    auth::TokenKeys,
    config::Config,
    dispatch::Dispatcher,
    gateway::{self, Sessions},
    identity::Identities,
    jobs::{self, outbox_relay::RelayHandle},
    pricing::{GeminiConfig, Pricing},
    store::{SettingsWatch, Store},
};

/// What request handlers share.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub store: Store,
    pub dispatcher: Dispatcher,
    pub settings: SettingsWatch,
    pub keys: TokenKeys,
    /// Token subjects checked against the database (briefly cached).
    pub identities: Arc<Identities>,
    pub pricing: Arc<Pricing>,
    /// Live worker WebSocket sessions.
    pub sessions: Arc<Sessions>,
    /// Committed outbox events (GraphQL subscriptions and the ops feed listen here).
    pub relay: RelayHandle,
    /// Flips to true when the engine starts shutting down.
    pub shutdown: watch::Receiver<bool>,
}

impl AppState {
    /// The customer API's context.
    pub fn api_context(&self) -> api::ApiContext {
        api::ApiContext {
            production: self.config.is_production(),
            pricing_rate_per_minute: self.config.pricing_rate_per_minute,
            pricing_rate_burst: self.config.pricing_rate_burst,
            store: self.store.clone(),
            dispatcher: self.dispatcher.clone(),
            settings: self.settings.clone(),
            keys: self.keys.clone(),
            identities: self.identities.clone(),
            pricing: self.pricing.clone(),
            relay: self.relay.clone(),
        }
    }
}

/// Lets a test (or an embedding program) reach into a running engine and stop it.
#[derive(Clone)]
pub struct AppHandle {
    pub state: AppState,
    shutdown: watch::Sender<bool>,
}

impl AppHandle {
    /// Starts a graceful shutdown, as SIGTERM would.
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
    }
}

pub struct Application {
    listener: TcpListener,
    router: Router,
    handle: AppHandle,
    background: Vec<JoinHandle<()>>,
}

impl Application {
    /// Builds the engine: database, settings, pricing, dispatch (workers reached through
    /// the WebSocket gateway), sweeps, outbox relay and the HTTP router.
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        // Install the metrics recorder before anything records.
        crate::ops::metrics::handle();
        let store = Store::connect(&config.database_url, config.database_max_connections)
            .await?
            .with_group_commit(config.database_group_commit_max)
            .with_group_commit_writers(config.database_group_commit_writers);
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let (settings, settings_task) = store.watch_settings(shutdown_rx.clone()).await?;

        let sessions = Arc::new(Sessions::new());
        let owned = Arc::new(crate::dispatch::ownership::OwnedCities::default());
        let ownership = match config.cluster {
            Some(_) => crate::dispatch::ownership::Ownership::Cluster(owned.clone()),
            None => crate::dispatch::ownership::Ownership::Single,
        };
        // A cluster node reaches workers connected to other nodes over NATS.
        let nats = match &config.cluster {
            None => None,
            Some(cluster) => Some(
                crate::cluster::connect(&cluster.nats_url, &cluster.node_id)
                    .await
                    .map_err(|e| anyhow::anyhow!("NATS_URL: {e}"))?,
            ),
        };
        let worker_gateway: Arc<dyn crate::dispatch::gateway::WorkerGateway> = match &nats {
            None => sessions.clone(),
            Some(client) => Arc::new(crate::cluster::routing::ClusterGateway::new(
                client.clone(),
                sessions.clone(),
            )),
        };
        let dispatcher =
            Dispatcher::start_owning(store.clone(), settings.clone(), worker_gateway, ownership)
                .await?;
        let city_ids: Vec<String> = dispatcher.cities().iter().map(|c| c.id.clone()).collect();
        crate::ops::metrics::register_cities(&city_ids);
        let mut background = jobs::cron::spawn_sweeps(
            store.clone(),
            dispatcher.clone(),
            settings.clone(),
            shutdown_rx.clone(),
        );
        let cluster = match (&config.cluster, nats) {
            (Some(cluster), Some(client)) => {
                let js = async_nats::jetstream::new(client.clone());
                let events = Arc::new(crate::cluster::DispatchOwnership::new(dispatcher.clone()));
                let servers = cluster.nats_url.split(',').filter(|s| !s.trim().is_empty());
                let keeper = crate::cluster::lease::LeaseKeeper::open(
                    &js,
                    &crate::cluster::lease::LeaseBuckets::default(),
                    cluster.node_id.clone(),
                    cluster.lease,
                    servers.count().min(3),
                    store.clone(),
                    city_ids.clone(),
                    owned.clone(),
                    events.clone(),
                )
                .await?;
                let router = crate::cluster::routing::Router::start(
                    client,
                    cluster.node_id.clone(),
                    dispatcher.clone(),
                    sessions.clone(),
                    sessions.clone(),
                    keeper.nodes_bucket(),
                    keeper.lease(),
                )
                .await?;
                let _ = events.router.set(router);
                let view = crate::cluster::ClusterView {
                    node_id: cluster.node_id.clone(),
                    lease: keeper.lease(),
                    owned: owned.clone(),
                    nodes: keeper.nodes_bucket(),
                };
                tracing::info!(target: "Cluster", node = %cluster.node_id, lease = ?keeper.lease(), "cluster node: cities by lease");
                background.push(tokio::spawn(keeper.run(shutdown_rx.clone())));
                Some(view)
            }
            _ => None,
        };
        background.push(settings_task);
        let relay = jobs::outbox_relay::spawn(
            store.clone(),
            settings.clone(),
            config.nats_url.clone(),
            shutdown_rx.clone(),
        );

        let gemini = config.gemini_api_key.clone().map(|api_key| GeminiConfig {
            api_key,
            base_url: config.gemini_base_url.clone(),
            model: config.gemini_model.clone(),
            timeout: Duration::from_secs(8),
        });
        if gemini.is_none() {
            tracing::info!(target: "RuleBasedPricingEngine", "no API_KEY or GEMINI_API_KEY: pricing with the rules only");
        }
        let pricing = Arc::new(
            Pricing::new(store.clone(), settings.clone(), gemini)
                .await?
                .limit_ai_calls(config.gemini_max_concurrent_calls)
                .limit_ai_rate(config.gemini_max_calls_per_minute),
        );
        // Multipliers and categories change rarely; a minute's staleness is fine.
        background.push(tokio::spawn({
            let pricing = pricing.clone();
            async move {
                let mut every = tokio::time::interval(Duration::from_secs(60));
                every.tick().await;
                loop {
                    every.tick().await;
                    if let Err(e) = pricing.reload_tables().await {
                        tracing::warn!(target: "RuleBasedPricingEngine", error = %e, "pricing tables reload failed");
                    }
                }
            }
        }));

        let identities = Arc::new(Identities::new(store.clone()));
        background.push(gateway::watch_identities(
            sessions.clone(),
            store.clone(),
            identities.clone(),
            crate::identity::CACHE_TTL,
            shutdown_rx.clone(),
        ));
        let state = AppState {
            identities,
            keys: TokenKeys::new(&config.jwt_secret),
            config: Arc::new(config),
            store: store.clone(),
            dispatcher,
            settings,
            pricing,
            sessions,
            relay,
            shutdown: shutdown_rx,
        };
        let api = state.api_context();
        let gateway = gateway::GatewayContext::new(
            state.sessions.clone(),
            state.dispatcher.clone(),
            state.store.clone(),
            state.keys.clone(),
            state.identities.clone(),
            state.shutdown.clone(),
        );
        let ops = crate::ops::OpsContext {
            keys: state.keys.clone(),
            metrics_token: state.config.metrics_token.clone(),
            metrics_elsewhere: state.config.metrics_addr.is_some(),
            store: state.store.clone(),
            dispatcher: state.dispatcher.clone(),
            sessions: state.sessions.clone(),
            pricing: state.pricing.clone(),
            relay: state.relay.clone(),
            cluster: cluster.clone(),
        };
        let router = Router::new()
            .merge(api::health_routes(store))
            .merge(api::routes(api))
            .merge(gateway::routes(gateway))
            .merge(crate::ops::routes(ops.clone()))
            // `Router::layer` wraps each route, so the route's pattern is known there.
            .layer(axum::middleware::from_fn(crate::ops::metrics::track_http))
            .layer(TimeoutLayer::with_status_code(
                axum::http::StatusCode::REQUEST_TIMEOUT,
                Duration::from_secs(30),
            ));

        let addr: SocketAddr = format!("{}:{}", state.config.host, state.config.port).parse()?;
        let listener = TcpListener::bind(addr).await?;
        if let Some(metrics_addr) = state.config.metrics_addr {
            let metrics_listener = TcpListener::bind(metrics_addr).await?;
            let app = crate::ops::metrics_only(ops);
            let mut stop = state.shutdown.clone();
            background.push(tokio::spawn(async move {
                let _ = axum::serve(metrics_listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = stop.wait_for(|s| *s).await;
                    })
                    .await;
            }));
        }
        Ok(Application {
            listener,
            router,
            handle: AppHandle {
                state,
                shutdown: shutdown_tx,
            },
            background,
        })
    }

    /// The bound port (useful with `PORT=0`).
    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    pub fn handle(&self) -> AppHandle {
        self.handle.clone()
    }

    /// Serves until a shutdown signal, then stops actors and background tasks.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let Application {
            listener,
            router,
            handle,
            background,
        } = self;
        let mut stop = handle.shutdown.subscribe();
        let signal_handle = handle.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            signal_handle.shutdown();
        });
        let server = axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        });
        let result = server.await;
        tracing::info!(target: "Server", "[Server] shutting down");
        // axum's graceful shutdown does not wait for upgraded connections: let the worker
        // sessions write their 1001 close frames before the actors stop.
        handle.state.sessions.drain(Duration::from_secs(5)).await;
        handle.state.dispatcher.shutdown().await;
        for task in background {
            task.abort();
        }
        result
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = terminate => {} }
}
