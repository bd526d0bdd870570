//! The embedded backend: a redb database file on local disk, so casegate runs without Redis.
//!
//! Tables:
//! - `cases`: `(queue, sequence)` → the [`CaseRecord`] as JSON. The sequence is one counter for
//!   all queues, so each queue's range reads oldest-first; the [`CaseId`] is the sequence in
//!   decimal.
//! - `queue_depths`: queue → number of buffered cases (kept in step with `cases`; a queue leaves
//!   it when its last case goes).
//! - `mark_log`: `(expiry in ms since the Unix epoch, sequence)` → `(source, delivery id or body
//!   digest)`: the dedupe marks, found through an index in memory (see [`marks`]). Expired marks
//!   leave it at the next commit.
//! - `seen`: `(source, delivery id or body digest)` → expiry: the marks beyond the index's
//!   capacity (and those of earlier versions). A mark past its expiry counts as absent; expired
//!   marks are purged at most once a minute.
//! - `dead_letters`: sequence → [`DeadLetterRecord`] as JSON; the [`DeadLetterId`] is the
//!   sequence in decimal, so ids increase and list oldest-first.
//! - `counters`: the next case, dead-letter and mark sequences.
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

mod claims;
mod dead_letters;
mod marks;
mod writer;

use marks::MarkIndex;
use writer::{create_tables, run_writer};

use super::{BufferError, BufferedCase, CaseId, Enqueue, EnqueueOutcome, QueueStats};
use crate::case::{CaseRecord, DeadLetter, DeadLetterId, DeadLetterRecord};

const CASES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("cases");
const QUEUE_DEPTHS: TableDefinition<&str, u64> = TableDefinition::new("queue_depths");
const SEEN: TableDefinition<(&str, &str), u64> = TableDefinition::new("seen");
const MARK_LOG: TableDefinition<(u64, u64), (&str, &str)> = TableDefinition::new("mark_log");
const DEAD_LETTERS: TableDefinition<u64, &[u8]> = TableDefinition::new("dead_letters");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");

const NEXT_CASE: &str = "next_case";
const NEXT_DEAD_LETTER: &str = "next_dead_letter";
const NEXT_MARK: &str = "next_mark";

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
/// Dedupe marks the index in memory takes when no capacity is configured
/// (`buffer.dedupe_index_marks`).
pub const DEFAULT_DEDUPE_INDEX_MARKS: usize = 450_000;

/// How an embedded buffer is opened.
#[derive(Debug, Clone, Copy)]
pub struct EmbeddedOptions {
    /// Longest wait for a write's commit (`buffer.op_timeout_ms`): past it the caller gets
    /// [`BufferError::Unavailable`] (a webhook, 503), so a stuck disk never hangs ingress. The
    /// write may still commit later; that is safe, as the sender's retry is then a duplicate or a
    /// second delivery, never a loss.
    pub op_timeout: Duration,
    /// Most dedupe marks indexed in memory (`buffer.dedupe_index_marks`); beyond it, marks are
    /// written to a slower on-disk index.
    pub dedupe_index_marks: usize,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            op_timeout: DEFAULT_OP_TIMEOUT,
            dedupe_index_marks: DEFAULT_DEDUPE_INDEX_MARKS,
        }
    }
}

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
        Self::open_with(path, EmbeddedOptions::default())
    }

    /// [`EmbeddedBuffer::open`] with its settings.
    pub fn open_with(path: &Path, options: EmbeddedOptions) -> Result<EmbeddedBuffer, BufferError> {
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
        let marks = MarkIndex::load(&db, options.dedupe_index_marks).map_err(unavailable)?;
        let db = Arc::new(db);
        let (writes, requests) = mpsc::channel(QUEUE_CAPACITY);
        let writer_db = db.clone();
        let writer_path = path.to_path_buf();
        let writer = std::thread::Builder::new()
            .name("casegate-buffer-writer".into())
            .spawn(move || run_writer(&writer_db, &writer_path, requests, marks))
            .map_err(|e| {
                BufferError::Unavailable(format!("cannot start the buffer writer: {e}"))
            })?;
        Ok(EmbeddedBuffer {
            inner: Arc::new(Inner {
                db,
                writes: Some(writes),
                writer: Some(writer),
                claims: Mutex::new(HashMap::new()),
                op_timeout: options.op_timeout,
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
                // At least 1 ms, as on Redis (`PX 0` is an error there).
                let ttl_ms = u64::try_from(m.ttl.as_millis()).unwrap_or(u64::MAX).max(1);
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
