//! Issue 13, item 3: group commit. Transitions that arrive together are written in one
//! transaction (one commit), each with its own version check: a lost race is that
//! transition's conflict, a constraint refuses that transition alone, and the others of
//! the group commit.

use arreglame::store::{ServiceRequest, Store, StoreError};
use uuid::Uuid;

use crate::helpers::*;

async fn requests_and_workers(store: &Store, n: usize) -> (Vec<ServiceRequest>, Vec<Uuid>) {
    let (mut requests, mut workers) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let (row, _) = store
            .create_request(&new_request(CUSTOMER, -58.40, -34.60))
            .await
            .unwrap();
        requests.push(row);
        workers.push(insert_worker(store, "buenos-aires").await);
    }
    (requests, workers)
}

/// Distinct transactions that last wrote these rows.
async fn writers_of(store: &Store, ids: &[Uuid]) -> i64 {
    sqlx::query_scalar("select count(distinct xmin::text) from service_requests where id = any($1)")
        .bind(ids)
        .fetch_one(store.pool())
        .await
        .unwrap()
}

// A current-thread runtime: every transition below is queued before a writer runs, so
// they form one group (an idle engine's lone transition is written alone, as before).
#[tokio::test(flavor = "current_thread")]
async fn transitions_queued_together_commit_together_each_with_its_own_version_check() {
    let store = Store::connect(&fresh_database().await, 8).await.unwrap();
    assert_eq!(store.group_commit_max_rows(), 64);
    let (requests, workers) = requests_and_workers(&store, 12).await;
    // Twelve offers, and a second writer of the first request from the same version (a
    // lost race inside the group).
    let mut writes: Vec<_> = requests
        .iter()
        .zip(&workers)
        .map(|(r, w)| store.transition(r, offer_to(*w, 1)))
        .collect();
    let late = insert_worker(&store, "buenos-aires").await;
    writes.push(store.transition(&requests[0], offer_to(late, 1)));
    let results = futures::future::join_all(writes).await;
    let (committed, lost): (Vec<_>, Vec<_>) = results.into_iter().partition(|r| r.is_ok());
    assert_eq!(committed.len(), 12);
    assert!(matches!(
        lost.as_slice(),
        [Err(StoreError::ConcurrencyConflict { .. })]
    ));
    let ids: Vec<Uuid> = requests.iter().map(|r| r.id).collect();
    assert_eq!(
        writers_of(&store, &ids).await,
        1,
        "one commit carried them all"
    );
    for r in &requests {
        assert_eq!(
            outbox_of(&store, r.id).await.len(),
            2,
            "created + offered, once"
        );
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_transition_a_constraint_refuses_fails_alone_and_the_rest_of_its_group_commits() {
    let store = Store::connect(&fresh_database().await, 8).await.unwrap();
    let (requests, workers) = requests_and_workers(&store, 6).await;
    // The last request offers the first request's worker: one pending offer per worker.
    let mut writes: Vec<_> = requests[..5]
        .iter()
        .zip(&workers)
        .map(|(r, w)| store.transition(r, offer_to(*w, 1)))
        .collect();
    writes.push(store.transition(&requests[5], offer_to(workers[0], 1)));
    let results = futures::future::join_all(writes).await;
    assert!(results[..5].iter().all(|r| r.is_ok()), "{results:?}");
    assert!(
        matches!(&results[5], Err(StoreError::Constraint { constraint }) if constraint == "offers_one_pending_per_worker_idx"),
        "{:?}",
        results[5]
    );
    let refused = store.get_request(requests[5].id).await.unwrap();
    assert_eq!(refused.version, requests[5].version, "nothing written");
    assert_eq!(outbox_of(&store, requests[5].id).await.len(), 1);
}

#[tokio::test(flavor = "current_thread")]
async fn with_group_commit_off_each_transition_commits_alone() {
    let store = Store::connect(&fresh_database().await, 8)
        .await
        .unwrap()
        .with_group_commit(1);
    let (requests, workers) = requests_and_workers(&store, 4).await;
    let writes: Vec<_> = requests
        .iter()
        .zip(&workers)
        .map(|(r, w)| store.transition(r, offer_to(*w, 1)))
        .collect();
    assert!(futures::future::join_all(writes)
        .await
        .iter()
        .all(|r| r.is_ok()));
    let ids: Vec<Uuid> = requests.iter().map(|r| r.id).collect();
    assert_eq!(writers_of(&store, &ids).await, 4);
}
