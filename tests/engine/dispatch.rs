//! Issue 3: the dispatch loop against a real PostgreSQL, with real actors and an in-process
//! worker gateway, on tokio's paused clock (time moves only when the test says so, or when
//! every task is idle and tokio jumps to the next timer).

use std::time::Duration;

use arreglame::{
    dispatch::{gateway::WorkerNotice, CommandError},
    domain::Status,
    jobs::cron::{payout_release_sweep, worker_assignment_sweep},
    store::CancelledBy,
};
use uuid::Uuid;

use crate::helpers::*;

// Buenos Aires, around the Obelisco.

fn offer(notice: WorkerNotice) -> arreglame::dispatch::gateway::OfferNotice {
    match notice {
        WorkerNotice::Offer(o) => o,
        other => panic!("expected an offer, got {other:?}"),
    }
}

async fn status_of(h: &DispatchHarness, id: Uuid) -> Status {
    h.store.get_request(id).await.unwrap().status
}

/// Waits (in virtual time) until the request's live actor reports a pending offer.
async fn until_actor_offering(h: &DispatchHarness, id: Uuid) -> Uuid {
    wait_for(PATIENCE, || async {
        h.dispatcher
            .snapshot(id)
            .await
            .and_then(|s| s.pending)
            .map(|p| p.offer_id)
    })
    .await
}

async fn until_no_actor(h: &DispatchHarness, id: Uuid) {
    wait_until(PATIENCE, || async { !h.dispatcher.has_actor(id) }).await
}

#[tokio::test]
async fn nearest_worker_is_offered_first_and_a_full_job_ends_with_a_payout() {
    let mut h = DispatchHarness::start(quick_settings()).await;
    let far = h.worker_online(LON + 0.02, LAT, &["lawn_mowing"]).await; // ~1.8 km
    let near = h.worker_online(LON + 0.005, LAT, &["lawn_mowing"]).await; // ~460 m
    let _unskilled = h.worker_online(LON + 0.001, LAT, &["cleaning"]).await;
    let request = h.create_request(LON, LAT).await;

    let o = offer(h.next_notice().await);
    assert_eq!(o.worker_id, near);
    assert!(
        (o.distance_meters - 458.0).abs() < 10.0,
        "{}",
        o.distance_meters
    );
    assert_eq!(o.worker_net_cents, 1_275_000);

    let assigned = h
        .dispatcher
        .accept_offer(near, request.id, o.offer_id)
        .await
        .unwrap();
    assert_eq!(
        (assigned.status, assigned.assigned_worker_id),
        (Status::Assigned, Some(near))
    );
    assert!(
        matches!(h.next_notice().await, WorkerNotice::AssignmentConfirmed { worker_id, .. } if worker_id == near)
    );

    // Someone else may not drive the job.
    assert_eq!(
        h.dispatcher.start_job(far, request.id).await.unwrap_err(),
        CommandError::NotYourJob
    );
    h.dispatcher.start_job(near, request.id).await.unwrap();
    let done = h.dispatcher.complete_job(near, request.id).await.unwrap();
    assert_eq!(done.status, Status::Completed);

    let payout = h
        .store
        .payout_for_request(request.id)
        .await
        .unwrap()
        .expect("payout created");
    assert_eq!(
        (
            payout.worker_id,
            payout.amount_cents,
            payout.status.as_str()
        ),
        (near, 1_275_000, "PENDING")
    );
    let window = payout.release_at - done.completed_at.unwrap();
    assert!(
        (window - chrono::Duration::hours(24)).num_seconds().abs() <= 1,
        "{window}"
    );

    // Every transition left exactly one outbox row, versions 1..=5 in order.
    let events = outbox_of(&h.store, request.id).await;
    let types: Vec<&str> = events.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        types,
        [
            "ServiceRequestCreated",
            "OfferSent",
            "WorkerAssigned",
            "JobStarted",
            "JobCompleted"
        ]
    );
    assert_eq!(
        events.iter().map(|(_, v)| *v).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    until_no_actor(&h, request.id).await;
}

#[tokio::test]
async fn offer_times_out_and_moves_to_next_worker() {
    let mut h = DispatchHarness::start(quick_settings()).await;
    let first = h.worker_online(LON + 0.001, LAT, &["lawn_mowing"]).await;
    let second = h.worker_online(LON + 0.01, LAT, &["lawn_mowing"]).await;
    let request = h.create_request(LON, LAT).await;
    tokio::time::pause();

    let o1 = offer(h.next_notice().await);
    assert_eq!(o1.worker_id, first);
    tokio::time::advance(Duration::from_secs(61)).await;
    assert!(matches!(h.next_notice().await,
        WorkerNotice::OfferWithdrawn { worker_id, reason, .. } if worker_id == first && reason == "expired"));
    let o2 = offer(h.next_notice().await);
    assert_eq!((o2.worker_id, o2.attempt), (second, 2));
    // Back to the real clock: on a paused one, tokio would jump to the next offer's
    // deadline while this test waits on the database.
    tokio::time::resume();

    let offers = h.store.offers_for_request(request.id).await.unwrap();
    assert_eq!(offers[0].outcome.as_deref(), Some("EXPIRED"));
    assert_eq!(offers[1].outcome, None);
    // The first worker is available again: a new request nearby goes to them.
    let other = h.create_request(LON, LAT).await;
    let o3 = offer(h.next_notice().await);
    assert_eq!((o3.request_id, o3.worker_id), (other.id, first));
}

#[tokio::test]
async fn reject_cascades_to_the_next_worker_then_unassigned() {
    let mut h = DispatchHarness::start(quick_settings()).await;
    let a = h.worker_online(LON + 0.001, LAT, &["lawn_mowing"]).await;
    let b = h.worker_online(LON + 0.002, LAT, &["lawn_mowing"]).await;
    let request = h.create_request(LON, LAT).await;

    let o = offer(h.next_notice().await);
    assert_eq!(o.worker_id, a);
    h.dispatcher
        .reject_offer(a, request.id, o.offer_id, Some("too far".into()))
        .await
        .unwrap();
    let o = offer(h.next_notice().await);
    assert_eq!(o.worker_id, b);
    h.dispatcher
        .reject_offer(b, request.id, o.offer_id, None)
        .await
        .unwrap();

    until_no_actor(&h, request.id).await;
    let row = h.store.get_request(request.id).await.unwrap();
    assert_eq!(row.status, Status::Unassigned);
    assert_eq!(row.assignment_attempts, 2);
    assert_eq!(
        row.unassigned_reason.as_deref(),
        Some("no available worker within 10 km")
    );
    let offers = h.store.offers_for_request(request.id).await.unwrap();
    assert_eq!(offers[0].reject_reason.as_deref(), Some("too far"));
    assert!(offers
        .iter()
        .all(|o| o.outcome.as_deref() == Some("REJECTED")));
}

#[tokio::test]
async fn max_attempts_ends_unassigned() {
    let settings = arreglame::store::Settings {
        max_assignment_attempts: 2,
        ..quick_settings()
    };
    let mut h = DispatchHarness::start(settings).await;
    for i in 0..3 {
        h.worker_online(LON + 0.001 * (i + 1) as f64, LAT, &["lawn_mowing"])
            .await;
    }
    let request = h.create_request(LON, LAT).await;
    tokio::time::pause();
    offer(h.next_notice().await);
    tokio::time::advance(Duration::from_secs(61)).await;
    let _withdrawn = h.next_notice().await;
    offer(h.next_notice().await);
    tokio::time::advance(Duration::from_secs(61)).await;
    let _withdrawn = h.next_notice().await;
    until_no_actor(&h, request.id).await;
    let row = h.store.get_request(request.id).await.unwrap();
    assert_eq!(
        (row.status, row.assignment_attempts),
        (Status::Unassigned, 2)
    );
    assert_eq!(
        row.unassigned_reason.as_deref(),
        Some("max attempts reached")
    );
}

#[tokio::test]
async fn a_worker_holding_an_offer_or_a_job_is_not_offered_another() {
    let mut h = DispatchHarness::start(quick_settings()).await;
    let only = h.worker_online(LON, LAT, &["lawn_mowing"]).await;
    let first = h.create_request(LON, LAT).await;
    let o = offer(h.next_notice().await);
    assert_eq!(o.worker_id, only);

    // While the offer is out, a second request finds nobody.
    let second = h.create_request(LON, LAT).await;
    until_no_actor(&h, second.id).await;
    assert_eq!(status_of(&h, second.id).await, Status::Unassigned);

    // Busy with the job: still nobody for a third.
    h.dispatcher
        .accept_offer(only, first.id, o.offer_id)
        .await
        .unwrap();
    let third = h.create_request(LON, LAT).await;
    until_no_actor(&h, third.id).await;
    assert_eq!(status_of(&h, third.id).await, Status::Unassigned);
    let stats = h.dispatcher.city_stats().await;
    let ba = stats.iter().find(|s| s.city_id == "buenos-aires").unwrap();
    assert_eq!((ba.online, ba.busy, ba.available), (1, 1, 0));
}

#[tokio::test]
async fn cancel_during_an_offer_withdraws_it_and_tells_the_worker() {
    let mut h = DispatchHarness::start(quick_settings()).await;
    let w = h.worker_online(LON, LAT, &["lawn_mowing"]).await;
    let request = h.create_request(LON, LAT).await;
    let o = offer(h.next_notice().await);

    let cancelled = h
        .dispatcher
        .cancel(
            request.id,
            CancelledBy::Customer,
            Some("changed my mind".into()),
        )
        .await
        .unwrap();
    assert_eq!(
        (cancelled.status, cancelled.cancellation_fee_cents),
        (Status::Cancelled, Some(0))
    );
    assert!(matches!(h.next_notice().await,
        WorkerNotice::OfferWithdrawn { worker_id, reason, .. } if worker_id == w && reason == "cancelled"));
    let offers = h.store.offers_for_request(request.id).await.unwrap();
    assert_eq!(offers[0].outcome.as_deref(), Some("WITHDRAWN"));

    // The worker's accept now arrives too late.
    until_no_actor(&h, request.id).await;
    let late = h
        .dispatcher
        .accept_offer(w, request.id, o.offer_id)
        .await
        .unwrap_err();
    assert_eq!(late, CommandError::OfferNotPending);
    // And the worker is free for the next job.
    h.create_request(LON, LAT).await;
    assert_eq!(offer(h.next_notice().await).worker_id, w);
}

#[tokio::test]
async fn late_accept_after_the_timer_is_refused() {
    let mut h = DispatchHarness::start(quick_settings()).await;
    let w = h.worker_online(LON, LAT, &["lawn_mowing"]).await;
    let request = h.create_request(LON, LAT).await;
    tokio::time::pause();
    let o = offer(h.next_notice().await);
    tokio::time::advance(Duration::from_secs(61)).await;
    let _withdrawn = h.next_notice().await;
    let late = h
        .dispatcher
        .accept_offer(w, request.id, o.offer_id)
        .await
        .unwrap_err();
    assert_eq!(late, CommandError::OfferNotPending);
    until_no_actor(&h, request.id).await;
    assert_eq!(status_of(&h, request.id).await, Status::Unassigned);
}

#[tokio::test]
async fn two_concurrent_accepts_give_one_assignment() {
    let mut h = DispatchHarness::start(quick_settings()).await;
    let w = h.worker_online(LON, LAT, &["lawn_mowing"]).await;
    let intruder = h.worker_online(LON + 0.03, LAT, &["lawn_mowing"]).await;
    let request = h.create_request(LON, LAT).await;
    let o = offer(h.next_notice().await);

    let (a, b, c) = tokio::join!(
        h.dispatcher.accept_offer(w, request.id, o.offer_id),
        h.dispatcher.accept_offer(w, request.id, o.offer_id),
        h.dispatcher.accept_offer(intruder, request.id, o.offer_id),
    );
    let wins = [a.is_ok(), b.is_ok()].iter().filter(|x| **x).count();
    assert_eq!(wins, 1, "{a:?} {b:?}");
    assert!(
        matches!(
            c,
            Err(CommandError::NotYourOffer | CommandError::OfferNotPending)
        ),
        "{c:?}"
    );
    let accepted: i64 = sqlx::query_scalar(
        r#"select count(*) from offers where "requestId" = $1 and outcome = 'ACCEPTED'"#,
    )
    .bind(request.id)
    .fetch_one(h.store.pool())
    .await
    .unwrap();
    assert_eq!(accepted, 1);
}

#[tokio::test]
async fn a_panicking_request_actor_is_restarted_from_the_database_and_completes() {
    let mut h = DispatchHarness::start(quick_settings()).await;
    let w = h.worker_online(LON, LAT, &["lawn_mowing"]).await;
    let request = h.create_request(LON, LAT).await;
    tokio::time::pause();
    let o = offer(h.next_notice().await);

    assert!(h.dispatcher.inject_panic(request.id));
    // The restarted actor resumes the same pending offer from its row.
    let resumed = until_actor_offering(&h, request.id).await;
    assert_eq!(resumed, o.offer_id);
    assert_eq!(h.dispatcher.stats().actor_restarts.get(), 1);

    h.dispatcher
        .accept_offer(w, request.id, o.offer_id)
        .await
        .unwrap();
    h.dispatcher.start_job(w, request.id).await.unwrap();
    let done = h.dispatcher.complete_job(w, request.id).await.unwrap();
    assert_eq!(done.status, Status::Completed);
}

#[tokio::test]
async fn a_request_actor_that_keeps_failing_is_escalated_and_the_cron_brings_it_back() {
    let mut h = DispatchHarness::start(quick_settings()).await;
    let _w = h.worker_online(LON, LAT, &["lawn_mowing"]).await;
    let request = h.create_request(LON, LAT).await;
    tokio::time::pause();
    let o = offer(h.next_notice().await);
    for _ in 0..=arreglame::dispatch::supervisor::MAX_RESTARTS {
        until_actor_offering(&h, request.id).await;
        assert!(h.dispatcher.inject_panic(request.id));
        until_no_actor(&h, request.id).await;
    }
    // Past the cap nobody restarts it...
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(h.dispatcher.snapshot(request.id).await.is_none());
    assert_eq!(h.dispatcher.stats().actors_escalated.get(), 1);
    // ...until the backstop sweep gives the open request its actor back.
    let report = worker_assignment_sweep(&h.store, &h.dispatcher)
        .await
        .unwrap();
    assert_eq!(report.respawned, 1);
    assert_eq!(until_actor_offering(&h, request.id).await, o.offer_id);
}

#[tokio::test]
async fn restart_recovery_rearms_only_the_remaining_offer_time() {
    let mut h = DispatchHarness::start(quick_settings()).await;
    let w = h.worker_online(LON, LAT, &["lawn_mowing"]).await;
    let request = h.create_request(LON, LAT).await;
    let o = offer(h.next_notice().await);
    assert_eq!(o.worker_id, w);

    // The engine dies. While it is down, 20 of the offer's 60 seconds pass.
    h.dispatcher.shutdown().await;
    sqlx::query(r#"update offers set "expiresAt" = now() + interval '40 seconds' where id = $1"#)
        .bind(o.offer_id)
        .execute(h.store.pool())
        .await
        .unwrap();
    sqlx::query(r#"update service_requests set "workerTimeoutAt" = now() + interval '40 seconds' where id = $1"#)
        .bind(request.id)
        .execute(h.store.pool())
        .await
        .unwrap();

    let mut restarted = DispatchHarness::start_on(h.database_url.clone(), quick_settings()).await;
    assert_eq!(
        until_actor_offering(&restarted, request.id).await,
        o.offer_id
    );
    // The recovered offer is pushed to the worker again, same id and deadline.
    let again = offer(restarted.next_notice().await);
    assert_eq!((again.offer_id, again.worker_id), (o.offer_id, w));
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(35)).await;
    assert_eq!(
        restarted
            .dispatcher
            .snapshot(request.id)
            .await
            .unwrap()
            .pending
            .map(|p| p.offer_id),
        Some(o.offer_id)
    );
    tokio::time::advance(Duration::from_secs(6)).await;
    assert!(matches!(restarted.next_notice().await,
        WorkerNotice::OfferWithdrawn { offer_id, reason, .. } if offer_id == o.offer_id && reason == "expired"));
}

#[tokio::test]
async fn an_offer_that_expired_while_the_engine_was_down_is_settled_at_start() {
    let mut h = DispatchHarness::start(quick_settings()).await;
    h.worker_online(LON, LAT, &["lawn_mowing"]).await;
    let request = h.create_request(LON, LAT).await;
    let o = offer(h.next_notice().await);
    h.dispatcher.shutdown().await;
    sqlx::query(r#"update offers set "expiresAt" = now() - interval '1 second' where id = $1"#)
        .bind(o.offer_id)
        .execute(h.store.pool())
        .await
        .unwrap();

    let mut restarted = DispatchHarness::start_on(h.database_url.clone(), quick_settings()).await;
    assert!(matches!(restarted.next_notice().await,
        WorkerNotice::OfferWithdrawn { offer_id, .. } if offer_id == o.offer_id));
    // Nobody is online in the new engine yet: the request ends unassigned, never lost.
    until_no_actor(&restarted, request.id).await;
    let row = restarted.store.get_request(request.id).await.unwrap();
    assert_eq!(row.status, Status::Unassigned);
    let offers = restarted
        .store
        .offers_for_request(request.id)
        .await
        .unwrap();
    assert_eq!(offers[0].outcome.as_deref(), Some("EXPIRED"));
}

#[tokio::test]
async fn a_killed_engine_loses_no_request_and_assigns_none_twice() {
    let mut h = DispatchHarness::start(quick_settings()).await;
    let workers: Vec<Uuid> = futures_join_all(&h, 4).await;
    let mut requests = Vec::new();
    for i in 0..6 {
        requests.push(h.create_request(LON + 0.0005 * i as f64, LAT).await.id);
    }
    // Accept the first two offers that arrive; the rest stay pending at the "kill".
    let mut accepted = 0;
    while accepted < 2 {
        if let WorkerNotice::Offer(o) = h.next_notice().await {
            h.dispatcher
                .accept_offer(o.worker_id, o.request_id, o.offer_id)
                .await
                .unwrap();
            accepted += 1;
        }
    }
    // Kill: actors vanish without any clean-up of their own.
    h.dispatcher.kill_request_actors();
    drop(h.dispatcher);

    let mut again = DispatchHarness::start_on(h.database_url.clone(), quick_settings()).await;
    for w in &workers {
        again
            .dispatcher
            .worker_online("buenos-aires", *w, LON, LAT, vec!["lawn_mowing".into()])
            .await
            .unwrap();
    }
    // Answer every offer (the recovered ones are pushed again) until all are settled.
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "requests still open after {PATIENCE:?}"
        );
        let open: i64 = sqlx::query_scalar(
            "select count(*) from service_requests where status in ('PENDING', 'OFFERING')",
        )
        .fetch_one(again.store.pool())
        .await
        .unwrap();
        if open == 0 {
            break;
        }
        let next = tokio::time::timeout(Duration::from_millis(200), again.next_notice()).await;
        if let Ok(WorkerNotice::Offer(o)) = next {
            let _ = again
                .dispatcher
                .accept_offer(o.worker_id, o.request_id, o.offer_id)
                .await;
        }
    }
    let rows: Vec<(Uuid, String)> =
        sqlx::query_as("select id, status from service_requests order by id")
            .fetch_all(again.store.pool())
            .await
            .unwrap();
    assert_eq!(rows.len(), requests.len(), "no request lost");
    let doubly: i64 = sqlx::query_scalar(
        r#"select count(*) from (select "requestId" from offers where outcome = 'ACCEPTED' group by "requestId" having count(*) > 1) d"#,
    )
    .fetch_one(again.store.pool())
    .await
    .unwrap();
    assert_eq!(doubly, 0);
    let assigned: i64 = sqlx::query_scalar(r#"select count(distinct "assignedWorkerId") from service_requests where status = 'ASSIGNED'"#)
        .fetch_one(again.store.pool())
        .await
        .unwrap();
    let assigned_rows: i64 =
        sqlx::query_scalar("select count(*) from service_requests where status = 'ASSIGNED'")
            .fetch_one(again.store.pool())
            .await
            .unwrap();
    assert_eq!(assigned, assigned_rows, "no worker holds two jobs");
    assert_eq!(assigned_rows, 4, "four workers, four assignments");
}

async fn futures_join_all(h: &DispatchHarness, n: usize) -> Vec<Uuid> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push(
            h.worker_online(LON + 0.001 * i as f64, LAT + 0.001, &["lawn_mowing"])
                .await,
        );
    }
    out
}

#[tokio::test]
async fn the_cron_backstop_settles_an_overdue_offer_nobody_watches() {
    let mut h = DispatchHarness::start(quick_settings()).await;
    let w = h.worker_online(LON, LAT, &["lawn_mowing"]).await;
    let request = h.create_request(LON, LAT).await;
    let o = offer(h.next_notice().await);
    // The actor dies for good (as if escalated) and the offer's deadline passes.
    assert!(h.dispatcher.kill_request_actor(request.id));
    until_no_actor(&h, request.id).await;
    sqlx::query(r#"update service_requests set "workerTimeoutAt" = now() - interval '1 minute' where id = $1"#)
        .bind(request.id)
        .execute(h.store.pool())
        .await
        .unwrap();
    let overdue: i64 = sqlx::query_scalar(
        r#"SELECT COUNT(*) FROM service_requests WHERE status = 'OFFERING' AND "workerTimeoutAt" < NOW()"#,
    )
    .fetch_one(h.store.pool())
    .await
    .unwrap();
    assert_eq!(overdue, 1);

    let report = worker_assignment_sweep(&h.store, &h.dispatcher)
        .await
        .unwrap();
    assert_eq!((report.settled, report.respawned), (1, 1));
    let offers = h.store.offers_for_request(request.id).await.unwrap();
    assert_eq!(offers[0].outcome.as_deref(), Some("EXPIRED"));
    assert_eq!(offers[0].id, o.offer_id);
    // A second sweep finds nothing to do.
    let again = worker_assignment_sweep(&h.store, &h.dispatcher)
        .await
        .unwrap();
    assert_eq!(again.settled, 0);
    let _ = w;
}

#[tokio::test]
async fn two_concurrent_payout_sweeps_release_each_payout_once() {
    let h = DispatchHarness::start(quick_settings()).await;
    let worker = insert_worker(&h.store, "buenos-aires").await;
    let mut payouts = Vec::new();
    for _ in 0..25 {
        let (row, _) = h
            .store
            .create_request(&new_request(CUSTOMER, LON, LAT))
            .await
            .unwrap();
        let id: Uuid = sqlx::query_scalar(
            r#"insert into payouts ("requestId", "workerId", "amountCents", "releaseAt")
               values ($1, $2, 1000, now() - interval '1 minute') returning id"#,
        )
        .bind(row.id)
        .bind(worker)
        .fetch_one(h.store.pool())
        .await
        .unwrap();
        payouts.push(id);
    }
    // One not yet due.
    let (row, _) = h
        .store
        .create_request(&new_request(CUSTOMER, LON, LAT))
        .await
        .unwrap();
    sqlx::query(r#"insert into payouts ("requestId", "workerId", "amountCents", "releaseAt") values ($1, $2, 1, now() + interval '1 hour')"#)
        .bind(row.id)
        .bind(worker)
        .execute(h.store.pool())
        .await
        .unwrap();

    let (a, b) = tokio::join!(
        payout_release_sweep(&h.store, 3),
        payout_release_sweep(&h.store, 3)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.released + b.released, 25);
    let events: i64 =
        sqlx::query_scalar("select count(*) from outbox_events where type = 'PayoutReleased'")
            .fetch_one(h.store.pool())
            .await
            .unwrap();
    assert_eq!(events, 25, "one event per payout");
    let pending: i64 = sqlx::query_scalar("select count(*) from payouts where status = 'PENDING'")
        .fetch_one(h.store.pool())
        .await
        .unwrap();
    assert_eq!(pending, 1);
    assert_eq!(payout_release_sweep(&h.store, 3).await.unwrap().released, 0);
}

#[tokio::test]
async fn a_timeout_changed_at_run_time_applies_to_the_next_offer() {
    let mut h = DispatchHarness::start(quick_settings()).await;
    h.worker_online(LON, LAT, &["lawn_mowing"]).await;
    h.settings
        .send(std::sync::Arc::new(arreglame::store::Settings {
            worker_timeout: Duration::from_secs(30),
            ..quick_settings()
        }))
        .unwrap();
    h.create_request(LON, LAT).await;
    let o = offer(h.next_notice().await);
    let lead = (o.expires_at - chrono::Utc::now()).num_seconds();
    assert!(
        (25..=30).contains(&lead),
        "offer expires in {lead}s, expected about 30"
    );
}
