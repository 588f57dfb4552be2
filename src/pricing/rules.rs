//! `RuleBasedPricingEngine`: prices a job from the seeded tables (`service_categories`,
//! `difficulty_multipliers`, `extra_multipliers`) and the commission in `system_config`.
//!
//! # Rounding rule
//!
//! Money is integer centavos and multipliers are parts per million ([`Ratio`]); no floating
//! point touches money. The steps, in this order:
//!
//! 1. **Area.** The m² sent are read as the shortest decimal that round-trips the number
//!    (`87.655` stays `87.655`) and rounded half away from zero to hundredths of a m²
//!    (`87.66`). This is the only place a float is read.
//! 2. **Base.** `base = max(rate × area, minimum)`; `rate × area` is rounded half away from
//!    zero to the centavo.
//! 3. **Multiplier.** `multiplier = difficulty × extra₁ × extra₂ × …`, extras in code order,
//!    each product rounded half away from zero to the part per million (the seeded
//!    multipliers have three decimals, so the usual combinations are exact). When Gemini
//!    chose, the multiplier is then clamped to `[ai_multiplier_min, ai_multiplier_max]`.
//! 4. **Total.** `total = base × multiplier`, rounded half away from zero to the centavo.
//! 5. **Split.** `platform_fee = total × commission`, rounded half away from zero to the
//!    centavo; `worker_net = total − platform_fee`. The remainder makes
//!    `total = worker_net + platform_fee` hold exactly, always.

use std::sync::{Arc, RwLock};

use super::{EngineKind, JobInput, PriceBreakdown, PriceQuote, PricingError, CURRENCY};
use crate::{
    domain::{Cents, Ratio},
    store::{Settings, Store},
};

/// The category priced when the customer names none.
pub const DEFAULT_CATEGORY: &str = "lawn_mowing";
/// The difficulty the rules assume when nobody (customer or model) chose one.
pub const DEFAULT_DIFFICULTY: &str = "MEDIUM";

/// Larger areas are refused before conversion, so the arithmetic below cannot overflow.
const MAX_AREA_SQUARE_METERS: f64 = 1e12;

/// A row of `service_categories`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Category {
    pub code: String,
    pub name: String,
    pub rate_per_square_meter: Cents,
    pub minimum: Cents,
}

/// A row of `difficulty_multipliers` (code = `level`) or `extra_multipliers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Multiplier {
    pub code: String,
    pub name: Option<String>,
    pub ratio: Ratio,
    pub description: Option<String>,
}

/// The three pricing tables, as loaded. Small: lookups are linear and case-insensitive.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PricingTables {
    pub categories: Vec<Category>,
    /// Ascending by multiplier (EASY first), the order the model sees them in.
    pub difficulties: Vec<Multiplier>,
    /// By code.
    pub extras: Vec<Multiplier>,
}

/// The customer's choices, checked against the tables. Extras are sorted and deduplicated.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CustomerChoice {
    pub category: Category,
    pub difficulty: Option<Multiplier>,
    pub extras: Vec<Multiplier>,
}

fn find<'a, T>(rows: &'a [T], code: &str, code_of: impl Fn(&T) -> &str) -> Option<&'a T> {
    let code = code.trim();
    rows.iter()
        .find(|row| code_of(row).eq_ignore_ascii_case(code))
}

impl PricingTables {
    pub async fn load(store: &Store) -> Result<PricingTables, sqlx::Error> {
        let rows = store.pricing_rows().await?;
        let (categories, difficulties, extras) = (rows.categories, rows.difficulties, rows.extras);
        Ok(PricingTables {
            categories: categories
                .into_iter()
                .map(|(code, name, rate, minimum)| Category {
                    code,
                    name,
                    rate_per_square_meter: Cents(rate),
                    minimum: Cents(minimum),
                })
                .collect(),
            difficulties: difficulties
                .into_iter()
                .map(|(code, ratio, description)| multiplier(code, None, &ratio, description))
                .collect::<Result<_, _>>()?,
            extras: extras
                .into_iter()
                .map(|(code, name, ratio, description)| {
                    multiplier(code, Some(name), &ratio, description)
                })
                .collect::<Result<_, _>>()?,
        })
    }

    pub fn category(&self, code: &str) -> Result<&Category, PricingError> {
        find(&self.categories, code, |c| &c.code)
            .ok_or_else(|| PricingError::UnknownCategory(code.to_string()))
    }

    pub fn difficulty(&self, level: &str) -> Result<&Multiplier, PricingError> {
        find(&self.difficulties, level, |d| &d.code)
            .ok_or_else(|| PricingError::UnknownDifficulty(level.to_string()))
    }

    pub fn extra(&self, code: &str) -> Result<&Multiplier, PricingError> {
        find(&self.extras, code, |e| &e.code)
            .ok_or_else(|| PricingError::UnknownExtra(code.to_string()))
    }

    /// Checks the customer's category, difficulty and extras.
    pub(crate) fn resolve(&self, job: &JobInput) -> Result<CustomerChoice, PricingError> {
        let category = match job.category.as_deref().map(str::trim) {
            None | Some("") => self.category(DEFAULT_CATEGORY)?,
            Some(code) => self.category(code)?,
        };
        let difficulty = match job.difficulty.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(level) => Some(self.difficulty(level)?.clone()),
        };
        let extras = job
            .extras
            .iter()
            .map(|code| self.extra(code).cloned())
            .collect::<Result<Vec<_>, _>>()?;
        Ok(CustomerChoice {
            category: category.clone(),
            difficulty,
            extras: normalize_extras(extras),
        })
    }
}

fn multiplier(
    code: String,
    name: Option<String>,
    ratio: &str,
    description: Option<String>,
) -> Result<Multiplier, sqlx::Error> {
    let ratio = Ratio::parse(ratio).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
    Ok(Multiplier {
        code,
        name,
        ratio,
        description,
    })
}

/// Sorted by code (the order the multiplier is computed in), each extra once.
pub(crate) fn normalize_extras(mut extras: Vec<Multiplier>) -> Vec<Multiplier> {
    extras.sort_by(|a, b| a.code.cmp(&b.code));
    extras.dedup_by(|a, b| a.code == b.code);
    extras
}

/// An area in hundredths of a square metre.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Area(i64);

impl Area {
    pub const fn from_centi_square_meters(centi: i64) -> Area {
        Area(centi)
    }

    /// Reads m² as the shortest decimal that round-trips (what the customer typed) and
    /// rounds it half away from zero to hundredths. `None` for NaN, ±∞, negatives and
    /// areas beyond any city.
    pub fn from_square_meters(m2: f64) -> Option<Area> {
        // NaN and ±∞ are outside the range too.
        if !(0.0..=MAX_AREA_SQUARE_METERS).contains(&m2) {
            return None;
        }
        // Rust prints floats without an exponent, so this is plain `digits[.digits]`.
        let text = m2.abs().to_string();
        let (int, frac) = text.split_once('.').unwrap_or((&text, ""));
        let digit = |i: usize| {
            frac.as_bytes()
                .get(i)
                .map_or(0, |b| i64::from(b.saturating_sub(b'0')))
        };
        let whole: i64 = int.parse().ok()?;
        let centi = whole * 100 + digit(0) * 10 + digit(1) + i64::from(digit(2) >= 5);
        Some(Area(centi))
    }

    pub fn centi_square_meters(self) -> i64 {
        self.0
    }

    /// The area as a ratio (m² in parts per million), so `rate.times(area)` is rate × m².
    fn as_ratio(self) -> Ratio {
        Ratio(self.0.saturating_mul(10_000))
    }
}

/// `max(rate × area, minimum)`, rate × area rounded half away from zero.
pub fn base_price(category: &Category, area: Area) -> Cents {
    category
        .rate_per_square_meter
        .times(area.as_ratio())
        .max(category.minimum)
}

/// `difficulty × extras`, in the order given, each product rounded to the part per million.
pub fn combined_multiplier(difficulty: &Multiplier, extras: &[Multiplier]) -> Ratio {
    extras
        .iter()
        .fold(difficulty.ratio, |acc, extra| acc.times(extra.ratio))
}

/// `(worker_net, platform_fee)`: the fee rounded half away from zero, the net the remainder.
pub fn split(total: Cents, commission: Ratio) -> (Cents, Cents) {
    let fee = total.times(commission.clamp(Ratio::ZERO, Ratio::ONE));
    let net = total.checked_sub(fee).unwrap_or(Cents::ZERO);
    (net, fee)
}

/// The money of one quote from checked choices. `multiplier` is normally
/// [`combined_multiplier`]; Gemini passes its clamped value. Steps as in the module docs.
pub(crate) fn price(
    category: &Category,
    difficulty: &Multiplier,
    extras: &[Multiplier],
    area: Area,
    multiplier: Ratio,
    commission: Ratio,
) -> PriceQuote {
    let base = base_price(category, area);
    let total = base.times(multiplier);
    let (worker_net, platform_fee) = split(total, commission);
    PriceQuote {
        total,
        worker_net,
        platform_fee,
        currency: CURRENCY.to_string(),
        breakdown: PriceBreakdown {
            category: category.code.clone(),
            base,
            difficulty_level: difficulty.code.clone(),
            difficulty_multiplier: difficulty.ratio,
            extras: extras.iter().map(|e| (e.code.clone(), e.ratio)).collect(),
            commission_rate: commission.clamp(Ratio::ZERO, Ratio::ONE),
            rate_per_square_meter: category.rate_per_square_meter,
            minimum: category.minimum,
            square_meters_centi: area.centi_square_meters(),
            multiplier,
            ai_suggested_total: None,
            ai_adjustments: Vec::new(),
        },
        engine: EngineKind::Rules,
        image_ref: None,
        fallback_reason: None,
    }
}

/// The rules, with the tables cached in memory.
pub struct RuleBasedPricingEngine {
    store: Store,
    /// Swapped whole on reload. A std lock: held only to clone or replace the `Arc`, never
    /// across an `.await`.
    tables: RwLock<Arc<PricingTables>>,
}

impl RuleBasedPricingEngine {
    pub async fn load(store: Store) -> Result<RuleBasedPricingEngine, sqlx::Error> {
        let tables = PricingTables::load(&store).await?;
        log_loaded(&tables);
        Ok(RuleBasedPricingEngine {
            store,
            tables: RwLock::new(Arc::new(tables)),
        })
    }

    /// Re-reads the tables; on error the cached ones stay in use.
    pub async fn reload(&self) -> Result<(), sqlx::Error> {
        let tables = PricingTables::load(&self.store).await?;
        log_loaded(&tables);
        *self.tables.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(tables);
        Ok(())
    }

    pub fn tables(&self) -> Arc<PricingTables> {
        self.tables
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Prices the customer's choices; difficulty `MEDIUM` when the customer chose none.
    pub(crate) fn quote(
        tables: &PricingTables,
        choice: &CustomerChoice,
        area: Area,
        settings: &Settings,
    ) -> Result<PriceQuote, PricingError> {
        let difficulty = match &choice.difficulty {
            Some(d) => d,
            None => tables.difficulty(DEFAULT_DIFFICULTY)?,
        };
        let multiplier = combined_multiplier(difficulty, &choice.extras);
        Ok(price(
            &choice.category,
            difficulty,
            &choice.extras,
            area,
            multiplier,
            settings.commission,
        ))
    }
}

fn log_loaded(tables: &PricingTables) {
    tracing::info!(target: "RuleBasedPricingEngine",
        categories = tables.categories.len(),
        difficulties = tables.difficulties.len(),
        extras = tables.extras.len(),
        "[RuleBasedPricingEngine] pricing tables loaded");
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    fn m(code: &str, ratio: &str) -> Multiplier {
        Multiplier {
            code: code.into(),
            name: None,
            ratio: Ratio::parse(ratio).unwrap(),
            description: None,
        }
    }

    /// The seeded tables (seeds/02_pricing.sql), without a database.
    pub(crate) fn seeded() -> PricingTables {
        let category = |code: &str, rate, minimum| Category {
            code: code.into(),
            name: code.into(),
            rate_per_square_meter: Cents(rate),
            minimum: Cents(minimum),
        };
        PricingTables {
            categories: vec![
                category("garden_cleanup", 20_000, 2_000_000),
                category("hedge_trimming", 25_000, 2_500_000),
                category("house_cleaning", 30_000, 2_500_000),
                category("lawn_mowing", 15_000, 1_500_000),
            ],
            difficulties: vec![
                m("EASY", "1.000"),
                m("MEDIUM", "1.250"),
                m("HARD", "1.500"),
                m("EXTREME", "2.000"),
            ],
            extras: vec![
                m("debris_removal", "1.150"),
                m("slope", "1.100"),
                m("tall_grass", "1.200"),
                m("urgent", "1.300"),
            ],
        }
    }

    fn quote_of(job: &JobInput, commission: Ratio) -> Result<PriceQuote, PricingError> {
        let tables = seeded();
        let choice = tables.resolve(job)?;
        let settings = Settings {
            commission,
            ..Settings::default()
        };
        let area = Area::from_square_meters(job.square_meters).unwrap();
        RuleBasedPricingEngine::quote(&tables, &choice, area, &settings)
    }

    #[test]
    fn square_meters_round_half_away_from_zero_to_hundredths_of_what_was_typed() {
        let centi = |m2: f64| Area::from_square_meters(m2).map(Area::centi_square_meters);
        assert_eq!(centi(100.0), Some(10_000));
        // 87.655 is 87.65499999... as a binary float; the customer typed 87.655.
        assert_eq!(centi(87.655), Some(8_766));
        assert_eq!(centi(87.654), Some(8_765));
        assert_eq!(centi(0.005), Some(1));
        assert_eq!(centi(0.004_999), Some(0));
        assert_eq!(centi(1e-9), Some(0));
        assert_eq!(centi(99_999.999), Some(10_000_000));
        assert_eq!(centi(1e12), Some(100_000_000_000_000));
        for bad in [-0.01, f64::NAN, f64::INFINITY, 1.1e12] {
            assert_eq!(centi(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_guides_example_pays_the_minimum_at_medium_difficulty() {
        let job = JobInput {
            description: "Corte de pasto".into(),
            square_meters: 100.0,
            ..JobInput::default()
        };
        let q = quote_of(&job, Ratio(150_000)).unwrap();
        // lawn_mowing: max(150.00 × 100 m², 15000.00) = 15000.00; × 1.25 (MEDIUM).
        assert_eq!(q.breakdown.base, Cents(1_500_000));
        assert_eq!(q.breakdown.difficulty_level, "MEDIUM");
        assert_eq!(q.total, Cents(1_875_000));
        assert_eq!(q.platform_fee, Cents(281_250));
        assert_eq!(q.worker_net, Cents(1_593_750));
        assert_eq!(q.engine, EngineKind::Rules);
    }

    #[test]
    fn every_step_rounds_half_away_from_zero_to_the_centavo() {
        let job = JobInput {
            square_meters: 87.655,
            category: Some("house_cleaning".into()),
            difficulty: Some("easy".into()),
            extras: vec!["slope".into(), "debris_removal".into(), "slope".into()],
            ..JobInput::default()
        };
        let q = quote_of(&job, Ratio(150_000)).unwrap();
        // 300.00/m² × 87.66 m² = 26298.00; × 1.000 × 1.150 × 1.100 = × 1.265 → 33266.97.
        assert_eq!(q.breakdown.square_meters_centi, 8_766);
        assert_eq!(q.breakdown.base, Cents(2_629_800));
        assert_eq!(q.breakdown.multiplier, Ratio(1_265_000));
        assert_eq!(
            q.breakdown.extras,
            vec![
                ("debris_removal".to_string(), Ratio(1_150_000)),
                ("slope".to_string(), Ratio(1_100_000))
            ]
        );
        assert_eq!(q.total, Cents(3_326_697));
        // 15 % of 33266.97 = 4990.0455 → 4990.05; the worker gets the remainder.
        assert_eq!(q.platform_fee, Cents(499_005));
        assert_eq!(q.worker_net, Cents(2_827_692));
        // An exact half centavo goes away from zero: 50 % of 33266.97 = 16633.485 → 16633.49.
        let half = quote_of(&job, Ratio(500_000)).unwrap();
        assert_eq!(half.platform_fee, Cents(1_663_349));
        assert_eq!(half.worker_net, Cents(1_663_348));
    }

    #[test]
    fn above_the_minimum_the_rate_times_area_is_the_base() {
        let job = JobInput {
            square_meters: 123.45,
            category: Some("garden_cleanup".into()),
            difficulty: Some("HARD".into()),
            extras: vec!["urgent".into(), "tall_grass".into()],
            ..JobInput::default()
        };
        let q = quote_of(&job, Ratio(200_000)).unwrap();
        // 200.00 × 123.45 = 24690.00; × 1.5 × 1.2 × 1.3 = × 2.34 → 57774.60; fee 20 %.
        assert_eq!(q.breakdown.base, Cents(2_469_000));
        assert_eq!(q.total, Cents(5_777_460));
        assert_eq!(q.platform_fee, Cents(1_155_492));
        assert_eq!(q.worker_net, Cents(4_621_968));
        assert_eq!(q.breakdown.commission_rate, Ratio(200_000));
    }

    #[test]
    fn unknown_codes_are_typed_errors() {
        let tables = seeded();
        let with = |f: fn(&mut JobInput)| {
            let mut job = JobInput {
                square_meters: 10.0,
                ..JobInput::default()
            };
            f(&mut job);
            tables.resolve(&job).unwrap_err()
        };
        assert_eq!(
            with(|j| j.category = Some("pool_cleaning".into())),
            PricingError::UnknownCategory("pool_cleaning".into())
        );
        assert_eq!(
            with(|j| j.difficulty = Some("IMPOSSIBLE".into())),
            PricingError::UnknownDifficulty("IMPOSSIBLE".into())
        );
        assert_eq!(
            with(|j| j.extras = vec!["urgent".into(), "gold_leaf".into()]),
            PricingError::UnknownExtra("gold_leaf".into())
        );
    }

    #[test]
    fn a_missing_default_difficulty_is_a_typed_error_not_a_panic() {
        let mut tables = seeded();
        tables.difficulties.retain(|d| d.code != DEFAULT_DIFFICULTY);
        let job = JobInput {
            square_meters: 10.0,
            ..JobInput::default()
        };
        let choice = tables.resolve(&job).unwrap();
        let area = Area::from_square_meters(10.0).unwrap();
        assert_eq!(
            RuleBasedPricingEngine::quote(&tables, &choice, area, &Settings::default()),
            Err(PricingError::UnknownDifficulty("MEDIUM".into()))
        );
    }

    #[test]
    fn a_commission_above_one_never_makes_the_net_negative() {
        assert_eq!(
            split(Cents(1_000), Ratio(1_500_000)),
            (Cents(0), Cents(1_000))
        );
        assert_eq!(split(Cents(1_000), Ratio(0)), (Cents(1_000), Cents(0)));
    }

    proptest! {
        #[test]
        fn the_total_always_splits_exactly_into_net_and_fee(
            rate in 0i64..10_000_000,
            minimum in 0i64..1_000_000_000,
            centi in 0i64..100_000_000,
            difficulty in 1i64..5_000_000,
            extras in proptest::collection::vec(1i64..3_000_000, 0..6),
            commission in 0i64..=1_000_000,
        ) {
            let category = Category {
                code: "c".into(),
                name: "c".into(),
                rate_per_square_meter: Cents(rate),
                minimum: Cents(minimum),
            };
            let difficulty = Multiplier { code: "D".into(), name: None, ratio: Ratio(difficulty), description: None };
            let extras: Vec<_> = extras
                .into_iter()
                .enumerate()
                .map(|(i, r)| Multiplier { code: format!("e{i}"), name: None, ratio: Ratio(r), description: None })
                .collect();
            let multiplier = combined_multiplier(&difficulty, &extras);
            let q = price(&category, &difficulty, &extras, Area(centi), multiplier, Ratio(commission));
            prop_assert!(q.breakdown.base >= Cents(minimum));
            prop_assert!(q.platform_fee >= Cents::ZERO && q.worker_net >= Cents::ZERO);
            prop_assert_eq!(q.worker_net.0 + q.platform_fee.0, q.total.0);
        }
    }
}
