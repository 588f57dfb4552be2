//! `arreglame simulate --compare sequential,parallel,adaptive,ranked` (issue 15, item 5):
//! the same seeded scenario once per dispatch mode against one running engine, side by side.
//!
//! Fair by construction:
//! - each mode gets a fresh fleet (new worker and customer rows: no strikes, earnings or
//!   acceptance history carried from the mode before), with the same traits and starting
//!   positions per worker index, and the same requests (position, size, booked or not) per
//!   request index, due at the same offsets from the start;
//! - a worker's answer to request n is drawn from (seed, worker, n) (`behaviour.rs`), so
//!   where two modes offer the same request to the same worker, it answers the same way;
//! - a mode's fleet goes offline and its leftover requests are cancelled before the next
//!   mode starts, so no mode dispatches to or for another's;
//! - the scenario's timing settings are written once for all modes; only the mode's two
//!   keys change between runs. Everything is put back as it was at the end.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use serde::Serialize;

use super::{
    customer, provision,
    report::{cross_check, gini, CrossCheck},
    Fleet, SimArgs, Summary,
};
use crate::store::Store;

/// The engine reloads `system_config` on its NOTIFY within a second; this leaves margin.
const RELOAD_WAIT: Duration = Duration::from_secs(2);

/// A dispatch mode, as `system_config` selects it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// One offer at a time, nearest first (the engine's default).
    Sequential,
    /// `offer_batch_size` offers at once, nearest first; the first accept wins.
    Parallel,
    /// A batch widened until the chance of an accept reaches the target.
    Adaptive,
    /// One offer at a time, candidates scored (distance, acceptance, rating, strikes,
    /// fairness).
    Ranked,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Sequential => "sequential",
            Mode::Parallel => "parallel",
            Mode::Adaptive => "adaptive",
            Mode::Ranked => "ranked",
        }
    }

    /// The `system_config` rows that select the mode.
    pub fn settings(self) -> [(&'static str, &'static str); 2] {
        let (offer_mode, ranking) = match self {
            Mode::Sequential => ("sequential", "nearest"),
            Mode::Parallel => ("parallel", "nearest"),
            Mode::Adaptive => ("adaptive", "nearest"),
            Mode::Ranked => ("sequential", "scored"),
        };
        [("offer_mode", offer_mode), ("candidate_ranking", ranking)]
    }
}

/// The engine settings a scenario needs, the same for every mode: an offer timeout of
/// `--offer-timeout-seconds`, booked slots dispatched 10 s after their create and reminded
/// before their start, a short no-show grace, no travel buffer (the simulated city has no
/// traffic, and a 30 min buffer around 2 min slots would idle most of the fleet), and a
/// job wanted now assumed to last as long as a simulated one (the engine's 2 h default
/// would keep every worker holding a booking from any job wanted now).
pub fn scenario_settings(args: &SimArgs) -> Vec<(&'static str, String)> {
    let minutes = |seconds: f64| format!("{:.4}", seconds / 60.0);
    let lead = (args.slot_in_seconds - 10.0).max(args.slot_in_seconds / 2.0);
    let mut settings = vec![
        ("dispatch_lead_minutes", minutes(lead)),
        ("job_reminder_minutes", minutes(lead / 2.0)),
        ("no_show_grace_minutes", minutes(args.no_show_grace_seconds)),
        ("travel_buffer_minutes", "0".to_string()),
        ("immediate_job_minutes", minutes(args.job_seconds.max(1.0))),
    ];
    if args.offer_timeout_seconds > 0.0 {
        settings.push((
            "worker_timeout_minutes",
            minutes(args.offer_timeout_seconds),
        ));
    }
    settings
}

/// One mode's run.
#[derive(Debug, Clone, Serialize)]
pub struct ModeReport {
    pub mode: Mode,
    /// Gini coefficient of what the mode's workers earned (workerNetCents of completed
    /// jobs, every worker of the fleet counted, zeros included).
    pub earnings_gini: f64,
    /// `worker_cancellations + no_shows`, as the workers saw them.
    pub cancellations_and_no_shows: u64,
    /// The same, as `worker_strikes` recorded them.
    pub strikes_cancelled: i64,
    pub strikes_no_show: i64,
    /// Requests with two accepted offers in the database.
    pub double_assigned: i64,
    /// Against the first mode's run, when that is `sequential`.
    pub vs_sequential: Option<Versus>,
    pub check: CrossCheck,
    #[serde(flatten)]
    pub summary: Summary,
}

/// A mode's targets against sequential (issue 15): relative change of time-to-assign p50
/// and of cancellations plus no-shows (negative is better), and the Gini difference.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Versus {
    pub time_to_assign_p50_change: f64,
    pub cancellations_and_no_shows_change: f64,
    pub earnings_gini_change: f64,
}

impl Versus {
    fn of(mode: &ModeReport, base: &ModeReport) -> Versus {
        let change = |a: f64, b: f64| {
            if b == 0.0 {
                0.0
            } else {
                ((a - b) / b * 1000.0).round() / 1000.0
            }
        };
        Versus {
            time_to_assign_p50_change: change(
                mode.summary.time_to_assign_ms.p50,
                base.summary.time_to_assign_ms.p50,
            ),
            cancellations_and_no_shows_change: change(
                mode.cancellations_and_no_shows as f64,
                base.cancellations_and_no_shows as f64,
            ),
            earnings_gini_change: ((mode.earnings_gini - base.earnings_gini) * 1000.0).round()
                / 1000.0,
        }
    }
}

/// The whole comparison (the `--json` output).
#[derive(Debug, Clone, Serialize)]
pub struct CompareReport {
    pub seed: u64,
    /// The `system_config` values every mode ran with (besides the mode's own two).
    pub scenario: BTreeMap<String, String>,
    pub modes: Vec<ModeReport>,
}

/// Runs the scenario once per mode in `args.compare`, then restores `system_config`.
pub async fn compare(
    store: &Store,
    args: &SimArgs,
    jwt_secret: &str,
    progress: bool,
) -> anyhow::Result<CompareReport> {
    let scenario = scenario_settings(args);
    let mut all: Vec<(&str, &str)> = scenario.iter().map(|(k, v)| (*k, v.as_str())).collect();
    all.extend(Mode::Sequential.settings());
    // The values before the comparison, for every key any mode writes.
    let previous = store.set_system_config(&all).await?;
    let outcome = run_modes(store, args, jwt_secret, progress).await;
    let restored = store.restore_system_config(&previous).await;
    let modes = outcome?;
    restored?;
    Ok(CompareReport {
        seed: args.seed,
        scenario: scenario
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        modes,
    })
}

async fn run_modes(
    store: &Store,
    args: &SimArgs,
    jwt_secret: &str,
    progress: bool,
) -> anyhow::Result<Vec<ModeReport>> {
    let mut modes: Vec<ModeReport> = Vec::new();
    for mode in &args.compare {
        store.set_system_config(&mode.settings()).await?;
        tokio::time::sleep(RELOAD_WAIT).await;
        if progress {
            eprintln!("== mode {}", mode.name());
        }
        let fleet = Arc::new(provision(store, args, jwt_secret).await?);
        let summary = fleet.clone().run(progress).await?;
        let finals = summary.finals.clone();
        let mut report = mode_report(store, &fleet, *mode, summary).await?;
        // Nothing of this mode may be dispatched during the next one (after the
        // cross-check, which compares the run as it ended).
        customer::cancel_open(&fleet, &finals).await;
        if let Some(base) = modes.first().filter(|m| m.mode == Mode::Sequential) {
            report.vs_sequential = Some(Versus::of(&report, base));
        }
        modes.push(report);
    }
    Ok(modes)
}

async fn mode_report(
    store: &Store,
    fleet: &Fleet,
    mode: Mode,
    summary: Summary,
) -> anyhow::Result<ModeReport> {
    let check = cross_check(store, fleet, &summary).await?;
    let earnings: Vec<i64> = store
        .fleet_earnings(&fleet.worker_ids, &fleet.customer_ids)
        .await?
        .into_iter()
        .map(|(_, cents)| cents)
        .collect();
    let (strikes_cancelled, strikes_no_show) = store.fleet_strikes(&fleet.worker_ids).await?;
    Ok(ModeReport {
        mode,
        earnings_gini: gini(&earnings),
        cancellations_and_no_shows: summary.worker_cancellations + summary.no_shows,
        strikes_cancelled,
        strikes_no_show,
        double_assigned: check.double_accepted,
        vs_sequential: None,
        check,
        summary,
    })
}

fn pct(x: f64) -> String {
    format!("{:+.0} %", x * 100.0)
}

impl CompareReport {
    /// The modes side by side: one row per figure, one column per mode.
    pub fn table(&self) -> String {
        type Cell = fn(&ModeReport) -> String;
        let rows: Vec<(&str, Cell)> = vec![
            ("created", |m| m.summary.created.to_string()),
            ("time to assign p50 (ms)", |m| {
                m.summary.time_to_assign_ms.p50.to_string()
            }),
            ("time to assign p99 (ms)", |m| {
                m.summary.time_to_assign_ms.p99.to_string()
            }),
            ("offers per assignment", |m| {
                m.summary.offers_per_assignment.to_string()
            }),
            ("acceptance rate", |m| {
                format!("{:.1} %", m.summary.acceptance_rate * 100.0)
            }),
            ("share assigned", |m| {
                format!("{:.1} %", m.summary.share_assigned * 100.0)
            }),
            ("never offered", |m| m.summary.never_offered.to_string()),
            ("worker cancellations", |m| {
                m.summary.worker_cancellations.to_string()
            }),
            ("no-shows", |m| m.summary.no_shows.to_string()),
            ("  of them meant to show", |m| {
                m.summary.no_shows_while_keeping.to_string()
            }),
            ("strikes in db (cancel/no-show)", |m| {
                format!("{}/{}", m.strikes_cancelled, m.strikes_no_show)
            }),
            ("mean distance (m)", |m| {
                m.summary.mean_distance_m.to_string()
            }),
            ("earnings Gini", |m| format!("{:.3}", m.earnings_gini)),
            ("double assignments", |m| m.double_assigned.to_string()),
            ("cross-check", |m| {
                if m.check.ok {
                    "OK".into()
                } else {
                    "FAILED".into()
                }
            }),
        ];
        let width = 32;
        let mut out = format!("{:width$}", format!("seed {}", self.seed));
        for m in &self.modes {
            out += &format!("{:>12}", m.mode.name());
        }
        for (label, cell) in rows {
            out += &format!("\n{label:width$}");
            for m in &self.modes {
                out += &format!("{:>12}", cell(m));
            }
        }
        type Delta = fn(&Versus) -> String;
        let versus: [(&str, Delta); 3] = [
            ("Δ time to assign p50", |v| pct(v.time_to_assign_p50_change)),
            ("Δ cancellations + no-shows", |v| {
                pct(v.cancellations_and_no_shows_change)
            }),
            ("Δ earnings Gini", |v| {
                format!("{:+.3}", v.earnings_gini_change)
            }),
        ];
        for (label, delta) in versus {
            out += &format!("\n{label:width$}");
            for m in &self.modes {
                out += &format!(
                    "{:>12}",
                    m.vs_sequential.as_ref().map(delta).unwrap_or_default()
                );
            }
        }
        out
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_mode_selects_its_offer_mode_and_ranking() {
        assert_eq!(
            Mode::Ranked.settings(),
            [
                ("offer_mode", "sequential"),
                ("candidate_ranking", "scored")
            ]
        );
        assert_eq!(Mode::Adaptive.settings()[0], ("offer_mode", "adaptive"));
        for mode in [Mode::Sequential, Mode::Parallel, Mode::Adaptive] {
            assert_eq!(mode.settings()[1], ("candidate_ranking", "nearest"));
        }
    }

    #[test]
    fn booked_slots_dispatch_ten_seconds_after_their_create() {
        let args = SimArgs {
            slot_in_seconds: 40.0,
            offer_timeout_seconds: 6.0,
            ..SimArgs::default()
        };
        let s = scenario_settings(&args);
        let get = |k: &str| s.iter().find(|(key, _)| *key == k).map(|(_, v)| v.clone());
        assert_eq!(get("dispatch_lead_minutes").as_deref(), Some("0.5000"));
        assert_eq!(get("worker_timeout_minutes").as_deref(), Some("0.1000"));
        assert_eq!(get("travel_buffer_minutes").as_deref(), Some("0"));
    }
}
