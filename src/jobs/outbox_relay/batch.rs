//! The relay's SQL: claim a batch, mark what was delivered, charge what failed.
//! All three run in the one transaction that holds the batch's row locks.

use sqlx::PgConnection;

use crate::store::OutboxEvent;

/// Locks up to `limit` relayable rows, oldest id first. `skip locked` lets several
/// engines claim disjoint batches; rows of transactions not yet committed are invisible
/// and are found by a later claim, since nothing here remembers a position.
pub async fn claim(
    conn: &mut PgConnection,
    limit: i64,
    deferred: &[i64],
) -> Result<Vec<OutboxEvent>, sqlx::Error> {
    sqlx::query_as(
        r#"select id, "aggregateType", "aggregateId", "aggregateVersion", type, payload,
                  processed, attempts, "createdAt"
           from outbox_events
           where processed = false and "parkedAt" is null and id <> all($2)
           order by id
           limit $1
           for update skip locked"#,
    )
    .bind(limit)
    .bind(deferred)
    .fetch_all(conn)
    .await
}

/// Marks delivered rows processed. `statement_timestamp()` is the moment of marking,
/// after the broker's acks, rather than the start of the claiming transaction.
pub async fn mark_processed(conn: &mut PgConnection, ids: &[i64]) -> Result<(), sqlx::Error> {
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        r#"update outbox_events
           set processed = true, "processedAt" = statement_timestamp()
           where id = any($1)"#,
    )
    .bind(ids)
    .execute(conn)
    .await?;
    Ok(())
}

/// One event's failed attempt, as the table now records it.
#[derive(Debug, sqlx::FromRow)]
pub struct Charged {
    pub id: i64,
    pub attempts: i32,
    pub parked: bool,
}

/// Charges each failed event one attempt and its error; parks those that reached
/// `max_attempts`. Parked rows keep `processed = false`: they are not delivered.
pub async fn charge_failures(
    conn: &mut PgConnection,
    failures: &[(i64, String)],
    max_attempts: i32,
) -> Result<Vec<Charged>, sqlx::Error> {
    if failures.is_empty() {
        return Ok(Vec::new());
    }
    let (ids, errors): (Vec<i64>, Vec<&str>) = failures
        .iter()
        .map(|(id, error)| (*id, error.as_str()))
        .unzip();
    sqlx::query_as(
        r#"update outbox_events o
           set attempts = o.attempts + 1,
               "lastError" = f.error,
               "parkedAt" = case when o.attempts + 1 >= $3 then now() end
           from unnest($1::bigint[], $2::text[]) as f(id, error)
           where o.id = f.id
           returning o.id, o.attempts, o."parkedAt" is not null as parked"#,
    )
    .bind(&ids)
    .bind(&errors)
    .bind(max_attempts)
    .fetch_all(conn)
    .await
}
