//! The two sweeps the operators already know by their log lines:
//! `[WorkerAssignmentCron] Checking for worker assignment timeouts...` and
//! `[PayoutReleaseCron] Checking for payouts ready to release...`.
//!
//! Each runs on the schedule in `system_config` (both cron forms), re-read whenever the
//! configuration changes, and is safe with several engines running it at once.

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use tokio::{sync::watch, task::JoinHandle};

use crate::domain::schedule;
use crate::{
    dispatch::{Dispatcher, OfferEvent},
    store::{Change, OfferOutcome, Settings, SettingsWatch, Store},
};

/// Counts of one sweep, for logs and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SweepReport {
    /// Overdue offers this sweep settled itself (no live actor owned them).
    pub settled: usize,
    /// Open requests that had no actor and got one back.
    pub respawned: usize,
    /// Payouts released.
    pub released: usize,
    /// Registered actors that missed their heartbeat (or held a stale view) and were replaced.
    pub revived: usize,
    /// Live actors nudged to take the step their request was waiting for.
    pub nudged: usize,
}

/// A PENDING row untouched this long has no actor making progress (an actor moves it on
/// within milliseconds). Below the default sweep period, so one sweep is the most a request
/// waits.
pub const STALLED_PENDING_AFTER: Duration = Duration::from_secs(15);
/// An OFFERING row this far past its offer deadline: the actor's timer did not fire.
pub const STALLED_OFFER_OVERDUE_BY: Duration = Duration::from_secs(10);
/// How long a registered actor has to answer the heartbeat: longer than a healthy handler
/// can wait for a pooled connection (the pool's acquire timeout), so only a stuck one misses.
pub const HEARTBEAT_WITHIN: Duration =
    Duration::from_secs(crate::store::ACQUIRE_TIMEOUT.as_secs() + 5);

/// The backstop for offers no live actor watches: settles every OFFERING request whose
/// `"workerTimeoutAt"` has passed and that has no actor, then gives every open request
/// without an actor its actor back. The version check keeps it from fighting a live actor.
pub async fn worker_assignment_sweep(
    store: &Store,
    dispatcher: &Dispatcher,
) -> anyhow::Result<SweepReport> {
    tracing::info!(target: "WorkerAssignmentCron", "[WorkerAssignmentCron] Checking for worker assignment timeouts...");
    let overdue = store.overdue_offering(1000).await?;
    let mut report = SweepReport::default();
    // Requests outside the rollout percentage are the legacy dispatcher's, and in a cluster
    // those of a city another node owns are that node's: never touched.
    let ours = |r: &crate::store::ServiceRequest| {
        dispatcher.dispatches(r.id) && dispatcher.owns_city(r.city_id.as_deref())
    };
    for row in overdue
        .iter()
        .filter(|r| !dispatcher.has_actor(r.id) && ours(r))
    {
        // Every offer of the row's batch expired together; the last one settled moves the
        // request back to PENDING.
        let offers = store.pending_offers(row.id).await?;
        let mut current = row.clone();
        for (i, offer) in offers.iter().enumerate() {
            let change = Change::OfferSettled {
                offer_id: offer.id,
                outcome: OfferOutcome::Expired,
                reason: Some("settled by WorkerAssignmentCron".into()),
                others_pending: i + 1 < offers.len(),
            };
            let Ok(fence) = dispatcher.fence_of(row.city_id.as_deref()) else {
                break; // the city went to another node meanwhile
            };
            match store.transition_fenced(&current, change, fence).await {
                Ok(next) => {
                    current = next;
                    report.settled += 1;
                    dispatcher
                        .stats()
                        .offer(OfferEvent::Expired, row.city_id.as_deref());
                }
                // An actor or another engine got there first, or this node lost the city.
                Err(e)
                    if e.is_conflict() || matches!(e, crate::store::StoreError::Fenced { .. }) =>
                {
                    break
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    let settings = dispatcher.settings();
    let stalled = store
        .stalled_requests(
            STALLED_PENDING_AFTER,
            STALLED_OFFER_OVERDUE_BY,
            settings.dispatch_lead,
            settings.no_show_grace,
        )
        .await?
        .into_iter()
        .filter(|r| ours(r))
        .collect();
    (report.revived, report.nudged) = dispatcher.revive_stalled(stalled, HEARTBEAT_WITHIN).await;
    report.respawned = dispatcher.recover().await?;
    if report.settled > 0 || report.respawned > 0 || report.revived > 0 || report.nudged > 0 {
        tracing::info!(target: "WorkerAssignmentCron", settled = report.settled, respawned = report.respawned,
            revived = report.revived, nudged = report.nudged,
            "[WorkerAssignmentCron] settled overdue offers and restored request actors");
    }
    Ok(report)
}

/// Releases every payout whose cancellation window has passed, in batches.
pub async fn payout_release_sweep(store: &Store, batch: i64) -> anyhow::Result<SweepReport> {
    tracing::info!(target: "PayoutReleaseCron", "[PayoutReleaseCron] Checking for payouts ready to release...");
    let mut report = SweepReport::default();
    loop {
        let released = store.release_due_payouts(batch).await?;
        report.released += released.len();
        if (released.len() as i64) < batch {
            break;
        }
    }
    if report.released > 0 {
        tracing::info!(target: "PayoutReleaseCron", released = report.released, "[PayoutReleaseCron] payouts released");
    }
    Ok(report)
}

/// Starts both sweeps; they stop when `shutdown` fires.
pub fn spawn_sweeps(
    store: Store,
    dispatcher: Dispatcher,
    settings: SettingsWatch,
    shutdown: watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    let assignment = {
        let (store, dispatcher) = (store.clone(), dispatcher.clone());
        run_on_schedule(
            "WorkerAssignmentCron",
            |s| s.worker_assignment_cron.clone(),
            settings.clone(),
            shutdown.clone(),
            Arc::new(move |_| {
                let (store, dispatcher) = (store.clone(), dispatcher.clone());
                Box::pin(async move {
                    worker_assignment_sweep(&store, &dispatcher)
                        .await
                        .map(|_| ())
                })
            }),
        )
    };
    let payouts = run_on_schedule(
        "PayoutReleaseCron",
        |s| s.payout_release_cron.clone(),
        settings,
        shutdown,
        Arc::new(move |s: Arc<Settings>| {
            let store = store.clone();
            Box::pin(async move {
                payout_release_sweep(&store, s.payout_release_batch_size)
                    .await
                    .map(|_| ())
            })
        }),
    );
    vec![assignment, payouts]
}

type Job = Arc<
    dyn Fn(Arc<Settings>) -> futures::future::BoxFuture<'static, anyhow::Result<()>> + Send + Sync,
>;

fn run_on_schedule(
    name: &'static str,
    expr_of: fn(&Settings) -> String,
    mut settings: SettingsWatch,
    mut shutdown: watch::Receiver<bool>,
    job: Job,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let current = settings.borrow().clone();
            let expr = expr_of(&current);
            let wait = match schedule::parse(&expr).map(|s| s.next_after(Utc::now())) {
                Ok(Some(next)) => (next - Utc::now()).to_std().unwrap_or_default(),
                _ => Duration::from_secs(60), // validated on load; a fallback all the same
            };
            tokio::select! {
                _ = shutdown.changed() => return,
                // A new schedule takes effect at once.
                changed = settings.changed() => { if changed.is_err() { return } continue }
                _ = tokio::time::sleep(wait) => {}
            }
            let started = std::time::Instant::now();
            let result = job(current).await;
            metrics::counter!("arreglame_cron_runs_total", "job" => name).increment(1);
            metrics::histogram!("arreglame_cron_duration_seconds", "job" => name)
                .record(started.elapsed().as_secs_f64());
            if let Err(e) = result {
                metrics::counter!("arreglame_cron_failures_total", "job" => name).increment(1);
                tracing::error!(target: "Cron", job = name, error = %e, "[{name}] sweep failed");
            }
        }
    })
}
