//! The durable buffer between ingress and delivery.
//!
//! Invariants every backend keeps:
//! - [`Buffer::enqueue`] returns only after the cases, the dead letters and the dedupe mark are
//!   durable, and it writes all of them or none of them. A webhook is answered 2xx only after it
//!   returned `Ok`, so a failed write never turns the provider's retry into a lost event.
//! - A case leaves the buffer only through [`Buffer::ack`] (the API accepted it) or
//!   [`Buffer::dead_letter_cases`] (the API refused it), never on claim.
//! - A claimed case that is not acked within the visibility timeout is handed out again by
//!   [`Buffer::reclaim`], so a crashed process loses nothing; delivery is at-least-once.
//!
//! Backends are a closed set chosen in config, so they are an enum rather than a trait object.

pub mod embedded;
pub mod redis;
mod redis_conn;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use embedded::{DEFAULT_DEDUPE_INDEX_MARKS, EmbeddedBuffer, EmbeddedOptions};
pub use redis::RedisBuffer;

use crate::case::{CaseRecord, DeadLetter, DeadLetterId, DeadLetterRecord};
use crate::config::{BufferBackendKind, BufferConfig};

/// The buffer's id for a case (a Redis stream entry id, or the embedded store's sequence).
pub type CaseId = String;

/// A case as handed out by [`Buffer::claim`] or [`Buffer::reclaim`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BufferedCase {
    pub id: CaseId,
    pub record: CaseRecord,
    /// How many times this case has been handed out, this time included.
    pub deliveries: u64,
}

/// The record format version this build writes. Every stored record carries it as `v`; a
/// record without `v` is version 1. A record of a newer version is undecodable here (it moves to
/// the dead-letter store instead of being misread), so an upgrade can change the format and a
/// rollback does not corrupt anything.
pub const RECORD_VERSION: u64 = 1;

/// Encodes a record as JSON with its format version `v` first. The record is serialized straight
/// after the version, then its opening brace becomes the separating comma: one buffer, one pass.
pub fn encode_record(record: &impl Serialize) -> Result<Vec<u8>, serde_json::Error> {
    const VERSION: &[u8] = b"{\"v\":1";
    const _: () = assert!(RECORD_VERSION == 1, "VERSION spells out RECORD_VERSION");
    let mut out = Vec::with_capacity(2048);
    out.extend_from_slice(VERSION);
    serde_json::to_writer(&mut out, record)?;
    match out.get(VERSION.len()..) {
        Some(b"{}") => {
            out.truncate(VERSION.len());
            out.push(b'}');
        }
        Some([b'{', ..]) => out[VERSION.len()] = b',',
        // Not an object: stored as is (every record type is a struct, so this does not happen).
        _ => {
            out.drain(..VERSION.len());
        }
    }
    Ok(out)
}

/// Decodes a record written by [`encode_record`] (or by a build before versions, `v` absent).
pub fn decode_record<T: serde::de::DeserializeOwned>(json: &[u8]) -> Result<T, String> {
    #[derive(Deserialize)]
    struct Version {
        #[serde(default)]
        v: Option<u64>,
    }
    let version = serde_json::from_slice::<Version>(json)
        .map_err(|e| e.to_string())?
        .v
        .unwrap_or(1);
    if version > RECORD_VERSION {
        return Err(format!(
            "record format version {version} is newer than this build reads ({RECORD_VERSION})"
        ));
    }
    serde_json::from_slice(json).map_err(|e| e.to_string())
}

/// Moves entries of `queue` that failed to decode to the dead-letter store (kind
/// `undecodable`, raw bytes kept) with the backend's `dead_letter_cases`, so one bad record never
/// blocks its queue. On failure the entries stay claimed and come back through reclaim:
/// retried, not lost.
async fn move_undecodable<F, Fut>(
    queue: &str,
    bad: Vec<(CaseId, DeadLetterRecord)>,
    dead_letter_cases: F,
) where
    F: FnOnce(Vec<(CaseId, DeadLetterRecord)>) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<DeadLetterId>, BufferError>>,
{
    if bad.is_empty() {
        return;
    }
    let ids: Vec<String> = bad.iter().map(|b| b.0.clone()).collect();
    match dead_letter_cases(bad).await {
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

/// "This delivery id of this source has been seen" for `ttl`.
///
/// `body_digest` is a second key of the same source, written and checked in the same atomic
/// write: for schemes that sign no timestamp, a captured body replayed with a fresh (unsigned)
/// delivery id is still a duplicate. Either key already seen makes the write a duplicate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DedupeMark {
    pub source: String,
    pub delivery_id: String,
    pub body_digest: Option<String>,
    pub ttl: Duration,
}

/// Everything one webhook produces, written atomically.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Enqueue {
    pub dedupe: Option<DedupeMark>,
    pub cases: Vec<CaseRecord>,
    pub dead_letters: Vec<DeadLetterRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnqueueOutcome {
    /// Written; ids in the order of the request's cases and dead letters.
    Stored {
        case_ids: Vec<CaseId>,
        dead_letter_ids: Vec<DeadLetterId>,
    },
    /// The dedupe mark already existed: nothing was written.
    Duplicate,
}

/// Depth and age of one queue's backlog.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Cases buffered and not yet acked or dead-lettered (claimed ones included).
    pub depth: u64,
    /// Of those, how many are currently claimed by some consumer.
    pub claimed: u64,
    /// `received_at_ms` of the oldest buffered case, if any.
    pub oldest_received_at_ms: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    /// The backend cannot be reached or refused the write (Redis down, disk full). Ingress
    /// answers 503 with `Retry-After` so the provider retries.
    #[error("buffer unavailable: {0}")]
    Unavailable(String),
    /// A stored record could not be decoded: a bug or foreign data, never retried blindly.
    #[error("corrupt buffer record {id}: {reason}")]
    Corrupt { id: String, reason: String },
    #[error("no such dead letter: {0}")]
    NoSuchDeadLetter(String),
}

/// The configured buffer backend.
#[derive(Clone)]
pub enum Buffer {
    Redis(RedisBuffer),
    Embedded(EmbeddedBuffer),
}

macro_rules! dispatch {
    ($self:ident, $b:ident => $e:expr) => {
        match $self {
            Buffer::Redis($b) => $e,
            Buffer::Embedded($b) => $e,
        }
    };
}

impl Buffer {
    /// The same buffer for one HTTP worker: on Redis over a connection of the worker's own
    /// ([`RedisBuffer::with_own_connection`]), the shared one if that cannot be opened; the
    /// embedded buffer already groups every worker's writes into one commit.
    ///
    /// Called on the worker's runtime (it must be: the connection's tasks are spawned there),
    /// it connects right away, so the worker's first webhook does not wait for the handshake.
    pub fn for_worker(&self) -> Buffer {
        match self {
            Buffer::Redis(redis) => match redis.with_own_connection() {
                Ok(own) => {
                    let warm = own.clone();
                    // A failure only means the first operation connects; the shared connection
                    // already reports an unreachable Redis.
                    tokio::spawn(async move { warm.ping().await });
                    Buffer::Redis(own)
                }
                Err(error) => {
                    tracing::warn!(%error, "an HTTP worker shares the main redis connection");
                    self.clone()
                }
            },
            Buffer::Embedded(_) => self.clone(),
        }
    }

    /// Opens the backend `config` names.
    pub async fn open(config: &BufferConfig) -> Result<Buffer, BufferError> {
        Ok(match config.backend {
            BufferBackendKind::Embedded => Buffer::Embedded(EmbeddedBuffer::open_with(
                &config.path,
                EmbeddedOptions {
                    op_timeout: config.op_timeout,
                    dedupe_index_marks: config.dedupe_index_marks,
                },
            )?),
            BufferBackendKind::Redis | BufferBackendKind::RedisCluster => Buffer::Redis(
                RedisBuffer::connect_to(
                    if config.backend == BufferBackendKind::RedisCluster {
                        redis::Topology::Cluster
                    } else {
                        redis::Topology::Single
                    },
                    config.redis_url.expose(),
                    &config.key_prefix,
                    config.op_timeout,
                )
                .await?
                .with_wait_replicas(config.wait_replicas),
            ),
        })
    }

    /// Writes one webhook's cases, dead letters and dedupe mark atomically and durably.
    pub async fn enqueue(&self, batch: Enqueue) -> Result<EnqueueOutcome, BufferError> {
        dispatch!(self, b => b.enqueue(batch).await)
    }

    /// Queues that hold at least one buffered case (claimed ones included). On Redis one read
    /// of the ready set, longest-waiting first, whatever the number of queues ever used.
    pub async fn queues(&self) -> Result<Vec<String>, BufferError> {
        dispatch!(self, b => b.queues().await)
    }

    /// True when `queue` holds nothing (claimed cases included); on Redis it then leaves the
    /// ready set, atomically with the writes, so a worker can stop without missing a case.
    pub async fn settle(&self, queue: &str) -> Result<bool, BufferError> {
        match self {
            Buffer::Redis(b) => b.settle(queue).await,
            Buffer::Embedded(b) => Ok(b.stats(queue).await?.depth == 0),
        }
    }

    /// Forgets up to `limit` queues that stayed empty for `retention` (Redis: the stream, its
    /// consumer group and its registry entry); the embedded store keeps only a counter per queue
    /// and has nothing to forget. Returns how many were forgotten.
    pub async fn prune(&self, retention: Duration, limit: usize) -> Result<u64, BufferError> {
        match self {
            Buffer::Redis(b) => b.prune(retention, limit).await,
            Buffer::Embedded(_) => Ok(0),
        }
    }

    /// Hands out up to `max` of `queue`'s oldest never-claimed cases to `consumer`.
    pub async fn claim(
        &self,
        queue: &str,
        consumer: &str,
        max: usize,
    ) -> Result<Vec<BufferedCase>, BufferError> {
        dispatch!(self, b => b.claim(queue, consumer, max).await)
    }

    /// Hands `consumer` up to `max` cases of `queue` that another (or a dead) consumer claimed
    /// more than `min_idle` ago without acking them.
    pub async fn reclaim(
        &self,
        queue: &str,
        consumer: &str,
        min_idle: Duration,
        max: usize,
    ) -> Result<Vec<BufferedCase>, BufferError> {
        dispatch!(self, b => b.reclaim(queue, consumer, min_idle, max).await)
    }

    /// Keeps `consumer`'s claims on `ids` exclusive: resets their idle time, unless a claim is no
    /// longer `consumer`'s or already sat idle for `max_idle` (then another consumer may hold it).
    /// Called well within the visibility timeout while a batch waits out a backoff or pause.
    pub async fn renew(
        &self,
        queue: &str,
        consumer: &str,
        max_idle: Duration,
        ids: &[CaseId],
    ) -> Result<u64, BufferError> {
        dispatch!(self, b => b.renew(queue, consumer, max_idle, ids).await)
    }

    /// Gives `consumer`'s claims on `ids` up at once, so the next claim or reclaim takes them
    /// ahead of newer cases (`idle` is the visibility timeout reclaim uses).
    pub async fn release(
        &self,
        queue: &str,
        consumer: &str,
        idle: Duration,
        ids: &[CaseId],
    ) -> Result<u64, BufferError> {
        dispatch!(self, b => b.release(queue, consumer, idle, ids).await)
    }

    /// Up to `max` cases `consumer` still holds from before a restart, oldest first: a consumer
    /// with a stable name resumes them at once instead of after the visibility timeout.
    pub async fn own_pending(
        &self,
        queue: &str,
        consumer: &str,
        max: usize,
    ) -> Result<Vec<BufferedCase>, BufferError> {
        dispatch!(self, b => b.own_pending(queue, consumer, max).await)
    }

    /// Removes delivered cases. Acking an unknown id is a no-op.
    pub async fn ack(&self, queue: &str, ids: &[CaseId]) -> Result<(), BufferError> {
        dispatch!(self, b => b.ack(queue, ids).await)
    }

    /// Moves refused cases to the dead-letter store: the ack and the insert are one atomic write.
    pub async fn dead_letter_cases(
        &self,
        queue: &str,
        cases: Vec<(CaseId, DeadLetterRecord)>,
    ) -> Result<Vec<DeadLetterId>, BufferError> {
        dispatch!(self, b => b.dead_letter_cases(queue, cases).await)
    }

    pub async fn stats(&self, queue: &str) -> Result<QueueStats, BufferError> {
        dispatch!(self, b => b.stats(queue).await)
    }

    /// How many dead letters are stored, without reading them.
    pub async fn count_dead_letters(&self) -> Result<u64, BufferError> {
        dispatch!(self, b => b.count_dead_letters().await)
    }

    /// Ids of dead letters, oldest first, after `after` (exclusive), at most `limit`; reads no
    /// record where the backend allows.
    pub async fn list_dead_letter_ids(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeadLetterId>, BufferError> {
        dispatch!(self, b => b.list_dead_letter_ids(after, limit).await)
    }

    /// Dead letters, oldest first, starting after `after` (exclusive), at most `limit`.
    pub async fn list_dead_letters(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, BufferError> {
        dispatch!(self, b => b.list_dead_letters(after, limit).await)
    }

    pub async fn get_dead_letter(&self, id: &str) -> Result<Option<DeadLetter>, BufferError> {
        dispatch!(self, b => b.get_dead_letter(id).await)
    }

    /// Deletes dead letters; returns how many existed.
    pub async fn remove_dead_letters(&self, ids: &[DeadLetterId]) -> Result<u64, BufferError> {
        dispatch!(self, b => b.remove_dead_letters(ids).await)
    }

    /// Atomically re-enqueues `cases` and removes the dead letter they came from, so a replay
    /// neither loses nor duplicates.
    pub async fn replay_dead_letter(
        &self,
        id: &str,
        cases: Vec<CaseRecord>,
    ) -> Result<Vec<CaseId>, BufferError> {
        dispatch!(self, b => b.replay_dead_letter(id, cases).await)
    }

    /// Cheap reachability check for readiness.
    pub async fn ping(&self) -> Result<(), BufferError> {
        dispatch!(self, b => b.ping().await)
    }

    /// Waits until every acknowledged write is on disk; called on graceful shutdown.
    pub async fn flush(&self) -> Result<(), BufferError> {
        dispatch!(self, b => b.flush().await)
    }
}

#[cfg(test)]
mod record_tests {
    use super::*;
    use crate::case::Label;

    #[test]
    fn records_carry_their_format_version_and_old_ones_still_read() {
        let label = Label {
            key: "k".into(),
            value: "v".into(),
            color_hue: None,
        };
        let encoded = encode_record(&label).unwrap();
        assert!(
            encoded.starts_with(b"{\"v\":1,\"key\""),
            "{}",
            String::from_utf8_lossy(&encoded)
        );
        assert_eq!(decode_record::<Label>(&encoded).unwrap(), label);
        assert_eq!(
            encode_record(&serde_json::json!({})).unwrap(),
            br#"{"v":1}"#
        );
        assert_eq!(encode_record(&[1, 2]).unwrap(), b"[1,2]");
        // Written before versions existed: no `v`, version 1.
        assert_eq!(
            decode_record::<Label>(br#"{"key":"k","value":"v"}"#).unwrap(),
            label
        );
        let newer = decode_record::<Label>(br#"{"v":2,"key":"k","value":"v"}"#).unwrap_err();
        assert!(newer.contains("version 2"), "{newer}");
        assert!(decode_record::<Label>(b"\xff not json").is_err());
    }
}
