//! The Redis buffer's own behaviour, beyond the shared contract in `buffer`: what happens while
//! the server is away or frozen, how keys are laid out, and entries that cannot be decoded.

use std::time::{Duration, Instant};

use casegate::buffer::{BufferError, CaseId, Enqueue, EnqueueOutcome, RedisBuffer};
use casegate::case::{CaseRecord, DeadLetterKind};

use crate::buffer::*;
use crate::support::redis_server::RedisServer;
use crate::support::wait::eventually;

// Redis only: what happens while the server is away.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_makes_enqueue_fail_fast_and_the_same_buffer_recovers_when_it_is_back() {
    let mut server = RedisServer::start().await;
    let op_timeout = Duration::from_millis(500);
    let buffer = RedisBuffer::connect(&server.url(), "casegate", op_timeout)
        .await
        .unwrap();
    let before = store_cases_redis(&buffer, case(QUEUE_A, "before", 1)).await;

    server.stop();
    for _ in 0..3 {
        unavailable_within(
            op_timeout,
            buffer.enqueue(single(case(QUEUE_A, "while down", 2))),
        )
        .await;
        unavailable_within(op_timeout, buffer.ping()).await;
    }

    server.restart().await;
    let after = eventually("redis stores again", DEADLINE, || {
        buffer.enqueue(single(case(QUEUE_A, "after", 3)))
    })
    .await;
    let EnqueueOutcome::Stored { case_ids, .. } = after else {
        panic!("not stored: {after:?}")
    };
    let claimed = buffer.claim(QUEUE_A, "c", 10).await.unwrap();
    assert_eq!(
        ids(&claimed),
        [before, case_ids[0].clone()],
        "nothing written while down, nothing lost"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_makes_operations_time_out_instead_of_hanging() {
    let server = RedisServer::start().await;
    let op_timeout = Duration::from_millis(500);
    let buffer = RedisBuffer::connect(&server.url(), "casegate", op_timeout)
        .await
        .unwrap();
    store_cases_redis(&buffer, case(QUEUE_A, "before", 1)).await;

    server.freeze();
    unavailable_within(
        op_timeout,
        buffer.enqueue(single(case(QUEUE_A, "while frozen", 2))),
    )
    .await;
    let claimed = buffer.claim(QUEUE_A, "c", 10).await;
    assert!(
        matches!(claimed, Err(BufferError::Unavailable(_))),
        "{claimed:?}"
    );

    server.thaw();
    eventually("redis answers again", DEADLINE, || buffer.ping()).await;
    // The enqueue that timed out may still have run once Redis woke up: at-least-once.
    let claimed = eventually("redis hands out claims again", DEADLINE, || {
        buffer.claim(QUEUE_A, "c", 10)
    })
    .await;
    assert!(!claimed.is_empty());
    assert_eq!(claimed[0].record.title, "before");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_buffer_connects_while_redis_is_down_and_works_once_it_is_up() {
    let mut server = RedisServer::start().await;
    server.stop();
    let op_timeout = Duration::from_millis(500);
    let buffer = RedisBuffer::connect(&server.url(), "casegate", op_timeout)
        .await
        .expect("connect never waits");
    unavailable_within(op_timeout, buffer.ping()).await;

    server.restart().await;
    eventually("redis answers again", DEADLINE, || buffer.ping()).await;
    store_cases_redis(&buffer, case(QUEUE_A, "c", 1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_errors_never_show_the_url_password() {
    let server = RedisServer::start().await;
    let port = server.port();
    drop(server);
    let url = format!("redis://:s3cret-pass@127.0.0.1:{port}/");
    let buffer = RedisBuffer::connect(&url, "casegate", Duration::from_millis(300))
        .await
        .unwrap();
    let error = buffer.ping().await.unwrap_err().to_string();
    assert!(!error.contains("s3cret"), "{error}");
    assert!(!format!("{buffer:?}").contains("s3cret"));
    let error = RedisBuffer::connect("redis://:s3cret-pass@[bad", "casegate", OP_TIMEOUT)
        .await
        .unwrap_err();
    assert!(!error.to_string().contains("s3cret"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_keys_share_one_hash_tag() {
    let server = RedisServer::start().await;
    let buffer = RedisBuffer::connect(&server.url(), "tenant-7", OP_TIMEOUT)
        .await
        .unwrap();
    let batch = Enqueue {
        dedupe: Some(mark("github", "d-1", Duration::from_secs(60))),
        cases: vec![case(QUEUE_A, "c", 1)],
        dead_letters: vec![dead_letter("x")],
    };
    buffer.enqueue(batch).await.unwrap();
    let keys = redis_cli(&server, &["--scan"]);
    let mut keys: Vec<&str> = keys.lines().collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "{tenant-7}:dlq".to_owned(),
            "{tenant-7}:q:".to_owned() + QUEUE_A,
            "{tenant-7}:ready".to_owned(),
            "{tenant-7}:registry".to_owned(),
            "{tenant-7}:seen:github:d-1".to_owned(),
        ]
    );
}

/// Each HTTP worker writes over a connection of its own: a second client on the server, whose
/// writes the shared connection sees at once, and whose Debug shows no password either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_buffer_writes_over_its_own_connection_into_the_same_queues() {
    let server = RedisServer::start_with_password("w0rker-pass").await;
    let shared = RedisBuffer::connect(&server.url(), "casegate", OP_TIMEOUT)
        .await
        .unwrap();
    shared.ping().await.unwrap();
    let clients =
        |server: &RedisServer| clients(server, &["-a", "w0rker-pass", "--no-auth-warning"]);
    let before = clients(&server);
    let own = shared.with_own_connection().unwrap();
    assert_eq!(clients(&server), before, "opened lazily: no connection yet");
    let id = store_cases_redis(&own, case(QUEUE_A, "c", 1)).await;
    assert_eq!(clients(&server), before + 1, "its own connection");
    assert_eq!(shared.stats(QUEUE_A).await.unwrap().depth, 1);
    let claimed = shared.claim(QUEUE_A, "replica-a", 10).await.unwrap();
    assert_eq!(
        claimed.iter().map(|c| c.id.clone()).collect::<Vec<_>>(),
        [id]
    );
    assert!(!format!("{own:?}").contains("w0rker-pass"));
}

/// A worker's buffer connects as soon as the worker takes it, not on its first webhook.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_buffer_connects_when_the_worker_takes_it() {
    let server = RedisServer::start().await;
    let shared = RedisBuffer::connect(&server.url(), "casegate", OP_TIMEOUT)
        .await
        .unwrap();
    shared.ping().await.unwrap();
    let clients = |server: &RedisServer| clients(server, &[]);
    let before = clients(&server);
    let shared = casegate::buffer::Buffer::Redis(shared);
    let worker = shared.for_worker();
    eventually(
        "the worker's own connection is open",
        Duration::from_secs(5),
        || async {
            let now = clients(&server);
            if now == before + 1 {
                Ok(())
            } else {
                Err(format!("{now} clients, {before} before"))
            }
        },
    )
    .await;
    worker.ping().await.unwrap();
    assert_eq!(
        clients(&server),
        before + 1,
        "the same connection serves it"
    );
}

/// Clients of `server` that sent a command other than `CLIENT` (the buffer's connections, not
/// redis-cli's own); `auth` goes before the command.
fn clients(server: &RedisServer, auth: &[&str]) -> usize {
    let args: Vec<&str> = auth.iter().copied().chain(["CLIENT", "LIST"]).collect();
    redis_cli(server, &args)
        .lines()
        .filter(|l| l.contains("cmd=") && !l.contains("cmd=client"))
        .count()
}

fn redis_cli(server: &RedisServer, args: &[&str]) -> String {
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &server.port().to_string()])
        .args(args)
        .output()
        .expect("run redis-cli");
    String::from_utf8(out.stdout).unwrap()
}

/// Awaits `operation`, which must fail as unavailable within `op_timeout` (and some slack).
async fn unavailable_within<T: std::fmt::Debug>(
    op_timeout: Duration,
    operation: impl std::future::Future<Output = Result<T, BufferError>>,
) {
    let started = Instant::now();
    let outcome = operation.await;
    assert!(
        matches!(outcome, Err(BufferError::Unavailable(_))),
        "{outcome:?}"
    );
    assert!(
        started.elapsed() < op_timeout + Duration::from_millis(500),
        "took {:?}",
        started.elapsed()
    );
}

async fn store_cases_redis(buffer: &RedisBuffer, case: CaseRecord) -> CaseId {
    match buffer.enqueue(single(case)).await.unwrap() {
        EnqueueOutcome::Stored { mut case_ids, .. } => case_ids.remove(0),
        EnqueueOutcome::Duplicate => panic!("no dedupe mark, yet a duplicate"),
    }
}

/// Puts an entry no build can read into `QUEUE_A`'s stream between two good cases and has
/// `holder` claim all three with a plain `XREADGROUP` (as an older build that could read it
/// would have), so the bad entry is pending: the paths that hand pending cases out again must
/// move it aside too.
async fn redis_with_a_pending_undecodable_entry(holder: &str) -> (Fixture, Vec<CaseId>, String) {
    let f = Fixture::redis().await;
    let Backend::Redis(server) = &f.backend else {
        unreachable!()
    };
    let good1 = store_cases(&f.buffer, vec![case(QUEUE_A, "c", 1)]).await;
    let mut conn = server.connection().await;
    let stream = format!("{{casegate}}:q:{QUEUE_A}");
    let bad: String = ::redis::cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg("r")
        .arg(&b"\xff\xfe not a record"[..])
        .query_async(&mut conn)
        .await
        .unwrap();
    let good2 = store_cases(&f.buffer, vec![case(QUEUE_A, "c", 2)]).await;
    // Creates the group if nothing claimed yet, then reads all three as `holder`.
    assert!(
        f.buffer
            .claim(QUEUE_A, "nobody", 0)
            .await
            .unwrap()
            .is_empty()
    );
    let _: ::redis::Value = ::redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg("casegate")
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut conn)
        .await
        .unwrap_or(::redis::Value::Nil);
    let _: ::redis::Value = ::redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("casegate")
        .arg(holder)
        .arg("COUNT")
        .arg(10)
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(f.buffer.stats(QUEUE_A).await.unwrap().claimed, 3);
    (f, [good1, good2].concat(), bad)
}

async fn assert_moved_aside(f: &Fixture, bad: &str) {
    let letters = f.buffer.list_dead_letters(None, 10).await.unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert!(matches!(
        &letters[0].record.kind,
        DeadLetterKind::Undecodable { .. }
    ));
    let stats = f.buffer.stats(QUEUE_A).await.unwrap();
    assert_eq!(
        stats.depth, 2,
        "the bad entry is deleted from the stream ({bad})"
    );
    assert_eq!(
        stats.claimed, 2,
        "and no longer pending, so nothing renews it"
    );
    assert_eq!(
        f.buffer
            .renew(
                QUEUE_A,
                "anyone",
                Duration::from_secs(3600),
                &[bad.to_string()]
            )
            .await
            .unwrap(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_redis_consumer_moves_an_undecodable_pending_entry_aside() {
    let (f, good, bad) = redis_with_a_pending_undecodable_entry("replica-a").await;
    let back = f
        .buffer
        .own_pending(QUEUE_A, "replica-a", 10)
        .await
        .unwrap();
    assert_eq!(ids(&back), good, "its readable neighbours come back");
    assert_moved_aside(&f, &bad).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reclaiming_from_a_dead_redis_consumer_moves_an_undecodable_entry_aside() {
    let (f, good, bad) = redis_with_a_pending_undecodable_entry("replica-dead").await;
    let back = eventually(
        "replica-b takes the dead consumer's claims over",
        DEADLINE,
        || async {
            let back = f
                .buffer
                .reclaim(QUEUE_A, "replica-b", IDLE, 10)
                .await
                .unwrap();
            (!back.is_empty()).then_some(back)
        },
    )
    .await;
    assert_eq!(ids(&back), good, "its readable neighbours are handed over");
    assert_moved_aside(&f, &bad).await;
}
