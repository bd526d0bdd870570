//! The Redis backend: one Redis Stream per Duvo queue, read through the consumer group `casegate`.
//!
//! Key layout (every key carries the hash tag `{<prefix>}`, default prefix `casegate`):
//! - `{casegate}:q:<queue>`: the queue's stream. Each entry holds one [`CaseRecord`] as JSON in
//!   the field `r`; the entry id is the [`CaseId`].
//! - `{casegate}:ready`: sorted set of the queues that hold at least one case, scored by when
//!   they got work. The write script adds to it; a worker that finds its queue drained takes it
//!   out ([`RedisBuffer::settle`], atomic with the writes). Delivery reads only this set, so an
//!   idle gateway costs the same few commands per second for 10 queues or 10,000.
//! - `{casegate}:registry`: sorted set of every queue written to, scored by its last write;
//!   [`RedisBuffer::prune`] forgets queues empty past the retention period (stream, group and
//!   all). Older versions kept `{casegate}:queues`, a plain set; it is folded into these two on
//!   first use.
//! - `{casegate}:seen:<source>:<delivery_id>`: dedupe mark, a plain string with a `PX` expiry
//!   (`<delivery_id>` is also `body:<sha256>` for the body-digest mark of an unstamped scheme).
//!   Unambiguous because the mapping loader allows only letters, digits, `-` and `_` in source
//!   names.
//! - `{casegate}:consumer:<name>`: the lease on a consumer name, a random nonce with a `PX`
//!   expiry, so two live processes never read through one consumer name
//!   ([`RedisBuffer::lease_consumer`], `delivery::lease`).
//! - `{casegate}:dlq`: the dead letters, a stream whose entry ids are the [`DeadLetterId`]s (so
//!   they increase monotonically and list oldest-first), the record as JSON in the field `r`.
//!
//! One hash tag puts a whole deployment in one Cluster slot, so every multi-key write is a single
//! Lua script, atomic even on Redis Cluster (the limiter's keys share the tag too). One slot is
//! enough: throughput is capped by the Duvo API (about 500 cases/s per API key), far below what
//! one Redis shard serves (docs/scaling.md has the measurements). The connection is a single
//! server's or a Redis Cluster's ([`Topology`]); the cluster client follows redirections and
//! failovers on its own.
//!
//! Who acks when: ingress writes with [`RedisBuffer::enqueue`] (one script: dedupe mark, `XADD`s,
//! dead letters). The delivery loop claims with `XREADGROUP >`, which puts the entries in the
//! group's pending list (the claim script creates the group on `NOGROUP`, from id `0` with
//! `MKSTREAM`, so entries written before the first claim are not skipped); after the API accepted a case it is acked with `XACK` + `XDEL`, so `XLEN`
//! is exactly the undelivered depth. Entries claimed but never acked stay pending and are taken
//! over with `XAUTOCLAIM` once idle longer than the visibility timeout. A live consumer renews the
//! entries it holds (`XCLAIM ... JUSTID`, [`RedisBuffer::renew`]) so only a stopped consumer's
//! claims go idle; a pause hands them back at once ([`RedisBuffer::release`]); a restarted
//! consumer with the same name reads its own pending entries first ([`RedisBuffer::own_pending`]).
//!
//! What survives a crash: of casegate, everything (the pending list lives in Redis). Of Redis,
//! whatever its persistence keeps: run it with `appendonly yes` (AOF). Redis writes the AOF before
//! it replies, so a killed Redis process loses nothing that was answered; `appendfsync always`
//! also covers a power loss, `everysec` (the default) may lose the last second of it.
//!
//! Needs Redis 7.0 or newer (script flags, `XAUTOCLAIM` listing deleted entries). The write
//! script is refused as a whole when Redis is out of memory (ingress answers 503); the claim, ack
//! and dead-letter scripts are allowed to run then, so delivery can still drain the backlog. The connection
//! is made lazily and re-made after failures, so casegate starts while Redis is down; every
//! operation answers [`BufferError::Unavailable`] within the operation timeout until Redis is back.
//! A script whose answer was lost to a timeout may still have run: a webhook answered 503 then
//! is written again on the provider's retry unless its dedupe mark catches it (at-least-once).

use std::future::Future;
use std::sync::LazyLock;
use std::time::Duration;

use redis::{RedisError, Script, Value};

pub use super::redis_conn::{RedisConn, Topology};

use super::{BufferError, BufferedCase, CaseId, Enqueue, EnqueueOutcome, QueueStats};
use crate::case::{CaseRecord, DeadLetter, DeadLetterId, DeadLetterRecord};

/// The consumer group every casegate instance reads through.
const GROUP: &str = "casegate";

/// The stream entry field that holds a record's JSON.
const FIELD: &str = "r";

/// Writes one webhook (or one replay) atomically. Denied as a whole when Redis is out of memory.
///
/// KEYS: 1 queue registry, 2 dead-letter stream, 3 dedupe mark (any key when unused), 4 second
/// dedupe mark (the body digest; KEYS[3] again when unused), 5 ready set, 6.. one stream per case.
/// ARGV: 1 dedupe ttl ms (0: none), 2 dead letter to consume ('': none), 3 number of cases n, 4
/// number of dead letters m, then n queue names, n case records, m dead-letter records. Each
/// case's queue enters the ready set (if not in it: its score says since when it has work) and
/// has its last write noted in the registry.
static WRITE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"#!lua
local ttl = tonumber(ARGV[1])
if ARGV[2] ~= '' and #redis.call('XRANGE', KEYS[2], ARGV[2], ARGV[2]) == 0 then
  return {'missing'}
end
if ttl > 0 then
  if redis.call('EXISTS', KEYS[3], KEYS[4]) > 0 then
    -- Rewrite the mark (same value, same expiry): a replicated write, so a WAIT after this
    -- answer also covers the first write of the event, whichever connection made it.
    for k = 3, 4 do
      if redis.call('EXISTS', KEYS[k]) == 1 then
        redis.call('SET', KEYS[k], '1', 'KEEPTTL')
      end
    end
    return {'duplicate'}
  end
  redis.call('SET', KEYS[3], '1', 'PX', ttl)
  redis.call('SET', KEYS[4], '1', 'PX', ttl)
end
local n = tonumber(ARGV[3])
local m = tonumber(ARGV[4])
local cases = {}
for i = 1, n do
  local id = redis.call('XADD', KEYS[5 + i], '*', 'r', ARGV[4 + n + i])
  local ms = tonumber(string.match(id, '^(%d+)'))
  redis.call('ZADD', KEYS[1], ms, ARGV[4 + i])
  redis.call('ZADD', KEYS[5], 'NX', ms, ARGV[4 + i])
  cases[i] = id
end
local dead = {}
for i = 1, m do
  dead[i] = redis.call('XADD', KEYS[2], '*', 'r', ARGV[4 + 2 * n + i])
end
if ARGV[2] ~= '' then
  redis.call('XDEL', KEYS[2], ARGV[2])
end
return {'stored', cases, dead}
",
    )
});

/// Takes a drained queue out of the ready set: atomic with the writes, so a case written after
/// the check puts it back and none is missed. KEYS: 1 stream, 2 ready set. ARGV: 1 queue.
/// Returns 1 when the queue holds nothing (claimed cases included) and left the set.
static SETTLE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"#!lua flags=allow-oom
if redis.call('XLEN', KEYS[1]) > 0 then
  return 0
end
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
",
    )
});

/// Forgets a queue that stayed empty past the retention period: its stream (and consumer
/// group) is deleted and it leaves the registry and the ready set. Nothing is forgotten that
/// holds a case or was written to since `cutoff`.
/// KEYS: 1 stream, 2 registry, 3 ready set. ARGV: 1 queue, 2 cutoff ms. Returns 1 if forgotten.
static FORGET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"#!lua flags=allow-oom
local last = redis.call('ZSCORE', KEYS[2], ARGV[1])
if redis.call('XLEN', KEYS[1]) > 0 or (last and tonumber(last) > tonumber(ARGV[2])) then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
return 1
",
    )
});

/// Moves one queue of the set older versions kept (`{p}:queues`, every queue ever written) into
/// the registry and, if it holds cases, the ready set.
/// KEYS: 1 stream, 2 old queue set, 3 registry, 4 ready set. ARGV: 1 queue.
static MIGRATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"#!lua flags=allow-oom
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[3], 'NX', now, ARGV[1])
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
if first[1] then
  redis.call('ZADD', KEYS[4], 'NX', tonumber(string.match(first[1][1], '^(%d+)')), ARGV[1])
end
redis.call('SREM', KEYS[2], ARGV[1])
return 1
",
    )
});

/// Hands out new entries, creating the group (from the stream's start) on first use.
/// KEYS: 1 stream. ARGV: 1 group, 2 consumer, 3 count. Returns the entries.
static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"#!lua flags=allow-oom
local function read()
  return redis.pcall('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', ARGV[3], 'STREAMS', KEYS[1], '>')
end
local r = read()
if type(r) == 'table' and r.err then
  if not string.find(r.err, 'NOGROUP') then
    return redis.error_reply(r.err)
  end
  redis.call('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
  r = read()
  if type(r) == 'table' and r.err then
    return redis.error_reply(r.err)
  end
end
if not r then
  return {}
end
return r[1][2]
",
    )
});

/// Takes over idle pending entries and reports each one's delivery count.
/// KEYS: 1 stream. ARGV: 1 group, 2 consumer, 3 min idle ms, 4 count (> 0).
/// Returns `{id, fields, deliveries}` triples.
static RECLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"#!lua flags=allow-oom
local want = tonumber(ARGV[4])
local out = {}
local cursor = '0-0'
for _ = 1, 16 do
  local r = redis.pcall('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], cursor, 'COUNT', want - #out)
  if type(r) == 'table' and r.err then
    if string.find(r.err, 'NOGROUP') then
      return out
    end
    return redis.error_reply(r.err)
  end
  for _, e in ipairs(r[2]) do
    if e and e[2] then
      local p = redis.call('XPENDING', KEYS[1], ARGV[1], e[1], e[1], 1)
      local n = 2
      if p[1] then
        n = p[1][4]
      end
      out[#out + 1] = {e[1], e[2], n}
    end
  end
  cursor = r[1]
  if cursor == '0-0' or #out >= want then
    break
  end
end
return out
",
    )
});

/// Renews or releases entries `consumer` still holds; an entry that is no longer pending or
/// belongs to another consumer is left alone.
/// - `renew` resets their idle time, so no other consumer takes them while their holder waits
///   out a backoff or a pause. An entry that already sat idle past the visibility timeout
///   (anyone may have taken it since) is left alone too: a late renewal never steals a claim back.
/// - `release` hands them back to the group at once: their idle time is set to the visibility
///   timeout, so the next reclaim (by any consumer, oldest first) takes them ahead of newer
///   entries. Used when a pause stops delivery, so the backlog waits unclaimed and in order.
///
/// KEYS: 1 stream. ARGV: 1 group, 2 consumer, 3 idle ms (renew: the most an entry may have
/// sat; release: the idle time to set), 4 mode (`renew` or `release`), 5.. ids. Returns how many.
static HOLD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"#!lua flags=allow-oom
local release = ARGV[4] == 'release'
local done = 0
for i = 5, #ARGV do
  local p = redis.pcall('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1, ARGV[2])
  if type(p) == 'table' and not p.err and p[1] then
    if release then
      redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'IDLE', ARGV[3], 'JUSTID')
      done = done + 1
    elseif tonumber(p[1][3]) < tonumber(ARGV[3]) then
      redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
      done = done + 1
    end
  end
end
return done
",
    )
});

/// This consumer's own pending entries (what it held when it stopped), oldest first, with their
/// delivery counts, their idle time reset in the same step (so no other consumer reclaims them
/// before the first renewal); entries deleted meanwhile are acked away. Read on start, so a restarted
/// consumer resumes at once instead of after the visibility timeout.
/// KEYS: 1 stream. ARGV: 1 group, 2 consumer, 3 count. Returns `{id, fields, deliveries}`.
static OWN_PENDING: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"#!lua flags=allow-oom
local r = redis.pcall('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', ARGV[3], 'STREAMS', KEYS[1], '0')
if type(r) ~= 'table' or r.err or not r[1] then
  return {}
end
local out = {}
for _, e in ipairs(r[1][2]) do
  if e[2] then
    local p = redis.call('XPENDING', KEYS[1], ARGV[1], e[1], e[1], 1)
    local n = 2
    if p[1] then
      n = p[1][4]
    end
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, e[1], 'JUSTID')
    out[#out + 1] = {e[1], e[2], n}
  else
    redis.call('XACK', KEYS[1], ARGV[1], e[1])
  end
end
return out
",
    )
});

/// Takes or renews the lease on a consumer name: free, or already ours, it is (re)set.
/// KEYS: 1 lease. ARGV: 1 nonce, 2 ttl ms. Returns `{1}` when held, `{0, ms left}` when another
/// process holds it.
static LEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"#!lua flags=allow-oom
local v = redis.call('GET', KEYS[1])
if not v or v == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {1}
end
return {0, redis.call('PTTL', KEYS[1])}
",
    )
});

/// Gives up a lease if it is still ours. KEYS: 1 lease. ARGV: 1 nonce.
static UNLEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"#!lua flags=allow-oom
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
",
    )
});

/// Acks and deletes entries; a queue left empty leaves the ready set.
/// KEYS: 1 stream, 2 ready set. ARGV: 1 group, 2 queue, 3.. ids.
static ACK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"#!lua flags=allow-oom
for i = 3, #ARGV do
  redis.pcall('XACK', KEYS[1], ARGV[1], ARGV[i])
  redis.call('XDEL', KEYS[1], ARGV[i])
end
if redis.call('XLEN', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[2], ARGV[2])
end
return #ARGV - 2
",
    )
});

/// Acks and deletes entries and stores their dead letters; a queue left empty leaves the ready
/// set. KEYS: 1 stream, 2 dead-letter stream, 3 ready set. ARGV: 1 group, 2 queue, then pairs
/// (case id or '', record). Returns the dead-letter ids.
static DEAD_LETTER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"#!lua flags=allow-oom
local out = {}
for i = 3, #ARGV, 2 do
  if ARGV[i] ~= '' then
    redis.pcall('XACK', KEYS[1], ARGV[1], ARGV[i])
    redis.call('XDEL', KEYS[1], ARGV[i])
  end
  out[#out + 1] = redis.call('XADD', KEYS[2], '*', 'r', ARGV[i + 1])
end
if redis.call('XLEN', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[3], ARGV[2])
end
return out
",
    )
});

/// Depth, pending count and first entry of a stream, read in one consistent step.
/// KEYS: 1 stream. ARGV: 1 group. Returns `{depth, claimed, fields of the first entry or nil}`.
static STATS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"#!lua flags=no-writes
local depth = redis.call('XLEN', KEYS[1])
local claimed = 0
local p = redis.pcall('XPENDING', KEYS[1], ARGV[1])
if type(p) == 'table' and not p.err then
  claimed = p[1]
end
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
local oldest = false
if first[1] then
  oldest = first[1][2]
end
return {depth, claimed, oldest}
",
    )
});

/// Ids of dead letters without their records: the records stay in Redis.
/// KEYS: 1 dead-letter stream. ARGV: 1 start, 2 count.
static DEAD_LETTER_IDS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"#!lua flags=no-writes
local r = redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', ARGV[2])
local ids = {}
for i, e in ipairs(r) do
  ids[i] = e[1]
end
return ids
",
    )
});

/// Buffer on Redis Streams. Clones share one auto-reconnecting multiplexed connection.
#[derive(Clone)]
pub struct RedisBuffer {
    conn: RedisConn,
    prefix: String,
    op_timeout: Duration,
    /// Replicas that must confirm a webhook's write before it is acknowledged (`WAIT`); 0: none.
    wait_replicas: u32,
    /// Whether this process folded the old queue set into the registry already.
    migrated: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for RedisBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The connection carries the URL, password included: never print it.
        f.debug_struct("RedisBuffer")
            .field("prefix", &self.prefix)
            .field("op_timeout", &self.op_timeout)
            .finish_non_exhaustive()
    }
}

impl RedisBuffer {
    /// [`Self::connect_to`] one Redis server.
    pub async fn connect(
        url: &str,
        key_prefix: &str,
        op_timeout: Duration,
    ) -> Result<RedisBuffer, BufferError> {
        Self::connect_to(Topology::Single, url, key_prefix, op_timeout).await
    }

    /// Prepares a connection to `url` (for a cluster: comma-separated seed URLs) without waiting
    /// for it: succeeds while Redis is down. Fails only for a malformed URL (the error does not
    /// repeat the URL, which may hold a password).
    pub async fn connect_to(
        topology: Topology,
        url: &str,
        key_prefix: &str,
        op_timeout: Duration,
    ) -> Result<RedisBuffer, BufferError> {
        let conn = RedisConn::open(topology, url, op_timeout)?;
        let buffer = RedisBuffer {
            conn,
            prefix: key_prefix.to_owned(),
            op_timeout,
            wait_replicas: 0,
            migrated: Default::default(),
        };
        // Start connecting now rather than on the first webhook; a failure here only means the
        // next operation tries again.
        let warm = buffer.clone();
        tokio::spawn(async move {
            if let Err(e) = warm.ping().await {
                tracing::warn!(error = %e, "redis not reachable yet");
            }
        });
        Ok(buffer)
    }

    /// Makes every enqueue wait until `replicas` Redis replicas confirmed it (`WAIT`, bounded by
    /// half the operation timeout), for deployments where Redis fails over to a replica.
    pub fn with_wait_replicas(mut self, replicas: u32) -> Self {
        self.wait_replicas = replicas;
        self
    }

    pub async fn enqueue(&self, batch: Enqueue) -> Result<EnqueueOutcome, BufferError> {
        let outcome = self.enqueue_unreplicated(batch).await?;
        // A duplicate waits too: the provider's retry of a webhook answered 503 (its first
        // write reached the primary, no replica confirmed it in time) must not get a 2xx until a
        // replica has that first write. The write script rewrote the mark, so this connection's
        // replication offset is past the first write whichever connection made it.
        self.wait_replicas(self.wait_replicas, self.op_timeout / 2)
            .await?;
        Ok(outcome)
    }

    async fn enqueue_unreplicated(&self, batch: Enqueue) -> Result<EnqueueOutcome, BufferError> {
        let dedupe = batch.dedupe.as_ref().map(|m| {
            let ttl_ms = u64::try_from(m.ttl.as_millis()).unwrap_or(u64::MAX).max(1);
            let id_key = self.seen_key(&m.source, &m.delivery_id);
            let body_key = m
                .body_digest
                .as_ref()
                .map_or_else(|| id_key.clone(), |d| self.seen_key(&m.source, d));
            (id_key, body_key, ttl_ms)
        });
        let dead_letters = batch
            .dead_letters
            .iter()
            .map(encode)
            .collect::<Result<Vec<_>, _>>()?;
        match self
            .write(dedupe, None, &batch.cases, &dead_letters)
            .await?
        {
            Written::Stored {
                case_ids,
                dead_letter_ids,
            } => Ok(EnqueueOutcome::Stored {
                case_ids,
                dead_letter_ids,
            }),
            Written::Duplicate => Ok(EnqueueOutcome::Duplicate),
            Written::Missing => Err(BufferError::Corrupt {
                id: "enqueue".into(),
                reason: "the write script reported a missing dead letter".into(),
            }),
        }
    }

    /// Queues that hold at least one case, longest-waiting first: one read of the ready set,
    /// whatever the number of queues ever used.
    pub async fn queues(&self) -> Result<Vec<String>, BufferError> {
        self.migrate_once().await?;
        let mut conn = self.conn.clone();
        let ready = self.key("ready");
        self.timed("queues", async {
            redis::cmd("ZRANGE")
                .arg(&ready)
                .arg(0)
                .arg(-1)
                .query_async(&mut conn)
                .await
        })
        .await
    }

    /// Takes `queue` out of the ready set if it holds nothing; true when it did.
    pub async fn settle(&self, queue: &str) -> Result<bool, BufferError> {
        let mut invocation = SETTLE.prepare_invoke();
        invocation
            .key(self.stream_key(queue))
            .key(self.key("ready"))
            .arg(queue);
        let settled: u64 = self.invoke("settle", &invocation).await?;
        Ok(settled == 1)
    }

    /// Forgets up to `limit` queues that held nothing and were not written to for `retention`;
    /// returns how many.
    pub async fn prune(&self, retention: Duration, limit: usize) -> Result<u64, BufferError> {
        let mut conn = self.conn.clone();
        let registry = self.key("registry");
        let (seconds, micros): (u64, u64) = self
            .timed("prune", async {
                conn.on_slot_master(redis::cmd("TIME"), &registry).await
            })
            .await?;
        let now_ms = seconds * 1000 + micros / 1000;
        let cutoff =
            now_ms.saturating_sub(u64::try_from(retention.as_millis()).unwrap_or(u64::MAX));
        let stale: Vec<String> = self
            .timed("prune", async {
                redis::cmd("ZRANGE")
                    .arg(&registry)
                    .arg("-inf")
                    .arg(cutoff)
                    .arg("BYSCORE")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(limit)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        let mut forgotten = 0;
        for queue in stale {
            let mut invocation = FORGET.prepare_invoke();
            invocation
                .key(self.stream_key(&queue))
                .key(&registry)
                .key(self.key("ready"))
                .arg(&queue)
                .arg(cutoff);
            let done: u64 = self
                .timed("prune", async { invocation.invoke_async(&mut conn).await })
                .await?;
            forgotten += done;
        }
        Ok(forgotten)
    }

    /// Folds the queue set older versions kept into the registry and ready set, once per
    /// process (afterwards the set is gone and this is one `SMEMBERS` of nothing at start).
    async fn migrate_once(&self) -> Result<(), BufferError> {
        if self.migrated.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        let old = self.key("queues");
        let names: Vec<String> = self
            .timed("queues", async {
                redis::cmd("SMEMBERS")
                    .arg(&old)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        for name in names {
            let mut invocation = MIGRATE.prepare_invoke();
            invocation
                .key(self.stream_key(&name))
                .key(&old)
                .key(self.key("registry"))
                .key(self.key("ready"))
                .arg(&name);
            let _: u64 = self
                .timed("queues", async { invocation.invoke_async(&mut conn).await })
                .await?;
        }
        self.migrated
            .store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    pub async fn claim(
        &self,
        queue: &str,
        consumer: &str,
        max: usize,
    ) -> Result<Vec<BufferedCase>, BufferError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let mut invocation = CLAIM.prepare_invoke();
        invocation
            .key(self.stream_key(queue))
            .arg(GROUP)
            .arg(consumer)
            .arg(max);
        let reply: Value = self.invoke("claim", &invocation).await?;
        let mut out = Vec::new();
        let mut bad = Vec::new();
        for entry in into_array(reply) {
            match decode_entry_or_raw(queue, entry)? {
                Ok((id, record)) => out.push(BufferedCase {
                    id,
                    record,
                    deliveries: 1,
                }),
                Err(letter) => bad.push(letter),
            }
        }
        self.move_undecodable(queue, bad).await;
        Ok(out)
    }

    /// Moves entries that failed to decode to the dead-letter store (kind `undecodable`, raw
    /// bytes kept), so one bad record never blocks its queue. On failure they stay pending and
    /// come back through reclaim.
    async fn move_undecodable(&self, queue: &str, bad: Vec<(CaseId, DeadLetterRecord)>) {
        if bad.is_empty() {
            return;
        }
        let ids: Vec<String> = bad.iter().map(|b| b.0.clone()).collect();
        match self.dead_letter_cases(queue, bad).await {
            Ok(_) => tracing::error!(
                queue,
                ?ids,
                "undecodable buffer records moved to the dead-letter store"
            ),
            Err(e) => {
                tracing::error!(queue, ?ids, error = %e, "undecodable buffer records could not be moved yet")
            }
        }
    }

    pub async fn reclaim(
        &self,
        queue: &str,
        consumer: &str,
        min_idle: Duration,
        max: usize,
    ) -> Result<Vec<BufferedCase>, BufferError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let min_idle_ms = u64::try_from(min_idle.as_millis()).unwrap_or(u64::MAX);
        let mut invocation = RECLAIM.prepare_invoke();
        invocation
            .key(self.stream_key(queue))
            .arg(GROUP)
            .arg(consumer)
            .arg(min_idle_ms)
            .arg(max);
        let reply: Value = self.invoke("reclaim", &invocation).await?;
        self.decode_triples(queue, reply, "reclaim").await
    }

    /// See [`HOLD`]: keeps `consumer`'s claims on `ids` from expiring.
    pub async fn renew(
        &self,
        queue: &str,
        consumer: &str,
        max_idle: Duration,
        ids: &[CaseId],
    ) -> Result<u64, BufferError> {
        self.pending_op("renew", queue, consumer, max_idle, ids)
            .await
    }

    /// See [`HOLD`]: makes `consumer`'s claims on `ids` reclaimable at once.
    pub async fn release(
        &self,
        queue: &str,
        consumer: &str,
        idle: Duration,
        ids: &[CaseId],
    ) -> Result<u64, BufferError> {
        self.pending_op("release", queue, consumer, idle, ids).await
    }

    async fn pending_op(
        &self,
        operation: &'static str,
        queue: &str,
        consumer: &str,
        idle: Duration,
        ids: &[CaseId],
    ) -> Result<u64, BufferError> {
        let ids: Vec<&CaseId> = ids.iter().filter(|id| is_stream_id(id)).collect();
        if ids.is_empty() {
            return Ok(0);
        }
        let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut invocation = HOLD.prepare_invoke();
        invocation
            .key(self.stream_key(queue))
            .arg(GROUP)
            .arg(consumer)
            .arg(idle_ms)
            .arg(operation)
            .arg(ids);
        let reply: Value = self.invoke(operation, &invocation).await?;
        Ok(as_u64(&reply).unwrap_or(0))
    }

    /// See [`OWN_PENDING`]: what `consumer` held when it last stopped.
    pub async fn own_pending(
        &self,
        queue: &str,
        consumer: &str,
        max: usize,
    ) -> Result<Vec<BufferedCase>, BufferError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let mut invocation = OWN_PENDING.prepare_invoke();
        invocation
            .key(self.stream_key(queue))
            .arg(GROUP)
            .arg(consumer)
            .arg(max);
        let reply: Value = self.invoke("own_pending", &invocation).await?;
        self.decode_triples(queue, reply, "own_pending").await
    }

    /// Takes or renews the lease on consumer name `name` for `ttl` with `nonce` (this process's
    /// secret token): `None` when this process holds it now, `Some(time left)` when another
    /// one does.
    pub async fn lease_consumer(
        &self,
        name: &str,
        nonce: &str,
        ttl: Duration,
    ) -> Result<Option<Duration>, BufferError> {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut invocation = LEASE.prepare_invoke();
        invocation
            .key(self.key(&format!("consumer:{name}")))
            .arg(nonce)
            .arg(ttl_ms);
        let reply: Vec<i64> = self.invoke("lease", &invocation).await?;
        Ok(match reply.as_slice() {
            [1, ..] => None,
            [_, left, ..] => Some(Duration::from_millis(u64::try_from(*left).unwrap_or(0))),
            _ => return Err(unexpected("lease", "no answer")),
        })
    }

    /// Gives up the lease on `name` if `nonce` still holds it (a clean stop), so a replacement
    /// under the same name starts at once.
    pub async fn release_consumer(&self, name: &str, nonce: &str) -> Result<(), BufferError> {
        let mut invocation = UNLEASE.prepare_invoke();
        invocation
            .key(self.key(&format!("consumer:{name}")))
            .arg(nonce);
        let _: i64 = self.invoke("release lease", &invocation).await?;
        Ok(())
    }

    /// Blocks until `replicas` replicas acknowledged every write made on this connection so
    /// far, or `timeout` passed; fails when fewer did, so ingress answers 503 rather than a 2xx
    /// a failover could lose.
    pub async fn wait_replicas(&self, replicas: u32, timeout: Duration) -> Result<(), BufferError> {
        if replicas == 0 {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        let slot_key = self.key("queues");
        let timeout_ms = u64::try_from(timeout.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let acked: u64 = self
            .timed_for("wait", timeout + self.op_timeout, async {
                let mut wait = redis::cmd("WAIT");
                wait.arg(replicas).arg(timeout_ms);
                conn.on_slot_master(wait, &slot_key).await
            })
            .await?;
        if acked < u64::from(replicas) {
            return Err(BufferError::Unavailable(format!(
                "only {acked} of {replicas} redis replicas confirmed the write within {timeout_ms} ms"
            )));
        }
        Ok(())
    }

    /// Decodes the `{id, fields, deliveries}` triples the reclaim scripts return. Entries that
    /// cannot be decoded are moved to the dead-letter store (acked and deleted from the stream
    /// there), so their neighbours are handed out and the bad ones are never renewed.
    async fn decode_triples(
        &self,
        queue: &str,
        reply: Value,
        operation: &str,
    ) -> Result<Vec<BufferedCase>, BufferError> {
        let mut out = Vec::new();
        let mut bad = Vec::new();
        for triple in into_array(reply) {
            let mut parts = into_array(triple).into_iter();
            let (Some(id), Some(fields), Some(deliveries)) =
                (parts.next(), parts.next(), parts.next())
            else {
                return Err(unexpected(
                    operation,
                    "entry is not an (id, fields, count) triple",
                ));
            };
            match decode_entry_or_raw(queue, Value::Array(vec![id, fields]))? {
                Ok((id, record)) => out.push(BufferedCase {
                    id,
                    record,
                    deliveries: as_u64(&deliveries).unwrap_or(2).max(2),
                }),
                Err(letter) => bad.push(letter),
            }
        }
        self.move_undecodable(queue, bad).await;
        Ok(out)
    }

    /// With replicas to wait for, an ack also waits for them (best effort): a failover right
    /// after it would otherwise bring the delivered cases back and send them again.
    async fn replicate_removal(&self) {
        if let Err(error) = self
            .wait_replicas(self.wait_replicas, self.op_timeout / 2)
            .await
        {
            tracing::warn!(error = %error, "an ack is not confirmed by the replicas; a failover now could deliver its cases again");
        }
    }

    pub async fn ack(&self, queue: &str, ids: &[CaseId]) -> Result<(), BufferError> {
        // A malformed id cannot name an entry; sending it would make Redis reject the whole call.
        let ids: Vec<&CaseId> = ids.iter().filter(|id| is_stream_id(id)).collect();
        if ids.is_empty() {
            return Ok(());
        }
        let mut invocation = ACK.prepare_invoke();
        invocation
            .key(self.stream_key(queue))
            .key(self.key("ready"))
            .arg(GROUP)
            .arg(queue)
            .arg(ids);
        let _: Value = self.invoke("ack", &invocation).await?;
        self.replicate_removal().await;
        Ok(())
    }

    pub async fn dead_letter_cases(
        &self,
        queue: &str,
        cases: Vec<(CaseId, DeadLetterRecord)>,
    ) -> Result<Vec<DeadLetterId>, BufferError> {
        if cases.is_empty() {
            return Ok(Vec::new());
        }
        let mut invocation = DEAD_LETTER.prepare_invoke();
        invocation
            .key(self.stream_key(queue))
            .key(self.key("dlq"))
            .key(self.key("ready"))
            .arg(GROUP)
            .arg(queue);
        for (id, record) in &cases {
            let id = if is_stream_id(id) { id.as_str() } else { "" };
            invocation.arg(id).arg(encode(record)?);
        }
        let reply: Value = self.invoke("dead_letter_cases", &invocation).await?;
        self.replicate_removal().await;
        strings(reply, "dead_letter_cases")
    }

    pub async fn stats(&self, queue: &str) -> Result<QueueStats, BufferError> {
        let mut invocation = STATS.prepare_invoke();
        invocation.key(self.stream_key(queue)).arg(GROUP);
        let reply: Value = self.invoke("stats", &invocation).await?;
        let mut parts = into_array(reply).into_iter();
        let (Some(depth), Some(claimed), Some(oldest)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(unexpected("stats", "not a (depth, claimed, oldest) triple"));
        };
        let oldest_received_at_ms = match oldest {
            Value::Nil => None,
            fields => {
                let json = record_field(&self.stream_key(queue), fields)?;
                Some(
                    decode::<CaseRecord>(&self.stream_key(queue), &json)?
                        .meta
                        .received_at_ms,
                )
            }
        };
        Ok(QueueStats {
            depth: as_u64(&depth).ok_or_else(|| unexpected("stats", "depth is not a number"))?,
            claimed: as_u64(&claimed)
                .ok_or_else(|| unexpected("stats", "claimed is not a number"))?,
            oldest_received_at_ms,
        })
    }

    pub async fn list_dead_letters(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, BufferError> {
        let start = match after {
            None => "-".to_owned(),
            Some(id) if is_stream_id(id) => format!("({id}"),
            Some(id) => return Err(BufferError::NoSuchDeadLetter(id.to_owned())),
        };
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.clone();
        let dlq = self.key("dlq");
        let reply: Value = self
            .timed("list_dead_letters", async {
                redis::cmd("XRANGE")
                    .arg(&dlq)
                    .arg(&start)
                    .arg("+")
                    .arg("COUNT")
                    .arg(limit)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        into_array(reply)
            .into_iter()
            .map(decode_dead_letter)
            .collect()
    }

    pub async fn count_dead_letters(&self) -> Result<u64, BufferError> {
        let mut conn = self.conn.clone();
        let dlq = self.key("dlq");
        self.timed("count_dead_letters", async {
            redis::cmd("XLEN").arg(&dlq).query_async(&mut conn).await
        })
        .await
    }

    pub async fn list_dead_letter_ids(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeadLetterId>, BufferError> {
        let start = match after {
            None => "-".to_owned(),
            Some(id) if is_stream_id(id) => format!("({id}"),
            Some(id) => return Err(BufferError::NoSuchDeadLetter(id.to_owned())),
        };
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut invocation = DEAD_LETTER_IDS.prepare_invoke();
        invocation.key(self.key("dlq")).arg(&start).arg(limit);
        let reply: Value = self.invoke("list_dead_letter_ids", &invocation).await?;
        strings(reply, "list_dead_letter_ids")
    }

    pub async fn get_dead_letter(&self, id: &str) -> Result<Option<DeadLetter>, BufferError> {
        if !is_stream_id(id) {
            return Ok(None);
        }
        let mut conn = self.conn.clone();
        let dlq = self.key("dlq");
        let reply: Value = self
            .timed("get_dead_letter", async {
                redis::cmd("XRANGE")
                    .arg(&dlq)
                    .arg(id)
                    .arg(id)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        into_array(reply)
            .into_iter()
            .next()
            .map(decode_dead_letter)
            .transpose()
    }

    pub async fn remove_dead_letters(&self, ids: &[DeadLetterId]) -> Result<u64, BufferError> {
        let ids: Vec<&DeadLetterId> = ids.iter().filter(|id| is_stream_id(id)).collect();
        if ids.is_empty() {
            return Ok(0);
        }
        let mut conn = self.conn.clone();
        let dlq = self.key("dlq");
        self.timed("remove_dead_letters", async {
            redis::cmd("XDEL")
                .arg(&dlq)
                .arg(&ids)
                .query_async(&mut conn)
                .await
        })
        .await
    }

    pub async fn replay_dead_letter(
        &self,
        id: &str,
        cases: Vec<CaseRecord>,
    ) -> Result<Vec<CaseId>, BufferError> {
        if !is_stream_id(id) {
            return Err(BufferError::NoSuchDeadLetter(id.to_owned()));
        }
        match self.write(None, Some(id), &cases, &[]).await? {
            Written::Stored { case_ids, .. } => Ok(case_ids),
            Written::Missing => Err(BufferError::NoSuchDeadLetter(id.to_owned())),
            Written::Duplicate => Err(unexpected(
                "replay_dead_letter",
                "a replay without dedupe mark was a duplicate",
            )),
        }
    }

    pub async fn ping(&self) -> Result<(), BufferError> {
        let mut conn = self.conn.clone();
        let slot_key = self.key("queues");
        let _: String = self
            .timed("ping", async {
                conn.on_slot_master(redis::cmd("PING"), &slot_key).await
            })
            .await?;
        Ok(())
    }

    /// Nothing to do: every acknowledged write already reached Redis, and persisting it is
    /// Redis's job (AOF, see the module header).
    pub async fn flush(&self) -> Result<(), BufferError> {
        Ok(())
    }

    /// Runs the write script shared by [`Self::enqueue`] and [`Self::replay_dead_letter`].
    async fn write(
        &self,
        dedupe: Option<(String, String, u64)>,
        consume_dead_letter: Option<&str>,
        cases: &[CaseRecord],
        dead_letters: &[Vec<u8>],
    ) -> Result<Written, BufferError> {
        let records = cases.iter().map(encode).collect::<Result<Vec<_>, _>>()?;
        let mut invocation = WRITE.prepare_invoke();
        let registry = self.key("registry");
        let (seen_key, body_key, ttl_ms) =
            dedupe.unwrap_or_else(|| (registry.clone(), registry.clone(), 0));
        invocation
            .key(&registry)
            .key(self.key("dlq"))
            .key(seen_key)
            .key(body_key)
            .key(self.key("ready"));
        for case in cases {
            invocation.key(self.stream_key(&case.queue));
        }
        invocation
            .arg(ttl_ms)
            .arg(consume_dead_letter.unwrap_or(""))
            .arg(cases.len())
            .arg(dead_letters.len());
        for case in cases {
            invocation.arg(&case.queue);
        }
        for record in records.iter().chain(dead_letters) {
            invocation.arg(record.as_slice());
        }
        let reply: Value = self.invoke("enqueue", &invocation).await?;
        let mut parts = into_array(reply).into_iter();
        match parts.next().as_ref().and_then(as_string).as_deref() {
            Some("stored") => {
                let case_ids = strings(parts.next().unwrap_or(Value::Nil), "enqueue")?;
                let dead_letter_ids = strings(parts.next().unwrap_or(Value::Nil), "enqueue")?;
                Ok(Written::Stored {
                    case_ids,
                    dead_letter_ids,
                })
            }
            Some("duplicate") => Ok(Written::Duplicate),
            Some("missing") => Ok(Written::Missing),
            _ => Err(unexpected("enqueue", "unknown status")),
        }
    }

    /// Runs one script invocation on a clone of the shared connection, within the operation
    /// timeout.
    async fn invoke<T: redis::FromRedisValue>(
        &self,
        operation: &'static str,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, BufferError> {
        let mut conn = self.conn.clone();
        self.timed(operation, async {
            invocation.invoke_async(&mut conn).await
        })
        .await
    }

    /// Bounds an operation by the operation timeout and turns its failure into `Unavailable`.
    async fn timed<T>(
        &self,
        operation: &'static str,
        future: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, BufferError> {
        self.timed_for(operation, self.op_timeout, future).await
    }

    async fn timed_for<T>(
        &self,
        operation: &'static str,
        limit: Duration,
        future: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, BufferError> {
        match tokio::time::timeout(limit, future).await {
            Ok(Ok(value)) => Ok(value),
            // The error text names the failure (refused, timed out, server error), never the
            // URL.
            Ok(Err(e)) => Err(BufferError::Unavailable(format!(
                "redis {operation} failed: {e}"
            ))),
            Err(_) => Err(BufferError::Unavailable(format!(
                "redis {operation} got no answer within {} ms",
                limit.as_millis()
            ))),
        }
    }

    fn key(&self, name: &str) -> String {
        format!("{{{}}}:{name}", self.prefix)
    }

    /// The shared connection and a key under this deployment's hash tag, for other state that
    /// lives beside the buffer (the delivery rate limiter shared by every replica).
    pub fn connection_for(&self, name: &str) -> (RedisConn, String, Duration) {
        (self.conn.clone(), self.key(name), self.op_timeout)
    }

    fn stream_key(&self, queue: &str) -> String {
        format!("{{{}}}:q:{queue}", self.prefix)
    }

    fn seen_key(&self, source: &str, delivery_id: &str) -> String {
        format!("{{{}}}:seen:{source}:{delivery_id}", self.prefix)
    }
}

/// What the write script did.
enum Written {
    Stored {
        case_ids: Vec<CaseId>,
        dead_letter_ids: Vec<DeadLetterId>,
    },
    Duplicate,
    Missing,
}

fn encode(record: &impl serde::Serialize) -> Result<Vec<u8>, BufferError> {
    super::encode_record(record).map_err(|e| BufferError::Corrupt {
        id: "(new record)".into(),
        reason: e.to_string(),
    })
}

/// `<ms>-<seq>`, the only form of stream id Redis accepts for an existing entry.
fn is_stream_id(id: &str) -> bool {
    id.split_once('-')
        .is_some_and(|(ms, seq)| ms.parse::<u64>().is_ok() && seq.parse::<u64>().is_ok())
}

fn decode_dead_letter(entry: Value) -> Result<DeadLetter, BufferError> {
    let (id, json) = entry_parts(entry)?;
    let record = decode(&id, &json)?;
    Ok(DeadLetter { id, record })
}

fn decode<T: serde::de::DeserializeOwned>(id: &str, json: &[u8]) -> Result<T, BufferError> {
    super::decode_record(json).map_err(|reason| BufferError::Corrupt {
        id: id.to_owned(),
        reason,
    })
}

/// Decodes a claimed entry, or gives the dead letter for one that cannot be decoded. Only an
/// entry without an id (not a stream entry at all) is an error.
#[allow(clippy::type_complexity)]
fn decode_entry_or_raw(
    queue: &str,
    entry: Value,
) -> Result<Result<(String, CaseRecord), (CaseId, DeadLetterRecord)>, BufferError> {
    let mut parts = into_array(entry).into_iter();
    let id = parts
        .next()
        .as_ref()
        .and_then(as_string)
        .ok_or_else(|| unexpected("stream entry", "no id"))?;
    let fields = parts.next().unwrap_or(Value::Nil);
    let raw = match record_field(&id, fields) {
        Ok(json) => json,
        Err(e) => {
            let letter = DeadLetterRecord::undecodable(queue, &id, &[], &e.to_string());
            return Ok(Err((id, letter)));
        }
    };
    Ok(match super::decode_record::<CaseRecord>(&raw) {
        Ok(record) => Ok((id, record)),
        Err(reason) => {
            let letter = DeadLetterRecord::undecodable(queue, &id, &raw, &reason);
            Err((id, letter))
        }
    })
}

fn entry_parts(entry: Value) -> Result<(String, Vec<u8>), BufferError> {
    let mut parts = into_array(entry).into_iter();
    let id = parts
        .next()
        .as_ref()
        .and_then(as_string)
        .ok_or_else(|| unexpected("stream entry", "no id"))?;
    let json = record_field(&id, parts.next().unwrap_or(Value::Nil))?;
    Ok((id, json))
}

/// The record JSON out of an entry's `[field, value, ...]` list.
fn record_field(id: &str, fields: Value) -> Result<Vec<u8>, BufferError> {
    let corrupt = |reason: String| BufferError::Corrupt {
        id: id.to_owned(),
        reason,
    };
    let mut fields = into_array(fields).into_iter();
    while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
        if as_string(&name).as_deref() == Some(FIELD) {
            return match value {
                Value::BulkString(bytes) => Ok(bytes),
                other => as_string(&other)
                    .map(String::into_bytes)
                    .ok_or_else(|| corrupt("record field is not a string".into())),
            };
        }
    }
    Err(corrupt(format!("entry has no field `{FIELD}`")))
}

fn into_array(value: Value) -> Vec<Value> {
    match value {
        Value::Array(items) | Value::Set(items) => items,
        _ => Vec::new(),
    }
}

fn as_string(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(text) => Some(text.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

fn as_u64(value: &Value) -> Option<u64> {
    match value {
        Value::Int(n) => u64::try_from(*n).ok(),
        other => as_string(other)?.parse().ok(),
    }
}

fn strings(value: Value, operation: &str) -> Result<Vec<String>, BufferError> {
    into_array(value)
        .iter()
        .map(|item| as_string(item).ok_or_else(|| unexpected(operation, "expected an id")))
        .collect()
}

fn unexpected(operation: &str, reason: &str) -> BufferError {
    BufferError::Corrupt {
        id: format!("redis reply to {operation}"),
        reason: reason.to_owned(),
    }
}
