//! Multi-row transitions (issue 13, item 3): the transitions of one kind in a group commit
//! written as one statement over `unnest` arrays instead of one statement each.
//!
//! Each kind's statement is the single-row one of `transition.rs` with every parameter an
//! array: the input rows are numbered (`with ordinality`), the version-guarded update
//! matches each request against its own row (`id` and `version`, its own guard and fence),
//! and the rows the change implies and the outbox rows are made from the updated rows
//! joined back to their input by number. What comes back, by number, is each transition's
//! own answer: a row missing from it is that transition's lost race (its actor's
//! `ConcurrencyConflict`), not the batch's. A statement the database refuses (a
//! constraint, the status-machine trigger) fails the whole group, which `group_commit`
//! then writes again one transition at a time, so the failing one fails alone.
//!
//! Only the kinds a request's life is made of are batched (offers sent and settled, the
//! acceptance, the start, the completion); the rare ones (cancellations, give-ups, released
//! assignments) keep their single-row statement inside the group's transaction.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use super::{transition::TransitionArgs, Change, ServiceRequest};

/// The kinds written as one statement, in the order a group writes them: what releases a
/// worker (a settled or accepted offer) before what claims one (a new offer), so a worker
/// freed and offered again in the same group finds its pending-offer slot empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum BatchKind {
    Settled,
    Accepted,
    Plain,
    Completed,
    Sent,
}

impl BatchKind {
    pub(super) fn of(change: &Change) -> Option<BatchKind> {
        match change {
            Change::OfferSettled { .. } => Some(BatchKind::Settled),
            Change::OfferAccepted { .. } => Some(BatchKind::Accepted),
            Change::DispatchOpened | Change::JobStarted => Some(BatchKind::Plain),
            Change::JobCompleted { .. } => Some(BatchKind::Completed),
            Change::OfferSent(_) => Some(BatchKind::Sent),
            _ => None,
        }
    }
}

/// The update every kind makes, over the numbered input `i` (`$1`–`$9`: id, version, status,
/// attempts, offer deadline, assignee, event type, payload, fence). The columns only the
/// rare kinds change (cancellation, why unassigned) are left as they are.
///
/// `s.id = any($1)` repeats the join on purpose: it gives the planner an index condition on
/// the table itself. Without it a prepared statement's plan, cached while the table was
/// small (a fresh database, statistics not yet gathered), joins by a sequential scan of
/// every request and keeps doing so as the table grows: 2 ms for a 5-row batch at 10 000
/// requests, measured with `auto_explain` in `scripts/bench-e2e.sh`. The offers updates
/// below carry the same kind of condition for the same reason.
const UPDATE: &str = r#"update service_requests s set
      status = i.to_status,
      version = s.version + 1,
      "assignmentAttempts" = i.attempts,
      "workerTimeoutAt" = i.timeout,
      "assignedWorkerId" = i.assignee,
      "assignedAt" = case when i.to_status = 'ASSIGNED' then now() when i.assignee is null then null else s."assignedAt" end,
      "startedAt" = case when i.to_status = 'IN_PROGRESS' then now() else s."startedAt" end,
      "completedAt" = case when i.to_status = 'COMPLETED' then now() else s."completedAt" end,
      "closedAt" = case when i.to_status in ('COMPLETED', 'CANCELLED', 'UNASSIGNED') then coalesce(s."closedAt", now())
                        else s."closedAt" end,
      "updatedAt" = now()
    from i
    where s.id = i.id and s.version = i.version and s.id = any($1::uuid[])
      and (i.fence is null or exists (select 1 from city_leases l
           where l."cityId" = s."cityId" and l.epoch = i.fence))"#;

/// `kind_arrays` are the kind's own parameters (from `$10`) with their column names in
/// `kind_columns`; `guard` narrows the update per input row; `ctes` are the rows the change
/// implies (each from `u join i using (ord)`); `extra` is merged into each outbox payload,
/// per updated row `u`, from what `extra_join` joins to it.
///
/// What a kind adds to its outbox payload (the settled offer's worker, the withdrawn
/// offers' workers) is joined once (`extra_join`), not looked up by a subquery per row: a
/// correlated subquery over a CTE rescans that CTE for every row, so a batch of n paid n²
/// (`perf` of the transitions bench: `ExecSubPlan` about a tenth of the writers' CPU at 32
/// clients).
fn build(
    kind_arrays: &str,
    kind_columns: &str,
    guard: &str,
    ctes: &str,
    extra: &str,
    extra_join: &str,
) -> String {
    format!(
        r#"with i as (select * from unnest($1::uuid[], $2::int4[], $3::text[], $4::int4[],
                $5::timestamptz[], $6::uuid[], $7::text[], $8::jsonb[], $9::int8[]{kind_arrays})
           with ordinality as i(id, version, to_status, attempts, timeout, assignee, type, payload,
                fence{kind_columns}, ord)),
    u as ({UPDATE} {guard}
      returning s.*, i.ord),
    {ctes}
    e as (insert into outbox_events ("aggregateType", "aggregateId", "aggregateVersion", type, payload)
          select 'service_request', u.id::text, u.version, i.type, i.payload || {extra}
          from u join i using (ord) {extra_join})
    select u.* from u"#
    )
}

fn statement(kind: BatchKind) -> &'static str {
    static SETTLED: LazyLock<String> = LazyLock::new(|| {
        build(
            ", $10::uuid[], $11::text[], $12::text[]",
            ", offer_id, outcome, reason",
            r#"and exists (select 1 from offers f
                   where f.id = i.offer_id and f."requestId" = i.id and f.outcome is null)"#,
            r#"o as (update offers f set outcome = i.outcome, "respondedAt" = now(), "rejectReason" = i.reason
          from u join i using (ord)
          where f.id = i.offer_id and f.outcome is null and f.id = any($10::uuid[])
          returning f."requestId", f."workerId"),"#,
            r#"jsonb_build_object('workerId', o."workerId")"#,
            r#"left join o on o."requestId" = u.id"#,
        )
    });
    static ACCEPTED: LazyLock<String> = LazyLock::new(|| {
        build(
            ", $10::uuid[], $11::uuid[], $12::text[]",
            ", offer_id, worker, reason",
            r#"and exists (select 1 from offers f
                   where f.id = i.offer_id and f."requestId" = i.id and f."workerId" = i.worker
                     and f.outcome is null)"#,
            // Parallel offers: the rest of each batch is withdrawn in the same statement.
            r#"a as (update offers f set outcome = 'ACCEPTED', "respondedAt" = now()
          from u join i using (ord)
          where f.id = i.offer_id and f.id = any($10::uuid[])
          returning f.id),
    w as (update offers f set outcome = 'WITHDRAWN', "respondedAt" = now(), "rejectReason" = i.reason
          from u join i using (ord)
          where f."requestId" = u.id and f.outcome is null and f.id <> i.offer_id
            and f."requestId" = any($1::uuid[])
          returning f."requestId", f."workerId", f.attempt),
    wa as (select w."requestId", jsonb_agg(w."workerId" order by w.attempt) as ids from w group by w."requestId"),"#,
            r#"case when wa.ids is null then '{}'::jsonb else jsonb_build_object('withdrawnFromWorkerIds', wa.ids) end"#,
            r#"left join wa on wa."requestId" = u.id"#,
        )
    });
    static PLAIN: LazyLock<String> = LazyLock::new(|| build("", "", "", "", "'{}'::jsonb", ""));
    static COMPLETED: LazyLock<String> = LazyLock::new(|| {
        build(
            ", $10::uuid[], $11::timestamptz[]",
            ", payout_id, release_at",
            "",
            // The worker's payout, held until the cancellation window closes.
            r#"p as (insert into payouts (id, "requestId", "workerId", "amountCents", currency, "releaseAt")
          select i.payout_id, u.id, u."assignedWorkerId", coalesce(u."workerNetCents", 0), u.currency, i.release_at
          from u join i using (ord)),"#,
            "'{}'::jsonb",
            "",
        )
    });
    static SENT: LazyLock<String> = LazyLock::new(|| {
        build(
            ", $10::uuid[], $11::uuid[], $12::int4[], $13::timestamptz[], $14::float8[], $15::int4[], \
             $16::int4[], $17::jsonb[]",
            ", offer_id, worker, attempt, expires_at, distance, radius, considered, scores",
            "",
            r#"o as (insert into offers (id, "requestId", "workerId", attempt, "expiresAt",
                      "distanceMeters", "radiusMeters", "candidatesConsidered", "candidateScores")
          select i.offer_id, u.id, i.worker, i.attempt, i.expires_at, i.distance, i.radius, i.considered, i.scores
          from u join i using (ord)),"#,
            "'{}'::jsonb",
            "",
        )
    });
    match kind {
        BatchKind::Settled => &SETTLED,
        BatchKind::Accepted => &ACCEPTED,
        BatchKind::Plain => &PLAIN,
        BatchKind::Completed => &COMPLETED,
        BatchKind::Sent => &SENT,
    }
}

/// An updated row and the number of its input row.
#[derive(sqlx::FromRow)]
struct Numbered {
    ord: i64,
    #[sqlx(flatten)]
    request: ServiceRequest,
}

/// Writes `batch` (transitions of `kind`, of distinct requests) as one statement on `conn`
/// (the group's transaction). Returns each transition's row, in `batch` order; `None`
/// where its guard did not match.
pub(super) async fn write(
    conn: &mut PgConnection,
    kind: BatchKind,
    batch: &[&TransitionArgs],
) -> Result<Vec<Option<ServiceRequest>>, sqlx::Error> {
    let ids: Vec<Uuid> = batch.iter().map(|a| a.id).collect();
    let versions: Vec<i32> = batch.iter().map(|a| a.version).collect();
    let statuses: Vec<&str> = batch.iter().map(|a| a.to).collect();
    let attempts: Vec<i32> = batch.iter().map(|a| a.assignment_attempts).collect();
    let timeouts: Vec<Option<DateTime<Utc>>> = batch.iter().map(|a| a.worker_timeout_at).collect();
    let assignees: Vec<Option<Uuid>> = batch.iter().map(|a| a.assigned_worker_id).collect();
    let types: Vec<&str> = batch.iter().map(|a| a.change.event_type()).collect();
    let payloads: Vec<&serde_json::Value> = batch.iter().map(|a| &a.payload).collect();
    let fences: Vec<Option<i64>> = batch.iter().map(|a| a.fence).collect();
    let query = sqlx::query_as::<_, Numbered>(statement(kind))
        .bind(ids)
        .bind(versions)
        .bind(statuses)
        .bind(attempts)
        .bind(timeouts)
        .bind(assignees)
        .bind(types)
        .bind(payloads)
        .bind(fences);
    let query = match kind {
        BatchKind::Settled => {
            let (mut offers, mut outcomes, mut reasons) = (Vec::new(), Vec::new(), Vec::new());
            for args in batch {
                let Change::OfferSettled {
                    offer_id,
                    outcome,
                    reason,
                    ..
                } = &args.change
                else {
                    unreachable!("a settled batch holds settlements")
                };
                offers.push(*offer_id);
                outcomes.push(outcome.as_str());
                reasons.push(reason.as_deref());
            }
            query.bind(offers).bind(outcomes).bind(reasons)
        }
        BatchKind::Accepted => {
            let (mut offers, mut workers) = (Vec::new(), Vec::new());
            for args in batch {
                let Change::OfferAccepted {
                    offer_id,
                    worker_id,
                } = &args.change
                else {
                    unreachable!("an accepted batch holds acceptances")
                };
                offers.push(*offer_id);
                workers.push(*worker_id);
            }
            let reasons = vec![super::TAKEN; batch.len()];
            query.bind(offers).bind(workers).bind(reasons)
        }
        BatchKind::Plain => query,
        BatchKind::Completed => {
            let (mut payouts, mut release) = (Vec::new(), Vec::new());
            for args in batch {
                let Change::JobCompleted { payout_release_at } = &args.change else {
                    unreachable!("a completed batch holds completions")
                };
                payouts.push(args.payout_id);
                release.push(*payout_release_at);
            }
            query.bind(payouts).bind(release)
        }
        BatchKind::Sent => {
            let mut offers = Vec::with_capacity(batch.len());
            for args in batch {
                let Change::OfferSent(offer) = &args.change else {
                    unreachable!("a sent batch holds new offers")
                };
                offers.push(offer);
            }
            query
                .bind(offers.iter().map(|o| o.id).collect::<Vec<_>>())
                .bind(offers.iter().map(|o| o.worker_id).collect::<Vec<_>>())
                .bind(offers.iter().map(|o| o.attempt).collect::<Vec<_>>())
                .bind(offers.iter().map(|o| o.expires_at).collect::<Vec<_>>())
                .bind(offers.iter().map(|o| o.distance_meters).collect::<Vec<_>>())
                .bind(offers.iter().map(|o| o.radius_meters).collect::<Vec<_>>())
                .bind(
                    offers
                        .iter()
                        .map(|o| o.candidates_considered)
                        .collect::<Vec<_>>(),
                )
                .bind(
                    offers
                        .iter()
                        .map(|o| {
                            (!o.candidate_scores.is_empty())
                                .then(|| sqlx::types::Json(o.candidate_scores.clone()))
                        })
                        .collect::<Vec<_>>(),
                )
        }
    };
    let mut answers: Vec<Option<ServiceRequest>> = vec![None; batch.len()];
    for row in query.fetch_all(conn).await? {
        let slot = usize::try_from(row.ord - 1)
            .ok()
            .and_then(|i| answers.get_mut(i))
            .ok_or_else(|| sqlx::Error::Protocol(format!("row number {} out of range", row.ord)))?;
        *slot = Some(row.request);
    }
    Ok(answers)
}
