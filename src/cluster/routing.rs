//! Routing between cluster nodes over NATS core subjects (docs/scale-out.md).
//!
//! Every node serves worker WebSockets and GraphQL; a city's actors run on its owner only.
//!
//! | subject | who listens | what |
//! | --- | --- | --- |
//! | `arreglame.city.<id>.cmd` | the city's owner only | a [`RoutedCommand`], request/reply |
//! | `arreglame.city.<id>.loc` | the city's owner only | a worker's position, fire and forget |
//! | `arreglame.worker.*` | every node | a [`WorkerNotice`] for a worker connected elsewhere |
//! | `arreglame.cluster.reannounce.<id>` | every node | a new owner asks for the city's workers |
//!
//! A command sent while nobody owns the city gets NATS's "no responders" at once: the
//! documented retryable `NotOwner` (GraphQL and the socket say `UNAVAILABLE`). The database
//! stays the truth: an offer is written before it is pushed, and a worker reconnecting
//! anywhere is sent its pending offer again, so a notice lost on the way costs a resend,
//! never a job.

use std::{sync::Arc, time::Duration};

use async_nats::{Client, Subject};
use bytes::Bytes;
use dashmap::DashMap;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::{sync::mpsc, task::JoinHandle};
use uuid::Uuid;

use crate::dispatch::{
    gateway::{WorkerGateway, WorkerNotice},
    routing::{OwnerLink, Presence, RoutedAnswer, RoutedCommand},
    CommandError, Dispatcher,
};

/// How long a node waits for a city's owner to answer a command.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// The subject token of a city id (ids are `[a-z0-9-]` in practice; anything NATS reads as
/// a separator or a wildcard is replaced, on every node alike).
pub fn token(id: &str) -> String {
    id.chars()
        .map(|c| match c {
            '.' | '*' | '>' => '_',
            c if c.is_whitespace() => '_',
            c => c,
        })
        .collect()
}

pub fn command_subject(city_id: &str) -> String {
    format!("arreglame.city.{}.cmd", token(city_id))
}

pub fn location_subject(city_id: &str) -> String {
    format!("arreglame.city.{}.loc", token(city_id))
}

pub fn worker_subject(worker_id: Uuid) -> String {
    format!("arreglame.worker.{worker_id}")
}

pub fn reannounce_subject(city_id: &str) -> String {
    format!("arreglame.cluster.reannounce.{}", token(city_id))
}

/// A worker's position on `arreglame.city.<id>.loc`.
#[derive(Debug, Serialize, Deserialize)]
struct Moved {
    worker_id: Uuid,
    lon: f64,
    lat: f64,
}

/// What the owner answers on a command's reply subject.
type Reply = Result<RoutedAnswer, CommandError>;

/// Publications queued at most; beyond that (NATS unreachable for a while) they are dropped
/// and counted: a position is replaced seconds later, an offer is resent from the database
/// when the worker reconnects.
const PUBLISH_QUEUE: usize = 16_384;

/// One queue of fire-and-forget publications, sent in order by one task (so an offer and
/// its withdrawal reach the worker's node in the order they were made).
#[derive(Clone)]
struct Publisher {
    tx: mpsc::Sender<(String, Bytes)>,
}

impl Publisher {
    fn spawn(client: Client) -> Publisher {
        let (tx, mut rx) = mpsc::channel::<(String, Bytes)>(PUBLISH_QUEUE);
        tokio::spawn(async move {
            while let Some((subject, payload)) = rx.recv().await {
                if let Err(e) = client.publish(subject, payload).await {
                    tracing::debug!(target: "Cluster", error = %e, "publication dropped");
                }
            }
        });
        Publisher { tx }
    }

    fn send(&self, subject: String, payload: impl Serialize) {
        match serde_json::to_vec(&payload) {
            Ok(bytes) => {
                if self.tx.try_send((subject, bytes.into())).is_err() {
                    metrics::counter!("arreglame_cluster_publications_dropped_total").increment(1);
                }
            }
            Err(e) => tracing::error!(target: "Cluster", error = %e, "publication not encoded"),
        }
    }
}

/// Pushes a notice through this node's sessions when the worker is connected here, and to
/// the other nodes over `arreglame.worker.<id>` otherwise.
pub struct ClusterGateway {
    local: Arc<dyn WorkerGateway>,
    publisher: Publisher,
}

impl ClusterGateway {
    pub fn new(client: Client, local: Arc<dyn WorkerGateway>) -> ClusterGateway {
        ClusterGateway {
            local,
            publisher: Publisher::spawn(client),
        }
    }
}

impl WorkerGateway for ClusterGateway {
    fn notify(&self, notice: WorkerNotice) {
        let worker_id = notice.worker_id();
        if self.local.has_session(worker_id) {
            self.local.notify(notice);
            return;
        }
        metrics::counter!("arreglame_cluster_notices_routed_total").increment(1);
        self.publisher.send(worker_subject(worker_id), &notice);
    }

    fn has_session(&self, worker_id: Uuid) -> bool {
        self.local.has_session(worker_id)
    }
}

/// The [`OwnerLink`] over NATS request/reply.
pub struct NatsOwnerLink {
    client: Client,
    publisher: Publisher,
    timeout: Duration,
}

impl NatsOwnerLink {
    pub fn new(client: Client, timeout: Duration) -> NatsOwnerLink {
        NatsOwnerLink {
            publisher: Publisher::spawn(client.clone()),
            client,
            timeout,
        }
    }
}

#[async_trait::async_trait]
impl OwnerLink for NatsOwnerLink {
    async fn forward(&self, city_id: &str, command: RoutedCommand) -> Reply {
        let payload = serde_json::to_vec(&command)
            .map_err(|e| CommandError::Internal(format!("command not encoded: {e}")))?;
        let request = async_nats::Request::new()
            .payload(payload.into())
            .timeout(Some(self.timeout));
        let answer = self
            .client
            .send_request(command_subject(city_id), request)
            .await
            .map_err(|e| match e.kind() {
                async_nats::RequestErrorKind::NoResponders => CommandError::NotOwner {
                    city: city_id.to_string(),
                },
                _ => {
                    tracing::warn!(target: "Cluster", city = city_id, error = %e, "command not answered");
                    CommandError::Unavailable
                }
            })?;
        serde_json::from_slice::<Reply>(&answer.payload)
            .map_err(|e| CommandError::Internal(format!("the owner's answer is unreadable: {e}")))?
    }

    fn moved(&self, city_id: &str, worker_id: Uuid, lon: f64, lat: f64) {
        self.publisher.send(
            location_subject(city_id),
            Moved {
                worker_id,
                lon,
                lat,
            },
        );
    }
}

/// One node's end of the routing: what every node listens to, and the subjects of the
/// cities it owns.
pub struct Router {
    client: Client,
    node_id: String,
    dispatcher: Dispatcher,
    presence: Arc<dyn Presence>,
    nodes: async_nats::jetstream::kv::Store,
    lease: Duration,
    /// The subscription tasks of each owned city.
    served: DashMap<String, Vec<JoinHandle<()>>>,
}

impl Router {
    /// Listens for notices to this node's workers and for re-announcement calls, and routes
    /// the dispatcher's commands for other nodes' cities through NATS.
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        client: Client,
        node_id: String,
        dispatcher: Dispatcher,
        local: Arc<dyn WorkerGateway>,
        presence: Arc<dyn Presence>,
        nodes: async_nats::jetstream::kv::Store,
        lease: Duration,
    ) -> Result<Arc<Router>, async_nats::SubscribeError> {
        let mut notices = client.subscribe("arreglame.worker.*").await?;
        tokio::spawn(async move {
            while let Some(message) = notices.next().await {
                match serde_json::from_slice::<WorkerNotice>(&message.payload) {
                    // Only a worker connected here: another node's worker is its node's.
                    Ok(notice) if local.has_session(notice.worker_id()) => local.notify(notice),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(target: "Cluster", subject = %message.subject, error = %e, "unreadable worker notice")
                    }
                }
            }
        });
        let router = Arc::new(Router {
            client: client.clone(),
            node_id,
            dispatcher: dispatcher.clone(),
            presence,
            nodes,
            lease,
            served: DashMap::new(),
        });
        let mut calls = client.subscribe("arreglame.cluster.reannounce.*").await?;
        let answering = router.clone();
        tokio::spawn(async move {
            while let Some(message) = calls.next().await {
                let router = answering.clone();
                tokio::spawn(async move { router.answer_reannounce(message).await });
            }
        });
        dispatcher.route_through(Arc::new(NatsOwnerLink::new(client, COMMAND_TIMEOUT)));
        Ok(router)
    }

    /// This node owns `city_id` now: it answers the city's commands and positions, asks
    /// every node to announce the city's workers again (and waits, briefly, until the live
    /// nodes have), so a recovered request finds the city's workers.
    pub async fn serve(&self, city_id: &str) -> Result<usize, async_nats::SubscribeError> {
        let commands = self.client.subscribe(command_subject(city_id)).await?;
        let positions = self.client.subscribe(location_subject(city_id)).await?;
        let tasks = vec![
            tokio::spawn(serve_commands(
                self.client.clone(),
                self.dispatcher.clone(),
                city_id.to_string(),
                commands,
            )),
            tokio::spawn(serve_positions(
                self.dispatcher.clone(),
                city_id.to_string(),
                positions,
            )),
        ];
        if let Some(old) = self.served.insert(city_id.to_string(), tasks) {
            old.iter().for_each(JoinHandle::abort);
        }
        Ok(self.reannounce(city_id).await)
    }

    /// This node does not own `city_id` any more: its subjects go quiet here.
    pub fn unserve(&self, city_id: &str) {
        if let Some((_, tasks)) = self.served.remove(city_id) {
            tasks.iter().for_each(JoinHandle::abort);
        }
    }

    /// Asks every node (this one too) to announce the workers it holds online in `city_id`
    /// again, and waits until each live node answered or half a lease passed. Returns how
    /// many workers were announced.
    async fn reannounce(&self, city_id: &str) -> usize {
        let expected = super::lease::live_nodes(&self.nodes, self.lease / 2)
            .await
            .map(|n| n.len().max(1))
            .unwrap_or(1);
        let inbox = self.client.new_inbox();
        let Ok(mut answers) = self.client.subscribe(inbox.clone()).await else {
            return 0;
        };
        let asked = self
            .client
            .publish_with_reply(
                reannounce_subject(city_id),
                inbox,
                self.node_id.clone().into(),
            )
            .await;
        if asked.is_err() {
            return 0;
        }
        let (mut nodes, mut workers) = (0, 0);
        let deadline = tokio::time::Instant::now() + self.lease / 2;
        while nodes < expected {
            match tokio::time::timeout_at(deadline, answers.next()).await {
                Ok(Some(answer)) => {
                    nodes += 1;
                    workers += std::str::from_utf8(&answer.payload)
                        .ok()
                        .and_then(|n| n.parse::<usize>().ok())
                        .unwrap_or(0);
                }
                _ => break,
            }
        }
        tracing::info!(target: "Cluster", city = city_id, nodes, expected, workers, "workers announced to the new owner");
        workers
    }

    async fn answer_reannounce(&self, message: async_nats::Message) {
        let Some(city_id) = message.subject.split('.').nth(3).map(str::to_string) else {
            return;
        };
        let city = self
            .dispatcher
            .cities()
            .into_iter()
            .find(|c| token(&c.id) == city_id)
            .map(|c| c.id.clone());
        let announced = match city {
            Some(city) => self.presence.reannounce(&self.dispatcher, &city).await,
            None => 0,
        };
        if let Some(reply) = message.reply {
            let _ = self
                .client
                .publish(reply, announced.to_string().into())
                .await;
        }
    }
}

/// How often a city's subscriptions check that this node still owns the city.
const OWNERSHIP_CHECK: Duration = Duration::from_millis(250);

/// A city's subscription, read only while this node owns the city.
struct WhileOwner {
    dispatcher: Dispatcher,
    city_id: String,
    subscription: async_nats::Subscriber,
    check: tokio::time::Interval,
}

impl WhileOwner {
    fn new(dispatcher: Dispatcher, city_id: String, subscription: async_nats::Subscriber) -> Self {
        WhileOwner {
            dispatcher,
            city_id,
            subscription,
            check: tokio::time::interval(OWNERSHIP_CHECK),
        }
    }

    fn owns(&self) -> bool {
        self.dispatcher.owns_city(Some(&self.city_id))
    }

    /// The next message while this node owns the city; `None` once it does not (its lease
    /// ran out on this node's clock, whatever its keeper is doing) or the subscription
    /// ended. The caller then drops the subscription, so the city's subjects are answered
    /// by its new owner alone.
    async fn next(&mut self) -> Option<async_nats::Message> {
        loop {
            tokio::select! {
                message = self.subscription.next() => return message.filter(|_| self.owns()),
                _ = self.check.tick() => {
                    if !self.owns() {
                        return None;
                    }
                }
            }
        }
    }
}

/// Runs each command routed to an owned city and answers it. A node that does not own the
/// city any more stops listening (a command that reached it anyway goes unanswered, and the
/// real owner's answer is the one the sender gets).
async fn serve_commands(
    client: Client,
    dispatcher: Dispatcher,
    city_id: String,
    commands: async_nats::Subscriber,
) {
    let mut commands = WhileOwner::new(dispatcher.clone(), city_id, commands);
    while let Some(message) = commands.next().await {
        let (client, dispatcher) = (client.clone(), dispatcher.clone());
        // Each on its own task: one slow command must not hold up the city's others.
        tokio::spawn(async move {
            let Some(reply) = message.reply.clone() else {
                return;
            };
            let answer: Reply = match serde_json::from_slice::<RoutedCommand>(&message.payload) {
                Ok(command) => dispatcher.execute_local(command).await,
                Err(e) => Err(CommandError::InvalidInput(format!(
                    "unreadable command: {e}"
                ))),
            };
            if matches!(answer, Err(CommandError::NotOwner { .. })) {
                return;
            }
            respond(&client, reply, &answer).await;
        });
    }
}

async fn respond(client: &Client, reply: Subject, answer: &Reply) {
    match serde_json::to_vec(answer) {
        Ok(bytes) => {
            if let Err(e) = client.publish(reply, bytes.into()).await {
                tracing::warn!(target: "Cluster", error = %e, "answer not sent");
            }
        }
        Err(e) => tracing::error!(target: "Cluster", error = %e, "answer not encoded"),
    }
}

async fn serve_positions(
    dispatcher: Dispatcher,
    city_id: String,
    positions: async_nats::Subscriber,
) {
    // In order, on one task: the city actor applies a worker's moves as they came.
    let mut positions = WhileOwner::new(dispatcher.clone(), city_id.clone(), positions);
    while let Some(message) = positions.next().await {
        match serde_json::from_slice::<Moved>(&message.payload) {
            Ok(m) => dispatcher.local_worker_moved(&city_id, m.worker_id, m.lon, m.lat),
            Err(e) => {
                tracing::debug!(target: "Cluster", error = %e, "unreadable position");
            }
        }
    }
}
