//! The pricing tables as stored: categories, difficulty and extra multipliers. Numeric
//! columns come as text, so the rules parse them exactly (parts per million).

use super::Store;

/// The rows of the three pricing tables.
#[derive(Debug, Clone, Default)]
pub struct PricingRows {
    /// (code, name, base rate per m² in centavos, minimum price in centavos)
    pub categories: Vec<(String, String, i64, i64)>,
    /// (level, multiplier as text, description)
    pub difficulties: Vec<(String, String, Option<String>)>,
    /// (code, name, multiplier as text, description)
    pub extras: Vec<(String, String, String, Option<String>)>,
}

impl Store {
    pub async fn pricing_rows(&self) -> Result<PricingRows, sqlx::Error> {
        let categories = sqlx::query_as(
            r#"select code, name, "baseRatePerSqmCents", "minimumPriceCents" from service_categories order by code"#,
        )
        .fetch_all(&self.pool)
        .await?;
        let difficulties = sqlx::query_as(
            "select level, multiplier::text, description from difficulty_multipliers order by multiplier, level",
        )
        .fetch_all(&self.pool)
        .await?;
        let extras = sqlx::query_as(
            "select code, name, multiplier::text, description from extra_multipliers order by code",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(PricingRows {
            categories,
            difficulties,
            extras,
        })
    }
}
