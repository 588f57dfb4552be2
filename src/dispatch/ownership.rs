//! Which cities this node dispatches: all of them alone, or those whose lease it holds in
//! a cluster (`cluster::lease` writes them; docs/scale-out.md).

use std::sync::Arc;

use dashmap::DashMap;
use serde::Serialize;

/// Which cities this node may dispatch, and the fence its writes for each carry.
#[derive(Debug, Clone)]
pub enum Ownership {
    /// One node alone (the default): every city is ours, writes carry no fence.
    Single,
    /// A cluster node: only the cities whose lease it holds, at their epoch.
    Cluster(Arc<OwnedCities>),
}

impl Ownership {
    /// True for a cluster node that won `city_id` less than [`TAKEOVER_GRACE`] ago: its
    /// workers may still be reconnecting (those of a dead node) or being announced again,
    /// so a request that finds nobody waits and searches again instead of ending
    /// UNASSIGNED. Never alone.
    pub fn in_takeover(&self, city_id: Option<&str>) -> bool {
        match self {
            Ownership::Single => false,
            Ownership::Cluster(owned) => city_id
                .and_then(|c| owned.get(c))
                .is_some_and(|c| c.acquired.elapsed() < TAKEOVER_GRACE),
        }
    }

    pub fn owns(&self, city_id: Option<&str>) -> bool {
        match self {
            Ownership::Single => true,
            Ownership::Cluster(owned) => city_id.is_some_and(|c| owned.epoch(c).is_some()),
        }
    }

    /// The epoch a transition of a request in `city_id` must carry: `Ok(None)` alone,
    /// `Ok(Some(epoch))` for an owned city, `Err(())` for a city this node does not own
    /// (write nothing).
    #[allow(clippy::result_unit_err)]
    pub fn fence(&self, city_id: Option<&str>) -> Result<Option<i64>, ()> {
        match self {
            Ownership::Single => Ok(None),
            Ownership::Cluster(owned) => city_id.and_then(|c| owned.epoch(c)).map(Some).ok_or(()),
        }
    }
}

/// How long after a takeover a request that finds no worker searches again (every second)
/// instead of ending UNASSIGNED: long enough for the workers of a dead node to reconnect
/// to another (they back off up to a few seconds) and be announced.
pub const TAKEOVER_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// The cities a cluster node holds now (written by the lease keeper only).
#[derive(Debug, Default)]
pub struct OwnedCities {
    cities: DashMap<String, OwnedCity>,
}

/// One city held by this node.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnedCity {
    pub epoch: i64,
    pub kv_revision: u64,
    /// When this node won the city (for [`Ownership::in_takeover`]).
    #[serde(skip)]
    pub acquired: tokio::time::Instant,
    #[serde(skip)]
    pub renewed: tokio::time::Instant,
    /// This node acts for the city until then (its last renewal's send time plus the
    /// lease, less a margin), whether or not the keeper has looked since: a keeper stuck
    /// on a slow database or NATS call cannot stretch the lease.
    #[serde(skip)]
    pub acts_until: tokio::time::Instant,
    pub renewed_at: chrono::DateTime<chrono::Utc>,
}

impl OwnedCities {
    pub fn epoch(&self, city_id: &str) -> Option<i64> {
        self.cities
            .get(city_id)
            .filter(|c| tokio::time::Instant::now() < c.acts_until)
            .map(|c| c.epoch)
    }

    pub fn get(&self, city_id: &str) -> Option<OwnedCity> {
        self.cities.get(city_id).map(|c| c.clone())
    }

    /// Every held city, by id.
    pub fn all(&self) -> Vec<(String, OwnedCity)> {
        let mut all: Vec<_> = self
            .cities
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    pub fn hold(&self, city_id: &str, city: OwnedCity) {
        self.cities.insert(city_id.to_string(), city);
    }

    pub fn drop_city(&self, city_id: &str) -> bool {
        self.cities.remove(city_id).is_some()
    }
}
