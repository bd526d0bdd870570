//! Delivery through long faults, across replicas sharing one Redis: claims stay exclusive for
//! the whole fault, pauses stop every replica at once with one probe per interval, a poison case
//! cannot stall its queue, and a restarted replica resumes at once.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use casegate::buffer::{Buffer, Enqueue, RedisBuffer};
use casegate::case::DeadLetterKind;
use casegate::sandbox::Faults;

use crate::support::cases::case;
use crate::support::gateway::{Backend, GatewayOptions, QUEUE, TestGateway, embedded_buffer};
use crate::support::process::GatewayProcess;
use crate::support::redis_server::RedisServer;
use crate::support::sandbox::TestSandbox;

const ADMIN_TOKEN: &str = "long-faults-admin-token-0123456789abcdef";

fn mapping() -> String {
    format!(
        "verify: {{scheme: none}}\nrules:\n  - {{name: all, queue: {QUEUE}, title: 'Event {{{{ $.id }}}}'}}\n"
    )
}

/// Settings scaled down so a "long" fault takes seconds: a 2 s visibility timeout, 1 s probes.
fn scaled() -> Vec<(&'static str, String)> {
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

fn options(sandbox: &TestSandbox, backend: Backend) -> GatewayOptions {
    let mut options = GatewayOptions::embedded(&[("src.yaml", &mapping())]);
    options.backend = backend;
    options.settings.extend(sandbox.settings());
    for (key, value) in scaled() {
        options.settings.push((key.into(), value));
    }
    options
}

async fn backlog(buffer: &Buffer, range: std::ops::Range<usize>) {
    let cases = range.map(case).collect();
    buffer
        .enqueue(Enqueue {
            dedupe: None,
            cases,
            dead_letters: vec![],
        })
        .await
        .unwrap();
}

async fn redis_buffer(redis: &RedisServer) -> Buffer {
    Buffer::Redis(
        RedisBuffer::connect(&redis.url(), "casegate", Duration::from_secs(2))
            .await
            .unwrap(),
    )
}

/// Polls `condition` until it holds or `within` passes; returns whether it held.
async fn eventually(within: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if condition() {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn counts(titles: &[String]) -> HashMap<&str, usize> {
    let mut counts = HashMap::new();
    for title in titles {
        *counts.entry(title.as_str()).or_default() += 1;
    }
    counts
}

fn ids(titles: &[String]) -> Vec<usize> {
    titles
        .iter()
        .map(|t| t.trim_start_matches("Event ").parse().unwrap())
        .collect()
}

fn status_count(sandbox: &TestSandbox, status: u16) -> u64 {
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
    backlog(&redis_buffer(&redis).await, 0..600).await;
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(TestGateway::start(options(&sandbox, Backend::Redis(redis.url()))).await);
    }
    // Three visibility timeouts of outage: every replica holds a batch in backoff throughout.
    assert!(
        eventually(Duration::from_secs(10), || status_count(&sandbox, 503) >= 3).await,
        "the replicas kept trying during the outage"
    );
    let outage_started = Instant::now();
    while outage_started.elapsed() < Duration::from_secs(6) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sandbox.sandbox.set_faults(Faults::default());
    assert!(
        eventually(Duration::from_secs(30), || counts(&sandbox.titles(QUEUE))
            .len()
            >= 600)
        .await,
        "every case delivered after the outage"
    );
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
    assert!(
        eventually(Duration::from_secs(60), || status_count(sandbox, status)
            >= before + n)
        .await,
        "the probes stopped: {} in 60 s",
        status_count(sandbox, status) - before
    );
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
    backlog(&redis_buffer(&redis).await, 0..300).await;
    let mut replicas = Vec::new();
    for _ in 0..3 {
        let options = options(&sandbox, Backend::Redis(redis.url()))
            .setting("CASEGATE_DUVO__API_KEY", "dv_wrong_key")
            .setting("CASEGATE_ADMIN__TOKEN", ADMIN_TOKEN);
        replicas.push(TestGateway::start(options).await);
    }
    assert!(eventually(Duration::from_secs(20), || status_count(&sandbox, 401) >= 1).await);
    let probes = probe_pace(&sandbox, 401, 8).await;
    println!("401 pause: 8 refusals across 3 replicas took {probes:?} (1 s interval)");
    assert_eq!(sandbox.stats().accepted_cases, 0);
    // Every replica tells the same story: its status lists the paused key, its gauge says 1.
    let client = crate::support::http_client();
    for replica in &replicas {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let status: serde_json::Value = client
                .get(replica.url("/admin/status"))
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let metrics = client
                .get(replica.url("/metrics"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            let listed = status["paused_keys"]
                .as_array()
                .is_some_and(|keys| keys.len() == 1);
            let gauged = metrics.lines().any(|line| {
                line.starts_with("casegate_delivery_paused{")
                    && line.contains("kind=\"key\"")
                    && line.ends_with(" 1")
            });
            if listed && gauged {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "status and gauge disagree with the pause: {status} / paused key gauged: {gauged}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
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
        let response = client
            .post(replicas[i % replicas_n].url("/hooks/src"))
            .header("content-type", "application/json")
            .body(format!(r#"{{"id": {i}}}"#))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 202);
    }
    assert!(eventually(Duration::from_secs(20), || status_count(&sandbox, 404) >= 1).await);
    let probes = probe_pace(&sandbox, 404, 8).await;
    println!("404 pause on {replicas_n} replica(s): 8 refusals took {probes:?} (1 s interval)");
    sandbox.sandbox.set_faults(Faults::default());
    assert!(
        eventually(Duration::from_secs(20), || sandbox.titles(QUEUE).len() >= n).await,
        "delivered after the queue came back"
    );
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
    backlog(&redis_buffer(&redis).await, 0..250).await;
    let gateway = TestGateway::start(options(&sandbox, Backend::Redis(redis.url()))).await;
    assert!(eventually(Duration::from_secs(10), || status_count(&sandbox, 404) >= 2).await);
    sandbox.sandbox.set_faults(Faults::default());
    assert!(
        eventually(Duration::from_secs(20), || sandbox.titles(QUEUE).len()
            >= 250)
        .await
    );
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
    backlog(&embedded_buffer(dir.path()), 0..300).await;
    let started = Instant::now();
    let gateway = TestGateway::start_in(
        options(&sandbox, Backend::Embedded).setting("CASEGATE_ADMIN__TOKEN", ADMIN_TOKEN),
        dir,
    )
    .await;
    assert!(
        eventually(Duration::from_secs(30), || sandbox.titles(QUEUE).len()
            >= 299)
        .await,
        "the poison case stalled its queue: {} delivered",
        sandbox.titles(QUEUE).len()
    );
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
    let mut next = 300;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while pause_story(&gateway).await.0.dead_letters == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never dead-lettered"
        );
        let response = client
            .post(gateway.url("/hooks/src"))
            .header("content-type", "application/json")
            .body(format!(r#"{{"id": {next}}}"#))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 202);
        next += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        eventually(Duration::from_secs(20), || sandbox.titles(QUEUE).len()
            >= next - 1)
        .await,
        "every newer case delivered"
    );
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
    backlog(&embedded_buffer(dir.path()), 0..300).await;
    let gateway = TestGateway::start_in(options(&outage, Backend::Embedded), dir).await;
    let outage_for = poisoned_after.max(Duration::from_secs(5));
    tokio::time::sleep(outage_for).await;
    assert!(status_count(&outage, 503) >= 5, "delivery kept trying");
    outage.sandbox.set_faults(Faults::default());
    assert!(
        eventually(Duration::from_secs(30), || outage.titles(QUEUE).len()
            >= 300)
        .await
    );
    let dir = gateway.stop().await;
    let buffer = embedded_buffer(dir.path());
    assert!(
        buffer.list_dead_letters(None, 10).await.unwrap().is_empty(),
        "an outage dead-letters nothing"
    );
    assert_eq!(counts(&outage.titles(QUEUE)).len(), 300);
}

/// SIGKILL mid-batch with the default 5-minute visibility timeout; the replica restarts under
/// the same consumer name and resumes the batch it held at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_batch_resumes_at_once_under_the_same_identity() {
    let redis = RedisServer::start().await;
    let sandbox = TestSandbox::start(1_000, Duration::from_secs(1)).await;
    // Every answer takes 2 s, so the kill lands while the batch is in flight.
    sandbox.sandbox.set_faults(Faults {
        latency_ms: 2_000,
        ..Faults::default()
    });
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("mappings")).unwrap();
    std::fs::write(dir.path().join("mappings/src.yaml"), mapping()).unwrap();
    backlog(&redis_buffer(&redis).await, 0..50).await;
    let mut env = sandbox.settings();
    for (k, v) in [
        ("CASEGATE_BUFFER__BACKEND", "redis".to_string()),
        ("CASEGATE_BUFFER__REDIS_URL", redis.url()),
        ("CASEGATE_DELIVERY__CONSUMER", "replica-a".into()),
    ] {
        env.push((k.into(), v));
    }
    let process = GatewayProcess::spawn(dir.path(), &env).await;
    let buffer = redis_buffer(&redis).await;
    let mut claimed = false;
    for _ in 0..250 {
        if buffer.stats(QUEUE).await.unwrap().claimed == 50 {
            claimed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(claimed, "the batch was claimed");
    process.kill9().await;
    sandbox.sandbox.set_faults(Faults::default());
    let restarted = Instant::now();
    let process = GatewayProcess::spawn(dir.path(), &env).await;
    assert!(
        eventually(Duration::from_secs(10), || counts(&sandbox.titles(QUEUE))
            .len()
            >= 50)
        .await,
        "the held batch was not resumed within seconds (visibility timeout 300 s)"
    );
    let resumed_in = restarted.elapsed();
    println!("restart under the same identity: batch delivered {resumed_in:?} after restart");
    assert!(resumed_in < Duration::from_secs(10));
    process.kill9().await;
}

/// `buffer.wait_replicas = 1`: without a replica the write is not confirmed and the webhook gets
/// 503 (the provider retries); once a replica follows the primary, webhooks get 202 and the
/// replica holds their cases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_is_acknowledged_only_once_the_configured_replicas_have_it() {
    let primary = RedisServer::start().await;
    let replica = RedisServer::start().await;
    let mut options = GatewayOptions::embedded(&[("src.yaml", &mapping())])
        .setting("CASEGATE_BUFFER__WAIT_REPLICAS", "1")
        .setting("CASEGATE_DELIVERY__ENABLED", "false");
    options.backend = Backend::Redis(primary.url());
    let gateway = TestGateway::start(options).await;
    let headers: casegate::inbound::Headers =
        [("content-type", "application/json")].into_iter().collect();
    let answer = gateway.post("src", &headers, r#"{"id": 1}"#).await;
    assert_eq!(answer.status, 503, "no replica confirmed the write");
    assert!(answer.body["error"].is_string(), "{}", answer.body);

    let client = redis::Client::open(replica.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(primary.port())
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut accepted = false;
    for id in 2..200 {
        if gateway
            .post("src", &headers, format!(r#"{{"id": {id}}}"#))
            .await
            .status
            == 202
        {
            accepted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(accepted, "a replica following the primary confirms writes");
    let on_replica: u64 = redis::cmd("XLEN")
        .arg(format!("{{casegate}}:q:{QUEUE}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(on_replica >= 1, "the acknowledged case is on the replica");
    gateway.stop().await;
}

/// `buffer.wait_replicas = 1` with the replica down: the first attempt of a webhook reaches the
/// primary and gets 503; the provider's retries hit the dedupe mark and still get 503 (not a
/// `200 duplicate` no replica confirmed) until the replica is back and holds the first write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_webhook_is_not_acknowledged_as_a_duplicate_before_a_replica_has_it() {
    let primary = RedisServer::start().await;
    let mut replica = RedisServer::start().await;
    let mapping = format!("delivery_id: {{header: X-Event-Id}}\n{}", mapping());
    let mut options = GatewayOptions::embedded(&[("src.yaml", &mapping)])
        .setting("CASEGATE_BUFFER__WAIT_REPLICAS", "1")
        .setting("CASEGATE_DELIVERY__ENABLED", "false");
    options.backend = Backend::Redis(primary.url());
    let gateway = TestGateway::start(options).await;
    let follow = |replica: &RedisServer| {
        let url = replica.url();
        let port = primary.port();
        async move {
            let client = redis::Client::open(url).unwrap();
            let mut conn = client.get_multiplexed_async_connection().await.unwrap();
            let _: () = redis::cmd("REPLICAOF")
                .arg("127.0.0.1")
                .arg(port)
                .query_async(&mut conn)
                .await
                .unwrap();
            conn
        }
    };
    let headers = |id: &str| -> casegate::inbound::Headers {
        [("content-type", "application/json"), ("x-event-id", id)]
            .into_iter()
            .collect()
    };
    // The replica follows: a webhook is confirmed.
    follow(&replica).await;
    let mut confirmed = false;
    for attempt in 0..200 {
        let id = format!("warm-{attempt}");
        if gateway
            .post("src", &headers(&id), r#"{"id": 0}"#)
            .await
            .status
            == 202
        {
            confirmed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(confirmed, "a following replica confirms writes");

    replica.stop();
    let first = gateway.post("src", &headers("evt-1"), r#"{"id": 1}"#).await;
    assert_eq!(first.status, 503, "no replica confirmed: {}", first.body);
    let retry = gateway.post("src", &headers("evt-1"), r#"{"id": 1}"#).await;
    assert_eq!(
        retry.status, 503,
        "a retry is not acknowledged while no replica has the first write: {}",
        retry.body
    );

    replica.restart().await;
    let mut conn = follow(&replica).await;
    let mut acknowledged = None;
    for _ in 0..200 {
        let answer = gateway.post("src", &headers("evt-1"), r#"{"id": 1}"#).await;
        if answer.status == 200 {
            acknowledged = Some(answer.body);
            break;
        }
        assert_eq!(answer.status, 503, "{}", answer.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let body = acknowledged.expect("the retry is acknowledged once the replica is back");
    assert_eq!(body["duplicate"], true, "{body}");
    let titles: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(format!("{{casegate}}:q:{QUEUE}"))
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    let holds_first = titles
        .iter()
        .any(|(_, fields)| fields.iter().any(|(_, v)| v.contains("Event 1\"")));
    assert!(holds_first, "the replica holds the acknowledged case");
    gateway.stop().await;
}

/// The value of the paused gauge for the default key in `/metrics`, if the series exists.
async fn default_key_paused(client: &reqwest::Client, url: &str) -> Option<String> {
    let metrics = client.get(url).send().await.ok()?.text().await.ok()?;
    metrics
        .lines()
        .find(|line| {
            line.starts_with("casegate_delivery_paused{")
                && line.contains("kind=\"key\"")
                && line.contains("name=\"default\"")
        })
        .and_then(|line| line.rsplit(' ').next())
        .map(str::to_string)
}

/// Serves a sandbox accepting only `api_key` on `listener`; stops when the sender is dropped.
fn serve_sandbox(
    api_key: &str,
    listener: std::net::TcpListener,
) -> (casegate::sandbox::Sandbox, tokio::sync::oneshot::Sender<()>) {
    let sandbox = casegate::sandbox::Sandbox::new(casegate::sandbox::SandboxConfig {
        api_key: api_key.into(),
        rate: 1_000,
        window: Duration::from_secs(1),
        ..Default::default()
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(casegate::sandbox::serve(
        sandbox.clone(),
        listener,
        async move {
            let _ = stopped.await;
        },
    ));
    (sandbox, stop)
}

/// The paused gauge's zero series for the default key (registered at startup) is the series a
/// 401 pause sets to 1, and it falls back to 0 when a probe succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_paused_gauge_of_the_configured_key_flips_during_a_401_pause() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    // The API knows another key: every request of the gateway's key is refused.
    let (refusing, stop_refusing) = serve_sandbox("dv_other_key", listener);
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("mappings")).unwrap();
    std::fs::write(dir.path().join("mappings/src.yaml"), mapping()).unwrap();
    let mut env: Vec<(String, String)> = vec![
        (
            "CASEGATE_DUVO__BASE_URL".into(),
            format!("http://{address}/v1"),
        ),
        ("CASEGATE_DUVO__API_KEY".into(), "dv_gateway_key".into()),
    ];
    env.extend(scaled().into_iter().map(|(k, v)| (k.to_string(), v)));
    let process = GatewayProcess::spawn(dir.path(), &env).await;
    let client = crate::support::http_client();
    let metrics = process.url("/metrics");
    assert_eq!(
        default_key_paused(&client, &metrics).await.as_deref(),
        Some("0"),
        "the zero series exists from startup"
    );
    let response = client
        .post(process.url("/hooks/src"))
        .header("content-type", "application/json")
        .body(r#"{"id": 7}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);
    let mut flipped = false;
    for _ in 0..250 {
        if default_key_paused(&client, &metrics).await.as_deref() == Some("1") {
            flipped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(flipped, "the 401 pause sets the default key's series to 1");
    assert!(
        refusing
            .stats()
            .status_counts
            .get(&401)
            .copied()
            .unwrap_or(0)
            >= 1
    );

    // The API accepts the key again (same address): the next probe resumes delivery.
    drop(stop_refusing);
    let mut accepting = None;
    for _ in 0..250 {
        if let Ok(listener) = std::net::TcpListener::bind(address) {
            accepting = Some(serve_sandbox("dv_gateway_key", listener));
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (accepting, _stop) = accepting.expect("the API address is free again");
    let mut resumed = false;
    for _ in 0..500 {
        if accepting.cases(QUEUE).len() == 1
            && default_key_paused(&client, &metrics).await.as_deref() == Some("0")
        {
            resumed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        resumed,
        "the probe's success delivers the case and sets the series to 0"
    );
    process.kill9().await;
}

/// A worker with nothing to claim (its queue's one case is held by another consumer) gives back
/// a probe it won: when a key's 401 pause runs out, the fleet's one probe reaches a queue with
/// cases waiting, not held off for another interval by a worker that sent nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_with_nothing_to_send_hands_back_the_probe_of_its_paused_key() {
    use casegate::delivery::limiter::{LimiterConfig, PauseKind, RateLimiter, key_id, key_pause};
    const IDLE_QUEUE: &str = "0b1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f";
    let redis = RedisServer::start().await;
    let sandbox = TestSandbox::start(1_000, Duration::from_secs(1)).await;
    let buffer = redis_buffer(&redis).await;
    let write = |i| {
        let buffer = buffer.clone();
        async move {
            buffer
                .enqueue(Enqueue {
                    dedupe: None,
                    cases: vec![crate::support::cases::case_in(IDLE_QUEUE, i)],
                    dead_letters: vec![],
                })
                .await
                .unwrap();
        }
    };
    // Another consumer holds the idle queue's first case (and keeps it: 60 s visibility).
    write(0).await;
    assert_eq!(
        buffer
            .claim(IDLE_QUEUE, "other-holder", 10)
            .await
            .unwrap()
            .len(),
        1
    );
    let gateway = TestGateway::start(
        options(&sandbox, Backend::Redis(redis.url()))
            .setting("CASEGATE_DELIVERY__PROBE_INTERVAL_SECS", "10")
            .setting("CASEGATE_DELIVERY__VISIBILITY_TIMEOUT_SECS", "60"),
    )
    .await;
    // Its worker delivers the second case with the default key, then finds nothing to claim.
    write(1).await;
    assert_eq!(
        sandbox
            .wait_for(IDLE_QUEUE, 1, Duration::from_secs(10))
            .await,
        1
    );

    // The key is refused for a moment (as a 401 would pause it), then its pause runs out.
    let Buffer::Redis(redis_buffer) = &buffer else {
        unreachable!()
    };
    let (conn, prefix, timeout) = redis_buffer.connection_for("limiter");
    let limits = LimiterConfig {
        rate: 100,
        window: Duration::from_secs(1),
        margin: Duration::ZERO,
    };
    let limiter = RateLimiter::redis(limits, conn, prefix, timeout);
    let pause = key_pause(&key_id(&casegate::secret::Secret::new(
        crate::support::sandbox::API_KEY,
    )));
    let held_at = Instant::now();
    limiter
        .hold(
            &pause,
            PauseKind::KeyRefused,
            Duration::from_millis(300),
            "401 (test)",
        )
        .await;
    // Wait until the pause has run out for longer than an idle worker's longest look-again
    // (1 s), or until someone took its probe meanwhile.
    loop {
        let probed = limiter
            .pauses()
            .await
            .iter()
            .any(|p| p.name == pause && p.remaining_ms > 1_000);
        if probed || held_at.elapsed() > Duration::from_millis(2_000) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    backlog(&buffer, 0..1).await;
    let delivered_in = Instant::now();
    assert_eq!(
        sandbox.wait_for(QUEUE, 1, Duration::from_secs(5)).await,
        1,
        "the waiting queue got the probe (probe interval 10 s), not the idle one"
    );
    println!(
        "after a pause ran out, the waiting queue's probe went out in {:?}",
        delivered_in.elapsed()
    );
    assert!(
        limiter.pauses().await.iter().all(|p| p.name != pause),
        "the probe's success resumed the key"
    );
    gateway.stop().await;
}

/// Runs `casegate serve` on `dir` and waits for it to exit; returns its stderr. Panics if it is
/// still running after 20 s.
async fn serve_until_exit(dir: &std::path::Path, env: &[(String, String)]) -> String {
    let port = crate::support::free_port();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_casegate"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--mappings",
        ])
        .arg(dir.join("mappings"))
        .env("CASEGATE_BUFFER__PATH", dir.join("buffer.redb"))
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let output = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("a second process under a taken consumer name refuses to start")
        .unwrap();
    assert!(!output.status.success());
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Two processes configured with one consumer name on one Redis: the second refuses to start and
/// names the setting. The first, SIGKILLed, restarts on its own data directory under the same
/// name at once (its lease, live for another visibility timeout, is its own) and delivers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_name_is_held_by_one_live_process_and_a_killed_one_takes_it_back() {
    let redis = RedisServer::start().await;
    let sandbox = TestSandbox::start(1_000, Duration::from_secs(1)).await;
    let workspace = || {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("mappings")).unwrap();
        std::fs::write(dir.path().join("mappings/src.yaml"), mapping()).unwrap();
        dir
    };
    let (first_dir, second_dir) = (workspace(), workspace());
    let mut env = sandbox.settings();
    for (k, v) in [
        ("CASEGATE_BUFFER__BACKEND", "redis".to_string()),
        ("CASEGATE_BUFFER__REDIS_URL", redis.url()),
        ("CASEGATE_DELIVERY__CONSUMER", "replica-shared".into()),
        ("CASEGATE_DELIVERY__POLL_INTERVAL_MS", "20".into()),
    ] {
        env.push((k.into(), v));
    }
    let first = GatewayProcess::spawn(first_dir.path(), &env).await;
    let refused = serve_until_exit(second_dir.path(), &env).await;
    assert!(
        refused.contains("replica-shared")
            && refused.contains("delivery.consumer")
            && refused.contains("CASEGATE_DELIVERY__CONSUMER"),
        "the refusal names the consumer and the setting: {refused}"
    );

    first.kill9().await;
    let restarted = Instant::now();
    let first = GatewayProcess::spawn(first_dir.path(), &env).await;
    let client = crate::support::http_client();
    let response = client
        .post(first.url("/hooks/src"))
        .header("content-type", "application/json")
        .body(r#"{"id": 1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);
    assert_eq!(
        sandbox.wait_for(QUEUE, 1, Duration::from_secs(10)).await,
        1,
        "the restarted process delivers under its name (visibility timeout 300 s)"
    );
    println!(
        "SIGKILLed and restarted under its consumer name: delivering {:?} after the restart",
        restarted.elapsed()
    );
    let refused = serve_until_exit(second_dir.path(), &env).await;
    assert!(refused.contains("delivery.consumer"), "{refused}");
    first.kill9().await;
}

/// What a replica says about its pauses: `/admin/status` (as `casegate status` renders it) and
/// the `casegate_delivery_paused` gauge lines set to 1.
async fn pause_story(gateway: &TestGateway) -> (casegate::status::StatusReport, Vec<String>) {
    let client = crate::support::http_client();
    let report: casegate::status::StatusReport = client
        .get(gateway.url("/admin/status"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let metrics = client
        .get(gateway.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let paused = metrics
        .lines()
        .filter(|line| line.starts_with("casegate_delivery_paused{") && line.ends_with(" 1"))
        .map(str::to_string)
        .collect();
    (report, paused)
}

/// A 429 pauses the key: `status` and the paused gauge say so while it holds, and both clear
/// once the key sends again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_429_pause_shows_in_status_and_the_paused_gauge_and_clears_after() {
    let redis = RedisServer::start().await;
    // One request per 4 s at the API, spent by another client before the gateway starts: the
    // gateway's first request meets a 429 with a retry-after of up to 4 s.
    let api_key = "dv_sandbox_429_status";
    // The gauge names the key as configured, never by the key itself (a name of its own, so
    // other tests' pauses in this process do not show on its series).
    let key_label = "name=\"status429\"";
    let sandbox = TestSandbox::start_with_key(1, Duration::from_secs(4), api_key).await;
    let spent = crate::support::http_client()
        .post(format!("{}/queues/{QUEUE}/cases", sandbox.base_url))
        .bearer_auth(api_key)
        .json(&serde_json::json!({"cases": [{"title": "another client", "data": "{}"}]}))
        .send()
        .await
        .unwrap();
    assert!(spent.status().is_success(), "{}", spent.status());
    let cases = (0..200)
        .map(|i| {
            let mut case = case(i);
            case.api_key_name = Some("status429".into());
            case
        })
        .collect();
    redis_buffer(&redis)
        .await
        .enqueue(Enqueue {
            dedupe: None,
            cases,
            dead_letters: vec![],
        })
        .await
        .unwrap();
    let gateway = TestGateway::start(
        options(&sandbox, Backend::Redis(redis.url()))
            .setting("CASEGATE_DUVO__API_KEY", "dv_default_unused")
            .setting("CASEGATE_DUVO__API_KEYS__STATUS429", api_key)
            .setting("CASEGATE_ADMIN__TOKEN", ADMIN_TOKEN),
    )
    .await;
    assert!(eventually(Duration::from_secs(20), || status_count(&sandbox, 429) >= 1).await);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (report, paused) = pause_story(&gateway).await;
        let listed = report
            .paused_keys
            .iter()
            .any(|k| k.reason.contains("429") && k.for_ms > 0);
        let rendered = casegate::status::render(&report);
        let gauged = paused
            .iter()
            .any(|line| line.contains("kind=\"key\"") && line.contains(key_label));
        if listed && gauged && rendered.contains("is paused") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the 429 pause does not show: {rendered} / gauge {paused:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        eventually(Duration::from_secs(40), || sandbox.titles(QUEUE).len()
            >= 201)
        .await,
        "delivered after the pause: {}",
        sandbox.titles(QUEUE).len()
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (report, paused) = pause_story(&gateway).await;
        if report.paused_keys.is_empty()
            && !paused
                .iter()
                .any(|line| line.contains("kind=\"key\"") && line.contains(key_label))
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the pause never cleared: {:?} / gauge {paused:?}",
            report.paused_keys
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let titles = sandbox.titles(QUEUE);
    assert!(counts(&titles).values().all(|&n| n == 1), "each case once");
    gateway.stop().await;
}

/// A rule naming an API key the config does not have: its queue pauses (shown by `status` and
/// the gauge), keeps every case, and sends nothing; the other queues flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_whose_rule_names_a_missing_key_is_paused_and_keeps_its_cases() {
    const KEYLESS: &str = "9a1d2c3b-4e5f-4a6b-8c7d-0e1f2a3b4c5d";
    let sandbox = TestSandbox::start(1_000, Duration::from_secs(1)).await;
    let keyless = format!(
        "verify: {{scheme: none}}\nrules:\n  - {{name: all, queue: {KEYLESS}, api_key: team-x, title: 'Keyless {{{{ $.id }}}}'}}\n"
    );
    let mut options =
        GatewayOptions::embedded(&[("src.yaml", &mapping()), ("keyless.yaml", &keyless)]);
    options.settings.extend(sandbox.settings());
    for (key, value) in scaled() {
        options.settings.push((key.into(), value));
    }
    let gateway = TestGateway::start(options.setting("CASEGATE_ADMIN__TOKEN", ADMIN_TOKEN)).await;
    let client = crate::support::http_client();
    for i in 0..5 {
        for source in ["src", "keyless"] {
            let response = client
                .post(gateway.url(&format!("/hooks/{source}")))
                .header("content-type", "application/json")
                .body(format!(r#"{{"id": {i}}}"#))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status().as_u16(), 202, "{source}");
        }
    }
    assert!(
        eventually(Duration::from_secs(20), || sandbox.titles(QUEUE).len() >= 5).await,
        "the configured queue flows"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (report, paused) = pause_story(&gateway).await;
        let queue = report.queues.iter().find(|q| q.queue == KEYLESS);
        let listed = queue.is_some_and(|q| {
            q.paused_for_ms.is_some() && q.last_error.as_deref().unwrap_or("").contains("team-x")
        });
        let gauged = paused
            .iter()
            .any(|line| line.contains("kind=\"queue\"") && line.contains(KEYLESS));
        let rendered = casegate::status::render(&report);
        if listed && gauged && rendered.contains("paused") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the keyless queue does not show as paused: {rendered} / gauge {paused:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        sandbox.titles(KEYLESS).is_empty(),
        "nothing is sent without its key"
    );
    let dir = gateway.stop().await;
    let buffer = embedded_buffer(dir.path());
    assert_eq!(
        buffer.stats(KEYLESS).await.unwrap().depth,
        5,
        "its cases are kept"
    );
    assert!(buffer.list_dead_letters(None, 10).await.unwrap().is_empty());
}
