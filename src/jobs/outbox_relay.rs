//! Outbox relay. PLACEHOLDER API: being implemented (issue 6).

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::{broadcast, watch};

use crate::store::{OutboxEvent, SettingsWatch, Store};

#[derive(Debug, Clone, Default, Serialize)]
pub struct RelayMetrics {
    pub backlog: i64,
    pub lag_seconds: f64,
    pub published: u64,
    pub failures: u64,
    pub parked: i64,
}

/// Handle to the running relay.
#[derive(Clone)]
pub struct RelayHandle {
    events: broadcast::Sender<Arc<OutboxEvent>>,
}

impl RelayHandle {
    /// Every committed outbox event, in id order, as the relay processes it.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<OutboxEvent>> {
        self.events.subscribe()
    }

    pub async fn metrics(&self) -> RelayMetrics {
        RelayMetrics::default()
    }
}

pub fn spawn(
    _store: Store,
    _settings: SettingsWatch,
    _nats_url: Option<String>,
    _shutdown: watch::Receiver<bool>,
) -> RelayHandle {
    let (events, _) = broadcast::channel(1024);
    RelayHandle { events }
}
