//! The Lua scripts of the Redis backend: every multi-key change is one script, atomic even on
//! Redis Cluster (all keys share one hash tag). The key layout is in the module header.

use std::sync::LazyLock;

use redis::Script;

/// Writes one webhook (or one replay) atomically. Denied as a whole when Redis is out of memory.
///
/// KEYS: 1 queue registry, 2 dead-letter stream, 3 dedupe mark (any key when unused), 4 second
/// dedupe mark (the body digest; KEYS[3] again when unused), 5 ready set, 6.. one stream per case.
/// ARGV: 1 dedupe ttl ms (0: none), 2 dead letter to consume ('': none), 3 number of cases n, 4
/// number of dead letters m, then n queue names, n case records, m dead-letter records. Each
/// case's queue enters the ready set (if not in it: its score says since when it has work) and
/// has its last write noted in the registry.
pub(super) static WRITE: LazyLock<Script> = LazyLock::new(|| {
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
  -- The ttl as sent (digits): a Lua number would be formatted back into text for each SET.
  redis.call('SET', KEYS[3], '1', 'PX', ARGV[1])
  redis.call('SET', KEYS[4], '1', 'PX', ARGV[1])
end
local n = tonumber(ARGV[3])
local m = tonumber(ARGV[4])
local cases = {}
for i = 1, n do
  local id = redis.call('XADD', KEYS[5 + i], '*', 'r', ARGV[4 + n + i])
  -- The entry id's milliseconds as the digits themselves: a Lua number would be formatted
  -- back into text (printf of a double) for each ZADD.
  local ms = string.match(id, '^(%d+)')
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
pub(super) static SETTLE: LazyLock<Script> = LazyLock::new(|| {
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
pub(super) static FORGET: LazyLock<Script> = LazyLock::new(|| {
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
pub(super) static MIGRATE: LazyLock<Script> = LazyLock::new(|| {
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
pub(super) static CLAIM: LazyLock<Script> = LazyLock::new(|| {
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
pub(super) static RECLAIM: LazyLock<Script> = LazyLock::new(|| {
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
pub(super) static HOLD: LazyLock<Script> = LazyLock::new(|| {
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
pub(super) static OWN_PENDING: LazyLock<Script> = LazyLock::new(|| {
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
pub(super) static LEASE: LazyLock<Script> = LazyLock::new(|| {
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
pub(super) static UNLEASE: LazyLock<Script> = LazyLock::new(|| {
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
pub(super) static ACK: LazyLock<Script> = LazyLock::new(|| {
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
pub(super) static DEAD_LETTER: LazyLock<Script> = LazyLock::new(|| {
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
pub(super) static STATS: LazyLock<Script> = LazyLock::new(|| {
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
pub(super) static DEAD_LETTER_IDS: LazyLock<Script> = LazyLock::new(|| {
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
