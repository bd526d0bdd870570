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
        if max == 0 {
            return Ok(Vec::new());
        }
        let mut invocation = CLAIM.prepare_invoke();
        invocation
            .key(self.stream_key(queue))
            .arg(GROUP)
            .arg(consumer)
            .arg(max);
        let reply: Value = self.invoke("claim", &invocation).await?;
        let mut out = Vec::new();
        let mut bad = Vec::new();
        for entry in into_array(reply) {
            match decode_entry_or_raw(queue, entry)? {
                Ok((id, record)) => out.push(BufferedCase {
                    id,
                    record,
                    deliveries: 1,
                }),
                Err(letter) => bad.push(letter),
            }
        }
        self.move_undecodable(queue, bad).await;
        Ok(out)
    }

    /// Moves entries that failed to decode to the dead-letter store (kind `undecodable`, raw
    /// bytes kept), so one bad record never blocks its queue. On failure they stay pending and
    /// come back through reclaim.
    pub(super) async fn move_undecodable(&self, queue: &str, bad: Vec<(CaseId, DeadLetterRecord)>) {
        if bad.is_empty() {
            return;
        }
        let ids: Vec<String> = bad.iter().map(|b| b.0.clone()).collect();
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
        if max == 0 {
            return Ok(Vec::new());
        }
        let mut invocation = OWN_PENDING.prepare_invoke();
        invocation
            .key(self.stream_key(queue))
            .arg(GROUP)
            .arg(consumer)
            .arg(max);
        let reply: Value = self.invoke("own_pending", &invocation).await?;
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
        let mut out = Vec::new();
        let mut bad = Vec::new();
        for triple in into_array(reply) {
            let mut parts = into_array(triple).into_iter();
            let (Some(id), Some(fields), Some(deliveries)) =
                (parts.next(), parts.next(), parts.next())
            else {
                return Err(unexpected(
                    operation,
                    "entry is not an (id, fields, count) triple",
                ));
            };
            match decode_entry_or_raw(queue, Value::Array(vec![id, fields]))? {
                Ok((id, record)) => out.push(BufferedCase {
                    id,
                    record,
                    deliveries: as_u64(&deliveries).unwrap_or(2).max(2),
                }),
                Err(letter) => bad.push(letter),
            }
        }
        self.move_undecodable(queue, bad).await;
        Ok(out)
    }
}
