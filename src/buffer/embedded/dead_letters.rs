//! Dead letters: their table, written in the same transaction as the removal of the cases they
//! replace, listed oldest first by sequence.

use super::*;

impl EmbeddedBuffer {
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

    pub async fn list_dead_letters(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, BufferError> {
        self.dead_letter_page(after, limit, |seq, value| {
            Ok(DeadLetter {
                id: seq.to_string(),
                record: decode(seq, value)?,
            })
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
        // Keys only: the records (up to a body's size each) are never decoded.
        self.dead_letter_page(after, limit, |seq, _| Ok(seq.to_string()))
            .await
    }

    /// Up to `limit` dead letters after `after` (exclusive), oldest first, each made by `item`
    /// from its sequence and stored bytes.
    async fn dead_letter_page<T: Send + 'static>(
        &self,
        after: Option<&str>,
        limit: usize,
        item: fn(u64, &[u8]) -> Result<T, BufferError>,
    ) -> Result<Vec<T>, BufferError> {
        let Some(start) = page_start(after)? else {
            return Ok(Vec::new());
        };
        self.read(move |db, _| {
            let txn = db.begin_read()?;
            let table = txn.open_table(DEAD_LETTERS)?;
            let mut out = Vec::new();
            for entry in table.range(start..)?.take(limit) {
                let (key, value) = entry?;
                out.push(item(key.value(), value.value())?);
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
}

/// The first sequence of a page of dead letters after `after` (exclusive); `None` when nothing
/// can follow it.
fn page_start(after: Option<&str>) -> Result<Option<u64>, BufferError> {
    match after {
        None => Ok(Some(0)),
        Some(id) => match id.parse::<u64>() {
            Ok(seq) => Ok(seq.checked_add(1)),
            Err(_) => Err(BufferError::NoSuchDeadLetter(id.to_owned())),
        },
    }
}
