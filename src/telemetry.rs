//! Logging. Lines carry the level in capitals and the component (the tracing target) so
//! the operators' `grep "ERROR" logs/app.log` and `grep "WorkerAssignmentCron" logs/app.log`
//! keep working. Components log with `target: "WorkerAssignmentCron"` and the like.

use std::{
    fs::OpenOptions,
    io::IsTerminal,
    path::Path,
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
};

use tracing_subscriber::{fmt, layer::SubscriberExt, util::SubscriberInitExt, EnvFilter, Layer};

/// Where log lines go on the terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Console {
    /// The server's habit: logs on stdout.
    Stdout,
    /// For commands whose stdout is their output (`simulate --json`, `token`): logs never
    /// mix into it.
    Stderr,
}

/// Installs the global subscriber: stdout, plus a plain-text copy in `log_file` when set.
/// Calling it twice is harmless (tests do), the second call does nothing.
pub fn init(log_level: &str, log_file: Option<&Path>) -> std::io::Result<()> {
    init_to(Console::Stdout, log_level, log_file)
}

/// [`init`], with the console stream chosen.
pub fn init_to(console: Console, log_level: &str, log_file: Option<&Path>) -> std::io::Result<()> {
    // Postgres NOTICEs ("relation already exists, skipping") are noise at info.
    let directives = if log_level.contains("sqlx") {
        log_level.to_string()
    } else {
        format!("{log_level},sqlx::postgres::notice=warn")
    };
    let filter = || EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new("info"));
    let stdout = match console {
        Console::Stdout => Some(
            fmt::layer()
                .with_target(true)
                .with_ansi(std::io::stdout().is_terminal())
                .with_filter(filter()),
        ),
        Console::Stderr => None,
    };
    let stderr = match console {
        Console::Stderr => Some(
            fmt::layer()
                .with_target(true)
                .with_ansi(std::io::stderr().is_terminal())
                .with_writer(std::io::stderr)
                .with_filter(filter()),
        ),
        Console::Stdout => None,
    };
    let file = match log_file {
        Some(path) => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            let file = OpenOptions::new().create(true).append(true).open(path)?;
            // A std Mutex is enough: each event is one short write and no `.await` sits inside.
            Some(
                fmt::layer()
                    .with_target(true)
                    .with_ansi(false)
                    .with_writer(Mutex::new(file))
                    .with_filter(filter()),
            )
        }
        None => None,
    };
    // OpenTelemetry spans over OTLP/HTTP when OTEL_EXPORTER_OTLP_ENDPOINT is set.
    let otel = otel::layer().map(|l| l.with_filter(EnvFilter::new("info,arreglame=debug")));
    let _ = tracing_subscriber::registry()
        .with(stdout)
        .with(stderr)
        .with(file)
        .with(otel)
        .try_init();
    Ok(())
}

/// Where a span sits in its trace, without keeping the span open: the request actor keeps
/// this, not the creating span itself (a span stays open, unexported, while anything holds
/// it), and makes its own spans children of it.
#[derive(Debug, Clone, Default)]
pub struct TraceLink(opentelemetry::Context);

impl TraceLink {
    /// The trace position of `span` (empty when traces are off).
    pub fn of(span: &tracing::Span) -> TraceLink {
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        TraceLink(span.context())
    }

    /// Makes `span` a child of this position in the trace (nothing when traces are off).
    pub fn adopt(&self, span: &tracing::Span) {
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        let _ = span.set_parent(self.0.clone());
    }
}

/// Flushes and stops the OTLP exporter (at the end of `serve`), so the last spans leave.
/// The flush blocks until the exporter, which runs on the runtime, is done: so it runs on
/// a blocking thread, never on one the runtime needs.
pub async fn shutdown() {
    let _ = tokio::task::spawn_blocking(otel::shutdown).await;
}

/// OpenTelemetry traces over OTLP/HTTP (protobuf), off unless
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is set; the exporter reads the standard `OTEL_*`
/// variables (endpoint, headers, timeout; `OTEL_BSP_*` for batching).
mod otel {
    use std::sync::OnceLock;

    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
    use opentelemetry_sdk::{trace::SdkTracerProvider, Resource};

    static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

    /// Sends through the engine's own reqwest, on the tokio runtime that built it: the
    /// batch exporter runs on a thread of its own, which has no reactor.
    #[derive(Debug)]
    struct Http {
        client: reqwest::Client,
        runtime: tokio::runtime::Handle,
    }

    #[async_trait::async_trait]
    impl opentelemetry_http::HttpClient for Http {
        async fn send_bytes(
            &self,
            request: opentelemetry_http::Request<bytes::Bytes>,
        ) -> Result<opentelemetry_http::Response<bytes::Bytes>, opentelemetry_http::HttpError>
        {
            let client = self.client.clone();
            let (parts, body) = request.into_parts();
            let sent = self.runtime.spawn(async move {
                let mut builder = client
                    .request(parts.method.as_str().parse()?, parts.uri.to_string())
                    .body(body.to_vec());
                for (name, value) in parts.headers.iter() {
                    builder = builder.header(name.as_str(), value.as_bytes());
                }
                let response = builder.send().await?;
                let status = response.status().as_u16();
                let bytes = response.bytes().await?;
                Ok::<_, opentelemetry_http::HttpError>((status, bytes))
            });
            let (status, bytes) = sent.await??;
            Ok(opentelemetry_http::Response::builder()
                .status(status)
                .body(bytes::Bytes::from(bytes.to_vec()))?)
        }
    }

    pub(super) fn layer<S>(
    ) -> Option<tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>>
    where
        S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    {
        let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok()?;
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let http = Http {
            client: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(10))
                .build()
                .ok()?,
            runtime,
        };
        let exporter = match opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(http)
            .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
            .build()
        {
            Ok(exporter) => exporter,
            Err(e) => {
                eprintln!("OTEL_EXPORTER_OTLP_ENDPOINT={endpoint}: no trace exporter ({e})");
                return None;
            }
        };
        let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "arreglame".into());
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(Resource::builder().with_service_name(service).build())
            .build();
        let tracer = provider.tracer("arreglame");
        let _ = PROVIDER.set(provider);
        Some(tracing_opentelemetry::layer().with_tracer(tracer))
    }

    pub(super) fn shutdown() {
        if let Some(provider) = PROVIDER.get() {
            let _ = provider.shutdown();
        }
    }
}

/// A monotonically increasing count, cheap to bump from any actor or session;
/// metrics export it and tests assert on it.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Cases of each fuzzing property: `ARREGLAME_FUZZ_CASES` (CI runs 60,000), else 512.
#[cfg(test)]
pub(crate) fn fuzz_cases() -> u32 {
    std::env::var("ARREGLAME_FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(512)
}
