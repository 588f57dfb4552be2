//! Dispatch: city actors (R-trees of online workers), request actors (one per open request,
//! each with its own offer timer), their supervisor and the registry that routes commands.
//!
//! [`Dispatcher`] is the façade the GraphQL API, the worker gateway and the cron sweeps use.

pub mod city;
pub mod gateway;
pub mod index;
pub mod ownership;
pub mod request;
mod rollout;
pub mod routing;
pub mod supervisor;

use std::{borrow::Cow, collections::HashMap, sync::Arc};

use chrono::{DateTime, Utc};
use dashmap::DashMap;
use ractor::{call, Actor, ActorId, ActorRef, RpcReplyPort};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    domain::Status,
    store::{CancelledBy, ServiceRequest, SettingsWatch, Store, StoreError},
    telemetry::Counter,
};
use city::{
    Availability, CityActor, CityError, CityHandle, CityInfo, CityMsg, CityStats, OnlineWorker,
};
use gateway::WorkerGateway;
use request::{RequestMsg, RequestSnapshot};
use routing::{OwnerLink, RoutedAnswer, RoutedCommand};
use supervisor::{RequestSupervisor, SupervisorMsg};

/// Why a command on a request was refused. Deserializable too: a command run by another
/// cluster node comes back with its answer (`routing`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "code", content = "detail", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CommandError {
    #[error("service request not found")]
    NotFound,
    #[error(
        "the offer is not pending any more (expired, withdrawn, already answered, or never sent)"
    )]
    OfferNotPending,
    #[error("the offer is addressed to another worker")]
    NotYourOffer,
    #[error("the job is assigned to another worker")]
    NotYourJob,
    #[error("cannot {action} a request that is {status}")]
    IllegalState {
        status: Status,
        action: Cow<'static, str>,
    },
    #[error("the cancellation window of this job has closed")]
    WindowClosed,
    #[error("the booked slot has started: the assignment can no longer be cancelled")]
    SlotStarted,
    #[error("the request changed concurrently; try again")]
    Conflict,
    #[error("the request's actor is restarting; try again")]
    Unavailable,
    /// A value the database refused (a NUL byte, say): the sender's mistake. Never fails
    /// the actor.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The request is outside `dispatch_rollout_percentage`: the legacy dispatcher's.
    #[error("this request is dispatched by the legacy system (outside the rollout)")]
    NotInRollout,
    /// A cluster node that does not own the request's city (now, or any more): another
    /// node dispatches it. Retryable.
    #[error("city {city} is dispatched by another node; try again")]
    NotOwner { city: String },
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for CommandError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::ConcurrencyConflict { .. } => CommandError::Conflict,
            StoreError::NotFound { .. } => CommandError::NotFound,
            StoreError::IllegalTransition(t) => CommandError::IllegalState {
                status: t.from,
                action: "change".into(),
            },
            StoreError::WindowClosed => CommandError::WindowClosed,
            StoreError::InvalidValue(detail) => CommandError::InvalidInput(detail),
            StoreError::Fenced { city_id, .. } => CommandError::NotOwner { city: city_id },
            other => CommandError::Internal(other.to_string()),
        }
    }
}

/// Counters of the dispatch loop (metrics export them, tests assert on them).
#[derive(Debug, Default)]
pub struct DispatchStats {
    pub offers_sent: Counter,
    pub offers_accepted: Counter,
    pub offers_rejected: Counter,
    pub offers_expired: Counter,
    pub conflicts: Counter,
    pub unassigned: Counter,
    pub cancelled: Counter,
    pub completed: Counter,
    pub actor_restarts: Counter,
    pub actors_escalated: Counter,
    /// Registered actors that did not answer a heartbeat and were replaced.
    pub actors_revived: Counter,
    /// Live actors whose request showed no progress and were nudged to act again.
    pub actors_nudged: Counter,
    /// Assigned workers who cancelled before the job started (`cancel_assignment`).
    pub worker_cancellations: Counter,
    /// Assigned workers who did not start within the grace after the slot start.
    pub no_shows: Counter,
    /// Sum and count of creation-to-assignment times, in milliseconds.
    pub assignment_ms_sum: Counter,
    pub assignments: Counter,
}

/// What happened to an offer, for the per-city offer counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfferEvent {
    Sent,
    Accepted,
    Rejected,
    Expired,
}

impl OfferEvent {
    pub const ALL: [OfferEvent; 4] = [
        OfferEvent::Sent,
        OfferEvent::Accepted,
        OfferEvent::Rejected,
        OfferEvent::Expired,
    ];

    /// The Prometheus family counting these, labelled by `city`.
    pub fn metric(self) -> &'static str {
        match self {
            OfferEvent::Sent => "arreglame_offers_sent_total",
            OfferEvent::Accepted => "arreglame_offers_accepted_total",
            OfferEvent::Rejected => "arreglame_offers_rejected_total",
            OfferEvent::Expired => "arreglame_offers_expired_total",
        }
    }
}

impl DispatchStats {
    /// Counts an offer event, in the totals tests read and in the per-city metric.
    pub fn offer(&self, event: OfferEvent, city: Option<&str>) {
        let total = match event {
            OfferEvent::Sent => &self.offers_sent,
            OfferEvent::Accepted => &self.offers_accepted,
            OfferEvent::Rejected => &self.offers_rejected,
            OfferEvent::Expired => &self.offers_expired,
        };
        total.inc();
        let city = city.unwrap_or("none").to_string();
        metrics::counter!(event.metric(), "city" => city).increment(1);
    }

    /// Counts an assignment made `since` dispatch began (creation, or a booking's
    /// dispatch time).
    pub fn record_assignment(&self, since: DateTime<Utc>) {
        let ms = (Utc::now() - since).num_milliseconds().max(0) as u64;
        metrics::histogram!("arreglame_time_to_assignment_seconds").record(ms as f64 / 1000.0);
        self.assignment_ms_sum.add(ms);
        self.assignments.inc();
    }
}

/// Wall-clock time that advances with tokio's clock. Slot timers (a booking's dispatch
/// time, its reminder, its no-show deadline) compare the time now with timestamps from the
/// database; reading it this way lets a test on a paused clock move a booking through its
/// day with `tokio::time::advance`. In production the two clocks agree to within the
/// system clock's slew since start.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    wall: DateTime<Utc>,
    mono: tokio::time::Instant,
}

impl Clock {
    pub fn start() -> Clock {
        Clock {
            wall: Utc::now(),
            mono: tokio::time::Instant::now(),
        }
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.wall + chrono::Duration::from_std(self.mono.elapsed()).unwrap_or_default()
    }
}

/// What every request actor shares.
pub struct DispatchContext {
    pub store: Store,
    pub clock: Clock,
    pub settings: SettingsWatch,
    /// City id → its actor and description.
    pub cities: HashMap<String, CityHandle>,
    /// Service category → the skill a worker needs for it.
    pub categories: HashMap<String, String>,
    pub gateway: Arc<dyn WorkerGateway>,
    /// Live request actors by request id.
    pub registry: DashMap<Uuid, ActorRef<RequestMsg>>,
    /// Request id of each live request actor, for supervision events.
    pub actor_requests: DashMap<ActorId, Uuid>,
    pub stats: DispatchStats,
    /// The cities this node dispatches (all of them alone; its leases in a cluster).
    pub ownership: self::ownership::Ownership,
    /// How commands for the cities of other nodes reach their owner (a cluster node only;
    /// set once the link is up, `Dispatcher::route_through`).
    pub owner_link: std::sync::OnceLock<Arc<dyn OwnerLink>>,
}

impl DispatchContext {
    pub fn city(&self, id: &str) -> Option<CityHandle> {
        self.cities.get(id).cloned()
    }

    /// Drops the registry entries of a stopped actor (only if they still point at it).
    pub fn forget(&self, request_id: Uuid, actor: ActorId) {
        self.registry
            .remove_if(&request_id, |_, a| a.get_id() == actor);
        self.actor_requests.remove(&actor);
    }
}

/// What one heartbeat of the backstop found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Heartbeat {
    NoActor,
    Alive,
    Nudged,
    Replaced,
}

/// Entry point to dispatch for the API, the gateway and the sweeps.
#[derive(Clone)]
pub struct Dispatcher {
    ctx: Arc<DispatchContext>,
    supervisor: ActorRef<SupervisorMsg>,
}

impl Dispatcher {
    /// Starts one actor per active city and the request supervisor, then recovers every
    /// open request from the database.
    pub async fn start(
        store: Store,
        settings: SettingsWatch,
        gateway: Arc<dyn WorkerGateway>,
    ) -> anyhow::Result<Dispatcher> {
        Self::start_owning(store, settings, gateway, self::ownership::Ownership::Single).await
    }

    /// [`Dispatcher::start`] for a node that dispatches only the cities `ownership` says
    /// (a cluster node: none until its lease keeper wins some, docs/scale-out.md).
    pub async fn start_owning(
        store: Store,
        settings: SettingsWatch,
        gateway: Arc<dyn WorkerGateway>,
        ownership: self::ownership::Ownership,
    ) -> anyhow::Result<Dispatcher> {
        let mut cities = HashMap::new();
        for row in store.active_cities().await? {
            let info = match CityInfo::from_geojson(row.id.clone(), row.name, &row.service_area) {
                Ok(info) => info,
                Err(e) => {
                    tracing::error!(target: "Dispatch", city = %row.id, "city skipped: {e}");
                    continue;
                }
            };
            let (actor, _) = Actor::spawn(None, CityActor, info.clone()).await?;
            cities.insert(
                row.id,
                CityHandle {
                    info: Arc::new(info),
                    actor,
                },
            );
        }
        let categories: HashMap<String, String> =
            store.category_skills().await?.into_iter().collect();
        let ctx = Arc::new(DispatchContext {
            store,
            clock: Clock::start(),
            settings,
            cities,
            categories,
            gateway,
            registry: DashMap::new(),
            actor_requests: DashMap::new(),
            stats: DispatchStats::default(),
            ownership,
            owner_link: std::sync::OnceLock::new(),
        });
        let (supervisor, _) =
            Actor::spawn(None, RequestSupervisor { ctx: ctx.clone() }, ()).await?;
        let dispatcher = Dispatcher { ctx, supervisor };
        let recovered = dispatcher.recover().await?;
        tracing::info!(target: "Dispatch", cities = dispatcher.ctx.cities.len(), recovered, "dispatch started");
        Ok(dispatcher)
    }

    /// The shared context itself, for benches and tests that build actors by hand.
    #[cfg(feature = "test-support")]
    #[doc(hidden)]
    pub fn context(&self) -> &Arc<DispatchContext> {
        &self.ctx
    }

    /// The settings in force now (a snapshot; `system_config` changes apply to the next call).
    pub fn settings(&self) -> Arc<crate::store::Settings> {
        self.ctx.settings.borrow().clone()
    }

    /// The dispatch loop's counters.
    pub fn stats(&self) -> &DispatchStats {
        &self.ctx.stats
    }

    /// True while the request has a registered actor.
    pub fn has_actor(&self, request_id: Uuid) -> bool {
        self.ctx.registry.contains_key(&request_id)
    }

    /// Kills every request actor at once, with no clean-up (drills and tests: a crash).
    pub fn kill_request_actors(&self) {
        for entry in self.ctx.registry.iter() {
            entry.value().kill();
        }
    }

    /// Kills one request's actor with no clean-up (a crash); true when it had one.
    pub fn kill_request_actor(&self, request_id: Uuid) -> bool {
        self.ctx
            .registry
            .get(&request_id)
            .map(|a| a.kill())
            .is_some()
    }

    /// The served cities, by id.
    pub fn cities(&self) -> Vec<Arc<CityInfo>> {
        let mut cities: Vec<_> = self.ctx.cities.values().map(|c| c.info.clone()).collect();
        cities.sort_by(|a, b| a.id.cmp(&b.id));
        cities
    }

    /// One served city.
    pub fn city_info(&self, city_id: &str) -> Option<Arc<CityInfo>> {
        self.ctx.cities.get(city_id).map(|c| c.info.clone())
    }

    /// This node dispatches `city_id` now (always, alone; while its lease holds, in a cluster).
    pub fn owns_city(&self, city_id: Option<&str>) -> bool {
        self.ctx.ownership.owns(city_id)
    }

    /// The fence a write for a request of `city_id` carries: `Ok(None)` alone, the city's
    /// epoch in a cluster, `NotOwner` for a city this node does not own (write nothing).
    pub fn fence_of(&self, city_id: Option<&str>) -> Result<Option<i64>, CommandError> {
        self.ctx
            .ownership
            .fence(city_id)
            .map_err(|()| CommandError::NotOwner {
                city: city_id.unwrap_or_default().to_string(),
            })
    }

    /// This node lost a city: its request actors stop after the message at hand, writing
    /// nothing more (the new owner resumes them from the database).
    pub fn stand_down(&self, city_id: &str) {
        tracing::info!(target: "Dispatch", city = city_id, "standing down");
        for actor in self.ctx.registry.iter() {
            let _ = actor.value().cast(RequestMsg::OwnerChanged);
        }
    }

    /// Gives every open request without a live actor its actor back. Returns how many.
    pub async fn recover(&self) -> Result<usize, StoreError> {
        let mut spawned = 0;
        self.place_unplaced_requests().await?;
        for row in self.ctx.store.open_requests().await? {
            if !self.ctx.registry.contains_key(&row.id)
                && self.dispatches(row.id)
                && self.ctx.ownership.owns(row.city_id.as_deref())
                && self.ensure_actor(row.id).await.is_ok()
            {
                spawned += 1;
            }
        }
        Ok(spawned)
    }

    /// The progress heartbeat behind the cron backstop (as quickwit-actors' supervisors
    /// do): for each open request whose row shows no progress (`Store::stalled_requests`)
    /// and that has a registered actor, the actor must answer a heartbeat within
    /// `answer_within`. One that does not (its handler is stuck) is killed and replaced by a
    /// fresh actor rebuilt from the database; one that answers is nudged to take the step
    /// its state calls for (dispatch, or settle an overdue offer). Requests without an
    /// actor are `recover`'s. Returns (revived, nudged).
    pub async fn revive_stalled(
        &self,
        stalled: Vec<ServiceRequest>,
        answer_within: std::time::Duration,
    ) -> (usize, usize) {
        use futures::StreamExt;
        // Concurrently, so a sweep over many rows takes one heartbeat's time, not the sum.
        let outcomes: Vec<Heartbeat> = futures::stream::iter(stalled)
            .map(|row| self.heartbeat(row, answer_within))
            .buffer_unordered(32)
            .collect()
            .await;
        let revived = outcomes
            .iter()
            .filter(|o| **o == Heartbeat::Replaced)
            .count();
        let nudged = outcomes.iter().filter(|o| **o == Heartbeat::Nudged).count();
        (revived, nudged)
    }

    async fn heartbeat(
        &self,
        row: ServiceRequest,
        answer_within: std::time::Duration,
    ) -> Heartbeat {
        let Some(actor) = self.ctx.registry.get(&row.id).map(|a| a.clone()) else {
            return Heartbeat::NoActor;
        };
        let heartbeat = actor.call(RequestMsg::Snapshot, Some(answer_within)).await;
        let Ok(ractor::rpc::CallResult::Success(snapshot)) = heartbeat else {
            self.replace_actor(&row, &actor, "no heartbeat").await;
            return Heartbeat::Replaced;
        };
        if snapshot.version != row.version {
            // The row was read before the heartbeat: only an actor behind the row as it is
            // now holds a stale view (one that moved on meanwhile is fine).
            match self.ctx.store.get_request(row.id).await {
                Ok(now) if snapshot.version < now.version => {
                    self.replace_actor(&now, &actor, "stale view").await;
                    return Heartbeat::Replaced;
                }
                _ => return Heartbeat::Alive,
            }
        }
        let nudge = match (snapshot.status, snapshot.pending) {
            (Status::Pending, None) => Some(RequestMsg::Dispatch),
            (Status::Offering, Some(p)) if p.expires_at < Utc::now() => {
                Some(RequestMsg::OfferTimeout {
                    offer_id: p.offer_id,
                })
            }
            // A booking past its dispatch time or its no-show deadline (settings may have
            // changed since its timer was armed): the actor re-reads the clock and acts.
            (Status::Scheduled | Status::Assigned, _) => Some(RequestMsg::SlotTick),
            _ => None,
        };
        match nudge {
            Some(msg) => {
                let _ = actor.send_message(msg);
                self.ctx.stats.actors_nudged.inc();
                Heartbeat::Nudged
            }
            None => Heartbeat::Alive,
        }
    }

    async fn replace_actor(&self, row: &ServiceRequest, actor: &ActorRef<RequestMsg>, why: &str) {
        let request_id = row.id;
        tracing::error!(target: "Dispatch", %request_id, why, "request actor made no progress; replacing it");
        actor.kill();
        self.ctx.forget(request_id, actor.get_id());
        self.ctx.stats.actors_revived.inc();
        // A killed actor cleans nothing up: free a worker it held an offer for (the new
        // actor reserves it again if that offer is still out).
        if let Some(city) = row.city_id.as_deref().and_then(|c| self.ctx.city(c)) {
            city.cast(CityMsg::ReleaseOffersOf { request_id });
        }
        if let Err(e) = self.ensure_actor(request_id).await {
            tracing::warn!(target: "Dispatch", %request_id, error = %e, "replacement actor did not start; the next sweep retries");
        }
    }

    /// Starts dispatching a recovered request (its actor reads the row); idempotent.
    pub async fn ensure_actor(
        &self,
        request_id: Uuid,
    ) -> Result<ActorRef<RequestMsg>, CommandError> {
        self.start_actor(request_id, None).await
    }

    /// Starts dispatching a request just created, handing its row to the actor so it reads
    /// nothing back; idempotent.
    pub async fn start_dispatch(
        &self,
        created: ServiceRequest,
    ) -> Result<ActorRef<RequestMsg>, CommandError> {
        self.start_actor(created.id, Some(created)).await
    }

    async fn start_actor(
        &self,
        request_id: Uuid,
        created: Option<ServiceRequest>,
    ) -> Result<ActorRef<RequestMsg>, CommandError> {
        if let Some(actor) = self.ctx.registry.get(&request_id) {
            return Ok(actor.clone());
        }
        if !self.dispatches(request_id) {
            return Err(CommandError::NotInRollout);
        }
        supervisor::spawn_request(
            &self.ctx,
            &self.supervisor,
            request_id,
            created,
            crate::telemetry::TraceLink::of(&tracing::Span::current()),
        )
        .await
    }

    /// The live actor of a request, starting one from the database when the request is
    /// open but has none (after an escalation, say).
    async fn actor(&self, request_id: Uuid) -> Result<ActorRef<RequestMsg>, CommandError> {
        if let Some(actor) = self.ctx.registry.get(&request_id) {
            return Ok(actor.clone());
        }
        let row = self.ctx.store.get_request(request_id).await?;
        if row.status.is_terminal() {
            return Err(CommandError::IllegalState {
                status: row.status,
                action: "change".into(),
            });
        }
        self.ensure_actor(request_id).await
    }

    /// Sends a command to the request's actor and waits for the answer. An actor that
    /// stopped between lookup and delivery (it just reached a terminal state, or crashed) is
    /// dropped from the registry and the command is tried once more against the database's
    /// view, so callers get a definite answer instead of "unavailable".
    async fn command<T: Send + 'static>(
        &self,
        request_id: Uuid,
        make: impl Fn(RpcReplyPort<Result<T, CommandError>>) -> RequestMsg,
    ) -> Result<T, CommandError> {
        for _ in 0..2 {
            let actor = self.actor(request_id).await?;
            match actor.call(&make, None).await {
                Ok(ractor::rpc::CallResult::Success(answer)) => return answer,
                _ => {
                    let dead = actor.get_id();
                    self.ctx
                        .registry
                        .remove_if(&request_id, |_, a| a.get_id() == dead);
                    self.ctx.actor_requests.remove(&dead);
                }
            }
        }
        Err(CommandError::Unavailable)
    }

    pub async fn accept_offer(
        &self,
        worker_id: Uuid,
        request_id: Uuid,
        offer_id: Uuid,
    ) -> Result<ServiceRequest, CommandError> {
        self.run(RoutedCommand::AcceptOffer {
            worker_id,
            request_id,
            offer_id,
        })
        .await?
        .request()
    }

    pub async fn reject_offer(
        &self,
        worker_id: Uuid,
        request_id: Uuid,
        offer_id: Uuid,
        reason: Option<String>,
    ) -> Result<(), CommandError> {
        self.run(RoutedCommand::RejectOffer {
            worker_id,
            request_id,
            offer_id,
            reason,
        })
        .await?
        .done()
    }

    pub async fn start_job(
        &self,
        worker_id: Uuid,
        request_id: Uuid,
    ) -> Result<ServiceRequest, CommandError> {
        self.run(RoutedCommand::StartJob {
            worker_id,
            request_id,
        })
        .await?
        .request()
    }

    /// The assigned worker gives the job back before it starts (`cancel_assignment`).
    pub async fn cancel_assignment(
        &self,
        worker_id: Uuid,
        request_id: Uuid,
        reason: Option<String>,
    ) -> Result<ServiceRequest, CommandError> {
        self.run(RoutedCommand::CancelAssignment {
            worker_id,
            request_id,
            reason,
        })
        .await?
        .request()
    }

    pub async fn complete_job(
        &self,
        worker_id: Uuid,
        request_id: Uuid,
    ) -> Result<ServiceRequest, CommandError> {
        self.run(RoutedCommand::CompleteJob {
            worker_id,
            request_id,
        })
        .await?
        .request()
    }

    /// Cancels a request. Ownership is the caller's to check (the API does, per customer).
    pub async fn cancel(
        &self,
        request_id: Uuid,
        by: CancelledBy,
        reason: Option<String>,
    ) -> Result<ServiceRequest, CommandError> {
        self.run(RoutedCommand::Cancel {
            request_id,
            by,
            reason,
        })
        .await?
        .request()
    }

    /// Starts dispatching a request just stored (by the API): here, handing its row to
    /// the actor, when this node owns its city; on the owner otherwise (a cluster node).
    pub async fn begin_dispatch(&self, created: ServiceRequest) -> Result<(), CommandError> {
        if let Some((link, city)) = self.remote_owner(created.city_id.as_deref()) {
            let command = RoutedCommand::StartDispatch {
                request_id: created.id,
            };
            return forward(link.as_ref(), &city, command).await?.done();
        }
        self.start_dispatch(created).await.map(|_| ())
    }

    /// Makes sure a stored open request is being dispatched (here or on its city's owner).
    pub async fn begin_dispatch_of(&self, request_id: Uuid) -> Result<(), CommandError> {
        self.run(RoutedCommand::StartDispatch { request_id })
            .await?
            .done()
    }

    // ---- routing between cluster nodes (docs/scale-out.md) --------------------------------

    /// From now on, commands for cities this node does not own go through `link` to their
    /// owner (a cluster node, once its NATS link is up; the first link set stays).
    pub fn route_through(&self, link: Arc<dyn OwnerLink>) {
        let _ = self.ctx.owner_link.set(link);
    }

    /// The link to the owner of `city_id`, when another node owns it (none alone).
    fn remote_owner(&self, city_id: Option<&str>) -> Option<(Arc<dyn OwnerLink>, String)> {
        let link = self.ctx.owner_link.get()?;
        let city = city_id?;
        (!self.ctx.ownership.owns(Some(city))).then(|| (link.clone(), city.to_string()))
    }

    /// Runs a command here, or on the owner of its city when that is another node.
    async fn run(&self, command: RoutedCommand) -> Result<RoutedAnswer, CommandError> {
        let remote = match &command {
            RoutedCommand::WorkerOnline { city_id, .. }
            | RoutedCommand::WorkerOffline { city_id, .. } => self.remote_owner(Some(city_id)),
            RoutedCommand::StartDispatch { request_id }
            | RoutedCommand::AcceptOffer { request_id, .. }
            | RoutedCommand::RejectOffer { request_id, .. }
            | RoutedCommand::StartJob { request_id, .. }
            | RoutedCommand::CompleteJob { request_id, .. }
            | RoutedCommand::CancelAssignment { request_id, .. }
            | RoutedCommand::Cancel { request_id, .. } => {
                // Alone, or with the actor here, there is nothing to look up.
                if self.ctx.owner_link.get().is_none() || self.ctx.registry.contains_key(request_id)
                {
                    None
                } else {
                    let row = self.ctx.store.get_request(*request_id).await?;
                    self.remote_owner(row.city_id.as_deref())
                }
            }
        };
        match remote {
            Some((link, city)) => forward(link.as_ref(), &city, command).await,
            None => self.execute_local(command).await,
        }
    }

    /// Runs a command on this node, never forwarding it: what a node does for a command
    /// another node routed to it. A city this node does not own (any more) is `NotOwner`.
    pub async fn execute_local(
        &self,
        command: RoutedCommand,
    ) -> Result<RoutedAnswer, CommandError> {
        match command {
            RoutedCommand::WorkerOnline {
                city_id,
                worker_id,
                lon,
                lat,
                skills,
            } => {
                if !self.owns_city(Some(&city_id)) {
                    return Err(CommandError::NotOwner { city: city_id });
                }
                let online = self
                    .local_worker_online(&city_id, worker_id, lon, lat, skills)
                    .await;
                Ok(RoutedAnswer::Online(online))
            }
            RoutedCommand::WorkerOffline { city_id, worker_id } => {
                self.local_worker_offline(&city_id, worker_id).await;
                Ok(RoutedAnswer::Done)
            }
            RoutedCommand::StartDispatch { request_id } => self
                .ensure_actor(request_id)
                .await
                .map(|_| RoutedAnswer::Done),
            RoutedCommand::AcceptOffer {
                worker_id,
                request_id,
                offer_id,
            } => self
                .command(request_id, |reply| RequestMsg::Accept {
                    worker_id,
                    offer_id,
                    reply,
                })
                .await
                .map_err(offer_gone)
                .map(answer_row),
            RoutedCommand::RejectOffer {
                worker_id,
                request_id,
                offer_id,
                reason,
            } => self
                .command(request_id, |reply| RequestMsg::Reject {
                    worker_id,
                    offer_id,
                    reason: reason.clone(),
                    reply,
                })
                .await
                .map_err(offer_gone)
                .map(|()| RoutedAnswer::Done),
            RoutedCommand::StartJob {
                worker_id,
                request_id,
            } => self
                .command(request_id, |reply| RequestMsg::StartJob {
                    worker_id,
                    reply,
                })
                .await
                .map(answer_row),
            RoutedCommand::CompleteJob {
                worker_id,
                request_id,
            } => self
                .command(request_id, |reply| RequestMsg::CompleteJob {
                    worker_id,
                    reply,
                })
                .await
                .map(answer_row),
            RoutedCommand::CancelAssignment {
                worker_id,
                request_id,
                reason,
            } => self
                .command(request_id, |reply| RequestMsg::ReleaseAssignment {
                    worker_id,
                    reason: reason.clone(),
                    reply,
                })
                .await
                .map(answer_row),
            RoutedCommand::Cancel {
                request_id,
                by,
                reason,
            } => self
                .command(request_id, |reply| RequestMsg::Cancel {
                    by,
                    reason: reason.clone(),
                    reply,
                })
                .await
                .map(answer_row),
        }
    }

    pub async fn snapshot(&self, request_id: Uuid) -> Option<RequestSnapshot> {
        let actor = self.ctx.registry.get(&request_id)?.clone();
        call!(actor, RequestMsg::Snapshot).ok()
    }

    pub async fn snapshots(&self) -> Vec<RequestSnapshot> {
        let actors: Vec<_> = self
            .ctx
            .registry
            .iter()
            .map(|e| e.value().clone())
            .collect();
        let mut out = Vec::with_capacity(actors.len());
        for actor in actors {
            if let Ok(s) = call!(actor, RequestMsg::Snapshot) {
                out.push(s);
            }
        }
        out
    }

    pub fn live_actors(&self) -> usize {
        self.ctx.registry.len()
    }

    /// Fault injection for resilience drills: makes the request's actor panic.
    pub fn inject_panic(&self, request_id: Uuid) -> bool {
        self.ctx
            .registry
            .get(&request_id)
            .map(|a| a.send_message(RequestMsg::InjectPanic).is_ok())
            .unwrap_or(false)
    }

    /// Fault injection for resilience drills: makes the request's actor hang in a handler.
    pub fn inject_stall(&self, request_id: Uuid) -> bool {
        self.ctx
            .registry
            .get(&request_id)
            .map(|a| a.send_message(RequestMsg::InjectStall).is_ok())
            .unwrap_or(false)
    }

    // ---- workers ------------------------------------------------------------------------

    fn city_actor(&self, city_id: &str) -> Result<CityHandle, CityError> {
        self.ctx.city(city_id).ok_or(CityError::OutsideServiceArea {
            city: city_id.to_string(),
            lon: f64::NAN,
            lat: f64::NAN,
        })
    }

    /// The city whose service area contains (lon, lat).
    pub fn city_at(&self, lon: f64, lat: f64) -> Option<&CityInfo> {
        self.ctx
            .cities
            .values()
            .map(|c| c.info.as_ref())
            .find(|c| c.serves(lon, lat))
    }

    /// A worker comes online. A job it already holds (per the database) keeps it busy.
    /// On a cluster node, in a city another node owns, the owner puts it online there.
    pub async fn worker_online(
        &self,
        city_id: &str,
        worker_id: Uuid,
        lon: f64,
        lat: f64,
        skills: Vec<String>,
    ) -> Result<(), CityError> {
        let command = RoutedCommand::WorkerOnline {
            city_id: city_id.to_string(),
            worker_id,
            lon,
            lat,
            skills,
        };
        match self.run(command).await {
            Ok(RoutedAnswer::Online(online)) => online,
            Ok(other) => {
                tracing::warn!(target: "Dispatch", %worker_id, ?other, "unexpected answer to going online");
                Err(CityError::Unavailable)
            }
            // No owner now (a takeover under way) or none answered: retry.
            Err(e) => {
                tracing::debug!(target: "Dispatch", %worker_id, city = city_id, error = %e, "worker not put online");
                Err(CityError::Unavailable)
            }
        }
    }

    async fn local_worker_online(
        &self,
        city_id: &str,
        worker_id: Uuid,
        lon: f64,
        lat: f64,
        skills: Vec<String>,
    ) -> Result<(), CityError> {
        let city = self.city_actor(city_id)?;
        // What the worker holds comes from the database; if it cannot say, the worker is
        // not put online (as available, it could be offered a second job).
        let store = &self.ctx.store;
        let unavailable = |e: StoreError| {
            tracing::warn!(target: "Dispatch", %worker_id, error = %e, "worker not put online: its jobs could not be read");
            CityError::Unavailable
        };
        let jobs = store.jobs_in_hand(worker_id).await.map_err(unavailable)?;
        // A booked job not started yet leaves the worker free until its slot; any other
        // job in hand keeps them busy.
        let busy_with = jobs
            .iter()
            .find(|job| job.status == Status::InProgress || job.slot.is_none())
            .map(|job| job.request_id);
        let booked: Vec<city::BookedSlot> = jobs
            .iter()
            .filter(|job| job.status == Status::Assigned)
            .filter_map(|job| {
                job.slot.map(|(start, end)| city::BookedSlot {
                    request_id: job.request_id,
                    start,
                    end,
                })
            })
            .collect();
        let record = store.worker_record(worker_id).await.map_err(unavailable)?;
        let holding = store
            .pending_offer_request(worker_id)
            .await
            .map_err(unavailable)?;
        let result = city
            .call(|reply| CityMsg::Online {
                worker_id,
                lon,
                lat,
                skills,
                busy_with,
                reply,
            })
            .await
            .unwrap_or(Err(CityError::NotOnline(worker_id)));
        if result.is_ok() {
            city.cast(CityMsg::Profile {
                worker_id,
                booked,
                record,
            });
            // A pending offer from before a reconnect keeps the worker reserved for it.
            if let Some(request_id) = holding {
                let _ = city
                    .call(|reply| CityMsg::Reserve {
                        worker_id,
                        request_id,
                        reply,
                    })
                    .await;
            }
            if let Err(e) = store
                .record_worker_online(worker_id, city_id, lat, lon)
                .await
            {
                // Bookkeeping only (the guide's "lastActiveAt"): dispatch does not read it.
                tracing::warn!(target: "Dispatch", %worker_id, error = %e, "could not record the worker's last activity");
            }
        }
        result
    }

    /// A worker moved. Fire and forget when `wait` is false (the hot path of location updates).
    pub async fn worker_moved(
        &self,
        city_id: &str,
        worker_id: Uuid,
        lon: f64,
        lat: f64,
        wait: bool,
    ) -> Result<(), CityError> {
        if let Some((link, city)) = self.remote_owner(Some(city_id)) {
            link.moved(&city, worker_id, lon, lat);
            return Ok(());
        }
        let city = self.city_actor(city_id)?;
        if !wait {
            city.cast(CityMsg::Moved {
                worker_id,
                lon,
                lat,
                reply: None,
            });
            return Ok(());
        }
        city.call(|reply| CityMsg::Moved {
            worker_id,
            lon,
            lat,
            reply: Some(reply),
        })
        .await
        .unwrap_or(Err(CityError::NotOnline(worker_id)))
    }

    /// A position routed here by another node for a city this node owns (nothing when it
    /// does not own the city any more: the sender's next position goes to the new owner).
    pub fn local_worker_moved(&self, city_id: &str, worker_id: Uuid, lon: f64, lat: f64) {
        if !self.owns_city(Some(city_id)) {
            return;
        }
        if let Some(city) = self.ctx.city(city_id) {
            city.cast(CityMsg::Moved {
                worker_id,
                lon,
                lat,
                reply: None,
            });
        }
    }

    /// A worker goes offline (or its connection died). An offer it held is settled as a
    /// timeout at once, so the request moves on instead of waiting for the timer.
    pub async fn worker_offline(&self, city_id: &str, worker_id: Uuid) {
        let command = RoutedCommand::WorkerOffline {
            city_id: city_id.to_string(),
            worker_id,
        };
        if let Err(e) = self.run(command).await {
            // The owner that missed it keeps the worker until its offer times out or a
            // takeover starts the city afresh; nothing is written for a missed offline.
            tracing::warn!(target: "Dispatch", %worker_id, city = city_id, error = %e, "worker offline not delivered to the city's owner");
        }
    }

    async fn local_worker_offline(&self, city_id: &str, worker_id: Uuid) {
        let Ok(city) = self.city_actor(city_id) else {
            return;
        };
        let held = city
            .call(|reply| CityMsg::Offline {
                worker_id,
                reply: Some(reply),
            })
            .await
            .flatten();
        if let Some(Availability::HoldingOffer { request_id }) = held {
            if let Some(actor) = self.ctx.registry.get(&request_id) {
                let _ = actor.send_message(RequestMsg::WorkerLost { worker_id });
            }
        }
    }

    /// The online workers of a city (for the ops map).
    pub async fn city_workers(&self, city_id: &str) -> Vec<OnlineWorker> {
        match self.ctx.city(city_id) {
            Some(city) => city.call(CityMsg::Workers).await.unwrap_or_default(),
            None => Vec::new(),
        }
    }

    pub async fn city_stats(&self) -> Vec<CityStats> {
        let mut out = Vec::new();
        let mut ids: Vec<_> = self.ctx.cities.keys().cloned().collect();
        ids.sort();
        for id in ids {
            if let Some(city) = self.ctx.city(&id) {
                if let Some(s) = city.call(CityMsg::Stats).await {
                    out.push(s);
                }
            }
        }
        out
    }

    /// Stops every actor (request actors first, through their supervisor).
    pub async fn shutdown(&self) {
        self.supervisor.stop_children(None);
        self.supervisor.stop(None);
        for city in self.ctx.cities.values() {
            city.actor.stop(None);
        }
    }
}

/// Sends a command to the owner of `city`, counting it per command and outcome.
async fn forward(
    link: &dyn OwnerLink,
    city: &str,
    command: RoutedCommand,
) -> Result<RoutedAnswer, CommandError> {
    let kind = command.kind();
    let answer = link.forward(city, command).await;
    let outcome = match &answer {
        Ok(_) => "ok",
        Err(CommandError::NotOwner { .. }) => "no_owner",
        Err(CommandError::Unavailable) => "unavailable",
        Err(_) => "refused",
    };
    metrics::counter!("arreglame_cluster_commands_forwarded_total", "command" => kind, "outcome" => outcome)
        .increment(1);
    answer
}

fn answer_row(row: ServiceRequest) -> RoutedAnswer {
    RoutedAnswer::Request(Box::new(row))
}

/// An offer answered on a request that already ended was simply not pending any more.
fn offer_gone(e: CommandError) -> CommandError {
    match e {
        CommandError::IllegalState { .. } => CommandError::OfferNotPending,
        other => other,
    }
}
