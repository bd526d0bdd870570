//! The per-API-key rate limiter: never more than `rate` requests in any `window` from
//! casegate's own pacing, whatever counting model the API uses.
//!
//! A sliding-window log is the strictest model: if no interval of length `window` holds more
//! than `rate` grants, then no fixed window, sliding window or token bucket of that rate counts
//! more either. A small `margin` is added to the window for clock skew and network jitter.
//! Keys are identified by a hash ([`key_id`]), never by the key itself.
//!
//! - `Local`: in-process state, for the embedded backend (one process owns the buffer).
//! - `Redis`: one sorted set per key under the deployment's hash tag, updated by a Lua script that
//!   reads Redis' own clock, so every replica shares one budget with no other coordination.
//!
//! Besides pacing, the limiter holds pauses: a 429's `retry-after` or `x-ratelimit-remaining: 0`
//! pauses the whole key (every queue and every replica), not just one request.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use redis::Script;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use crate::secret::Secret;

/// A stable, non-reversible id for an API key: what storage, logs and metrics use.
pub fn key_id(api_key: &Secret) -> String {
    hex::encode(Sha256::digest(api_key.expose().as_bytes()))[..16].to_string()
}

#[derive(Debug, Clone, Copy)]
pub struct LimiterConfig {
    pub rate: u32,
    pub window: Duration,
    pub margin: Duration,
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
        match self {
            RateLimiter::Local(l) => l.config.rate,
            RateLimiter::Redis(r) => r.config.rate,
        }
    }

    /// Waits until `key` may send one request, and counts it. Waiters of one key are served in
    /// arrival order, so queues sharing a key share its budget fairly.
    pub async fn acquire(&self, key: &str) {
        let turn = match self {
            RateLimiter::Local(l) => l.turn(key),
            RateLimiter::Redis(r) => r.turn(key),
        };
        let _turn = turn.lock().await;
        loop {
            let wait = match self {
                RateLimiter::Local(l) => l.try_acquire(key, Instant::now()),
                RateLimiter::Redis(r) => r.try_acquire(key).await,
            };
            match wait {
                None => return,
                Some(wait) => tokio::time::sleep(wait).await,
            }
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

#[derive(Debug, Clone)]
struct LocalPause {
    until: Instant,
    kind: PauseKind,
    reason: String,
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

#[derive(Default)]
struct KeyState {
    grants: VecDeque<Instant>,
    paused_until: Option<Instant>,
}

pub struct LocalLimiter {
    config: LimiterConfig,
    keys: Mutex<HashMap<String, KeyState>>,
    turns: Turns,
    pauses: Mutex<HashMap<String, LocalPause>>,
}

impl LocalLimiter {
    fn turn(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        turn_of(&self.turns, key)
    }

    /// Grants and returns `None`, or returns how long to wait before asking again.
    pub fn try_acquire(&self, key: &str, now: Instant) -> Option<Duration> {
        let mut keys = self.keys.lock().expect("limiter lock");
        let state = keys.entry(key.to_string()).or_default();
        if let Some(until) = state.paused_until.filter(|until| *until > now) {
            return Some(until - now);
        }
        let span = self.config.window + self.config.margin;
        while state
            .grants
            .front()
            .is_some_and(|t| now.duration_since(*t) >= span)
        {
            state.grants.pop_front();
        }
        if state.grants.len() < self.config.rate as usize {
            state.grants.push_back(now);
            return None;
        }
        let oldest = *state.grants.front().expect("rate > 0 grants");
        Some(
            (oldest + span)
                .saturating_duration_since(now)
                .max(Duration::from_millis(1)),
        )
    }

    pub fn hold(&self, name: &str, kind: PauseKind, until: Instant, reason: &str) {
        let mut pauses = self.pauses.lock().expect("limiter lock");
        let until = pauses.get(name).map_or(until, |p| {
            if p.kind == kind {
                p.until.max(until)
            } else {
                until
            }
        });
        pauses.insert(
            name.to_string(),
            LocalPause {
                until,
                kind,
                reason: reason.to_string(),
            },
        );
    }

    pub fn gate(&self, name: &str, now: Instant, probe_interval: Duration) -> Gate {
        let mut pauses = self.pauses.lock().expect("limiter lock");
        let Some(pause) = pauses.get_mut(name) else {
            return Gate::Open;
        };
        if pause.until > now {
            return Gate::Wait(pause.until - now);
        }
        if !pause.kind.probed() {
            pauses.remove(name);
            return Gate::Open;
        }
        pause.until = now + probe_interval;
        Gate::Probe
    }

    pub fn hand_back(&self, name: &str, now: Instant) {
        let mut pauses = self.pauses.lock().expect("limiter lock");
        if let Some(pause) = pauses.get_mut(name)
            && pause.kind.probed()
        {
            pause.until = pause.until.min(now);
        }
    }

    pub fn pauses(&self, now: Instant) -> Vec<PauseInfo> {
        let mut pauses = self.pauses.lock().expect("limiter lock");
        pauses.retain(|_, p| p.kind.probed() || p.until > now);
        let mut out: Vec<PauseInfo> = pauses
            .iter()
            .map(|(name, p)| PauseInfo {
                name: name.clone(),
                kind: p.kind,
                remaining_ms: p.until.saturating_duration_since(now).as_millis() as u64,
                reason: p.reason.clone(),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    pub fn pause(&self, key: &str, until: Instant) {
        let mut keys = self.keys.lock().expect("limiter lock");
        let state = keys.entry(key.to_string()).or_default();
        state.paused_until = Some(state.paused_until.map_or(until, |u| u.max(until)));
    }
}

/// KEYS: 1 grant log (sorted set), 2 pause marker. ARGV: 1 rate, 2 window+margin in µs, 3 a
/// unique member suffix. Returns 0 when granted, else the µs to wait.
static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local paused = redis.call('PTTL', KEYS[2])
if paused > 0 then return paused * 1000 end
local span = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - span)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now, now .. ':' .. ARGV[3])
  redis.call('PEXPIRE', KEYS[1], math.ceil(span / 1000) + 1000)
  return 0
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return math.max(1000, tonumber(oldest[2]) + span - now)
",
    )
});

/// KEYS: 1 pause marker. ARGV: 1 duration in ms. Extends the pause, never shortens it.
static PAUSE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
end
return 0
",
    )
});

/// The pause table: one hash (under the deployment's hash tag) whose fields are pause names and
/// whose values are `<until ms>|<kind code>|<reason>`, in Redis' own clock.
///
/// HOLD: KEYS 1 table. ARGV 1 name, 2 duration ms, 3 kind code. 4 reason. Extends a pause of the
/// same kind, never shortens it.
static HOLD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local untl = now + tonumber(ARGV[2])
local v = redis.call('HGET', KEYS[1], ARGV[1])
if v then
  local old, kind = string.match(v, '^(%d+)|(%a)|')
  if kind == ARGV[3] and tonumber(old) > untl then untl = tonumber(old) end
end
redis.call('HSET', KEYS[1], ARGV[1], untl .. '|' .. ARGV[3] .. '|' .. ARGV[4])
return 0
",
    )
});

/// GATE: KEYS 1 table. ARGV 1 name, 2 probe interval ms. Returns `{0}` open, `{1, ms}` wait,
/// `{2}` probe (the pause is pushed one interval on, so nobody else probes meanwhile).
static GATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v then return {0} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local untl, kind, reason = string.match(v, '^(%d+)|(%a)|(.*)$')
untl = tonumber(untl)
if untl > now then return {1, untl - now} end
if kind == 'r' then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return {0}
end
redis.call('HSET', KEYS[1], ARGV[1], (now + tonumber(ARGV[2])) .. '|' .. kind .. '|' .. reason)
return {2}
",
    )
});

/// HAND_BACK: KEYS 1 table. ARGV 1 name. A probed pause runs out now (its probe sent nothing).
static HAND_BACK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local untl, kind, reason = string.match(v, '^(%d+)|(%a)|(.*)$')
if kind == 'r' or tonumber(untl) <= now then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], now .. '|' .. kind .. '|' .. reason)
return 1
",
    )
});

/// LIST: KEYS 1 table. Returns `{now ms, field, value, field, value, ...}`.
static LIST: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"#!lua flags=no-writes
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {tostring(now)}
for _, x in ipairs(redis.call('HGETALL', KEYS[1])) do out[#out + 1] = x end
return out
",
    )
});

pub struct RedisLimiter {
    config: LimiterConfig,
    conn: crate::buffer::redis::RedisConn,
    key_prefix: String,
    op_timeout: Duration,
    turns: Turns,
}

impl RedisLimiter {
    fn turn(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        turn_of(&self.turns, key)
    }

    fn keys(&self, key: &str) -> (String, String) {
        (
            format!("{}:rate:{key}", self.key_prefix),
            format!("{}:pause:{key}", self.key_prefix),
        )
    }

    async fn try_acquire(&self, key: &str) -> Option<Duration> {
        let (log, pause) = self.keys(key);
        let span = (self.config.window + self.config.margin).as_micros() as u64;
        let mut conn = self.conn.clone();
        let mut invocation = ACQUIRE.key(log);
        invocation
            .key(pause)
            .arg(self.config.rate)
            .arg(span)
            .arg(format!("{:016x}", rand::random::<u64>()));
        match tokio::time::timeout(self.op_timeout, invocation.invoke_async::<u64>(&mut conn)).await
        {
            Ok(Ok(0)) => None,
            Ok(Ok(wait_us)) => Some(Duration::from_micros(wait_us)),
            // Redis unreachable: no grant without the shared count; ask again shortly.
            Ok(Err(error)) => {
                tracing::warn!(error = %error.kind_str(), "rate limiter unavailable");
                Some(Duration::from_millis(500))
            }
            Err(_) => Some(Duration::from_millis(500)),
        }
    }

    fn table(&self) -> String {
        format!("{}:pauses", self.key_prefix)
    }

    async fn hold(&self, name: &str, kind: PauseKind, duration: Duration, reason: &str) {
        let mut conn = self.conn.clone();
        let mut invocation = HOLD.key(self.table());
        invocation
            .arg(name)
            .arg(duration.as_millis().max(1) as u64)
            .arg(kind.code())
            .arg(reason);
        if let Ok(Err(error)) =
            tokio::time::timeout(self.op_timeout, invocation.invoke_async::<()>(&mut conn)).await
        {
            tracing::warn!(error = %error.kind_str(), "could not record a pause");
        }
    }

    async fn gate(&self, name: &str, probe_interval: Duration) -> Gate {
        let mut conn = self.conn.clone();
        let mut invocation = GATE.key(self.table());
        invocation
            .arg(name)
            .arg(probe_interval.as_millis().max(1) as u64);
        match tokio::time::timeout(
            self.op_timeout,
            invocation.invoke_async::<Vec<u64>>(&mut conn),
        )
        .await
        {
            Ok(Ok(reply)) => match reply.as_slice() {
                [1, ms, ..] => Gate::Wait(Duration::from_millis(*ms)),
                [2, ..] => Gate::Probe,
                _ => Gate::Open,
            },
            // Without the shared table nothing can be known: wait, as the grants do.
            _ => Gate::Wait(Duration::from_millis(500)),
        }
    }

    async fn hand_back(&self, name: &str) {
        let mut conn = self.conn.clone();
        let mut invocation = HAND_BACK.key(self.table());
        invocation.arg(name);
        if let Ok(Err(error)) =
            tokio::time::timeout(self.op_timeout, invocation.invoke_async::<i64>(&mut conn)).await
        {
            tracing::warn!(error = %error.kind_str(), "could not hand back a probe");
        }
    }

    async fn resume(&self, name: &str) {
        let mut conn = self.conn.clone();
        let table = self.table();
        let _ = tokio::time::timeout(
            self.op_timeout,
            redis::cmd("HDEL")
                .arg(&table)
                .arg(name)
                .query_async::<()>(&mut conn),
        )
        .await;
    }

    async fn pauses(&self) -> Vec<PauseInfo> {
        let mut conn = self.conn.clone();
        let invocation = LIST.key(self.table());
        let Ok(Ok(reply)) = tokio::time::timeout(
            self.op_timeout,
            invocation.invoke_async::<Vec<String>>(&mut conn),
        )
        .await
        else {
            return Vec::new();
        };
        let mut items = reply.into_iter();
        let now: u64 = items.next().and_then(|n| n.parse().ok()).unwrap_or(0);
        let mut out = Vec::new();
        while let (Some(name), Some(value)) = (items.next(), items.next()) {
            let mut parts = value.splitn(3, '|');
            let (Some(until), Some(kind), reason) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let until: u64 = until.parse().unwrap_or(0);
            let kind = PauseKind::from_code(kind);
            if !kind.probed() && until <= now {
                continue;
            }
            out.push(PauseInfo {
                name,
                kind,
                remaining_ms: until.saturating_sub(now),
                reason: reason.unwrap_or_default().to_string(),
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    async fn pause(&self, key: &str, duration: Duration) {
        let (_, pause) = self.keys(key);
        let mut conn = self.conn.clone();
        let mut invocation = PAUSE.key(pause);
        invocation.arg(duration.as_millis().max(1) as u64);
        if let Ok(Err(error)) =
            tokio::time::timeout(self.op_timeout, invocation.invoke_async::<()>(&mut conn)).await
        {
            tracing::warn!(error = %error.kind_str(), "could not record a rate-limit pause");
        }
    }
}

trait KindStr {
    fn kind_str(&self) -> String;
}

impl KindStr for redis::RedisError {
    fn kind_str(&self) -> String {
        format!("{:?}", self.kind())
    }
}

#[cfg(test)]
mod tests;
