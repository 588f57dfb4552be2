//! A sustained rate with a burst, and the token bucket that enforces it (worker messages,
//! locations, pricing per caller). Pure: the caller passes the clock.

use std::time::Duration;

use tokio::time::Instant;

/// A sustained rate with a burst allowance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: u32,
}

/// A token bucket: starts full, refills continuously, never above the burst.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    tokens: f32,
    last: Instant,
}

impl TokenBucket {
    pub fn full(rate: Rate, now: Instant) -> TokenBucket {
        TokenBucket {
            tokens: rate.burst as f32,
            last: now,
        }
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self, rate: Rate, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        let refilled = self.tokens as f64 + elapsed * rate.per_second;
        self.tokens = refilled.min(rate.burst as f64) as f32;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// True when the bucket was last used more than `span` before `now`.
    pub fn idle_for(&self, now: Instant, span: Duration) -> bool {
        now.saturating_duration_since(self.last) > span
    }

    /// Time until the next token, for the `RATE_LIMITED` message.
    pub fn retry_after(&self, rate: Rate) -> Duration {
        if rate.per_second <= 0.0 {
            return Duration::MAX;
        }
        Duration::try_from_secs_f64((1.0 - self.tokens as f64).max(0.0) / rate.per_second)
            .unwrap_or(Duration::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_allows_the_burst_then_refills_at_the_rate() {
        let rate = Rate {
            per_second: 2.0,
            burst: 3,
        };
        let t0 = Instant::now();
        let mut b = TokenBucket::full(rate, t0);
        assert!((0..3).all(|_| b.try_take(rate, t0)));
        assert!(!b.try_take(rate, t0));
        assert_eq!(b.retry_after(rate), Duration::from_millis(500));
        assert!(!b.try_take(rate, t0 + Duration::from_millis(400)));
        assert!(b.try_take(rate, t0 + Duration::from_millis(500)));
        // A long pause refills to the burst, never beyond.
        let later = t0 + Duration::from_secs(3600);
        assert!((0..3).all(|_| b.try_take(rate, later)));
        assert!(!b.try_take(rate, later));
    }
}
