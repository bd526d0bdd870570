//! What survives a crash and a restart, and where a backend cannot open at all.

use std::time::Duration;

use casegate::buffer::{
    Buffer, BufferError, EmbeddedBuffer, EmbeddedOptions, Enqueue, EnqueueOutcome,
};

use super::{Backend, Fixture, QUEUE_A, case, dead_letter, ids, mark, store, store_cases};
use crate::support::post_json;

/// A restart of the buffer (for Redis: the server SIGKILLed and restarted on its AOF); the
/// embedded buffer under a real SIGKILL of its process is
/// `the_embedded_buffer_keeps_what_a_killed_process_acknowledged`.
pub(super) async fn nothing_acknowledged_is_lost_across_a_restart(f: Fixture) {
    let batch = Enqueue {
        dedupe: Some(mark("github", "delivery-1", Duration::from_secs(600))),
        cases: (0..5).map(|n| case(QUEUE_A, "c", n)).collect(),
        dead_letters: vec![dead_letter("kept")],
    };
    let (all, dl) = store(&f.buffer, batch).await;
    let claimed = f.buffer.claim(QUEUE_A, "before-crash", 3).await.unwrap();
    f.buffer.ack(QUEUE_A, &ids(&claimed)[..1]).await.unwrap();

    let f = f.crash_and_restart().await;

    // Cases claimed before the crash come back through reclaim (Redis keeps the claim) or claim
    // (the embedded store forgets claims); either way each unacked case exactly once.
    let mut back = ids(&f
        .buffer
        .reclaim(QUEUE_A, "after-crash", Duration::ZERO, 10)
        .await
        .unwrap());
    back.extend(ids(&f
        .buffer
        .claim(QUEUE_A, "after-crash", 10)
        .await
        .unwrap()));
    back.sort_by_key(|id| all.iter().position(|a| a == id));
    assert_eq!(back, all[1..]);
    assert_eq!(
        f.buffer
            .get_dead_letter(&dl[0])
            .await
            .unwrap()
            .map(|l| l.record),
        Some(dead_letter("kept"))
    );
    let repeat = Enqueue {
        dedupe: Some(mark("github", "delivery-1", Duration::from_secs(600))),
        ..Enqueue::default()
    };
    assert_eq!(
        f.buffer.enqueue(repeat).await.unwrap(),
        EnqueueOutcome::Duplicate,
        "dedupe mark survives"
    );
    assert_eq!(f.buffer.stats(QUEUE_A).await.unwrap().depth, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_redis_consumer_gets_its_own_pending_cases_back_at_once() {
    let f = Fixture::redis().await;
    let all = store_cases(&f.buffer, (0..4).map(|n| case(QUEUE_A, "c", n)).collect()).await;
    let mine = f.buffer.claim(QUEUE_A, "replica-a", 2).await.unwrap();
    f.buffer.claim(QUEUE_A, "replica-b", 1).await.unwrap();
    f.buffer.ack(QUEUE_A, &ids(&mine)[..1]).await.unwrap();
    let f = f.crash_and_restart().await;
    let back = f
        .buffer
        .own_pending(QUEUE_A, "replica-a", 10)
        .await
        .unwrap();
    assert_eq!(ids(&back), all[1..2], "only its own unacked claims");
    assert!(back[0].deliveries >= 2);
    assert!(
        f.buffer
            .own_pending(QUEUE_A, "replica-c", 10)
            .await
            .unwrap()
            .is_empty()
    );
}

/// A connection broken by a Redis restart costs no refusal: the write that meets it is made
/// again on the connection the manager re-makes, and its dedupe mark keeps that second attempt
/// from storing anything twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_write_after_a_redis_restart_is_accepted() {
    let mut f = Fixture::redis().await;
    store_cases(&f.buffer, vec![case(QUEUE_A, "before", 0)]).await;
    let Backend::Redis(server) = &mut f.backend else {
        unreachable!("a Redis fixture")
    };
    server.restart().await;

    let write = |id: &str| Enqueue {
        dedupe: Some(mark("src", id, Duration::from_secs(600))),
        cases: vec![case(QUEUE_A, "after", 1)],
        dead_letters: Vec::new(),
    };
    let outcome = f.buffer.enqueue(write("after-restart")).await;
    assert!(
        matches!(outcome, Ok(EnqueueOutcome::Stored { ref case_ids, .. }) if case_ids.len() == 1),
        "{outcome:?}"
    );
    assert!(matches!(
        f.buffer.enqueue(write("after-restart")).await,
        Ok(EnqueueOutcome::Duplicate)
    ));
    assert_eq!(f.buffer.stats(QUEUE_A).await.unwrap().depth, 2);
}

/// A real SIGKILL of a gateway process on the embedded buffer: every webhook it acknowledged is
/// in the file afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_buffer_keeps_what_a_killed_process_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("mappings")).unwrap();
    std::fs::write(
        dir.path().join("mappings/src.yaml"),
        format!("verify: {{scheme: none}}\nrules:\n  - {{name: all, queue: {QUEUE_A}, title: 'Event {{{{ $.id }}}}'}}\n"),
    )
    .unwrap();
    // No API key: nothing is delivered, so everything acknowledged must still be buffered.
    let process = crate::support::process::CasegateProcess::serve(dir.path(), &[]).await;
    let client = crate::support::http_client();
    let mut acknowledged = 0;
    for id in 0..40 {
        let status = post_json(
            &client,
            &process.url("/hooks/src"),
            format!(r#"{{"id": {id}}}"#),
        )
        .await;
        if (200..300).contains(&status) {
            acknowledged += 1;
        }
    }
    process.kill9().await;
    assert_eq!(acknowledged, 40);
    let buffer = Buffer::Embedded(EmbeddedBuffer::open(&dir.path().join("buffer.redb")).unwrap());
    assert_eq!(buffer.stats(QUEUE_A).await.unwrap().depth, 40);
}

// Embedded only.

#[tokio::test]
async fn the_embedded_buffer_is_unavailable_where_it_cannot_write() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, b"").unwrap();
    let error = EmbeddedBuffer::open(&blocker.join("buffer.redb")).unwrap_err();
    assert!(matches!(error, BufferError::Unavailable(_)), "{error:?}");

    let path = dir.path().join("buffer.redb");
    let open = EmbeddedBuffer::open(&path).unwrap();
    let error = EmbeddedBuffer::open(&path).unwrap_err();
    assert!(
        matches!(error, BufferError::Unavailable(_)),
        "a second opener must not share the file: {error:?}"
    );
    drop(open);
    EmbeddedBuffer::open(&path).expect("reopens once the first is dropped");
}

/// Dedupe marks are found wherever they were written, whatever the capacity of the index in
/// memory when the buffer opens again: every mark of the log is indexed at start (even past a
/// lowered capacity), the marks beyond it went to disk and are read from there, and a mark that
/// expired while the buffer was closed refuses nothing after it opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_dedupe_marks_survive_restarts_under_any_index_capacity() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("buffer.redb");
    let open = |dedupe_index_marks| {
        let options = EmbeddedOptions {
            dedupe_index_marks,
            ..EmbeddedOptions::default()
        };
        Buffer::Embedded(EmbeddedBuffer::open_with(&path, options).unwrap())
    };
    // Webhook n: its delivery id and its body digest, each a mark.
    let webhook = |n: u64, delivery: &str, ttl: Duration| {
        let mut dedupe = mark("shopify", &format!("{delivery}-{n}"), ttl);
        dedupe.body_digest = Some(format!("mac:body-{n}"));
        Enqueue {
            dedupe: Some(dedupe),
            cases: vec![case(QUEUE_A, "c", n)],
            dead_letters: vec![],
        }
    };
    let long = Duration::from_secs(600);
    let short = Duration::from_secs(1);
    let mut written = 0;
    let mut expiring = Vec::new();
    let mut late_repeats = 0;
    for capacity in [3, 0, 1_000, 2] {
        let buffer = open(capacity);
        for n in 0..written {
            let outcome = buffer.enqueue(webhook(n, "resent", long)).await.unwrap();
            if expiring.contains(&n) {
                assert!(
                    matches!(outcome, EnqueueOutcome::Stored { .. }),
                    "body-{n}'s mark expired while closed, reopened with an index for {capacity}"
                );
            } else {
                assert_eq!(
                    outcome,
                    EnqueueOutcome::Duplicate,
                    "body-{n}, reopened with an index for {capacity} marks"
                );
            }
        }
        expiring.clear();
        for n in written..written + 5 {
            let ttl = if n % 5 == 4 { short } else { long };
            let stored_at = std::time::Instant::now();
            store(&buffer, webhook(n, "delivery", ttl)).await;
            let repeat = buffer.enqueue(webhook(n, "delivery", ttl)).await.unwrap();
            // A loaded machine may take longer than the short ttl over the two commits.
            if matches!(repeat, EnqueueOutcome::Stored { .. }) {
                assert!(stored_at.elapsed() >= ttl, "delivery-{n} stored twice");
                late_repeats += 1;
            } else {
                assert_eq!(
                    repeat,
                    EnqueueOutcome::Duplicate,
                    "delivery-{n} with an index for {capacity} marks"
                );
            }
            if ttl == short {
                expiring.push(n);
            }
        }
        written += 5;
        drop(buffer);
        // The wait is for the wall clock itself: the short marks expire while the file is closed.
        tokio::time::sleep(short + Duration::from_millis(100)).await;
    }
    let buffer = open(1_000);
    assert_eq!(
        buffer.stats(QUEUE_A).await.unwrap().depth,
        written + 3 + late_repeats,
        "each expired webhook was stored again once"
    );
}
