//! What the engine reads and writes about a worker outside a request's transitions: the
//! jobs in hand and the pending offer (the database's word, across restarts), presence.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Store, StoreError};
use crate::domain::{offer_policy::WorkerRecord, Status};

/// A job a worker holds: accepted (ASSIGNED) or started (IN_PROGRESS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobInHand {
    pub request_id: Uuid,
    pub status: Status,
    /// The booked slot, for a booked job.
    pub slot: Option<(DateTime<Utc>, DateTime<Utc>)>,
}

/// A pending offer of a worker, with what the `offer` frame shows of its request.
#[derive(Debug, Clone, sqlx::FromRow)]
#[sqlx(rename_all = "camelCase")]
pub struct PendingOfferView {
    pub offer_id: Uuid,
    pub request_id: Uuid,
    pub attempt: i32,
    pub expires_at: DateTime<Utc>,
    pub distance_meters: Option<f64>,
    pub description: Option<String>,
    pub square_meters: Option<f64>,
    pub worker_net_cents: Option<i64>,
    pub currency: String,
    pub city_id: Option<String>,
    pub latitude: Option<f64>,
    pub longitude: Option<f64>,
    pub scheduled_start: Option<DateTime<Utc>>,
    pub scheduled_end: Option<DateTime<Utc>>,
}

impl Store {
    /// The worker's jobs in hand, oldest assignment first.
    pub async fn jobs_in_hand(&self, worker_id: Uuid) -> Result<Vec<JobInHand>, StoreError> {
        type Row = (Uuid, String, Option<DateTime<Utc>>, Option<DateTime<Utc>>);
        let rows: Vec<Row> = sqlx::query_as(
            r#"select id, status, "scheduledStart", "scheduledEnd" from service_requests
               where "assignedWorkerId" = $1 and status in ('ASSIGNED', 'IN_PROGRESS')
               order by "assignedAt""#,
        )
        .bind(worker_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(request_id, status, start, end)| {
                Status::parse(&status).map(|status| JobInHand {
                    request_id,
                    status,
                    slot: start.zip(end),
                })
            })
            .collect())
    }

    /// The worker's record over the last 30 days, for ranking: rating, offers answered and
    /// accepted, strikes (cancellations after accepting, no-shows), last job, earned today.
    pub async fn worker_record(&self, worker_id: Uuid) -> Result<WorkerRecord, StoreError> {
        type Row = (f64, i64, i64, i64, Option<DateTime<Utc>>, i64);
        let row: Option<Row> = sqlx::query_as(
            r#"select w.rating::float8,
                      o.answered, o.accepted,
                      (select count(*) from worker_strikes s
                        where s."workerId" = w.id and s."createdAt" > now() - interval '30 days'),
                      j.last_job_at, j.earned_today::int8
               from worker_profiles w
               cross join lateral (
                   select count(*) filter (where outcome in
                              ('ACCEPTED', 'REJECTED', 'EXPIRED', 'RELEASED', 'NO_SHOW')) as answered,
                          count(*) filter (where outcome in ('ACCEPTED', 'RELEASED', 'NO_SHOW')) as accepted
                   from offers where "workerId" = w.id and "sentAt" > now() - interval '30 days') o
               cross join lateral (
                   select max("completedAt") as last_job_at,
                          coalesce(sum("workerNetCents") filter (
                              where "completedAt" >= date_trunc('day', now())), 0) as earned_today
                   from service_requests
                   where "assignedWorkerId" = w.id and status = 'COMPLETED') j
               where w.id = $1"#,
        )
        .bind(worker_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row
            .map(
                |(rating, answered, accepted, strikes, last_job_at, earned)| WorkerRecord {
                    rating,
                    offers_answered: answered as u32,
                    offers_accepted: accepted as u32,
                    strikes: strikes as u32,
                    last_job_at,
                    earnings_today_cents: earned,
                },
            )
            .unwrap_or_default())
    }

    /// The worker's still-valid pending offers, oldest first, with their requests.
    pub async fn pending_offers_of(
        &self,
        worker_id: Uuid,
    ) -> Result<Vec<PendingOfferView>, StoreError> {
        Ok(sqlx::query_as(
            r#"select o.id as "offerId", o."requestId", o.attempt, o."expiresAt", o."distanceMeters",
                      r.description, r."squareMeters", r."workerNetCents", r.currency, r."cityId",
                      r.latitude, r.longitude, r."scheduledStart", r."scheduledEnd"
               from offers o join service_requests r on r.id = o."requestId"
               where o."workerId" = $1 and o.outcome is null and o."expiresAt" > now()
               order by o."sentAt""#,
        )
        .bind(worker_id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The request of the worker's pending offer, expired or not (at most one: an index
    /// says so).
    pub async fn pending_offer_request(&self, worker_id: Uuid) -> Result<Option<Uuid>, StoreError> {
        Ok(sqlx::query_scalar(
            r#"select "requestId" from offers where "workerId" = $1 and outcome is null"#,
        )
        .bind(worker_id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// True when this worker's offer for this request was accepted.
    pub async fn offer_accepted_by(
        &self,
        offer_id: Uuid,
        request_id: Uuid,
        worker_id: Uuid,
    ) -> Result<bool, StoreError> {
        Ok(sqlx::query_scalar::<_, i32>(
            r#"select 1 from offers
               where id = $1 and "requestId" = $2 and "workerId" = $3 and outcome = 'ACCEPTED'"#,
        )
        .bind(offer_id)
        .bind(request_id)
        .bind(worker_id)
        .fetch_optional(&self.pool)
        .await?
        .is_some())
    }

    /// Remembers where and when the worker came online (the guide's `"lastActiveAt"`).
    pub async fn record_worker_online(
        &self,
        worker_id: Uuid,
        city_id: &str,
        lat: f64,
        lon: f64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            r#"update worker_profiles
               set "cityId" = $2, "lastActiveAt" = now(), "lastLatitude" = $3, "lastLongitude" = $4
               where id = $1"#,
        )
        .bind(worker_id)
        .bind(city_id)
        .bind(lat)
        .bind(lon)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The worker's name and rating, as a customer sees them.
    pub async fn worker_summary(
        &self,
        worker_id: Uuid,
    ) -> Result<Option<(String, f64)>, StoreError> {
        Ok(
            sqlx::query_as("select name, rating::float8 from worker_profiles where id = $1")
                .bind(worker_id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }
}
