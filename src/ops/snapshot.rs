//! What `/ops/actors` answers and `/ops/live` streams: cities, request actors, counters,
//! sessions, outbox and pricing figures, in one camelCase snapshot.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::OpsContext;
use crate::dispatch::{city::CityStats, request::RequestSnapshot};

/// One city as ops see it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CityView {
    pub id: String,
    pub name: String,
    #[serde(flatten)]
    pub stats: CityStats,
    pub mailbox_depth: i64,
    /// Open requests of this city by status.
    pub open_requests: BTreeMap<String, usize>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OldestOpen {
    pub request_id: Uuid,
    pub status: String,
    pub created_at: DateTime<Utc>,
    pub age_seconds: i64,
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestActorsView {
    pub total: usize,
    pub by_status: BTreeMap<String, usize>,
    pub oldest_open: Option<OldestOpen>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Counters {
    pub offers_sent: u64,
    pub offers_accepted: u64,
    pub offers_rejected: u64,
    pub offers_expired: u64,
    pub unassigned: u64,
    pub cancelled: u64,
    pub completed: u64,
    pub conflicts: u64,
    pub actor_restarts: u64,
    pub actor_escalations: u64,
}

/// Everything `/ops/actors` answers and `/ops/live` streams.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ActorsSnapshot {
    pub at: DateTime<Utc>,
    pub cities: Vec<CityView>,
    pub request_actors: RequestActorsView,
    pub counters: Counters,
    pub websocket_sessions: usize,
    pub outbox: crate::jobs::outbox_relay::RelayMetrics,
    pub pricing: crate::pricing::PricingStats,
    #[serde(skip)]
    pub requests: Vec<RequestSnapshot>,
}

impl ActorsSnapshot {
    pub async fn collect(state: &OpsContext) -> ActorsSnapshot {
        let dispatcher = &state.dispatcher;
        let requests = dispatcher.snapshots().await;
        let now = Utc::now();
        let mut view = RequestActorsView {
            total: requests.len(),
            ..Default::default()
        };
        let mut per_city: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
        for r in &requests {
            let status = r.status.as_str().to_string();
            *view.by_status.entry(status.clone()).or_default() += 1;
            *per_city
                .entry(r.city_id.clone().unwrap_or_default())
                .or_default()
                .entry(status)
                .or_default() += 1;
        }
        view.oldest_open = requests
            .iter()
            .min_by_key(|r| r.created_at)
            .map(|r| OldestOpen {
                request_id: r.request_id,
                status: r.status.as_str().into(),
                created_at: r.created_at,
                age_seconds: (now - r.created_at).num_seconds(),
            });
        let mut cities = Vec::new();
        for stats in dispatcher.city_stats().await {
            let info = dispatcher.city_info(&stats.city_id);
            cities.push(CityView {
                id: stats.city_id.clone(),
                name: info.as_ref().map(|i| i.name.clone()).unwrap_or_default(),
                mailbox_depth: info.map(|i| i.mailbox_depth()).unwrap_or(0),
                open_requests: per_city.remove(&stats.city_id).unwrap_or_default(),
                stats,
            });
        }
        let s = dispatcher.stats();
        ActorsSnapshot {
            at: now,
            cities,
            request_actors: view,
            counters: Counters {
                offers_sent: s.offers_sent.get(),
                offers_accepted: s.offers_accepted.get(),
                offers_rejected: s.offers_rejected.get(),
                offers_expired: s.offers_expired.get(),
                unassigned: s.unassigned.get(),
                cancelled: s.cancelled.get(),
                completed: s.completed.get(),
                conflicts: s.conflicts.get(),
                actor_restarts: s.actor_restarts.get(),
                actor_escalations: s.actors_escalated.get(),
            },
            websocket_sessions: websocket_sessions(state),
            outbox: state.relay.metrics().await,
            pricing: state.pricing.stats(),
            requests,
        }
    }
}

pub(super) fn websocket_sessions(state: &OpsContext) -> usize {
    state.sessions.connected_workers()
}
