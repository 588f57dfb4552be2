//! Issue 4: the worker WebSocket gateway, driven by real tokio-tungstenite clients against
//! the whole engine on a loopback port. Limits that would make a test slow (auth deadline,
//! heartbeat, reconnect grace) are shortened through `Sessions::set_limits` before the
//! client connects; nothing asserts on how long anything took.

use std::{collections::VecDeque, time::Duration};

use arreglame::{
    auth::{unix_now, Claims, Role},
    dispatch::gateway::{OfferNotice, WorkerGateway, WorkerNotice},
    gateway::{Limits, Rate},
    startup::Application,
};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::{
    connect_async,
    tungstenite::{protocol::CloseFrame, Message},
    MaybeTlsStream, WebSocketStream,
};
use uuid::Uuid;

use crate::helpers::*;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A worker app: a real WebSocket client plus the frames it has read but not yet looked at
/// (the cluster suite drives one against each node too).
pub(crate) struct WorkerApp {
    pub(crate) id: Uuid,
    ws: Ws,
    inbox: VecDeque<Value>,
    next_id: u32,
}

fn ws_url(app: &TestApp) -> String {
    format!("{}/ws/worker", app.address.replace("http://", "ws://"))
}

async fn raw_connect(app: &TestApp) -> Ws {
    let (ws, _) = connect_async(ws_url(app)).await.expect("websocket upgrade");
    ws
}

fn auth_frame(token: &str, last_seq: u64) -> Message {
    Message::text(json!({"v": 1, "type": "auth", "id": "auth", "data": {"token": token, "lastSeq": last_seq}}).to_string())
}

impl WorkerApp {
    /// Connects and authenticates; answers the client and its `auth_ok` data.
    pub(crate) async fn connect(app: &TestApp, worker: Uuid, last_seq: u64) -> (WorkerApp, Value) {
        let mut ws = raw_connect(app).await;
        let token = app.token_for(Role::Worker, worker, Duration::from_secs(3600));
        ws.send(auth_frame(&token, last_seq)).await.unwrap();
        let mut client = WorkerApp {
            id: worker,
            ws,
            inbox: VecDeque::new(),
            next_id: 0,
        };
        let first = client.read().await;
        assert_eq!(first["type"], "auth_ok", "{first}");
        assert_eq!(first["replyTo"], "auth");
        (client, first["data"].clone())
    }

    /// A new worker profile, connected and online at (lon, lat).
    pub(crate) async fn online(app: &TestApp, lon: f64, lat: f64) -> WorkerApp {
        let id = insert_worker(app.store(), "buenos-aires").await;
        let (mut client, _) = WorkerApp::connect(app, id, 0).await;
        let reply = client
            .call(
                "go_online",
                json!({"lat": lat, "lon": lon, "skills": ["lawn_mowing"]}),
            )
            .await;
        assert_eq!(ok(&reply)["cityId"], "buenos-aires");
        client
    }

    /// The next text frame from the socket.
    pub(crate) async fn read(&mut self) -> Value {
        loop {
            let message = tokio::time::timeout(PATIENCE, self.ws.next())
                .await
                .expect("a frame in time")
                .expect("stream open")
                .expect("no transport error");
            match message {
                Message::Text(text) => return serde_json::from_str(text.as_str()).unwrap(),
                Message::Close(frame) => panic!("closed by the engine: {frame:?}"),
                _ => continue,
            }
        }
    }

    async fn send_raw(&mut self, message: Message) {
        self.ws.send(message).await.unwrap();
    }

    /// Sends a message with a fresh id; returns the id.
    pub(crate) async fn send(&mut self, kind: &str, data: Value) -> String {
        self.next_id += 1;
        let id = format!("{kind}-{}", self.next_id);
        let frame = json!({"v": 1, "type": kind, "id": id, "data": data});
        self.send_raw(Message::text(frame.to_string())).await;
        id
    }

    /// The frame answering `id`; pushes read meanwhile are kept for later.
    pub(crate) async fn reply_to(&mut self, id: &str) -> Value {
        if let Some(i) = self.inbox.iter().position(|f| f["replyTo"] == id) {
            return self.inbox.remove(i).unwrap();
        }
        loop {
            let frame = self.read().await;
            if frame["replyTo"] == id {
                return frame;
            }
            self.inbox.push_back(frame);
        }
    }

    pub(crate) async fn call(&mut self, kind: &str, data: Value) -> Value {
        let id = self.send(kind, data).await;
        self.reply_to(&id).await
    }

    /// The next pushed frame of this type (answers and other pushes are kept).
    pub(crate) async fn push(&mut self, kind: &str) -> Value {
        if let Some(i) = self
            .inbox
            .iter()
            .position(|f| f["type"] == kind && f.get("replyTo").is_none())
        {
            return self.inbox.remove(i).unwrap();
        }
        loop {
            let frame = self.read().await;
            if frame["type"] == kind && frame.get("replyTo").is_none() {
                return frame;
            }
            self.inbox.push_back(frame);
        }
    }

    /// Pings until an offer arrives, so a short heartbeat timeout cannot end the session
    /// while the test waits for dispatch.
    pub(crate) async fn offer_while_pinging(&mut self) -> Value {
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            assert!(
                std::time::Instant::now() < deadline,
                "no offer within {PATIENCE:?}"
            );
            if let Some(i) = self.inbox.iter().position(|f| f["type"] == "offer") {
                return self.inbox.remove(i).unwrap();
            }
            let pong = self.call("ping", Value::Null).await;
            assert_eq!(pong["type"], "pong");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Reads until the engine's close frame; answers its code and reason.
    async fn closed(&mut self) -> (u16, String) {
        closed(&mut self.ws).await
    }
}

async fn closed(ws: &mut Ws) -> (u16, String) {
    loop {
        let next = tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("the engine closes in time");
        match next {
            Some(Ok(Message::Close(Some(CloseFrame { code, reason })))) => {
                return (u16::from(code), reason.as_str().to_string())
            }
            Some(Ok(Message::Close(None))) => panic!("closed without a code"),
            Some(Ok(_)) => continue,
            other => panic!("connection ended without a close frame: {other:?}"),
        }
    }
}

pub(crate) fn ok(frame: &Value) -> &Value {
    assert_eq!(frame["type"], "ok", "expected ok, got {frame}");
    &frame["data"]
}

fn error_code(frame: &Value) -> &str {
    assert_eq!(frame["type"], "error", "expected an error, got {frame}");
    frame["data"]["code"].as_str().unwrap()
}

fn uuid_of(v: &Value) -> Uuid {
    v.as_str().unwrap().parse().unwrap()
}

async fn create_request(app: &TestApp, lon: f64, lat: f64) -> Uuid {
    app.open_request(lon, lat).await
}

async fn offer_outcome(app: &TestApp, offer: Uuid) -> Option<String> {
    sqlx::query_scalar(r#"select outcome from offers where id = $1"#)
        .bind(offer)
        .fetch_one(app.store().pool())
        .await
        .unwrap()
}

/// Polls (without asserting on time) until the offer has an outcome.
async fn settled(app: &TestApp, offer: Uuid) -> String {
    wait_for(PATIENCE, || offer_outcome(app, offer)).await
}

/// Polls (without asserting on time) until the request reaches `wanted`; answers the last
/// status seen.
async fn status_settles(app: &TestApp, request: Uuid, wanted: &str) -> String {
    let wait = async {
        loop {
            let status = app.store().get_request(request).await.unwrap().status;
            if status.as_str() == wanted {
                return status.as_str().to_string();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    match tokio::time::timeout(PATIENCE, wait).await {
        Ok(status) => status,
        Err(_) => app
            .store()
            .get_request(request)
            .await
            .unwrap()
            .status
            .as_str()
            .to_string(),
    }
}

fn with_limits(app: &TestApp, change: impl FnOnce(&mut Limits)) {
    let mut limits = Limits::default();
    change(&mut limits);
    app.handle.state.sessions.set_limits(limits);
}

async fn spawn_app() -> TestApp {
    init_test_logging();
    TestApp::spawn().await
}

#[tokio::test]
async fn a_worker_goes_online_takes_an_offer_and_completes_the_job() {
    let app = spawn_app().await;
    let id = insert_worker(app.store(), "buenos-aires").await;
    let (mut worker, hello) = WorkerApp::connect(&app, id, 0).await;
    assert_eq!(hello["workerId"], id.to_string());
    assert_eq!(hello["onlineCity"], Value::Null);
    assert_eq!(hello["heartbeatIntervalMs"], 20_000);
    let online = worker
        .call(
            "go_online",
            json!({"lat": LAT, "lon": LON + 0.005, "skills": ["lawn_mowing"]}),
        )
        .await;
    assert_eq!(ok(&online)["cityId"], "buenos-aires");
    // A location update is answered only when refused; the pong proves it was taken.
    worker
        .send("location", json!({"lat": LAT, "lon": LON + 0.004, "accuracy": 12.5, "timestamp": chrono::Utc::now()}))
        .await;
    assert_eq!(worker.call("ping", Value::Null).await["type"], "pong");
    assert!(worker.inbox.is_empty(), "{:?}", worker.inbox);

    let request = create_request(&app, LON, LAT).await;
    let offer = worker.push("offer").await["data"].clone();
    assert_eq!(uuid_of(&offer["requestId"]), request);
    assert!(offer["seq"].as_u64().unwrap() > 0);
    let job = &offer["job"];
    assert_eq!(job["description"], "Corte de pasto");
    assert_eq!(job["squareMeters"], 100.0);
    assert_eq!(job["workerNetCents"], 1_275_000);
    assert_eq!(job["currency"], "ARS");
    assert_eq!(job["area"], "Buenos Aires");
    assert!(job["distanceMeters"].as_f64().unwrap() > 0.0);
    assert!(
        offer["expiresAt"]
            .as_str()
            .unwrap()
            .parse::<chrono::DateTime<chrono::Utc>>()
            .unwrap()
            > chrono::Utc::now()
    );
    let offer_id = uuid_of(&offer["offerId"]);

    let ack = worker.call("ack_offer", json!({"offerId": offer_id})).await;
    assert_eq!(uuid_of(&ok(&ack)["offerId"]), offer_id);
    let accepted = worker
        .call(
            "accept_offer",
            json!({"offerId": offer_id, "requestId": request, "idempotencyKey": "k-1"}),
        )
        .await;
    let accepted = ok(&accepted);
    assert_eq!(accepted["status"], "ASSIGNED");
    assert_eq!(accepted["job"]["address"], "Av. Corrientes 1234");
    let confirmed = worker.push("assignment_confirmed").await;
    assert_eq!(uuid_of(&confirmed["data"]["offerId"]), offer_id);

    let started = worker
        .call("start_job", json!({"requestId": request}))
        .await;
    assert_eq!(ok(&started)["status"], "IN_PROGRESS");
    assert_eq!(
        worker.push("job_update").await["data"]["status"],
        "IN_PROGRESS"
    );
    let completed = worker
        .call("complete_job", json!({"requestId": request}))
        .await;
    assert_eq!(ok(&completed)["status"], "COMPLETED");
    assert_eq!(
        worker.push("job_update").await["data"]["status"],
        "COMPLETED"
    );

    let payout = app
        .store()
        .payout_for_request(request)
        .await
        .unwrap()
        .expect("payout");
    assert_eq!(payout.worker_id, id);
    assert_eq!(
        offer_outcome(&app, offer_id).await.as_deref(),
        Some("ACCEPTED")
    );
}

#[tokio::test]
async fn an_unanswered_offer_times_out_and_cascades_to_the_next_worker() {
    let app = spawn_app().await;
    // 1.2 s offers; the engine picks the change up through LISTEN/NOTIFY.
    sqlx::query("update system_config set value = '0.02' where key = 'worker_timeout_minutes'")
        .execute(app.store().pool())
        .await
        .unwrap();
    let mut settings = app.handle.state.settings.clone();
    tokio::time::timeout(
        PATIENCE,
        settings.wait_for(|s| s.worker_timeout == Duration::from_millis(1200)),
    )
    .await
    .expect("settings reloaded")
    .unwrap();

    let mut near = WorkerApp::online(&app, LON + 0.002, LAT).await;
    let mut far = WorkerApp::online(&app, LON + 0.02, LAT).await;
    let request = create_request(&app, LON, LAT).await;

    let first = near.push("offer").await["data"].clone();
    assert_eq!(uuid_of(&first["requestId"]), request);
    // The near worker says nothing: its offer expires and is withdrawn…
    let withdrawn = near.push("offer_withdrawn").await["data"].clone();
    assert_eq!(withdrawn["offerId"], first["offerId"]);
    assert_eq!(withdrawn["reason"], "expired");
    // …and the next worker gets the job.
    let second = far.push("offer").await["data"].clone();
    assert_eq!(uuid_of(&second["requestId"]), request);
    assert_ne!(second["offerId"], first["offerId"]);
    assert_eq!(second["attempt"], 2);
    // Nobody else is left: the second timeout ends the request.
    assert_eq!(
        far.push("offer_withdrawn").await["data"]["offerId"],
        second["offerId"]
    );
    assert_eq!(settled(&app, uuid_of(&first["offerId"])).await, "EXPIRED");
    // The withdrawal is pushed as the request returns to PENDING; giving up follows.
    assert_eq!(
        status_settles(&app, request, "UNASSIGNED").await,
        "UNASSIGNED"
    );
}

#[tokio::test]
async fn a_dropped_connection_resumes_its_unacked_offer() {
    let app = spawn_app().await;
    let mut worker = WorkerApp::online(&app, LON + 0.002, LAT).await;
    let id = worker.id;
    let request = create_request(&app, LON, LAT).await;
    let offer = worker.push("offer").await["data"].clone();
    let seq = offer["seq"].as_u64().unwrap();

    // The phone loses its connection before acknowledging the offer.
    drop(worker);
    let (mut worker, hello) = WorkerApp::connect(&app, id, seq).await;
    assert_eq!(
        hello["onlineCity"], "buenos-aires",
        "still online within the grace"
    );
    let again = worker.push("offer").await["data"].clone();
    assert_eq!(again["offerId"], offer["offerId"]);
    assert_eq!(
        again["seq"], offer["seq"],
        "same offer, same sequence number"
    );
    ok(&worker
        .call("ack_offer", json!({"offerId": offer["offerId"]}))
        .await);

    // Acknowledged and seen: a second reconnect does not send it again (the pong, queued
    // after any resent offer, comes first).
    drop(worker);
    let (mut worker, _) = WorkerApp::connect(&app, id, seq).await;
    let pong = worker.call("ping", Value::Null).await;
    assert_eq!(pong["type"], "pong");
    assert!(
        worker.inbox.is_empty(),
        "nothing resent: {:?}",
        worker.inbox
    );

    // The offer is still the worker's to accept.
    let accepted = worker
        .call(
            "accept_offer",
            json!({"offerId": offer["offerId"], "requestId": request, "idempotencyKey": "resume"}),
        )
        .await;
    assert_eq!(ok(&accepted)["status"], "ASSIGNED");
}

#[tokio::test]
async fn a_lost_connection_that_does_not_come_back_is_taken_offline_after_the_grace() {
    let app = spawn_app().await;
    with_limits(&app, |l| l.reconnect_grace = Duration::from_millis(100));
    let mut worker = WorkerApp::online(&app, LON + 0.002, LAT).await;
    let id = worker.id;
    create_request(&app, LON, LAT).await;
    let offer = uuid_of(&worker.push("offer").await["data"]["offerId"]);
    drop(worker);
    // Settled as a timeout at once, long before its 5-minute timer.
    assert_eq!(settled(&app, offer).await, "EXPIRED");
    assert_eq!(app.handle.state.sessions.online_city(id), None);
}

#[tokio::test]
async fn accepting_another_workers_offer_or_driving_their_job_is_refused() {
    let app = spawn_app().await;
    let mut owner = WorkerApp::online(&app, LON + 0.002, LAT).await;
    let mut other = WorkerApp::online(&app, LON + 0.03, LAT).await;
    let request = create_request(&app, LON, LAT).await;
    let offer = owner.push("offer").await["data"]["offerId"].clone();

    let stolen = other
        .call(
            "accept_offer",
            json!({"offerId": offer, "requestId": request, "idempotencyKey": "steal"}),
        )
        .await;
    assert_eq!(error_code(&stolen), "NOT_YOUR_OFFER");
    assert_eq!(stolen["replyTo"], "accept_offer-2");
    let rejected = other
        .call(
            "reject_offer",
            json!({"offerId": offer, "requestId": request, "reason": "no"}),
        )
        .await;
    assert_eq!(error_code(&rejected), "NOT_YOUR_OFFER");
    // Refusals leave the session up.
    assert_eq!(other.call("ping", Value::Null).await["type"], "pong");

    let accepted = owner
        .call(
            "accept_offer",
            json!({"offerId": offer, "requestId": request, "idempotencyKey": "mine"}),
        )
        .await;
    assert_eq!(ok(&accepted)["status"], "ASSIGNED");
    let start = other.call("start_job", json!({"requestId": request})).await;
    assert_eq!(error_code(&start), "NOT_YOUR_JOB");
    let complete = other
        .call("complete_job", json!({"requestId": request}))
        .await;
    assert_eq!(error_code(&complete), "NOT_YOUR_JOB");
    assert_eq!(
        app.store()
            .get_request(request)
            .await
            .unwrap()
            .assigned_worker_id,
        Some(owner.id)
    );
}

#[tokio::test]
async fn accept_replays_the_first_answer_for_the_same_idempotency_key() {
    let app = spawn_app().await;
    let mut worker = WorkerApp::online(&app, LON + 0.002, LAT).await;
    let id = worker.id;
    let request = create_request(&app, LON, LAT).await;
    let offer = worker.push("offer").await["data"]["offerId"].clone();
    let accept = json!({"offerId": offer, "requestId": request, "idempotencyKey": "tap-1"});

    let first = worker.call("accept_offer", accept.clone()).await;
    assert_eq!(ok(&first)["status"], "ASSIGNED");
    ok(&worker
        .call("start_job", json!({"requestId": request}))
        .await);
    // The retry after a lost answer (here: on a new connection) gets the same answer,
    // although the request has moved on since.
    drop(worker);
    let (mut worker, _) = WorkerApp::connect(&app, id, 0).await;
    let replay = worker.call("accept_offer", accept).await;
    assert_eq!(replay["data"], first["data"]);
    // The key belongs to that offer.
    let reused = worker
        .call(
            "accept_offer",
            json!({"offerId": Uuid::new_v4(), "requestId": request, "idempotencyKey": "tap-1"}),
        )
        .await;
    assert_eq!(error_code(&reused), "IDEMPOTENCY_KEY_REUSED");
}

#[tokio::test]
async fn auth_must_come_first_and_in_time() {
    let app = spawn_app().await;
    with_limits(&app, |l| l.auth_timeout = Duration::from_millis(200));
    // Silence.
    let mut silent = raw_connect(&app).await;
    let (code, reason) = closed(&mut silent).await;
    assert_eq!(
        (code, reason.as_str()),
        (1008, "auth: no auth message in time")
    );
    // Anything but auth first.
    let mut eager = raw_connect(&app).await;
    eager
        .send(Message::text(r#"{"v":1,"type":"ping","id":"1"}"#))
        .await
        .unwrap();
    assert_eq!(closed(&mut eager).await.0, 1008);
    // A token in the URL is not a credential: the auth message is still required.
    let url = format!(
        "{}?token={}",
        ws_url(&app),
        app.token_for(Role::Worker, Uuid::new_v4(), Duration::from_secs(60))
    );
    let (mut in_url, _) = connect_async(url).await.unwrap();
    assert_eq!(closed(&mut in_url).await.0, 1008);
    assert_eq!(app.handle.state.sessions.stats.auth_failures.get(), 3);
}

#[tokio::test]
async fn bad_tokens_close_the_session_with_policy_violation() {
    let app = spawn_app().await;
    let worker = Uuid::new_v4();
    let keys = &app.handle.state.keys;
    let expired = {
        let claims = Claims {
            sub: worker,
            role: Role::Worker,
            iat: unix_now() - 120,
            exp: unix_now() - 60,
            nbf: None,
        };
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(b"test-secret"),
        )
        .unwrap()
    };
    let cases = [
        ("not-a-jwt".to_string(), "auth: invalid token"),
        (
            arreglame::auth::TokenKeys::new("another-secret").issue(
                Role::Worker,
                worker,
                Duration::from_secs(60),
            ),
            "auth: invalid token",
        ),
        (
            keys.issue(Role::Customer, worker, Duration::from_secs(60)),
            "auth: not a worker token",
        ),
        (expired, "auth: token expired"),
    ];
    for (token, expected) in cases {
        let mut ws = raw_connect(&app).await;
        ws.send(auth_frame(&token, 0)).await.unwrap();
        assert_eq!(closed(&mut ws).await, (1008, expected.to_string()));
    }
    assert!(!app.handle.state.sessions.is_connected(worker));
}

#[tokio::test]
async fn a_token_that_expires_mid_session_closes_it() {
    let app = spawn_app().await;
    let worker = insert_worker(app.store(), "buenos-aires").await;
    let mut ws = raw_connect(&app).await;
    ws.send(auth_frame(
        &app.token_for(Role::Worker, worker, Duration::from_secs(1)),
        0,
    ))
    .await
    .unwrap();
    assert_eq!(closed(&mut ws).await, (4003, "token expired".to_string()));
}

#[tokio::test]
async fn bad_input_gets_typed_errors_and_the_session_stays_up() {
    let app = spawn_app().await;
    let id = insert_worker(app.store(), "buenos-aires").await;
    let (mut worker, _) = WorkerApp::connect(&app, id, 0).await;
    let now = chrono::Utc::now();
    let text = |v: Value| Message::text(v.to_string());
    let before_online = [(
        text(
            json!({"v":1,"type":"location","id":"early","data":{"lat":LAT,"lon":LON,"timestamp":now}}),
        ),
        "NOT_ONLINE",
        Some("early"),
    )];
    let after_online = [
        (Message::text("{not json"), "MALFORMED_JSON", None),
        (Message::text("[1,2,3]"), "INVALID_ENVELOPE", None),
        (
            text(json!({"v":2,"type":"ping","id":"v2"})),
            "UNSUPPORTED_VERSION",
            Some("v2"),
        ),
        (
            text(json!({"v":1,"type":"teleport","id":"t"})),
            "UNKNOWN_TYPE",
            Some("t"),
        ),
        (
            text(json!({"v":1,"type":"go_online","id":"m","data":{"lat":LAT}})),
            "INVALID_MESSAGE",
            Some("m"),
        ),
        (
            text(
                json!({"v":1,"type":"go_online","id":"r","data":{"lat":91,"lon":LON,"skills":[]}}),
            ),
            "INVALID_COORDINATES",
            Some("r"),
        ),
        (
            text(json!({"v":1,"type":"go_online","id":"z","data":{"lat":0,"lon":0,"skills":[]}})),
            "OUTSIDE_SERVICE_AREA",
            Some("z"),
        ),
        (
            text(
                json!({"v":1,"type":"location","id":"l1","data":{"lat":-100,"lon":LON,"timestamp":now}}),
            ),
            "INVALID_COORDINATES",
            Some("l1"),
        ),
        // Inside no city polygon of ours, but a real place: Mar del Plata.
        (
            text(
                json!({"v":1,"type":"location","id":"l2","data":{"lat":-38.0,"lon":-57.55,"timestamp":now}}),
            ),
            "OUTSIDE_SERVICE_AREA",
            Some("l2"),
        ),
        (
            Message::binary(vec![1u8, 2, 3]),
            "BINARY_NOT_SUPPORTED",
            None,
        ),
        (
            Message::text(format!(
                r#"{{"v":1,"type":"ping","id":"big","pad":"{}"}}"#,
                "x".repeat(5_000)
            )),
            "MESSAGE_TOO_LARGE",
            // The id of a frame over the message limit (but under the transport's) is read.
            Some("big"),
        ),
        (
            text(json!({"v":1,"type":"ack_offer","id":"a","data":{"offerId":Uuid::new_v4()}})),
            "OFFER_NOT_PENDING",
            Some("a"),
        ),
        (
            text(
                json!({"v":1,"type":"accept_offer","id":"k","data":{"offerId":Uuid::new_v4(),"requestId":Uuid::new_v4(),"idempotencyKey":""}}),
            ),
            "INVALID_MESSAGE",
            Some("k"),
        ),
        (
            text(
                json!({"v":1,"type":"accept_offer","id":"n","data":{"offerId":Uuid::new_v4(),"requestId":Uuid::new_v4(),"idempotencyKey":"x"}}),
            ),
            "NOT_FOUND",
            Some("n"),
        ),
        (
            text(json!({"v":1,"type":"start_job","id":"s","data":{"requestId":Uuid::new_v4()}})),
            "NOT_FOUND",
            Some("s"),
        ),
        (
            text(json!({"v":1,"type":"complete_job","id":"c","data":{"requestId":"not-a-uuid"}})),
            "INVALID_MESSAGE",
            Some("c"),
        ),
    ];
    expect_errors(&mut worker, before_online.into()).await;
    ok(&worker
        .call(
            "go_online",
            json!({"lat": LAT, "lon": LON, "skills": ["lawn_mowing"]}),
        )
        .await);
    expect_errors(&mut worker, after_online.into()).await;
    // Still up, still online.
    assert_eq!(worker.call("ping", Value::Null).await["type"], "pong");
    assert_eq!(
        app.handle.state.sessions.online_city(id).as_deref(),
        Some("buenos-aires")
    );
}

/// Sends each message and expects an error frame with this code, answering this id.
async fn expect_errors(worker: &mut WorkerApp, cases: Vec<(Message, &str, Option<&str>)>) {
    for (message, code, reply_to) in cases {
        let shown = format!("{message:?}").chars().take(120).collect::<String>();
        worker.send_raw(message).await;
        let answer = worker.read().await;
        assert_eq!(error_code(&answer), code, "{shown}");
        assert_eq!(answer["replyTo"].as_str(), reply_to, "{shown}");
        assert!(!answer["data"]["message"].as_str().unwrap().is_empty());
    }
}

#[tokio::test]
async fn a_frame_beyond_the_transport_limit_closes_with_1009() {
    let app = spawn_app().await;
    let id = insert_worker(app.store(), "buenos-aires").await;
    let (mut worker, _) = WorkerApp::connect(&app, id, 0).await;
    worker
        .send_raw(Message::text(
            "x".repeat(Limits::default().max_frame_bytes + 1),
        ))
        .await;
    assert_eq!(worker.closed().await.0, 1009);
}

#[tokio::test]
async fn location_updates_are_rate_limited_and_message_floods_close_the_session() {
    let app = spawn_app().await;
    with_limits(&app, |l| {
        // No refill within the test: the burst is all there is.
        l.location_rate = Rate {
            per_second: 0.0001,
            burst: 2,
        }
    });
    let mut worker = WorkerApp::online(&app, LON, LAT).await;
    let fix = |i: i64| json!({"lat": LAT, "lon": LON, "timestamp": chrono::Utc::now() + chrono::Duration::milliseconds(i)});
    worker.send("location", fix(1)).await;
    worker.send("location", fix(2)).await;
    let third = worker.send("location", fix(3)).await;
    let refused = worker.reply_to(&third).await;
    assert_eq!(error_code(&refused), "RATE_LIMITED");
    assert_eq!(worker.call("ping", Value::Null).await["type"], "pong");
    assert!(
        worker.inbox.is_empty(),
        "the first two were taken: {:?}",
        worker.inbox
    );

    with_limits(&app, |l| {
        l.message_rate = Rate {
            per_second: 0.0001,
            burst: 10,
        }
    });
    let id = insert_worker(app.store(), "buenos-aires").await;
    let (mut flooder, _) = WorkerApp::connect(&app, id, 0).await;
    for _ in 0..20 {
        if flooder
            .ws
            .send(Message::text(r#"{"v":1,"type":"ping"}"#))
            .await
            .is_err()
        {
            break;
        }
    }
    assert_eq!(
        flooder.closed().await,
        (1008, "message rate limit exceeded".to_string())
    );
}

#[tokio::test]
async fn a_second_connection_takes_over_and_the_first_is_closed_with_4001() {
    let app = spawn_app().await;
    let mut phone = WorkerApp::online(&app, LON, LAT).await;
    let (mut tablet, hello) = WorkerApp::connect(&app, phone.id, 0).await;
    assert_eq!(hello["onlineCity"], "buenos-aires", "presence carries over");
    assert_eq!(
        phone.closed().await,
        (4001, "replaced by a newer connection".to_string())
    );
    assert_eq!(tablet.call("ping", Value::Null).await["type"], "pong");
    // The replaced connection did not take the worker offline.
    assert_eq!(
        app.handle.state.sessions.online_city(phone.id).as_deref(),
        Some("buenos-aires")
    );
    assert_eq!(app.handle.state.sessions.stats.takeovers.get(), 1);
}

#[tokio::test]
async fn a_silent_worker_is_disconnected_and_its_offer_settled_as_a_timeout() {
    let app = spawn_app().await;
    with_limits(&app, |l| l.heartbeat_timeout = Duration::from_secs(1));
    let mut worker = WorkerApp::online(&app, LON + 0.002, LAT).await;
    let request = create_request(&app, LON, LAT).await;
    let offer = uuid_of(&worker.offer_while_pinging().await["data"]["offerId"]);
    // The app stops sending anything (it keeps reading, to see the close).
    assert_eq!(
        worker.closed().await,
        (4002, "heartbeat timeout".to_string())
    );
    assert_eq!(settled(&app, offer).await, "EXPIRED");
    assert_eq!(app.handle.state.sessions.online_city(worker.id), None);
    let row = app.store().get_request(request).await.unwrap();
    assert_ne!(row.assigned_worker_id, Some(worker.id));
}

#[tokio::test]
async fn a_worker_that_stops_reading_is_disconnected_and_its_offer_settled_as_a_timeout() {
    let app = spawn_app().await;
    with_limits(&app, |l| {
        l.send_queue = 4;
        l.write_timeout = Duration::from_millis(500);
    });
    let mut worker = WorkerApp::online(&app, LON + 0.002, LAT).await;
    let request = create_request(&app, LON, LAT).await;
    let offer = uuid_of(&worker.push("offer").await["data"]["offerId"]);

    // The app stops reading; the engine keeps having things to say (large notices fill the
    // socket buffers quickly).
    let sessions = &app.handle.state.sessions;
    let big = OfferNotice {
        offer_id: Uuid::new_v4(),
        request_id: Uuid::new_v4(),
        worker_id: worker.id,
        attempt: 1,
        expires_at: chrono::Utc::now() + chrono::Duration::minutes(5),
        description: "x".repeat(32 * 1024),
        square_meters: 1.0,
        worker_net_cents: 1,
        currency: "ARS".into(),
        distance_meters: 1.0,
        area: "Buenos Aires".into(),
        latitude: LAT,
        longitude: LON,
        scheduled_start: None,
        scheduled_end: None,
    };
    let flood = async {
        while sessions.is_connected(worker.id) {
            sessions.notify(WorkerNotice::Offer(OfferNotice {
                offer_id: Uuid::new_v4(),
                ..big.clone()
            }));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    tokio::time::timeout(PATIENCE, flood)
        .await
        .expect("the engine gives up on the worker");
    assert_eq!(sessions.stats.slow_consumers.get(), 1);
    assert_eq!(settled(&app, offer).await, "EXPIRED");
    assert_eq!(sessions.online_city(worker.id), None);
    let row = app.store().get_request(request).await.unwrap();
    assert_ne!(row.assigned_worker_id, Some(worker.id));
}

#[tokio::test]
async fn graceful_shutdown_closes_with_1001_and_the_worker_resumes_on_the_next_engine() {
    let app = spawn_app().await;
    let mut worker = WorkerApp::online(&app, LON + 0.002, LAT).await;
    let id = worker.id;
    let request = create_request(&app, LON, LAT).await;
    let offer = worker.push("offer").await["data"].clone();
    let seq = offer["seq"].as_u64().unwrap();

    app.handle.shutdown();
    assert_eq!(worker.closed().await.0, 1001);
    tokio::time::timeout(PATIENCE, app.server)
        .await
        .expect("engine stopped")
        .unwrap()
        .unwrap();
    // The offer survived the restart.
    assert_eq!(
        offer_outcome_at(&app.database_url, uuid_of(&offer["offerId"])).await,
        None
    );

    let next = Application::build(test_config(&app.database_url))
        .await
        .unwrap();
    let next_app = TestApp {
        address: format!("http://127.0.0.1:{}", next.port()),
        handle: next.handle(),
        database_url: app.database_url.clone(),
        server: tokio::spawn(next.run_until_stopped()),
    };
    let (mut worker, hello) = WorkerApp::connect(&next_app, id, seq).await;
    assert_eq!(
        hello["onlineCity"],
        Value::Null,
        "a new engine: go online again"
    );
    let resumed = worker.push("offer").await["data"].clone();
    assert_eq!(resumed["offerId"], offer["offerId"]);
    assert!(
        resumed["seq"].as_u64().unwrap() > seq,
        "sequence numbers keep increasing"
    );
    let accepted = worker
        .call("accept_offer", json!({"offerId": offer["offerId"], "requestId": request, "idempotencyKey": "after-restart"}))
        .await;
    assert_eq!(ok(&accepted)["status"], "ASSIGNED");
    next_app.handle.shutdown();
}

async fn offer_outcome_at(database_url: &str, offer: Uuid) -> Option<String> {
    let store = arreglame::store::Store::connect(database_url, 1)
        .await
        .unwrap();
    let outcome = sqlx::query_scalar(r#"select outcome from offers where id = $1"#)
        .bind(offer)
        .fetch_one(store.pool())
        .await
        .unwrap();
    store.pool().close().await;
    outcome
}

#[tokio::test]
async fn connections_beyond_the_cap_are_refused_before_the_upgrade() {
    let app = spawn_app().await;
    with_limits(&app, |l| l.max_connections = 1);
    let _first = raw_connect(&app).await;
    let sessions = &app.handle.state.sessions;
    tokio::time::timeout(PATIENCE, async {
        wait_until(PATIENCE, || async { sessions.open_connections() >= 1 }).await
    })
    .await
    .expect("the first connection is counted");
    match connect_async(ws_url(&app)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 503)
        }
        other => panic!("expected 503, got {:?}", other.map(|(_, r)| r.status())),
    }
}

/// Issue 15 over the real socket: a booked offer carries its slot and the worker is reminded
/// once assigned; `cancel_assignment` gives a job back before it starts and is refused once
/// it has; with `offer_mode` switched to parallel at run time, the worker who loses the
/// race is told the job was `taken`.
#[tokio::test]
async fn booked_offers_reminders_cancel_assignment_and_taken_over_the_socket() {
    use chrono::{Duration as Minutes, SubsecRound, Utc};
    let app = spawn_app().await;
    let mut first = WorkerApp::online(&app, LON + 0.001, LAT).await;
    let mut second = WorkerApp::online(&app, LON + 0.002, LAT).await;
    // Booked to start in 30 minutes: dispatched at once (the lead is 15 hours), and the
    // hour-ahead reminder is already due when the worker accepts.
    let start = (Utc::now() + Minutes::minutes(30)).trunc_subsecs(0);
    let end = start + Minutes::hours(2);
    let new = arreglame::store::NewServiceRequest {
        slot: Some((start, end)),
        ..new_request(CUSTOMER, LON, LAT)
    };
    let (booked, _) = app.store().create_request(&new).await.unwrap();
    app.handle
        .state
        .dispatcher
        .ensure_actor(booked.id)
        .await
        .unwrap();
    let offer = first.push("offer").await["data"].clone();
    let slot_of = |v: &Value| -> chrono::DateTime<Utc> { v.as_str().unwrap().parse().unwrap() };
    assert_eq!(slot_of(&offer["job"]["scheduledStart"]), start);
    assert_eq!(slot_of(&offer["job"]["scheduledEnd"]), end);
    let accepted = first
        .call(
            "accept_offer",
            json!({"offerId": offer["offerId"], "requestId": booked.id, "idempotencyKey": "b-1"}),
        )
        .await;
    assert_eq!(ok(&accepted)["status"], "ASSIGNED");
    let reminder = first.push("job_reminder").await["data"].clone();
    assert_eq!(uuid_of(&reminder["requestId"]), booked.id);
    assert_eq!(slot_of(&reminder["scheduledStart"]), start);

    // Someone else cannot give it back; the assignee can, before the slot starts.
    let refused = second
        .call("cancel_assignment", json!({"requestId": booked.id}))
        .await;
    assert_eq!(error_code(&refused), "NOT_YOUR_JOB");
    let back = first
        .call(
            "cancel_assignment",
            json!({"requestId": booked.id, "reason": "double booked"}),
        )
        .await;
    assert_eq!(ok(&back)["status"], "PENDING");
    let again = second.push("offer").await["data"].clone();
    assert_eq!(uuid_of(&again["requestId"]), booked.id);
    let accepted = second
        .call(
            "accept_offer",
            json!({"offerId": again["offerId"], "requestId": booked.id, "idempotencyKey": "b-2"}),
        )
        .await;
    assert_eq!(ok(&accepted)["status"], "ASSIGNED");
    let started = second
        .call("start_job", json!({"requestId": booked.id}))
        .await;
    assert_eq!(ok(&started)["status"], "IN_PROGRESS");
    let late = second
        .call("cancel_assignment", json!({"requestId": booked.id}))
        .await;
    assert_eq!(error_code(&late), "ILLEGAL_STATE");

    // Ops switch to parallel offers without a restart.
    sqlx::query("update system_config set value = 'parallel' where key = 'offer_mode'")
        .execute(app.store().pool())
        .await
        .unwrap();
    let dispatcher = app.handle.state.dispatcher.clone();
    wait_until(PATIENCE, || async {
        dispatcher.settings().offer_mode == arreglame::domain::offer_policy::OfferMode::Parallel
    })
    .await;
    let mut third = WorkerApp::online(&app, LON + 0.003, LAT).await;
    let request = create_request(&app, LON, LAT).await;
    let to_first = first.push("offer").await["data"].clone();
    let to_third = third.push("offer").await["data"].clone();
    assert_eq!(uuid_of(&to_first["requestId"]), request);
    assert_eq!(uuid_of(&to_third["requestId"]), request);
    let won = third
        .call(
            "accept_offer",
            json!({"offerId": to_third["offerId"], "requestId": request, "idempotencyKey": "p-1"}),
        )
        .await;
    assert_eq!(ok(&won)["status"], "ASSIGNED");
    let withdrawn = first.push("offer_withdrawn").await["data"].clone();
    assert_eq!(withdrawn["offerId"], to_first["offerId"]);
    assert_eq!(withdrawn["reason"], "taken");
    let lost = first
        .call(
            "accept_offer",
            json!({"offerId": to_first["offerId"], "requestId": request, "idempotencyKey": "p-2"}),
        )
        .await;
    assert_eq!(error_code(&lost), "OFFER_NOT_PENDING");
}
