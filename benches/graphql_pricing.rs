//! `estimateJob` (rule-based pricing, no Gemini key) through the real engine's
//! `POST /graphql`, beside a bare axum JSON handler that prices the same job with the same
//! [`Pricing`] service, measured in the same run by the same load generator.
//!
//! Both servers run in this process on loopback, on their own ports, against one fresh
//! database (migrated and seeded) on the server at `DATABASE_URL`. The load generator is
//! `K` keep-alive HTTP/1.1 clients (reqwest, one connection each), each sending its next
//! request as soon as the previous answer is read and checked, for `BENCH_SECONDS`. Runs
//! alternate engine-first and bare-first so neither always follows the other.
//!
//! What the difference measures: GraphQL parsing, validation and execution, the engine's
//! router and layers (timeout, body limit), caller resolution, and the larger response.
//! The price itself costs the same on both sides.
//!
//! `eval "$(scripts/dev-env.sh)"; cargo bench --bench graphql_pricing`
//! (`BENCH_RUNS`, default 5; `BENCH_SECONDS`, 5; `BENCH_CLIENTS`, a list, default `1,16`)

#[path = "common/mod.rs"]
#[allow(dead_code)] // each benchmark uses some of the shared helpers
mod common;
use common::*;

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _};
use arreglame::{
    api::graphql::{build_schema, Caller},
    config::Config,
    pricing::{JobInput, Pricing},
    startup::{AppHandle, Application},
    store::{Settings, Store},
};
use axum::{extract::State, http::StatusCode, routing::post, Json, Router};
use hdrhistogram::Histogram;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::{net::TcpListener, sync::Barrier};

/// The guide's example mutation, character for character (as `tests/engine/api.rs` sends it).
const GUIDE_ESTIMATE: &str = r#"mutation {
  estimateJob(input: {
    image: "base64...",
    description: "Corte de pasto",
    squareMeters: 100
  }) {
    price {
      total
      workerNet
      platformFee
    }
  }
}"#;

struct Params {
    runs: usize,
    seconds: f64,
    clients: Vec<usize>,
}

/// One server under load: where to send what, and where the total sits in the answer.
struct Target {
    name: &'static str,
    url: String,
    body: String,
    total: fn(&Value) -> Option<i64>,
}

/// One measured run against one target.
#[derive(Debug, Clone, Copy)]
struct RunResult {
    requests_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn main() -> anyhow::Result<()> {
    let params = Params {
        runs: env_num("BENCH_RUNS", 5.0) as usize,
        seconds: env_num("BENCH_SECONDS", 5.0),
        clients: env_list("BENCH_CLIENTS", &[1, 16]),
    };
    let database_url = std::env::var("DATABASE_URL")
        .context("DATABASE_URL: run `eval \"$(scripts/dev-env.sh)\"` first")?;
    let _ = arreglame::telemetry::init("warn", None);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(bench(params, database_url))
}

async fn bench(params: Params, server_url: String) -> anyhow::Result<()> {
    println!(
        "# estimateJob (rules): engine POST /graphql vs bare axum handler; medians of {} runs of {} s",
        params.runs, params.seconds
    );
    println!(
        "machine: {} cores (shared: other work may run beside this benchmark), load average at start {}",
        cores(),
        loadavg()
    );
    let (db_name, url) = create_database(&server_url, "bench_graphql").await?;
    let result = measure_all(&params, &url).await;
    drop_database(&server_url, &db_name).await?;
    println!("load average at end {}", loadavg());
    result
}

async fn measure_all(params: &Params, url: &str) -> anyhow::Result<()> {
    let engine = start_engine(url).await?;
    let (bare_addr, bare_store) = start_bare(url).await?;
    let targets = [
        Target {
            name: "engine",
            url: format!("http://127.0.0.1:{}/graphql", engine.port),
            body: json!({ "query": GUIDE_ESTIMATE }).to_string(),
            total: |v| v["data"]["estimateJob"]["price"]["total"].as_i64(),
        },
        Target {
            name: "bare",
            url: format!("http://{bare_addr}/estimate"),
            body: json!({ "image": "base64...", "description": "Corte de pasto", "squareMeters": 100 })
                .to_string(),
            total: |v| v["total"].as_i64(),
        },
    ];
    let expected = same_price(&targets).await?;
    println!("both answer total = {expected} centavos for the guide's job");

    let mut rows = Vec::new();
    for &clients in &params.clients {
        // Warm-up: connections, allocator, the engine's lazily built parts.
        for target in &targets {
            load(target, expected, clients, Duration::from_secs(1)).await?;
        }
        let (mut engine_runs, mut bare_runs) = (Vec::new(), Vec::new());
        for run in 1..=params.runs {
            let order = if run % 2 == 1 { [0, 1] } else { [1, 0] };
            for i in order {
                let target = &targets[i];
                let seconds = Duration::from_secs_f64(params.seconds);
                let result = load(target, expected, clients, seconds).await?;
                println!(
                    "K={clients:<3} run {run} {:<6} {:>8.0} req/s  p50 {:>6.3} ms  p99 {:>6.3} ms",
                    target.name, result.requests_per_s, result.p50_ms, result.p99_ms
                );
                if i == 0 {
                    engine_runs.push(result);
                } else {
                    bare_runs.push(result);
                }
            }
        }
        rows.push((clients, engine_runs, bare_runs));
    }
    let split = in_process(&engine.handle).await?;
    engine.handle.shutdown();
    let _ = engine.server.await;
    // Closed before the database is dropped, so no pooled connection is cut under them.
    engine.handle.state.store.pool().close().await;
    bare_store.pool().close().await;
    print_table(params.runs, &rows);
    println!(
        "in process, one task, no HTTP (medians of 5 × 1 s): Pricing::quote {:.1} µs/op, \
         the engine's schema executing the guide's mutation {:.1} µs/op",
        split.0, split.1
    );
    Ok(())
}

/// Where the time goes, without sockets: the price alone, and the engine's GraphQL schema
/// (parse, validation, depth and complexity limits, resolver, serialisation of the result)
/// around the same price. What the HTTP comparison adds beyond these is the transport.
async fn in_process(engine: &AppHandle) -> anyhow::Result<(f64, f64)> {
    let pricing = engine.state.pricing.clone();
    let schema = build_schema(engine.state.api_context());
    let job = JobInput {
        image_base64: Some("base64...".into()),
        description: "Corte de pasto".into(),
        square_meters: 100.0,
        ..JobInput::default()
    };
    let (mut quote_us, mut execute_us) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        quote_us.push(
            per_op(|| async {
                pricing.quote(&job).await?;
                Ok(())
            })
            .await?,
        );
        execute_us.push(
            per_op(|| async {
                let request = async_graphql::Request::new(GUIDE_ESTIMATE).data(Caller::Anonymous);
                let response = schema.execute(request).await;
                ensure!(response.errors.is_empty(), "{:?}", response.errors);
                Ok(())
            })
            .await?,
        );
    }
    Ok((median(quote_us), median(execute_us)))
}

/// Microseconds per call of `op`, called back to back for one second.
async fn per_op<F, Fut>(mut op: F) -> anyhow::Result<f64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < Duration::from_secs(1) {
        op().await?;
        n += 1;
    }
    Ok(started.elapsed().as_secs_f64() * 1e6 / n as f64)
}

/// The engine, exactly as `main` builds it: rules only (no Gemini key), on port 0.
struct Engine {
    port: u16,
    handle: AppHandle,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start_engine(url: &str) -> anyhow::Result<Engine> {
    let vars: HashMap<String, String> = [
        ("DATABASE_URL", url),
        ("HOST", "127.0.0.1"),
        ("PORT", "0"),
        ("JWT_SECRET", "bench-secret"),
        ("LOG_LEVEL", "warn"),
        ("DATABASE_MAX_CONNECTIONS", "8"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let app = Application::build(Config::from_vars(vars)?).await?;
    let port = app.port();
    let handle = app.handle();
    let server = tokio::spawn(app.run_until_stopped());
    Ok(Engine {
        port,
        handle,
        server,
    })
}

/// What the bare handler reads: the guide's job as plain JSON.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BareInput {
    image: Option<String>,
    description: String,
    square_meters: f64,
}

/// The baseline: one axum route, no layers, the same `Pricing` (rules only) on the same
/// tables and settings; answers the three amounts as JSON. Returns its address and store.
async fn start_bare(url: &str) -> anyhow::Result<(std::net::SocketAddr, Store)> {
    let store = Store::connect(url, 2).await?;
    let (settings, problems) =
        Settings::from_rows(&Settings::default(), &store.system_config_rows().await?);
    ensure!(problems.is_empty(), "system_config: {problems:?}");
    let (settings_tx, settings_rx) = tokio::sync::watch::channel(Arc::new(settings));
    let pricing = Arc::new(Pricing::new(store.clone(), settings_rx, None).await?);
    let router = Router::new()
        .route("/estimate", post(bare_estimate))
        .with_state(pricing);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        // Keeps the settings channel open for as long as the server runs.
        let _settings_tx = settings_tx;
        let _ = axum::serve(listener, router).await;
    });
    Ok((addr, store))
}

async fn bare_estimate(
    State(pricing): State<Arc<Pricing>>,
    Json(input): Json<BareInput>,
) -> Result<Json<Value>, (StatusCode, String)> {
    let job = JobInput {
        image_base64: input.image,
        description: input.description,
        square_meters: input.square_meters,
        ..JobInput::default()
    };
    let quote = pricing
        .quote(&job)
        .await
        .map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))?;
    Ok(Json(json!({
        "total": quote.total.0,
        "workerNet": quote.worker_net.0,
        "platformFee": quote.platform_fee.0,
    })))
}

/// Asks both once; they must agree, or the comparison means nothing.
async fn same_price(targets: &[Target]) -> anyhow::Result<i64> {
    let client = reqwest::Client::new();
    let mut totals = Vec::new();
    for target in targets {
        let answer: Value = client
            .post(&target.url)
            .header("content-type", "application/json")
            .body(target.body.clone())
            .send()
            .await?
            .json()
            .await?;
        let total = (target.total)(&answer)
            .with_context(|| format!("{}: no total in {answer}", target.name))?;
        totals.push(total);
    }
    ensure!(
        totals.windows(2).all(|w| w[0] == w[1]),
        "the engine and the bare handler disagree: {totals:?}"
    );
    Ok(totals[0])
}

/// `clients` keep-alive clients against one target for `duration`; every answer is checked.
async fn load(
    target: &Target,
    expected: i64,
    clients: usize,
    duration: Duration,
) -> anyhow::Result<RunResult> {
    let barrier = Arc::new(Barrier::new(clients + 1));
    let mut tasks = Vec::with_capacity(clients);
    for _ in 0..clients {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .build()?;
        let (url, body, total, barrier) = (
            target.url.clone(),
            target.body.clone(),
            target.total,
            barrier.clone(),
        );
        tasks.push(tokio::spawn(async move {
            // One request before the clock starts opens this client's connection.
            request(&client, &url, &body, total, expected).await?;
            barrier.wait().await;
            let deadline = Instant::now() + duration;
            let mut latencies = Histogram::<u64>::new(3)?;
            while Instant::now() < deadline {
                let sent = Instant::now();
                request(&client, &url, &body, total, expected).await?;
                latencies.record(sent.elapsed().as_nanos() as u64)?;
            }
            anyhow::Ok(latencies)
        }));
    }
    barrier.wait().await;
    let started = Instant::now();
    let mut all = Histogram::<u64>::new(3)?;
    for task in tasks {
        all.add(task.await??)?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let ms = |q: f64| all.value_at_quantile(q) as f64 / 1e6;
    Ok(RunResult {
        requests_per_s: all.len() as f64 / elapsed,
        p50_ms: ms(0.50),
        p99_ms: ms(0.99),
    })
}

async fn request(
    client: &reqwest::Client,
    url: &str,
    body: &str,
    total: fn(&Value) -> Option<i64>,
    expected: i64,
) -> anyhow::Result<()> {
    let response = client
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await?;
    if !response.status().is_success() {
        bail!("{url}: HTTP {}", response.status());
    }
    let answer: Value = response.json().await?;
    match total(&answer) {
        Some(t) if t == expected => Ok(()),
        _ => bail!("{url}: unexpected answer {answer}"),
    }
}

type Row = (usize, Vec<RunResult>, Vec<RunResult>);

fn print_table(runs: usize, rows: &[Row]) {
    let m = |runs: &[RunResult], f: fn(&RunResult) -> f64| {
        median(runs.iter().map(f).collect::<Vec<f64>>())
    };
    println!();
    println!(
        "| K clients | engine req/s | bare req/s | engine / bare | engine p50 ms | bare p50 ms | engine p99 ms | bare p99 ms |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (clients, engine, bare) in rows {
        let (e, b) = (
            m(engine, |r| r.requests_per_s),
            m(bare, |r| r.requests_per_s),
        );
        println!(
            "| {clients} | {e:.0} | {b:.0} | {:.2} | {:.3} | {:.3} | {:.3} | {:.3} |",
            e / b,
            m(engine, |r| r.p50_ms),
            m(bare, |r| r.p50_ms),
            m(engine, |r| r.p99_ms),
            m(bare, |r| r.p99_ms),
        );
    }
    println!("(medians of {runs} runs each; engine / bare is the ratio of the median req/s)");
}
