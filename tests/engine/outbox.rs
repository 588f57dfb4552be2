//! The outbox relay (issue 6) against a real PostgreSQL and a real `nats-server` with
//! JetStream: the dev-env server (`NATS_URL`, one stream per test) and, where a test stops
//! and starts NATS, a server of its own.

use std::{
    collections::{BTreeMap, BTreeSet},
    future::Future,
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::Duration,
};

use arreglame::{
    domain::Cents,
    jobs::outbox_relay::{self, Backoff, RelayHandle, RelayMetrics, RelayOptions},
    startup::Application,
    store::{insert_outbox_event, CancelledBy, Change, OutboxEvent, Settings, Store},
};
use async_nats::jetstream::{self, context::GetStreamErrorKind, stream};
use rand::Rng;
use tokio::sync::{broadcast, watch};
use uuid::Uuid;

use crate::helpers::{fresh_database, init_test_logging, new_request, test_config, CUSTOMER};

// ---------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------

fn nats_url() -> String {
    std::env::var("NATS_URL").expect(
        "NATS_URL: run the tests through scripts/test.sh (make test), which starts nats-server",
    )
}

/// Options with a stream and subjects of this test's own, and short backoffs.
fn test_options(nats_url: Option<String>) -> RelayOptions {
    let tag = Uuid::new_v4().simple().to_string();
    RelayOptions {
        stream: format!("OUTBOX_TEST_{tag}"),
        subject_prefix: format!("outboxtest.{tag}"),
        event_retry: Backoff {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(200),
        },
        outage_retry: Backoff {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(300),
        },
        ack_timeout: Duration::from_secs(2),
        ..RelayOptions::new(nats_url)
    }
}

fn test_settings(batch_size: i64, max_attempts: i32) -> Settings {
    Settings {
        outbox_batch_size: batch_size,
        outbox_max_attempts: max_attempts,
        ..Settings::default()
    }
}

/// A relay with its own shutdown and settings senders (kept alive with it).
struct TestRelay {
    handle: RelayHandle,
    shutdown: watch::Sender<bool>,
    _settings: watch::Sender<Arc<Settings>>,
}

impl TestRelay {
    fn start(store: &Store, options: RelayOptions, settings: Settings) -> TestRelay {
        init_test_logging();
        let (settings_tx, settings_rx) = watch::channel(Arc::new(settings));
        let (shutdown, shutdown_rx) = watch::channel(false);
        let handle = outbox_relay::spawn_with(store.clone(), settings_rx, options, shutdown_rx);
        TestRelay {
            handle,
            shutdown,
            _settings: settings_tx,
        }
    }

    async fn metrics(&self) -> RelayMetrics {
        self.handle.metrics().await
    }

    /// Metrics once `ready` holds: the counters move just after a batch's commit, so they
    /// may trail what the table already shows.
    async fn metrics_when(&self, ready: impl Fn(&RelayMetrics) -> bool) -> RelayMetrics {
        wait_until("the relay's counters to catch up", || async {
            ready(&self.metrics().await)
        })
        .await;
        self.metrics().await
    }

    async fn stop(self) {
        let _ = self.shutdown.send(true);
        stopped(&self.handle).await;
    }
}

async fn stopped(relay: &RelayHandle) {
    tokio::time::timeout(Duration::from_secs(30), relay.stopped())
        .await
        .expect("the relay stops on shutdown");
}

/// Polls `condition` every 20 ms for up to 30 s; panics naming `what` if it never holds.
async fn wait_until<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    for _ in 0..1500 {
        if condition().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("gave up waiting for: {what}");
}

/// Waits until no row is left to relay (processed or parked, nothing else).
async fn wait_drained(store: &Store) {
    wait_until("every outbox row processed or parked", || async {
        unrelayed(store).await == 0
    })
    .await;
}

async fn unrelayed(store: &Store) -> i64 {
    sqlx::query_scalar(
        r#"select count(*) from outbox_events where processed = false and "parkedAt" is null"#,
    )
    .fetch_one(store.pool())
    .await
    .unwrap()
}

/// (id, type, processed) of every outbox row, by id.
async fn table_rows(store: &Store) -> Vec<(i64, String, bool)> {
    sqlx::query_as("select id, type, processed from outbox_events order by id")
        .fetch_all(store.pool())
        .await
        .unwrap()
}

/// One message of the stream: its subject, its `Nats-Msg-Id`, and its body.
#[derive(Debug)]
struct StreamMessage {
    subject: String,
    msg_id: i64,
    body: serde_json::Value,
}

async fn jetstream_at(url: &str) -> jetstream::Context {
    jetstream::new(async_nats::connect(url).await.expect("connect to NATS"))
}

/// Every message in the stream, in stream order.
async fn stream_messages(js: &jetstream::Context, name: &str) -> Vec<StreamMessage> {
    let mut stream = js
        .get_stream(name)
        .await
        .expect("the relay created the stream");
    let state = stream.info().await.unwrap().state.clone();
    let mut messages = Vec::new();
    if state.messages == 0 {
        return messages;
    }
    for seq in state.first_sequence..=state.last_sequence {
        let raw = stream.get_raw_message(seq).await.unwrap();
        let msg_id = raw
            .headers
            .get(async_nats::header::NATS_MESSAGE_ID)
            .expect("every message carries Nats-Msg-Id")
            .as_str()
            .parse()
            .expect("Nats-Msg-Id is the event id");
        messages.push(StreamMessage {
            subject: raw.subject.to_string(),
            msg_id,
            body: serde_json::from_slice(&raw.payload).expect("the body is JSON"),
        });
    }
    messages
}

/// The stream holds each of `ids` exactly once, on `<prefix>.<type>`, and nothing else.
fn assert_exactly_once(
    messages: &[StreamMessage],
    rows: &[(i64, String, bool)],
    ids: &BTreeSet<i64>,
    prefix: &str,
) {
    let mut seen: BTreeMap<i64, usize> = BTreeMap::new();
    for m in messages {
        *seen.entry(m.msg_id).or_default() += 1;
        assert_eq!(
            m.body["id"], m.msg_id,
            "body and Nats-Msg-Id name the same event"
        );
        let (_, event_type, _) = rows
            .iter()
            .find(|(id, _, _)| *id == m.msg_id)
            .unwrap_or_else(|| panic!("message {} has no outbox row", m.msg_id));
        assert_eq!(m.subject, format!("{prefix}.{event_type}"));
        assert_eq!(m.body["type"], event_type.as_str());
    }
    let repeated: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        repeated.is_empty(),
        "events published more than once: {repeated:?}"
    );
    let published: BTreeSet<i64> = seen.keys().copied().collect();
    assert_eq!(
        &published, ids,
        "the stream holds exactly the expected events"
    );
}

/// The first `n` events the subscriber is handed (the relay hands them over just after
/// its commit, so they may trail the table by a moment). Panics after 30 s without one.
async fn receive(
    subscriber: &mut broadcast::Receiver<Arc<OutboxEvent>>,
    n: usize,
) -> Vec<Arc<OutboxEvent>> {
    let mut events = Vec::with_capacity(n);
    while events.len() < n {
        match tokio::time::timeout(Duration::from_secs(30), subscriber.recv()).await {
            Ok(Ok(event)) => events.push(event),
            Ok(Err(e)) => panic!("subscriber: {e}"),
            Err(_) => panic!("subscriber got {} of {n} events", events.len()),
        }
    }
    events
}

async fn create_requests(store: &Store, n: usize) -> Vec<arreglame::store::ServiceRequest> {
    let mut rows = Vec::with_capacity(n);
    for i in 0..n {
        let lon = -58.38 + (i % 10) as f64 * 0.001;
        let (row, created) = store
            .create_request(&new_request(CUSTOMER, lon, -34.60))
            .await
            .unwrap();
        assert!(created);
        rows.push(row);
    }
    rows
}

/// Writes one outbox row of `event_type` in its own transaction, as a transition would.
async fn write_event(store: &Store, event_type: &str, payload: serde_json::Value) -> i64 {
    let mut tx = store.pool().begin().await.unwrap();
    let id = insert_outbox_event(
        &mut tx,
        "test",
        &Uuid::new_v4().to_string(),
        1,
        event_type,
        &payload,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    store.outbox_written();
    id
}

/// A `nats-server -js` of the test's own, on a free port with its own store directory,
/// that the test can kill and start again. Killed and cleaned up on drop.
struct OwnNats {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl OwnNats {
    /// Picks the port and directory without starting the server.
    fn reserve() -> OwnNats {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dir = std::env::temp_dir().join(format!("arreglame-nats-{}", Uuid::new_v4()));
        OwnNats {
            port,
            dir,
            child: None,
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    async fn start(&mut self) {
        let child = Command::new("nats-server")
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server on PATH (scripts/dev-env.sh installs it)");
        self.child = Some(child);
        let url = self.url();
        wait_until("our nats-server answers JetStream requests", || async {
            // Any JetStream answer will do, "stream not found" included.
            let Ok(client) = async_nats::connect(&url).await else {
                return false;
            };
            match jetstream::new(client).get_stream("READINESS_PROBE").await {
                Ok(_) => true,
                Err(e) => matches!(e.kind(), GetStreamErrorKind::JetStream(_)),
            }
        })
        .await;
    }

    /// SIGKILL, as a crashed broker.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnNats {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn every_committed_transition_reaches_the_stream_exactly_once() {
    let store = Store::connect(&fresh_database().await, 8).await.unwrap();
    let options = test_options(Some(nats_url()));
    let (stream_name, prefix) = (options.stream.clone(), options.subject_prefix.clone());
    let relay = TestRelay::start(&store, options, test_settings(25, 3));
    let mut subscriber = relay.handle.subscribe();

    // Three kinds of transition: created (120), cancelled (40), gave up (40).
    let requests = create_requests(&store, 120).await;
    for r in &requests[..40] {
        let change = Change::Cancelled {
            by: CancelledBy::Customer,
            reason: Some("changed my mind".into()),
            fee: Cents(0),
        };
        store.transition(r, change).await.unwrap();
    }
    for r in &requests[40..80] {
        let change = Change::GaveUp {
            reason: "nobody nearby".into(),
        };
        store.transition(r, change).await.unwrap();
    }
    wait_drained(&store).await;

    let rows = table_rows(&store).await;
    assert_eq!(rows.len(), 200);
    assert!(rows.iter().all(|(_, _, processed)| *processed));
    let ids: BTreeSet<i64> = rows.iter().map(|(id, _, _)| *id).collect();
    let js = jetstream_at(&nats_url()).await;
    assert_exactly_once(
        &stream_messages(&js, &stream_name).await,
        &rows,
        &ids,
        &prefix,
    );

    // In-process subscribers got the same events once each; the writes were sequential,
    // so commit order is id order and so is delivery.
    let handed: Vec<i64> = receive(&mut subscriber, ids.len())
        .await
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(handed, ids.iter().copied().collect::<Vec<_>>());

    let m = relay.metrics().await;
    assert_eq!((m.backlog, m.parked, m.published), (0, 0, 200));
    assert_eq!((m.duplicates, m.failures), (0, 0));
    assert_eq!(m.broker_connected, Some(true));
    relay.stop().await;
    js.delete_stream(&stream_name).await.unwrap();
}

/// The crash window: the broker acked, the mark never committed. A trigger makes the mark
/// fail, which leaves the database exactly as a killed engine would (its transaction
/// rolled back after the publish); then a new relay takes over.
#[tokio::test]
async fn republish_after_a_crash_between_publish_and_mark_is_deduplicated_by_the_broker() {
    let url = fresh_database().await;
    let store = Store::connect(&url, 8).await.unwrap();
    sqlx::raw_sql(
        r#"create function refuse_outbox_mark() returns trigger language plpgsql as $$
           begin
               if new.processed then raise exception 'engine killed before the mark'; end if;
               return new;
           end $$;
           create trigger refuse_outbox_mark before update on outbox_events
               for each row execute function refuse_outbox_mark();"#,
    )
    .execute(store.pool())
    .await
    .unwrap();
    create_requests(&store, 30).await;

    let options = test_options(Some(nats_url()));
    let (stream_name, prefix) = (options.stream.clone(), options.subject_prefix.clone());
    let first = TestRelay::start(&store, options.clone(), test_settings(100, 3));
    let js = jetstream_at(&nats_url()).await;
    wait_until(
        "the first relay published all 30 and failed to mark them",
        || async {
            let published = match js.get_stream(&stream_name).await {
                Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
                Err(_) => 0,
            };
            published == 30 && first.metrics().await.outages >= 2
        },
    )
    .await;
    assert_eq!(unrelayed(&store).await, 30, "nothing was marked");
    first.stop().await;

    sqlx::query("drop trigger refuse_outbox_mark on outbox_events")
        .execute(store.pool())
        .await
        .unwrap();
    let restarted_store = Store::connect(&url, 8).await.unwrap();
    let second = TestRelay::start(&restarted_store, options, test_settings(100, 3));
    wait_drained(&store).await;

    let rows = table_rows(&store).await;
    assert!(rows.iter().all(|(_, _, processed)| *processed));
    let ids: BTreeSet<i64> = rows.iter().map(|(id, _, _)| *id).collect();
    assert_exactly_once(
        &stream_messages(&js, &stream_name).await,
        &rows,
        &ids,
        &prefix,
    );
    let m = second.metrics_when(|m| m.published >= 30).await;
    assert_eq!(m.published, 30);
    assert_eq!(
        m.duplicates, 30,
        "every re-publish was recognised by its Nats-Msg-Id"
    );
    second.stop().await;
    js.delete_stream(&stream_name).await.unwrap();
}

#[tokio::test]
async fn events_pile_up_while_nats_is_down_and_drain_when_it_is_back() {
    let mut nats = OwnNats::reserve();
    nats.start().await;
    let store = Store::connect(&fresh_database().await, 8).await.unwrap();
    let options = test_options(Some(nats.url()));
    let (stream_name, prefix) = (options.stream.clone(), options.subject_prefix.clone());
    let relay = TestRelay::start(&store, options, test_settings(50, 3));

    create_requests(&store, 20).await;
    wait_drained(&store).await;

    nats.kill();
    wait_until("the relay noticed NATS went away", || async {
        relay.metrics().await.broker_connected == Some(false)
    })
    .await;
    let outages_before = relay.metrics().await.outages;
    create_requests(&store, 25).await;
    wait_until("the relay tried while NATS was down", || async {
        relay.metrics().await.outages > outages_before + 1
    })
    .await;
    let m = relay.metrics().await;
    assert_eq!(m.backlog, 25, "the new events wait in the table");
    assert_eq!((m.parked, m.failures), (0, 0), "an outage charges no event");

    nats.start().await;
    wait_drained(&store).await;

    let rows = table_rows(&store).await;
    assert_eq!(rows.len(), 45);
    assert!(rows.iter().all(|(_, _, processed)| *processed));
    let ids: BTreeSet<i64> = rows.iter().map(|(id, _, _)| *id).collect();
    let js = jetstream_at(&nats.url()).await;
    assert_exactly_once(
        &stream_messages(&js, &stream_name).await,
        &rows,
        &ids,
        &prefix,
    );
    assert_eq!(relay.metrics().await.broker_connected, Some(true));
    relay.stop().await;
}

/// The real start-up path: `Application::build` with `NATS_URL` pointing at a NATS that is
/// not running yet returns, serves, and relays once NATS starts.
#[tokio::test]
async fn engine_starts_while_nats_is_down_and_relays_once_it_is_up() {
    let mut nats = OwnNats::reserve();
    let database_url = fresh_database().await;
    let mut config = test_config(&database_url);
    config.nats_url = Some(nats.url());
    let app = tokio::time::timeout(Duration::from_secs(30), Application::build(config))
        .await
        .expect("start-up does not wait for NATS")
        .expect("build app");
    let handle = app.handle();
    let server = tokio::spawn(app.run_until_stopped());
    let (store, relay) = (handle.state.store.clone(), handle.state.relay.clone());

    create_requests(&store, 10).await;
    wait_until("the relay tried to reach NATS", || async {
        relay.metrics().await.outages >= 2
    })
    .await;
    let m = relay.metrics().await;
    assert!(m.backlog >= 10, "{m:?}");
    assert_eq!(m.broker_connected, Some(false));
    let processed: i64 = sqlx::query_scalar("select count(*) from outbox_events where processed")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(processed, 0, "nothing is marked without the broker's ack");

    nats.start().await;
    wait_drained(&store).await;
    let rows = table_rows(&store).await;
    let ids: BTreeSet<i64> = rows.iter().map(|(id, _, _)| *id).collect();
    let js = jetstream_at(&nats.url()).await;
    let messages = stream_messages(&js, outbox_relay::DEFAULT_STREAM).await;
    assert_exactly_once(&messages, &rows, &ids, outbox_relay::DEFAULT_SUBJECT_PREFIX);

    handle.shutdown();
    server.await.unwrap().unwrap();
    stopped(&relay).await;
}

/// Rows whose transactions commit out of id order are never skipped: one writer holds a
/// low id open until the relay has relayed higher ids, while 32 writers commit after
/// random delays.
#[tokio::test]
async fn thirty_two_concurrent_writers_with_random_commit_delays_lose_no_row() {
    const WRITERS: usize = 32;
    const EACH: usize = 25;
    let store = Store::connect(&fresh_database().await, 48).await.unwrap();
    let options = test_options(Some(nats_url()));
    let (stream_name, prefix) = (options.stream.clone(), options.subject_prefix.clone());
    let relay = TestRelay::start(&store, options, test_settings(40, 3));
    let mut subscriber = relay.handle.subscribe();

    let mut held = store.pool().begin().await.unwrap();
    let held_id = insert_outbox_event(
        &mut held,
        "test",
        "held-open",
        1,
        "HeldOpen",
        &serde_json::json!({}),
    )
    .await
    .unwrap();

    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..EACH {
                    let mut tx = store.pool().begin().await.unwrap();
                    insert_outbox_event(
                        &mut tx,
                        "test",
                        &format!("writer-{w}-{i}"),
                        1,
                        "WriterEvent",
                        &serde_json::json!({ "writer": w, "seq": i }),
                    )
                    .await
                    .unwrap();
                    // The fault being injected: a commit that comes late.
                    let delay = rand::thread_rng().gen_range(0..15);
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                    tx.commit().await.unwrap();
                    store.outbox_written();
                }
            })
        })
        .collect();

    wait_until("the relay relayed rows above the open one", || async {
        sqlx::query_scalar::<_, bool>(
            "select exists (select 1 from outbox_events where processed and id > $1)",
        )
        .bind(held_id)
        .fetch_one(store.pool())
        .await
        .unwrap()
    })
    .await;
    held.commit().await.unwrap();
    store.outbox_written();
    for w in writers {
        w.await.unwrap();
    }
    wait_drained(&store).await;

    let rows = table_rows(&store).await;
    assert_eq!(rows.len(), WRITERS * EACH + 1);
    assert!(
        rows.iter().all(|(_, _, processed)| *processed),
        "no row left behind"
    );
    let ids: BTreeSet<i64> = rows.iter().map(|(id, _, _)| *id).collect();
    let js = jetstream_at(&nats_url()).await;
    assert_exactly_once(
        &stream_messages(&js, &stream_name).await,
        &rows,
        &ids,
        &prefix,
    );

    let handed = receive(&mut subscriber, ids.len()).await;
    let handed_ids: BTreeSet<i64> = handed.iter().map(|e| e.id).collect();
    assert_eq!(handed_ids, ids);
    assert_eq!(
        relay.metrics().await.published,
        ids.len() as u64,
        "each event handed over once"
    );
    let held_at = handed.iter().position(|e| e.id == held_id).unwrap();
    assert!(
        handed[..held_at].iter().any(|e| e.id > held_id),
        "the late row was relayed after higher ids, not skipped"
    );
    relay.stop().await;
    js.delete_stream(&stream_name).await.unwrap();
}

/// Three poison events ahead of the rest: a subject no stream captures (the broker has
/// no responder), a body over the stream's size limit (the broker answers with an
/// error), a type that is not a subject token (refused before sending).
#[tokio::test]
async fn a_refused_event_is_parked_after_max_attempts_and_the_rest_flow() {
    let store = Store::connect(&fresh_database().await, 8).await.unwrap();
    let options = test_options(Some(nats_url()));
    let (stream_name, prefix) = (options.stream.clone(), options.subject_prefix.clone());
    let js = jetstream_at(&nats_url()).await;
    js.create_stream(stream::Config {
        name: stream_name.clone(),
        subjects: vec![
            format!("{prefix}.ServiceRequestCreated"),
            format!("{prefix}.Oversized"),
        ],
        max_message_size: 2048,
        ..Default::default()
    })
    .await
    .unwrap();

    let unroutable = write_event(&store, "Unroutable", serde_json::json!({})).await;
    let blob = "x".repeat(4096);
    let oversized = write_event(&store, "Oversized", serde_json::json!({ "blob": blob })).await;
    let invalid = write_event(&store, "not a subject", serde_json::json!({})).await;
    create_requests(&store, 20).await;

    let relay = TestRelay::start(&store, options, test_settings(5, 3));
    wait_drained(&store).await;

    let parked: Vec<(i64, i32, bool, Option<String>)> = sqlx::query_as(
        r#"select id, attempts, processed, "lastError" from outbox_events
           where "parkedAt" is not null order by id"#,
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    let ids: Vec<i64> = parked.iter().map(|p| p.0).collect();
    assert_eq!(ids, vec![unroutable, oversized, invalid]);
    for (id, attempts, processed, error) in &parked {
        assert_eq!((*attempts, *processed), (3, false), "event {id}");
        assert!(
            error.as_deref().is_some_and(|e| !e.is_empty()),
            "event {id} says why"
        );
    }
    let error_of = |id: i64| {
        parked
            .iter()
            .find(|p| p.0 == id)
            .unwrap()
            .3
            .clone()
            .unwrap()
    };
    assert!(error_of(unroutable).contains("no JetStream stream captures"));
    assert!(
        error_of(oversized).contains("maximum"),
        "{}",
        error_of(oversized)
    );
    assert!(error_of(invalid).contains("not a valid NATS subject token"));

    // The operators' query tells the truth.
    let by_type: Vec<(String, bool, i64)> = sqlx::query_as(
        "select type, processed, count(*) from outbox_events group by type, processed order by type",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(
        by_type,
        vec![
            ("Oversized".into(), false, 1),
            ("ServiceRequestCreated".into(), true, 20),
            ("Unroutable".into(), false, 1),
            ("not a subject".into(), false, 1),
        ]
    );

    let rows = table_rows(&store).await;
    let delivered: BTreeSet<i64> = rows.iter().filter(|r| r.2).map(|r| r.0).collect();
    assert_exactly_once(
        &stream_messages(&js, &stream_name).await,
        &rows,
        &delivered,
        &prefix,
    );
    let m = relay
        .metrics_when(|m| m.published >= 20 && m.parked_total >= 3)
        .await;
    assert_eq!((m.backlog, m.parked, m.parked_total), (0, 3, 3));
    assert_eq!((m.published, m.failures), (20, 9));
    relay.stop().await;
    js.delete_stream(&stream_name).await.unwrap();
}

#[tokio::test]
async fn without_nats_the_in_process_handoff_marks_events_processed() {
    let store = Store::connect(&fresh_database().await, 8).await.unwrap();
    let relay = TestRelay::start(&store, test_options(None), test_settings(4, 3));
    let mut subscriber = relay.handle.subscribe();

    create_requests(&store, 15).await;
    wait_drained(&store).await;

    let rows = table_rows(&store).await;
    assert!(rows.iter().all(|(_, _, processed)| *processed));
    let ids: Vec<i64> = rows.iter().map(|r| r.0).collect();
    let handed = receive(&mut subscriber, ids.len()).await;
    let handed_ids: Vec<i64> = handed.iter().map(|e| e.id).collect();
    assert_eq!(handed_ids, ids);
    assert!(handed
        .iter()
        .all(|e| e.processed && e.event_type == "ServiceRequestCreated"));
    let m = relay.metrics().await;
    assert_eq!((m.published, m.backlog, m.broker_connected), (15, 0, None));
    relay.stop().await;
}

/// Another engine's commit reaches this relay only through NOTIFY: the writer has its own
/// `Store` (its local signal wakes nobody here) and the safety poll is an hour.
#[tokio::test]
async fn another_engines_commits_wake_the_relay_through_listen() {
    let url = fresh_database().await;
    let relay_store = Store::connect(&url, 4).await.unwrap();
    let other_engine = Store::connect(&url, 4).await.unwrap();
    let options = RelayOptions {
        safety_poll: Duration::from_secs(3600),
        ..test_options(None)
    };
    let relay = TestRelay::start(&relay_store, options, test_settings(50, 3));
    let mut subscriber = relay.handle.subscribe();

    // One at a time: the relay's first round and the listener's connect wake-up can each
    // carry at most one of them; the third needs a notification.
    for _ in 0..3 {
        create_requests(&other_engine, 1).await;
        wait_drained(&other_engine).await;
    }
    let handed = receive(&mut subscriber, 3).await;
    let rows = table_rows(&other_engine).await;
    assert_eq!(
        handed.iter().map(|e| e.id).collect::<Vec<_>>(),
        rows.iter().map(|r| r.0).collect::<Vec<_>>()
    );
    relay.stop().await;
}

/// A row inserted without any wake-up (by hand, or by the system being replaced) is found
/// by the safety poll.
#[tokio::test]
async fn rows_written_without_a_notification_are_found_by_the_safety_poll() {
    let store = Store::connect(&fresh_database().await, 4).await.unwrap();
    let options = RelayOptions {
        safety_poll: Duration::from_millis(200),
        ..test_options(None)
    };
    let relay = TestRelay::start(&store, options, test_settings(50, 3));

    // One at a time, as above: the third is found by the poll alone.
    for version in 1..=3 {
        sqlx::query(
            r#"insert into outbox_events ("aggregateType", "aggregateId", "aggregateVersion", type, payload)
               values ('legacy', 'by-hand', $1, 'InsertedByHand', '{}')"#,
        )
        .bind(version)
        .execute(store.pool())
        .await
        .unwrap();
        wait_drained(&store).await;
    }
    let m = relay.metrics_when(|m| m.published >= 3).await;
    assert_eq!(m.published, 3);
    relay.stop().await;
}
