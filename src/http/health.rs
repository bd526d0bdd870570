//! Liveness and readiness probes.

use actix_web::{HttpResponse, web};
use serde_json::json;

use super::AppState;
use crate::error::{ApiError, Problem};

/// The process is alive and serving HTTP.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// Ready when the buffer answers (mappings are always loaded: the gateway does not start
/// without them, and a broken reload keeps the previous set); 503 with a stable reason code
/// otherwise. Unauthenticated, so it says nothing internal: mapping errors, file names,
/// versions and buffer error text are on the admin API only.
pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    if let Err(error) = state.ingestor.buffer().ping().await {
        tracing::warn!(error = %error, "readiness: the buffer does not answer");
        return Err(
            ApiError::new(Problem::BufferUnavailable, "the buffer does not answer")
                .with_retry_after(state.retry_after),
        );
    }
    // A broken file keeps the previous set serving: still ready; the error is on /admin/status.
    Ok(HttpResponse::Ok().json(json!({"status": "ready"})))
}
