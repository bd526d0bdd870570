-- wrk script for scripts/bench: POSTs the shipped 7 KB Shopify order, correctly signed, with a
-- unique X-Shopify-Event-Id per request AND a unique body: Shopify signs no timestamp, so casegate
-- also dedupes on a digest of the body, and a body sent twice would be answered as a duplicate.
-- Each body is the order with a leading `"bench_seq": "<id>"` field, signed here per request
-- (HMAC-SHA256 through OpenSSL's libcrypto, which wrk links, via LuaJIT's FFI).
--
--   wrk -t2 -c32 -d15s -s benches/wrk/shopify.lua http://127.0.0.1:PORT/hooks/shopify-orders \
--       -- BODY_FILE SECRET TAG [RATE]
--
-- BODY_FILE: the payload; SECRET: the source's signing secret; TAG: makes event ids and bodies
-- unique across runs; RATE: total requests/s for all threads together, paced by a schedule
-- (request k of a thread is not sent before start + k / (RATE / threads)); 0 or absent: as fast
-- as the connections allow. Pacing is open-loop per thread but wrk measures latency from the
-- actual send, so a stall is not charged to the requests that queued behind it (no coordinated
-- omission correction, unlike wrk2).
--
-- done() prints one line `WRK_RESULT {json}` that scripts/bench parses.

local ffi = require("ffi")
ffi.cdef [[
  typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
  int clock_gettime(int clk_id, bench_timespec *tp);
]]
ffi.cdef [[
  typedef struct evp_md_st EVP_MD;
  const EVP_MD *EVP_sha256(void);
  unsigned char *HMAC(const EVP_MD *evp_md, const void *key, int key_len,
                      const unsigned char *d, size_t n, unsigned char *md, unsigned int *md_len);
  int EVP_EncodeBlock(unsigned char *t, const unsigned char *f, int n);
]]
local crypto = ffi.C
if not pcall(function() return ffi.C.EVP_sha256 end) then
  crypto = ffi.load("libcrypto.so.3")
end
local mac = ffi.new("unsigned char[32]")
local mac_len = ffi.new("unsigned int[1]")
local encoded = ffi.new("unsigned char[48]")
local secret

-- base64 HMAC-SHA256 of `text` under `secret`: what Shopify sends in X-Shopify-Hmac-Sha256.
local function sign(text)
  crypto.HMAC(crypto.EVP_sha256(), secret, #secret, text, #text, mac, mac_len)
  local n = crypto.EVP_EncodeBlock(encoded, mac, 32)
  return ffi.string(encoded, n)
end

local ts = ffi.new("bench_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

local threads = {}
local thread_count = 0

function setup(thread)
  thread_count = thread_count + 1
  thread:set("tid", thread_count)
  table.insert(threads, thread)
end

local body, headers, prefix, interval, start
local sent = 0
local n = 0

function init(args)
  local f = assert(io.open(args[1], "rb"), "cannot open body file " .. tostring(args[1]))
  body = f:read("*a")
  f:close()
  secret = args[2]
  headers = {
    ["Content-Type"] = "application/json",
    ["X-Shopify-Topic"] = "orders/create",
    ["X-Shopify-Shop-Domain"] = "northwind-outfitters.myshopify.com",
    ["X-Shopify-API-Version"] = "2024-04",
  }
  prefix = string.format("%s-%d-", args[3] or "bench", tid or 0)
  local rate = tonumber(args[4] or "0") or 0
  if rate > 0 then
    -- every thread takes an equal share of the rate; wrk.thread count is not visible here, so
    -- scripts/bench passes the per-thread count through the environment
    local nthreads = tonumber(os.getenv("WRK_THREADS") or "1")
    interval = 1000 * nthreads / rate
  end
end

function delay()
  if not interval then
    return 0
  end
  local now = now_ms()
  if not start then
    start = now
  end
  local due = start + sent * interval
  sent = sent + 1
  if due <= now then
    return 0
  end
  return math.floor(due - now)
end

function request()
  n = n + 1
  local id = prefix .. n
  local unique = '{"bench_seq":"' .. id .. '",' .. body:sub(body:find("{", 1, true) + 1)
  headers["X-Shopify-Event-Id"] = id
  headers["X-Shopify-Hmac-Sha256"] = sign(unique)
  return wrk.format("POST", nil, headers, unique)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,"connect_errors":%d,' ..
    '"read_errors":%d,"write_errors":%d,"status_errors":%d,"timeouts":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean))
end
