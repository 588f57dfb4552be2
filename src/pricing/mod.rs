//! Pricing: `RuleBasedPricingEngine` (base rate per category and m², difficulty and extra
//! multipliers, commission) and `GeminiPricingEngine` (the model picks difficulty and
//! extras; the rules compute the money), with fallback to the rules on any AI failure.
//!
//! [`Pricing`] is the one entry point: it validates what the customer sent, reads the photo,
//! checks the customer's codes against the seeded tables, asks Gemini when a key is
//! configured, and always lets the rules compute the money (see `docs/pricing.md`).

mod breaker;
mod gemini;
mod photo;
mod rules;

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use serde::Serialize;

pub use breaker::CircuitState;
pub use gemini::{GeminiFailure, GeminiPricingEngine, GeminiTuning};
pub use photo::MAX_PHOTO_BYTES;
pub use rules::{
    Area, Category, Multiplier, PricingTables, RuleBasedPricingEngine, DEFAULT_CATEGORY,
    DEFAULT_DIFFICULTY,
};

use crate::{
    domain::{
        rate::{Rate, TokenBucket},
        Cents, Ratio,
    },
    store::{Settings, SettingsWatch, Store},
};

/// The longest description a customer may send, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 2000;

/// The currency every price is quoted in.
pub const CURRENCY: &str = "ARS";

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
    /// Extras applied, with their multipliers, sorted by code.
    pub extras: Vec<(String, Ratio)>,
    pub commission_rate: Ratio,
    /// The category's rate per m².
    pub rate_per_square_meter: Cents,
    /// The category's minimum price.
    pub minimum: Cents,
    /// The area priced, in hundredths of a m² (the m² sent, rounded half away from zero).
    pub square_meters_centi: i64,
    /// difficulty × extras (after the AI bounds when Gemini chose): total = base × this.
    pub multiplier: Ratio,
    /// The price the model suggested, clamped to base × [AI min, AI max]. Shown, never charged.
    pub ai_suggested_total: Option<Cents>,
    /// What the AI bounds changed in the model's answer (dropped codes, clamped values).
    pub ai_adjustments: Vec<String>,
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
    /// Why the rules priced a job Gemini should have priced (`timeout`, `circuit_open`, ...).
    pub fallback_reason: Option<String>,
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
    /// Budget for one quote's whole AI call: every attempt and every backoff.
    pub timeout: Duration,
}

/// Counters since start-up, for metrics and tests.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PricingStats {
    /// HTTP requests sent to Gemini, retries included.
    pub gemini_requests: u64,
    /// Those that failed: HTTP error, timeout, transport error or malformed answer.
    pub gemini_failures: u64,
    /// Quotes the rules priced because Gemini gave no usable answer (circuit open included).
    pub fallbacks: u64,
    /// Quotes the rules priced because the engine did not ask Gemini at all (per-operation
    /// budget, or the concurrency cap).
    pub ai_shed: u64,
    /// Quotes priced with Gemini's choices.
    pub gemini_quotes: u64,
    /// Quotes priced by the rules alone (no key, or a fallback).
    pub rules_quotes: u64,
    /// Gemini quotes whose answer the AI bounds changed.
    pub ai_clamped: u64,
    /// Quotes that skipped Gemini because the circuit was open.
    pub circuit_rejections: u64,
    /// The circuit breaker's state; `None` when no key is configured.
    pub circuit_state: Option<CircuitState>,
}

/// Whether one quote may ask the AI (the API decides per operation; see `docs/pricing.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AiUse {
    Allowed,
    /// The rules price it; the reason is counted and shown as the fallback reason.
    Denied(&'static str),
}

/// Gemini calls in flight at once when nothing else is configured.
pub const DEFAULT_MAX_CONCURRENT_AI_CALLS: usize = 16;
/// Gemini calls per minute when nothing else is configured.
pub const DEFAULT_MAX_AI_CALLS_PER_MINUTE: u32 = 600;

/// A per-minute rate, full at first, with a tenth of a minute's calls as the burst.
fn per_minute(calls: u32) -> (Rate, TokenBucket) {
    let calls = calls.max(1);
    let rate = Rate {
        per_second: calls as f64 / 60.0,
        burst: (calls / 10).max(1),
    };
    (rate, TokenBucket::full(rate, tokio::time::Instant::now()))
}

/// The pricing service shared by the API: rules always, Gemini when configured.
pub struct Pricing {
    settings: SettingsWatch,
    rules: RuleBasedPricingEngine,
    gemini: Option<GeminiPricingEngine>,
    /// Caps Gemini calls in flight engine-wide: past it the rules price at once, so a
    /// burst of quotes cannot turn into a burst of upstream calls (or of their cost).
    ai_slots: tokio::sync::Semaphore,
    /// Caps Gemini calls per minute engine-wide: the concurrency cap bounds calls at once,
    /// this bounds what they cost over time. A std Mutex: one short update, no `.await`.
    ai_rate: std::sync::Mutex<(Rate, TokenBucket)>,
    counters: QuoteCounters,
}

#[derive(Debug, Default)]
struct QuoteCounters {
    /// Quotes that did not ask the AI because the engine shed the call.
    ai_shed: AtomicU64,
    fallbacks: AtomicU64,
    gemini_quotes: AtomicU64,
    rules_quotes: AtomicU64,
    ai_clamped: AtomicU64,
}

impl Pricing {
    /// Loads the pricing tables; Gemini (when configured) with the default [`GeminiTuning`].
    pub async fn new(
        store: Store,
        settings: SettingsWatch,
        gemini: Option<GeminiConfig>,
    ) -> Result<Pricing, sqlx::Error> {
        Pricing::with_tuning(store, settings, gemini, GeminiTuning::default()).await
    }

    /// Like [`Pricing::new`], with explicit retry and circuit-breaker settings.
    pub async fn with_tuning(
        store: Store,
        settings: SettingsWatch,
        gemini: Option<GeminiConfig>,
        tuning: GeminiTuning,
    ) -> Result<Pricing, sqlx::Error> {
        let rules = RuleBasedPricingEngine::load(store).await?;
        // A Gemini client that cannot be built must not stop the engine: the rules price.
        let gemini = gemini.and_then(|config| match GeminiPricingEngine::new(config, tuning) {
            Ok(engine) => Some(engine),
            Err(e) => {
                tracing::error!(target: "Gemini", error = %e, "[Gemini] HTTP client unavailable; pricing with the rules only");
                None
            }
        });
        Ok(Pricing {
            settings,
            rules,
            gemini,
            ai_slots: tokio::sync::Semaphore::new(DEFAULT_MAX_CONCURRENT_AI_CALLS),
            ai_rate: std::sync::Mutex::new(per_minute(DEFAULT_MAX_AI_CALLS_PER_MINUTE)),
            counters: QuoteCounters::default(),
        })
    }

    /// Caps the Gemini calls in flight at once (at least one).
    pub fn limit_ai_calls(mut self, in_flight: usize) -> Pricing {
        self.ai_slots = tokio::sync::Semaphore::new(in_flight.max(1));
        self
    }

    /// Caps the Gemini calls per minute (at least one).
    pub fn limit_ai_rate(mut self, calls_per_minute: u32) -> Pricing {
        self.ai_rate = std::sync::Mutex::new(per_minute(calls_per_minute));
        self
    }

    /// One call from the per-minute budget, if there is one.
    fn take_ai_call(&self) -> bool {
        let mut guard = self.ai_rate.lock().unwrap_or_else(|e| e.into_inner());
        let (rate, bucket) = &mut *guard;
        bucket.try_take(*rate, tokio::time::Instant::now())
    }

    /// Prices a job. Fails only on the customer's input (or unusable pricing tables), never
    /// because of the AI: any Gemini failure falls back to the rules.
    pub async fn quote(&self, job: &JobInput) -> Result<PriceQuote, PricingError> {
        self.quote_with(job, AiUse::Allowed).await
    }

    /// [`Pricing::quote`], with the caller's say on whether the AI may be asked. A denied
    /// or shed AI call is priced by the rules, counted in
    /// `arreglame_ai_pricing_shed_total{reason}`.
    pub async fn quote_with(&self, job: &JobInput, ai: AiUse) -> Result<PriceQuote, PricingError> {
        let settings = self.settings.borrow().clone();
        let area = validate(job, &settings)?;
        let photo = photo::read(job.image_base64.as_deref())?;
        let tables = self.rules.tables();
        let choice = tables.resolve(job)?;

        let mut quote = match &self.gemini {
            None => {
                self.counters.rules_quotes.fetch_add(1, Ordering::Relaxed);
                let quote = RuleBasedPricingEngine::quote(&tables, &choice, area, &settings)?;
                tracing::debug!(target: "RuleBasedPricingEngine", total = quote.total.0, "[RuleBasedPricingEngine] job priced");
                quote
            }
            Some(gemini) => {
                let ask = gemini::Assessment {
                    description: &job.description,
                    square_meters: job.square_meters,
                    choice: &choice,
                    tables: &tables,
                    area,
                    photo: photo.as_ref(),
                };
                let slot = match ai {
                    AiUse::Denied(reason) => Err(reason),
                    AiUse::Allowed => match self.ai_slots.try_acquire() {
                        Err(_) => Err("concurrency_cap"),
                        Ok(_) if !self.take_ai_call() => Err("rate_cap"),
                        Ok(slot) => Ok(slot),
                    },
                };
                match slot {
                    Err(reason) => self.shed(&tables, &choice, area, &settings, reason)?,
                    Ok(_slot) => match gemini.assess(&ask).await {
                        Ok(answer) => {
                            self.gemini_quote(&tables, &choice, area, &settings, answer)?
                        }
                        Err(failure) => {
                            self.fallback(&tables, &choice, area, &settings, failure)?
                        }
                    },
                }
            }
        };
        quote.image_ref = photo.map(|p| p.sha256_hex);
        Ok(quote)
    }

    fn gemini_quote(
        &self,
        tables: &PricingTables,
        choice: &rules::CustomerChoice,
        area: Area,
        settings: &Settings,
        answer: gemini::ModelAnswer,
    ) -> Result<PriceQuote, PricingError> {
        let quote = gemini::constrain(&answer, choice, tables, area, settings)?;
        self.counters.gemini_quotes.fetch_add(1, Ordering::Relaxed);
        if !quote.breakdown.ai_adjustments.is_empty() {
            self.counters.ai_clamped.fetch_add(1, Ordering::Relaxed);
        }
        tracing::info!(target: "Gemini",
            difficulty = %quote.breakdown.difficulty_level,
            extras = ?quote.breakdown.extras.iter().map(|(code, _)| code).collect::<Vec<_>>(),
            adjustments = ?quote.breakdown.ai_adjustments,
            total = quote.total.0,
            "[Gemini] job priced with the model's assessment");
        Ok(quote)
    }

    /// The rules price a quote whose AI call the engine shed (no request was sent).
    fn shed(
        &self,
        tables: &PricingTables,
        choice: &rules::CustomerChoice,
        area: Area,
        settings: &Settings,
        reason: &'static str,
    ) -> Result<PriceQuote, PricingError> {
        self.counters.ai_shed.fetch_add(1, Ordering::Relaxed);
        self.counters.rules_quotes.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("arreglame_ai_pricing_shed_total", "reason" => reason).increment(1);
        tracing::debug!(target: "RuleBasedPricingEngine", reason, "[RuleBasedPricingEngine] AI call shed; priced by the rules");
        let mut quote = RuleBasedPricingEngine::quote(tables, choice, area, settings)?;
        quote.fallback_reason = Some(GeminiFailure::Shed(reason).reason().to_string());
        Ok(quote)
    }

    fn fallback(
        &self,
        tables: &PricingTables,
        choice: &rules::CustomerChoice,
        area: Area,
        settings: &Settings,
        failure: GeminiFailure,
    ) -> Result<PriceQuote, PricingError> {
        self.counters.fallbacks.fetch_add(1, Ordering::Relaxed);
        self.counters.rules_quotes.fetch_add(1, Ordering::Relaxed);
        let mut quote = RuleBasedPricingEngine::quote(tables, choice, area, settings)?;
        // While the circuit is open every quote lands here: the opening was the warning.
        if failure == GeminiFailure::CircuitOpen {
            tracing::info!(target: "Gemini", reason = failure.reason(),
                "[Gemini] circuit open; falling back to RuleBasedPricingEngine");
        } else {
            tracing::warn!(target: "Gemini", reason = failure.reason(), error = %failure,
                "[Gemini] no usable answer; falling back to RuleBasedPricingEngine");
        }
        tracing::info!(target: "RuleBasedPricingEngine", reason = failure.reason(), total = quote.total.0,
            "[RuleBasedPricingEngine] job priced as fallback for Gemini");
        quote.fallback_reason = Some(failure.reason().to_string());
        Ok(quote)
    }

    /// Re-reads `service_categories`, `difficulty_multipliers` and `extra_multipliers`;
    /// quotes already running keep the tables they started with.
    pub async fn reload_tables(&self) -> Result<(), sqlx::Error> {
        self.rules.reload().await
    }

    /// The pricing tables in use (categories, difficulty levels, extras).
    pub fn tables(&self) -> Arc<PricingTables> {
        self.rules.tables()
    }

    pub fn stats(&self) -> PricingStats {
        let c = &self.counters;
        let mut stats = PricingStats {
            ai_shed: c.ai_shed.load(Ordering::Relaxed),
            fallbacks: c.fallbacks.load(Ordering::Relaxed),
            gemini_quotes: c.gemini_quotes.load(Ordering::Relaxed),
            rules_quotes: c.rules_quotes.load(Ordering::Relaxed),
            ai_clamped: c.ai_clamped.load(Ordering::Relaxed),
            ..PricingStats::default()
        };
        if let Some(gemini) = &self.gemini {
            gemini.add_stats(&mut stats);
        }
        stats
    }
}

/// Checks what a customer can get wrong, with messages they understand; returns the area.
fn validate(job: &JobInput, settings: &Settings) -> Result<Area, PricingError> {
    let m2 = job.square_meters;
    if !m2.is_finite() || m2 <= 0.0 {
        return Err(PricingError::InvalidInput(
            "squareMeters must be a positive number of square meters".into(),
        ));
    }
    if m2 > settings.max_square_meters {
        return Err(PricingError::InvalidInput(format!(
            "squareMeters must be at most {} square meters",
            settings.max_square_meters
        )));
    }
    if job.description.chars().count() > MAX_DESCRIPTION_CHARS {
        return Err(PricingError::InvalidInput(format!(
            "description must be at most {MAX_DESCRIPTION_CHARS} characters"
        )));
    }
    Area::from_square_meters(m2)
        .ok_or_else(|| PricingError::InvalidInput("squareMeters is too large to price".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The API awaits quotes inside multi-threaded resolvers: the future must be `Send`.
    #[allow(dead_code)]
    fn quotes_are_send<'a>(
        pricing: &'a Pricing,
        job: &'a JobInput,
    ) -> impl std::future::Future<Output = Result<PriceQuote, PricingError>> + Send + 'a {
        pricing.quote(job)
    }

    fn job(m2: f64, description: &str) -> JobInput {
        JobInput {
            description: description.into(),
            square_meters: m2,
            ..JobInput::default()
        }
    }

    #[test]
    fn square_meters_must_be_positive_finite_and_bounded() {
        let settings = Settings {
            max_square_meters: 500.0,
            ..Settings::default()
        };
        for bad in [0.0, -1.0, -0.0, f64::NAN, f64::INFINITY, 500.01] {
            let err = validate(&job(bad, "x"), &settings).unwrap_err();
            assert!(
                matches!(&err, PricingError::InvalidInput(m) if m.contains("squareMeters")),
                "{bad}: {err:?}"
            );
        }
        assert_eq!(
            validate(&job(500.0, "x"), &settings),
            Ok(Area::from_centi_square_meters(50_000))
        );
    }

    #[test]
    fn descriptions_longer_than_the_limit_are_refused() {
        let settings = Settings::default();
        let at_limit = "ñ".repeat(MAX_DESCRIPTION_CHARS);
        assert!(validate(&job(10.0, &at_limit), &settings).is_ok());
        let err = validate(&job(10.0, &format!("{at_limit}a")), &settings).unwrap_err();
        assert_eq!(
            err,
            PricingError::InvalidInput("description must be at most 2000 characters".into())
        );
    }
}
