//! The dispatcher's side of the gradual rollout and of adopted legacy rows: which requests
//! are this engine's (`dispatch_rollout_percentage`, read live from the settings), and a
//! city for open legacy requests that have none the engine serves.

use uuid::Uuid;

use super::Dispatcher;
use crate::store::StoreError;

impl Dispatcher {
    /// Whether this engine dispatches the request: its id's bucket is under the rollout
    /// percentage now in `system_config`. The others belong to the legacy dispatcher; the
    /// engine starts no actor for them, and its recovery and sweeps pass them by.
    pub fn dispatches(&self, request_id: Uuid) -> bool {
        self.ctx
            .settings
            .borrow()
            .dispatch_rollout
            .includes(request_id)
    }

    /// `dispatch_rollout_percentage` as the settings have it now.
    pub fn rollout_percentage(&self) -> crate::domain::RolloutPercentage {
        self.ctx.settings.borrow().dispatch_rollout
    }

    /// Gives an open request of ours whose "cityId" is missing or not a city we serve (the
    /// guide's backfill sets `'default'`) the served city whose area holds its point, so
    /// recovery can dispatch it. Returns how many were placed; a point no city serves stays
    /// where it is (the ops page lists it).
    pub(super) async fn place_unplaced_requests(&self) -> Result<usize, StoreError> {
        let served: Vec<String> = self.ctx.cities.keys().cloned().collect();
        let mut placed = 0;
        for row in self.ctx.store.unplaced_open_requests(&served).await? {
            if !self.dispatches(row.id) {
                continue;
            }
            let Some(city) = self.city_at(row.longitude, row.latitude) else {
                continue;
            };
            if self
                .ctx
                .store
                .place_request(row.id, row.version, &city.id)
                .await?
            {
                placed += 1;
            }
        }
        if placed > 0 {
            tracing::info!(target: "Dispatch", placed, "open requests without a served city placed by their location");
        }
        Ok(placed)
    }
}
