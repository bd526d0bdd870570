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
//!   (`<delivery_id>` is also the body's fingerprint for an unstamped scheme: `mac:<sha256 of the
//!   verified MAC>` where the MAC covers exactly the body, else `body:<sha256 of the body>`).
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
//! whatever its persistence keeps: run it with `appendonly yes` and `appendfsync always` (AOF),
//! so Redis writes and fsyncs before it replies. With `everysec` (the default) a power loss may
//! lose the last second, and so may a killed process while the disk is slow (Redis then answers
//! before it writes the AOF, for up to two seconds).
//!
//! Needs Redis 7.0 or newer (script flags, `XAUTOCLAIM` listing deleted entries). The write
//! script is refused as a whole when Redis is out of memory (ingress answers 503); the claim, ack
//! and dead-letter scripts are allowed to run then, so delivery can still drain the backlog. The connection
//! is made lazily and re-made after failures, so casegate starts while Redis is down; every
//! operation answers [`BufferError::Unavailable`] within the operation timeout until Redis is back.
//! A script whose answer was lost to a timeout may still have run: a webhook answered 503 then
//! is written again on the provider's retry unless its dedupe mark catches it (at-least-once).

use std::future::Future;

use std::time::Duration;

use redis::{RedisError, Value};

mod claims;
mod dead_letters;
mod decode;
mod scripts;

pub use super::redis_conn::{RedisConn, Topology};

use decode::*;
use scripts::*;

use super::{BufferError, BufferedCase, CaseId, Enqueue, EnqueueOutcome, QueueStats};
use crate::case::{CaseRecord, DeadLetter, DeadLetterId, DeadLetterRecord};

/// The consumer group every casegate instance reads through.
const GROUP: &str = "casegate";

/// The stream entry field that holds a record's JSON.
const FIELD: &str = "r";

/// Buffer on Redis Streams. Clones share one auto-reconnecting multiplexed connection.
#[derive(Clone)]
pub struct RedisBuffer {
    conn: RedisConn,
    /// How `conn` was opened, so [`Self::with_own_connection`] can open another; the URL may
    /// hold a password (never printed).
    topology: Topology,
    url: std::sync::Arc<str>,
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
            topology,
            url: url.into(),
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

    /// The same buffer over a connection of its own, opened lazily: its first operation
    /// connects, and the task that drives it runs on the runtime of that first operation.
    ///
    /// Each HTTP worker takes one, so a webhook's write goes out and its answer comes back on
    /// the worker's own thread instead of waking a thread of the main runtime both ways. `WAIT`
    /// still follows the write on the same connection.
    pub fn with_own_connection(&self) -> Result<RedisBuffer, BufferError> {
        Ok(RedisBuffer {
            conn: RedisConn::open(self.topology, &self.url, self.op_timeout)?,
            ..self.clone()
        })
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
        // A write that consumes a dead letter is not retried: had the first attempt run, the
        // retry would find the letter gone.
        let lost = match consume_dead_letter {
            None => LostConnection::RetryOnce,
            Some(_) => LostConnection::Fail,
        };
        let reply: Value = self.invoke_with("enqueue", &invocation, lost).await?;
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
        self.invoke_with(operation, invocation, LostConnection::Fail)
            .await
    }

    async fn invoke_with<T: redis::FromRedisValue>(
        &self,
        operation: &'static str,
        invocation: &redis::ScriptInvocation<'_>,
        lost: LostConnection,
    ) -> Result<T, BufferError> {
        let mut conn = self.conn.clone();
        self.timed(operation, async {
            match invocation.invoke_async(&mut conn).await {
                Err(e) if lost == LostConnection::RetryOnce && connection_lost(&e) => {
                    invocation.invoke_async(&mut conn).await
                }
                answer => answer,
            }
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

/// What a script invocation does when it meets a dropped connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LostConnection {
    /// Answers `Unavailable`; the connection manager reconnects for the next operation.
    Fail,
    /// Runs once more on the connection the manager re-makes, within the same operation
    /// timeout. Without it, every HTTP worker's first webhook after a Redis restart would be
    /// refused although Redis is back. For the ingress write only: it is the retry a provider
    /// makes after a 503, made sooner; where the first attempt ran and its answer was lost, the
    /// webhook's dedupe mark makes the second a duplicate, and a webhook without a mark may be
    /// stored twice, as on the provider's retry (at-least-once).
    RetryOnce,
}

/// Whether `error` says the connection is gone (reset, closed, refused, ended) before an answer
/// came: the connection manager re-makes the connection after such an error. Not a timeout (the
/// script may be running), nor an answer that could not be read (it ran).
fn connection_lost(error: &RedisError) -> bool {
    error.is_connection_dropped()
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
