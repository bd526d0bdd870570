//! The one place where domain errors become HTTP answers.
//!
//! Every error answer is `{"error": "<stable_code>", "message": "..."}`, the same shape the Duvo
//! API uses. Codes are part of the interface (providers' dashboards and operators' alerts key on
//! them) and never change meaning. A 5xx never shows internals; 503 carries `Retry-After`.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use crate::buffer::BufferError;
use crate::ingest::IngestError;

/// An error on its way to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after: Option<Duration>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: &'a str,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// Maps an ingest error; `retry_after` is what a 503 tells the sender to wait.
    pub fn from_ingest(error: IngestError, retry_after: Duration) -> Self {
        use IngestError as E;
        let message = error.to_string();
        match error {
            E::UnknownSource(_) => Self::new(StatusCode::NOT_FOUND, "unknown_source", message),
            E::UnsupportedMediaType(_) => Self::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                message,
            ),
            E::PayloadTooLarge { .. } => {
                Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
            }
            E::BodiesInFlight { .. } => ApiError {
                retry_after: Some(retry_after),
                ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", message)
            },
            E::BodyTimeout(_) => Self::new(StatusCode::REQUEST_TIMEOUT, "request_timeout", message),
            E::BodyRead(_) => Self::new(StatusCode::BAD_REQUEST, "unreadable_body", message),
            E::Unauthorized(verify) => Self::new(StatusCode::UNAUTHORIZED, verify.code(), message),
            E::SourceNotConfigured { .. } => ApiError {
                retry_after: Some(retry_after),
                ..Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "source_not_configured",
                    message,
                )
            },
            E::InvalidUtf8(_) => Self::new(StatusCode::BAD_REQUEST, "invalid_utf8", message),
            E::MalformedJson { .. } => {
                Self::new(StatusCode::BAD_REQUEST, "malformed_json", message)
            }
            E::TooDeep { .. } => Self::new(StatusCode::BAD_REQUEST, "json_too_deep", message),
            E::MissingFormPayload => {
                Self::new(StatusCode::BAD_REQUEST, "missing_form_payload", message)
            }
            E::Buffer(buffer) => Self::from_buffer(buffer, retry_after),
        }
    }

    pub fn from_buffer(error: BufferError, retry_after: Duration) -> Self {
        // The cause goes to the log, not to the client.
        tracing::error!(error = %error, "buffer write failed");
        ApiError {
            retry_after: Some(retry_after),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "buffer_unavailable",
                "the event could not be stored durably; retry later",
            )
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        if let Some(after) = self.retry_after {
            response.insert_header(("Retry-After", after.as_secs().max(1).to_string()));
        }
        response.json(ErrorBody {
            error: self.code,
            message: &self.message,
        })
    }
}
