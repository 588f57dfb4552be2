//! Process configuration from the environment. Names are the ones today's deployments
//! already set (see the migration guide): `DATABASE_URL`, `PORT`, `LOG_LEVEL`, `API_KEY` /
//! `GEMINI_API_KEY`, `NODE_ENV` (alias of `APP_ENV`), plus the engine's own.
//!
//! Business tunables (timeouts, commission, radii) do not live here: they are rows in
//! `system_config`, reloaded at run time (see `store::system_config`).

use std::{collections::HashMap, path::PathBuf, time::Duration};

/// Where the engine runs. Production turns off GraphiQL and introspection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppEnv {
    Development,
    Production,
}

/// Everything the process needs from its environment, validated once at start-up.
#[derive(Clone)]
pub struct Config {
    /// PostgreSQL connection string.
    pub database_url: String,
    /// TCP port of the HTTP server (GraphQL, WebSocket, health, ops).
    pub port: u16,
    /// Address to bind; `0.0.0.0` in production images, loopback in tests.
    pub host: String,
    /// `tracing` filter directive, e.g. `info` or `arreglame=debug,info`.
    pub log_level: String,
    /// Optional file that receives a copy of every log line (the guide greps `logs/app.log`).
    pub log_file: Option<PathBuf>,
    /// Gemini API key; without one, pricing uses the rules only.
    pub gemini_api_key: Option<String>,
    /// Base URL of the Gemini REST API (overridden by tests to point at a local fake).
    pub gemini_base_url: String,
    /// Gemini model used for pricing.
    pub gemini_model: String,
    /// NATS server for the outbox relay; without one, only in-process subscribers consume.
    pub nats_url: Option<String>,
    /// HMAC secret that signs and verifies every JWT (customers, workers, ops).
    pub jwt_secret: String,
    pub app_env: AppEnv,
    /// Largest number of pooled database connections.
    pub database_max_connections: u32,
    /// `DATABASE_GROUP_COMMIT_MAX` (64): the most transitions one commit carries when
    /// actors write at once; 1 commits each transition alone.
    pub database_group_commit_max: usize,
    /// `DATABASE_GROUP_COMMIT_WRITERS` (2): group-commit writers, taking turns (one runs its
    /// group's statements while the others' commits finish, side by side only when a backlog
    /// as large as its group waits), each on a pooled connection it keeps (at most a quarter
    /// of the pool).
    pub database_group_commit_writers: usize,
    /// How `/metrics` is protected: with this token (or an ops JWT) on the main port...
    pub metrics_token: Option<String>,
    /// ...or served without auth on this separate address (e.g. 127.0.0.1:9100), and not
    /// on the main port at all.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Gemini calls in flight at once, engine-wide; past it the rules price (counted).
    pub gemini_max_concurrent_calls: usize,
    /// Gemini calls per minute, engine-wide (the spend over time); past it the rules price.
    pub gemini_max_calls_per_minute: u32,
    /// Quotes (estimateJob and createServiceRequest) one caller may ask for per minute
    /// sustained, and in a burst; the caller is the customer, or the client address when
    /// anonymous.
    pub pricing_rate_per_minute: u32,
    pub pricing_rate_burst: u32,
    /// `ARREGLAME_CLUSTER=nats`: this node shares the cities with others over NATS
    /// (docs/scale-out.md). `None`: one node alone, owning every city.
    pub cluster: Option<ClusterConfig>,
}

impl std::fmt::Debug for Config {
    // Secrets never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("database_url", &redact_url(&self.database_url))
            .field("port", &self.port)
            .field("host", &self.host)
            .field("log_level", &self.log_level)
            .field("log_file", &self.log_file)
            .field(
                "gemini_api_key",
                &self.gemini_api_key.as_ref().map(|_| "<set>"),
            )
            .field("gemini_base_url", &self.gemini_base_url)
            .field("nats_url", &self.nats_url)
            .field("jwt_secret", &"<set>")
            .field("app_env", &self.app_env)
            .field(
                "metrics_token",
                &self.metrics_token.as_ref().map(|_| "<set>"),
            )
            .field("metrics_addr", &self.metrics_addr)
            .finish()
    }
}

/// A configuration value that cannot be used, with the variable it came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{name} is required but not set{hint}")]
    Missing {
        name: &'static str,
        hint: &'static str,
    },
    #[error("{name}={value:?} is not valid: {reason}")]
    Invalid {
        name: &'static str,
        value: String,
        reason: String,
    },
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(std::env::vars().collect())
    }

    /// Reads configuration from a map of variables (the process environment in `from_env`).
    pub fn from_vars(vars: HashMap<String, String>) -> Result<Self, ConfigError> {
        let get = |name: &str| {
            vars.get(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };

        let database_url = get("DATABASE_URL").ok_or(ConfigError::Missing {
            name: "DATABASE_URL",
            hint: " (e.g. postgres://user@localhost:5432/arreglame; scripts/dev-env.sh starts a local one)",
        })?;
        if !(database_url.starts_with("postgres://") || database_url.starts_with("postgresql://")) {
            return Err(ConfigError::Invalid {
                name: "DATABASE_URL",
                value: redact_url(&database_url),
                reason: "expected a postgres:// or postgresql:// URL".into(),
            });
        }

        let port = match get("PORT") {
            None => 3000,
            Some(v) => v.parse::<u16>().map_err(|e| ConfigError::Invalid {
                name: "PORT",
                value: v.clone(),
                reason: e.to_string(),
            })?,
        };

        let log_level = get("LOG_LEVEL").unwrap_or_else(|| "info".into());
        if tracing_subscriber::EnvFilter::try_new(&log_level).is_err() {
            return Err(ConfigError::Invalid {
                name: "LOG_LEVEL",
                value: log_level,
                reason: "expected error, warn, info, debug, trace or a tracing filter directive"
                    .into(),
            });
        }

        let (env_name, env_value) = match (get("APP_ENV"), get("NODE_ENV")) {
            (Some(v), _) => ("APP_ENV", v),
            (None, Some(v)) => ("NODE_ENV", v),
            (None, None) => ("APP_ENV", "development".to_string()),
        };
        let app_env = match env_value.to_ascii_lowercase().as_str() {
            "development" | "dev" | "test" => AppEnv::Development,
            "production" | "prod" => AppEnv::Production,
            _ => {
                return Err(ConfigError::Invalid {
                    name: env_name,
                    value: env_value,
                    reason: "expected development or production".into(),
                })
            }
        };

        let jwt_secret = match get("JWT_SECRET") {
            Some(s) if app_env == AppEnv::Production && s.len() < 32 => {
                return Err(ConfigError::Invalid {
                    name: "JWT_SECRET",
                    value: "<hidden>".into(),
                    reason: "must be at least 32 characters in production".into(),
                })
            }
            Some(s) => s,
            None if app_env == AppEnv::Development => "dev-secret-change-me".into(),
            None => {
                return Err(ConfigError::Missing {
                    name: "JWT_SECRET",
                    hint: " in production",
                })
            }
        };

        let database_max_connections = match get("DATABASE_MAX_CONNECTIONS") {
            None => 20,
            Some(v) => v
                .parse::<u32>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or(ConfigError::Invalid {
                    name: "DATABASE_MAX_CONNECTIONS",
                    value: v,
                    reason: "expected a positive integer".into(),
                })?,
        };

        let positive = |name: &'static str, default: u32| -> Result<u32, ConfigError> {
            match get(name) {
                None => Ok(default),
                Some(v) => v
                    .parse::<u32>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or(ConfigError::Invalid {
                        name,
                        value: v,
                        reason: "expected a positive integer".into(),
                    }),
            }
        };
        let gemini_max_concurrent_calls = positive("GEMINI_MAX_CONCURRENT_CALLS", 16)? as usize;
        let database_group_commit_max = positive("DATABASE_GROUP_COMMIT_MAX", 64)? as usize;
        // The store's DEFAULT_GROUP_COMMIT_WRITERS (config sits below the store).
        let database_group_commit_writers = positive("DATABASE_GROUP_COMMIT_WRITERS", 2)? as usize;
        let gemini_max_calls_per_minute = positive("GEMINI_MAX_CALLS_PER_MINUTE", 600)?;
        let pricing_rate_per_minute = positive("PRICING_RATE_PER_MINUTE", 120)?;
        let pricing_rate_burst = positive("PRICING_RATE_BURST", 30)?;

        let metrics_addr = match get("METRICS_ADDR") {
            None => None,
            Some(v) => Some(v.parse().map_err(|_| ConfigError::Invalid {
                name: "METRICS_ADDR",
                value: v.clone(),
                reason: "expected host:port, e.g. 127.0.0.1:9100".into(),
            })?),
        };

        let cluster = match get("ARREGLAME_CLUSTER").map(|v| v.to_ascii_lowercase()) {
            None => None,
            Some(v) if v == "off" || v == "single" || v == "none" => None,
            Some(v) if v == "nats" => {
                let nats_url = get("NATS_URL").ok_or(ConfigError::Missing {
                    name: "NATS_URL",
                    hint: " (ARREGLAME_CLUSTER=nats needs the NATS servers, comma separated)",
                })?;
                let lease = positive(
                    "CITY_LEASE_SECONDS",
                    ClusterConfig::DEFAULT_LEASE.as_secs() as u32,
                )?;
                let node_id = get("NODE_ID").unwrap_or_else(ClusterConfig::default_node_id);
                // It is a NATS KV key: letters, digits, '-', '_' and '.'.
                if node_id.len() > 100
                    || !node_id
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                {
                    return Err(ConfigError::Invalid {
                        name: "NODE_ID",
                        value: node_id,
                        reason: "expected up to 100 letters, digits, '-', '_' or '.'".into(),
                    });
                }
                Some(ClusterConfig {
                    node_id,
                    nats_url,
                    lease: std::time::Duration::from_secs(lease.into()),
                })
            }
            Some(v) => {
                return Err(ConfigError::Invalid {
                    name: "ARREGLAME_CLUSTER",
                    value: v,
                    reason: "expected nats (several nodes) or off (one node, the default)".into(),
                })
            }
        };

        Ok(Config {
            cluster,
            metrics_token: get("METRICS_TOKEN"),
            metrics_addr,
            database_url,
            port,
            host: get("HOST").unwrap_or_else(|| "0.0.0.0".into()),
            log_level,
            log_file: get("LOG_FILE").map(PathBuf::from),
            gemini_api_key: get("GEMINI_API_KEY").or_else(|| get("API_KEY")),
            gemini_base_url: get("GEMINI_BASE_URL")
                .unwrap_or_else(|| "https://generativelanguage.googleapis.com".into()),
            gemini_model: get("GEMINI_MODEL").unwrap_or_else(|| "gemini-2.0-flash".into()),
            nats_url: get("NATS_URL"),
            jwt_secret,
            app_env,
            database_max_connections,
            database_group_commit_max,
            database_group_commit_writers,
            gemini_max_concurrent_calls,
            gemini_max_calls_per_minute,
            pricing_rate_per_minute,
            pricing_rate_burst,
        })
    }

    pub fn is_production(&self) -> bool {
        self.app_env == AppEnv::Production
    }
}

/// `ARREGLAME_CLUSTER=nats` and what goes with it.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    /// `NODE_ID`, by default the host name and the process id.
    pub node_id: String,
    /// `NATS_URL`: one server or a comma-separated list of a cluster's servers.
    pub nats_url: String,
    /// `CITY_LEASE_SECONDS` (4): how long a city stays owned after its owner's last
    /// renewal. A dead owner's cities are taken over about this long after it died.
    pub lease: Duration,
}

impl ClusterConfig {
    pub const DEFAULT_LEASE: Duration = Duration::from_secs(4);

    /// The node id when `NODE_ID` is not set: host name and pid, unique on one machine
    /// and readable on the ops page.
    pub fn default_node_id() -> String {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "node".into());
        format!("{host}-{}", std::process::id())
    }
}

/// JWT_SECRET alone, with the same rules as [`Config`] (a development default; at least 32
/// characters in production), for commands that sign tokens without a database.
pub fn jwt_secret_from_env() -> Result<String, ConfigError> {
    let mut vars: HashMap<String, String> = std::env::vars().collect();
    // Only the secret is wanted: any syntactically valid URL lets the rest parse.
    vars.entry("DATABASE_URL".into())
        .or_insert_with(|| "postgres://localhost/unused".into());
    Ok(Config::from_vars(vars)?.jwt_secret)
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let creds = &url[scheme_end + 3..at];
            match creds.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme_end + 3],
                    &creds[..colon],
                    &url[at..]
                ),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_apply_when_only_the_database_is_set() {
        let c = Config::from_vars(vars(&[("DATABASE_URL", "postgres://u@h/db")])).unwrap();
        assert_eq!(c.port, 3000);
        assert_eq!(c.log_level, "info");
        assert_eq!(c.app_env, AppEnv::Development);
        assert!(c.gemini_api_key.is_none());
    }

    #[test]
    fn group_commit_writers_default_to_two_and_must_be_positive() {
        let db = ("DATABASE_URL", "postgres://u@h/db");
        let c = Config::from_vars(vars(&[db])).unwrap();
        assert_eq!(
            (c.database_group_commit_max, c.database_group_commit_writers),
            (64, 2)
        );
        let c = Config::from_vars(vars(&[db, ("DATABASE_GROUP_COMMIT_WRITERS", "3")])).unwrap();
        assert_eq!(c.database_group_commit_writers, 3);
        assert!(matches!(
            Config::from_vars(vars(&[db, ("DATABASE_GROUP_COMMIT_WRITERS", "0")])),
            Err(ConfigError::Invalid {
                name: "DATABASE_GROUP_COMMIT_WRITERS",
                ..
            })
        ));
    }

    #[test]
    fn node_env_is_an_alias_of_app_env() {
        let c = Config::from_vars(vars(&[
            ("DATABASE_URL", "postgres://u@h/db"),
            ("NODE_ENV", "production"),
            ("JWT_SECRET", "0123456789abcdef0123456789abcdef"),
        ]))
        .unwrap();
        assert!(c.is_production());
    }

    #[test]
    fn the_cluster_is_off_by_default_and_nats_needs_its_servers_and_a_valid_node_id() {
        let db = ("DATABASE_URL", "postgres://u@h/db");
        assert_eq!(Config::from_vars(vars(&[db])).unwrap().cluster, None);
        let c = Config::from_vars(vars(&[
            db,
            ("ARREGLAME_CLUSTER", "nats"),
            ("NATS_URL", "nats://a:4222,nats://b:4222"),
            ("NODE_ID", "node-1"),
            ("CITY_LEASE_SECONDS", "6"),
        ]))
        .unwrap();
        let cluster = c.cluster.unwrap();
        assert_eq!(cluster.node_id, "node-1");
        assert_eq!(cluster.nats_url, "nats://a:4222,nats://b:4222");
        assert_eq!(cluster.lease, Duration::from_secs(6));
        let defaulted = Config::from_vars(vars(&[
            db,
            ("ARREGLAME_CLUSTER", "nats"),
            ("NATS_URL", "nats://a:4222"),
        ]))
        .unwrap()
        .cluster
        .unwrap();
        assert!(defaulted
            .node_id
            .ends_with(&format!("-{}", std::process::id())));
        assert_eq!(defaulted.lease, ClusterConfig::DEFAULT_LEASE);
        for (bad, name) in [
            (vec![("ARREGLAME_CLUSTER", "nats")], "NATS_URL"),
            (
                vec![
                    ("ARREGLAME_CLUSTER", "nats"),
                    ("NATS_URL", "nats://a:4222"),
                    ("NODE_ID", "node 1"),
                ],
                "NODE_ID",
            ),
            (vec![("ARREGLAME_CLUSTER", "raft")], "ARREGLAME_CLUSTER"),
        ] {
            let mut all = vec![db];
            all.extend(bad);
            let err = Config::from_vars(vars(&all)).unwrap_err().to_string();
            assert!(err.starts_with(name), "{err}");
        }
    }

    #[test]
    fn either_gemini_key_name_is_accepted() {
        let c = Config::from_vars(vars(&[
            ("DATABASE_URL", "postgres://u@h/db"),
            ("API_KEY", "k1"),
        ]))
        .unwrap();
        assert_eq!(c.gemini_api_key.as_deref(), Some("k1"));
        let c = Config::from_vars(vars(&[
            ("DATABASE_URL", "postgres://u@h/db"),
            ("GEMINI_API_KEY", "k2"),
        ]))
        .unwrap();
        assert_eq!(c.gemini_api_key.as_deref(), Some("k2"));
    }

    #[test]
    fn bad_values_name_the_variable() {
        let err = Config::from_vars(vars(&[
            ("DATABASE_URL", "postgres://u@h/db"),
            ("PORT", "70000"),
        ]))
        .unwrap_err();
        assert!(
            err.to_string().starts_with("PORT=\"70000\" is not valid"),
            "{err}"
        );
        let err = Config::from_vars(vars(&[
            ("DATABASE_URL", "postgres://u@h/db"),
            ("NODE_ENV", "staging"),
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("NODE_ENV"), "{err}");
        let err = Config::from_vars(vars(&[])).unwrap_err();
        assert!(
            err.to_string().contains("DATABASE_URL is required"),
            "{err}"
        );
        let err = Config::from_vars(vars(&[
            ("DATABASE_URL", "postgres://u@h/db"),
            ("APP_ENV", "production"),
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("JWT_SECRET"), "{err}");
    }

    #[test]
    fn secrets_are_redacted_in_debug_output() {
        let c = Config::from_vars(vars(&[
            ("DATABASE_URL", "postgres://u:hunter2@h/db"),
            ("JWT_SECRET", "topsecret"),
            ("API_KEY", "gemkey"),
        ]))
        .unwrap();
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("topsecret") && !shown.contains("gemkey"),
            "{shown}"
        );
    }
}
