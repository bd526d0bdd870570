//! What the sandbox has seen (`GET /_sandbox/stats`): requests, answers by status, accepted
//! batches and how close clients came to the rate limit.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::SandboxConfig;
use crate::faults::Faults;

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

impl SandboxStats {
    /// Nothing seen yet by a sandbox set up with `config`.
    pub(crate) fn new(config: &SandboxConfig) -> SandboxStats {
        SandboxStats {
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
        }
    }

    /// Counts a `POST` of `cases` cases accepted for `queue_id` at `at_ms`.
    pub(crate) fn record_accepted(&mut self, queue_id: &str, cases: usize, at_ms: u64) {
        self.accepted_requests += 1;
        self.accepted_cases += cases as u64;
        *self
            .queue_case_counts
            .entry(queue_id.to_owned())
            .or_default() += cases as u64;
        self.accepted_log.push(AcceptedBatch {
            at_ms,
            queue_id: queue_id.to_owned(),
            cases,
        });
    }

    /// Counts an API answer by status.
    pub(crate) fn record_status(&mut self, status: u16) {
        *self.status_counts.entry(status).or_default() += 1;
        if status == 429 {
            self.rate_limited += 1;
        }
    }
}
