//! The city actor: one per city, owner of the [`WorkerIndex`] (`index.rs`) of the city's
//! *available* online workers. A worker holding an offer or a job leaves the tree (it stays
//! known to the index), so nearest-k never walks past busy workers and nobody can be handed
//! two offers at once. Its messages, state and tests are here.

use std::sync::{
    atomic::{AtomicI64, Ordering},
    Arc,
};

use geo::{Contains, Intersects, Point, Polygon};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::Serialize;
use uuid::Uuid;

pub use super::index::{
    Availability, Candidate, CityStats, OnlineWorker, Reservation, Search, WorkerIndex,
};

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
    /// The request's actor was replaced without cleaning up: whoever holds an offer for it
    /// is available again (its new actor reserves the worker anew if the offer is still out).
    ReleaseOffersOf {
        request_id: Uuid,
    },
    Stats(RpcReplyPort<CityStats>),
    Workers(RpcReplyPort<Vec<OnlineWorker>>),
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
            CityMsg::ReleaseOffersOf { request_id } => {
                let holders: Vec<Uuid> = state
                    .index
                    .online()
                    .into_iter()
                    .filter(|w| w.availability == Availability::HoldingOffer { request_id })
                    .map(|w| w.id)
                    .collect();
                for worker_id in holders {
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
                let _ = reply.send(state.index.online());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::index::test_search as search;
    use ractor::call;

    fn buenos_aires() -> CityInfo {
        CityInfo::from_geojson(
            "buenos-aires".into(),
            "Buenos Aires".into(),
            &serde_json::json!({"type":"Polygon","coordinates":[[[-58.531,-34.705],[-58.335,-34.705],[-58.335,-34.527],[-58.531,-34.527],[-58.531,-34.705]]]}),
        )
        .unwrap()
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
