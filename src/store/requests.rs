//! Service requests: creation (with its first outbox row), reads, and the recovery query.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Store, StoreError};
use crate::domain::{Cents, Status};

/// One row of `service_requests`.
#[derive(Debug, Clone, sqlx::FromRow, Serialize, Deserialize)]
#[sqlx(rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct ServiceRequest {
    pub id: Uuid,
    pub customer_id: Option<Uuid>,
    pub city_id: Option<String>,
    #[sqlx(try_from = "String")]
    pub status: Status,
    pub version: i32,
    pub assignment_attempts: i32,
    pub worker_timeout_at: Option<DateTime<Utc>>,
    pub assigned_worker_id: Option<Uuid>,
    pub latitude: Option<f64>,
    pub longitude: Option<f64>,
    pub address: Option<String>,
    pub description: Option<String>,
    pub square_meters: Option<f64>,
    pub image_ref: Option<String>,
    pub service_category: Option<String>,
    pub difficulty_level: Option<String>,
    pub extras: Vec<String>,
    pub currency: String,
    pub price_total_cents: Option<i64>,
    pub worker_net_cents: Option<i64>,
    pub platform_fee_cents: Option<i64>,
    pub pricing_engine: Option<String>,
    pub idempotency_key: Option<String>,
    pub cancelled_at: Option<DateTime<Utc>>,
    pub cancelled_by: Option<String>,
    pub cancellation_reason: Option<String>,
    pub cancellation_fee_cents: Option<i64>,
    pub unassigned_reason: Option<String>,
    pub assigned_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The booked slot; both `None` for a job wanted now.
    pub scheduled_start: Option<DateTime<Utc>>,
    pub scheduled_end: Option<DateTime<Utc>>,
}

impl TryFrom<String> for Status {
    type Error = String;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        Status::parse(&text).ok_or_else(|| format!("unknown service request status {text:?}"))
    }
}

impl ServiceRequest {
    /// The job's location as (lon, lat), when it has one.
    pub fn position(&self) -> Option<(f64, f64)> {
        Some((self.longitude?, self.latitude?))
    }

    pub fn worker_net(&self) -> Cents {
        Cents(self.worker_net_cents.unwrap_or(0))
    }

    /// The booked slot, when the request has one.
    pub fn slot(&self) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
        Some((self.scheduled_start?, self.scheduled_end?))
    }
}

/// What a customer's new request carries once priced.
#[derive(Debug, Clone)]
pub struct NewServiceRequest {
    pub customer_id: Uuid,
    pub city_id: String,
    pub latitude: f64,
    pub longitude: f64,
    pub address: String,
    pub description: String,
    pub square_meters: f64,
    pub image_ref: Option<String>,
    pub service_category: String,
    pub difficulty_level: String,
    pub extras: Vec<String>,
    pub currency: String,
    pub price_total: Cents,
    pub worker_net: Cents,
    pub platform_fee: Cents,
    pub pricing_engine: String,
    pub idempotency_key: Option<String>,
    /// The booked slot (start, end), if any.
    pub slot: Option<(DateTime<Utc>, DateTime<Utc>)>,
    /// SCHEDULED for a booking whose dispatch time is still ahead, otherwise PENDING.
    pub status: Status,
}

/// One page of a customer's requests, newest first.
#[derive(Debug, Clone)]
pub struct RequestPage {
    pub items: Vec<ServiceRequest>,
    pub has_more: bool,
}

impl Store {
    /// Inserts a new PENDING request and its `ServiceRequestCreated` outbox row in one
    /// transaction. A repeated idempotency key from the same customer returns the existing
    /// request (`created = false`) and writes nothing.
    pub async fn create_request(
        &self,
        new: &NewServiceRequest,
    ) -> Result<(ServiceRequest, bool), StoreError> {
        // One statement: the insert and, only if it inserted, its outbox row. The id is
        // chosen here so the event's payload is complete before the round trip. Creates do
        // not take the group commit: queued behind the transitions' groups they waited for
        // the writers, and create -> offer p99 at 500/s about doubled (docs/benchmarks.md,
        // "Tried and reverted: creates through the group commit").
        let id = Uuid::now_v7();
        let state = super::events::RequestState {
            request_id: id,
            customer_id: Some(new.customer_id),
            city_id: Some(new.city_id.clone()),
            status: new.status,
            version: 1,
            assignment_attempts: 0,
            worker_timeout_at: None,
            assigned_worker_id: None,
        };
        let payload = serde_json::to_value(super::events::RequestEvent {
            state,
            detail: &super::events::Created {
                price_total_cents: Some(new.price_total.0),
                pricing_engine: Some(new.pricing_engine.clone()),
            },
        })
        .expect("event payloads always serialize");
        let inserted: Option<ServiceRequest> = sqlx::query_as(
            r#"with r as (
                 insert into service_requests
                   (id, "customerId", "cityId", latitude, longitude, address, description, "squareMeters",
                    "imageRef", "serviceCategory", "difficultyLevel", extras, currency,
                    "priceTotalCents", "workerNetCents", "platformFeeCents", "pricingEngine", "idempotencyKey",
                    "scheduledStart", "scheduledEnd", status)
                 values ($21, $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17,
                         $18, $19, $20)
                 on conflict ("customerId", "idempotencyKey") where "idempotencyKey" is not null do nothing
                 returning *),
               e as (insert into outbox_events ("aggregateType", "aggregateId", "aggregateVersion", type, payload)
                     select 'service_request', r.id::text, r.version, 'ServiceRequestCreated', $22 from r)
               select * from r"#,
        )
        .bind(new.customer_id)
        .bind(&new.city_id)
        .bind(new.latitude)
        .bind(new.longitude)
        .bind(&new.address)
        .bind(&new.description)
        .bind(new.square_meters)
        .bind(&new.image_ref)
        .bind(&new.service_category)
        .bind(&new.difficulty_level)
        .bind(&new.extras)
        .bind(&new.currency)
        .bind(new.price_total.0)
        .bind(new.worker_net.0)
        .bind(new.platform_fee.0)
        .bind(&new.pricing_engine)
        .bind(&new.idempotency_key)
        .bind(new.slot.map(|(start, _)| start))
        .bind(new.slot.map(|(_, end)| end))
        .bind(new.status.as_str())
        .bind(id)
        .bind(&payload)
        .fetch_optional(&self.pool)
        .await?;
        let Some(request) = inserted else {
            let existing: ServiceRequest = sqlx::query_as(
                r#"select * from service_requests where "customerId" = $1 and "idempotencyKey" = $2"#,
            )
            .bind(new.customer_id)
            .bind(&new.idempotency_key)
            .fetch_one(&self.pool)
            .await?;
            return Ok((existing, false));
        };
        self.outbox_written();
        Ok((request, true))
    }

    pub async fn get_request(&self, id: Uuid) -> Result<ServiceRequest, StoreError> {
        sqlx::query_as("select * from service_requests where id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound {
                what: "service request",
                id: id.to_string(),
            })
    }

    /// Requests that still need an actor: booked, being dispatched, or assigned / in progress.
    pub async fn open_requests(&self) -> Result<Vec<ServiceRequest>, StoreError> {
        Ok(sqlx::query_as(
            r#"select * from service_requests
               where status in ('SCHEDULED', 'PENDING', 'OFFERING', 'ASSIGNED', 'IN_PROGRESS')
                 and "cityId" is not null and "closedAt" is null
               order by "createdAt""#,
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Open requests whose row shows no progress: PENDING for longer than `pending_for`
    /// (an actor moves a PENDING request on within milliseconds), or OFFERING past its offer
    /// deadline by more than `overdue_by` (the actor's timer should have settled it); a
    /// booking past its dispatch time (`scheduledStart - lead`), or an assigned booking past
    /// its no-show deadline (`scheduledStart + grace`), by more than `overdue_by`.
    pub async fn stalled_requests(
        &self,
        pending_for: std::time::Duration,
        overdue_by: std::time::Duration,
        dispatch_lead: std::time::Duration,
        no_show_grace: std::time::Duration,
    ) -> Result<Vec<ServiceRequest>, StoreError> {
        Ok(sqlx::query_as(
            r#"select * from service_requests
               where "cityId" is not null and "closedAt" is null
                 and ((status = 'PENDING' and "updatedAt" < now() - $1::interval)
                   or (status = 'OFFERING' and "workerTimeoutAt" < now() - $2::interval)
                   or (status = 'SCHEDULED'
                       and "scheduledStart" - $3::interval < now() - $2::interval)
                   or (status = 'ASSIGNED'
                       and "scheduledStart" + $4::interval < now() - $2::interval))
               order by "updatedAt"
               limit 1000"#,
        )
        .bind(pg_interval(pending_for))
        .bind(pg_interval(overdue_by))
        .bind(pg_interval(dispatch_lead))
        .bind(pg_interval(no_show_grace))
        .fetch_all(&self.pool)
        .await?)
    }

    /// OFFERING requests whose offer deadline passed, most overdue first (the backstop's).
    pub async fn overdue_offering(&self, limit: i64) -> Result<Vec<ServiceRequest>, StoreError> {
        Ok(sqlx::query_as(
            r#"select * from service_requests
               where status = 'OFFERING' and "workerTimeoutAt" < now() and "closedAt" is null
               order by "workerTimeoutAt"
               limit $1"#,
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Every committed event of a request, oldest first (the decision trail shows them).
    pub async fn request_events(&self, id: Uuid) -> Result<Vec<super::OutboxEvent>, StoreError> {
        Ok(sqlx::query_as(
            r#"select id, "aggregateType", "aggregateId", "aggregateVersion", type, payload,
                      processed, attempts, "createdAt"
               from outbox_events
               where "aggregateType" = 'service_request' and "aggregateId" = $1 order by id"#,
        )
        .bind(id.to_string())
        .fetch_all(&self.pool)
        .await?)
    }

    /// A customer's requests, newest first, keyed by (createdAt, id) for stable cursors.
    pub async fn customer_requests(
        &self,
        customer_id: Uuid,
        status: Option<Status>,
        after: Option<(DateTime<Utc>, Uuid)>,
        limit: i64,
    ) -> Result<RequestPage, StoreError> {
        let (after_ts, after_id) = after.unzip();
        let mut items: Vec<ServiceRequest> = sqlx::query_as(
            r#"select * from service_requests
               where "customerId" = $1
                 and ($2::text is null or status = $2)
                 and ($3::timestamptz is null or ("createdAt", id) < ($3, $4))
               order by "createdAt" desc, id desc
               limit $5"#,
        )
        .bind(customer_id)
        .bind(status.map(|s| s.as_str()))
        .bind(after_ts)
        .bind(after_id)
        .bind(limit + 1)
        .fetch_all(&self.pool)
        .await?;
        let has_more = items.len() as i64 > limit;
        items.truncate(limit as usize);
        Ok(RequestPage { items, has_more })
    }
}

/// A duration as a PostgreSQL interval literal (milliseconds are enough here).
pub(super) fn pg_interval(d: std::time::Duration) -> String {
    format!("{} milliseconds", d.as_millis())
}
