//! The HTTP layer: actix handlers that translate between HTTP and the domain, nothing more.
//!
//! [`build_app`] binds no socket, so tests can drive the whole app with
//! `actix_web::test::init_service`.

pub mod admin;
pub mod health;
pub mod ingress;
pub mod metrics;
pub mod server;
pub mod slow;

use std::sync::Arc;
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::{App, HttpResponse, web};

use crate::error::{ApiError, Problem};
use crate::ingest::Ingestor;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub ingestor: Ingestor,
    /// The ingress settings: body limits and timeouts, trusted proxies.
    pub ingress: Arc<crate::config::IngressConfig>,
    pub public_url: Option<String>,
    /// Body bytes being received by all requests together, against their cap.
    pub inflight_bodies: Arc<ingress::InflightBodies>,
    pub retry_after: Duration,
    pub delivery: Option<crate::delivery::Delivery>,
    /// Bearer token of `/admin/*`; the admin routes exist only when it is set.
    pub admin_token: Option<crate::secret::Secret>,
    /// Serve `/admin/*` on this app (false when the admin API has its own listener).
    pub admin_here: bool,
    /// Reloads the mapping directory (`POST /admin/reload`); its status is on /admin/status.
    pub mapping_reloader: Option<Arc<crate::mapping::MappingReloader>>,
}

impl AppState {
    /// The state for `config`'s listeners over `ingestor`, without delivery or reloads.
    pub fn new(ingestor: Ingestor, config: &crate::config::Config) -> Self {
        AppState {
            ingestor,
            ingress: Arc::new(config.ingress.clone()),
            public_url: config.public_url.clone(),
            inflight_bodies: Arc::new(ingress::InflightBodies::new(
                config.ingress.max_inflight_body_bytes,
            )),
            retry_after: config.buffer.retry_after,
            delivery: None,
            admin_token: config.admin_token.clone(),
            admin_here: config.admin_listen.is_none(),
            mapping_reloader: None,
        }
    }

    /// The state one HTTP worker serves with: everything shared, but the buffer's connection
    /// its own (see [`crate::buffer::Buffer::for_worker`]). Called on the worker's thread.
    pub fn for_worker(&self) -> Self {
        AppState {
            ingestor: self.ingestor.for_worker(),
            ..self.clone()
        }
    }

    /// Shows `delivery`'s state on /admin/status.
    pub fn with_delivery(mut self, delivery: Option<crate::delivery::Delivery>) -> Self {
        self.delivery = delivery;
        self
    }

    /// Serves `POST /admin/reload` and the reload status with `reloader`.
    pub fn with_reloader(mut self, reloader: Arc<crate::mapping::MappingReloader>) -> Self {
        self.mapping_reloader = Some(reloader);
        self
    }
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
        // A static prefix and the source read by hand: a `{source}` pattern is matched by a
        // regex on every webhook, a measurable share of a webhook's CPU.
        .service(web::scope("/hooks").default_service(web::to(ingress::receive)))
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

pub(crate) async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::new(
        Problem::NotFound,
        "no such endpoint; webhooks are sent with POST /hooks/{source}",
    ))
}
