//! Who is calling, and what one caller's operations may cost.
//!
//! - [`Caller`]: from the bearer token, checked against the database (a customer token for
//!   a customer that does not exist, or was deactivated, is refused at the door).
//! - [`PricingLimiter`]: quotes per caller per minute (the customer, or the client address
//!   when anonymous); past it, `RATE_LIMITED` with `extensions.retryAfterMs`.
//! - [`OperationBudget`]: how many quotes of one operation may ask the AI; 150 aliased
//!   `estimateJob`s make one Gemini call, and the rules price the rest.

use std::{
    net::IpAddr,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use async_graphql::{Context, ErrorExtensions};
use dashmap::DashMap;
use tokio::time::Instant;
use uuid::Uuid;

use super::error::ApiError;
use crate::{
    auth::{AuthError, Role, TokenKeys},
    domain::rate::{Rate, TokenBucket},
    identity::Identities,
    pricing::AiUse,
    store::ServiceRequest,
};

/// Who is calling, from the bearer token.
#[derive(Debug, Clone)]
pub enum Caller {
    Anonymous,
    Customer(Uuid),
    Worker(Uuid),
    Ops(Uuid),
    /// A token was sent but is not valid (or its subject may not act).
    Invalid(AuthError),
}

impl Caller {
    /// Verifies the token and, for customers, that the customer exists and is active.
    /// Worker tokens are not checked here: workers have no GraphQL operations.
    pub async fn identify(
        keys: &TokenKeys,
        identities: &Identities,
        token: Option<&str>,
    ) -> Caller {
        let Some(token) = token else {
            return Caller::Anonymous;
        };
        let claims = match keys.verify(token) {
            Ok(c) => c,
            Err(e) => return Caller::Invalid(e),
        };
        match claims.role {
            Role::Customer => match identities.customer(claims.sub).await {
                Ok(()) => Caller::Customer(claims.sub),
                Err(e) => Caller::Invalid(e.into()),
            },
            Role::Worker => Caller::Worker(claims.sub),
            Role::Ops => Caller::Ops(claims.sub),
        }
    }

    /// The customer (or ops) behind the call, or the reason there is none.
    pub fn require_customer_or_ops(&self) -> Result<&Caller, ApiError> {
        match self {
            Caller::Customer(_) | Caller::Ops(_) => Ok(self),
            Caller::Anonymous => Err(ApiError::Unauthenticated(
                "an Authorization: Bearer token is required".into(),
            )),
            Caller::Invalid(e) => Err(e.clone().into()),
            Caller::Worker(_) => Err(ApiError::Forbidden("workers use the WebSocket API".into())),
        }
    }

    pub fn require_customer(&self) -> Result<Uuid, ApiError> {
        match self.require_customer_or_ops()? {
            Caller::Customer(id) => Ok(*id),
            _ => Err(ApiError::Forbidden(
                "this operation is for customers".into(),
            )),
        }
    }

    /// Customers see their own requests; ops see all.
    pub fn may_read(&self, row: &ServiceRequest) -> Result<(), ApiError> {
        match self.require_customer_or_ops()? {
            Caller::Ops(_) => Ok(()),
            Caller::Customer(id) if row.customer_id == Some(*id) => Ok(()),
            _ => Err(ApiError::Forbidden(
                "this service request belongs to another customer".into(),
            )),
        }
    }
}

/// Whose quota a quote is taken from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuotaKey {
    Customer(Uuid),
    Address(IpAddr),
    /// No address known (an embedding without connect info): one shared bucket.
    Unknown,
}

impl QuotaKey {
    pub fn of(caller: &Caller, peer: Option<IpAddr>) -> QuotaKey {
        match (caller, peer) {
            (Caller::Customer(id), _) => QuotaKey::Customer(*id),
            // IPv6 by /64: one subscriber gets a whole /64, and rotating through it must
            // not mint fresh quotas.
            (_, Some(IpAddr::V6(v6))) => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                QuotaKey::Address(IpAddr::V6(prefix.into()))
            }
            (_, Some(ip)) => QuotaKey::Address(ip),
            _ => QuotaKey::Unknown,
        }
    }
}

/// Buckets kept before idle ones are swept (a flood of addresses cannot grow it forever).
const SWEEP_ABOVE: usize = 50_000;

/// Quotes per caller: a token bucket each.
pub struct PricingLimiter {
    rate: Rate,
    buckets: DashMap<QuotaKey, TokenBucket>,
}

impl PricingLimiter {
    pub fn new(per_minute: u32, burst: u32) -> PricingLimiter {
        PricingLimiter {
            rate: Rate {
                per_second: per_minute as f64 / 60.0,
                burst: burst.max(1),
            },
            buckets: DashMap::new(),
        }
    }

    /// Takes one quote from the caller's bucket, or says how long to wait.
    pub fn take(&self, key: QuotaKey) -> Result<(), Duration> {
        let now = Instant::now();
        if self.buckets.len() > SWEEP_ABOVE {
            // A bucket idle long enough to be full again carries no information.
            let full_after = Duration::from_secs_f64(self.rate.burst as f64 / self.rate.per_second);
            self.buckets.retain(|_, b| !b.idle_for(now, full_after));
        }
        let mut bucket = self
            .buckets
            .entry(key)
            .or_insert_with(|| TokenBucket::full(self.rate, now));
        if bucket.try_take(self.rate, now) {
            Ok(())
        } else {
            Err(bucket.retry_after(self.rate))
        }
    }
}

/// `RATE_LIMITED`, with when to retry.
pub fn rate_limited(retry_after: Duration) -> async_graphql::Error {
    let ms = retry_after.as_millis().min(u64::MAX as u128) as u64;
    async_graphql::Error::new(format!("too many price quotes; retry in {ms} ms")).extend_with(
        |_, ext| {
            ext.set("code", "RATE_LIMITED");
            ext.set("retryAfterMs", ms);
        },
    )
}

/// Quotes of one operation that may ask the AI; the rest are priced by the rules.
pub struct OperationBudget {
    ai_quotes_left: AtomicU32,
}

/// AI-priced quotes per GraphQL operation.
pub const AI_QUOTES_PER_OPERATION: u32 = 1;

impl Default for OperationBudget {
    fn default() -> Self {
        OperationBudget {
            ai_quotes_left: AtomicU32::new(AI_QUOTES_PER_OPERATION),
        }
    }
}

impl OperationBudget {
    pub fn ai_use(&self) -> AiUse {
        let took = self
            .ai_quotes_left
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        match took {
            Ok(_) => AiUse::Allowed,
            Err(_) => AiUse::Denied("operation_budget"),
        }
    }
}

/// Takes one quote from the caller's quota and says whether it may ask the AI.
pub fn pricing_gate(ctx: &Context<'_>) -> async_graphql::Result<AiUse> {
    let peer = ctx.data_opt::<PeerAddress>().map(|p| p.0);
    let key = QuotaKey::of(super::caller(ctx), peer);
    ctx.data_unchecked::<PricingLimiter>()
        .take(key)
        .map_err(rate_limited)?;
    Ok(ctx
        .data_opt::<OperationBudget>()
        .map_or(AiUse::Denied("operation_budget"), OperationBudget::ai_use))
}

/// The client's address, for the anonymous pricing quota.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddress(pub std::net::IpAddr);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_operation_asks_the_ai_once() {
        let budget = OperationBudget::default();
        assert_eq!(budget.ai_use(), AiUse::Allowed);
        for _ in 0..150 {
            assert_eq!(budget.ai_use(), AiUse::Denied("operation_budget"));
        }
    }

    #[tokio::test]
    async fn the_limiter_allows_a_burst_per_caller_then_says_when() {
        tokio::time::pause();
        let limiter = PricingLimiter::new(60, 3);
        let (a, b) = (QuotaKey::Customer(Uuid::new_v4()), QuotaKey::Unknown);
        assert!((0..3).all(|_| limiter.take(a).is_ok()));
        let wait = limiter.take(a).unwrap_err();
        assert_eq!(wait, Duration::from_secs(1));
        assert!(limiter.take(b).is_ok(), "another caller has its own bucket");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(limiter.take(a).is_ok());
    }
}
