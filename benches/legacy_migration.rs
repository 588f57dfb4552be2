//! Adopting a legacy database of 1 million service requests while the old system keeps
//! writing (issue 16, item 2): how long `migrate` takes, and how long any writer waited.
//!
//! The legacy schema is tests/fixtures/legacy_prisma_schema.sql; `BENCH_ROWS` requests
//! (default 1 000 000) spread over the legacy statuses. `BENCH_WRITERS` connections
//! (default 2) insert requests the way the old system does (no status, its default) and
//! update others' descriptions, back to back, each statement timed. Three phases, the same
//! writers throughout:
//!
//! 1. `Store::migrate` (the adoption's steps, then migration 5);
//! 2. `migrate --revert` until the legacy schema is back;
//! 3. the baseline: the one-statement design the adoption avoids,
//!    `alter table service_requests alter column status type text`.
//!
//! `DATABASE_URL=... cargo bench --bench legacy_migration`

#[path = "common/mod.rs"]
#[allow(dead_code)] // each benchmark uses some of the shared helpers
mod common;
use common::*;

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use arreglame::store::Store;
use sqlx::{postgres::PgPoolOptions, Connection, PgConnection, PgPool};
use uuid::Uuid;

const LEGACY_SCHEMA: &str = include_str!("../tests/fixtures/legacy_prisma_schema.sql");
/// When the current phase's work began (writers measure their slow statements from it).
static PHASE_START: std::sync::Mutex<Option<Instant>> = std::sync::Mutex::new(None);
const CUSTOMER: Uuid = Uuid::from_u128(0x20000000_0000_4000_8000_000000000001);

/// What the writers saw during one phase.
#[derive(Debug, Default)]
struct WriterReport {
    statements: usize,
    errors: Vec<String>,
    waits_ms: Vec<f64>,
    /// Statements that waited over 100 ms: (start, since the phase's work began, in ms;
    /// the wait in ms; insert or update).
    slow: Vec<(f64, f64, &'static str)>,
}

impl WriterReport {
    fn max_ms(&self) -> f64 {
        self.waits_ms.iter().copied().fold(0.0, f64::max)
    }

    fn quantile_ms(&self, q: f64) -> f64 {
        let mut v = self.waits_ms.clone();
        v.sort_by(f64::total_cmp);
        v.get(((v.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let server = std::env::var("DATABASE_URL").context("DATABASE_URL")?;
    let rows = env_usize("BENCH_ROWS", 1_000_000);
    let writers = env_usize("BENCH_WRITERS", 2);
    let name = format!("bench_legacy_{}", Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(&with_database(&server, "postgres")?).await?;
    sqlx::query(&format!(r#"create database "{name}""#))
        .execute(&mut admin)
        .await?;
    let url = with_database(&server, &name)?;
    let result = run(&url, rows, writers).await;
    drop_database(&server, &name).await?;
    result
}

async fn run(url: &str, rows: usize, writers: usize) -> anyhow::Result<()> {
    let pool = PgPoolOptions::new()
        .max_connections(writers as u32 + 2)
        .connect(url)
        .await?;
    let started = Instant::now();
    load_legacy(&pool, rows).await?;
    println!(
        "legacy database: {rows} service_requests loaded in {:.1} s (load {})",
        started.elapsed().as_secs_f64(),
        loadavg()
    );
    let sample: Arc<Vec<Uuid>> = Arc::new(
        sqlx::query_scalar("select id from service_requests tablesample system (1) limit 5000")
            .fetch_all(&pool)
            .await?,
    );
    let store = Store::connect(url, 2).await?;

    println!("\nphase | total | writer statements | writer wait p50 | p99 | max | errors");
    let (elapsed, report, steps) = with_writers(&pool, writers, &sample, async {
        let steps = store.adopt_legacy().await?;
        store.migrate().await?;
        anyhow::Ok(steps)
    })
    .await?;
    print_phase("migrate (adopt)", elapsed, &report);
    let mut at = 0.0;
    for (step, took) in steps {
        let ms = took.as_secs_f64() * 1000.0;
        println!("    step {step}: {ms:.0} ms (from {at:.0} ms)");
        at += ms;
    }

    let (elapsed, report, reverted) = with_writers(&pool, writers, &sample, async {
        let mut n = 0;
        while store.revert_latest_migration().await?.is_some() {
            n += 1;
        }
        anyhow::Ok(n)
    })
    .await?;
    print_phase(&format!("revert ({reverted} steps)"), elapsed, &report);

    let (elapsed, report, ()) = with_writers(&pool, writers, &sample, async {
        sqlx::query("alter table service_requests alter column status type text")
            .execute(&pool)
            .await?;
        anyhow::Ok(())
    })
    .await?;
    print_phase("baseline: alter column status type text", elapsed, &report);
    println!("\nload after the run: {}", loadavg());
    Ok(())
}

fn print_phase(name: &str, elapsed: Duration, r: &WriterReport) {
    println!(
        "{name} | {:.1} s | {} | {:.1} ms | {:.1} ms | {:.0} ms | {}",
        elapsed.as_secs_f64(),
        r.statements,
        r.quantile_ms(0.5),
        r.quantile_ms(0.99),
        r.max_ms(),
        if r.errors.is_empty() {
            "none".to_string()
        } else {
            format!("{} (first: {})", r.errors.len(), r.errors[0])
        }
    );
    for (at, wait, kind) in &r.slow {
        println!("    writer {kind} at +{at:.0} ms waited {wait:.0} ms");
    }
}

/// Runs `work` while `writers` connections insert and update back to back; returns how
/// long `work` took and what the writers saw meanwhile.
async fn with_writers<T>(
    pool: &PgPool,
    writers: usize,
    sample: &Arc<Vec<Uuid>>,
    work: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<(Duration, WriterReport, T)> {
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..writers)
        .map(|n| {
            let (pool, stop, sample) = (pool.clone(), stop.clone(), sample.clone());
            tokio::spawn(async move { write_until(pool, stop, sample, n).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    *PHASE_START.lock().unwrap() = Some(started);
    let out = work.await?;
    let elapsed = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut report = WriterReport::default();
    for task in tasks {
        let r = task.await?;
        report.statements += r.statements;
        report.errors.extend(r.errors);
        report.waits_ms.extend(r.waits_ms);
        report.slow.extend(r.slow);
    }
    report.slow.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok((elapsed, report, out))
}

/// The old system's writes, each timed: a new request (its status left to the column's
/// default, whatever the phase has made it) and an update of another request.
async fn write_until(
    pool: PgPool,
    stop: Arc<AtomicBool>,
    sample: Arc<Vec<Uuid>>,
    n: usize,
) -> WriterReport {
    let mut report = WriterReport::default();
    let mut i = n;
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let result = if i % 2 == 0 {
            sqlx::query(
                r#"insert into service_requests (id, "customerId", latitude, longitude, "squareMeters", "updatedAt")
                   values ($1, $2, -34.6, -58.4, 100, now())"#,
            )
            .bind(Uuid::new_v4())
            .bind(CUSTOMER)
            .execute(&pool)
            .await
        } else {
            sqlx::query(r#"update service_requests set description = $2, "updatedAt" = now() where id = $1"#)
                .bind(sample[i % sample.len()])
                .bind(format!("edited {i}"))
                .execute(&pool)
                .await
        };
        let wait = started.elapsed().as_secs_f64() * 1000.0;
        report.waits_ms.push(wait);
        if wait > 100.0 {
            if let Some(phase) = *PHASE_START.lock().unwrap() {
                let at = started.saturating_duration_since(phase).as_secs_f64() * 1000.0;
                report
                    .slow
                    .push((at, wait, if i % 2 == 0 { "insert" } else { "update" }));
            }
        }
        report.statements += 1;
        if let Err(e) = result {
            report.errors.push(e.to_string());
        }
        i += 1;
    }
    report
}

/// The fixture's schema with one customer, two workers and `rows` requests in the legacy
/// statuses (mostly finished ones, as a production table is).
async fn load_legacy(pool: &PgPool, rows: usize) -> anyhow::Result<()> {
    sqlx::raw_sql(LEGACY_SCHEMA).execute(pool).await?;
    sqlx::raw_sql(
        r#"insert into users (id, email, "passwordHash", "updatedAt") values
               ('10000000-0000-4000-8000-000000000001', 'c@example.com', 'x', now()),
               ('10000000-0000-4000-8000-000000000002', 'w@example.com', 'x', now());
           insert into customers (id, "userId", name, "updatedAt") values
               ('20000000-0000-4000-8000-000000000001', '10000000-0000-4000-8000-000000000001', 'c', now());
           insert into worker_profiles (id, "userId", name, "updatedAt") values
               ('30000000-0000-4000-8000-000000000001', '10000000-0000-4000-8000-000000000002', 'w', now());"#,
    )
    .execute(pool)
    .await?;
    sqlx::query(
        r#"insert into service_requests (id, status, "customerId", "workerId", latitude, longitude,
                                         "squareMeters", "totalPrice", "platformFee", "createdAt", "updatedAt")
           select gen_random_uuid(), s.status::"JobStatus",
                  '20000000-0000-4000-8000-000000000001',
                  case when s.status in ('CREATED', 'CANCELLED') then null
                       else '30000000-0000-4000-8000-000000000001'::uuid end,
                  -34.6, -58.4, 100, 15000, 2250, now() - (g || ' minutes')::interval, now()
           from generate_series(1, $1) g
           cross join lateral (select (array['COMPLETED', 'COMPLETED', 'COMPLETED', 'COMPLETED', 'CANCELLED',
                                             'CREATED', 'ASSIGNED', 'IN_PROGRESS', 'DISPUTED', 'RESOLVED'])[1 + g % 10]
                               as status) s"#,
    )
    .bind(rows as i64)
    .execute(pool)
    .await?;
    sqlx::query("vacuum analyze").execute(pool).await?;
    Ok(())
}
