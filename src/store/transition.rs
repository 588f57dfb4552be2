//! The one place a service request changes state: a version-guarded update, the rows the
//! change implies (offer, payout), and exactly one outbox row, in one transaction.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::{
    events::{self, RequestEvent},
    insert_outbox_event, ServiceRequest, Store, StoreError,
};
use crate::domain::{Cents, Command};

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
    /// Taken back: the request was cancelled while the offer was pending.
    Withdrawn,
}

impl OfferOutcome {
    const ALL: [OfferOutcome; 4] = [
        OfferOutcome::Accepted,
        OfferOutcome::Rejected,
        OfferOutcome::Expired,
        OfferOutcome::Withdrawn,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OfferOutcome::Accepted => "ACCEPTED",
            OfferOutcome::Rejected => "REJECTED",
            OfferOutcome::Expired => "EXPIRED",
            OfferOutcome::Withdrawn => "WITHDRAWN",
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

/// A state change of a service request, with what it needs to record.
#[derive(Debug, Clone)]
pub enum Change {
    OfferSent(NewOffer),
    /// The pending offer was rejected or timed out: back to PENDING to find the next worker.
    OfferSettled {
        offer_id: Uuid,
        outcome: OfferOutcome,
        reason: Option<String>,
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
            Change::OfferSettled { .. } => Command::SettleOffer,
            Change::OfferAccepted { .. } => Command::AcceptOffer,
            Change::GaveUp { .. } => Command::GiveUp,
            Change::Cancelled { .. } => Command::Cancel,
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

    /// The request's pending offer, if one is out.
    pub async fn pending_offer(&self, request_id: Uuid) -> Result<Option<OfferRow>, StoreError> {
        Ok(
            sqlx::query_as(r#"select * from offers where "requestId" = $1 and outcome is null"#)
                .bind(request_id)
                .fetch_optional(&self.pool)
                .await?,
        )
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
        Change::OfferSent(offer) => (1, Some(offer.expires_at), None),
        Change::OfferAccepted { worker_id, .. } => (0, None, Some(*worker_id)),
        _ => (0, None, None),
    };
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
             "assignedWorkerId" = coalesce($6, "assignedWorkerId"),
             "assignedAt" = case when $3 = 'ASSIGNED' then now() else "assignedAt" end,
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
                               "distanceMeters", "radiusMeters", "candidatesConsidered")
           values ($1, $2, $3, $4, $5, $6, $7, $8)"#,
    )
    .bind(offer.id)
    .bind(updated.id)
    .bind(offer.worker_id)
    .bind(offer.attempt)
    .bind(offer.expires_at)
    .bind(offer.distance_meters)
    .bind(offer.radius_meters)
    .bind(offer.candidates_considered)
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
    if accepted_by != Some(worker_id) {
        // Dropping the transaction rolls it back.
        return Err(StoreError::NotFound {
            what: "pending offer for this worker",
            id: offer_id.to_string(),
        });
    }
    Ok(events::WorkerAssigned {
        offer_id,
        worker_id,
    })
}

/// Withdraws the request's pending offer, if any; the worker who held it.
async fn withdraw_pending_offer(
    tx: &mut sqlx::PgConnection,
    updated: &ServiceRequest,
) -> Result<Option<Uuid>, sqlx::Error> {
    settle_pending_offer(tx, updated.id, None, OfferOutcome::Withdrawn, None).await
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

/// Settles the request's pending offer (a given one, or whichever is pending) and returns
/// the worker who held it; `None` when no such offer was pending.
async fn settle_pending_offer(
    tx: &mut sqlx::PgConnection,
    request_id: Uuid,
    offer_id: Option<Uuid>,
    outcome: OfferOutcome,
    reason: Option<&str>,
) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        r#"update offers set outcome = $3, "respondedAt" = now(), "rejectReason" = $4
           where "requestId" = $1 and ($2::uuid is null or id = $2) and outcome is null
           returning "workerId""#,
    )
    .bind(request_id)
    .bind(offer_id)
    .bind(outcome.as_str())
    .bind(reason)
    .fetch_optional(tx)
    .await
}
