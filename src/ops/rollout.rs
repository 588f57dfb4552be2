//! `/ops/rollout`: the gradual rollout's two arms side by side (the guide's A/B step), each
//! measured from its own rows over the last minutes, so the legacy dispatcher's figures come
//! from what it wrote, not from this engine's counters. The same figures are on `/metrics`
//! with `arm="engine"` / `arm="legacy"`.

use serde::Serialize;

use super::{OpsContext, OpsError};
use crate::store::ArmRow;

/// Minutes compared.
pub const ROLLOUT_MINUTES: u32 = 15;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rollout {
    /// `dispatch_rollout_percentage` now: requests whose bucket is under it are the engine's.
    pub percentage: u8,
    pub minutes: u32,
    pub arms: Vec<Arm>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Arm {
    /// `ENGINE` or `LEGACY`.
    pub arm: &'static str,
    pub created: i64,
    pub assigned: i64,
    pub ended_unassigned: i64,
    /// `assigned / (assigned + endedUnassigned)`, the one acceptance figure both arms
    /// have; null when no request left dispatch.
    pub assignment_rate: Option<f64>,
    pub time_to_assignment_p50_seconds: Option<f64>,
    pub time_to_assignment_p99_seconds: Option<f64>,
    pub offers_decided: i64,
    pub offers_accepted: i64,
    /// Accepted / decided offers (the engine's arm; the legacy dispatcher records no offers).
    pub acceptance_rate: Option<f64>,
}

fn ratio(part: i64, whole: i64) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

impl From<ArmRow> for Arm {
    fn from(r: ArmRow) -> Arm {
        Arm {
            arm: if r.arm == "engine" {
                "ENGINE"
            } else {
                "LEGACY"
            },
            created: r.created,
            assigned: r.assigned,
            ended_unassigned: r.ended_unassigned,
            assignment_rate: ratio(r.assigned, r.assigned + r.ended_unassigned),
            time_to_assignment_p50_seconds: r.time_to_assignment_p50,
            time_to_assignment_p99_seconds: r.time_to_assignment_p99,
            offers_decided: r.offers_decided,
            offers_accepted: r.offers_accepted,
            acceptance_rate: ratio(r.offers_accepted, r.offers_decided),
        }
    }
}

impl Rollout {
    pub async fn load(state: &OpsContext) -> Result<Rollout, OpsError> {
        let percentage = state.dispatcher.rollout_percentage().percent();
        let rows = state
            .store
            .rollout_arms(ROLLOUT_MINUTES, percentage)
            .await?;
        Ok(Rollout {
            percentage,
            minutes: ROLLOUT_MINUTES,
            arms: rows.into_iter().map(Arm::from).collect(),
        })
    }

    /// The arms as gauges: `arreglame_rollout_*{arm="engine"|"legacy"}`.
    pub fn export(&self) {
        metrics::gauge!("arreglame_rollout_percentage").set(f64::from(self.percentage));
        for a in &self.arms {
            let arm = a.arm.to_ascii_lowercase();
            let set = |name: &'static str, value: Option<f64>| {
                metrics::gauge!(name, "arm" => arm.clone()).set(value.unwrap_or(f64::NAN));
            };
            set("arreglame_rollout_assigned", Some(a.assigned as f64));
            set(
                "arreglame_rollout_ended_unassigned",
                Some(a.ended_unassigned as f64),
            );
            set("arreglame_rollout_assignment_ratio", a.assignment_rate);
            set("arreglame_rollout_acceptance_ratio", a.acceptance_rate);
            set(
                "arreglame_rollout_time_to_assignment_p50_seconds",
                a.time_to_assignment_p50_seconds,
            );
            set(
                "arreglame_rollout_time_to_assignment_p99_seconds",
                a.time_to_assignment_p99_seconds,
            );
        }
    }
}
