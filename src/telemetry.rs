//! Logging. Lines carry the level in capitals and the component (the tracing target) so
//! the operators' `grep "ERROR" logs/app.log` and `grep "WorkerAssignmentCron" logs/app.log`
//! keep working. Components log with `target: "WorkerAssignmentCron"` and the like.

use std::{fs::OpenOptions, io::IsTerminal, path::Path, sync::Mutex};

use tracing_subscriber::{fmt, layer::SubscriberExt, util::SubscriberInitExt, EnvFilter, Layer};

/// Installs the global subscriber: stdout, plus a plain-text copy in `log_file` when set.
/// Calling it twice is harmless (tests do), the second call does nothing.
pub fn init(log_level: &str, log_file: Option<&Path>) -> std::io::Result<()> {
    // Postgres NOTICEs ("relation already exists, skipping") are noise at info.
    let directives = if log_level.contains("sqlx") {
        log_level.to_string()
    } else {
        format!("{log_level},sqlx::postgres::notice=warn")
    };
    let filter = || EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new("info"));
    let stdout = fmt::layer()
        .with_target(true)
        .with_ansi(std::io::stdout().is_terminal())
        .with_filter(filter());
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
        .with(file)
        .try_init();
    Ok(())
}
