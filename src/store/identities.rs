//! Who a token's subject is, per the database: tokens prove who signed them, not that the
//! customer or worker still exists or is still active.

use uuid::Uuid;

use super::{Store, StoreError};

/// A worker as dispatch may use it: active, with the skills on its profile.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct WorkerProfile {
    pub id: Uuid,
    #[sqlx(rename = "isActive")]
    pub is_active: bool,
    pub skills: Vec<String>,
}

/// A candidate the dispatcher passed over, and why (the decision trail shows these).
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
#[sqlx(rename_all = "camelCase")]
pub struct CandidateSkip {
    pub worker_id: Uuid,
    pub reason: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

impl Store {
    /// The worker's profile; `None` when no such worker exists.
    pub async fn worker_profile(&self, id: Uuid) -> Result<Option<WorkerProfile>, StoreError> {
        Ok(
            sqlx::query_as(r#"select id, "isActive", skills from worker_profiles where id = $1"#)
                .bind(id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Whether the customer is active; `None` when no such customer exists.
    pub async fn customer_is_active(&self, id: Uuid) -> Result<Option<bool>, StoreError> {
        Ok(
            sqlx::query_scalar(r#"select "isActive" from customers where id = $1"#)
                .bind(id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Of `ids`, those that are no longer an active worker (deactivated or deleted).
    pub async fn workers_not_active(&self, ids: &[Uuid]) -> Result<Vec<Uuid>, StoreError> {
        Ok(sqlx::query_scalar(
            r#"select wanted.id from unnest($1::uuid[]) as wanted (id)
               where not exists (select 1 from worker_profiles w where w.id = wanted.id and w."isActive")"#,
        )
        .bind(ids)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Records that dispatch passed over `worker_id` for `request_id`.
    pub async fn record_candidate_skip(
        &self,
        request_id: Uuid,
        worker_id: Uuid,
        reason: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            r#"insert into dispatch_skips ("requestId", "workerId", reason) values ($1, $2, $3)"#,
        )
        .bind(request_id)
        .bind(worker_id)
        .bind(reason)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Every worker already tried for a request: offered it (any outcome) or passed over
    /// for a lasting reason. One round trip when a request actor starts.
    pub async fn tried_workers(&self, request_id: Uuid) -> Result<Vec<Uuid>, StoreError> {
        Ok(sqlx::query_scalar(
            r#"select "workerId" from offers where "requestId" = $1
               union
               select "workerId" from dispatch_skips where "requestId" = $1"#,
        )
        .bind(request_id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The candidates passed over for a request, oldest first.
    pub async fn candidate_skips(
        &self,
        request_id: Uuid,
    ) -> Result<Vec<CandidateSkip>, StoreError> {
        Ok(sqlx::query_as(
            r#"select "workerId", reason, "createdAt" from dispatch_skips
               where "requestId" = $1 order by id"#,
        )
        .bind(request_id)
        .fetch_all(&self.pool)
        .await?)
    }
}
