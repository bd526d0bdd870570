//! Liveness and readiness probes.

use std::sync::atomic::Ordering;

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use serde_json::json;

use super::AppState;
use crate::error::ApiError;

/// The process is alive and serving HTTP.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// Ready when mappings are loaded and the buffer answers; 503 with a stable reason code
/// otherwise. Unauthenticated, so it says nothing internal: mapping errors, file names,
/// versions and buffer error text are on the admin API only.
pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    if !state.mappings_loaded.load(Ordering::Relaxed) {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "mappings_not_loaded",
            "no mapping set is loaded",
        ));
    }
    if let Err(error) = state.ingestor.buffer().ping().await {
        tracing::warn!(error = %error, "readiness: the buffer does not answer");
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "buffer_unavailable",
            "the buffer does not answer",
        ));
    }
    // A broken file keeps the previous set serving: still ready; the error is on /admin/status.
    Ok(HttpResponse::Ok().json(json!({"status": "ready"})))
}
