//! Delivery: buffered cases to the Duvo API in batches of up to 100, inside the rate limit.
//!
//! Invariants:
//! - A case leaves the buffer only after the API accepted it ([`Buffer::ack`]) or refused it on
//!   its own ([`Buffer::dead_letter_cases`]); a batch the API refused is split in halves down to
//!   single cases, so only the refused ones are dead-lettered.
//! - A claim stays exclusive while its holder holds it: a worker renews the claims of every case
//!   it holds (in backoff, behind a 429, in flight) every third of the visibility timeout, so
//!   only a stopped consumer's claims expire and are reclaimed by another replica.
//! - A paused key or queue claims nothing. Pauses (429, 401/403 key, 404 queue) live in the
//!   limiter's shared pause table (Redis on the Redis backend), so every replica stops at once
//!   and one probe per `probe_interval` goes out for the whole fleet; the cases a pause stops
//!   are released, and go out first, in order, when it ends.
//! - A poison case cannot stall its queue: a batch failing with 5xx/timeouts is bisected, and a
//!   single case that failed `max_attempts` times while the key's other requests succeeded is
//!   dead-lettered with the last answer. A whole-API outage never dead-letters anything.
//! - Each consumer has a stable name, held by one live process ([`lease`], Redis); on start it
//!   resumes the cases it held before at once.
//!
//! Shape: a supervisor ([`Delivery::run`]) runs one [`worker`] per queue and keeps the paused
//! gauge in step with the pause table; the [`batcher`] assembles batches; [`policy`] decides
//! what an answer means (pure); [`health`] tells a poison case from an outage; [`activity`]
//! keeps what `status` shows. Time is tokio's (paused in tests) and jitter is injected; requests
//! go through [`client::Api`], the HTTP client or an in-process stand-in, so every rule above is
//! unit-tested on paused time (`worker/tests/`).

pub mod activity;
pub mod batcher;
pub mod client;
pub mod health;
pub mod lease;
pub mod limiter;
pub mod policy;
mod worker;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};

use crate::buffer::Buffer;
use crate::config::{Config, DeliverySettings, DuvoConfig};
use crate::prometheus;
use crate::secret::Secret;
use activity::Activity;
pub use activity::QueueActivity;
use client::Api;
use health::Health;
use limiter::{PauseInfo, PauseKind, RateLimiter, key_id};
use policy::Backoff;

/// Uniform samples in [0, 1) for backoff jitter; injected so tests can pin them.
#[derive(Clone)]
pub struct Jitter(Arc<dyn Fn() -> f64 + Send + Sync>);

impl Jitter {
    pub fn random() -> Jitter {
        Jitter(Arc::new(rand::random::<f64>))
    }

    pub fn fixed(value: f64) -> Jitter {
        Jitter(Arc::new(move || value))
    }

    pub fn sample(&self) -> f64 {
        (self.0)()
    }
}

impl std::fmt::Debug for Jitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Jitter")
    }
}

/// How delivery paces, batches and retries.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    pub max_batch: usize,
    pub max_request_bytes: usize,
    pub linger: Duration,
    pub poll_interval: Duration,
    /// A queue that stayed empty this long is forgotten by the buffer (Redis registry).
    pub queue_retention: Duration,
    pub visibility_timeout: Duration,
    pub backoff: Backoff,
    pub probe_interval: Duration,
    /// Transient failures of a single case, while the API is otherwise healthy, before it is
    /// dead-lettered.
    pub max_attempts: u32,
    /// This process's consumer name in the buffer: stable across restarts (the host name by
    /// default), unique per replica.
    pub consumer: String,
    pub jitter: Jitter,
    /// Wall-clock milliseconds (case ages, status); injected for tests.
    pub now_ms: fn() -> u64,
}

impl DeliveryConfig {
    /// The delivery configuration `[delivery]` asks for; `queue_retention` is the buffer's
    /// (`buffer.queue_retention`), as delivery prunes the queues it saw empty.
    pub fn from_settings(settings: &DeliverySettings, queue_retention: Duration) -> Self {
        DeliveryConfig {
            max_batch: settings.max_batch,
            max_request_bytes: settings.max_request_bytes,
            linger: settings.linger,
            poll_interval: settings.poll_interval,
            queue_retention,
            visibility_timeout: settings.visibility_timeout,
            backoff: Backoff {
                base: settings.backoff_base,
                max: settings.backoff_max,
            },
            probe_interval: settings.probe_interval,
            max_attempts: settings.max_attempts,
            consumer: settings.consumer.clone(),
            jitter: Jitter::random(),
            now_ms: crate::clock::now_ms,
        }
    }

    /// How often held claims are renewed: a third of the visibility timeout, so two renewals
    /// can be late before a claim expires.
    pub fn renew_every(&self) -> Duration {
        (self.visibility_timeout / 3).max(Duration::from_millis(10))
    }
}

/// The API keys cases can name: the default one and named ones (per team).
#[derive(Debug, Clone, Default)]
pub struct ApiKeys {
    pub default: Option<Secret>,
    pub named: HashMap<String, Secret>,
}

impl ApiKeys {
    /// The keys `[duvo]` configures.
    pub fn from_config(duvo: &DuvoConfig) -> Self {
        ApiKeys {
            default: duvo.api_key.clone(),
            named: duvo.api_keys.clone(),
        }
    }

    /// The key for a case, with its id.
    fn resolve(&self, name: Option<&str>) -> Option<(String, Secret)> {
        let key = match name {
            None => self.default.clone()?,
            Some(name) => self.named.get(name)?.clone(),
        };
        Some((key_id(&key), key))
    }

    /// The configured name of the key with id `id`: `default` for the default key. What the
    /// paused gauge is labelled with, so it names the key the way the configuration does (and
    /// the way its zero series were registered), never by the key itself.
    fn name_of(&self, id: &str) -> Option<String> {
        if self.default.as_ref().is_some_and(|k| key_id(k) == id) {
            return Some("default".to_string());
        }
        self.named
            .iter()
            .find(|(_, k)| key_id(k) == id)
            .map(|(name, _)| name.clone())
    }
}

/// Handle to the delivery engine; cheap to clone.
#[derive(Clone)]
pub struct Delivery {
    inner: Arc<Inner>,
}

struct Inner {
    buffer: Buffer,
    client: Api,
    limiter: RateLimiter,
    keys: ApiKeys,
    config: DeliveryConfig,
    /// Poked by ingress after every enqueue, so an idle gateway delivers at once.
    wake: Arc<Notify>,
    activity: Activity,
    health: Health,
    shutdown: watch::Receiver<bool>,
}

impl Delivery {
    /// The delivery engine `config` asks for over `buffer`: the limiter is shared through Redis
    /// when the buffer is, in-process otherwise.
    pub fn from_config(
        config: &Config,
        buffer: &Buffer,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Self, String> {
        let limits = limiter::LimiterConfig {
            rate: config.delivery.rate,
            window: config.delivery.window,
            margin: config.delivery.margin,
            answer_within: config.duvo.request_timeout,
        };
        let limiter = match buffer {
            Buffer::Redis(redis) => {
                let (conn, prefix, timeout) = redis.connection_for("limiter");
                RateLimiter::redis(limits, conn, prefix, timeout)
            }
            Buffer::Embedded(_) => RateLimiter::local(limits),
        };
        let client = client::DuvoClient::new(
            &config.duvo.base_url,
            config.duvo.connect_timeout,
            config.duvo.request_timeout,
        )?;
        Ok(Delivery::new(
            buffer.clone(),
            client,
            limiter,
            ApiKeys::from_config(&config.duvo),
            DeliveryConfig::from_settings(&config.delivery, config.buffer.queue_retention),
            shutdown,
        ))
    }

    pub fn new(
        buffer: Buffer,
        client: impl Into<Api>,
        limiter: RateLimiter,
        keys: ApiKeys,
        config: DeliveryConfig,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Delivery {
            inner: Arc::new(Inner {
                buffer,
                client: client.into(),
                limiter,
                keys,
                config,
                wake: Arc::new(Notify::new()),
                activity: Activity::default(),
                health: Health::default(),
                shutdown,
            }),
        }
    }

    /// What ingress pokes after writing cases.
    pub fn waker(&self) -> Arc<Notify> {
        self.inner.wake.clone()
    }

    /// Runs the supervisor until shutdown, then waits for workers to finish their current send.
    ///
    /// Every `poll_interval` it reads the queues with work (one read of the buffer's ready set,
    /// whatever the number of queues ever used) and starts a worker for each one without. A
    /// worker stops once its queue is drained, so tasks and memory follow the queues with work.
    pub async fn run(self) {
        let mut workers: HashMap<String, (Arc<Notify>, tokio::task::JoinHandle<()>)> =
            HashMap::new();
        let mut shutdown = self.inner.shutdown.clone();
        let mut buffer_down_logged = false;
        let mut gauged: HashSet<(&'static str, String)> = HashSet::new();
        let mut gauge_at = tokio::time::Instant::now();
        let prune_every = (self.inner.config.queue_retention / 4)
            .clamp(Duration::from_millis(100), Duration::from_secs(60));
        let mut prune_at = tokio::time::Instant::now() + prune_every;
        let mut woken = true;
        while !*shutdown.borrow() {
            workers.retain(|_, (_, task)| !task.is_finished());
            match self.inner.buffer.queues().await {
                Ok(queues) => {
                    buffer_down_logged = false;
                    for queue in queues {
                        if let std::collections::hash_map::Entry::Vacant(slot) =
                            workers.entry(queue)
                        {
                            let notify = Arc::new(Notify::new());
                            let task = tokio::spawn(worker::run(
                                self.clone(),
                                slot.key().clone(),
                                notify.clone(),
                            ));
                            slot.insert((notify, task));
                        }
                    }
                }
                Err(error) if !buffer_down_logged => {
                    buffer_down_logged = true;
                    tracing::error!(error = %error, "delivery cannot read the buffer; retrying");
                }
                Err(_) => {}
            }
            if woken {
                // Ingress wrote: a worker waiting for more cases claims them at once.
                for (notify, _) in workers.values() {
                    notify.notify_one();
                }
            }
            let now = tokio::time::Instant::now();
            if now >= gauge_at {
                gauged = self.refresh_paused_gauge(gauged).await;
                gauge_at = tokio::time::Instant::now() + Duration::from_secs(1);
            }
            if now >= prune_at {
                match self
                    .inner
                    .buffer
                    .prune(self.inner.config.queue_retention, 1_000)
                    .await
                {
                    Ok(0) => {}
                    Ok(forgotten) => {
                        tracing::info!(forgotten, "forgot queues empty past the retention period")
                    }
                    Err(error) => tracing::warn!(error = %error, "pruning idle queues failed"),
                }
                let retention_ms = u64::try_from(self.inner.config.queue_retention.as_millis())
                    .unwrap_or(u64::MAX);
                self.inner
                    .activity
                    .forget_idle((self.inner.config.now_ms)(), retention_ms);
                prune_at = tokio::time::Instant::now() + prune_every;
            }
            woken = tokio::select! {
                _ = self.inner.wake.notified() => true,
                _ = tokio::time::sleep(self.inner.config.poll_interval) => false,
                _ = shutdown.changed() => false,
            };
        }
        for (_, (notify, task)) in workers {
            notify.notify_one();
            let _ = task.await;
        }
    }

    /// Sets the paused gauge from the shared pause table: 1 for every pause in force (a probe
    /// out included), 0 for those that ended since the last refresh.
    async fn refresh_paused_gauge(
        &self,
        before: HashSet<(&'static str, String)>,
    ) -> HashSet<(&'static str, String)> {
        let now: HashSet<(&'static str, String)> = self
            .inner
            .limiter
            .pauses()
            .await
            .into_iter()
            .filter_map(|p| gauge_labels(&p, &self.inner.keys))
            .collect();
        for (kind, name) in &now {
            metrics::gauge!(prometheus::PAUSED, "kind" => *kind, "name" => name.clone()).set(1.0);
        }
        for (kind, name) in before.difference(&now) {
            metrics::gauge!(prometheus::PAUSED, "kind" => *kind, "name" => name.clone()).set(0.0);
        }
        now
    }

    /// Per queue: delivered in the last minute, in total, the last error and pause state.
    pub async fn activity(&self) -> Vec<QueueActivity> {
        let pauses = self.inner.limiter.pauses().await;
        let mut out = self.inner.activity.snapshot((self.inner.config.now_ms)());
        for pause in &pauses {
            if let Some(queue) = pause.name.strip_prefix("queue:")
                && !out.iter().any(|a| a.queue == queue)
            {
                out.push(QueueActivity {
                    queue: queue.to_string(),
                    delivered_total: 0,
                    delivered_last_minute: 0,
                    last_error: Some(pause.reason.clone()),
                    last_error_at_ms: None,
                    paused_for_ms: None,
                });
            }
        }
        for entry in &mut out {
            entry.paused_for_ms = pauses
                .iter()
                .find(|p| p.name.strip_prefix("queue:") == Some(entry.queue.as_str()))
                .map(|p| p.remaining_ms);
        }
        out.sort_by(|a, b| a.queue.cmp(&b.queue));
        out
    }

    /// API keys (by id) currently paused (401/403, or 429), with the time left until the next
    /// probe or the end of the pause (0 while a probe is out).
    pub async fn paused_keys(&self) -> Vec<(String, u64)> {
        self.inner
            .limiter
            .pauses()
            .await
            .into_iter()
            .filter_map(|p| Some((p.name.strip_prefix("key:")?.to_string(), p.remaining_ms)))
            .collect()
    }

    /// Every pause in force, as the shared table holds it.
    pub async fn pauses(&self) -> Vec<PauseInfo> {
        self.inner.limiter.pauses().await
    }
}

/// The paused gauge's labels for a pause: a queue by its id, a key by its configured name (by
/// its id when this process does not know it, e.g. another replica configured differently).
fn gauge_labels(pause: &PauseInfo, keys: &ApiKeys) -> Option<(&'static str, String)> {
    match pause.kind {
        PauseKind::QueueUnknown => Some(("queue", pause.name.strip_prefix("queue:")?.to_string())),
        PauseKind::KeyRefused | PauseKind::RateLimited => {
            let id = pause.name.strip_prefix("key:")?;
            Some(("key", keys.name_of(id).unwrap_or_else(|| id.to_string())))
        }
    }
}
