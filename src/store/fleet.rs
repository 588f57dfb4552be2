//! The simulator's fleet in the database: rows it provisions, and the counts its
//! cross-check compares with what it saw over the wire.

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
}
