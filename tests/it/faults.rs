//! Fault injection under load. Each scenario counts every webhook that got a 2xx and checks that
//! each one's case reached the sandbox API, and reports duplicates (allowed only from a kill
//! between the API's 2xx and the ack: at most one batch per kill).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crate::support::gateway::QUEUE;
use crate::support::process::CasegateProcess;
use crate::support::redis_server::RedisServer;
use crate::support::sandbox::TestSandbox;
use crate::support::wait::eventually;

const BATCH: usize = 20;

fn workspace(dir: &std::path::Path) {
    std::fs::create_dir_all(dir.join("mappings")).unwrap();
    std::fs::write(
        dir.join("mappings/src.yaml"),
        format!("verify: {{scheme: none}}\nrules:\n  - {{name: all, queue: {QUEUE}, title: 'Event {{{{ $.id }}}}'}}\n"),
    )
    .unwrap();
}

fn redis_env(sandbox: &TestSandbox, redis_url: &str) -> Vec<(String, String)> {
    let mut env = sandbox.settings();
    for (k, v) in [
        ("CASEGATE_BUFFER__BACKEND", "redis".to_string()),
        ("CASEGATE_BUFFER__REDIS_URL", redis_url.to_string()),
        ("CASEGATE_BUFFER__OP_TIMEOUT_MS", "500".into()),
        ("CASEGATE_DELIVERY__RATE", "1000".into()),
        ("CASEGATE_DELIVERY__WINDOW_SECS", "2".into()),
        ("CASEGATE_DELIVERY__MAX_BATCH", BATCH.to_string()),
        ("CASEGATE_DELIVERY__VISIBILITY_TIMEOUT_SECS", "2".into()),
        ("CASEGATE_DELIVERY__BACKOFF_BASE_MS", "50".into()),
        ("CASEGATE_DELIVERY__BACKOFF_MAX_SECS", "1".into()),
    ] {
        env.push((k.into(), v));
    }
    env
}

/// Sends webhooks `{"id": n}` round-robin to `ports` until `stop`, returning the acknowledged ids
/// and counting them in `acked` as they come (scenarios wait on it, not on the clock, so a slow
/// machine only makes them slower).
fn load(
    ports: Vec<u16>,
    next: Arc<AtomicUsize>,
    acked: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<usize>> {
    tokio::spawn(async move {
        let client = crate::support::http_client();
        let mut acknowledged = Vec::new();
        let mut turn = 0usize;
        while !stop.load(Ordering::Relaxed) {
            let id = next.fetch_add(1, Ordering::Relaxed);
            let port = ports[turn % ports.len()];
            turn += 1;
            let sent = client
                .post(format!("http://127.0.0.1:{port}/hooks/src"))
                .header("content-type", "application/json")
                .body(format!(r#"{{"id": {id}}}"#))
                .timeout(Duration::from_secs(3))
                .send()
                .await;
            match sent {
                Ok(response) if response.status().is_success() => {
                    acknowledged.push(id);
                    acked.fetch_add(1, Ordering::Relaxed);
                }
                Ok(response) => assert!(
                    response.status().as_u16() == 503,
                    "only 503 may refuse a webhook under faults, got {}",
                    response.status()
                ),
                // A killed replica drops its connections: not acknowledged, the sender retries.
                Err(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        acknowledged
    })
}

/// Waits until the load generators have had `at_least` webhooks acknowledged in all.
async fn acknowledged_at_least(acked: &AtomicUsize, at_least: usize) {
    eventually(
        &format!("{at_least} webhooks acknowledged"),
        Duration::from_secs(60),
        || async { acked.load(Ordering::Relaxed) >= at_least },
    )
    .await;
}

/// Waits until every acknowledged id reached the sandbox; returns the number of duplicates.
async fn settle(sandbox: &TestSandbox, acknowledged: &[usize]) -> usize {
    eventually(
        "every acknowledged webhook reaches the API",
        Duration::from_secs(40),
        || async {
            let titles = sandbox.titles(QUEUE);
            let mut counts: HashMap<String, usize> = HashMap::new();
            for title in &titles {
                *counts.entry(title.clone()).or_default() += 1;
            }
            let missing: Vec<_> = acknowledged
                .iter()
                .filter(|id| !counts.contains_key(&format!("Event {id}")))
                .collect();
            if missing.is_empty() {
                Ok(titles.len() - counts.len())
            } else {
                Err(format!(
                    "{} acknowledged webhooks never reached the API, e.g. {:?}",
                    missing.len(),
                    &missing[..missing.len().min(5)]
                ))
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_under_load_loses_nothing_acknowledged() {
    let mut redis = RedisServer::start().await;
    let sandbox = TestSandbox::start(1_000, Duration::from_secs(2)).await;
    let dir = tempfile::tempdir().unwrap();
    workspace(dir.path());
    let gateway = CasegateProcess::serve(dir.path(), &redis_env(&sandbox, &redis.url())).await;
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicUsize::new(0));
    let traffic = load(
        vec![gateway.port],
        Arc::new(AtomicUsize::new(0)),
        acked.clone(),
        stop.clone(),
    );
    acknowledged_at_least(&acked, 25).await;
    redis.stop();
    // Down for a while under load: webhooks get 503 meanwhile.
    tokio::time::sleep(Duration::from_millis(700)).await;
    redis.restart().await;
    let before_restart = acked.load(Ordering::Relaxed);
    acknowledged_at_least(&acked, before_restart + 26).await;
    stop.store(true, Ordering::Relaxed);
    let acknowledged = traffic.await.unwrap();
    assert!(
        acknowledged.len() > 50,
        "the load generator got through: {}",
        acknowledged.len()
    );
    let duplicates = settle(&sandbox, &acknowledged).await;
    println!(
        "redis restart: {} acknowledged, {duplicates} duplicates",
        acknowledged.len()
    );
    assert!(
        duplicates <= BATCH,
        "{duplicates} duplicates from one Redis restart"
    );
    gateway.kill9().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_one_killed_mid_run_lose_nothing_and_stay_within_the_limit() {
    let redis = RedisServer::start().await;
    // 6 requests per 2 s (60 cases/s in batches of 20): the load below exceeds it several
    // times over, so the shared limit is what paces the replicas.
    const RATE: usize = 6;
    let sandbox = TestSandbox::start(RATE as u32, Duration::from_secs(2)).await;
    sandbox.sandbox.set_faults(casegate_sandbox::Faults {
        latency_ms: 50,
        error_ratio: 0.05,
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    workspace(dir.path());
    let mut env = redis_env(&sandbox, &redis.url());
    env.push(("CASEGATE_DELIVERY__RATE".into(), RATE.to_string()));
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(CasegateProcess::serve(dir.path(), &env).await);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicUsize::new(0));
    let acked = Arc::new(AtomicUsize::new(0));
    let survivors: Vec<u16> = replicas[1..].iter().map(|r| r.port).collect();
    let everyone = load(
        replicas.iter().map(|r| r.port).collect(),
        next.clone(),
        acked.clone(),
        stop.clone(),
    );
    // The kill lands mid-run: a window's worth is in, more keeps coming.
    acknowledged_at_least(&acked, RATE * BATCH).await;
    let victim = replicas.remove(0);
    victim.kill9().await;
    let after_kill = load(survivors, next, acked.clone(), stop.clone());
    acknowledged_at_least(&acked, 2 * RATE * BATCH + 1).await;
    stop.store(true, Ordering::Relaxed);
    let mut acknowledged = everyone.await.unwrap();
    acknowledged.extend(after_kill.await.unwrap());
    let duplicates = settle(&sandbox, &acknowledged).await;
    println!(
        "replica kill: {} acknowledged, {duplicates} duplicates",
        acknowledged.len()
    );
    assert!(duplicates <= BATCH, "{duplicates} duplicates from one kill");
    assert!(
        acknowledged.len() > 2 * RATE * BATCH,
        "the load exceeded what the limit lets through in a window: {}",
        acknowledged.len()
    );
    sandbox.assert_paced(RATE, Duration::from_secs(2));
    for replica in replicas {
        replica.kill9().await;
    }
}

/// SIGKILLs the gateway three times while webhooks keep arriving, restarting it on the same
/// buffer each time.
async fn repeated_sigkill_under_load(redis: Option<&RedisServer>) {
    let sandbox = TestSandbox::start(1_000, Duration::from_secs(2)).await;
    sandbox.sandbox.set_faults(casegate_sandbox::Faults {
        latency_ms: 30,
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    workspace(dir.path());
    let env = match redis {
        Some(redis) => redis_env(&sandbox, &redis.url()),
        None => redis_env(&sandbox, "redis://unused")
            .into_iter()
            .filter(|(k, _)| !k.starts_with("CASEGATE_BUFFER__"))
            .collect(),
    };
    // A restarted container keeps its host name, so its consumer name.
    let mut env = env;
    env.push((
        "CASEGATE_DELIVERY__CONSUMER".into(),
        "restarted-replica".into(),
    ));
    let next = Arc::new(AtomicUsize::new(0));
    let acked = Arc::new(AtomicUsize::new(0));
    let mut acknowledged = Vec::new();
    let kills = 3;
    for round in 0..=kills {
        let gateway = CasegateProcess::serve(dir.path(), &env).await;
        let stop = Arc::new(AtomicBool::new(false));
        let before = acked.load(Ordering::Relaxed);
        let traffic = load(
            vec![gateway.port],
            next.clone(),
            acked.clone(),
            stop.clone(),
        );
        // Each life acknowledges some webhooks before it is killed.
        acknowledged_at_least(&acked, before + 30).await;
        if round < kills {
            gateway.kill9().await;
            stop.store(true, Ordering::Relaxed);
            acknowledged.extend(traffic.await.unwrap());
        } else {
            stop.store(true, Ordering::Relaxed);
            acknowledged.extend(traffic.await.unwrap());
            let duplicates = settle(&sandbox, &acknowledged).await;
            println!(
                "{kills} kills: {} acknowledged, {duplicates} duplicates",
                acknowledged.len()
            );
            assert!(
                duplicates <= kills * BATCH,
                "{duplicates} duplicates for {kills} kills"
            );
            gateway.kill9().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_sigkill_under_load_loses_nothing_on_the_embedded_buffer() {
    repeated_sigkill_under_load(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_sigkill_under_load_loses_nothing_on_redis() {
    let redis = RedisServer::start().await;
    repeated_sigkill_under_load(Some(&redis)).await;
}
