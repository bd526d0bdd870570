//! The HTTP layer: actix handlers that translate between HTTP and the domain, nothing more.
//!
//! [`build_app`] binds no socket, so tests can drive the whole app with
//! `actix_web::test::init_service`.

pub mod health;
pub mod ingress;

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
    pub retry_after: Duration,
    pub mappings_loaded: Arc<std::sync::atomic::AtomicBool>,
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
    App::new()
        .app_data(web::Data::new(state))
        .route("/hooks/{source}", web::post().to(ingress::receive))
        .route("/healthz", web::get().to(health::healthz))
        .route("/readyz", web::get().to(health::readyz))
        .default_service(web::to(not_found))
}

async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::new(
        actix_web::http::StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint; webhooks are sent with POST /hooks/{source}",
    ))
}
