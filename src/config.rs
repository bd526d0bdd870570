//! Configuration: built-in defaults (`config/casegate.toml`, compiled in) → an optional file →
//! `CASEGATE_*` environment variables → a validated [`Config`].
//!
//! The environment is passed in as an [`Env`] so tests never touch the process environment.
//! Raw structs deny unknown fields, so a typo in a file or a variable name is an error naming the
//! key instead of a silently ignored setting.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::env::Env;
use crate::secret::Secret;
use raw::RawConfig;

/// The shipped configuration file; also the lowest layer, so it can never drift from the defaults.
pub const DEFAULTS_TOML: &str = include_str!("../config/casegate.toml");

/// Shortest admin token accepted: the admin API can purge and replay, so its token must not be
/// guessable.
pub const MIN_ADMIN_TOKEN_CHARS: usize = 32;

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub mappings: PathBuf,
    /// Public base URL without a trailing slash, if configured.
    pub public_url: Option<String>,
    pub ingress: IngressConfig,
    pub buffer: BufferConfig,
    pub duvo: DuvoConfig,
    pub delivery: DeliverySettings,
    /// The admin API's bearer token; `None` keeps the admin API off.
    pub admin_token: Option<Secret>,
    /// A separate address for `/admin/*`; `None` serves it beside the webhooks.
    pub admin_listen: Option<SocketAddr>,
    pub log: LogConfig,
    /// The environment the configuration was loaded with; mapping files resolve `${VAR}`
    /// against it.
    pub env: Env,
}

#[derive(Debug, Clone)]
pub struct IngressConfig {
    pub max_body_bytes: usize,
    pub dedupe_ttl: Duration,
    pub client_timeout: Duration,
    /// HTTP worker threads; 0 means one per CPU core.
    pub workers: usize,
    /// Idle keep-alive time; `None` turns keep-alive off.
    pub keep_alive: Option<Duration>,
    /// Peers whose `Forwarded`/`X-Forwarded-*` headers are believed; nobody's by default.
    pub trusted_proxies: Vec<IpRange>,
    /// Body bytes all requests together may be receiving at once; beyond it, 503.
    pub max_inflight_body_bytes: usize,
    /// Largest total encoded size of the cases one event may produce.
    pub max_event_cases_bytes: usize,
    /// Bodies larger than this are verified on the blocking pool, not the HTTP worker, so one
    /// large HMAC does not stall the other connections of its worker.
    pub offload_verify_bytes: usize,
    /// Serve sources whose secret fell back to a `${VAR:-default}`. Off in production: the
    /// default is public (it is in the repository). `serve --sandbox` turns it on.
    pub allow_default_secrets: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BufferBackendKind {
    Embedded,
    Redis,
    /// Redis Cluster: `redis_url` holds comma-separated seed node URLs.
    RedisCluster,
}

#[derive(Debug, Clone)]
pub struct BufferConfig {
    pub backend: BufferBackendKind,
    pub path: PathBuf,
    /// May hold a password: a [`Secret`], so it is never printed.
    pub redis_url: Secret,
    pub key_prefix: String,
    pub op_timeout: Duration,
    pub retry_after: Duration,
    /// Redis replicas that must confirm a webhook's write before its 2xx (`WAIT`); 0: none.
    pub wait_replicas: u32,
    /// How long a queue stays registered after it last held a case (Redis).
    pub queue_retention: Duration,
    /// Most dedupe marks the embedded buffer indexes in memory.
    pub dedupe_index_marks: usize,
}

#[derive(Debug, Clone)]
pub struct DuvoConfig {
    pub base_url: String,
    pub api_key: Option<Secret>,
    /// Named keys for rules that say `api_key: <name>`.
    pub api_keys: std::collections::HashMap<String, Secret>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
}

/// Delivery pacing and retries (see `[delivery]` in `config/casegate.toml`).
#[derive(Debug, Clone)]
pub struct DeliverySettings {
    pub enabled: bool,
    pub rate: u32,
    pub window: Duration,
    pub margin: Duration,
    pub max_batch: usize,
    pub max_request_bytes: usize,
    pub linger: Duration,
    pub poll_interval: Duration,
    pub visibility_timeout: Duration,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub probe_interval: Duration,
    pub max_attempts: u32,
    /// This replica's consumer name in the buffer (the host name unless set).
    pub consumer: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Auto,
    Json,
    Text,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(String),
    #[error("configuration: `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
}

/// Command-line overrides, applied above every other layer.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub mappings: Option<PathBuf>,
    /// `serve --sandbox` points delivery at the local sandbox.
    pub duvo_base_url: Option<String>,
    pub duvo_api_key: Option<String>,
    /// `serve --sandbox` is development mode: sources may run on `${VAR:-default}` secrets.
    pub allow_default_secrets: bool,
}

/// Refuses a `CASEGATE_*` variable that names no setting, by the variable's own name (the
/// config layer would only say ``unknown field `foo` ``, which hides where the typo is).
/// Settings are the keys of config/casegate.toml; an empty table there (`duvo.api_keys`) is a
/// map whose keys are free.
fn check_variable_names(vars: &config::Map<String, String>) -> Result<(), ConfigError> {
    let defaults = config::Config::builder()
        .add_source(config::File::from_str(
            DEFAULTS_TOML,
            config::FileFormat::Toml,
        ))
        .build()
        .and_then(|c| c.try_deserialize::<config::Map<String, config::Value>>())
        .map_err(load_error)?;
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    for name in names {
        let path = name["CASEGATE_".len()..].to_ascii_lowercase();
        let mut level = defaults.clone();
        let segments: Vec<&str> = path.split("__").collect();
        for (i, segment) in segments.iter().enumerate() {
            if level.is_empty() && i > 0 {
                break;
            }
            let last = i + 1 == segments.len();
            match level.get(*segment).map(|v| v.clone().into_table()) {
                Some(Ok(table)) if !last => level = table,
                Some(Err(_)) if last => break,
                // A scalar given a sub-key, a table given a value, or no such key.
                Some(_) | None => {
                    return Err(ConfigError::Load(format!(
                        "unknown environment variable {name}: it names no setting (settings are listed in config/casegate.toml; `a.b` is CASEGATE_A__B)"
                    )));
                }
            }
        }
    }
    Ok(())
}

impl Config {
    /// Loads defaults, then `file` (when given), then `CASEGATE_*` variables from `env`, then
    /// `overrides`, and validates the result.
    pub fn load(
        file: Option<&Path>,
        env: &Env,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let raw = Self::load_raw(file, env, overrides)?;
        Self::validate(raw, env.clone(), overrides.allow_default_secrets)
    }

    /// The layered settings before validation.
    fn load_raw(
        file: Option<&Path>,
        env: &Env,
        overrides: &Overrides,
    ) -> Result<RawConfig, ConfigError> {
        let mut builder = config::Config::builder().add_source(config::File::from_str(
            DEFAULTS_TOML,
            config::FileFormat::Toml,
        ));
        if let Some(file) = file {
            if !file.exists() {
                return Err(ConfigError::Load(format!(
                    "file {} does not exist",
                    file.display()
                )));
            }
            builder = builder.add_source(config::File::from(file).format(config::FileFormat::Toml));
        }
        let vars = env
            .vars()
            .filter(|(k, _)| k.starts_with("CASEGATE_"))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        check_variable_names(&vars)?;
        builder = builder.add_source(
            config::Environment::with_prefix("CASEGATE")
                .prefix_separator("_")
                .separator("__")
                .source(Some(vars)),
        );
        if let Some(listen) = &overrides.listen {
            builder = builder
                .set_override("listen", listen.as_str())
                .map_err(load_error)?;
        }
        for (key, value) in [
            ("duvo.base_url", &overrides.duvo_base_url),
            ("duvo.api_key", &overrides.duvo_api_key),
        ] {
            if let Some(value) = value {
                builder = builder
                    .set_override(key, value.as_str())
                    .map_err(load_error)?;
            }
        }
        if let Some(mappings) = &overrides.mappings {
            builder = builder
                .set_override("mappings", mappings.to_string_lossy().as_ref())
                .map_err(load_error)?;
        }
        builder
            .build()
            .map_err(load_error)?
            .try_deserialize()
            .map_err(load_error)
    }

    fn validate(
        raw: RawConfig,
        env: Env,
        overrides_allow_default_secrets: bool,
    ) -> Result<Config, ConfigError> {
        let listen = raw.listen.parse().map_err(|_| ConfigError::Invalid {
            key: "listen",
            reason: format!("{:?} is not an address such as 0.0.0.0:8080", raw.listen),
        })?;
        let public_url = match raw.public_url.trim().trim_end_matches('/') {
            "" => None,
            url if url.starts_with("http://") || url.starts_with("https://") => {
                Some(url.to_string())
            }
            other => {
                return Err(ConfigError::Invalid {
                    key: "public_url",
                    reason: format!("{other:?} must start with http:// or https://"),
                });
            }
        };
        if raw.ingress.max_body_bytes == 0 {
            return Err(ConfigError::Invalid {
                key: "ingress.max_body_bytes",
                reason: "must be above 0".into(),
            });
        }
        let trusted_proxies = raw
            .ingress
            .trusted_proxies
            .items()
            .iter()
            .map(|entry| {
                IpRange::parse(entry).ok_or_else(|| ConfigError::Invalid {
                    key: "ingress.trusted_proxies",
                    reason: format!("{entry:?} is not an address or CIDR block such as 10.0.0.0/8"),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if !raw.admin.token.is_empty() && raw.admin.token.chars().count() < MIN_ADMIN_TOKEN_CHARS {
            // Never echo the token.
            return Err(ConfigError::Invalid {
                key: "admin.token",
                reason: format!(
                    "is shorter than {MIN_ADMIN_TOKEN_CHARS} characters; use a long random value (e.g. `openssl rand -hex 32`)"
                ),
            });
        }
        let backend = match raw.buffer.backend.as_str() {
            "embedded" => BufferBackendKind::Embedded,
            "redis" => BufferBackendKind::Redis,
            "redis-cluster" => BufferBackendKind::RedisCluster,
            other => {
                return Err(ConfigError::Invalid {
                    key: "buffer.backend",
                    reason: format!(
                        "{other:?} is not one of \"embedded\", \"redis\", \"redis-cluster\""
                    ),
                });
            }
        };
        // A cluster takes several seed URLs, comma-separated; a single server exactly one.
        let urls: Vec<&str> = if backend == BufferBackendKind::RedisCluster {
            raw.buffer.redis_url.split(',').map(str::trim).collect()
        } else {
            vec![raw.buffer.redis_url.as_str()]
        };
        if urls
            .iter()
            .any(|url| !url.starts_with("redis://") && !url.starts_with("rediss://"))
        {
            // Never echo the URL: it may carry a password.
            return Err(ConfigError::Invalid {
                key: "buffer.redis_url",
                reason: "must start with redis:// or rediss://".into(),
            });
        }
        if raw.buffer.key_prefix.is_empty() || raw.buffer.key_prefix.contains(['{', '}']) {
            return Err(ConfigError::Invalid {
                key: "buffer.key_prefix",
                reason: "must be non-empty and free of braces (it becomes the hash tag)".into(),
            });
        }
        let base_url = raw.duvo.base_url.trim_end_matches('/').to_string();
        if !base_url.starts_with("http://") && !base_url.starts_with("https://") {
            return Err(ConfigError::Invalid {
                key: "duvo.base_url",
                reason: format!("{base_url:?} must start with http:// or https://"),
            });
        }
        let delivery = raw.delivery;
        if delivery.rate == 0 || delivery.window_secs == 0 {
            return Err(ConfigError::Invalid {
                key: "delivery.rate",
                reason: "rate and window_secs must be above 0".into(),
            });
        }
        if !(1..=100).contains(&delivery.max_batch) {
            return Err(ConfigError::Invalid {
                key: "delivery.max_batch",
                reason: format!(
                    "{} is outside 1-100 (the API takes at most 100 cases per request)",
                    delivery.max_batch
                ),
            });
        }
        let admin_listen = match raw.admin.listen.trim() {
            "" => None,
            address => Some(address.parse().map_err(|_| ConfigError::Invalid {
                key: "admin.listen",
                reason: format!("{address:?} is not an address such as 127.0.0.1:9090"),
            })?),
        };
        let format = match raw.log.format.as_str() {
            "auto" => LogFormat::Auto,
            "json" => LogFormat::Json,
            "text" => LogFormat::Text,
            other => {
                return Err(ConfigError::Invalid {
                    key: "log.format",
                    reason: format!("{other:?} is not one of \"auto\", \"json\", \"text\""),
                });
            }
        };
        let non_empty = |s: String| (!s.is_empty()).then(|| Secret::new(s));
        Ok(Config {
            listen,
            mappings: raw.mappings,
            public_url,
            ingress: IngressConfig {
                max_body_bytes: raw.ingress.max_body_bytes,
                dedupe_ttl: Duration::from_secs(raw.ingress.dedupe_ttl_secs),
                client_timeout: Duration::from_secs(raw.ingress.client_timeout_secs.max(1)),
                workers: raw.ingress.workers,
                keep_alive: (raw.ingress.keep_alive_secs > 0)
                    .then(|| Duration::from_secs(raw.ingress.keep_alive_secs)),
                trusted_proxies,
                max_inflight_body_bytes: raw.ingress.max_inflight_body_bytes.max(1),
                max_event_cases_bytes: raw.ingress.max_event_cases_bytes.max(1),
                offload_verify_bytes: raw.ingress.offload_verify_bytes,
                allow_default_secrets: raw.ingress.allow_default_secrets
                    || overrides_allow_default_secrets,
            },
            buffer: BufferConfig {
                backend,
                path: raw.buffer.path,
                redis_url: Secret::new(raw.buffer.redis_url),
                key_prefix: raw.buffer.key_prefix,
                op_timeout: Duration::from_millis(raw.buffer.op_timeout_ms.max(1)),
                retry_after: Duration::from_secs(raw.buffer.retry_after_secs.max(1)),
                wait_replicas: raw.buffer.wait_replicas,
                queue_retention: Duration::from_secs(raw.buffer.queue_retention_secs.max(1)),
                dedupe_index_marks: raw.buffer.dedupe_index_marks,
            },
            duvo: DuvoConfig {
                base_url,
                api_key: non_empty(raw.duvo.api_key),
                api_keys: raw
                    .duvo
                    .api_keys
                    .into_iter()
                    .filter_map(|(k, v)| non_empty(v).map(|v| (k, v)))
                    .collect(),
                connect_timeout: Duration::from_secs(raw.duvo.connect_timeout_secs.max(1)),
                request_timeout: Duration::from_secs(raw.duvo.request_timeout_secs.max(1)),
            },
            delivery: DeliverySettings {
                enabled: delivery.enabled,
                rate: delivery.rate,
                window: Duration::from_secs(delivery.window_secs),
                margin: Duration::from_millis(delivery.margin_ms),
                max_batch: delivery.max_batch,
                max_request_bytes: delivery.max_request_bytes.max(1024),
                linger: Duration::from_millis(delivery.linger_ms),
                poll_interval: Duration::from_millis(delivery.poll_interval_ms.max(1)),
                visibility_timeout: Duration::from_secs(delivery.visibility_timeout_secs.max(1)),
                backoff_base: Duration::from_millis(delivery.backoff_base_ms.max(1)),
                backoff_max: Duration::from_secs(delivery.backoff_max_secs.max(1)),
                probe_interval: Duration::from_secs(delivery.probe_interval_secs.max(1)),
                max_attempts: delivery.max_attempts.max(1),
                consumer: consumer_name(&delivery.consumer),
            },
            admin_token: non_empty(raw.admin.token),
            admin_listen,
            log: LogConfig {
                format,
                level: raw.log.level,
            },
            env,
        })
    }
}

fn load_error(error: config::ConfigError) -> ConfigError {
    ConfigError::Load(error.to_string())
}

/// The configured consumer name, or the host name: stable across restarts of a container or
/// host, so a restarted replica resumes the cases it held at once.
fn consumer_name(configured: &str) -> String {
    let configured = configured.trim();
    if !configured.is_empty() {
        return configured.to_string();
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .ok()
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "casegate".to_string())
}

mod ip_range;
mod raw;
pub use ip_range::IpRange;

#[cfg(test)]
mod tests;
