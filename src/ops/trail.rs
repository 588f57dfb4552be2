//! The decision trail of one request: its row, every offer, the candidates passed over,
//! every committed event, and in plain words why it is where it is.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::OpsError;
use crate::store::{CandidateSkip, OfferRow, ServiceRequest, Store};

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Trail {
    pub request: ServiceRequest,
    /// Each offer: who, how far, in which radius step, among how many candidates, outcome.
    pub offers: Vec<OfferRow>,
    /// Candidates passed over because something about them refused the offer.
    pub skipped: Vec<CandidateSkip>,
    /// Every committed event of the request, oldest first.
    pub events: Vec<TrailEvent>,
    /// In plain words, why the request is where it is.
    pub explanation: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TrailEvent {
    pub id: i64,
    #[serde(rename = "type")]
    pub event_type: String,
    pub payload: serde_json::Value,
    pub created_at: DateTime<Utc>,
}

impl Trail {
    /// Reads the request's trail; a database error is an error, never an empty trail.
    pub async fn load(store: &Store, id: Uuid) -> Result<Trail, OpsError> {
        let request = store.get_request(id).await?;
        let offers = store.offers_for_request(id).await?;
        let skipped = store.candidate_skips(id).await?;
        let events = store
            .request_events(id)
            .await?
            .into_iter()
            .map(|e| TrailEvent {
                id: e.id,
                event_type: e.event_type,
                payload: e.payload,
                created_at: e.created_at,
            })
            .collect();
        let explanation = explain(&request, &offers, &skipped);
        Ok(Trail {
            request,
            offers,
            skipped,
            events,
            explanation,
        })
    }
}

fn explain(r: &ServiceRequest, offers: &[OfferRow], skipped: &[CandidateSkip]) -> String {
    let mut text = explain_offers(r, offers);
    for offer in offers {
        if let Some(note) = explain_ranking(offer) {
            text.push(' ');
            text.push_str(&note);
        }
    }
    if !skipped.is_empty() {
        text.push_str(&format!(
            " {} candidate(s) passed over: {}.",
            skipped.len(),
            skipped
                .iter()
                .map(|s| s.reason.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    text
}

/// Why the worker of a ranked offer was chosen: the score against the runner-up's and the
/// part where the winner led most (parts compared as they are, before weighting: the
/// weights in force then are not stored).
fn explain_ranking(offer: &OfferRow) -> Option<String> {
    let scores = &offer.candidate_scores.as_ref()?.0;
    let winner = scores.first()?;
    let Some(runner_up) = scores.get(1) else {
        return Some(format!(
            "Attempt {}: the only candidate, scored {:.2}.",
            offer.attempt, winner.score
        ));
    };
    let even = crate::domain::offer_policy::RankingWeights {
        distance: 1.0,
        acceptance: 1.0,
        rating: 1.0,
        reliability: 1.0,
        fairness: 1.0,
    };
    let (part, lead) = winner.parts.biggest_lead_over(&runner_up.parts, &even);
    Some(format!(
        "Attempt {}: worker {} scored {:.2} against {:.2} for the runner-up among {} ranked; it led most on {part} (+{lead:.2}).",
        offer.attempt,
        winner.worker_id,
        winner.score,
        runner_up.score,
        scores.len()
    ))
}

fn explain_offers(r: &ServiceRequest, offers: &[OfferRow]) -> String {
    use crate::domain::Status::*;
    let tried = offers.len();
    let count = |o: &str| {
        offers
            .iter()
            .filter(|x| x.outcome.as_deref() == Some(o))
            .count()
    };
    match r.status {
        Unassigned => format!(
            "Unassigned: {}. {tried} offer(s) made: {} rejected, {} expired.",
            r.unassigned_reason
                .as_deref()
                .unwrap_or("no reason recorded"),
            count("REJECTED"),
            count("EXPIRED")
        ),
        Pending => format!("Looking for the next worker; {tried} offer(s) made so far."),
        Offering => format!(
            "Offer {} is out, expiring at {}.",
            tried,
            r.worker_timeout_at
                .map(|t| t.to_rfc3339())
                .unwrap_or_default()
        ),
        other => format!("{other} after {tried} offer(s)."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::offer_policy::{CandidateScore, ScoreParts};

    fn scored(worker_id: Uuid, score: f64, reliability: f64) -> CandidateScore {
        CandidateScore {
            worker_id,
            distance_meters: 500.0,
            score,
            parts: ScoreParts {
                distance: 0.75,
                acceptance: 0.5,
                rating: 1.0,
                reliability,
                fairness: 1.0,
            },
        }
    }

    #[test]
    fn a_ranked_offer_says_why_its_worker_won() {
        let (winner, runner_up) = (Uuid::new_v4(), Uuid::new_v4());
        let offer = OfferRow {
            id: Uuid::new_v4(),
            request_id: Uuid::new_v4(),
            worker_id: winner,
            attempt: 1,
            sent_at: Utc::now(),
            expires_at: Utc::now(),
            outcome: None,
            responded_at: None,
            reject_reason: None,
            distance_meters: Some(500.0),
            radius_meters: Some(2000),
            candidates_considered: Some(2),
            candidate_scores: Some(sqlx::types::Json(vec![
                scored(winner, 0.9, 1.0),
                scored(runner_up, 0.7, 0.25),
            ])),
        };
        let note = explain_ranking(&offer).unwrap();
        assert!(
            note.contains(&format!("worker {winner} scored 0.90 against 0.70")),
            "{note}"
        );
        assert!(note.contains("led most on reliability (+0.75)"), "{note}");
        let nearest = OfferRow {
            candidate_scores: None,
            ..offer
        };
        assert_eq!(explain_ranking(&nearest), None);
    }
}
