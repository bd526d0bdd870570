//! casegate-sandbox: a local stand-in for the Duvo cases API, for development, tests, benchmarks
//! and the README quick start. **It is not the real Duvo API and not a product surface**: it
//! keeps everything in memory, has no real queues or users, and its control routes are
//! unauthenticated, so never expose it beyond localhost. It says so in its startup log.
//!
//! It enforces the documented contract of `POST /queues/{queue_id}/cases` as strictly as the real
//! API would, so a client that passes here should pass there. It shares no code with casegate (the
//! gateway depends on it, never the reverse): its request rules, clock and rate limiter are its
//! own, so a mistake in the gateway's cannot hide behind the same mistake here.
//!
//! # Routes
//! API routes, under both `/v1` and `/v2` (same behaviour):
//! - `POST /{v}/queues/{queue_id}/cases` — body `{"case": {...}}` or `{"cases": [...]}` (see
//!   [`contract`]); answers `201 {"added_cases": [<case>, ...]}` in request order. The docs do
//!   not give the success status, so the sandbox uses 201 Created (clients should accept any 2xx).
//! - `GET /{v}/queues/{queue_id}/cases` — `200 {"cases": [...], "total", "limit", "offset"}`;
//!   `limit` 1-100 (default 20), `offset`, `sort_order` asc|desc by creation (default desc),
//!   `status` and `search` filters. Every case is `pending`. `created_at_from` and
//!   `updated_at_from` are refused with 400 (not implemented).
//!
//! Control routes (never authenticated, rate limited or faulted):
//! - `GET /_sandbox/stats` — [`SandboxStats`].
//! - `GET /_sandbox/faults`, `PUT /_sandbox/faults` — read or replace the [`Faults`] (the body is a
//!   `Faults` object; missing fields mean no fault; 400 on an invalid one).
//! - `POST /_sandbox/reset` — 204; forgets cases, labels, stats and the rate-limit log, and puts
//!   back the faults given at startup.
//!
//! # Order of checks on an API request
//! 1. added latency (fault); 2. outage (fault) → 503, with `retry-after` only when bounded;
//! 3. `Authorization: Bearer <key>` → 401 when missing, malformed or not the configured key;
//! 4. rate limit → 429; 5. `queue_id` → 400; 6. body over `max_body_bytes` → 413;
//!    `Content-Type` not `application/json` → 400; 7. body contract → 400 naming the first bad
//!    case (`cases[3].title must ...`); 8. missing queue (fault) → 404; title pattern (fault)
//!    → 400 naming the case; 9. fail title pattern (fault) → 500; `error_ratio` (fault) →
//!    500/502/503; 10. store → 201.
//!
//! A malformed `queue_id` is a 400, not a 404: the docs declare the pattern on the path
//! parameter, and a schema-validated API refuses such a request before looking anything up. Any
//! well-formed id is accepted, as if the queue existed; ids are compared in lower case, as a UUID
//! column would.
//!
//! A request that fails at any step stores nothing: the whole request is refused if one case is
//! invalid, and injected 5xx answers are decided before storing.
//!
//! # Rate limit
//! A sliding window log per API key ([`SlidingWindowLimiter`]): at most `rate` requests in any `window`.
//! Every request that passes authentication is counted, whatever its outcome (400, 413, 5xx,
//! list), except the ones refused with 429, which do not consume quota (the usual convention).
//! Every API answer carries `x-ratelimit-limit`, `x-ratelimit-remaining` and `x-ratelimit-reset`
//! (whole seconds until the oldest counted request leaves the window, 0 when none is counted);
//! answers given before the limiter (outage, 401) report its state without counting. A 429 also
//! carries `retry-after` (the same seconds, at least 1).
//!
//! # Errors
//! Always `{"error": "<code>", "message": "<text>"}`: 400 `invalid_request`, 401
//! `unauthorized`, 404 `not_found`, 405 `method_not_allowed`, 413 `payload_too_large`, 429
//! `rate_limit_exceeded`, 500 `internal_error`, 502 `bad_gateway`, 503 `service_unavailable`.

mod cases;
mod clock;
pub mod contract;
mod error;
pub mod faults;
mod http;
mod limiter;
mod sandbox;
mod stats;

use std::time::Duration;

pub use cases::{CaseList, SandboxCase, SandboxLabel};
pub use clock::{ManualClock, RealClock, SandboxClock};
pub use error::SandboxError;
pub use faults::{Faults, FaultsError};
pub use http::{configure, serve_until};
pub use limiter::{RateDecision, SlidingWindowLimiter};
pub use sandbox::Sandbox;
pub use stats::{AcceptedBatch, RateLimitStats, SandboxStats};

/// How the sandbox is set up.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// The API key accepted (`Authorization: Bearer <api_key>`); several keys comma-separated,
    /// each with its own window, for runs with many keys.
    pub api_key: String,
    /// Requests allowed per `window` per API key; 0 refuses every request with 429.
    pub rate: u32,
    /// The sliding window of the rate limit.
    pub window: Duration,
    /// Largest `POST` body accepted; larger ones get 413.
    pub max_body_bytes: usize,
    /// Faults in force from startup (and after every reset).
    pub faults: Faults,
}

impl Default for SandboxConfig {
    /// Key `dv_sandbox`, 300 requests per 60 s (the documented limit), 1 MiB bodies, no faults.
    fn default() -> Self {
        SandboxConfig {
            api_key: "dv_sandbox".to_owned(),
            rate: 300,
            window: Duration::from_secs(60),
            max_body_bytes: 1024 * 1024,
            faults: Faults::default(),
        }
    }
}

#[cfg(test)]
mod tests;
