//! The command line: `casegate serve | check | try | dlq | sandbox | send-sample | status |
//! healthcheck | schema`. One file per command (or family); [`args`] holds the arguments and
//! [`client`] the one HTTP client for a running gateway.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use std::future::Future;
use std::time::Duration;

use crate::clock::system_clock;
use crate::config::{Config, Overrides};
use crate::dlq::{self, DeadLetterView};
use crate::env::Env;
use crate::inbound::{Headers, InboundRequest};
use crate::ingest::BodyFormat;
use crate::mapping::examples::run_examples;
use crate::mapping::{CompiledMapping, DeliveryIdFrom, MappingSet, Origin};
use crate::verify::Verified;
use casegate_sandbox::SandboxConfig;

/// `println!` for command output that exits quietly when the reader has gone away
/// (`casegate try ... | head`): a closed pipe is not an error worth a backtrace.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// Writes to standard output; on a broken pipe, exits the process with success and no noise.
pub fn write_stdout(args: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    if let Err(error) = stdout.write_fmt(args).and_then(|()| stdout.flush()) {
        if error.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("casegate: cannot write to standard output: {error}");
        std::process::exit(1);
    }
}

/// Why a command failed; printed as `casegate: <error>`.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// Every load error of a mapping directory, one per line.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Mappings(Vec<crate::mapping::MappingLoadError>),
    #[error(transparent)]
    Mapping(#[from] crate::mapping::MappingLoadError),
    #[error(transparent)]
    Buffer(#[from] crate::buffer::BufferError),
    #[error(transparent)]
    Dlq(#[from] crate::dlq::DlqError),
    #[error(transparent)]
    Run(#[from] crate::RunError),
    #[error("{}: {source}", .path.display())]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot reach {url}: {source}")]
    Unreachable { url: String, source: reqwest::Error },
    #[error("{url} answered {status}: {message}")]
    Answered {
        url: String,
        status: reqwest::StatusCode,
        message: String,
    },
    #[error(transparent)]
    Http(#[from] reqwest::Error),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Task(#[from] tokio::task::JoinError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The command cannot do what was asked; the message says why.
    #[error("{0}")]
    Failed(String),
}

impl From<String> for CliError {
    fn from(message: String) -> Self {
        CliError::Failed(message)
    }
}

impl From<&str> for CliError {
    fn from(message: &str) -> Self {
        CliError::Failed(message.to_string())
    }
}

/// `Err` with the path it concerns, for file reads and writes.
fn file_error(path: &Path) -> impl FnOnce(std::io::Error) -> CliError + '_ {
    move |source| CliError::File {
        path: path.to_path_buf(),
        source,
    }
}

mod args;
mod check;
mod client;
mod dead_letters;
mod sample;
mod serve;
mod status;
mod try_mapping;

pub use args::{Cli, Command, DlqAction};
pub use check::{check, check_within};
use client::{AdminApi, http_client, local_url, path_segment};
use serve::run_sandbox;
pub use serve::sandbox_token_file;
pub use try_mapping::try_mapping;

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Serve {
            config,
            listen,
            mappings,
            sandbox,
            sandbox_listen,
        } => {
            serve::serve(
                config,
                Overrides {
                    listen,
                    mappings,
                    ..Overrides::default()
                },
                sandbox.then_some(sandbox_listen),
            )
            .await
        }
        Command::Check { dir, config } => {
            match load_config(config.as_deref(), &Overrides::default()) {
                Ok(config) => {
                    return check_within(
                        dir.as_deref().unwrap_or(&config.mappings),
                        &config.env,
                        config.ingress.max_event_cases_bytes,
                    );
                }
                Err(error) => Err(error.into()),
            }
        }
        Command::Try {
            mapping,
            payload,
            headers,
            dead_letter: Some(id),
            config,
        } => {
            let _ = (payload, headers);
            try_mapping::try_dead_letter(config, mapping, &id)
                .await
                .map(|output| out!("{output}"))
        }
        Command::Try {
            mapping,
            payload,
            headers,
            config,
            ..
        } => match (mapping, payload) {
            (Some(mapping), Some(payload)) => {
                // The bound on one event's cases is the gateway's, so `try` refuses what ingest
                // would dead-letter for its size.
                load_config(config.as_deref(), &Overrides::default())
                    .map_err(CliError::from)
                    .and_then(|config| {
                        try_mapping(
                            &mapping,
                            &payload,
                            &headers,
                            &Env::from_process(),
                            config.ingress.max_event_cases_bytes,
                        )
                    })
                    .map(|output| out!("{output}"))
            }
            _ => Err("give a mapping file and a payload, or --dead-letter ID".into()),
        },
        Command::Dlq { config, action } => dead_letters::dlq(config, action).await,
        Command::Sandbox {
            listen,
            port,
            api_key,
            rate,
            window,
        } => {
            let listen = port.map(|p| format!("127.0.0.1:{p}")).unwrap_or(listen);
            let config = SandboxConfig {
                api_key,
                rate,
                window: Duration::from_secs(window.max(1)),
                ..SandboxConfig::default()
            };
            run_sandbox(config, &listen, crate::shutdown_signal()).await
        }
        Command::SendSample {
            source,
            url,
            example,
            config,
        } => sample::send_sample(config, &source, url, example).await,
        Command::Status { url, json, config } => status::status(config, url, json).await,
        Command::Healthcheck { url } => status::healthcheck(url).await,
        Command::Schema => {
            out!(
                "{}",
                serde_json::to_string_pretty(&crate::mapping::mapping_schema())
                    .expect("JSON values serialize")
            );
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("casegate: {error}");
            ExitCode::FAILURE
        }
    }
}

fn pretty(value: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}

/// The configured mapping directory, compiled; every load error on its own line.
fn load_mapping_set(config: &Config) -> Result<MappingSet, CliError> {
    MappingSet::load_dir(&config.mappings, &config.env).map_err(CliError::Mappings)
}

/// How the CLI maps dead letters again: the wall clock and the configured bound on one event's
/// cases, as the gateway would.
fn remap(config: &Config) -> dlq::Remap {
    dlq::Remap {
        clock: system_clock(),
        max_event_bytes: config.ingress.max_event_cases_bytes,
    }
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
