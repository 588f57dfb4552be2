//! One supervisor for all request actors (a single tree: a request actor's failure is
//! independent of its city's, and one place holds the restart policy).
//!
//! A failed request actor is restarted from its database row, never from memory, after an
//! exponential backoff; past `MAX_RESTARTS` within `RESTART_WINDOW` the failure is
//! escalated: logged as an error, counted, and left to the `WorkerAssignmentCron`
//! backstop, which settles overdue offers and re-spawns the request later.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use tracing::Instrument;
use uuid::Uuid;

use super::{
    request::{RequestActor, RequestMsg},
    CommandError, DispatchContext,
};
use crate::{store::ServiceRequest, telemetry::TraceLink};

/// Restarts allowed per request within the window before escalation.
pub const MAX_RESTARTS: u32 = 3;
pub const RESTART_WINDOW: Duration = Duration::from_secs(60);
const BASE_BACKOFF: Duration = Duration::from_millis(100);

pub enum SupervisorMsg {
    /// Restart the request's actor (sent to itself after the backoff).
    Restart { request_id: Uuid },
}

pub struct RequestSupervisor {
    pub ctx: Arc<DispatchContext>,
}

#[derive(Default)]
pub struct SupervisorState {
    /// Request id → (restarts in the current window, window start).
    restarts: HashMap<Uuid, (u32, Instant)>,
}

/// Spawns a request actor linked to the supervisor; the actor registers itself in
/// `pre_start`. Idempotent per request: a live actor is returned instead.
pub async fn spawn_request(
    ctx: &Arc<DispatchContext>,
    supervisor: &ActorRef<SupervisorMsg>,
    request_id: Uuid,
    created: Option<ServiceRequest>,
    origin: TraceLink,
) -> Result<ActorRef<RequestMsg>, CommandError> {
    if let Some(existing) = ctx.registry.get(&request_id) {
        return Ok(existing.clone());
    }
    let actor = RequestActor { ctx: ctx.clone() };
    // Spawned under a root span of its own: ractor's per-actor span lives as long as the
    // actor, and as a child it would keep the caller's span (a GraphQL create) open.
    let spawned = Actor::spawn_linked(
        None,
        actor,
        (request_id, created, origin),
        supervisor.get_cell(),
    )
    .instrument(tracing::info_span!(parent: None, "request_actor", request_id = %request_id))
    .await;
    match spawned {
        Ok((actor_ref, _)) => Ok(actor_ref),
        Err(e) => {
            if let Some(existing) = ctx.registry.get(&request_id) {
                return Ok(existing.clone());
            }
            let text = e.to_string();
            if text.contains("not found") {
                Err(CommandError::NotFound)
            } else if let Some((_, city)) =
                text.split_once(&format!("{}: ", super::request::NOT_OWNER))
            {
                // ractor quotes the start error: keep the city id alone.
                let city =
                    city.trim_end_matches(|c: char| !(c.is_alphanumeric() || c == '-' || c == '_'));
                Err(CommandError::NotOwner {
                    city: city.to_string(),
                })
            } else {
                Err(CommandError::Internal(text))
            }
        }
    }
}

impl Actor for RequestSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ActorRef<SupervisorMsg>,
        _: (),
    ) -> Result<SupervisorState, ActorProcessingErr> {
        Ok(SupervisorState::default())
    }

    async fn handle(
        &self,
        myself: ActorRef<SupervisorMsg>,
        msg: SupervisorMsg,
        _state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::Restart { request_id } => {
                match spawn_request(&self.ctx, &myself, request_id, None, TraceLink::default())
                    .await
                {
                    Ok(_) => {
                        tracing::info!(target: "RequestSupervisor", %request_id, "request actor restarted from the database")
                    }
                    Err(e) => {
                        tracing::error!(target: "RequestSupervisor", %request_id, error = %e, "restart failed; left to the WorkerAssignmentCron backstop")
                    }
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SupervisorMsg>,
        event: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorFailed(cell, error) => {
                let Some((_, request_id)) = self.ctx.actor_requests.remove(&cell.get_id()) else {
                    return Ok(());
                };
                self.ctx
                    .registry
                    .remove_if(&request_id, |_, a| a.get_id() == cell.get_id());
                let now = Instant::now();
                let entry = state.restarts.entry(request_id).or_insert((0, now));
                if now.duration_since(entry.1) > RESTART_WINDOW {
                    *entry = (0, now);
                }
                entry.0 += 1;
                let attempt = entry.0;
                if attempt > MAX_RESTARTS {
                    self.ctx.stats.actors_escalated.inc();
                    state.restarts.remove(&request_id);
                    tracing::error!(target: "RequestSupervisor", %request_id, %error, restarts = attempt - 1,
                        "request actor keeps failing; escalated, restarts stopped");
                    return Ok(());
                }
                self.ctx.stats.actor_restarts.inc();
                let backoff = BASE_BACKOFF * 2u32.pow(attempt - 1);
                tracing::warn!(target: "RequestSupervisor", %request_id, %error, attempt, backoff_ms = backoff.as_millis() as u64,
                    "request actor failed; restarting from the database");
                myself.send_after(backoff, move || SupervisorMsg::Restart { request_id });
            }
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                if let Some((_, request_id)) = self.ctx.actor_requests.remove(&cell.get_id()) {
                    self.ctx
                        .registry
                        .remove_if(&request_id, |_, a| a.get_id() == cell.get_id());
                    state.restarts.remove(&request_id);
                }
            }
            _ => {}
        }
        Ok(())
    }
}
