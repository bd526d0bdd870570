//! The atomic swap of the mapping set: [`MappingReloader`] holds the set requests read and
//! replaces it whole. What triggers a reload (file changes, SIGHUP) is in [`super::watch`].
//!
//! Invariants:
//! - A reload compiles the whole directory ([`MappingSet::load_dir`]) before anything changes;
//!   only a set in which every file compiled replaces the serving one, with one
//!   `ArcSwap::store`. A request holds the `Arc` of the set it started with, so it never sees a
//!   half-loaded set, and a reload never changes a mapping under a running request.
//! - A broken file changes nothing that serves: the previous good set stays, every error line
//!   is logged (`tracing::error!`) and the latest one is kept in [`ReloadStatus::last_error`]
//!   until a reload succeeds again.
//! - Reloads never overlap (a mutex serializes them), so the newest set on disk always wins.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use serde::Serialize;

use super::set::SourceVersion;
use super::{MappingLoadError, MappingSet};
use crate::env::Env;

/// What readiness and admin endpoints show about reloads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ReloadStatus {
    /// When the set now serving was loaded, in milliseconds since the Unix epoch. The set
    /// loaded at startup counts.
    pub last_ok_at_ms: Option<u64>,
    /// When the latest failed reload was attempted.
    pub last_error_at_ms: Option<u64>,
    /// Every error of the latest reload, one per line, when that reload failed; `None` once a
    /// reload succeeds again. While set, the previous good set is still serving.
    pub last_error: Option<String>,
    /// Reloads that replaced the set (the startup load is not counted).
    pub reloads_ok: u64,
    /// Reloads refused because a file failed to load.
    pub reloads_failed: u64,
    /// Source → file and version of the set now serving.
    pub sources: BTreeMap<String, SourceVersion>,
    /// `source: key` for every rule of the serving set that names an API key not configured
    /// (its cases stay buffered until the key is set).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unconfigured_api_keys: Vec<String>,
}

/// Why a reload was started, for the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    FileChange,
    Signal,
    Manual,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::FileChange => "file_change",
            Trigger::Signal => "sighup",
            Trigger::Manual => "manual",
        }
    }
}

/// Reloads one mapping directory into the shared set that requests read.
pub struct MappingReloader {
    dir: PathBuf,
    env: Env,
    current: Arc<ArcSwap<MappingSet>>,
    status: ArcSwap<ReloadStatus>,
    /// Serializes reloads.
    reloading: Mutex<()>,
    /// The weak sources already warned about, so a reload repeats no warning.
    warned: Mutex<std::collections::BTreeMap<String, String>>,
    allow_default_secrets: bool,
    /// Names of the configured API keys (`duvo.api_keys`), which rules may name.
    api_keys: Vec<String>,
}

impl MappingReloader {
    /// A reloader for `dir` that stores into `current`, which holds the set loaded at startup
    /// (its sources are the initial status).
    pub fn new(dir: PathBuf, env: Env, current: Arc<ArcSwap<MappingSet>>) -> Self {
        let status = ReloadStatus {
            last_ok_at_ms: Some(now_ms()),
            sources: current.load().versions(),
            ..ReloadStatus::default()
        };
        let warned = current.load().weaknesses();
        MappingReloader {
            dir,
            env,
            current,
            warned: Mutex::new(warned),
            status: ArcSwap::from_pointee(status),
            reloading: Mutex::new(()),
            allow_default_secrets: false,
            api_keys: Vec::new(),
        }
    }

    /// The configured API key names (`duvo.api_keys`): every load checks that the rules name
    /// only these. Checks the serving set at once.
    pub fn with_api_keys(mut self, names: Vec<String>) -> Self {
        let missing = self.current.load().report_unconfigured_api_keys(&names);
        self.status.store(Arc::new(ReloadStatus {
            unconfigured_api_keys: missing,
            ..ReloadStatus::clone(&self.status.load())
        }));
        self.api_keys = names;
        self
    }

    /// Whether reloaded sources may run on development default secrets (only for the log and
    /// gauge; ingest enforces it).
    pub fn with_default_secrets_allowed(mut self, allow: bool) -> Self {
        self.allow_default_secrets = allow;
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A snapshot of the reload status.
    pub fn status(&self) -> ReloadStatus {
        ReloadStatus::clone(&self.status.load())
    }

    /// Compiles the directory and, when every file loads, swaps the new set in. Returns the
    /// number of sources now serving, or every load error (the previous set keeps serving).
    pub fn reload_now(&self) -> Result<usize, Vec<MappingLoadError>> {
        self.reload(Trigger::Manual)
    }

    /// [`Self::reload_now`], logging `trigger`.
    pub fn reload(&self, trigger: Trigger) -> Result<usize, Vec<MappingLoadError>> {
        let _serialized = self
            .reloading
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let dir = self.dir.display().to_string();
        match MappingSet::load_dir(&self.dir, &self.env) {
            Ok(set) => {
                let sources = set.versions();
                let before = self.status.load().sources.clone();
                let change = Change::between(&before, &sources);
                {
                    let mut warned = self
                        .warned
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                    *warned = set.warn_about_weak_sources_once(&warned);
                }
                crate::prometheus::register_zeros(&set, &[]);
                set.report_source_configuration(self.allow_default_secrets);
                let unconfigured_api_keys = set.report_unconfigured_api_keys(&self.api_keys);
                let n = set.len();
                // After a refused reload, success is news even when the set is as before.
                let recovered = self.status.load().last_error.is_some();
                self.current.store(Arc::new(set));
                metrics::counter!(crate::prometheus::MAPPING_RELOADS, "result" => "ok")
                    .increment(1);
                let previous = self.status.load();
                self.status.store(Arc::new(ReloadStatus {
                    last_ok_at_ms: Some(now_ms()),
                    last_error_at_ms: previous.last_error_at_ms,
                    last_error: None,
                    reloads_ok: previous.reloads_ok + 1,
                    reloads_failed: previous.reloads_failed,
                    sources,
                    unconfigured_api_keys,
                }));
                if change.is_empty() && trigger == Trigger::FileChange && !recovered {
                    tracing::debug!(%dir, sources = n, "mappings reloaded, nothing changed");
                } else {
                    tracing::info!(
                        %dir,
                        trigger = trigger.as_str(),
                        sources = n,
                        added = ?change.added,
                        removed = ?change.removed,
                        changed = ?change.changed,
                        "mappings reloaded"
                    );
                }
                Ok(n)
            }
            Err(errors) => {
                metrics::counter!(crate::prometheus::MAPPING_RELOADS, "result" => "failed")
                    .increment(1);
                for error in &errors {
                    tracing::error!(%dir, %error, "mapping file failed to load");
                }
                tracing::error!(
                    %dir,
                    trigger = trigger.as_str(),
                    errors = errors.len(),
                    "mapping reload refused; the previous mappings keep serving"
                );
                let previous = self.status.load();
                self.status.store(Arc::new(ReloadStatus {
                    last_error_at_ms: Some(now_ms()),
                    last_error: Some(
                        errors
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join("\n"),
                    ),
                    reloads_failed: previous.reloads_failed + 1,
                    ..ReloadStatus::clone(&previous)
                }));
                Err(errors)
            }
        }
    }
}

/// Sources added, removed and changed (new file or version) by a reload.
#[derive(Debug, Default)]
struct Change {
    added: Vec<String>,
    removed: Vec<String>,
    changed: Vec<String>,
}

impl Change {
    fn between(
        before: &BTreeMap<String, SourceVersion>,
        after: &BTreeMap<String, SourceVersion>,
    ) -> Change {
        let mut change = Change::default();
        for (source, version) in after {
            match before.get(source) {
                None => change.added.push(source.clone()),
                Some(old) if old != version => change.changed.push(source.clone()),
                Some(_) => {}
            }
        }
        change.removed = before
            .keys()
            .filter(|s| !after.contains_key(*s))
            .cloned()
            .collect();
        change
    }

    fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;
