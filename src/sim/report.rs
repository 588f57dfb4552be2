//! Progress bars while the fleet runs, the summary, and the database cross-check.

use std::{collections::HashMap, sync::atomic::Ordering, time::Duration};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde::Serialize;
use uuid::Uuid;

use super::Fleet;
use crate::store::Store;

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
                "online {} · created {} · offers {} · assigned {} · completed {} · errors {}",
                s.connected.load(Ordering::Relaxed),
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

#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p99: f64,
    pub samples: usize,
}

fn percentiles(mut v: Vec<f64>) -> Percentiles {
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| -> f64 {
        if v.is_empty() {
            return 0.0;
        }
        let i = ((v.len() as f64 - 1.0) * q).round() as usize;
        (v[i] * 10.0).round() / 10.0
    };
    Percentiles {
        p50: at(0.50),
        p99: at(0.99),
        samples: v.len(),
    }
}

/// The run's summary (also the `--json` output).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub workers: usize,
    pub customers: usize,
    pub duration_s: f64,
    pub created: usize,
    pub assigned: usize,
    pub completed: usize,
    pub unassigned: usize,
    pub cancelled: usize,
    /// Still open when the drain ended.
    pub open: usize,
    pub time_to_assign_ms: Percentiles,
    /// From the create mutation being sent to the first offer frame at a worker.
    pub create_to_offer_ms: Percentiles,
    pub offer_to_accept_ms: Percentiles,
    pub acceptance_rate: f64,
    pub offers: u64,
    pub offers_per_second: f64,
    pub location_updates: u64,
    pub reconnects: u64,
    pub errors: u64,
    pub error_codes: HashMap<String, u64>,
    /// Final status of every created request, as read back over GraphQL.
    #[serde(skip)]
    pub finals: HashMap<Uuid, String>,
}

impl Summary {
    pub fn build(fleet: &Fleet, finals: &HashMap<Uuid, String>, ran: Duration) -> Summary {
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
        let since_sent = |at: &HashMap<Uuid, std::time::Instant>| -> Vec<f64> {
            at.iter()
                .filter_map(|(id, t)| {
                    created
                        .get(id)
                        .map(|(sent, _)| t.saturating_duration_since(*sent).as_secs_f64() * 1000.0)
                })
                .collect()
        };
        let offers = s.offers.load(Ordering::Relaxed);
        let accepts = s.accepts_sent.load(Ordering::Relaxed);
        Summary {
            workers: fleet.worker_ids.len(),
            customers: fleet.customer_ids.len(),
            duration_s: (ran.as_secs_f64() * 10.0).round() / 10.0,
            created: s.created.load(Ordering::Relaxed) as usize,
            assigned: count(&["ASSIGNED", "IN_PROGRESS", "COMPLETED"]),
            completed: count(&["COMPLETED"]),
            unassigned: count(&["UNASSIGNED"]),
            cancelled: count(&["CANCELLED"]),
            open: count(&["PENDING", "OFFERING"]),
            time_to_assign_ms: percentiles(since_sent(&assigned_at)),
            create_to_offer_ms: percentiles(since_sent(&first_offer)),
            offer_to_accept_ms: percentiles(s.offer_to_accept_ms.lock().unwrap().clone()),
            acceptance_rate: if offers == 0 {
                0.0
            } else {
                ((accepts as f64 / offers as f64) * 1000.0).round() / 1000.0
            },
            offers,
            offers_per_second: if ran.is_zero() {
                0.0
            } else {
                ((offers as f64 / ran.as_secs_f64()) * 10.0).round() / 10.0
            },
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
            "simulation: {w} workers, {c} customers, {d} s\n\
             requests   created {cr}  assigned {a}  completed {co}  unassigned {u}  cancelled {ca}  still open {o}\n\
             assignment p50 {tp50} ms  p99 {tp99} ms   (create sent → assignment confirmed)\n\
             first offer p50 {op50} ms  p99 {op99} ms   (create sent → offer frame at the worker)\n\
             offer→accept p50 {ap50} ms  p99 {ap99} ms\n\
             offers {of} ({ops}/s)  acceptance {ar:.1} %  locations {l}  reconnects {r}  errors {e} {codes:?}",
            w = self.workers,
            c = self.customers,
            d = self.duration_s,
            cr = self.created,
            a = self.assigned,
            co = self.completed,
            u = self.unassigned,
            ca = self.cancelled,
            o = self.open,
            tp50 = self.time_to_assign_ms.p50,
            tp99 = self.time_to_assign_ms.p99,
            op50 = self.create_to_offer_ms.p50,
            op99 = self.create_to_offer_ms.p99,
            ap50 = self.offer_to_accept_ms.p50,
            ap99 = self.offer_to_accept_ms.p99,
            of = self.offers,
            ops = self.offers_per_second,
            ar = self.acceptance_rate * 100.0,
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
