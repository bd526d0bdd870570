//! A directory of mapping files, compiled as one set.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use super::{CompiledMapping, MappingLoadError};
use crate::env::Env;

/// Which file serves a source, and the first 12 hex digits of its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SourceVersion {
    pub file: String,
    pub version: String,
}

/// Every source's compiled mapping, keyed by source name. Immutable: a reload builds a new set.
#[derive(Debug, Clone, Default)]
pub struct MappingSet {
    by_source: HashMap<String, Arc<CompiledMapping>>,
}

impl MappingSet {
    /// Compiles every `*.yaml` / `*.yml` file in `dir`. Returns every error found, not just the
    /// first, so `casegate check` can report them all at once.
    pub fn load_dir(dir: &Path, env: &Env) -> Result<MappingSet, Vec<MappingLoadError>> {
        let io_error = |e: std::io::Error| {
            vec![MappingLoadError::Io {
                file: dir.display().to_string(),
                message: e.to_string(),
            }]
        };
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .map_err(io_error)?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_file()
                    && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
            })
            .collect();
        files.sort();
        let mut errors = Vec::new();
        let mut by_source: HashMap<String, Arc<CompiledMapping>> = HashMap::new();
        for file in files {
            match std::fs::read_to_string(&file) {
                Err(e) => errors.push(MappingLoadError::Io {
                    file: file.display().to_string(),
                    message: e.to_string(),
                }),
                Ok(text) => match CompiledMapping::compile(&file, &text, env) {
                    Err(e) => errors.push(e),
                    Ok(mapping) => {
                        if let Some(other) = by_source.get(&mapping.source) {
                            errors.push(MappingLoadError::Invalid {
                                file: mapping.file.clone(),
                                rule: None,
                                field: "source".into(),
                                message: format!(
                                    "source `{}` is already defined by {}",
                                    mapping.source, other.file
                                ),
                            });
                        } else {
                            by_source.insert(mapping.source.clone(), Arc::new(mapping));
                        }
                    }
                },
            }
        }
        if errors.is_empty() {
            Ok(MappingSet { by_source })
        } else {
            Err(errors)
        }
    }

    pub fn from_mappings(mappings: impl IntoIterator<Item = CompiledMapping>) -> MappingSet {
        MappingSet {
            by_source: mappings
                .into_iter()
                .map(|m| (m.source.clone(), Arc::new(m)))
                .collect(),
        }
    }

    pub fn get(&self, source: &str) -> Option<&Arc<CompiledMapping>> {
        self.by_source.get(source)
    }

    /// Mappings sorted by source name.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<CompiledMapping>> {
        let mut all: Vec<_> = self.by_source.values().collect();
        all.sort_by(|a, b| a.source.cmp(&b.source));
        all.into_iter()
    }

    pub fn len(&self) -> usize {
        self.by_source.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_source.is_empty()
    }

    /// Logs a warning for every source that accepts unauthenticated webhooks or runs on a
    /// development default secret. Called after the first load and after every reload.
    pub fn warn_about_weak_sources(&self) {
        self.warn_about_weak_sources_once(&BTreeMap::new());
    }

    /// Each weak source and how it is weak (`unauthenticated`, or `default_secret` with its
    /// scheme).
    pub fn weaknesses(&self) -> BTreeMap<String, String> {
        self.iter()
            .filter_map(|mapping| {
                let weakness = if mapping.verifier.is_none() {
                    "unauthenticated".to_string()
                } else if mapping.verifier.uses_default_secret() {
                    format!("default_secret:{}", mapping.verifier.scheme_name())
                } else {
                    return None;
                };
                Some((mapping.source.clone(), weakness))
            })
            .collect()
    }

    /// Warns about the weak sources whose weakness is not already in `warned` (a reload does not
    /// repeat what startup or the previous reload said), and returns the new weaknesses.
    pub fn warn_about_weak_sources_once(
        &self,
        warned: &BTreeMap<String, String>,
    ) -> BTreeMap<String, String> {
        let now = self.weaknesses();
        for (source, weakness) in &now {
            if warned.get(source) == Some(weakness) {
                continue;
            }
            match weakness.split_once(':') {
                None => tracing::warn!(
                    source = %source,
                    "source accepts unauthenticated webhooks (verify.scheme: none)"
                ),
                Some((_, scheme)) => tracing::warn!(
                    source = %source,
                    scheme,
                    "source runs on a development default secret; set its environment variable"
                ),
            }
        }
        now
    }

    /// Logs an error for every source refused because its secret is a development default
    /// (unless `allow_default_secrets`), and sets the `casegate_source_configured` gauge of every
    /// source. Called after the first load and after every reload.
    pub fn report_source_configuration(&self, allow_default_secrets: bool) {
        for mapping in self.iter() {
            let defaulted = mapping.verifier.defaulted_variables();
            let configured = allow_default_secrets || defaulted.is_empty();
            if !configured {
                tracing::error!(
                    source = %mapping.source,
                    variables = %defaulted.join(", "),
                    "source not served (503 source_not_configured): its secret is a development default; set the variables"
                );
            }
            metrics::gauge!(crate::prometheus::SOURCE_CONFIGURED, "source" => mapping.source.clone())
                .set(if configured { 1.0 } else { 0.0 });
        }
    }

    /// Every `source: key` whose rules name an API key missing from `configured` (the names
    /// under `duvo.api_keys`), each logged as an error: such cases stay buffered. Run on the
    /// startup load and on every reload.
    pub fn report_unconfigured_api_keys(&self, configured: &[String]) -> Vec<String> {
        let mut missing = Vec::new();
        for mapping in self.iter() {
            for name in mapping
                .api_key_names()
                .filter(|n| !configured.iter().any(|c| c == n))
            {
                tracing::error!(source = %mapping.source, key = name, "a rule names an API key that is not configured (CASEGATE_DUVO__API_KEYS__<NAME>); its cases stay buffered");
                let entry = format!("{}: {name}", mapping.source);
                if !missing.contains(&entry) {
                    missing.push(entry);
                }
            }
        }
        missing
    }

    /// Each source's mapping file and version, sorted by source: what a reload changed, and what
    /// the status endpoint shows.
    pub fn versions(&self) -> BTreeMap<String, SourceVersion> {
        self.by_source
            .values()
            .map(|m| {
                (
                    m.source.clone(),
                    SourceVersion {
                        file: m.file.clone(),
                        version: m.version.clone(),
                    },
                )
            })
            .collect()
    }
}
