//! GraphQL object and input types. Money fields are integer centavos (`Int`).

use async_graphql::{ComplexObject, Context, Enum, InputObject, SimpleObject, ID};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{error::ApiError, Caller};
use crate::{
    api::ApiContext,
    domain::Status,
    pricing::{EngineKind, PriceQuote},
    store::{OfferOutcome, ServiceRequest},
};

/// A price split into what the worker gets and what the platform keeps (centavos).
#[derive(SimpleObject, Clone, Debug)]
pub struct Price {
    /// What the customer pays, in centavos.
    pub total: i64,
    /// What the worker receives, in centavos.
    pub worker_net: i64,
    /// The platform's commission, in centavos. `total = workerNet + platformFee`.
    pub platform_fee: i64,
}

/// Which engine priced a job.
#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
pub enum PricingEngine {
    /// Gemini chose difficulty and extras; the rules computed the money.
    Gemini,
    /// The rule-based engine alone.
    Rules,
}

impl PricingEngine {
    /// From the value stored in `service_requests."pricingEngine"` (`gemini`, `rules`).
    pub fn from_stored(value: &str) -> Option<PricingEngine> {
        match value {
            "gemini" => Some(PricingEngine::Gemini),
            "rules" => Some(PricingEngine::Rules),
            _ => None,
        }
    }
}

/// How hard a job is; each level has a price multiplier (`difficulty_multipliers`).
#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
pub enum Difficulty {
    Easy,
    Medium,
    Hard,
    Extreme,
}

impl Difficulty {
    /// The level's code in `difficulty_multipliers.level`.
    pub fn code(self) -> &'static str {
        match self {
            Difficulty::Easy => "EASY",
            Difficulty::Medium => "MEDIUM",
            Difficulty::Hard => "HARD",
            Difficulty::Extreme => "EXTREME",
        }
    }

    pub fn from_code(code: &str) -> Option<Difficulty> {
        [
            Difficulty::Easy,
            Difficulty::Medium,
            Difficulty::Hard,
            Difficulty::Extreme,
        ]
        .into_iter()
        .find(|d| d.code() == code)
    }
}

impl From<EngineKind> for PricingEngine {
    fn from(k: EngineKind) -> Self {
        match k {
            EngineKind::Gemini => PricingEngine::Gemini,
            EngineKind::Rules => PricingEngine::Rules,
        }
    }
}

#[derive(SimpleObject, Clone, Debug)]
pub struct AppliedExtra {
    pub code: String,
    /// Decimal multiplier, e.g. "1.2".
    pub multiplier: String,
}

/// How the price was built: base × difficulty × extras, then the commission split.
#[derive(SimpleObject, Clone, Debug)]
pub struct PriceBreakdown {
    /// The service category code, e.g. `lawn_mowing`. A string, not an enum: categories are
    /// rows of the `service_categories` table, which ops extend without a schema change.
    pub category: String,
    /// max(rate per m² × m², category minimum), centavos.
    pub base: i64,
    pub difficulty_level: Difficulty,
    pub difficulty_multiplier: String,
    pub extras: Vec<AppliedExtra>,
    /// Platform commission as a fraction, e.g. "0.15".
    pub commission_rate: String,
}

#[derive(SimpleObject, Clone, Debug)]
pub struct JobEstimate {
    pub price: Price,
    pub currency: String,
    pub breakdown: PriceBreakdown,
    pub engine: PricingEngine,
}

impl TryFrom<PriceQuote> for JobEstimate {
    type Error = ApiError;

    /// Fails only if the pricing tables hold a difficulty level outside [`Difficulty`].
    fn try_from(q: PriceQuote) -> Result<Self, ApiError> {
        let difficulty_level =
            Difficulty::from_code(&q.breakdown.difficulty_level).ok_or_else(|| {
                ApiError::Internal(format!(
                    "difficulty level {:?} of the pricing tables is not a GraphQL Difficulty",
                    q.breakdown.difficulty_level
                ))
            })?;
        Ok(JobEstimate {
            price: Price {
                total: q.total.0,
                worker_net: q.worker_net.0,
                platform_fee: q.platform_fee.0,
            },
            currency: q.currency,
            breakdown: PriceBreakdown {
                category: q.breakdown.category,
                base: q.breakdown.base.0,
                difficulty_level,
                difficulty_multiplier: q.breakdown.difficulty_multiplier.to_string(),
                extras: q
                    .breakdown
                    .extras
                    .into_iter()
                    .map(|(code, m)| AppliedExtra {
                        code,
                        multiplier: m.to_string(),
                    })
                    .collect(),
                commission_rate: q.breakdown.commission_rate.to_string(),
            },
            engine: q.engine.into(),
        })
    }
}

#[derive(InputObject, Clone, Debug)]
pub struct EstimateJobInput {
    /// The photo, base64 or a `data:image/...;base64,` URL. Optional; an unreadable one is ignored.
    pub image: Option<String>,
    pub description: String,
    pub square_meters: f64,
    /// Service category code (default `lawn_mowing`). A string, not an enum: categories are
    /// rows of the `service_categories` table, which ops extend without a schema change.
    pub category: Option<String>,
    /// Extra codes, e.g. `tall_grass`.
    pub extras: Option<Vec<String>>,
    /// Chosen by the pricing engine when absent.
    pub difficulty: Option<Difficulty>,
}

#[derive(InputObject, Clone, Debug)]
pub struct CreateServiceRequestInput {
    pub latitude: f64,
    pub longitude: f64,
    pub address: String,
    pub description: String,
    pub square_meters: f64,
    pub image: Option<String>,
    /// Service category code (default `lawn_mowing`); a string, like `EstimateJobInput.category`.
    pub category: Option<String>,
    pub extras: Option<Vec<String>>,
    /// Chosen by the pricing engine when absent.
    pub difficulty: Option<Difficulty>,
    /// Retrying with the same key returns the request the first call created.
    pub idempotency_key: Option<String>,
    /// A booked time slot (RFC 3339), with `scheduledEnd`; absent means as soon as possible.
    /// The request waits as SCHEDULED until `dispatch_lead_minutes` before the start.
    pub scheduled_start: Option<DateTime<Utc>>,
    pub scheduled_end: Option<DateTime<Utc>>,
}

#[derive(SimpleObject, Clone, Debug)]
pub struct Location {
    pub latitude: f64,
    pub longitude: f64,
}

/// The worker a customer sees once assigned.
#[derive(SimpleObject, Clone, Debug)]
pub struct WorkerSummary {
    pub id: ID,
    pub name: String,
    pub rating: f64,
}

pub async fn worker_summary(
    state: &ApiContext,
    id: Option<Uuid>,
) -> Result<Option<WorkerSummary>, ApiError> {
    let Some(id) = id else { return Ok(None) };
    let row = state.store.worker_summary(id).await?;
    Ok(row.map(|(name, rating)| WorkerSummary {
        id: ID(id.to_string()),
        name,
        rating,
    }))
}

/// A customer's service request.
#[derive(SimpleObject, Clone, Debug)]
#[graphql(complex, name = "ServiceRequest")]
pub struct ServiceRequestNode {
    pub id: ID,
    pub status: Status,
    /// Increases with every state change.
    pub version: i32,
    pub assignment_attempts: i32,
    pub city_id: Option<String>,
    pub address: Option<String>,
    pub description: Option<String>,
    pub square_meters: Option<f64>,
    pub location: Option<Location>,
    pub price: Option<Price>,
    pub currency: String,
    /// Which engine priced the request.
    pub pricing_engine: Option<PricingEngine>,
    /// While OFFERING: when the current offer expires.
    pub worker_timeout_at: Option<DateTime<Utc>>,
    pub cancelled_at: Option<DateTime<Utc>>,
    pub cancellation_fee: Option<i64>,
    pub unassigned_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    /// The booked slot; null for a job wanted now.
    pub scheduled_start: Option<DateTime<Utc>>,
    pub scheduled_end: Option<DateTime<Utc>>,
    #[graphql(skip)]
    pub assigned_worker_id: Option<Uuid>,
}

#[ComplexObject]
impl ServiceRequestNode {
    /// The assigned worker, once a worker accepted.
    async fn assigned_worker(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<Option<WorkerSummary>> {
        Ok(worker_summary(ctx.data_unchecked::<ApiContext>(), self.assigned_worker_id).await?)
    }

    /// Ops only: every offer made, with distance, radius step and outcome.
    async fn dispatch_trail(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<OfferTrail>> {
        if !matches!(ctx.data_unchecked::<Caller>(), Caller::Ops(_)) {
            return Err(ApiError::Forbidden("the dispatch trail is for ops".into()).into());
        }
        let state = ctx.data_unchecked::<ApiContext>();
        let id: Uuid = self
            .id
            .parse()
            .map_err(|_| ApiError::BadUserInput("bad id".into()))?;
        let offers = state
            .store
            .offers_for_request(id)
            .await
            .map_err(ApiError::from)?;
        Ok(offers
            .into_iter()
            .map(|o| OfferTrail {
                attempt: o.attempt,
                worker_id: ID(o.worker_id.to_string()),
                distance_meters: o.distance_meters,
                radius_meters: o.radius_meters,
                candidates_considered: o.candidates_considered,
                sent_at: o.sent_at,
                expires_at: o.expires_at,
                outcome: o.outcome.as_deref().and_then(OfferOutcome::parse),
                responded_at: o.responded_at,
                reject_reason: o.reject_reason,
                candidates: o
                    .candidate_scores
                    .map(|scores| scores.0.into_iter().map(ScoredCandidate::from).collect())
                    .unwrap_or_default(),
            })
            .collect())
    }
}

/// One dispatch decision: who was offered the job, how far, and what happened.
#[derive(SimpleObject, Clone, Debug)]
pub struct OfferTrail {
    pub attempt: i32,
    pub worker_id: ID,
    pub distance_meters: Option<f64>,
    pub radius_meters: Option<i32>,
    pub candidates_considered: Option<i32>,
    pub sent_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// Null while the offer is pending.
    pub outcome: Option<OfferOutcome>,
    pub responded_at: Option<DateTime<Utc>>,
    pub reject_reason: Option<String>,
    /// With `candidate_ranking = scored`: the candidates of this search by score, the
    /// worker offered first. Empty when candidates were taken nearest first.
    pub candidates: Vec<ScoredCandidate>,
}

/// A ranked candidate: its score (the weighted mean of its parts) and the parts.
#[derive(SimpleObject, Clone, Debug)]
pub struct ScoredCandidate {
    pub worker_id: ID,
    pub distance_meters: f64,
    pub score: f64,
    pub distance: f64,
    pub acceptance: f64,
    pub rating: f64,
    pub reliability: f64,
    pub fairness: f64,
}

impl From<crate::domain::offer_policy::CandidateScore> for ScoredCandidate {
    fn from(c: crate::domain::offer_policy::CandidateScore) -> Self {
        ScoredCandidate {
            worker_id: ID(c.worker_id.to_string()),
            distance_meters: c.distance_meters,
            score: c.score,
            distance: c.parts.distance,
            acceptance: c.parts.acceptance,
            rating: c.parts.rating,
            reliability: c.parts.reliability,
            fairness: c.parts.fairness,
        }
    }
}

impl From<&ServiceRequest> for ServiceRequestNode {
    fn from(r: &ServiceRequest) -> Self {
        ServiceRequestNode {
            id: ID(r.id.to_string()),
            status: r.status,
            version: r.version,
            assignment_attempts: r.assignment_attempts,
            city_id: r.city_id.clone(),
            address: r.address.clone(),
            description: r.description.clone(),
            square_meters: r.square_meters,
            location: r.position().map(|(lon, lat)| Location {
                latitude: lat,
                longitude: lon,
            }),
            price: match (
                r.price_total_cents,
                r.worker_net_cents,
                r.platform_fee_cents,
            ) {
                (Some(total), Some(worker_net), Some(platform_fee)) => Some(Price {
                    total,
                    worker_net,
                    platform_fee,
                }),
                _ => None,
            },
            currency: r.currency.clone(),
            pricing_engine: r
                .pricing_engine
                .as_deref()
                .and_then(PricingEngine::from_stored),
            worker_timeout_at: r.worker_timeout_at,
            cancelled_at: r.cancelled_at,
            cancellation_fee: r.cancellation_fee_cents,
            unassigned_reason: r.unassigned_reason.clone(),
            created_at: r.created_at,
            updated_at: r.updated_at,
            completed_at: r.completed_at,
            scheduled_start: r.scheduled_start,
            scheduled_end: r.scheduled_end,
            assigned_worker_id: r.assigned_worker_id,
        }
    }
}

#[derive(SimpleObject, Clone, Debug)]
pub struct ServiceRequestEdge {
    pub cursor: String,
    pub node: ServiceRequestNode,
}

#[derive(SimpleObject, Clone, Debug)]
pub struct PageInfo {
    pub has_next_page: bool,
    pub end_cursor: Option<String>,
}

#[derive(SimpleObject, Clone, Debug)]
pub struct ServiceRequestConnection {
    pub edges: Vec<ServiceRequestEdge>,
    pub page_info: PageInfo,
}

/// A committed change of a service request, as pushed to subscribers.
#[derive(SimpleObject, Clone, Debug)]
pub struct ServiceRequestUpdate {
    pub request_id: ID,
    pub status: Status,
    pub version: i32,
    pub assignment_attempts: i32,
    /// The outbox event type (`OfferSent`, `WorkerAssigned`, ...); `Snapshot` for the first message.
    pub event: String,
    pub assigned_worker: Option<WorkerSummary>,
    pub occurred_at: DateTime<Utc>,
}
