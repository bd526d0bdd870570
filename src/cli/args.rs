//! The command line's arguments (clap).

use super::*;
use clap::{Parser, Subcommand};

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
        /// Configuration file (TOML); `config/casegate.toml` when it exists, else built-in defaults.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Listen address, e.g. 0.0.0.0:8080.
        #[arg(long)]
        listen: Option<String>,
        /// Directory of mapping files.
        #[arg(long)]
        mappings: Option<PathBuf>,
        /// Also run the local sandbox API (a development stand-in for Duvo) and deliver to it.
        #[arg(long)]
        sandbox: bool,
        /// Where the sandbox listens, with --sandbox.
        #[arg(long, default_value = "127.0.0.1:8081")]
        sandbox_listen: String,
    },
    /// Load and compile every mapping file and run their examples; exit non-zero on any error.
    Check {
        /// Directory of mapping files (default: the configured one).
        dir: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Show the cases a payload would become under one mapping file, without sending anything.
    /// With --dead-letter ID: what the current mapping (or MAPPING, when given) would now make of
    /// that dead letter.
    Try {
        /// The mapping file (with --dead-letter: optional, default the configured mapping of the
        /// dead letter's source).
        #[arg(required_unless_present = "dead_letter")]
        mapping: Option<PathBuf>,
        /// The payload: a JSON file, or `-` for standard input.
        #[arg(
            required_unless_present = "dead_letter",
            conflicts_with = "dead_letter"
        )]
        payload: Option<PathBuf>,
        /// A request header, `Name: value` (repeatable).
        #[arg(long = "header", short = 'H')]
        headers: Vec<String>,
        /// A dead letter's id: map its stored payload and headers instead of a file.
        #[arg(long)]
        dead_letter: Option<String>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Inspect, replay and purge the dead-letter store (works on the configured buffer; with the
    /// embedded buffer, stop the gateway first or use the admin API).
    Dlq {
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        action: DlqAction,
    },
    /// Run the local sandbox API: a contract-faithful stand-in for the Duvo cases endpoint, for
    /// development and tests only.
    Sandbox {
        #[arg(long, default_value = "127.0.0.1:8081")]
        listen: String,
        /// Shorthand for --listen 127.0.0.1:PORT.
        #[arg(long)]
        port: Option<u16>,
        /// The bearer token it accepts (several comma-separated, each with its own limit).
        #[arg(long, default_value = "dv_sandbox")]
        api_key: String,
        /// Requests allowed per window.
        #[arg(long, default_value_t = 300)]
        rate: u32,
        /// The rate-limit window, in seconds.
        #[arg(long, default_value_t = 60)]
        window: u64,
    },
    /// Print the JSON Schema of mapping files, for editors' validation and completion.
    Schema,
    /// Show a running gateway's state per source and per queue (through its admin API).
    Status {
        /// The admin API's base URL (default: the configured admin or listen address).
        #[arg(long)]
        url: Option<String>,
        /// Print the JSON report instead of a table.
        #[arg(long)]
        json: bool,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Exit 0 when the gateway answers GET /healthz (a container HEALTHCHECK without curl).
    Healthcheck {
        /// The gateway's base URL (default: http:// + the configured listen address).
        #[arg(long)]
        url: Option<String>,
    },
    /// Send a correctly signed sample webhook for SOURCE (an example from its mapping file) to a
    /// running gateway.
    SendSample {
        source: String,
        /// The gateway's base URL (default: http:// + the configured listen address).
        #[arg(long)]
        url: Option<String>,
        /// Which example of the mapping file (default: the first with a payload).
        #[arg(long)]
        example: Option<String>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum DlqAction {
    /// List dead letters, oldest first.
    List {
        #[arg(long)]
        source: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Show one dead letter in full.
    Show { id: String },
    /// Replay one dead letter, every one (--all), or every one of a source (--source).
    Replay {
        id: Option<String>,
        #[arg(long)]
        all: bool,
        #[arg(long)]
        source: Option<String>,
        /// Show per dead letter the cases it would enqueue or the error it would still hit,
        /// and write nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Delete one dead letter, or every one (--all / --source).
    Purge {
        id: Option<String>,
        #[arg(long)]
        all: bool,
        #[arg(long)]
        source: Option<String>,
    },
}
