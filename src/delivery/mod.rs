//! Delivery: buffered cases to the Duvo API in batches of up to 100, inside the rate limit.
//!
//! Invariants:
//! - A case leaves the buffer only after the API accepted it ([`Buffer::ack`]) or refused it on
//!   its own ([`Buffer::dead_letter_cases`]); a batch the API refused is split in halves down to
//!   single cases, so only the refused ones are dead-lettered.
//! - Claimed cases that are never acked (the process died, or the key was paused) are reclaimed
//!   by any replica after `visibility_timeout`. Delivery is at-least-once: a crash between the
//!   API's 2xx and the ack re-sends that one batch, and nothing else is ever sent twice.
//! - Every request first takes a grant from the key's [`RateLimiter`]; 429s and
//!   `x-ratelimit-remaining: 0` pause the whole key.
//!
//! Shape: a supervisor watches which queues hold cases and runs one worker per queue. A worker
//! claims up to `max_batch` cases, lets a burst coalesce for `linger` when the batch is not full,
//! waits for a grant, tops the batch up with what arrived meanwhile (so batches fill to 100 by
//! themselves under backlog), and sends it. Workers of queues sharing a key wait for grants in
//! arrival order, which shares the key's budget fairly.

pub mod client;
pub mod limiter;
pub mod policy;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::buffer::{Buffer, BufferedCase, CaseRecord, DeadLetterKind, DeadLetterRecord};
use crate::clock::now_ms;
use crate::prometheus;
use crate::secret::Secret;
use client::DuvoClient;
use limiter::{RateLimiter, key_id};
use policy::{Action, ApiAnswer, Backoff, decide};

/// How delivery paces, batches and retries.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    pub max_batch: usize,
    pub max_request_bytes: usize,
    pub linger: Duration,
    pub poll_interval: Duration,
    pub visibility_timeout: Duration,
    pub backoff: Backoff,
    pub probe_interval: Duration,
    /// This process's consumer name in the buffer.
    pub consumer: String,
}

/// The API keys cases can name: the default one and named ones (per team).
#[derive(Debug, Clone, Default)]
pub struct ApiKeys {
    pub default: Option<Secret>,
    pub named: HashMap<String, Secret>,
}

impl ApiKeys {
    /// The key for a case, with its id.
    fn resolve(&self, name: Option<&str>) -> Option<(String, Secret)> {
        let key = match name {
            None => self.default.clone()?,
            Some(name) => self.named.get(name)?.clone(),
        };
        Some((key_id(&key), key))
    }
}

/// Handle to the delivery engine; cheap to clone.
#[derive(Clone)]
pub struct Delivery {
    inner: Arc<Inner>,
}

struct Inner {
    buffer: Buffer,
    client: DuvoClient,
    limiter: RateLimiter,
    keys: ApiKeys,
    config: DeliveryConfig,
    /// Poked by ingress after every enqueue, so an idle gateway delivers at once.
    wake: Arc<Notify>,
    paused_keys: Mutex<HashMap<String, Instant>>,
    paused_queues: Mutex<HashMap<String, Instant>>,
    activity: Mutex<HashMap<String, Activity>>,
    shutdown: watch::Receiver<bool>,
}

#[derive(Default)]
struct Activity {
    delivered_total: u64,
    /// (delivered at ms, cases) within the last minute.
    recent: std::collections::VecDeque<(u64, u64)>,
    last_error: Option<(u64, String)>,
}

/// What `casegate status` shows about a queue's delivery.
#[derive(Debug, Clone, serde::Serialize)]
pub struct QueueActivity {
    pub queue: String,
    pub delivered_total: u64,
    pub delivered_last_minute: u64,
    pub last_error: Option<String>,
    pub last_error_at_ms: Option<u64>,
    pub paused_for_ms: Option<u64>,
}

type Boxed<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

impl Delivery {
    pub fn new(
        buffer: Buffer,
        client: DuvoClient,
        limiter: RateLimiter,
        keys: ApiKeys,
        config: DeliveryConfig,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Delivery {
            inner: Arc::new(Inner {
                buffer,
                client,
                limiter,
                keys,
                config,
                wake: Arc::new(Notify::new()),
                paused_keys: Mutex::new(HashMap::new()),
                paused_queues: Mutex::new(HashMap::new()),
                activity: Mutex::new(HashMap::new()),
                shutdown,
            }),
        }
    }

    /// What ingress pokes after writing cases.
    pub fn waker(&self) -> Arc<Notify> {
        self.inner.wake.clone()
    }

    /// Runs the supervisor until shutdown, then waits for workers to finish their current send.
    pub async fn run(self) {
        let mut workers: HashMap<String, (Arc<Notify>, tokio::task::JoinHandle<()>)> =
            HashMap::new();
        let mut shutdown = self.inner.shutdown.clone();
        let mut buffer_down_logged = false;
        while !*shutdown.borrow() {
            match self.inner.buffer.queues().await {
                Ok(queues) => {
                    buffer_down_logged = false;
                    for queue in queues {
                        let running = workers
                            .get(&queue)
                            .is_some_and(|(_, task)| !task.is_finished());
                        if !running {
                            let notify = Arc::new(Notify::new());
                            let task =
                                tokio::spawn(self.clone().work(queue.clone(), notify.clone()));
                            workers.insert(queue, (notify, task));
                        }
                    }
                }
                Err(error) if !buffer_down_logged => {
                    buffer_down_logged = true;
                    tracing::error!(error = %error, "delivery cannot read the buffer; retrying");
                }
                Err(_) => {}
            }
            for (notify, _) in workers.values() {
                notify.notify_one();
            }
            tokio::select! {
                _ = self.inner.wake.notified() => {}
                _ = tokio::time::sleep(self.inner.config.poll_interval) => {}
                _ = shutdown.changed() => {}
            }
        }
        for (_, (notify, task)) in workers {
            notify.notify_one();
            let _ = task.await;
        }
    }

    fn stopping(&self) -> bool {
        *self.inner.shutdown.borrow()
    }

    /// Sleeps for `duration` or until shutdown; false when shutting down.
    async fn pause_for(&self, duration: Duration) -> bool {
        let mut shutdown = self.inner.shutdown.clone();
        tokio::select! {
            _ = tokio::time::sleep(duration) => !self.stopping(),
            _ = shutdown.wait_for(|stop| *stop) => false,
        }
    }

    fn paused(map: &Mutex<HashMap<String, Instant>>, name: &str) -> Option<Duration> {
        let until = *map.lock().expect("pause lock").get(name)?;
        until
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
    }

    fn pause(map: &Mutex<HashMap<String, Instant>>, name: &str, duration: Duration) {
        map.lock()
            .expect("pause lock")
            .insert(name.to_string(), Instant::now() + duration);
    }

    /// One queue's worker: claim, linger, wait for a grant, top up, send; until the queue stays
    /// empty for a while or shutdown.
    async fn work(self, queue: String, notify: Arc<Notify>) {
        let config = &self.inner.config;
        let mut carry: Vec<BufferedCase> = Vec::new();
        let mut idle_since = Instant::now();
        while !self.stopping() {
            if let Some(wait) = Self::paused(&self.inner.paused_queues, &queue) {
                if !self.pause_for(wait).await {
                    break;
                }
                continue;
            }
            let mut batch = std::mem::take(&mut carry);
            self.fill(&queue, &mut batch).await;
            if batch.is_empty() {
                if idle_since.elapsed() > Duration::from_secs(60) {
                    return;
                }
                let mut shutdown = self.inner.shutdown.clone();
                tokio::select! {
                    _ = notify.notified() => {}
                    _ = tokio::time::sleep(config.poll_interval) => {}
                    _ = shutdown.wait_for(|stop| *stop) => {}
                }
                continue;
            }
            idle_since = Instant::now();
            if batch.len() < config.max_batch {
                let oldest_age = age(&batch);
                if oldest_age < config.linger {
                    if !self.pause_for(config.linger - oldest_age).await {
                        break;
                    }
                    self.fill(&queue, &mut batch).await;
                }
            }
            let key_name = batch[0].record.api_key_name.clone();
            carry.extend(extract_if(&mut batch, |c| {
                c.record.api_key_name != key_name
            }));
            let Some((key, secret)) = self.inner.keys.resolve(key_name.as_deref()) else {
                tracing::error!(%queue, key = key_name.as_deref().unwrap_or("default"), "no Duvo API key configured for this queue's cases; delivery paused");
                Self::pause(&self.inner.paused_queues, &queue, config.probe_interval);
                carry.clear();
                continue;
            };
            if let Some(wait) = Self::paused(&self.inner.paused_keys, &key) {
                carry.clear();
                if !self.pause_for(wait).await {
                    break;
                }
                continue;
            }
            self.inner.limiter.acquire(&key).await;
            if self.stopping() {
                break;
            }
            self.fill(&queue, &mut batch).await;
            carry.extend(extract_if(&mut batch, |c| {
                c.record.api_key_name != key_name
            }));
            carry.splice(0..0, self.cap_request_size(&mut batch));
            self.deliver(&queue, &key, &secret, batch, true).await;
        }
        // Whatever this worker still holds stays claimed in the buffer and is reclaimed after the
        // visibility timeout (or on restart, for the embedded buffer).
    }

    /// Adds cases to `batch` up to `max_batch`: first those a dead consumer left idle, then new
    /// ones.
    async fn fill(&self, queue: &str, batch: &mut Vec<BufferedCase>) {
        let config = &self.inner.config;
        let want = config.max_batch.saturating_sub(batch.len());
        if want == 0 {
            return;
        }
        let buffer = &self.inner.buffer;
        match buffer
            .reclaim(queue, &config.consumer, config.visibility_timeout, want)
            .await
        {
            Ok(reclaimed) => batch.extend(reclaimed),
            Err(error) => tracing::warn!(%queue, error = %error, "reclaim failed"),
        }
        let want = config.max_batch.saturating_sub(batch.len());
        if want > 0 {
            match buffer.claim(queue, &config.consumer, want).await {
                Ok(claimed) => batch.extend(claimed),
                Err(error) => tracing::warn!(%queue, error = %error, "claim failed"),
            }
        }
    }

    /// Keeps the request under `max_request_bytes` (a lone oversize case is still sent: the API
    /// decides, and a refusal dead-letters it); returns what did not fit.
    fn cap_request_size(&self, batch: &mut Vec<BufferedCase>) -> Vec<BufferedCase> {
        let empty = DuvoClient::body(&[]).len();
        let mut size = empty;
        let mut fit = 0;
        for case in batch.iter() {
            // The case's JSON plus the comma that separates it from the previous one.
            let one = DuvoClient::body(&[&case.record]).len() - empty + 1;
            if fit > 0 && size + one > self.inner.config.max_request_bytes {
                break;
            }
            size += one;
            fit += 1;
        }
        batch.split_off(fit)
    }

    /// Sends `cases` until each is acked or dead-lettered, or the key/queue is paused.
    fn deliver<'a>(
        &'a self,
        queue: &'a str,
        key: &'a str,
        secret: &'a Secret,
        mut cases: Vec<BufferedCase>,
        granted: bool,
    ) -> Boxed<'a> {
        Box::pin(async move {
            let inner = &self.inner;
            let mut granted = granted;
            let mut attempt = 0;
            loop {
                if self.stopping() {
                    return;
                }
                if !granted {
                    inner.limiter.acquire(key).await;
                }
                granted = false;
                let records: Vec<&CaseRecord> = cases.iter().map(|c| &c.record).collect();
                let answer = inner
                    .client
                    .create_cases(secret, queue, DuvoClient::body(&records))
                    .await;
                if let ApiAnswer::Response { rate, .. } = &answer
                    && rate.remaining == Some(0)
                    && rate
                        .limit
                        .is_none_or(|limit| limit < u64::from(inner.limiter.rate()))
                {
                    // The API counts less than casegate's own limiter allows, and its window is
                    // spent: hold the key until it resets. (When the API's limit is at least ours,
                    // our sliding window already paces exactly; pausing for the whole-second
                    // `reset` would waste up to a second per window.)
                    let reset = rate.reset.unwrap_or(Duration::from_secs(1));
                    inner.limiter.pause(key, reset).await;
                }
                let status = match &answer {
                    ApiAnswer::Response { status, .. } => status.to_string(),
                    ApiAnswer::Transport(_) => "0".to_string(),
                };
                metrics::counter!(prometheus::API_RESPONSES, "status" => status).increment(1);
                match decide(&answer, cases.len()) {
                    Action::Ack => {
                        self.ack(queue, &cases).await;
                        self.record_delivered(queue, key, &cases);
                        tracing::info!(%queue, key, cases = cases.len(), "batch delivered");
                        return;
                    }
                    Action::ResendAfter(wait) => {
                        metrics::counter!(prometheus::API_RATE_LIMITED).increment(1);
                        self.record_error(
                            queue,
                            format!("429 from the API; key paused {}s", wait.as_secs()),
                        );
                        tracing::warn!(%queue, key, wait_ms = wait.as_millis() as u64, "429 from the API; pausing the key");
                        inner.limiter.pause(key, wait).await;
                    }
                    Action::Backoff => {
                        let delay = inner.config.backoff.delay(attempt, rand::random::<f64>());
                        attempt = attempt.saturating_add(1);
                        tracing::warn!(%queue, key, answer = ?answer_summary(&answer), retry_in_ms = delay.as_millis() as u64, "delivery failed; retrying");
                        self.record_error(queue, format!("{}; retrying", answer_summary(&answer)));
                        if !self.pause_for(delay).await {
                            return;
                        }
                    }
                    Action::Split => {
                        let right = cases.split_off(cases.len() / 2);
                        tracing::info!(%queue, left = cases.len(), right = right.len(), "API refused the batch; splitting it");
                        self.deliver(queue, key, secret, cases, false).await;
                        self.deliver(queue, key, secret, right, false).await;
                        return;
                    }
                    Action::DeadLetter { status, reason } => {
                        metrics::counter!(prometheus::CASES_DEAD_LETTERED, "kind" => prometheus::DEAD_LETTER_REFUSED, "queue" => queue.to_string()).increment(cases.len() as u64);
                        self.record_error(queue, format!("case dead-lettered: {reason}"));
                        self.dead_letter(queue, cases, status, reason).await;
                        return;
                    }
                    Action::PauseKey { status, reason } => {
                        tracing::error!(%queue, key, status, %reason, probe_in_s = inner.config.probe_interval.as_secs(), "the API refuses this key; every queue of the key is paused");
                        Self::pause(&inner.paused_keys, key, inner.config.probe_interval);
                        metrics::gauge!(prometheus::PAUSED, "kind" => "key", "name" => key.to_string()).set(1.0);
                        self.record_error(queue, format!("key paused: {reason}"));
                        return;
                    }
                    Action::PauseQueue { reason } => {
                        tracing::error!(%queue, key, %reason, probe_in_s = inner.config.probe_interval.as_secs(), "the API does not know this queue; it is paused");
                        Self::pause(&inner.paused_queues, queue, inner.config.probe_interval);
                        metrics::gauge!(prometheus::PAUSED, "kind" => "queue", "name" => queue.to_string()).set(1.0);
                        self.record_error(queue, format!("queue paused: {reason}"));
                        return;
                    }
                }
            }
        })
    }

    fn record_delivered(&self, queue: &str, key: &str, cases: &[BufferedCase]) {
        let now = now_ms();
        metrics::counter!(prometheus::CASES_DELIVERED, "queue" => queue.to_string())
            .increment(cases.len() as u64);
        metrics::histogram!(prometheus::BATCH_SIZE).record(cases.len() as f64);
        let latency = metrics::histogram!(prometheus::END_TO_END);
        for case in cases {
            latency.record(now.saturating_sub(case.record.meta.received_at_ms) as f64 / 1000.0);
        }
        metrics::gauge!(prometheus::PAUSED, "kind" => "key", "name" => key.to_string()).set(0.0);
        metrics::gauge!(prometheus::PAUSED, "kind" => "queue", "name" => queue.to_string())
            .set(0.0);
        let mut activity = self.inner.activity.lock().expect("activity lock");
        let entry = activity.entry(queue.to_string()).or_default();
        entry.delivered_total += cases.len() as u64;
        entry.recent.push_back((now, cases.len() as u64));
        while entry
            .recent
            .front()
            .is_some_and(|(at, _)| now.saturating_sub(*at) > 60_000)
        {
            entry.recent.pop_front();
        }
    }

    fn record_error(&self, queue: &str, error: String) {
        let mut activity = self.inner.activity.lock().expect("activity lock");
        activity.entry(queue.to_string()).or_default().last_error = Some((now_ms(), error));
    }

    /// Per queue: delivered in the last minute, in total, the last error and pause state.
    pub fn activity(&self) -> Vec<QueueActivity> {
        let now = now_ms();
        let activity = self.inner.activity.lock().expect("activity lock");
        let mut out: Vec<QueueActivity> = activity
            .iter()
            .map(|(queue, a)| QueueActivity {
                queue: queue.clone(),
                delivered_total: a.delivered_total,
                delivered_last_minute: a
                    .recent
                    .iter()
                    .filter(|(at, _)| now.saturating_sub(*at) <= 60_000)
                    .map(|(_, n)| n)
                    .sum(),
                last_error: a.last_error.as_ref().map(|(_, e)| e.clone()),
                last_error_at_ms: a.last_error.as_ref().map(|(at, _)| *at),
                paused_for_ms: Self::paused(&self.inner.paused_queues, queue)
                    .map(|d| d.as_millis() as u64),
            })
            .collect();
        out.sort_by(|a, b| a.queue.cmp(&b.queue));
        out
    }

    /// API keys (by id) currently paused after a 401/403, with the time left.
    pub fn paused_keys(&self) -> Vec<(String, u64)> {
        let keys: Vec<String> = self
            .inner
            .paused_keys
            .lock()
            .expect("pause lock")
            .keys()
            .cloned()
            .collect();
        keys.into_iter()
            .filter_map(|k| {
                Self::paused(&self.inner.paused_keys, &k).map(|d| (k, d.as_millis() as u64))
            })
            .collect()
    }

    /// Acks until the buffer takes it; if it never does (shutdown first) the batch is sent again
    /// later: the one duplicate at-least-once allows.
    async fn ack(&self, queue: &str, cases: &[BufferedCase]) {
        let ids: Vec<String> = cases.iter().map(|c| c.id.clone()).collect();
        self.until_written(queue, "ack", || self.inner.buffer.ack(queue, &ids))
            .await;
    }

    /// Retries a buffer write with backoff until it succeeds or the process shuts down (then the
    /// cases stay claimed and are delivered again later).
    async fn until_written<T, F, Fut>(&self, queue: &str, what: &str, mut write: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, crate::buffer::BufferError>>,
    {
        let mut attempt = 0;
        while let Err(error) = write().await {
            tracing::warn!(%queue, error = %error, "{what} failed; retrying");
            let delay = self
                .inner
                .config
                .backoff
                .delay(attempt, rand::random::<f64>());
            attempt += 1;
            if !self.pause_for(delay).await {
                return;
            }
        }
    }

    async fn dead_letter(
        &self,
        queue: &str,
        cases: Vec<BufferedCase>,
        status: u16,
        reason: String,
    ) {
        let now = now_ms();
        tracing::warn!(%queue, status, %reason, cases = cases.len(), "API refused a case; moved to the dead-letter store");
        let letters: Vec<_> = cases
            .into_iter()
            .map(|case| {
                let record = DeadLetterRecord {
                    source: case.record.meta.source.clone(),
                    reason: reason.clone(),
                    created_at_ms: now,
                    kind: DeadLetterKind::Refused {
                        case: case.record,
                        status,
                        attempts: case.deliveries,
                    },
                };
                (case.id, record)
            })
            .collect();
        self.until_written(queue, "dead-lettering", || {
            self.inner.buffer.dead_letter_cases(queue, letters.clone())
        })
        .await;
    }
}

/// How long the oldest case of `batch` has waited since it was received.
fn age(batch: &[BufferedCase]) -> Duration {
    let now = now_ms();
    let oldest = batch
        .iter()
        .map(|c| c.record.meta.received_at_ms)
        .min()
        .unwrap_or(now);
    Duration::from_millis(now.saturating_sub(oldest))
}

fn extract_if<T>(items: &mut Vec<T>, predicate: impl Fn(&T) -> bool) -> Vec<T> {
    let (taken, kept): (Vec<T>, Vec<T>) = std::mem::take(items)
        .into_iter()
        .partition(|item| predicate(item));
    *items = kept;
    taken
}

fn answer_summary(answer: &ApiAnswer) -> String {
    match answer {
        ApiAnswer::Response { status, .. } => format!("HTTP {status}"),
        ApiAnswer::Transport(reason) => reason.clone(),
    }
}
