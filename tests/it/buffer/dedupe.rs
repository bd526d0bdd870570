//! Dedupe marks: a repeated delivery is stored once, per source, until its mark expires.

use std::time::Duration;

use casegate::buffer::{Enqueue, EnqueueOutcome};

use super::{DEADLINE, Fixture, QUEUE_A, QUEUE_B, case, dead_letter, mark, store};
use crate::support::wait::eventually;

pub(super) async fn a_repeated_delivery_is_a_duplicate_and_writes_nothing(f: Fixture) {
    let first = Enqueue {
        dedupe: Some(mark("github", "delivery-1", Duration::from_secs(60))),
        cases: vec![case(QUEUE_A, "first", 1)],
        dead_letters: vec![],
    };
    store(&f.buffer, first).await;
    let repeat = Enqueue {
        dedupe: Some(mark("github", "delivery-1", Duration::from_secs(60))),
        cases: vec![case(QUEUE_A, "again", 2), case(QUEUE_B, "again", 2)],
        dead_letters: vec![dead_letter("again")],
    };
    assert_eq!(
        f.buffer.enqueue(repeat).await.unwrap(),
        EnqueueOutcome::Duplicate
    );

    assert_eq!(f.buffer.stats(QUEUE_A).await.unwrap().depth, 1);
    assert_eq!(f.buffer.stats(QUEUE_B).await.unwrap().depth, 0);
    assert_eq!(f.buffer.queues().await.unwrap(), [QUEUE_A]);
    assert!(
        f.buffer
            .list_dead_letters(None, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

/// A webhook caught by its body's mark under a fresh delivery id writes nothing, not even that
/// delivery id's mark: the id can still bring a new body later.
pub(super) async fn a_duplicate_caught_by_one_mark_leaves_its_other_mark_unwritten(f: Fixture) {
    let with = |delivery_id: &str, digest: &str, n: u64| {
        let mut dedupe = mark("shopify", delivery_id, Duration::from_secs(60));
        dedupe.body_digest = Some(digest.into());
        Enqueue {
            dedupe: Some(dedupe),
            cases: vec![case(QUEUE_A, "c", n)],
            dead_letters: vec![],
        }
    };
    let enqueue = async |delivery_id, digest, n| {
        f.buffer
            .enqueue(with(delivery_id, digest, n))
            .await
            .unwrap()
    };
    store(&f.buffer, with("d-1", "mac:body-a", 1)).await;
    assert_eq!(
        enqueue("d-2", "mac:body-a", 2).await,
        EnqueueOutcome::Duplicate
    );
    assert!(matches!(
        enqueue("d-2", "mac:body-b", 3).await,
        EnqueueOutcome::Stored { .. }
    ));
    // And body a is still marked: under a third id it is a duplicate too.
    assert_eq!(
        enqueue("d-3", "mac:body-a", 4).await,
        EnqueueOutcome::Duplicate
    );
    assert_eq!(f.buffer.stats(QUEUE_A).await.unwrap().depth, 2);
}

pub(super) async fn the_same_delivery_id_from_another_source_is_not_a_duplicate(f: Fixture) {
    for source in ["github", "stripe"] {
        let batch = Enqueue {
            dedupe: Some(mark(source, "delivery-1", Duration::from_secs(60))),
            cases: vec![case(QUEUE_A, source, 1)],
            dead_letters: vec![],
        };
        assert!(matches!(
            f.buffer.enqueue(batch).await.unwrap(),
            EnqueueOutcome::Stored { .. }
        ));
    }
    assert_eq!(f.buffer.stats(QUEUE_A).await.unwrap().depth, 2);
}

pub(super) async fn a_dedupe_mark_expires_after_its_ttl(f: Fixture) {
    let ttl = Duration::from_secs(1);
    let batch = || Enqueue {
        dedupe: Some(mark("github", "delivery-1", ttl)),
        cases: vec![case(QUEUE_A, "c", 1)],
        dead_letters: vec![],
    };
    store(&f.buffer, batch()).await;
    assert_eq!(
        f.buffer.enqueue(batch()).await.unwrap(),
        EnqueueOutcome::Duplicate
    );
    let stored_at = std::time::Instant::now();
    eventually("the batch is stored again", DEADLINE, || async {
        match f.buffer.enqueue(batch()).await.unwrap() {
            EnqueueOutcome::Stored { .. } => Some(()),
            EnqueueOutcome::Duplicate => None,
        }
    })
    .await;
    assert!(
        stored_at.elapsed() + Duration::from_millis(100) >= ttl / 2,
        "the mark expired early"
    );
    assert_eq!(f.buffer.stats(QUEUE_A).await.unwrap().depth, 2);
}

/// For the embedded backend these land in the same commit group, so a repeat must be caught
/// against an earlier request of its own group.
pub(super) async fn concurrent_repeats_of_one_delivery_store_it_once(f: Fixture) {
    let tasks: Vec<_> = (0..50)
        .map(|n| {
            let buffer = f.buffer.clone();
            tokio::spawn(async move {
                let batch = Enqueue {
                    dedupe: Some(mark("github", "same-delivery", Duration::from_secs(60))),
                    cases: vec![case(QUEUE_A, "c", n)],
                    dead_letters: vec![],
                };
                buffer.enqueue(batch).await.unwrap()
            })
        })
        .collect();
    let mut stored = 0;
    for task in tasks {
        if matches!(task.await.unwrap(), EnqueueOutcome::Stored { .. }) {
            stored += 1;
        }
    }
    assert_eq!(stored, 1);
    assert_eq!(f.buffer.stats(QUEUE_A).await.unwrap().depth, 1);
}

/// A dedupe ttl of 0 is the shortest one (a millisecond on both backends): a repeat is not
/// refused for longer than a moment.
pub(super) async fn a_ttl_of_zero_expires_at_once(f: Fixture) {
    let batch = |n| Enqueue {
        dedupe: Some(mark("github", "delivery-1", Duration::ZERO)),
        cases: vec![case(QUEUE_A, "c", n)],
        dead_letters: vec![],
    };
    store(&f.buffer, batch(0)).await;
    eventually("a repeat is stored again", DEADLINE, || async {
        match f.buffer.enqueue(batch(1)).await.unwrap() {
            EnqueueOutcome::Stored { .. } => Some(()),
            EnqueueOutcome::Duplicate => None,
        }
    })
    .await;
    assert_eq!(f.buffer.stats(QUEUE_A).await.unwrap().depth, 2);
}
