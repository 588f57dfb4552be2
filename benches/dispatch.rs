//! Dispatch benchmarks (issue 3, item 8). Every figure is printed beside a baseline measured
//! in the same run, as the median over `BENCH_RUNS` runs (default 5):
//!
//! 1. nearest-k in the `WorkerIndex` R-tree (10k and 100k workers) vs its linear scan;
//! 2. the same query through the `CityActor` (`call!`) vs the direct index call;
//! 3. location updates through the actor (casts, one call to flush) vs direct `move_to`;
//! 4. request-actor spawn and stop vs a bare tokio task with a channel; the real
//!    `RequestActor` against PostgreSQL as a separate line when `DATABASE_URL` answers;
//! 5. resident memory of 100k live request actors with armed offer timers vs 100k tokio
//!    tasks each with a channel and a sleeping timer.
//!
//! Rows marked "diagnostic" explain a result (the bare `rstar` walk under `find`; what the
//! size of a `handle` future costs per live actor) and have no target.
//!
//! Memory and PostgreSQL cases run in child processes (this binary re-executed with
//! `ARREGLAME_BENCH_CHILD`), so every VmRSS delta starts from a clean heap and no case
//! inherits another's allocations. Resident memory is nearly deterministic, so those cases
//! run once (`BENCH_MEM_RUNS` to repeat them). `BENCH_SKIP_DB=1` leaves the PostgreSQL lines
//! out; `BENCH_REAL_CALLERS` sets how many tasks start the 100k real actors (default 8).
//!
//! ```text
//! eval "$(scripts/dev-env.sh 2>/dev/null)" && cargo bench --bench dispatch
//! ```
//!
//! Results and how to read them: docs/bench-results/dispatch.md.

#[allow(dead_code)] // each benchmark uses some of the shared helpers
mod common;

use common::{cores, database_url_for, env_usize, loadavg, median};

use std::{
    collections::HashSet,
    hint::black_box,
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use arreglame::{
    dispatch::{
        city::{CityActor, CityInfo, CityMsg, Search, WorkerIndex},
        gateway::InProcessGateway,
        request::{PendingOffer, RequestActor, RequestMsg, RequestState},
        Dispatcher,
    },
    domain::Status,
    store::{ServiceRequest, Settings, Store},
};
use chrono::Utc;
use geo::Centroid;
use hdrhistogram::Histogram;
use ractor::{
    call, Actor, ActorProcessingErr, ActorRef, MessagingErr, RpcReplyPort, SupervisionEvent,
};
use rand::{rngs::StdRng, Rng, SeedableRng};
use rstar::RTree;
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};
use tokio::{
    sync::{mpsc, oneshot, watch},
    task::JoinHandle,
};
use uuid::Uuid;

/// Set in a child process to the case it runs.
const CHILD_ENV: &str = "ARREGLAME_BENCH_CHILD";
/// The Buenos Aires service area exactly as `seeds/03_cities.sql` stores it (its bounding
/// box is lon -58.531..-58.335, lat -34.705..-34.527; the north-west corner is cut).
const BUENOS_AIRES: &str = r#"{"type":"Polygon","coordinates":[[[-58.531,-34.705],[-58.335,-34.705],[-58.335,-34.527],[-58.460,-34.527],[-58.531,-34.615],[-58.531,-34.705]]]}"#;
const LON: (f64, f64) = (-58.531, -58.335);
const LAT: (f64, f64) = (-34.705, -34.527);
/// The skills of the seeded service categories.
const SKILLS: [&str; 3] = ["lawn_mowing", "gardening", "cleaning"];
/// The radius `WorkerIndex` projects with (the one `geo::Haversine` uses).
const EARTH_RADIUS_M: f64 = 6_371_008.8;
/// Long enough that no armed offer timer fires during a case.
const OFFER_TIMEOUT: Duration = Duration::from_secs(3600);
const LIVE_ACTORS: usize = 100_000;
/// Handler scratch of the diagnostic stand-in: about the size of `RequestActor::handle`'s
/// future (printed in the header).
const HEAVY_HANDLER: usize = 4_096;

fn main() {
    if let Ok(case) = std::env::var(CHILD_ENV) {
        return child(&case);
    }
    let runs = env_usize("BENCH_RUNS", 5);
    let started = Instant::now();
    println!("# dispatch benchmarks: medians of {runs} runs, each beside its baseline");
    println!(
        "machine: {} cores, load average at start {}",
        cores(),
        loadavg()
    );
    println!(
        "state size: RequestState {} B, stand-in state {} B",
        std::mem::size_of::<RequestState>(),
        std::mem::size_of::<StandInState>()
    );
    // ractor boxes each actor's message loop once and keeps it for the actor's life; that
    // box holds room for the largest `handle` future, so this size is paid per live actor.
    println!(
        "`handle` future size (held per live actor): RequestActor {} B, stand-in {} B",
        returned_size(<RequestActor as Actor>::handle),
        returned_size(<StandIn as Actor>::handle),
    );
    println!(
        "diagnostic stand-in with a {HEAVY_HANDLER} B handler buffer: `handle` future {} B; RequestActor with `handle` boxed per message: {} B",
        returned_size(<StandIn<HEAVY_HANDLER> as Actor>::handle),
        returned_size(<BoxedHandle as Actor>::handle)
    );

    let info = buenos_aires();
    let mut rng = StdRng::seed_from_u64(0x00A7_7E61_A3E0);
    let points = sample_points(&info, &mut rng, 2_000);
    let mut rows = Vec::new();
    let mut laps = Laps::default();

    let fleet_10k = Fleet::random(10_000, &info, &mut rng);
    let fleet_100k = Fleet::random(100_000, &info, &mut rng);
    nearest_k(&mut rows, &info, &fleet_10k, &points, runs);
    nearest_k(&mut rows, &info, &fleet_100k, &points, runs);
    nearest_k_realistic(&mut rows, &info, &fleet_100k, &points, runs);
    rstar_floor(&mut rows, &info, &fleet_100k, &points, runs);
    drop(fleet_10k);
    laps.lap("1 nearest-k");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        through_actor(&mut rows, &info, &fleet_100k, &points, runs).await;
        laps.lap("2 through the actor");
        location_updates(&mut rows, &info, &fleet_100k, &mut rng, runs).await;
        laps.lap("3 location updates");
        spawn_cost(&mut rows, runs).await;
    });
    drop(rt);
    drop(fleet_100k);
    spawn_cost_real(&mut rows, runs);
    laps.lap("4 spawn");
    memory(&mut rows);
    laps.lap("5 memory");

    println!();
    print_table(&rows);
    println!();
    println!(
        "load average at end {}; whole bench {:.0} s ({})",
        loadavg(),
        started.elapsed().as_secs_f64(),
        laps.0.join(", ")
    );
}

/// Wall time per section, for the budget.
struct Laps(Vec<String>, Instant);

impl Default for Laps {
    fn default() -> Self {
        Laps(Vec::new(), Instant::now())
    }
}

impl Laps {
    fn lap(&mut self, name: &str) {
        self.0
            .push(format!("{name} {:.0} s", self.1.elapsed().as_secs_f64()));
        self.1 = Instant::now();
    }
}

// ---- 1. nearest-k: R-tree vs linear scan ------------------------------------------------

fn nearest_k(
    rows: &mut Vec<Row>,
    info: &CityInfo,
    fleet: &Fleet,
    points: &[(f64, f64)],
    runs: usize,
) {
    let index = fleet.index(info);
    let n = fleet.ids.len();
    for k in [5, 10] {
        let searches: Vec<Search> = points.iter().map(|&p| search(p, k)).collect();
        same_answers(&index, &searches[..20]);
        let tree = timed_runs(runs, 10_000, |i| {
            black_box(index.find(black_box(&searches[i % searches.len()])));
        });
        // A scan of 100k workers costs milliseconds: fewer queries keep the bench short.
        let linear = timed_runs(runs, 2_000_000 / n, |i| {
            black_box(index.find_linear(black_box(&searches[i % searches.len()])));
        });
        let target = (n == 100_000).then_some(2_000.0);
        rows.push(Row::latency(
            "1",
            format!(
                "nearest-k, {}k workers, k={k}: `find` vs `find_linear`",
                n / 1000
            ),
            tree,
            linear,
            target.map(|t| ("p50 ≤ 2 µs", tree.p50 <= t)),
        ));
    }
}

/// The search a request actor really makes: a required skill and workers already tried.
fn nearest_k_realistic(
    rows: &mut Vec<Row>,
    info: &CityInfo,
    fleet: &Fleet,
    points: &[(f64, f64)],
    runs: usize,
) {
    let index = fleet.index(info);
    let searches: Vec<Search> = points
        .iter()
        .map(|&p| {
            let mut s = search(p, 10);
            s.skill = Some(SKILLS[0].to_string());
            // The four nearest workers were already offered the job.
            s.exclude = index
                .find(&search(p, 4))
                .0
                .into_iter()
                .map(|c| c.worker_id)
                .collect();
            s
        })
        .collect();
    same_answers(&index, &searches[..20]);
    let tree = timed_runs(runs, 10_000, |i| {
        black_box(index.find(black_box(&searches[i % searches.len()])));
    });
    let linear = timed_runs(runs, 20, |i| {
        black_box(index.find_linear(black_box(&searches[i % searches.len()])));
    });
    rows.push(Row::latency(
        "1",
        "nearest-k, 100k workers, k=10, skill filter + 4 excluded: `find` vs `find_linear`".into(),
        tree,
        linear,
        Some(("p50 ≤ 2 µs", tree.p50 <= 2_000.0)),
    ));
}

/// Diagnostic: the bare `rstar` walk under `find` (same points, same projection, no skill,
/// exclusion, haversine or worker lookup), built by insertion as `WorkerIndex` builds its
/// tree, and by `bulk_load`.
fn rstar_floor(
    rows: &mut Vec<Row>,
    info: &CityInfo,
    fleet: &Fleet,
    points: &[(f64, f64)],
    runs: usize,
) {
    let index = fleet.index(info);
    let cos_lat0 = center_lat(info).to_radians().cos();
    let project = |(lon, lat): (f64, f64)| {
        [
            lon.to_radians() * cos_lat0 * EARTH_RADIUS_M,
            lat.to_radians() * EARTH_RADIUS_M,
        ]
    };
    let projected: Vec<[f64; 2]> = fleet.positions.iter().map(|&p| project(p)).collect();
    let mut inserted = RTree::new();
    for &p in &projected {
        inserted.insert(p);
    }
    let bulk = RTree::bulk_load(projected);
    let queries: Vec<[f64; 2]> = points.iter().map(|&p| project(p)).collect();
    let k = 10;
    let searches: Vec<Search> = points.iter().map(|&p| search(p, k)).collect();
    let find = timed_runs(runs, 10_000, |i| {
        black_box(index.find(black_box(&searches[i % searches.len()])));
    });
    for (how, tree) in [("insert-built", &inserted), ("bulk-loaded", &bulk)] {
        let bare = timed_runs(runs, 10_000, |i| {
            let q = black_box(&queries[i % queries.len()]);
            tree.nearest_neighbor_iter(q).take(k).for_each(|p| {
                black_box(p);
            });
        });
        rows.push(Row::latency(
            "1",
            format!("diagnostic: bare `rstar` `nearest_neighbor_iter().take(10)`, {how} `RTree<[f64; 2]>` of the same 100k points: vs `find` k=10"),
            bare,
            find,
            None,
        ));
    }
}

/// The R-tree must answer what the scan answers, or its speed means nothing.
fn same_answers(index: &WorkerIndex, searches: &[Search]) {
    for s in searches {
        let tree: Vec<Uuid> = index.find(s).0.iter().map(|c| c.worker_id).collect();
        let scan: Vec<Uuid> = index.find_linear(s).iter().map(|c| c.worker_id).collect();
        assert_eq!(tree, scan, "R-tree and linear scan disagree");
    }
}

// ---- 2. the same query through the city actor -------------------------------------------

async fn through_actor(
    rows: &mut Vec<Row>,
    info: &CityInfo,
    fleet: &Fleet,
    points: &[(f64, f64)],
    runs: usize,
) {
    let city = city_with(info, fleet).await;
    let index = fleet.index(info);
    for k in [5, 10] {
        let searches: Vec<Search> = points.iter().map(|&p| search(p, k)).collect();
        let queries = 10_000;
        let mut actor = Vec::new();
        let mut direct = Vec::new();
        // Warm-up, then runs alternate so both see the same machine.
        for run in 0..=runs {
            let mut h_actor = histogram();
            let mut h_direct = histogram();
            for i in 0..queries {
                let s = &searches[i % searches.len()];
                // Both build their `Search` before the clock starts; the message owns its copy.
                let owned = s.clone();
                let t = Instant::now();
                let found = call!(city, |reply| CityMsg::FindCandidates {
                    search: owned,
                    reply
                })
                .expect("city actor answers");
                record(&mut h_actor, t);
                black_box(found);
                let t = Instant::now();
                black_box(index.find(black_box(s)));
                record(&mut h_direct, t);
            }
            if run > 0 {
                actor.push(Lat::of(&h_actor));
                direct.push(Lat::of(&h_direct));
            }
        }
        let (actor, direct) = (Lat::median(&actor), Lat::median(&direct));
        rows.push(Row::latency(
            "2",
            format!("nearest-k through `CityActor` (`call!` FindCandidates), 100k workers, k={k}: actor vs direct `find`"),
            actor,
            direct,
            Some(("p99 ≤ 50 µs", actor.p99 <= 50_000.0)),
        ));
    }
    city.stop(None);
}

/// A city actor holding the fleet, loaded through `CityMsg::Online` like the gateway does.
async fn city_with(info: &CityInfo, fleet: &Fleet) -> ActorRef<CityMsg> {
    let (city, _) = Actor::spawn(None, CityActor, info.clone())
        .await
        .expect("spawn city actor");
    for (i, &worker_id) in fleet.ids.iter().enumerate() {
        let (lon, lat) = fleet.positions[i];
        call!(city, |reply| CityMsg::Online {
            worker_id,
            lon,
            lat,
            skills: fleet.skills[i].clone(),
            busy_with: None,
            reply
        })
        .expect("city actor answers")
        .expect("position inside the service area");
    }
    city
}

// ---- 3. location updates through the actor ----------------------------------------------

async fn location_updates(
    rows: &mut Vec<Row>,
    info: &CityInfo,
    fleet: &Fleet,
    rng: &mut StdRng,
    runs: usize,
) {
    const PER_RUN: usize = 100_000;
    let city = city_with(info, fleet).await;
    let mut index = fleet.index(info);
    // One walk for all runs: both sides apply exactly the same moves in the same order.
    let moves = fleet.walk(info, rng, (runs + 1) * PER_RUN);
    let mut actor = Vec::new();
    let mut direct = Vec::new();
    for (run, batch) in moves.chunks(PER_RUN).enumerate() {
        let t = Instant::now();
        let (last, casts) = batch.split_last().expect("non-empty batch");
        for &(worker_id, lon, lat) in casts {
            city.cast(CityMsg::Moved {
                worker_id,
                lon,
                lat,
                reply: None,
            })
            .expect("city actor alive");
        }
        // The mailbox is FIFO: the answer to the last move means every cast was applied.
        let (worker_id, lon, lat) = *last;
        call!(city, |reply| CityMsg::Moved {
            worker_id,
            lon,
            lat,
            reply: Some(reply)
        })
        .expect("city actor answers")
        .expect("move inside the service area");
        let actor_rate = PER_RUN as f64 / t.elapsed().as_secs_f64();

        let t = Instant::now();
        for &(id, lon, lat) in batch {
            black_box(index.move_to(black_box(id), lon, lat));
        }
        let direct_rate = PER_RUN as f64 / t.elapsed().as_secs_f64();
        if run > 0 {
            actor.push(actor_rate);
            direct.push(direct_rate);
        }
    }
    let stats = call!(city, CityMsg::Stats).expect("city actor answers");
    assert_eq!(stats.location_updates as usize, moves.len());
    assert_eq!(stats.refused_positions, 0);
    city.stop(None);
    let (actor, direct) = (median(&actor), median(&direct));
    rows.push(Row {
        item: "3",
        case: "location updates, 100k workers: `CityMsg::Moved` casts + one flushing call vs direct `move_to`".into(),
        measured: format!("{}/s", count(actor)),
        baseline: format!("{}/s", count(direct)),
        ratio: times(actor / direct),
        target: "≥ 200k/s".into(),
        met: verdict(actor >= 200_000.0),
    });
}

// ---- 4. request-actor spawn cost ---------------------------------------------------------

async fn spawn_cost(rows: &mut Vec<Row>, runs: usize) {
    const PER_RUN: usize = 5_000;
    let (supervisor, _) = Actor::spawn(None, QuietSupervisor, ())
        .await
        .expect("spawn supervisor");
    let row = offering_row();
    let mut actor_up = Vec::new();
    let mut actor_down = Vec::new();
    let mut task_up = Vec::new();
    let mut task_down = Vec::new();
    for run in 0..=runs {
        let (mut a_up, mut a_down, mut t_up, mut t_down) =
            (histogram(), histogram(), histogram(), histogram());
        for _ in 0..PER_RUN {
            let args = StandInArgs::new(&row);
            let t = Instant::now();
            let (actor, handle) =
                Actor::spawn_linked(None, StandIn::<0>, args, supervisor.get_cell())
                    .await
                    .expect("spawn stand-in");
            let armed = call!(actor, StandInMsg::Ping).expect("stand-in answers");
            record(&mut a_up, t);
            assert!(armed);
            let t = Instant::now();
            actor.stop_and_wait(None, None).await.expect("stop");
            handle.await.expect("stand-in exits");
            record(&mut a_down, t);

            let args = StandInArgs::new(&row);
            let t = Instant::now();
            let (tx, rx) = mpsc::unbounded_channel();
            let handle = tokio::spawn(bare_task(args, rx));
            let (reply, answer) = oneshot::channel();
            tx.send(BareMsg::Ping(reply)).expect("task alive");
            let armed = answer.await.expect("task answers");
            record(&mut t_up, t);
            assert!(armed);
            let t = Instant::now();
            drop(tx);
            handle.await.expect("task exits");
            record(&mut t_down, t);
        }
        if run > 0 {
            actor_up.push(Lat::of(&a_up));
            actor_down.push(Lat::of(&a_down));
            task_up.push(Lat::of(&t_up));
            task_down.push(Lat::of(&t_down));
        }
    }
    supervisor.stop(None);
    rows.push(Row::latency(
        "4",
        "request-actor spawn → ready (timer armed, first reply): stand-in ractor actor (`spawn_linked`) vs tokio task + mpsc".into(),
        Lat::median(&actor_up),
        Lat::median(&task_up),
        None,
    ));
    rows.push(Row::latency(
        "4",
        "request-actor stop → gone: `stop_and_wait` + join vs drop sender + join".into(),
        Lat::median(&actor_down),
        Lat::median(&task_down),
        None,
    ));
}

/// The real `RequestActor` through `Dispatcher::ensure_actor`, in a child process.
fn spawn_cost_real(rows: &mut Vec<Row>, runs: usize) {
    if skip_db() {
        return;
    }
    let result = run_child("spawn-real", &[("BENCH_RUNS", runs.to_string())]);
    let baseline = rows
        .iter()
        .find(|r| r.item == "4")
        .map(|r| r.baseline.clone());
    match result {
        Ok(v) => {
            let up = Lat::from_json(&v["up"]);
            let down = Lat::from_json(&v["down"]);
            let base_up = Lat::from_json(&v["bare_up"]);
            rows.push(Row::latency(
                "4",
                format!(
                    "real `RequestActor` spawn → ready via `Dispatcher::ensure_actor` + snapshot (PostgreSQL: 3 reads; OFFERING row, timer armed), {} spawns per run: vs tokio task + mpsc (this process)",
                    v["per_run"]
                ),
                up,
                base_up,
                None,
            ));
            rows.push(Row::latency(
                "4",
                "real `RequestActor` stop → gone (`stop_and_wait`): vs tokio task drop + join"
                    .into(),
                down,
                Lat::from_json(&v["bare_down"]),
                None,
            ));
        }
        Err(e) => rows.push(Row::failed("4", "real `RequestActor` spawn", e, baseline)),
    }
}

// ---- 5. memory of 100k live request actors -----------------------------------------------

fn memory(rows: &mut Vec<Row>) {
    // Resident memory barely moves between runs (8125-8133 B per actor over seven runs),
    // and each run spawns 200k actors and tasks: one run by default.
    let mem_runs = env_usize("BENCH_MEM_RUNS", 1);
    let mut actor = Vec::new();
    let mut task = Vec::new();
    let mut actor_total = Vec::new();
    for _ in 0..mem_runs {
        for (case, deltas, totals) in [
            ("mem-ractor", &mut actor, Some(&mut actor_total)),
            ("mem-tokio", &mut task, None),
        ] {
            match run_child(case, &[]) {
                Ok(v) => {
                    deltas.push(v["delta_kib"].as_f64().unwrap_or(f64::NAN));
                    if let Some(t) = totals {
                        t.push(v["after_kib"].as_f64().unwrap_or(f64::NAN));
                    }
                }
                Err(e) => eprintln!("{case}: {e}"),
            }
        }
    }
    if actor.is_empty() || task.is_empty() {
        rows.push(Row::failed(
            "5",
            "100k live request actors",
            "child processes failed".into(),
            None,
        ));
        return;
    }
    let (a, t, total) = (median(&actor), median(&task), median(&actor_total));
    rows.push(Row {
        item: "5",
        case: format!("100k live stand-in request actors (`spawn_linked`, `send_after` timer armed), VmRSS growth (process total), {mem_runs} run(s): vs 100k tokio tasks + mpsc + sleeping timer, same state"),
        measured: format!("{} ({} B/actor; total {})", mib(a), per_actor(a), mib(total)),
        baseline: format!("{} ({} B/task)", mib(t), per_actor(t)),
        ratio: times(a / t),
        target: "≤ 1 GiB".into(),
        met: verdict(total <= 1024.0 * 1024.0),
    });
    match run_child("mem-ractor-heavy", &[]) {
        Ok(v) => {
            let d = v["delta_kib"].as_f64().unwrap_or(f64::NAN);
            rows.push(Row {
                item: "5",
                case: format!("diagnostic: the same stand-ins with a `handle` future as large as `RequestActor`'s ({HEAVY_HANDLER} B of handler scratch), 1 run: vs the tokio-task baseline above"),
                measured: format!("{} ({} B/actor; total {})", mib(d), per_actor(d), mib(v["after_kib"].as_f64().unwrap_or(f64::NAN))),
                baseline: format!("{} ({} B/task)", mib(t), per_actor(t)),
                ratio: times(d / t),
                target: "—".into(),
                met: "—".into(),
            });
        }
        Err(e) => eprintln!("mem-ractor-heavy: {e}"),
    }
    if skip_db() {
        return;
    }
    match run_child("mem-real", &[]) {
        Ok(v) => {
            let (d, after) = (
                v["delta_kib"].as_f64().unwrap_or(f64::NAN),
                v["after_kib"].as_f64().unwrap_or(f64::NAN),
            );
            rows.push(Row {
                item: "5",
                case: format!(
                    "100k live real `RequestActor`s (OFFERING rows, started by `Dispatcher::ensure_actor`, {} armed; spawned at {}/s with {} concurrent callers), VmRSS growth (process total), 1 run: vs the tokio-task baseline above",
                    count(v["armed"].as_f64().unwrap_or(0.0)),
                    count(v["spawn_rate"].as_f64().unwrap_or(0.0)),
                    v["callers"],
                ),
                measured: format!("{} ({} B/actor; total {})", mib(d), per_actor(d), mib(after)),
                baseline: format!("{} ({} B/task)", mib(t), per_actor(t)),
                ratio: times(d / t),
                target: "≤ 1 GiB".into(),
                met: verdict(after <= 1024.0 * 1024.0),
            });
        }
        Err(e) => rows.push(Row::failed("5", "100k live real `RequestActor`s", e, None)),
    }
    // Another 100k real actors cost a minute more than the budget allows: opt-in.
    if std::env::var("BENCH_BOXED_DIAG").is_ok_and(|v| v == "1") {
        match run_child("mem-real-boxed", &[]) {
            Ok(v) => {
                let d = v["delta_kib"].as_f64().unwrap_or(f64::NAN);
                rows.push(Row {
                    item: "5",
                    case: format!("diagnostic: 100k real `RequestActor`s with each `handle` future boxed while it runs (wrapper actor, {} armed), 1 run: vs the tokio-task baseline above", count(v["armed"].as_f64().unwrap_or(0.0))),
                    measured: format!("{} ({} B/actor; total {})", mib(d), per_actor(d), mib(v["after_kib"].as_f64().unwrap_or(f64::NAN))),
                    baseline: format!("{} ({} B/task)", mib(t), per_actor(t)),
                    ratio: times(d / t),
                    target: "—".into(),
                    met: "—".into(),
                });
            }
            Err(e) => eprintln!("mem-real-boxed: {e}"),
        }
    }
}

// ---- child processes ----------------------------------------------------------------------

fn child(case: &str) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = rt.block_on(async {
        match case {
            "mem-ractor" => Ok(mem_ractor::<0>().await),
            "mem-ractor-heavy" => Ok(mem_ractor::<HEAVY_HANDLER>().await),
            "mem-tokio" => Ok(mem_tokio().await),
            "mem-real" => mem_real(false).await,
            "mem-real-boxed" => mem_real(true).await,
            "spawn-real" => spawn_real(env_usize("BENCH_RUNS", 5)).await,
            other => Err(anyhow::anyhow!("unknown case {other}")),
        }
    });
    match result {
        Ok(v) => {
            println!("RESULT {v}");
            // Tearing down 100k actors measures nothing: leave it to the OS.
            std::process::exit(0);
        }
        Err(e) => {
            eprintln!("{case}: {e:#}");
            std::process::exit(1);
        }
    }
}

fn run_child(case: &str, env: &[(&str, String)]) -> Result<Value, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(exe);
    cmd.env(CHILD_ENV, case);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().map_err(|e| e.to_string())?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().find_map(|l| l.strip_prefix("RESULT "));
    match (out.status.success(), line) {
        (true, Some(line)) => serde_json::from_str(line).map_err(|e| e.to_string()),
        _ => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(3).collect();
            Err(format!("{case} failed: {}", tail.join(" / ")))
        }
    }
}

/// 100k live stand-ins; `N` bytes of handler scratch make their `handle` future as large
/// as the real actor's, which shows what that size costs per live actor.
async fn mem_ractor<const N: usize>() -> Value {
    let (supervisor, _) = Actor::spawn(None, QuietSupervisor, ())
        .await
        .expect("spawn supervisor");
    let row = offering_row();
    let before = vm_rss_kib();
    let mut actors = Vec::with_capacity(LIVE_ACTORS);
    for _ in 0..LIVE_ACTORS {
        let (actor, _detached) = Actor::spawn_linked(
            None,
            StandIn::<N>,
            StandInArgs::new(&row),
            supervisor.get_cell(),
        )
        .await
        .expect("spawn stand-in");
        actors.push(actor);
    }
    let mut armed = 0;
    for actor in &actors {
        armed += usize::from(call!(actor, StandInMsg::Ping).expect("stand-in answers"));
    }
    assert_eq!(armed, LIVE_ACTORS);
    let after = vm_rss_kib();
    json!({"before_kib": before, "after_kib": after, "delta_kib": after - before, "live": actors.len()})
}

async fn mem_tokio() -> Value {
    let row = offering_row();
    let before = vm_rss_kib();
    let mut senders = Vec::with_capacity(LIVE_ACTORS);
    for _ in 0..LIVE_ACTORS {
        let (tx, rx) = mpsc::unbounded_channel();
        drop(tokio::spawn(bare_task(StandInArgs::new(&row), rx)));
        senders.push(tx);
    }
    let mut armed = 0;
    for tx in &senders {
        let (reply, answer) = oneshot::channel();
        tx.send(BareMsg::Ping(reply)).expect("task alive");
        armed += usize::from(answer.await.expect("task answers"));
    }
    assert_eq!(armed, LIVE_ACTORS);
    let after = vm_rss_kib();
    json!({"before_kib": before, "after_kib": after, "delta_kib": after - before, "live": senders.len()})
}

/// 100k OFFERING requests in a fresh database, each given its real actor by the dispatcher;
/// `boxed`: the real actor instead wrapped in [`BoxedHandle`] (diagnostic).
async fn mem_real(boxed: bool) -> anyhow::Result<Value> {
    let db = BenchDb::create().await?;
    let engine = Engine::start(&db.url, 16).await?;
    let ids = insert_offering_requests(&engine.store, LIVE_ACTORS).await?;
    let (supervisor, _) = Actor::spawn(None, QuietSupervisor, ()).await?;
    let before = vm_rss_kib();
    let t = Instant::now();
    let mut callers = Vec::new();
    let concurrency = env_usize("BENCH_REAL_CALLERS", 8);
    for chunk in ids.chunks(ids.len().div_ceil(concurrency)) {
        let (dispatcher, chunk) = (engine.dispatcher.clone(), chunk.to_vec());
        let supervisor = supervisor.get_cell();
        callers.push(tokio::spawn(async move {
            for id in chunk {
                if boxed {
                    let actor = BoxedHandle(RequestActor {
                        ctx: dispatcher.context().clone(),
                    });
                    Actor::spawn_linked(None, actor, id, supervisor.clone()).await?;
                } else {
                    dispatcher.ensure_actor(id).await?;
                }
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for c in callers {
        c.await??;
    }
    let spawn_secs = t.elapsed().as_secs_f64();
    // A snapshot answers after `post_start`: the offer timer is armed by then.
    let mut armed = 0usize;
    for &id in &ids {
        let snapshot = engine.dispatcher.snapshot(id).await;
        armed += usize::from(snapshot.is_some_and(|s| s.pending.is_some()));
    }
    let after = vm_rss_kib();
    let live = engine.dispatcher.live_actors();
    db.drop().await?;
    Ok(json!({
        "before_kib": before, "after_kib": after, "delta_kib": after - before,
        "live": live, "armed": armed, "spawn_rate": ids.len() as f64 / spawn_secs,
        "callers": concurrency,
    }))
}

/// Diagnostic: the real `RequestActor`, each `handle` future boxed while it runs, so the
/// message loop ractor keeps for the actor's life holds a pointer instead of the future.
/// Started outside `Dispatcher` (linked to [`QuietSupervisor`]); it registers itself in
/// the dispatcher's registry as usual, so snapshots reach it.
struct BoxedHandle(RequestActor);

impl Actor for BoxedHandle {
    type Msg = RequestMsg;
    type State = RequestState;
    type Arguments = Uuid;

    async fn pre_start(
        &self,
        myself: ActorRef<RequestMsg>,
        request_id: Uuid,
    ) -> Result<RequestState, ActorProcessingErr> {
        self.0
            .pre_start(myself, (request_id, None, Default::default()))
            .await
    }

    async fn post_start(
        &self,
        myself: ActorRef<RequestMsg>,
        state: &mut RequestState,
    ) -> Result<(), ActorProcessingErr> {
        Box::pin(self.0.post_start(myself, state)).await
    }

    async fn post_stop(
        &self,
        myself: ActorRef<RequestMsg>,
        state: &mut RequestState,
    ) -> Result<(), ActorProcessingErr> {
        Box::pin(self.0.post_stop(myself, state)).await
    }

    async fn handle(
        &self,
        myself: ActorRef<RequestMsg>,
        msg: RequestMsg,
        state: &mut RequestState,
    ) -> Result<(), ActorProcessingErr> {
        Box::pin(self.0.handle(myself, msg, state)).await
    }
}

/// Spawn → ready and stop of real request actors, one at a time.
async fn spawn_real(runs: usize) -> anyhow::Result<Value> {
    const PER_RUN: usize = 500;
    let db = BenchDb::create().await?;
    let engine = Engine::start(&db.url, 8).await?;
    let ids = insert_offering_requests(&engine.store, (runs + 1) * PER_RUN).await?;
    let row = offering_row();
    let mut up = Vec::new();
    let mut down = Vec::new();
    let mut bare_up = Vec::new();
    let mut bare_down = Vec::new();
    for (run, batch) in ids.chunks(PER_RUN).enumerate() {
        let (mut h_up, mut h_down, mut b_up, mut b_down) =
            (histogram(), histogram(), histogram(), histogram());
        for &id in batch {
            let t = Instant::now();
            let actor = engine.dispatcher.ensure_actor(id).await?;
            let snapshot = engine.dispatcher.snapshot(id).await;
            record(&mut h_up, t);
            anyhow::ensure!(
                snapshot.is_some_and(|s| s.pending.is_some()),
                "actor without its offer"
            );
            let t = Instant::now();
            actor.stop_and_wait(None, None).await?;
            record(&mut h_down, t);

            let t = Instant::now();
            let (tx, rx) = mpsc::unbounded_channel();
            let handle = tokio::spawn(bare_task(StandInArgs::new(&row), rx));
            let (reply, answer) = oneshot::channel();
            tx.send(BareMsg::Ping(reply))
                .map_err(|_| anyhow::anyhow!("task gone"))?;
            answer.await?;
            record(&mut b_up, t);
            let t = Instant::now();
            drop(tx);
            handle.await?;
            record(&mut b_down, t);
        }
        if run > 0 {
            up.push(Lat::of(&h_up));
            down.push(Lat::of(&h_down));
            bare_up.push(Lat::of(&b_up));
            bare_down.push(Lat::of(&b_down));
        }
    }
    db.drop().await?;
    Ok(json!({
        "per_run": PER_RUN,
        "up": Lat::median(&up).to_json(), "down": Lat::median(&down).to_json(),
        "bare_up": Lat::median(&bare_up).to_json(), "bare_down": Lat::median(&bare_down).to_json(),
    }))
}

// ---- the real engine on a throw-away database ---------------------------------------------

/// A fresh database, migrated and seeded, dropped at the end.
struct BenchDb {
    server: String,
    name: String,
    url: String,
}

impl BenchDb {
    async fn create() -> anyhow::Result<BenchDb> {
        let server = std::env::var("DATABASE_URL")?;
        let name = format!("bench_dispatch_{}", Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&database_url_for(&server, "postgres")).await?;
        sqlx::query(&format!(r#"create database "{name}""#))
            .execute(&mut admin)
            .await?;
        let url = database_url_for(&server, &name);
        let store = Store::connect(&url, 2).await?;
        store.migrate().await?;
        store.seed().await?;
        store.pool().close().await;
        Ok(BenchDb { server, name, url })
    }

    async fn drop(self) -> anyhow::Result<()> {
        let mut admin = PgConnection::connect(&database_url_for(&self.server, "postgres")).await?;
        sqlx::query(&format!(r#"drop database "{}" with (force)"#, self.name))
            .execute(&mut admin)
            .await?;
        Ok(())
    }
}

/// Dispatch on a database, with an in-process gateway whose receiver is dropped: offers
/// pushed to workers are discarded, so no notice queue grows inside the measurement.
struct Engine {
    store: Store,
    dispatcher: Dispatcher,
    _settings: watch::Sender<Arc<Settings>>,
}

impl Engine {
    async fn start(url: &str, connections: u32) -> anyhow::Result<Engine> {
        let store = Store::connect(url, connections).await?;
        let (settings, rx) = watch::channel(Arc::new(Settings::default()));
        let (gateway, notices) = InProcessGateway::new();
        drop(notices);
        let dispatcher = Dispatcher::start(store.clone(), rx, Arc::new(gateway)).await?;
        Ok(Engine {
            store,
            dispatcher,
            _settings: settings,
        })
    }
}

/// `n` requests OFFERING to `n` distinct workers, the offer expiring in an hour: each actor
/// started on them loads its row and offers, re-arms its timer and waits. Inserted after
/// `Dispatcher::start`, so start-up recovery does not spawn them.
async fn insert_offering_requests(store: &Store, n: usize) -> anyhow::Result<Vec<Uuid>> {
    let n = n as i32;
    let uuid =
        |prefix: &str| format!("('{prefix}-0000-4000-8000-' || lpad(to_hex(g), 12, '0'))::uuid");
    let (worker, request, offer) = (uuid("b0000001"), uuid("b0000002"), uuid("b0000003"));
    let mut tx = store.pool().begin().await?;
    sqlx::query(&format!(
        r#"insert into worker_profiles (id, name, "cityId", skills)
           select {worker}, 'Bench Worker ' || g, 'buenos-aires', '{{lawn_mowing}}'
           from generate_series(1, $1) g"#
    ))
    .bind(n)
    .execute(&mut *tx)
    .await?;
    sqlx::query(&format!(
        r#"insert into service_requests (id, "cityId", status, version, "assignmentAttempts",
               "workerTimeoutAt", latitude, longitude, address, description, "squareMeters",
               "serviceCategory", "difficultyLevel", currency, "priceTotalCents",
               "workerNetCents", "platformFeeCents", "pricingEngine")
           select {request}, 'buenos-aires', 'OFFERING', 2, 1, now() + interval '1 hour',
               -34.70 + random() * 0.08, -58.50 + random() * 0.16, 'Av. Corrientes 1234',
               'Corte de pasto', 100, 'lawn_mowing', 'EASY', 'ARS', 1500000, 1275000, 225000, 'rules'
           from generate_series(1, $1) g"#
    ))
    .bind(n)
    .execute(&mut *tx)
    .await?;
    sqlx::query(&format!(
        r#"insert into offers (id, "requestId", "workerId", attempt, "expiresAt",
               "distanceMeters", "radiusMeters", "candidatesConsidered")
           select {offer}, {request}, {worker}, 1, now() + interval '1 hour', 850, 2000, 10
           from generate_series(1, $1) g"#
    ))
    .bind(n)
    .execute(&mut *tx)
    .await?;
    let ids = sqlx::query_scalar(&format!(
        "select {request} from generate_series(1, $1) g order by g"
    ))
    .bind(n)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(ids)
}

// ---- the stand-in request actor and its tokio-task baseline -------------------------------

/// A request actor of the real one's shape (unit struct, state built in `pre_start`, a
/// message enum with an RPC, an offer timer from `send_after`, linked to a supervisor) that
/// builds its state from a row in memory instead of loading it from PostgreSQL. `N` bytes of
/// scratch held across an await in `handle` let a diagnostic stand-in match the size of the
/// real actor's `handle` future; the stand-in proper has `N = 0`.
struct StandIn<const N: usize = 0>;

enum StandInMsg {
    OfferTimeout {
        offer_id: Uuid,
    },
    /// Answers whether the offer timer is armed.
    Ping(RpcReplyPort<bool>),
}

/// Field for field the real `RequestState` (the header prints both sizes). Some fields are
/// only held, never read: they are here for their memory, as in the real state.
#[allow(dead_code)]
struct StandInState {
    row: ServiceRequest,
    city: Option<ActorRef<CityMsg>>,
    skill: Option<String>,
    tried: HashSet<Uuid>,
    pending: Vec<PendingOffer>,
    batches: u32,
    timer: Option<JoinHandle<Result<(), MessagingErr<StandInMsg>>>>,
    slot_timer: Option<JoinHandle<Result<(), MessagingErr<StandInMsg>>>>,
    reminded: bool,
    priority: bool,
}

/// What `pre_start` would have read from the database.
struct StandInArgs {
    row: ServiceRequest,
    pending: PendingOffer,
}

impl StandInArgs {
    fn new(template: &ServiceRequest) -> StandInArgs {
        let mut row = template.clone();
        row.id = Uuid::new_v4();
        StandInArgs {
            row,
            pending: PendingOffer {
                offer_id: Uuid::now_v7(),
                worker_id: Uuid::new_v4(),
                attempt: 1,
                expires_at: Utc::now() + chrono::Duration::hours(1),
                batch: 1,
            },
        }
    }

    fn into_state(self) -> StandInState {
        StandInState {
            skill: self.row.service_category.clone(),
            row: self.row,
            city: None,
            tried: HashSet::from([self.pending.worker_id]),
            pending: vec![self.pending],
            batches: 1,
            timer: None,
            slot_timer: None,
            reminded: false,
            priority: false,
        }
    }
}

impl<const N: usize> Actor for StandIn<N> {
    type Msg = StandInMsg;
    type State = StandInState;
    type Arguments = StandInArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<StandInMsg>,
        args: StandInArgs,
    ) -> Result<StandInState, ActorProcessingErr> {
        Ok(args.into_state())
    }

    async fn post_start(
        &self,
        myself: ActorRef<StandInMsg>,
        state: &mut StandInState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(p) = state.pending.first() {
            let offer_id = p.offer_id;
            state.timer = Some(
                myself.send_after(OFFER_TIMEOUT, move || StandInMsg::OfferTimeout { offer_id }),
            );
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<StandInMsg>,
        state: &mut StandInState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(t) = state.timer.take() {
            t.abort();
        }
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<StandInMsg>,
        msg: StandInMsg,
        state: &mut StandInState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            StandInMsg::OfferTimeout { offer_id } => {
                let scratch = [0u8; N];
                tokio::task::yield_now().await;
                black_box(&scratch);
                if state.pending.first().map(|p| p.offer_id) == Some(offer_id) {
                    state.pending.clear();
                    state.timer = None;
                }
            }
            StandInMsg::Ping(reply) => {
                let _ = reply.send(state.timer.is_some());
            }
        }
        Ok(())
    }
}

/// Links the stand-ins like `RequestSupervisor` links request actors; restarts nothing.
struct QuietSupervisor;

impl Actor for QuietSupervisor {
    type Msg = ();
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, _myself: ActorRef<()>, _: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<()>,
        event: SupervisionEvent,
        _state: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        black_box(event);
        Ok(())
    }
}

enum BareMsg {
    Ping(oneshot::Sender<bool>),
}

/// The baseline: a tokio task owning the same state, a channel and a sleeping offer timer.
async fn bare_task(args: StandInArgs, mut rx: mpsc::UnboundedReceiver<BareMsg>) {
    let mut state = args.into_state();
    let timer = tokio::time::sleep(OFFER_TIMEOUT);
    tokio::pin!(timer);
    loop {
        tokio::select! {
            () = &mut timer => {
                state.pending.clear();
                return;
            }
            msg = rx.recv() => match msg {
                Some(BareMsg::Ping(reply)) => {
                    let _ = reply.send(!state.pending.is_empty());
                }
                None => return,
            },
        }
    }
}

/// A request as the database holds it while one offer is out.
fn offering_row() -> ServiceRequest {
    let now = Utc::now();
    ServiceRequest {
        id: Uuid::nil(),
        customer_id: Some(Uuid::new_v4()),
        city_id: Some("buenos-aires".into()),
        status: Status::Offering,
        version: 2,
        assignment_attempts: 1,
        worker_timeout_at: Some(now + chrono::Duration::hours(1)),
        assigned_worker_id: None,
        latitude: Some(-34.6037),
        longitude: Some(-58.3816),
        address: Some("Av. Corrientes 1234".into()),
        description: Some("Corte de pasto".into()),
        square_meters: Some(100.0),
        image_ref: None,
        service_category: Some("lawn_mowing".into()),
        difficulty_level: Some("EASY".into()),
        extras: vec![],
        currency: "ARS".into(),
        price_total_cents: Some(1_500_000),
        worker_net_cents: Some(1_275_000),
        platform_fee_cents: Some(225_000),
        pricing_engine: Some("rules".into()),
        idempotency_key: None,
        cancelled_at: None,
        cancelled_by: None,
        cancellation_reason: None,
        cancellation_fee_cents: None,
        unassigned_reason: None,
        assigned_at: None,
        started_at: None,
        completed_at: None,
        created_at: now,
        updated_at: now,
        scheduled_start: None,
        scheduled_end: None,
    }
}

// ---- workers and searches ------------------------------------------------------------------

fn buenos_aires() -> CityInfo {
    let area: Value = serde_json::from_str(BUENOS_AIRES).expect("valid GeoJSON");
    CityInfo::from_geojson("buenos-aires".into(), "Buenos Aires".into(), &area)
        .expect("valid service area")
}

/// The latitude `CityActor` projects around: the service area's centroid.
fn center_lat(info: &CityInfo) -> f64 {
    info.area.centroid().map_or(0.0, |c| c.y())
}

/// Uniform over the service area (rejection sampling in its bounding box).
fn sample_point(info: &CityInfo, rng: &mut StdRng) -> (f64, f64) {
    loop {
        let (lon, lat) = (rng.gen_range(LON.0..LON.1), rng.gen_range(LAT.0..LAT.1));
        if info.serves(lon, lat) {
            return (lon, lat);
        }
    }
}

fn sample_points(info: &CityInfo, rng: &mut StdRng, n: usize) -> Vec<(f64, f64)> {
    (0..n).map(|_| sample_point(info, rng)).collect()
}

/// A query as `RequestActor` builds it, with the default radius steps.
fn search((lon, lat): (f64, f64), k: usize) -> Search {
    Search {
        lon,
        lat,
        skill: None,
        k,
        exclude: HashSet::new(),
        radius_steps_m: Settings::default().search_radius_steps_m,
        min_candidates: 1,
        blocks: None,
    }
}

/// Online workers spread uniformly over the service area, each with one to three skills.
struct Fleet {
    ids: Vec<Uuid>,
    positions: Vec<(f64, f64)>,
    skills: Vec<Vec<String>>,
}

impl Fleet {
    fn random(n: usize, info: &CityInfo, rng: &mut StdRng) -> Fleet {
        let ids = (0..n)
            .map(|_| uuid::Builder::from_random_bytes(rng.gen()).into_uuid())
            .collect();
        let positions = sample_points(info, rng, n);
        let skills = (0..n)
            .map(|_| {
                let pick = rng.gen_range(1u8..8);
                (0..3)
                    .filter(|b| pick & (1 << b) != 0)
                    .map(|b| SKILLS[b].to_string())
                    .collect()
            })
            .collect();
        Fleet {
            ids,
            positions,
            skills,
        }
    }

    /// The index the city actor would hold for this fleet (projected around the same centre).
    fn index(&self, info: &CityInfo) -> WorkerIndex {
        let mut index = WorkerIndex::new(center_lat(info));
        for (i, &id) in self.ids.iter().enumerate() {
            let (lon, lat) = self.positions[i];
            index.upsert(id, lon, lat, self.skills[i].clone(), None);
        }
        index
    }

    /// `n` location updates of random workers, each a step of up to ~50 m that stays inside
    /// the service area (a phone reporting while its worker drives or walks).
    fn walk(&self, info: &CityInfo, rng: &mut StdRng, n: usize) -> Vec<(Uuid, f64, f64)> {
        let mut positions = self.positions.clone();
        (0..n)
            .map(|_| {
                let i = rng.gen_range(0..self.ids.len());
                let (lon, lat) = positions[i];
                let step = (
                    lon + rng.gen_range(-0.0005..0.0005),
                    lat + rng.gen_range(-0.0005..0.0005),
                );
                if info.serves(step.0, step.1) {
                    positions[i] = step;
                }
                (self.ids[i], positions[i].0, positions[i].1)
            })
            .collect()
    }
}

// ---- measuring ------------------------------------------------------------------------------

/// Latency percentiles in nanoseconds.
#[derive(Debug, Clone, Copy)]
struct Lat {
    p50: f64,
    p99: f64,
}

impl Lat {
    fn of(h: &Histogram<u64>) -> Lat {
        Lat {
            p50: h.value_at_quantile(0.50) as f64,
            p99: h.value_at_quantile(0.99) as f64,
        }
    }

    /// Medians over runs, percentile by percentile.
    fn median(runs: &[Lat]) -> Lat {
        Lat {
            p50: median(runs.iter().map(|l| l.p50).collect::<Vec<_>>()),
            p99: median(runs.iter().map(|l| l.p99).collect::<Vec<_>>()),
        }
    }

    fn to_json(self) -> Value {
        json!({"p50": self.p50, "p99": self.p99})
    }

    fn from_json(v: &Value) -> Lat {
        Lat {
            p50: v["p50"].as_f64().unwrap_or(f64::NAN),
            p99: v["p99"].as_f64().unwrap_or(f64::NAN),
        }
    }
}

/// 1 ns to 60 s at three significant digits; recording never allocates.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("histogram bounds")
}

fn record(h: &mut Histogram<u64>, since: Instant) {
    h.saturating_record(since.elapsed().as_nanos() as u64);
}

/// One warm-up run, then `runs` runs of `n` calls each; per-call latency.
fn timed_runs(runs: usize, n: usize, mut f: impl FnMut(usize)) -> Lat {
    let mut out = Vec::new();
    for run in 0..=runs {
        let mut h = histogram();
        for i in 0..n {
            let t = Instant::now();
            f(run * n + i);
            record(&mut h, t);
        }
        if run > 0 {
            out.push(Lat::of(&h));
        }
    }
    Lat::median(&out)
}

/// The size of what `f` returns (here: an `async fn`'s future), without calling it.
fn returned_size<A, B, C, D, Fut>(_f: impl Fn(A, B, C, D) -> Fut) -> usize {
    std::mem::size_of::<Fut>()
}

fn vm_rss_kib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(f64::NAN)
}

fn skip_db() -> bool {
    std::env::var("BENCH_SKIP_DB").is_ok_and(|v| v == "1") || std::env::var("DATABASE_URL").is_err()
}

// ---- the table ------------------------------------------------------------------------------

struct Row {
    item: &'static str,
    case: String,
    measured: String,
    baseline: String,
    ratio: String,
    target: String,
    met: String,
}

impl Row {
    fn latency(
        item: &'static str,
        case: String,
        measured: Lat,
        baseline: Lat,
        target: Option<(&str, bool)>,
    ) -> Row {
        Row {
            item,
            case,
            measured: format!("p50 {} · p99 {}", nanos(measured.p50), nanos(measured.p99)),
            baseline: format!("p50 {} · p99 {}", nanos(baseline.p50), nanos(baseline.p99)),
            ratio: format!("p50 {}", times(measured.p50 / baseline.p50)),
            target: target.map_or("—".into(), |(t, _)| t.into()),
            met: target.map_or("—".into(), |(_, ok)| verdict(ok)),
        }
    }

    fn failed(item: &'static str, case: &str, error: String, baseline: Option<String>) -> Row {
        Row {
            item,
            case: case.into(),
            measured: format!("not measured: {error}"),
            baseline: baseline.unwrap_or_default(),
            ratio: "—".into(),
            target: "—".into(),
            met: "—".into(),
        }
    }
}

fn print_table(rows: &[Row]) {
    println!("| # | measurement | measured | baseline (same run) | ratio measured/baseline | target | met |");
    println!("|---|---|---|---|---|---|---|");
    let mut sorted: Vec<&Row> = rows.iter().collect();
    sorted.sort_by_key(|r| r.item);
    for r in sorted {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.item, r.case, r.measured, r.baseline, r.ratio, r.target, r.met
        );
    }
}

fn nanos(ns: f64) -> String {
    match ns {
        ns if ns >= 1e6 => format!("{:.2} ms", ns / 1e6),
        ns if ns >= 1e3 => format!("{:.2} µs", ns / 1e3),
        ns => format!("{ns:.0} ns"),
    }
}

fn times(x: f64) -> String {
    match x {
        x if x >= 10.0 => format!("{x:.0}×"),
        x if x >= 0.1 => format!("{x:.2}×"),
        x => format!("{x:.5}× (1/{:.0})", 1.0 / x),
    }
}

fn count(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.0}k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

fn mib(kib: f64) -> String {
    format!("{:.0} MiB", kib / 1024.0)
}

fn per_actor(kib: f64) -> String {
    format!("{:.0}", kib * 1024.0 / LIVE_ACTORS as f64)
}

fn verdict(ok: bool) -> String {
    if ok { "yes" } else { "**no**" }.into()
}
