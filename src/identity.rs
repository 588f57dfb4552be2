//! Identities checked against the database. A valid signature says who the token was
//! issued to, not that this customer or worker still exists or is still active: every
//! surface asks [`Identities`] before acting on a token's subject.
//!
//! Answers are cached for [`CACHE_TTL`], so a deactivation takes effect within seconds
//! while a busy customer costs one query per few seconds, not one per request. Live worker
//! sessions are re-checked on the same period (`gateway::watch_identities`) and closed with
//! 4005 when their worker is gone.
//!
//! Ops tokens have no table to check against: an operator is whoever holds a token signed
//! with the operators' secret (docs/architecture.md, "Identities").

use std::time::{Duration, Instant};

use dashmap::DashMap;
use uuid::Uuid;

use crate::store::{Store, StoreError, WorkerProfile};

/// How long an answer about an identity is reused.
pub const CACHE_TTL: Duration = Duration::from_secs(5);
/// Entries past which expired ones are swept on insert (the cache never grows unbounded).
const SWEEP_ABOVE: usize = 100_000;

/// Why a token's subject may not act.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("no such {0}")]
    Unknown(&'static str),
    #[error("this {0} account is deactivated")]
    Deactivated(&'static str),
    /// The database did not answer: nobody is let in unchecked.
    #[error("identity check unavailable; retry shortly")]
    Unavailable,
}

/// The identity checks, with their short-lived cache.
pub struct Identities {
    store: Store,
    ttl: Duration,
    customers: DashMap<Uuid, (Instant, Option<bool>)>,
    workers: DashMap<Uuid, (Instant, Option<WorkerProfile>)>,
}

impl Identities {
    pub fn new(store: Store) -> Identities {
        Identities::with_ttl(store, CACHE_TTL)
    }

    pub fn with_ttl(store: Store, ttl: Duration) -> Identities {
        Identities {
            store,
            ttl,
            customers: DashMap::new(),
            workers: DashMap::new(),
        }
    }

    /// Ok when the customer exists and is active.
    pub async fn customer(&self, id: Uuid) -> Result<(), IdentityError> {
        let active = match fresh(&self.customers, id, self.ttl) {
            Some(active) => active,
            None => {
                let active = self
                    .store
                    .customer_is_active(id)
                    .await
                    .map_err(unavailable)?;
                remember(&self.customers, id, active, self.ttl);
                active
            }
        };
        match active {
            None => Err(IdentityError::Unknown("customer")),
            Some(false) => Err(IdentityError::Deactivated("customer")),
            Some(true) => Ok(()),
        }
    }

    /// The worker's profile when the worker exists and is active.
    pub async fn worker(&self, id: Uuid) -> Result<WorkerProfile, IdentityError> {
        let profile = match fresh(&self.workers, id, self.ttl) {
            Some(profile) => profile,
            None => {
                let profile = self.store.worker_profile(id).await.map_err(unavailable)?;
                remember(&self.workers, id, profile.clone(), self.ttl);
                profile
            }
        };
        match profile {
            None => Err(IdentityError::Unknown("worker")),
            Some(p) if !p.is_active => Err(IdentityError::Deactivated("worker")),
            Some(p) => Ok(p),
        }
    }

    /// Drops what is cached about a worker (its session was closed as deactivated).
    pub fn forget_worker(&self, id: Uuid) {
        self.workers.remove(&id);
    }
}

impl From<IdentityError> for crate::auth::AuthError {
    fn from(e: IdentityError) -> Self {
        use crate::auth::AuthError;
        match e {
            IdentityError::Unknown(what) => AuthError::UnknownSubject(what),
            IdentityError::Deactivated(what) => AuthError::Deactivated(what),
            IdentityError::Unavailable => AuthError::Unverifiable,
        }
    }
}

fn unavailable(e: StoreError) -> IdentityError {
    tracing::warn!(target: "Auth", error = %e, "identity check failed");
    IdentityError::Unavailable
}

fn fresh<T: Clone>(cache: &DashMap<Uuid, (Instant, T)>, id: Uuid, ttl: Duration) -> Option<T> {
    let entry = cache.get(&id)?;
    (entry.0.elapsed() < ttl).then(|| entry.1.clone())
}

fn remember<T>(cache: &DashMap<Uuid, (Instant, T)>, id: Uuid, value: T, ttl: Duration) {
    if cache.len() > SWEEP_ABOVE {
        cache.retain(|_, (at, _)| at.elapsed() < ttl);
    }
    cache.insert(id, (Instant::now(), value));
}

/// The skills a worker is offered jobs for: those on its profile, narrowed by what the app
/// claims (a worker may choose not to mow today), never widened by it. No claim, or an
/// empty one, means every skill on the profile. Returns (effective, claimed but ignored).
pub fn effective_skills(profile: &[String], claimed: &[String]) -> (Vec<String>, Vec<String>) {
    if claimed.is_empty() {
        return (profile.to_vec(), Vec::new());
    }
    let (mut kept, mut ignored) = (Vec::new(), Vec::new());
    for skill in claimed {
        let list = if profile.contains(skill) {
            &mut kept
        } else {
            &mut ignored
        };
        if !list.contains(skill) {
            list.push(skill.clone());
        }
    }
    (kept, ignored)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn skills(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn a_claim_narrows_the_profile_but_never_widens_it() {
        let profile = skills(&["lawn_mowing", "pruning"]);
        assert_eq!(
            effective_skills(&profile, &skills(&["cleaning"])),
            (vec![], skills(&["cleaning"]))
        );
        assert_eq!(
            effective_skills(&profile, &skills(&["pruning", "cleaning", "pruning"])),
            (skills(&["pruning"]), skills(&["cleaning"]))
        );
        assert_eq!(effective_skills(&profile, &[]), (profile.clone(), vec![]));
        assert_eq!(
            effective_skills(&[], &skills(&["pruning"])).0,
            Vec::<String>::new()
        );
    }
}
