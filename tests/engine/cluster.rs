//! Issue 14 (scale-out), the pieces so far: city leases in a real NATS JetStream KV bucket
//! (won, renewed, lost by the owner's own clock, handed over), the fencing epoch in
//! `city_leases` that refuses a stale owner's writes, and a node that dispatches only the
//! cities it owns (recovery of a won city picks up that city's requests only).

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use arreglame::{
    cluster::lease::{CityOwnershipEvents, LeaseBuckets, LeaseKeeper},
    dispatch::{
        ownership::{OwnedCities, OwnedCity, Ownership},
        CommandError,
    },
    domain::Status,
    store::{Change, Store, StoreError},
};
use chrono::Utc;
use uuid::Uuid;

use crate::helpers::*;

fn nats_url() -> String {
    std::env::var("NATS_URL").expect(
        "NATS_URL: run the tests through scripts/test.sh (make test), which starts nats-server",
    )
}

/// What a keeper told its node, in order.
#[derive(Default)]
struct Recorded(Mutex<Vec<String>>);

#[async_trait::async_trait]
impl CityOwnershipEvents for Recorded {
    async fn won(&self, city_id: &str, epoch: i64) {
        self.0
            .lock()
            .unwrap()
            .push(format!("won {city_id} {epoch}"));
    }
    async fn lost(&self, city_id: &str, why: &'static str) {
        self.0
            .lock()
            .unwrap()
            .push(format!("lost {city_id}: {why}"));
    }
}

impl Recorded {
    fn events(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

/// Buckets of this test alone (tests share the dev NATS server).
fn buckets() -> LeaseBuckets {
    let tag = Uuid::new_v4().simple().to_string();
    LeaseBuckets {
        owners: format!("test_owner_{tag}"),
        nodes: format!("test_nodes_{tag}"),
    }
}

const LEASE: Duration = Duration::from_secs(2);

async fn keeper(
    buckets: &LeaseBuckets,
    node: &str,
    store: &Store,
    cities: &[&str],
) -> (LeaseKeeper, Arc<OwnedCities>, Arc<Recorded>) {
    let client = arreglame::cluster::connect(&nats_url(), node)
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client);
    let owned = Arc::new(OwnedCities::default());
    let events = Arc::new(Recorded::default());
    let keeper = LeaseKeeper::open(
        &js,
        buckets,
        node.into(),
        LEASE,
        1,
        store.clone(),
        cities.iter().map(|c| c.to_string()).collect(),
        owned.clone(),
        events.clone(),
    )
    .await
    .unwrap();
    (keeper, owned, events)
}

/// Ticks `keeper` until `done` holds (the keeper's own pace: a tick is an eighth of the lease).
async fn tick_until(keeper: &mut LeaseKeeper, mut done: impl FnMut() -> bool) {
    for _ in 0..200 {
        keeper.tick().await;
        if done() {
            return;
        }
        tokio::time::sleep(keeper.tick_every()).await;
    }
    panic!("the keeper never got there");
}

async fn outbox_rows(store: &Store, request: Uuid) -> i64 {
    sqlx::query_scalar(r#"select count(*) from outbox_events where "aggregateId" = $1"#)
        .bind(request.to_string())
        .fetch_one(store.pool())
        .await
        .unwrap()
}

#[tokio::test]
async fn a_write_carrying_a_past_epoch_is_refused_and_leaves_nothing_behind() {
    let store = Store::connect(&fresh_database().await, 4).await.unwrap();
    let (request, _) = store
        .create_request(&new_request(CUSTOMER, -58.40, -34.60))
        .await
        .unwrap();
    let worker = insert_worker(&store, "buenos-aires").await;
    let first = store
        .take_city_lease("buenos-aires", "node-a", 7)
        .await
        .unwrap();
    assert_eq!(first, 1, "a city never owned starts at epoch 1");
    let offered = store
        .transition_fenced(&request, offer_to(worker, 1), Some(first))
        .await
        .expect("the owner at the current epoch writes");
    // Node b takes the city over: the epoch moves on, whatever the KV revision says (a KV
    // bucket recreated from scratch starts its revisions again; the fence never goes back).
    let second = store
        .take_city_lease("buenos-aires", "node-b", 1)
        .await
        .unwrap();
    assert_eq!(second, 2);
    let before = outbox_rows(&store, request.id).await;
    let offers = store.offers_for_request(request.id).await.unwrap();
    let settle = Change::OfferSettled {
        offer_id: offers[0].id,
        outcome: arreglame::store::OfferOutcome::Rejected,
        reason: None,
        others_pending: false,
    };
    let refused = store
        .transition_fenced(&offered, settle.clone(), Some(first))
        .await;
    assert!(
        matches!(&refused, Err(StoreError::Fenced { city_id, epoch }) if city_id == "buenos-aires" && *epoch == first),
        "{refused:?}"
    );
    let row = store.get_request(request.id).await.unwrap();
    assert_eq!(
        (row.version, row.status),
        (offered.version, Status::Offering)
    );
    assert_eq!(
        outbox_rows(&store, request.id).await,
        before,
        "no outbox row"
    );
    assert!(store.offers_for_request(request.id).await.unwrap()[0]
        .outcome
        .is_none());
    // The new owner's write at its epoch commits.
    store
        .transition_fenced(&offered, settle, Some(second))
        .await
        .expect("the new owner writes");
}

#[tokio::test]
async fn a_lease_is_won_renewed_lost_on_the_owners_clock_and_the_stale_owner_is_fenced() {
    let store = Store::connect(&fresh_database().await, 4).await.unwrap();
    let buckets = buckets();
    let (mut a, owned_a, events_a) = keeper(&buckets, "node-a", &store, &["buenos-aires"]).await;
    let (mut b, owned_b, events_b) = keeper(&buckets, "node-b", &store, &["buenos-aires"]).await;
    // Won: the key and the fence.
    tick_until(&mut a, || owned_a.epoch("buenos-aires").is_some()).await;
    let won: OwnedCity = owned_a.get("buenos-aires").unwrap();
    let lease = &store.city_leases().await.unwrap()[0];
    assert_eq!((lease.node_id.as_str(), lease.epoch), ("node-a", won.epoch));
    wait_until(PATIENCE, || async {
        events_a.events() == [format!("won buenos-aires {}", won.epoch)]
    })
    .await;
    // Renewed: revision-checked updates move the key's revision on, the epoch stays.
    tick_until(&mut a, || {
        owned_a
            .get("buenos-aires")
            .is_some_and(|c| c.kv_revision > won.kv_revision)
    })
    .await;
    assert_eq!(owned_a.epoch("buenos-aires"), Some(won.epoch));
    // Node b sees a live owner and takes nothing, however often it looks.
    for _ in 0..4 {
        b.tick().await;
    }
    assert_eq!(owned_b.epoch("buenos-aires"), None);
    // Node a stops renewing (stopped, cut off): once the key expires, b wins with a higher
    // epoch.
    tick_until(&mut b, || owned_b.epoch("buenos-aires").is_some()).await;
    let taken = owned_b.epoch("buenos-aires").unwrap();
    assert!(taken > won.epoch);
    assert_eq!(store.city_epoch("buenos-aires").await.unwrap(), Some(taken));
    wait_until(PATIENCE, || async {
        events_b
            .events()
            .contains(&format!("won buenos-aires {taken}"))
    })
    .await;
    // Node a wakes up: its last renewal is a lease old on its own clock, so it gives the
    // city up at its first tick, before writing anything; and a write it had in flight
    // with the old epoch is refused by the database.
    a.tick().await;
    assert_eq!(owned_a.epoch("buenos-aires"), None);
    assert_eq!(
        events_a.events().last().map(String::as_str),
        Some("lost buenos-aires: lease expired on this node's clock")
    );
    let (request, _) = store
        .create_request(&new_request(CUSTOMER, -58.40, -34.60))
        .await
        .unwrap();
    let worker = insert_worker(&store, "buenos-aires").await;
    let stale = store
        .transition_fenced(&request, offer_to(worker, 1), Some(won.epoch))
        .await;
    assert!(matches!(stale, Err(StoreError::Fenced { .. })), "{stale:?}");
    // b keeps it through its renewals.
    tick_until(&mut b, || {
        owned_b
            .get("buenos-aires")
            .is_some_and(|c| c.renewed_at > Utc::now() - chrono::Duration::seconds(1))
    })
    .await;
    assert_eq!(owned_b.epoch("buenos-aires"), Some(taken));
}

#[tokio::test]
async fn a_node_handing_over_frees_its_cities_for_the_next_node_without_waiting_for_the_lease() {
    let store = Store::connect(&fresh_database().await, 4).await.unwrap();
    let buckets = buckets();
    let cities = ["buenos-aires", "cordoba"];
    let (mut a, owned_a, events_a) = keeper(&buckets, "node-a", &store, &cities).await;
    let (mut b, owned_b, _) = keeper(&buckets, "node-b", &store, &cities).await;
    tick_until(&mut a, || owned_a.all().len() == 2).await;
    a.hand_over().await;
    assert!(owned_a.all().is_empty());
    assert!(events_a
        .events()
        .iter()
        .any(|e| e == "lost cordoba: handed over"));
    // b finds both keys gone at its next looks: no lease to wait out. It ranks second for
    // some city at most (three ticks after it saw the key go), so a few ticks are enough (a
    // lease is eight).
    let mut ticks = 0;
    tick_until(&mut b, || {
        ticks += 1;
        owned_b.all().len() == 2
    })
    .await;
    assert!(ticks <= 5, "took {ticks} ticks");
    let epochs: Vec<(String, String)> = store
        .city_leases()
        .await
        .unwrap()
        .into_iter()
        .map(|l| (l.city_id, l.node_id))
        .collect();
    assert_eq!(
        epochs,
        [
            ("buenos-aires".to_string(), "node-b".to_string()),
            ("cordoba".to_string(), "node-b".to_string())
        ]
    );
}

/// What `LeaseKeeper::run` does when a node says on NATS that it released a city: the
/// preferred node among the others takes it at once, without a tick.
#[tokio::test]
async fn a_released_city_is_taken_at_once_by_the_preferred_remaining_node() {
    let store = Store::connect(&fresh_database().await, 4).await.unwrap();
    let buckets = buckets();
    let cities = ["buenos-aires", "cordoba"];
    let (mut a, owned_a, _) = keeper(&buckets, "node-a", &store, &cities).await;
    let (mut b, owned_b, _) = keeper(&buckets, "node-b", &store, &cities).await;
    tick_until(&mut a, || owned_a.all().len() == 2).await;
    b.tick().await;
    assert!(owned_b.all().is_empty());
    a.hand_over().await;
    for city in cities {
        b.on_released(city, "node-a").await;
    }
    assert_eq!(owned_b.all().len(), 2);
    // A node ignores its own release, and a city it already holds.
    b.on_released("cordoba", "node-b").await;
    b.on_released("buenos-aires", "node-a").await;
    assert_eq!(owned_b.all().len(), 2);
    let owners: Vec<String> = store
        .city_leases()
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.node_id)
        .collect();
    assert_eq!(owners, ["node-b", "node-b"]);
}

#[tokio::test]
async fn a_node_dispatches_only_the_cities_it_owns_and_recovers_a_won_city_alone() {
    let url = fresh_database().await;
    let store = Store::connect(&url, 4).await.unwrap();
    // Open requests in two cities, left by a node that died.
    let (in_buenos_aires, _) = store
        .create_request(&new_request(CUSTOMER, -58.40, -34.60))
        .await
        .unwrap();
    let (in_cordoba, _) = store
        .create_request(&arreglame::store::NewServiceRequest {
            city_id: "cordoba".into(),
            ..new_request(CUSTOMER, -64.19, -31.41)
        })
        .await
        .unwrap();
    assert_eq!(in_cordoba.city_id.as_deref(), Some("cordoba"));
    let owned = Arc::new(OwnedCities::default());
    let mut h =
        DispatchHarness::start_owning(url, quick_settings(), Ownership::Cluster(owned.clone()))
            .await;
    // Owning nothing, it starts nothing, and a command is told to retry elsewhere.
    assert!(!h.dispatcher.has_actor(in_buenos_aires.id));
    let refused = h.dispatcher.ensure_actor(in_buenos_aires.id).await;
    assert!(
        matches!(&refused, Err(CommandError::NotOwner { city }) if city == "buenos-aires"),
        "{:?}",
        refused.map(|_| ())
    );
    // It wins Buenos Aires: recovery picks up that city's request only.
    let epoch = store
        .take_city_lease("buenos-aires", "node-a", 1)
        .await
        .unwrap();
    owned.hold(
        "buenos-aires",
        OwnedCity {
            epoch,
            kv_revision: 1,
            acquired: tokio::time::Instant::now(),
            renewed: tokio::time::Instant::now(),
            acts_until: tokio::time::Instant::now() + Duration::from_secs(3600),
            renewed_at: Utc::now(),
        },
    );
    let worker = h.worker_online(-58.401, -34.60, &["lawn_mowing"]).await;
    let recovered = h.dispatcher.recover().await.unwrap();
    assert!(h.dispatcher.has_actor(in_buenos_aires.id));
    assert!(!h.dispatcher.has_actor(in_cordoba.id));
    assert_eq!(recovered, 1);
    // The recovered request is offered and waits for the worker's answer.
    assert!(matches!(h.next_notice().await,
        arreglame::dispatch::gateway::WorkerNotice::Offer(o) if o.worker_id == worker));
    // It loses the city: the actor stands down without writing (the row keeps its
    // version and its pending offer), and the next owner resumes from the database.
    let version = store.get_request(in_buenos_aires.id).await.unwrap().version;
    owned.drop_city("buenos-aires");
    h.dispatcher.stand_down("buenos-aires");
    wait_until(PATIENCE, || async {
        !h.dispatcher.has_actor(in_buenos_aires.id)
    })
    .await;
    let row = store.get_request(in_buenos_aires.id).await.unwrap();
    assert_eq!((row.version, row.status), (version, Status::Offering));
    assert_eq!(h.dispatcher.stats().actor_restarts.get(), 0);
}

/// Right after a takeover the city's workers are still coming back (reconnecting from a
/// dead node, being announced again): a request that finds nobody searches again instead
/// of ending UNASSIGNED, and is offered to the first worker who comes online.
#[tokio::test]
async fn right_after_a_takeover_a_request_that_finds_nobody_waits_for_the_citys_workers() {
    let retries = || {
        arreglame::ops::metrics::handle()
            .render()
            .lines()
            .find_map(|l| l.strip_prefix("arreglame_cluster_takeover_retries_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let url = fresh_database().await;
    let store = Store::connect(&url, 4).await.unwrap();
    let (request, _) = store
        .create_request(&new_request(CUSTOMER, -58.40, -34.60))
        .await
        .unwrap();
    let epoch = store
        .take_city_lease("buenos-aires", "node-a", 1)
        .await
        .unwrap();
    let owned = Arc::new(OwnedCities::default());
    let now = tokio::time::Instant::now();
    owned.hold(
        "buenos-aires",
        OwnedCity {
            epoch,
            kv_revision: 1,
            acquired: now,
            renewed: now,
            acts_until: now + Duration::from_secs(3600),
            renewed_at: Utc::now(),
        },
    );
    let before = retries();
    // The node starts owning the city just won: recovery finds the request, nobody online.
    let mut h =
        DispatchHarness::start_owning(url, quick_settings(), Ownership::Cluster(owned.clone()))
            .await;
    wait_until(PATIENCE, || async { retries() > before }).await;
    assert_eq!(
        store.get_request(request.id).await.unwrap().status,
        Status::Pending
    );
    let worker = h.worker_online(-58.401, -34.60, &["lawn_mowing"]).await;
    match h.next_notice().await {
        arreglame::dispatch::gateway::WorkerNotice::Offer(o) => {
            assert_eq!((o.worker_id, o.request_id), (worker, request.id))
        }
        other => panic!("expected an offer, got {other:?}"),
    }
}

/// The real start-up path: two `arreglame serve` processes with `ARREGLAME_CLUSTER=nats`
/// on one database and the dev NATS server share the cities (each city owned by exactly
/// one of them, as `/ops/cluster` shows); after a `kill -9` of one, the other owns them all.
#[tokio::test]
async fn two_engine_processes_own_each_city_exactly_once_and_the_survivor_takes_all_after_a_kill() {
    use arreglame::auth::{Role, TokenKeys};
    let url = fresh_database().await;
    // Deployment bucket and subject names: a NATS server of this test alone.
    let nats = NatsServer::start().await;
    let run = Uuid::new_v4().simple().to_string();
    let node = |name: &str| format!("test-{name}-{}", &run[..8]);
    let spawn = |node_id: String, port: u16| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_arreglame"))
            .arg("serve")
            .env("DATABASE_URL", &url)
            .env("PORT", port.to_string())
            .env("HOST", "127.0.0.1")
            .env("JWT_SECRET", "cluster-secret")
            .env("LOG_LEVEL", "warn")
            .env("ARREGLAME_CLUSTER", "nats")
            .env("NATS_URL", &nats.url)
            .env("NODE_ID", node_id)
            .env_remove("LOG_FILE")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    let ports = [free_port(), free_port()];
    let (a, b) = (node("a"), node("b"));
    let mut first = spawn(a.clone(), ports[0]);
    let _second = spawn(b.clone(), ports[1]);
    let ops =
        TokenKeys::new("cluster-secret").issue(Role::Ops, Uuid::new_v4(), Duration::from_secs(600));
    let client = reqwest::Client::new();
    let cluster = |port: u16| {
        let (client, ops) = (client.clone(), ops.clone());
        async move {
            let answer = client
                .get(format!("http://127.0.0.1:{port}/ops/cluster"))
                .bearer_auth(ops)
                .send()
                .await
                .ok()?;
            answer.json::<serde_json::Value>().await.ok()
        }
    };
    // Every city has exactly one owner among the two, and it is the node that says so.
    wait_until(Duration::from_secs(60), || async {
        let (Some(va), Some(vb)) = (cluster(ports[0]).await, cluster(ports[1]).await) else {
            return false;
        };
        let cities = va["cities"].as_array().cloned().unwrap_or_default();
        !cities.is_empty()
            && va["mode"] == "NATS"
            && cities
                .iter()
                .zip(vb["cities"].as_array().unwrap())
                .all(|(ca, cb)| {
                    let here = [ca["ownedHere"] == true, cb["ownedHere"] == true];
                    let owner = ca["ownerNodeId"].as_str().unwrap_or_default();
                    here.iter().filter(|h| **h).count() == 1
                        && (owner == a && here[0] || owner == b && here[1])
                })
    })
    .await;
    first.kill().await.unwrap();
    // b takes every city over (after a's lease), each at a higher epoch.
    wait_until(Duration::from_secs(60), || async {
        cluster(ports[1]).await.is_some_and(|v| {
            v["cities"].as_array().is_some_and(|cs| {
                cs.iter()
                    .all(|c| c["ownedHere"] == true && c["ownerNodeId"] == b.as_str())
            })
        })
    })
    .await;
    let leases = Store::connect(&url, 1)
        .await
        .unwrap()
        .city_leases()
        .await
        .unwrap();
    assert!(leases.iter().all(|l| l.node_id == b));
}
