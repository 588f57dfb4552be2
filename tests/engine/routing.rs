//! Issue 14, routing between cluster nodes: two whole engines (`Application::build`, the
//! real start-up path) as cluster nodes on one PostgreSQL and a NATS server of this test
//! alone. A worker connected to the node that does not own its city is put online, offered
//! jobs and drives them through the owner; a customer's GraphQL create and cancel on that
//! node reach the owner too; and when the owner hands its cities over, the worker keeps its
//! session on the surviving node, is announced to the new owner and gets its next offer.

use std::time::Duration;

use arreglame::{auth::Role, cluster::lease::rendezvous_rank, domain::Status};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::{
    api::{create_input, CREATE},
    gateway::{ok, WorkerApp},
    helpers::*,
};

const CITY: &str = "buenos-aires";

/// Two cluster nodes; answers (owner of Buenos Aires, the other node). The owner is the
/// city's preferred node, so no rebalancing moves the city during the test.
async fn two_nodes(nats: &NatsServer) -> (TestApp, TestApp) {
    let url = fresh_database().await;
    let run = Uuid::new_v4().simple().to_string();
    let ids = [
        format!("node-a-{}", &run[..6]),
        format!("node-b-{}", &run[..6]),
    ];
    let node = |id: &str| {
        let (url, nats) = (url.clone(), nats.url.clone());
        let id = id.to_string();
        async move {
            TestApp::spawn_on(
                url,
                &[
                    ("ARREGLAME_CLUSTER", "nats"),
                    ("NATS_URL", &nats),
                    ("NODE_ID", &id),
                    ("CITY_LEASE_SECONDS", "2"),
                ],
            )
            .await
        }
    };
    let (a, b) = (node(&ids[0]).await, node(&ids[1]).await);
    let preferred_is_a = rendezvous_rank(&ids, &ids[0], CITY) == 0;
    let (owner, other) = if preferred_is_a { (a, b) } else { (b, a) };
    wait_until(Duration::from_secs(60), || async {
        owns(&owner) && !owns(&other)
    })
    .await;
    (owner, other)
}

fn owns(app: &TestApp) -> bool {
    app.handle.state.dispatcher.owns_city(Some(CITY))
}

async fn online_at_owner(owner: &TestApp, worker: Uuid) -> bool {
    owner
        .handle
        .state
        .dispatcher
        .city_workers(CITY)
        .await
        .iter()
        .any(|w| w.id == worker)
}

/// A customer's request created over GraphQL on `app`.
async fn create(app: &TestApp) -> Uuid {
    let token = app.token(Role::Customer, CUSTOMER);
    let answer = app.gql(Some(&token), CREATE, create_input(None)).await;
    answer["data"]["createServiceRequest"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{answer}"))
        .parse()
        .unwrap()
}

async fn status_becomes(app: &TestApp, request: Uuid, wanted: Status) {
    wait_until(PATIENCE, || async {
        app.store().get_request(request).await.unwrap().status == wanted
    })
    .await;
}

/// The next offer pushed to `worker`, for `request`, acknowledged as an app does (a new
/// owner pushes the offers it resumes again; the session drops those already acked).
async fn offer_for(worker: &mut WorkerApp, request: Uuid) -> Uuid {
    let offer = worker.offer_while_pinging().await["data"].clone();
    assert_eq!(offer["requestId"], request.to_string(), "{offer}");
    let offer_id = offer["offerId"].as_str().unwrap();
    let acked = worker
        .call("ack_offer", json!({ "offerId": offer_id }))
        .await;
    assert_eq!(ok(&acked)["offerId"], offer_id);
    offer_id.parse().unwrap()
}

#[tokio::test]
async fn a_worker_on_another_node_is_offered_jobs_by_the_owner_and_every_command_reaches_it() {
    let nats = NatsServer::start().await;
    let (owner, front) = two_nodes(&nats).await;
    // The worker's socket is on the node that does not own its city.
    let mut worker = WorkerApp::online(&front, LON + 0.004, LAT).await;
    assert!(online_at_owner(&owner, worker.id).await);
    assert!(!online_at_owner(&front, worker.id).await);
    worker
        .send(
            "location",
            json!({"lat": LAT, "lon": LON + 0.003, "timestamp": chrono::Utc::now()}),
        )
        .await;

    // Created on the front node, dispatched by the owner, offered through NATS.
    let first = create(&front).await;
    let offer = offer_for(&mut worker, first).await;
    assert!(owner.handle.state.dispatcher.has_actor(first));
    assert!(!front.handle.state.dispatcher.has_actor(first));
    let accepted = worker
        .call(
            "accept_offer",
            json!({"offerId": offer, "requestId": first, "idempotencyKey": "k-1"}),
        )
        .await;
    assert_eq!(ok(&accepted)["status"], "ASSIGNED");
    assert_eq!(ok(&accepted)["job"]["address"], "Av. Corrientes 1234");
    let confirmed = worker.push("assignment_confirmed").await;
    assert_eq!(confirmed["data"]["offerId"], offer.to_string());
    let started = worker.call("start_job", json!({"requestId": first})).await;
    assert_eq!(ok(&started)["status"], "IN_PROGRESS");
    let completed = worker
        .call("complete_job", json!({"requestId": first}))
        .await;
    assert_eq!(ok(&completed)["status"], "COMPLETED");
    assert!(owner
        .store()
        .payout_for_request(first)
        .await
        .unwrap()
        .is_some());

    // A reject reaches the owner; the only worker said no, so the request ends unassigned.
    let second = create(&front).await;
    let offer = offer_for(&mut worker, second).await;
    let rejected = worker
        .call(
            "reject_offer",
            json!({"offerId": offer, "requestId": second, "reason": "too far"}),
        )
        .await;
    assert_eq!(ok(&rejected)["offerId"], offer.to_string());
    status_becomes(&owner, second, Status::Unassigned).await;

    // A worker's cancellation of an accepted job reaches the owner.
    let third = create(&front).await;
    let offer = offer_for(&mut worker, third).await;
    let accepted = worker
        .call(
            "accept_offer",
            json!({"offerId": offer, "requestId": third, "idempotencyKey": "k-3"}),
        )
        .await;
    assert_eq!(ok(&accepted)["status"], "ASSIGNED");
    let released = worker
        .call(
            "cancel_assignment",
            json!({"requestId": third, "reason": "flat tyre"}),
        )
        .await;
    assert_eq!(ok(&released)["requestId"], third.to_string(), "{released}");
    let row = owner.store().get_request(third).await.unwrap();
    assert_ne!(row.assigned_worker_id, Some(worker.id));

    // The customer cancels on the front node: the owner withdraws the offer, and the
    // withdrawal reaches the worker through NATS.
    let fourth = create(&front).await;
    let offer = offer_for(&mut worker, fourth).await;
    let token = front.token(Role::Customer, CUSTOMER);
    let cancel = r#"mutation($id: ID!) { cancelServiceRequest(id: $id, reason: "plans changed") { status } }"#;
    let answer: Value = front.gql(Some(&token), cancel, json!({"id": fourth})).await;
    assert_eq!(
        answer["data"]["cancelServiceRequest"]["status"], "CANCELLED",
        "{answer}"
    );
    let withdrawn = worker.push("offer_withdrawn").await;
    assert_eq!(withdrawn["data"]["offerId"], offer.to_string());
    assert_eq!(withdrawn["data"]["reason"], "cancelled");

    // Going offline reaches the owner's city actor.
    assert_eq!(worker.call("go_offline", Value::Null).await["type"], "ok");
    wait_until(PATIENCE, || async {
        !online_at_owner(&owner, worker.id).await
    })
    .await;
    assert_eq!(front.handle.state.dispatcher.live_actors(), 0);
}

#[tokio::test]
async fn after_the_owner_hands_over_the_worker_on_the_surviving_node_gets_offers_from_the_new_owner(
) {
    let nats = NatsServer::start().await;
    let (owner, survivor) = two_nodes(&nats).await;
    let mut worker = WorkerApp::online(&survivor, LON + 0.004, LAT).await;
    assert!(online_at_owner(&owner, worker.id).await);
    // An offer is out when the owner goes (a graceful stop: it hands its cities over).
    let pending = create(&survivor).await;
    let offer = offer_for(&mut worker, pending).await;
    owner.handle.shutdown();
    wait_until(Duration::from_secs(60), || async { owns(&survivor) }).await;
    // The new owner was told about the worker by its own sessions, resumed the pending
    // offer, and the worker, whose session never broke, accepts it there.
    wait_until(PATIENCE, || async {
        online_at_owner(&survivor, worker.id).await
            && survivor.handle.state.dispatcher.has_actor(pending)
    })
    .await;
    let accepted = worker
        .call(
            "accept_offer",
            json!({"offerId": offer, "requestId": pending, "idempotencyKey": "k-after"}),
        )
        .await;
    assert_eq!(ok(&accepted)["status"], "ASSIGNED", "{accepted}");
    let completed = async {
        worker
            .call("start_job", json!({"requestId": pending}))
            .await;
        worker
            .call("complete_job", json!({"requestId": pending}))
            .await
    }
    .await;
    assert_eq!(ok(&completed)["status"], "COMPLETED");
    // The next job is offered by the new owner, in the same session.
    let next = create(&survivor).await;
    offer_for(&mut worker, next).await;
    assert!(survivor.handle.state.dispatcher.has_actor(next));
}
