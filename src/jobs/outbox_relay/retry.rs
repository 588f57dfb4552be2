//! Backoff: how long the relay waits before trying again, for one failing event
//! ([`Deferrals`]) and for the whole relay while NATS or PostgreSQL is unavailable.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use rand::Rng;

/// Exponential backoff with jitter: retry `n` (1-based) waits between half and all of
/// `initial * 2^(n-1)`, capped at `max`. The jitter keeps several engines that failed
/// together from retrying in lockstep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The ceiling of the first wait.
    pub initial: Duration,
    /// No wait is longer than this.
    pub max: Duration,
}

impl Backoff {
    /// The wait before retry number `retry` (1 for the first retry).
    pub fn delay(&self, retry: u32) -> Duration {
        let ceiling = self.ceiling(retry);
        let half = ceiling / 2;
        let span = u64::try_from((ceiling - half).as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(rand::thread_rng().gen_range(0..=span))
    }

    /// The longest wait before retry number `retry`.
    fn ceiling(&self, retry: u32) -> Duration {
        let doublings = retry.saturating_sub(1).min(30);
        self.initial.saturating_mul(1u32 << doublings).min(self.max)
    }
}

/// Events that failed and wait out their backoff before the relay claims them again.
///
/// Kept in memory on purpose: the table has no "next attempt" column, the attempt count
/// that decides parking *is* in the table, and after a restart retrying at once is
/// harmless. Another engine does not see these deferrals; it may retry such an event
/// sooner, which only charges the event its attempts faster.
#[derive(Debug, Default)]
pub(super) struct Deferrals {
    until: HashMap<i64, Instant>,
}

impl Deferrals {
    /// Defers `id` after its `attempts`-th failed attempt.
    pub fn defer(&mut self, id: i64, attempts: i32, backoff: &Backoff, now: Instant) {
        let retry = u32::try_from(attempts).unwrap_or(1).max(1);
        self.until.insert(id, now + backoff.delay(retry));
    }

    pub fn forget(&mut self, id: i64) {
        self.until.remove(&id);
    }

    /// The events still waiting at `now` (forgetting those whose wait is over).
    pub fn waiting(&mut self, now: Instant) -> Vec<i64> {
        self.until.retain(|_, until| *until > now);
        self.until.keys().copied().collect()
    }

    /// When the next deferred event becomes due.
    pub fn next_due(&self) -> Option<Instant> {
        self.until.values().min().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BACKOFF: Backoff = Backoff {
        initial: Duration::from_millis(100),
        max: Duration::from_secs(5),
    };

    #[test]
    fn delay_doubles_within_jitter_and_stops_at_the_cap() {
        for retry in 1..=40 {
            let ceiling = Duration::from_millis(100)
                .saturating_mul(1u32 << (retry - 1).min(30))
                .min(Duration::from_secs(5));
            let d = BACKOFF.delay(retry);
            assert!(d >= ceiling / 2 && d <= ceiling, "retry {retry}: {d:?}");
        }
        assert!(BACKOFF.delay(u32::MAX) <= Duration::from_secs(5));
        assert!(BACKOFF.delay(0) <= Duration::from_millis(100));
    }

    #[test]
    fn deferred_events_wait_until_due_then_are_forgotten() {
        let mut deferrals = Deferrals::default();
        let now = Instant::now();
        deferrals.defer(7, 1, &BACKOFF, now);
        deferrals.defer(9, 3, &BACKOFF, now);
        let mut waiting = deferrals.waiting(now);
        waiting.sort_unstable();
        assert_eq!(waiting, vec![7, 9]);
        let first_due = deferrals.next_due().unwrap();
        assert!(first_due <= now + Duration::from_millis(100));

        // After the longest possible wait of event 7 (100 ms) but before event 9's
        // shortest (200 ms), only 9 still waits.
        assert_eq!(deferrals.waiting(now + Duration::from_millis(150)), vec![9]);
        deferrals.forget(9);
        assert!(deferrals.waiting(now).is_empty());
        assert_eq!(deferrals.next_due(), None);
    }
}
