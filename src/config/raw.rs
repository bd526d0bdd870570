//! The raw layer: what the file and the `CASEGATE_*` variables deserialize into, before
//! validation. Every struct denies unknown fields; those holding secrets redact them in `Debug`.

use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) listen: String,
    pub(super) mappings: PathBuf,
    pub(super) public_url: String,
    pub(super) ingress: RawIngress,
    pub(super) buffer: RawBuffer,
    pub(super) duvo: RawDuvo,
    pub(super) delivery: RawDelivery,
    pub(super) admin: RawAdmin,
    pub(super) log: RawLog,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIngress {
    pub(super) max_body_bytes: usize,
    pub(super) dedupe_ttl_secs: u64,
    pub(super) client_timeout_secs: u64,
    pub(super) workers: usize,
    pub(super) keep_alive_secs: u64,
    pub(super) trusted_proxies: StringList,
    pub(super) max_inflight_body_bytes: usize,
    pub(super) max_event_cases_bytes: usize,
    pub(super) offload_verify_bytes: usize,
    pub(super) allow_default_secrets: bool,
}

/// A list in a file, or a comma-separated string in an environment variable.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum StringList {
    Many(Vec<String>),
    One(String),
}

impl StringList {
    pub(super) fn items(&self) -> Vec<String> {
        match self {
            StringList::Many(items) => items.clone(),
            StringList::One(text) => text
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBuffer {
    pub(super) backend: String,
    pub(super) path: PathBuf,
    pub(super) redis_url: String,
    pub(super) key_prefix: String,
    pub(super) op_timeout_ms: u64,
    pub(super) retry_after_secs: u64,
    pub(super) wait_replicas: u32,
    pub(super) queue_retention_secs: u64,
    pub(super) dedupe_index_marks: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDuvo {
    pub(super) base_url: String,
    pub(super) api_key: String,
    pub(super) connect_timeout_secs: u64,
    pub(super) request_timeout_secs: u64,
    #[serde(default)]
    pub(super) api_keys: std::collections::HashMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDelivery {
    pub(super) enabled: bool,
    pub(super) rate: u32,
    pub(super) window_secs: u64,
    pub(super) margin_ms: u64,
    pub(super) max_batch: usize,
    pub(super) max_request_bytes: usize,
    pub(super) linger_ms: u64,
    pub(super) poll_interval_ms: u64,
    pub(super) visibility_timeout_secs: u64,
    pub(super) backoff_base_ms: u64,
    pub(super) backoff_max_secs: u64,
    pub(super) probe_interval_secs: u64,
    pub(super) max_attempts: u32,
    pub(super) consumer: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub(super) token: String,
    pub(super) listen: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    pub(super) format: String,
    pub(super) level: String,
}

// The raw layers hold the Redis URL (with its password), the API keys and the admin token as
// plain strings: their `Debug` redacts them.
impl std::fmt::Debug for RawBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawBuffer")
            .field("backend", &self.backend)
            .field("path", &self.path)
            .field("redis_url", &"***")
            .field("key_prefix", &self.key_prefix)
            .field("op_timeout_ms", &self.op_timeout_ms)
            .field("retry_after_secs", &self.retry_after_secs)
            .field("wait_replicas", &self.wait_replicas)
            .field("queue_retention_secs", &self.queue_retention_secs)
            .field("dedupe_index_marks", &self.dedupe_index_marks)
            .finish()
    }
}

impl std::fmt::Debug for RawDuvo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut key_names: Vec<&String> = self.api_keys.keys().collect();
        key_names.sort();
        f.debug_struct("RawDuvo")
            .field("base_url", &self.base_url)
            .field("api_key", &"***")
            .field("connect_timeout_secs", &self.connect_timeout_secs)
            .field("request_timeout_secs", &self.request_timeout_secs)
            .field("api_keys", &key_names)
            .finish()
    }
}

impl std::fmt::Debug for RawAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawAdmin")
            .field("token", &"***")
            .field("listen", &self.listen)
            .finish()
    }
}
