//! Cron schedules in both forms the guide shows: five fields (`*/5 * * * *`, minute
//! resolution) and six fields with seconds first (`*/30 * * * * *`).

use chrono::{DateTime, Utc};
use croner::Cron;

#[derive(Debug, thiserror::Error)]
#[error("invalid cron expression {expr:?}: {reason}")]
pub struct ScheduleError {
    expr: String,
    reason: String,
}

/// A parsed schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    expr: String,
}

pub fn parse(expr: &str) -> Result<Schedule, ScheduleError> {
    let fields = expr.split_whitespace().count();
    if !(fields == 5 || fields == 6) {
        return Err(ScheduleError {
            expr: expr.into(),
            reason: format!("expected 5 or 6 fields, found {fields}"),
        });
    }
    let cron = Cron::new(expr)
        .with_seconds_optional()
        .parse()
        .map_err(|e| ScheduleError {
            expr: expr.into(),
            reason: e.to_string(),
        })?;
    Ok(Schedule {
        cron,
        expr: expr.to_string(),
    })
}

impl Schedule {
    /// The first run strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron.find_next_occurrence(&after, false).ok()
    }

    pub fn expr(&self) -> &str {
        &self.expr
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn both_cron_forms_of_the_guide_parse_and_step_as_expected() {
        let t = Utc.with_ymd_and_hms(2026, 11, 24, 10, 2, 10).unwrap();
        let every_5_min = parse("*/5 * * * *").unwrap();
        assert_eq!(
            every_5_min.next_after(t),
            Some(Utc.with_ymd_and_hms(2026, 11, 24, 10, 5, 0).unwrap())
        );
        let every_30_s = parse("*/30 * * * * *").unwrap();
        assert_eq!(
            every_30_s.next_after(t),
            Some(Utc.with_ymd_and_hms(2026, 11, 24, 10, 2, 30).unwrap())
        );
        let every_minute = parse("* * * * *").unwrap();
        assert_eq!(
            every_minute.next_after(t),
            Some(Utc.with_ymd_and_hms(2026, 11, 24, 10, 3, 0).unwrap())
        );
    }

    #[test]
    fn nonsense_is_refused() {
        assert!(parse("every minute").is_err());
        assert!(parse("* * *").is_err());
        assert!(parse("61 * * * *").is_err());
    }
}
