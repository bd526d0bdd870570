//! Every answer the sandbox refuses with, and the one table mapping each to a status and a stable
//! code. The HTTP layer renders them as `{"error": "<code>", "message": "<text>"}`.

use crate::contract::ContractError;
use crate::faults::FaultsError;

/// Why an API request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SandboxError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("no route for {0}")]
    NotFound(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("request body exceeds {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("rate limit exceeded; retry after {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    /// A 500, 502 or 503 from the `error_ratio` fault.
    #[error("injected failure (sandbox fault injection)")]
    Injected { status: u16 },
    #[error("service unavailable (sandbox outage fault)")]
    Outage { retry_after_secs: Option<u64> },
}

impl SandboxError {
    /// The HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            SandboxError::Invalid(_) => 400,
            SandboxError::Unauthorized(_) => 401,
            SandboxError::NotFound(_) => 404,
            SandboxError::MethodNotAllowed => 405,
            SandboxError::PayloadTooLarge { .. } => 413,
            SandboxError::RateLimited { .. } => 429,
            SandboxError::Injected { status } => *status,
            SandboxError::Outage { .. } => 503,
        }
    }

    /// The stable machine-readable code in the `error` field.
    pub fn code(&self) -> &'static str {
        match self.status() {
            400 => "invalid_request",
            401 => "unauthorized",
            404 => "not_found",
            405 => "method_not_allowed",
            413 => "payload_too_large",
            429 => "rate_limit_exceeded",
            502 => "bad_gateway",
            503 => "service_unavailable",
            _ => "internal_error",
        }
    }

    /// The `retry-after` header value, when the answer carries one.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            SandboxError::RateLimited { retry_after_secs } => Some(*retry_after_secs),
            SandboxError::Outage { retry_after_secs } => *retry_after_secs,
            _ => None,
        }
    }
}

impl From<ContractError> for SandboxError {
    fn from(e: ContractError) -> Self {
        SandboxError::Invalid(e.to_string())
    }
}

impl From<FaultsError> for SandboxError {
    fn from(e: FaultsError) -> Self {
        SandboxError::Invalid(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_has_one_status_and_code() {
        let table = [
            (SandboxError::Invalid("x".into()), 400, "invalid_request"),
            (SandboxError::Unauthorized("x"), 401, "unauthorized"),
            (SandboxError::NotFound("/x".into()), 404, "not_found"),
            (SandboxError::MethodNotAllowed, 405, "method_not_allowed"),
            (
                SandboxError::PayloadTooLarge { limit: 1 },
                413,
                "payload_too_large",
            ),
            (
                SandboxError::RateLimited {
                    retry_after_secs: 3,
                },
                429,
                "rate_limit_exceeded",
            ),
            (
                SandboxError::Injected { status: 500 },
                500,
                "internal_error",
            ),
            (SandboxError::Injected { status: 502 }, 502, "bad_gateway"),
            (
                SandboxError::Injected { status: 503 },
                503,
                "service_unavailable",
            ),
            (
                SandboxError::Outage {
                    retry_after_secs: None,
                },
                503,
                "service_unavailable",
            ),
        ];
        for (err, status, code) in table {
            assert_eq!((err.status(), err.code()), (status, code), "{err:?}");
        }
    }

    #[test]
    fn only_429_and_bounded_outages_carry_retry_after() {
        let limited = SandboxError::RateLimited {
            retry_after_secs: 7,
        };
        assert_eq!(limited.retry_after_secs(), Some(7));
        let bounded = SandboxError::Outage {
            retry_after_secs: Some(4),
        };
        assert_eq!(bounded.retry_after_secs(), Some(4));
        assert_eq!(
            SandboxError::Injected { status: 503 }.retry_after_secs(),
            None
        );
    }
}
