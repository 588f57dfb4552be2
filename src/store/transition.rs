//! The one place a service request changes state: a version-guarded update, the rows the
//! change implies (offer, payout), and exactly one outbox row, in one transaction.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::{
    events::{self, RequestEvent},
    insert_outbox_event, ServiceRequest, Store, StoreError,
};
use crate::domain::{offer_policy::CandidateScore, Cents, Command};

/// A new offer to one worker.
#[derive(Debug, Clone)]
pub struct NewOffer {
    pub id: Uuid,
    pub worker_id: Uuid,
    /// 1 for the first offer of a request, then 2, 3...
    pub attempt: i32,
    pub expires_at: DateTime<Utc>,
    pub distance_meters: f64,
    pub radius_meters: i32,
    pub candidates_considered: i32,
    /// The ranked candidates of this search (winner first), for the decision trail; empty
    /// when candidates are taken nearest first.
    pub candidate_scores: Vec<CandidateScore>,
}

// The same type is the GraphQL enum `OfferOutcome` (its doc is the schema's description).
/// What became of an offer (`offers.outcome`, a closed set checked by the database).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, async_graphql::Enum)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[graphql(rename_items = "SCREAMING_SNAKE_CASE")]
pub enum OfferOutcome {
    Accepted,
    Rejected,
    Expired,
    /// Taken back: the request was cancelled, given up, or (parallel offers) another
    /// worker accepted first.
    Withdrawn,
    /// Accepted, then cancelled by the worker before the job started (`cancel_assignment`).
    Released,
    /// Accepted, then the worker did not start within the grace after the slot start.
    NoShow,
}

impl OfferOutcome {
    const ALL: [OfferOutcome; 6] = [
        OfferOutcome::Accepted,
        OfferOutcome::Rejected,
        OfferOutcome::Expired,
        OfferOutcome::Withdrawn,
        OfferOutcome::Released,
        OfferOutcome::NoShow,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OfferOutcome::Accepted => "ACCEPTED",
            OfferOutcome::Rejected => "REJECTED",
            OfferOutcome::Expired => "EXPIRED",
            OfferOutcome::Withdrawn => "WITHDRAWN",
            OfferOutcome::Released => "RELEASED",
            OfferOutcome::NoShow => "NO_SHOW",
        }
    }

    /// The outcome a stored `offers.outcome` names.
    pub fn parse(stored: &str) -> Option<OfferOutcome> {
        OfferOutcome::ALL.into_iter().find(|o| o.as_str() == stored)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CancelledBy {
    Customer,
    Ops,
    System,
}

impl CancelledBy {
    fn as_str(self) -> &'static str {
        match self {
            CancelledBy::Customer => "CUSTOMER",
            CancelledBy::Ops => "OPS",
            CancelledBy::System => "SYSTEM",
        }
    }
}

/// Why an assigned worker lost the job: each one counts against the worker
/// (`worker_strikes.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StrikeKind {
    /// The worker cancelled after accepting (`cancel_assignment`).
    Cancelled,
    /// The worker did not start within `no_show_grace_minutes` after the slot start.
    NoShow,
}

impl StrikeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StrikeKind::Cancelled => "CANCELLED",
            StrikeKind::NoShow => "NO_SHOW",
        }
    }

    /// What becomes of the accepted offer.
    pub fn offer_outcome(self) -> OfferOutcome {
        match self {
            StrikeKind::Cancelled => OfferOutcome::Released,
            StrikeKind::NoShow => OfferOutcome::NoShow,
        }
    }
}

/// A state change of a service request, with what it needs to record.
#[derive(Debug, Clone)]
pub enum Change {
    OfferSent(NewOffer),
    /// A pending offer was rejected or timed out: back to PENDING to find the next worker,
    /// or, while other offers of a parallel batch are still out, still OFFERING.
    OfferSettled {
        offer_id: Uuid,
        outcome: OfferOutcome,
        reason: Option<String>,
        others_pending: bool,
    },
    OfferAccepted {
        offer_id: Uuid,
        worker_id: Uuid,
    },
    /// Nobody suitable, or max attempts reached. Withdraws a pending offer, if any.
    GaveUp {
        reason: String,
    },
    /// Withdraws a pending offer, if any.
    Cancelled {
        by: CancelledBy,
        reason: Option<String>,
        fee: Cents,
    },
    /// A booked request reached its dispatch time.
    DispatchOpened,
    /// The assigned worker cancelled or did not show up: back to PENDING without them; the
    /// accepted offer becomes RELEASED or NO_SHOW and a strike is recorded.
    AssignmentReleased {
        worker_id: Uuid,
        kind: StrikeKind,
        reason: Option<String>,
    },
    JobStarted,
    /// Creates the payout (worker net) releasable at `payout_release_at`.
    JobCompleted {
        payout_release_at: DateTime<Utc>,
    },
}

impl Change {
    pub fn command(&self) -> Command {
        match self {
            Change::OfferSent(_) => Command::SendOffer,
            Change::OfferSettled {
                others_pending: true,
                ..
            } => Command::SettleOneOfMany,
            Change::OfferSettled { .. } => Command::SettleOffer,
            Change::OfferAccepted { .. } => Command::AcceptOffer,
            Change::GaveUp { .. } => Command::GiveUp,
            Change::Cancelled { .. } => Command::Cancel,
            Change::DispatchOpened => Command::OpenDispatch,
            Change::AssignmentReleased { .. } => Command::ReleaseAssignment,
            Change::JobStarted => Command::StartJob,
            Change::JobCompleted { .. } => Command::CompleteJob,
        }
    }

    /// The outbox `type` of this change.
    pub fn event_type(&self) -> &'static str {
        match self {
            Change::OfferSent(_) => "OfferSent",
            Change::OfferSettled {
                outcome: OfferOutcome::Rejected,
                ..
            } => "OfferRejected",
            Change::OfferSettled { .. } => "OfferExpired",
            Change::OfferAccepted { .. } => "WorkerAssigned",
            Change::GaveUp { .. } => "ServiceRequestUnassigned",
            Change::Cancelled { .. } => "ServiceRequestCancelled",
            Change::DispatchOpened => "DispatchOpened",
            Change::AssignmentReleased { .. } => "AssignmentReleased",
            Change::JobStarted => "JobStarted",
            Change::JobCompleted { .. } => "JobCompleted",
        }
    }
}

/// One row of `offers`.
#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
#[sqlx(rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct OfferRow {
    pub id: Uuid,
    pub request_id: Uuid,
    pub worker_id: Uuid,
    pub attempt: i32,
    pub sent_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub outcome: Option<String>,
    pub responded_at: Option<DateTime<Utc>>,
    pub reject_reason: Option<String>,
    pub distance_meters: Option<f64>,
    pub radius_meters: Option<i32>,
    pub candidates_considered: Option<i32>,
    /// The ranked candidates of the search that made this offer (winner first).
    pub candidate_scores: Option<sqlx::types::Json<Vec<CandidateScore>>>,
}

impl Store {
    /// Applies `change` to the request as the caller last saw it (`current`). Zero rows
    /// updated means someone else moved the row first: `ConcurrencyConflict`, never an
    /// overwrite. Returns the request as it is after the change.
    #[tracing::instrument(skip_all, fields(request_id = %current.id, version = current.version, change = change.event_type()))]
    pub async fn transition(
        &self,
        current: &ServiceRequest,
        change: Change,
    ) -> Result<ServiceRequest, StoreError> {
        let to = current.status.apply(change.command())?;
        let started = std::time::Instant::now();
        let result = self.apply_transition(current, to, change).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(StoreError::ConcurrencyConflict { .. }) => "conflict",
            Err(_) => "error",
        };
        metrics::histogram!("arreglame_db_query_duration_seconds", "query" => "transition", "outcome" => outcome)
            .record(started.elapsed().as_secs_f64());
        if outcome == "conflict" {
            metrics::counter!("arreglame_concurrency_conflicts_total").increment(1);
        }
        result
    }

    /// The transaction of one transition: the version-guarded update, then the writer of
    /// this change (its offer or payout rows, and what its event records), then exactly
    /// one outbox row.
    async fn apply_transition(
        &self,
        current: &ServiceRequest,
        to: crate::domain::Status,
        change: Change,
    ) -> Result<ServiceRequest, StoreError> {
        let waiting = std::time::Instant::now();
        let mut tx = self.pool.begin().await?;
        // A pooled connection and BEGIN: under load, the wait for a free connection.
        metrics::histogram!("arreglame_db_pool_acquire_duration_seconds")
            .record(waiting.elapsed().as_secs_f64());
        let Some(updated) = update_request(&mut tx, current, to, &change).await? else {
            tx.rollback().await?;
            return Err(self.missing_or_conflict(current).await);
        };
        let payload = match &change {
            Change::OfferSent(offer) => {
                let detail = write_offer_sent(&mut tx, &updated, offer).await?;
                RequestEvent::payload(&updated, &detail)
            }
            Change::OfferSettled {
                offer_id,
                outcome,
                reason,
                ..
            } => {
                let detail =
                    write_offer_settled(&mut tx, &updated, *offer_id, *outcome, reason).await?;
                RequestEvent::payload(&updated, &detail)
            }
            Change::OfferAccepted {
                offer_id,
                worker_id,
            } => {
                let detail = write_offer_accepted(&mut tx, &updated, *offer_id, *worker_id).await?;
                RequestEvent::payload(&updated, &detail)
            }
            Change::GaveUp { reason } => {
                let detail = events::Unassigned {
                    withdrawn_from_worker_id: withdraw_pending_offer(&mut tx, &updated).await?,
                    reason: reason.clone(),
                };
                RequestEvent::payload(&updated, &detail)
            }
            Change::Cancelled { by, reason, fee } => {
                let detail = write_cancelled(&mut tx, current, &updated, *by, reason, *fee).await?;
                RequestEvent::payload(&updated, &detail)
            }
            Change::DispatchOpened => RequestEvent::payload(
                &updated,
                &events::DispatchOpened {
                    scheduled_start: updated.scheduled_start,
                    scheduled_end: updated.scheduled_end,
                },
            ),
            Change::AssignmentReleased {
                worker_id,
                kind,
                reason,
            } => {
                let detail =
                    write_assignment_released(&mut tx, &updated, *worker_id, *kind, reason).await?;
                RequestEvent::payload(&updated, &detail)
            }
            Change::JobStarted => RequestEvent::payload(&updated, &events::JobStarted {}),
            Change::JobCompleted { payout_release_at } => {
                let detail = write_job_completed(&mut tx, &updated, *payout_release_at).await?;
                RequestEvent::payload(&updated, &detail)
            }
        };
        insert_outbox_event(
            &mut tx,
            events::SERVICE_REQUEST,
            &updated.id.to_string(),
            updated.version,
            change.event_type(),
            &payload,
        )
        .await?;
        tx.commit().await?;
        self.outbox_written();
        Ok(updated)
    }

    async fn missing_or_conflict(&self, current: &ServiceRequest) -> StoreError {
        match sqlx::query_scalar::<_, i32>("select version from service_requests where id = $1")
            .bind(current.id)
            .fetch_optional(&self.pool)
            .await
        {
            Ok(Some(_)) => StoreError::ConcurrencyConflict {
                id: current.id,
                expected_version: current.version,
            },
            Ok(None) => StoreError::NotFound {
                what: "service request",
                id: current.id.to_string(),
            },
            Err(e) => e.into(),
        }
    }

    /// Every offer of a request, in attempt order (the dispatch decision trail).
    pub async fn offers_for_request(&self, request_id: Uuid) -> Result<Vec<OfferRow>, StoreError> {
        Ok(
            sqlx::query_as(r#"select * from offers where "requestId" = $1 order by attempt"#)
                .bind(request_id)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// The request's pending offers (one, or a parallel batch), in attempt order.
    pub async fn pending_offers(&self, request_id: Uuid) -> Result<Vec<OfferRow>, StoreError> {
        Ok(sqlx::query_as(
            r#"select * from offers where "requestId" = $1 and outcome is null order by attempt"#,
        )
        .bind(request_id)
        .fetch_all(&self.pool)
        .await?)
    }
}

/// The version-guarded update every change makes; `None` when the row moved on (or is gone).
async fn update_request(
    tx: &mut sqlx::PgConnection,
    current: &ServiceRequest,
    to: crate::domain::Status,
    change: &Change,
) -> Result<Option<ServiceRequest>, sqlx::Error> {
    let (attempts_delta, timeout_at, assignee) = match change {
        // A parallel batch shares one deadline; a later offer never shortens it.
        Change::OfferSent(offer) => (
            1,
            Some(
                current
                    .worker_timeout_at
                    .map_or(offer.expires_at, |t| t.max(offer.expires_at)),
            ),
            None,
        ),
        Change::OfferSettled {
            others_pending: true,
            ..
        } => (0, current.worker_timeout_at, None),
        Change::OfferAccepted { worker_id, .. } => (0, None, Some(*worker_id)),
        _ => (0, None, None),
    };
    let releases_assignee = matches!(change, Change::AssignmentReleased { .. });
    let (cancelled_by, cancel_reason, cancel_fee) = match change {
        Change::Cancelled { by, reason, fee } => (Some(by.as_str()), reason.clone(), Some(fee.0)),
        _ => (None, None, None),
    };
    let unassigned_reason = match change {
        Change::GaveUp { reason } => Some(reason.clone()),
        _ => None,
    };
    sqlx::query_as(
        r#"update service_requests set
             status = $3,
             version = version + 1,
             "assignmentAttempts" = "assignmentAttempts" + $4,
             "workerTimeoutAt" = $5,
             "assignedWorkerId" = case when $11 then null else coalesce($6, "assignedWorkerId") end,
             "assignedAt" = case when $3 = 'ASSIGNED' then now() when $11 then null else "assignedAt" end,
             "startedAt" = case when $3 = 'IN_PROGRESS' then now() else "startedAt" end,
             "completedAt" = case when $3 = 'COMPLETED' then now() else "completedAt" end,
             "cancelledAt" = case when $3 = 'CANCELLED' then now() else "cancelledAt" end,
             "cancelledBy" = coalesce($7, "cancelledBy"),
             "cancellationReason" = coalesce($8, "cancellationReason"),
             "cancellationFeeCents" = coalesce($9, "cancellationFeeCents"),
             "unassignedReason" = coalesce($10, "unassignedReason"),
             "updatedAt" = now()
           where id = $1 and version = $2
           returning *"#,
    )
    .bind(current.id)
    .bind(current.version)
    .bind(to.as_str())
    .bind(attempts_delta)
    .bind(timeout_at)
    .bind(assignee)
    .bind(cancelled_by)
    .bind(cancel_reason)
    .bind(cancel_fee)
    .bind(unassigned_reason)
    .bind(releases_assignee)
    .fetch_optional(tx)
    .await
}

/// OfferSent: the offer row.
async fn write_offer_sent(
    tx: &mut sqlx::PgConnection,
    updated: &ServiceRequest,
    offer: &NewOffer,
) -> Result<events::OfferSent, StoreError> {
    sqlx::query(
        r#"insert into offers (id, "requestId", "workerId", attempt, "expiresAt",
                               "distanceMeters", "radiusMeters", "candidatesConsidered",
                               "candidateScores")
           values ($1, $2, $3, $4, $5, $6, $7, $8, $9)"#,
    )
    .bind(offer.id)
    .bind(updated.id)
    .bind(offer.worker_id)
    .bind(offer.attempt)
    .bind(offer.expires_at)
    .bind(offer.distance_meters)
    .bind(offer.radius_meters)
    .bind(offer.candidates_considered)
    .bind(
        (!offer.candidate_scores.is_empty())
            .then_some(sqlx::types::Json(offer.candidate_scores.as_slice())),
    )
    .execute(tx)
    .await?;
    Ok(events::OfferSent {
        offer_id: offer.id,
        worker_id: offer.worker_id,
        attempt: offer.attempt,
        expires_at: offer.expires_at,
        distance_meters: offer.distance_meters,
        radius_meters: offer.radius_meters,
    })
}

/// OfferRejected / OfferExpired: that offer settled.
async fn write_offer_settled(
    tx: &mut sqlx::PgConnection,
    updated: &ServiceRequest,
    offer_id: Uuid,
    outcome: OfferOutcome,
    reason: &Option<String>,
) -> Result<events::OfferSettled, StoreError> {
    let worker_id =
        settle_pending_offer(tx, updated.id, Some(offer_id), outcome, reason.as_deref())
            .await?
            .first()
            .copied()
            .ok_or_else(|| StoreError::NotFound {
                what: "pending offer",
                id: offer_id.to_string(),
            })?;
    Ok(events::OfferSettled {
        offer_id,
        worker_id,
        outcome,
        reason: reason.clone(),
    })
}

/// WorkerAssigned: the offer accepted, by the worker it was made to.
async fn write_offer_accepted(
    tx: &mut sqlx::PgConnection,
    updated: &ServiceRequest,
    offer_id: Uuid,
    worker_id: Uuid,
) -> Result<events::WorkerAssigned, StoreError> {
    let accepted_by =
        settle_pending_offer(tx, updated.id, Some(offer_id), OfferOutcome::Accepted, None).await?;
    if accepted_by.first() != Some(&worker_id) {
        // Dropping the transaction rolls it back.
        return Err(StoreError::NotFound {
            what: "pending offer for this worker",
            id: offer_id.to_string(),
        });
    }
    // Parallel offers: the others of the batch are withdrawn in the same transaction.
    let withdrawn_from_worker_ids =
        settle_pending_offer(tx, updated.id, None, OfferOutcome::Withdrawn, Some(TAKEN)).await?;
    Ok(events::WorkerAssigned {
        offer_id,
        worker_id,
        withdrawn_from_worker_ids,
    })
}

/// The reason recorded on (and sent with) offers withdrawn because another worker of the
/// batch accepted first.
pub const TAKEN: &str = "taken";

/// AssignmentReleased: the accepted offer marked RELEASED or NO_SHOW, the strike recorded.
async fn write_assignment_released(
    tx: &mut sqlx::PgConnection,
    updated: &ServiceRequest,
    worker_id: Uuid,
    kind: StrikeKind,
    reason: &Option<String>,
) -> Result<events::AssignmentReleased, StoreError> {
    let offer_id: Option<Uuid> = sqlx::query_scalar(
        r#"update offers set outcome = $3, "rejectReason" = $4
           where "requestId" = $1 and "workerId" = $2 and outcome = 'ACCEPTED'
           returning id"#,
    )
    .bind(updated.id)
    .bind(worker_id)
    .bind(kind.offer_outcome().as_str())
    .bind(reason.as_deref())
    .fetch_optional(&mut *tx)
    .await?;
    sqlx::query(
        r#"insert into worker_strikes ("workerId", "requestId", kind, reason) values ($1, $2, $3, $4)"#,
    )
    .bind(worker_id)
    .bind(updated.id)
    .bind(kind.as_str())
    .bind(reason.as_deref())
    .execute(tx)
    .await?;
    Ok(events::AssignmentReleased {
        worker_id,
        offer_id,
        kind,
        reason: reason.clone(),
    })
}

/// Withdraws the request's pending offers, if any; a worker who held one (the event names
/// one; with parallel offers the actor tells every holder).
async fn withdraw_pending_offer(
    tx: &mut sqlx::PgConnection,
    updated: &ServiceRequest,
) -> Result<Option<Uuid>, sqlx::Error> {
    Ok(
        settle_pending_offer(tx, updated.id, None, OfferOutcome::Withdrawn, None)
            .await?
            .first()
            .copied(),
    )
}

/// ServiceRequestCancelled: a pending offer withdrawn; for a dispute of a completed job,
/// its payout cancelled, only while the payout is still held (window open).
async fn write_cancelled(
    tx: &mut sqlx::PgConnection,
    current: &ServiceRequest,
    updated: &ServiceRequest,
    by: CancelledBy,
    reason: &Option<String>,
    fee: Cents,
) -> Result<events::Cancelled, StoreError> {
    let mut payout_cancelled_id = None;
    if current.status == crate::domain::Status::Completed {
        let held: Option<Uuid> = sqlx::query_scalar(
            r#"update payouts set status = 'CANCELLED', version = version + 1
               where "requestId" = $1 and status = 'PENDING' and "releaseAt" > now()
               returning id"#,
        )
        .bind(updated.id)
        .fetch_optional(&mut *tx)
        .await?;
        payout_cancelled_id = Some(held.ok_or(StoreError::WindowClosed)?);
    }
    Ok(events::Cancelled {
        payout_cancelled_id,
        withdrawn_from_worker_id: withdraw_pending_offer(tx, updated).await?,
        cancelled_by: by,
        reason: reason.clone(),
        cancellation_fee_cents: fee.0,
    })
}

/// JobCompleted: the worker's payout, held until the cancellation window closes.
async fn write_job_completed(
    tx: &mut sqlx::PgConnection,
    updated: &ServiceRequest,
    payout_release_at: DateTime<Utc>,
) -> Result<events::JobCompleted, StoreError> {
    let worker = updated.assigned_worker_id.ok_or(StoreError::Constraint {
        constraint: "service_requests_assignee_check".into(),
    })?;
    let payout_id: Uuid = sqlx::query_scalar(
        r#"insert into payouts ("requestId", "workerId", "amountCents", currency, "releaseAt")
           values ($1, $2, $3, $4, $5)
           returning id"#,
    )
    .bind(updated.id)
    .bind(worker)
    .bind(updated.worker_net_cents.unwrap_or(0))
    .bind(&updated.currency)
    .bind(payout_release_at)
    .fetch_one(tx)
    .await?;
    Ok(events::JobCompleted {
        payout_id,
        payout_amount_cents: updated.worker_net_cents,
        payout_release_at,
    })
}

/// Settles the request's pending offers (a given one, or every one pending) and returns
/// the workers who held them, in attempt order; empty when none was pending.
async fn settle_pending_offer(
    tx: &mut sqlx::PgConnection,
    request_id: Uuid,
    offer_id: Option<Uuid>,
    outcome: OfferOutcome,
    reason: Option<&str>,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_as(
        r#"update offers set outcome = $3, "respondedAt" = now(), "rejectReason" = $4
           where "requestId" = $1 and ($2::uuid is null or id = $2) and outcome is null
           returning "workerId", attempt"#,
    )
    .bind(request_id)
    .bind(offer_id)
    .bind(outcome.as_str())
    .bind(reason)
    .fetch_all(tx)
    .await
    .map(|mut rows: Vec<(Uuid, i32)>| {
        rows.sort_by_key(|(_, attempt)| *attempt);
        rows.into_iter().map(|(worker, _)| worker).collect()
    })
}
