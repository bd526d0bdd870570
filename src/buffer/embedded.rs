//! The embedded backend: a redb database file on local disk, so casegate runs without Redis.
//!
//! Tables:
//! - `cases`: `(queue, sequence)` → the [`CaseRecord`] as JSON. The sequence is one counter for
//!   all queues, so each queue's range reads oldest-first; the [`CaseId`] is the sequence in
//!   decimal.
//! - `queue_depths`: queue → number of buffered cases (kept in step with `cases`; a queue leaves
//!   it when its last case goes).
//! - `seen`: `(source, delivery_id)` → expiry in ms since the Unix epoch. A mark past its expiry
//!   counts as absent; expired marks are purged at most once a minute.
//! - `dead_letters`: sequence → [`DeadLetterRecord`] as JSON; the [`DeadLetterId`] is the
//!   sequence in decimal, so ids increase and list oldest-first.
//! - `counters`: the next case and dead-letter sequences.
//!
//! Writes: one writer thread owns every write transaction. Callers send it a request and await
//! the answer; the writer takes every request queued, applies them all in one transaction, commits
//! it with an fsync (`Durability::Immediate`), and only then answers each caller. Concurrent
//! webhooks therefore share one fsync instead of paying one each, and an enqueue has returned
//! only once it is on disk. A failed commit (disk full, IO error) fails every request of the group
//! with [`BufferError::Unavailable`] and writes none of them. Reads use their own MVCC read
//! transactions on the blocking pool and never wait for the writer.
//!
//! Who acks when: claims exist only in memory (`claimed_at` per case). Acking or dead-lettering
//! deletes the case in a committed transaction, then forgets the claim. After a crash or restart
//! no claim survives, so every case that was not acked is claimable again: the same visibility
//! semantics as the Redis backend, with the restart as the timeout. Delivery counts restart at 1
//! with the process.
//!
//! What survives a crash: every write that was answered `Ok` (it was committed with an fsync);
//! claims and delivery counts do not, which only means an unacked case is delivered again.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
    WriteTransaction,
};
use tokio::sync::{mpsc, oneshot};
// Claims age on tokio's clock (the real one outside tests), so paused-time tests of delivery
// see visibility timeouts pass.
use tokio::time::Instant;

use super::{BufferError, BufferedCase, CaseId, Enqueue, EnqueueOutcome, QueueStats};
use crate::case::{CaseRecord, DeadLetter, DeadLetterId, DeadLetterRecord};

const CASES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("cases");
const QUEUE_DEPTHS: TableDefinition<&str, u64> = TableDefinition::new("queue_depths");
const SEEN: TableDefinition<(&str, &str), u64> = TableDefinition::new("seen");
const DEAD_LETTERS: TableDefinition<u64, &[u8]> = TableDefinition::new("dead_letters");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");

const NEXT_CASE: &str = "next_case";
const NEXT_DEAD_LETTER: &str = "next_dead_letter";

/// The page cache of the embedded store.
const CACHE_BYTES: usize = 8 * 1024 * 1024;

/// How many requests one commit takes at most, so one group cannot grow without bound.
const MAX_GROUP: usize = 1024;
/// Requests waiting for the writer; beyond this, callers wait (backpressure).
const QUEUE_CAPACITY: usize = 4096;
/// How often the writer purges expired dedupe marks.
const PURGE_EVERY: Duration = Duration::from_secs(60);
/// How long a caller waits for its write's commit when no timeout is configured.
const DEFAULT_OP_TIMEOUT: Duration = Duration::from_secs(2);

/// Buffer files whose writer is held before each commit, to test a stuck disk. Empty in
/// production; the writer checks it once per commit.
static STALLED: Mutex<Vec<std::path::PathBuf>> = Mutex::new(Vec::new());

/// Buffer in a local redb file. Clones share the database, the writer and the claims.
#[derive(Clone)]
pub struct EmbeddedBuffer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EmbeddedBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedBuffer").finish_non_exhaustive()
    }
}

struct Inner {
    db: Arc<Database>,
    /// `None` only while dropping, which is what stops the writer.
    writes: Option<mpsc::Sender<Job>>,
    writer: Option<JoinHandle<()>>,
    /// Per queue: sequence → claim.
    claims: Mutex<HashMap<String, BTreeMap<u64, Claim>>>,
    /// Longest wait for a write's commit (`buffer.op_timeout_ms`), like a Redis operation's.
    op_timeout: Duration,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the channel ends the writer after its current group; joining it releases the
        // database file, so the same path can be opened again right away.
        self.writes.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Claim {
    claimed_at: Instant,
    deliveries: u64,
}

/// One request to the writer.
enum Write {
    Enqueue {
        /// `(source, delivery id, body digest, ttl ms)`.
        dedupe: Option<(String, String, Option<String>, u64)>,
        /// `(queue, record JSON)`.
        cases: Vec<(String, Vec<u8>)>,
        dead_letters: Vec<Vec<u8>>,
        /// For a replay: the dead letter to delete in the same transaction.
        consume_dead_letter: Option<u64>,
    },
    Ack {
        queue: String,
        seqs: Vec<u64>,
    },
    DeadLetterCases {
        queue: String,
        /// `(sequence if the id was well formed, dead-letter record JSON)`.
        cases: Vec<(Option<u64>, Vec<u8>)>,
    },
    RemoveDeadLetters {
        ids: Vec<u64>,
    },
    /// Answered once everything queued before it is committed.
    Flush,
}

/// What the writer did for one request.
enum Done {
    Stored {
        case_seqs: Vec<u64>,
        dead_letter_seqs: Vec<u64>,
    },
    Duplicate,
    NoSuchDeadLetter,
    Acked,
    DeadLettered(Vec<u64>),
    Removed(u64),
    Flushed,
}

struct Job {
    write: Write,
    reply: oneshot::Sender<Result<Done, BufferError>>,
}

impl EmbeddedBuffer {
    /// Opens (or creates, with its parent directories) the database at `path` and starts its
    /// writer thread. Synchronous: it runs once at startup, and opening may take a moment while
    /// redb repairs a file left by a crash.
    pub fn open(path: &Path) -> Result<EmbeddedBuffer, BufferError> {
        Self::open_with_timeout(path, DEFAULT_OP_TIMEOUT)
    }

    /// [`EmbeddedBuffer::open`] with the longest wait for a write's commit: past it the caller
    /// gets [`BufferError::Unavailable`] (a webhook, 503), so a stuck disk never hangs ingress.
    /// The write may still commit later; that is safe, as the sender's retry is then a
    /// duplicate or a second delivery, never a loss.
    pub fn open_with_timeout(
        path: &Path,
        op_timeout: Duration,
    ) -> Result<EmbeddedBuffer, BufferError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                BufferError::Unavailable(format!("cannot create {}: {e}", parent.display()))
            })?;
        }
        // redb's default page cache is 1 GiB and grows with the data written; the buffer's
        // working set is the head of each queue, so a small cache keeps the gateway's memory flat.
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(|e| {
                BufferError::Unavailable(format!("cannot open {}: {e}", path.display()))
            })?;
        let txn = db.begin_write().map_err(unavailable)?;
        create_tables(&txn).map_err(unavailable)?;
        txn.commit().map_err(unavailable)?;
        let db = Arc::new(db);
        let (writes, requests) = mpsc::channel(QUEUE_CAPACITY);
        let writer_db = db.clone();
        let writer_path = path.to_path_buf();
        let writer = std::thread::Builder::new()
            .name("casegate-buffer-writer".into())
            .spawn(move || run_writer(&writer_db, &writer_path, requests))
            .map_err(|e| {
                BufferError::Unavailable(format!("cannot start the buffer writer: {e}"))
            })?;
        Ok(EmbeddedBuffer {
            inner: Arc::new(Inner {
                db,
                writes: Some(writes),
                writer: Some(writer),
                claims: Mutex::new(HashMap::new()),
                op_timeout,
            }),
        })
    }

    /// Test hook: while `stalled`, the writer of the buffer file at `path` holds every commit,
    /// as a disk that stopped answering would.
    #[doc(hidden)]
    pub fn stall_writer_for_tests(path: &Path, stalled: bool) {
        let mut paths = STALLED.lock().unwrap_or_else(PoisonError::into_inner);
        paths.retain(|p| p != path);
        if stalled {
            paths.push(path.to_path_buf());
        }
    }

    pub async fn enqueue(&self, batch: Enqueue) -> Result<EnqueueOutcome, BufferError> {
        let write = Write::Enqueue {
            dedupe: batch.dedupe.map(|m| {
                let ttl_ms = u64::try_from(m.ttl.as_millis()).unwrap_or(u64::MAX);
                (m.source, m.delivery_id, m.body_digest, ttl_ms)
            }),
            cases: batch
                .cases
                .iter()
                .map(|case| Ok((case.queue.clone(), encode(case)?)))
                .collect::<Result<_, BufferError>>()?,
            dead_letters: batch
                .dead_letters
                .iter()
                .map(encode)
                .collect::<Result<_, _>>()?,
            consume_dead_letter: None,
        };
        match self.write(write).await? {
            Done::Stored {
                case_seqs,
                dead_letter_seqs,
            } => Ok(EnqueueOutcome::Stored {
                case_ids: case_seqs.iter().map(u64::to_string).collect(),
                dead_letter_ids: dead_letter_seqs.iter().map(u64::to_string).collect(),
            }),
            Done::Duplicate => Ok(EnqueueOutcome::Duplicate),
            _ => Err(mismatch()),
        }
    }

    pub async fn queues(&self) -> Result<Vec<String>, BufferError> {
        self.read(|db, _| {
            let txn = db.begin_read()?;
            let depths = txn.open_table(QUEUE_DEPTHS)?;
            let mut queues = Vec::new();
            for entry in depths.iter()? {
                let (queue, depth) = entry?;
                if depth.value() > 0 {
                    queues.push(queue.value().to_owned());
                }
            }
            Ok(queues)
        })
        .await
    }

    pub async fn claim(
        &self,
        queue: &str,
        _consumer: &str,
        max: usize,
    ) -> Result<Vec<BufferedCase>, BufferError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let queue_name = queue.to_owned();
        let queue = queue.to_owned();
        let (out, bad) = self
            .read(move |db, inner| {
                // Holding the claims lock across the read makes "not claimed yet" and "now claimed"
                // one step, so two consumers never get the same case.
                let mut claims = inner.lock_claims();
                let claimed = claims.entry(queue.clone()).or_default();
                let txn = db.begin_read()?;
                let cases = txn.open_table(CASES)?;
                let mut out = Vec::new();
                let mut bad = Vec::new();
                for entry in cases.range((queue.as_str(), 0)..=(queue.as_str(), u64::MAX))? {
                    let (key, value) = entry?;
                    let seq = key.value().1;
                    if claimed.contains_key(&seq) {
                        continue;
                    }
                    match decode(seq, value.value()) {
                        Ok(record) => out.push(BufferedCase {
                            id: seq.to_string(),
                            record,
                            deliveries: 1,
                        }),
                        Err(e) => bad.push(undecodable_entry(&queue, seq, value.value(), e)),
                    }
                    if out.len() == max || bad.len() == max {
                        break;
                    }
                }
                let now = Instant::now();
                // Undecodable entries are claimed too, so nobody else takes them while they move.
                for seq in out
                    .iter()
                    .map(|c| seq_of(&c.id))
                    .chain(bad.iter().map(|b| seq_of(&b.0)))
                {
                    claimed.insert(
                        seq,
                        Claim {
                            claimed_at: now,
                            deliveries: 1,
                        },
                    );
                }
                Ok((out, bad))
            })
            .await?;
        self.move_undecodable(&queue_name, bad).await;
        Ok(out)
    }

    /// Moves entries that failed to decode to the dead-letter store (kind `undecodable`, raw
    /// bytes kept), so one bad record never blocks its queue.
    async fn move_undecodable(&self, queue: &str, bad: Vec<(CaseId, DeadLetterRecord)>) {
        if bad.is_empty() {
            return;
        }
        let ids: Vec<String> = bad.iter().map(|b| b.0.clone()).collect();
        // On failure the entries stay claimed and come back through reclaim: retried, not lost.
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
        _consumer: &str,
        min_idle: Duration,
        max: usize,
    ) -> Result<Vec<BufferedCase>, BufferError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let queue_name = queue.to_owned();
        let queue = queue.to_owned();
        let (out, bad) = self
            .read(move |db, inner| {
                let mut claims = inner.lock_claims();
                let Some(claimed) = claims.get_mut(&queue) else {
                    return Ok((Vec::new(), Vec::new()));
                };
                let now = Instant::now();
                let idle: Vec<u64> = claimed
                    .iter()
                    .filter(|(_, claim)| now.duration_since(claim.claimed_at) >= min_idle)
                    .map(|(seq, _)| *seq)
                    .collect();
                if idle.is_empty() {
                    return Ok((Vec::new(), Vec::new()));
                }
                let txn = db.begin_read()?;
                let cases = txn.open_table(CASES)?;
                let mut out = Vec::new();
                let mut bad = Vec::new();
                for seq in idle {
                    let Some(value) = cases.get((queue.as_str(), seq))? else {
                        // Acked or dead-lettered meanwhile: nothing left to hand out.
                        claimed.remove(&seq);
                        continue;
                    };
                    let record = match decode(seq, value.value()) {
                        Ok(record) => record,
                        Err(e) => {
                            if let Some(claim) = claimed.get_mut(&seq) {
                                claim.claimed_at = now;
                            }
                            bad.push(undecodable_entry(&queue, seq, value.value(), e));
                            continue;
                        }
                    };
                    let claim = claimed.entry(seq).or_insert(Claim {
                        claimed_at: now,
                        deliveries: 1,
                    });
                    claim.claimed_at = now;
                    claim.deliveries += 1;
                    out.push(BufferedCase {
                        id: seq.to_string(),
                        record,
                        deliveries: claim.deliveries,
                    });
                    if out.len() == max {
                        break;
                    }
                }
                Ok((out, bad))
            })
            .await?;
        self.move_undecodable(&queue_name, bad).await;
        Ok(out)
    }

    /// Resets the claim time of `ids` that are still claimed and not idle past `max_idle`
    /// (after that, another worker may have taken them), so a batch waiting out a backoff or a
    /// pause stays exclusive. Returns how many were renewed.
    pub async fn renew(
        &self,
        queue: &str,
        _consumer: &str,
        max_idle: Duration,
        ids: &[CaseId],
    ) -> Result<u64, BufferError> {
        let now = Instant::now();
        let mut claims = self.inner.lock_claims();
        let Some(claimed) = claims.get_mut(queue) else {
            return Ok(0);
        };
        let mut renewed = 0;
        for id in ids {
            if let Some(claim) = id.parse::<u64>().ok().and_then(|s| claimed.get_mut(&s))
                && now.duration_since(claim.claimed_at) < max_idle
            {
                claim.claimed_at = now;
                renewed += 1;
            }
        }
        Ok(renewed)
    }

    /// Forgets the claims on `ids`, so the next claim hands them out again, in order, ahead of
    /// newer cases. Returns how many were released.
    pub async fn release(
        &self,
        queue: &str,
        _consumer: &str,
        _idle: Duration,
        ids: &[CaseId],
    ) -> Result<u64, BufferError> {
        let seqs: Vec<u64> = ids.iter().filter_map(|id| id.parse().ok()).collect();
        let before = self
            .inner
            .lock_claims()
            .get(queue)
            .map_or(0, |claimed| claimed.len());
        self.inner.forget_claims(queue, &seqs);
        let after = self
            .inner
            .lock_claims()
            .get(queue)
            .map_or(0, |claimed| claimed.len());
        Ok((before - after) as u64)
    }

    /// Claims live in memory only, so a restarted process holds none: nothing to resume.
    pub async fn own_pending(
        &self,
        _queue: &str,
        _consumer: &str,
        _max: usize,
    ) -> Result<Vec<BufferedCase>, BufferError> {
        Ok(Vec::new())
    }

    pub async fn ack(&self, queue: &str, ids: &[CaseId]) -> Result<(), BufferError> {
        // A malformed id cannot name a case: acking it is a no-op like any unknown id.
        let seqs: Vec<u64> = ids.iter().filter_map(|id| id.parse().ok()).collect();
        if seqs.is_empty() {
            return Ok(());
        }
        match self
            .write(Write::Ack {
                queue: queue.to_owned(),
                seqs: seqs.clone(),
            })
            .await?
        {
            Done::Acked => {
                self.inner.forget_claims(queue, &seqs);
                Ok(())
            }
            _ => Err(mismatch()),
        }
    }

    pub async fn dead_letter_cases(
        &self,
        queue: &str,
        cases: Vec<(CaseId, DeadLetterRecord)>,
    ) -> Result<Vec<DeadLetterId>, BufferError> {
        if cases.is_empty() {
            return Ok(Vec::new());
        }
        let cases: Vec<(Option<u64>, Vec<u8>)> = cases
            .iter()
            .map(|(id, record)| Ok((id.parse().ok(), encode(record)?)))
            .collect::<Result<_, BufferError>>()?;
        let seqs: Vec<u64> = cases.iter().filter_map(|(seq, _)| *seq).collect();
        match self
            .write(Write::DeadLetterCases {
                queue: queue.to_owned(),
                cases,
            })
            .await?
        {
            Done::DeadLettered(ids) => {
                self.inner.forget_claims(queue, &seqs);
                Ok(ids.iter().map(u64::to_string).collect())
            }
            _ => Err(mismatch()),
        }
    }

    pub async fn stats(&self, queue: &str) -> Result<QueueStats, BufferError> {
        let queue = queue.to_owned();
        self.read(move |db, inner| {
            let txn = db.begin_read()?;
            let depth = txn
                .open_table(QUEUE_DEPTHS)?
                .get(queue.as_str())?
                .map_or(0, |d| d.value());
            let cases = txn.open_table(CASES)?;
            let oldest = match cases
                .range((queue.as_str(), 0)..=(queue.as_str(), u64::MAX))?
                .next()
            {
                Some(entry) => {
                    let (key, value) = entry?;
                    Some(
                        decode::<CaseRecord>(key.value().1, value.value())?
                            .meta
                            .received_at_ms,
                    )
                }
                None => None,
            };
            let claimed = inner
                .lock_claims()
                .get(&queue)
                .map_or(0, |c| c.len() as u64);
            Ok(QueueStats {
                depth,
                claimed: claimed.min(depth),
                oldest_received_at_ms: oldest,
            })
        })
        .await
    }

    pub async fn list_dead_letters(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, BufferError> {
        let start = match after {
            None => 0,
            Some(id) => match id.parse::<u64>() {
                Ok(seq) => match seq.checked_add(1) {
                    Some(start) => start,
                    None => return Ok(Vec::new()),
                },
                Err(_) => return Err(BufferError::NoSuchDeadLetter(id.to_owned())),
            },
        };
        self.read(move |db, _| {
            let txn = db.begin_read()?;
            let table = txn.open_table(DEAD_LETTERS)?;
            let mut out = Vec::new();
            for entry in table.range(start..)?.take(limit) {
                let (key, value) = entry?;
                out.push(DeadLetter {
                    id: key.value().to_string(),
                    record: decode(key.value(), value.value())?,
                });
            }
            Ok(out)
        })
        .await
    }

    pub async fn count_dead_letters(&self) -> Result<u64, BufferError> {
        self.read(|db, _| {
            let txn = db.begin_read()?;
            let table = txn.open_table(DEAD_LETTERS)?;
            Ok(table.len()?)
        })
        .await
    }

    pub async fn list_dead_letter_ids(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeadLetterId>, BufferError> {
        let start = match after {
            None => 0,
            Some(id) => match id.parse::<u64>() {
                Ok(seq) => match seq.checked_add(1) {
                    Some(start) => start,
                    None => return Ok(Vec::new()),
                },
                Err(_) => return Err(BufferError::NoSuchDeadLetter(id.to_owned())),
            },
        };
        self.read(move |db, _| {
            let txn = db.begin_read()?;
            let table = txn.open_table(DEAD_LETTERS)?;
            let mut out = Vec::new();
            // Keys only: the records (up to a body's size each) are never read.
            for entry in table.range(start..)?.take(limit) {
                let (key, _) = entry?;
                out.push(key.value().to_string());
            }
            Ok(out)
        })
        .await
    }

    pub async fn get_dead_letter(&self, id: &str) -> Result<Option<DeadLetter>, BufferError> {
        let Ok(seq) = id.parse::<u64>() else {
            return Ok(None);
        };
        self.read(move |db, _| {
            let txn = db.begin_read()?;
            let table = txn.open_table(DEAD_LETTERS)?;
            let letter = match table.get(seq)? {
                Some(value) => Some(DeadLetter {
                    id: seq.to_string(),
                    record: decode(seq, value.value())?,
                }),
                None => None,
            };
            Ok(letter)
        })
        .await
    }

    pub async fn remove_dead_letters(&self, ids: &[DeadLetterId]) -> Result<u64, BufferError> {
        let ids: Vec<u64> = ids.iter().filter_map(|id| id.parse().ok()).collect();
        if ids.is_empty() {
            return Ok(0);
        }
        match self.write(Write::RemoveDeadLetters { ids }).await? {
            Done::Removed(n) => Ok(n),
            _ => Err(mismatch()),
        }
    }

    pub async fn replay_dead_letter(
        &self,
        id: &str,
        cases: Vec<CaseRecord>,
    ) -> Result<Vec<CaseId>, BufferError> {
        let Ok(seq) = id.parse::<u64>() else {
            return Err(BufferError::NoSuchDeadLetter(id.to_owned()));
        };
        let write = Write::Enqueue {
            dedupe: None,
            cases: cases
                .iter()
                .map(|case| Ok((case.queue.clone(), encode(case)?)))
                .collect::<Result<_, BufferError>>()?,
            dead_letters: Vec::new(),
            consume_dead_letter: Some(seq),
        };
        match self.write(write).await? {
            Done::Stored { case_seqs, .. } => Ok(case_seqs.iter().map(u64::to_string).collect()),
            Done::NoSuchDeadLetter => Err(BufferError::NoSuchDeadLetter(id.to_owned())),
            _ => Err(mismatch()),
        }
    }

    /// The database answers a read transaction.
    pub async fn ping(&self) -> Result<(), BufferError> {
        self.read(|db, _| {
            db.begin_read()?;
            Ok(())
        })
        .await
    }

    /// Waits until the writer has committed everything queued before this call.
    pub async fn flush(&self) -> Result<(), BufferError> {
        match self.write(Write::Flush).await? {
            Done::Flushed => Ok(()),
            _ => Err(mismatch()),
        }
    }

    /// Hands a request to the writer and waits for its commit, at most `op_timeout` in all.
    async fn write(&self, write: Write) -> Result<Done, BufferError> {
        let (reply, answer) = oneshot::channel();
        let writes = self.inner.writes.as_ref().ok_or_else(writer_gone)?;
        let committed = async {
            writes
                .send(Job { write, reply })
                .await
                .map_err(|_| writer_gone())?;
            // Unit tests run delivery on paused time, whose clock jumps ahead whenever every
            // task waits; waiting for the writer thread from the blocking pool holds the clock
            // still while a commit is on disk, as a real clock would barely move (and the op
            // timeout does not fire on a jump).
            #[cfg(test)]
            let answer = async {
                tokio::task::spawn_blocking(move || answer.blocking_recv())
                    .await
                    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
            };
            answer.await.map_err(|_| writer_gone())?
        };
        let timeout = self.inner.op_timeout;
        tokio::time::timeout(timeout, committed)
            .await
            .map_err(|_| {
                BufferError::Unavailable(format!(
                    "embedded buffer: the write was not committed within {} ms",
                    timeout.as_millis()
                ))
            })?
    }

    /// Runs a read on the blocking pool.
    async fn read<T, F>(&self, read: F) -> Result<T, BufferError>
    where
        T: Send + 'static,
        F: FnOnce(&Database, &Inner) -> Result<T, ReadError> + Send + 'static,
    {
        let inner = self.inner.clone();
        let result = tokio::task::spawn_blocking(move || read(&inner.db, &inner))
            .await
            .map_err(|e| BufferError::Unavailable(format!("embedded buffer read failed: {e}")))?;
        result.map_err(ReadError::into_buffer_error)
    }
}

impl Inner {
    fn lock_claims(&self) -> MutexGuard<'_, HashMap<String, BTreeMap<u64, Claim>>> {
        // A panic elsewhere cannot leave the map half-updated in a way that loses cases: at worst
        // a case is handed out again.
        self.claims.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn forget_claims(&self, queue: &str, seqs: &[u64]) {
        let mut claims = self.lock_claims();
        if let Some(claimed) = claims.get_mut(queue) {
            for seq in seqs {
                claimed.remove(seq);
            }
            if claimed.is_empty() {
                claims.remove(queue);
            }
        }
    }
}

/// A read failed in the store, or found a record it cannot decode.
enum ReadError {
    Store(redb::Error),
    Buffer(BufferError),
}

impl ReadError {
    fn into_buffer_error(self) -> BufferError {
        match self {
            ReadError::Store(e) => unavailable(e),
            ReadError::Buffer(e) => e,
        }
    }
}

macro_rules! store_errors {
    ($($error:ty),*) => {$(
        impl From<$error> for ReadError {
            fn from(e: $error) -> Self {
                ReadError::Store(e.into())
            }
        }
    )*};
}

store_errors!(
    redb::Error,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError
);

impl From<BufferError> for ReadError {
    fn from(e: BufferError) -> Self {
        ReadError::Buffer(e)
    }
}

fn run_writer(db: &Database, path: &Path, mut requests: mpsc::Receiver<Job>) {
    let mut last_purge: Option<std::time::Instant> = None;
    while let Some(first) = requests.blocking_recv() {
        while STALLED
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .any(|p| p == path)
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match requests.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        // A group of flushes has nothing to commit: everything before it already was.
        if group.iter().all(|job| matches!(job.write, Write::Flush)) {
            for job in group {
                let _ = job.reply.send(Ok(Done::Flushed));
            }
            continue;
        }
        let purge = last_purge.is_none_or(|at| at.elapsed() >= PURGE_EVERY);
        let (writes, replies): (Vec<Write>, Vec<_>) =
            group.into_iter().map(|job| (job.write, job.reply)).unzip();
        match commit_group(db, &writes, purge) {
            Ok(dones) => {
                if purge {
                    last_purge = Some(std::time::Instant::now());
                }
                for (reply, done) in replies.into_iter().zip(dones) {
                    let _ = reply.send(Ok(done));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, requests = replies.len(), "embedded buffer commit failed");
                for reply in replies {
                    let _ = reply.send(Err(unavailable(&e)));
                }
            }
        }
    }
}

/// Applies every request in one transaction and commits it durably. All or nothing: on error
/// nothing of the group is written.
fn commit_group(db: &Database, writes: &[Write], purge: bool) -> Result<Vec<Done>, redb::Error> {
    let now = now_ms();
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    let mut dones = Vec::with_capacity(writes.len());
    {
        let mut cases = txn.open_table(CASES)?;
        let mut depths = txn.open_table(QUEUE_DEPTHS)?;
        let mut seen = txn.open_table(SEEN)?;
        let mut dead = txn.open_table(DEAD_LETTERS)?;
        let mut counters = txn.open_table(COUNTERS)?;
        let mut next_case = counters.get(NEXT_CASE)?.map_or(1, |v| v.value());
        let mut next_dead = counters.get(NEXT_DEAD_LETTER)?.map_or(1, |v| v.value());
        if purge {
            seen.retain(|_, expires_at| expires_at > now)?;
        }
        for write in writes {
            let done = match write {
                Write::Enqueue {
                    dedupe,
                    cases: new_cases,
                    dead_letters,
                    consume_dead_letter,
                } => {
                    // Checks first, writes after: a refused request leaves no trace.
                    let missing = match consume_dead_letter {
                        Some(seq) => dead.get(*seq)?.is_none(),
                        None => false,
                    };
                    let duplicate = match dedupe {
                        Some((source, delivery_id, body_digest, _)) => {
                            // Marks written earlier in this group are visible here, so a repeat
                            // inside one group is caught too.
                            let mut seen_before = false;
                            for key in std::iter::once(delivery_id).chain(body_digest.as_ref()) {
                                seen_before |= seen
                                    .get((source.as_str(), key.as_str()))?
                                    .is_some_and(|exp| exp.value() > now);
                            }
                            seen_before
                        }
                        None => false,
                    };
                    if missing {
                        Done::NoSuchDeadLetter
                    } else if duplicate {
                        Done::Duplicate
                    } else {
                        if let Some((source, delivery_id, body_digest, ttl_ms)) = dedupe {
                            for key in std::iter::once(delivery_id).chain(body_digest.as_ref()) {
                                seen.insert(
                                    (source.as_str(), key.as_str()),
                                    now.saturating_add(*ttl_ms),
                                )?;
                            }
                        }
                        if let Some(seq) = consume_dead_letter {
                            dead.remove(*seq)?;
                        }
                        let mut case_seqs = Vec::with_capacity(new_cases.len());
                        for (queue, record) in new_cases {
                            cases.insert((queue.as_str(), next_case), record.as_slice())?;
                            add_depth(&mut depths, queue, 1)?;
                            case_seqs.push(next_case);
                            next_case += 1;
                        }
                        let mut dead_letter_seqs = Vec::with_capacity(dead_letters.len());
                        for record in dead_letters {
                            dead.insert(next_dead, record.as_slice())?;
                            dead_letter_seqs.push(next_dead);
                            next_dead += 1;
                        }
                        Done::Stored {
                            case_seqs,
                            dead_letter_seqs,
                        }
                    }
                }
                Write::Ack { queue, seqs } => {
                    let mut removed = 0;
                    for seq in seqs {
                        if cases.remove((queue.as_str(), *seq))?.is_some() {
                            removed += 1;
                        }
                    }
                    add_depth(&mut depths, queue, -removed)?;
                    Done::Acked
                }
                Write::DeadLetterCases {
                    queue,
                    cases: refused,
                } => {
                    let mut removed = 0;
                    let mut ids = Vec::with_capacity(refused.len());
                    for (seq, record) in refused {
                        if let Some(seq) = seq
                            && cases.remove((queue.as_str(), *seq))?.is_some()
                        {
                            removed += 1;
                        }
                        dead.insert(next_dead, record.as_slice())?;
                        ids.push(next_dead);
                        next_dead += 1;
                    }
                    add_depth(&mut depths, queue, -removed)?;
                    Done::DeadLettered(ids)
                }
                Write::RemoveDeadLetters { ids } => {
                    let mut removed = 0;
                    for id in ids {
                        if dead.remove(*id)?.is_some() {
                            removed += 1;
                        }
                    }
                    Done::Removed(removed)
                }
                Write::Flush => Done::Flushed,
            };
            dones.push(done);
        }
        counters.insert(NEXT_CASE, next_case)?;
        counters.insert(NEXT_DEAD_LETTER, next_dead)?;
    }
    txn.commit()?;
    Ok(dones)
}

fn add_depth(
    depths: &mut redb::Table<'_, &str, u64>,
    queue: &str,
    delta: i64,
) -> Result<(), redb::Error> {
    if delta == 0 {
        return Ok(());
    }
    let current = depths.get(queue)?.map_or(0, |d| d.value());
    let next = current.saturating_add_signed(delta);
    if next == 0 {
        depths.remove(queue)?;
    } else {
        depths.insert(queue, next)?;
    }
    Ok(())
}

fn create_tables(txn: &WriteTransaction) -> Result<(), redb::Error> {
    txn.open_table(CASES)?;
    txn.open_table(QUEUE_DEPTHS)?;
    txn.open_table(SEEN)?;
    txn.open_table(DEAD_LETTERS)?;
    txn.open_table(COUNTERS)?;
    Ok(())
}

fn encode(record: &impl serde::Serialize) -> Result<Vec<u8>, BufferError> {
    super::encode_record(record).map_err(|e| BufferError::Corrupt {
        id: "(new record)".into(),
        reason: e.to_string(),
    })
}

fn decode<T: serde::de::DeserializeOwned>(seq: u64, json: &[u8]) -> Result<T, BufferError> {
    super::decode_record(json).map_err(|reason| BufferError::Corrupt {
        id: seq.to_string(),
        reason,
    })
}

/// The dead letter of an entry that failed to decode.
fn undecodable_entry(
    queue: &str,
    seq: u64,
    raw: &[u8],
    error: BufferError,
) -> (CaseId, DeadLetterRecord) {
    let reason = match error {
        BufferError::Corrupt { reason, .. } => reason,
        other => other.to_string(),
    };
    let id = seq.to_string();
    let record = DeadLetterRecord::undecodable(queue, &id, raw, &reason);
    (id, record)
}

/// The sequence of an id this module made.
fn seq_of(id: &str) -> u64 {
    id.parse().unwrap_or_default()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn unavailable(e: impl std::fmt::Display) -> BufferError {
    BufferError::Unavailable(format!("embedded buffer: {e}"))
}

fn writer_gone() -> BufferError {
    BufferError::Unavailable("embedded buffer writer stopped".into())
}

fn mismatch() -> BufferError {
    BufferError::Unavailable("embedded buffer writer answered another kind of request".into())
}
