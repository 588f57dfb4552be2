//! The outbox relay's SQL: claim a batch, mark what was delivered, charge what failed.
//! All three run in the one transaction that holds the batch's row locks
//! ([`Store::begin_outbox_batch`]); the relay (`jobs::outbox_relay`) holds it open across
//! the publish.

use sqlx::PgConnection;

use super::{OutboxEvent, Store};

/// An open transaction holding a claimed batch's row locks.
pub type BatchTx = sqlx::Transaction<'static, sqlx::Postgres>;

/// Outbox figures in one pass over the unprocessed rows.
#[derive(Debug, Clone, Copy, Default)]
pub struct OutboxFigures {
    /// Rows waiting to be relayed.
    pub backlog: i64,
    /// Rows parked after too many failed attempts.
    pub parked: i64,
    /// Age of the oldest waiting row, in seconds.
    pub lag_seconds: f64,
}

impl Store {
    /// Opens the transaction a batch is claimed, delivered and marked in.
    pub async fn begin_outbox_batch(&self) -> Result<BatchTx, sqlx::Error> {
        self.pool.begin().await
    }

    /// See [`anything_to_claim`].
    pub async fn outbox_has_unclaimed(&self, deferred: &[i64]) -> Result<bool, sqlx::Error> {
        anything_to_claim(&self.pool, deferred).await
    }

    /// Backlog, lag and parked rows (the partial index `where processed = false` keeps it
    /// off the processed history).
    pub async fn outbox_figures(&self) -> Result<OutboxFigures, sqlx::Error> {
        let (backlog, parked, lag_seconds): (i64, i64, Option<f64>) = sqlx::query_as(
            r#"select count(*) filter (where "parkedAt" is null),
                      count(*) filter (where "parkedAt" is not null),
                      extract(epoch from now() - min("createdAt") filter (where "parkedAt" is null))::float8
               from outbox_events
               where processed = false"#,
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(OutboxFigures {
            backlog,
            parked,
            lag_seconds: lag_seconds.unwrap_or(0.0).max(0.0),
        })
    }

    /// Listens for committed outbox rows announced by any engine (`NOTIFY outbox_events`),
    /// on a connection of its own: a listener must not hold one of the main pool's for good.
    pub async fn listen_outbox(&self) -> Result<OutboxListener, sqlx::Error> {
        let pool = self.listener_pool.get_or_init(|| {
            sqlx::postgres::PgPoolOptions::new()
                .max_connections(1)
                .min_connections(0)
                .acquire_timeout(std::time::Duration::from_secs(10))
                .connect_lazy_with(self.pool.connect_options().as_ref().clone())
        });
        let mut listener = sqlx::postgres::PgListener::connect_with(pool).await?;
        listener.listen(super::OUTBOX_CHANNEL).await?;
        Ok(OutboxListener(listener))
    }
}

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

/// Whether any row waits to be claimed (outside `deferred`): a single read, no transaction,
/// so a wake with nothing to do costs one statement, not an empty claim transaction.
pub async fn anything_to_claim(pool: &sqlx::PgPool, deferred: &[i64]) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        r#"select exists (select 1 from outbox_events
                          where processed = false and "parkedAt" is null and id <> all($1))"#,
    )
    .bind(deferred)
    .fetch_one(pool)
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

/// A live LISTEN on the outbox channel.
pub struct OutboxListener(sqlx::postgres::PgListener);

impl OutboxListener {
    /// The next announcement's payload (the announcing store's origin); `Ok(None)` when the
    /// connection dropped and was re-made (what was sent in between is lost), an error when
    /// it could not be.
    pub async fn next(&mut self) -> Result<Option<String>, sqlx::Error> {
        Ok(self.0.try_recv().await?.map(|n| n.payload().to_string()))
    }
}
