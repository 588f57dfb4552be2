//! The request actor: one per open service request, the only writer of its row while it
//! lives. It asks its city for the nearest suitable worker, persists the offer, pushes it
//! through the gateway and arms its own offer timer; on reject or timeout it moves to the
//! next worker; it follows the job to completion and stops at a terminal status.
//!
//! State is always rebuilt from the database (`pre_start`), never carried over from a
//! failed incarnation. Every write is a `Store::transition` with the version the actor last
//! saw; losing that race (the cron backstop, another node) reloads the row and resumes.

use std::{collections::HashSet, sync::Arc};

use chrono::Utc;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tracing::Instrument;

use crate::telemetry::TraceLink;
use serde::Serialize;
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::{
    city::{CityHandle, CityMsg, Search},
    gateway::{JobParts, OfferNotice, OfferParts, WorkerNotice},
    CommandError, DispatchContext, OfferEvent,
};
use crate::{
    domain::{
        cancellation::{cancellation_fee, NotCancellable},
        Cents, Position, Status,
    },
    store::{CancelledBy, Change, NewOffer, OfferOutcome, ServiceRequest, StoreError},
};

/// The offer a request is waiting on.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingOffer {
    pub offer_id: Uuid,
    pub worker_id: Uuid,
    pub attempt: i32,
    pub expires_at: chrono::DateTime<Utc>,
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
    pub pending: Option<PendingOffer>,
    pub tried: usize,
    pub created_at: chrono::DateTime<Utc>,
    pub latitude: Option<f64>,
    pub longitude: Option<f64>,
}

/// The startup error of a second actor for a request that already has one.
pub const ALREADY_RUNNING: &str = "request actor already running";

type Reply<T> = RpcReplyPort<Result<T, CommandError>>;

/// Messages of a request actor.
pub enum RequestMsg {
    /// Look for the next worker and offer the job (internal).
    Dispatch,
    /// The offer timer fired (internal).
    OfferTimeout {
        offer_id: Uuid,
    },
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
    /// The worker holding the offer went away (disconnect, heartbeat missed): settled as a timeout.
    WorkerLost {
        worker_id: Uuid,
    },
    Cancel {
        by: CancelledBy,
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
}

/// The actor's configuration: the shared dispatch context.
pub struct RequestActor {
    pub ctx: Arc<DispatchContext>,
}

pub struct RequestState {
    row: ServiceRequest,
    city: Option<CityHandle>,
    skill: Option<String>,
    /// Workers already offered this request (loaded from `offers`, so a restart never
    /// offers the same job to the same worker twice).
    tried: HashSet<Uuid>,
    pending: Option<PendingOffer>,
    timer: Option<JoinHandle<Result<(), ractor::MessagingErr<RequestMsg>>>>,
    /// Where in a trace the actor was started (see `Arguments`).
    origin: TraceLink,
}

impl RequestState {
    fn snapshot(&self) -> RequestSnapshot {
        RequestSnapshot {
            request_id: self.row.id,
            city_id: self.row.city_id.clone(),
            status: self.row.status,
            version: self.row.version,
            attempts: self.row.assignment_attempts,
            pending: self.pending,
            tried: self.tried.len(),
            created_at: self.row.created_at,
            latitude: self.row.latitude,
            longitude: self.row.longitude,
        }
    }

    fn disarm(&mut self) {
        if let Some(t) = self.timer.take() {
            t.abort();
        }
    }
}

impl Actor for RequestActor {
    type Msg = RequestMsg;
    type State = RequestState;
    /// The request, and the span of whatever started the actor (the GraphQL create, a
    /// recovery): the actor's dispatch spans are its children, so one trace follows a
    /// request from the create to the offer frame.
    type Arguments = (Uuid, TraceLink);

    async fn pre_start(
        &self,
        myself: ActorRef<RequestMsg>,
        (request_id, origin): (Uuid, TraceLink),
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
            let row = self.ctx.store.get_request(request_id).await?;
            let tried = self.ctx.store.tried_workers(request_id).await?;
            Ok::<_, StoreError>((row, tried))
        }
        .await;
        let (row, tried) = match loaded {
            Ok(v) => v,
            Err(e) => {
                self.ctx.forget(request_id, myself.get_id());
                return Err(e.into());
            }
        };
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
            pending: None,
            timer: None,
            origin,
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
        Box::pin(self.on_message(myself, msg, state)).await
    }
}

impl RequestActor {
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
                if state.pending.map(|p| p.offer_id) == Some(offer_id) {
                    tolerate_settled(
                        self.settle(&myself, state, OfferOutcome::Expired, None)
                            .await,
                    )?;
                }
            }
            RequestMsg::WorkerLost { worker_id } => {
                if state.pending.map(|p| p.worker_id) == Some(worker_id) {
                    let lost = Some("worker disconnected".into());
                    tolerate_settled(
                        self.settle(&myself, state, OfferOutcome::Expired, lost)
                            .await,
                    )?;
                }
            }
            RequestMsg::Accept {
                worker_id,
                offer_id,
                reply,
            } => {
                let result = self.accept(state, worker_id, offer_id).await;
                let lost_race = matches!(result, Err(CommandError::OfferNotPending))
                    && state
                        .pending
                        .as_ref()
                        .is_some_and(|p| p.offer_id == offer_id);
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
                    Ok(()) => {
                        self.settle(&myself, state, OfferOutcome::Rejected, reason)
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
            RequestMsg::StartJob { worker_id, reply } => {
                let result = self
                    .job_step(state, worker_id, Change::JobStarted, "start")
                    .await;
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

fn check_offer(state: &RequestState, worker_id: Uuid, offer_id: Uuid) -> Result<(), CommandError> {
    match state.pending {
        Some(p) if p.offer_id == offer_id && p.worker_id == worker_id => Ok(()),
        Some(p) if p.offer_id == offer_id => Err(CommandError::NotYourOffer),
        _ => Err(CommandError::OfferNotPending),
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
        state.pending = None;
        match state.row.status {
            Status::Pending => myself.send_message(RequestMsg::Dispatch)?,
            Status::Offering => {
                let Some(offer) = self.ctx.store.pending_offer(state.row.id).await? else {
                    // Cannot happen through `transition` (offer and status move together);
                    // end the request visibly rather than leave it stuck.
                    tracing::error!(target: "RequestActor", request_id = %state.row.id, "OFFERING without a pending offer");
                    self.give_up(state, "inconsistent offer state").await?;
                    myself.stop(None);
                    return Ok(());
                };
                let pending = PendingOffer {
                    offer_id: offer.id,
                    worker_id: offer.worker_id,
                    attempt: offer.attempt,
                    expires_at: offer.expires_at,
                };
                state.pending = Some(pending);
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
                let remaining = (offer.expires_at - Utc::now()).to_std().unwrap_or_default();
                if remaining.is_zero() {
                    // Expired while nobody was watching (engine down): settle at once.
                    myself.send_message(RequestMsg::OfferTimeout { offer_id: offer.id })?;
                } else {
                    // Push it again: the gateway de-duplicates by offer id, and a worker whose
                    // session survived the restart (or another node's) learns it is still on.
                    let again = NewOffer {
                        id: offer.id,
                        worker_id: offer.worker_id,
                        attempt: offer.attempt,
                        expires_at: offer.expires_at,
                        distance_meters: offer.distance_meters.unwrap_or_default(),
                        radius_meters: offer.radius_meters.unwrap_or_default(),
                        candidates_considered: offer.candidates_considered.unwrap_or_default(),
                    };
                    self.ctx
                        .gateway
                        .notify(WorkerNotice::Offer(self.notice(state, &again)));
                    self.arm(myself, state, pending.offer_id, remaining);
                }
            }
            Status::Assigned | Status::InProgress => {
                if let (Some(city), Some(worker)) = (&state.city, state.row.assigned_worker_id) {
                    city.cast(CityMsg::MarkBusy {
                        worker_id: worker,
                        request_id: state.row.id,
                    });
                }
            }
            _ => myself.stop(None),
        }
        Ok(())
    }

    fn arm(
        &self,
        myself: &ActorRef<RequestMsg>,
        state: &mut RequestState,
        offer_id: Uuid,
        after: std::time::Duration,
    ) {
        state.disarm();
        state.timer = Some(myself.send_after(after, move || RequestMsg::OfferTimeout { offer_id }));
    }

    /// Reloads the row after a lost race and resumes from what the database says.
    async fn reload(
        &self,
        myself: &ActorRef<RequestMsg>,
        state: &mut RequestState,
    ) -> Result<(), ActorProcessingErr> {
        self.ctx.stats.conflicts.inc();
        if let Some(p) = state.pending.take() {
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

    async fn give_up(&self, state: &mut RequestState, reason: &str) -> Result<(), StoreError> {
        state.row = self
            .ctx
            .store
            .transition(
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

    async fn dispatch(
        &self,
        myself: &ActorRef<RequestMsg>,
        state: &mut RequestState,
    ) -> Result<(), ActorProcessingErr> {
        if state.row.status != Status::Pending {
            return Ok(());
        }
        let settings = self.ctx.settings.borrow().clone();
        loop {
            if state.row.assignment_attempts >= settings.max_assignment_attempts as i32 {
                return match self.give_up(state, "max attempts reached").await {
                    Err(e) if e.is_conflict() => self.reload(myself, state).await,
                    other => Ok(other?),
                };
            }
            let (Some(city), Some((lon, lat))) = (state.city.clone(), state.row.position()) else {
                return Ok(self
                    .give_up(state, "request has no served city or position")
                    .await?);
            };
            let search = Search {
                lon,
                lat,
                skill: state.skill.clone(),
                k: settings.candidates_per_search,
                exclude: state.tried.clone(),
                radius_steps_m: settings.search_radius_steps_m.clone(),
            };
            let request_id = state.row.id;
            let searching = std::time::Instant::now();
            let reservation = city
                .call(|reply| CityMsg::ReserveNearest {
                    search,
                    request_id,
                    reply,
                })
                .await
                .ok_or("city actor unavailable")?;
            metrics::histogram!("arreglame_worker_finder_duration_seconds")
                .record(searching.elapsed().as_secs_f64());
            let Some(reservation) = reservation else {
                let km =
                    settings.search_radius_steps_m.last().copied().unwrap_or(0) as f64 / 1000.0;
                let reason = format!("no available worker within {km} km");
                return match self.give_up(state, &reason).await {
                    Err(e) if e.is_conflict() => self.reload(myself, state).await,
                    other => Ok(other?),
                };
            };
            let worker_id = reservation.candidate.worker_id;
            let offer = NewOffer {
                id: Uuid::now_v7(),
                worker_id,
                attempt: state.row.assignment_attempts + 1,
                expires_at: Utc::now()
                    + chrono::Duration::from_std(settings.worker_timeout)
                        .unwrap_or(chrono::Duration::minutes(5)),
                distance_meters: reservation.candidate.distance_m,
                radius_meters: reservation.candidate.radius_m as i32,
                candidates_considered: reservation.candidates_considered as i32,
            };
            match self
                .ctx
                .store
                .transition(&state.row, Change::OfferSent(offer.clone()))
                .await
            {
                Ok(row) => {
                    state.row = row;
                    state.tried.insert(worker_id);
                    let pending = PendingOffer {
                        offer_id: offer.id,
                        worker_id,
                        attempt: offer.attempt,
                        expires_at: offer.expires_at,
                    };
                    state.pending = Some(pending);
                    self.ctx
                        .stats
                        .offer(OfferEvent::Sent, state.row.city_id.as_deref());
                    self.ctx
                        .gateway
                        .notify(WorkerNotice::Offer(self.notice(state, &offer)));
                    self.arm(myself, state, offer.id, settings.worker_timeout);
                    return Ok(());
                }
                // Something about this candidate refused the offer: its row is gone (the
                // worker was deleted while online), or it still holds another request's
                // offer in the database (from before a restart, say). Noted in the
                // decision trail; the next candidate gets the offer.
                Err(StoreError::Constraint { constraint }) if is_about_the_worker(&constraint) => {
                    state.tried.insert(worker_id);
                    let request_id = state.row.id;
                    tracing::warn!(target: "RequestActor", %request_id, %worker_id, constraint,
                        "candidate passed over: the offer was refused");
                    // Only a lasting reason is recorded (and so never retried after a
                    // restart): a worker busy with another offer may be free later.
                    let lasting = constraint != "offers_one_pending_per_worker_idx";
                    if lasting {
                        if let Err(e) = self
                            .ctx
                            .store
                            .record_candidate_skip(request_id, worker_id, &constraint)
                            .await
                        {
                            tracing::warn!(target: "RequestActor", %request_id, error = %e, "could not record the skipped candidate");
                        }
                    }
                    match constraint.as_str() {
                        WORKER_GONE => city.cast(CityMsg::Offline {
                            worker_id,
                            reply: None,
                        }),
                        _ => self.release(state, worker_id),
                    }
                }
                Err(e) if e.is_conflict() => {
                    self.release(state, worker_id);
                    return self.reload(myself, state).await;
                }
                Err(e) => {
                    self.release(state, worker_id);
                    return Err(e.into());
                }
            }
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
            },
        )
    }

    /// Records a rejected or expired offer, frees the worker and looks for the next one.
    async fn settle(
        &self,
        myself: &ActorRef<RequestMsg>,
        state: &mut RequestState,
        outcome: OfferOutcome,
        reason: Option<String>,
    ) -> Result<(), CommandError> {
        let Some(pending) = state.pending else {
            return Err(CommandError::OfferNotPending);
        };
        let change = Change::OfferSettled {
            offer_id: pending.offer_id,
            outcome,
            reason,
        };
        match self.ctx.store.transition(&state.row, change).await {
            Ok(row) => state.row = row,
            Err(e) if e.is_conflict() => {
                self.reload(myself, state)
                    .await
                    .map_err(|e| CommandError::Internal(e.to_string()))?;
                return Err(CommandError::OfferNotPending);
            }
            Err(e) => return Err(e.into()),
        }
        state.pending = None;
        state.disarm();
        self.release(state, pending.worker_id);
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
                    worker_id: pending.worker_id,
                    offer_id: pending.offer_id,
                    request_id: state.row.id,
                    reason: "expired".into(),
                });
            }
        }
        let _ = myself.send_message(RequestMsg::Dispatch);
        Ok(())
    }

    async fn accept(
        &self,
        state: &mut RequestState,
        worker_id: Uuid,
        offer_id: Uuid,
    ) -> Result<ServiceRequest, CommandError> {
        check_offer(state, worker_id, offer_id)?;
        let row = self
            .ctx
            .store
            .transition(
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
        state.pending = None;
        state.disarm();
        if let Some(city) = &state.city {
            city.cast(CityMsg::MarkBusy {
                worker_id,
                request_id: state.row.id,
            });
        }
        self.ctx
            .stats
            .offer(OfferEvent::Accepted, state.row.city_id.as_deref());
        self.ctx.stats.record_assignment(state.row.created_at);
        self.ctx.gateway.notify(WorkerNotice::AssignmentConfirmed {
            worker_id,
            offer_id,
            request_id: state.row.id,
        });
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
            action: "cancel",
        })?;
        let before = state.row.status;
        let row = self
            .ctx
            .store
            .transition(&state.row, Change::Cancelled { by, reason, fee })
            .await?;
        state.row = row;
        state.disarm();
        if let Some(p) = state.pending.take() {
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
                action,
            })?;
        let completing = matches!(change, Change::JobCompleted { .. });
        state.row = self.ctx.store.transition(&state.row, change).await?;
        if completing {
            self.release(state, worker_id);
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
