//! The one place where domain errors become HTTP answers.
//!
//! Every error answer is `{"error": "<stable_code>", "message": "..."}`, the same shape the Duvo
//! API uses. Codes are part of the interface (providers' dashboards and operators' alerts key on
//! them) and never change meaning. A 5xx never shows internals; every 503 carries `Retry-After`.
//!
//! [`Problem::answer`] is the one table from every kind of error (ingest, admin, health, unknown
//! paths) to its status and code; handlers build [`ApiError`]s from a [`Problem`] only.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use crate::buffer::BufferError;
use crate::ingest::IngestError;

/// Every kind of error answer casegate gives, on any listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    UnknownSource,
    UnsupportedMediaType,
    PayloadTooLarge,
    /// Too many body bytes in flight across requests.
    Overloaded,
    RequestTimeout,
    UnreadableBody,
    /// The webhook failed verification; the verifier's stable code.
    Unauthentic(&'static str),
    SourceNotConfigured,
    InvalidUtf8,
    MalformedJson,
    JsonTooDeep,
    MissingFormPayload,
    BufferUnavailable,
    /// No route for the path.
    NotFound,
    /// The admin token is missing or wrong (or the admin API is off).
    Unauthorized,
    NoSuchDeadLetter,
    ReloadUnavailable,
    MappingErrors,
}

/// How a refused webhook is counted (`casegate_webhooks_total{outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not authentic.
    Unauthorized,
    /// The gateway cannot take it now; the sender retries.
    Unavailable,
    /// The request itself is wrong.
    Invalid,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Unauthorized => "unauthorized",
            Refusal::Unavailable => "unavailable",
            Refusal::Invalid => "invalid",
        }
    }
}

impl Problem {
    /// The table: status, stable code, and how a webhook refused with it is counted.
    pub fn answer(self) -> (StatusCode, &'static str, Refusal) {
        use Refusal::{Invalid, Unauthorized, Unavailable};
        use StatusCode as S;
        match self {
            Problem::UnknownSource => (S::NOT_FOUND, "unknown_source", Invalid),
            Problem::UnsupportedMediaType => {
                (S::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", Invalid)
            }
            Problem::PayloadTooLarge => (S::PAYLOAD_TOO_LARGE, "payload_too_large", Invalid),
            Problem::Overloaded => (S::SERVICE_UNAVAILABLE, "overloaded", Unavailable),
            Problem::RequestTimeout => (S::REQUEST_TIMEOUT, "request_timeout", Invalid),
            Problem::UnreadableBody => (S::BAD_REQUEST, "unreadable_body", Invalid),
            Problem::Unauthentic(code) => (S::UNAUTHORIZED, code, Unauthorized),
            Problem::SourceNotConfigured => {
                (S::SERVICE_UNAVAILABLE, "source_not_configured", Unavailable)
            }
            Problem::InvalidUtf8 => (S::BAD_REQUEST, "invalid_utf8", Invalid),
            Problem::MalformedJson => (S::BAD_REQUEST, "malformed_json", Invalid),
            Problem::JsonTooDeep => (S::BAD_REQUEST, "json_too_deep", Invalid),
            Problem::MissingFormPayload => (S::BAD_REQUEST, "missing_form_payload", Invalid),
            Problem::BufferUnavailable => {
                (S::SERVICE_UNAVAILABLE, "buffer_unavailable", Unavailable)
            }
            Problem::NotFound => (S::NOT_FOUND, "not_found", Invalid),
            Problem::Unauthorized => (S::UNAUTHORIZED, "unauthorized", Unauthorized),
            Problem::NoSuchDeadLetter => (S::NOT_FOUND, "no_such_dead_letter", Invalid),
            Problem::ReloadUnavailable => (S::NOT_FOUND, "reload_unavailable", Invalid),
            Problem::MappingErrors => (S::UNPROCESSABLE_ENTITY, "mapping_errors", Invalid),
        }
    }

    /// The problem an ingest error is.
    pub fn of_ingest(error: &IngestError) -> Problem {
        use IngestError as E;
        match error {
            E::UnknownSource(_) => Problem::UnknownSource,
            E::UnsupportedMediaType(_) => Problem::UnsupportedMediaType,
            E::PayloadTooLarge { .. } => Problem::PayloadTooLarge,
            E::BodiesInFlight { .. } => Problem::Overloaded,
            E::BodyTimeout(_) => Problem::RequestTimeout,
            E::BodyRead(_) => Problem::UnreadableBody,
            E::Unauthorized(verify) => Problem::Unauthentic(verify.code()),
            E::SourceNotConfigured { .. } => Problem::SourceNotConfigured,
            E::InvalidUtf8(_) => Problem::InvalidUtf8,
            E::MalformedJson { .. } => Problem::MalformedJson,
            E::TooDeep { .. } => Problem::JsonTooDeep,
            E::MissingFormPayload => Problem::MissingFormPayload,
            E::Buffer(_) => Problem::BufferUnavailable,
        }
    }
}

/// An error on its way to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub problem: Problem,
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// What a 503 tells the client to wait; every 503 carries one.
    pub retry_after: Option<Duration>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: &'a str,
}

/// `Retry-After` of a 503 made where no configured value is at hand (the shipped
/// `buffer.retry_after_secs`).
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(5);

impl ApiError {
    /// The answer for `problem`, with `message` as its body's `message`.
    pub fn new(problem: Problem, message: impl Into<String>) -> Self {
        let (status, code, _) = problem.answer();
        ApiError {
            problem,
            status,
            code,
            message: message.into(),
            retry_after: (status == StatusCode::SERVICE_UNAVAILABLE).then_some(DEFAULT_RETRY_AFTER),
        }
    }

    /// Tells the client how long to wait before retrying (sent on a 503 only).
    pub fn with_retry_after(mut self, after: Duration) -> Self {
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            self.retry_after = Some(after);
        }
        self
    }

    /// How a webhook refused with this error is counted.
    pub fn refusal(&self) -> Refusal {
        self.problem.answer().2
    }

    /// Maps an ingest error; `retry_after` is what a 503 tells the sender to wait.
    pub fn from_ingest(error: IngestError, retry_after: Duration) -> Self {
        match error {
            IngestError::Buffer(buffer) => Self::from_buffer(buffer, retry_after),
            error => Self::new(Problem::of_ingest(&error), error.to_string())
                .with_retry_after(retry_after),
        }
    }

    pub fn from_buffer(error: BufferError, retry_after: Duration) -> Self {
        // The cause goes to the log, not to the client.
        tracing::error!(error = %error, "buffer write failed");
        Self::new(
            Problem::BufferUnavailable,
            "the event could not be stored durably; retry later",
        )
        .with_retry_after(retry_after)
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

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Problem; 18] = [
        Problem::UnknownSource,
        Problem::UnsupportedMediaType,
        Problem::PayloadTooLarge,
        Problem::Overloaded,
        Problem::RequestTimeout,
        Problem::UnreadableBody,
        Problem::Unauthentic("bad_signature"),
        Problem::SourceNotConfigured,
        Problem::InvalidUtf8,
        Problem::MalformedJson,
        Problem::JsonTooDeep,
        Problem::MissingFormPayload,
        Problem::BufferUnavailable,
        Problem::NotFound,
        Problem::Unauthorized,
        Problem::NoSuchDeadLetter,
        Problem::ReloadUnavailable,
        Problem::MappingErrors,
    ];

    #[test]
    fn every_503_answer_carries_retry_after_and_no_other_does() {
        for problem in ALL {
            let answer = ApiError::new(problem, "m").error_response();
            let is_503 = answer.status() == StatusCode::SERVICE_UNAVAILABLE;
            assert_eq!(
                answer.headers().contains_key("retry-after"),
                is_503,
                "{problem:?}"
            );
            let configured = ApiError::new(problem, "m").with_retry_after(Duration::from_secs(9));
            assert_eq!(
                configured.retry_after,
                is_503.then_some(Duration::from_secs(9)),
                "{problem:?}"
            );
        }
    }

    #[test]
    fn refusals_are_counted_by_kind_not_by_status() {
        assert_eq!(
            ApiError::new(Problem::Unauthentic("x"), "m").refusal(),
            Refusal::Unauthorized
        );
        assert_eq!(
            ApiError::new(Problem::Overloaded, "m").refusal(),
            Refusal::Unavailable
        );
        assert_eq!(
            ApiError::new(Problem::MalformedJson, "m").refusal(),
            Refusal::Invalid
        );
    }
}
