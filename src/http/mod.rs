//! The HTTP layer: actix handlers that translate between HTTP and the domain, nothing more.
//!
//! [`build_app`] binds no socket, so tests can drive the whole app with
//! `actix_web::test::init_service`.

pub mod admin;
pub mod health;
pub mod ingress;
pub mod metrics;
pub mod slow;

use std::sync::Arc;
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::{App, HttpResponse, web};

use crate::error::ApiError;
use crate::ingest::Ingestor;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub ingestor: Ingestor,
    pub max_body_bytes: usize,
    pub client_timeout: Duration,
    pub public_url: Option<String>,
    /// Peers whose `Forwarded`/`X-Forwarded-*` headers are believed.
    pub trusted_proxies: Vec<crate::config::IpRange>,
    /// Body bytes being received by all requests together, against their cap.
    pub inflight_bodies: Arc<ingress::InflightBodies>,
    pub retry_after: Duration,
    pub mappings_loaded: Arc<std::sync::atomic::AtomicBool>,
    pub delivery: Option<crate::delivery::Delivery>,
    /// Bearer token of `/admin/*`; the admin routes exist only when it is set.
    pub admin_token: Option<crate::secret::Secret>,
    /// Serve `/admin/*` on this app (false when the admin API has its own listener).
    pub admin_here: bool,
    /// Recompiles the mapping directory and swaps it in; `Err` keeps the old set.
    pub reload: Option<Arc<dyn Fn() -> Result<usize, String> + Send + Sync>>,
    /// Hot reload of the mapping directory; its status is shown by /readyz and /admin/status.
    pub mapping_reloader: Option<Arc<crate::mapping::MappingReloader>>,
}

/// The application with every route, ready to be served or tested.
pub fn build_app(
    state: AppState,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let admin = state.admin_here && state.admin_token.is_some();
    App::new()
        .app_data(web::Data::new(state))
        .route("/hooks/{source}", web::post().to(ingress::receive))
        .route("/healthz", web::get().to(health::healthz))
        .route("/readyz", web::get().to(health::readyz))
        .route("/metrics", web::get().to(metrics::metrics))
        .configure(|cfg| {
            if admin {
                admin::routes(cfg);
            }
        })
        .default_service(web::to(not_found))
}

/// The admin API alone, for its own listen address.
pub fn build_admin_app(
    state: AppState,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    App::new()
        .app_data(web::Data::new(state))
        .route("/healthz", web::get().to(health::healthz))
        .configure(admin::routes)
        .default_service(web::to(not_found))
}

async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::new(
        actix_web::http::StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint; webhooks are sent with POST /hooks/{source}",
    ))
}
