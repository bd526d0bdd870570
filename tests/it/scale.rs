//! Many queues on one Redis: an idle gateway's Redis traffic does not grow with the number of
//! queues ever used, empty queues are forgotten after the retention period, new work still goes
//! out at once, and the queue set older versions kept is taken over.

use std::time::{Duration, Instant};

use casegate::inbound::Headers;
use redis::aio::MultiplexedConnection;

use crate::support::gateway::{Backend, GatewayOptions, QUEUE, TestGateway};
use crate::support::redis_server::RedisServer;
use crate::support::sandbox::TestSandbox;
use crate::support::wait::eventually;

fn mapping() -> String {
    format!(
        "verify: {{scheme: none}}\nrules:\n  - {{name: all, queue: {QUEUE}, title: 'Event {{{{ $.id }}}}'}}\n"
    )
}

fn json() -> Headers {
    [("content-type", "application/json")].into_iter().collect()
}

fn options(redis: &RedisServer, sandbox: &TestSandbox) -> GatewayOptions {
    let mut options = GatewayOptions::embedded(&[("src.yaml", &mapping())]);
    options.backend = Backend::Redis(redis.url());
    options.settings.extend(sandbox.settings());
    options
}

async fn connection(redis: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis.connection().await
}

/// Total calls in `INFO commandstats` (commands inside scripts included).
async fn commands(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .unwrap();
    info.lines()
        .filter_map(|line| line.split("calls=").nth(1))
        .filter_map(|rest| rest.split(',').next()?.parse::<u64>().ok())
        .sum()
}

async fn zcard(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> u64 {
    redis::cmd("ZCARD")
        .arg(key)
        .query_async(conn)
        .await
        .unwrap()
}

/// Waits until the sorted set `key` is empty.
async fn until_empty(conn: &MultiplexedConnection, key: &str, what: &str, within: Duration) {
    eventually(what, within, || {
        let mut conn = conn.clone();
        async move { zcard(&mut conn, key).await == 0 }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_gateway_costs_few_commands_whatever_the_queues_and_forgets_empty_ones() {
    let redis = RedisServer::start().await;
    let sandbox = TestSandbox::start(300, Duration::from_secs(60)).await;
    let mut conn = connection(&redis).await;
    // 3,000 queues that were used and drained long ago: registered, with an empty stream and
    // consumer group each.
    let mut pipe = redis::pipe();
    for i in 0..3_000u64 {
        let queue = format!("00000000-0000-4000-8000-{i:012x}");
        pipe.cmd("ZADD")
            .arg("{casegate}:registry")
            .arg(1_000)
            .arg(&queue);
        pipe.cmd("XGROUP")
            .arg("CREATE")
            .arg(format!("{{casegate}}:q:{queue}"))
            .arg("casegate")
            .arg("0")
            .arg("MKSTREAM");
    }
    let _: () = pipe.query_async(&mut conn).await.unwrap();

    let gateway = TestGateway::start(
        options(&redis, &sandbox).setting("CASEGATE_BUFFER__QUEUE_RETENTION_SECS", "1"),
    )
    .await;
    until_empty(
        &conn,
        "{casegate}:registry",
        "queues empty past the retention leave the registry",
        Duration::from_secs(30),
    )
    .await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("{casegate}:q:*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        keys.is_empty(),
        "their empty streams are gone: {}",
        keys.len()
    );

    // Idle cost over two seconds: the ready set is read every poll interval (50 ms), the pause
    // table every second; nothing per queue.
    let before = commands(&mut conn).await;
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let per_second = (commands(&mut conn).await - before) as f64 / started.elapsed().as_secs_f64();
    assert!(
        per_second < 60.0,
        "{per_second:.1} commands/s from an idle gateway"
    );

    // New work still starts at once, and its queue leaves the ready set once delivered.
    let sent = Instant::now();
    let answer = gateway.post("src", &json(), r#"{"id": 1}"#).await;
    assert_eq!(answer.status, 202);
    assert_eq!(sandbox.wait_for(QUEUE, 1, Duration::from_secs(5)).await, 1);
    assert!(
        sent.elapsed() < Duration::from_secs(1),
        "idle latency {:?}",
        sent.elapsed()
    );
    until_empty(
        &conn,
        "{casegate}:ready",
        "the drained queue leaves the ready set",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(zcard(&mut conn, "{casegate}:registry").await, 1);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_registered_the_old_way_is_taken_over_and_delivered() {
    let redis = RedisServer::start().await;
    let sandbox = TestSandbox::start(300, Duration::from_secs(60)).await;
    let mut conn = connection(&redis).await;
    // What an older version left: the plain queue set and a stream with three cases.
    let _: () = redis::cmd("SADD")
        .arg("{casegate}:queues")
        .arg(QUEUE)
        .query_async(&mut conn)
        .await
        .unwrap();
    for i in 0..3 {
        let record = serde_json::json!({
            "queue": QUEUE, "title": format!("Event {i}"), "data": "{}",
            "meta": {"source": "src", "mapping_file": "src.yaml", "mapping_version": "v",
                     "rule": "all", "request_id": format!("r{i}"), "received_at_ms": 0}
        });
        let _: String = redis::cmd("XADD")
            .arg(format!("{{casegate}}:q:{QUEUE}"))
            .arg("*")
            .arg("r")
            .arg(record.to_string())
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let gateway = TestGateway::start(options(&redis, &sandbox)).await;
    assert_eq!(sandbox.wait_for(QUEUE, 3, Duration::from_secs(10)).await, 3);
    let old: bool = redis::cmd("EXISTS")
        .arg("{casegate}:queues")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(!old, "the old queue set is folded into the registry");
    assert_eq!(zcard(&mut conn, "{casegate}:registry").await, 1);
    gateway.stop().await;
}
