//! The city actor: one per city, owner of the [`WorkerIndex`] (`index.rs`) of the city's
//! *available* online workers. A worker holding an offer or a job leaves the tree (it stays
//! known to the index), so nearest-k never walks past busy workers and nobody can be handed
//! two offers at once. Its messages, state and tests are here.

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicI64, Ordering},
        Arc,
    },
};

use chrono::{DateTime, Timelike, Utc};

use geo::{Contains, Intersects, Point, Polygon};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::Serialize;
use uuid::Uuid;

pub use super::index::{
    Availability, BookedSlot, Candidate, CityStats, OnlineWorker, Reservation, Search, WorkerIndex,
};
use crate::domain::offer_policy::{
    adaptive_width, score, AcceptanceEstimate, CandidateScore, RankingWeights, WorkerRecord,
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

#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize, serde::Deserialize)]
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
    /// What the database says of a worker who just came online: booked jobs and record.
    Profile {
        worker_id: Uuid,
        booked: Vec<BookedSlot>,
        record: WorkerRecord,
    },
    /// Reserves the best candidates for a request's next batch of offers (queued: requests
    /// marked `priority` are served first, see [`CityMsg::Drain`]).
    ReserveBest(ReserveBest),
    /// Serves one queued reservation, priority ones first (internal: one per `ReserveBest`).
    Drain,
    /// A worker answered an offer (accepted, or rejected / let it expire): feeds the live
    /// acceptance estimate of the hour and the worker's record.
    OfferAnswered {
        worker_id: Uuid,
        accepted: bool,
    },
    /// A worker accepted a booked job: free again until the slot, which now blocks their day.
    Booked {
        worker_id: Uuid,
        request_id: Uuid,
        slot: (DateTime<Utc>, DateTime<Utc>),
    },
    /// A worker cancelled an assignment or did not show up.
    Struck {
        worker_id: Uuid,
    },
    /// A worker completed a job: free again, with the earnings on their record.
    JobDone {
        worker_id: Uuid,
        request_id: Uuid,
        earned_cents: i64,
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

/// How many workers the next batch of offers goes to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OfferWidth {
    Fixed(usize),
    /// As many as the city's acceptance estimate for this hour needs to reach `target`.
    Adaptive {
        target: f64,
        max: usize,
    },
}

/// A request for the best candidates of a search.
pub struct ReserveBest {
    pub search: Search,
    pub request_id: Uuid,
    pub width: OfferWidth,
    /// Never more than this many (the request's remaining offer budget).
    pub at_most: usize,
    /// Offers of this request already out: the city reserves only what tops them up to
    /// the width (none when they already fill it), so a parallel batch keeps its width
    /// after a reject instead of waiting for its slowest worker.
    pub out: usize,
    /// `Some` ranks the candidates of the first radius step by score; `None` is nearest first.
    pub ranking: Option<RankingWeights>,
    /// Served before requests without it (a request re-dispatched after a no-show or a
    /// worker's cancellation).
    pub priority: bool,
    pub reply: RpcReplyPort<Reserved>,
}

/// The reserved candidates (best first) and, when ranked, every scored candidate.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Reserved {
    pub picks: Vec<Reservation>,
    pub scores: Vec<CandidateScore>,
}

/// The city actor (its configuration is the city itself).
pub struct CityActor;

pub struct CityState {
    info: CityInfo,
    index: WorkerIndex,
    searches: u64,
    location_updates: u64,
    refused_positions: u64,
    /// Reservations waiting for their `Drain`, priority ones apart.
    queued: VecDeque<ReserveBest>,
    queued_first: VecDeque<ReserveBest>,
    /// The live acceptance estimate by hour of day (UTC; a city has one time zone, so the
    /// buckets are the city's hours shifted).
    acceptance: [AcceptanceEstimate; 24],
}

impl CityState {
    fn acceptance_now(&mut self) -> &mut AcceptanceEstimate {
        &mut self.acceptance[Utc::now().hour() as usize]
    }

    /// Finds, ranks and reserves the candidates of one reservation.
    fn reserve(&mut self, r: &ReserveBest) -> Reserved {
        self.searches += 1;
        let width = match r.width {
            OfferWidth::Fixed(n) => n,
            OfferWidth::Adaptive { target, max } => {
                adaptive_width(self.acceptance_now().probability(), target, max)
            }
        }
        .max(1)
        .saturating_sub(r.out)
        .min(r.at_most);
        if width == 0 {
            return Reserved::default();
        }
        let search = Search {
            k: r.search.k.max(width),
            ..r.search.clone()
        };
        let (found, considered) = self.index.find(&search);
        let (ordered, scores) = match &r.ranking {
            None => (found, Vec::new()),
            Some(weights) => self.rank(found, weights),
        };
        let picks = ordered
            .into_iter()
            .take(width)
            .map(|candidate| {
                self.index.set_availability(
                    candidate.worker_id,
                    Availability::HoldingOffer {
                        request_id: r.request_id,
                    },
                );
                Reservation {
                    candidate,
                    candidates_considered: considered,
                }
            })
            .collect();
        Reserved { picks, scores }
    }

    /// Orders candidates by score, best first (ties: the nearer one).
    fn rank(
        &self,
        found: Vec<Candidate>,
        weights: &RankingWeights,
    ) -> (Vec<Candidate>, Vec<CandidateScore>) {
        let now = Utc::now();
        let record = |id: &Uuid| {
            self.index
                .get(id)
                .map(|w| w.record.clone())
                .unwrap_or_default()
        };
        let most_earned = found
            .iter()
            .map(|c| record(&c.worker_id).earnings_today_cents)
            .max()
            .unwrap_or(0);
        let mut scored: Vec<(Candidate, CandidateScore)> = found
            .into_iter()
            .map(|c| {
                let parts = score(
                    &record(&c.worker_id),
                    c.distance_m,
                    c.radius_m as f64,
                    most_earned,
                    now,
                );
                let s = CandidateScore {
                    worker_id: c.worker_id,
                    distance_meters: c.distance_m,
                    score: parts.total(weights),
                    parts,
                };
                (c, s)
            })
            .collect();
        scored.sort_by(|a, b| {
            b.1.score
                .total_cmp(&a.1.score)
                .then(a.0.distance_m.total_cmp(&b.0.distance_m))
        });
        scored.into_iter().unzip()
    }

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
            queued: VecDeque::new(),
            queued_first: VecDeque::new(),
            acceptance: [AcceptanceEstimate::default(); 24],
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<CityMsg>,
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
            CityMsg::Profile {
                worker_id,
                booked,
                record,
            } => state.index.set_profile(worker_id, booked, record),
            CityMsg::ReserveBest(r) => {
                if r.priority {
                    state.queued_first.push_back(r);
                } else {
                    state.queued.push_back(r);
                }
                // Served on the matching Drain: a priority reservation that arrives before
                // it overtakes the ones already queued.
                state.info.cast(&myself, CityMsg::Drain);
            }
            CityMsg::Drain => {
                if let Some(r) = state
                    .queued_first
                    .pop_front()
                    .or_else(|| state.queued.pop_front())
                {
                    let reserved = state.reserve(&r);
                    if let Err(ractor::MessagingErr::SendErr(unsent)) = r.reply.send(reserved) {
                        // The request actor is gone: free what was reserved for it.
                        for pick in unsent.picks {
                            state.index.set_availability(
                                pick.candidate.worker_id,
                                Availability::Available,
                            );
                        }
                    }
                }
            }
            CityMsg::OfferAnswered {
                worker_id,
                accepted,
            } => {
                state.acceptance_now().record(accepted);
                if let Some(w) = state.index.get_mut(&worker_id) {
                    w.record.offers_answered += 1;
                    w.record.offers_accepted += u32::from(accepted);
                }
            }
            CityMsg::Booked {
                worker_id,
                request_id,
                slot,
            } => {
                free_if_held_for(&mut state.index, worker_id, request_id);
                if let Some(w) = state.index.get_mut(&worker_id) {
                    w.booked.retain(|b| b.request_id != request_id);
                    w.booked.push(BookedSlot {
                        request_id,
                        start: slot.0,
                        end: slot.1,
                    });
                }
            }
            CityMsg::Struck { worker_id } => {
                if let Some(w) = state.index.get_mut(&worker_id) {
                    w.record.strikes += 1;
                }
            }
            CityMsg::JobDone {
                worker_id,
                request_id,
                earned_cents,
            } => {
                if let Some(w) = state.index.get_mut(&worker_id) {
                    w.record.last_job_at = Some(Utc::now());
                    w.record.earnings_today_cents += earned_cents;
                }
                release_if_held_for(&mut state.index, worker_id, request_id);
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
            } => match state.index.get(&worker_id).map(|w| w.availability) {
                // A worker who starts a booked job while holding another request's offer
                // keeps the hold: that offer is still pending in the database, and marking
                // them busy would free them for a third request when the booked job ends.
                // They become busy with the job once that offer is settled.
                Some(Availability::HoldingOffer { request_id: held }) if held != request_id => {
                    if let Some(w) = state.index.get_mut(&worker_id) {
                        w.busy_after_hold = Some(request_id);
                    }
                }
                _ => {
                    state
                        .index
                        .set_availability(worker_id, Availability::Busy { request_id });
                }
            },
            CityMsg::Release {
                worker_id,
                request_id,
            } => release_if_held_for(&mut state.index, worker_id, request_id),
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

/// Frees a worker who holds an offer of, or a job for, `request_id` (and nothing else: a
/// stale release from an older offer must not free a worker busy with another job), and
/// drops that request's booked slot from their day.
fn release_if_held_for(index: &mut WorkerIndex, worker_id: Uuid, request_id: Uuid) {
    if let Some(w) = index.get_mut(&worker_id) {
        w.booked.retain(|b| b.request_id != request_id);
    }
    free_if_held_for(index, worker_id, request_id);
}

/// Makes a worker available again if what they hold is `request_id`'s offer or job (or
/// busy with the job they started while holding that offer).
fn free_if_held_for(index: &mut WorkerIndex, worker_id: Uuid, request_id: Uuid) {
    let Some(w) = index.get_mut(&worker_id) else {
        return;
    };
    if w.busy_after_hold == Some(request_id) {
        // The job started under another offer's hold is over.
        w.busy_after_hold = None;
    }
    let holds = matches!(
        w.availability,
        Availability::HoldingOffer { request_id: r } | Availability::Busy { request_id: r } if r == request_id
    );
    if holds {
        let next = match w.busy_after_hold.take() {
            Some(job) => Availability::Busy { request_id: job },
            None => Availability::Available,
        };
        index.set_availability(worker_id, next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::index::test_search as search;

    /// Reserves the nearest worker for `request_id`, as a sequential request does.
    async fn reserve_nearest(city: &ActorRef<CityMsg>, request_id: Uuid) -> Option<Reservation> {
        call!(city, |reply| CityMsg::ReserveBest(ReserveBest {
            search: search(-58.40, -34.60, 1),
            request_id,
            width: OfferWidth::Fixed(1),
            at_most: 1,
            out: 0,
            ranking: None,
            priority: false,
            reply,
        }))
        .unwrap()
        .picks
        .into_iter()
        .next()
    }

    /// Reserves a batch of `width` for a new request.
    async fn reserve_width(city: &ActorRef<CityMsg>, width: OfferWidth) -> Reserved {
        reserve_for(city, Uuid::new_v4(), width, 0).await
    }

    /// Reserves for `request_id`, which has `out` offers out already, up to `width`.
    async fn reserve_for(
        city: &ActorRef<CityMsg>,
        request_id: Uuid,
        width: OfferWidth,
        out: usize,
    ) -> Reserved {
        call!(city, |reply| CityMsg::ReserveBest(ReserveBest {
            search: search(-58.40, -34.60, 10),
            request_id,
            width,
            at_most: 10,
            out,
            ranking: None,
            priority: false,
            reply,
        }))
        .unwrap()
    }

    async fn online(city: &ActorRef<CityMsg>, worker_id: Uuid, lon: f64) {
        call!(city, |reply| CityMsg::Online {
            worker_id,
            lon,
            lat: -34.60,
            skills: vec![],
            busy_with: None,
            reply
        })
        .unwrap()
        .unwrap();
    }
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
        online(&city, w, -58.40).await;
        let (r1, r2) = (Uuid::new_v4(), Uuid::new_v4());
        let first = reserve_nearest(&city, r1).await;
        assert_eq!(first.unwrap().candidate.worker_id, w);
        assert!(reserve_nearest(&city, r2).await.is_none());
        // A release from a request that does not hold the worker changes nothing.
        city.cast(CityMsg::Release {
            worker_id: w,
            request_id: r2,
        })
        .unwrap();
        assert!(reserve_nearest(&city, r2).await.is_none());
        city.cast(CityMsg::Release {
            worker_id: w,
            request_id: r1,
        })
        .unwrap();
        let after = reserve_nearest(&city, r2).await;
        assert_eq!(after.unwrap().candidate.worker_id, w);
        let held = call!(city, |reply| CityMsg::Offline {
            worker_id: w,
            reply: Some(reply)
        })
        .unwrap();
        assert_eq!(held, Some(Availability::HoldingOffer { request_id: r2 }));
    }

    /// A worker holding request A's offer starts booked job B: when B is done they still
    /// hold A's offer (it is pending in the database), so nobody else gets them until A's
    /// offer settles.
    #[tokio::test]
    async fn a_booked_job_started_and_finished_during_an_offer_leaves_the_worker_holding_it() {
        let (city, _h) = Actor::spawn(None, CityActor, buenos_aires()).await.unwrap();
        let w = Uuid::new_v4();
        online(&city, w, -58.40).await;
        let (offered, booked, third) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        assert!(reserve_nearest(&city, offered).await.is_some());
        city.cast(CityMsg::MarkBusy {
            worker_id: w,
            request_id: booked,
        })
        .unwrap();
        city.cast(CityMsg::JobDone {
            worker_id: w,
            request_id: booked,
            earned_cents: 1_000,
        })
        .unwrap();
        assert!(
            reserve_nearest(&city, third).await.is_none(),
            "still holding the first offer"
        );
        city.cast(CityMsg::Release {
            worker_id: w,
            request_id: offered,
        })
        .unwrap();
        assert!(reserve_nearest(&city, third).await.is_some());
    }

    /// The other order: the offer settles while the booked job is still going on. The
    /// worker is busy with the job, not free, until it is done.
    #[tokio::test]
    async fn an_offer_settled_during_a_booked_job_leaves_the_worker_busy_with_the_job() {
        let (city, _h) = Actor::spawn(None, CityActor, buenos_aires()).await.unwrap();
        let w = Uuid::new_v4();
        online(&city, w, -58.40).await;
        let (offered, booked, third) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        assert!(reserve_nearest(&city, offered).await.is_some());
        city.cast(CityMsg::MarkBusy {
            worker_id: w,
            request_id: booked,
        })
        .unwrap();
        city.cast(CityMsg::Release {
            worker_id: w,
            request_id: offered,
        })
        .unwrap();
        assert!(
            reserve_nearest(&city, third).await.is_none(),
            "busy with the booked job"
        );
        city.cast(CityMsg::JobDone {
            worker_id: w,
            request_id: booked,
            earned_cents: 1_000,
        })
        .unwrap();
        assert!(reserve_nearest(&city, third).await.is_some());
    }

    /// Both reservations are in the mailbox before the city handles either: the priority
    /// one (a request re-dispatched after a no-show) gets the only worker.
    #[tokio::test(flavor = "current_thread")]
    async fn a_priority_reservation_overtakes_one_queued_before_it() {
        let (city, _h) = Actor::spawn(None, CityActor, buenos_aires()).await.unwrap();
        let w = Uuid::new_v4();
        online(&city, w, -58.40).await;
        let reserve = |request_id, priority| {
            let (tx, rx) = tokio::sync::oneshot::channel();
            city.cast(CityMsg::ReserveBest(ReserveBest {
                search: search(-58.40, -34.60, 1),
                request_id,
                width: OfferWidth::Fixed(1),
                at_most: 1,
                out: 0,
                ranking: None,
                priority,
                reply: tx.into(),
            }))
            .unwrap();
            rx
        };
        let (new_request, redispatched) = (Uuid::new_v4(), Uuid::new_v4());
        let first_in = reserve(new_request, false);
        let second_in = reserve(redispatched, true);
        assert!(first_in.await.unwrap().picks.is_empty());
        assert_eq!(second_in.await.unwrap().picks[0].candidate.worker_id, w);
    }

    /// Parallel: one reservation takes the batch's width; adaptive widens only when the
    /// hour's acceptance estimate is below the target.
    #[tokio::test]
    async fn a_batch_reserves_its_width_and_adaptive_widens_only_when_acceptance_is_low() {
        let (city, _h) = Actor::spawn(None, CityActor, buenos_aires()).await.unwrap();
        let workers: Vec<Uuid> = (0..6).map(|_| Uuid::new_v4()).collect();
        for (i, w) in workers.iter().enumerate() {
            online(&city, *w, -58.40 + 0.001 * i as f64).await;
        }
        let batch = reserve_width(&city, OfferWidth::Fixed(3)).await;
        let ids: Vec<Uuid> = batch.picks.iter().map(|p| p.candidate.worker_id).collect();
        assert_eq!(ids, workers[..3], "the three nearest");
        let adaptive = OfferWidth::Adaptive {
            target: 0.9,
            max: 6,
        };
        let answers = |accepted: bool, times: usize| {
            for _ in 0..times {
                city.cast(CityMsg::OfferAnswered {
                    worker_id: Uuid::nil(),
                    accepted,
                })
                .unwrap();
            }
        };
        // Workers of this city and hour accept almost always: one offer is enough.
        answers(true, 200);
        assert_eq!(reserve_width(&city, adaptive).await.picks.len(), 1);
        // Now they mostly say no: the batch widens (to the two workers still free).
        answers(false, 400);
        assert_eq!(reserve_width(&city, adaptive).await.picks.len(), 2);
    }

    /// A batch with offers still out is only topped up to its width: a batch of three
    /// with two out gets one more worker, a full one gets none (and nobody is reserved).
    #[tokio::test]
    async fn a_batch_with_offers_out_is_topped_up_to_its_width_and_no_further() {
        let (city, _h) = Actor::spawn(None, CityActor, buenos_aires()).await.unwrap();
        let workers: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
        for (i, w) in workers.iter().enumerate() {
            online(&city, *w, -58.40 + 0.001 * i as f64).await;
        }
        let request_id = Uuid::new_v4();
        let top_up = |out| reserve_for(&city, request_id, OfferWidth::Fixed(3), out);
        let topped: Vec<Uuid> = top_up(2)
            .await
            .picks
            .iter()
            .map(|p| p.candidate.worker_id)
            .collect();
        assert_eq!(topped, workers[..1], "one more, the nearest");
        assert!(top_up(3).await.picks.is_empty(), "already full");
        let rest: Vec<Uuid> = reserve_width(&city, OfferWidth::Fixed(3))
            .await
            .picks
            .iter()
            .map(|p| p.candidate.worker_id)
            .collect();
        assert_eq!(rest, workers[1..], "the full top-up reserved nobody");
    }

    /// Scored ranking: a hand-built set of candidates comes back in score order, with each
    /// candidate's parts.
    #[tokio::test]
    async fn scored_ranking_orders_a_hand_built_set_of_candidates() {
        let (city, _h) = Actor::spawn(None, CityActor, buenos_aires()).await.unwrap();
        let (near_flaky, mid_reliable, far_new) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        online(&city, near_flaky, -58.401).await;
        online(&city, mid_reliable, -58.404).await;
        online(&city, far_new, -58.410).await;
        let record = |strikes, answered, accepted| WorkerRecord {
            rating: 4.8,
            offers_answered: answered,
            offers_accepted: accepted,
            strikes,
            ..Default::default()
        };
        for (w, r) in [
            (near_flaky, record(4, 20, 10)),
            (mid_reliable, record(0, 20, 18)),
            (far_new, record(0, 0, 0)),
        ] {
            city.cast(CityMsg::Profile {
                worker_id: w,
                booked: vec![],
                record: r,
            })
            .unwrap();
        }
        let weights = RankingWeights::default();
        let ranked = call!(city, |reply| CityMsg::ReserveBest(ReserveBest {
            search: search(-58.40, -34.60, 10),
            request_id: Uuid::new_v4(),
            width: OfferWidth::Fixed(1),
            at_most: 1,
            out: 0,
            ranking: Some(weights),
            priority: false,
            reply,
        }))
        .unwrap();
        let order: Vec<Uuid> = ranked.scores.iter().map(|s| s.worker_id).collect();
        assert_eq!(order, vec![mid_reliable, far_new, near_flaky]);
        assert_eq!(ranked.picks[0].candidate.worker_id, mid_reliable);
        assert!(ranked.scores.windows(2).all(|w| w[0].score >= w[1].score));
        let flaky = &ranked.scores[2];
        assert!((flaky.score - flaky.parts.total(&weights)).abs() < 1e-12);
        assert_eq!(flaky.parts.reliability, 0.2);
    }
}
