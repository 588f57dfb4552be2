//! `/ops/history`: the last minutes of dispatch, per minute, computed from the rows
//! (`service_requests."createdAt"/"assignedAt"`, `offers."respondedAt"/outcome`), so it
//! survives a restart and agrees across engines, unlike the in-memory counters.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::OpsError;
use crate::store::{MinuteRow, Store};

/// Minutes the page charts.
pub const HISTORY_MINUTES: u32 = 15;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct History {
    pub at: DateTime<Utc>,
    pub minutes: u32,
    /// One per minute, oldest first; the last one is the current, partial minute.
    pub buckets: Vec<Minute>,
    /// The sums over the whole window.
    pub totals: Totals,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Minute {
    /// The minute's start.
    pub minute: DateTime<Utc>,
    pub created: i64,
    pub assigned: i64,
    /// Over the requests assigned in this minute; null when none was.
    pub time_to_assignment_p50_seconds: Option<f64>,
    pub time_to_assignment_p99_seconds: Option<f64>,
    /// Accepted, rejected or expired in this minute (withdrawn offers are nobody's decision).
    pub offers_decided: i64,
    pub offers_accepted: i64,
    /// `offersAccepted / offersDecided`; null when nothing was decided.
    pub acceptance_rate: Option<f64>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Totals {
    pub created: i64,
    pub assigned: i64,
    pub offers_decided: i64,
    pub offers_accepted: i64,
    pub acceptance_rate: Option<f64>,
}

fn rate(accepted: i64, decided: i64) -> Option<f64> {
    (decided > 0).then(|| accepted as f64 / decided as f64)
}

impl History {
    pub async fn load(store: &Store) -> Result<History, OpsError> {
        let rows = store.dispatch_history(HISTORY_MINUTES).await?;
        let sum = |f: fn(&MinuteRow) -> i64| rows.iter().map(f).sum::<i64>();
        let totals = Totals {
            created: sum(|r| r.created),
            assigned: sum(|r| r.assigned),
            offers_decided: sum(|r| r.offers_decided),
            offers_accepted: sum(|r| r.offers_accepted),
            acceptance_rate: rate(sum(|r| r.offers_accepted), sum(|r| r.offers_decided)),
        };
        Ok(History {
            at: Utc::now(),
            minutes: HISTORY_MINUTES,
            buckets: rows
                .into_iter()
                .map(|r| Minute {
                    minute: r.minute,
                    created: r.created,
                    assigned: r.assigned,
                    time_to_assignment_p50_seconds: r.time_to_assignment_p50,
                    time_to_assignment_p99_seconds: r.time_to_assignment_p99,
                    offers_decided: r.offers_decided,
                    offers_accepted: r.offers_accepted,
                    acceptance_rate: rate(r.offers_accepted, r.offers_decided),
                })
                .collect(),
            totals,
        })
    }
}
