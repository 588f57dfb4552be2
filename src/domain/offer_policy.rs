//! How many workers an offer goes to at once, and in what order candidates are asked: the
//! pure rules behind `offer_mode`, `candidate_ranking` and the `ranking_weight_*` settings.
//! The city actor applies them to its online workers; nothing here does I/O.

use chrono::{DateTime, Utc};
use serde::Serialize;

/// `offer_mode` in `system_config`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OfferMode {
    /// One worker at a time (the default, the old system's behaviour).
    Sequential,
    /// `offer_batch_size` workers at once; the first accept wins.
    Parallel,
    /// As wide as the live acceptance estimate needs for the chance of at least one accept
    /// to reach `adaptive_target_accept_probability` (one worker when it already does).
    Adaptive,
}

impl OfferMode {
    pub fn parse(value: &str) -> Option<OfferMode> {
        match value {
            "sequential" => Some(OfferMode::Sequential),
            "parallel" => Some(OfferMode::Parallel),
            "adaptive" => Some(OfferMode::Adaptive),
            _ => None,
        }
    }
}

/// `candidate_ranking` in `system_config`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CandidateRanking {
    /// Nearest first (the default).
    Nearest,
    /// By the weighted score of [`score`].
    Scored,
}

impl CandidateRanking {
    pub fn parse(value: &str) -> Option<CandidateRanking> {
        match value {
            "nearest" => Some(CandidateRanking::Nearest),
            "scored" => Some(CandidateRanking::Scored),
            _ => None,
        }
    }
}

/// The `ranking_weight_*` settings. Only their proportions matter: the score is the
/// weighted mean of the parts, each in [0, 1].
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RankingWeights {
    pub distance: f64,
    pub acceptance: f64,
    pub rating: f64,
    pub reliability: f64,
    pub fairness: f64,
}

impl Default for RankingWeights {
    fn default() -> Self {
        // Chosen with `simulate --compare` (docs/benchmarks.md, "Dispatch modes compared"):
        // reliability and fairness weigh more than closeness within the searched step.
        RankingWeights {
            distance: 0.2,
            acceptance: 0.15,
            rating: 0.1,
            reliability: 0.3,
            fairness: 0.25,
        }
    }
}

/// What the engine knows of a worker's recent record (last 30 days, kept live by the city).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerRecord {
    pub rating: f64,
    /// Offers the worker answered (accepted, rejected or let expire).
    pub offers_answered: u32,
    pub offers_accepted: u32,
    /// Cancellations after accepting, and no-shows.
    pub strikes: u32,
    pub last_job_at: Option<DateTime<Utc>>,
    pub earnings_today_cents: i64,
}

/// A candidate's score and its parts, as the decision trail shows them.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScoreParts {
    pub distance: f64,
    pub acceptance: f64,
    pub rating: f64,
    pub reliability: f64,
    pub fairness: f64,
}

impl ScoreParts {
    /// The weighted mean of the parts (0 when every weight is 0).
    pub fn total(&self, w: &RankingWeights) -> f64 {
        let sum = w.distance + w.acceptance + w.rating + w.reliability + w.fairness;
        if sum <= 0.0 {
            return 0.0;
        }
        (w.distance * self.distance
            + w.acceptance * self.acceptance
            + w.rating * self.rating
            + w.reliability * self.reliability
            + w.fairness * self.fairness)
            / sum
    }

    /// The part that most separates `self` from `other`, weighted, with its contribution.
    pub fn biggest_lead_over(&self, other: &ScoreParts, w: &RankingWeights) -> (&'static str, f64) {
        let leads = [
            ("distance", w.distance * (self.distance - other.distance)),
            (
                "acceptance",
                w.acceptance * (self.acceptance - other.acceptance),
            ),
            ("rating", w.rating * (self.rating - other.rating)),
            (
                "reliability",
                w.reliability * (self.reliability - other.reliability),
            ),
            ("fairness", w.fairness * (self.fairness - other.fairness)),
        ];
        leads
            .into_iter()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .expect("five parts")
    }
}

/// One scored candidate, as stored with the offer (`offers."candidateScores"`) and shown in
/// the decision trail.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CandidateScore {
    pub worker_id: uuid::Uuid,
    pub distance_meters: f64,
    pub score: f64,
    pub parts: ScoreParts,
}

/// Hours without a job after which a worker counts as fully "due" for one.
const FAIRNESS_IDLE_HOURS: f64 = 8.0;

/// Scores one candidate found `distance_m` away inside a radius step of `radius_m`.
/// `most_earned_today` is the highest `earnings_today_cents` among the candidates scored
/// together, so the fairness part compares workers competing for the same job.
pub fn score(
    record: &WorkerRecord,
    distance_m: f64,
    radius_m: f64,
    most_earned_today: i64,
    now: DateTime<Utc>,
) -> ScoreParts {
    let distance = if radius_m > 0.0 {
        (1.0 - distance_m / radius_m).clamp(0.0, 1.0)
    } else {
        1.0
    };
    // Laplace's rule: a worker with no history counts as 50 %, and one answer moves little.
    let acceptance = (record.offers_accepted as f64 + 1.0) / (record.offers_answered as f64 + 2.0);
    let rating = (record.rating / 5.0).clamp(0.0, 1.0);
    let reliability = 1.0 / (1.0 + record.strikes as f64);
    let idle = match record.last_job_at {
        None => 1.0,
        Some(at) => {
            ((now - at).num_seconds().max(0) as f64 / 3600.0 / FAIRNESS_IDLE_HOURS).min(1.0)
        }
    };
    let earned = if most_earned_today > 0 {
        1.0 - (record.earnings_today_cents.max(0) as f64 / most_earned_today as f64).min(1.0)
    } else {
        1.0
    };
    ScoreParts {
        distance,
        acceptance,
        rating,
        reliability,
        fairness: 0.5 * idle + 0.5 * earned,
    }
}

/// The batch width that gives at least `target` chance of one accept when each worker
/// accepts with probability `p`: the smallest n with 1 - (1 - p)^n >= target, from 1 to
/// `max`. A high estimate keeps it at one worker; only a low one widens it.
pub fn adaptive_width(p: f64, target: f64, max: usize) -> usize {
    let max = max.max(1);
    if target <= 0.0 || p >= target {
        return 1;
    }
    if p <= 0.0 || target >= 1.0 {
        return max;
    }
    let n = ((1.0 - target).ln() / (1.0 - p).ln()).ceil();
    (n.max(1.0) as usize).min(max)
}

/// The live acceptance estimate of one city and hour of day: the accepted share of the
/// offers answered there, starting from a prior of 2 accepts in 3 answers (so a new city
/// neither floods workers nor crawls) and forgetting old answers by halving the counts
/// every `HALF_LIFE_ANSWERS` answers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AcceptanceEstimate {
    accepted: f64,
    answered: f64,
}

const HALF_LIFE_ANSWERS: f64 = 200.0;

impl Default for AcceptanceEstimate {
    fn default() -> Self {
        AcceptanceEstimate {
            accepted: 2.0,
            answered: 3.0,
        }
    }
}

impl AcceptanceEstimate {
    pub fn record(&mut self, accepted: bool) {
        if self.answered >= HALF_LIFE_ANSWERS {
            self.accepted /= 2.0;
            self.answered /= 2.0;
        }
        self.answered += 1.0;
        if accepted {
            self.accepted += 1.0;
        }
    }

    pub fn probability(&self) -> f64 {
        self.accepted / self.answered
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adaptive_widens_only_when_the_estimate_is_low() {
        assert_eq!(adaptive_width(0.95, 0.9, 6), 1);
        assert_eq!(adaptive_width(0.9, 0.9, 6), 1);
        // 1 - 0.5^4 = 0.9375 >= 0.9 > 1 - 0.5^3.
        assert_eq!(adaptive_width(0.5, 0.9, 6), 4);
        assert_eq!(adaptive_width(0.2, 0.9, 6), 6, "capped");
        assert_eq!(adaptive_width(0.0, 0.9, 6), 6);
    }

    #[test]
    fn the_estimate_follows_what_workers_answer() {
        let mut e = AcceptanceEstimate::default();
        assert!((e.probability() - 2.0 / 3.0).abs() < 1e-9);
        for _ in 0..1000 {
            e.record(false);
        }
        assert!(e.probability() < 0.05, "{}", e.probability());
        for _ in 0..1000 {
            e.record(true);
        }
        assert!(e.probability() > 0.95, "{}", e.probability());
    }

    #[test]
    fn ranking_prefers_a_reliable_worker_a_little_farther_away() {
        let w = RankingWeights::default();
        let now = Utc::now();
        let reliable = WorkerRecord {
            rating: 4.8,
            offers_answered: 20,
            offers_accepted: 16,
            ..Default::default()
        };
        let flaky = WorkerRecord {
            strikes: 3,
            ..reliable.clone()
        };
        let near_flaky = score(&flaky, 300.0, 2000.0, 0, now);
        let far_reliable = score(&reliable, 700.0, 2000.0, 0, now);
        assert!(far_reliable.total(&w) > near_flaky.total(&w));
        assert_eq!(
            far_reliable.biggest_lead_over(&near_flaky, &w).0,
            "reliability"
        );
        // Distance alone: the nearer one wins.
        let nearest_only = RankingWeights {
            distance: 1.0,
            acceptance: 0.0,
            rating: 0.0,
            reliability: 0.0,
            fairness: 0.0,
        };
        assert!(near_flaky.total(&nearest_only) > far_reliable.total(&nearest_only));
    }

    #[test]
    fn fairness_favours_who_earned_least_and_waited_longest() {
        let now = Utc::now();
        let busy = WorkerRecord {
            last_job_at: Some(now - chrono::Duration::minutes(30)),
            earnings_today_cents: 9_000_000,
            ..Default::default()
        };
        let idle = WorkerRecord {
            last_job_at: Some(now - chrono::Duration::hours(10)),
            earnings_today_cents: 0,
            ..Default::default()
        };
        let a = score(&busy, 500.0, 2000.0, 9_000_000, now);
        let b = score(&idle, 500.0, 2000.0, 9_000_000, now);
        assert!(b.fairness > a.fairness);
        assert_eq!(b.fairness, 1.0);
    }
}
