//! The request actor: one per open service request, the only writer of its row while it
//! lives. A booked request (SCHEDULED) waits on its slot timer until its dispatch time. To
//! dispatch, it asks its city for the best suitable workers (one, or a parallel batch),
//! persists each offer, pushes it through the gateway and arms one offer timer for the
//! batch; on reject or timeout it moves on (an adaptive batch is topped up to its width at
//! once); the first accept wins and the other offers out are withdrawn. It follows the job to completion (a booked job through its reminder and
//! no-show deadline) and stops at a terminal status.
//!
//! State is always rebuilt from the database (`pre_start`), never carried over from a
//! failed incarnation. Every write is a `Store::transition` with the version the actor last
//! saw; losing that race (the cron backstop, another node) reloads the row and resumes.

use std::{collections::HashSet, sync::Arc};

use chrono::{DateTime, Utc};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tracing::Instrument;

use crate::telemetry::TraceLink;
use serde::Serialize;
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::{
    city::{CityHandle, CityMsg, OfferWidth, ReserveBest, Search},
    gateway::{JobParts, OfferNotice, OfferParts, WorkerNotice},
    CommandError, DispatchContext, OfferEvent,
};
use crate::{
    domain::{
        booking,
        cancellation::{cancellation_fee, NotCancellable},
        offer_policy::{CandidateRanking, OfferMode},
        Cents, Position, Status,
    },
    store::{
        CancelledBy, Change, NewOffer, OfferOutcome, OfferRow, ServiceRequest, StoreError,
        StrikeKind, TAKEN,
    },
};

/// An offer the request is waiting on.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingOffer {
    pub offer_id: Uuid,
    pub worker_id: Uuid,
    pub attempt: i32,
    pub expires_at: chrono::DateTime<Utc>,
    /// Offers sent together share a batch number, a deadline and one timer.
    pub batch: u32,
}

/// What the actor holds, for tests and the ops view.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestSnapshot {
    pub request_id: Uuid,
    pub city_id: Option<String>,
    pub status: Status,
    pub version: i32,
    pub attempts: i32,
    /// The earliest offer still out (with parallel offers, `offersOut` says how many).
    pub pending: Option<PendingOffer>,
    pub offers_out: usize,
    pub tried: usize,
    pub created_at: chrono::DateTime<Utc>,
    pub scheduled_start: Option<chrono::DateTime<Utc>>,
    pub latitude: Option<f64>,
    pub longitude: Option<f64>,
}

/// The startup error of a second actor for a request that already has one.
pub const ALREADY_RUNNING: &str = "request actor already running";

type Reply<T> = RpcReplyPort<Result<T, CommandError>>;

/// Messages of a request actor.
pub enum RequestMsg {
    /// Look for the next workers and offer the job (internal).
    Dispatch,
    /// The offer is past its deadline: its whole batch expires (the backstop's nudge).
    OfferTimeout {
        offer_id: Uuid,
    },
    /// The timer of a batch of offers fired (internal).
    BatchTimeout {
        batch: u32,
    },
    /// The slot timer fired: a booking's dispatch time, its reminder or its no-show
    /// deadline may have come (internal; the actor re-reads the clock).
    SlotTick,
    Accept {
        worker_id: Uuid,
        offer_id: Uuid,
        reply: Reply<ServiceRequest>,
    },
    Reject {
        worker_id: Uuid,
        offer_id: Uuid,
        reason: Option<String>,
        reply: Reply<()>,
    },
    /// A worker holding an offer went away (disconnect, heartbeat missed): settled as a timeout.
    WorkerLost {
        worker_id: Uuid,
    },
    Cancel {
        by: CancelledBy,
        reason: Option<String>,
        reply: Reply<ServiceRequest>,
    },
    /// The assigned worker gives the job back before it starts (`cancel_assignment`).
    ReleaseAssignment {
        worker_id: Uuid,
        reason: Option<String>,
        reply: Reply<ServiceRequest>,
    },
    StartJob {
        worker_id: Uuid,
        reply: Reply<ServiceRequest>,
    },
    CompleteJob {
        worker_id: Uuid,
        reply: Reply<ServiceRequest>,
    },
    Snapshot(RpcReplyPort<RequestSnapshot>),
    /// Fault injection for resilience tests and chaos drills: the handler panics.
    InjectPanic,
    /// Fault injection: the handler never returns (a stuck await), so the actor stays
    /// registered but answers nothing; the backstop's heartbeat must replace it.
    InjectStall,
    /// This node's cities changed (a lease lost): an actor whose city is no longer ours
    /// stops (checked after every message; this one does nothing else).
    OwnerChanged,
}

/// The actor's configuration: the shared dispatch context.
pub struct RequestActor {
    pub ctx: Arc<DispatchContext>,
}

type Timer = JoinHandle<Result<(), ractor::MessagingErr<RequestMsg>>>;

pub struct RequestState {
    row: ServiceRequest,
    city: Option<CityHandle>,
    skill: Option<String>,
    /// Workers already offered this request (loaded from `offers`, so a restart never
    /// offers the same job to the same worker twice).
    tried: HashSet<Uuid>,
    /// The offers out now, earliest first.
    pending: Vec<PendingOffer>,
    /// Batches sent by this incarnation (numbers the next one).
    batches: u32,
    /// One offer timer per batch out (a parallel batch topped up after a reject has
    /// offers of several batches out, each with its own deadline).
    timers: Vec<(u32, Timer)>,
    /// Wakes the actor at a booking's dispatch time, reminder time or no-show deadline.
    slot_timer: Option<Timer>,
    /// The assigned worker got the `job_reminder` (this incarnation).
    reminded: bool,
    /// Re-dispatched after a no-show or a worker's cancellation: served first by the city.
    priority: bool,
    /// Where in a trace the actor was started (see `Arguments`).
    origin: TraceLink,
    /// A write was refused by the city's fence: another node owns the city now, so this
    /// actor stops after the message at hand, writing nothing more.
    fenced: std::sync::atomic::AtomicBool,
}

impl RequestState {
    fn snapshot(&self) -> RequestSnapshot {
        RequestSnapshot {
            request_id: self.row.id,
            city_id: self.row.city_id.clone(),
            status: self.row.status,
            version: self.row.version,
            attempts: self.row.assignment_attempts,
            pending: self.pending.first().copied(),
            offers_out: self.pending.len(),
            tried: self.tried.len(),
            created_at: self.row.created_at,
            scheduled_start: self.row.scheduled_start,
            latitude: self.row.latitude,
            longitude: self.row.longitude,
        }
    }

    fn disarm(&mut self) {
        for (_, t) in self.timers.drain(..) {
            t.abort();
        }
    }

    /// Drops one batch's timer (it fired, or its offers are settled).
    fn disarm_batch(&mut self, batch: u32) {
        self.timers.retain(|(b, t)| {
            if *b == batch {
                t.abort();
            }
            *b != batch
        });
    }

    fn disarm_slot(&mut self) {
        if let Some(t) = self.slot_timer.take() {
            t.abort();
        }
    }

    fn offer(&self, offer_id: Uuid) -> Option<PendingOffer> {
        self.pending
            .iter()
            .find(|p| p.offer_id == offer_id)
            .copied()
    }
}

impl Actor for RequestActor {
    type Msg = RequestMsg;
    type State = RequestState;
    /// The request (with its row when the caller just created it), and the span of
    /// whatever started the actor (the GraphQL create, a recovery): the actor's dispatch
    /// spans are its children, so one trace follows a request from the create to the offer
    /// frame.
    type Arguments = (Uuid, Option<ServiceRequest>, TraceLink);

    async fn pre_start(
        &self,
        myself: ActorRef<RequestMsg>,
        (request_id, created, origin): (Uuid, Option<ServiceRequest>, TraceLink),
    ) -> Result<RequestState, ActorProcessingErr> {
        // Register first, so a failure at any later point reaches the supervisor with the
        // request id, and so two spawns for one request cannot both run.
        match self.ctx.registry.entry(request_id) {
            dashmap::mapref::entry::Entry::Occupied(_) => return Err(ALREADY_RUNNING.into()),
            dashmap::mapref::entry::Entry::Vacant(v) => {
                v.insert(myself.clone());
            }
        }
        self.ctx.actor_requests.insert(myself.get_id(), request_id);
        let loaded = async {
            // A request just created (version 1) has no offers and no skips yet: its row is
            // handed over and nothing is read back.
            if let Some(row) = created.filter(|r| r.id == request_id && r.version == 1) {
                return Ok::<_, StoreError>((row, Vec::new()));
            }
            let row = self.ctx.store.get_request(request_id).await?;
            let tried = self.ctx.store.tried_workers(request_id).await?;
            Ok((row, tried))
        }
        .await;
        let (row, tried) = match loaded {
            Ok(v) => v,
            Err(e) => {
                self.ctx.forget(request_id, myself.get_id());
                return Err(e.into());
            }
        };
        if !self.ctx.ownership.owns(row.city_id.as_deref()) {
            // A cluster node dispatches only the cities it holds (docs/scale-out.md).
            self.ctx.forget(request_id, myself.get_id());
            return Err(format!("{NOT_OWNER}: {}", row.city_id.unwrap_or_default()).into());
        }
        let tried = tried.into_iter().collect();
        let city = row.city_id.as_ref().and_then(|c| self.ctx.city(c));
        let skill = row
            .service_category
            .as_ref()
            .and_then(|c| self.ctx.categories.get(c).cloned());
        Ok(RequestState {
            row,
            city,
            skill,
            tried,
            pending: Vec::new(),
            batches: 0,
            timers: Vec::new(),
            slot_timer: None,
            reminded: false,
            priority: false,
            origin,
            fenced: std::sync::atomic::AtomicBool::new(false),
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<RequestMsg>,
        state: &mut RequestState,
    ) -> Result<(), ActorProcessingErr> {
        self.resume(&myself, state).await
    }

    async fn post_stop(
        &self,
        myself: ActorRef<RequestMsg>,
        state: &mut RequestState,
    ) -> Result<(), ActorProcessingErr> {
        state.disarm();
        state.disarm_slot();
        self.ctx.forget(state.row.id, myself.get_id());
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<RequestMsg>,
        msg: RequestMsg,
        state: &mut RequestState,
    ) -> Result<(), ActorProcessingErr> {
        // Boxed: ractor keeps room for the handler future in every live actor for its whole
        // life, and this one is ~4 KiB. On the heap only while a message is handled, it
        // halves the memory of an idle actor (docs/benchmarks.md, 100k actors).
        let handled = Box::pin(self.on_message(myself.clone(), msg, state)).await;
        if state.fenced.load(std::sync::atomic::Ordering::Relaxed)
            || !self.ctx.ownership.owns(state.row.city_id.as_deref())
        {
            // This node lost the city: stop (not fail: nothing to restart here), and leave
            // the request to the new owner, which resumes it from the database. The workers
            // it held here are free for this node's view (the owner's view is the one used).
            for p in std::mem::take(&mut state.pending) {
                self.release(state, p.worker_id);
            }
            if let Some(worker) = state.row.assigned_worker_id {
                self.release(state, worker);
            }
            tracing::info!(target: "RequestActor", request_id = %state.row.id, "stopped: city owned by another node");
            myself.stop(Some(NOT_OWNER.into()));
            return Ok(());
        }
        handled
    }
}

/// Why a request actor does not run on this node.
pub const NOT_OWNER: &str = "city not owned by this node";

impl RequestActor {
    /// Every write of the actor: fenced by the city's epoch on a cluster node.
    async fn write(
        &self,
        fenced: &std::sync::atomic::AtomicBool,
        row: &ServiceRequest,
        change: Change,
    ) -> Result<ServiceRequest, StoreError> {
        let fence = self
            .ctx
            .ownership
            .fence(row.city_id.as_deref())
            .map_err(|()| StoreError::Fenced {
                city_id: row.city_id.clone().unwrap_or_default(),
                epoch: 0,
            });
        let result = match fence {
            Ok(fence) => self.ctx.store.transition_fenced(row, change, fence).await,
            Err(e) => Err(e),
        };
        if matches!(result, Err(StoreError::Fenced { .. })) {
            fenced.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        result
    }

    async fn on_message(
        &self,
        myself: ActorRef<RequestMsg>,
        msg: RequestMsg,
        state: &mut RequestState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RequestMsg::Dispatch => {
                let span = tracing::info_span!("dispatch", request_id = %state.row.id);
                state.origin.adopt(&span);
                self.dispatch(&myself, state).instrument(span).await?
            }
            RequestMsg::OfferTimeout { offer_id } => {
                if let Some(timed_out) = state.offer(offer_id) {
                    self.expire_batch(&myself, state, timed_out.batch).await?;
                }
            }
            RequestMsg::BatchTimeout { batch } => self.expire_batch(&myself, state, batch).await?,
            RequestMsg::SlotTick => self.slot_tick(&myself, state).await?,
            RequestMsg::WorkerLost { worker_id } => {
                if let Some(lost) = state.pending.iter().find(|p| p.worker_id == worker_id) {
                    let lost = *lost;
                    let why = Some("worker disconnected".into());
                    tolerate_settled(
                        self.settle(&myself, state, lost, OfferOutcome::Expired, why)
                            .await,
                    )?;
                }
            }
            RequestMsg::Accept {
                worker_id,
                offer_id,
                reply,
            } => {
                let result = self.accept(&myself, state, worker_id, offer_id).await;
                let lost_race = matches!(result, Err(CommandError::OfferNotPending))
                    && state.offer(offer_id).is_some();
                finish(reply, result)?;
                if lost_race {
                    // Someone else wrote the row first (a legacy dispatcher, another node):
                    // resume from what the database says instead of waiting for the timer.
                    self.reload(&myself, state).await?;
                }
            }
            RequestMsg::Reject {
                worker_id,
                offer_id,
                reason,
                reply,
            } => {
                let result = match check_offer(state, worker_id, offer_id) {
                    Ok(offer) => {
                        self.settle(&myself, state, offer, OfferOutcome::Rejected, reason)
                            .await
                    }
                    Err(e) => Err(e),
                };
                finish(reply, result)?;
            }
            RequestMsg::Cancel { by, reason, reply } => {
                let result = self.cancel(state, by, reason).await;
                finish(reply, result)?;
            }
            RequestMsg::ReleaseAssignment {
                worker_id,
                reason,
                reply,
            } => {
                let result = self
                    .release_assignment(&myself, state, worker_id, StrikeKind::Cancelled, reason)
                    .await;
                finish(reply, result)?;
            }
            RequestMsg::StartJob { worker_id, reply } => {
                let result = self
                    .job_step(state, worker_id, Change::JobStarted, "start")
                    .await;
                if result.is_ok() {
                    // A booked job started: no reminder or no-show check any more, and the
                    // worker is busy with it now.
                    state.disarm_slot();
                    self.mark_busy(state, worker_id);
                }
                finish(reply, result)?;
            }
            RequestMsg::CompleteJob { worker_id, reply } => {
                let release_at = Utc::now()
                    + chrono::Duration::from_std(self.ctx.settings.borrow().cancellation_window)
                        .unwrap_or(chrono::Duration::hours(24));
                let change = Change::JobCompleted {
                    payout_release_at: release_at,
                };
                let result = self.job_step(state, worker_id, change, "complete").await;
                finish(reply, result)?;
            }
            RequestMsg::Snapshot(reply) => {
                let _ = reply.send(state.snapshot());
            }
            RequestMsg::InjectPanic => panic!("fault injected into request actor {}", state.row.id),
            RequestMsg::InjectStall => std::future::pending::<()>().await,
            RequestMsg::OwnerChanged => {}
        }
        if state.row.status.is_terminal() {
            myself.stop(Some(format!("request {}", state.row.status)));
        }
        Ok(())
    }
}

/// Sends the answer; a store failure other than a lost race also fails the actor, so the
/// supervisor rebuilds it from the database.
fn finish<T>(reply: Reply<T>, result: Result<T, CommandError>) -> Result<(), ActorProcessingErr> {
    let failed = matches!(&result, Err(CommandError::Internal(_)));
    let message = match &result {
        Err(e) => e.to_string(),
        Ok(_) => String::new(),
    };
    let _ = reply.send(result);
    if failed {
        return Err(message.into());
    }
    Ok(())
}

/// A timeout or disconnect that finds the offer already settled (by a race the actor
/// just lost and recovered from) is not a failure.
fn tolerate_settled(result: Result<(), CommandError>) -> Result<(), CommandError> {
    match result {
        Err(CommandError::OfferNotPending) => Ok(()),
        other => other,
    }
}

/// The offer's foreign key to `worker_profiles`: the worker's row no longer exists.
const WORKER_GONE: &str = "offers_workerId_fkey";

/// Constraints that refuse an offer because of its worker, not because of the request: the
/// next candidate may well succeed.
fn is_about_the_worker(constraint: &str) -> bool {
    matches!(
        constraint,
        WORKER_GONE | "offers_one_pending_per_worker_idx" | "payouts_workerId_fkey"
    )
}

fn check_offer(
    state: &RequestState,
    worker_id: Uuid,
    offer_id: Uuid,
) -> Result<PendingOffer, CommandError> {
    match state.offer(offer_id) {
        Some(p) if p.worker_id == worker_id => Ok(p),
        Some(_) => Err(CommandError::NotYourOffer),
        None => Err(CommandError::OfferNotPending),
    }
}

/// How wide an offer mode's batches are, and the widest it can make.
fn offer_width(settings: &crate::store::Settings) -> (OfferWidth, usize) {
    match settings.offer_mode {
        OfferMode::Sequential => (OfferWidth::Fixed(1), 1),
        OfferMode::Parallel => (
            OfferWidth::Fixed(settings.offer_batch_size),
            settings.offer_batch_size,
        ),
        OfferMode::Adaptive => (
            OfferWidth::Adaptive {
                target: settings.adaptive_target_accept_probability,
                max: settings.adaptive_max_batch_size,
            },
            settings.adaptive_max_batch_size,
        ),
    }
}

impl RequestActor {
    /// Picks up wherever the database says the request is.
    async fn resume(
        &self,
        myself: &ActorRef<RequestMsg>,
        state: &mut RequestState,
    ) -> Result<(), ActorProcessingErr> {
        state.disarm();
        state.disarm_slot();
        state.pending.clear();
        match state.row.status {
            Status::Scheduled => self.arm_slot(myself, state),
            Status::Pending => myself.send_message(RequestMsg::Dispatch)?,
            Status::Offering => {
                let offers = self.ctx.store.pending_offers(state.row.id).await?;
                if offers.is_empty() {
                    // Cannot happen through `transition` (offer and status move together);
                    // end the request visibly rather than leave it stuck.
                    tracing::error!(target: "RequestActor", request_id = %state.row.id, "OFFERING without a pending offer");
                    self.give_up(state, "inconsistent offer state").await?;
                    myself.stop(None);
                    return Ok(());
                }
                // The offers sent together share a deadline: one batch (and timer) per
                // deadline, so a topped-up offer keeps the time it was given.
                let mut deadlines: Vec<DateTime<Utc>> =
                    offers.iter().map(|o| o.expires_at).collect();
                deadlines.sort();
                deadlines.dedup();
                for deadline in deadlines {
                    state.batches += 1;
                    let batch = state.batches;
                    for offer in offers.iter().filter(|o| o.expires_at == deadline) {
                        self.resume_offer(state, offer, batch).await;
                    }
                    let remaining = (deadline - Utc::now()).to_std().unwrap_or_default();
                    if remaining.is_zero() {
                        // Expired while nobody was watching (engine down): settle at once.
                        myself.send_message(RequestMsg::BatchTimeout { batch })?;
                    } else {
                        self.arm(myself, state, batch, remaining);
                    }
                }
            }
            // A restarted actor reminds the worker again if the reminder time has passed
            // and the slot has not started (it does not know whether the last one did).
            Status::Assigned if state.row.slot().is_some() => {
                if let (Some(city), Some(worker), Some(slot)) =
                    (&state.city, state.row.assigned_worker_id, state.row.slot())
                {
                    city.cast(CityMsg::Booked {
                        worker_id: worker,
                        request_id: state.row.id,
                        slot,
                    });
                }
                self.arm_slot(myself, state);
            }
            Status::Assigned | Status::InProgress => {
                if let Some(worker) = state.row.assigned_worker_id {
                    self.mark_busy(state, worker);
                }
            }
            _ => myself.stop(None),
        }
        Ok(())
    }

    /// Takes an outstanding offer back under watch after a (re)start: reserved in the city
    /// and pushed again (the gateway de-duplicates by offer id, and a worker whose session
    /// survived the restart, or another node's, learns it is still on).
    async fn resume_offer(&self, state: &mut RequestState, offer: &OfferRow, batch: u32) {
        state.pending.push(PendingOffer {
            offer_id: offer.id,
            worker_id: offer.worker_id,
            attempt: offer.attempt,
            expires_at: offer.expires_at,
            batch,
        });
        state.tried.insert(offer.worker_id);
        if let Some(city) = &state.city {
            // The worker may not have reconnected yet; the reservation is best effort.
            let (worker_id, request_id) = (offer.worker_id, state.row.id);
            let _ = city
                .call(|reply| CityMsg::Reserve {
                    worker_id,
                    request_id,
                    reply,
                })
                .await;
        }
        if offer.expires_at > Utc::now() {
            let again = NewOffer {
                id: offer.id,
                worker_id: offer.worker_id,
                attempt: offer.attempt,
                expires_at: offer.expires_at,
                distance_meters: offer.distance_meters.unwrap_or_default(),
                radius_meters: offer.radius_meters.unwrap_or_default(),
                candidates_considered: offer.candidates_considered.unwrap_or_default(),
                candidate_scores: Vec::new(),
            };
            self.ctx
                .gateway
                .notify(WorkerNotice::Offer(self.notice(state, &again)));
        }
    }

    fn arm(
        &self,
        myself: &ActorRef<RequestMsg>,
        state: &mut RequestState,
        batch: u32,
        after: std::time::Duration,
    ) {
        state.disarm_batch(batch);
        let timer = myself.send_after(after, move || RequestMsg::BatchTimeout { batch });
        state.timers.push((batch, timer));
    }

    /// Arms the slot timer for the next moment that matters to a booking: its dispatch
    /// time while SCHEDULED; its reminder, then its no-show deadline, while ASSIGNED.
    fn arm_slot(&self, myself: &ActorRef<RequestMsg>, state: &mut RequestState) {
        state.disarm_slot();
        let Some((start, _)) = state.row.slot() else {
            return;
        };
        let settings = self.ctx.settings.borrow().clone();
        let next = match state.row.status {
            Status::Scheduled => booking::dispatch_at(start, settings.dispatch_lead),
            Status::Assigned => {
                let no_show = no_show_deadline(&state.row, start, settings.no_show_grace);
                if state.reminded {
                    no_show
                } else {
                    booking::before(start, settings.job_reminder_before).min(no_show)
                }
            }
            _ => return,
        };
        let after = (next - self.ctx.clock.now()).to_std().unwrap_or_default();
        state.slot_timer = Some(myself.send_after(after, || RequestMsg::SlotTick));
    }

    /// The slot timer fired (or the backstop nudged): act on what is due, re-arm for the
    /// rest. Settings may have changed since the timer was armed; the clock decides.
    async fn slot_tick(
        &self,
        myself: &ActorRef<RequestMsg>,
        state: &mut RequestState,
    ) -> Result<(), ActorProcessingErr> {
        let settings = self.ctx.settings.borrow().clone();
        let now = self.ctx.clock.now();
        let Some((start, end)) = state.row.slot() else {
            if state.row.status == Status::Scheduled {
                // Booked without a slot cannot be created; dispatch it rather than wait forever.
                return self.open_dispatch(myself, state).await;
            }
            return Ok(());
        };
        match state.row.status {
            Status::Scheduled if now >= booking::dispatch_at(start, settings.dispatch_lead) => {
                self.open_dispatch(myself, state).await
            }
            Status::Assigned => {
                let worker_id = state.row.assigned_worker_id;
                let reminder_due = booking::before(start, settings.job_reminder_before);
                if let (false, Some(worker_id)) = (state.reminded, worker_id) {
                    if now >= reminder_due {
                        state.reminded = true;
                        self.ctx.gateway.notify(WorkerNotice::JobReminder {
                            worker_id,
                            request_id: state.row.id,
                            scheduled_start: start,
                            scheduled_end: end,
                        });
                    }
                }
                match worker_id {
                    Some(worker_id)
                        if now >= no_show_deadline(&state.row, start, settings.no_show_grace) =>
                    {
                        let minutes = settings.no_show_grace.as_secs_f64() / 60.0;
                        let why = format!("not started {minutes} minutes after the slot start");
                        let released = self
                            .release_assignment(
                                myself,
                                state,
                                worker_id,
                                StrikeKind::NoShow,
                                Some(why),
                            )
                            .await;
                        match released {
                            Ok(_) | Err(CommandError::Conflict) => Ok(()),
                            Err(e) => Err(e.to_string().into()),
                        }
                    }
                    _ => {
                        self.arm_slot(myself, state);
                        Ok(())
                    }
                }
            }
            _ => {
                self.arm_slot(myself, state);
                Ok(())
            }
        }
    }

    /// SCHEDULED → PENDING at the booking's dispatch time, then dispatch at once.
    async fn open_dispatch(
        &self,
        myself: &ActorRef<RequestMsg>,
        state: &mut RequestState,
    ) -> Result<(), ActorProcessingErr> {
        match self
            .write(&state.fenced, &state.row, Change::DispatchOpened)
            .await
        {
            Ok(row) => {
                state.row = row;
                tracing::info!(target: "RequestActor", request_id = %state.row.id, "booking reached its dispatch time");
                myself.send_message(RequestMsg::Dispatch)?;
                Ok(())
            }
            Err(e) if e.is_conflict() => self.reload(myself, state).await,
            Err(e) => Err(e.into()),
        }
    }

    /// Reloads the row after a lost race and resumes from what the database says.
    async fn reload(
        &self,
        myself: &ActorRef<RequestMsg>,
        state: &mut RequestState,
    ) -> Result<(), ActorProcessingErr> {
        self.ctx.stats.conflicts.inc();
        for p in std::mem::take(&mut state.pending) {
            self.release(state, p.worker_id);
        }
        state.row = self.ctx.store.get_request(state.row.id).await?;
        tracing::info!(target: "RequestActor", request_id = %state.row.id, status = %state.row.status, version = state.row.version, "reloaded after a concurrent change");
        if state.row.status != Status::Offering {
            self.withdraw_orphaned_offers(state).await?;
        }
        self.resume(myself, state).await
    }

    /// Another writer (a legacy dispatcher beside the engine, docs/migration.md) moved the
    /// request out of OFFERING under our offers: they are withdrawn, so their workers are
    /// free for other jobs and told so.
    async fn withdraw_orphaned_offers(&self, state: &RequestState) -> Result<(), StoreError> {
        let request_id = state.row.id;
        for (offer_id, worker_id) in self.ctx.store.withdraw_orphaned_offers(request_id).await? {
            self.release(state, worker_id);
            self.ctx.gateway.notify(WorkerNotice::OfferWithdrawn {
                worker_id,
                offer_id,
                request_id,
                reason: "cancelled".into(),
            });
        }
        Ok(())
    }

    fn release(&self, state: &RequestState, worker_id: Uuid) {
        if let Some(city) = &state.city {
            city.cast(CityMsg::Release {
                worker_id,
                request_id: state.row.id,
            });
        }
    }

    fn mark_busy(&self, state: &RequestState, worker_id: Uuid) {
        if let Some(city) = &state.city {
            city.cast(CityMsg::MarkBusy {
                worker_id,
                request_id: state.row.id,
            });
        }
    }

    fn tell_city(&self, state: &RequestState, msg: CityMsg) {
        if let Some(city) = &state.city {
            city.cast(msg);
        }
    }

    async fn give_up(&self, state: &mut RequestState, reason: &str) -> Result<(), StoreError> {
        state.row = self
            .write(
                &state.fenced,
                &state.row,
                Change::GaveUp {
                    reason: reason.into(),
                },
            )
            .await?;
        self.ctx.stats.unassigned.inc();
        tracing::info!(target: "RequestActor", request_id = %state.row.id, reason, "request unassigned");
        Ok(())
    }

    /// Finds the next batch of candidates (one worker in sequential mode) and offers the
    /// job to each, every offer committed before it is pushed. Candidates whose offer the
    /// database refuses for a reason about them are passed over.
    async fn dispatch(
        &self,
        myself: &ActorRef<RequestMsg>,
        state: &mut RequestState,
    ) -> Result<(), ActorProcessingErr> {
        // With offers out (OFFERING) this tops the batch up to its width; sequential mode's
        // width is the one offer already out, so nothing more is sent.
        let topping_up = !state.pending.is_empty();
        let open = match state.row.status {
            Status::Pending => true,
            Status::Offering => topping_up,
            _ => false,
        };
        if !open {
            return Ok(());
        }
        let settings = self.ctx.settings.borrow().clone();
        let (width, widest) = offer_width(&settings);
        // `max_assignment_attempts` counts rounds: a parallel round may ask `widest` workers.
        let budget = settings.max_assignment_attempts as i32 * widest as i32;
        loop {
            // While offers are out nothing gives up: their answers decide.
            let topping_up = !state.pending.is_empty();
            if state.row.assignment_attempts >= budget {
                if topping_up {
                    return Ok(());
                }
                return match self.give_up(state, "max attempts reached").await {
                    Err(e) if e.is_conflict() => self.reload(myself, state).await,
                    other => Ok(other?),
                };
            }
            let (Some(city), Some((lon, lat))) = (state.city.clone(), state.row.position()) else {
                if topping_up {
                    return Ok(());
                }
                return Ok(self
                    .give_up(state, "request has no served city or position")
                    .await?);
            };
            let now = self.ctx.clock.now();
            let job_time = state.row.slot().unwrap_or((
                now,
                now + chrono::Duration::from_std(settings.immediate_job_duration)
                    .unwrap_or_default(),
            ));
            let search = Search {
                lon,
                lat,
                skill: state.skill.clone(),
                k: settings.candidates_per_search,
                exclude: state.tried.clone(),
                radius_steps_m: settings.search_radius_steps_m.clone(),
                // A scored ranking needs a choice: it looks as far as the first step with a
                // few candidates; nearest-first takes the nearest step with anybody.
                min_candidates: match settings.candidate_ranking {
                    CandidateRanking::Nearest => 1,
                    CandidateRanking::Scored => settings.ranking_min_candidates,
                },
                blocks: Some(booking::blocked(job_time, settings.travel_buffer)),
            };
            let request_id = state.row.id;
            let searching = std::time::Instant::now();
            let ranking = match settings.candidate_ranking {
                CandidateRanking::Nearest => None,
                CandidateRanking::Scored => Some(settings.ranking_weights),
            };
            let reserved = city
                .call(|reply| {
                    CityMsg::ReserveBest(ReserveBest {
                        search,
                        request_id,
                        width,
                        at_most: (budget - state.row.assignment_attempts) as usize,
                        out: state.pending.len(),
                        ranking,
                        priority: state.priority,
                        reply,
                    })
                })
                .await
                .ok_or("city actor unavailable")?;
            metrics::histogram!("arreglame_worker_finder_duration_seconds")
                .record(searching.elapsed().as_secs_f64());
            if reserved.picks.is_empty() && topping_up {
                return Ok(());
            }
            if reserved.picks.is_empty()
                && self.ctx.ownership.in_takeover(state.row.city_id.as_deref())
            {
                // Just taken over: the city's workers are still coming back. Look again
                // in a second rather than give up on a city that is only half known.
                metrics::counter!("arreglame_cluster_takeover_retries_total").increment(1);
                myself.send_after(std::time::Duration::from_secs(1), || RequestMsg::Dispatch);
                return Ok(());
            }
            if reserved.picks.is_empty() {
                let km =
                    settings.search_radius_steps_m.last().copied().unwrap_or(0) as f64 / 1000.0;
                let reason = format!("no available worker within {km} km");
                return match self.give_up(state, &reason).await {
                    Err(e) if e.is_conflict() => self.reload(myself, state).await,
                    other => Ok(other?),
                };
            }
            state.batches += 1;
            let batch = state.batches;
            let expires_at = Utc::now()
                + chrono::Duration::from_std(settings.worker_timeout)
                    .unwrap_or(chrono::Duration::minutes(5));
            let mut picks = reserved.picks.into_iter();
            let mut first_sent = None;
            while let Some(pick) = picks.next() {
                let worker_id = pick.candidate.worker_id;
                let offer = NewOffer {
                    id: Uuid::now_v7(),
                    worker_id,
                    attempt: state.row.assignment_attempts + 1,
                    expires_at,
                    distance_meters: pick.candidate.distance_m,
                    radius_meters: pick.candidate.radius_m as i32,
                    candidates_considered: pick.candidates_considered as i32,
                    // The batch's first offer carries the ranking for the decision trail.
                    candidate_scores: match first_sent {
                        None => reserved.scores.clone(),
                        Some(_) => Vec::new(),
                    },
                };
                match self
                    .write(&state.fenced, &state.row, Change::OfferSent(offer.clone()))
                    .await
                {
                    Ok(row) => {
                        state.row = row;
                        state.tried.insert(worker_id);
                        state.pending.push(PendingOffer {
                            offer_id: offer.id,
                            worker_id,
                            attempt: offer.attempt,
                            expires_at: offer.expires_at,
                            batch,
                        });
                        first_sent.get_or_insert(offer.id);
                        self.ctx
                            .stats
                            .offer(OfferEvent::Sent, state.row.city_id.as_deref());
                        self.ctx
                            .gateway
                            .notify(WorkerNotice::Offer(self.notice(state, &offer)));
                    }
                    // Something about this candidate refused the offer: its row is gone (the
                    // worker was deleted while online), or it still holds another request's
                    // offer in the database (from before a restart, say). Noted in the
                    // decision trail; the next candidate gets the offer.
                    Err(StoreError::Constraint { constraint })
                        if is_about_the_worker(&constraint) =>
                    {
                        self.pass_over(state, &city, worker_id, &constraint).await;
                    }
                    Err(e) => {
                        self.release(state, worker_id);
                        for rest in picks {
                            self.release(state, rest.candidate.worker_id);
                        }
                        if e.is_conflict() {
                            return self.reload(myself, state).await;
                        }
                        return Err(e.into());
                    }
                }
            }
            if first_sent.is_some() {
                self.arm(myself, state, batch, settings.worker_timeout);
                return Ok(());
            }
        }
    }

    /// A candidate the database refused an offer for: noted (a lasting reason is recorded,
    /// so it is never retried after a restart) and freed, or taken offline if its row is gone.
    async fn pass_over(
        &self,
        state: &mut RequestState,
        city: &CityHandle,
        worker_id: Uuid,
        constraint: &str,
    ) {
        state.tried.insert(worker_id);
        let request_id = state.row.id;
        tracing::warn!(target: "RequestActor", %request_id, %worker_id, constraint,
            "candidate passed over: the offer was refused");
        // A worker busy with another offer may be free later: not a lasting reason.
        if constraint != "offers_one_pending_per_worker_idx" {
            if let Err(e) = self
                .ctx
                .store
                .record_candidate_skip(request_id, worker_id, constraint)
                .await
            {
                tracing::warn!(target: "RequestActor", %request_id, error = %e, "could not record the skipped candidate");
            }
        }
        match constraint {
            WORKER_GONE => city.cast(CityMsg::Offline {
                worker_id,
                reply: None,
            }),
            _ => self.release(state, worker_id),
        }
    }

    fn notice(&self, state: &RequestState, offer: &NewOffer) -> OfferNotice {
        let row = &state.row;
        let area = row
            .city_id
            .as_ref()
            .and_then(|c| self.ctx.cities.get(c))
            .map(|c| c.info.name.clone())
            .unwrap_or_default();
        OfferNotice::new(
            OfferParts {
                offer_id: offer.id,
                request_id: row.id,
                worker_id: offer.worker_id,
                attempt: offer.attempt,
                expires_at: offer.expires_at,
                distance_meters: offer.distance_meters,
            },
            JobParts {
                description: row.description.as_deref(),
                square_meters: row.square_meters,
                worker_net_cents: row.worker_net_cents,
                currency: &row.currency,
                position: row
                    .position()
                    .and_then(|(lon, lat)| Position::new(lon, lat).ok()),
                area: &area,
                slot: row.slot(),
            },
        )
    }

    /// Every offer of a batch ran out of time together.
    async fn expire_batch(
        &self,
        myself: &ActorRef<RequestMsg>,
        state: &mut RequestState,
        batch: u32,
    ) -> Result<(), CommandError> {
        state.disarm_batch(batch);
        let expired: Vec<PendingOffer> = state
            .pending
            .iter()
            .filter(|p| p.batch == batch)
            .copied()
            .collect();
        for offer in expired {
            match self
                .settle(myself, state, offer, OfferOutcome::Expired, None)
                .await
            {
                Ok(()) => {}
                // A lost race reloaded the request: what is left is the new state's.
                Err(CommandError::OfferNotPending) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Records one rejected or expired offer and frees its worker; once no offer of the
    /// request is out any more, looks for the next workers.
    async fn settle(
        &self,
        myself: &ActorRef<RequestMsg>,
        state: &mut RequestState,
        offer: PendingOffer,
        outcome: OfferOutcome,
        reason: Option<String>,
    ) -> Result<(), CommandError> {
        let change = Change::OfferSettled {
            offer_id: offer.offer_id,
            outcome,
            reason,
            others_pending: state.pending.len() > 1,
        };
        match self.write(&state.fenced, &state.row, change).await {
            Ok(row) => state.row = row,
            Err(e) if e.is_conflict() => {
                self.reload(myself, state)
                    .await
                    .map_err(|e| CommandError::Internal(e.to_string()))?;
                return Err(CommandError::OfferNotPending);
            }
            Err(e) => return Err(e.into()),
        }
        state.pending.retain(|p| p.offer_id != offer.offer_id);
        self.release(state, offer.worker_id);
        self.tell_city(
            state,
            CityMsg::OfferAnswered {
                worker_id: offer.worker_id,
                accepted: false,
            },
        );
        match outcome {
            OfferOutcome::Rejected => self
                .ctx
                .stats
                .offer(OfferEvent::Rejected, state.row.city_id.as_deref()),
            _ => {
                self.ctx
                    .stats
                    .offer(OfferEvent::Expired, state.row.city_id.as_deref());
                self.ctx.gateway.notify(WorkerNotice::OfferWithdrawn {
                    worker_id: offer.worker_id,
                    offer_id: offer.offer_id,
                    request_id: state.row.id,
                    reason: "expired".into(),
                });
            }
        }
        if state.pending.is_empty() {
            state.disarm();
            let _ = myself.send_message(RequestMsg::Dispatch);
        } else {
            if state.pending.iter().all(|p| p.batch != offer.batch) {
                state.disarm_batch(offer.batch);
            }
            // Adaptive mode keeps the chance of an accept at its target: the batch is topped
            // up to the width the estimate asks for now. Parallel mode's batches are rounds:
            // the next one goes out once every offer of this one is settled (topping them up
            // made earnings less even in the simulator, docs/benchmarks.md).
            if self.ctx.settings.borrow().offer_mode == OfferMode::Adaptive {
                let _ = myself.send_message(RequestMsg::Dispatch);
            }
        }
        Ok(())
    }

    /// The first accept of a batch wins; the database withdraws the others in the same
    /// transaction and their workers are told the job was `taken`.
    async fn accept(
        &self,
        myself: &ActorRef<RequestMsg>,
        state: &mut RequestState,
        worker_id: Uuid,
        offer_id: Uuid,
    ) -> Result<ServiceRequest, CommandError> {
        check_offer(state, worker_id, offer_id)?;
        let row = self
            .write(
                &state.fenced,
                &state.row,
                Change::OfferAccepted {
                    offer_id,
                    worker_id,
                },
            )
            .await
            .map_err(|e| {
                if e.is_conflict() {
                    CommandError::OfferNotPending
                } else {
                    e.into()
                }
            })?;
        state.row = row;
        state.disarm();
        for other in std::mem::take(&mut state.pending) {
            if other.offer_id == offer_id {
                continue;
            }
            self.release(state, other.worker_id);
            self.ctx.gateway.notify(WorkerNotice::OfferWithdrawn {
                worker_id: other.worker_id,
                offer_id: other.offer_id,
                request_id: state.row.id,
                reason: TAKEN.into(),
            });
        }
        self.tell_city(
            state,
            CityMsg::OfferAnswered {
                worker_id,
                accepted: true,
            },
        );
        match state.row.slot() {
            // A booking keeps the worker free until its slot, which now blocks their day.
            Some(slot) => {
                self.tell_city(
                    state,
                    CityMsg::Booked {
                        worker_id,
                        request_id: state.row.id,
                        slot,
                    },
                );
                state.reminded = false;
                self.arm_slot(myself, state);
            }
            None => self.mark_busy(state, worker_id),
        }
        state.priority = false;
        self.ctx
            .stats
            .offer(OfferEvent::Accepted, state.row.city_id.as_deref());
        let settings = self.ctx.settings.borrow().clone();
        let since = state
            .row
            .slot()
            .map(|(start, _)| booking::dispatch_at(start, settings.dispatch_lead))
            .map_or(state.row.created_at, |at| at.max(state.row.created_at));
        self.ctx.stats.record_assignment(since);
        self.ctx.gateway.notify(WorkerNotice::AssignmentConfirmed {
            worker_id,
            offer_id,
            request_id: state.row.id,
        });
        Ok(state.row.clone())
    }

    /// The assigned worker gives the job back (`cancel_assignment`, allowed until the job
    /// starts, and for a booking until its slot starts) or did not show up: the request
    /// goes back to dispatch at once, ahead of new requests, without that worker, and the
    /// strike counts against them.
    async fn release_assignment(
        &self,
        myself: &ActorRef<RequestMsg>,
        state: &mut RequestState,
        worker_id: Uuid,
        kind: StrikeKind,
        reason: Option<String>,
    ) -> Result<ServiceRequest, CommandError> {
        if state.row.assigned_worker_id != Some(worker_id) {
            return Err(CommandError::NotYourJob);
        }
        if state.row.status != Status::Assigned {
            return Err(CommandError::IllegalState {
                status: state.row.status,
                action: "cancel the assignment of".into(),
            });
        }
        if let (StrikeKind::Cancelled, Some((start, _))) = (kind, state.row.slot()) {
            if self.ctx.clock.now() >= start {
                return Err(CommandError::SlotStarted);
            }
        }
        let change = Change::AssignmentReleased {
            worker_id,
            kind,
            reason,
        };
        state.row = self.write(&state.fenced, &state.row, change).await?;
        state.disarm_slot();
        state.reminded = false;
        state.priority = true;
        self.release(state, worker_id);
        self.tell_city(state, CityMsg::Struck { worker_id });
        match kind {
            StrikeKind::Cancelled => self.ctx.stats.worker_cancellations.inc(),
            StrikeKind::NoShow => {
                self.ctx.stats.no_shows.inc();
                self.ctx.gateway.notify(WorkerNotice::AssignmentRevoked {
                    worker_id,
                    request_id: state.row.id,
                    reason: "no_show".into(),
                });
            }
        }
        tracing::info!(target: "RequestActor", request_id = %state.row.id, %worker_id, kind = kind.as_str(), "assignment released; dispatching again");
        let _ = myself.send_message(RequestMsg::Dispatch);
        Ok(state.row.clone())
    }

    async fn cancel(
        &self,
        state: &mut RequestState,
        by: CancelledBy,
        reason: Option<String>,
    ) -> Result<ServiceRequest, CommandError> {
        let late_fee = self.ctx.settings.borrow().late_cancellation_fee;
        let fee = cancellation_fee(
            state.row.status,
            Cents(state.row.price_total_cents.unwrap_or(0)),
            late_fee,
        )
        .map_err(|NotCancellable(status)| CommandError::IllegalState {
            status,
            action: "cancel".into(),
        })?;
        let before = state.row.status;
        let row = self
            .write(
                &state.fenced,
                &state.row,
                Change::Cancelled { by, reason, fee },
            )
            .await?;
        state.row = row;
        state.disarm();
        state.disarm_slot();
        for p in std::mem::take(&mut state.pending) {
            self.release(state, p.worker_id);
            self.ctx.gateway.notify(WorkerNotice::OfferWithdrawn {
                worker_id: p.worker_id,
                offer_id: p.offer_id,
                request_id: state.row.id,
                reason: "cancelled".into(),
            });
        }
        if before == Status::Assigned {
            if let Some(worker) = state.row.assigned_worker_id {
                self.release(state, worker);
                self.ctx.gateway.notify(WorkerNotice::JobUpdate {
                    worker_id: worker,
                    request_id: state.row.id,
                    status: Status::Cancelled,
                });
            }
        }
        self.ctx.stats.cancelled.inc();
        Ok(state.row.clone())
    }

    async fn job_step(
        &self,
        state: &mut RequestState,
        worker_id: Uuid,
        change: Change,
        action: &'static str,
    ) -> Result<ServiceRequest, CommandError> {
        if state.row.assigned_worker_id != Some(worker_id) {
            return Err(CommandError::NotYourJob);
        }
        state
            .row
            .status
            .apply(change.command())
            .map_err(|e| CommandError::IllegalState {
                status: e.from,
                action: action.into(),
            })?;
        let completing = matches!(change, Change::JobCompleted { .. });
        state.row = self.write(&state.fenced, &state.row, change).await?;
        if completing {
            self.tell_city(
                state,
                CityMsg::JobDone {
                    worker_id,
                    request_id: state.row.id,
                    earned_cents: state.row.worker_net().0,
                },
            );
            self.ctx.stats.completed.inc();
        }
        self.ctx.gateway.notify(WorkerNotice::JobUpdate {
            worker_id,
            request_id: state.row.id,
            status: state.row.status,
        });
        Ok(state.row.clone())
    }
}

/// When an assigned booking's worker counts as a no-show: the grace after the slot start,
/// or after the assignment for a booking assigned late (dispatched after an outage, say),
/// so nobody is a no-show the moment they accept.
fn no_show_deadline(
    row: &ServiceRequest,
    start: DateTime<Utc>,
    grace: std::time::Duration,
) -> DateTime<Utc> {
    let from = row
        .assigned_at
        .map_or(start, |assigned| assigned.max(start));
    from + chrono::Duration::from_std(grace).unwrap_or_default()
}
