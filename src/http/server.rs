//! The listeners: the main server (webhooks, probes, metrics and, without its own address, the
//! admin API) and the admin API's own server. Built from their settings; `crate::run` only
//! starts and stops them.

use super::{AppState, build_admin_app, build_app};
use crate::config::{Config, IngressConfig};

/// Builds the actix server (kept out of the async fn: the builder is not `Send`).
///
/// Assembled from actix's parts rather than `HttpServer`, so each connection can be wrapped in
/// [`super::slow::HeadDeadline`]: actix's own header timeout answers with an empty body, the
/// wrapper with casegate's JSON error (the body's timeout is the handler's).
pub fn http_server(
    state: AppState,
    ingress: &IngressConfig,
    listener: std::net::TcpListener,
    stopping: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<actix_web::dev::Server> {
    use actix_service::{ServiceFactoryExt, fn_service, map_config};
    let address = listener.local_addr()?;
    let header_timeout = ingress.client_timeout;
    let keep_alive = match ingress.keep_alive {
        Some(idle) => actix_web::http::KeepAlive::Timeout(idle),
        None => actix_web::http::KeepAlive::Disabled,
    };
    let mut builder = actix_server::Server::build()
        .disable_signals()
        .shutdown_timeout(30);
    if ingress.workers > 0 {
        builder = builder.workers(ingress.workers);
    }
    builder = builder.listen("casegate", listener, move || {
        let app = actix_web::dev::AppConfig::default();
        // Runs once per worker, on its thread.
        let app_service = map_config(build_app(state.for_worker()), move |_| app.clone());
        let http = actix_http::HttpService::build()
            .keep_alive(keep_alive)
            // Off here: HeadDeadline enforces it with a JSON answer.
            .client_request_timeout(std::time::Duration::ZERO)
            .client_disconnect_timeout(std::time::Duration::from_secs(5))
            .local_addr(address)
            .finish(app_service);
        let stopping = stopping.clone();
        fn_service(move |io: actix_web::rt::net::TcpStream| {
            let stopping = stopping.clone();
            async move {
                let peer = io.peer_addr().ok();
                let _ = io.set_nodelay(true);
                Ok::<_, actix_http::error::DispatchError>((
                    super::slow::HeadDeadline::new(io, header_timeout, stopping),
                    actix_http::Protocol::Http1,
                    peer,
                ))
            }
        })
        .and_then(http)
    })?;
    Ok(builder.run())
}

/// The admin API's own server when `admin.listen` and an admin token are set.
pub fn admin_server(
    state: &AppState,
    config: &Config,
) -> std::io::Result<Option<actix_web::dev::Server>> {
    let (Some(address), Some(_)) = (config.admin_listen, &config.admin_token) else {
        return Ok(None);
    };
    let state = state.clone();
    let server = actix_web::HttpServer::new(move || build_admin_app(state.clone()))
        .workers(1)
        .disable_signals()
        .bind(address)?
        .run();
    tracing::info!(%address, "admin API listening");
    Ok(Some(server))
}
