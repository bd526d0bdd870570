//! The sandbox's shared state and the steps of an API request, in the order the HTTP layer calls
//! them (documented in the crate root).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rand::RngExt;
use subtle::ConstantTimeEq;

use crate::cases::{self, CaseList, Queue, SandboxCase};
use crate::clock::{RealClock, SandboxClock, epoch_ms, format_timestamp};
use crate::contract::{self, ListQuery};
use crate::faults::{self, Faults, FaultsError};
use crate::limiter::{RateDecision, SlidingWindowLimiter};
use crate::{SandboxConfig, SandboxError, SandboxStats};

/// The sandbox's shared state; clones share it.
#[derive(Clone)]
pub struct Sandbox {
    shared: Arc<Shared>,
}

struct Shared {
    config: SandboxConfig,
    clock: Arc<dyn SandboxClock>,
    state: Mutex<State>,
}

struct State {
    faults: faults::Compiled,
    limiter: SlidingWindowLimiter<Arc<dyn SandboxClock>>,
    queues: HashMap<String, Queue>,
    stats: SandboxStats,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("rate", &self.shared.config.rate)
            .field("window", &self.shared.config.window)
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
        Sandbox::with_clock(config, Arc::new(RealClock))
    }

    /// A sandbox on the given clock (tests pass a [`ManualClock`](crate::ManualClock)).
    pub fn with_clock(
        config: SandboxConfig,
        clock: Arc<dyn SandboxClock>,
    ) -> Result<Sandbox, FaultsError> {
        let state = State::new(&config, &clock)?;
        Ok(Sandbox {
            shared: Arc::new(Shared {
                config,
                clock,
                state: Mutex::new(state),
            }),
        })
    }

    /// The configuration it was started with.
    pub fn config(&self) -> &SandboxConfig {
        &self.shared.config
    }

    /// The same data as `GET /_sandbox/stats`.
    pub fn stats(&self) -> SandboxStats {
        let now = self.shared.clock.now();
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
        let compiled = faults::Compiled::new(faults, self.shared.clock.now())?;
        self.state().faults = compiled;
        tracing::info!("sandbox faults replaced");
        Ok(())
    }

    /// Forgets cases, labels, stats and the rate-limit log, and restores the startup faults.
    pub fn reset(&self) {
        let fresh = State::new(&self.shared.config, &self.shared.clock)
            .expect("startup faults were validated when the sandbox was built");
        *self.state() = fresh;
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared
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
        let now = self.shared.clock.now();
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
        for expected in self.shared.config.api_key.split(',') {
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
        self.state().limiter.peek(&self.shared.config.api_key)
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
        let now_utc = self.shared.clock.now_utc();
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
        let added = state.queues.entry(queue_id.clone()).or_default().add(
            &queue_id,
            request.cases,
            &format_timestamp(now_utc),
        );
        state
            .stats
            .record_accepted(&queue_id, added.len(), epoch_ms(now_utc));
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
        cases::page(all, query)
    }

    /// Counts an API answer by status.
    pub(crate) fn record_status(&self, status: u16) {
        self.state().stats.record_status(status);
    }
}

impl State {
    fn new(config: &SandboxConfig, clock: &Arc<dyn SandboxClock>) -> Result<State, FaultsError> {
        Ok(State {
            faults: faults::Compiled::new(config.faults.clone(), clock.now())?,
            limiter: SlidingWindowLimiter::new(clock.clone(), config.rate, config.window),
            queues: HashMap::new(),
            stats: SandboxStats::new(config),
        })
    }
}
