//! The two reads behind the ops page that are not live actor state: the requests that need
//! an operator's attention, and the last minutes of dispatch, per minute.

use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{requests::pg_interval, Store, StoreError};

/// Why a request is on the attention list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AttentionKind {
    /// PENDING and untouched for longer than the threshold: no actor is moving it on.
    StalledPending,
    /// OFFERING past its offer deadline (by more than the grace): the timer did not settle it.
    OfferOverdue,
    /// Given up on: nobody was found, or the attempts ran out.
    Unassigned,
}

impl AttentionKind {
    fn parse(text: &str) -> Result<AttentionKind, String> {
        match text {
            "STALLED_PENDING" => Ok(AttentionKind::StalledPending),
            "OFFER_OVERDUE" => Ok(AttentionKind::OfferOverdue),
            "UNASSIGNED" => Ok(AttentionKind::Unassigned),
            other => Err(format!("unknown attention kind {other:?}")),
        }
    }
}

impl TryFrom<String> for AttentionKind {
    type Error = String;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        AttentionKind::parse(&text)
    }
}

/// One request on the attention list (serialized as `/ops/attention` shows it).
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
#[sqlx(rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct AttentionRow {
    #[serde(rename = "requestId")]
    pub id: Uuid,
    #[sqlx(try_from = "String")]
    pub kind: AttentionKind,
    #[sqlx(try_from = "String")]
    pub status: crate::domain::Status,
    pub city_id: Option<String>,
    pub assignment_attempts: i32,
    pub worker_timeout_at: Option<DateTime<Utc>>,
    pub unassigned_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// What makes a request "stuck", and how far back the unassigned ones are listed.
#[derive(Debug, Clone, Copy)]
pub struct AttentionWindow {
    /// A PENDING row untouched this long.
    pub pending_for: Duration,
    /// An OFFERING row this far past its `"workerTimeoutAt"`.
    pub overdue_by: Duration,
    /// UNASSIGNED rows that gave up within this long.
    pub unassigned_within: Duration,
    /// At most this many of each list.
    pub limit: i64,
}

/// One minute of dispatch, from the rows (not from the in-memory counters).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
#[sqlx(rename_all = "camelCase")]
pub struct MinuteRow {
    /// The minute's start.
    pub minute: DateTime<Utc>,
    /// Requests created in the minute.
    pub created: i64,
    /// Requests assigned in the minute.
    pub assigned: i64,
    /// Seconds from creation to assignment of the requests assigned in the minute.
    pub time_to_assignment_p50: Option<f64>,
    pub time_to_assignment_p99: Option<f64>,
    /// Offers a worker decided (accepted, rejected) or let expire in the minute; offers
    /// withdrawn because the request was cancelled are nobody's decision.
    pub offers_decided: i64,
    pub offers_accepted: i64,
}

impl Store {
    /// Requests an operator should look at: open ones whose row shows no progress (the
    /// backstop's definition, `stalled_requests`), oldest first, then the latest UNASSIGNED
    /// ones, newest first.
    pub async fn attention_requests(
        &self,
        window: AttentionWindow,
    ) -> Result<Vec<AttentionRow>, StoreError> {
        Ok(sqlx::query_as(
            r#"select * from (
               (select id, case status when 'PENDING' then 'STALLED_PENDING' else 'OFFER_OVERDUE' end as kind,
                       status, "cityId", "assignmentAttempts", "workerTimeoutAt", "unassignedReason",
                       "createdAt", "updatedAt", 0 as part
                from service_requests
                where "cityId" is not null and "closedAt" is null
                  and ((status = 'PENDING' and "updatedAt" < now() - $1::interval)
                    or (status = 'OFFERING' and "workerTimeoutAt" < now() - $2::interval))
                order by "updatedAt"
                limit $4)
               union all
               (select id, 'UNASSIGNED', status, "cityId", "assignmentAttempts", "workerTimeoutAt",
                       "unassignedReason", "createdAt", "updatedAt", 1
                from service_requests
                where status = 'UNASSIGNED' and "updatedAt" > now() - $3::interval
                  -- the same rows (an UNASSIGNED request is closed when it last changed),
                  -- through service_requests_unassigned_closed_at_idx
                  and "unassignedReason" is not null and "closedAt" > now() - $3::interval
                order by "updatedAt" desc
                limit $4)
               ) listed
               order by part, case when part = 0 then "updatedAt" end, "updatedAt" desc"#,
        )
        .bind(pg_interval(window.pending_for))
        .bind(pg_interval(window.overdue_by))
        .bind(pg_interval(window.unassigned_within))
        .bind(window.limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The last `minutes` minutes of dispatch (the current, partial one last), one row per
    /// minute, every minute present: creations, assignments with the p50/p99 of their time
    /// to assignment, and offers decided and accepted.
    pub async fn dispatch_history(&self, minutes: u32) -> Result<Vec<MinuteRow>, StoreError> {
        Ok(sqlx::query_as(
            r#"with buckets as (
                 select generate_series(date_trunc('minute', now()) - ($1::int - 1) * interval '1 minute',
                                        date_trunc('minute', now()), interval '1 minute') as minute
               ),
               since as (select min(minute) as t from buckets),
               created as (
                 select date_trunc('minute', "createdAt") as minute, count(*) as n
                 from service_requests, since where "createdAt" >= since.t group by 1
               ),
               assigned as (
                 select date_trunc('minute', "assignedAt") as minute, count(*) as n,
                        percentile_cont(0.5) within group (order by extract(epoch from "assignedAt" - "createdAt")::float8) as p50,
                        percentile_cont(0.99) within group (order by extract(epoch from "assignedAt" - "createdAt")::float8) as p99
                 from service_requests, since where "assignedAt" >= since.t group by 1
               ),
               decided as (
                 select date_trunc('minute', "respondedAt") as minute,
                        count(*) filter (where outcome in ('ACCEPTED', 'REJECTED', 'EXPIRED', 'RELEASED', 'NO_SHOW')) as decided,
                        count(*) filter (where outcome in ('ACCEPTED', 'RELEASED', 'NO_SHOW')) as accepted
                 from offers, since where "respondedAt" >= since.t group by 1
               )
               select b.minute, coalesce(c.n, 0) as created, coalesce(a.n, 0) as assigned,
                      a.p50 as "timeToAssignmentP50", a.p99 as "timeToAssignmentP99",
                      coalesce(d.decided, 0) as "offersDecided", coalesce(d.accepted, 0) as "offersAccepted"
               from buckets b
               left join created c using (minute)
               left join assigned a using (minute)
               left join decided d using (minute)
               order by b.minute"#,
        )
        .bind(minutes.max(1) as i32)
        .fetch_all(&self.pool)
        .await?)
    }
}
