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

/// Ready when mappings are loaded and the buffer answers; 503 with the reason otherwise.
pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    if !state.mappings_loaded.load(Ordering::Relaxed) {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "mappings_not_loaded",
            "no mapping set is loaded",
        ));
    }
    if let Err(error) = state.ingestor.buffer().ping().await {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "buffer_unavailable",
            error.to_string(),
        ));
    }
    // A broken file keeps the previous set serving: still ready, and the error is reported.
    let mappings = state.mapping_reloader.as_ref().map(|r| r.status());
    Ok(HttpResponse::Ok().json(json!({"status": "ready", "mappings": mappings})))
}
