//! Gradual rollout (the guide's Phase 4): the engine dispatches the requests whose id falls
//! in a bucket under `dispatch_rollout_percentage` and leaves the others to the legacy
//! dispatcher. The bucket is a hash of the id, so a request stays with one arm for its whole
//! life, and SQL computes the same one (`arreglame_rollout_bucket`, migration 5).

use sha2::{Digest, Sha256};
use uuid::Uuid;

/// The request's bucket, 0..=99: the first four bytes of SHA-256 over the id's canonical
/// text (lowercase, hyphenated, as PostgreSQL prints a uuid), big-endian, modulo 100.
pub fn bucket(id: Uuid) -> u8 {
    let digest = Sha256::digest(id.hyphenated().to_string().as_bytes());
    let head = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
    (head % 100) as u8
}

/// The share of requests this engine dispatches, 0 to 100.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RolloutPercentage(u8);

impl RolloutPercentage {
    /// Everything: a fresh engine database has no legacy dispatcher beside it.
    pub const ALL: RolloutPercentage = RolloutPercentage(100);

    pub fn new(percent: u8) -> Option<RolloutPercentage> {
        (percent <= 100).then_some(RolloutPercentage(percent))
    }

    pub fn percent(self) -> u8 {
        self.0
    }

    /// Whether the engine dispatches this request.
    pub fn includes(self, id: Uuid) -> bool {
        bucket(id) < self.0
    }
}

impl Default for RolloutPercentage {
    fn default() -> Self {
        RolloutPercentage::ALL
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_dispatches_nothing_and_hundred_everything() {
        let ids: Vec<Uuid> = (0..500).map(|_| Uuid::new_v4()).collect();
        let none = RolloutPercentage::new(0).unwrap();
        assert!(ids.iter().all(|id| !none.includes(*id)));
        assert!(ids.iter().all(|id| RolloutPercentage::ALL.includes(*id)));
        assert_eq!(RolloutPercentage::new(101), None);
    }

    #[test]
    fn a_larger_percentage_keeps_every_request_a_smaller_one_had() {
        let ten = RolloutPercentage::new(10).unwrap();
        let fifty = RolloutPercentage::new(50).unwrap();
        for _ in 0..2000 {
            let id = Uuid::new_v4();
            assert!(!ten.includes(id) || fifty.includes(id));
        }
    }

    #[test]
    fn ten_percent_takes_about_a_tenth() {
        let ten = RolloutPercentage::new(10).unwrap();
        let taken = (0..20_000).filter(|_| ten.includes(Uuid::new_v4())).count();
        // 2000 expected; 6 standard deviations (~42 each) either side.
        assert!((1750..=2250).contains(&taken), "{taken}");
    }

    #[test]
    fn the_bucket_of_a_known_id_is_fixed() {
        // Values PostgreSQL's arreglame_rollout_bucket answers (and Python's hashlib agrees);
        // tests/engine/migration.rs compares the two functions on many more ids.
        assert_eq!(bucket(Uuid::nil()), 52);
        let legacy_open = Uuid::parse_str("40000000-0000-4000-8000-000000000001").unwrap();
        assert_eq!(bucket(legacy_open), 64);
    }
}
