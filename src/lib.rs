//! casegate: a webhook ingestion gateway. Webhooks walk one road:
//! ingress ([`http`]) → verify ([`verify`]) → map ([`mapping`]) → buffer ([`buffer`]) → deliver.
//!
//! [`run`] takes an already-bound listener and a shutdown future, so tests start the real
//! server on port 0 and stop it cleanly.

pub mod buffer;
pub mod case;
pub mod cli;
pub mod clock;
pub mod config;
pub mod delivery;
pub mod dlq;
pub mod env;
pub mod error;
pub mod http;
pub mod inbound;
pub mod ingest;
pub mod mapping;
pub mod prometheus;
pub mod secret;
pub mod status;
pub mod telemetry;
pub mod verify;

use std::future::Future;
use std::sync::Arc;

use arc_swap::ArcSwap;

use buffer::{Buffer, BufferError};
use config::Config;
use http::AppState;
use ingest::{Clock, Ingestor};
use mapping::{MappingLoadError, MappingSet};

/// Why the gateway could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("mappings in {dir} failed to load:\n{}", .errors.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n"))]
    Mappings {
        dir: String,
        errors: Vec<MappingLoadError>,
    },
    #[error(transparent)]
    Buffer(#[from] BufferError),
    #[error("server: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Lease(#[from] delivery::lease::LeaseError),
}

/// Compiles the mapping directory and logs a warning for every source that is unauthenticated
/// or runs on a development default secret.
pub fn load_mappings(config: &Config) -> Result<MappingSet, RunError> {
    let set = MappingSet::load_dir(&config.mappings, &config.env).map_err(|errors| {
        RunError::Mappings {
            dir: config.mappings.display().to_string(),
            errors,
        }
    })?;
    set.warn_about_weak_sources();
    Ok(set)
}

/// Serves the gateway on `listener` until `shutdown` resolves, then stops accepting, lets
/// in-flight requests finish and flushes the buffer.
pub async fn run(
    config: Config,
    listener: std::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    run_with_clock(config, listener, shutdown, ingest::system_clock()).await
}

/// [`run`] with an injected clock (tests pin time to sign with old timestamps).
pub async fn run_with_clock(
    config: Config,
    listener: std::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    clock: Clock,
) -> Result<(), RunError> {
    let mappings = load_mappings(&config)?;
    let mut api_keys: Vec<String> = config.duvo.api_keys.keys().cloned().collect();
    if config.duvo.api_key.is_some() {
        api_keys.push("default".to_string());
    }
    prometheus::register_zeros(&mappings, &api_keys);
    tracing::info!(sources = mappings.len(), dir = %config.mappings.display(), "mappings loaded");
    let buffer = Buffer::open(&config.buffer).await?;
    let mappings = Arc::new(ArcSwap::from_pointee(mappings));
    let (stop_delivery, delivery_stopped) = tokio::sync::watch::channel(false);
    let mut ingestor =
        Ingestor::from_config(mappings.clone(), buffer.clone(), &config.ingress, clock);
    let has_key = config.duvo.api_key.is_some() || !config.duvo.api_keys.is_empty();
    let delivery = match (config.delivery.enabled, has_key) {
        (true, true) => Some(
            delivery::Delivery::from_config(&config, &buffer, delivery_stopped)
                .map_err(|e| RunError::Io(std::io::Error::other(e)))?,
        ),
        (true, false) => {
            tracing::warn!(
                "no Duvo API key configured (CASEGATE_DUVO__API_KEY): cases are buffered, not delivered"
            );
            None
        }
        (false, _) => {
            tracing::info!("delivery is off: cases are buffered, not sent");
            None
        }
    };
    if let Some(delivery) = &delivery {
        ingestor = ingestor.with_waker(delivery.waker());
    }
    // On Redis, delivery reads through a consumer name only this process holds.
    let lease = match (&delivery, &buffer) {
        (Some(_), Buffer::Redis(redis)) => {
            let data_dir = config
                .buffer
                .path
                .parent()
                .filter(|dir| !dir.as_os_str().is_empty())
                .unwrap_or(std::path::Path::new("."));
            Some(
                delivery::lease::ConsumerLease::take(
                    redis,
                    &config.delivery.consumer,
                    data_dir,
                    config.delivery.visibility_timeout,
                )
                .await?,
            )
        }
        _ => None,
    };
    let delivery_task = delivery.clone().map(|d| match lease {
        Some(lease) => tokio::spawn(lease.run_holding(d.run(), stop_delivery.subscribe())),
        None => tokio::spawn(d.run()),
    });
    let reloader = Arc::new(
        mapping::MappingReloader::new(
            config.mappings.clone(),
            config.env.clone(),
            mappings.clone(),
        )
        .with_default_secrets_allowed(config.ingress.allow_default_secrets)
        .with_api_keys(config.duvo.api_keys.keys().cloned().collect()),
    );
    // Watches the mapping directory and SIGHUP until run_with_clock returns.
    let _reload_task = reloader.clone().spawn();
    prometheus::handle();
    mappings
        .load()
        .report_source_configuration(config.ingress.allow_default_secrets);
    let state = AppState::new(ingestor, &config)
        .with_delivery(delivery)
        .with_reloader(reloader.clone());
    let admin_server = http::server::admin_server(&state, &config)?;
    let address = listener.local_addr()?;
    let (stop_connections, connections_stopping) = tokio::sync::watch::channel(false);
    let server = http::server::http_server(state, &config.ingress, listener, connections_stopping)?;
    let handle = server.handle();
    let admin_handle = admin_server.as_ref().map(|s| s.handle());
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutting down: no new connections, finishing in-flight requests");
        // No new connections first; then the ones that never sent a byte may end.
        handle.pause().await;
        let _ = stop_connections.send(true);
        if let Some(admin) = admin_handle {
            admin.stop(true).await;
        }
        handle.stop(true).await;
    });
    let admin_task = admin_server.map(tokio::spawn);
    tracing::info!(%address, "casegate listening");
    server.await?;
    tracing::debug!("HTTP server stopped; stopping delivery");
    let _ = stop_delivery.send(true);
    if let Some(task) = delivery_task {
        let _ = task.await;
    }
    tracing::debug!("delivery stopped");
    if let Some(task) = admin_task {
        let _ = task.await;
    }
    buffer.flush().await?;
    tracing::info!("casegate stopped");
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler cannot fail on unix");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
