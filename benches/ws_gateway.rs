//! Worker WebSocket gateway benchmark, beside a bare tokio-tungstenite server measured in
//! the same run on the same machine:
//!
//! 1. **Idle sessions**: opens `WS_BENCH_SESSIONS` authenticated sessions and reads the
//!    server's resident memory at a quarter and at all of them; the marginal memory per
//!    session is the difference over the sessions added.
//! 2. **Offers pushed per second**: the server pushes `WS_BENCH_PUSH_PER_SESSION` offers to
//!    every session (engine: `Sessions::notify`, the dispatch seam, which serialises each
//!    offer with its sequence number; baseline: one pre-serialised frame of the same size
//!    queued to each connection); the clock stops when every client has read every frame.
//! 3. **Location updates per second**: `WS_BENCH_LOCATION_CLIENTS` clients each send
//!    `WS_BENCH_LOCATIONS_PER_CLIENT` location frames then a ping, and wait for its answer
//!    (engine: parsed, validated, rate-limited, cast to the city actor, `pong` after the
//!    last one; baseline: every frame echoed back).
//!
//! Phases 2 and 3 run `WS_BENCH_ROUNDS` times; the table gives medians.
//!
//! Each server runs in a child process (this binary again, `WS_BENCH_ROLE=engine|echo`) so
//! its resident memory is its own; the clients run here. The engine child builds the whole
//! application on a fresh database (`DATABASE_URL`, dropped at the end) with the default
//! gateway limits, except: heartbeat timeout and auth deadline raised (opening 20k sessions
//! on a loaded 2-core machine takes longer than a heartbeat) and rate limits lifted (one
//! client sends a burst of updates on purpose).
//!
//! ```text
//! ulimit -n "$(ulimit -Hn)"; eval "$(scripts/dev-env.sh)"; cargo bench --bench ws_gateway
//! ```

#[allow(dead_code)] // each benchmark uses some of the shared helpers
mod common;

use common::{database_url_for, median};
use std::{
    collections::HashMap,
    io::{BufRead, Write},
    net::SocketAddr,
    process::{Child, ChildStdin, Command, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use arreglame::{
    auth::{Role, TokenKeys},
    config::Config,
    dispatch::gateway::{OfferNotice, WorkerGateway, WorkerNotice},
    gateway::{Limits, Rate},
    startup::Application,
    store::Store,
};
use futures::{stream::SplitSink, SinkExt, StreamExt};
use serde_json::json;
use tokio::{
    net::{TcpListener, TcpSocket, TcpStream},
    sync::{mpsc, Notify},
};
use tokio_tungstenite::{
    tungstenite::{protocol::WebSocketConfig, Message},
    WebSocketStream,
};
use uuid::Uuid;

/// Worker ids are `BASE + index`, so the engine child can address the parent's clients.
const WORKER_BASE: u128 = 0xB0B0_0000_0000_4000_8000_0000_0000_0000;
const LON: f64 = -58.3816;
const LAT: f64 = -34.6037;

fn main() {
    match std::env::var("WS_BENCH_ROLE").as_deref() {
        Ok("engine") => runtime().block_on(server::engine()),
        Ok("echo") => runtime().block_on(server::echo()),
        _ => runtime().block_on(driver::run()),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn worker_id(i: usize) -> Uuid {
    Uuid::from_u128(WORKER_BASE + i as u128)
}

/// The same small buffers on both servers (and on the clients).
fn ws_config() -> WebSocketConfig {
    let l = Limits::default();
    WebSocketConfig::default()
        .read_buffer_size(l.read_buffer_bytes)
        .write_buffer_size(l.write_buffer_bytes)
        .max_write_buffer_size(l.write_buffer_bytes + 256 * 1024)
        .max_message_size(Some(l.max_frame_bytes))
        .max_frame_size(Some(l.max_frame_bytes))
}

/// An offer as the engine would push it (the baseline pushes its serialised frame).
fn sample_offer(worker: Uuid) -> OfferNotice {
    OfferNotice {
        offer_id: Uuid::now_v7(),
        request_id: Uuid::new_v4(),
        worker_id: worker,
        attempt: 1,
        expires_at: chrono::Utc::now() + chrono::Duration::minutes(5),
        description: "Corte de pasto y bordes, jardín delantero".into(),
        square_meters: 120.0,
        worker_net_cents: 1_275_000,
        currency: "ARS".into(),
        distance_meters: 1_234.5,
        area: "Buenos Aires".into(),
        latitude: -34.604,
        longitude: -58.382,
        scheduled_start: None,
        scheduled_end: None,
    }
}

/// Lines the children and the driver exchange over stdin/stdout.
mod wire {
    pub const READY: &str = "READY";
    pub const DONE: &str = "DONE";
}

mod server {
    use super::*;

    /// Commands from the driver, one per stdin line, forwarded to the runtime.
    fn commands() -> mpsc::UnboundedReceiver<String> {
        let (tx, rx) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        rx
    }

    fn say(line: &str) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }

    fn arg(parts: &[&str], i: usize) -> usize {
        parts.get(i).and_then(|p| p.parse().ok()).unwrap_or(0)
    }

    /// The whole engine on a fresh database.
    pub async fn engine() {
        let admin_url =
            std::env::var("DATABASE_URL").expect("DATABASE_URL (eval \"$(scripts/dev-env.sh)\")");
        let db = format!("bench_ws_{}", Uuid::new_v4().simple());
        let url = database_url_for(&admin_url, &db);
        admin(&admin_url, &format!(r#"create database "{db}""#)).await;
        let store = Store::connect(&url, 2).await.expect("connect");
        store.migrate().await.expect("migrate");
        store.seed().await.expect("seed");
        store.pool().close().await;

        let secret = std::env::var("WS_BENCH_SECRET").expect("WS_BENCH_SECRET");
        let vars: HashMap<String, String> = [
            ("DATABASE_URL", url.as_str()),
            ("PORT", "0"),
            ("HOST", "127.0.0.1"),
            ("JWT_SECRET", secret.as_str()),
            ("LOG_LEVEL", "error"),
            ("DATABASE_MAX_CONNECTIONS", "8"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let app = Application::build(Config::from_vars(vars).expect("config"))
            .await
            .expect("build engine");
        let handle = app.handle();
        let port = app.port();
        let sessions = handle.state.sessions.clone();
        sessions.set_limits(Limits {
            auth_timeout: Duration::from_secs(120),
            heartbeat_timeout: Duration::from_secs(3600),
            location_rate: Rate {
                per_second: 1e9,
                burst: 1_000_000,
            },
            message_rate: Rate {
                per_second: 1e9,
                burst: 1_000_000,
            },
            ..Limits::default()
        });
        let server = tokio::spawn(app.run_until_stopped());
        say(&format!("{} {port}", wire::READY));

        let mut commands = commands();
        while let Some(line) = commands.recv().await {
            let parts: Vec<&str> = line.split_whitespace().collect();
            match parts.first().copied() {
                Some("COUNT") => say(&format!("{} {}", wire::DONE, sessions.connected_workers())),
                Some("PUSH") => {
                    let (workers, per) = (arg(&parts, 1), arg(&parts, 2));
                    for _ in 0..per {
                        for i in 0..workers {
                            sessions.notify(WorkerNotice::Offer(sample_offer(worker_id(i))));
                        }
                        tokio::task::yield_now().await;
                    }
                    say(wire::DONE);
                }
                Some("STATS") => {
                    let s = &sessions.stats;
                    say(&format!(
                        "{} queued={} slow={} heartbeat={} locations={} rate_limited={}",
                        wire::DONE,
                        s.notices_queued.get(),
                        s.slow_consumers.get(),
                        s.heartbeat_timeouts.get(),
                        s.location_updates.get(),
                        s.rate_limited.get()
                    ))
                }
                _ => break,
            }
        }
        handle.shutdown();
        let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
        admin(
            &admin_url,
            &format!(r#"drop database if exists "{db}" with (force)"#),
        )
        .await;
        say(wire::DONE);
    }

    async fn admin(url: &str, sql: &str) {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&database_url_for(url, "postgres"))
            .await
            .expect("connect to the postgres database");
        sqlx::query(sql).execute(&mut conn).await.expect(sql);
    }

    /// The baseline: a bare tokio-tungstenite server. One task per connection, echoes every
    /// text frame, and a bounded queue per connection for server pushes. No auth, no JSON.
    pub async fn echo() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let queues: Arc<Mutex<Vec<mpsc::Sender<Message>>>> = Arc::default();
        let accepted = queues.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    // Out of descriptors, say: do not spin.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let queues = accepted.clone();
                tokio::spawn(async move {
                    let Ok(ws) =
                        tokio_tungstenite::accept_async_with_config(stream, Some(ws_config()))
                            .await
                    else {
                        return;
                    };
                    let (tx, mut rx) = mpsc::channel(Limits::default().send_queue);
                    queues.lock().unwrap().push(tx);
                    let (mut sink, mut stream) = ws.split();
                    loop {
                        tokio::select! {
                            inbound = stream.next() => match inbound {
                                Some(Ok(m @ Message::Text(_))) => {
                                    if sink.send(m).await.is_err() { return; }
                                }
                                Some(Ok(_)) => {}
                                _ => return,
                            },
                            Some(out) = rx.recv() => {
                                if sink.send(out).await.is_err() { return; }
                            }
                        }
                    }
                });
            }
        });
        say(&format!("{} {port}", wire::READY));
        let frame = Message::text(arreglame::gateway::protocol::offer_frame(
            &sample_offer(worker_id(0)),
            1,
        ));
        let mut commands = commands();
        while let Some(line) = commands.recv().await {
            let parts: Vec<&str> = line.split_whitespace().collect();
            match parts.first().copied() {
                Some("COUNT") => say(&format!("{} {}", wire::DONE, queues.lock().unwrap().len())),
                Some("PUSH") => {
                    let per = arg(&parts, 2);
                    let targets: Vec<_> = queues.lock().unwrap().clone();
                    for _ in 0..per {
                        for tx in &targets {
                            let _ = tx.try_send(frame.clone());
                        }
                        tokio::task::yield_now().await;
                    }
                    say(wire::DONE);
                }
                Some("STATS") => say(wire::DONE),
                _ => break,
            }
        }
        say(wire::DONE);
    }
}

mod driver {
    use super::*;

    type Ws = WebSocketStream<TcpStream>;
    type Sink = SplitSink<Ws, Message>;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Kind {
        Echo,
        Engine,
    }

    impl Kind {
        fn name(self) -> &'static str {
            match self {
                Kind::Echo => "bare tokio-tungstenite server",
                Kind::Engine => "engine gateway (/ws/worker)",
            }
        }
    }

    struct Settings {
        sessions: usize,
        push_per_session: usize,
        location_clients: usize,
        locations_per_client: usize,
        rounds: usize,
        /// Why `sessions` is below the target, if it is.
        capped: Option<String>,
    }

    fn env(name: &str) -> Option<usize> {
        std::env::var(name).ok().and_then(|v| v.parse().ok())
    }

    /// The soft limit of open files of this process (the children inherit it).
    fn open_files_limit() -> usize {
        std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find(|l| l.starts_with("Max open files"))
                    .and_then(|l| l.split_whitespace().nth(3).map(str::to_string))
            })
            .and_then(|soft| soft.parse().ok())
            .unwrap_or(1024)
    }

    impl Settings {
        fn from_env() -> Settings {
            let target = env("WS_BENCH_SESSIONS").unwrap_or(20_000);
            // Each process needs one descriptor per session plus its own (database pool,
            // listener, epoll, pipes): keep 120 spare.
            let room = open_files_limit().saturating_sub(120);
            let capped = (target > room).then(|| {
                format!(
                    "{target} sessions wanted, {room} possible: the open-files limit is {} per process (raise it with `ulimit -n`)",
                    open_files_limit()
                )
            });
            let sessions = target.min(room);
            Settings {
                sessions,
                push_per_session: env("WS_BENCH_PUSH_PER_SESSION").unwrap_or(8),
                location_clients: env("WS_BENCH_LOCATION_CLIENTS")
                    .unwrap_or(2_000)
                    .min(sessions),
                locations_per_client: env("WS_BENCH_LOCATIONS_PER_CLIENT").unwrap_or(25),
                rounds: env("WS_BENCH_ROUNDS").unwrap_or(5).max(1),
                capped,
            }
        }
    }

    /// A server child process.
    struct Server {
        child: Child,
        stdin: ChildStdin,
        lines: mpsc::UnboundedReceiver<String>,
        addr: SocketAddr,
    }

    impl Server {
        async fn start(kind: Kind, secret: &str) -> Server {
            let role = match kind {
                Kind::Echo => "echo",
                Kind::Engine => "engine",
            };
            let mut child = Command::new(std::env::current_exe().expect("own path"))
                .env("WS_BENCH_ROLE", role)
                .env("WS_BENCH_SECRET", secret)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("start server child");
            let stdin = child.stdin.take().expect("piped stdin");
            let stdout = child.stdout.take().expect("piped stdout");
            let (tx, mut lines) = mpsc::unbounded_channel();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            let ready = lines.recv().await.expect("the server child started");
            let port: u16 = ready
                .strip_prefix(wire::READY)
                .and_then(|p| p.trim().parse().ok())
                .unwrap_or_else(|| panic!("unexpected first line {ready:?}"));
            Server {
                child,
                stdin,
                lines,
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
            }
        }

        async fn ask(&mut self, command: &str) -> String {
            writeln!(self.stdin, "{command}").expect("write to child");
            self.stdin.flush().expect("flush to child");
            let line = self.lines.recv().await.expect("child answers");
            line.strip_prefix(wire::DONE)
                .unwrap_or_else(|| panic!("unexpected answer {line:?}"))
                .trim()
                .to_string()
        }

        /// Resident memory of the child, in bytes.
        fn rss(&self) -> u64 {
            let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
                .expect("child status");
            status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<u64>().ok())
                .map(|kib| kib * 1024)
                .expect("VmRSS")
        }

        async fn stop(mut self) {
            let _ = self.ask("QUIT").await;
            let _ = self.child.wait();
        }
    }

    /// What one server achieved.
    struct Figures {
        kind: Kind,
        sessions: usize,
        connect_secs: f64,
        rss_base: u64,
        bytes_per_session: f64,
        offers_per_sec: Vec<f64>,
        locations_per_sec: Vec<f64>,
        notes: Vec<String>,
    }

    pub async fn run() {
        let settings = Settings::from_env();
        let secret = format!("bench-{}-{}", Uuid::new_v4(), Uuid::new_v4());
        println!(
            "ws_gateway: {} sessions, {} offers per session per round, {} clients x {} location updates per round, {} rounds",
            settings.sessions,
            settings.push_per_session,
            settings.location_clients,
            settings.locations_per_client,
            settings.rounds
        );
        if let Some(why) = &settings.capped {
            println!("note: {why}");
        }
        let mut all = Vec::new();
        for kind in [Kind::Echo, Kind::Engine] {
            let server = Server::start(kind, &secret).await;
            let figures = measure(kind, server, &settings, &secret).await;
            report(&figures);
            all.push(figures);
        }
        table(&all, &settings);
    }

    fn report(f: &Figures) {
        println!(
            "{}: {} sessions in {:.1} s; base RSS {:.1} MiB; {:.0} B/session; offers/s {:?}; locations/s {:?}",
            f.kind.name(),
            f.sessions,
            f.connect_secs,
            f.rss_base as f64 / 1048576.0,
            f.bytes_per_session,
            f.offers_per_sec.iter().map(|x| x.round()).collect::<Vec<_>>(),
            f.locations_per_sec.iter().map(|x| x.round()).collect::<Vec<_>>(),
        );
        for note in &f.notes {
            println!("  {note}");
        }
    }

    fn table(all: &[Figures], s: &Settings) {
        let (echo, engine) = (&all[0], &all[1]);
        let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
        let (eo, go) = (median(&echo.offers_per_sec), median(&engine.offers_per_sec));
        let (el, gl) = (
            median(&echo.locations_per_sec),
            median(&engine.locations_per_sec),
        );
        println!();
        println!("| measure | bare tokio-tungstenite | engine gateway | engine / bare |");
        println!("| --- | ---: | ---: | ---: |");
        println!(
            "| idle sessions held | {} | {} | |",
            echo.sessions, engine.sessions
        );
        println!(
            "| resident memory per idle session (marginal) | {:.1} KiB | {:.1} KiB | {:.2} |",
            echo.bytes_per_session / 1024.0,
            engine.bytes_per_session / 1024.0,
            ratio(engine.bytes_per_session, echo.bytes_per_session)
        );
        println!(
            "| resident memory with all sessions | {:.0} MiB | {:.0} MiB | |",
            (echo.rss_base as f64 + echo.bytes_per_session * echo.sessions as f64) / 1048576.0,
            (engine.rss_base as f64 + engine.bytes_per_session * engine.sessions as f64)
                / 1048576.0,
        );
        println!(
            "| offers pushed per second (median of {}) | {:.0} | {:.0} | {:.2} |",
            s.rounds,
            eo,
            go,
            ratio(go, eo)
        );
        println!(
            "| location updates per second (median of {}) | {:.0} | {:.0} | {:.2} |",
            s.rounds,
            el,
            gl,
            ratio(gl, el)
        );
    }

    async fn measure(kind: Kind, mut server: Server, s: &Settings, secret: &str) -> Figures {
        let keys = TokenKeys::new(secret);
        let mut notes = Vec::new();
        let rss_base = server.rss();

        // 1. Idle sessions: memory at a quarter and at all of them.
        let started = Instant::now();
        let quarter = s.sessions / 4;
        let mut clients = open(server.addr, &keys, 0..quarter).await;
        let rss_quarter = settle(&mut server, clients.len()).await;
        clients.extend(open(server.addr, &keys, quarter..s.sessions).await);
        let connect_secs = started.elapsed().as_secs_f64();
        let rss_all = settle(&mut server, clients.len()).await;
        let held = clients.len();
        let bytes_per_session =
            (rss_all as f64 - rss_quarter as f64) / (held - quarter).max(1) as f64;

        // Reader tasks count what each client receives from now on.
        let counters = Arc::new(Counters::default());
        let mut sinks: Vec<Sink> = Vec::with_capacity(held);
        for ws in clients {
            let (sink, stream) = ws.split();
            sinks.push(sink);
            tokio::spawn(read_counting(stream, counters.clone()));
        }

        // 2. Offers pushed.
        let mut offers_per_sec = Vec::new();
        for _ in 0..s.rounds {
            let expected =
                counters.offers.load(Ordering::Acquire) + (held * s.push_per_session) as u64;
            let t0 = Instant::now();
            server
                .ask(&format!("PUSH {held} {}", s.push_per_session))
                .await;
            if counters.wait(&counters.offers, expected).await {
                offers_per_sec
                    .push((held * s.push_per_session) as f64 / t0.elapsed().as_secs_f64());
            } else {
                notes.push(format!(
                    "push round incomplete: {} of {expected} offers arrived",
                    counters.offers.load(Ordering::Acquire)
                ));
            }
        }

        // 3. Location updates (the engine needs its clients online first).
        let movers = s.location_clients;
        if kind == Kind::Engine {
            let online = json!({"v":1,"type":"go_online","data":{"lat":LAT,"lon":LON,"skills":["lawn_mowing"]}}).to_string();
            let expected = counters.oks.load(Ordering::Acquire) + movers as u64;
            futures::stream::iter(sinks.iter_mut().take(movers))
                .for_each_concurrent(64, |sink| {
                    let frame = Message::text(online.clone());
                    async move {
                        let _ = sink.send(frame).await;
                    }
                })
                .await;
            if !counters.wait(&counters.oks, expected).await {
                notes.push("not every location client went online".into());
            }
        }
        let mut locations_per_sec = Vec::new();
        for round in 0..s.rounds {
            let frames: Vec<Message> = (0..s.locations_per_client)
                .map(|i| {
                    let at = chrono::Utc::now() + chrono::Duration::milliseconds((round * 1000 + i) as i64);
                    let lon = LON + (i % 50) as f64 * 0.0001;
                    Message::text(
                        json!({"v":1,"type":"location","data":{"lat":LAT,"lon":lon,"accuracy":5.0,"timestamp":at}})
                            .to_string(),
                    )
                })
                .chain(std::iter::once(Message::text(r#"{"v":1,"type":"ping","id":"end"}"#)))
                .collect();
            let expected = counters.round_ends.load(Ordering::Acquire) + movers as u64;
            let t0 = Instant::now();
            futures::stream::iter(sinks.iter_mut().take(movers))
                .for_each_concurrent(256, |sink| {
                    let frames = frames.clone();
                    async move {
                        for f in frames {
                            if sink.feed(f).await.is_err() {
                                return;
                            }
                        }
                        let _ = sink.flush().await;
                    }
                })
                .await;
            if counters.wait(&counters.round_ends, expected).await {
                locations_per_sec
                    .push((movers * s.locations_per_client) as f64 / t0.elapsed().as_secs_f64());
            } else {
                notes.push("location round incomplete".into());
            }
        }
        let stats = server.ask("STATS").await;
        if !stats.is_empty() {
            notes.push(format!("server counters: {stats}"));
        }
        let errors = counters.errors.load(Ordering::Acquire);
        if errors > 0 {
            notes.push(format!("{errors} error frames received"));
        }
        drop(sinks);
        server.stop().await;
        Figures {
            kind,
            sessions: held,
            connect_secs,
            rss_base,
            bytes_per_session,
            offers_per_sec,
            locations_per_sec,
            notes,
        }
    }

    /// Waits until the server counts `sessions`, lets it settle, answers its RSS.
    async fn settle(server: &mut Server, sessions: usize) -> u64 {
        for _ in 0..100 {
            let counted: usize = server.ask("COUNT").await.parse().unwrap_or(0);
            if counted >= sessions {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        server.rss()
    }

    /// Opens authenticated sessions for workers `range`, from several loopback source
    /// addresses (each has its own ephemeral port range).
    async fn open(addr: SocketAddr, keys: &TokenKeys, range: std::ops::Range<usize>) -> Vec<Ws> {
        let sessions: Vec<Option<Ws>> = futures::stream::iter(range)
            .map(|i| {
                let token = keys.issue(Role::Worker, worker_id(i), Duration::from_secs(6 * 3600));
                async move { connect(addr, i, &token).await }
            })
            .buffered(128)
            .collect()
            .await;
        let opened: Vec<Ws> = sessions.into_iter().flatten().collect();
        opened
    }

    async fn connect(addr: SocketAddr, i: usize, token: &str) -> Option<Ws> {
        let source = SocketAddr::from(([127, 0, 0, 2 + (i % 8) as u8], 0));
        let socket = TcpSocket::new_v4().ok()?;
        socket.bind(source).ok()?;
        let stream = match socket.connect(addr).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("connect {i}: {e}");
                return None;
            }
        };
        let url = format!("ws://{addr}/ws/worker");
        let (mut ws, _) =
            tokio_tungstenite::client_async_with_config(url, stream, Some(ws_config()))
                .await
                .map_err(|e| eprintln!("handshake {i}: {e}"))
                .ok()?;
        let auth = json!({"v":1,"type":"auth","id":"a","data":{"token":token,"lastSeq":0}});
        ws.send(Message::text(auth.to_string())).await.ok()?;
        // The engine answers auth_ok; the echo server echoes the auth frame.
        loop {
            match ws.next().await? {
                Ok(Message::Text(_)) => return Some(ws),
                Ok(Message::Close(frame)) => {
                    eprintln!("session {i} closed: {frame:?}");
                    return None;
                }
                Ok(_) => continue,
                Err(e) => {
                    eprintln!("session {i}: {e}");
                    return None;
                }
            }
        }
    }

    #[derive(Default)]
    struct Counters {
        offers: AtomicU64,
        oks: AtomicU64,
        round_ends: AtomicU64,
        errors: AtomicU64,
        changed: Notify,
    }

    impl Counters {
        fn bump(&self, counter: &AtomicU64) {
            counter.fetch_add(1, Ordering::AcqRel);
            self.changed.notify_waiters();
        }

        /// Waits until `counter` reaches `target` (false after two minutes without it).
        async fn wait(&self, counter: &AtomicU64, target: u64) -> bool {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
            loop {
                let changed = self.changed.notified();
                if counter.load(Ordering::Acquire) >= target {
                    return true;
                }
                // Re-check at least every 50 ms: a bump between the load and the wait is
                // otherwise missed.
                let next = (tokio::time::Instant::now() + Duration::from_millis(50)).min(deadline);
                let _ = tokio::time::timeout_at(next, changed).await;
                if tokio::time::Instant::now() >= deadline {
                    return counter.load(Ordering::Acquire) >= target;
                }
            }
        }
    }

    /// Classifies what a client receives: offers, `ok`s, the answer to a round's final
    /// ping (engine `pong`, or the echoed ping), errors.
    async fn read_counting(mut stream: futures::stream::SplitStream<Ws>, counters: Arc<Counters>) {
        while let Some(Ok(message)) = stream.next().await {
            let Message::Text(text) = message else {
                continue;
            };
            let t = text.as_str();
            let head = t.get(..t.len().min(40)).unwrap_or(t);
            if head.contains(r#""type":"offer""#) {
                counters.bump(&counters.offers);
            } else if head.contains(r#""type":"pong""#) || head.contains(r#""type":"ping""#) {
                counters.bump(&counters.round_ends);
            } else if head.contains(r#""type":"ok""#) {
                counters.bump(&counters.oks);
            } else if head.contains(r#""type":"error""#) {
                counters.bump(&counters.errors);
            }
        }
    }
}
