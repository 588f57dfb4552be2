//! The A/B comparison of the gradual rollout (the guide's Phase 4, "compare metrics"): the
//! engine's arm and the legacy dispatcher's, each measured from its own rows, the same way.

use super::{Store, StoreError};

/// One arm's last minutes, from `service_requests` (and `offers` for the engine's offers).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
#[sqlx(rename_all = "camelCase")]
pub struct ArmRow {
    /// `engine` (bucket under the percentage) or `legacy`.
    pub arm: String,
    pub created: i64,
    /// Requests assigned in the window ("assignedAt").
    pub assigned: i64,
    /// Requests that left dispatch without a worker in the window: UNASSIGNED, or
    /// CANCELLED before anyone was assigned.
    pub ended_unassigned: i64,
    /// "assignedAt" − "createdAt" over the requests assigned in the window, in seconds.
    pub time_to_assignment_p50: Option<f64>,
    pub time_to_assignment_p99: Option<f64>,
    /// Offers decided (accepted, rejected, expired) and accepted in the window; the legacy
    /// dispatcher writes no offers, so its arm has none.
    pub offers_decided: i64,
    pub offers_accepted: i64,
}

impl Store {
    /// Both arms over the last `minutes`, split by `arreglame_rollout_bucket(id) < percent`
    /// (the split as it is now). Both rows are always there.
    pub async fn rollout_arms(&self, minutes: u32, percent: u8) -> Result<Vec<ArmRow>, StoreError> {
        Ok(sqlx::query_as(
            r#"with since as (select now() - $1::int * interval '1 minute' as t),
               req as (
                 select case when arreglame_rollout_bucket(r.id) < $2 then 'engine' else 'legacy' end as arm,
                        r."createdAt", r."assignedAt", r.status, r."updatedAt"
                 from service_requests r, since
                 where r."createdAt" >= since.t or r."assignedAt" >= since.t
                    or (r.status in ('UNASSIGNED', 'CANCELLED') and r."updatedAt" >= since.t)
               ),
               requests as (
                 select arm,
                        count(*) filter (where "createdAt" >= (select t from since)) as created,
                        count(*) filter (where "assignedAt" >= (select t from since)) as assigned,
                        count(*) filter (where "assignedAt" is null and status in ('UNASSIGNED', 'CANCELLED')
                                           and "updatedAt" >= (select t from since)) as ended_unassigned,
                        percentile_cont(0.5) within group (order by extract(epoch from "assignedAt" - "createdAt")::float8)
                          filter (where "assignedAt" >= (select t from since)) as p50,
                        percentile_cont(0.99) within group (order by extract(epoch from "assignedAt" - "createdAt")::float8)
                          filter (where "assignedAt" >= (select t from since)) as p99
                 from req group by arm
               ),
               decided as (
                 select case when arreglame_rollout_bucket(o."requestId") < $2 then 'engine' else 'legacy' end as arm,
                        count(*) filter (where outcome in ('ACCEPTED', 'REJECTED', 'EXPIRED')) as decided,
                        count(*) filter (where outcome = 'ACCEPTED') as accepted
                 from offers o, since where o."respondedAt" >= since.t group by 1
               )
               select a.arm, coalesce(r.created, 0) as created, coalesce(r.assigned, 0) as assigned,
                      coalesce(r.ended_unassigned, 0) as "endedUnassigned",
                      r.p50 as "timeToAssignmentP50", r.p99 as "timeToAssignmentP99",
                      coalesce(d.decided, 0) as "offersDecided", coalesce(d.accepted, 0) as "offersAccepted"
               from (values ('engine'), ('legacy')) a (arm)
               left join requests r using (arm)
               left join decided d using (arm)
               order by a.arm"#,
        )
        .bind(minutes.max(1) as i32)
        .bind(i32::from(percent))
        .fetch_all(&self.pool)
        .await?)
    }
}
