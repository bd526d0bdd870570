//! The command line: `casegate serve | check | try`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Config, Overrides};
use crate::env::Env;
use crate::inbound::Headers;
use crate::mapping::examples::run_examples;
use crate::mapping::{CompiledMapping, EventInput, MappingSet};

#[derive(Debug, Parser)]
#[command(
    name = "casegate",
    version,
    about = "Webhook ingestion gateway: verified webhooks in, Duvo cases out"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    Serve {
        /// Configuration file (TOML); built-in defaults apply when absent.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Listen address, e.g. 0.0.0.0:8080.
        #[arg(long)]
        listen: Option<String>,
        /// Directory of mapping files.
        #[arg(long)]
        mappings: Option<PathBuf>,
    },
    /// Load and compile every mapping file; exit non-zero on any error.
    Check {
        /// Directory of mapping files (default: the configured one).
        dir: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Show the cases a payload would become under one mapping file, without sending anything.
    Try {
        /// The mapping file.
        mapping: PathBuf,
        /// The payload: a JSON file, or `-` for standard input.
        payload: PathBuf,
        /// A request header, `Name: value` (repeatable).
        #[arg(long = "header", short = 'H')]
        headers: Vec<String>,
    },
}

/// Loads the configuration for a subcommand, reading `config/casegate.toml` when it exists and
/// no file was named.
pub fn load_config(
    file: Option<&Path>,
    overrides: &Overrides,
) -> Result<Config, crate::config::ConfigError> {
    let default = Path::new("config/casegate.toml");
    let file = file.or_else(|| default.exists().then_some(default));
    Config::load(file, &Env::from_process(), overrides)
}

/// `casegate check`: compiles every mapping and runs its examples; prints every error, one per
/// line, and returns failure if there is any.
pub fn check(dir: &Path, env: &Env) -> ExitCode {
    let set = match MappingSet::load_dir(dir, env) {
        Ok(set) => set,
        Err(errors) => {
            for error in &errors {
                eprintln!("error {error}");
            }
            eprintln!("{} error(s)", errors.len());
            return ExitCode::FAILURE;
        }
    };
    let mut failed = 0;
    for mapping in set.iter() {
        let results = run_examples(mapping);
        let failures: Vec<_> = results
            .iter()
            .filter_map(|r| r.failure.as_deref().map(|f| (&r.name, f)))
            .collect();
        if failures.is_empty() {
            println!(
                "ok    {} (source `{}`, version {}, {} rule(s), {} example(s) passed)",
                mapping.file,
                mapping.source,
                mapping.version,
                mapping.rule_names().count(),
                results.len()
            );
        }
        for (name, failure) in failures {
            failed += 1;
            eprintln!("FAIL  {}: example `{name}`", mapping.file);
            for line in failure.lines() {
                eprintln!("      {line}");
            }
        }
    }
    if failed > 0 {
        eprintln!("{failed} example(s) failed");
        return ExitCode::FAILURE;
    }
    println!("{} mapping file(s) OK", set.len());
    ExitCode::SUCCESS
}

/// `casegate try`: maps one payload and prints the cases as JSON.
pub fn try_mapping(
    mapping_file: &Path,
    payload_file: &Path,
    headers: &[String],
    env: &Env,
) -> Result<String, String> {
    let text = std::fs::read_to_string(mapping_file)
        .map_err(|e| format!("{}: {e}", mapping_file.display()))?;
    let mapping = CompiledMapping::compile(mapping_file, &text, env).map_err(|e| e.to_string())?;
    let raw = if payload_file == Path::new("-") {
        std::io::read_to_string(std::io::stdin()).map_err(|e| format!("stdin: {e}"))?
    } else {
        std::fs::read_to_string(payload_file)
            .map_err(|e| format!("{}: {e}", payload_file.display()))?
    };
    let payload: serde_json::Value = serde_json::from_str(&raw)
        .map_err(|e| format!("{}: not JSON: {e}", payload_file.display()))?;
    let mut parsed = Headers::new();
    for header in headers {
        let (name, value) = header
            .split_once(':')
            .ok_or_else(|| format!("header {header:?} is not `Name: value`"))?;
        parsed.insert(name.trim(), value.trim());
    }
    let delivery_id = mapping.delivery_id_of(&payload, &parsed);
    let input = EventInput {
        payload: &payload,
        headers: &parsed,
        request_id: "try",
        delivery_id: delivery_id.as_deref(),
        received_at_ms: 0,
    };
    let cases = mapping.apply(&input).map_err(|e| {
        format!("mapping failed: {e} (the event would go to the dead-letter store)")
    })?;
    if cases.is_empty() {
        return Ok("no rule matched: the event would be acknowledged and filtered out (200 {\"accepted\": 0})".into());
    }
    let shown: Vec<_> = cases
        .iter()
        .map(|c| {
            serde_json::json!({
                "rule": c.meta.rule,
                "queue": c.queue,
                "title": c.title,
                "data": serde_json::from_str::<serde_json::Value>(&c.data).unwrap_or(serde_json::Value::Null),
                "labels": c.labels,
            })
        })
        .collect();
    Ok(serde_json::to_string_pretty(&shown).expect("JSON values serialize"))
}
