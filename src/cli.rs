//! The command line: `casegate serve | check | try`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use std::future::Future;
use std::time::Duration;

use crate::clock::system_clock;
use crate::config::{Config, Overrides};
use crate::dlq::{self, DeadLetterView};
use crate::env::Env;
use crate::inbound::{Headers, InboundRequest};
use crate::ingest::BodyFormat;
use crate::mapping::examples::run_examples;
use crate::mapping::{
    CompiledMapping, DEFAULT_MAX_EVENT_CASES_BYTES, DeliveryIdFrom, MappingSet, Origin,
};
use crate::sandbox::SandboxConfig;
use crate::verify::Verified;

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
            serve(
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
                Err(error) => Err(error.to_string()),
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
            try_dead_letter(config, mapping, &id)
                .await
                .map(|output| out!("{output}"))
        }
        Command::Try {
            mapping,
            payload,
            headers,
            ..
        } => match (mapping, payload) {
            (Some(mapping), Some(payload)) => {
                try_mapping(&mapping, &payload, &headers, &Env::from_process())
                    .map(|output| out!("{output}"))
            }
            _ => Err("give a mapping file and a payload, or --dead-letter ID".into()),
        },
        Command::Dlq { config, action } => dlq(config, action).await,
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
        } => send_sample(config, &source, url, example).await,
        Command::Status { url, json, config } => status(config, url, json).await,
        Command::Healthcheck { url } => healthcheck(url).await,
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

async fn serve(
    config_file: Option<PathBuf>,
    mut overrides: Overrides,
    sandbox: Option<String>,
) -> Result<(), String> {
    if let Some(listen) = &sandbox {
        overrides.duvo_base_url = Some(format!("http://{listen}/v1"));
        overrides.duvo_api_key = Some(SandboxConfig::default().api_key);
        // Development mode: the shipped mappings' `${VAR:-default}` secrets may serve.
        overrides.allow_default_secrets = true;
    }
    let mut config = load_config(config_file.as_deref(), &overrides).map_err(|e| e.to_string())?;
    if sandbox.is_some() && config.admin_token.is_none() {
        let token = format!(
            "{:032x}{:032x}",
            rand::random::<u128>(),
            rand::random::<u128>()
        );
        let file = sandbox_token_file(&config);
        if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        write_private(&file, &token).map_err(|e| format!("{}: {e}", file.display()))?;
        out!(
            "sandbox: the admin API is on with the development token {token}\n\
             (saved in {}, where `casegate status` and `casegate dlq` find it; set \
             CASEGATE_ADMIN__TOKEN to choose your own)",
            file.display()
        );
        config.admin_token = Some(crate::secret::Secret::new(token));
    }
    crate::telemetry::init(&config.log);
    let listener = std::net::TcpListener::bind(config.listen)
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let (stop_sandbox, sandbox_stopped) = tokio::sync::oneshot::channel::<()>();
    let sandbox_task = match sandbox {
        Some(listen) => {
            let stopped = async move {
                let _ = sandbox_stopped.await;
            };
            let sandbox = tokio::spawn(async move {
                run_sandbox(SandboxConfig::default(), &listen, stopped).await
            });
            Some(sandbox)
        }
        None => None,
    };
    let result = crate::run(config, listener, crate::shutdown_signal())
        .await
        .map_err(|e| e.to_string());
    let _ = stop_sandbox.send(());
    if let Some(task) = sandbox_task {
        task.await.map_err(|e| e.to_string())??;
    }
    result
}

async fn run_sandbox(
    config: SandboxConfig,
    listen: &str,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let listener = std::net::TcpListener::bind(listen)
        .map_err(|e| format!("sandbox cannot listen on {listen}: {e}"))?;
    let address = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(
        cases = %format!("http://{address}/v1/queues/<queue_id>/cases"),
        rate = config.rate,
        window_s = config.window.as_secs(),
        "sandbox API (development stand-in for Duvo) listening; list what it received with GET on the cases URL"
    );
    let sandbox = crate::sandbox::Sandbox::try_new(config).map_err(|e| e.to_string())?;
    crate::sandbox::serve(sandbox, listener, shutdown)
        .await
        .map_err(|e| format!("sandbox: {e}"))
}

async fn dlq(config_file: Option<PathBuf>, action: DlqAction) -> Result<(), String> {
    let config =
        load_config(config_file.as_deref(), &Overrides::default()).map_err(|e| e.to_string())?;
    let buffer = match crate::buffer::Buffer::open(&config.buffer).await {
        Ok(buffer) => buffer,
        // The embedded store is held by a running gateway: ask that gateway instead.
        Err(error) => {
            return match AdminApi::from_config(&config, None) {
                Ok(admin) => dlq_remote(&admin, action).await,
                Err(_) => Err(format!(
                    "{error} (with the embedded buffer, stop the gateway first or give the CLI \
                     the gateway's admin token, CASEGATE_ADMIN__TOKEN)"
                )),
            };
        }
    };
    match action {
        DlqAction::List { source, limit } => {
            let letters = dlq::list(&buffer, source.as_deref(), limit)
                .await
                .map_err(|e| e.to_string())?;
            let views: Vec<_> = letters.iter().map(DeadLetterView::summary).collect();
            print_dead_letters(&serde_json::to_value(views).unwrap_or_default());
        }
        DlqAction::Show { id } => {
            let letter = dlq::show(&buffer, &id).await.map_err(|e| e.to_string())?;
            out!("{}", pretty(&DeadLetterView::full(&letter)));
        }
        DlqAction::Replay {
            id,
            all,
            source,
            dry_run,
        } => {
            let mappings = load_mapping_set(&config)?;
            match (id, all || source.is_some(), dry_run) {
                (Some(id), false, true) => {
                    let letter = dlq::show(&buffer, &id).await.map_err(|e| e.to_string())?;
                    let mapping = mappings.get(&letter.record.source);
                    let preview =
                        dlq::preview(&letter, mapping.map(|m| m.as_ref()), &system_clock());
                    print_previews(&[serde_json::to_value(preview).unwrap_or_default()]);
                }
                (None, true, true) => {
                    let mut tally = PreviewTally::default();
                    let mut after: Option<String> = None;
                    loop {
                        let page = dlq::preview_page(
                            &buffer,
                            &mappings,
                            &system_clock(),
                            source.as_deref(),
                            after.as_deref(),
                            dlq::PAGE,
                        )
                        .await
                        .map_err(|e| e.to_string())?;
                        tally.print(&json_values(&page.dry_run));
                        match page.next {
                            Some(next) => after = Some(next),
                            None => break,
                        }
                    }
                    tally.finish();
                }
                (Some(id), false, false) => {
                    let outcome = dlq::replay(&buffer, &mappings, &system_clock(), &id)
                        .await
                        .map_err(|e| e.to_string())?;
                    out!("{}", pretty(&outcome));
                }
                (None, true, false) => {
                    let outcomes = dlq::replay_all(
                        &buffer,
                        &mappings,
                        &system_clock(),
                        source.as_deref(),
                        |done, total, outcome| {
                            eprintln!(
                                "[{done}/{total}] {}",
                                serde_json::to_string(outcome).unwrap_or_default()
                            );
                        },
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                    print_replayed(&json_values(&outcomes));
                }
                _ => return Err("give a dead-letter id, or --all, or --source SOURCE".into()),
            }
        }
        DlqAction::Purge { id, all, source } => {
            let ids: Vec<String> = match (id, all || source.is_some()) {
                (Some(id), false) => vec![id],
                (None, true) => Vec::new(),
                _ => return Err("give a dead-letter id, or --all, or --source SOURCE".into()),
            };
            let removed = dlq::purge(&buffer, &ids, source.as_deref())
                .await
                .map_err(|e| e.to_string())?;
            out!("purged {removed} dead letter(s)");
        }
    }
    buffer.flush().await.map_err(|e| e.to_string())
}

/// Each item as JSON, for the printers that take what the local store and the admin API answer
/// alike.
fn json_values<T: serde::Serialize>(items: &[T]) -> Vec<serde_json::Value> {
    items
        .iter()
        .map(|item| serde_json::to_value(item).unwrap_or_default())
        .collect()
}

/// `casegate dlq` through a running gateway's admin API (the embedded store allows one process).
async fn dlq_remote(admin: &AdminApi, action: DlqAction) -> Result<(), String> {
    let query = |source: &Option<String>, extra: &[(&str, String)]| {
        let mut pairs: Vec<(&str, String)> = extra.to_vec();
        if let Some(source) = source {
            pairs.push(("source", source.clone()));
        }
        serde_urlencoded::to_string(pairs).unwrap_or_default()
    };
    match action {
        DlqAction::List { source, limit } => {
            let answer = admin
                .call(
                    "GET",
                    &format!(
                        "/admin/dlq?{}",
                        query(&source, &[("limit", limit.to_string())])
                    ),
                )
                .await?;
            print_dead_letters(&answer["dead_letters"]);
        }
        DlqAction::Show { id } => {
            let answer = admin
                .call("GET", &format!("/admin/dlq/{}", path_segment(&id)))
                .await?;
            out!("{}", pretty(&answer));
        }
        DlqAction::Replay {
            id,
            all,
            source,
            dry_run,
        } => {
            let dry = if dry_run { "?dry_run=true" } else { "" };
            match (id, all || source.is_some()) {
                (Some(id), false) => {
                    let answer = admin
                        .call(
                            "POST",
                            &format!("/admin/dlq/{}/replay{dry}", path_segment(&id)),
                        )
                        .await?;
                    if dry_run {
                        print_previews(&[answer]);
                    } else {
                        out!("{}", pretty(&answer));
                    }
                }
                (None, true) if dry_run => {
                    // Page by page, so neither side holds the whole store's previews.
                    let mut tally = PreviewTally::default();
                    let mut after: Option<String> = None;
                    loop {
                        let mut extra = vec![("dry_run", "true".to_string())];
                        extra.extend(after.take().map(|a| ("after", a)));
                        let answer = admin
                            .call(
                                "POST",
                                &format!("/admin/dlq/replay?{}", query(&source, &extra)),
                            )
                            .await?;
                        tally.print(&answer["dry_run"].as_array().cloned().unwrap_or_default());
                        match answer["next"].as_str() {
                            Some(next) => after = Some(next.to_string()),
                            None => break,
                        }
                    }
                    tally.finish();
                }
                (None, true) => {
                    let answer = admin
                        .call(
                            "POST",
                            &format!("/admin/dlq/replay?{}", query(&source, &[])),
                        )
                        .await?;
                    print_replayed(&answer["replayed"].as_array().cloned().unwrap_or_default());
                }
                _ => return Err("give a dead-letter id, or --all, or --source SOURCE".into()),
            }
        }
        DlqAction::Purge { id, all, source } => {
            let answer = match (id, all || source.is_some()) {
                (Some(id), false) => {
                    admin
                        .call("DELETE", &format!("/admin/dlq/{}", path_segment(&id)))
                        .await?
                }
                (None, true) => {
                    admin
                        .call("DELETE", &format!("/admin/dlq?{}", query(&source, &[])))
                        .await?
                }
                _ => return Err("give a dead-letter id, or --all, or --source SOURCE".into()),
            };
            out!("purged {} dead letter(s)", answer["purged"]);
        }
    }
    Ok(())
}

fn pretty(value: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}

/// A dead-letter id as one URL path segment (ids are `[0-9-]` today; this keeps a typo from
/// becoming another path).
fn path_segment(id: &str) -> String {
    id.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Dead-letter summaries (as JSON), one line each.
fn print_dead_letters(views: &serde_json::Value) {
    let views = views.as_array().cloned().unwrap_or_default();
    if views.is_empty() {
        out!("the dead-letter store is empty");
    }
    let text = |v: &serde_json::Value, key: &str| v[key].as_str().unwrap_or_default().to_string();
    for view in &views {
        out!(
            "{:<22} {:<16} {:<16} {}",
            text(view, "id"),
            text(view, "source"),
            text(view, "kind"),
            text(view, "reason")
        );
    }
}

/// The summary line of a replay.
fn print_replayed(outcomes: &[serde_json::Value]) {
    let failing = outcomes
        .iter()
        .filter(|o| o["result"] == "still_failing")
        .count();
    out!(
        "replayed {} dead letter(s); {failing} still failing",
        outcomes.len()
    );
}

/// Dry-run previews, per dead letter: the cases it would enqueue, or why it would still fail.
fn print_previews(previews: &[serde_json::Value]) {
    let mut tally = PreviewTally::default();
    tally.print(previews);
    tally.finish();
}

/// Prints dry-run previews as they arrive (a page at a time) and counts them for the summary.
#[derive(Default)]
struct PreviewTally {
    enqueue: usize,
    filtered: usize,
    failing: usize,
}

impl PreviewTally {
    fn print(&mut self, previews: &[serde_json::Value]) {
        for preview in previews {
            let id = preview["id"].as_str().unwrap_or_default();
            match preview["result"].as_str().unwrap_or_default() {
                "would_enqueue" => {
                    self.enqueue += 1;
                    let cases = preview["cases"].as_array().cloned().unwrap_or_default();
                    out!("{id}: would enqueue {} case(s):", cases.len());
                    out!("{}", pretty(&cases));
                }
                "would_filter" => {
                    self.filtered += 1;
                    out!(
                        "{id}: no rule matches any more; the dead letter would be removed, no case made"
                    );
                }
                _ => {
                    self.failing += 1;
                    out!(
                        "{id}: would still fail: {}",
                        preview["reason"].as_str().unwrap_or_default()
                    );
                }
            }
        }
    }

    fn finish(self) {
        let Self {
            enqueue,
            filtered,
            failing,
        } = self;
        out!(
            "dry run over {} dead letter(s): {enqueue} would enqueue, {filtered} would be filtered out, \
             {failing} would still fail; nothing was written",
            enqueue + filtered + failing
        );
    }
}

/// `casegate try --dead-letter ID [MAPPING]`: the cases the dead letter would now become.
async fn try_dead_letter(
    config_file: Option<PathBuf>,
    mapping_file: Option<PathBuf>,
    id: &str,
) -> Result<String, String> {
    let config =
        load_config(config_file.as_deref(), &Overrides::default()).map_err(|e| e.to_string())?;
    let letter = match crate::buffer::Buffer::open(&config.buffer).await {
        Ok(buffer) => {
            let letter = dlq::show(&buffer, id).await.map_err(|e| e.to_string());
            buffer.flush().await.map_err(|e| e.to_string())?;
            letter?
        }
        Err(error) => {
            let admin = AdminApi::from_config(&config, None).map_err(|_| {
                format!("{error} (stop the gateway first, or give the CLI its admin token, CASEGATE_ADMIN__TOKEN)")
            })?;
            let view = admin
                .call("GET", &format!("/admin/dlq/{}", path_segment(id)))
                .await?;
            dead_letter_from_view(&view)?
        }
    };
    let mapping = match &mapping_file {
        Some(file) => {
            let text =
                std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
            Some(Arc::new(
                CompiledMapping::compile(file, &text, &config.env).map_err(|e| e.to_string())?,
            ))
        }
        None => load_mapping_set(&config)?
            .get(&letter.record.source)
            .cloned(),
    };
    match dlq::preview(&letter, mapping.as_deref(), &system_clock()) {
        dlq::ReplayPreview::WouldEnqueue { cases, .. } => Ok(pretty(&cases)),
        dlq::ReplayPreview::WouldFilter { .. } => Ok(format!(
            "no rule matched: a replay of {id} would remove it and make no case"
        )),
        dlq::ReplayPreview::StillFailing { reason, .. } => Err(format!(
            "mapping failed: {reason} (a replay of {id} would leave it in the dead-letter store)"
        )),
    }
}

/// A dead letter rebuilt from the admin API's full view of it.
fn dead_letter_from_view(view: &serde_json::Value) -> Result<crate::case::DeadLetter, String> {
    let kind: crate::case::DeadLetterKind = serde_json::from_value(view["detail"].clone())
        .map_err(|e| format!("the admin API answered an unexpected dead letter: {e}"))?;
    Ok(crate::case::DeadLetter {
        id: view["id"].as_str().unwrap_or_default().to_string(),
        record: crate::case::DeadLetterRecord {
            source: view["source"].as_str().unwrap_or_default().to_string(),
            reason: view["reason"].as_str().unwrap_or_default().to_string(),
            created_at_ms: view["created_at_ms"].as_u64().unwrap_or_default(),
            kind,
        },
    })
}

/// Where `serve --sandbox` keeps its generated admin token: next to the buffer file, so a CLI
/// run with the same configuration finds it.
pub fn sandbox_token_file(config: &Config) -> PathBuf {
    config.buffer.path.with_file_name("sandbox-admin-token")
}

/// Writes a file only its owner can read.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    options.open(path)?.write_all(text.as_bytes())
}

/// A running gateway's admin API, as the CLI reaches it.
struct AdminApi {
    base: String,
    token: String,
    client: reqwest::Client,
}

impl AdminApi {
    /// The configured admin token, else the one `serve --sandbox` saved; the configured admin
    /// (or listen) address unless `url` is given.
    fn from_config(config: &Config, url: Option<String>) -> Result<AdminApi, String> {
        let token = match &config.admin_token {
            Some(token) => token.expose().to_string(),
            None => std::fs::read_to_string(sandbox_token_file(config))
                .map(|t| t.trim().to_string())
                .ok()
                .filter(|t| !t.is_empty())
                .ok_or("the admin API is off: set CASEGATE_ADMIN__TOKEN (here and on the gateway), or run `serve --sandbox`")?,
        };
        let base = url.unwrap_or_else(|| local_url(config.admin_listen.unwrap_or(config.listen)));
        Ok(AdminApi {
            base: base.trim_end_matches('/').to_string(),
            token,
            client: http_client()?,
        })
    }

    /// One admin call; a non-2xx answer becomes its `message`.
    async fn call(&self, method: &str, path: &str) -> Result<serde_json::Value, String> {
        let method = reqwest::Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
        let response = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| format!("cannot reach {}: {e}", self.base))?;
        let status = response.status();
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        if !status.is_success() {
            return Err(format!(
                "{} answered {status}: {}",
                self.base,
                body["message"].as_str().unwrap_or_default()
            ));
        }
        Ok(body)
    }
}

/// The configured mapping directory, compiled; every load error on its own line.
fn load_mapping_set(config: &Config) -> Result<MappingSet, String> {
    MappingSet::load_dir(&config.mappings, &config.env).map_err(|errors| {
        errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    })
}

fn http_client() -> Result<reqwest::Client, String> {
    crate::delivery::client::install_crypto_provider();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())
}

/// A URL for a local address: a wildcard listen address is reached on loopback.
fn local_url(address: std::net::SocketAddr) -> String {
    let port = address.port();
    if address.ip().is_unspecified() {
        format!("http://127.0.0.1:{port}")
    } else {
        format!("http://{address}")
    }
}

async fn status(
    config_file: Option<PathBuf>,
    url: Option<String>,
    json: bool,
) -> Result<(), String> {
    let config =
        load_config(config_file.as_deref(), &Overrides::default()).map_err(|e| e.to_string())?;
    let admin = AdminApi::from_config(&config, url)?;
    let base = admin.base.clone();
    let response = admin
        .client
        .get(format!("{base}/admin/status"))
        .bearer_auth(&admin.token)
        .send()
        .await
        .map_err(|e| format!("cannot reach {base}: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("{base} answered {}", response.status()));
    }
    let report: crate::status::StatusReport = response.json().await.map_err(|e| e.to_string())?;
    if json {
        out!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        write_stdout(format_args!("{}", crate::status::render(&report)));
    }
    Ok(())
}

async fn healthcheck(url: Option<String>) -> Result<(), String> {
    let base = match url {
        Some(url) => url,
        None => local_url(
            load_config(None, &Overrides::default())
                .map_err(|e| e.to_string())?
                .listen,
        ),
    };
    let response = http_client()?
        .get(format!("{}/healthz", base.trim_end_matches('/')))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("unhealthy: {}", response.status()))
    }
}

async fn send_sample(
    config_file: Option<PathBuf>,
    source: &str,
    url: Option<String>,
    example: Option<String>,
) -> Result<(), String> {
    let config =
        load_config(config_file.as_deref(), &Overrides::default()).map_err(|e| e.to_string())?;
    let mappings = load_mapping_set(&config)?;
    let mapping = mappings.get(source).ok_or_else(|| {
        format!(
            "no mapping for source `{source}` in {}",
            config.mappings.display()
        )
    })?;
    let sample = mapping
        .examples
        .iter()
        .find(|e| {
            example
                .as_ref()
                .map_or(e.expect_error.is_none() && !e.expect.is_empty(), |name| {
                    &e.name == name
                })
        })
        .ok_or_else(|| format!("{} has no such example", mapping.file))?;
    let body = match (&sample.payload, &sample.payload_file) {
        (Some(payload), _) => serde_json::to_vec(payload).map_err(|e| e.to_string())?,
        (None, Some(file)) => {
            std::fs::read(mapping.dir.join(file)).map_err(|e| format!("{}: {e}", file.display()))?
        }
        (None, None) => return Err(format!("example `{}` has no payload", sample.name)),
    };
    let base = url
        .unwrap_or_else(|| format!("http://{}", config.listen))
        .trim_end_matches('/')
        .to_string();
    let target = format!("{base}/hooks/{source}");
    let mut headers: Headers = sample
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    if headers.get("content-type").is_none() {
        headers.insert("content-type", "application/json");
    }
    if let Some(crate::mapping::FieldGetter::Header(name)) = &mapping.delivery_id {
        // A fresh delivery id, so a second run is not answered as a duplicate.
        headers = headers
            .iter()
            .filter(|(n, _)| !n.eq_ignore_ascii_case(name))
            .collect();
        headers.insert(name, format!("sample-{:016x}", rand::random::<u64>()));
    }
    let mut request = InboundRequest {
        method: "POST".into(),
        url: config
            .public_url
            .as_ref()
            .map_or(target.clone(), |public| format!("{public}/hooks/{source}")),
        headers,
        body: body.into(),
    };
    mapping
        .verifier
        .sign(&mut request, std::time::SystemTime::now());
    crate::delivery::client::install_crypto_provider();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| e.to_string())?;
    let mut outgoing = client.post(&target).body(request.body.clone());
    for (name, value) in request.headers.iter() {
        outgoing = outgoing.header(name, value);
    }
    let response = outgoing
        .send()
        .await
        .map_err(|e| format!("cannot reach {target}: {e}"))?;
    let status = response.status();
    let answer = response.text().await.unwrap_or_default();
    out!(
        "POST {target} ({} example `{}`)\n{status}\n{answer}",
        mapping.file,
        sample.name
    );
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("the gateway answered {status}"))
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

/// `casegate check`: compiles every mapping and runs its examples; prints every error, one per
/// line, and returns failure if there is any.
pub fn check(dir: &Path, env: &Env) -> ExitCode {
    check_within(dir, env, crate::mapping::DEFAULT_MAX_EVENT_CASES_BYTES)
}

/// [`check`], reporting `max_event_bytes` (`ingress.max_event_cases_bytes`) as each mapping's
/// bound on the size of one event's cases.
pub fn check_within(dir: &Path, env: &Env, max_event_bytes: usize) -> ExitCode {
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
        let results = run_examples(mapping, env);
        let failures: Vec<_> = results
            .iter()
            .filter_map(|r| r.failure.as_deref().map(|f| (&r.name, f)))
            .collect();
        if failures.is_empty() {
            out!(
                "ok    {} (source `{}`, version {}, {} rule(s), {} example(s) passed; limits: max_cases {}, max_event_cases_bytes {})",
                mapping.file,
                mapping.source,
                mapping.version,
                mapping.rule_names().count(),
                results.len(),
                mapping.max_cases,
                max_event_bytes
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
    out!("{} mapping file(s) OK", set.len());
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
    let mut parsed = Headers::new();
    for header in headers {
        let (name, value) = header
            .split_once(':')
            .ok_or_else(|| format!("header {header:?} is not `Name: value`"))?;
        parsed.insert(name.trim(), value.trim());
    }
    // A sample the operator supplies on this machine: nothing to verify.
    let request = Verified::trusted_local_input(InboundRequest::local(parsed, raw));
    let origin = Origin {
        request_id: "try",
        received_at_ms: 0,
        delivery_id: DeliveryIdFrom::Event,
    };
    let mapped = mapping
        .map_event(
            &request,
            BodyFormat::Json,
            &origin,
            DEFAULT_MAX_EVENT_CASES_BYTES,
        )
        .map_err(|e| format!("{}: not JSON: {e}", payload_file.display()))?;
    let cases = mapped.cases.map_err(|e| {
        format!("mapping failed: {e} (the event would go to the dead-letter store)")
    })?;
    let parsed = &request.get().headers;
    if cases.is_empty() {
        return Ok(mapping.no_match_reason(parsed));
    }
    let shown: Vec<_> = cases.iter().map(dlq::case_preview).collect();
    Ok(serde_json::to_string_pretty(&shown).expect("JSON values serialize"))
}
