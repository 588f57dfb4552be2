//! Issue 15: home-services dispatch against a real PostgreSQL, with real actors and an
//! in-process worker gateway, on tokio's paused clock where a rule depends on time (a
//! booking's dispatch time, its reminder, its no-show deadline, an offer batch's timer).
//! While paused, the tests read the actors (no I/O) rather than the database: on a paused
//! clock tokio jumps to the next timer while a test waits on a socket.

use std::time::Duration;

use arreglame::{
    dispatch::{gateway::WorkerNotice, CommandError},
    domain::{offer_policy::OfferMode, Status},
    store::{Settings, TAKEN},
};
use chrono::{SubsecRound, Utc};
use uuid::Uuid;

use crate::helpers::*;

fn offer(notice: WorkerNotice) -> arreglame::dispatch::gateway::OfferNotice {
    match notice {
        WorkerNotice::Offer(o) => o,
        other => panic!("expected an offer, got {other:?}"),
    }
}

/// Now, to the millisecond (what the database and the wire keep).
fn now() -> chrono::DateTime<Utc> {
    Utc::now().trunc_subsecs(3)
}

fn hours(h: i64) -> chrono::Duration {
    chrono::Duration::hours(h)
}

fn minutes(m: i64) -> chrono::Duration {
    chrono::Duration::minutes(m)
}

/// Bookings are dispatched a week ahead (so one booked for the coming days is offered at
/// once) unless a test says otherwise.
fn booking_settings() -> Settings {
    Settings {
        dispatch_lead: Duration::from_secs(7 * 24 * 3600),
        ..quick_settings()
    }
}

async fn status_in_actor(h: &DispatchHarness, id: Uuid) -> Status {
    h.dispatcher.snapshot(id).await.expect("actor").status
}

async fn strikes_of(h: &DispatchHarness, worker: Uuid) -> Vec<String> {
    sqlx::query_scalar(r#"select kind from worker_strikes where "workerId" = $1 order by id"#)
        .bind(worker)
        .fetch_all(h.store.pool())
        .await
        .unwrap()
}

async fn event_types(h: &DispatchHarness, id: Uuid) -> Vec<String> {
    outbox_of(&h.store, id)
        .await
        .into_iter()
        .map(|(t, _)| t)
        .collect()
}

#[tokio::test]
async fn a_booked_request_stays_scheduled_until_its_lead_time_then_is_offered_with_its_slot() {
    let settings = Settings {
        dispatch_lead: Duration::from_secs(3600),
        ..quick_settings()
    };
    let mut h = DispatchHarness::start(settings).await;
    let worker = h.worker_online(LON + 0.001, LAT, &["lawn_mowing"]).await;
    let start = now() + hours(3);
    // A booking may be cancelled for free while it waits.
    let changed_mind = h.create_booked(LON, LAT, (start, start + hours(2))).await;
    let cancelled = h
        .dispatcher
        .cancel(
            changed_mind.id,
            arreglame::store::CancelledBy::Customer,
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        (cancelled.status, cancelled.cancellation_fee_cents),
        (Status::Cancelled, Some(0))
    );
    let booked = h.create_booked(LON, LAT, (start, start + hours(2))).await;
    assert_eq!(booked.status, Status::Scheduled);
    tokio::time::pause();
    assert_eq!(status_in_actor(&h, booked.id).await, Status::Scheduled);
    // An hour and 59 minutes later: still two hours and a minute before the slot.
    tokio::time::advance(Duration::from_secs(119 * 60)).await;
    assert_eq!(status_in_actor(&h, booked.id).await, Status::Scheduled);
    assert!(
        h.notices.try_recv().is_err(),
        "nobody is offered a job before its time"
    );
    tokio::time::advance(Duration::from_secs(2 * 60)).await;
    let o = offer(h.next_notice().await);
    tokio::time::resume();
    assert_eq!(o.worker_id, worker);
    assert_eq!(
        (o.scheduled_start, o.scheduled_end),
        (Some(start), Some(start + hours(2)))
    );
    assert_eq!(
        event_types(&h, booked.id).await,
        ["ServiceRequestCreated", "DispatchOpened", "OfferSent"]
    );
}

#[tokio::test]
async fn a_worker_booked_at_an_overlapping_time_is_not_offered_the_job() {
    let mut h = DispatchHarness::start(booking_settings()).await;
    let near = h.worker_online(LON + 0.001, LAT, &["lawn_mowing"]).await;
    let far = h.worker_online(LON + 0.01, LAT, &["lawn_mowing"]).await;
    let saturday_10 = now() + hours(72);
    let first = h
        .create_booked(LON, LAT, (saturday_10, saturday_10 + hours(2)))
        .await;
    let o = offer(h.next_notice().await);
    assert_eq!(o.worker_id, near);
    h.dispatcher
        .accept_offer(near, first.id, o.offer_id)
        .await
        .unwrap();
    assert!(matches!(
        h.next_notice().await,
        WorkerNotice::AssignmentConfirmed { .. }
    ));
    // 12:15 to 13:00 is within the 30-minute travel buffer of the 10:00–12:00 job: the
    // nearer worker is skipped.
    let tight = h
        .create_booked(
            LON,
            LAT,
            (saturday_10 + minutes(135), saturday_10 + hours(3)),
        )
        .await;
    let o = offer(h.next_notice().await);
    assert_eq!((o.request_id, o.worker_id), (tight.id, far));
    // 14:00 to 15:00 is clear of it: the nearer worker, free until Saturday, gets it.
    let later = h
        .create_booked(LON, LAT, (saturday_10 + hours(4), saturday_10 + hours(5)))
        .await;
    let o = offer(h.next_notice().await);
    assert_eq!((o.request_id, o.worker_id), (later.id, near));
    // So does a job wanted now: the booked worker is free until the slot.
    h.dispatcher
        .reject_offer(near, later.id, o.offer_id, None)
        .await
        .unwrap();
    // (The other worker holds the 12:15 offer: the 14:00 booking ends unassigned.)
    wait_until(PATIENCE, || async { !h.dispatcher.has_actor(later.id) }).await;
    let now_job = h.create_request(LON, LAT).await;
    let o = offer(h.next_notice().await);
    assert_eq!((o.request_id, o.worker_id), (now_job.id, near));
}

#[tokio::test]
async fn the_assigned_worker_is_reminded_and_a_no_show_goes_back_to_dispatch_without_them() {
    let settings = Settings {
        job_reminder_before: Duration::from_secs(3600),
        no_show_grace: Duration::from_secs(15 * 60),
        ..booking_settings()
    };
    let mut h = DispatchHarness::start(settings).await;
    let no_show = h.worker_online(LON + 0.001, LAT, &["lawn_mowing"]).await;
    let reliable = h.worker_online(LON + 0.01, LAT, &["lawn_mowing"]).await;
    let start = now() + hours(3);
    let booked = h.create_booked(LON, LAT, (start, start + hours(2))).await;
    let o = offer(h.next_notice().await);
    assert_eq!(o.worker_id, no_show);
    h.dispatcher
        .accept_offer(no_show, booked.id, o.offer_id)
        .await
        .unwrap();
    assert!(matches!(
        h.next_notice().await,
        WorkerNotice::AssignmentConfirmed { .. }
    ));
    tokio::time::pause();
    // Two hours later the slot is an hour away: the reminder goes out.
    tokio::time::advance(Duration::from_secs(2 * 3600)).await;
    match h.next_notice().await {
        WorkerNotice::JobReminder {
            worker_id,
            request_id,
            scheduled_start,
            ..
        } => assert_eq!(
            (worker_id, request_id, scheduled_start),
            (no_show, booked.id, start)
        ),
        other => panic!("expected a reminder, got {other:?}"),
    }
    // Fourteen minutes past the slot start: still within the grace.
    tokio::time::advance(Duration::from_secs(74 * 60)).await;
    assert_eq!(status_in_actor(&h, booked.id).await, Status::Assigned);
    // Fifteen: a no-show. The worker is told, and the job goes to the next one at once.
    tokio::time::advance(Duration::from_secs(60)).await;
    assert!(matches!(h.next_notice().await,
        WorkerNotice::AssignmentRevoked { worker_id, reason, .. } if worker_id == no_show && reason == "no_show"));
    let o = offer(h.next_notice().await);
    tokio::time::resume();
    assert_eq!((o.request_id, o.worker_id), (booked.id, reliable));
    assert_eq!(strikes_of(&h, no_show).await, ["NO_SHOW"]);
    let offers = h.store.offers_for_request(booked.id).await.unwrap();
    assert_eq!(offers[0].outcome.as_deref(), Some("NO_SHOW"));
    let row = h.store.get_request(booked.id).await.unwrap();
    assert_eq!(
        (row.status, row.assigned_worker_id),
        (Status::Offering, None)
    );
    assert_eq!(h.dispatcher.stats().no_shows.get(), 1);
    assert!(event_types(&h, booked.id)
        .await
        .contains(&"AssignmentReleased".to_string()));
}

#[tokio::test]
async fn cancel_assignment_returns_the_job_to_dispatch_before_start_and_is_refused_after() {
    let mut h = DispatchHarness::start(booking_settings()).await;
    let quitter = h.worker_online(LON + 0.001, LAT, &["lawn_mowing"]).await;
    let next = h.worker_online(LON + 0.01, LAT, &["lawn_mowing"]).await;
    let request = h.create_request(LON, LAT).await;
    let o = offer(h.next_notice().await);
    assert_eq!(o.worker_id, quitter);
    h.dispatcher
        .accept_offer(quitter, request.id, o.offer_id)
        .await
        .unwrap();
    let _confirmed = h.next_notice().await;
    // Somebody else cannot give it back.
    assert_eq!(
        h.dispatcher
            .cancel_assignment(next, request.id, None)
            .await
            .unwrap_err(),
        CommandError::NotYourJob
    );
    let back = h
        .dispatcher
        .cancel_assignment(quitter, request.id, Some("car broke down".into()))
        .await
        .unwrap();
    assert_eq!(
        (back.status, back.assigned_worker_id),
        (Status::Pending, None)
    );
    // The quitter is nearer and free again, but not asked twice.
    let o = offer(h.next_notice().await);
    assert_eq!(o.worker_id, next);
    assert_eq!(strikes_of(&h, quitter).await, ["CANCELLED"]);
    h.dispatcher
        .accept_offer(next, request.id, o.offer_id)
        .await
        .unwrap();
    h.dispatcher.start_job(next, request.id).await.unwrap();
    assert!(matches!(
        h.dispatcher.cancel_assignment(next, request.id, None).await,
        Err(CommandError::IllegalState {
            status: Status::InProgress,
            ..
        })
    ));

    // A booking may be given back only until its slot starts.
    let booked_worker = h.worker_online(LON - 0.001, LAT, &["lawn_mowing"]).await;
    let start = now() + hours(1);
    let booked = h
        .create_booked(LON - 0.001, LAT, (start, start + hours(2)))
        .await;
    let o = loop {
        if let WorkerNotice::Offer(o) = h.next_notice().await {
            break o;
        }
    };
    assert_eq!(o.worker_id, booked_worker);
    h.dispatcher
        .accept_offer(booked_worker, booked.id, o.offer_id)
        .await
        .unwrap();
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(3600)).await;
    assert_eq!(
        h.dispatcher
            .cancel_assignment(booked_worker, booked.id, None)
            .await
            .unwrap_err(),
        CommandError::SlotStarted
    );
    tokio::time::resume();
    assert_eq!(
        h.dispatcher.stats().worker_cancellations.get(),
        1,
        "only the one before the start counted"
    );
}

#[tokio::test]
async fn parallel_offers_two_accept_at_once_exactly_one_wins_and_the_others_are_told() {
    let settings = Settings {
        offer_mode: OfferMode::Parallel,
        offer_batch_size: 3,
        ..quick_settings()
    };
    let mut h = DispatchHarness::start(settings).await;
    let mut workers = Vec::new();
    for i in 0..3 {
        workers.push(
            h.worker_online(LON + 0.001 * (i + 1) as f64, LAT, &["lawn_mowing"])
                .await,
        );
    }
    let request = h.create_request(LON, LAT).await;
    let batch: Vec<_> = [
        offer(h.next_notice().await),
        offer(h.next_notice().await),
        offer(h.next_notice().await),
    ]
    .into();
    let offered: Vec<Uuid> = batch.iter().map(|o| o.worker_id).collect();
    assert_eq!(offered, workers, "the three nearest at once");
    let (a, b) = tokio::join!(
        h.dispatcher
            .accept_offer(batch[0].worker_id, request.id, batch[0].offer_id),
        h.dispatcher
            .accept_offer(batch[1].worker_id, request.id, batch[1].offer_id),
    );
    let results = [a, b];
    let winners: Vec<usize> = (0..2).filter(|i| results[*i].is_ok()).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    let winner = batch[winners[0]].worker_id;
    let loser = 1 - winners[0];
    assert_eq!(
        results[loser].clone().unwrap_err(),
        CommandError::OfferNotPending
    );
    let mut told_taken = Vec::new();
    for _ in 0..3 {
        match h.next_notice().await {
            WorkerNotice::OfferWithdrawn {
                worker_id, reason, ..
            } if reason == TAKEN => told_taken.push(worker_id),
            WorkerNotice::AssignmentConfirmed { worker_id, .. } => assert_eq!(worker_id, winner),
            other => panic!("unexpected {other:?}"),
        }
    }
    told_taken.sort();
    let mut others: Vec<Uuid> = offered.into_iter().filter(|w| *w != winner).collect();
    others.sort();
    assert_eq!(told_taken, others);
    let offers = h.store.offers_for_request(request.id).await.unwrap();
    let accepted = offers
        .iter()
        .filter(|o| o.outcome.as_deref() == Some("ACCEPTED"))
        .count();
    let withdrawn_taken = offers
        .iter()
        .filter(|o| {
            o.outcome.as_deref() == Some("WITHDRAWN") && o.reject_reason.as_deref() == Some(TAKEN)
        })
        .count();
    assert_eq!((accepted, withdrawn_taken), (1, 2));
}

#[tokio::test]
async fn a_parallel_batch_waits_for_its_last_offer_then_cascades_through_timeout_disconnect_and_cancel(
) {
    let settings = Settings {
        offer_mode: OfferMode::Parallel,
        offer_batch_size: 2,
        ..quick_settings()
    };
    let mut h = DispatchHarness::start(settings).await;
    let mut workers = Vec::new();
    for i in 0..4 {
        workers.push(
            h.worker_online(LON + 0.001 * (i + 1) as f64, LAT, &["lawn_mowing"])
                .await,
        );
    }
    let request = h.create_request(LON, LAT).await;
    let first = [offer(h.next_notice().await), offer(h.next_notice().await)];
    // One of the batch says no: the other is still out, nothing new is sent.
    h.dispatcher
        .reject_offer(workers[0], request.id, first[0].offer_id, None)
        .await
        .unwrap();
    let snapshot = h.dispatcher.snapshot(request.id).await.unwrap();
    assert_eq!(
        (snapshot.status, snapshot.offers_out),
        (Status::Offering, 1)
    );
    // The batch's timer: the last offer expires, the next two workers are asked together.
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(61)).await;
    assert!(matches!(h.next_notice().await,
        WorkerNotice::OfferWithdrawn { worker_id, reason, .. } if worker_id == workers[1] && reason == "expired"));
    let second = [offer(h.next_notice().await), offer(h.next_notice().await)];
    tokio::time::resume();
    assert_eq!(
        [second[0].worker_id, second[1].worker_id],
        [workers[2], workers[3]]
    );
    assert_eq!((second[0].attempt, second[1].attempt), (3, 4));
    // One disconnects: settled as a timeout; the other's offer stays.
    h.dispatcher
        .worker_offline("buenos-aires", workers[2])
        .await;
    assert!(matches!(h.next_notice().await,
        WorkerNotice::OfferWithdrawn { worker_id, .. } if worker_id == workers[2]));
    wait_until(PATIENCE, || async {
        h.dispatcher
            .snapshot(request.id)
            .await
            .map(|s| s.offers_out)
            == Some(1)
    })
    .await;
    // The customer cancels: the last one is withdrawn.
    h.dispatcher
        .cancel(request.id, arreglame::store::CancelledBy::Customer, None)
        .await
        .unwrap();
    assert!(matches!(h.next_notice().await,
        WorkerNotice::OfferWithdrawn { worker_id, reason, .. } if worker_id == workers[3] && reason == "cancelled"));
    let outcomes: Vec<Option<String>> = h
        .store
        .offers_for_request(request.id)
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.outcome)
        .collect();
    assert_eq!(
        outcomes,
        [
            Some("REJECTED"),
            Some("EXPIRED"),
            Some("EXPIRED"),
            Some("WITHDRAWN")
        ]
        .map(|o| o.map(String::from))
    );
}

#[tokio::test]
async fn an_adaptive_batch_is_topped_up_after_a_reject_and_cascades_through_timeout_disconnect_and_cancel(
) {
    // A new city's estimate (2 accepts in 3) needs more than two offers for 0.99: the
    // batch is the widest allowed, two.
    let settings = Settings {
        offer_mode: OfferMode::Adaptive,
        adaptive_target_accept_probability: 0.99,
        adaptive_max_batch_size: 2,
        ..quick_settings()
    };
    let mut h = DispatchHarness::start(settings).await;
    let mut workers = Vec::new();
    for i in 0..5 {
        workers.push(
            h.worker_online(LON + 0.001 * (i + 1) as f64, LAT, &["lawn_mowing"])
                .await,
        );
    }
    let request = h.create_request(LON, LAT).await;
    let first = [offer(h.next_notice().await), offer(h.next_notice().await)];
    assert_eq!(
        [first[0].worker_id, first[1].worker_id],
        [workers[0], workers[1]]
    );
    // The batch's timer: both expire together, the next two workers are asked together.
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(61)).await;
    for expected in &workers[..2] {
        assert!(matches!(h.next_notice().await,
            WorkerNotice::OfferWithdrawn { worker_id, reason, .. } if worker_id == *expected && reason == "expired"));
    }
    let second = [offer(h.next_notice().await), offer(h.next_notice().await)];
    tokio::time::resume();
    assert_eq!(
        [second[0].worker_id, second[1].worker_id],
        [workers[2], workers[3]]
    );
    assert_eq!((second[0].attempt, second[1].attempt), (3, 4));
    // One of the batch says no: the batch is topped up with the next nearest at once,
    // beside the offer still out.
    h.dispatcher
        .reject_offer(workers[2], request.id, second[0].offer_id, None)
        .await
        .unwrap();
    let topped = offer(h.next_notice().await);
    assert_eq!((topped.worker_id, topped.attempt), (workers[4], 5));
    let snapshot = h.dispatcher.snapshot(request.id).await.unwrap();
    assert_eq!(
        (snapshot.status, snapshot.offers_out),
        (Status::Offering, 2)
    );
    // One disconnects: settled as a timeout. Nobody is left to top up with, so the offer
    // still out decides, and nothing gives up meanwhile.
    h.dispatcher
        .worker_offline("buenos-aires", workers[3])
        .await;
    assert!(matches!(h.next_notice().await,
        WorkerNotice::OfferWithdrawn { worker_id, .. } if worker_id == workers[3]));
    wait_until(PATIENCE, || async {
        h.dispatcher
            .snapshot(request.id)
            .await
            .map(|s| (s.status, s.offers_out))
            == Some((Status::Offering, 1))
    })
    .await;
    // The customer cancels: the last one is withdrawn.
    h.dispatcher
        .cancel(request.id, arreglame::store::CancelledBy::Customer, None)
        .await
        .unwrap();
    assert!(matches!(h.next_notice().await,
        WorkerNotice::OfferWithdrawn { worker_id, reason, .. } if worker_id == workers[4] && reason == "cancelled"));
    let outcomes: Vec<Option<String>> = h
        .store
        .offers_for_request(request.id)
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.outcome)
        .collect();
    assert_eq!(
        outcomes,
        [
            Some("EXPIRED"),
            Some("EXPIRED"),
            Some("REJECTED"),
            Some("EXPIRED"),
            Some("WITHDRAWN")
        ]
        .map(|o| o.map(String::from))
    );
}

#[tokio::test]
async fn adaptive_mode_asks_as_many_as_the_estimate_needs_and_scored_ranking_shows_in_the_trail() {
    let settings = Settings {
        offer_mode: OfferMode::Adaptive,
        adaptive_target_accept_probability: 0.9,
        adaptive_max_batch_size: 6,
        candidate_ranking: arreglame::domain::offer_policy::CandidateRanking::Scored,
        ..quick_settings()
    };
    let mut h = DispatchHarness::start(settings).await;
    for i in 0..5 {
        h.worker_online(LON + 0.001 * (i + 1) as f64, LAT, &["lawn_mowing"])
            .await;
    }
    let request = h.create_request(LON, LAT).await;
    // A new city's estimate is 2 accepts in 3: three offers give 1 - (1/3)^3 > 0.9.
    for _ in 0..3 {
        offer(h.next_notice().await);
    }
    let snapshot = h.dispatcher.snapshot(request.id).await.unwrap();
    assert_eq!(snapshot.offers_out, 3);
    let offers = h.store.offers_for_request(request.id).await.unwrap();
    let scores = offers[0]
        .candidate_scores
        .as_ref()
        .expect("the batch's first offer carries the ranking")
        .0
        .clone();
    assert_eq!(scores.len(), 5, "every candidate of the radius step");
    assert_eq!(scores[0].worker_id, offers[0].worker_id);
    assert!(scores.windows(2).all(|w| w[0].score >= w[1].score));
}
