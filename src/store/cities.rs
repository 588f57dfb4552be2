//! Cities and the skill each service category needs: read once when dispatch starts.

use super::{Store, StoreError};

/// One row of `cities`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CityRow {
    pub id: String,
    pub name: String,
    /// GeoJSON Polygon, WGS84 lon/lat.
    #[sqlx(rename = "serviceArea")]
    pub service_area: serde_json::Value,
}

impl Store {
    /// The active cities, by id.
    pub async fn active_cities(&self) -> Result<Vec<CityRow>, StoreError> {
        Ok(sqlx::query_as(
            r#"select id, name, "serviceArea" from cities where "isActive" order by id"#,
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// One city, active or not.
    pub async fn city(&self, id: &str) -> Result<Option<CityRow>, StoreError> {
        Ok(
            sqlx::query_as(r#"select id, name, "serviceArea" from cities where id = $1"#)
                .bind(id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Service category code → the skill a worker needs for it.
    pub async fn category_skills(&self) -> Result<Vec<(String, String)>, StoreError> {
        Ok(
            sqlx::query_as(r#"select code, "requiredSkill" from service_categories"#)
                .fetch_all(&self.pool)
                .await?,
        )
    }
}
