//! Claims: handing cases out, taking over idle ones, renewing and releasing them. Claims live
//! in memory (a restart releases them all), the cases on disk.

use super::*;

/// Cases handed out, and the entries that could not be decoded (with their dead letters).
type Picked = (Vec<BufferedCase>, Vec<(CaseId, DeadLetterRecord)>);

impl EmbeddedBuffer {
    pub async fn claim(
        &self,
        queue: &str,
        _consumer: &str,
        max: usize,
    ) -> Result<Vec<BufferedCase>, BufferError> {
        self.hand_out(queue, max, move |db, inner, queue| {
            // Holding the claims lock across the read makes "not claimed yet" and "now claimed"
            // one step, so two consumers never get the same case.
            let mut claims = inner.lock_claims();
            let claimed = claims.entry(queue.to_owned()).or_default();
            let txn = db.begin_read()?;
            let cases = txn.open_table(CASES)?;
            let mut out = Vec::new();
            let mut bad = Vec::new();
            for entry in cases.range((queue, 0)..=(queue, u64::MAX))? {
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
                    Err(e) => bad.push(undecodable_entry(queue, seq, value.value(), e)),
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
        .await
    }

    /// Runs `pick` (which chooses up to `max` cases of `queue` and claims them) on the read pool,
    /// then moves the entries it found undecodable to the dead letters.
    async fn hand_out<F>(
        &self,
        queue: &str,
        max: usize,
        pick: F,
    ) -> Result<Vec<BufferedCase>, BufferError>
    where
        F: FnOnce(&Database, &Inner, &str) -> Result<Picked, ReadError> + Send + 'static,
    {
        if max == 0 {
            return Ok(Vec::new());
        }
        let owned = queue.to_owned();
        let (out, bad) = self.read(move |db, inner| pick(db, inner, &owned)).await?;
        self.move_undecodable(queue, bad).await;
        Ok(out)
    }

    /// See [`crate::buffer::move_undecodable`].
    pub(super) async fn move_undecodable(&self, queue: &str, bad: Vec<(CaseId, DeadLetterRecord)>) {
        crate::buffer::move_undecodable(queue, bad, |bad| self.dead_letter_cases(queue, bad)).await;
    }

    pub async fn reclaim(
        &self,
        queue: &str,
        _consumer: &str,
        min_idle: Duration,
        max: usize,
    ) -> Result<Vec<BufferedCase>, BufferError> {
        self.hand_out(queue, max, move |db, inner, queue| {
            let mut claims = inner.lock_claims();
            let Some(claimed) = claims.get_mut(queue) else {
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
                let Some(value) = cases.get((queue, seq))? else {
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
                        bad.push(undecodable_entry(queue, seq, value.value(), e));
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
        .await
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
}
