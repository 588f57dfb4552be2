//! The city actor: one per city, owner of an R-tree of the city's *available* online workers.
//!
//! Positions are indexed in a local equirectangular projection (metres around the city's
//! centre), where nearest-neighbour order matches ground distance to well under a percent
//! across a city; the answer's distances and the radius cut are true haversine metres. A
//! worker holding an offer or a job leaves the tree (it stays in `workers`), so nearest-k
//! never walks past busy workers and nobody can be handed two offers at once.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicI64, Ordering},
        Arc,
    },
};

use geo::{Contains, Distance, Haversine, Intersects, Point, Polygon};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use rstar::{PointDistance, RTree, RTreeObject, AABB};
use serde::Serialize;
use uuid::Uuid;

/// Mean Earth radius used by the projection (the same one `geo::Haversine` uses).
const EARTH_RADIUS_M: f64 = 6_371_008.8;
/// Projected and ground distances differ by far less than this inside one city.
const PROJECTION_SLACK: f64 = 1.01;

/// A city's identity and service area, read from `cities`.
#[derive(Debug, Clone)]
pub struct CityInfo {
    pub id: String,
    pub name: String,
    pub area: Polygon<f64>,
    /// Messages sent to the city's actor and not yet handled (its mailbox depth). Senders
    /// going through `Dispatcher` count up; the actor counts down as it handles each one.
    pub mailbox: Arc<AtomicI64>,
}

impl CityInfo {
    /// Casts a message, counting it into the mailbox depth.
    pub fn cast(&self, actor: &ActorRef<CityMsg>, msg: CityMsg) {
        self.mailbox.fetch_add(1, Ordering::Relaxed);
        if actor.cast(msg).is_err() {
            self.mailbox.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// The current mailbox depth (never negative, even for messages sent around the count).
    pub fn mailbox_depth(&self) -> i64 {
        self.mailbox.load(Ordering::Relaxed).max(0)
    }
}

impl CityInfo {
    /// Parses the `"serviceArea"` GeoJSON Polygon (outer ring plus optional holes).
    pub fn from_geojson(
        id: String,
        name: String,
        geojson: &serde_json::Value,
    ) -> Result<CityInfo, String> {
        if geojson.get("type").and_then(|t| t.as_str()) != Some("Polygon") {
            return Err(format!("city {id}: serviceArea must be a GeoJSON Polygon"));
        }
        let rings = geojson
            .get("coordinates")
            .and_then(|c| c.as_array())
            .ok_or_else(|| format!("city {id}: serviceArea has no coordinates"))?;
        let ring = |v: &serde_json::Value| -> Result<geo::LineString<f64>, String> {
            let pts = v.as_array().ok_or("ring is not an array")?;
            pts.iter()
                .map(|p| {
                    match p.as_array().map(|a| {
                        (
                            a.first().and_then(|x| x.as_f64()),
                            a.get(1).and_then(|y| y.as_f64()),
                        )
                    }) {
                        Some((Some(x), Some(y))) => Ok(geo::coord! { x: x, y: y }),
                        _ => Err("position is not [lon, lat]".to_string()),
                    }
                })
                .collect::<Result<Vec<_>, _>>()
                .map(geo::LineString::new)
        };
        let outer = ring(
            rings
                .first()
                .ok_or_else(|| format!("city {id}: empty polygon"))?,
        )?;
        let holes = rings[1..].iter().map(ring).collect::<Result<Vec<_>, _>>()?;
        if outer.0.len() < 4 {
            return Err(format!(
                "city {id}: the outer ring needs at least four positions"
            ));
        }
        Ok(CityInfo {
            id,
            name,
            area: Polygon::new(outer, holes),
            mailbox: Arc::default(),
        })
    }

    /// True when (lon, lat) is inside the service area or on its border.
    pub fn serves(&self, lon: f64, lat: f64) -> bool {
        let p = Point::new(lon, lat);
        self.area.contains(&p) || self.area.exterior().intersects(&p)
    }

    /// The outer ring as [lon, lat] pairs (for maps).
    pub fn outline(&self) -> Vec<[f64; 2]> {
        self.area.exterior().0.iter().map(|c| [c.x, c.y]).collect()
    }

    fn center_lat(&self) -> f64 {
        use geo::Centroid;
        self.area.centroid().map(|c| c.y()).unwrap_or(0.0)
    }
}

/// A city's actor with its description; every send through it is counted into the
/// city's mailbox depth. Cheap to clone.
#[derive(Clone)]
pub struct CityHandle {
    pub info: Arc<CityInfo>,
    pub actor: ActorRef<CityMsg>,
}

impl CityHandle {
    pub fn cast(&self, msg: CityMsg) {
        self.info.cast(&self.actor, msg)
    }

    /// Sends a request and waits for the answer; `None` when the actor is gone.
    pub async fn call<T: Send + 'static>(
        &self,
        make: impl FnOnce(RpcReplyPort<T>) -> CityMsg,
    ) -> Option<T> {
        self.info.mailbox.fetch_add(1, Ordering::Relaxed);
        match self.actor.call(make, None).await {
            Ok(ractor::rpc::CallResult::Success(answer)) => Some(answer),
            Ok(_) => None,
            Err(_) => {
                self.info.mailbox.fetch_sub(1, Ordering::Relaxed);
                None
            }
        }
    }
}

/// Whether a worker can take an offer right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Availability {
    Available,
    /// Holding an offer for this request.
    HoldingOffer {
        request_id: Uuid,
    },
    /// Assigned to (or working on) this request.
    Busy {
        request_id: Uuid,
    },
}

/// One online worker as the city knows it.
#[derive(Debug, Clone, Serialize)]
pub struct OnlineWorker {
    pub id: Uuid,
    pub lon: f64,
    pub lat: f64,
    pub skills: Vec<String>,
    pub availability: Availability,
}

/// A worker found for a request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Candidate {
    pub worker_id: Uuid,
    pub distance_m: f64,
    /// The radius step in which the worker was found.
    pub radius_m: u32,
}

/// What a search should find.
#[derive(Debug, Clone)]
pub struct Search {
    pub lon: f64,
    pub lat: f64,
    /// Required skill; `None` accepts anyone.
    pub skill: Option<String>,
    pub k: usize,
    /// Workers already tried for this request.
    pub exclude: HashSet<Uuid>,
    /// Radii to try outward, ascending, in metres.
    pub radius_steps_m: Vec<u32>,
}

/// A reserved candidate and how many were considered in its radius step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reservation {
    pub candidate: Candidate,
    pub candidates_considered: usize,
}

/// Counts the city exports (dashboard, metrics, tests).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct CityStats {
    pub city_id: String,
    pub online: usize,
    pub available: usize,
    pub holding_offer: usize,
    pub busy: usize,
    pub searches: u64,
    pub location_updates: u64,
    pub refused_positions: u64,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize)]
pub enum CityError {
    #[error("position ({lon}, {lat}) is outside the service area of {city}")]
    OutsideServiceArea { city: String, lon: f64, lat: f64 },
    #[error("coordinates out of range")]
    InvalidCoordinates,
    #[error("worker {0} is not online in this city")]
    NotOnline(Uuid),
    #[error("worker {0} is not available")]
    NotAvailable(Uuid),
    /// The database did not say what the worker holds; nothing changed. Retry.
    #[error("the worker's jobs could not be read; retry")]
    Unavailable,
}

/// Messages of the city actor.
pub enum CityMsg {
    /// The worker is online at (lon, lat) with these skills. Keeps its offer or job if it has one.
    Online {
        worker_id: Uuid,
        lon: f64,
        lat: f64,
        skills: Vec<String>,
        /// The job the worker holds according to the database, if any (after a reconnect).
        busy_with: Option<Uuid>,
        reply: RpcReplyPort<Result<(), CityError>>,
    },
    /// The worker left. Answers what it held, so the caller can settle its offer.
    Offline {
        worker_id: Uuid,
        reply: Option<RpcReplyPort<Option<Availability>>>,
    },
    Moved {
        worker_id: Uuid,
        lon: f64,
        lat: f64,
        reply: Option<RpcReplyPort<Result<(), CityError>>>,
    },
    /// The nearest available suitable workers, nearest first, from the first radius step
    /// that has any.
    FindCandidates {
        search: Search,
        reply: RpcReplyPort<Vec<Candidate>>,
    },
    /// Atomically finds the nearest suitable worker and reserves it for `request_id`.
    ReserveNearest {
        search: Search,
        request_id: Uuid,
        reply: RpcReplyPort<Option<Reservation>>,
    },
    /// Reserves a given worker (recovery of an outstanding offer).
    Reserve {
        worker_id: Uuid,
        request_id: Uuid,
        reply: RpcReplyPort<Result<(), CityError>>,
    },
    /// The worker accepted: busy with the request.
    MarkBusy {
        worker_id: Uuid,
        request_id: Uuid,
    },
    /// The offer or job for `request_id` ended: the worker is available again.
    Release {
        worker_id: Uuid,
        request_id: Uuid,
    },
    Stats(RpcReplyPort<CityStats>),
    Workers(RpcReplyPort<Vec<OnlineWorker>>),
}

/// A worker's projected position in the R-tree.
#[derive(Debug, Clone, Copy, PartialEq)]
struct IndexedWorker {
    id: Uuid,
    xy: [f64; 2],
}

impl RTreeObject for IndexedWorker {
    type Envelope = AABB<[f64; 2]>;
    fn envelope(&self) -> Self::Envelope {
        AABB::from_point(self.xy)
    }
}

impl PointDistance for IndexedWorker {
    fn distance_2(&self, point: &[f64; 2]) -> f64 {
        let dx = self.xy[0] - point[0];
        let dy = self.xy[1] - point[1];
        dx * dx + dy * dy
    }
}

/// The index itself, separate from the actor so benchmarks and tests can drive it directly.
pub struct WorkerIndex {
    cos_lat0: f64,
    tree: RTree<IndexedWorker>,
    workers: HashMap<Uuid, OnlineWorker>,
}

impl WorkerIndex {
    /// An empty index projected around latitude `center_lat`.
    pub fn new(center_lat: f64) -> Self {
        WorkerIndex {
            cos_lat0: center_lat.to_radians().cos(),
            tree: RTree::new(),
            workers: HashMap::new(),
        }
    }

    fn project(&self, lon: f64, lat: f64) -> [f64; 2] {
        [
            lon.to_radians() * self.cos_lat0 * EARTH_RADIUS_M,
            lat.to_radians() * EARTH_RADIUS_M,
        ]
    }

    pub fn len(&self) -> usize {
        self.workers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    pub fn get(&self, id: &Uuid) -> Option<&OnlineWorker> {
        self.workers.get(id)
    }

    /// Adds or updates a worker. A new worker is available unless `busy_with` says otherwise;
    /// a known one keeps its availability.
    pub fn upsert(
        &mut self,
        id: Uuid,
        lon: f64,
        lat: f64,
        skills: Vec<String>,
        busy_with: Option<Uuid>,
    ) {
        let availability = match (self.workers.get(&id), busy_with) {
            (_, Some(request_id)) => Availability::Busy { request_id },
            (Some(existing), None) => existing.availability,
            (None, None) => Availability::Available,
        };
        self.remove(id);
        if availability == Availability::Available {
            self.tree.insert(IndexedWorker {
                id,
                xy: self.project(lon, lat),
            });
        }
        self.workers.insert(
            id,
            OnlineWorker {
                id,
                lon,
                lat,
                skills,
                availability,
            },
        );
    }

    /// Removes a worker; returns what it was holding.
    pub fn remove(&mut self, id: Uuid) -> Option<Availability> {
        let w = self.workers.remove(&id)?;
        if w.availability == Availability::Available {
            let xy = self.project(w.lon, w.lat);
            self.tree.remove(&IndexedWorker { id, xy });
        }
        Some(w.availability)
    }

    /// Moves a known worker; false when unknown.
    pub fn move_to(&mut self, id: Uuid, lon: f64, lat: f64) -> bool {
        let Some(w) = self.workers.get(&id) else {
            return false;
        };
        if w.availability == Availability::Available {
            let old = IndexedWorker {
                id,
                xy: self.project(w.lon, w.lat),
            };
            self.tree.remove(&old);
            self.tree.insert(IndexedWorker {
                id,
                xy: self.project(lon, lat),
            });
        }
        let w = self.workers.get_mut(&id).expect("checked above");
        w.lon = lon;
        w.lat = lat;
        true
    }

    pub fn set_availability(&mut self, id: Uuid, availability: Availability) -> bool {
        let Some(w) = self.workers.get(&id) else {
            return false;
        };
        let was = w.availability;
        if was == availability {
            return true;
        }
        let xy = self.project(w.lon, w.lat);
        if was == Availability::Available {
            self.tree.remove(&IndexedWorker { id, xy });
        }
        if availability == Availability::Available {
            self.tree.insert(IndexedWorker { id, xy });
        }
        self.workers
            .get_mut(&id)
            .expect("checked above")
            .availability = availability;
        true
    }

    /// Nearest available suitable workers by ground distance, from the first radius step
    /// with any; also answers how many suitable workers the walk considered.
    pub fn find(&self, search: &Search) -> (Vec<Candidate>, usize) {
        let origin = Point::new(search.lon, search.lat);
        let query = self.project(search.lon, search.lat);
        let Some(&largest) = search.radius_steps_m.last() else {
            return (Vec::new(), 0);
        };
        // Walk outward in projected order; keep suitable workers within the largest radius.
        let mut found: Vec<(f64, Uuid)> = Vec::new();
        for (indexed, d2) in self.tree.nearest_neighbor_iter_with_distance_2(&query) {
            let projected = d2.sqrt();
            if projected > largest as f64 * PROJECTION_SLACK {
                break;
            }
            // Enough found and the walk is past the k-th one (with slack): order is settled.
            if found.len() >= search.k {
                found.sort_by(|a, b| a.0.total_cmp(&b.0));
                if projected > found[search.k - 1].0 * PROJECTION_SLACK {
                    break;
                }
            }
            if search.exclude.contains(&indexed.id) {
                continue;
            }
            let Some(w) = self.workers.get(&indexed.id) else {
                continue;
            };
            if let Some(skill) = &search.skill {
                if !w.skills.iter().any(|s| s == skill) {
                    continue;
                }
            }
            let ground = Haversine.distance(origin, Point::new(w.lon, w.lat));
            if ground <= largest as f64 {
                found.push((ground, w.id));
            }
        }
        let considered = found.len();
        (nearest_in_first_step(found, search), considered)
    }

    /// The linear scan the R-tree replaces: benchmarks measure against it.
    pub fn find_linear(&self, search: &Search) -> Vec<Candidate> {
        let origin = Point::new(search.lon, search.lat);
        let largest = *search.radius_steps_m.last().unwrap_or(&0) as f64;
        let all: Vec<(f64, Uuid)> = self
            .workers
            .values()
            .filter(|w| {
                w.availability == Availability::Available && !search.exclude.contains(&w.id)
            })
            .filter(|w| search.skill.as_ref().is_none_or(|s| w.skills.contains(s)))
            .map(|w| (Haversine.distance(origin, Point::new(w.lon, w.lat)), w.id))
            .filter(|(d, _)| *d <= largest)
            .collect();
        nearest_in_first_step(all, search)
    }

    fn stats(&self, city_id: &str) -> CityStats {
        let mut s = CityStats {
            city_id: city_id.to_string(),
            online: self.workers.len(),
            ..Default::default()
        };
        for w in self.workers.values() {
            match w.availability {
                Availability::Available => s.available += 1,
                Availability::HoldingOffer { .. } => s.holding_offer += 1,
                Availability::Busy { .. } => s.busy += 1,
            }
        }
        s
    }
}

/// The `k` nearest of `found` (ground distance, worker) within the first radius step that
/// has any: a request is offered to someone close before anyone farther is considered.
fn nearest_in_first_step(mut found: Vec<(f64, Uuid)>, search: &Search) -> Vec<Candidate> {
    found.sort_by(|a, b| a.0.total_cmp(&b.0));
    let Some(&(nearest, _)) = found.first() else {
        return Vec::new();
    };
    let Some(&step) = search.radius_steps_m.iter().find(|&&r| nearest <= r as f64) else {
        return Vec::new();
    };
    found
        .into_iter()
        .take_while(|(d, _)| *d <= step as f64)
        .take(search.k)
        .map(|(d, id)| Candidate {
            worker_id: id,
            distance_m: d,
            radius_m: step,
        })
        .collect()
}

/// The city actor (its configuration is the city itself).
pub struct CityActor;

pub struct CityState {
    info: CityInfo,
    index: WorkerIndex,
    searches: u64,
    location_updates: u64,
    refused_positions: u64,
}

impl CityState {
    fn check_position(&mut self, lon: f64, lat: f64) -> Result<(), CityError> {
        if crate::domain::Position::new(lon, lat).is_err() {
            self.refused_positions += 1;
            return Err(CityError::InvalidCoordinates);
        }
        if !self.info.serves(lon, lat) {
            self.refused_positions += 1;
            return Err(CityError::OutsideServiceArea {
                city: self.info.id.clone(),
                lon,
                lat,
            });
        }
        Ok(())
    }
}

impl Actor for CityActor {
    type Msg = CityMsg;
    type State = CityState;
    type Arguments = CityInfo;

    async fn pre_start(
        &self,
        _myself: ActorRef<CityMsg>,
        info: CityInfo,
    ) -> Result<CityState, ActorProcessingErr> {
        let index = WorkerIndex::new(info.center_lat());
        Ok(CityState {
            info,
            index,
            searches: 0,
            location_updates: 0,
            refused_positions: 0,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<CityMsg>,
        msg: CityMsg,
        state: &mut CityState,
    ) -> Result<(), ActorProcessingErr> {
        state.info.mailbox.fetch_sub(1, Ordering::Relaxed);
        match msg {
            CityMsg::Online {
                worker_id,
                lon,
                lat,
                skills,
                busy_with,
                reply,
            } => {
                let result = state.check_position(lon, lat);
                if result.is_ok() {
                    state.index.upsert(worker_id, lon, lat, skills, busy_with);
                }
                let _ = reply.send(result);
            }
            CityMsg::Offline { worker_id, reply } => {
                let held = state.index.remove(worker_id);
                if let Some(reply) = reply {
                    let _ = reply.send(held);
                }
            }
            CityMsg::Moved {
                worker_id,
                lon,
                lat,
                reply,
            } => {
                state.location_updates += 1;
                let result = state.check_position(lon, lat).and_then(|()| {
                    if state.index.move_to(worker_id, lon, lat) {
                        Ok(())
                    } else {
                        Err(CityError::NotOnline(worker_id))
                    }
                });
                if let Some(reply) = reply {
                    let _ = reply.send(result);
                }
            }
            CityMsg::FindCandidates { search, reply } => {
                state.searches += 1;
                let _ = reply.send(state.index.find(&search).0);
            }
            CityMsg::ReserveNearest {
                search,
                request_id,
                reply,
            } => {
                state.searches += 1;
                let (found, considered) = state.index.find(&Search { k: 1, ..search });
                let reservation = found.into_iter().next().map(|candidate| {
                    state.index.set_availability(
                        candidate.worker_id,
                        Availability::HoldingOffer { request_id },
                    );
                    Reservation {
                        candidate,
                        candidates_considered: considered,
                    }
                });
                let _ = reply.send(reservation);
            }
            CityMsg::Reserve {
                worker_id,
                request_id,
                reply,
            } => {
                let result = match state.index.get(&worker_id).map(|w| w.availability) {
                    None => Err(CityError::NotOnline(worker_id)),
                    Some(Availability::Available) => {
                        state
                            .index
                            .set_availability(worker_id, Availability::HoldingOffer { request_id });
                        Ok(())
                    }
                    Some(Availability::HoldingOffer { request_id: r }) if r == request_id => Ok(()),
                    Some(_) => Err(CityError::NotAvailable(worker_id)),
                };
                let _ = reply.send(result);
            }
            CityMsg::MarkBusy {
                worker_id,
                request_id,
            } => {
                state
                    .index
                    .set_availability(worker_id, Availability::Busy { request_id });
            }
            CityMsg::Release {
                worker_id,
                request_id,
            } => {
                // Only the request that holds the worker may free it: a stale release from
                // an older offer must not free a worker busy with another job.
                let holds = matches!(
                    state.index.get(&worker_id).map(|w| w.availability),
                    Some(Availability::HoldingOffer { request_id: r } | Availability::Busy { request_id: r }) if r == request_id
                );
                if holds {
                    state
                        .index
                        .set_availability(worker_id, Availability::Available);
                }
            }
            CityMsg::Stats(reply) => {
                let mut stats = state.index.stats(&state.info.id);
                stats.searches = state.searches;
                stats.location_updates = state.location_updates;
                stats.refused_positions = state.refused_positions;
                let _ = reply.send(stats);
            }
            CityMsg::Workers(reply) => {
                let _ = reply.send(state.index.workers.values().cloned().collect());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ractor::call;

    fn buenos_aires() -> CityInfo {
        CityInfo::from_geojson(
            "buenos-aires".into(),
            "Buenos Aires".into(),
            &serde_json::json!({"type":"Polygon","coordinates":[[[-58.531,-34.705],[-58.335,-34.705],[-58.335,-34.527],[-58.531,-34.527],[-58.531,-34.705]]]}),
        )
        .unwrap()
    }

    fn search(lon: f64, lat: f64, k: usize) -> Search {
        Search {
            lon,
            lat,
            skill: None,
            k,
            exclude: HashSet::new(),
            radius_steps_m: vec![2_000, 5_000, 10_000],
        }
    }

    fn skills(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn nearest_is_by_ground_distance_not_degrees() {
        // At 34.6° S a degree of longitude is ~91 km and a degree of latitude ~111 km:
        // B is nearer in raw degrees but farther on the ground than A.
        let mut idx = WorkerIndex::new(-34.6);
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        idx.upsert(a, -58.40 + 0.0100, -34.60, vec![], None); // ~916 m east
        idx.upsert(b, -58.40, -34.60 + 0.0090, vec![], None); // ~1001 m north
        let found = idx.find(&search(-58.40, -34.60, 2)).0;
        assert_eq!(
            found.iter().map(|c| c.worker_id).collect::<Vec<_>>(),
            vec![a, b]
        );
        assert!(
            (found[0].distance_m - 916.0).abs() < 5.0,
            "{}",
            found[0].distance_m
        );
        assert_eq!(found[0].radius_m, 2_000);
    }

    #[test]
    fn search_widens_through_radius_steps_and_respects_skill_and_exclusions() {
        let mut idx = WorkerIndex::new(-34.6);
        let far = Uuid::new_v4();
        let excluded = Uuid::new_v4();
        let unskilled = Uuid::new_v4();
        idx.upsert(far, -58.40, -34.64, skills(&["lawn_mowing"]), None); // ~4.4 km
        idx.upsert(excluded, -58.40, -34.601, skills(&["lawn_mowing"]), None);
        idx.upsert(unskilled, -58.40, -34.602, skills(&["cleaning"]), None);
        let mut s = search(-58.40, -34.60, 3);
        s.skill = Some("lawn_mowing".into());
        s.exclude.insert(excluded);
        let found = idx.find(&s).0;
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].worker_id, far);
        assert_eq!(found[0].radius_m, 5_000);
        s.radius_steps_m = vec![1_000, 2_000];
        assert!(idx.find(&s).0.is_empty());
    }

    #[test]
    fn rtree_answers_match_the_linear_scan() {
        let mut idx = WorkerIndex::new(-34.6);
        let mut seed = 7u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 11) as f64 / (1u64 << 53) as f64
        };
        for _ in 0..2_000 {
            idx.upsert(
                Uuid::new_v4(),
                -58.53 + next() * 0.19,
                -34.70 + next() * 0.17,
                vec![],
                None,
            );
        }
        for _ in 0..50 {
            let s = search(-58.53 + next() * 0.19, -34.70 + next() * 0.17, 5);
            let ids = |v: Vec<Candidate>| v.into_iter().map(|c| c.worker_id).collect::<Vec<_>>();
            assert_eq!(ids(idx.find(&s).0), ids(idx.find_linear(&s)));
        }
    }

    #[test]
    fn held_and_busy_workers_leave_the_tree_and_come_back_on_release() {
        let mut idx = WorkerIndex::new(-34.6);
        let w = Uuid::new_v4();
        idx.upsert(w, -58.40, -34.60, vec![], None);
        idx.set_availability(
            w,
            Availability::HoldingOffer {
                request_id: Uuid::new_v4(),
            },
        );
        assert!(idx.find(&search(-58.40, -34.60, 1)).0.is_empty());
        idx.move_to(w, -58.401, -34.601);
        idx.set_availability(w, Availability::Available);
        assert_eq!(idx.find(&search(-58.40, -34.60, 1)).0[0].worker_id, w);
        assert_eq!(idx.tree.size(), 1);
    }

    #[tokio::test]
    async fn the_actor_refuses_positions_outside_the_service_area() {
        let (city, handle) = Actor::spawn(None, CityActor, buenos_aires()).await.unwrap();
        let w = Uuid::new_v4();
        let inside = call!(city, |reply| CityMsg::Online {
            worker_id: w,
            lon: -58.40,
            lat: -34.60,
            skills: vec![],
            busy_with: None,
            reply
        })
        .unwrap();
        assert_eq!(inside, Ok(()));
        let outside = call!(city, |reply| CityMsg::Online {
            worker_id: Uuid::new_v4(),
            lon: -64.18,
            lat: -31.42,
            skills: vec![],
            busy_with: None,
            reply
        })
        .unwrap();
        assert!(
            matches!(outside, Err(CityError::OutsideServiceArea { .. })),
            "{outside:?}"
        );
        let nonsense = call!(city, |reply| CityMsg::Moved {
            worker_id: w,
            lon: f64::NAN,
            lat: 95.0,
            reply: Some(reply)
        })
        .unwrap();
        assert_eq!(nonsense, Err(CityError::InvalidCoordinates));
        let stats = call!(city, CityMsg::Stats).unwrap();
        assert_eq!(
            (stats.online, stats.available, stats.refused_positions),
            (1, 1, 2)
        );
        city.stop(None);
        handle.await.unwrap();
    }

    #[tokio::test]
    async fn a_reserved_worker_is_not_offered_twice_until_released() {
        let (city, _h) = Actor::spawn(None, CityActor, buenos_aires()).await.unwrap();
        let w = Uuid::new_v4();
        call!(city, |reply| CityMsg::Online {
            worker_id: w,
            lon: -58.40,
            lat: -34.60,
            skills: vec![],
            busy_with: None,
            reply
        })
        .unwrap()
        .unwrap();
        let (r1, r2) = (Uuid::new_v4(), Uuid::new_v4());
        let first = call!(city, |reply| CityMsg::ReserveNearest {
            search: search(-58.40, -34.60, 1),
            request_id: r1,
            reply
        })
        .unwrap();
        assert_eq!(first.unwrap().candidate.worker_id, w);
        let second = call!(city, |reply| CityMsg::ReserveNearest {
            search: search(-58.40, -34.60, 1),
            request_id: r2,
            reply
        })
        .unwrap();
        assert!(second.is_none());
        // A release from a request that does not hold the worker changes nothing.
        city.cast(CityMsg::Release {
            worker_id: w,
            request_id: r2,
        })
        .unwrap();
        let still = call!(city, |reply| CityMsg::ReserveNearest {
            search: search(-58.40, -34.60, 1),
            request_id: r2,
            reply
        })
        .unwrap();
        assert!(still.is_none());
        city.cast(CityMsg::Release {
            worker_id: w,
            request_id: r1,
        })
        .unwrap();
        let after = call!(city, |reply| CityMsg::ReserveNearest {
            search: search(-58.40, -34.60, 1),
            request_id: r2,
            reply
        })
        .unwrap();
        assert_eq!(after.unwrap().candidate.worker_id, w);
        let held = call!(city, |reply| CityMsg::Offline {
            worker_id: w,
            reply: Some(reply)
        })
        .unwrap();
        assert_eq!(held, Some(Availability::HoldingOffer { request_id: r2 }));
    }
}
