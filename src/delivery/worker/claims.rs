//! What the worker holds: claiming, renewing, releasing, and finishing claims with an ack or a
//! dead letter.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use super::Worker;
use crate::buffer::{BufferedCase, CaseId};
use crate::case::DeadLetterRecord;
use crate::delivery::Delivery;
use crate::delivery::batcher::Claims;

/// The ids this worker holds, renewed in the background.
#[derive(Clone, Default)]
pub(super) struct Held(Arc<Mutex<BTreeSet<CaseId>>>);

impl Held {
    pub(super) fn add(&self, cases: &[BufferedCase]) {
        let mut held = self.0.lock().expect("held lock");
        held.extend(cases.iter().map(|c| c.id.clone()));
    }

    pub(super) fn remove(&self, ids: &[CaseId]) {
        let mut held = self.0.lock().expect("held lock");
        for id in ids {
            held.remove(id);
        }
    }

    pub(super) fn snapshot(&self) -> Vec<CaseId> {
        self.0.lock().expect("held lock").iter().cloned().collect()
    }
}

/// Renews the held claims until aborted.
pub(super) async fn renew(delivery: Delivery, queue: String, held: Held) {
    let inner = &delivery.inner;
    let config = &inner.config;
    loop {
        tokio::time::sleep(config.renew_every()).await;
        let ids = held.snapshot();
        if ids.is_empty() {
            continue;
        }
        if let Err(error) = inner
            .buffer
            .renew(&queue, &config.consumer, config.visibility_timeout, &ids)
            .await
        {
            tracing::warn!(%queue, error = %error, "renewing claims failed; retrying");
        }
    }
}

impl Worker {
    pub(super) fn claims(&self) -> Claims<'_> {
        let inner = self.inner();
        Claims {
            buffer: &inner.buffer,
            queue: &self.queue,
            consumer: &inner.config.consumer,
            visibility_timeout: inner.config.visibility_timeout,
            max_batch: inner.config.max_batch,
        }
    }

    pub(super) async fn fill(&self, batch: &mut Vec<BufferedCase>) {
        let before = batch.len();
        self.claims().fill(batch).await;
        self.held.add(&batch[before..]);
    }

    /// Hands cases back to the buffer at once (a pause stopped them): they wait unclaimed and
    /// go out first, in order, when delivery resumes.
    pub(super) async fn release(&self, cases: Vec<BufferedCase>) {
        if cases.is_empty() {
            return;
        }
        let inner = self.inner();
        let ids: Vec<CaseId> = cases.into_iter().map(|c| c.id).collect();
        self.held.remove(&ids);
        if let Err(error) = inner
            .buffer
            .release(
                &self.queue,
                &inner.config.consumer,
                inner.config.visibility_timeout,
                &ids,
            )
            .await
        {
            // They stay claimed, unrenewed: reclaimed after the visibility timeout.
            tracing::warn!(queue = %self.queue, error = %error, "releasing paused cases failed");
        }
    }

    /// Acks until the buffer takes it; if it never does (shutdown first) the batch is sent again
    /// later: the one duplicate at-least-once allows.
    pub(super) async fn ack(&self, ids: &[CaseId]) {
        let inner = self.inner();
        if self
            .until_written("ack", || inner.buffer.ack(&self.queue, ids))
            .await
        {
            self.held.remove(ids);
        }
    }

    /// Retries a buffer write with backoff until it succeeds (true) or the process shuts down
    /// (false: the cases stay claimed and are delivered again later).
    async fn until_written<T, F, Fut>(&self, what: &str, mut write: F) -> bool
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, crate::buffer::BufferError>>,
    {
        let config = &self.inner().config;
        let mut attempt = 0;
        while let Err(error) = write().await {
            tracing::warn!(queue = %self.queue, error = %error, "{what} failed; retrying");
            let delay = config.backoff.delay(attempt, config.jitter.sample());
            attempt += 1;
            if !self.sleep(delay).await {
                return false;
            }
        }
        true
    }

    pub(super) async fn dead_letter(
        &self,
        cases: Vec<BufferedCase>,
        status: u16,
        reason: String,
        attempts: u32,
    ) {
        let inner = self.inner();
        let now = (inner.config.now_ms)();
        tracing::warn!(queue = %self.queue, status, %reason, cases = cases.len(), "moved to the dead-letter store");
        let ids: Vec<CaseId> = cases.iter().map(|c| c.id.clone()).collect();
        let letters: Vec<_> = cases
            .into_iter()
            .map(|case| {
                let attempts = case.deliveries.max(u64::from(attempts));
                let record =
                    DeadLetterRecord::refused(case.record, status, attempts, reason.clone(), now);
                (case.id, record)
            })
            .collect();
        if self
            .until_written("dead-lettering", || {
                inner.buffer.dead_letter_cases(&self.queue, letters.clone())
            })
            .await
        {
            self.held.remove(&ids);
        }
    }
}
