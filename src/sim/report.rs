//! Progress bars while the fleet runs, the summary, and the database cross-check.

use std::{
    collections::HashMap,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde::Serialize;
use uuid::Uuid;

use super::{Created, Fleet};
use crate::store::Store;

/// `time_to_assign_ms` and its first name, `time_to_assignment_ms`, one value under both.
fn under_both_names<S: serde::Serializer>(p: &Percentiles, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = s.serialize_map(Some(2))?;
    map.serialize_entry("time_to_assign_ms", p)?;
    map.serialize_entry("time_to_assignment_ms", p)?;
    map.end()
}

/// Live progress: a bar for elapsed time and a line of counters.
pub struct Bars {
    time: Option<ProgressBar>,
    counts: Option<ProgressBar>,
    _multi: Option<MultiProgress>,
}

impl Bars {
    pub fn new(enabled: bool, fleet: &Fleet) -> Bars {
        if !enabled {
            return Bars {
                time: None,
                counts: None,
                _multi: None,
            };
        }
        let multi = MultiProgress::new();
        let time = multi.add(ProgressBar::new(fleet.args.duration.as_secs().max(1)));
        time.set_style(
            ProgressStyle::with_template(
                "{spinner} {elapsed_precise} [{bar:40}] {pos}/{len}s {msg}",
            )
            .expect("static template")
            .progress_chars("=> "),
        );
        time.set_message(format!(
            "{} workers, {} customers",
            fleet.args.workers, fleet.args.customers
        ));
        let counts = multi.add(ProgressBar::new_spinner());
        Bars {
            time: Some(time),
            counts: Some(counts),
            _multi: Some(multi),
        }
    }

    pub fn tick(&self, fleet: &Fleet) {
        let s = &fleet.stats;
        if let Some(t) = &self.time {
            t.set_position(t.elapsed().as_secs().min(t.length().unwrap_or(0)));
        }
        if let Some(c) = &self.counts {
            c.set_message(format!(
                "online {} · due {} · created {} · offers {} · assigned {} · completed {} · errors {}",
                s.online.load(Ordering::Relaxed),
                s.due.load(Ordering::Relaxed),
                s.created.load(Ordering::Relaxed),
                s.offers.load(Ordering::Relaxed),
                s.assigned.load(Ordering::Relaxed),
                s.completed.load(Ordering::Relaxed),
                s.error_frames.load(Ordering::Relaxed) + s.create_errors.load(Ordering::Relaxed),
            ));
        }
    }

    pub fn drain(&self, open: usize) {
        if let Some(c) = &self.counts {
            c.set_message(format!("draining: {open} request(s) still open"));
        }
    }

    pub fn finish(&self) {
        for b in [&self.time, &self.counts].into_iter().flatten() {
            b.finish_and_clear();
        }
    }
}

/// Latency percentiles in milliseconds (nearest rank, rounded to 0.1 ms).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub samples: usize,
}

pub fn percentiles(mut v: Vec<f64>) -> Percentiles {
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| -> f64 {
        if v.is_empty() {
            return 0.0;
        }
        let i = ((v.len() as f64 - 1.0) * q).round() as usize;
        round1(v[i])
    };
    Percentiles {
        p50: at(0.50),
        p99: at(0.99),
        p999: at(0.999),
        max: at(1.0),
        samples: v.len(),
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 {
        0.0
    } else {
        round3(a / b)
    }
}

/// The Gini coefficient of non-negative amounts (0: everyone earned the same; towards 1:
/// one earned everything). Workers who earned nothing count, as zeros.
pub fn gini(amounts: &[i64]) -> f64 {
    let mut v: Vec<i128> = amounts.iter().map(|a| (*a).max(0) as i128).collect();
    let n = v.len() as i128;
    let total: i128 = v.iter().sum();
    if n == 0 || total == 0 {
        return 0.0;
    }
    v.sort_unstable();
    // G = 2 Σ i·x_i / (n Σ x) − (n + 1) / n, with x ascending and i from 1 (exact in
    // integers up to the last division).
    let weighted: i128 = v.iter().zip(1..).map(|(x, i)| x * i).sum();
    let g = (2 * weighted - (n + 1) * total) as f64 / (n * total) as f64;
    round3(g)
}

fn unix_ms(at: std::time::SystemTime) -> u64 {
    at.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The run's summary (also the `--json` output).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub workers: usize,
    /// Workers the engine answered `go_online` for before customers started.
    pub online: usize,
    pub customers: usize,
    pub duration_s: f64,
    /// The leading part of the run left out of the rates and latencies.
    pub warmup_s: f64,
    /// The measured window (after the warm-up, until the last create was due) on the wall
    /// clock, Unix milliseconds: what `scripts/bench-e2e.sh` takes its steady-state CPU
    /// figures over, so the fleet's going online and the drain are not charged to requests.
    pub measured_from_unix_ms: u64,
    pub measured_until_unix_ms: u64,
    /// Creates per second due after the warm-up (the open-loop schedule).
    pub offered_per_second: f64,
    /// Creates per second answered, over the time from the warm-up's end to the last answer.
    pub achieved_per_second: f64,
    pub created: usize,
    /// Created after the warm-up: what the latencies describe.
    pub measured: usize,
    /// Booked ahead (their latencies wait for the slot, so they are not in the figures).
    pub booked: usize,
    pub assigned: usize,
    pub completed: usize,
    pub unassigned: usize,
    pub cancelled: usize,
    /// Still open when the drain ended.
    pub open: usize,
    /// Acknowledged creates neither ended nor under way when the drain ended (PENDING or
    /// OFFERING, or not read back at all): what a fault lost (the failover drill's `lost`).
    pub lost: usize,
    /// Measured requests wanted now whose offer never reached a worker (not cancelled by
    /// their customer): misses, in `create_to_offer_ms` at the time they had waited when
    /// the drain ended.
    pub never_offered: usize,
    /// From a create's due time to its first assignment confirmation at a worker (measured
    /// requests wanted now). In `--json` also under the simulator's first name for it,
    /// `time_to_assignment_ms`, for scripts written against that.
    #[serde(flatten, serialize_with = "under_both_names")]
    pub time_to_assign_ms: Percentiles,
    /// From a create's due time to its first offer frame at a worker, misses included.
    pub create_to_offer_ms: Percentiles,
    pub offer_to_accept_ms: Percentiles,
    /// Accepts over the offers the workers answered or left to expire (offers withdrawn
    /// before the worker answered are nobody's decision).
    pub acceptance_rate: f64,
    pub offers: u64,
    pub offers_per_second: f64,
    /// Offers received per assignment confirmed.
    pub offers_per_assignment: f64,
    /// Requests that ended with a worker (assigned, in progress or completed) over created.
    pub share_assigned: f64,
    /// `cancel_assignment` answered ok, and `assignment_revoked` no-shows.
    pub worker_cancellations: u64,
    pub no_shows: u64,
    /// No-shows revoked from a worker who meant to show up (see `Stats`).
    pub no_shows_while_keeping: u64,
    /// Mean `job.distanceMeters` of confirmed assignments.
    pub mean_distance_m: f64,
    /// Offers withdrawn (another worker took the job, or it expired) while still undecided.
    pub withdrawn_before_answer: u64,
    pub reminders: usize,
    pub location_updates: u64,
    pub reconnects: u64,
    pub errors: u64,
    pub error_codes: HashMap<String, u64>,
    /// Final status of every created request, as read back over GraphQL.
    #[serde(skip)]
    pub finals: HashMap<Uuid, String>,
}

impl Summary {
    pub fn build(
        fleet: &Fleet,
        finals: &HashMap<Uuid, String>,
        ran: Duration,
        ended: Instant,
        online: usize,
        started_wall: std::time::SystemTime,
    ) -> Summary {
        let s = &fleet.stats;
        let count = |wanted: &[&str]| {
            finals
                .values()
                .filter(|v| wanted.contains(&v.as_str()))
                .count()
        };
        let created = s.created_at.lock().unwrap().clone();
        let first_offer = s.first_offer_at.lock().unwrap().clone();
        let assigned_at = s.assigned_at.lock().unwrap().clone();
        let ms =
            |from: Instant, to: Instant| to.saturating_duration_since(from).as_secs_f64() * 1e3;
        let now_jobs = || created.iter().filter(|(_, c)| c.measured && !c.booked);
        let mut never_offered = 0;
        let mut to_offer = Vec::new();
        for (id, c) in now_jobs() {
            match first_offer.get(id) {
                Some(at) => to_offer.push(ms(c.intended, *at)),
                None if finals.get(id).map(String::as_str) == Some("CANCELLED") => {}
                None => {
                    never_offered += 1;
                    to_offer.push(ms(c.intended, ended));
                }
            }
        }
        let to_assign: Vec<f64> = now_jobs()
            .filter_map(|(id, c)| assigned_at.get(id).map(|at| ms(c.intended, *at)))
            .collect();

        let warmup = fleet.args.effective_warmup();
        // A run ended early (Ctrl-C) is measured over the time it ran.
        let window = (fleet.args.duration.min(ran).saturating_sub(warmup)).as_secs_f64();
        let measured: Vec<&Created> = created.values().filter(|c| c.measured).collect();
        let due_measured = (window * fleet.args.rate).ceil();
        let last_answer = measured.iter().map(|c| c.answered).max();
        let first_due = measured.iter().map(|c| c.intended).min();
        let achieved_window = match (first_due, last_answer) {
            (Some(a), Some(b)) => b.saturating_duration_since(a).as_secs_f64().max(window),
            _ => window,
        };

        let offers = s.offers.load(Ordering::Relaxed);
        let accepts = s.accepts_sent.load(Ordering::Relaxed);
        let decided =
            accepts + s.rejects_sent.load(Ordering::Relaxed) + s.ignored.load(Ordering::Relaxed);
        let confirmations = s.assigned.load(Ordering::Relaxed);
        let distances = s.assigned_distance_m.lock().unwrap().clone();
        let assigned = count(&["ASSIGNED", "IN_PROGRESS", "COMPLETED"]);
        let n_created = s.created.load(Ordering::Relaxed) as usize;
        Summary {
            workers: fleet.worker_ids.len(),
            online,
            customers: fleet.customer_ids.len(),
            duration_s: round1(ran.as_secs_f64()),
            warmup_s: round1(warmup.as_secs_f64()),
            measured_from_unix_ms: unix_ms(started_wall + warmup),
            measured_until_unix_ms: unix_ms(started_wall + fleet.args.duration.min(ran)),
            offered_per_second: ratio(due_measured, window),
            achieved_per_second: ratio(measured.len() as f64, achieved_window),
            created: n_created,
            measured: measured.len(),
            booked: created.values().filter(|c| c.booked).count(),
            assigned,
            completed: count(&["COMPLETED"]),
            unassigned: count(&["UNASSIGNED"]),
            cancelled: count(&["CANCELLED"]),
            open: count(&["SCHEDULED", "PENDING", "OFFERING"]),
            lost: count(&["PENDING", "OFFERING"])
                + created.keys().filter(|id| !finals.contains_key(id)).count(),
            never_offered,
            time_to_assign_ms: percentiles(to_assign),
            create_to_offer_ms: percentiles(to_offer),
            offer_to_accept_ms: percentiles(s.offer_to_accept_ms.lock().unwrap().clone()),
            acceptance_rate: ratio(accepts as f64, decided as f64),
            offers,
            offers_per_second: if ran.is_zero() {
                0.0
            } else {
                round1(offers as f64 / ran.as_secs_f64())
            },
            offers_per_assignment: ratio(offers as f64, confirmations as f64),
            share_assigned: ratio(assigned as f64, n_created as f64),
            worker_cancellations: s.worker_cancellations.load(Ordering::Relaxed),
            no_shows: s.no_shows.load(Ordering::Relaxed),
            no_shows_while_keeping: s.no_shows_while_keeping.load(Ordering::Relaxed),
            mean_distance_m: if distances.is_empty() {
                0.0
            } else {
                round1(distances.iter().sum::<f64>() / distances.len() as f64)
            },
            withdrawn_before_answer: s.withdrawn_before_answer.load(Ordering::Relaxed),
            reminders: s.reminded.lock().unwrap().len(),
            location_updates: s.locations.load(Ordering::Relaxed),
            reconnects: s.reconnects.load(Ordering::Relaxed),
            errors: s.error_frames.load(Ordering::Relaxed)
                + s.create_errors.load(Ordering::Relaxed),
            error_codes: s.error_codes.lock().unwrap().clone(),
            finals: finals.clone(),
        }
    }

    pub fn table(&self) -> String {
        format!(
            "simulation: {w} workers ({on} online), {c} customers, {d} s (warm-up {wu} s)\n\
             load       offered {ofr}/s  achieved {ach}/s\n\
             requests   created {cr}  assigned {a}  completed {co}  unassigned {u}  cancelled {ca}  still open {o}  never offered {no}  booked {bk}\n\
             assignment p50 {tp50} ms  p99 {tp99} ms   (create due → assignment confirmed)\n\
             first offer p50 {op50} ms  p99 {op99} ms  p99.9 {op999} ms  max {opmax} ms   (create due → offer frame at the worker)\n\
             offer→accept p50 {ap50} ms  p99 {ap99} ms\n\
             offers {of} ({ops}/s, {opa} per assignment)  acceptance {ar:.1} %  worker cancellations {wc}  no-shows {ns}  mean distance {md} m\n\
             locations {l}  reconnects {r}  errors {e} {codes:?}",
            w = self.workers,
            on = self.online,
            c = self.customers,
            d = self.duration_s,
            wu = self.warmup_s,
            ofr = self.offered_per_second,
            ach = self.achieved_per_second,
            cr = self.created,
            a = self.assigned,
            co = self.completed,
            u = self.unassigned,
            ca = self.cancelled,
            o = self.open,
            no = self.never_offered,
            bk = self.booked,
            tp50 = self.time_to_assign_ms.p50,
            tp99 = self.time_to_assign_ms.p99,
            op50 = self.create_to_offer_ms.p50,
            op99 = self.create_to_offer_ms.p99,
            op999 = self.create_to_offer_ms.p999,
            opmax = self.create_to_offer_ms.max,
            ap50 = self.offer_to_accept_ms.p50,
            ap99 = self.offer_to_accept_ms.p99,
            of = self.offers,
            ops = self.offers_per_second,
            opa = self.offers_per_assignment,
            ar = self.acceptance_rate * 100.0,
            wc = self.worker_cancellations,
            ns = self.no_shows,
            md = self.mean_distance_m,
            l = self.location_updates,
            r = self.reconnects,
            e = self.errors,
            codes = self.error_codes,
        )
    }
}

/// What the database says about the run's requests, beside the summary.
#[derive(Debug, Clone, Serialize)]
pub struct CrossCheck {
    pub ok: bool,
    pub by_status: HashMap<String, i64>,
    /// Requests whose outbox rows are not exactly one per version 1..=version.
    pub outbox_mismatches: i64,
    pub double_accepted: i64,
    pub problems: Vec<String>,
}

impl CrossCheck {
    pub fn table(&self) -> String {
        let mut statuses: Vec<_> = self.by_status.iter().collect();
        statuses.sort();
        format!(
            "cross-check {}: database by status {:?}; outbox mismatches {}; requests with two accepted offers {}{}",
            if self.ok { "OK" } else { "FAILED" },
            statuses,
            self.outbox_mismatches,
            self.double_accepted,
            if self.problems.is_empty() { String::new() } else { format!("\n  {}", self.problems.join("\n  ")) }
        )
    }
}

/// Compares the database with the summary: counts by status, one outbox row per
/// transition, no request with two accepted offers.
pub async fn cross_check(
    store: &Store,
    fleet: &Fleet,
    summary: &Summary,
) -> anyhow::Result<CrossCheck> {
    let ids: Vec<Uuid> = summary.finals.keys().copied().collect();
    let counts = store.fleet_counts(&fleet.customer_ids).await?;
    let (by_status, outbox_mismatches, double_accepted) = (
        counts.by_status,
        counts.outbox_mismatches,
        counts.double_accepted,
    );
    let mut problems = Vec::new();
    let db = |s: &str| by_status.get(s).copied().unwrap_or(0) as usize;
    let total: usize = by_status.values().map(|v| *v as usize).sum();
    if total != summary.created || ids.len() != summary.created {
        problems.push(format!(
            "created: summary {} vs database {} (read back {})",
            summary.created,
            total,
            ids.len()
        ));
    }
    for (name, summary_n, db_n) in [
        ("unassigned", summary.unassigned, db("UNASSIGNED")),
        ("cancelled", summary.cancelled, db("CANCELLED")),
        ("completed", summary.completed, db("COMPLETED")),
        (
            "assigned",
            summary.assigned,
            db("ASSIGNED") + db("IN_PROGRESS") + db("COMPLETED"),
        ),
    ] {
        if summary_n != db_n {
            problems.push(format!("{name}: summary {summary_n} vs database {db_n}"));
        }
    }
    if outbox_mismatches > 0 {
        problems.push(format!(
            "{outbox_mismatches} request(s) without exactly one outbox row per transition"
        ));
    }
    if double_accepted > 0 {
        problems.push(format!(
            "{double_accepted} request(s) with two accepted offers"
        ));
    }
    Ok(CrossCheck {
        ok: problems.is_empty(),
        by_status,
        outbox_mismatches,
        double_accepted,
        problems,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gini_is_zero_for_equal_earnings_and_grows_with_concentration() {
        assert_eq!(gini(&[]), 0.0);
        assert_eq!(gini(&[0, 0, 0]), 0.0);
        assert_eq!(gini(&[500, 500, 500, 500]), 0.0);
        // One of n earns everything: (n - 1) / n.
        assert_eq!(gini(&[0, 0, 0, 1_000]), 0.75);
        // 1, 2, 3, 4: mean absolute difference 1.25 over twice the mean 2.5.
        assert_eq!(gini(&[4, 1, 3, 2]), 0.25);
        assert!(gini(&[1, 1, 1, 10]) > gini(&[1, 2, 3, 4]));
        // Order does not matter, scale does not matter.
        assert_eq!(gini(&[10, 20, 30, 40]), gini(&[40, 30, 10, 20]));
        assert_eq!(gini(&[1_275_000, 2_550_000]), gini(&[1, 2]));
    }

    #[test]
    fn gini_counts_a_worker_who_earned_nothing() {
        assert!(gini(&[100, 100, 0]) > gini(&[100, 100]));
        assert_eq!(gini(&[100, 100]), 0.0);
    }

    #[test]
    fn percentiles_take_the_nearest_rank_and_the_maximum() {
        let p = percentiles((1..=1000).map(f64::from).collect());
        assert_eq!(
            (p.p50, p.p99, p.p999, p.max, p.samples),
            (501.0, 990.0, 999.0, 1000.0, 1000)
        );
        assert_eq!(percentiles(vec![]), Percentiles::default());
    }
}
