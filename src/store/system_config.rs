//! Run-time settings from `system_config`. The guide tells operators to restart after an
//! UPDATE; the engine does better: a trigger announces every change (`pg_notify`), a
//! listener reloads and logs what changed, and a slow periodic reload covers a missed
//! notification. Readers hold a `watch` receiver and always see a whole, valid snapshot.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use sqlx::postgres::PgListener;
use tokio::sync::watch;

use super::Store;
use crate::domain::{
    offer_policy::{CandidateRanking, OfferMode, RankingWeights},
    Ratio, RolloutPercentage,
};

/// Typed view of `system_config`. A missing or invalid value keeps its default (or, on a
/// reload, its previous value) and is logged, so a typo in an UPDATE never stops dispatch.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub worker_timeout: Duration,
    pub cancellation_window: Duration,
    pub commission: Ratio,
    pub max_assignment_attempts: u32,
    /// Search radii, ascending, in metres.
    pub search_radius_steps_m: Vec<u32>,
    pub candidates_per_search: usize,
    pub late_cancellation_fee: Ratio,
    pub worker_assignment_cron: String,
    pub payout_release_cron: String,
    pub payout_release_batch_size: i64,
    pub outbox_batch_size: i64,
    pub outbox_max_attempts: i32,
    /// How long the relay lets a light trickle of commits gather before it claims
    /// (`outbox_linger_ms`; 0 claims at once). Skipped while it is behind (full batches).
    pub outbox_linger: Duration,
    pub ai_multiplier_min: Ratio,
    pub ai_multiplier_max: Ratio,
    pub max_square_meters: f64,
    /// How many workers an offer goes to at once (`offer_mode`).
    pub offer_mode: OfferMode,
    /// Width of a batch in `parallel` mode.
    pub offer_batch_size: usize,
    /// `adaptive` mode widens a batch until one accept is at least this likely.
    pub adaptive_target_accept_probability: f64,
    /// The widest batch `adaptive` mode makes.
    pub adaptive_max_batch_size: usize,
    pub candidate_ranking: CandidateRanking,
    pub ranking_weights: RankingWeights,
    /// A scored ranking searches the first radius step with at least this many candidates.
    pub ranking_min_candidates: usize,
    /// A booked request dispatches this long before its slot starts.
    pub dispatch_lead: Duration,
    /// Kept free around a worker's booked jobs when offering another one.
    pub travel_buffer: Duration,
    /// A worker who has not started this long after the slot start is a no-show.
    pub no_show_grace: Duration,
    /// The assigned worker's `job_reminder` goes out this long before the slot.
    pub job_reminder_before: Duration,
    pub max_slot: Duration,
    pub booking_horizon: Duration,
    /// How long a "now" job is assumed to occupy a worker, for the overlap check with
    /// their booked jobs.
    pub immediate_job_duration: Duration,
    /// The share of requests this engine dispatches (the guide's gradual rollout).
    pub dispatch_rollout: RolloutPercentage,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            worker_timeout: Duration::from_secs(5 * 60),
            cancellation_window: Duration::from_secs(24 * 3600),
            commission: Ratio(150_000),
            max_assignment_attempts: 5,
            search_radius_steps_m: vec![2_000, 5_000, 10_000, 20_000],
            candidates_per_search: 10,
            late_cancellation_fee: Ratio(100_000),
            worker_assignment_cron: "* * * * *".into(),
            payout_release_cron: "* * * * *".into(),
            payout_release_batch_size: 100,
            outbox_batch_size: 500,
            outbox_max_attempts: 10,
            outbox_linger: Duration::from_millis(200),
            ai_multiplier_min: Ratio(500_000),
            ai_multiplier_max: Ratio(3_000_000),
            max_square_meters: 100_000.0,
            offer_mode: OfferMode::Sequential,
            offer_batch_size: 3,
            adaptive_target_accept_probability: 0.9,
            adaptive_max_batch_size: 6,
            candidate_ranking: CandidateRanking::Nearest,
            ranking_weights: RankingWeights::default(),
            ranking_min_candidates: 3,
            dispatch_lead: Duration::from_secs(900 * 60),
            travel_buffer: Duration::from_secs(30 * 60),
            no_show_grace: Duration::from_secs(15 * 60),
            job_reminder_before: Duration::from_secs(60 * 60),
            max_slot: Duration::from_secs(8 * 3600),
            booking_horizon: Duration::from_secs(30 * 24 * 3600),
            immediate_job_duration: Duration::from_secs(120 * 60),
            dispatch_rollout: RolloutPercentage::ALL,
        }
    }
}

/// Receives the current settings; `borrow()` is cheap.
pub type SettingsWatch = watch::Receiver<Arc<Settings>>;

impl Settings {
    /// Builds settings from raw rows on top of `base`; returns the problems found.
    pub fn from_rows(base: &Settings, rows: &BTreeMap<String, String>) -> (Settings, Vec<String>) {
        let mut s = base.clone();
        let mut problems = Vec::new();
        for (key, value) in rows {
            if let Err(reason) = s.apply(key, value) {
                problems.push(format!("system_config {key}={value:?} ignored: {reason}"));
            }
        }
        (s, problems)
    }

    fn apply(&mut self, key: &str, value: &str) -> Result<(), String> {
        let v = value.trim();
        match key {
            "worker_timeout_minutes" => self.worker_timeout = positive_minutes(v)?,
            "cancellation_window_hours" => {
                let hours = parse_non_negative(v)?;
                self.cancellation_window = Duration::from_secs_f64(hours * 3600.0);
            }
            "commission_percentage" => self.commission = fraction(v)?,
            "late_cancellation_fee_percentage" => self.late_cancellation_fee = fraction(v)?,
            "max_assignment_attempts" => self.max_assignment_attempts = positive_int(v)? as u32,
            "candidates_per_search" => self.candidates_per_search = positive_int(v)? as usize,
            "search_radius_steps_km" => {
                let mut steps = v
                    .split(',')
                    .map(|p| parse_non_negative(p.trim()).map(|km| (km * 1000.0).round() as u32))
                    .collect::<Result<Vec<_>, _>>()?;
                steps.retain(|m| *m > 0);
                steps.sort_unstable();
                steps.dedup();
                if steps.is_empty() {
                    return Err("expected comma-separated positive kilometres, e.g. 2,5,10".into());
                }
                self.search_radius_steps_m = steps;
            }
            "worker_assignment_cron" => self.worker_assignment_cron = cron(v)?,
            "payout_release_cron" => self.payout_release_cron = cron(v)?,
            "payout_release_batch_size" => self.payout_release_batch_size = positive_int(v)?,
            "outbox_batch_size" => self.outbox_batch_size = positive_int(v)?,
            "outbox_max_attempts" => self.outbox_max_attempts = positive_int(v)? as i32,
            "outbox_linger_ms" => {
                let ms = parse_non_negative(v)?;
                if ms > 10_000.0 {
                    return Err("expected milliseconds from 0 to 10000".into());
                }
                self.outbox_linger = Duration::from_secs_f64(ms / 1000.0);
            }
            "ai_multiplier_min" => {
                self.ai_multiplier_min = Ratio::parse(v).map_err(|e| e.to_string())?
            }
            "ai_multiplier_max" => {
                self.ai_multiplier_max = Ratio::parse(v).map_err(|e| e.to_string())?
            }
            "max_square_meters" => {
                let m = parse_non_negative(v)?;
                if m == 0.0 {
                    return Err("must be positive".into());
                }
                self.max_square_meters = m;
            }
            "offer_mode" => {
                self.offer_mode =
                    OfferMode::parse(v).ok_or("expected sequential, parallel or adaptive")?
            }
            "offer_batch_size" => self.offer_batch_size = batch_size(v)?,
            "adaptive_max_batch_size" => self.adaptive_max_batch_size = batch_size(v)?,
            "adaptive_target_accept_probability" => {
                let p = parse_non_negative(v)?;
                if p <= 0.0 || p >= 1.0 {
                    return Err("expected a probability strictly between 0 and 1".into());
                }
                self.adaptive_target_accept_probability = p;
            }
            "candidate_ranking" => {
                self.candidate_ranking =
                    CandidateRanking::parse(v).ok_or("expected nearest or scored")?
            }
            "ranking_weight_distance" => self.ranking_weights.distance = parse_non_negative(v)?,
            "ranking_weight_acceptance" => self.ranking_weights.acceptance = parse_non_negative(v)?,
            "ranking_weight_rating" => self.ranking_weights.rating = parse_non_negative(v)?,
            "ranking_weight_reliability" => {
                self.ranking_weights.reliability = parse_non_negative(v)?
            }
            "ranking_weight_fairness" => self.ranking_weights.fairness = parse_non_negative(v)?,
            "ranking_min_candidates" => {
                let n = positive_int(v)?;
                if n > 50 {
                    return Err("expected 1 to 50".into());
                }
                self.ranking_min_candidates = n as usize;
            }
            "dispatch_lead_minutes" => self.dispatch_lead = minutes(v, 60.0 * 24.0 * 60.0)?,
            "travel_buffer_minutes" => self.travel_buffer = minutes(v, 24.0 * 60.0)?,
            "no_show_grace_minutes" => self.no_show_grace = positive_minutes(v)?,
            "job_reminder_minutes" => self.job_reminder_before = minutes(v, 7.0 * 24.0 * 60.0)?,
            "immediate_job_minutes" => self.immediate_job_duration = positive_minutes(v)?,
            "max_slot_hours" => {
                let hours = parse_non_negative(v)?;
                if hours == 0.0 || hours > 24.0 * 7.0 {
                    return Err("expected hours between 0 and 168".into());
                }
                self.max_slot = Duration::from_secs_f64(hours * 3600.0);
            }
            "booking_horizon_days" => {
                let days = parse_non_negative(v)?;
                if days == 0.0 || days > 366.0 {
                    return Err("expected days between 0 and 366".into());
                }
                self.booking_horizon = Duration::from_secs_f64(days * 24.0 * 3600.0);
            }
            "dispatch_rollout_percentage" => self.dispatch_rollout = rollout_percentage(v)?,
            _ => {} // Keys of other components (or of the old system) are not ours to judge.
        }
        Ok(())
    }

    /// Names of the settings that differ between two snapshots, for the change log line.
    pub fn diff(&self, other: &Settings) -> Vec<String> {
        let a = format!("{self:#?}");
        let b = format!("{other:#?}");
        a.lines()
            .zip(b.lines())
            .filter(|(x, y)| x != y)
            .map(|(_, y)| y.trim().trim_end_matches(',').to_string())
            .collect()
    }
}

fn parse_non_negative(v: &str) -> Result<f64, String> {
    match v.parse::<f64>() {
        Ok(n) if n.is_finite() && n >= 0.0 => Ok(n),
        _ => Err("expected a non-negative number".into()),
    }
}

fn positive_minutes(v: &str) -> Result<Duration, String> {
    let minutes = parse_non_negative(v)?;
    if minutes == 0.0 || minutes > 24.0 * 60.0 {
        return Err("expected minutes between 0 and 1440 (fractions allowed)".into());
    }
    Ok(Duration::from_secs_f64(minutes * 60.0))
}

/// Minutes from 0 (inclusive) up to `max`, fractions allowed.
fn minutes(v: &str, max: f64) -> Result<Duration, String> {
    let m = parse_non_negative(v)?;
    if m > max {
        return Err(format!("expected at most {max} minutes"));
    }
    Ok(Duration::from_secs_f64(m * 60.0))
}

fn batch_size(v: &str) -> Result<usize, String> {
    match v.parse::<usize>() {
        Ok(n) if (1..=50).contains(&n) => Ok(n),
        _ => Err("expected a whole number of workers from 1 to 50".into()),
    }
}

fn positive_int(v: &str) -> Result<i64, String> {
    match v.parse::<i64>() {
        Ok(n) if n > 0 && n <= 1_000_000 => Ok(n),
        _ => Err("expected a positive integer".into()),
    }
}

fn fraction(v: &str) -> Result<Ratio, String> {
    let r = Ratio::parse(v).map_err(|e| e.to_string())?;
    if r > Ratio::ONE {
        return Err("expected a fraction between 0.0 and 1.0".into());
    }
    Ok(r)
}

fn rollout_percentage(v: &str) -> Result<RolloutPercentage, String> {
    v.parse::<u8>()
        .ok()
        .and_then(RolloutPercentage::new)
        .ok_or_else(|| "expected a whole percentage between 0 and 100".into())
}

fn cron(v: &str) -> Result<String, String> {
    crate::domain::schedule::parse(v).map_err(|e| e.to_string())?;
    Ok(v.to_string())
}

impl Store {
    pub async fn system_config_rows(&self) -> Result<BTreeMap<String, String>, sqlx::Error> {
        let rows: Vec<(String, String)> = sqlx::query_as("select key, value from system_config")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().collect())
    }

    /// Loads settings once and keeps them fresh in the background until `shutdown` fires.
    pub async fn watch_settings(
        &self,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(SettingsWatch, tokio::task::JoinHandle<()>), sqlx::Error> {
        let (settings, problems) =
            Settings::from_rows(&Settings::default(), &self.system_config_rows().await?);
        for p in problems {
            tracing::warn!(target: "SystemConfig", "{p}");
        }
        let (tx, rx) = watch::channel(Arc::new(settings));
        let store = self.clone();
        let task = tokio::spawn(async move {
            let mut listener = PgListener::connect_with(&store.pool).await.ok();
            if let Some(l) = listener.as_mut() {
                if let Err(e) = l.listen("system_config_changed").await {
                    tracing::warn!(target: "SystemConfig", error = %e, "LISTEN failed; relying on periodic reload");
                    listener = None;
                }
            }
            let mut periodic = tokio::time::interval(Duration::from_secs(30));
            periodic.tick().await;
            loop {
                tokio::select! {
                    _ = shutdown.changed() => break,
                    _ = periodic.tick() => {}
                    note = async {
                        match listener.as_mut() {
                            Some(l) => l.recv().await.map(|_| ()),
                            None => std::future::pending().await,
                        }
                    } => {
                        if let Err(e) = note {
                            tracing::warn!(target: "SystemConfig", error = %e, "config listener lost; reconnecting on next change");
                        }
                    }
                }
                store.reload_settings(&tx).await;
            }
        });
        Ok((rx, task))
    }

    /// Re-reads `system_config` and publishes the new snapshot when something changed.
    pub async fn reload_settings(&self, tx: &watch::Sender<Arc<Settings>>) {
        let rows = match self.system_config_rows().await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(target: "SystemConfig", error = %e, "reload failed; keeping current settings");
                return;
            }
        };
        let current = tx.borrow().clone();
        let (next, problems) = Settings::from_rows(&current, &rows);
        for p in problems {
            tracing::warn!(target: "SystemConfig", "{p}");
        }
        if next != *current {
            tracing::info!(target: "SystemConfig", changed = ?current.diff(&next), "[SystemConfig] configuration reloaded");
            let _ = tx.send(Arc::new(next));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_guides_tuning_values_are_understood() {
        let (s, problems) = Settings::from_rows(
            &Settings::default(),
            &rows(&[
                ("worker_timeout_minutes", "20"),
                ("cancellation_window_hours", "48"),
                ("commission_percentage", "0.20"),
                ("search_radius_steps_km", "10, 2.5,5"),
            ]),
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(s.worker_timeout, Duration::from_secs(1200));
        assert_eq!(s.cancellation_window, Duration::from_secs(48 * 3600));
        assert_eq!(s.commission, Ratio(200_000));
        assert_eq!(s.search_radius_steps_m, vec![2500, 5000, 10000]);
    }

    #[test]
    fn fractional_minutes_and_both_cron_forms_are_accepted() {
        let (s, problems) = Settings::from_rows(
            &Settings::default(),
            &rows(&[
                ("worker_timeout_minutes", "0.5"),
                ("worker_assignment_cron", "*/30 * * * * *"),
                ("payout_release_cron", "*/5 * * * *"),
            ]),
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(s.worker_timeout, Duration::from_secs(30));
        assert_eq!(s.worker_assignment_cron, "*/30 * * * * *");
    }

    #[test]
    fn the_relay_linger_takes_milliseconds_zero_included() {
        let (s, problems) =
            Settings::from_rows(&Settings::default(), &rows(&[("outbox_linger_ms", "0")]));
        assert!(problems.is_empty(), "{problems:?}");
        assert!(s.outbox_linger.is_zero());
        let (s, _) =
            Settings::from_rows(&Settings::default(), &rows(&[("outbox_linger_ms", "12.5")]));
        assert_eq!(s.outbox_linger, Duration::from_micros(12_500));
        for bad in ["-1", "20000", "soon"] {
            let (s, problems) =
                Settings::from_rows(&Settings::default(), &rows(&[("outbox_linger_ms", bad)]));
            assert_eq!(problems.len(), 1, "{bad}");
            assert_eq!(s.outbox_linger, Duration::from_millis(200));
        }
    }

    #[test]
    fn bad_values_keep_the_previous_value_and_are_reported() {
        let base = Settings::default();
        let (s, problems) = Settings::from_rows(
            &base,
            &rows(&[
                ("worker_timeout_minutes", "-1"),
                ("commission_percentage", "1.5"),
                ("worker_assignment_cron", "every minute"),
            ]),
        );
        assert_eq!(s, base);
        assert_eq!(problems.len(), 3, "{problems:?}");
        let changed = base.diff(&Settings {
            max_assignment_attempts: 9,
            ..base.clone()
        });
        assert_eq!(changed, vec!["max_assignment_attempts: 9".to_string()]);
    }

    #[test]
    fn home_services_dispatch_settings_are_understood_and_checked() {
        let (s, problems) = Settings::from_rows(
            &Settings::default(),
            &rows(&[
                ("offer_mode", "adaptive"),
                ("offer_batch_size", "4"),
                ("adaptive_target_accept_probability", "0.95"),
                ("candidate_ranking", "scored"),
                ("ranking_weight_reliability", "0.5"),
                ("ranking_min_candidates", "4"),
                ("dispatch_lead_minutes", "1440"),
                ("travel_buffer_minutes", "45"),
                ("no_show_grace_minutes", "0.1"),
                ("max_slot_hours", "4"),
                ("booking_horizon_days", "14"),
            ]),
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(s.offer_mode, OfferMode::Adaptive);
        assert_eq!(s.offer_batch_size, 4);
        assert_eq!(s.candidate_ranking, CandidateRanking::Scored);
        assert_eq!(s.ranking_weights.reliability, 0.5);
        assert_eq!(s.ranking_min_candidates, 4);
        assert_eq!(s.dispatch_lead, Duration::from_secs(24 * 3600));
        assert_eq!(s.no_show_grace, Duration::from_secs(6));
        assert_eq!(s.booking_horizon, Duration::from_secs(14 * 24 * 3600));
        let (kept, problems) = Settings::from_rows(
            &s,
            &rows(&[
                ("offer_mode", "broadcast"),
                ("offer_batch_size", "0"),
                ("adaptive_target_accept_probability", "1"),
                ("candidate_ranking", "random"),
                ("ranking_min_candidates", "0"),
            ]),
        );
        assert_eq!(kept, s);
        assert_eq!(problems.len(), 5, "{problems:?}");
    }
}

#[cfg(test)]
mod rollout_tests {
    use super::*;

    #[test]
    fn the_rollout_percentage_is_a_whole_number_from_0_to_100() {
        let one = |v: &str| {
            let rows = BTreeMap::from([("dispatch_rollout_percentage".to_string(), v.to_string())]);
            Settings::from_rows(&Settings::default(), &rows)
        };
        let (s, problems) = one(" 10 ");
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(s.dispatch_rollout.percent(), 10);
        assert_eq!(one("0").0.dispatch_rollout.percent(), 0);
        for bad in ["101", "-1", "10.5", "ten"] {
            let (s, problems) = one(bad);
            assert_eq!(problems.len(), 1, "{bad}");
            assert_eq!(
                s.dispatch_rollout,
                RolloutPercentage::ALL,
                "{bad} keeps the default"
            );
        }
    }
}
