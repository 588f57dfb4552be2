//! The index of a city's *available* online workers: an R-tree in a local equirectangular
//! projection (metres around the city's centre), where nearest-neighbour order matches ground
//! distance to well under a percent across a city; distances and the radius cut are true
//! haversine metres. The city actor (`city.rs`) owns one; benchmarks and tests drive it
//! directly.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use geo::{Distance, Haversine, Point};
use rstar::{PointDistance, RTree, RTreeObject, AABB};
use serde::Serialize;
use uuid::Uuid;

/// Mean Earth radius used by the projection (the same one `geo::Haversine` uses).
const EARTH_RADIUS_M: f64 = 6_371_008.8;
/// Projected and ground distances differ by far less than this inside one city.
const PROJECTION_SLACK: f64 = 1.01;

/// Whether a worker can take an offer right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(
    tag = "state",
    rename_all = "SCREAMING_SNAKE_CASE",
    rename_all_fields = "camelCase"
)]
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

/// One online worker as the city knows it. On the wire (`/ops/map`) positions are
/// `latitude`/`longitude`, as everywhere the engine answers.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OnlineWorker {
    pub id: Uuid,
    #[serde(rename = "longitude")]
    pub lon: f64,
    #[serde(rename = "latitude")]
    pub lat: f64,
    pub skills: Vec<String>,
    pub availability: Availability,
    /// Booked jobs the worker accepted and has not started: no offer may overlap them.
    pub booked: Vec<BookedSlot>,
    /// The worker's recent record, for ranking.
    pub record: crate::domain::offer_policy::WorkerRecord,
    /// A job the worker started while holding another request's offer: they become busy
    /// with it once that offer is settled (the city keeps one state per worker).
    #[serde(skip)]
    pub busy_after_hold: Option<Uuid>,
}

/// An accepted booking in a worker's day.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BookedSlot {
    pub request_id: Uuid,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

/// A worker found for a request.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
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
    /// The time the job would block (its slot widened by the travel buffer): a worker
    /// with a booked job overlapping it is not a candidate. `None` checks nothing.
    pub blocks: Option<(DateTime<Utc>, DateTime<Utc>)>,
    /// The first radius step holding at least this many candidates is the one searched
    /// (the last step if none does): 1 takes the nearest step with anybody; a scored
    /// ranking asks for a few, so that it has a choice to make.
    pub min_candidates: usize,
}

impl Search {
    /// Whether `w` is free for the time this job blocks.
    fn fits_schedule_of(&self, w: &OnlineWorker) -> bool {
        let Some(blocks) = self.blocks else {
            return true;
        };
        !w.booked
            .iter()
            .any(|b| crate::domain::booking::overlaps(blocks, (b.start, b.end)))
    }
}

/// A reserved candidate and how many were considered in its radius step.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Reservation {
    pub candidate: Candidate,
    pub candidates_considered: usize,
}

/// Counts the city exports (dashboard, metrics, tests).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CityStats {
    /// The city (shown as the view's `id`, not repeated).
    #[serde(skip_serializing)]
    pub city_id: String,
    pub online: usize,
    pub available: usize,
    pub holding_offer: usize,
    pub busy: usize,
    pub searches: u64,
    pub location_updates: u64,
    pub refused_positions: u64,
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
    /// Every online worker, available or not (the ops map).
    pub fn online(&self) -> Vec<OnlineWorker> {
        self.workers.values().cloned().collect()
    }

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
        // A known worker keeps its day and record through a re-announcement.
        let (booked, record, busy_after_hold) = self
            .workers
            .get(&id)
            .map(|w| (w.booked.clone(), w.record.clone(), w.busy_after_hold))
            .unwrap_or_default();
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
                booked,
                record,
                busy_after_hold,
            },
        );
    }

    /// Sets what the engine knows of a worker's day and record (read from the database when
    /// they come online).
    pub fn set_profile(
        &mut self,
        id: Uuid,
        booked: Vec<BookedSlot>,
        record: crate::domain::offer_policy::WorkerRecord,
    ) {
        if let Some(w) = self.workers.get_mut(&id) {
            w.booked = booked;
            w.record = record;
        }
    }

    /// The online worker, to update its record or its booked slots in place.
    pub fn get_mut(&mut self, id: &Uuid) -> Option<&mut OnlineWorker> {
        self.workers.get_mut(id)
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
            if !search.fits_schedule_of(w) {
                continue;
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
            .filter(|w| search.fits_schedule_of(w))
            .map(|w| (Haversine.distance(origin, Point::new(w.lon, w.lat)), w.id))
            .filter(|(d, _)| *d <= largest)
            .collect();
        nearest_in_first_step(all, search)
    }

    pub(super) fn stats(&self, city_id: &str) -> CityStats {
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
    let wanted = search.min_candidates.clamp(1, search.k.max(1));
    let within = |r: u32| found.iter().take_while(|(d, _)| *d <= r as f64).count();
    let Some(&step) = search
        .radius_steps_m
        .iter()
        .find(|&&r| nearest <= r as f64 && within(r) >= wanted)
        .or_else(|| search.radius_steps_m.last())
    else {
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

/// A search around (lon, lat) for `k` workers through 2, 5 and 10 km (tests of the index and
/// of the city actor).
#[cfg(test)]
pub(crate) fn test_search(lon: f64, lat: f64, k: usize) -> Search {
    Search {
        lon,
        lat,
        skill: None,
        k,
        exclude: HashSet::new(),
        radius_steps_m: vec![2_000, 5_000, 10_000],
        min_candidates: 1,
        blocks: None,
    }
}

#[cfg(test)]
mod tests {
    use super::test_search as search;
    use super::*;

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

    /// A scored search asks for a few candidates: one worker within 2 km and two more
    /// within 5 km give the 5 km step; asking for more than there are gives the last step.
    #[test]
    fn a_search_asking_for_several_candidates_widens_to_the_first_step_that_has_them() {
        let mut idx = WorkerIndex::new(-34.6);
        let near = Uuid::new_v4();
        let (mid1, mid2) = (Uuid::new_v4(), Uuid::new_v4());
        idx.upsert(near, -58.40, -34.601, skills(&[]), None); // ~0.1 km
        idx.upsert(mid1, -58.40, -34.63, skills(&[]), None); // ~3.3 km
        idx.upsert(mid2, -58.40, -34.635, skills(&[]), None); // ~3.9 km
        let mut s = search(-58.40, -34.60, 10);
        let ids = |found: Vec<Candidate>| -> Vec<(Uuid, u32)> {
            found.iter().map(|c| (c.worker_id, c.radius_m)).collect()
        };
        assert_eq!(
            ids(idx.find(&s).0),
            [(near, 2_000)],
            "nearest step with anybody"
        );
        s.min_candidates = 3;
        assert_eq!(
            ids(idx.find(&s).0),
            [(near, 5_000), (mid1, 5_000), (mid2, 5_000)]
        );
        s.min_candidates = 4;
        assert_eq!(
            idx.find(&s).0.len(),
            3,
            "all there is, within the last step"
        );
        assert_eq!(idx.find(&s).0[0].radius_m, 10_000);
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

    #[test]
    fn a_worker_booked_at_an_overlapping_time_is_skipped() {
        let mut idx = WorkerIndex::new(-34.6);
        let (booked, free) = (Uuid::new_v4(), Uuid::new_v4());
        idx.upsert(booked, -58.400, -34.600, vec![], None);
        idx.upsert(free, -58.401, -34.601, vec![], None);
        let saturday_10 = Utc::now() + chrono::Duration::days(3);
        let two_hours = chrono::Duration::hours(2);
        idx.set_profile(
            booked,
            vec![BookedSlot {
                request_id: Uuid::new_v4(),
                start: saturday_10,
                end: saturday_10 + two_hours,
            }],
            Default::default(),
        );
        let mut s = search(-58.40, -34.60, 2);
        s.blocks = Some((
            saturday_10 + chrono::Duration::hours(1),
            saturday_10 + two_hours * 2,
        ));
        let ids = |v: Vec<Candidate>| v.into_iter().map(|c| c.worker_id).collect::<Vec<_>>();
        assert_eq!(ids(idx.find(&s).0), vec![free]);
        assert_eq!(ids(idx.find_linear(&s)), vec![free]);
        // The next day: both are free; the booked one is nearer.
        s.blocks = Some((
            saturday_10 + chrono::Duration::days(1),
            saturday_10 + chrono::Duration::days(1) + two_hours,
        ));
        assert_eq!(ids(idx.find(&s).0), vec![booked, free]);
        // A move keeps the worker's day.
        idx.upsert(booked, -58.400, -34.600, vec![], None);
        assert_eq!(idx.get(&booked).unwrap().booked.len(), 1);
    }
}
