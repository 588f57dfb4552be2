//! City leases: each node's keeper wins, renews and gives up cities in the JetStream KV
//! bucket `city_owner`, and takes each won city's fence in `city_leases`.
//!
//! - **Win**: `create` of the city's key (it fails while another node's key lives). The
//!   bucket's max age is the lease: a key nobody renews disappears that long after its last
//!   write. The winner then bumps the city's epoch in PostgreSQL; from that commit on, every
//!   write of the previous owner's actors is refused.
//! - **Renew**: every quarter lease, first `city_leases` (the pool is healthy and the epoch
//!   is still ours), then a revision-checked `update` of the key.
//! - **Give up by itself**: once the last successful renewal is a lease (less a tick) old on
//!   this node's own clock, the node stops acting for the city without asking anybody
//!   (`OwnedCities::epoch` answers nothing past that deadline, whether or not the keeper has
//!   looked): a node cut off from NATS or PostgreSQL, stuck on a slow call, or stopped and
//!   woken, never acts on an expired lease. The renewal's clock starts before the request
//!   is sent, so the node's deadline comes a tick before the key's expiry at the server,
//!   and every renewal call is bounded by the time left.
//! - **Take over**: a node that sees a city's key gone tries to create it after a delay
//!   of its rendezvous rank among the live nodes (the `arreglame_nodes` bucket) times two
//!   ticks (plus one), so the nodes do not stampede and the preferred node wins a given
//!   city even when it saw the key go a tick later than the others.
//! - **Hand over** (graceful stop): the node stops its actors, then deletes its keys, and
//!   the next node takes each city within a tick.
//! - **Rebalance**: a node holding a city whose first rendezvous node is another live node
//!   (seen for at least two leases, so a node starting or flapping moves nothing) hands that
//!   one city over, one city per tick; the preferred node takes it at its next tick. So the
//!   cities spread over the nodes, and a node that comes back gets its cities back.

use std::{collections::HashMap, sync::Arc, time::Duration};

use async_nats::jetstream::{self, kv};
use sha2::{Digest, Sha256};
use tokio::{sync::watch, time::Instant};

use crate::dispatch::ownership::{OwnedCities, OwnedCity};
use crate::store::Store;

/// The bucket of city owners (key: city id, value: node id).
pub const OWNER_BUCKET: &str = "city_owner";
/// The bucket of live nodes (key: node id), each renewed every tick.
pub const NODES_BUCKET: &str = "arreglame_nodes";

/// The two buckets' names (tests give each their own; a deployment keeps the defaults).
#[derive(Debug, Clone)]
pub struct LeaseBuckets {
    pub owners: String,
    pub nodes: String,
}

impl Default for LeaseBuckets {
    fn default() -> Self {
        LeaseBuckets {
            owners: OWNER_BUCKET.into(),
            nodes: NODES_BUCKET.into(),
        }
    }
}

/// What a node does when it wins or loses a city.
#[async_trait::async_trait]
pub trait CityOwnershipEvents: Send + Sync + 'static {
    /// This node owns `city_id` from now on, at `epoch`: recover the city's open requests.
    async fn won(&self, city_id: &str, epoch: i64);
    /// This node does not own `city_id` any more: stop its request actors, writing nothing.
    async fn lost(&self, city_id: &str, why: &'static str);
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("NATS KV bucket {bucket}: {message}")]
    Bucket { bucket: String, message: String },
}

/// One node's keeper of city leases.
pub struct LeaseKeeper {
    /// Says on `released_subject` which city a node just gave up on purpose (a handover,
    /// a rebalance), so the preferred node takes it at once instead of at its next tick.
    client: async_nats::Client,
    released_subject: String,
    node_id: String,
    lease: Duration,
    store: Store,
    owners: kv::Store,
    nodes: kv::Store,
    cities: Vec<String>,
    owned: Arc<OwnedCities>,
    events: Arc<dyn CityOwnershipEvents>,
    /// When each city was first seen without an owner (for the rendezvous delay).
    absent_since: HashMap<String, Instant>,
    /// The live nodes, refreshed every few ticks.
    live_nodes: Vec<String>,
    nodes_read: Option<Instant>,
    /// When each live node was first seen (without a break).
    first_seen: HashMap<String, Instant>,
    /// When this node last rebalanced each city away: not again for ten leases, so a
    /// preferred node that cannot take it (no database, say) does not make it bounce.
    rebalanced: HashMap<String, Instant>,
    /// When this node won each city it holds: a city is not rebalanced in its first two
    /// leases, so a takeover finishes (workers announced, requests recovered) first.
    won_at: HashMap<String, Instant>,
}

impl LeaseKeeper {
    /// Opens (or creates) the two buckets. An existing `city_owner` bucket keeps its max
    /// age, which is then the lease (all nodes must agree on it).
    #[allow(clippy::too_many_arguments)]
    pub async fn open(
        js: &jetstream::Context,
        buckets: &LeaseBuckets,
        node_id: String,
        lease: Duration,
        replicas: usize,
        store: Store,
        cities: Vec<String>,
        owned: Arc<OwnedCities>,
        events: Arc<dyn CityOwnershipEvents>,
    ) -> Result<LeaseKeeper, LeaseError> {
        let owners = bucket(js, &buckets.owners, lease, replicas).await?;
        let lease = match owners.status().await {
            Ok(status) if status.max_age() != lease && !status.max_age().is_zero() => {
                tracing::warn!(target: "Cluster", configured = ?lease, bucket = ?status.max_age(),
                    "city_owner exists with another max age: that is the lease");
                status.max_age()
            }
            _ => lease,
        };
        let nodes = bucket(js, &buckets.nodes, lease * 3, replicas).await?;
        Ok(LeaseKeeper {
            client: js.client(),
            released_subject: format!("arreglame.cluster.released.{}", buckets.owners),
            node_id,
            lease,
            store,
            owners,
            nodes,
            cities,
            owned: owned.clone(),
            events,
            absent_since: HashMap::new(),
            live_nodes: Vec::new(),
            nodes_read: None,
            first_seen: HashMap::new(),
            rebalanced: HashMap::new(),
            won_at: HashMap::new(),
        })
    }

    /// The live-nodes bucket (for `/ops/cluster`).
    pub fn nodes_bucket(&self) -> kv::Store {
        self.nodes.clone()
    }

    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Until when a write sent at `sent` lets this node act: the lease less a tick, so the
    /// node stops before the key can expire at the server (its clock started later).
    fn acts_until(&self, sent: Instant) -> Instant {
        sent + self.lease - self.tick_every()
    }

    /// How often the keeper looks: an eighth of the lease.
    pub fn tick_every(&self) -> Duration {
        self.lease / 8
    }

    /// Keeps the leases until `shutdown`, then hands every city over.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        use futures::StreamExt;
        let mut every = tokio::time::interval(self.tick_every());
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        // Without the subscription the ticks still find a released city, a tick later.
        let mut released = match self.client.subscribe(self.released_subject.clone()).await {
            Ok(subscriber) => Some(subscriber),
            Err(e) => {
                tracing::warn!(target: "Cluster", error = %e, "released cities not followed; ticks find them");
                None
            }
        };
        loop {
            tokio::select! {
                _ = every.tick() => self.tick().await,
                Some(message) = async {
                    match released.as_mut() {
                        Some(s) => s.next().await,
                        None => std::future::pending().await,
                    }
                } => {
                    let text = String::from_utf8_lossy(&message.payload);
                    if let Some((city, by)) = text.split_once('\n') {
                        self.on_released(city, by).await;
                    }
                }
                _ = shutdown.changed() => {
                    self.hand_over().await;
                    return;
                }
            }
        }
    }

    /// Node `by` gave `city` up on purpose: it stopped acting for it before freeing the
    /// key, so the preferred node among the others takes it now, with no tick to wait; the
    /// rest keep their rendezvous delays in case it cannot.
    pub async fn on_released(&mut self, city: &str, by: &str) {
        if by == self.node_id
            || !self.cities.iter().any(|c| c == city)
            || self.owned.get(city).is_some()
        {
            return;
        }
        let mut others: Vec<String> = self
            .live_nodes
            .iter()
            .filter(|n| n.as_str() != by)
            .cloned()
            .collect();
        if !others.contains(&self.node_id) {
            others.push(self.node_id.clone());
        }
        let preferred = rendezvous_rank(&others, &self.node_id, city) == 0;
        tracing::info!(target: "Cluster", city, by, preferred, "city released by another node");
        if preferred {
            self.take(city).await;
        } else {
            self.absent_since
                .entry(city.to_string())
                .or_insert_with(Instant::now);
        }
    }

    /// Deletes this node's key of a city it stood down from, and says so on NATS.
    async fn free(&self, city: &str, revision: u64) {
        match self
            .owners
            .delete_expect_revision(city, Some(revision))
            .await
        {
            Ok(_) => self.say_released(city).await,
            Err(e) => {
                tracing::warn!(target: "Cluster", city, error = %e, "key not freed; it expires with the lease")
            }
        }
    }

    /// Tells the other nodes that this node gave `city` up and freed its key.
    async fn say_released(&self, city: &str) {
        let sent = self
            .client
            .publish(
                self.released_subject.clone(),
                format!("{city}\n{}", self.node_id).into(),
            )
            .await;
        if sent.is_ok() {
            let _ = self.client.flush().await;
        }
    }

    /// One look at every city: renew what is ours, give up what expired on our clock,
    /// try to take what has no owner.
    pub async fn tick(&mut self) {
        // Renewals first: nothing else this tick may delay them. Every other call is
        // bounded by a tick, so a NATS server that does not answer (a stream electing a
        // new leader) cannot hold the keeper up for longer.
        for city in self.cities.clone() {
            if let Some(held) = self.owned.get(&city) {
                self.renew(&city, held).await;
            }
        }
        self.announce().await;
        for city in self.cities.clone() {
            if self.owned.get(&city).is_none() {
                self.try_take(&city).await;
            }
        }
        self.rebalance().await;
        metrics::gauge!("arreglame_cluster_cities_owned").set(self.owned.all().len() as f64);
    }

    async fn renew(&mut self, city: &str, held: OwnedCity) {
        if Instant::now() >= held.acts_until {
            self.stand_down(city, "lease expired on this node's clock")
                .await;
            return;
        }
        if held.renewed.elapsed() < self.lease / 4 {
            return;
        }
        let sent = Instant::now();
        // Never wait past the lease: a renewal that cannot finish in time is no renewal.
        let left = held.acts_until.saturating_duration_since(sent);
        match tokio::time::timeout(
            left,
            self.store
                .renew_city_lease(city, held.epoch, held.kv_revision),
        )
        .await
        {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => {
                self.stand_down(city, "fenced: another node took the city")
                    .await;
                return;
            }
            Ok(Err(e)) => {
                // No renewal without the database: the deadline gives the city up.
                tracing::warn!(target: "Cluster", city, error = %e, "lease not renewed: database unavailable");
                return;
            }
            Err(_) => {
                tracing::warn!(target: "Cluster", city, "lease not renewed: the database did not answer in time");
                return;
            }
        }
        let left = held.acts_until.saturating_duration_since(Instant::now());
        let updated = tokio::time::timeout(
            left,
            self.owners
                .update(city, self.node_id.clone().into(), held.kv_revision),
        )
        .await;
        let Ok(updated) = updated else {
            tracing::warn!(target: "Cluster", city, "lease not renewed: NATS did not answer in time");
            return;
        };
        // An update applied by the server whose answer was lost looks like a wrong
        // revision next time: the key still says this node, so its revision is ours.
        let updated = match updated {
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                match within(self.tick_every(), self.owners.entry(city))
                    .await
                    .unwrap_or(Ok(None))
                {
                    Ok(Some(entry))
                        if entry.operation == kv::Operation::Put
                            && entry.value.as_ref() == self.node_id.as_bytes() =>
                    {
                        self.owners
                            .update(city, self.node_id.clone().into(), entry.revision)
                            .await
                    }
                    _ => Err(e),
                }
            }
            other => other,
        };
        match updated {
            Ok(revision) => {
                self.owned.hold(
                    city,
                    OwnedCity {
                        kv_revision: revision,
                        renewed: sent,
                        acts_until: self.acts_until(sent),
                        renewed_at: chrono::Utc::now(),
                        ..held
                    },
                );
                metrics::counter!("arreglame_cluster_lease_renewals_total").increment(1);
            }
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                self.stand_down(city, "lost: the key moved on in the KV bucket")
                    .await;
            }
            Err(e) => {
                tracing::warn!(target: "Cluster", city, error = %e, "lease not renewed: NATS unavailable");
            }
        }
    }

    async fn try_take(&mut self, city: &str) {
        let Some(read) = within(self.tick_every(), self.owners.entry(city)).await else {
            return;
        };
        match read {
            Ok(Some(entry)) if entry.operation == kv::Operation::Put => {
                self.absent_since.remove(city);
                return;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(target: "Cluster", city, error = %e, "owner not readable");
                return;
            }
        }
        let since = *self
            .absent_since
            .entry(city.to_string())
            .or_insert_with(Instant::now);
        // Rank 0 waits a tick too: the owner stops acting a tick before its key can expire,
        // and this keeps a tick between the two even if this node saw the expiry early.
        // Ranks are two ticks apart: nodes see a key go up to a tick apart, and the
        // preferred node must still come first.
        let wait = self.tick_every() * (2 * self.rank(city) as u32 + 1);
        if since.elapsed() < wait {
            return;
        }
        self.take(city).await;
    }

    /// Creates the city's key, then takes its fence: the city is this node's from then on.
    async fn take(&mut self, city: &str) {
        let sent = Instant::now();
        let created = within(
            self.tick_every(),
            self.owners.create(city, self.node_id.clone().into()),
        )
        .await;
        let Some(created) = created else {
            tracing::debug!(target: "Cluster", city, "city not taken: NATS did not answer within a tick");
            return;
        };
        let revision = match created {
            Ok(revision) => revision,
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => return,
            Err(e) => {
                tracing::debug!(target: "Cluster", city, error = %e, "city not taken");
                return;
            }
        };
        let epoch = match self
            .store
            .take_city_lease(city, &self.node_id, revision)
            .await
        {
            Ok(epoch) => epoch,
            Err(e) => {
                // Without its fence the city is not ours: let another node have it.
                tracing::warn!(target: "Cluster", city, error = %e, "won the key but not the fence; giving it back");
                let _ = self
                    .owners
                    .delete_expect_revision(city, Some(revision))
                    .await;
                return;
            }
        };
        self.absent_since.remove(city);
        self.won_at.insert(city.to_string(), Instant::now());
        self.owned.hold(
            city,
            OwnedCity {
                epoch,
                kv_revision: revision,
                acquired: sent,
                renewed: sent,
                acts_until: self.acts_until(sent),
                renewed_at: chrono::Utc::now(),
            },
        );
        metrics::counter!("arreglame_cluster_cities_won_total").increment(1);
        tracing::info!(target: "Cluster", city, epoch, node = %self.node_id, "city won");
        // Recovery can take a while: renewals must not wait for it.
        let (events, city) = (self.events.clone(), city.to_string());
        tokio::spawn(async move { events.won(&city, epoch).await });
    }

    async fn stand_down(&mut self, city: &str, why: &'static str) {
        if self.owned.drop_city(city) {
            metrics::counter!("arreglame_cluster_cities_lost_total").increment(1);
            tracing::warn!(target: "Cluster", city, why, node = %self.node_id, "city given up");
            self.events.lost(city, why).await;
        }
    }

    /// Hands over one held city whose preferred node (rendezvous rank 0) is another node,
    /// live for at least two leases.
    async fn rebalance(&mut self) {
        let settled = |n: &String| {
            self.first_seen
                .get(n)
                .is_some_and(|at| at.elapsed() >= self.lease * 2)
        };
        let recently = |city: &String| {
            self.rebalanced
                .get(city)
                .is_some_and(|at| at.elapsed() < self.lease * 10)
        };
        let just_won = |city: &String| {
            self.won_at
                .get(city)
                .is_some_and(|at| at.elapsed() < self.lease * 2)
        };
        let movable = self.owned.all().into_iter().find(|(city, _)| {
            !recently(city)
                && !just_won(city)
                && self.rank(city) > 0
                && self.live_nodes.iter().any(|n| {
                    n != &self.node_id
                        && settled(n)
                        && rendezvous_rank(&self.live_nodes, n, city) == 0
                })
        });
        if let Some((city, held)) = movable {
            self.stand_down(&city, "rebalanced to its preferred node")
                .await;
            // Not ours any more: the preferred node takes it; this node tries again only if
            // it has not after a lease.
            self.absent_since
                .insert(city.clone(), Instant::now() + self.lease);
            self.rebalanced.insert(city.clone(), Instant::now());
            self.free(&city, held.kv_revision).await;
        }
    }

    /// Graceful stop: stop acting for each city first, then free its key so the next node
    /// takes it at once instead of after the lease.
    pub async fn hand_over(&mut self) {
        for (city, held) in self.owned.all() {
            self.stand_down(&city, "handed over").await;
            self.free(&city, held.kv_revision).await;
        }
        let _ = self.nodes.delete(&self.node_id).await;
    }

    /// Says this node is alive, and every few ticks reads who else is.
    async fn announce(&mut self) {
        let cities: Vec<String> = self.owned.all().into_iter().map(|(c, _)| c).collect();
        let value = serde_json::json!({ "cities": cities }).to_string();
        match within(
            self.tick_every(),
            self.nodes.put(&self.node_id, value.into()),
        )
        .await
        {
            Some(Ok(_)) => {}
            Some(Err(e)) => tracing::debug!(target: "Cluster", error = %e, "node not announced"),
            None => {
                tracing::debug!(target: "Cluster", "node not announced: NATS did not answer within a tick")
            }
        }
        if self
            .nodes_read
            .is_some_and(|at| at.elapsed() < self.lease / 2)
        {
            return;
        }
        if let Some(Ok(nodes)) =
            within(self.tick_every(), live_nodes(&self.nodes, self.lease / 2)).await
        {
            self.first_seen.retain(|n, _| nodes.contains(n));
            for n in &nodes {
                self.first_seen
                    .entry(n.clone())
                    .or_insert_with(Instant::now);
            }
            self.live_nodes = nodes;
            self.nodes_read = Some(Instant::now());
        }
    }

    /// This node's place for `city` among the live nodes by rendezvous hashing: 0 tries
    /// a tick after it saw the key gone, 1 three ticks after, 2 five, and so on.
    fn rank(&self, city: &str) -> usize {
        let mut nodes = self.live_nodes.clone();
        if !nodes.contains(&self.node_id) {
            nodes.push(self.node_id.clone());
        }
        rendezvous_rank(&nodes, &self.node_id, city)
    }
}

/// `call`'s answer, or `None` when it took longer than `limit`.
async fn within<T>(limit: Duration, call: impl std::future::Future<Output = T>) -> Option<T> {
    tokio::time::timeout(limit, call).await.ok()
}

/// The rank of `node` for `city` among `nodes` (highest hash of node and city first).
pub fn rendezvous_rank(nodes: &[String], node: &str, city: &str) -> usize {
    let weight = |n: &str| {
        let digest = Sha256::digest(format!("{n}\u{0}{city}").as_bytes());
        u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
    };
    let mine = weight(node);
    nodes
        .iter()
        .filter(|n| n.as_str() != node && weight(n) > mine)
        .count()
}

/// The nodes whose last announcement in the nodes bucket is less than `fresh` older than
/// the freshest one (a node announces itself every tick; a dead one's key outlives it by
/// the bucket's max age). The times compared are all the server's, so the nodes' clocks
/// need not agree.
pub async fn live_nodes(nodes: &kv::Store, fresh: Duration) -> Result<Vec<String>, String> {
    use futures::StreamExt;
    let keys = nodes.keys().await.map_err(|e| e.to_string())?;
    let keys: Vec<String> = keys.filter_map(|k| async move { k.ok() }).collect().await;
    let mut announced = Vec::new();
    for key in keys {
        if let Ok(Some(entry)) = nodes.entry(key.clone()).await {
            if entry.operation == kv::Operation::Put {
                announced.push((key, entry.created.unix_timestamp_nanos()));
            }
        }
    }
    let freshest = announced.iter().map(|(_, at)| *at).max().unwrap_or(0);
    let mut live: Vec<String> = announced
        .into_iter()
        .filter(|(_, at)| freshest - at < fresh.as_nanos() as i128)
        .map(|(key, _)| key)
        .collect();
    live.sort();
    Ok(live)
}

async fn bucket(
    js: &jetstream::Context,
    name: &str,
    max_age: Duration,
    replicas: usize,
) -> Result<kv::Store, LeaseError> {
    if let Ok(existing) = js.get_key_value(name).await {
        return Ok(existing);
    }
    // The bucket's stream as `create_key_value` makes it, created directly: that call first
    // reads the account's info, which async-nats 0.46 cannot parse from a 2.9 server
    // (Debian's), and it uses the answer only for 2.11's per-key TTL markers.
    let error = |e: String| LeaseError::Bucket {
        bucket: name.to_string(),
        message: e,
    };
    js.get_or_create_stream(jetstream::stream::Config {
        name: format!("KV_{name}"),
        description: Some("arreglame scale-out (docs/scale-out.md)".into()),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        max_age,
        storage: jetstream::stream::StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        deny_purge: false,
        // Reads from the stream's leader only. A direct get may be answered by a replica
        // that has not applied the last write yet (after a NATS server died, say): a key
        // just deleted by a handover then still looks owned, and the preferred node's
        // `create` gives up until its next tick. Writes are checked by the leader either
        // way; this only keeps the reads as fresh as the writes.
        allow_direct: false,
        num_replicas: replicas.max(1),
        discard: jetstream::stream::DiscardPolicy::New,
        ..Default::default()
    })
    .await
    .map_err(|e| error(e.to_string()))?;
    js.get_key_value(name)
        .await
        .map_err(|e| error(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_gives_each_city_one_first_node_and_a_full_order() {
        let nodes: Vec<String> = ["a", "b", "c"].map(String::from).into();
        for city in ["buenos-aires", "cordoba", "rosario", "mendoza"] {
            let mut ranks: Vec<usize> = nodes
                .iter()
                .map(|n| rendezvous_rank(&nodes, n, city))
                .collect();
            ranks.sort();
            assert_eq!(ranks, [0, 1, 2], "{city}");
        }
        // Not every city has the same first node.
        let firsts: std::collections::HashSet<&String> = [
            "buenos-aires",
            "cordoba",
            "rosario",
            "mendoza",
            "salta",
            "tucuman",
        ]
        .iter()
        .map(|city| {
            nodes
                .iter()
                .find(|n| rendezvous_rank(&nodes, n, city) == 0)
                .unwrap()
        })
        .collect();
        assert!(firsts.len() > 1);
    }
}
