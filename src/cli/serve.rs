//! `casegate serve` (optionally with the sandbox API beside it) and `casegate sandbox`.

use super::*;

pub(super) async fn serve(
    config_file: Option<PathBuf>,
    mut overrides: Overrides,
    sandbox: Option<String>,
) -> Result<(), CliError> {
    if let Some(listen) = &sandbox {
        overrides.duvo_base_url = Some(format!("http://{listen}/v1"));
        overrides.duvo_api_key = Some(SandboxConfig::default().api_key);
        // Development mode: the shipped mappings' `${VAR:-default}` secrets may serve.
        overrides.allow_default_secrets = true;
    }
    let mut config = load_config(config_file.as_deref(), &overrides)?;
    if sandbox.is_some() && config.admin_token.is_none() {
        let token = format!(
            "{:032x}{:032x}",
            rand::random::<u128>(),
            rand::random::<u128>()
        );
        let file = sandbox_token_file(&config);
        if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(file_error(dir))?;
        }
        write_private(&file, &token).map_err(file_error(&file))?;
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
    let result = crate::run(config, listener, crate::shutdown_signal()).await;
    let _ = stop_sandbox.send(());
    if let Some(task) = sandbox_task {
        task.await??;
    }
    Ok(result?)
}

pub(super) async fn run_sandbox(
    config: SandboxConfig,
    listen: &str,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), CliError> {
    let listener = std::net::TcpListener::bind(listen)
        .map_err(|e| format!("sandbox cannot listen on {listen}: {e}"))?;
    let address = listener.local_addr()?;
    tracing::info!(
        cases = %format!("http://{address}/v1/queues/<queue_id>/cases"),
        rate = config.rate,
        window_s = config.window.as_secs(),
        "sandbox API (development stand-in for Duvo) listening; list what it received with GET on the cases URL"
    );
    // The sandbox's own errors, as it words them.
    let sandbox =
        casegate_sandbox::Sandbox::try_new(config).map_err(|e| CliError::Failed(e.to_string()))?;
    casegate_sandbox::serve_until(sandbox, listener, shutdown)
        .await
        .map_err(|e| format!("sandbox: {e}").into())
}

/// Where `serve --sandbox` keeps its generated admin token: next to the buffer file, so a CLI
/// run with the same configuration finds it.
pub fn sandbox_token_file(config: &Config) -> PathBuf {
    config.buffer.path.with_file_name("sandbox-admin-token")
}

/// Writes a file only its owner can read.
pub(super) fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
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
