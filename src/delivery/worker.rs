//! One queue's worker: gate, claim, linger, wait for a grant, top up, send; until the queue stays
//! empty for a while or shutdown.
//!
//! Everything the worker holds (claimed and not yet acked, dead-lettered or released) is in its
//! held set, which a companion task renews every third of the visibility timeout: a batch in
//! backoff, behind a 429 or in flight stays this consumer's for as long as it waits. A pause
//! releases what it stopped, so the cases wait unclaimed, in order, for whoever resumes.

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::batcher::{self, Claims};
use super::limiter::{Gate, PauseKind, key_pause, queue_pause};
use super::policy::{Action, AfterFailure, ApiAnswer, after_failure, decide, window_spent};
use super::{Delivery, Inner};
use crate::buffer::{BufferedCase, CaseId};
use crate::case::{CaseRecord, DeadLetterRecord};
use crate::prometheus;
use crate::secret::Secret;

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

/// The ids this worker holds, renewed in the background.
#[derive(Clone, Default)]
struct Held(Arc<Mutex<BTreeSet<CaseId>>>);

impl Held {
    fn add(&self, cases: &[BufferedCase]) {
        let mut held = self.0.lock().expect("held lock");
        held.extend(cases.iter().map(|c| c.id.clone()));
    }

    fn remove(&self, ids: &[CaseId]) {
        let mut held = self.0.lock().expect("held lock");
        for id in ids {
            held.remove(id);
        }
    }

    fn snapshot(&self) -> Vec<CaseId> {
        self.0.lock().expect("held lock").iter().cloned().collect()
    }
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

/// Renews the held claims until aborted.
async fn renew(delivery: Delivery, queue: String, held: Held) {
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

/// How a send ended.
enum Sent {
    /// Every case was acked or dead-lettered.
    Done,
    /// A pause stopped it; these cases were not finished.
    Paused(Vec<BufferedCase>),
    /// Shutdown.
    Stopped,
}

/// Cases sent together, with their failure record.
struct Group {
    cases: Vec<BufferedCase>,
    /// Transient failures in a row.
    failures: u32,
    /// Of those (for a single case), how many came with fresh evidence that the key was
    /// otherwise healthy (see [`super::health`]).
    counted: u32,
    /// The last attempt's outcome was unknown (timeout, 5xx), or the cases were taken over from
    /// a stopped consumer: the API may hold them already.
    ambiguous: bool,
    last_answer: String,
    /// Set aside once already: it keeps its own backoff instead of holding the queue.
    aside: bool,
}

impl Group {
    fn new(cases: Vec<BufferedCase>) -> Group {
        let ambiguous = cases.iter().any(|c| c.deliveries > 1);
        Group {
            cases,
            failures: 0,
            counted: 0,
            ambiguous,
            last_answer: String::new(),
            aside: false,
        }
    }

    fn halves(mut self) -> (Group, Group) {
        let right = self.cases.split_off(self.cases.len() / 2);
        let half = |cases| Group {
            cases,
            failures: 0,
            counted: 0,
            ambiguous: self.ambiguous,
            last_answer: self.last_answer.clone(),
            aside: false,
        };
        (half(self.cases.clone()), half(right))
    }

    fn ids(&self) -> Vec<CaseId> {
        self.cases.iter().map(|c| c.id.clone()).collect()
    }
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

    fn claims(&self) -> Claims<'_> {
        let inner = self.inner();
        Claims {
            buffer: &inner.buffer,
            queue: &self.queue,
            consumer: &inner.config.consumer,
            visibility_timeout: inner.config.visibility_timeout,
            max_batch: inner.config.max_batch,
        }
    }

    async fn fill(&self, batch: &mut Vec<BufferedCase>) {
        let before = batch.len();
        self.claims().fill(batch).await;
        self.held.add(&batch[before..]);
    }

    /// Hands cases back to the buffer at once (a pause stopped them): they wait unclaimed and
    /// go out first, in order, when delivery resumes.
    async fn release(&self, cases: Vec<BufferedCase>) {
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
                self.inner().limiter.acquire(&suspect.key).await;
                let work = VecDeque::from([suspect.group]);
                match self
                    .send(&suspect.key, &suspect.secret, work, probing)
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
            self.inner().limiter.acquire(&key).await;
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
            match self.send(&key, &secret, work, probing).await {
                Sent::Done => {}
                Sent::Paused(mut left) => {
                    left.append(&mut self.carry);
                    self.release(left).await;
                }
                Sent::Stopped => break,
            }
        }
    }

    /// Sends `batch` until each case is acked or dead-lettered, or a pause or shutdown stops it.
    /// The first request has its grant already.
    async fn send(
        &mut self,
        key: &str,
        secret: &Secret,
        mut work: VecDeque<Group>,
        mut probing: Probing,
    ) -> Sent {
        let inner = self.delivery.inner.clone();
        let config = &inner.config;
        let queue = self.queue.clone();
        let mut granted = true;
        while !work.is_empty() {
            if self.stopping() {
                return Sent::Stopped;
            }
            if !granted {
                inner.limiter.acquire(key).await;
                if self.stopping() {
                    return Sent::Stopped;
                }
            }
            granted = false;
            let others = work.len() > 1;
            let group = work.front_mut().expect("not empty");
            if group.ambiguous {
                metrics::counter!(prometheus::AMBIGUOUS_RESENDS, "queue" => queue.clone())
                    .increment(group.cases.len() as u64);
            }
            let records: Vec<&CaseRecord> = group.cases.iter().map(|c| &c.record).collect();
            let answer = inner.client.create_cases(secret, &queue, &records).await;
            if let Some(reset) = window_spent(&answer, inner.limiter.rate()) {
                inner.limiter.pause(key, reset).await;
            }
            let status = match &answer {
                ApiAnswer::Response { status, .. } => status.to_string(),
                ApiAnswer::Transport(_) => "0".to_string(),
            };
            metrics::counter!(prometheus::API_RESPONSES, "status" => status).increment(1);
            match decide(&answer, group.cases.len()) {
                Action::Ack => {
                    let group = work.pop_front().expect("not empty");
                    let ids = group.ids();
                    inner.health.record(key, true, &queue, &ids);
                    self.ack(&ids).await;
                    self.record_delivered(&group.cases);
                    tracing::info!(%queue, key, cases = ids.len(), "batch delivered");
                    if probing.key {
                        inner.limiter.resume(&key_pause(key)).await;
                        tracing::info!(%queue, key, "the API accepts the key again; resuming");
                    }
                    if probing.queue {
                        inner.limiter.resume(&queue_pause(&queue)).await;
                        tracing::info!(%queue, "the API knows the queue again; resuming");
                    }
                    probing = Probing::default();
                }
                Action::ResendAfter(wait) => {
                    metrics::counter!(prometheus::API_RATE_LIMITED).increment(1);
                    let reason = format!("429 from the API; key paused {}s", wait.as_secs());
                    self.record_error(reason.clone());
                    tracing::warn!(%queue, key, wait_ms = wait.as_millis() as u64, "429 from the API; pausing the key");
                    inner.limiter.pause(key, wait).await;
                    inner
                        .limiter
                        .hold(&key_pause(key), PauseKind::RateLimited, wait, &reason)
                        .await;
                    // The batch keeps its claim (renewed) and is sent again once the pause
                    // ends: the next grant waits for it.
                }
                Action::Backoff => {
                    let summary = answer_summary(&answer);
                    group.ambiguous = true;
                    group.failures += 1;
                    group.last_answer = summary.clone();
                    let ids = group.ids();
                    if group.cases.len() == 1
                        && inner.health.verdict(key, &queue, &ids[0]) == Some(true)
                    {
                        group.counted += 1;
                    }
                    inner.health.record(key, false, &queue, &ids);
                    // Each group backs off on its own failures: a bisected half starts
                    // afresh (it is a different request), a case retried in place slows down.
                    let attempt = group.failures - 1;
                    self.record_error(format!("{summary}; retrying"));
                    let mut step = after_failure(
                        group.cases.len(),
                        group.failures,
                        group.counted,
                        config.max_attempts,
                        others || self.suspects.len() < MAX_SUSPECTS,
                    );
                    if step == AfterFailure::Retry && group.aside && !others {
                        step = AfterFailure::SetAside;
                    }
                    match step {
                        AfterFailure::Retry => {}
                        AfterFailure::Split => {
                            let group = work.pop_front().expect("not empty");
                            tracing::info!(%queue, cases = group.cases.len(), failures = group.failures, "a batch keeps failing; bisecting it to find a poison case");
                            let (left, right) = group.halves();
                            work.push_front(right);
                            work.push_front(left);
                        }
                        AfterFailure::SetAside if work.len() > 1 => {
                            let group = work.pop_front().expect("not empty");
                            work.push_back(group);
                        }
                        AfterFailure::SetAside => {
                            // The last of its batch: keep it claimed and retry it on its own
                            // backoff while the rest of the queue goes on (whose answers also
                            // tell a poison case from an outage).
                            let mut group = work.pop_front().expect("not empty");
                            group.aside = true;
                            let delay = config
                                .backoff
                                .delay(group.failures.saturating_sub(1), config.jitter.sample());
                            tracing::warn!(%queue, case = %group.cases[0].id, failures = group.failures, retry_in_ms = delay.as_millis() as u64, "a case keeps failing; retrying it aside while the queue goes on");
                            self.suspects.push_back(Suspect {
                                group,
                                key: key.to_string(),
                                secret: secret.clone(),
                                due: Instant::now() + delay,
                            });
                            continue;
                        }
                        AfterFailure::DeadLetter => {
                            let group = work.pop_front().expect("not empty");
                            let reason = format!(
                                "failed {} times while the API accepted other cases; last answer: {}",
                                group.failures, group.last_answer
                            );
                            metrics::counter!(prometheus::CASES_DEAD_LETTERED, "kind" => prometheus::DEAD_LETTER_REFUSED, "queue" => queue.clone()).increment(1);
                            self.record_error(format!("case dead-lettered: {reason}"));
                            let status = match &answer {
                                ApiAnswer::Response { status, .. } => *status,
                                ApiAnswer::Transport(_) => 0,
                            };
                            self.dead_letter(group.cases, status, reason, group.failures)
                                .await;
                            continue;
                        }
                    }
                    let delay = config.backoff.delay(attempt, config.jitter.sample());
                    tracing::warn!(%queue, key, answer = %summary, retry_in_ms = delay.as_millis() as u64, "delivery failed; retrying");
                    if !self.sleep(delay).await {
                        return Sent::Stopped;
                    }
                }
                Action::Split => {
                    let group = work.pop_front().expect("not empty");
                    tracing::info!(%queue, cases = group.cases.len(), "API refused the batch; splitting it");
                    let (left, right) = group.halves();
                    work.push_front(right);
                    work.push_front(left);
                }
                Action::DeadLetter { status, reason } => {
                    let group = work.pop_front().expect("not empty");
                    metrics::counter!(prometheus::CASES_DEAD_LETTERED, "kind" => prometheus::DEAD_LETTER_REFUSED, "queue" => queue.clone())
                        .increment(group.cases.len() as u64);
                    self.record_error(format!("case dead-lettered: {reason}"));
                    let attempts = group.failures + 1;
                    self.dead_letter(group.cases, status, reason, attempts)
                        .await;
                }
                Action::PauseKey { status, reason } => {
                    tracing::error!(%queue, key, status, %reason, probe_in_s = config.probe_interval.as_secs(), "the API refuses this key; every queue of the key is paused");
                    inner
                        .limiter
                        .hold(
                            &key_pause(key),
                            PauseKind::KeyRefused,
                            config.probe_interval,
                            &reason,
                        )
                        .await;
                    self.record_error(format!("key paused: {reason}"));
                    return Sent::Paused(work.into_iter().flat_map(|g| g.cases).collect());
                }
                Action::PauseQueue { reason } => {
                    tracing::error!(%queue, key, %reason, probe_in_s = config.probe_interval.as_secs(), "the API does not know this queue; it is paused");
                    inner
                        .limiter
                        .hold(
                            &queue_pause(&queue),
                            PauseKind::QueueUnknown,
                            config.probe_interval,
                            &reason,
                        )
                        .await;
                    self.record_error(format!("queue paused: {reason}"));
                    return Sent::Paused(work.into_iter().flat_map(|g| g.cases).collect());
                }
            }
        }
        Sent::Done
    }

    fn record_delivered(&self, cases: &[BufferedCase]) {
        let inner = self.inner();
        let now = (inner.config.now_ms)();
        metrics::counter!(prometheus::CASES_DELIVERED, "queue" => self.queue.clone())
            .increment(cases.len() as u64);
        metrics::histogram!(prometheus::BATCH_SIZE).record(cases.len() as f64);
        let latency = metrics::histogram!(prometheus::END_TO_END);
        for case in cases {
            latency.record(now.saturating_sub(case.record.meta.received_at_ms) as f64 / 1000.0);
        }
        inner
            .activity
            .delivered(&self.queue, cases.len() as u64, now);
    }

    fn record_error(&self, error: String) {
        let inner = self.inner();
        inner
            .activity
            .error(&self.queue, error, (inner.config.now_ms)());
    }

    /// Acks until the buffer takes it; if it never does (shutdown first) the batch is sent again
    /// later: the one duplicate at-least-once allows.
    async fn ack(&self, ids: &[CaseId]) {
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

    async fn dead_letter(
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

fn answer_summary(answer: &ApiAnswer) -> String {
    match answer {
        ApiAnswer::Response {
            status,
            error: Some((code, message)),
            ..
        } => format!("HTTP {status} {code}: {message}"),
        ApiAnswer::Response { status, .. } => format!("HTTP {status}"),
        ApiAnswer::Transport(reason) => reason.clone(),
    }
}

#[cfg(test)]
mod tests;
