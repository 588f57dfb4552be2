//! The transactional outbox: every transition writes one row in its own transaction;
//! the relay (`jobs::outbox_relay`) publishes them.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;

/// One row of `outbox_events`.
#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
#[sqlx(rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct OutboxEvent {
    pub id: i64,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub aggregate_version: i32,
    #[sqlx(rename = "type")]
    #[serde(rename = "type")]
    pub event_type: String,
    pub payload: serde_json::Value,
    pub processed: bool,
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
}

/// Inserts one outbox row inside the caller's transaction. The unique key on
/// (aggregate type, id, version) makes a second row for the same transition impossible.
pub async fn insert_outbox_event(
    conn: &mut PgConnection,
    aggregate_type: &str,
    aggregate_id: &str,
    aggregate_version: i32,
    event_type: &str,
    payload: &serde_json::Value,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        r#"insert into outbox_events ("aggregateType", "aggregateId", "aggregateVersion", type, payload)
           values ($1, $2, $3, $4, $5)
           returning id"#,
    )
    .bind(aggregate_type)
    .bind(aggregate_id)
    .bind(aggregate_version)
    .bind(event_type)
    .bind(payload)
    .fetch_one(conn)
    .await
}
