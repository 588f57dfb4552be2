//! Payouts: created by the JobCompleted transition, released by `PayoutReleaseCron` once
//! the cancellation window has passed.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::{insert_outbox_event, Store, StoreError};

/// One row of `payouts`.
#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
#[sqlx(rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct Payout {
    pub id: Uuid,
    pub request_id: Uuid,
    pub worker_id: Uuid,
    pub amount_cents: i64,
    pub currency: String,
    pub status: String,
    pub release_at: DateTime<Utc>,
    pub released_at: Option<DateTime<Utc>>,
    pub version: i32,
    pub created_at: DateTime<Utc>,
}

impl Store {
    /// Releases up to `batch` due payouts in one transaction, each with its `PayoutReleased`
    /// outbox row. `for update skip locked` lets several engines sweep at once: each payout
    /// is claimed by exactly one of them, and a released one is never due again.
    pub async fn release_due_payouts(&self, batch: i64) -> Result<Vec<Payout>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let released: Vec<Payout> = sqlx::query_as(
            r#"with due as (
                   select id from payouts
                   where status = 'PENDING' and "releaseAt" <= now()
                   order by "releaseAt"
                   limit $1
                   for update skip locked
               )
               update payouts p
               set status = 'RELEASED', "releasedAt" = now(), version = p.version + 1
               from due
               where p.id = due.id
               returning p.*"#,
        )
        .bind(batch)
        .fetch_all(&mut *tx)
        .await?;
        for payout in &released {
            let payload = serde_json::to_value(super::events::PayoutReleased {
                payout_id: payout.id,
                request_id: payout.request_id,
                worker_id: payout.worker_id,
                amount_cents: payout.amount_cents,
                currency: payout.currency.clone(),
                released_at: payout.released_at,
            })
            .expect("event payloads always serialize");
            insert_outbox_event(
                &mut tx,
                super::events::PAYOUT,
                &payout.id.to_string(),
                payout.version,
                "PayoutReleased",
                &payload,
            )
            .await?;
        }
        tx.commit().await?;
        if !released.is_empty() {
            self.outbox_written();
        }
        Ok(released)
    }

    pub async fn payout_for_request(&self, request_id: Uuid) -> Result<Option<Payout>, StoreError> {
        Ok(
            sqlx::query_as(r#"select * from payouts where "requestId" = $1"#)
                .bind(request_id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }
}
