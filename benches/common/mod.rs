//! Helpers every benchmark shares: a fresh database per run, environment
//! knobs, medians, and the machine's load for the record.

use anyhow::Context as _;
use arreglame::store::Store;
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

/// The median of `values` (NaN for none); takes a Vec, a slice or a reference to either.
pub fn median(values: impl AsRef<[f64]>) -> f64 {
    let mut values = values.as_ref().to_vec();
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Creates `<prefix>_<uuid>` on the server of `url`, migrated and seeded; returns (name, URL).
pub async fn create_database(url: &str, prefix: &str) -> anyhow::Result<(String, String)> {
    let name = format!("{prefix}_{}", Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(&with_database(url, "postgres")?).await?;
    sqlx::query(&format!(r#"create database "{name}""#))
        .execute(&mut admin)
        .await?;
    let db_url = with_database(url, &name)?;
    let store = Store::connect(&db_url, 2).await?;
    store.migrate().await?;
    store.seed().await?;
    store.pool().close().await;
    Ok((name, db_url))
}

pub async fn drop_database(url: &str, name: &str) -> anyhow::Result<()> {
    let mut admin = PgConnection::connect(&with_database(url, "postgres")?).await?;
    sqlx::query(&format!(r#"drop database if exists "{name}" with (force)"#))
        .execute(&mut admin)
        .await?;
    Ok(())
}

/// The server's URL with another database name.
pub fn with_database(url: &str, db: &str) -> anyhow::Result<String> {
    let (base, rest) = url
        .rsplit_once('/')
        .context("DATABASE_URL has a database name")?;
    let query = rest
        .split_once('?')
        .map(|(_, q)| format!("?{q}"))
        .unwrap_or_default();
    Ok(format!("{base}/{db}{query}"))
}

/// A positive number from the environment, or `default`.
pub fn env_num(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|v: &f64| v.is_finite() && *v > 0.0)
        .unwrap_or(default)
}

/// A positive integer from the environment, or `default`.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n: &usize| n > 0)
        .unwrap_or(default)
}

/// The server's URL with another database name (panics on a URL without one: a bench
/// setup mistake).
pub fn database_url_for(url: &str, db: &str) -> String {
    with_database(url, db).expect("DATABASE_URL has a database name")
}

/// A comma-separated list of positive integers from the environment, or `default`.
pub fn env_list(name: &str, default: &[usize]) -> Vec<usize> {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.split(',')
                .filter_map(|n| n.trim().parse().ok())
                .filter(|&n| n > 0)
                .collect::<Vec<usize>>()
        })
        .filter(|list| !list.is_empty())
        .unwrap_or_else(|| default.to_vec())
}

pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}
