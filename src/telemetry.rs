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
    let _ = tracing_subscriber::registry()
        .with(stdout)
        .with(stderr)
        .with(file)
        .try_init();
    Ok(())
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
