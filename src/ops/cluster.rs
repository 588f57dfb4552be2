//! `/ops/cluster`: the nodes sharing the cities, who owns each city at which epoch, and when
//! each lease was last renewed (docs/scale-out.md). One node alone answers `mode: SINGLE`
//! with every city its own.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{OpsContext, OpsError};

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Cluster {
    /// `SINGLE` (one node, every city) or `NATS` (`ARREGLAME_CLUSTER=nats`).
    pub mode: &'static str,
    /// This node's `NODE_ID` (null alone).
    pub node_id: Option<String>,
    pub lease_seconds: Option<f64>,
    /// The live nodes, from the `arreglame_nodes` bucket, with the cities each says it owns.
    pub nodes: Vec<Node>,
    pub cities: Vec<CityOwner>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Node {
    pub node_id: String,
    pub cities: Vec<String>,
    /// When the node last announced itself.
    pub seen_at: Option<DateTime<Utc>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CityOwner {
    pub city_id: String,
    /// The node that took the city's current fence (`city_leases`), null if never owned.
    pub owner_node_id: Option<String>,
    pub epoch: Option<i64>,
    pub kv_revision: Option<i64>,
    pub acquired_at: Option<DateTime<Utc>>,
    /// The owner's last renewal as the database saw it.
    pub renewed_at: Option<DateTime<Utc>>,
    /// This node dispatches the city now.
    pub owned_here: bool,
}

impl Cluster {
    pub async fn load(state: &OpsContext) -> Result<Cluster, OpsError> {
        let leases = state.store.city_leases().await?;
        let Some(cluster) = &state.cluster else {
            return Ok(Cluster {
                mode: "SINGLE",
                node_id: None,
                lease_seconds: None,
                nodes: Vec::new(),
                cities: state
                    .dispatcher
                    .cities()
                    .iter()
                    .map(|c| CityOwner {
                        city_id: c.id.clone(),
                        owner_node_id: None,
                        epoch: None,
                        kv_revision: None,
                        acquired_at: None,
                        renewed_at: None,
                        owned_here: true,
                    })
                    .collect(),
            });
        };
        let mut nodes = Vec::new();
        if let Ok(ids) = crate::cluster::lease::live_nodes(&cluster.nodes, cluster.lease).await {
            for node_id in ids {
                let entry = cluster.nodes.entry(node_id.clone()).await.ok().flatten();
                let cities = entry
                    .as_ref()
                    .and_then(|e| serde_json::from_slice::<serde_json::Value>(&e.value).ok())
                    .and_then(|v| serde_json::from_value(v["cities"].clone()).ok())
                    .unwrap_or_default();
                let seen_at =
                    entry.and_then(|e| DateTime::from_timestamp(e.created.unix_timestamp(), 0));
                nodes.push(Node {
                    node_id,
                    cities,
                    seen_at,
                });
            }
        }
        let cities = state
            .dispatcher
            .cities()
            .iter()
            .map(|c| {
                let lease = leases.iter().find(|l| l.city_id == c.id);
                CityOwner {
                    city_id: c.id.clone(),
                    owner_node_id: lease.map(|l| l.node_id.clone()),
                    epoch: lease.map(|l| l.epoch),
                    kv_revision: lease.map(|l| l.kv_revision),
                    acquired_at: lease.map(|l| l.acquired_at),
                    renewed_at: lease.map(|l| l.renewed_at),
                    owned_here: cluster.owned.epoch(&c.id).is_some(),
                }
            })
            .collect();
        Ok(Cluster {
            mode: "NATS",
            node_id: Some(cluster.node_id.clone()),
            lease_seconds: Some(cluster.lease.as_secs_f64()),
            nodes,
            cities,
        })
    }
}
