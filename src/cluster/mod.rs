//! Several engine nodes over one NATS cluster and one PostgreSQL (docs/scale-out.md).
//!
//! Each city is owned by one node at a time: a lease in the replicated JetStream KV bucket
//! `city_owner` ([`lease`]), fenced by an epoch in `city_leases` that every transition of
//! the owner's request actors checks in its own statement (the dispatcher's side is
//! `dispatch::ownership`). Without `ARREGLAME_CLUSTER=nats` none of this runs: one node owns
//! every city and writes unfenced, as before.

pub mod lease;
pub mod routing;

use std::{sync::Arc, time::Duration};

use crate::dispatch::ownership::OwnedCities;

/// What `/ops/cluster` shows of a cluster node.
#[derive(Clone)]
pub struct ClusterView {
    pub node_id: String,
    pub lease: Duration,
    pub owned: Arc<OwnedCities>,
    pub nodes: async_nats::jetstream::kv::Store,
}

/// Connects to the NATS servers of `url` (comma separated) for the lease keeper; the
/// client reconnects by itself for as long as the node runs.
pub async fn connect(url: &str, node_id: &str) -> Result<async_nats::Client, String> {
    let servers: Vec<&str> = url
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    async_nats::ConnectOptions::new()
        .name(format!("arreglame-{node_id}"))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(2))
        .connect(servers.as_slice())
        .await
        .map_err(|e| e.to_string())
}

/// The dispatcher's side of ownership: a won city's subjects are served here, its workers
/// announced again by every node, and its open requests recovered (once the workers are
/// announced, or 300 ms in); a lost city's subjects go quiet and its actors stand down.
pub struct DispatchOwnership {
    pub dispatcher: crate::dispatch::Dispatcher,
    /// Set once the router is up (before the lease keeper runs).
    pub router: std::sync::OnceLock<Arc<routing::Router>>,
}

impl DispatchOwnership {
    pub fn new(dispatcher: crate::dispatch::Dispatcher) -> DispatchOwnership {
        DispatchOwnership {
            dispatcher,
            router: std::sync::OnceLock::new(),
        }
    }
}

#[async_trait::async_trait]
impl lease::CityOwnershipEvents for DispatchOwnership {
    async fn won(&self, city_id: &str, epoch: i64) {
        let (announced, heard) = tokio::sync::oneshot::channel::<()>();
        let served = async {
            let Some(router) = self.router.get() else {
                let _ = announced.send(());
                return;
            };
            match router.serve(city_id).await {
                Ok(workers) => metrics::counter!("arreglame_cluster_workers_reannounced_total")
                    .increment(workers as u64),
                // Without its subjects the city still dispatches its own node's workers;
                // the next takeover tries again.
                Err(e) => {
                    tracing::error!(target: "Cluster", city = city_id, error = %e, "city subjects not served")
                }
            }
            let _ = announced.send(());
        };
        // Recovery starts once the workers are announced again, or after RECOVER_AFTER
        // while thousands still are (each a routed go_online the owner checks): by then the
        // first of them are in the city's index, and a request that finds nobody yet
        // searches again a second later (`Ownership::in_takeover`).
        let recovery = async {
            let _ = tokio::time::timeout(RECOVER_AFTER, heard).await;
            self.recover(city_id, epoch).await;
        };
        tokio::join!(served, recovery);
    }

    async fn lost(&self, city_id: &str, _why: &'static str) {
        if let Some(router) = self.router.get() {
            router.unserve(city_id);
        }
        self.dispatcher.stand_down(city_id);
    }
}

/// How long a new owner waits for the city's workers to be announced before it recovers
/// the city's requests anyway.
const RECOVER_AFTER: Duration = Duration::from_millis(300);

impl DispatchOwnership {
    async fn recover(&self, city_id: &str, epoch: i64) {
        match self.dispatcher.recover().await {
            Ok(recovered) => {
                tracing::info!(target: "Cluster", city = city_id, epoch, recovered, "city recovered")
            }
            // The cron's recovery sweep tries again.
            Err(e) => {
                tracing::warn!(target: "Cluster", city = city_id, error = %e, "city recovery failed")
            }
        }
    }
}
