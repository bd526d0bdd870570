//! The single writer thread: groups queued writes into one fsync'd redb transaction each.

use super::*;

pub(super) fn run_writer(
    db: &Database,
    path: &Path,
    mut requests: mpsc::Receiver<Job>,
    mut marks: MarkIndex,
) {
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
        match commit_group(db, &writes, purge, &mut marks) {
            Ok(dones) => {
                marks.committed();
                if purge {
                    last_purge = Some(std::time::Instant::now());
                }
                for (reply, done) in replies.into_iter().zip(dones) {
                    let _ = reply.send(Ok(done));
                }
            }
            Err(e) => {
                marks.rolled_back();
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
pub(super) fn commit_group(
    db: &Database,
    writes: &[Write],
    purge: bool,
    marks: &mut MarkIndex,
) -> Result<Vec<Done>, redb::Error> {
    let now = now_ms();
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    let mut dones = Vec::with_capacity(writes.len());
    {
        let mut cases = txn.open_table(CASES)?;
        let mut depths = txn.open_table(QUEUE_DEPTHS)?;
        let mut seen = txn.open_table(SEEN)?;
        let mut mark_log = txn.open_table(MARK_LOG)?;
        let mut dead = txn.open_table(DEAD_LETTERS)?;
        let mut counters = txn.open_table(COUNTERS)?;
        let mut next_case = counters.get(NEXT_CASE)?.map_or(1, |v| v.value());
        let mut next_dead = counters.get(NEXT_DEAD_LETTER)?.map_or(1, |v| v.value());
        let mut next_mark = counters.get(NEXT_MARK)?.map_or(1, |v| v.value());
        // Before any lookup: the index must hold live marks only.
        marks.drop_expired(&mut mark_log, now)?;
        if purge {
            marks.purge_seen(&mut seen, now)?;
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
                                seen_before |= marks.contains(&seen, source, key, now)?;
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
                                marks.insert(
                                    &mut mark_log,
                                    &mut seen,
                                    &mut next_mark,
                                    source,
                                    key,
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
        counters.insert(NEXT_MARK, next_mark)?;
    }
    txn.commit()?;
    Ok(dones)
}

pub(super) fn add_depth(
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

pub(super) fn create_tables(txn: &WriteTransaction) -> Result<(), redb::Error> {
    txn.open_table(CASES)?;
    txn.open_table(QUEUE_DEPTHS)?;
    txn.open_table(SEEN)?;
    txn.open_table(MARK_LOG)?;
    txn.open_table(DEAD_LETTERS)?;
    txn.open_table(COUNTERS)?;
    Ok(())
}
