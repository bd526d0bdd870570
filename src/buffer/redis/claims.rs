//! Claims: handing cases out (`XREADGROUP`, `XAUTOCLAIM`), keeping them (`XCLAIM ... JUSTID`),
//! giving them back, and the lease on a consumer name.

use std::time::Duration;

use redis::Value;

use super::scripts::*;
use super::*;

impl RedisBuffer {
    pub async fn claim(
        &self,
        queue: &str,
        consumer: &str,
        max: usize,
    ) -> Result<Vec<BufferedCase>, BufferError> {
        let reply = self.read_as(&CLAIM, "claim", queue, consumer, max).await?;
        let entries = into_array(reply).into_iter().map(|entry| Ok((entry, 1)));
        self.decode_cases(queue, entries).await
    }

    /// Runs a script that reads `queue` through the group as `consumer`, up to `max` entries
    /// (no call at all for 0).
    async fn read_as(
        &self,
        script: &redis::Script,
        operation: &'static str,
        queue: &str,
        consumer: &str,
        max: usize,
    ) -> Result<Value, BufferError> {
        if max == 0 {
            return Ok(Value::Array(Vec::new()));
        }
        let mut invocation = script.prepare_invoke();
        invocation
            .key(self.stream_key(queue))
            .arg(GROUP)
            .arg(consumer)
            .arg(max);
        self.invoke(operation, &invocation).await
    }

    /// Decodes `(entry, deliveries)` pairs into cases; entries that do not decode move to the
    /// dead letters.
    async fn decode_cases(
        &self,
        queue: &str,
        entries: impl IntoIterator<Item = Result<(Value, u64), BufferError>>,
    ) -> Result<Vec<BufferedCase>, BufferError> {
        let mut out = Vec::new();
        let mut bad = Vec::new();
        for entry in entries {
            let (entry, deliveries) = entry?;
            match decode_entry_or_raw(queue, entry)? {
                Ok((id, record)) => out.push(BufferedCase {
                    id,
                    record,
                    deliveries,
                }),
                Err(letter) => bad.push(letter),
            }
        }
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
        consumer: &str,
        min_idle: Duration,
        max: usize,
    ) -> Result<Vec<BufferedCase>, BufferError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let min_idle_ms = u64::try_from(min_idle.as_millis()).unwrap_or(u64::MAX);
        let mut invocation = RECLAIM.prepare_invoke();
        invocation
            .key(self.stream_key(queue))
            .arg(GROUP)
            .arg(consumer)
            .arg(min_idle_ms)
            .arg(max);
        let reply: Value = self.invoke("reclaim", &invocation).await?;
        self.decode_triples(queue, reply, "reclaim").await
    }

    /// See [`HOLD`]: keeps `consumer`'s claims on `ids` from expiring.
    pub async fn renew(
        &self,
        queue: &str,
        consumer: &str,
        max_idle: Duration,
        ids: &[CaseId],
    ) -> Result<u64, BufferError> {
        self.pending_op("renew", queue, consumer, max_idle, ids)
            .await
    }

    /// See [`HOLD`]: makes `consumer`'s claims on `ids` reclaimable at once.
    pub async fn release(
        &self,
        queue: &str,
        consumer: &str,
        idle: Duration,
        ids: &[CaseId],
    ) -> Result<u64, BufferError> {
        self.pending_op("release", queue, consumer, idle, ids).await
    }

    pub(super) async fn pending_op(
        &self,
        operation: &'static str,
        queue: &str,
        consumer: &str,
        idle: Duration,
        ids: &[CaseId],
    ) -> Result<u64, BufferError> {
        let ids: Vec<&CaseId> = ids.iter().filter(|id| is_stream_id(id)).collect();
        if ids.is_empty() {
            return Ok(0);
        }
        let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut invocation = HOLD.prepare_invoke();
        invocation
            .key(self.stream_key(queue))
            .arg(GROUP)
            .arg(consumer)
            .arg(idle_ms)
            .arg(operation)
            .arg(ids);
        let reply: Value = self.invoke(operation, &invocation).await?;
        Ok(as_u64(&reply).unwrap_or(0))
    }

    /// See [`OWN_PENDING`]: what `consumer` held when it last stopped.
    pub async fn own_pending(
        &self,
        queue: &str,
        consumer: &str,
        max: usize,
    ) -> Result<Vec<BufferedCase>, BufferError> {
        let reply = self
            .read_as(&OWN_PENDING, "own_pending", queue, consumer, max)
            .await?;
        self.decode_triples(queue, reply, "own_pending").await
    }

    /// Takes or renews the lease on consumer name `name` for `ttl` with `nonce` (this process's
    /// secret token): `None` when this process holds it now, `Some(time left)` when another
    /// one does.
    pub async fn lease_consumer(
        &self,
        name: &str,
        nonce: &str,
        ttl: Duration,
    ) -> Result<Option<Duration>, BufferError> {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut invocation = LEASE.prepare_invoke();
        invocation
            .key(self.key(&format!("consumer:{name}")))
            .arg(nonce)
            .arg(ttl_ms);
        let reply: Vec<i64> = self.invoke("lease", &invocation).await?;
        Ok(match reply.as_slice() {
            [1, ..] => None,
            [_, left, ..] => Some(Duration::from_millis(u64::try_from(*left).unwrap_or(0))),
            _ => return Err(unexpected("lease", "no answer")),
        })
    }

    /// Gives up the lease on `name` if `nonce` still holds it (a clean stop), so a replacement
    /// under the same name starts at once.
    pub async fn release_consumer(&self, name: &str, nonce: &str) -> Result<(), BufferError> {
        let mut invocation = UNLEASE.prepare_invoke();
        invocation
            .key(self.key(&format!("consumer:{name}")))
            .arg(nonce);
        let _: i64 = self.invoke("release lease", &invocation).await?;
        Ok(())
    }

    /// Decodes the `{id, fields, deliveries}` triples the reclaim scripts return. Entries that
    /// cannot be decoded are moved to the dead-letter store (acked and deleted from the stream
    /// there), so their neighbours are handed out and the bad ones are never renewed.
    pub(super) async fn decode_triples(
        &self,
        queue: &str,
        reply: Value,
        operation: &str,
    ) -> Result<Vec<BufferedCase>, BufferError> {
        let entries = into_array(reply).into_iter().map(|triple| {
            let mut parts = into_array(triple).into_iter();
            let (Some(id), Some(fields), Some(deliveries)) =
                (parts.next(), parts.next(), parts.next())
            else {
                return Err(unexpected(
                    operation,
                    "entry is not an (id, fields, count) triple",
                ));
            };
            let deliveries = as_u64(&deliveries).unwrap_or(2).max(2);
            Ok((Value::Array(vec![id, fields]), deliveries))
        });
        self.decode_cases(queue, entries).await
    }
}
