//! Replicas and their identity on one Redis: a killed replica resumes its batch at once under
//! its consumer name, which one live process holds at a time, and with `buffer.wait_replicas` a
//! webhook is acknowledged only once a Redis replica has it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use casegate_sandbox::Faults;

use crate::long_faults::{counts, mapping, redis_buffer};
use crate::support::cases::{backlog, case};
use crate::support::gateway::{Backend, GatewayOptions, QUEUE, TestGateway};
use crate::support::post_json;
use crate::support::process::CasegateProcess;
use crate::support::redis_server::RedisServer;
use crate::support::sandbox::TestSandbox;
use crate::support::wait::eventually;

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
    backlog(&redis_buffer(&redis).await, (0..50).map(case)).await;
    let mut env = sandbox.settings();
    for (k, v) in [
        ("CASEGATE_BUFFER__BACKEND", "redis".to_string()),
        ("CASEGATE_BUFFER__REDIS_URL", redis.url()),
        ("CASEGATE_DELIVERY__CONSUMER", "replica-a".into()),
    ] {
        env.push((k.into(), v));
    }
    let process = CasegateProcess::serve(dir.path(), &env).await;
    let buffer = redis_buffer(&redis).await;
    eventually("the batch is claimed", Duration::from_secs(5), || async {
        buffer.stats(QUEUE).await.unwrap().claimed == 50
    })
    .await;
    process.kill9().await;
    sandbox.sandbox.set_faults(Faults::default());
    let restarted = Instant::now();
    let process = CasegateProcess::serve(dir.path(), &env).await;
    eventually(
        "the held batch resumed within seconds (visibility timeout 300 s)",
        Duration::from_secs(10),
        || async { counts(&sandbox.titles(QUEUE)).len() >= 50 },
    )
    .await;
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

    let mut conn = replica.connection().await;
    let _: () = redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(primary.port())
        .query_async(&mut conn)
        .await
        .unwrap();
    let next = AtomicUsize::new(2);
    // A replica following the primary confirms writes.
    gateway
        .post_until(202, Duration::from_secs(10), "src", &headers, || {
            format!(r#"{{"id": {}}}"#, next.fetch_add(1, Ordering::Relaxed))
        })
        .await;
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
            let mut conn = crate::support::redis_server::connect(&url).await;
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
    let attempt = AtomicUsize::new(0);
    eventually(
        "a following replica confirms writes",
        Duration::from_secs(10),
        || async {
            let id = format!("warm-{}", attempt.fetch_add(1, Ordering::Relaxed));
            let answer = gateway.post("src", &headers(&id), r#"{"id": 0}"#).await;
            if answer.status == 202 {
                Ok(())
            } else {
                Err(answer.body)
            }
        },
    )
    .await;

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
    let body = eventually(
        "the retry is acknowledged once the replica is back",
        Duration::from_secs(10),
        || async {
            let answer = gateway.post("src", &headers("evt-1"), r#"{"id": 1}"#).await;
            if answer.status == 200 {
                return Ok(answer.body);
            }
            assert_eq!(answer.status, 503, "{}", answer.body);
            Err(answer.body)
        },
    )
    .await;
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

/// Runs `casegate serve` on `dir` and waits for it to exit; returns its stderr. Panics if it is
/// still running after 20 s.
async fn serve_until_exit(dir: &std::path::Path, env: &[(String, String)]) -> String {
    let port = crate::support::free_port();
    let command = crate::support::process::serve_command(dir, port, env);
    let (status, _, stderr) = CasegateProcess::spawn(command).exit().await;
    assert!(!status.success());
    stderr
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
    let first = CasegateProcess::serve(first_dir.path(), &env).await;
    let refused = serve_until_exit(second_dir.path(), &env).await;
    assert!(
        refused.contains("replica-shared")
            && refused.contains("delivery.consumer")
            && refused.contains("CASEGATE_DELIVERY__CONSUMER"),
        "the refusal names the consumer and the setting: {refused}"
    );

    first.kill9().await;
    let restarted = Instant::now();
    let first = CasegateProcess::serve(first_dir.path(), &env).await;
    let client = crate::support::http_client();
    let status = post_json(&client, &first.url("/hooks/src"), r#"{"id": 1}"#).await;
    assert_eq!(status, 202);
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
