//! Dedupe marks of the embedded buffer: a log on disk in expiry order, found through an index
//! of fingerprints in memory.
//!
//! Why not one B-tree keyed by the mark: a delivery id or a body digest is a random key, so each
//! mark lands in its own leaf, and every commit copied, wrote and synced one leaf (and branch)
//! page per mark: with two marks per webhook that was most of the bytes a commit wrote, and the
//! writer thread's fsync cycle bounds ingest. The log is keyed by `(expiry, sequence)`, so new
//! marks join the tree's right edge (a page or two per commit, whatever the group size) and
//! expired ones leave from its left edge.
//!
//! The index holds a 64-bit SipHash of each live mark, keyed afresh at every start (the log
//! keeps the marks themselves and rebuilds it), so no sender can aim for a collision. A fresh
//! mark whose fingerprint matches a live one is taken for a duplicate: with `n` live marks the
//! chance per lookup is `n / 2^64`, about 5e-14 at a million marks.
//!
//! Memory is bounded by configuration (`buffer.dedupe_index_marks`). A hash set of `u64` costs
//! 9 bytes a bucket, and as marks come and go it keeps its live marks under half its buckets
//! (deleted slots are reclaimed by rehashing in place only below that), so the index takes up to
//! about 21 bytes per mark of capacity: 9 MiB at the default 450,000. Past the capacity a new
//! mark goes to the `seen` B-tree as before, which is slower to write but found just the same.
//! Marks written there by earlier versions are found too.

use std::collections::HashSet;
use std::hash::{BuildHasher, RandomState};

use super::*;

/// The marks of the log, by fingerprint, plus what a failed commit must undo.
///
/// Invariant: the index holds the fingerprint of every mark of the committed log (and of the
/// current group's new marks), so a key with a live mark on disk is never accepted again; and
/// after [`MarkIndex::drop_expired`] it holds live marks only, so an expired one never refuses.
pub(super) struct MarkIndex {
    fingerprints: HashSet<u64>,
    /// Keys the fingerprints; drawn at random when the buffer opens.
    keys: RandomState,
    /// Most marks the index takes; beyond it new marks go to `seen`.
    capacity: usize,
    /// `seen` may hold a mark; when false, lookups skip it.
    seen_in_use: bool,
    /// Fingerprints added since the last [`MarkIndex::committed`]: a failed commit removes them.
    added: Vec<u64>,
    /// Fingerprints of expired marks taken out since then: a failed commit leaves those marks in
    /// the log, so they come back (and leave again at the next group's `drop_expired`).
    dropped: Vec<u64>,
}

impl MarkIndex {
    /// Removes the marks that expired while the buffer was closed, in a commit of their own (so
    /// the first webhook's commit does not carry a downtime's worth of them), then indexes every
    /// mark left in the log and notes whether `seen` holds any. Marks that expire before the
    /// first group are indexed too and dropped by it, whatever the clock did meanwhile. Every
    /// mark enters even past `capacity` (after it was lowered), as the index is the only way to
    /// find them; a lowered capacity takes effect as the marks written before expire.
    pub(super) fn load(db: &Database, capacity: usize) -> Result<MarkIndex, redb::Error> {
        let txn = db.begin_write()?;
        {
            let mut log = txn.open_table(MARK_LOG)?;
            for entry in log.extract_from_if(..=(now_ms(), u64::MAX), |_, _| true)? {
                entry?;
            }
        }
        txn.commit()?;
        let txn = db.begin_read()?;
        let log = txn.open_table(MARK_LOG)?;
        // Every mark of the log enters, whatever the capacity.
        let marks = usize::try_from(log.len()?).unwrap_or(usize::MAX);
        let mut index = MarkIndex {
            fingerprints: HashSet::with_capacity(marks),
            keys: RandomState::new(),
            capacity,
            seen_in_use: !txn.open_table(SEEN)?.is_empty()?,
            added: Vec::new(),
            dropped: Vec::new(),
        };
        for entry in log.iter()? {
            let (_, mark) = entry?;
            let (source, key) = mark.value();
            let fingerprint = index.fingerprint(source, key);
            index.fingerprints.insert(fingerprint);
        }
        Ok(index)
    }

    fn fingerprint(&self, source: &str, key: &str) -> u64 {
        self.keys.hash_one((source, key))
    }

    /// Whether `(source, key)` has a live mark, in the log or in `seen`. Run after
    /// [`MarkIndex::drop_expired`] with the same `now`, so the index holds live marks only.
    pub(super) fn contains(
        &self,
        seen: &redb::Table<'_, (&str, &str), u64>,
        source: &str,
        key: &str,
        now: u64,
    ) -> Result<bool, redb::Error> {
        if self.fingerprints.contains(&self.fingerprint(source, key)) {
            return Ok(true);
        }
        Ok(self.seen_in_use
            && seen
                .get((source, key))?
                .is_some_and(|expires_at| expires_at.value() > now))
    }

    /// Writes a mark: into the log while the index has room, otherwise into `seen`.
    pub(super) fn insert(
        &mut self,
        log: &mut redb::Table<'_, (u64, u64), (&str, &str)>,
        seen: &mut redb::Table<'_, (&str, &str), u64>,
        next_mark: &mut u64,
        source: &str,
        key: &str,
        expires_at: u64,
    ) -> Result<(), redb::Error> {
        if self.fingerprints.len() >= self.capacity {
            seen.insert((source, key), expires_at)?;
            self.seen_in_use = true;
            return Ok(());
        }
        log.insert((expires_at, *next_mark), (source, key))?;
        *next_mark += 1;
        let fingerprint = self.fingerprint(source, key);
        if self.fingerprints.insert(fingerprint) {
            self.added.push(fingerprint);
        }
        Ok(())
    }

    /// Removes the marks that expired by `now` from the log and the index.
    pub(super) fn drop_expired(
        &mut self,
        log: &mut redb::Table<'_, (u64, u64), (&str, &str)>,
        now: u64,
    ) -> Result<(), redb::Error> {
        for entry in log.extract_from_if(..=(now, u64::MAX), |_, _| true)? {
            let (_, mark) = entry?;
            let (source, key) = mark.value();
            let fingerprint = self.fingerprint(source, key);
            if self.fingerprints.remove(&fingerprint) {
                self.dropped.push(fingerprint);
            }
        }
        Ok(())
    }

    /// Purges the expired marks of `seen`; once it is empty, lookups stop reading it.
    pub(super) fn purge_seen(
        &mut self,
        seen: &mut redb::Table<'_, (&str, &str), u64>,
        now: u64,
    ) -> Result<(), redb::Error> {
        if self.seen_in_use {
            seen.retain(|_, expires_at| expires_at > now)?;
            self.seen_in_use = !seen.is_empty()?;
        }
        Ok(())
    }

    /// The group's writes are on disk.
    pub(super) fn committed(&mut self) {
        self.added.clear();
        self.dropped.clear();
    }

    /// The group's commit failed: its new marks were never written, and the expired marks it
    /// took out are still in the log. New marks leave first, so a key that expired and came
    /// again in the failed group keeps its old mark. `seen` may still hold what the group's purge
    /// removed: it is read (and purged by the next group) until a purge finds it empty.
    pub(super) fn rolled_back(&mut self) {
        for fingerprint in self.added.drain(..) {
            self.fingerprints.remove(&fingerprint);
        }
        self.fingerprints.extend(self.dropped.drain(..));
        self.seen_in_use = true;
    }

    /// Live marks in the index.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.fingerprints.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &tempfile::TempDir) -> Database {
        let db = Database::create(dir.path().join("marks.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        create_tables(&txn).unwrap();
        txn.commit().unwrap();
        db
    }

    /// Runs `f` in one write transaction with the two mark tables, then commits it or, as a
    /// failed group's commit would leave things, aborts it.
    fn in_transaction<T>(
        db: &Database,
        commit: bool,
        f: impl FnOnce(
            &mut redb::Table<'_, (u64, u64), (&str, &str)>,
            &mut redb::Table<'_, (&str, &str), u64>,
        ) -> T,
    ) -> T {
        let txn = db.begin_write().unwrap();
        let out = {
            let mut log = txn.open_table(MARK_LOG).unwrap();
            let mut seen = txn.open_table(SEEN).unwrap();
            f(&mut log, &mut seen)
        };
        if commit {
            txn.commit().unwrap();
        } else {
            txn.abort().unwrap();
        }
        out
    }

    fn write<T>(
        db: &Database,
        f: impl FnOnce(
            &mut redb::Table<'_, (u64, u64), (&str, &str)>,
            &mut redb::Table<'_, (&str, &str), u64>,
        ) -> T,
    ) -> T {
        in_transaction(db, true, f)
    }

    /// An index over a log that holds `marks` (keys of source "s"), committed.
    fn with_marks(db: &Database, marks: &[(&str, u64)]) -> MarkIndex {
        let mut index = MarkIndex::load(db, 10).unwrap();
        let mut next = 1;
        write(db, |log, seen| {
            for (key, expiry) in marks {
                index
                    .insert(log, seen, &mut next, "s", key, *expiry)
                    .unwrap();
            }
        });
        index.committed();
        index
    }

    fn log_len(db: &Database) -> u64 {
        db.begin_read()
            .unwrap()
            .open_table(MARK_LOG)
            .unwrap()
            .len()
            .unwrap()
    }

    #[test]
    fn marks_past_the_capacity_go_to_seen_and_are_found_there_after_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir);
        let mut index = MarkIndex::load(&db, 2).unwrap();
        let now = now_ms();
        let mut next = 1;
        write(&db, |log, seen| {
            for key in ["a", "b", "c"] {
                index
                    .insert(log, seen, &mut next, "github", key, now + 60_000)
                    .unwrap();
            }
        });
        index.committed();
        assert_eq!(index.len(), 2);
        assert_eq!(log_len(&db), 2);

        for capacity in [0, 2, 100] {
            let index = MarkIndex::load(&db, capacity).unwrap();
            assert_eq!(index.len(), 2, "every live mark of the log is indexed");
            write(&db, |_, seen| {
                for key in ["a", "b", "c"] {
                    assert!(index.contains(seen, "github", key, now).unwrap(), "{key}");
                }
                assert!(!index.contains(seen, "github", "d", now).unwrap());
                assert!(!index.contains(seen, "stripe", "a", now).unwrap());
            });
        }
    }

    #[test]
    fn expired_marks_leave_the_log_and_the_index_and_seen_stops_being_read() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir);
        let mut index = MarkIndex::load(&db, 1).unwrap();
        let now = now_ms();
        let mut next = 1;
        write(&db, |log, seen| {
            // Expiries out of order, as after the ttl was lowered by a reload.
            index
                .insert(log, seen, &mut next, "s", "late", now + 5_000)
                .unwrap();
            index.capacity = 3;
            index
                .insert(log, seen, &mut next, "s", "early", now + 1_000)
                .unwrap();
            index.capacity = 0;
            index
                .insert(log, seen, &mut next, "s", "on-disk", now + 1_000)
                .unwrap();
        });
        index.committed();
        assert!(index.seen_in_use);

        let later = now + 2_000;
        write(&db, |log, seen| {
            index.drop_expired(log, later).unwrap();
            index.purge_seen(seen, later).unwrap();
            assert!(index.contains(seen, "s", "late", later).unwrap());
            assert!(!index.contains(seen, "s", "early", later).unwrap());
            assert!(!index.contains(seen, "s", "on-disk", later).unwrap());
        });
        assert_eq!(log_len(&db), 1);
        assert_eq!(index.len(), 1);
        assert!(!index.seen_in_use, "an empty seen table is not read");
        assert!(!MarkIndex::load(&db, 10).unwrap().seen_in_use);
    }

    #[test]
    fn a_rolled_back_group_leaves_no_mark_in_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir);
        let now = now_ms();
        let mut index = with_marks(&db, &[("kept", now + 60_000)]);
        let mut next = 2;
        in_transaction(&db, false, |log, seen| {
            index
                .insert(log, seen, &mut next, "s", "lost", now + 60_000)
                .unwrap();
            assert!(index.contains(seen, "s", "lost", now).unwrap());
        });
        index.rolled_back();
        write(&db, |_, seen| {
            assert!(index.contains(seen, "s", "kept", now).unwrap());
            assert!(!index.contains(seen, "s", "lost", now).unwrap());
        });
        assert_eq!(index.len(), 1);
    }

    #[test]
    fn a_mark_is_live_until_its_expiry_and_gone_at_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir);
        let expiry = now_ms() + 60_000;
        let mut index = with_marks(&db, &[("k", expiry)]);
        write(&db, |log, seen| {
            index.drop_expired(log, expiry - 1).unwrap();
            assert!(index.contains(seen, "s", "k", expiry - 1).unwrap());
        });
        index.committed();
        write(&db, |log, seen| {
            index.drop_expired(log, expiry).unwrap();
            assert!(!index.contains(seen, "s", "k", expiry).unwrap());
        });
        index.committed();
        assert_eq!(log_len(&db), 0);
    }

    #[test]
    fn a_failed_commit_puts_back_the_expired_marks_it_took_out() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir);
        let expiry = now_ms() + 60_000;
        let mut index = with_marks(&db, &[("k", expiry)]);
        // A group runs after the expiry, then fails: the mark is still in the log.
        in_transaction(&db, false, |log, _| {
            index.drop_expired(log, expiry).unwrap();
        });
        index.rolled_back();
        assert_eq!(log_len(&db), 1);
        // Were the clock to step back below the expiry, the mark would still refuse.
        write(&db, |log, seen| {
            index.drop_expired(log, expiry - 1).unwrap();
            assert!(index.contains(seen, "s", "k", expiry - 1).unwrap());
        });
        // And a reopened buffer indexes it too.
        let reopened = MarkIndex::load(&db, 10).unwrap();
        assert_eq!(reopened.len(), 1);
    }

    #[test]
    fn a_key_that_expired_and_came_again_in_a_failed_group_keeps_its_old_mark() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir);
        let expiry = now_ms() + 60_000;
        let mut index = with_marks(&db, &[("k", expiry)]);
        let mut next = 2;
        in_transaction(&db, false, |log, seen| {
            index.drop_expired(log, expiry).unwrap();
            assert!(!index.contains(seen, "s", "k", expiry).unwrap());
            index
                .insert(log, seen, &mut next, "s", "k", expiry + 60_000)
                .unwrap();
        });
        index.rolled_back();
        // The log still holds the old mark only; the index must still find it.
        assert_eq!(log_len(&db), 1);
        write(&db, |_, seen| {
            assert!(index.contains(seen, "s", "k", expiry - 1).unwrap());
        });
        assert_eq!(index.len(), 1);
    }

    #[test]
    fn marks_that_expired_while_closed_leave_the_log_when_it_opens() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir);
        let now = now_ms();
        with_marks(&db, &[("gone", now - 1), ("kept", now + 60_000)]);
        let index = MarkIndex::load(&db, 10).unwrap();
        assert_eq!(log_len(&db), 1);
        assert_eq!(index.len(), 1);
    }
}
