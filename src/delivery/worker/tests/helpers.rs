//! The API's scripted stand-in, cases, configuration and a running delivery engine, shared
//! by the worker's tests.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::buffer::{Buffer, EmbeddedBuffer, Enqueue};
use crate::case::{CaseMeta, CaseRecord, DeadLetterKind};
use crate::delivery::client::{Api, StandIn};
use crate::delivery::limiter::{LimiterConfig, RateLimiter};
use crate::delivery::policy::{ApiAnswer, Backoff, RateLimitHeaders};
use crate::delivery::{ApiKeys, Delivery, DeliveryConfig, Jitter};
use crate::secret::Secret;

pub(super) const QUEUE: &str = "q-one";
pub(super) const OTHER_QUEUE: &str = "q-two";

/// One request the stand-in received.
#[derive(Debug, Clone)]
pub(super) struct Request {
    pub(super) at: Instant,
    pub(super) key: String,
    pub(super) queue: String,
    pub(super) titles: Vec<String>,
    /// Answered 2xx.
    pub(super) ok: bool,
}

pub(super) type Script = Box<dyn FnMut(&Request) -> ApiAnswer + Send>;

/// The API's stand-in: logs every request and answers it with `script`.
pub(super) struct Fake {
    log: Mutex<Vec<Request>>,
    script: Mutex<Script>,
}

impl Fake {
    pub(super) fn new(script: impl FnMut(&Request) -> ApiAnswer + Send + 'static) -> Arc<Fake> {
        Arc::new(Fake {
            log: Mutex::new(Vec::new()),
            script: Mutex::new(Box::new(script)),
        })
    }

    pub(super) fn requests(&self) -> Vec<Request> {
        self.log.lock().unwrap().clone()
    }

    /// Titles the API accepted, in the order it accepted them.
    pub(super) fn accepted(&self) -> Vec<String> {
        self.accepted_requests()
            .into_iter()
            .flat_map(|r| r.titles)
            .collect()
    }

    pub(super) fn accepted_requests(&self) -> Vec<Request> {
        self.requests().into_iter().filter(|r| r.ok).collect()
    }
}

impl StandIn for Fake {
    fn create_cases(&self, api_key: &Secret, queue: &str, cases: &[&CaseRecord]) -> ApiAnswer {
        let request = Request {
            at: Instant::now(),
            key: api_key.expose().to_string(),
            queue: queue.to_string(),
            titles: cases.iter().map(|c| c.title.clone()).collect(),
            ok: false,
        };
        let mut request = request;
        let answer = (self.script.lock().unwrap())(&request);
        request.ok = matches!(
            answer,
            ApiAnswer::Response {
                status: 200..=299,
                ..
            }
        );
        self.log.lock().unwrap().push(request);
        answer
    }
}

pub(super) fn status(status: u16) -> ApiAnswer {
    ApiAnswer::Response {
        status,
        retry_after: None,
        rate: RateLimitHeaders::default(),
        error: None,
    }
}

pub(super) fn config() -> DeliveryConfig {
    DeliveryConfig {
        max_batch: 100,
        max_request_bytes: 1024 * 1024,
        linger: Duration::from_millis(200),
        poll_interval: Duration::from_millis(100),
        visibility_timeout: Duration::from_secs(3),
        backoff: Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(2),
        },
        probe_interval: Duration::from_secs(1),
        max_attempts: 5,
        consumer: "replica-1".into(),
        queue_retention: Duration::from_secs(86_400),
        jitter: Jitter::fixed(0.5),
        now_ms: crate::clock::now_ms,
    }
}

pub(super) fn limits(rate: u32, window: Duration) -> LimiterConfig {
    LimiterConfig {
        rate,
        window,
        margin: Duration::ZERO,
        answer_within: Duration::from_secs(30),
    }
}

pub(super) fn keys() -> ApiKeys {
    ApiKeys {
        default: Some(Secret::new("key-a")),
        named: HashMap::from([("team-b".to_string(), Secret::new("key-b"))]),
    }
}

pub(super) fn case(queue: &str, key: Option<&str>, i: usize) -> CaseRecord {
    CaseRecord {
        queue: queue.into(),
        api_key_name: key.map(str::to_string),
        title: format!("Event {i}"),
        data: format!(r#"{{"id":{i}}}"#),
        labels: vec![],
        meta: CaseMeta {
            source: "src".into(),
            mapping_file: "src.yaml".into(),
            mapping_version: "test".into(),
            rule: "all".into(),
            request_id: format!("r{i}"),
            delivery_id: None,
            event_type: None,
            received_at_ms: crate::clock::now_ms(),
        },
    }
}

pub(super) fn titles(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("Event {i}")).collect()
}

pub(super) async fn enqueue(
    buffer: &Buffer,
    queue: &str,
    key: Option<&str>,
    range: std::ops::Range<usize>,
) {
    buffer
        .enqueue(Enqueue {
            dedupe: None,
            cases: range.map(|i| case(queue, key, i)).collect(),
            dead_letters: vec![],
        })
        .await
        .unwrap();
}

/// A running delivery engine over an embedded buffer in a temporary directory.
pub(super) struct Rig {
    dir: tempfile::TempDir,
    pub(super) buffer: Buffer,
    pub(super) delivery: Delivery,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Rig {
    pub(super) fn open(dir: &tempfile::TempDir) -> Buffer {
        Buffer::Embedded(EmbeddedBuffer::open(&dir.path().join("buffer.redb")).unwrap())
    }

    pub(super) fn new(fake: &Arc<Fake>, limits: LimiterConfig, config: DeliveryConfig) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let buffer = Rig::open(&dir);
        Rig::start(dir, buffer, fake, limits, config)
    }

    pub(super) fn start(
        dir: tempfile::TempDir,
        buffer: Buffer,
        fake: &Arc<Fake>,
        limits: LimiterConfig,
        config: DeliveryConfig,
    ) -> Rig {
        let (stop, shutdown) = watch::channel(false);
        let delivery = Delivery::new(
            buffer.clone(),
            Api::StandIn(fake.clone()),
            RateLimiter::local(limits),
            keys(),
            config,
            shutdown,
        );
        let task = tokio::spawn(delivery.clone().run());
        Rig {
            dir,
            buffer,
            delivery,
            stop,
            task,
        }
    }

    pub(super) async fn shut_down(self) -> (tempfile::TempDir, Buffer) {
        self.stop.send(true).unwrap();
        self.task.await.unwrap();
        (self.dir, self.buffer)
    }

    pub(super) async fn dead_letters(&self) -> Vec<(String, String, u16)> {
        self.buffer
            .list_dead_letters(None, 1_000)
            .await
            .unwrap()
            .into_iter()
            .map(|d| match d.record.kind {
                DeadLetterKind::Refused { case, status, .. } => {
                    (case.title, d.record.reason, status)
                }
                other => panic!("unexpected dead letter {other:?}"),
            })
            .collect()
    }

    pub(super) async fn claimed(&self, queue: &str) -> u64 {
        self.buffer.stats(queue).await.unwrap().claimed
    }
}

/// Polls `condition` every 10 ms of (paused) time until it holds or `within` has passed.
pub(super) async fn eventually(within: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub(super) fn in_order_once(accepted: &[String], expected: &[String]) {
    assert_eq!(
        accepted, expected,
        "every case once, in the order it was buffered"
    );
}
