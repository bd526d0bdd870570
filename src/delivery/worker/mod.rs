//! One queue's worker: gate, claim, linger, wait for a grant, top up, send; until the queue stays
//! empty for a while or shutdown.
//!
//! Everything the worker holds (claimed and not yet acked, dead-lettered or released) is in its
//! held set, which a companion task renews every third of the visibility timeout: a batch in
//! backoff, behind a 429 or in flight stays this consumer's for as long as it waits. A pause
//! releases what it stopped, so the cases wait unclaimed, in order, for whoever resumes.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::batcher;
use super::limiter::{Gate, PauseKind, key_pause, queue_pause};
use super::{Delivery, Inner};
use crate::buffer::BufferedCase;
use crate::secret::Secret;

mod claims;
mod send;

use claims::{Held, renew};
use send::{Group, Sent};

/// The longest a worker whose queue holds only other consumers' claims waits before it looks
/// again (a worker whose queue is drained stops; the supervisor starts one when cases arrive).
const IDLE_MAX: Duration = Duration::from_secs(1);

/// Single cases a worker sets aside (keeps claimed and retries on their own backoff) while the
/// rest of its queue flows. Beyond this, failing cases are retried in place: in an outage
/// everything fails, and setting everything aside would only shuffle the queue.
const MAX_SUSPECTS: usize = 4;

/// A single case that keeps failing, set aside: retried alone from `due` on.
struct Suspect {
    group: Group,
    key: String,
    secret: Secret,
    due: Instant,
}

pub(super) async fn run(delivery: Delivery, queue: String, notify: Arc<Notify>) {
    let held = Held::default();
    let renewal = tokio::spawn(renew(delivery.clone(), queue.clone(), held.clone()));
    Worker {
        delivery,
        queue,
        notify,
        held,
        carry: Vec::new(),
        key_hint: None,
        suspects: VecDeque::new(),
    }
    .run()
    .await;
    renewal.abort();
    // Whatever is still held (a shutdown mid-send) stays claimed by this consumer: it resumes it
    // on restart, or another replica reclaims it after the visibility timeout.
}

/// Which pauses this worker holds the fleet's probe for.
#[derive(Default, Clone, Copy)]
struct Probing {
    key: bool,
    queue: bool,
}

struct Worker {
    delivery: Delivery,
    queue: String,
    notify: Arc<Notify>,
    held: Held,
    /// Claimed cases for the next round (another key's, or what did not fit the request).
    carry: Vec<BufferedCase>,
    /// The key of this queue's last batch: gated before claiming.
    key_hint: Option<String>,
    /// Cases set aside after repeated failures (see [`MAX_SUSPECTS`]).
    suspects: VecDeque<Suspect>,
}

impl Worker {
    fn inner(&self) -> &Inner {
        &self.delivery.inner
    }

    fn stopping(&self) -> bool {
        *self.inner().shutdown.borrow()
    }

    /// Sleeps for `duration` or until shutdown; false when shutting down.
    async fn sleep(&self, duration: Duration) -> bool {
        let mut shutdown = self.inner().shutdown.clone();
        tokio::select! {
            _ = tokio::time::sleep(duration) => !self.stopping(),
            _ = shutdown.wait_for(|stop| *stop) => false,
        }
    }

    /// Asks the pause table about `name`: `None` to go on (with whether this is the probe),
    /// `Some(wait)` to claim nothing for that long.
    async fn gate(&self, name: &str) -> Result<bool, Duration> {
        let config = &self.inner().config;
        match self.inner().limiter.gate(name, config.probe_interval).await {
            Gate::Open => Ok(false),
            Gate::Probe => Ok(true),
            Gate::Wait(wait) => Err(wait),
        }
    }

    /// Waits out a pause: releases what the worker holds and claims nothing meanwhile.
    async fn wait_paused(&mut self, wait: Duration) -> bool {
        let mut held = std::mem::take(&mut self.carry);
        held.extend(self.suspects.drain(..).flat_map(|s| s.group.cases));
        self.release(held).await;
        self.sleep(wait.min(self.inner().config.probe_interval))
            .await
    }

    async fn run(mut self) {
        let mut idle_wait = Duration::ZERO;
        {
            let mut resumed = Vec::new();
            self.claims().own_pending(&mut resumed).await;
            self.held.add(&resumed);
            self.carry = resumed;
        }
        while !self.stopping() {
            let mut probing = Probing::default();
            if let Some(key) = self.key_hint.clone() {
                match self.gate(&key_pause(&key)).await {
                    Ok(probe) => probing.key = probe,
                    Err(wait) => {
                        if !self.wait_paused(wait).await {
                            break;
                        }
                        continue;
                    }
                }
            }
            match self.gate(&queue_pause(&self.queue)).await {
                Ok(probe) => probing.queue = probe,
                Err(wait) => {
                    if !self.wait_paused(wait).await {
                        break;
                    }
                    continue;
                }
            }
            let config = self.inner().config.clone();
            let now = Instant::now();
            if let Some(due) = self.suspects.iter().position(|s| s.due <= now) {
                let suspect = self.suspects.remove(due).expect("just found");
                let grant = self.inner().limiter.acquire(&suspect.key).await;
                let work = VecDeque::from([suspect.group]);
                match self
                    .send(&suspect.key, &suspect.secret, work, probing, grant)
                    .await
                {
                    Sent::Done => {}
                    Sent::Paused(left) => {
                        self.release(left).await;
                    }
                    Sent::Stopped => break,
                }
                continue;
            }
            let mut batch = std::mem::take(&mut self.carry);
            self.fill(&mut batch).await;
            if batch.is_empty() {
                // A probe won with nothing to send goes back at once: kept, it would hold off a
                // queue with cases waiting for a whole probe interval.
                if probing.key
                    && let Some(key) = &self.key_hint
                {
                    self.inner().limiter.hand_back(&key_pause(key)).await;
                }
                if probing.queue {
                    self.inner()
                        .limiter
                        .hand_back(&queue_pause(&self.queue))
                        .await;
                }
                if self.suspects.is_empty() {
                    match self.inner().buffer.settle(&self.queue).await {
                        // Drained: the queue left the ready set, and a later case puts it back
                        // and gets a new worker from the supervisor.
                        Ok(true) => return,
                        // Other consumers hold its cases: look again, less and less often, for
                        // cases they give up (reclaim) until new work wakes this worker.
                        Ok(false) => {
                            idle_wait = (idle_wait * 2).clamp(config.poll_interval, IDLE_MAX)
                        }
                        Err(_) => idle_wait = config.poll_interval,
                    }
                } else {
                    idle_wait = config.poll_interval;
                }
                let mut shutdown = self.inner().shutdown.clone();
                let wait = self
                    .suspects
                    .iter()
                    .map(|s| s.due.saturating_duration_since(Instant::now()))
                    .min()
                    .unwrap_or(idle_wait)
                    .min(idle_wait);
                tokio::select! {
                    _ = self.notify.notified() => idle_wait = Duration::ZERO,
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.wait_for(|stop| *stop) => {}
                }
                continue;
            }
            idle_wait = Duration::ZERO;
            if batch.len() < config.max_batch {
                let oldest_age = batcher::age(&batch, (config.now_ms)());
                if oldest_age < config.linger {
                    if !self.sleep(config.linger - oldest_age).await {
                        self.carry = batch;
                        break;
                    }
                    self.fill(&mut batch).await;
                }
            }
            let key_name = batch[0].record.api_key_name.clone();
            self.carry = batcher::extract_if(&mut batch, |c| c.record.api_key_name != key_name);
            let Some((key, secret)) = self.inner().keys.resolve(key_name.as_deref()) else {
                let reason = format!(
                    "no Duvo API key `{}` configured for this queue's cases",
                    key_name.as_deref().unwrap_or("default")
                );
                tracing::error!(queue = %self.queue, %reason, "delivery paused");
                self.inner()
                    .limiter
                    .hold(
                        &queue_pause(&self.queue),
                        PauseKind::QueueUnknown,
                        config.probe_interval,
                        &reason,
                    )
                    .await;
                self.record_error(format!("queue paused: {reason}"));
                batch.append(&mut self.carry);
                self.release(batch).await;
                continue;
            };
            if self.key_hint.as_deref() != Some(key.as_str()) {
                self.key_hint = Some(key.clone());
                match self.gate(&key_pause(&key)).await {
                    Ok(probe) => probing.key = probe,
                    Err(_) => {
                        batch.append(&mut self.carry);
                        self.release(batch).await;
                        continue;
                    }
                }
            }
            let grant = self.inner().limiter.acquire(&key).await;
            if self.stopping() {
                self.carry = batch;
                break;
            }
            self.fill(&mut batch).await;
            self.carry.extend(batcher::extract_if(&mut batch, |c| {
                c.record.api_key_name != key_name
            }));
            let rest = batcher::cap_request_size(&mut batch, config.max_request_bytes);
            self.carry.splice(0..0, rest);
            let work = VecDeque::from([Group::new(batch)]);
            match self.send(&key, &secret, work, probing, grant).await {
                Sent::Done => {}
                Sent::Paused(mut left) => {
                    left.append(&mut self.carry);
                    self.release(left).await;
                }
                Sent::Stopped => break,
            }
        }
    }
}

#[cfg(test)]
mod tests;
