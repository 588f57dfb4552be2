//! What the engine reads and writes about a worker outside a request's transitions: the
//! jobs in hand and the pending offer (the database's word, across restarts), presence.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Store, StoreError};
use crate::domain::Status;

/// A job a worker holds: accepted (ASSIGNED) or started (IN_PROGRESS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobInHand {
    pub request_id: Uuid,
    pub status: Status,
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
}

impl Store {
    /// The worker's jobs in hand, oldest assignment first.
    pub async fn jobs_in_hand(&self, worker_id: Uuid) -> Result<Vec<JobInHand>, StoreError> {
        let rows: Vec<(Uuid, String)> = sqlx::query_as(
            r#"select id, status from service_requests
               where "assignedWorkerId" = $1 and status in ('ASSIGNED', 'IN_PROGRESS')
               order by "assignedAt""#,
        )
        .bind(worker_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(request_id, status)| {
                Status::parse(&status).map(|status| JobInHand { request_id, status })
            })
            .collect())
    }

    /// The worker's still-valid pending offers, oldest first, with their requests.
    pub async fn pending_offers_of(
        &self,
        worker_id: Uuid,
    ) -> Result<Vec<PendingOfferView>, StoreError> {
        Ok(sqlx::query_as(
            r#"select o.id as "offerId", o."requestId", o.attempt, o."expiresAt", o."distanceMeters",
                      r.description, r."squareMeters", r."workerNetCents", r.currency, r."cityId",
                      r.latitude, r.longitude
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
