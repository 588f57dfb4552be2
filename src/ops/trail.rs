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
