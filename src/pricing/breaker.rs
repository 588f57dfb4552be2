//! Circuit breaker in front of Gemini: after `failure_threshold` consecutive failed quotes
//! it opens and every quote goes straight to the rules (no request leaves); after
//! `cool_down` one probe request is let through (half-open): success closes the circuit,
//! failure opens it for another cool-down.

use std::{sync::Mutex, time::Duration};

use serde::Serialize;
use tokio::time::Instant;

/// The breaker's state, as reported in [`super::PricingStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CircuitState {
    Closed,
    Open,
    HalfOpen,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probing: bool },
}

#[derive(Debug)]
pub(crate) struct CircuitBreaker {
    failure_threshold: u32,
    cool_down: Duration,
    /// A std Mutex: every critical section is a few comparisons, never an `.await`.
    state: Mutex<State>,
}

/// Leave to call Gemini once. Settle it with [`Permit::succeeded`] or [`Permit::failed`];
/// a permit dropped unsettled (the quote was cancelled) frees the half-open probe slot.
#[derive(Debug)]
pub(crate) struct Permit<'a> {
    breaker: &'a CircuitBreaker,
    probe: bool,
    settled: bool,
}

impl CircuitBreaker {
    pub fn new(failure_threshold: u32, cool_down: Duration) -> CircuitBreaker {
        CircuitBreaker {
            failure_threshold: failure_threshold.max(1),
            cool_down,
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    /// `None` while open (or while the half-open probe is out).
    pub fn try_acquire(&self, now: Instant) -> Option<Permit<'_>> {
        let mut state = self.lock();
        let probe = match *state {
            State::Closed { .. } => false,
            State::Open { until } if now < until => return None,
            State::Open { .. } | State::HalfOpen { probing: false } => {
                *state = State::HalfOpen { probing: true };
                tracing::info!(target: "Gemini", "[Gemini] circuit half-open: sending one probe request");
                true
            }
            State::HalfOpen { probing: true } => return None,
        };
        Some(Permit {
            breaker: self,
            probe,
            settled: false,
        })
    }

    pub fn state(&self, now: Instant) -> CircuitState {
        match *self.lock() {
            State::Closed { .. } => CircuitState::Closed,
            State::Open { until } if now < until => CircuitState::Open,
            State::Open { .. } | State::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn succeeded(&self) {
        let mut state = self.lock();
        if !matches!(*state, State::Closed { .. }) {
            tracing::info!(target: "Gemini", "[Gemini] circuit closed: Gemini answers again");
        }
        *state = State::Closed { failures: 0 };
    }

    fn failed(&self, now: Instant) {
        let mut state = self.lock();
        let open = State::Open {
            until: now + self.cool_down,
        };
        match *state {
            State::Closed { failures } if failures + 1 >= self.failure_threshold => {
                *state = open;
                tracing::warn!(target: "Gemini", failures = failures + 1, cool_down_ms = self.cool_down.as_millis() as u64,
                    "[Gemini] circuit opened after consecutive failures; RuleBasedPricingEngine prices meanwhile");
            }
            State::Closed { failures } => {
                *state = State::Closed {
                    failures: failures + 1,
                }
            }
            State::HalfOpen { .. } => {
                *state = open;
                tracing::warn!(target: "Gemini", cool_down_ms = self.cool_down.as_millis() as u64,
                    "[Gemini] probe failed; circuit open again");
            }
            // Another quote opened it meanwhile; its cool-down stands.
            State::Open { .. } => {}
        }
    }

    fn abandon_probe(&self) {
        let mut state = self.lock();
        if let State::HalfOpen { probing: true } = *state {
            *state = State::HalfOpen { probing: false };
        }
    }
}

impl Permit<'_> {
    pub fn succeeded(mut self) {
        self.settled = true;
        self.breaker.succeeded();
    }

    pub fn failed(mut self, now: Instant) {
        self.settled = true;
        self.breaker.failed(now);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.settled && self.probe {
            self.breaker.abandon_probe();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOL_DOWN: Duration = Duration::from_secs(30);

    #[test]
    fn opens_after_the_threshold_of_consecutive_failures() {
        let breaker = CircuitBreaker::new(3, COOL_DOWN);
        let t0 = Instant::now();
        for _ in 0..2 {
            breaker.try_acquire(t0).unwrap().failed(t0);
        }
        assert_eq!(breaker.state(t0), CircuitState::Closed);
        // A success in between resets the count.
        breaker.try_acquire(t0).unwrap().succeeded();
        for _ in 0..2 {
            breaker.try_acquire(t0).unwrap().failed(t0);
        }
        assert_eq!(breaker.state(t0), CircuitState::Closed);
        breaker.try_acquire(t0).unwrap().failed(t0);
        assert_eq!(breaker.state(t0), CircuitState::Open);
        assert!(breaker.try_acquire(t0 + COOL_DOWN / 2).is_none());
    }

    #[test]
    fn after_the_cool_down_one_probe_decides() {
        let breaker = CircuitBreaker::new(1, COOL_DOWN);
        let t0 = Instant::now();
        breaker.try_acquire(t0).unwrap().failed(t0);
        let t1 = t0 + COOL_DOWN;
        assert_eq!(breaker.state(t1), CircuitState::HalfOpen);
        let probe = breaker.try_acquire(t1).expect("probe allowed");
        assert!(
            breaker.try_acquire(t1).is_none(),
            "only one probe at a time"
        );
        probe.failed(t1);
        assert_eq!(breaker.state(t1), CircuitState::Open);
        assert!(breaker.try_acquire(t1 + COOL_DOWN / 2).is_none());

        let t2 = t1 + COOL_DOWN;
        breaker.try_acquire(t2).unwrap().succeeded();
        assert_eq!(breaker.state(t2), CircuitState::Closed);
        assert!(breaker.try_acquire(t2).is_some());
    }

    #[test]
    fn a_cancelled_probe_frees_the_probe_slot() {
        let breaker = CircuitBreaker::new(1, COOL_DOWN);
        let t0 = Instant::now();
        breaker.try_acquire(t0).unwrap().failed(t0);
        let t1 = t0 + COOL_DOWN;
        drop(breaker.try_acquire(t1).unwrap());
        assert!(breaker.try_acquire(t1).is_some());
    }
}
