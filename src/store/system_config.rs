//! Run-time settings from `system_config`. The guide tells operators to restart after an
//! UPDATE; the engine does better: a trigger announces every change (`pg_notify`), a
//! listener reloads and logs what changed, and a slow periodic reload covers a missed
//! notification. Readers hold a `watch` receiver and always see a whole, valid snapshot.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use sqlx::postgres::PgListener;
use tokio::sync::watch;

use super::Store;
use crate::domain::{Ratio, RolloutPercentage};

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
    pub ai_multiplier_min: Ratio,
    pub ai_multiplier_max: Ratio,
    pub max_square_meters: f64,
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
            ai_multiplier_min: Ratio(500_000),
            ai_multiplier_max: Ratio(3_000_000),
            max_square_meters: 100_000.0,
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
