//! The Redis limiter, shared by every replica: a sorted set of grants per key and one pause
//! table, updated by Lua scripts on Redis' own clock.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use redis::Script;

use super::{Gate, Grant, LimiterConfig, PauseInfo, PauseKind, Turns, turn_of};

/// KEYS: 1 grant log (sorted set), 2 pause marker. ARGV: 1 rate, 2 window+margin in µs, 3 the
/// grant's id (its member), 4 how long its request may take in µs (it counts from then until it
/// ends). Returns 0 when granted, else the µs to wait.
static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local span = tonumber(ARGV[2])
local within = tonumber(ARGV[4])
-- Already granted by an earlier call whose answer was lost: the same grant, logged again.
if redis.call('ZSCORE', KEYS[1], ARGV[3]) then
  redis.call('ZADD', KEYS[1], now + within, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], math.ceil((span + within) / 1000) + 1000)
  return 0
end
local paused = redis.call('PTTL', KEYS[2])
if paused > 0 then return paused * 1000 end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - span)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + within, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], math.ceil((span + within) / 1000) + 1000)
  return 0
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
-- An oldest grant still in flight frees its slot a window after it ends: now at the earliest.
return math.max(1000, math.min(tonumber(oldest[2]), now) + span - now)
",
    )
});

/// KEYS: 1 grant log. ARGV: 1 the grant's id, 2 window+margin in µs, 3 how long a request may
/// take in µs. Counts the grant from now, its request's end. The log lives as long as the latest
/// unanswered grant of any replica can count (each was granted before now).
static SETTLE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('PEXPIRE', KEYS[1], math.ceil((tonumber(ARGV[2]) + tonumber(ARGV[3])) / 1000) + 1000)
return 0
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
    pub(super) config: LimiterConfig,
    pub(super) conn: crate::buffer::redis::RedisConn,
    pub(super) key_prefix: String,
    pub(super) op_timeout: Duration,
    pub(super) turns: Turns,
}

impl RedisLimiter {
    pub(super) fn turn(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        turn_of(&self.turns, key)
    }

    fn keys(&self, key: &str) -> (String, String) {
        (
            format!("{}:rate:{key}", self.key_prefix),
            format!("{}:pause:{key}", self.key_prefix),
        )
    }

    pub(super) async fn try_acquire(&self, grant: &Grant) -> Option<Duration> {
        let (log, pause) = self.keys(&grant.key);
        let span = (self.config.window + self.config.margin).as_micros() as u64;
        let mut conn = self.conn.clone();
        let mut invocation = ACQUIRE.key(log);
        invocation
            .key(pause)
            .arg(self.config.rate)
            .arg(span)
            .arg(format!("{:016x}", grant.id))
            .arg(self.config.answer_within.as_micros() as u64);
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

    /// Counts `grant` from Redis' now. Without Redis the grant stays counted from its request's
    /// timeout.
    pub(super) async fn settle(&self, grant: &Grant) {
        let (log, _) = self.keys(&grant.key);
        let span = (self.config.window + self.config.margin).as_micros() as u64;
        let mut conn = self.conn.clone();
        let mut invocation = SETTLE.key(log);
        invocation
            .arg(format!("{:016x}", grant.id))
            .arg(span)
            .arg(self.config.answer_within.as_micros() as u64);
        match tokio::time::timeout(self.op_timeout, invocation.invoke_async::<()>(&mut conn)).await
        {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::warn!(error = %error.kind_str(), "could not count a request from its answer; it counts from its timeout");
            }
            Err(_) => {
                tracing::warn!(
                    "counting a request from its answer timed out; it counts from its timeout"
                );
            }
        }
    }

    fn table(&self) -> String {
        format!("{}:pauses", self.key_prefix)
    }

    pub(super) async fn hold(&self, name: &str, kind: PauseKind, duration: Duration, reason: &str) {
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

    pub(super) async fn gate(&self, name: &str, probe_interval: Duration) -> Gate {
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

    pub(super) async fn hand_back(&self, name: &str) {
        let mut conn = self.conn.clone();
        let mut invocation = HAND_BACK.key(self.table());
        invocation.arg(name);
        if let Ok(Err(error)) =
            tokio::time::timeout(self.op_timeout, invocation.invoke_async::<i64>(&mut conn)).await
        {
            tracing::warn!(error = %error.kind_str(), "could not hand back a probe");
        }
    }

    pub(super) async fn resume(&self, name: &str) {
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

    pub(super) async fn pauses(&self) -> Vec<PauseInfo> {
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

    pub(super) async fn pause(&self, key: &str, duration: Duration) {
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
