//! The per-API-key rate limiter: never more than `rate` requests in any `window` from
//! casegate's own pacing, whatever counting model the API uses.
//!
//! A sliding-window log is the strictest model: if no interval of length `window` holds more
//! than `rate` grants, then no fixed window, sliding window or token bucket of that rate counts
//! more either. A small `margin` is added to the window for clock skew.
//!
//! The API counts a request at some moment between its send and its end (its answer, its timeout,
//! its failed connection), and only the end bounds that moment from above. So a grant is logged,
//! when it is handed out, as if the request ended at the latest moment it can (the grant's
//! [`Grant::deadline`], by which the worker abandons it), and moved to the moment it did end
//! ([`RateLimiter::settle`]); a grant never sent stays where it was logged. A key whose every slot
//! is held by a request still in flight waits a window (a slot frees a window after an end, and
//! none has ended yet) and looks again. Counting from the send alone let a request that waited in
//! front of the API (a burst, a slow answer) be counted later than casegate thought, so a request
//! sent one window after it could land inside the API's window: a 429 from casegate's own pacing.
//! Counting from the end holds each slot one round trip longer per window: nothing under a fast
//! API, the queueing time under a slow one. Replicas of versions that count from the send only
//! (rolling upgrades) still can, and their shorter expiry of the shared log can drop newer
//! replicas' grants still in flight.
//! Keys are identified by a hash ([`key_id`]), never by the key itself.
//!
//! - `Local`: in-process state, for the embedded backend (one process owns the buffer).
//! - `Redis`: one sorted set per key under the deployment's hash tag, updated by a Lua script that
//!   reads Redis' own clock, so every replica shares one budget with no other coordination.
//!
//! Besides pacing, the limiter holds pauses: a 429's `retry-after` or `x-ratelimit-remaining: 0`
//! pauses the whole key (every queue and every replica), not just one request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::time::Instant;

use crate::secret::Secret;

mod local;
mod redis;

pub use local::LocalLimiter;
pub use redis::RedisLimiter;

/// A stable, non-reversible id for an API key: what storage, logs and metrics use.
pub fn key_id(api_key: &Secret) -> String {
    hex::encode(Sha256::digest(api_key.expose().as_bytes()))[..16].to_string()
}

#[derive(Debug, Clone, Copy)]
pub struct LimiterConfig {
    pub rate: u32,
    pub window: Duration,
    pub margin: Duration,
    /// The longest a request may take from its grant to its end (the API client's request
    /// timeout; [`Grant::deadline`] enforces it): until it ends, a grant counts from then.
    pub answer_within: Duration,
}

/// One request's slot in its key's window, from [`RateLimiter::acquire`] to
/// [`RateLimiter::settle`]. Dropped without settling (never sent), it stays counted from the
/// timeout its request would have had.
#[derive(Debug)]
#[must_use = "settle the grant when its request ends"]
pub struct Grant {
    key: String,
    /// Tells this grant from the key's others in the log.
    id: u64,
    /// When its request must have ended: the end the log assumes until it is settled.
    deadline: Instant,
}

impl Grant {
    /// Its request must have ended by then (answered or abandoned), or the log, which counts it
    /// from this end until it is settled, would count it from too early should settling fail.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }
}

#[derive(Clone)]
pub enum RateLimiter {
    Local(Arc<LocalLimiter>),
    Redis(Arc<RedisLimiter>),
}

impl RateLimiter {
    pub fn local(config: LimiterConfig) -> Self {
        RateLimiter::Local(Arc::new(LocalLimiter {
            config,
            keys: Mutex::new(HashMap::new()),
            turns: Mutex::new(HashMap::new()),
            pauses: Mutex::new(HashMap::new()),
        }))
    }

    pub fn redis(
        config: LimiterConfig,
        conn: crate::buffer::redis::RedisConn,
        key_prefix: String,
        op_timeout: Duration,
    ) -> Self {
        RateLimiter::Redis(Arc::new(RedisLimiter {
            config,
            conn,
            key_prefix,
            op_timeout,
            turns: Mutex::new(HashMap::new()),
        }))
    }

    /// Requests allowed per window.
    pub fn rate(&self) -> u32 {
        self.config().rate
    }

    /// Waits until `key` may send one request, and counts it. Waiters of one key are served in
    /// arrival order, so queues sharing a key share its budget fairly.
    pub async fn acquire(&self, key: &str) -> Grant {
        let turn = match self {
            RateLimiter::Local(l) => l.turn(key),
            RateLimiter::Redis(r) => r.turn(key),
        };
        let _turn = turn.lock().await;
        let mut grant = Grant {
            key: key.to_string(),
            id: rand::random(),
            deadline: Instant::now(),
        };
        let answer_within = self.config().answer_within;
        loop {
            // Taken before the limiter logs the grant, so the deadline is never later than the
            // end the log assumes.
            let asked = Instant::now();
            let wait = match self {
                RateLimiter::Local(l) => l.try_acquire(&grant, asked),
                RateLimiter::Redis(r) => r.try_acquire(&grant).await,
            };
            match wait {
                None => {
                    grant.deadline = asked + answer_within;
                    return grant;
                }
                Some(wait) => tokio::time::sleep(wait).await,
            }
        }
    }

    fn config(&self) -> &LimiterConfig {
        match self {
            RateLimiter::Local(l) => &l.config,
            RateLimiter::Redis(r) => &r.config,
        }
    }

    /// Counts `grant` from now: its request has ended (answered with any status, timed out or
    /// failed), so the API counted it, if at all, by now.
    pub async fn settle(&self, grant: Grant) {
        match self {
            RateLimiter::Local(l) => l.settle(&grant, Instant::now()),
            RateLimiter::Redis(r) => r.settle(&grant).await,
        }
    }

    /// Pauses `name` (see [`key_pause`], [`queue_pause`]) for every replica: for `duration`, or
    /// longer when a longer pause is already in force.
    pub async fn hold(&self, name: &str, kind: PauseKind, duration: Duration, reason: &str) {
        match self {
            RateLimiter::Local(l) => l.hold(name, kind, Instant::now() + duration, reason),
            RateLimiter::Redis(r) => r.hold(name, kind, duration, reason).await,
        }
    }

    /// Whether `name` may be claimed for and sent to now; hands out at most one probe per
    /// `probe_interval` across the fleet once a probed pause runs out.
    pub async fn gate(&self, name: &str, probe_interval: Duration) -> Gate {
        match self {
            RateLimiter::Local(l) => l.gate(name, Instant::now(), probe_interval),
            RateLimiter::Redis(r) => r.gate(name, probe_interval).await,
        }
    }

    /// Gives back the probe of `name` that [`Self::gate`] handed out and that sent nothing (the
    /// queue had nothing to claim): the pause runs out again now, so the next worker with cases
    /// waiting probes at once instead of an interval later.
    pub async fn hand_back(&self, name: &str) {
        match self {
            RateLimiter::Local(l) => l.hand_back(name, Instant::now()),
            RateLimiter::Redis(r) => r.hand_back(name).await,
        }
    }

    /// Ends the pause of `name` (its probe succeeded).
    pub async fn resume(&self, name: &str) {
        match self {
            RateLimiter::Local(l) => {
                l.pauses.lock().expect("limiter lock").remove(name);
            }
            RateLimiter::Redis(r) => r.resume(name).await,
        }
    }

    /// Every pause in force, for `status` and the paused gauge.
    pub async fn pauses(&self) -> Vec<PauseInfo> {
        match self {
            RateLimiter::Local(l) => l.pauses(Instant::now()),
            RateLimiter::Redis(r) => r.pauses().await,
        }
    }

    /// Holds every request of `key` for `duration` (a 429, or `remaining: 0` until the reset).
    pub async fn pause(&self, key: &str, duration: Duration) {
        match self {
            RateLimiter::Local(l) => l.pause(key, Instant::now() + duration),
            RateLimiter::Redis(r) => r.pause(key, duration).await,
        }
    }
}

/// Why a key or queue is paused. The kind decides what happens when the pause runs out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PauseKind {
    /// 429 (or a spent window): everyone may send again when it runs out.
    RateLimited,
    /// 401/403 for a key: when it runs out, one probe goes out for the whole fleet.
    KeyRefused,
    /// 404 for a queue (or no key configured): likewise probed once per interval.
    QueueUnknown,
}

impl PauseKind {
    fn probed(self) -> bool {
        !matches!(self, PauseKind::RateLimited)
    }

    fn code(self) -> &'static str {
        match self {
            PauseKind::RateLimited => "r",
            PauseKind::KeyRefused => "k",
            PauseKind::QueueUnknown => "q",
        }
    }

    fn from_code(code: &str) -> PauseKind {
        match code {
            "k" => PauseKind::KeyRefused,
            "q" => PauseKind::QueueUnknown,
            _ => PauseKind::RateLimited,
        }
    }
}

/// What a worker may do about a paused (or not) key or queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Not paused: claim and send.
    Open,
    /// Paused: claim nothing; ask again after this long.
    Wait(Duration),
    /// The pause ran out and this caller holds the fleet's one probe for the next interval:
    /// claim and send one request. Its answer resumes ([`RateLimiter::resume`]) or re-pauses.
    Probe,
}

/// A pause in force, as `status` and the paused gauge show it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PauseInfo {
    /// `key:<key id>` or `queue:<queue id>`.
    pub name: String,
    pub kind: PauseKind,
    /// Until the next probe (or the end of a 429 pause); 0 while a probe is out.
    pub remaining_ms: u64,
    pub reason: String,
}

/// The pause table entry name of an API key (by id) or a queue.
pub fn key_pause(key: &str) -> String {
    format!("key:{key}")
}

pub fn queue_pause(queue: &str) -> String {
    format!("queue:{queue}")
}

type Turns = Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>;

fn turn_of(turns: &Turns, key: &str) -> Arc<tokio::sync::Mutex<()>> {
    turns
        .lock()
        .expect("turns lock")
        .entry(key.to_string())
        .or_default()
        .clone()
}

#[cfg(test)]
mod tests;
