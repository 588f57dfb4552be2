//! Prometheus metrics. Event-time measurements (histograms, some counters) are recorded
//! where their code lives with the `metrics` macros; counts that the engine already keeps
//! (dispatch counters, live actors, outbox backlog, pricing fallbacks) are copied into the
//! registry at scrape time, so there is one source of truth for each number.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use super::OpsContext;

/// Buckets in seconds, from sub-millisecond database calls to multi-minute assignments.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0, 900.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder once and returns its handle.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(BUCKETS)
            .expect("static bucket list is valid")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (an embedding program); then our
        // handle renders only what was recorded through it, which is still valid output.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// Copies the engine's live counts into the registry, then renders the text format.
pub async fn render(state: &OpsContext) -> String {
    let handle = handle();
    let stats = state.dispatcher.stats();
    let counters = [
        ("arreglame_offers_sent_total", stats.offers_sent.get()),
        (
            "arreglame_offers_accepted_total",
            stats.offers_accepted.get(),
        ),
        (
            "arreglame_offers_rejected_total",
            stats.offers_rejected.get(),
        ),
        ("arreglame_offers_expired_total", stats.offers_expired.get()),
        (
            "arreglame_requests_unassigned_total",
            stats.unassigned.get(),
        ),
        ("arreglame_requests_cancelled_total", stats.cancelled.get()),
        ("arreglame_requests_completed_total", stats.completed.get()),
        ("arreglame_actor_restarts_total", stats.actor_restarts.get()),
        (
            "arreglame_actor_escalations_total",
            stats.actors_escalated.get(),
        ),
        (
            "arreglame_actor_heartbeat_replacements_total",
            stats.actors_revived.get(),
        ),
        ("arreglame_actor_nudges_total", stats.actors_nudged.get()),
    ];
    for (name, value) in counters {
        metrics::counter!(name).absolute(value);
    }
    let sent = stats.offers_sent.get();
    let acceptance = if sent == 0 {
        0.0
    } else {
        stats.offers_accepted.get() as f64 / sent as f64
    };
    metrics::gauge!("arreglame_worker_acceptance_ratio").set(acceptance);

    let pricing = state.pricing.stats();
    metrics::counter!("arreglame_ai_pricing_requests_total").absolute(pricing.gemini_requests);
    metrics::counter!("arreglame_ai_pricing_failures_total").absolute(pricing.gemini_failures);
    metrics::counter!("arreglame_ai_pricing_fallbacks_total").absolute(pricing.fallbacks);

    let relay = state.relay.metrics().await;
    metrics::gauge!("arreglame_outbox_backlog").set(relay.backlog as f64);
    metrics::gauge!("arreglame_outbox_lag_seconds").set(relay.lag_seconds);
    metrics::counter!("arreglame_outbox_published_total").absolute(relay.published);
    metrics::counter!("arreglame_outbox_failures_total").absolute(relay.failures);
    metrics::gauge!("arreglame_outbox_parked").set(relay.parked as f64);

    let snapshot = super::ActorsSnapshot::collect(state).await;
    metrics::gauge!("arreglame_live_actors", "kind" => "city").set(snapshot.cities.len() as f64);
    metrics::gauge!("arreglame_live_actors", "kind" => "request")
        .set(snapshot.request_actors.total as f64);
    for (status, n) in &snapshot.request_actors.by_status {
        metrics::gauge!("arreglame_request_actors", "status" => status.clone()).set(*n as f64);
    }
    for city in &snapshot.cities {
        let id = city.id.clone();
        metrics::gauge!("arreglame_city_mailbox_depth", "city" => id.clone())
            .set(city.mailbox_depth as f64);
        metrics::gauge!("arreglame_city_workers_online", "city" => id.clone())
            .set(city.stats.online as f64);
        metrics::gauge!("arreglame_city_workers_available", "city" => id)
            .set(city.stats.available as f64);
    }
    metrics::gauge!("arreglame_websocket_sessions").set(snapshot.websocket_sessions as f64);

    handle.run_upkeep();
    handle.render()
}
