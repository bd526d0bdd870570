//! Delivery end to end: real gateway, real buffers, the sandbox API enforcing the contract.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use casegate::buffer::{Buffer, EmbeddedBuffer, RedisBuffer};
use casegate::case::DeadLetterKind;
use casegate::inbound::Headers;
use casegate_sandbox::Faults;

use crate::support::cases::{backlog, case};
use crate::support::gateway::{Backend, GatewayOptions, QUEUE, TestGateway, embedded_buffer};
use crate::support::post_json;
use crate::support::process::CasegateProcess;
use crate::support::redis_server::RedisServer;
use crate::support::sandbox::TestSandbox;
use crate::support::wait::eventually;

fn mapping() -> String {
    format!(
        "verify: {{scheme: none}}\nrules:\n  - {{name: all, queue: {QUEUE}, title: 'Event {{{{ $.id }}}}'}}\n"
    )
}

/// A gateway on `backend` delivering to `sandbox` at `rate` requests per 2 s.
fn options(sandbox: &TestSandbox, backend: Backend, rate: u32) -> GatewayOptions {
    let mut options = GatewayOptions::embedded(&[("src.yaml", &mapping())]);
    options.backend = backend;
    options.settings.extend(sandbox.settings());
    for (key, value) in [
        ("CASEGATE_DELIVERY__RATE", rate.to_string()),
        ("CASEGATE_DELIVERY__WINDOW_SECS", "2".into()),
        ("CASEGATE_DELIVERY__POLL_INTERVAL_MS", "20".into()),
        ("CASEGATE_DELIVERY__BACKOFF_BASE_MS", "50".into()),
        ("CASEGATE_DELIVERY__BACKOFF_MAX_SECS", "1".into()),
        ("CASEGATE_DELIVERY__PROBE_INTERVAL_SECS", "1".into()),
    ] {
        options.settings.push((key.into(), value));
    }
    options
}

fn json() -> Headers {
    [("content-type", "application/json")].into_iter().collect()
}

/// A directory whose embedded buffer already holds `n` cases, for a gateway to start on.
async fn embedded_backlog(n: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let buffer = Buffer::Embedded(EmbeddedBuffer::open(&dir.path().join("buffer.redb")).unwrap());
    backlog(&buffer, (0..n).map(case)).await;
    dir
}

/// Waits for `n` cases in [`QUEUE`] (at most `within`) and asserts there are exactly `n`.
async fn assert_delivered(sandbox: &TestSandbox, n: usize, within: Duration) {
    assert_eq!(sandbox.wait_for(QUEUE, n, within).await, n);
}

/// A gateway pacing at `rate` on an embedded buffer that already holds `n` cases.
async fn start_on_backlog(sandbox: &TestSandbox, n: usize, rate: u32) -> TestGateway {
    let dir = embedded_backlog(n).await;
    TestGateway::start_in(options(sandbox, Backend::Embedded, rate), dir).await
}

fn assert_each_once(titles: &[String], n: usize) {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for title in titles {
        *counts.entry(title).or_default() += 1;
    }
    let duplicates: Vec<_> = counts.iter().filter(|(_, c)| **c > 1).collect();
    assert!(
        duplicates.is_empty(),
        "delivered more than once: {duplicates:?}"
    );
    for i in 0..n {
        assert!(
            counts.contains_key(format!("Event {i}").as_str()),
            "Event {i} never delivered"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_drains_in_full_batches_at_the_configured_rate_without_429s() {
    let sandbox = TestSandbox::start(10, Duration::from_secs(2)).await;
    let gateway = start_on_backlog(&sandbox, 2_500, 10).await;
    assert_delivered(&sandbox, 2_500, Duration::from_secs(30)).await;
    let stats = sandbox.stats();
    assert_eq!(stats.rate_limited, 0, "casegate's pacing caused a 429");
    assert_eq!(
        stats.accepted_requests,
        25,
        "every batch full: {:?}",
        stats
            .accepted_log
            .iter()
            .map(|b| b.cases)
            .collect::<Vec<_>>()
    );
    sandbox.assert_paced(10, Duration::from_secs(2));
    let first = stats.accepted_log.first().unwrap().at_ms;
    let last = stats.accepted_log.last().unwrap().at_ms;
    assert!(
        last - first >= 4_000,
        "25 requests at 10 per 2 s need at least two full windows: {}",
        last - first
    );
    assert_each_once(&sandbox.titles(QUEUE), 2_500);
    let dir = gateway.stop().await;
    assert!(
        casegate_drained(&embedded_buffer(dir.path())).await,
        "acked cases left the buffer"
    );
}

/// The API counts a request when it reaches the API's limiter, which can be well after casegate
/// sent it (a queue in front of the API, a slow network). Here each request of the first window
/// waits 700 ms before the API counts it and the later ones do not wait: paced from its send,
/// the sixth request would be counted 3.6 s after the first, inside the API's 4 s window, and
/// refused with 429. Paced from each answer, it waits for the first one's answer plus a window.
async fn requests_the_api_counted_late_still_leave_a_full_window(backend: Backend) {
    let sandbox = TestSandbox::start(5, Duration::from_secs(4)).await;
    sandbox.sandbox.set_faults(Faults {
        latency_ms: 700,
        ..Faults::default()
    });
    let redis_url = match &backend {
        Backend::Redis(url) => Some(url.clone()),
        Backend::Embedded => None,
    };
    let mut options = options(&sandbox, backend, 5);
    options
        .settings
        .retain(|(key, _)| key != "CASEGATE_DELIVERY__WINDOW_SECS");
    for (key, value) in [
        ("CASEGATE_DELIVERY__WINDOW_SECS", "4"),
        ("CASEGATE_DELIVERY__MARGIN_MS", "300"),
        ("CASEGATE_DELIVERY__MAX_BATCH", "1"),
    ] {
        options.settings.push((key.into(), value.into()));
    }
    let dir = tempfile::tempdir().unwrap();
    let buffer = match redis_url {
        Some(url) => Buffer::Redis(
            RedisBuffer::connect(&url, "casegate", Duration::from_secs(2))
                .await
                .unwrap(),
        ),
        None => Buffer::Embedded(EmbeddedBuffer::open(&dir.path().join("buffer.redb")).unwrap()),
    };
    backlog(&buffer, (0..10).map(case)).await;
    drop(buffer);
    let _gateway = TestGateway::start_in(options, dir).await;
    eventually(
        "the API counted the first window's five requests",
        Duration::from_secs(20),
        || async { sandbox.stats().accepted_requests >= 5 },
    )
    .await;
    sandbox.sandbox.set_faults(Faults::default());
    assert_delivered(&sandbox, 10, Duration::from_secs(30)).await;
    assert_eq!(
        sandbox.stats().rate_limited,
        0,
        "casegate's pacing caused a 429"
    );
    sandbox.assert_paced(5, Duration::from_secs(4));
    assert_each_once(&sandbox.titles(QUEUE), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_the_api_counted_late_still_leave_a_full_window_embedded() {
    requests_the_api_counted_late_still_leave_a_full_window(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_the_api_counted_late_still_leave_a_full_window_on_redis() {
    let redis = RedisServer::start().await;
    requests_the_api_counted_late_still_leave_a_full_window(Backend::Redis(redis.url())).await;
}

/// A request that fails ends at once: it counts for a window from its failure, not from the
/// 30 s timeout it would have had in flight. So a key whose API dropped every connection for a
/// while (more attempts than the window's five slots) sends again about a window after the API
/// is back, not half a minute later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_requests_free_their_slots_a_window_after_they_fail() {
    // An "API" that accepts each connection and closes it at once, counting the attempts.
    let dropping = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = dropping.local_addr().unwrap().port();
    let attempts = Arc::new(AtomicUsize::new(0));
    let counted = attempts.clone();
    let api_down = tokio::spawn(async move {
        loop {
            if let Ok((connection, _)) = dropping.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                drop(connection);
            }
        }
    });
    let mut options = GatewayOptions::embedded(&[("src.yaml", &mapping())]);
    for (key, value) in [
        (
            "CASEGATE_DUVO__BASE_URL",
            format!("http://127.0.0.1:{port}/v1"),
        ),
        (
            "CASEGATE_DUVO__API_KEY",
            crate::support::sandbox::API_KEY.into(),
        ),
        ("CASEGATE_DUVO__REQUEST_TIMEOUT_SECS", "30".into()),
        ("CASEGATE_DELIVERY__RATE", "5".into()),
        ("CASEGATE_DELIVERY__WINDOW_SECS", "2".into()),
        ("CASEGATE_DELIVERY__POLL_INTERVAL_MS", "20".into()),
        ("CASEGATE_DELIVERY__BACKOFF_BASE_MS", "50".into()),
        ("CASEGATE_DELIVERY__BACKOFF_MAX_SECS", "1".into()),
        ("CASEGATE_DELIVERY__MAX_BATCH", "1".into()),
    ] {
        options.settings.push((key.into(), value));
    }
    let _gateway = TestGateway::start_in(options, embedded_backlog(3).await).await;
    eventually(
        "more failed attempts than the window has slots",
        Duration::from_secs(20),
        || async { attempts.load(Ordering::SeqCst) > 5 },
    )
    .await;
    api_down.abort();
    let _ = api_down.await;
    let sandbox = TestSandbox::start_on(5, Duration::from_secs(2), port).await;
    // A window (2.1 s) plus the capped backoff (1 s) and some slack; a failed attempt counted
    // from its timeout would hold the key for 30 s.
    assert_delivered(&sandbox, 3, Duration::from_secs(8)).await;
    sandbox.assert_paced(5, Duration::from_secs(2));
}

async fn casegate_drained(buffer: &Buffer) -> bool {
    buffer.stats(QUEUE).await.unwrap().depth == 0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_webhook_is_delivered_without_waiting_for_a_batch() {
    let sandbox = TestSandbox::start(300, Duration::from_secs(60)).await;
    let gateway = TestGateway::start(options(&sandbox, Backend::Embedded, 300)).await;
    let answer = gateway.post("src", &json(), r#"{"id": 1}"#).await;
    assert_eq!(answer.status, 202);
    assert_delivered(&sandbox, 1, Duration::from_secs(10)).await;
    let case = &sandbox.sandbox.cases(QUEUE)[0];
    assert_eq!(case.title, "Event 1");
    assert_eq!(
        case.data.as_deref(),
        Some(r#"{"id":1}"#),
        "data is sent as a JSON-encoded string"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stricter_api_limit_is_honoured_through_its_headers_and_retry_after() {
    // The API allows 5 per 2 s while casegate is configured for 20: the API's headers must win.
    let sandbox = TestSandbox::start(5, Duration::from_secs(2)).await;
    let _gateway = start_on_backlog(&sandbox, 1_200, 20).await;
    assert_delivered(&sandbox, 1_200, Duration::from_secs(30)).await;
    let stats = sandbox.stats();
    assert!(
        stats.rate_limited <= 2,
        "{} 429s: the key was not paused as told",
        stats.rate_limited
    );
    assert_each_once(&sandbox.titles(QUEUE), 1_200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_429s_pauses_the_key_and_loses_nothing() {
    let sandbox = TestSandbox::start(2, Duration::from_secs(1)).await;
    let mut options = options(&sandbox, Backend::Embedded, 50);
    // Ignore the API's remaining-count header path by sending from two queues at once.
    options.mappings = vec![(
        "src.yaml".into(),
        format!(
            "verify: {{scheme: none}}\nrules:\n  - {{name: a, queue: {QUEUE}, title: 'Event {{{{ $.id }}}}'}}\n  - {{name: b, queue: 4f9c3c1e-5b0a-4c8e-9d51-2a7f0e6b1c3e, title: 'Event {{{{ $.id }}}}'}}\n"
        ),
    )];
    let gateway = TestGateway::start(options).await;
    // Another client of the same key spends the API's window first, so casegate's own pacing
    // cannot avoid the 429 that follows.
    let client = crate::support::http_client();
    for _ in 0..2 {
        let response = client
            .post(format!(
                "{}/queues/0b5f0c3e-7f35-4d3c-9a51-6f2f1c1d0a99/cases",
                sandbox.base_url
            ))
            .bearer_auth(crate::support::sandbox::API_KEY)
            .json(&serde_json::json!({"cases": [{"title": "elsewhere"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 201);
    }
    for i in 0..30 {
        assert_eq!(
            gateway
                .post("src", &json(), format!(r#"{{"id": {i}}}"#))
                .await
                .status,
            202
        );
    }
    assert_delivered(&sandbox, 30, Duration::from_secs(30)).await;
    assert_eq!(
        sandbox
            .wait_for(
                "4f9c3c1e-5b0a-4c8e-9d51-2a7f0e6b1c3e",
                30,
                Duration::from_secs(30)
            )
            .await,
        30
    );
    let stats = sandbox.stats();
    assert!(
        stats.rate_limited >= 1,
        "the storm never happened: no 429 at 50 requests against an API allowing 2 per second"
    );
    // Unpaused, two workers would retry each 429 at once, again and again; paused, the key
    // waits out every retry-after, so the 429s stay few.
    assert!(
        stats.rate_limited <= 8,
        "{} 429s: the key was not paused after the first",
        stats.rate_limited
    );
    assert_each_once(&sandbox.titles(QUEUE), 30);
    assert_each_once(&sandbox.titles("4f9c3c1e-5b0a-4c8e-9d51-2a7f0e6b1c3e"), 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_outage_is_ridden_out_and_nothing_is_lost() {
    let sandbox = TestSandbox::start(100, Duration::from_secs(2)).await;
    sandbox.sandbox.set_faults(Faults {
        outage: true,
        ..Faults::default()
    });
    let gateway = TestGateway::start(options(&sandbox, Backend::Embedded, 100)).await;
    for i in 0..50 {
        assert_eq!(
            gateway
                .post("src", &json(), format!(r#"{{"id": {i}}}"#))
                .await
                .status,
            202
        );
    }
    eventually(
        "delivery kept trying during the outage",
        Duration::from_secs(10),
        || async { sandbox.stats().total_requests >= 3 },
    )
    .await;
    assert!(sandbox.titles(QUEUE).is_empty());
    sandbox.sandbox.set_faults(Faults {
        error_ratio: 0.3,
        ..Faults::default()
    });
    assert_delivered(&sandbox, 50, Duration::from_secs(30)).await;
    assert_each_once(&sandbox.titles(QUEUE), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_poison_case_among_a_hundred_is_dead_lettered_while_the_rest_are_delivered() {
    let sandbox = TestSandbox::start(100, Duration::from_secs(2)).await;
    sandbox.sandbox.set_faults(Faults {
        reject_title_pattern: Some("^Event 42$".into()),
        ..Faults::default()
    });
    let gateway = start_on_backlog(&sandbox, 100, 100).await;
    assert_delivered(&sandbox, 99, Duration::from_secs(20)).await;
    let titles = sandbox.titles(QUEUE);
    assert!(!titles.contains(&"Event 42".to_string()));
    // Bisecting 100 cases down to the refused one takes two requests per level (7 levels),
    // not one request per case.
    let requests = sandbox.stats().total_requests;
    assert!(
        requests <= 16,
        "{requests} requests to isolate one refused case"
    );
    let dir = gateway.stop().await;
    let buffer = embedded_buffer(dir.path());
    assert_eq!(buffer.stats(QUEUE).await.unwrap().depth, 0);
    let dead = buffer.list_dead_letters(None, 10).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(
        dead[0].record.reason.contains("400"),
        "{}",
        dead[0].record.reason
    );
    match &dead[0].record.kind {
        DeadLetterKind::Refused { case, status, .. } => {
            assert_eq!(case.title, "Event 42");
            assert_eq!(*status, 400);
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_key_pauses_delivery_and_keeps_the_cases() {
    let sandbox = TestSandbox::start(100, Duration::from_secs(2)).await;
    let options =
        options(&sandbox, Backend::Embedded, 100).setting("CASEGATE_DUVO__API_KEY", "dv_wrong");
    let gateway = TestGateway::start(options).await;
    for i in 0..5 {
        assert_eq!(
            gateway
                .post("src", &json(), format!(r#"{{"id": {i}}}"#))
                .await
                .status,
            202
        );
    }
    let refused = || {
        sandbox
            .stats()
            .status_counts
            .get(&401)
            .copied()
            .unwrap_or(0)
    };
    eventually(
        "the API refuses a request",
        Duration::from_secs(20),
        || async { refused() >= 1 },
    )
    .await;
    // Three more requests to a paused key are probes one 1 s interval apart: they take at
    // least two intervals, however loaded the machine (load only slows them).
    let before = sandbox.stats().total_requests;
    let started = std::time::Instant::now();
    eventually(
        "the key is probed again",
        Duration::from_secs(30),
        || async { sandbox.stats().total_requests >= before + 3 },
    )
    .await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1_800),
        "a paused key is only probed once per interval: 3 requests in {took:?}"
    );
    // Read once the gateway stopped: the sandbox counts a request when it arrives and its
    // status when it answers, so a probe in flight would show between the two.
    let dir = gateway.stop().await;
    let stats = sandbox.stats();
    assert_eq!(stats.accepted_cases, 0);
    assert_eq!(
        stats.status_counts.get(&401).copied().unwrap_or(0),
        stats.total_requests,
        "every request was a refused probe"
    );
    assert_eq!(
        embedded_buffer(dir.path())
            .stats(QUEUE)
            .await
            .unwrap()
            .depth,
        5,
        "the cases stay buffered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_on_one_redis_deliver_each_case_once_within_the_shared_limit() {
    let redis = RedisServer::start().await;
    let sandbox = TestSandbox::start(10, Duration::from_secs(2)).await;
    {
        let buffer = Buffer::Redis(
            RedisBuffer::connect(&redis.url(), "casegate", Duration::from_secs(2))
                .await
                .unwrap(),
        );
        backlog(&buffer, (0..2_000).map(case)).await;
    }
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(TestGateway::start(options(&sandbox, Backend::Redis(redis.url()), 10)).await);
    }
    for (i, replica) in replicas.iter().enumerate() {
        let answer = replica
            .post("src", &json(), format!(r#"{{"id": {}}}"#, 2_000 + i))
            .await;
        assert_eq!(answer.status, 202);
    }
    assert_delivered(&sandbox, 2_003, Duration::from_secs(40)).await;
    let stats = sandbox.stats();
    assert_eq!(
        stats.rate_limited, 0,
        "the replicas together exceeded the limit"
    );
    sandbox.assert_paced(10, Duration::from_secs(2));
    assert_each_once(&sandbox.titles(QUEUE), 2_003);
    for replica in replicas {
        replica.stop().await;
    }
}

/// Kills the gateway with SIGKILL three times while it delivers under load, restarts it on the
/// same buffer, and checks that every acknowledged webhook reached the API, with at most one
/// batch sent twice per kill.
async fn sigkill_during_delivery_loses_nothing(backend: Backend) {
    let sandbox = TestSandbox::start(1_000, Duration::from_secs(2)).await;
    sandbox.sandbox.set_faults(Faults {
        latency_ms: 150,
        ..Faults::default()
    });
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("mappings")).unwrap();
    std::fs::write(dir.path().join("mappings/src.yaml"), mapping()).unwrap();
    let mut env = sandbox.settings();
    env.push(("CASEGATE_DELIVERY__RATE".into(), "1000".into()));
    env.push(("CASEGATE_DELIVERY__WINDOW_SECS".into(), "2".into()));
    env.push(("CASEGATE_DELIVERY__MAX_BATCH".into(), "20".into()));
    env.push((
        "CASEGATE_DELIVERY__VISIBILITY_TIMEOUT_SECS".into(),
        "2".into(),
    ));
    env.push((
        "CASEGATE_DELIVERY__CONSUMER".into(),
        "restarted-replica".into(),
    ));
    if let Backend::Redis(url) = &backend {
        env.push(("CASEGATE_BUFFER__BACKEND".into(), "redis".into()));
        env.push(("CASEGATE_BUFFER__REDIS_URL".into(), url.clone()));
    }
    let client = crate::support::http_client();
    let mut acknowledged = 0usize;
    let kills = 3;
    for round in 0..=kills {
        let process = CasegateProcess::serve(dir.path(), &env).await;
        for _ in 0..60 {
            let status = post_json(
                &client,
                &process.url("/hooks/src"),
                format!(r#"{{"id": {acknowledged}}}"#),
            )
            .await;
            assert_eq!(status, 202);
            acknowledged += 1;
        }
        if round < kills {
            // Let delivery get going, then kill it mid-send.
            tokio::time::sleep(Duration::from_millis(200)).await;
            process.kill9().await;
        } else {
            eventually(
                "every acknowledged case is delivered",
                Duration::from_secs(30),
                || async { distinct(&sandbox.titles(QUEUE)) >= acknowledged },
            )
            .await;
            process.kill9().await;
        }
    }
    let titles = sandbox.titles(QUEUE);
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for title in &titles {
        *counts.entry(title).or_default() += 1;
    }
    for i in 0..acknowledged {
        assert!(
            counts.contains_key(format!("Event {i}").as_str()),
            "acknowledged Event {i} was lost"
        );
    }
    let duplicates = titles.len() - counts.len();
    assert!(
        duplicates <= kills * 20,
        "{duplicates} duplicates for {kills} kills of batches of 20"
    );
}

fn distinct(titles: &[String]) -> usize {
    titles
        .iter()
        .collect::<std::collections::HashSet<_>>()
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_delivery_loses_nothing_on_the_embedded_buffer() {
    sigkill_during_delivery_loses_nothing(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_delivery_loses_nothing_on_redis() {
    let redis = RedisServer::start().await;
    sigkill_during_delivery_loses_nothing(Backend::Redis(redis.url())).await;
}
