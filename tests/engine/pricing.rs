//! Issue 5, pricing: the rules against the seeded tables in a real PostgreSQL, and the real
//! `GeminiPricingEngine` against a local fake Gemini that speaks the real `generateContent`
//! endpoint and JSON (`POST /v1beta/models/{model}:generateContent`, `x-goog-api-key`).

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use arreglame::{
    domain::{Cents, Ratio},
    pricing::{
        CircuitState, EngineKind, GeminiConfig, GeminiTuning, JobInput, PriceQuote, Pricing,
        PricingError,
    },
    store::{Settings, Store},
};
use axum::{
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
    Json, Router,
};
use base64::Engine as _;
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::helpers::{fresh_database, init_test_logging};

pub const API_KEY: &str = "test-gemini-key";
pub const MODEL: &str = "gemini-2.0-flash";

/// What the fake answers to one `generateContent` call.
#[derive(Debug, Clone)]
pub enum Reply {
    /// 200 with this JSON as the model's text (`candidates[0].content.parts[0].text`).
    Answer(Value),
    /// 200 with this text as the model's text.
    Text(&'static str),
    /// An error status with a Google-style error body.
    Status(u16),
    /// Never answers.
    Hang,
}

/// A local Gemini: queued replies first, then the default one; records every request.
pub struct FakeGemini {
    queued: Mutex<VecDeque<Reply>>,
    default: Mutex<Reply>,
    requests: Mutex<Vec<Value>>,
    hits: AtomicUsize,
}

impl FakeGemini {
    pub async fn start(default: Reply) -> (Arc<FakeGemini>, String) {
        let fake = Arc::new(FakeGemini {
            queued: Mutex::new(VecDeque::new()),
            default: Mutex::new(default),
            requests: Mutex::new(Vec::new()),
            hits: AtomicUsize::new(0),
        });
        let app = Router::new()
            .route("/v1beta/models/{target}", post(generate_content))
            .with_state(fake.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (fake, base_url)
    }

    fn queue(&self, reply: Reply) {
        self.queued.lock().unwrap().push_back(reply);
    }

    fn answer_from_now_on(&self, reply: Reply) {
        *self.default.lock().unwrap() = reply;
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    fn last_request(&self) -> Value {
        self.requests
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a request")
    }
}

async fn generate_content(
    State(fake): State<Arc<FakeGemini>>,
    Path(target): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if target != format!("{MODEL}:generateContent") {
        return StatusCode::NOT_FOUND.into_response();
    }
    if headers.get("x-goog-api-key").and_then(|v| v.to_str().ok()) != Some(API_KEY) {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": {"code": 400, "message": "API key not valid", "status": "INVALID_ARGUMENT"}})),
        )
            .into_response();
    }
    fake.hits.fetch_add(1, Ordering::SeqCst);
    fake.requests.lock().unwrap().push(body);
    let reply = fake.queued.lock().unwrap().pop_front();
    let reply = reply.unwrap_or_else(|| fake.default.lock().unwrap().clone());
    let model_text = match reply {
        Reply::Answer(answer) => answer.to_string(),
        Reply::Text(text) => text.to_string(),
        Reply::Status(status) => {
            let status = StatusCode::from_u16(status).unwrap();
            let error = json!({"error": {"code": status.as_u16(), "message": "fake failure", "status": "INTERNAL"}});
            return (status, Json(error)).into_response();
        }
        Reply::Hang => std::future::pending().await,
    };
    Json(json!({
        "candidates": [{
            "content": { "role": "model", "parts": [{ "text": model_text }] },
            "finishReason": "STOP",
            "index": 0
        }],
        "usageMetadata": { "promptTokenCount": 412, "candidatesTokenCount": 31, "totalTokenCount": 443 },
        "modelVersion": MODEL
    }))
    .into_response()
}

/// Retries and breaker quick enough for tests; the cool-down outlasts any test.
pub fn test_tuning() -> GeminiTuning {
    GeminiTuning {
        max_attempts: 2,
        initial_backoff: Duration::from_millis(1),
        failure_threshold: 3,
        cool_down: Duration::from_secs(3600),
    }
}

pub fn gemini_at(base_url: &str, timeout: Duration) -> GeminiConfig {
    GeminiConfig {
        api_key: API_KEY.into(),
        base_url: base_url.into(),
        model: MODEL.into(),
        timeout,
    }
}

/// Pricing on a fresh seeded database, with the given settings and (optional) Gemini.
pub async fn pricing_with(settings: Settings, gemini: Option<GeminiConfig>) -> (Pricing, Store) {
    init_test_logging();
    let store = Store::connect(&fresh_database().await, 2).await.unwrap();
    // The receiver keeps the last value even after the sender is dropped.
    let (_, settings) = watch::channel(Arc::new(settings));
    let pricing = Pricing::with_tuning(store.clone(), settings, gemini, test_tuning())
        .await
        .unwrap();
    (pricing, store)
}

async fn gemini_pricing(base_url: &str) -> Pricing {
    let gemini = gemini_at(base_url, Duration::from_secs(30));
    pricing_with(Settings::default(), Some(gemini)).await.0
}

/// The guide's example: `estimateJob(input: {image: "base64...", description: "Corte de
/// pasto", squareMeters: 100})`.
pub fn guide_job() -> JobInput {
    JobInput {
        image_base64: Some("base64...".into()),
        description: "Corte de pasto".into(),
        square_meters: 100.0,
        ..JobInput::default()
    }
}

/// The rules' price of the guide's job: max(150.00 × 100, 15000.00) × 1.25 (MEDIUM).
fn assert_guide_rules_price(q: &PriceQuote) {
    assert_eq!(q.engine, EngineKind::Rules);
    assert_eq!(q.breakdown.difficulty_level, "MEDIUM");
    assert_eq!(q.total, Cents(1_875_000));
    assert_eq!(q.platform_fee, Cents(281_250));
    assert_eq!(q.worker_net, Cents(1_593_750));
}

pub fn good_answer() -> Reply {
    Reply::Answer(json!({
        "difficulty": "HARD",
        "extras": ["tall_grass"],
        "suggestedPriceCents": 2_600_000,
        "reasoning": "El pasto está alto"
    }))
}

#[tokio::test]
async fn the_guides_estimate_is_priced_by_the_rules_without_a_key() {
    let (pricing, _) = pricing_with(Settings::default(), None).await;
    let q = pricing.quote(&guide_job()).await.unwrap();
    assert_guide_rules_price(&q);
    assert_eq!(q.currency, "ARS");
    assert_eq!(q.breakdown.category, "lawn_mowing");
    assert_eq!(q.breakdown.base, Cents(1_500_000));
    assert_eq!(q.image_ref, None, "\"base64...\" is no photo");
    assert_eq!(q.fallback_reason, None);
    let stats = pricing.stats();
    assert_eq!((stats.rules_quotes, stats.fallbacks), (1, 0));
    assert_eq!(stats.circuit_state, None);
}

#[tokio::test]
async fn the_rules_read_exact_multipliers_from_the_seeded_tables() {
    let (pricing, _) = pricing_with(Settings::default(), None).await;
    let job = JobInput {
        square_meters: 87.655,
        category: Some("house_cleaning".into()),
        difficulty: Some("EASY".into()),
        extras: vec!["slope".into(), "debris_removal".into()],
        ..JobInput::default()
    };
    let q = pricing.quote(&job).await.unwrap();
    // 300.00/m² × 87.66 m² = 26298.00; × 1.15 × 1.1 = × 1.265 → 33266.97; 15 % → 4990.05.
    assert_eq!(q.breakdown.base, Cents(2_629_800));
    assert_eq!(q.breakdown.multiplier, Ratio(1_265_000));
    assert_eq!(
        q.breakdown.extras,
        vec![
            ("debris_removal".to_string(), Ratio(1_150_000)),
            ("slope".to_string(), Ratio(1_100_000)),
        ]
    );
    assert_eq!(q.total, Cents(3_326_697));
    assert_eq!(q.platform_fee, Cents(499_005));
    assert_eq!(q.worker_net, Cents(2_827_692));
}

#[tokio::test]
async fn the_commission_comes_from_system_config() {
    let url = fresh_database().await;
    let store = Store::connect(&url, 2).await.unwrap();
    sqlx::query("update system_config set value = '0.20' where key = 'commission_percentage'")
        .execute(store.pool())
        .await
        .unwrap();
    let (_shutdown, shutdown_rx) = watch::channel(false);
    let (settings, _reload) = store.watch_settings(shutdown_rx).await.unwrap();
    let pricing = Pricing::new(store, settings, None).await.unwrap();
    let q = pricing.quote(&guide_job()).await.unwrap();
    assert_eq!(q.breakdown.commission_rate, Ratio(200_000));
    assert_eq!(q.total, Cents(1_875_000));
    assert_eq!(q.platform_fee, Cents(375_000));
    assert_eq!(q.worker_net, Cents(1_500_000));
}

#[tokio::test]
async fn the_tables_are_cached_until_reloaded() {
    let (pricing, store) = pricing_with(Settings::default(), None).await;
    sqlx::query(
        r#"update service_categories set "minimumPriceCents" = 2000000 where code = 'lawn_mowing'"#,
    )
    .execute(store.pool())
    .await
    .unwrap();
    sqlx::query(
        "insert into extra_multipliers (code, name, multiplier) values ('night', 'Nocturno', 1.5)",
    )
    .execute(store.pool())
    .await
    .unwrap();
    let with_night = JobInput {
        extras: vec!["night".into()],
        ..guide_job()
    };
    assert_eq!(
        pricing.quote(&guide_job()).await.unwrap().total,
        Cents(1_875_000)
    );
    assert_eq!(
        pricing.quote(&with_night).await,
        Err(PricingError::UnknownExtra("night".into()))
    );

    pricing.reload_tables().await.unwrap();
    assert_eq!(
        pricing.quote(&guide_job()).await.unwrap().total,
        Cents(2_500_000)
    );
    // 20000.00 × 1.25 × 1.5
    assert_eq!(
        pricing.quote(&with_night).await.unwrap().total,
        Cents(3_750_000)
    );
}

#[tokio::test]
async fn customer_mistakes_are_typed_errors_with_plain_messages() {
    let settings = Settings {
        max_square_meters: 5_000.0,
        ..Settings::default()
    };
    let (pricing, _) = pricing_with(settings, None).await;
    let quote = |f: fn(&mut JobInput)| {
        let mut job = guide_job();
        f(&mut job);
        let pricing = &pricing;
        async move { pricing.quote(&job).await.unwrap_err() }
    };
    assert_eq!(
        quote(|j| j.category = Some("pool_cleaning".into())).await,
        PricingError::UnknownCategory("pool_cleaning".into())
    );
    assert_eq!(
        quote(|j| j.difficulty = Some("IMPOSSIBLE".into())).await,
        PricingError::UnknownDifficulty("IMPOSSIBLE".into())
    );
    assert_eq!(
        quote(|j| j.extras = vec!["gold_leaf".into()]).await,
        PricingError::UnknownExtra("gold_leaf".into())
    );
    let invalid = |e: PricingError| match e {
        PricingError::InvalidInput(message) => message,
        other => panic!("expected InvalidInput, got {other:?}"),
    };
    for bad in [0.0, -3.0, f64::NAN, f64::INFINITY] {
        let mut job = guide_job();
        job.square_meters = bad;
        let message = invalid(pricing.quote(&job).await.unwrap_err());
        assert_eq!(
            message,
            "squareMeters must be a positive number of square meters"
        );
    }
    assert_eq!(
        invalid(quote(|j| j.square_meters = 5_000.5).await),
        "squareMeters must be at most 5000 square meters"
    );
    assert_eq!(
        invalid(quote(|j| j.description = "a".repeat(2001)).await),
        "description must be at most 2000 characters"
    );
    let too_big = base64::engine::general_purpose::STANDARD.encode(vec![0xFF; 5 * 1024 * 1024 + 1]);
    let mut job = guide_job();
    job.image_base64 = Some(too_big);
    assert_eq!(
        invalid(pricing.quote(&job).await.unwrap_err()),
        "the photo is too large: the limit is 5 MB"
    );
}

#[tokio::test]
async fn every_quote_splits_exactly_for_many_random_jobs() {
    let (pricing, _) = pricing_with(Settings::default(), None).await;
    let tables = pricing.tables();
    let mut rng = StdRng::seed_from_u64(5);
    for _ in 0..500 {
        let category = &tables.categories[rng.gen_range(0..tables.categories.len())];
        let difficulty = &tables.difficulties[rng.gen_range(0..tables.difficulties.len())];
        let extras = tables
            .extras
            .iter()
            .filter(|_| rng.gen_bool(0.4))
            .map(|e| e.code.clone())
            .collect();
        let job = JobInput {
            square_meters: rng.gen_range(0.01..100_000.0),
            category: Some(category.code.clone()),
            difficulty: Some(difficulty.code.clone()),
            extras,
            ..JobInput::default()
        };
        let q = pricing.quote(&job).await.unwrap();
        assert_eq!(q.worker_net.0 + q.platform_fee.0, q.total.0, "{job:?}");
        assert!(
            q.total >= category.minimum.times(difficulty.ratio),
            "{job:?}"
        );
        assert!(q.worker_net >= Cents::ZERO && q.platform_fee >= Cents::ZERO);
    }
}

#[tokio::test]
async fn gemini_picks_difficulty_and_extras_and_the_rules_compute_the_money() {
    let (fake, url) = FakeGemini::start(good_answer()).await;
    let pricing = gemini_pricing(&url).await;

    let q = pricing.quote(&guide_job()).await.unwrap();
    assert_eq!(q.engine, EngineKind::Gemini);
    assert_eq!(q.breakdown.difficulty_level, "HARD");
    assert_eq!(
        q.breakdown.extras,
        vec![("tall_grass".to_string(), Ratio(1_200_000))]
    );
    // 15000.00 × 1.5 × 1.2 = 27000.00, not the model's 26000.00 suggestion.
    assert_eq!(q.total, Cents(2_700_000));
    assert_eq!(q.platform_fee, Cents(405_000));
    assert_eq!(q.worker_net, Cents(2_295_000));
    assert_eq!(q.breakdown.ai_suggested_total, Some(Cents(2_600_000)));
    assert!(q.breakdown.ai_adjustments.is_empty());

    // What Gemini got: the description as text, the seeded codes as the schema's enums, and
    // no photo ("base64..." is not one).
    let request = fake.last_request();
    let parts = request["contents"][0]["parts"].as_array().unwrap();
    assert_eq!(parts.len(), 1);
    assert!(parts[0]["text"]
        .as_str()
        .unwrap()
        .contains("Corte de pasto"));
    let config = &request["generationConfig"];
    assert_eq!(config["responseMimeType"], "application/json");
    assert_eq!(
        config["responseSchema"]["properties"]["difficulty"]["enum"],
        json!(["EASY", "MEDIUM", "HARD", "EXTREME"])
    );
    assert_eq!(
        config["responseSchema"]["properties"]["extras"]["items"]["enum"],
        json!(["debris_removal", "slope", "tall_grass", "urgent"])
    );

    // A real photo goes inline and becomes the request's image reference.
    let jpeg = [
        0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10, b'J', b'F', b'I', b'F', 0x00, 0x01,
    ];
    let encoded = base64::engine::general_purpose::STANDARD.encode(jpeg);
    let with_photo = JobInput {
        image_base64: Some(format!("data:image/jpeg;base64,{encoded}")),
        ..guide_job()
    };
    let q = pricing.quote(&with_photo).await.unwrap();
    let sha: String = Sha256::digest(jpeg)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(q.image_ref, Some(sha));
    assert_eq!(
        fake.last_request()["contents"][0]["parts"][1],
        json!({ "inline_data": { "mime_type": "image/jpeg", "data": encoded } })
    );

    let stats = pricing.stats();
    assert_eq!((stats.gemini_requests, stats.gemini_failures), (2, 0));
    assert_eq!((stats.gemini_quotes, stats.fallbacks), (2, 0));
    assert_eq!(stats.circuit_state, Some(CircuitState::Closed));
}

#[tokio::test]
async fn a_malformed_answer_falls_back_to_the_rules_and_is_counted() {
    let (fake, url) = FakeGemini::start(Reply::Text("I think this job is HARD")).await;
    let pricing = gemini_pricing(&url).await;
    let q = pricing.quote(&guide_job()).await.unwrap();
    assert_guide_rules_price(&q);
    assert_eq!(q.fallback_reason.as_deref(), Some("malformed_answer"));
    // A malformed answer is not retried.
    assert_eq!(fake.hits(), 1);
    let stats = pricing.stats();
    assert_eq!((stats.gemini_requests, stats.gemini_failures), (1, 1));
    assert_eq!(
        (stats.fallbacks, stats.rules_quotes, stats.gemini_quotes),
        (1, 1, 0)
    );
}

#[tokio::test]
async fn an_out_of_bounds_answer_is_clamped_before_the_rules_price_it() {
    let (fake, url) = FakeGemini::start(Reply::Answer(json!({
        "difficulty": "EXTREME",
        "extras": ["debris_removal", "slope", "tall_grass", "urgent", "gold_leaf"],
        "suggestedPriceCents": 99_999_999_999i64
    })))
    .await;
    let pricing = gemini_pricing(&url).await;
    let q = pricing.quote(&guide_job()).await.unwrap();
    assert_eq!(q.engine, EngineKind::Gemini);
    // 2.0 × 1.15 × 1.1 × 1.2 × 1.3 = 3.9468, clamped to ai_multiplier_max 3.0.
    assert_eq!(q.breakdown.multiplier, Ratio(3_000_000));
    assert_eq!(q.total, Cents(4_500_000));
    assert_eq!(q.worker_net.0 + q.platform_fee.0, q.total.0);
    assert!(q
        .breakdown
        .extras
        .iter()
        .all(|(code, _)| code != "gold_leaf"));
    assert_eq!(q.breakdown.ai_suggested_total, Some(Cents(4_500_000)));
    assert_eq!(
        q.breakdown.ai_adjustments.len(),
        3,
        "{:?}",
        q.breakdown.ai_adjustments
    );

    // A difficulty outside the list is dropped for MEDIUM; a negative suggestion is lifted.
    fake.answer_from_now_on(Reply::Answer(json!({
        "difficulty": "APOCALYPTIC", "extras": [], "suggestedPriceCents": -100
    })));
    let q = pricing.quote(&guide_job()).await.unwrap();
    assert_eq!(q.engine, EngineKind::Gemini);
    assert_eq!(q.breakdown.difficulty_level, "MEDIUM");
    assert_eq!(q.total, Cents(1_875_000));
    assert_eq!(q.breakdown.ai_suggested_total, Some(Cents(750_000)));
    assert_eq!(pricing.stats().ai_clamped, 2);
}

#[tokio::test]
async fn a_gemini_that_does_not_answer_in_time_falls_back_to_the_rules() {
    let (_fake, url) = FakeGemini::start(Reply::Hang).await;
    let gemini = gemini_at(&url, Duration::from_millis(300));
    let (pricing, _) = pricing_with(Settings::default(), Some(gemini)).await;
    let q = pricing.quote(&guide_job()).await.unwrap();
    assert_guide_rules_price(&q);
    assert_eq!(q.fallback_reason.as_deref(), Some("timeout"));
    let stats = pricing.stats();
    // The budget is spent: no retry after a timeout.
    assert_eq!((stats.gemini_requests, stats.gemini_failures), (1, 1));
    assert_eq!(stats.fallbacks, 1);
}

#[tokio::test]
async fn a_server_error_is_retried_and_the_retry_prices_the_job() {
    let (fake, url) = FakeGemini::start(good_answer()).await;
    fake.queue(Reply::Status(500));
    let pricing = gemini_pricing(&url).await;
    let q = pricing.quote(&guide_job()).await.unwrap();
    assert_eq!(q.engine, EngineKind::Gemini);
    assert_eq!(q.total, Cents(2_700_000));
    assert_eq!(fake.hits(), 2);
    let stats = pricing.stats();
    assert_eq!((stats.gemini_requests, stats.gemini_failures), (2, 1));
    assert_eq!(stats.fallbacks, 0);
}

#[tokio::test]
async fn a_client_error_is_not_retried() {
    let (fake, url) = FakeGemini::start(Reply::Status(403)).await;
    let pricing = gemini_pricing(&url).await;
    let q = pricing.quote(&guide_job()).await.unwrap();
    assert_guide_rules_price(&q);
    assert_eq!(q.fallback_reason.as_deref(), Some("http_error"));
    assert_eq!(fake.hits(), 1);
}

#[tokio::test]
async fn the_circuit_opens_after_repeated_failures_and_a_probe_closes_it_after_the_cool_down() {
    let (fake, url) = FakeGemini::start(Reply::Status(503)).await;
    let pricing = gemini_pricing(&url).await;
    let tuning = test_tuning();

    // Three quotes fail (each with its retry): the circuit opens.
    for _ in 0..tuning.failure_threshold {
        let q = pricing.quote(&guide_job()).await.unwrap();
        assert_eq!(q.fallback_reason.as_deref(), Some("http_error"));
    }
    let sent = fake.hits();
    assert_eq!(sent, 3 * tuning.max_attempts as usize);
    assert_eq!(pricing.stats().circuit_state, Some(CircuitState::Open));

    // While open, quotes are priced by the rules and no request reaches Gemini.
    fake.answer_from_now_on(good_answer());
    for _ in 0..2 {
        let q = pricing.quote(&guide_job()).await.unwrap();
        assert_guide_rules_price(&q);
        assert_eq!(q.fallback_reason.as_deref(), Some("circuit_open"));
    }
    assert_eq!(fake.hits(), sent);
    let stats = pricing.stats();
    assert_eq!((stats.circuit_rejections, stats.fallbacks), (2, 5));

    // After the cool-down (tokio's clock moved forward, not waited for) one probe goes out,
    // Gemini answers, and the circuit closes.
    tokio::time::pause();
    tokio::time::advance(tuning.cool_down).await;
    tokio::time::resume();
    assert_eq!(pricing.stats().circuit_state, Some(CircuitState::HalfOpen));
    let q = pricing.quote(&guide_job()).await.unwrap();
    assert_eq!(q.engine, EngineKind::Gemini);
    assert_eq!(fake.hits(), sent + 1);
    assert_eq!(pricing.stats().circuit_state, Some(CircuitState::Closed));
}
