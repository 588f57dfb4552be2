//! The simulator's fleet in the database: rows it provisions, the counts its cross-check
//! compares with what it saw over the wire, what its workers earned and the strikes they
//! got, and the `system_config` rows `simulate --compare` switches between modes.

use std::collections::HashMap;

use uuid::Uuid;

use super::{Store, StoreError};

/// What the database says about a set of customers' requests.
#[derive(Debug, Clone, Default)]
pub struct FleetCounts {
    pub by_status: HashMap<String, i64>,
    /// Requests whose outbox rows are not exactly one per version.
    pub outbox_mismatches: i64,
    /// Requests with more than one accepted offer.
    pub double_accepted: i64,
}

impl Store {
    /// Inserts `count` simulated workers in `city`, tagged `sim-<run>-w<n>`.
    pub async fn provision_workers(
        &self,
        run: &str,
        city: &str,
        count: usize,
    ) -> Result<Vec<Uuid>, StoreError> {
        Ok(sqlx::query_scalar(
            r#"insert into worker_profiles (name, "cityId", skills, rating)
               select 'sim-' || $1 || '-w' || n, $2, '{lawn_mowing,gardening,cleaning}', 4.5
               from generate_series(1, $3) n
               returning id"#,
        )
        .bind(run)
        .bind(city)
        .bind(count as i32)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Inserts `count` simulated customers, tagged `sim-<run>-c<n>`.
    pub async fn provision_customers(
        &self,
        run: &str,
        count: usize,
    ) -> Result<Vec<Uuid>, StoreError> {
        Ok(sqlx::query_scalar(
            r#"insert into customers (name) select 'sim-' || $1 || '-c' || n from generate_series(1, $2) n returning id"#,
        )
        .bind(run)
        .bind(count as i32)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Counts by status, outbox rows per version and double acceptances of the requests of
    /// `customers`.
    pub async fn fleet_counts(&self, customers: &[Uuid]) -> Result<FleetCounts, StoreError> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            r#"select status, count(*) from service_requests where "customerId" = any($1) group by status"#,
        )
        .bind(customers)
        .fetch_all(&self.pool)
        .await?;
        let outbox_mismatches: i64 = sqlx::query_scalar(
            r#"select count(*) from service_requests r
               where r."customerId" = any($1)
                 and (select count(*) from outbox_events e
                      where e."aggregateType" = 'service_request' and e."aggregateId" = r.id::text) <> r.version"#,
        )
        .bind(customers)
        .fetch_one(&self.pool)
        .await?;
        let double_accepted: i64 = sqlx::query_scalar(
            r#"select count(*) from (
                 select o."requestId" from offers o join service_requests r on r.id = o."requestId"
                 where r."customerId" = any($1) and o.outcome = 'ACCEPTED'
                 group by o."requestId" having count(*) > 1) d"#,
        )
        .bind(customers)
        .fetch_one(&self.pool)
        .await?;
        Ok(FleetCounts {
            by_status: rows.into_iter().collect(),
            outbox_mismatches,
            double_accepted,
        })
    }

    /// Upserts `settings` into `system_config` in one statement (its trigger tells every
    /// engine to reload) and returns the previous value of each key, `None` for a key that
    /// had no row, for [`Store::restore_system_config`].
    pub async fn set_system_config(
        &self,
        settings: &[(&str, &str)],
    ) -> Result<Vec<(String, Option<String>)>, StoreError> {
        let keys: Vec<&str> = settings.iter().map(|(k, _)| *k).collect();
        let values: Vec<&str> = settings.iter().map(|(_, v)| *v).collect();
        let mut tx = self.pool.begin().await?;
        let before: HashMap<String, String> = sqlx::query_as::<_, (String, String)>(
            "select key, value from system_config where key = any($1)",
        )
        .bind(&keys)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect();
        sqlx::query(
            r#"insert into system_config (key, value, description)
               select k, v, 'set by arreglame simulate --compare' from unnest($1::text[], $2::text[]) as t(k, v)
               on conflict (key) do update set value = excluded.value, "updatedAt" = now()
               where system_config.value is distinct from excluded.value"#,
        )
        .bind(&keys)
        .bind(&values)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(keys
            .iter()
            .map(|k| (k.to_string(), before.get(*k).cloned()))
            .collect())
    }

    /// Puts back what [`Store::set_system_config`] returned: the old values, and no row for
    /// a key that had none.
    pub async fn restore_system_config(
        &self,
        previous: &[(String, Option<String>)],
    ) -> Result<(), StoreError> {
        let (absent, present): (Vec<_>, Vec<_>) = previous.iter().partition(|(_, v)| v.is_none());
        let absent: Vec<&str> = absent.iter().map(|(k, _)| k.as_str()).collect();
        let pairs: Vec<(&str, &str)> = present
            .iter()
            .filter_map(|(k, v)| Some((k.as_str(), v.as_deref()?)))
            .collect();
        if !pairs.is_empty() {
            self.set_system_config(&pairs).await?;
        }
        sqlx::query("delete from system_config where key = any($1)")
            .bind(&absent)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// What each of `workers` earned (`workerNetCents` of their completed jobs among the
    /// requests of `customers`), zero for a worker who completed nothing.
    pub async fn fleet_earnings(
        &self,
        workers: &[Uuid],
        customers: &[Uuid],
    ) -> Result<Vec<(Uuid, i64)>, StoreError> {
        Ok(sqlx::query_as(
            r#"select w.id, coalesce(sum(r."workerNetCents"), 0)::bigint
               from unnest($1::uuid[]) as w(id)
               left join service_requests r
                 on r."assignedWorkerId" = w.id and r.status = 'COMPLETED' and r."customerId" = any($2)
               group by w.id"#,
        )
        .bind(workers)
        .bind(customers)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Strikes recorded against `workers`: (cancellations after accepting, no-shows).
    pub async fn fleet_strikes(&self, workers: &[Uuid]) -> Result<(i64, i64), StoreError> {
        Ok(sqlx::query_as(
            r#"select count(*) filter (where kind = 'CANCELLED'), count(*) filter (where kind = 'NO_SHOW')
               from worker_strikes where "workerId" = any($1)"#,
        )
        .bind(workers)
        .fetch_one(&self.pool)
        .await?)
    }
}
