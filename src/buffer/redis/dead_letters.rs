//! Dead letters: the `{prefix}:dlq` stream, written atomically with the ack of the cases they
//! replace, listed oldest first by stream id.

use redis::Value;

use super::scripts::*;
use super::*;

impl RedisBuffer {
    pub async fn dead_letter_cases(
        &self,
        queue: &str,
        cases: Vec<(CaseId, DeadLetterRecord)>,
    ) -> Result<Vec<DeadLetterId>, BufferError> {
        if cases.is_empty() {
            return Ok(Vec::new());
        }
        let mut invocation = DEAD_LETTER.prepare_invoke();
        invocation
            .key(self.stream_key(queue))
            .key(self.key("dlq"))
            .key(self.key("ready"))
            .arg(GROUP)
            .arg(queue);
        for (id, record) in &cases {
            let id = if is_stream_id(id) { id.as_str() } else { "" };
            invocation.arg(id).arg(encode(record)?);
        }
        let reply: Value = self.invoke("dead_letter_cases", &invocation).await?;
        self.replicate_removal().await;
        strings(reply, "dead_letter_cases")
    }

    pub async fn list_dead_letters(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, BufferError> {
        let Some(start) = page_start(after, limit)? else {
            return Ok(Vec::new());
        };
        let mut conn = self.conn.clone();
        let dlq = self.key("dlq");
        let reply: Value = self
            .timed("list_dead_letters", async {
                redis::cmd("XRANGE")
                    .arg(&dlq)
                    .arg(&start)
                    .arg("+")
                    .arg("COUNT")
                    .arg(limit)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        into_array(reply)
            .into_iter()
            .map(decode_dead_letter)
            .collect()
    }

    pub async fn count_dead_letters(&self) -> Result<u64, BufferError> {
        let mut conn = self.conn.clone();
        let dlq = self.key("dlq");
        self.timed("count_dead_letters", async {
            redis::cmd("XLEN").arg(&dlq).query_async(&mut conn).await
        })
        .await
    }

    pub async fn list_dead_letter_ids(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeadLetterId>, BufferError> {
        let Some(start) = page_start(after, limit)? else {
            return Ok(Vec::new());
        };
        let mut invocation = DEAD_LETTER_IDS.prepare_invoke();
        invocation.key(self.key("dlq")).arg(&start).arg(limit);
        let reply: Value = self.invoke("list_dead_letter_ids", &invocation).await?;
        strings(reply, "list_dead_letter_ids")
    }

    pub async fn get_dead_letter(&self, id: &str) -> Result<Option<DeadLetter>, BufferError> {
        if !is_stream_id(id) {
            return Ok(None);
        }
        let mut conn = self.conn.clone();
        let dlq = self.key("dlq");
        let reply: Value = self
            .timed("get_dead_letter", async {
                redis::cmd("XRANGE")
                    .arg(&dlq)
                    .arg(id)
                    .arg(id)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        into_array(reply)
            .into_iter()
            .next()
            .map(decode_dead_letter)
            .transpose()
    }

    pub async fn remove_dead_letters(&self, ids: &[DeadLetterId]) -> Result<u64, BufferError> {
        let ids: Vec<&DeadLetterId> = ids.iter().filter(|id| is_stream_id(id)).collect();
        if ids.is_empty() {
            return Ok(0);
        }
        let mut conn = self.conn.clone();
        let dlq = self.key("dlq");
        self.timed("remove_dead_letters", async {
            redis::cmd("XDEL")
                .arg(&dlq)
                .arg(&ids)
                .query_async(&mut conn)
                .await
        })
        .await
    }

    pub async fn replay_dead_letter(
        &self,
        id: &str,
        cases: Vec<CaseRecord>,
    ) -> Result<Vec<CaseId>, BufferError> {
        if !is_stream_id(id) {
            return Err(BufferError::NoSuchDeadLetter(id.to_owned()));
        }
        match self.write(None, Some(id), &cases, &[]).await? {
            Written::Stored { case_ids, .. } => Ok(case_ids),
            Written::Missing => Err(BufferError::NoSuchDeadLetter(id.to_owned())),
            Written::Duplicate => Err(unexpected(
                "replay_dead_letter",
                "a replay without dedupe mark was a duplicate",
            )),
        }
    }
}

/// The `XRANGE` start of a page of dead letters after `after` (exclusive); `None` for an empty
/// page.
fn page_start(after: Option<&str>, limit: usize) -> Result<Option<String>, BufferError> {
    let start = match after {
        None => "-".to_owned(),
        Some(id) if is_stream_id(id) => format!("({id}"),
        Some(id) => return Err(BufferError::NoSuchDeadLetter(id.to_owned())),
    };
    Ok((limit > 0).then_some(start))
}
