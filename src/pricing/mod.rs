//! Pricing: `RuleBasedPricingEngine` (base rate per category and m², difficulty and extra
//! multipliers, commission) and `GeminiPricingEngine` (the model picks difficulty and
//! extras; the rules compute the money), with fallback to the rules on any AI failure.
//!
//! PLACEHOLDER API: being implemented (see issue 5). Signatures here are the contract the
//! GraphQL layer codes against.

use std::time::Duration;

use serde::Serialize;

use crate::{
    domain::{Cents, Ratio},
    store::{SettingsWatch, Store},
};

/// Which engine priced a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum EngineKind {
    Gemini,
    Rules,
}

impl EngineKind {
    /// The value stored in `service_requests."pricingEngine"`.
    pub fn as_str(self) -> &'static str {
        match self {
            EngineKind::Gemini => "gemini",
            EngineKind::Rules => "rules",
        }
    }
}

/// What the customer describes.
#[derive(Debug, Clone, Default)]
pub struct JobInput {
    /// The photo, base64 (optionally a `data:image/...;base64,` URL).
    pub image_base64: Option<String>,
    pub description: String,
    pub square_meters: f64,
    /// Service category code; `lawn_mowing` when absent.
    pub category: Option<String>,
    /// Extra codes the customer chose (`tall_grass`, ...).
    pub extras: Vec<String>,
    /// Difficulty the customer chose; the AI (or `MEDIUM` for the rules) decides otherwise.
    pub difficulty: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PriceBreakdown {
    pub category: String,
    /// max(rate × m², minimum).
    pub base: Cents,
    pub difficulty_level: String,
    pub difficulty_multiplier: Ratio,
    /// Extras applied, with their multipliers.
    pub extras: Vec<(String, Ratio)>,
    pub commission_rate: Ratio,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PriceQuote {
    pub total: Cents,
    pub worker_net: Cents,
    pub platform_fee: Cents,
    pub currency: String,
    pub breakdown: PriceBreakdown,
    pub engine: EngineKind,
    /// sha256 (hex) of the decoded photo, stored as the request's image reference.
    pub image_ref: Option<String>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PricingError {
    #[error("unknown service category {0:?}")]
    UnknownCategory(String),
    #[error("unknown extra {0:?}")]
    UnknownExtra(String),
    #[error("unknown difficulty {0:?}")]
    UnknownDifficulty(String),
    #[error("{0}")]
    InvalidInput(String),
    #[error("pricing failed: {0}")]
    Internal(String),
}

#[derive(Debug, Clone)]
pub struct GeminiConfig {
    pub api_key: String,
    pub base_url: String,
    pub model: String,
    pub timeout: Duration,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PricingStats {
    pub gemini_requests: u64,
    pub gemini_failures: u64,
    pub fallbacks: u64,
}

pub struct Pricing {
    _store: Store,
    _settings: SettingsWatch,
}

impl Pricing {
    pub async fn new(
        store: Store,
        settings: SettingsWatch,
        _gemini: Option<GeminiConfig>,
    ) -> Result<Pricing, sqlx::Error> {
        Ok(Pricing {
            _store: store,
            _settings: settings,
        })
    }

    pub async fn quote(&self, _job: &JobInput) -> Result<PriceQuote, PricingError> {
        Err(PricingError::Internal("pricing not implemented yet".into()))
    }

    pub fn stats(&self) -> PricingStats {
        PricingStats::default()
    }
}
