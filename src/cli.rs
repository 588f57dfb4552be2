//! Command line: `serve` (default), `migrate [--revert]`, `seed`, `simulate`, `schema`,
//! `token`. Configuration comes from the environment (listed by `--help`).

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use uuid::Uuid;

use crate::{
    auth::{parse_ttl, Role, TokenKeys},
    config::Config,
    startup::Application,
    store::Store,
    telemetry,
};

/// The environment variables, for `--help` (.env.example has them all with comments).
const ENVIRONMENT: &str = "\
Environment (see .env.example):
  DATABASE_URL                 PostgreSQL URL (required by serve, migrate, seed, simulate)
  PORT, HOST                   HTTP listener (3000, 0.0.0.0)
  LOG_LEVEL, LOG_FILE          log filter (info); a file that gets a copy of every line
  APP_ENV (or NODE_ENV)        development | production
  JWT_SECRET                   signs every token (required, >= 32 chars, in production)
  API_KEY or GEMINI_API_KEY    Gemini pricing; without it the rules price every quote
  GEMINI_BASE_URL, GEMINI_MODEL, GEMINI_MAX_CONCURRENT_CALLS, GEMINI_MAX_CALLS_PER_MINUTE
  PRICING_RATE_PER_MINUTE, PRICING_RATE_BURST   quotes per caller
  NATS_URL                     NATS JetStream for the outbox relay (comma-separated servers)
  ARREGLAME_CLUSTER=nats, NODE_ID, CITY_LEASE_SECONDS   cities by lease (docs/scale-out.md)
  DATABASE_MAX_CONNECTIONS     pool size (20)
  DATABASE_GROUP_COMMIT_MAX    transitions per commit when written together (64; 1 = alone)
  DATABASE_GROUP_COMMIT_WRITERS  group-commit writers, taking turns, each on a connection it keeps (2)
  METRICS_TOKEN, METRICS_ADDR  how /metrics is protected, or where it is served instead
  OTEL_EXPORTER_OTLP_ENDPOINT  OpenTelemetry traces over OTLP/HTTP (off when unset)";

#[derive(Debug, Parser)]
#[command(
    name = "arreglame",
    version,
    about = "Realtime dispatch engine of Arreglame Ya",
    after_help = ENVIRONMENT
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the engine: HTTP, GraphQL, worker WebSockets, actors and cron sweeps.
    Serve {
        /// Also run a demo fleet of this many simulated workers (watch it at /ops).
        #[arg(long, default_value_t = 0)]
        demo_fleet: usize,
    },
    /// Apply pending migrations (embedded in the binary).
    Migrate {
        /// Revert the latest applied migration instead (the rollback plan).
        #[arg(long)]
        revert: bool,
    },
    /// Insert system configuration, multipliers, cities and demo people. Idempotent.
    Seed,
    /// Run a simulated fleet of workers (WebSocket) and customers (GraphQL) against an engine.
    Simulate(Box<crate::sim::SimArgs>),
    /// Print the GraphQL schema (SDL); docs/schema.graphql is this output.
    Schema,
    /// Print a JWT signed with JWT_SECRET, for development and tests.
    Token {
        #[arg(long, value_enum)]
        role: Role,
        /// The customer's, worker's or operator's id.
        #[arg(long)]
        sub: Uuid,
        /// Lifetime, e.g. 30m, 1h, 7d.
        #[arg(long, default_value = "1h", value_parser = parse_ttl)]
        ttl: std::time::Duration,
    },
}

pub async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(Command::Schema) = cli.command {
        print!("{}", crate::api::graphql::sdl());
        return Ok(());
    }
    // Signing a token needs the secret, not a database.
    if let Some(Command::Token { role, sub, ttl }) = cli.command {
        let secret = crate::config::jwt_secret_from_env()?;
        println!("{}", TokenKeys::new(&secret).issue(role, sub, ttl));
        return Ok(());
    }
    let config = Config::from_env()?;
    let command = cli.command.unwrap_or(Command::Serve { demo_fleet: 0 });
    // Only the server logs to stdout; other commands print their results there.
    let console = match command {
        Command::Serve { .. } => telemetry::Console::Stdout,
        _ => telemetry::Console::Stderr,
    };
    telemetry::init_to(console, &config.log_level, config.log_file.as_deref())?;
    match command {
        Command::Serve { demo_fleet } => {
            let app = Application::build(config.clone()).await?;
            tracing::info!(target: "Server", port = app.port(), "[Server] listening on :{}", app.port());
            if demo_fleet > 0 {
                let url = format!("http://127.0.0.1:{}", app.port());
                let store = app.handle().state.store.clone();
                tokio::spawn(crate::sim::demo(
                    url,
                    demo_fleet,
                    store,
                    config.jwt_secret.clone(),
                    "buenos-aires".into(),
                ));
            }
            app.run_until_stopped().await?;
            // The last spans leave before the process does.
            telemetry::shutdown().await;
        }
        Command::Migrate { revert } => {
            let store = Store::connect(&config.database_url, 2).await?;
            if revert {
                match store.revert_latest_migration().await? {
                    Some(step) => println!("reverted {step}"),
                    None => println!("no migration to revert"),
                }
            } else {
                if let crate::store::DatabaseKind::Legacy { steps_done } =
                    store.database_kind().await?
                {
                    println!("legacy database: adopting it in place (steps done: {steps_done})");
                }
                store.migrate().await?;
                println!("migrations applied");
            }
        }
        Command::Seed => {
            let store = Store::connect(&config.database_url, 2).await?;
            store.seed().await?;
            println!("seed applied");
        }
        Command::Schema => unreachable!("handled before reading the environment"),
        Command::Simulate(args) => {
            crate::sim::simulate(*args, &config.database_url, &config.jwt_secret).await?
        }
        Command::Token { .. } => unreachable!("handled before reading the environment"),
    }
    Ok(())
}
