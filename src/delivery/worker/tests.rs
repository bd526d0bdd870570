//! The delivery rules on paused time: a real embedded buffer, the real supervisor, worker,
//! batcher and local limiter, and an in-process stand-in for the API that answers by script.
//! Tokio's clock only moves when every task waits, so hours of outage take milliseconds and
//! every timing bound below is exact rather than a guess about a loaded machine.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::buffer::{Buffer, EmbeddedBuffer, Enqueue};
use crate::case::{CaseMeta, CaseRecord, DeadLetterKind};
use crate::delivery::client::{Api, StandIn};
use crate::delivery::limiter::{LimiterConfig, PauseKind, RateLimiter};
use crate::delivery::policy::{ApiAnswer, Backoff, RateLimitHeaders};
use crate::delivery::{ApiKeys, Delivery, DeliveryConfig, Jitter};
use crate::secret::Secret;

const QUEUE: &str = "q-one";
const OTHER_QUEUE: &str = "q-two";

/// One request the stand-in received.
#[derive(Debug, Clone)]
struct Request {
    at: Instant,
    key: String,
    queue: String,
    titles: Vec<String>,
    /// Answered 2xx.
    ok: bool,
}

type Script = Box<dyn FnMut(&Request) -> ApiAnswer + Send>;

/// The API's stand-in: logs every request and answers it with `script`.
struct Fake {
    log: Mutex<Vec<Request>>,
    script: Mutex<Script>,
}

impl Fake {
    fn new(script: impl FnMut(&Request) -> ApiAnswer + Send + 'static) -> Arc<Fake> {
        Arc::new(Fake {
            log: Mutex::new(Vec::new()),
            script: Mutex::new(Box::new(script)),
        })
    }

    fn requests(&self) -> Vec<Request> {
        self.log.lock().unwrap().clone()
    }

    /// Titles the API accepted, in the order it accepted them.
    fn accepted(&self) -> Vec<String> {
        self.accepted_requests()
            .into_iter()
            .flat_map(|r| r.titles)
            .collect()
    }

    fn accepted_requests(&self) -> Vec<Request> {
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

fn status(status: u16) -> ApiAnswer {
    ApiAnswer::Response {
        status,
        retry_after: None,
        rate: RateLimitHeaders::default(),
        error: None,
    }
}

fn config() -> DeliveryConfig {
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

fn limits(rate: u32, window: Duration) -> LimiterConfig {
    LimiterConfig {
        rate,
        window,
        margin: Duration::ZERO,
    }
}

fn keys() -> ApiKeys {
    ApiKeys {
        default: Some(Secret::new("key-a")),
        named: HashMap::from([("team-b".to_string(), Secret::new("key-b"))]),
    }
}

fn case(queue: &str, key: Option<&str>, i: usize) -> CaseRecord {
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

fn titles(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("Event {i}")).collect()
}

async fn enqueue(buffer: &Buffer, queue: &str, key: Option<&str>, range: std::ops::Range<usize>) {
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
struct Rig {
    dir: tempfile::TempDir,
    buffer: Buffer,
    delivery: Delivery,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Rig {
    fn open(dir: &tempfile::TempDir) -> Buffer {
        Buffer::Embedded(EmbeddedBuffer::open(&dir.path().join("buffer.redb")).unwrap())
    }

    fn new(fake: &Arc<Fake>, limits: LimiterConfig, config: DeliveryConfig) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let buffer = Rig::open(&dir);
        Rig::start(dir, buffer, fake, limits, config)
    }

    fn start(
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

    async fn shut_down(self) -> (tempfile::TempDir, Buffer) {
        self.stop.send(true).unwrap();
        self.task.await.unwrap();
        (self.dir, self.buffer)
    }

    async fn dead_letters(&self) -> Vec<(String, String, u16)> {
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

    async fn claimed(&self, queue: &str) -> u64 {
        self.buffer.stats(queue).await.unwrap().claimed
    }
}

/// Polls `condition` every 10 ms of (paused) time until it holds or `within` has passed.
async fn eventually(within: Duration, mut condition: impl FnMut() -> bool) -> bool {
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

fn in_order_once(accepted: &[String], expected: &[String]) {
    assert_eq!(
        accepted, expected,
        "every case once, in the order it was buffered"
    );
}

#[tokio::test(start_paused = true)]
async fn a_claim_held_through_backoff_and_a_429_pause_is_renewed_before_the_visibility_timeout() {
    let start = Instant::now();
    let fake = Fake::new(move |_| {
        let t = start.elapsed();
        if t < Duration::from_secs(30) {
            status(503)
        } else if t < Duration::from_secs(33) {
            ApiAnswer::Response {
                status: 429,
                retry_after: Some(Duration::from_secs(20)),
                rate: RateLimitHeaders::default(),
                error: None,
            }
        } else {
            status(200)
        }
    });
    let rig = Rig::new(&fake, limits(300, Duration::from_secs(60)), config());
    enqueue(&rig.buffer, QUEUE, None, 0..150).await;
    assert!(eventually(Duration::from_secs(5), || !fake.requests().is_empty()).await);
    // A rival consumer tries to take over every half second through 30 s of 503s (ten
    // visibility timeouts) and the 20 s pause: the held claims are never idle long enough.
    let visibility = config().visibility_timeout;
    let mut rival_took = 0;
    while fake.accepted().is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "delivery never resumed"
        );
        rival_took += rig
            .buffer
            .reclaim(QUEUE, "rival", visibility, 100)
            .await
            .unwrap()
            .len();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(rival_took, 0, "no held claim expired");
    assert!(
        eventually(Duration::from_secs(30), || fake.accepted().len() >= 150).await,
        "delivered after the faults"
    );
    let mut accepted = fake.accepted();
    accepted.sort_by_key(|t| t[6..].parse::<usize>().unwrap());
    assert_eq!(accepted, titles(0..150), "each case exactly once");
    let requests = fake.requests();
    let first_429 = requests
        .iter()
        .find(|r| r.at - start >= Duration::from_secs(30))
        .expect("a request met the 429")
        .at;
    let during_pause = requests
        .iter()
        .filter(|r| r.at > first_429 && r.at - first_429 < Duration::from_secs(20))
        .count();
    assert_eq!(during_pause, 0, "nothing is sent while the 429 pause holds");
    let first_ok = requests.iter().find(|r| r.ok).unwrap().at;
    assert!(first_ok - first_429 >= Duration::from_secs(20));
    assert!(rig.dead_letters().await.is_empty());
    rig.shut_down().await;
}

/// The rule the renewal protects: a claim nobody renews is taken over after the timeout.
#[tokio::test(start_paused = true)]
async fn an_unrenewed_claim_is_taken_over_after_the_visibility_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let buffer = Rig::open(&dir);
    enqueue(&buffer, QUEUE, None, 0..3).await;
    assert_eq!(buffer.claim(QUEUE, "dead", 10).await.unwrap().len(), 3);
    let visibility = Duration::from_secs(3);
    tokio::time::sleep(visibility - Duration::from_millis(10)).await;
    assert!(
        buffer
            .reclaim(QUEUE, "rival", visibility, 10)
            .await
            .unwrap()
            .is_empty()
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        buffer
            .reclaim(QUEUE, "rival", visibility, 10)
            .await
            .unwrap()
            .len(),
        3
    );
}

#[tokio::test(start_paused = true)]
async fn a_refused_key_claims_nothing_probes_once_per_interval_and_resumes_in_order() {
    let start = Instant::now();
    let fake = Fake::new(move |r| {
        if r.key == "key-a" && start.elapsed() < Duration::from_secs(20) {
            status(401)
        } else {
            status(200)
        }
    });
    let rig = Rig::new(&fake, limits(300, Duration::from_secs(60)), config());
    // Two queues on the refused key, one on another key that keeps flowing.
    enqueue(&rig.buffer, QUEUE, None, 0..250).await;
    enqueue(&rig.buffer, OTHER_QUEUE, None, 1000..1250).await;
    enqueue(&rig.buffer, "q-three", Some("team-b"), 2000..2100).await;
    let mut most_claimed = 0;
    while start.elapsed() < Duration::from_secs(19) {
        most_claimed = most_claimed.max(rig.claimed(QUEUE).await + rig.claimed(OTHER_QUEUE).await);
        if start.elapsed() > Duration::from_secs(2) {
            let pauses = rig.delivery.pauses().await;
            assert!(
                pauses.iter().any(|p| p.kind == PauseKind::KeyRefused),
                "the pause shows: {pauses:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        most_claimed <= 100,
        "a paused key claims nothing beyond one probe batch: {most_claimed} claimed"
    );
    let refused: Vec<Instant> = fake
        .requests()
        .iter()
        .filter(|r| r.key == "key-a" && r.at - start < Duration::from_secs(19))
        .map(|r| r.at)
        .collect();
    assert!(
        (15..=21).contains(&refused.len()),
        "one probe per 1 s interval across both queues: {} in 19 s",
        refused.len()
    );
    for pair in refused.windows(2).skip(1) {
        assert!(
            pair[1] - pair[0] >= Duration::from_secs(1),
            "probes {pair:?} too close"
        );
    }
    assert_eq!(
        fake.accepted()
            .iter()
            .filter(|t| t.starts_with("Event 2"))
            .count(),
        100,
        "the other key's queue flowed meanwhile"
    );
    assert!(
        eventually(Duration::from_secs(30), || fake.accepted().len() >= 600).await,
        "resumed after the pause"
    );
    let accepted = fake.accepted();
    let of = |lo: usize, hi: usize| -> Vec<String> {
        accepted
            .iter()
            .filter(|t| (lo..hi).contains(&t[6..].parse::<usize>().unwrap()))
            .cloned()
            .collect()
    };
    in_order_once(&of(0, 1000), &titles(0..250));
    in_order_once(&of(1000, 2000), &titles(1000..1250));
    assert!(
        eventually(Duration::from_secs(3), || true).await && rig.delivery.pauses().await.is_empty(),
        "the pause ended with the probe's success"
    );
    rig.shut_down().await;
}

#[tokio::test(start_paused = true)]
async fn an_unknown_queue_and_a_queue_without_a_key_claim_nothing_and_keep_their_cases() {
    let start = Instant::now();
    let fake = Fake::new(move |r| {
        if r.queue == QUEUE && start.elapsed() < Duration::from_secs(10) {
            status(404)
        } else {
            status(200)
        }
    });
    let rig = Rig::new(&fake, limits(300, Duration::from_secs(60)), config());
    enqueue(&rig.buffer, QUEUE, None, 0..150).await;
    enqueue(&rig.buffer, OTHER_QUEUE, Some("no-such-key"), 1000..1150).await;
    let (mut most_claimed, mut most_claimed_other) = (0, 0);
    while start.elapsed() < Duration::from_secs(9) {
        most_claimed = most_claimed.max(rig.claimed(QUEUE).await);
        most_claimed_other = most_claimed_other.max(rig.claimed(OTHER_QUEUE).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(most_claimed <= 100, "{most_claimed} claimed while paused");
    assert!(
        most_claimed_other <= 100,
        "a queue without a key claims no more than its probe: {most_claimed_other}"
    );
    let pauses = rig.delivery.pauses().await;
    for queue in [QUEUE, OTHER_QUEUE] {
        assert!(
            pauses
                .iter()
                .any(|p| p.kind == PauseKind::QueueUnknown && p.name == format!("queue:{queue}")),
            "{queue} shows as paused: {pauses:?}"
        );
    }
    let status = rig.delivery.activity().await;
    let other = status.iter().find(|a| a.queue == OTHER_QUEUE).unwrap();
    assert!(other.paused_for_ms.is_some(), "{other:?}");
    assert!(
        other
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("no-such-key"),
        "{other:?}"
    );
    let probes = fake
        .requests()
        .iter()
        .filter(|r| r.queue == QUEUE && r.at - start < Duration::from_secs(9))
        .count();
    assert!((7..=10).contains(&probes), "{probes} probes in 9 s");
    assert!(eventually(Duration::from_secs(20), || fake.accepted().len() >= 150).await);
    in_order_once(&fake.accepted(), &titles(0..150));
    assert!(
        fake.requests().iter().all(|r| r.queue != OTHER_QUEUE),
        "never sent without a key"
    );
    assert_eq!(
        rig.buffer.stats(OTHER_QUEUE).await.unwrap().depth,
        150,
        "its cases are kept"
    );
    assert!(rig.dead_letters().await.is_empty());
    rig.shut_down().await;
}

#[tokio::test(start_paused = true)]
async fn a_500_poison_case_is_bisected_out_and_dead_lettered_while_the_rest_flows_in_order() {
    let fake = Fake::new(|r| {
        if r.titles.iter().any(|t| t == "Event 37") {
            status(500)
        } else {
            status(200)
        }
    });
    let rig = Rig::new(&fake, limits(300, Duration::from_secs(60)), config());
    enqueue(&rig.buffer, QUEUE, None, 0..300).await;
    assert!(eventually(Duration::from_secs(60), || fake.accepted().len() >= 299).await);
    let mut expected = titles(0..300);
    expected.retain(|t| t != "Event 37");
    in_order_once(&fake.accepted(), &expected);
    // Later arrivals give the fresh evidence that counts the poison case's attempts.
    for i in 0..40 {
        enqueue(&rig.buffer, QUEUE, None, 300 + i..301 + i).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        if !rig.dead_letters().await.is_empty() {
            break;
        }
    }
    let letters = rig.dead_letters().await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].0, "Event 37");
    assert_eq!(letters[0].2, 500);
    assert!(letters[0].1.contains("HTTP 500"), "{}", letters[0].1);
    let requests = fake.requests().len();
    assert!(
        requests < 120,
        "bisecting costs a few requests, not one per case: {requests}"
    );
    rig.shut_down().await;
}

#[tokio::test(start_paused = true)]
async fn a_whole_api_outage_of_an_hour_dead_letters_nothing() {
    let start = Instant::now();
    let fake = Fake::new(move |_| {
        if start.elapsed() < Duration::from_secs(3600) {
            status(500)
        } else {
            status(200)
        }
    });
    let rig = Rig::new(&fake, limits(300, Duration::from_secs(60)), config());
    enqueue(&rig.buffer, QUEUE, None, 0..250).await;
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert!(
        fake.requests().len() > 1000,
        "it kept trying: {}",
        fake.requests().len()
    );
    assert!(
        rig.dead_letters().await.is_empty(),
        "an outage dead-letters nothing"
    );
    assert!(eventually(Duration::from_secs(60), || fake.accepted().len() >= 250).await);
    let mut accepted = fake.accepted();
    accepted.sort_by_key(|t| t[6..].parse::<usize>().unwrap());
    assert_eq!(accepted, titles(0..250), "each case once");
    assert!(rig.dead_letters().await.is_empty());
    rig.shut_down().await;
}

/// A poison case that failed while its neighbours succeeded, then an outage where nothing else
/// is sent on its key: the outage's failures are not counted, so it is not dead-lettered until
/// the neighbours succeed again.
#[tokio::test(start_paused = true)]
async fn an_outage_that_begins_after_a_case_started_failing_does_not_dead_letter_it() {
    let outage = Duration::from_secs(1800);
    let outage_from: Arc<Mutex<Option<Instant>>> = Arc::default();
    let poison_alone: Arc<Mutex<u32>> = Arc::default();
    let (from, alone) = (outage_from.clone(), poison_alone.clone());
    let fake = Fake::new(move |r| {
        let poison = r.titles.iter().any(|t| t == "Event 0");
        if poison && r.titles.len() == 1 {
            *alone.lock().unwrap() += 1;
        }
        let in_outage = from
            .lock()
            .unwrap()
            .is_some_and(|from| r.at >= from && r.at - from < outage);
        if poison || in_outage {
            status(500)
        } else {
            status(200)
        }
    });
    let max_attempts = config().max_attempts;
    let rig = Rig::new(&fake, limits(300, Duration::from_secs(60)), config());
    enqueue(&rig.buffer, QUEUE, None, 0..10).await;
    let mut next = 10;
    // Neighbours keep arriving and succeeding while the poison case is retried alone a few
    // times (fewer than max_attempts)...
    while *poison_alone.lock().unwrap() < max_attempts - 2 {
        enqueue(&rig.buffer, QUEUE, None, next..next + 1).await;
        next += 1;
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(next < 1000, "the poison case was never retried alone");
    }
    // ...then they stop, every one of them delivered, and the whole API goes down.
    assert!(
        eventually(Duration::from_secs(10), || fake.accepted().len()
            == next - 1)
        .await
    );
    *outage_from.lock().unwrap() = Some(Instant::now());
    let before = *poison_alone.lock().unwrap();
    tokio::time::sleep(outage - Duration::from_secs(1)).await;
    let during = *poison_alone.lock().unwrap() - before;
    assert!(
        during > 2 * max_attempts,
        "retried through the outage: {during}"
    );
    assert!(
        rig.dead_letters().await.is_empty(),
        "an outage that began later never dead-letters it"
    );
    // The API recovers and neighbours flow again: the poison case's attempts count now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut waited = 0;
    while rig.dead_letters().await.is_empty() {
        enqueue(&rig.buffer, QUEUE, None, next..next + 1).await;
        next += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
        waited += 1;
        assert!(waited < 300, "never dead-lettered after the outage");
    }
    let letters = rig.dead_letters().await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].0, "Event 0");
    assert!(
        eventually(Duration::from_secs(10), || fake.accepted().len()
            == next - 1)
        .await,
        "every neighbour delivered: {} of {}",
        fake.accepted().len(),
        next - 1
    );
    rig.shut_down().await;
}

#[tokio::test(start_paused = true)]
async fn a_spent_api_window_holds_the_key_until_the_reset() {
    let fake = Fake::new(|_| ApiAnswer::Response {
        status: 200,
        retry_after: None,
        rate: RateLimitHeaders {
            limit: Some(10),
            remaining: Some(0),
            reset: Some(Duration::from_secs(7)),
        },
        error: None,
    });
    let rig = Rig::new(&fake, limits(300, Duration::from_secs(60)), config());
    enqueue(&rig.buffer, QUEUE, None, 0..300).await;
    assert!(eventually(Duration::from_secs(60), || fake.accepted().len() >= 300).await);
    let requests = fake.requests();
    assert_eq!(requests.len(), 3);
    for pair in requests.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(
            gap >= Duration::from_secs(7) && gap < Duration::from_secs(8),
            "the next request waits for the window's reset: {gap:?}"
        );
    }
    in_order_once(&fake.accepted(), &titles(0..300));
    rig.shut_down().await;
}

#[tokio::test(start_paused = true)]
async fn under_backlog_batches_fill_toward_max_batch_and_when_idle_they_go_at_once() {
    let fake = Fake::new(|_| status(200));
    // Two requests a second: the backlog grows faster than it drains.
    let rig = Rig::new(&fake, limits(2, Duration::from_secs(1)), config());
    let mut next = 0;
    for _ in 0..100 {
        enqueue(&rig.buffer, QUEUE, None, next..next + 30).await;
        next += 30;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(eventually(Duration::from_secs(60), || fake.accepted().len() >= next).await);
    let sizes: Vec<usize> = fake.requests().iter().map(|r| r.titles.len()).collect();
    // The first window's two grants go at once; from then on the backlog fills every batch.
    let middle = &sizes[2..sizes.len() - 1];
    assert!(
        middle.len() > 20 && middle.iter().all(|&n| n == 100),
        "under backlog every batch but the first window's and the last is full: {sizes:?}"
    );
    in_order_once(&fake.accepted(), &titles(0..next));
    // Idle again (and the rate window clear): one case goes out after the linger, not a poll
    // or a window later.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = fake.requests().len();
    let sent_at = Instant::now();
    enqueue(&rig.buffer, QUEUE, None, next..next + 1).await;
    rig.delivery.waker().notify_one();
    assert!(eventually(Duration::from_secs(5), || fake.requests().len() > before).await);
    let latency = fake.requests()[before].at - sent_at;
    assert!(
        latency <= config().linger + Duration::from_millis(50),
        "idle latency {latency:?}"
    );
    rig.shut_down().await;
}

#[tokio::test(start_paused = true)]
async fn a_restart_resumes_the_cases_held_before_at_once() {
    let fake = Fake::new(|_| status(200));
    let dir = tempfile::tempdir().unwrap();
    let buffer = Rig::open(&dir);
    enqueue(&buffer, QUEUE, None, 0..120).await;
    // The process that held these died mid-batch.
    assert_eq!(
        buffer.claim(QUEUE, "replica-1", 100).await.unwrap().len(),
        100
    );
    drop(buffer);
    let restarted = Rig::open(&dir);
    let mut slow = config();
    slow.visibility_timeout = Duration::from_secs(300);
    let started = Instant::now();
    let rig = Rig::start(
        dir,
        restarted,
        &fake,
        limits(300, Duration::from_secs(60)),
        slow,
    );
    assert!(eventually(Duration::from_secs(5), || fake.accepted().len() >= 120).await);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "resumed in {:?}, not after the 300 s visibility timeout",
        started.elapsed()
    );
    in_order_once(&fake.accepted(), &titles(0..120));
    let (_dir, buffer) = rig.shut_down().await;
    assert_eq!(buffer.stats(QUEUE).await.unwrap().depth, 0);
}
