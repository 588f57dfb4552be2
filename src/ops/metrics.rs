//! Prometheus metrics. Event-time measurements (histograms, some counters) are recorded
//! where their code lives with the `metrics` macros; counts that the engine already keeps
//! (dispatch counters, live actors, outbox backlog, pricing fallbacks) are copied into the
//! registry at scrape time, so there is one source of truth for each number.

use std::sync::OnceLock;

use axum::{
    extract::{MatchedPath, Request},
    middleware::Next,
    response::Response,
};
use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
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
        describe_all();
        process().describe();
        register_zeros();
        metrics::gauge!("arreglame_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        handle
    })
}

fn process() -> &'static metrics_process::Collector {
    static PROCESS: OnceLock<metrics_process::Collector> = OnceLock::new();
    PROCESS.get_or_init(metrics_process::Collector::default)
}

/// Counters the guide's alerts read exist at 0 from the start (an alert on a family that
/// does not exist yet shows "no data", not 0).
fn register_zeros() {
    for name in [
        "arreglame_concurrency_conflicts_total",
        "arreglame_actor_restarts_total",
        "arreglame_actor_escalations_total",
        "arreglame_actor_heartbeat_replacements_total",
        "arreglame_actor_nudges_total",
        "arreglame_worker_cancellations_total",
        "arreglame_worker_no_shows_total",
        "arreglame_requests_unassigned_total",
        "arreglame_requests_cancelled_total",
        "arreglame_requests_completed_total",
        "arreglame_ai_pricing_requests_total",
        "arreglame_ai_pricing_failures_total",
        "arreglame_ai_pricing_fallbacks_total",
        "arreglame_outbox_published_total",
        "arreglame_outbox_failures_total",
    ] {
        metrics::counter!(name).absolute(0);
    }
    for job in ["WorkerAssignmentCron", "PayoutReleaseCron"] {
        metrics::counter!("arreglame_cron_runs_total", "job" => job).absolute(0);
        metrics::counter!("arreglame_cron_failures_total", "job" => job).absolute(0);
    }
    for reason in ["operation_budget", "concurrency_cap", "rate_cap"] {
        metrics::counter!("arreglame_ai_pricing_shed_total", "reason" => reason).absolute(0);
    }
}

/// The per-city counters at 0 for every served city (called once cities are known).
pub fn register_cities(cities: &[String]) {
    for city in cities {
        for event in crate::dispatch::OfferEvent::ALL {
            metrics::counter!(event.metric(), "city" => city.clone()).absolute(0);
        }
        metrics::counter!("arreglame_service_requests_created_total", "city" => city.clone())
            .absolute(0);
    }
}

/// One HELP line (and unit) for every family the engine exports.
fn describe_all() {
    let counters: &[(&str, &str)] = &[
        (
            "arreglame_offers_sent_total",
            "Offers sent to workers, by city.",
        ),
        (
            "arreglame_offers_accepted_total",
            "Offers accepted by their worker, by city.",
        ),
        (
            "arreglame_offers_rejected_total",
            "Offers rejected by their worker, by city.",
        ),
        (
            "arreglame_offers_expired_total",
            "Offers that timed out or whose worker was lost, by city.",
        ),
        (
            "arreglame_service_requests_created_total",
            "Service requests created, by city.",
        ),
        (
            "arreglame_requests_unassigned_total",
            "Requests that ended UNASSIGNED (no worker found).",
        ),
        ("arreglame_requests_cancelled_total", "Requests cancelled."),
        (
            "arreglame_worker_cancellations_total",
            "Assigned workers who gave a job back before it started (cancel_assignment).",
        ),
        (
            "arreglame_worker_no_shows_total",
            "Assigned workers who had not started a booked job within the grace after its slot start.",
        ),
        ("arreglame_requests_completed_total", "Jobs completed."),
        (
            "arreglame_concurrency_conflicts_total",
            "Transitions that lost the version check to a concurrent writer.",
        ),
        (
            "arreglame_actor_restarts_total",
            "Request actors restarted by their supervisor.",
        ),
        (
            "arreglame_actor_escalations_total",
            "Request actors that kept failing and were left to the backstop.",
        ),
        (
            "arreglame_actor_heartbeat_replacements_total",
            "Request actors that missed the backstop's heartbeat and were replaced.",
        ),
        (
            "arreglame_actor_nudges_total",
            "Live request actors the backstop nudged to act.",
        ),
        ("arreglame_cron_runs_total", "Sweeps run, by job."),
        (
            "arreglame_cron_failures_total",
            "Sweeps that failed, by job.",
        ),
        (
            "arreglame_ai_pricing_requests_total",
            "HTTP requests sent to Gemini, retries included.",
        ),
        (
            "arreglame_ai_pricing_failures_total",
            "Gemini requests that failed.",
        ),
        (
            "arreglame_ai_pricing_fallbacks_total",
            "Quotes the rules priced because Gemini gave no usable answer.",
        ),
        (
            "arreglame_ai_pricing_shed_total",
            "Quotes that did not ask Gemini at all, by reason (operation_budget, concurrency_cap, rate_cap).",
        ),
        (
            "arreglame_outbox_published_total",
            "Outbox events delivered by this relay.",
        ),
        (
            "arreglame_outbox_failures_total",
            "Outbox delivery attempts refused for one event.",
        ),
        (
            "arreglame_http_requests_total",
            "HTTP requests, by method, route and status.",
        ),
        (
            "arreglame_ws_messages_total",
            "Worker WebSocket messages, by direction (in, out) and type.",
        ),
        (
            "arreglame_ws_closes_total",
            "Worker WebSocket sessions closed by the engine, by close code.",
        ),
        (
            "arreglame_graphql_errors_total",
            "GraphQL errors, by extensions.code.",
        ),
        (
            "arreglame_graphql_documents_total",
            "GraphQL documents received, by source: cache (an identical document's parse, kept) or parsed.",
        ),
        (
            "arreglame_db_group_commit_retried_total",
            "Group commits that failed and were written again one transition at a time.",
        ),
        (
            "arreglame_cluster_cities_won_total",
            "Cities this node took in the city_owner bucket (cluster mode).",
        ),
        (
            "arreglame_cluster_cities_lost_total",
            "Cities this node gave up: lease expired on its clock, fenced, handed over or rebalanced.",
        ),
        (
            "arreglame_cluster_lease_renewals_total",
            "Successful renewals of this node's city leases.",
        ),
        (
            "arreglame_cluster_stale_writes_refused_total",
            "Transitions refused because the city's epoch moved past the one they carried.",
        ),
        (
            "arreglame_cluster_commands_forwarded_total",
            "Commands this node sent to the owner of another node's city, by command and outcome.",
        ),
        (
            "arreglame_cluster_notices_routed_total",
            "Worker notices published for a worker connected to another node.",
        ),
        (
            "arreglame_cluster_takeover_retries_total",
            "Searches that found no worker in a city just taken over and were tried again a second later.",
        ),
        (
            "arreglame_cluster_publications_dropped_total",
            "Positions and worker notices for other nodes dropped because NATS did not take them in time.",
        ),
        (
            "arreglame_cluster_workers_reannounced_total",
            "Workers announced again to this node after it took a city over.",
        ),
    ];
    for (name, help) in counters {
        describe_counter!(*name, *help);
    }
    let gauges: &[(&str, &str)] = &[
        (
            "arreglame_build_info",
            "Always 1; the engine's version as a label.",
        ),
        (
            "arreglame_worker_acceptance_ratio",
            "Accepted offers / sent offers since start.",
        ),
        (
            "arreglame_outbox_backlog",
            "Outbox rows waiting to be relayed (all engines).",
        ),
        (
            "arreglame_outbox_parked",
            "Outbox rows parked after too many failed attempts.",
        ),
        (
            "arreglame_live_actors",
            "Live actors, by kind (city, request).",
        ),
        (
            "arreglame_request_actors",
            "Live request actors, by the status they hold.",
        ),
        (
            "arreglame_city_mailbox_depth",
            "Messages waiting in a city actor's mailbox.",
        ),
        ("arreglame_city_workers_online", "Workers online in a city."),
        (
            "arreglame_city_workers_available",
            "Workers online and free to take an offer in a city.",
        ),
        (
            "arreglame_websocket_sessions",
            "Workers with an authenticated WebSocket session.",
        ),
        (
            "arreglame_db_pool_connections",
            "Database connections of the pool, by state (idle, in_use).",
        ),
        (
            "arreglame_db_pool_max_connections",
            "The pool's connection limit.",
        ),
        (
            "arreglame_rollout_percentage",
            "dispatch_rollout_percentage: the share of requests (by id bucket) this engine dispatches.",
        ),
        (
            "arreglame_rollout_assigned",
            "Requests assigned in the last 15 minutes, by rollout arm (engine, legacy), from the rows.",
        ),
        (
            "arreglame_rollout_ended_unassigned",
            "Requests that left dispatch without a worker in the last 15 minutes, by rollout arm.",
        ),
        (
            "arreglame_rollout_assignment_ratio",
            "Assigned / (assigned + ended unassigned) over the last 15 minutes, by rollout arm.",
        ),
        (
            "arreglame_rollout_acceptance_ratio",
            "Accepted / decided offers over the last 15 minutes, by rollout arm (NaN without offers).",
        ),
        (
            "arreglame_rollout_time_to_assignment_p50_seconds",
            "Median creation-to-assignment time over the last 15 minutes, by rollout arm.",
        ),
        (
            "arreglame_rollout_time_to_assignment_p99_seconds",
            "p99 creation-to-assignment time over the last 15 minutes, by rollout arm.",
        ),
        (
            "arreglame_nats_connected",
            "1 while the outbox relay's NATS connection is up (absent without NATS).",
        ),
        (
            "arreglame_cluster_cities_owned",
            "Cities this node owns now (cluster mode).",
        ),
    ];
    for (name, help) in gauges {
        describe_gauge!(*name, *help);
    }
    describe_gauge!(
        "arreglame_outbox_lag_seconds",
        Unit::Seconds,
        "Age of the oldest outbox row waiting to be relayed."
    );
    let histograms: &[(&str, &str)] = &[
        (
            "arreglame_time_to_assignment_seconds",
            "From creation to a worker's accept.",
        ),
        (
            "arreglame_worker_finder_duration_seconds",
            "One nearest-worker search through the city actor.",
        ),
        (
            "arreglame_db_query_duration_seconds",
            "Database statements, by query and outcome.",
        ),
        (
            "arreglame_db_pool_acquire_duration_seconds",
            "Waiting for a pooled connection and BEGIN, per transition.",
        ),
        ("arreglame_cron_duration_seconds", "One sweep, by job."),
        (
            "arreglame_http_request_duration_seconds",
            "HTTP requests, by method and route (WebSocket upgrades excluded).",
        ),
        (
            "arreglame_graphql_operation_duration_seconds",
            "GraphQL operations, by operation name and type.",
        ),
    ];
    for (name, help) in histograms {
        describe_histogram!(*name, Unit::Seconds, *help);
    }
    describe_histogram!(
        "arreglame_db_group_commit_transitions",
        Unit::Count,
        "Transitions per commit written by the group commit's writers."
    );
}

/// Counts and times every HTTP request by its route pattern (never the raw path: ids
/// would make a series per request).
pub async fn track_http(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    // A fixed set: any token is a valid HTTP method, and a label made of what a client
    // sends would be a series per request.
    let method = match request.method().as_str() {
        m @ ("GET" | "POST" | "PUT" | "DELETE" | "PATCH" | "HEAD" | "OPTIONS") => m,
        _ => "OTHER",
    }
    .to_string();
    let upgrade = request.headers().contains_key(axum::http::header::UPGRADE);
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("arreglame_http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status)
        .increment(1);
    if !upgrade {
        metrics::histogram!("arreglame_http_request_duration_seconds", "method" => method, "route" => route)
            .record(started.elapsed().as_secs_f64());
    }
    response
}

/// Copies the engine's live counts into the registry, then renders the text format.
pub async fn render(state: &OpsContext) -> String {
    let handle = handle();
    let stats = state.dispatcher.stats();
    // The offer counters are counted per city where they happen (`DispatchStats::offer`).
    let counters = [
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
        (
            "arreglame_worker_cancellations_total",
            stats.worker_cancellations.get(),
        ),
        ("arreglame_worker_no_shows_total", stats.no_shows.get()),
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

    // The rollout's two arms, each from its own rows (a failed read keeps the last values).
    if let Ok(rollout) = super::rollout::Rollout::load(state).await {
        rollout.export();
    }

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

    let (open, idle, max) = state.store.pool_stats();
    metrics::gauge!("arreglame_db_pool_connections", "state" => "idle").set(idle as f64);
    metrics::gauge!("arreglame_db_pool_connections", "state" => "in_use")
        .set(open.saturating_sub(idle as u32) as f64);
    metrics::gauge!("arreglame_db_pool_max_connections").set(max as f64);
    if let Some(up) = relay.broker_connected {
        metrics::gauge!("arreglame_nats_connected").set(if up { 1.0 } else { 0.0 });
    }
    process().collect();

    handle.run_upkeep();
    handle.render()
}
