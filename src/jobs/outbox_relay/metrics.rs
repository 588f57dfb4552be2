//! What the relay counts, and the snapshot [`RelayMetrics`] that tests assert on, the ops
//! feed shows and the Prometheus export (issue 7) will publish.
//!
//! Counters live in memory and count this relay's own work since it started; the backlog,
//! lag and parked figures are read from the table, so they are true for every engine.

use std::{
    sync::{
        atomic::{AtomicU64, AtomicU8, Ordering},
        Mutex,
    },
    time::Instant,
};

use serde::Serialize;

use crate::store::Store;

/// A snapshot of the relay's health.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RelayMetrics {
    /// Rows waiting to be relayed: not processed and not parked (all engines).
    pub backlog: i64,
    /// Age in seconds of the oldest row in the backlog; 0 when it is empty.
    pub lag_seconds: f64,
    /// Events this relay delivered (acked by the broker, or handed off in process when
    /// no NATS is configured) and marked processed.
    pub published: u64,
    /// `published` per second since the previous snapshot (at least a second apart).
    pub published_per_second: f64,
    /// Publishes the broker acknowledged as duplicates of an earlier one (same
    /// `Nats-Msg-Id`): re-deliveries after a crash or a lost ack, absorbed by the broker.
    pub duplicates: u64,
    /// Delivery attempts refused for one event (each charged to that event's `attempts`).
    pub failures: u64,
    /// Relay rounds that delivered nothing because NATS or PostgreSQL was unavailable
    /// (not charged to any event).
    pub outages: u64,
    /// Rows parked after `outbox_max_attempts` failed attempts (all engines).
    pub parked: i64,
    /// Events this relay parked.
    pub parked_total: u64,
    /// Whether the NATS connection is up; `None` when no NATS is configured.
    pub broker_connected: Option<bool>,
}

/// The relay's counters, shared between its task and every [`super::RelayHandle`].
#[derive(Debug)]
pub(super) struct Counters {
    pub published: AtomicU64,
    pub duplicates: AtomicU64,
    pub failures: AtomicU64,
    pub outages: AtomicU64,
    pub parked: AtomicU64,
    broker: AtomicU8,
    /// Last table figures, served when the table cannot be read. A std Mutex: held for a
    /// copy, never across an `.await`.
    table: Mutex<TableFigures>,
    /// Where the last rate was measured from.
    rate: Mutex<RateSample>,
}

const BROKER_NONE: u8 = 0;
const BROKER_DOWN: u8 = 1;
const BROKER_UP: u8 = 2;

#[derive(Debug, Clone, Copy, Default)]
struct TableFigures {
    backlog: i64,
    lag_seconds: f64,
    parked: i64,
}

#[derive(Debug, Clone, Copy)]
struct RateSample {
    at: Instant,
    published: u64,
    per_second: f64,
}

impl Counters {
    pub fn new(broker_configured: bool) -> Counters {
        Counters {
            published: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            outages: AtomicU64::new(0),
            parked: AtomicU64::new(0),
            broker: AtomicU8::new(if broker_configured {
                BROKER_DOWN
            } else {
                BROKER_NONE
            }),
            table: Mutex::new(TableFigures::default()),
            rate: Mutex::new(RateSample {
                at: Instant::now(),
                published: 0,
                per_second: 0.0,
            }),
        }
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn set_broker_connected(&self, up: bool) {
        self.broker
            .store(if up { BROKER_UP } else { BROKER_DOWN }, Ordering::Relaxed);
    }

    /// Reads the table figures and combines them with the counters.
    pub async fn snapshot(&self, store: &Store) -> RelayMetrics {
        let table = match read_table_figures(store).await {
            Ok(figures) => {
                *lock(&self.table) = figures;
                figures
            }
            Err(e) => {
                tracing::debug!(target: "OutboxRelay", error = %e, "outbox figures unavailable; serving the last ones");
                *lock(&self.table)
            }
        };
        let published = self.published.load(Ordering::Relaxed);
        RelayMetrics {
            backlog: table.backlog,
            lag_seconds: table.lag_seconds,
            published,
            published_per_second: self.rate(published),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            outages: self.outages.load(Ordering::Relaxed),
            parked: table.parked,
            parked_total: self.parked.load(Ordering::Relaxed),
            broker_connected: match self.broker.load(Ordering::Relaxed) {
                BROKER_NONE => None,
                state => Some(state == BROKER_UP),
            },
        }
    }

    /// Publishes per second since the previous measurement; snapshots taken less than a
    /// second apart reuse the last rate rather than divide by a tiny interval.
    fn rate(&self, published: u64) -> f64 {
        let mut sample = lock(&self.rate);
        let elapsed = sample.at.elapsed().as_secs_f64();
        if elapsed >= 1.0 {
            *sample = RateSample {
                at: Instant::now(),
                published,
                per_second: published.saturating_sub(sample.published) as f64 / elapsed,
            };
        }
        sample.per_second
    }
}

/// A poisoned lock only means another thread panicked while copying plain numbers.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Backlog, lag and parked rows, read from the table.
async fn read_table_figures(store: &Store) -> Result<TableFigures, sqlx::Error> {
    let figures = store.outbox_figures().await?;
    Ok(TableFigures {
        backlog: figures.backlog,
        lag_seconds: figures.lag_seconds,
        parked: figures.parked,
    })
}
