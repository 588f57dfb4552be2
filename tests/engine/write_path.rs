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

/// Four requests, each offered to its own worker at once; every offer commits.
async fn offer_four_at_once(store: &Store) -> Vec<ServiceRequest> {
    let (requests, workers) = requests_and_workers(store, 4).await;
    let writes: Vec<_> = requests
        .iter()
        .zip(&workers)
        .map(|(r, w)| store.transition(r, offer_to(*w, 1)))
        .collect();
    assert!(futures::future::join_all(writes)
        .await
        .iter()
        .all(Result::is_ok));
    requests
}

/// Distinct transactions that last wrote these rows.
async fn writers_of(store: &Store, ids: &[Uuid]) -> i64 {
    sqlx::query_scalar("select count(distinct xmin::text) from service_requests where id = any($1)")
        .bind(ids)
        .fetch_one(store.pool())
        .await
        .unwrap()
}

/// The id of the offer a `Change::OfferSent` sends.
fn offer_id_of(change: &arreglame::store::Change) -> Uuid {
    match change {
        arreglame::store::Change::OfferSent(offer) => offer.id,
        other => unreachable!("not a new offer: {other:?}"),
    }
}

/// The payload of a request's one outbox row of `event_type`.
async fn payload_of(store: &Store, request: Uuid, event_type: &str) -> serde_json::Value {
    sqlx::query_scalar(
        r#"select payload from outbox_events where "aggregateId" = $1 and type = $2"#,
    )
    .bind(request.to_string())
    .bind(event_type)
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

// Creates keep their own statement and commit (they do not take the group commit); two
// at once with one idempotency key still make one request, and both are answered with it.
#[tokio::test(flavor = "current_thread")]
async fn concurrent_creates_with_one_key_make_one_request_and_both_are_answered_with_it() {
    let store = Store::connect(&fresh_database().await, 8).await.unwrap();
    let mut keyed = new_request(CUSTOMER, -58.40, -34.60);
    keyed.idempotency_key = Some("same-tap".into());
    let (first, second) =
        futures::future::join(store.create_request(&keyed), store.create_request(&keyed)).await;
    let (first, second) = (first.unwrap(), second.unwrap());
    assert!(first.1 != second.1, "exactly one of them created it");
    assert_eq!(first.0.id, second.0.id);
    assert_eq!(
        outbox_of(&store, first.0.id).await.len(),
        1,
        "one created event"
    );
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

// The writers keep their connections between groups (no release round trip per group),
// and let them go when the pool closes: `Pool::close` waits for every connection.
#[tokio::test]
async fn the_writers_keep_their_connections_and_let_them_go_when_the_pool_closes() {
    let store = Store::connect(&fresh_database().await, 8).await.unwrap();
    offer_four_at_once(&store).await;
    // Two writers (the default, a quarter of 8) hold one connection each.
    assert!(
        store.pool().size() as usize - store.pool().num_idle() >= 1,
        "a writer holds its connection"
    );
    tokio::time::timeout(std::time::Duration::from_secs(30), store.pool().close())
        .await
        .expect("the writers let their connections go when the pool closes");
    assert!(store.pool().is_closed());
}

#[tokio::test(flavor = "current_thread")]
async fn with_group_commit_off_each_transition_commits_alone() {
    let store = Store::connect(&fresh_database().await, 8)
        .await
        .unwrap()
        .with_group_commit(1);
    let requests = offer_four_at_once(&store).await;
    let ids: Vec<Uuid> = requests.iter().map(|r| r.id).collect();
    assert_eq!(writers_of(&store, &ids).await, 4);
}

async fn closed_at(store: &Store, id: Uuid) -> Option<chrono::DateTime<chrono::Utc>> {
    sqlx::query_scalar(r#"select "closedAt" from service_requests where id = $1"#)
        .bind(id)
        .fetch_one(store.pool())
        .await
        .unwrap()
}

/// The row versions of one request on its heap page, in line-pointer order, with whether
/// each is a heap-only tuple (a HOT update's new version, which no index points at), from
/// `pageinspect` (contrib, shipped with PostgreSQL).
async fn heap_only_versions(store: &Store, id: Uuid) -> (usize, usize) {
    sqlx::query("create extension if not exists pageinspect")
        .execute(store.pool())
        .await
        .unwrap();
    let page: i64 = sqlx::query_scalar(
        "select (ctid::text::point)[0]::bigint from service_requests where id = $1",
    )
    .bind(id)
    .fetch_one(store.pool())
    .await
    .unwrap();
    // 0x8000 is HEAP_ONLY_TUPLE in t_infomask2.
    let flags: Vec<bool> = sqlx::query_scalar(
        "select (t_infomask2 & 32768) <> 0 from heap_page_items(get_raw_page('service_requests', $1::int))
         where t_data is not null order by lp",
    )
    .bind(page)
    .fetch_all(store.pool())
    .await
    .unwrap();
    (flags.len(), flags.iter().filter(|hot| **hot).count())
}

// Issue 13, item 5: the open-request indexes key on "closedAt", not on status, so a
// transition that changes neither the assignee nor whether the request is closed touches
// no index. A fresh database holds this one request, alone on its page.
#[tokio::test]
async fn offers_rejections_and_starts_are_hot_updates_and_closing_sets_closed_at() {
    use arreglame::store::{Change, OfferOutcome};
    let store = Store::connect(&fresh_database().await, 2).await.unwrap();
    let (requests, workers) = requests_and_workers(&store, 1).await;
    let (mut request, worker) = (requests[0].clone(), workers[0]);
    let id = request.id;
    let open = |store: &Store| {
        let store = store.clone();
        async move {
            store
                .open_requests()
                .await
                .unwrap()
                .iter()
                .any(|r| r.id == id)
        }
    };
    let first = offer_to(worker, 1);
    let Change::OfferSent(ref sent) = first else {
        unreachable!()
    };
    let first_offer = sent.id;
    request = store.transition(&request, first).await.unwrap();
    let rejected = Change::OfferSettled {
        offer_id: first_offer,
        outcome: OfferOutcome::Rejected,
        reason: None,
        others_pending: false,
    };
    request = store.transition(&request, rejected).await.unwrap();
    let second = offer_to(worker, 2);
    let Change::OfferSent(ref sent) = second else {
        unreachable!()
    };
    let second_offer = sent.id;
    request = store.transition(&request, second).await.unwrap();
    // Three transitions so far (offer, rejection, offer): all heap-only.
    assert_eq!(heap_only_versions(&store, request.id).await, (4, 3));
    request = store
        .transition(
            &request,
            Change::OfferAccepted {
                offer_id: second_offer,
                worker_id: worker,
            },
        )
        .await
        .unwrap();
    request = store
        .transition(&request, Change::JobStarted)
        .await
        .unwrap();
    assert!(
        open(&store).await,
        "an open request is found by the open index"
    );
    assert_eq!(closed_at(&store, request.id).await, None);
    let request = store
        .transition(
            &request,
            Change::JobCompleted {
                payout_release_at: chrono::Utc::now() + chrono::Duration::hours(48),
            },
        )
        .await
        .unwrap();
    assert!(
        closed_at(&store, request.id).await.is_some(),
        "completion closes the request"
    );
    assert!(!open(&store).await);
    // Accepting (a new assignee) and completing (closed) touched the indexes; the start did not.
    assert_eq!(heap_only_versions(&store, request.id).await, (7, 4));
    // The database refuses an open request that claims to be closed: the partial indexes
    // stand for "open" only because of that.
    let (other, _) = store
        .create_request(&new_request(CUSTOMER, -58.40, -34.60))
        .await
        .unwrap();
    let err = sqlx::query(r#"update service_requests set "closedAt" = now() where id = $1"#)
        .bind(other.id)
        .execute(store.pool())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("service_requests_closed_at_check"),
        "{err}"
    );
}

// Item 3: a group's transitions of one kind are one multi-row statement. Every kind of a
// request's life in one group: each answered with its own row (a stale version its own
// conflict), the rows each kind implies written, one outbox row each, one commit, and a
// worker freed by a rejection offered again in the same group (releases go first).
#[tokio::test(flavor = "current_thread")]
async fn a_group_of_every_kind_writes_each_kind_as_one_statement_in_one_commit() {
    use arreglame::store::{Change, OfferOutcome};
    let store = Store::connect(&fresh_database().await, 8).await.unwrap();
    let (requests, workers) = requests_and_workers(&store, 12).await;
    // Bring each set to its stage one transition at a time (each alone).
    let mut staged = Vec::new();
    for (n, (request, worker)) in requests.iter().zip(&workers).enumerate() {
        let mut request = request.clone();
        let mut pending_offer = None;
        if n >= 3 {
            let offer = offer_to(*worker, 1);
            pending_offer = Some(offer_id_of(&offer));
            request = store.transition(&request, offer).await.unwrap();
        }
        if n >= 6 {
            let accepted = Change::OfferAccepted {
                offer_id: pending_offer.unwrap(),
                worker_id: *worker,
            };
            request = store.transition(&request, accepted).await.unwrap();
        }
        if n >= 9 {
            request = store
                .transition(&request, Change::JobStarted)
                .await
                .unwrap();
        }
        staged.push((request, pending_offer));
    }
    // A thirteenth request, offered already, offered again from the version before: a
    // lost race inside the multi-row statement of the new offers, that transition's alone.
    let (stale, _) = requests_and_workers(&store, 1).await;
    let stale = stale[0].clone();
    let spare = insert_worker(&store, "buenos-aires").await;
    store
        .transition(
            &stale,
            offer_to(insert_worker(&store, "buenos-aires").await, 1),
        )
        .await
        .unwrap();
    // 0–2 PENDING, 3–5 OFFERING, 6–8 ASSIGNED, 9–11 IN_PROGRESS. Request 0 is offered the
    // worker of request 3, whose offer request 3 settles in the same group.
    let mut writes = Vec::new();
    for (n, (request, pending_offer)) in staged.iter().enumerate() {
        let change = match n {
            0 => offer_to(workers[3], 1),
            1 | 2 => offer_to(workers[n], 1),
            3 | 4 => Change::OfferSettled {
                offer_id: pending_offer.unwrap(),
                outcome: OfferOutcome::Rejected,
                reason: Some("busy".into()),
                others_pending: false,
            },
            5 => Change::OfferAccepted {
                offer_id: pending_offer.unwrap(),
                worker_id: workers[5],
            },
            6..=8 => Change::JobStarted,
            _ => Change::JobCompleted {
                payout_release_at: chrono::Utc::now() + chrono::Duration::hours(48),
            },
        };
        writes.push(store.transition(request, change));
    }
    writes.push(store.transition(&stale, offer_to(spare, 1)));
    let results = futures::future::join_all(writes).await;
    assert!(results[..12].iter().all(|r| r.is_ok()), "{results:?}");
    assert!(
        matches!(&results[12], Err(StoreError::ConcurrencyConflict { .. })),
        "{:?}",
        results[12]
    );
    let ids: Vec<Uuid> = requests.iter().map(|r| r.id).collect();
    assert_eq!(
        writers_of(&store, &ids).await,
        1,
        "one commit carried them all"
    );
    let statuses: Vec<String> =
        futures::future::join_all(ids.iter().map(|id| store.get_request(*id)))
            .await
            .into_iter()
            .map(|r| r.unwrap().status.as_str().to_string())
            .collect();
    assert_eq!(
        statuses,
        [
            "OFFERING",
            "OFFERING",
            "OFFERING",
            "PENDING",
            "PENDING",
            "ASSIGNED",
            "IN_PROGRESS",
            "IN_PROGRESS",
            "IN_PROGRESS",
            "COMPLETED",
            "COMPLETED",
            "COMPLETED"
        ]
    );
    for (n, result) in results[..12].iter().enumerate() {
        let row = result.as_ref().unwrap();
        assert_eq!(row.id, ids[n], "each transition gets its own row back");
        assert_eq!(
            outbox_of(&store, row.id).await.len() as i32,
            row.version,
            "one outbox row per version"
        );
    }
    let payouts: i64 =
        sqlx::query_scalar(r#"select count(*) from payouts where "requestId" = any($1)"#)
            .bind(&ids)
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!(payouts, 3);
    let rejected: Vec<(String, Option<String>)> = sqlx::query_as(
        r#"select outcome, "rejectReason" from offers where "requestId" = any($1) and outcome = 'REJECTED'"#,
    )
    .bind(&ids[3..5])
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(rejected.len(), 2);
    assert!(rejected
        .iter()
        .all(|(_, reason)| reason.as_deref() == Some("busy")));
    assert_eq!(
        payload_of(&store, ids[3], "OfferRejected").await["workerId"],
        workers[3].to_string()
    );
    let re_offered: Uuid = sqlx::query_scalar(
        r#"select "workerId" from offers where "requestId" = $1 and outcome is null"#,
    )
    .bind(ids[0])
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(
        re_offered, workers[3],
        "freed and offered again in one group"
    );
}

// The multi-row acceptance withdraws each request's other pending offers (parallel offers)
// and names their workers in that request's own outbox row, and only there: the payload of
// each row is joined to its own request, not to another row of the same statement.
#[tokio::test(flavor = "current_thread")]
async fn accepted_together_each_withdraws_its_own_other_offers_and_names_only_their_workers() {
    use arreglame::store::Change;
    let store = Store::connect(&fresh_database().await, 8).await.unwrap();
    let (requests, first) = requests_and_workers(&store, 3).await;
    let mut second = Vec::new();
    for _ in 0..2 {
        second.push(insert_worker(&store, "buenos-aires").await);
    }
    // Requests 0 and 1 hold two pending offers each (first[n], then second[n]); request 2
    // holds one.
    let mut offered = Vec::new();
    for (n, request) in requests.iter().enumerate() {
        let mut offers = Vec::new();
        let offer = offer_to(first[n], 1);
        offers.push(offer_id_of(&offer));
        let mut request = store.transition(request, offer).await.unwrap();
        if n < 2 {
            let offer = offer_to(second[n], 2);
            offers.push(offer_id_of(&offer));
            request = store.transition(&request, offer).await.unwrap();
        }
        offered.push((request, offers));
    }
    // Request 0 accepted by its first worker, request 1 by its second, request 2 by its only.
    let accepts = [(0, first[0]), (1, second[1]), (0, first[2])];
    let writes: Vec<_> = offered
        .iter()
        .zip(accepts)
        .map(|((request, offers), (which, worker))| {
            store.transition(
                request,
                Change::OfferAccepted {
                    offer_id: offers[which],
                    worker_id: worker,
                },
            )
        })
        .collect();
    let results = futures::future::join_all(writes).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let ids: Vec<Uuid> = requests.iter().map(|r| r.id).collect();
    assert_eq!(writers_of(&store, &ids).await, 1, "one commit");
    let assigned = |n: usize| payload_of(&store, ids[n], "WorkerAssigned");
    assert_eq!(
        assigned(0).await["withdrawnFromWorkerIds"],
        serde_json::json!([second[0].to_string()])
    );
    assert_eq!(
        assigned(1).await["withdrawnFromWorkerIds"],
        serde_json::json!([first[1].to_string()])
    );
    assert!(
        assigned(2).await.get("withdrawnFromWorkerIds").is_none(),
        "nothing was withdrawn from request 2"
    );
    let outcomes: Vec<(Uuid, String)> = sqlx::query_as(
        r#"select "workerId", outcome from offers where "requestId" = any($1) order by "workerId""#,
    )
    .bind(&ids)
    .fetch_all(store.pool())
    .await
    .unwrap();
    let mut expected = vec![
        (first[0], "ACCEPTED".to_string()),
        (second[0], "WITHDRAWN".to_string()),
        (first[1], "WITHDRAWN".to_string()),
        (second[1], "ACCEPTED".to_string()),
        (first[2], "ACCEPTED".to_string()),
    ];
    expected.sort();
    assert_eq!(outcomes, expected);
}
