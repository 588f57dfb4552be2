//! Outbox relay benchmark, against the real PostgreSQL (`DATABASE_URL`) and NATS
//! JetStream (`NATS_URL`):
//!
//! - **drain**: a backlog of `BENCH_BACKLOG` rows committed at once; events per second
//!   from that commit until the last row is marked (relay: acked by JetStream, marked,
//!   handed to subscribers).
//! - **lag at offered load**: writers commit one row per transaction at `BENCH_RATE`
//!   rows/s for `BENCH_SECONDS`; lag is commit (the writer's commit returned, client clock)
//!   → the row's `"processedAt"` (the mark statement, which for the relay runs after
//!   JetStream acked the event; PostgreSQL's clock, the same system clock), measured alike
//!   for both consumers.
//!
//! Each beside the baseline: a plain `select ... for update skip locked` + `update` loop
//! in one transaction, woken by the same commit signal, without the broker. The difference
//! is what publishing to JetStream and awaiting its acks costs.
//!
//! `eval "$(scripts/dev-env.sh)"; cargo bench --bench outbox_relay`
//! (`BENCH_RUNS`, default 5; `BENCH_RATE`, 5000; `BENCH_SECONDS`, 6; `BENCH_BACKLOG`, 20000;
//! `BENCH_BATCH`, the seeded `outbox_batch_size` 500)

#[path = "common/mod.rs"]
#[allow(dead_code)] // each benchmark uses some of the shared helpers
mod common;
use common::*;

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use arreglame::{
    jobs::outbox_relay::{self, RelayHandle, RelayOptions},
    store::{OutboxEvent, Settings, Store},
};
use chrono::{DateTime, Utc};
use hdrhistogram::Histogram;
use tokio::sync::{broadcast, mpsc, watch};
use uuid::Uuid;

const WRITERS: usize = 8;

/// (outbox id, instant the consumer marked it), as the consumer reports them.
type Marks = Vec<(i64, Instant)>;
/// (outbox id, when the writer's commit returned).
type Commits = Vec<(i64, DateTime<Utc>)>;
/// A column of the results table: its name and how to read it from a run.
type Column = (&'static str, fn(&RunResult) -> f64);

struct Params {
    runs: usize,
    rate: f64,
    seconds: f64,
    backlog: i64,
}

/// One measured run of one consumer.
#[derive(Debug, Clone, Copy)]
struct RunResult {
    drain_per_s: f64,
    offered_per_s: f64,
    relayed_per_s: f64,
    lag_p50_ms: f64,
    lag_p99_ms: f64,
    lag_max_ms: f64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Consumer {
    Relay,
    Baseline,
}

fn main() -> anyhow::Result<()> {
    let params = Params {
        runs: env_num("BENCH_RUNS", 5.0) as usize,
        rate: env_num("BENCH_RATE", 5000.0),
        seconds: env_num("BENCH_SECONDS", 6.0),
        backlog: env_num("BENCH_BACKLOG", 20_000.0) as i64,
    };
    let database_url = std::env::var("DATABASE_URL")
        .context("DATABASE_URL: run `eval \"$(scripts/dev-env.sh)\"` first")?;
    let nats_url = std::env::var("NATS_URL")
        .context("NATS_URL: run `eval \"$(scripts/dev-env.sh)\"` first")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(bench(params, database_url, nats_url))
}

async fn bench(params: Params, server_url: String, nats_url: String) -> anyhow::Result<()> {
    println!(
        "# outbox relay: medians of {} runs; backlog {} rows; {} rows/s offered for {} s by {WRITERS} writers; outbox_batch_size {}",
        params.runs, params.backlog, params.rate, params.seconds, batch_size()
    );
    println!(
        "machine: {} cores, load average at start {}",
        cores(),
        loadavg()
    );
    let (db_name, url) = create_database(&server_url, "bench_outbox").await?;
    let tag = Uuid::new_v4().simple().to_string();
    let options = RelayOptions {
        stream: format!("BENCH_OUTBOX_{tag}"),
        subject_prefix: format!("bench.{tag}"),
        ..RelayOptions::new(Some(nats_url.clone()))
    };

    let mut relay_runs = Vec::new();
    let mut baseline_runs = Vec::new();
    let mut relayed_total = 0u64;
    for run in 1..=params.runs {
        // Alternate the order so that neither always runs on a warmer cache.
        let order = if run % 2 == 1 {
            [Consumer::Baseline, Consumer::Relay]
        } else {
            [Consumer::Relay, Consumer::Baseline]
        };
        for consumer in order {
            let result = measure(consumer, &url, &options, &params).await?;
            println!(
                "run {run} {:<8} drain {:>7.0}/s | offered {:>6.0}/s relayed {:>6.0}/s | lag p50 {:>6.1} ms p99 {:>6.1} ms max {:>6.1} ms | load {}",
                label(consumer),
                result.drain_per_s,
                result.offered_per_s,
                result.relayed_per_s,
                result.lag_p50_ms,
                result.lag_p99_ms,
                result.lag_max_ms,
                loadavg()
            );
            match consumer {
                Consumer::Relay => {
                    relayed_total += params.backlog as u64 + (params.rate * params.seconds) as u64;
                    relay_runs.push(result)
                }
                Consumer::Baseline => baseline_runs.push(result),
            }
        }
    }

    let js = async_nats::jetstream::new(async_nats::connect(&nats_url).await?);
    let mut stream = js.get_stream(&options.stream).await?;
    let in_stream = stream.info().await?.state.messages;
    println!(
        "stream check: {in_stream} messages in {} for {relayed_total} relayed events ({})",
        options.stream,
        if in_stream == relayed_total {
            "each exactly once"
        } else {
            "MISMATCH"
        }
    );
    js.delete_stream(&options.stream).await?;
    drop_database(&server_url, &db_name).await?;

    print_table(&relay_runs, &baseline_runs);
    println!("load average at end {}", loadavg());
    Ok(())
}

fn label(consumer: Consumer) -> &'static str {
    match consumer {
        Consumer::Relay => "relay",
        Consumer::Baseline => "baseline",
    }
}

/// One drain and one offered-load phase for one consumer, on a fresh pool.
async fn measure(
    consumer: Consumer,
    url: &str,
    options: &RelayOptions,
    params: &Params,
) -> anyhow::Result<RunResult> {
    let store = Store::connect(url, (WRITERS + 6) as u32).await?;
    sqlx::query("truncate outbox_events")
        .execute(store.pool())
        .await?;
    let (shutdown_tx, shutdown) = watch::channel(false);
    let (mut marks, running) = start_consumer(consumer, &store, options, shutdown).await?;

    // Drain: one commit of `backlog` rows.
    let committed = bulk_insert(&store, params.backlog).await?;
    let drained_at = wait_for(&mut marks, params.backlog as usize).await?.1;
    let drain_per_s = params.backlog as f64 / (drained_at - committed).as_secs_f64();

    // Offered load.
    let expected = (params.rate * params.seconds) as usize;
    let writers = spawn_writers(&store, params.rate, expected);
    wait_for(&mut marks, expected).await?;
    let mut commits: HashMap<i64, DateTime<Utc>> = HashMap::with_capacity(expected);
    for writer in writers {
        commits.extend(writer.await??);
    }
    let first = *commits.values().min().context("no commits")?;
    let last = *commits.values().max().context("no commits")?;
    // Both consumers are measured alike: the client's clock at commit, PostgreSQL's (the
    // same system clock) at the mark.
    let ids: Vec<i64> = commits.keys().copied().collect();
    let marked: Vec<(i64, Option<DateTime<Utc>>)> =
        sqlx::query_as(r#"select id, "processedAt" from outbox_events where id = any($1)"#)
            .bind(&ids)
            .fetch_all(store.pool())
            .await?;
    let mut lag = Histogram::<u64>::new(3)?;
    let mut last_mark = first;
    for (id, processed_at) in marked {
        let processed_at = processed_at.context("a row was left unmarked")?;
        let commit = commits.get(&id).context("a marked row no writer wrote")?;
        let micros = (processed_at - *commit).num_microseconds().unwrap_or(0);
        lag.record(u64::try_from(micros).unwrap_or(0))?;
        last_mark = last_mark.max(processed_at);
    }
    let _ = shutdown_tx.send(true);
    running.stopped().await?;
    store.pool().close().await;

    let ms = |q: f64| lag.value_at_quantile(q) as f64 / 1000.0;
    Ok(RunResult {
        drain_per_s,
        offered_per_s: expected as f64 / seconds(last - first),
        relayed_per_s: expected as f64 / seconds(last_mark - first),
        lag_p50_ms: ms(0.50),
        lag_p99_ms: ms(0.99),
        lag_max_ms: lag.max() as f64 / 1000.0,
    })
}

/// A running consumer, to wait for after its shutdown.
enum Running {
    Relay(RelayHandle),
    Baseline(tokio::task::JoinHandle<anyhow::Result<()>>),
}

impl Running {
    async fn stopped(self) -> anyhow::Result<()> {
        match self {
            Running::Relay(relay) => relay.stopped().await,
            Running::Baseline(task) => task.await??,
        }
        Ok(())
    }
}

/// Starts the consumer; returns a channel of (id, instant the row was marked).
async fn start_consumer(
    consumer: Consumer,
    store: &Store,
    options: &RelayOptions,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<(mpsc::UnboundedReceiver<Marks>, Running)> {
    let (tx, rx) = mpsc::unbounded_channel();
    let settings = watch::channel(Arc::new(Settings {
        outbox_batch_size: batch_size(),
        ..Settings::default()
    }))
    .1;
    match consumer {
        Consumer::Relay => {
            let relay =
                outbox_relay::spawn_with(store.clone(), settings, options.clone(), shutdown);
            let events = relay.subscribe();
            // Measure from a connected, idle relay.
            for _ in 0..500 {
                if relay.metrics().await.broker_connected == Some(true) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            tokio::spawn(forward(events, tx));
            Ok((rx, Running::Relay(relay)))
        }
        Consumer::Baseline => {
            let batch = batch_size();
            let task = tokio::spawn(baseline(store.clone(), batch, shutdown, tx));
            Ok((rx, Running::Baseline(task)))
        }
    }
}

/// The relay hands each event over after its mark committed: that instant is "marked".
async fn forward(
    mut events: broadcast::Receiver<Arc<OutboxEvent>>,
    tx: mpsc::UnboundedSender<Marks>,
) {
    loop {
        match events.recv().await {
            Ok(event) => {
                if tx.send(vec![(event.id, Instant::now())]).is_err() {
                    return;
                }
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                eprintln!("bench subscriber lagged by {n} events");
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// The baseline: claim the same rows the same way and mark them, nothing else.
async fn baseline(
    store: Store,
    batch: i64,
    mut shutdown: watch::Receiver<bool>,
    tx: mpsc::UnboundedSender<Marks>,
) -> anyhow::Result<()> {
    loop {
        let mut db = store.pool().begin().await?;
        let rows: Vec<(i64, String, serde_json::Value)> = sqlx::query_as(
            r#"select id, type, payload from outbox_events
               where processed = false and "parkedAt" is null
               order by id limit $1
               for update skip locked"#,
        )
        .bind(batch)
        .fetch_all(&mut *db)
        .await?;
        if rows.is_empty() {
            db.commit().await?;
            tokio::select! {
                _ = store.outbox_committed() => continue,
                _ = tokio::time::sleep(Duration::from_secs(2)) => continue,
                _ = shutdown.changed() => return Ok(()),
            }
        }
        let ids: Vec<i64> = rows.iter().map(|r| r.0).collect();
        sqlx::query(
            r#"update outbox_events set processed = true, "processedAt" = statement_timestamp()
               where id = any($1)"#,
        )
        .bind(&ids)
        .execute(&mut *db)
        .await?;
        db.commit().await?;
        let now = Instant::now();
        if tx
            .send(ids.into_iter().map(|id| (id, now)).collect())
            .is_err()
        {
            return Ok(());
        }
    }
}

/// Collects `n` marks; returns them and the instant of the last.
async fn wait_for(
    marks: &mut mpsc::UnboundedReceiver<Marks>,
    n: usize,
) -> anyhow::Result<(Marks, Instant)> {
    let mut got = Marks::with_capacity(n);
    let deadline = Instant::now() + Duration::from_secs(300);
    while got.len() < n {
        let batch = tokio::time::timeout_at(deadline.into(), marks.recv())
            .await
            .context("the consumer stalled")?
            .context("the consumer stopped")?;
        got.extend(batch);
    }
    let last = got.iter().map(|(_, at)| *at).max().context("no marks")?;
    Ok((got, last))
}

/// Commits `n` rows in one transaction; returns the instant the commit returned.
async fn bulk_insert(store: &Store, n: i64) -> anyhow::Result<Instant> {
    sqlx::query(
        r#"insert into outbox_events ("aggregateType", "aggregateId", "aggregateVersion", type, payload)
           select 'bench', 'backlog-' || g || '-' || gen_random_uuid(), 1, 'BenchEvent',
                  jsonb_build_object('n', g, 'requestId', gen_random_uuid(), 'status', 'PENDING')
           from generate_series(1, $1) g"#,
    )
    .bind(n)
    .execute(store.pool())
    .await?;
    let committed = Instant::now();
    store.outbox_written();
    Ok(committed)
}

/// `WRITERS` tasks committing one row per transaction (autocommit), together `rate` rows
/// per second on a fixed schedule (a late writer catches up), `total` rows in all.
fn spawn_writers(
    store: &Store,
    rate: f64,
    total: usize,
) -> Vec<tokio::task::JoinHandle<anyhow::Result<Commits>>> {
    let start = tokio::time::Instant::now() + Duration::from_millis(20);
    let interval = Duration::from_secs_f64(WRITERS as f64 / rate);
    (0..WRITERS)
        .map(|w| {
            let store = store.clone();
            let count = total / WRITERS + usize::from(w < total % WRITERS);
            tokio::spawn(async move {
                let mut commits = Commits::with_capacity(count);
                let mut next = start + interval.mul_f64(w as f64 / WRITERS as f64);
                for k in 0..count {
                    tokio::time::sleep_until(next).await;
                    let id: i64 = sqlx::query_scalar(
                        r#"insert into outbox_events ("aggregateType", "aggregateId", "aggregateVersion", type, payload)
                           values ('bench', $1, 1, 'BenchEvent', $2)
                           returning id"#,
                    )
                    .bind(format!("writer-{w}-{k}-{}", Uuid::new_v4()))
                    .bind(serde_json::json!({ "writer": w, "seq": k, "status": "PENDING" }))
                    .fetch_one(store.pool())
                    .await?;
                    commits.push((id, Utc::now()));
                    store.outbox_written();
                    next += interval;
                }
                Ok(commits)
            })
        })
        .collect()
}

fn seconds(d: chrono::TimeDelta) -> f64 {
    d.num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6
}

fn print_table(relay: &[RunResult], baseline: &[RunResult]) {
    let m = |runs: &[RunResult], f: fn(&RunResult) -> f64| {
        median(runs.iter().map(f).collect::<Vec<f64>>())
    };
    let columns: [Column; 6] = [
        ("drain (events/s)", |r| r.drain_per_s),
        ("offered (events/s)", |r| r.offered_per_s),
        ("relayed (events/s)", |r| r.relayed_per_s),
        ("lag p50 (ms)", |r| r.lag_p50_ms),
        ("lag p99 (ms)", |r| r.lag_p99_ms),
        ("lag max (ms)", |r| r.lag_max_ms),
    ];
    println!();
    println!(
        "| medians of {} runs | relay (JetStream) | baseline (skip locked + update) | relay / baseline |",
        relay.len()
    );
    println!("| --- | ---: | ---: | ---: |");
    for (name, f) in columns {
        let (r, b) = (m(relay, f), m(baseline, f));
        println!("| {name} | {r:.1} | {b:.1} | {:.2} |", r / b);
    }
}

/// `outbox_batch_size` for both consumers: `BENCH_BATCH`, else the seeded default.
fn batch_size() -> i64 {
    env_num("BENCH_BATCH", Settings::default().outbox_batch_size as f64) as i64
}
