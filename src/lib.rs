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
pub mod sandbox;
pub mod secret;
pub mod status;
pub mod telemetry;
pub mod verify;

use std::future::Future;
use std::sync::Arc;

use arc_swap::ArcSwap;

use buffer::{Buffer, BufferError, EmbeddedBuffer, RedisBuffer};
use config::{BufferBackendKind, BufferConfig, Config};
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

/// Opens the configured buffer backend.
pub async fn open_buffer(config: &BufferConfig) -> Result<Buffer, BufferError> {
    Ok(match config.backend {
        BufferBackendKind::Embedded => Buffer::Embedded(EmbeddedBuffer::open_with_timeout(
            &config.path,
            config.op_timeout,
        )?),
        BufferBackendKind::Redis | BufferBackendKind::RedisCluster => Buffer::Redis(
            RedisBuffer::connect_to(
                if config.backend == BufferBackendKind::RedisCluster {
                    buffer::redis::Topology::Cluster
                } else {
                    buffer::redis::Topology::Single
                },
                config.redis_url.expose(),
                &config.key_prefix,
                config.op_timeout,
            )
            .await?
            .with_wait_replicas(config.wait_replicas),
        ),
    })
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
    for mapping in set.iter() {
        for name in mapping
            .api_key_names()
            .filter(|n| !config.duvo.api_keys.contains_key(*n))
        {
            tracing::error!(source = %mapping.source, key = name, "a rule names an API key that is not configured (CASEGATE_DUVO__API_KEYS__<NAME>); its cases stay buffered");
        }
    }
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
    let buffer = open_buffer(&config.buffer).await?;
    let mappings = Arc::new(ArcSwap::from_pointee(mappings));
    let (stop_delivery, delivery_stopped) = tokio::sync::watch::channel(false);
    let mut ingestor = Ingestor::new(
        mappings.clone(),
        buffer.clone(),
        config.ingress.dedupe_ttl,
        clock,
    )
    .with_max_event_bytes(config.ingress.max_event_cases_bytes);
    let has_key = config.duvo.api_key.is_some() || !config.duvo.api_keys.is_empty();
    let delivery = match (config.delivery.enabled, has_key) {
        (true, true) => Some(start_delivery(&config, &buffer, delivery_stopped)?),
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
    ingestor = ingestor
        .allow_default_secrets(config.ingress.allow_default_secrets)
        .offload_verify_above(config.ingress.offload_verify_bytes);
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
        .with_default_secrets_allowed(config.ingress.allow_default_secrets),
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
    let admin_server = match (config.admin_listen, &config.admin_token) {
        (Some(address), Some(_)) => {
            let state = state.clone();
            let server = actix_web::HttpServer::new(move || http::build_admin_app(state.clone()))
                .workers(1)
                .disable_signals()
                .bind(address)?
                .run();
            tracing::info!(%address, "admin API listening");
            Some(server)
        }
        _ => None,
    };
    let address = listener.local_addr()?;
    let server = http_server(state, &config, listener)?;
    let handle = server.handle();
    let admin_handle = admin_server.as_ref().map(|s| s.handle());
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutting down: no new connections, finishing in-flight requests");
        if let Some(admin) = admin_handle {
            admin.stop(true).await;
        }
        handle.stop(true).await;
    });
    let admin_task = admin_server.map(tokio::spawn);
    tracing::info!(%address, "casegate listening");
    server.await?;
    let _ = stop_delivery.send(true);
    if let Some(task) = delivery_task {
        let _ = task.await;
    }
    if let Some(task) = admin_task {
        let _ = task.await;
    }
    buffer.flush().await?;
    tracing::info!("casegate stopped");
    Ok(())
}

/// Builds the delivery engine for `config` over `buffer`: the limiter is shared through Redis
/// when the buffer is, in-process otherwise.
pub fn start_delivery(
    config: &Config,
    buffer: &Buffer,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<delivery::Delivery, RunError> {
    use delivery::limiter::{LimiterConfig, RateLimiter};
    let settings = &config.delivery;
    let limits = LimiterConfig {
        rate: settings.rate,
        window: settings.window,
        margin: settings.margin,
    };
    let limiter = match buffer {
        Buffer::Redis(redis) => {
            let (conn, prefix, timeout) = redis.connection_for("limiter");
            RateLimiter::redis(limits, conn, prefix, timeout)
        }
        Buffer::Embedded(_) => RateLimiter::local(limits),
    };
    let client = delivery::client::DuvoClient::new(
        &config.duvo.base_url,
        config.duvo.connect_timeout,
        config.duvo.request_timeout,
    )
    .map_err(|e| RunError::Io(std::io::Error::other(e)))?;
    let keys = delivery::ApiKeys {
        default: config.duvo.api_key.clone(),
        named: config.duvo.api_keys.clone(),
    };
    let delivery_config = delivery::DeliveryConfig {
        max_batch: settings.max_batch,
        max_request_bytes: settings.max_request_bytes,
        linger: settings.linger,
        poll_interval: settings.poll_interval,
        queue_retention: config.buffer.queue_retention,
        visibility_timeout: settings.visibility_timeout,
        backoff: delivery::policy::Backoff {
            base: settings.backoff_base,
            max: settings.backoff_max,
        },
        probe_interval: settings.probe_interval,
        max_attempts: settings.max_attempts,
        consumer: settings.consumer.clone(),
        jitter: delivery::Jitter::random(),
        now_ms: clock::now_ms,
    };
    Ok(delivery::Delivery::new(
        buffer.clone(),
        client,
        limiter,
        keys,
        delivery_config,
        shutdown,
    ))
}

/// Builds the actix server (kept out of the async fn: the builder is not `Send`).
///
/// Assembled from actix's parts rather than `HttpServer`, so each connection can be wrapped in
/// [`http::slow::HeadDeadline`]: actix's own header timeout answers with an empty body, the
/// wrapper with casegate's JSON error (the body's timeout is the handler's).
fn http_server(
    state: AppState,
    config: &Config,
    listener: std::net::TcpListener,
) -> std::io::Result<actix_web::dev::Server> {
    use actix_service::{ServiceFactoryExt, fn_service, map_config};
    let address = listener.local_addr()?;
    let header_timeout = config.ingress.client_timeout;
    let keep_alive = match config.ingress.keep_alive {
        Some(idle) => actix_web::http::KeepAlive::Timeout(idle),
        None => actix_web::http::KeepAlive::Disabled,
    };
    let mut builder = actix_server::Server::build()
        .disable_signals()
        .shutdown_timeout(30);
    if config.ingress.workers > 0 {
        builder = builder.workers(config.ingress.workers);
    }
    builder = builder.listen("casegate", listener, move || {
        let app = actix_web::dev::AppConfig::default();
        let app_service = map_config(http::build_app(state.clone()), move |_| app.clone());
        let http = actix_http::HttpService::build()
            .keep_alive(keep_alive)
            // Off here: HeadDeadline enforces it with a JSON answer.
            .client_request_timeout(std::time::Duration::ZERO)
            .client_disconnect_timeout(std::time::Duration::from_secs(5))
            .local_addr(address)
            .finish(app_service);
        fn_service(move |io: actix_web::rt::net::TcpStream| async move {
            let peer = io.peer_addr().ok();
            let _ = io.set_nodelay(true);
            Ok::<_, actix_http::error::DispatchError>((
                http::slow::HeadDeadline::new(io, header_timeout),
                actix_http::Protocol::Http1,
                peer,
            ))
        })
        .and_then(http)
    })?;
    Ok(builder.run())
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
