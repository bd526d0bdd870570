//! The sandbox: a local stand-in for the Duvo cases API, for development, tests, benchmarks and
//! the README quick start. **It is not the real Duvo API and not a product surface**: it keeps
//! everything in memory, has no real queues or users, and its control routes are unauthenticated,
//! so never expose it beyond localhost. It says so in its startup log.
//!
//! It enforces the documented contract of `POST /queues/{queue_id}/cases` as strictly as the real
//! API would, so a client that passes here should pass there.
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
//! A sliding window log per API key ([`limiter`]): at most `rate` requests in any `window`.
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

pub mod clock;
pub mod contract;
pub mod error;
pub mod faults;
mod http;
pub mod limiter;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rand::RngExt;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

pub use clock::{Clock, ManualClock, SystemClock};
pub use error::SandboxError;
pub use faults::{Faults, FaultsError};
pub use http::{configure, serve};
pub use limiter::RateDecision;

use contract::{ListQuery, NewCase, SortOrder};
use limiter::SlidingWindowLimiter;

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

/// A label on an accepted case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxLabel {
    /// The label's id; a (key, value) pair keeps its id within a queue.
    pub id: String,
    pub key: String,
    pub value: String,
    /// The hue given when the label was first created on the queue, or one derived from it.
    pub color_hue: u16,
}

/// An accepted case, as the API returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxCase {
    pub id: String,
    pub queue_id: String,
    pub title: String,
    pub data: Option<String>,
    pub labels: Vec<SandboxLabel>,
    /// Always `pending`: nothing claims cases in the sandbox.
    pub status: String,
    /// ISO-8601 UTC with milliseconds.
    pub created_at: String,
    pub updated_at: String,
}

/// One accepted `POST` in the stats log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcceptedBatch {
    /// When it was accepted, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub queue_id: String,
    /// How many cases it carried.
    pub cases: usize,
}

/// The rate limit and how close clients came to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimitStats {
    pub limit: u32,
    pub window_ms: u64,
    /// The most requests counted in one window at once (never above `limit`).
    pub peak_in_window: u32,
}

/// What the sandbox has seen since it started or was last reset (API routes only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxStats {
    /// API requests received, whatever their outcome.
    pub total_requests: u64,
    /// `POST`s answered 201.
    pub accepted_requests: u64,
    /// Cases in those `POST`s.
    pub accepted_cases: u64,
    /// Requests answered 429.
    pub rate_limited: u64,
    /// Answers by HTTP status (JSON object keys are the status as a string).
    pub status_counts: BTreeMap<u16, u64>,
    /// Accepted cases by queue id.
    pub queue_case_counts: BTreeMap<String, u64>,
    /// Every accepted `POST`, oldest first.
    pub accepted_log: Vec<AcceptedBatch>,
    pub rate_limit: RateLimitStats,
    /// The faults as last set.
    pub faults: Faults,
    /// Whether an outage is in force right now.
    pub outage_active: bool,
}

/// One page of the list endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaseList {
    pub cases: Vec<SandboxCase>,
    pub total: usize,
    pub limit: usize,
    pub offset: u64,
}

/// The sandbox's shared state; clones share it.
#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

struct Inner {
    config: SandboxConfig,
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
}

struct State {
    faults: faults::Compiled,
    limiter: SlidingWindowLimiter<Arc<dyn Clock>>,
    queues: HashMap<String, Queue>,
    stats: SandboxStats,
}

#[derive(Default)]
struct Queue {
    cases: Vec<SandboxCase>,
    labels: HashMap<(String, String), SandboxLabel>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("rate", &self.inner.config.rate)
            .field("window", &self.inner.config.window)
            .finish_non_exhaustive()
    }
}

impl Sandbox {
    /// A sandbox on the system clock.
    ///
    /// # Panics
    /// If `config.faults` is invalid (see [`Faults::validate`]); use [`Sandbox::try_new`] for
    /// faults that come from users.
    pub fn new(config: SandboxConfig) -> Sandbox {
        Sandbox::try_new(config).unwrap_or_else(|e| panic!("invalid sandbox faults: {e}"))
    }

    /// A sandbox on the system clock, refusing invalid faults.
    pub fn try_new(config: SandboxConfig) -> Result<Sandbox, FaultsError> {
        Sandbox::with_clock(config, Arc::new(SystemClock))
    }

    /// A sandbox on the given clock (tests pass a [`ManualClock`]).
    pub fn with_clock(
        config: SandboxConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Sandbox, FaultsError> {
        let state = State::new(&config, &clock)?;
        Ok(Sandbox {
            inner: Arc::new(Inner {
                config,
                clock,
                state: Mutex::new(state),
            }),
        })
    }

    /// The configuration it was started with.
    pub fn config(&self) -> &SandboxConfig {
        &self.inner.config
    }

    /// The same data as `GET /_sandbox/stats`.
    pub fn stats(&self) -> SandboxStats {
        let now = self.inner.clock.now();
        let state = self.state();
        let mut stats = state.stats.clone();
        stats.rate_limit.peak_in_window = state.limiter.peak();
        stats.faults = state.faults.spec().clone();
        stats.outage_active = state.faults.outage(now).is_some();
        stats
    }

    /// The cases accepted for `queue_id`, oldest first.
    pub fn cases(&self, queue_id: &str) -> Vec<SandboxCase> {
        self.state()
            .queues
            .get(&queue_id.to_ascii_lowercase())
            .map(|q| q.cases.clone())
            .unwrap_or_default()
    }

    /// The faults in force.
    pub fn faults(&self) -> Faults {
        self.state().faults.spec().clone()
    }

    /// Replaces the faults; a bounded outage starts now.
    ///
    /// # Panics
    /// If `faults` is invalid; use [`Sandbox::try_set_faults`] for faults that come from users.
    pub fn set_faults(&self, faults: Faults) {
        self.try_set_faults(faults)
            .unwrap_or_else(|e| panic!("invalid sandbox faults: {e}"));
    }

    /// Replaces the faults unless they are invalid; a bounded outage starts now.
    pub fn try_set_faults(&self, faults: Faults) -> Result<(), FaultsError> {
        let compiled = faults::Compiled::new(faults, self.inner.clock.now())?;
        self.state().faults = compiled;
        tracing::info!("sandbox faults replaced");
        Ok(())
    }

    /// Forgets cases, labels, stats and the rate-limit log, and restores the startup faults.
    pub fn reset(&self) {
        let fresh = State::new(&self.inner.config, &self.inner.clock)
            .expect("startup faults were validated when the sandbox was built");
        *self.state() = fresh;
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    // The steps of an API request, in the order the HTTP layer calls them.

    /// Counts an API request and returns the latency to add before answering it.
    pub(crate) fn begin(&self) -> Duration {
        let mut state = self.state();
        state.stats.total_requests += 1;
        state.faults.latency()
    }

    /// Refuses the request if an outage is in force.
    pub(crate) fn check_outage(&self) -> Result<(), SandboxError> {
        let now = self.inner.clock.now();
        match self.state().faults.outage(now) {
            Some(o) => Err(SandboxError::Outage {
                retry_after_secs: o.retry_after_secs,
            }),
            None => Ok(()),
        }
    }

    /// Checks an `Authorization` header value against the configured key(s); returns the key.
    pub(crate) fn authorize(&self, header: Option<&str>) -> Result<String, SandboxError> {
        let header = header.ok_or(SandboxError::Unauthorized("missing Authorization header"))?;
        let token = match header.trim().split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            _ => {
                return Err(SandboxError::Unauthorized(
                    "Authorization must be `Bearer <API key>`",
                ));
            }
        };
        let mut matched = None;
        // Every configured key is compared, so the time taken says nothing about which matched.
        for expected in self.inner.config.api_key.split(',') {
            if bool::from(token.as_bytes().ct_eq(expected.as_bytes())) {
                matched = Some(expected.to_owned());
            }
        }
        matched.ok_or(SandboxError::Unauthorized("invalid API key"))
    }

    /// Counts an authorized request against `key`'s window, if there is room.
    pub(crate) fn admit(&self, key: &str) -> RateDecision {
        self.state().limiter.check(key)
    }

    /// The key's window, without counting.
    pub(crate) fn rate_state(&self) -> RateDecision {
        self.state().limiter.peek(&self.inner.config.api_key)
    }

    /// Validates and stores a create request (steps 7 to 10).
    pub(crate) fn create(
        &self,
        queue_id: &str,
        body: &[u8],
    ) -> Result<Vec<SandboxCase>, SandboxError> {
        let request = contract::validate_create(body)?;
        let queue_id = queue_id.to_ascii_lowercase();
        let (roll, pick) = {
            let mut rng = rand::rng();
            (rng.random::<f64>(), rng.random::<u32>())
        };
        let unix_ms = self.inner.clock.unix_ms();
        let mut state = self.state();
        if state.faults.missing(&queue_id) {
            return Err(SandboxError::NotFound(format!(
                "queue {queue_id} does not exist (fault injection)"
            )));
        }
        if let Some(i) = state.faults.poisoned(&request.cases) {
            return Err(SandboxError::Invalid(format!(
                "{}.title matches the sandbox's reject_title_pattern (fault injection)",
                request.form.case_path(i)
            )));
        }
        if state.faults.fails_on(&request.cases) {
            return Err(SandboxError::Injected { status: 500 });
        }
        if let Some(status) = state.faults.injected_status(roll, pick) {
            return Err(SandboxError::Injected { status });
        }
        let added = state.store(&queue_id, request.cases, unix_ms);
        tracing::debug!(queue = %queue_id, n = added.len(), "sandbox accepted cases");
        Ok(added)
    }

    /// Lists a queue's cases.
    pub(crate) fn list(&self, queue_id: &str, query: &ListQuery) -> CaseList {
        let state = self.state();
        let all = state
            .queues
            .get(&queue_id.to_ascii_lowercase())
            .map_or(&[][..], |q| &q.cases[..]);
        let wanted_status = |c: &SandboxCase| {
            query
                .statuses
                .as_ref()
                .is_none_or(|s| s.contains(&c.status))
        };
        let search = query.search.as_ref().map(|s| s.to_lowercase());
        let matches_search = |c: &SandboxCase| {
            search.as_ref().is_none_or(|s| {
                c.title.to_lowercase().contains(s)
                    || c.data
                        .as_ref()
                        .is_some_and(|d| d.to_lowercase().contains(s))
            })
        };
        let mut matching: Vec<&SandboxCase> = all
            .iter()
            .filter(|c| wanted_status(c) && matches_search(c))
            .collect();
        // Stored in acceptance order, which is creation order.
        if query.order == SortOrder::Desc {
            matching.reverse();
        }
        let total = matching.len();
        let skip = usize::try_from(query.offset).unwrap_or(usize::MAX);
        CaseList {
            cases: matching
                .into_iter()
                .skip(skip)
                .take(query.limit)
                .cloned()
                .collect(),
            total,
            limit: query.limit,
            offset: query.offset,
        }
    }

    /// Counts an API answer by status.
    pub(crate) fn record_status(&self, status: u16) {
        let mut state = self.state();
        *state.stats.status_counts.entry(status).or_default() += 1;
        if status == 429 {
            state.stats.rate_limited += 1;
        }
    }
}

impl State {
    fn new(config: &SandboxConfig, clock: &Arc<dyn Clock>) -> Result<State, FaultsError> {
        Ok(State {
            faults: faults::Compiled::new(config.faults.clone(), clock.now())?,
            limiter: SlidingWindowLimiter::new(clock.clone(), config.rate, config.window),
            queues: HashMap::new(),
            stats: SandboxStats {
                total_requests: 0,
                accepted_requests: 0,
                accepted_cases: 0,
                rate_limited: 0,
                status_counts: BTreeMap::new(),
                queue_case_counts: BTreeMap::new(),
                accepted_log: Vec::new(),
                rate_limit: RateLimitStats {
                    limit: config.rate,
                    window_ms: u64::try_from(config.window.as_millis()).unwrap_or(u64::MAX),
                    peak_in_window: 0,
                },
                faults: config.faults.clone(),
                outage_active: false,
            },
        })
    }

    fn store(&mut self, queue_id: &str, cases: Vec<NewCase>, unix_ms: u64) -> Vec<SandboxCase> {
        let at = clock::iso8601_ms(unix_ms);
        let queue = self.queues.entry(queue_id.to_owned()).or_default();
        let added: Vec<SandboxCase> = cases
            .into_iter()
            .map(|case| {
                let mut labels: Vec<SandboxLabel> = Vec::new();
                for label in case.labels {
                    let stored = queue
                        .labels
                        .entry((label.key.clone(), label.value.clone()))
                        .or_insert_with(|| SandboxLabel {
                            id: new_uuid(),
                            color_hue: label
                                .color_hue
                                .unwrap_or_else(|| derived_hue(&label.key, &label.value)),
                            key: label.key,
                            value: label.value,
                        });
                    if !labels.iter().any(|l| l.id == stored.id) {
                        labels.push(stored.clone());
                    }
                }
                SandboxCase {
                    id: new_uuid(),
                    queue_id: queue_id.to_owned(),
                    title: case.title,
                    data: case.data,
                    labels,
                    status: "pending".to_owned(),
                    created_at: at.clone(),
                    updated_at: at.clone(),
                }
            })
            .collect();
        queue.cases.extend(added.iter().cloned());

        let n = added.len();
        let stats = &mut self.stats;
        stats.accepted_requests += 1;
        stats.accepted_cases += n as u64;
        *stats
            .queue_case_counts
            .entry(queue_id.to_owned())
            .or_default() += n as u64;
        stats.accepted_log.push(AcceptedBatch {
            at_ms: unix_ms,
            queue_id: queue_id.to_owned(),
            cases: n,
        });
        added
    }
}

/// A random version-4 UUID in lower-case hyphenated form.
fn new_uuid() -> String {
    let bits = rand::rng().random::<u128>();
    // Version 4 in bits 76..80, variant 0b10 in bits 62..64.
    let bits = (bits & !(0xf_u128 << 76)) | (0x4_u128 << 76);
    let bits = (bits & !(0x3_u128 << 62)) | (0x2_u128 << 62);
    let hex = format!("{bits:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// A stable hue for a label created without one (FNV-1a of key and value).
fn derived_hue(key: &str, value: &str) -> u16 {
    let hash = key
        .bytes()
        .chain([0])
        .chain(value.bytes())
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    u16::try_from(hash % (u64::from(contract::MAX_COLOR_HUE) + 1)).unwrap_or(0)
}

#[cfg(test)]
mod tests;
