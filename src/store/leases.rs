//! City ownership across engine nodes (docs/scale-out.md): the fencing epoch of each city.
//! The NATS KV bucket decides who owns a city; this table makes a node that lost it unable
//! to write (the request transitions check the epoch in their own statement).

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{Store, StoreError};

/// One row of `city_leases`.
#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
#[sqlx(rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct CityLeaseRow {
    pub city_id: String,
    pub epoch: i64,
    pub node_id: String,
    pub kv_revision: i64,
    pub acquired_at: DateTime<Utc>,
    pub renewed_at: DateTime<Utc>,
}

impl Store {
    /// A node that just won `city` in the KV bucket takes its fence: the epoch goes up by
    /// one (from 1 for a city never owned), so every write of the previous owner's actors
    /// that starts after this commit is refused. (The fence reads `city_leases` in the
    /// write's own snapshot without a lock, so a write whose statement began just before
    /// can still land; the version guard keeps it from overwriting anything, and the old
    /// owner stopped acting a tick before its key could expire.) Returns the new epoch.
    pub async fn take_city_lease(
        &self,
        city_id: &str,
        node_id: &str,
        kv_revision: u64,
    ) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            r#"insert into city_leases ("cityId", epoch, "nodeId", "kvRevision")
               values ($1, 1, $2, $3)
               on conflict ("cityId") do update
                 set epoch = city_leases.epoch + 1, "nodeId" = excluded."nodeId",
                     "kvRevision" = excluded."kvRevision", "acquiredAt" = now(), "renewedAt" = now()
               returning epoch"#,
        )
        .bind(city_id)
        .bind(node_id)
        .bind(kv_revision as i64)
        .fetch_one(&self.pool)
        .await?)
    }

    /// The owner's renewal on the database side: true while `epoch` is still the city's
    /// (nobody took it over) and the database answers. Doubles as the pool's health check:
    /// a node that cannot reach PostgreSQL stops renewing and so gives its cities up.
    pub async fn renew_city_lease(
        &self,
        city_id: &str,
        epoch: i64,
        kv_revision: u64,
    ) -> Result<bool, StoreError> {
        let updated = sqlx::query(
            r#"update city_leases set "renewedAt" = now(), "kvRevision" = $3
               where "cityId" = $1 and epoch = $2"#,
        )
        .bind(city_id)
        .bind(epoch)
        .bind(kv_revision as i64)
        .execute(&self.pool)
        .await?;
        Ok(updated.rows_affected() == 1)
    }

    /// Every city's fence, for `/ops/cluster`.
    pub async fn city_leases(&self) -> Result<Vec<CityLeaseRow>, StoreError> {
        Ok(
            sqlx::query_as(r#"select * from city_leases order by "cityId""#)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// The city's current epoch (None: never owned).
    pub async fn city_epoch(&self, city_id: &str) -> Result<Option<i64>, StoreError> {
        Ok(
            sqlx::query_scalar(r#"select epoch from city_leases where "cityId" = $1"#)
                .bind(city_id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }
}
