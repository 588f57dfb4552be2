//! The numbers that keep one connection cheap and one client from hurting the others: time
//! limits, buffer sizes, queue bound and rate limits (enforced by `domain::rate`).

use std::time::Duration;

pub use crate::domain::rate::{Rate, TokenBucket};

/// Per-connection limits. Read when a connection is upgraded: a change applies to new
/// connections.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Connections open at once (authenticated or not); more are refused with 503 before
    /// the upgrade, so a flood of idle sockets cannot exhaust the process.
    pub max_connections: usize,
    /// The first message (`auth`) must arrive within this time.
    pub auth_timeout: Duration,
    /// How often the app should send something (a `ping` when it has nothing else to say).
    pub heartbeat_interval: Duration,
    /// Silence after which the engine closes with 4002 and takes the worker offline.
    pub heartbeat_timeout: Duration,
    /// After a connection is lost (not closed by the engine for cause), how long the worker
    /// stays online and keeps its offer, waiting for it to reconnect and resume.
    pub reconnect_grace: Duration,
    /// Messages waiting to be written to one connection; one more closes it with 4004.
    pub send_queue: usize,
    /// A write that takes longer than this closes the connection with 4004.
    pub write_timeout: Duration,
    /// Largest text message handled; a bigger one (up to `max_frame_bytes`) gets
    /// `MESSAGE_TOO_LARGE` and the session stays up.
    pub max_message_bytes: usize,
    /// Largest frame the transport reads; a bigger one closes with 1009 (the stream cannot
    /// skip it).
    pub max_frame_bytes: usize,
    /// Initial read buffer of a connection (grows only for a large frame).
    pub read_buffer_bytes: usize,
    /// Bytes buffered before a write reaches the socket (a flush always writes).
    pub write_buffer_bytes: usize,
    /// Location updates per connection; extra ones get `RATE_LIMITED`.
    pub location_rate: Rate,
    /// All messages per connection; going over closes with 1008 (abuse).
    pub message_rate: Rate,
    /// How long a disconnected worker's state (offer sequence, acks, idempotency answers)
    /// is kept for a reconnect.
    pub retain_worker_state: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 50_000,
            auth_timeout: Duration::from_secs(5),
            heartbeat_interval: Duration::from_secs(20),
            heartbeat_timeout: Duration::from_secs(60),
            reconnect_grace: Duration::from_secs(30),
            send_queue: 32,
            write_timeout: Duration::from_secs(10),
            max_message_bytes: 4 * 1024,
            max_frame_bytes: 64 * 1024,
            read_buffer_bytes: 1024,
            write_buffer_bytes: 0,
            location_rate: Rate {
                per_second: 1.0,
                burst: 5,
            },
            message_rate: Rate {
                per_second: 20.0,
                burst: 60,
            },
            retain_worker_state: Duration::from_secs(10 * 60),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    #[test]
    fn defaults_match_the_documented_protocol() {
        let l = Limits::default();
        assert_eq!(l.auth_timeout, Duration::from_secs(5));
        assert!(l.heartbeat_timeout >= l.heartbeat_interval * 2);
        assert!(l.max_message_bytes < l.max_frame_bytes);
        assert!(l.read_buffer_bytes <= 4096, "idle sessions must stay small");
        let never = Rate {
            per_second: 1e-300,
            burst: 1,
        };
        let mut b = TokenBucket::full(never, Instant::now());
        assert!(b.try_take(never, Instant::now()));
        assert_eq!(b.retry_after(never), Duration::MAX);
    }
}
