//! Batch assembly: what a worker claims and how a batch is shaped before it is sent. Claims come
//! oldest first: this consumer's own pending cases after a restart, then cases released by a
//! pause or left by a stopped consumer, then new ones, so a queue's cases go out in the order
//! they were buffered.

use std::time::Duration;

use crate::buffer::{Buffer, BufferedCase};

use super::client::DuvoClient;

/// Where a batcher claims from and how much.
pub struct Claims<'a> {
    pub buffer: &'a Buffer,
    pub queue: &'a str,
    pub consumer: &'a str,
    pub visibility_timeout: Duration,
    pub max_batch: usize,
}

impl Claims<'_> {
    /// What this consumer held before it (re)started: handed back at once.
    pub async fn own_pending(&self, batch: &mut Vec<BufferedCase>) {
        let want = self.max_batch.saturating_sub(batch.len());
        match self
            .buffer
            .own_pending(self.queue, self.consumer, want)
            .await
        {
            Ok(pending) => {
                if !pending.is_empty() {
                    tracing::info!(queue = %self.queue, cases = pending.len(), "resuming the cases this consumer held before it stopped");
                }
                batch.extend(pending);
            }
            Err(error) => {
                tracing::warn!(queue = %self.queue, error = %error, "reading own pending cases failed")
            }
        }
    }

    /// Adds cases to `batch` up to `max_batch`: first those released or left idle by a stopped
    /// consumer, then new ones.
    pub async fn fill(&self, batch: &mut Vec<BufferedCase>) {
        let want = self.max_batch.saturating_sub(batch.len());
        if want == 0 {
            return;
        }
        match self
            .buffer
            .reclaim(self.queue, self.consumer, self.visibility_timeout, want)
            .await
        {
            Ok(reclaimed) => batch.extend(reclaimed),
            Err(error) => tracing::warn!(queue = %self.queue, error = %error, "reclaim failed"),
        }
        let want = self.max_batch.saturating_sub(batch.len());
        if want > 0 {
            match self.buffer.claim(self.queue, self.consumer, want).await {
                Ok(claimed) => batch.extend(claimed),
                Err(error) => tracing::warn!(queue = %self.queue, error = %error, "claim failed"),
            }
        }
    }
}

/// How long the oldest case of `batch` has waited since it was received.
pub fn age(batch: &[BufferedCase], now_ms: u64) -> Duration {
    let oldest = batch
        .iter()
        .map(|c| c.record.meta.received_at_ms)
        .min()
        .unwrap_or(now_ms);
    Duration::from_millis(now_ms.saturating_sub(oldest))
}

/// Keeps the request under `max_bytes` (a lone oversize case is still sent: the API decides,
/// and a refusal dead-letters it); returns what did not fit.
pub fn cap_request_size(batch: &mut Vec<BufferedCase>, max_bytes: usize) -> Vec<BufferedCase> {
    let empty = DuvoClient::body(&[]).len();
    let mut size = empty;
    let mut fit = 0;
    for case in batch.iter() {
        // The case's JSON plus the comma that separates it from the previous one.
        let one = DuvoClient::body(&[&case.record]).len() - empty + 1;
        if fit > 0 && size + one > max_bytes {
            break;
        }
        size += one;
        fit += 1;
    }
    batch.split_off(fit)
}

/// Removes and returns the items matching `predicate`, keeping the order of both parts.
pub fn extract_if<T>(items: &mut Vec<T>, predicate: impl Fn(&T) -> bool) -> Vec<T> {
    let (taken, kept): (Vec<T>, Vec<T>) = std::mem::take(items)
        .into_iter()
        .partition(|item| predicate(item));
    *items = kept;
    taken
}
