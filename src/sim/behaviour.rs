//! How simulated workers behave (issue 15, item 5): acceptance that falls with distance,
//! a think time before answering, offers left to time out, and per-worker reliability, with
//! a share of unreliable workers who cancel after accepting or do not show up for a booked
//! slot.
//!
//! Every draw is seeded. A worker's traits come from (seed, worker index); its answer to a
//! request comes from (seed, worker index, request index), so when two dispatch modes offer
//! the same request to the same worker, the worker answers the same way in both (common
//! random numbers: the modes differ by what dispatch did, not by the dice).

use std::time::Duration;

use super::Rng;

/// The scenario's behaviour knobs, from the command line.
#[derive(Debug, Clone, PartialEq)]
pub struct Behaviour {
    /// Chance of accepting an offer at 0 m.
    pub accept_near: f64,
    /// Distance at which that chance halves; 0 turns the distance effect off.
    pub accept_half_distance_m: f64,
    /// Share of offers a worker never answers (they time out).
    pub ignore_share: f64,
    /// Mean seconds a worker takes to answer an offer: exponentially distributed (most
    /// answer quickly, a few take long), cut at 4× the mean.
    pub think_seconds: f64,
    /// Share of workers who are unreliable.
    pub unreliable_share: f64,
}

/// What one worker is like, for the whole run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Traits {
    /// Chance of keeping a job once accepted.
    pub reliability: f64,
    /// Scales the acceptance chance (some workers are choosier than others).
    pub eagerness: f64,
    pub unreliable: bool,
}

/// A worker's answer to one offer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Answer {
    Accept {
        after: Duration,
    },
    Reject {
        after: Duration,
    },
    /// Left on screen until it expires.
    Ignore,
}

/// What a worker does with a job after accepting it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commitment {
    Keep,
    /// Sends `cancel_assignment` shortly after accepting.
    Cancel,
    /// Accepts a booked job and never sends `start_job`.
    NoShow,
}

/// Mixes a run seed with up to two indices into a seed for [`Rng::new`] (splitmix64 steps,
/// so neighbouring indices give unrelated streams).
pub fn mix(seed: u64, a: u64, b: u64) -> u64 {
    let mut z = seed;
    for part in [a, b] {
        z = z.wrapping_add(part.wrapping_add(0x9E37_79B9_7F4A_7C15));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
    }
    z
}

impl Behaviour {
    /// Worker `index`'s traits. Unreliable workers keep 30–60 % of their jobs (each its
    /// own share); the others keep every job, so a run without unreliable workers sends no
    /// cancellation at all (benchmarks of throughput stay what they were).
    pub fn traits(&self, seed: u64, index: u64) -> Traits {
        let mut rng = Rng::new(mix(seed, 0x7A17, index));
        let unreliable = rng.next_f64() < self.unreliable_share;
        let share = rng.next_f64();
        let reliability = if unreliable { 0.3 + 0.3 * share } else { 1.0 };
        Traits {
            reliability,
            eagerness: 0.85 + 0.15 * rng.next_f64(),
            unreliable,
        }
    }

    /// The chance that a worker with `traits` accepts a job `distance_m` away.
    pub fn accept_probability(&self, traits: &Traits, distance_m: f64) -> f64 {
        let falloff = if self.accept_half_distance_m > 0.0 {
            0.5f64.powf(distance_m.max(0.0) / self.accept_half_distance_m)
        } else {
            1.0
        };
        (self.accept_near * traits.eagerness * falloff).clamp(0.0, 1.0)
    }

    /// How the worker answers an offer, drawn from `rng` (seeded per worker and request).
    pub fn answer(&self, traits: &Traits, distance_m: f64, rng: &mut Rng) -> Answer {
        let ignore = rng.next_f64() < self.ignore_share;
        let accept = rng.next_f64() < self.accept_probability(traits, distance_m);
        let think = -(1.0 - rng.next_f64()).ln();
        let after = Duration::from_secs_f64(self.think_seconds * think.min(4.0));
        match (ignore, accept) {
            (true, _) => Answer::Ignore,
            (false, true) => Answer::Accept { after },
            (false, false) => Answer::Reject { after },
        }
    }

    /// Whether the worker keeps an accepted job. A worker who lets it go cancels a job
    /// wanted now, and does not show up for a booked one (a no-show needs a slot to miss).
    pub fn commitment(&self, traits: &Traits, booked: bool, rng: &mut Rng) -> Commitment {
        if rng.next_f64() < traits.reliability {
            Commitment::Keep
        } else if booked {
            Commitment::NoShow
        } else {
            Commitment::Cancel
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn behaviour() -> Behaviour {
        Behaviour {
            accept_near: 0.9,
            accept_half_distance_m: 2_000.0,
            ignore_share: 0.1,
            think_seconds: 2.0,
            unreliable_share: 0.25,
        }
    }

    /// A fully eager worker who keeps `reliability` of their jobs.
    fn worker(reliability: f64) -> Traits {
        Traits {
            reliability,
            eagerness: 1.0,
            unreliable: reliability < 1.0,
        }
    }

    #[test]
    fn acceptance_halves_at_the_half_distance_and_keeps_falling() {
        let b = behaviour();
        let t = worker(1.0);
        assert!((b.accept_probability(&t, 0.0) - 0.9).abs() < 1e-9);
        assert!((b.accept_probability(&t, 2_000.0) - 0.45).abs() < 1e-9);
        assert!(b.accept_probability(&t, 6_000.0) < b.accept_probability(&t, 4_000.0));
        let flat = Behaviour {
            accept_half_distance_m: 0.0,
            ..b
        };
        assert_eq!(flat.accept_probability(&t, 50_000.0), 0.9);
    }

    #[test]
    fn the_same_seed_gives_the_same_workers_and_answers() {
        let b = behaviour();
        for i in 0..50 {
            assert_eq!(b.traits(7, i), b.traits(7, i));
            let t = b.traits(7, i);
            let answer = |req| b.answer(&t, 800.0, &mut Rng::new(mix(7, i, req)));
            assert_eq!(answer(3), answer(3));
        }
        let unreliable_7: Vec<bool> = (0..50).map(|i| b.traits(7, i).unreliable).collect();
        let unreliable_8: Vec<bool> = (0..50).map(|i| b.traits(8, i).unreliable).collect();
        assert_ne!(unreliable_7, unreliable_8, "another seed, other workers");
    }

    #[test]
    fn about_the_unreliable_share_of_workers_is_unreliable_and_keeps_fewer_jobs() {
        let b = behaviour();
        let fleet: Vec<Traits> = (0..2_000).map(|i| b.traits(1, i)).collect();
        let unreliable = fleet.iter().filter(|t| t.unreliable).count();
        assert!((400..600).contains(&unreliable), "{unreliable} of 2000");
        for t in &fleet {
            assert_eq!(t.unreliable, t.reliability < 1.0, "{t:?}");
            assert!(t.reliability >= 0.3, "{t:?}");
        }
    }

    #[test]
    fn a_worker_who_lets_a_job_go_cancels_it_now_or_misses_its_slot() {
        let b = behaviour();
        let (flaky, solid) = (worker(0.0), worker(1.0));
        let mut rng = Rng::new(1);
        assert_eq!(b.commitment(&flaky, false, &mut rng), Commitment::Cancel);
        assert_eq!(b.commitment(&flaky, true, &mut rng), Commitment::NoShow);
        assert_eq!(b.commitment(&solid, true, &mut rng), Commitment::Keep);
    }

    #[test]
    fn answers_follow_the_shares_and_think_within_bounds() {
        let b = behaviour();
        let t = b.traits(3, 0);
        let mut rng = Rng::new(11);
        let (mut ignored, mut accepted, mut thought) = (0, 0, Duration::ZERO);
        for _ in 0..5_000 {
            match b.answer(&t, 0.0, &mut rng) {
                Answer::Ignore => ignored += 1,
                Answer::Accept { after } => {
                    accepted += 1;
                    thought += after;
                    assert!(
                        after <= Duration::from_secs(8),
                        "cut at 4× the mean: {after:?}"
                    );
                }
                Answer::Reject { .. } => {}
            }
        }
        assert!((350..650).contains(&ignored), "{ignored}");
        // An exponential cut at 4× its mean keeps about 98 % of the mean.
        let mean = thought.as_secs_f64() / accepted as f64;
        assert!((1.8..2.1).contains(&mean), "mean think {mean} s");
        let expected = 5_000.0 * 0.9 * b.accept_probability(&t, 0.0);
        assert!(
            (accepted as f64 - expected).abs() < 250.0,
            "{accepted} vs {expected}"
        );
    }
}
