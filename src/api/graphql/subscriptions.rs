//! Live updates of one request, fed from committed outbox events only.

use async_graphql::{Context, Subscription, ID};
use futures::Stream;

use super::{queries::load_readable, state, types::*, ApiError};
use crate::{
    api::ApiContext,
    store::{
        events::{self, RequestState},
        ServiceRequest,
    },
};

pub struct SubscriptionRoot;

/// The root of live updates (graphql-transport-ws at `/graphql/ws`).
#[Subscription(name = "Subscription")]
impl SubscriptionRoot {
    /// The request's state now, then every committed change (fed from the outbox: a
    /// subscriber never sees a change that did not commit).
    async fn service_request_updated(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> async_graphql::Result<impl Stream<Item = ServiceRequestUpdate>> {
        let row = load_readable(ctx, &id).await?;
        let state = state(ctx).clone();
        // Subscribe before reading the snapshot, so nothing falls between the two.
        let events = state.relay.subscribe();
        let row = state
            .store
            .get_request(row.id)
            .await
            .map_err(ApiError::from)?;
        Ok(updates(state, row, events))
    }
}

fn updates(
    state: ApiContext,
    first: ServiceRequest,
    events: tokio::sync::broadcast::Receiver<std::sync::Arc<crate::store::OutboxEvent>>,
) -> impl Stream<Item = ServiceRequestUpdate> {
    let id = first.id;
    let key = id.to_string();
    futures::stream::unfold(
        (state, Some(first), events, 0i32, key),
        move |(state, first, mut events, mut seen, key)| async move {
            if let Some(row) = first {
                seen = row.version;
                let assigned = worker_summary(&state, row.assigned_worker_id)
                    .await
                    .ok()
                    .flatten();
                let update = ServiceRequestUpdate {
                    request_id: ID(row.id.to_string()),
                    status: row.status,
                    version: row.version,
                    assignment_attempts: row.assignment_attempts,
                    event: "Snapshot".into(),
                    assigned_worker: assigned,
                    occurred_at: row.updated_at,
                };
                return Some((update, (state, None, events, seen, key)));
            }
            loop {
                match events.recv().await {
                    Ok(e)
                        if e.aggregate_type == events::SERVICE_REQUEST
                            && e.aggregate_id == key
                            && e.aggregate_version > seen =>
                    {
                        seen = e.aggregate_version;
                        let Ok(p) = RequestState::decode(&e.payload) else {
                            tracing::error!(target: "GraphQL", event = e.id, "outbox payload does not decode; skipped");
                            continue;
                        };
                        let assigned = worker_summary(&state, p.assigned_worker_id)
                            .await
                            .ok()
                            .flatten();
                        let update = ServiceRequestUpdate {
                            request_id: ID(key.clone()),
                            status: p.status,
                            version: e.aggregate_version,
                            assignment_attempts: p.assignment_attempts,
                            event: e.event_type.clone(),
                            assigned_worker: assigned,
                            occurred_at: e.created_at,
                        };
                        return Some((update, (state, None, events, seen, key)));
                    }
                    Ok(_) => continue,
                    // Fell behind: the database has the truth; send its current state.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        let row = state.store.get_request(id).await.ok()?;
                        if row.version > seen {
                            return Some((
                                snapshot_update(&state, &row).await,
                                (state, None, events, row.version, key),
                            ));
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                }
            }
        },
    )
}

async fn snapshot_update(state: &ApiContext, row: &ServiceRequest) -> ServiceRequestUpdate {
    ServiceRequestUpdate {
        request_id: ID(row.id.to_string()),
        status: row.status,
        version: row.version,
        assignment_attempts: row.assignment_attempts,
        event: "Snapshot".into(),
        assigned_worker: worker_summary(state, row.assigned_worker_id)
            .await
            .ok()
            .flatten(),
        occurred_at: row.updated_at,
    }
}
