//! The one place a service request changes state: a version-guarded update, the rows the
//! change implies (offer, payout), and exactly one outbox row, in one transaction.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::{
    events::{self, RequestEvent},
    ServiceRequest, Store, StoreError,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
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
    pub async fn transition(
        &self,
        current: &ServiceRequest,
        change: Change,
    ) -> Result<ServiceRequest, StoreError> {
        self.transition_fenced(current, change, None).await
    }

    /// [`Store::transition`] by the owner of the request's city in a cluster: it commits
    /// only while `fence` is still the city's epoch in `city_leases` (checked in the same
    /// statement), so a node that lost the city writes nothing (`StoreError::Fenced`).
    /// `None` (one node alone) checks nothing.
    #[tracing::instrument(name = "transition", skip_all, fields(request_id = %current.id, version = current.version, change = change.event_type()))]
    pub async fn transition_fenced(
        &self,
        current: &ServiceRequest,
        change: Change,
        fence: Option<i64>,
    ) -> Result<ServiceRequest, StoreError> {
        let to = current.status.apply(change.command())?;
        let started = std::time::Instant::now();
        let result = self.apply_transition(current, to, change, fence).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(StoreError::ConcurrencyConflict { .. }) => "conflict",
            Err(StoreError::Fenced { .. }) => {
                metrics::counter!("arreglame_cluster_stale_writes_refused_total").increment(1);
                "fenced"
            }
            Err(_) => "error",
        };
        metrics::histogram!("arreglame_db_query_duration_seconds", "query" => "transition", "outcome" => outcome)
            .record(started.elapsed().as_secs_f64());
        if outcome == "conflict" {
            metrics::counter!("arreglame_concurrency_conflicts_total").increment(1);
        }
        result
    }

    /// One transition, one statement: a data-modifying CTE that makes the version-guarded
    /// update and, only when it matched, the rows the change implies (offer, payout,
    /// strike) and exactly one outbox row, all in one round trip and one implicit
    /// transaction. The payload is built here from the state the update sets (the same
    /// values are bound to it); what only the database knows (the workers whose offers a
    /// change withdraws, a cancelled payout) is merged into it by the statement.
    async fn apply_transition(
        &self,
        current: &ServiceRequest,
        to: crate::domain::Status,
        change: Change,
        fence: Option<i64>,
    ) -> Result<ServiceRequest, StoreError> {
        let next = next_state(current, to, &change);
        let payload = payload_of(current, to, &next, &change);
        let (cancelled_by, cancel_reason, cancel_fee) = match &change {
            Change::Cancelled { by, reason, fee } => {
                (Some(by.as_str()), reason.clone(), Some(fee.0))
            }
            _ => (None, None, None),
        };
        let unassigned_reason = match &change {
            Change::GaveUp { reason } => Some(reason.clone()),
            _ => None,
        };
        let args = TransitionArgs {
            sql: statement_for(&change),
            id: current.id,
            version: current.version,
            to: to.as_str(),
            assignment_attempts: next.assignment_attempts,
            worker_timeout_at: next.worker_timeout_at,
            assigned_worker_id: next.assigned_worker_id,
            cancelled_by,
            cancel_reason,
            cancel_fee,
            unassigned_reason,
            payload,
            was_completed: current.status == crate::domain::Status::Completed,
            payout_id: next.payout_id,
            fence,
            change,
        };
        let unmatched = args.change.clone();
        let started = std::time::Instant::now();
        let updated = self.group_commit.write(&self.pool, args).await?;
        // Acquiring a pooled connection (or waiting for a group commit) and the statement's
        // round trip: under load, mostly the wait.
        metrics::histogram!("arreglame_db_pool_acquire_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        let Some(updated) = updated else {
            return Err(self.why_nothing_changed(current, &unmatched, fence).await);
        };
        self.outbox_written();
        Ok(updated)
    }

    /// Zero rows updated: the request is gone, moved on (a lost race), or the change's own
    /// guard refused (its offer is no longer pending; a dispute after the window closed).
    async fn why_nothing_changed(
        &self,
        current: &ServiceRequest,
        change: &Change,
        fence: Option<i64>,
    ) -> StoreError {
        match sqlx::query_as::<_, (i32, Option<String>, Option<i64>)>(
            r#"select s.version, s."cityId", l.epoch
               from service_requests s left join city_leases l on l."cityId" = s."cityId"
               where s.id = $1"#,
        )
        .bind(current.id)
        .fetch_optional(&self.pool)
        .await
        {
            // A node that lost the city hears so even when the new owner already moved
            // the row: it must stop, not reload and carry on.
            Ok(Some((_, city_id, epoch))) if fence.is_some() && epoch != fence => {
                StoreError::Fenced {
                    city_id: city_id.unwrap_or_default(),
                    epoch: fence.unwrap_or_default(),
                }
            }
            Ok(Some((version, _, _))) if version == current.version => match change {
                Change::OfferSettled { offer_id, .. } => StoreError::NotFound {
                    what: "pending offer",
                    id: offer_id.to_string(),
                },
                Change::OfferAccepted { offer_id, .. } => StoreError::NotFound {
                    what: "pending offer for this worker",
                    id: offer_id.to_string(),
                },
                Change::Cancelled { .. } => StoreError::WindowClosed,
                _ => StoreError::ConcurrencyConflict {
                    id: current.id,
                    expected_version: current.version,
                },
            },
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

/// Everything one transition's statement binds, owned, so it can wait for a group commit
/// (and be bound again if its group fails and it is retried alone).
pub(super) struct TransitionArgs {
    sql: &'static str,
    pub(super) id: Uuid,
    pub(super) version: i32,
    pub(super) to: &'static str,
    pub(super) assignment_attempts: i32,
    pub(super) worker_timeout_at: Option<DateTime<Utc>>,
    pub(super) assigned_worker_id: Option<Uuid>,
    cancelled_by: Option<&'static str>,
    cancel_reason: Option<String>,
    cancel_fee: Option<i64>,
    unassigned_reason: Option<String>,
    pub(super) payload: serde_json::Value,
    /// A cancellation of a completed job (a dispute).
    was_completed: bool,
    pub(super) payout_id: Uuid,
    pub(super) fence: Option<i64>,
    pub(super) change: Change,
}

impl TransitionArgs {
    /// The statement with its parameters bound: the common ones, the change's own, then
    /// the fence (see `build_statement`).
    pub(super) fn query(
        &self,
    ) -> sqlx::query::QueryAs<'_, sqlx::Postgres, ServiceRequest, sqlx::postgres::PgArguments> {
        let query = sqlx::query_as::<_, ServiceRequest>(self.sql)
            .bind(self.id)
            .bind(self.version)
            .bind(self.to)
            .bind(self.assignment_attempts)
            .bind(self.worker_timeout_at)
            .bind(self.assigned_worker_id)
            .bind(self.cancelled_by)
            .bind(self.cancel_reason.as_deref())
            .bind(self.cancel_fee)
            .bind(self.unassigned_reason.as_deref())
            .bind(self.change.event_type())
            .bind(&self.payload);
        let query = match &self.change {
            Change::OfferSent(offer) => query
                .bind(offer.id)
                .bind(offer.worker_id)
                .bind(offer.attempt)
                .bind(offer.expires_at)
                .bind(offer.distance_meters)
                .bind(offer.radius_meters)
                .bind(offer.candidates_considered)
                .bind(
                    (!offer.candidate_scores.is_empty())
                        .then_some(sqlx::types::Json(&offer.candidate_scores)),
                ),
            Change::OfferSettled {
                offer_id,
                outcome,
                reason,
                ..
            } => query
                .bind(*offer_id)
                .bind(outcome.as_str())
                .bind(reason.as_deref()),
            Change::OfferAccepted {
                offer_id,
                worker_id,
            } => query.bind(*offer_id).bind(*worker_id).bind(TAKEN),
            Change::Cancelled { .. } => query.bind(self.was_completed),
            Change::AssignmentReleased {
                worker_id,
                kind,
                reason,
            } => query
                .bind(*worker_id)
                .bind(kind.offer_outcome().as_str())
                .bind(reason.as_deref())
                .bind(kind.as_str()),
            Change::JobCompleted { payout_release_at } => {
                query.bind(self.payout_id).bind(*payout_release_at)
            }
            Change::GaveUp { .. } | Change::DispatchOpened | Change::JobStarted => query,
        };
        query.bind(self.fence)
    }
}

/// What a transition sets on the request's row, decided before the statement so the
/// update and the event's payload carry the same values.
struct NextState {
    assignment_attempts: i32,
    worker_timeout_at: Option<DateTime<Utc>>,
    assigned_worker_id: Option<Uuid>,
    /// The payout a completion creates (its id is chosen here, for the payload).
    payout_id: Uuid,
}

fn next_state(current: &ServiceRequest, to: crate::domain::Status, change: &Change) -> NextState {
    use chrono::SubsecRound;
    let worker_timeout_at = match change {
        // A parallel batch shares one deadline; a later offer never shortens it.
        Change::OfferSent(offer) => Some(
            current
                .worker_timeout_at
                .map_or(offer.expires_at, |t| t.max(offer.expires_at)),
        ),
        Change::OfferSettled {
            others_pending: true,
            ..
        } => current.worker_timeout_at,
        _ => None,
    }
    // What the column keeps (microseconds), so the payload says exactly what the row does.
    .map(|t| t.trunc_subsecs(6));
    let assigned_worker_id = match change {
        Change::OfferAccepted { worker_id, .. } => Some(*worker_id),
        Change::AssignmentReleased { .. } => None,
        _ => current.assigned_worker_id,
    };
    debug_assert!(to != crate::domain::Status::Assigned || assigned_worker_id.is_some());
    NextState {
        assignment_attempts: current.assignment_attempts
            + i32::from(matches!(change, Change::OfferSent(_))),
        worker_timeout_at,
        assigned_worker_id,
        payout_id: Uuid::now_v7(),
    }
}

/// The event's payload as far as it is known before the statement: the state after the
/// change and what the change records (the statement adds what only the database knows).
fn payload_of(
    current: &ServiceRequest,
    to: crate::domain::Status,
    next: &NextState,
    change: &Change,
) -> serde_json::Value {
    let mut after = current.clone();
    after.status = to;
    after.version = current.version + 1;
    after.assignment_attempts = next.assignment_attempts;
    after.worker_timeout_at = next.worker_timeout_at;
    after.assigned_worker_id = next.assigned_worker_id;
    match change {
        Change::OfferSent(offer) => RequestEvent::payload(
            &after,
            &events::OfferSent {
                offer_id: offer.id,
                worker_id: offer.worker_id,
                attempt: offer.attempt,
                expires_at: offer.expires_at,
                distance_meters: offer.distance_meters,
                radius_meters: offer.radius_meters,
            },
        ),
        Change::OfferSettled {
            offer_id,
            outcome,
            reason,
            ..
        } => RequestEvent::payload(
            &after,
            &events::OfferSettled {
                offer_id: *offer_id,
                worker_id: None,
                outcome: *outcome,
                reason: reason.clone(),
            },
        ),
        Change::OfferAccepted {
            offer_id,
            worker_id,
        } => RequestEvent::payload(
            &after,
            &events::WorkerAssigned {
                offer_id: *offer_id,
                worker_id: *worker_id,
                withdrawn_from_worker_ids: Vec::new(),
            },
        ),
        Change::GaveUp { reason } => RequestEvent::payload(
            &after,
            &events::Unassigned {
                withdrawn_from_worker_id: None,
                reason: reason.clone(),
            },
        ),
        Change::Cancelled { by, reason, fee } => RequestEvent::payload(
            &after,
            &events::Cancelled {
                payout_cancelled_id: None,
                withdrawn_from_worker_id: None,
                cancelled_by: *by,
                reason: reason.clone(),
                cancellation_fee_cents: fee.0,
            },
        ),
        Change::DispatchOpened => RequestEvent::payload(
            &after,
            &events::DispatchOpened {
                scheduled_start: current.scheduled_start,
                scheduled_end: current.scheduled_end,
            },
        ),
        Change::AssignmentReleased {
            worker_id,
            kind,
            reason,
        } => RequestEvent::payload(
            &after,
            &events::AssignmentReleased {
                worker_id: *worker_id,
                offer_id: None,
                kind: *kind,
                reason: reason.clone(),
            },
        ),
        Change::JobStarted => RequestEvent::payload(&after, &events::JobStarted {}),
        Change::JobCompleted { payout_release_at } => RequestEvent::payload(
            &after,
            &events::JobCompleted {
                payout_id: next.payout_id,
                payout_amount_cents: current.worker_net_cents,
                payout_release_at: *payout_release_at,
            },
        ),
    }
}

/// The reason recorded on (and sent with) offers withdrawn because another worker of the
/// batch accepted first.
pub const TAKEN: &str = "taken";

/// The version-guarded update every transition makes ($1 id, $2 version the caller saw,
/// $3 status, $4 attempts, $5 offer deadline, $6 assignee, $7–$9 cancellation, $10 why
/// unassigned). `$6` null clears the assignment time too (a released assignment). A
/// terminal status sets `"closedAt"` once: the open-request indexes key on it, not on
/// status, so offers, rejections, expiries and starts are HOT updates (migration 7).
const UPDATE: &str = r#"update service_requests set
      status = $3,
      version = version + 1,
      "assignmentAttempts" = $4,
      "workerTimeoutAt" = $5,
      "assignedWorkerId" = $6,
      "assignedAt" = case when $3 = 'ASSIGNED' then now() when $6::uuid is null then null else "assignedAt" end,
      "startedAt" = case when $3 = 'IN_PROGRESS' then now() else "startedAt" end,
      "completedAt" = case when $3 = 'COMPLETED' then now() else "completedAt" end,
      "cancelledAt" = case when $3 = 'CANCELLED' then now() else "cancelledAt" end,
      "cancelledBy" = coalesce($7, "cancelledBy"),
      "cancellationReason" = coalesce($8, "cancellationReason"),
      "cancellationFeeCents" = coalesce($9, "cancellationFeeCents"),
      "unassignedReason" = coalesce($10, "unassignedReason"),
      "closedAt" = case when $3 in ('COMPLETED', 'CANCELLED', 'UNASSIGNED') then coalesce("closedAt", now())
                        else "closedAt" end,
      "updatedAt" = now()
    where id = $1 and version = $2"#;

/// Withdraws every pending offer of the request (when the update matched).
const WITHDRAW_PENDING: &str = r#"w as (update offers set outcome = 'WITHDRAWN', "respondedAt" = now()
      where "requestId" = $1 and outcome is null and exists (select 1 from u)
      returning "workerId", attempt),"#;

/// The first withdrawn worker, as `withdrawnFromWorkerId`.
const FIRST_WITHDRAWN: &str = r#"coalesce((select jsonb_build_object('withdrawnFromWorkerId', "workerId")
      from w order by attempt limit 1), '{}'::jsonb)"#;

/// The statement of one kind of change: `guard` narrows the update, `ctes` are the rows it
/// implies, `extra` is merged into the payload ($12), the outbox row's type is $11. The
/// fence (a cluster owner's epoch of the request's city, or null) is parameter `$fence`,
/// the last one: the change's own parameters come between.
fn build_statement(guard: &str, ctes: &str, extra: &str, fence: usize) -> String {
    format!(
        r#"with u as ({UPDATE} {guard}
      and (${fence}::bigint is null or exists (select 1 from city_leases l
           where l."cityId" = service_requests."cityId" and l.epoch = ${fence}))
      returning *),
    {ctes}
    e as (insert into outbox_events ("aggregateType", "aggregateId", "aggregateVersion", type, payload)
          select 'service_request', u.id::text, u.version, $11, $12::jsonb || {extra} from u)
    select u.* from u"#
    )
}

fn statement_for(change: &Change) -> &'static str {
    use std::sync::LazyLock;
    static OFFER_SENT: LazyLock<String> = LazyLock::new(|| {
        build_statement(
            "",
            r#"o as (insert into offers (id, "requestId", "workerId", attempt, "expiresAt",
                      "distanceMeters", "radiusMeters", "candidatesConsidered", "candidateScores")
          select $13, u.id, $14, $15, $16, $17, $18, $19, $20 from u),"#,
            "'{}'::jsonb",
            21,
        )
    });
    static OFFER_SETTLED: LazyLock<String> = LazyLock::new(|| {
        build_statement(
            r#"and exists (select 1 from offers where id = $13 and "requestId" = $1 and outcome is null)"#,
            r#"o as (update offers set outcome = $14, "respondedAt" = now(), "rejectReason" = $15
          where id = $13 and outcome is null and exists (select 1 from u)
          returning "workerId"),"#,
            r#"jsonb_build_object('workerId', (select "workerId" from o))"#,
            16,
        )
    });
    static OFFER_ACCEPTED: LazyLock<String> = LazyLock::new(|| {
        build_statement(
            r#"and exists (select 1 from offers
                   where id = $13 and "requestId" = $1 and "workerId" = $14 and outcome is null)"#,
            // Parallel offers: the rest of the batch is withdrawn in the same statement.
            r#"a as (update offers set outcome = 'ACCEPTED', "respondedAt" = now()
          where id = $13 and exists (select 1 from u) returning id),
    w as (update offers set outcome = 'WITHDRAWN', "respondedAt" = now(), "rejectReason" = $15
          where "requestId" = $1 and outcome is null and id <> $13 and exists (select 1 from u)
          returning "workerId", attempt),"#,
            r#"coalesce((select jsonb_build_object('withdrawnFromWorkerIds', jsonb_agg("workerId" order by attempt))
          from w having count(*) > 0), '{}'::jsonb)"#,
            16,
        )
    });
    static GAVE_UP: LazyLock<String> =
        LazyLock::new(|| build_statement("", WITHDRAW_PENDING, FIRST_WITHDRAWN, 13));
    static CANCELLED: LazyLock<String> = LazyLock::new(|| {
        // $13: a dispute of a completed job, allowed only while its payout is still held.
        build_statement(
            r#"and (not $13 or exists (select 1 from payouts
                   where "requestId" = $1 and status = 'PENDING' and "releaseAt" > now()))"#,
            &format!(
                r#"{WITHDRAW_PENDING}
    p as (update payouts set status = 'CANCELLED', version = version + 1
          where $13 and "requestId" = $1 and status = 'PENDING' and "releaseAt" > now()
            and exists (select 1 from u)
          returning id),"#
            ),
            &format!(
                r#"{FIRST_WITHDRAWN}
          || coalesce((select jsonb_build_object('payoutCancelledId', id) from p), '{{}}'::jsonb)"#
            ),
            14,
        )
    });
    static PLAIN: LazyLock<String> = LazyLock::new(|| build_statement("", "", "'{}'::jsonb", 13));
    static ASSIGNMENT_RELEASED: LazyLock<String> = LazyLock::new(|| {
        build_statement(
            "",
            r#"o as (update offers set outcome = $14, "rejectReason" = $15
          where "requestId" = $1 and "workerId" = $13 and outcome = 'ACCEPTED'
            and exists (select 1 from u)
          returning id),
    s as (insert into worker_strikes ("workerId", "requestId", kind, reason)
          select $13, u.id, $16, $15 from u),"#,
            r#"jsonb_build_object('offerId', (select id from o))"#,
            17,
        )
    });
    static JOB_COMPLETED: LazyLock<String> = LazyLock::new(|| {
        // The worker's payout, held until the cancellation window closes.
        build_statement(
            "",
            r#"p as (insert into payouts (id, "requestId", "workerId", "amountCents", currency, "releaseAt")
          select $13, u.id, u."assignedWorkerId", coalesce(u."workerNetCents", 0), u.currency, $14 from u),"#,
            "'{}'::jsonb",
            15,
        )
    });
    match change {
        Change::OfferSent(_) => &OFFER_SENT,
        Change::OfferSettled { .. } => &OFFER_SETTLED,
        Change::OfferAccepted { .. } => &OFFER_ACCEPTED,
        Change::GaveUp { .. } => &GAVE_UP,
        Change::Cancelled { .. } => &CANCELLED,
        Change::AssignmentReleased { .. } => &ASSIGNMENT_RELEASED,
        Change::JobCompleted { .. } => &JOB_COMPLETED,
        Change::DispatchOpened | Change::JobStarted => &PLAIN,
    }
}
