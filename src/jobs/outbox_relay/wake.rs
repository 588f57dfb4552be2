//! Wake-ups for rows other engines commit: `LISTEN outbox_events`.
//!
//! The listener holds one connection for good, so it gets its own (same options as the
//! store's pool) instead of taking one from the pool the relay's transactions need.

use std::{sync::Arc, time::Duration};

use tokio::{
    sync::{watch, Notify},
    task::JoinHandle,
};

use super::retry::Backoff;
use crate::store::{Store, OUTBOX_CHANNEL};

const RELISTEN: Backoff = Backoff {
    initial: Duration::from_millis(100),
    max: Duration::from_secs(5),
};

/// Listens until shutdown; every notification, and every (re)connection (notifications
/// sent while not listening are lost), notifies `new_rows`.
pub(super) fn spawn_listener(
    store: &Store,
    new_rows: Arc<Notify>,
    shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(listen(store.clone(), new_rows, shutdown))
}

async fn listen(store: Store, new_rows: Arc<Notify>, mut shutdown: watch::Receiver<bool>) {
    let mut failures = 0u32;
    loop {
        let connecting = store.listen_outbox();
        let connected = tokio::select! {
            connected = connecting => connected,
            _ = shutdown.changed() => return,
        };
        let mut listener = match connected {
            Ok(listener) => listener,
            Err(e) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(target: "OutboxRelay", error = %e,
                        "[OutboxRelay] cannot LISTEN {OUTBOX_CHANNEL}; other engines' events wait for the safety poll");
                }
                tokio::select! {
                    _ = tokio::time::sleep(RELISTEN.delay(failures)) => continue,
                    _ = shutdown.changed() => return,
                }
            }
        };
        if failures > 0 {
            tracing::info!(target: "OutboxRelay", "[OutboxRelay] listening on {OUTBOX_CHANNEL} again");
            failures = 0;
        }
        new_rows.notify_one();
        loop {
            tokio::select! {
                received = listener.next() => match received {
                    // Our own commit: the relay was woken directly, a claim now would find
                    // the rows already taken (or find nothing).
                    Ok(Some(from)) if from == store.outbox_origin() => {}
                    // Another engine's commit, or `None`: the connection dropped and was
                    // re-made; anything sent in between is lost, so look at the table anyway.
                    Ok(_) => new_rows.notify_one(),
                    Err(e) => {
                        tracing::warn!(target: "OutboxRelay", error = %e, "[OutboxRelay] LISTEN connection lost");
                        failures += 1;
                        tokio::select! {
                            _ = tokio::time::sleep(RELISTEN.delay(failures)) => break,
                            _ = shutdown.changed() => return,
                        }
                    }
                },
                _ = shutdown.changed() => return,
            }
        }
    }
}
