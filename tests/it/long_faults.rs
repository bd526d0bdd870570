//! Delivery through long faults, across replicas sharing one Redis: claims stay exclusive for
//! the whole fault, pauses stop every replica at once with one probe per interval, and a poison
//! case cannot stall its queue. (A replica's identity is in `replicas`; how pauses show to
//! operators in `pause_reporting`.)

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use casegate::buffer::{Buffer, RedisBuffer};
use casegate::case::DeadLetterKind;
use casegate_sandbox::Faults;

use crate::support::cases::{backlog, case};
use crate::support::gateway::{Backend, GatewayOptions, QUEUE, TestGateway, embedded_buffer};
use crate::support::post_json;
use crate::support::redis_server::RedisServer;
use crate::support::sandbox::TestSandbox;
use crate::support::wait::eventually;
use crate::support::{get_json, get_text};

pub(crate) const ADMIN_TOKEN: &str = "long-faults-admin-token-0123456789abcdef";

pub(crate) fn mapping() -> String {
    format!(
        "verify: {{scheme: none}}\nrules:\n  - {{name: all, queue: {QUEUE}, title: 'Event {{{{ $.id }}}}'}}\n"
    )
}

/// Settings scaled down so a "long" fault takes seconds: a 2 s visibility timeout, 1 s probes.
pub(crate) fn scaled() -> Vec<(&'static str, String)> {
    vec![
        ("CASEGATE_DELIVERY__RATE", "100".into()),
        ("CASEGATE_DELIVERY__WINDOW_SECS", "1".into()),
        ("CASEGATE_DELIVERY__POLL_INTERVAL_MS", "20".into()),
        ("CASEGATE_DELIVERY__BACKOFF_BASE_MS", "20".into()),
        ("CASEGATE_DELIVERY__BACKOFF_MAX_SECS", "1".into()),
        ("CASEGATE_DELIVERY__PROBE_INTERVAL_SECS", "1".into()),
        ("CASEGATE_DELIVERY__VISIBILITY_TIMEOUT_SECS", "2".into()),
        ("CASEGATE_DELIVERY__MAX_ATTEMPTS", "5".into()),
    ]
}

pub(crate) fn options(sandbox: &TestSandbox, backend: Backend) -> GatewayOptions {
    let mut options = GatewayOptions::embedded(&[("src.yaml", &mapping())]);
    options.backend = backend;
    options.settings.extend(sandbox.settings());
    for (key, value) in scaled() {
        options.settings.push((key.into(), value));
    }
    options
}

pub(crate) async fn redis_buffer(redis: &RedisServer) -> Buffer {
    Buffer::Redis(
        RedisBuffer::connect(&redis.url(), "casegate", Duration::from_secs(2))
            .await
            .unwrap(),
    )
}

pub(crate) fn counts(titles: &[String]) -> HashMap<&str, usize> {
    let mut counts = HashMap::new();
    for title in titles {
        *counts.entry(title.as_str()).or_default() += 1;
    }
    counts
}

pub(crate) fn ids(titles: &[String]) -> Vec<usize> {
    titles
        .iter()
        .map(|t| t.trim_start_matches("Event ").parse().unwrap())
        .collect()
}

pub(crate) fn status_count(sandbox: &TestSandbox, status: u16) -> u64 {
    sandbox
        .stats()
        .status_counts
        .get(&status)
        .copied()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_ride_out_an_outage_longer_than_the_visibility_timeout_exactly_once() {
    let redis = RedisServer::start().await;
    let sandbox = TestSandbox::start(1_000, Duration::from_secs(1)).await;
    sandbox.sandbox.set_faults(Faults {
        outage: true,
        ..Faults::default()
    });
    backlog(&redis_buffer(&redis).await, (0..600).map(case)).await;
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(TestGateway::start(options(&sandbox, Backend::Redis(redis.url()))).await);
    }
    // Three visibility timeouts of outage: every replica holds a batch in backoff throughout.
    eventually(
        "the replicas kept trying during the outage",
        Duration::from_secs(10),
        || async { status_count(&sandbox, 503) >= 3 },
    )
    .await;
    let outage_started = Instant::now();
    while outage_started.elapsed() < Duration::from_secs(6) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sandbox.sandbox.set_faults(Faults::default());
    eventually(
        "every case delivered after the outage",
        Duration::from_secs(30),
        || async { counts(&sandbox.titles(QUEUE)).len() >= 600 },
    )
    .await;
    // Give a late duplicate the chance to show before judging.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let titles = sandbox.titles(QUEUE);
    let duplicates = titles.len() - counts(&titles).len();
    println!(
        "6 s outage, 2 s visibility timeout, 3 replicas: {} delivered, {duplicates} duplicates",
        titles.len()
    );
    assert_eq!(duplicates, 0, "a claim was taken from a live replica");
    for replica in replicas {
        replica.stop().await;
    }
}

/// Waits for `n` more answers with `status` (probes of a pause, 1 s apart for the whole fleet)
/// and checks they took as long as probes one interval apart must: at most two of them can be
/// stragglers of the first burst (three replicas, one refusal already seen), so the other
/// `n - 2` span at least `n - 3` intervals. A probe per replica would come three times as fast.
/// A slow machine only makes them slower, so the bound holds under load; the deadline is
/// generous for the same reason.
async fn probe_pace(sandbox: &TestSandbox, status: u16, n: u64) -> Duration {
    let before = status_count(sandbox, status);
    let started = Instant::now();
    eventually("the probes go on", Duration::from_secs(60), || async {
        if status_count(sandbox, status) >= before + n {
            Ok(())
        } else {
            Err(format!(
                "the probes stopped: {} in 60 s",
                status_count(sandbox, status) - before
            ))
        }
    })
    .await;
    let took = started.elapsed();
    let least = Duration::from_secs(n - 3).mul_f64(0.9);
    assert!(
        took >= least,
        "{n} answers {status} in {took:?}: more than one probe per 1 s interval"
    );
    took
}

/// A 401 for every request: the key pauses on all three replicas, and the probes that follow
/// come one per interval for the whole fleet.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_key_pauses_three_replicas_with_one_probe_per_interval() {
    let redis = RedisServer::start().await;
    let sandbox = TestSandbox::start(1_000, Duration::from_secs(1)).await;
    backlog(&redis_buffer(&redis).await, (0..300).map(case)).await;
    let mut replicas = Vec::new();
    for _ in 0..3 {
        let options = options(&sandbox, Backend::Redis(redis.url()))
            .setting("CASEGATE_DUVO__API_KEY", "dv_wrong_key")
            .setting("CASEGATE_ADMIN__TOKEN", ADMIN_TOKEN);
        replicas.push(TestGateway::start(options).await);
    }
    eventually(
        "the API refuses the key",
        Duration::from_secs(20),
        || async { status_count(&sandbox, 401) >= 1 },
    )
    .await;
    let probes = probe_pace(&sandbox, 401, 8).await;
    println!("401 pause: 8 refusals across 3 replicas took {probes:?} (1 s interval)");
    assert_eq!(sandbox.stats().accepted_cases, 0);
    // Every replica tells the same story: its status lists the paused key, its gauge says 1.
    for replica in &replicas {
        eventually(
            "status and gauge agree with the pause",
            Duration::from_secs(5),
            || async {
                let (report, paused) = pause_story(replica).await;
                let gauged = paused.iter().any(|line| line.contains("kind=\"key\""));
                if report.paused_keys.len() == 1 && gauged {
                    Ok(())
                } else {
                    Err(format!(
                        "{:?} / paused key gauged: {gauged}",
                        report.paused_keys
                    ))
                }
            },
        )
        .await;
    }
    let depth = redis_buffer(&redis).await.stats(QUEUE).await.unwrap();
    assert_eq!(depth.depth, 300, "the cases stay buffered");
    assert!(
        depth.claimed <= 100,
        "a paused key claims nothing beyond the probe's batch: {} claimed",
        depth.claimed
    );
    for replica in replicas {
        replica.stop().await;
    }
}

/// 404 for the queue: three replicas pause it together, probe once per interval, and when the
/// queue exists again its cases go out in the order they were buffered, each once.
async fn an_unknown_queue_pauses_then_resumes_in_order(backend: impl Fn() -> Backend, n: usize) {
    let sandbox = TestSandbox::start(1_000, Duration::from_secs(1)).await;
    sandbox.sandbox.set_faults(Faults {
        missing_queues: vec![QUEUE.into()],
        ..Faults::default()
    });
    let replicas_n = if matches!(backend(), Backend::Redis(_)) {
        3
    } else {
        1
    };
    let mut replicas = Vec::new();
    for _ in 0..replicas_n {
        replicas.push(TestGateway::start(options(&sandbox, backend())).await);
    }
    let client = crate::support::http_client();
    for i in 0..n {
        let status = post_json(
            &client,
            &replicas[i % replicas_n].url("/hooks/src"),
            format!(r#"{{"id": {i}}}"#),
        )
        .await;
        assert_eq!(status, 202);
    }
    eventually("the API answers 404", Duration::from_secs(20), || async {
        status_count(&sandbox, 404) >= 1
    })
    .await;
    let probes = probe_pace(&sandbox, 404, 8).await;
    println!("404 pause on {replicas_n} replica(s): 8 refusals took {probes:?} (1 s interval)");
    sandbox.sandbox.set_faults(Faults::default());
    // Delivered after the queue came back.
    sandbox.wait_for(QUEUE, n, Duration::from_secs(20)).await;
    let titles = sandbox.titles(QUEUE);
    assert_eq!(titles.len(), n, "each case once");
    if replicas_n == 1 {
        let order = ids(&titles);
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(
            order, sorted,
            "a queue resumes in the order it was buffered"
        );
    }
    for replica in replicas {
        replica.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_queue_pauses_and_resumes_in_order_on_the_embedded_buffer() {
    an_unknown_queue_pauses_then_resumes_in_order(|| Backend::Embedded, 150).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unknown_queue_pauses_three_replicas_on_redis_and_resumes() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    an_unknown_queue_pauses_then_resumes_in_order(move || Backend::Redis(url.clone()), 150).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_queue_on_one_redis_replica_resumes_in_order() {
    let redis = RedisServer::start().await;
    let sandbox = TestSandbox::start(1_000, Duration::from_secs(1)).await;
    sandbox.sandbox.set_faults(Faults {
        missing_queues: vec![QUEUE.into()],
        ..Faults::default()
    });
    backlog(&redis_buffer(&redis).await, (0..250).map(case)).await;
    let gateway = TestGateway::start(options(&sandbox, Backend::Redis(redis.url()))).await;
    eventually(
        "the API answers 404 twice",
        Duration::from_secs(10),
        || async { status_count(&sandbox, 404) >= 2 },
    )
    .await;
    sandbox.sandbox.set_faults(Faults::default());
    // Every case delivered.
    sandbox.wait_for(QUEUE, 250, Duration::from_secs(20)).await;
    let order = ids(&sandbox.titles(QUEUE));
    assert_eq!(
        order,
        (0..250).collect::<Vec<_>>(),
        "in buffered order, once"
    );
    gateway.stop().await;
}

/// One case the API fails on (500) among 300, on one queue: bisecting isolates it, the other
/// 299 go out in order, it is dead-lettered with the last answer; the same length of whole-API
/// outage dead-letters nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_500_poison_case_is_dead_lettered_and_an_outage_is_not() {
    let sandbox = TestSandbox::start(1_000, Duration::from_secs(1)).await;
    sandbox.sandbox.set_faults(Faults {
        fail_title_pattern: Some("^Event 150$".into()),
        ..Faults::default()
    });
    let dir = tempfile::tempdir().unwrap();
    backlog(&embedded_buffer(dir.path()), (0..300).map(case)).await;
    let started = Instant::now();
    let gateway = TestGateway::start_in(
        options(&sandbox, Backend::Embedded).setting("CASEGATE_ADMIN__TOKEN", ADMIN_TOKEN),
        dir,
    )
    .await;
    // The other 299 cases delivered.
    sandbox.wait_for(QUEUE, 299, Duration::from_secs(30)).await;
    let poisoned_after = started.elapsed();
    let order = ids(&sandbox.titles(QUEUE));
    let expected: Vec<usize> = (0..300).filter(|i| *i != 150).collect();
    assert_eq!(order, expected, "the others in order, each once");
    let requests = sandbox.stats().total_requests;
    println!(
        "500-poison case among 300: the other 299 delivered in {poisoned_after:?} with {requests} requests"
    );
    assert!(
        requests <= 60,
        "bisecting 100 cases costs a few requests per level, not one per case: {requests}"
    );
    // Its failures count only with fresh evidence that the API takes other cases: newer
    // webhooks go through while it is retried, until it is dead-lettered.
    let client = crate::support::http_client();
    let next = AtomicUsize::new(300);
    eventually(
        "the poison case is dead-lettered",
        Duration::from_secs(60),
        || async {
            if pause_story(&gateway).await.0.dead_letters > 0 {
                return true;
            }
            let id = next.fetch_add(1, Ordering::Relaxed);
            let body = format!(r#"{{"id": {id}}}"#);
            assert_eq!(
                post_json(&client, &gateway.url("/hooks/src"), body).await,
                202
            );
            // Newer webhooks arrive a few per second, not in a flood.
            tokio::time::sleep(Duration::from_millis(275)).await;
            false
        },
    )
    .await;
    let next = next.into_inner();
    // Every newer case delivered.
    sandbox
        .wait_for(QUEUE, next - 1, Duration::from_secs(20))
        .await;
    let dir = gateway.stop().await;
    let buffer = embedded_buffer(dir.path());
    let dead = buffer.list_dead_letters(None, 10).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(
        dead[0].record.reason.contains("500"),
        "{}",
        dead[0].record.reason
    );
    match &dead[0].record.kind {
        DeadLetterKind::Refused { case, .. } => assert_eq!(case.title, "Event 150"),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(buffer.stats(QUEUE).await.unwrap().depth, 0);
    drop(buffer);

    // The same time in a whole-API outage: nothing is dead-lettered, all arrive after it.
    let outage = TestSandbox::start(1_000, Duration::from_secs(1)).await;
    outage.sandbox.set_faults(Faults {
        outage: true,
        ..Faults::default()
    });
    let dir = tempfile::tempdir().unwrap();
    backlog(&embedded_buffer(dir.path()), (0..300).map(case)).await;
    let gateway = TestGateway::start_in(options(&outage, Backend::Embedded), dir).await;
    let outage_for = poisoned_after.max(Duration::from_secs(5));
    tokio::time::sleep(outage_for).await;
    assert!(status_count(&outage, 503) >= 5, "delivery kept trying");
    outage.sandbox.set_faults(Faults::default());
    // Every case delivered after the outage.
    outage.wait_for(QUEUE, 300, Duration::from_secs(30)).await;
    let dir = gateway.stop().await;
    let buffer = embedded_buffer(dir.path());
    assert!(
        buffer.list_dead_letters(None, 10).await.unwrap().is_empty(),
        "an outage dead-letters nothing"
    );
    assert_eq!(counts(&outage.titles(QUEUE)).len(), 300);
}

/// What a replica says about its pauses: `/admin/status` (as `casegate status` renders it) and
/// the `casegate_delivery_paused` gauge lines set to 1.
pub(crate) async fn pause_story(
    gateway: &TestGateway,
) -> (casegate::status::StatusReport, Vec<String>) {
    let report = get_json(&gateway.url("/admin/status"), Some(ADMIN_TOKEN)).await;
    let report = serde_json::from_value(report).unwrap();
    let paused = get_text(&gateway.url("/metrics"), None)
        .await
        .lines()
        .filter(|line| line.starts_with("casegate_delivery_paused{") && line.ends_with(" 1"))
        .map(str::to_string)
        .collect();
    (report, paused)
}
