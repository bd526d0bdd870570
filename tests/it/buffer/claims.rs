//! Enqueue, claim, ack, reclaim, renew and release: how cases are handed out and taken back.

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use casegate::buffer::{Enqueue, QueueStats};

use super::{
    DEADLINE, Fixture, IDLE, QUEUE_A, QUEUE_B, case, dead_letter, ids, mark, store, store_cases,
    titles,
};
use crate::support::wait::eventually;

pub(super) async fn enqueue_returns_an_id_for_every_case_and_dead_letter(f: Fixture) {
    let batch = Enqueue {
        dedupe: None,
        cases: vec![case(QUEUE_A, "one", 1), case(QUEUE_A, "two", 2)],
        dead_letters: vec![dead_letter("unmapped")],
    };
    let (case_ids, dead_letter_ids) = store(&f.buffer, batch).await;
    assert_eq!(case_ids.len(), 2);
    assert_eq!(dead_letter_ids.len(), 1);
    assert_ne!(case_ids[0], case_ids[1]);

    let claimed = f.buffer.claim(QUEUE_A, "c1", 10).await.unwrap();
    assert_eq!(ids(&claimed), case_ids);
    assert_eq!(claimed[0].record, case(QUEUE_A, "one", 1));
    assert!(claimed.iter().all(|c| c.deliveries == 1));
    let letter = f
        .buffer
        .get_dead_letter(&dead_letter_ids[0])
        .await
        .unwrap()
        .expect("stored dead letter");
    assert_eq!(letter.record, dead_letter("unmapped"));
    f.buffer.flush().await.unwrap();
    f.buffer.ping().await.unwrap();
}

pub(super) async fn claim_hands_out_the_oldest_cases_first_and_at_most_max(f: Fixture) {
    let mut expected = Vec::new();
    for n in 0..5 {
        expected.extend(store_cases(&f.buffer, vec![case(QUEUE_A, &format!("case {n}"), n)]).await);
    }
    store_cases(&f.buffer, vec![case(QUEUE_B, "other queue", 0)]).await;

    let first = f.buffer.claim(QUEUE_A, "c1", 3).await.unwrap();
    assert_eq!(ids(&first), expected[..3]);
    assert_eq!(titles(&first), ["case 0", "case 1", "case 2"]);
    let rest = f.buffer.claim(QUEUE_A, "c1", 3).await.unwrap();
    assert_eq!(ids(&rest), expected[3..]);
    assert!(f.buffer.claim(QUEUE_A, "c1", 3).await.unwrap().is_empty());
    assert!(
        f.buffer
            .claim("never-written", "c1", 3)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(f.buffer.claim(QUEUE_B, "c1", 0).await.unwrap().is_empty());
}

pub(super) async fn a_claimed_case_is_not_handed_out_twice(f: Fixture) {
    let all = store_cases(&f.buffer, (0..5).map(|n| case(QUEUE_A, "c", n)).collect()).await;
    let by_one = f.buffer.claim(QUEUE_A, "consumer-1", 3).await.unwrap();
    let by_two = f.buffer.claim(QUEUE_A, "consumer-2", 10).await.unwrap();
    assert_eq!(ids(&by_one), all[..3]);
    assert_eq!(ids(&by_two), all[3..]);
    assert!(
        f.buffer
            .claim(QUEUE_A, "consumer-3", 10)
            .await
            .unwrap()
            .is_empty()
    );
}

pub(super) async fn an_acked_case_is_gone_and_acking_an_unknown_id_is_a_no_op(f: Fixture) {
    let all = store_cases(&f.buffer, (0..3).map(|n| case(QUEUE_A, "c", n)).collect()).await;
    let claimed = f.buffer.claim(QUEUE_A, "c1", 3).await.unwrap();
    f.buffer.ack(QUEUE_A, &ids(&claimed)[..2]).await.unwrap();
    f.buffer
        .ack(
            QUEUE_A,
            &[
                "not-an-id".to_owned(),
                "999999-0".to_owned(),
                "424242".to_owned(),
            ],
        )
        .await
        .unwrap();
    f.buffer.ack("never-written", &all).await.unwrap();

    let stats = f.buffer.stats(QUEUE_A).await.unwrap();
    assert_eq!((stats.depth, stats.claimed), (1, 1));
    let back = f
        .buffer
        .reclaim(QUEUE_A, "c2", Duration::ZERO, 10)
        .await
        .unwrap();
    assert_eq!(ids(&back), all[2..]);

    f.buffer.ack(QUEUE_A, &all).await.unwrap();
    assert_eq!(
        f.buffer.stats(QUEUE_A).await.unwrap(),
        QueueStats::default()
    );
    assert!(f.buffer.queues().await.unwrap().is_empty());
}

pub(super) async fn reclaim_hands_over_the_cases_of_a_dead_consumer_only_after_the_idle_time(
    f: Fixture,
) {
    let all = store_cases(&f.buffer, (0..3).map(|n| case(QUEUE_A, "c", n)).collect()).await;
    let dead = f.buffer.claim(QUEUE_A, "dead-consumer", 2).await.unwrap();
    assert_eq!(ids(&dead), all[..2]);

    assert!(
        f.buffer
            .reclaim(QUEUE_A, "c2", IDLE, 10)
            .await
            .unwrap()
            .is_empty(),
        "reclaimed before the idle time"
    );
    let claimed_at = std::time::Instant::now();
    let taken = eventually("c2 takes the idle claim over", DEADLINE, || async {
        let taken = f.buffer.reclaim(QUEUE_A, "c2", IDLE, 10).await.unwrap();
        (!taken.is_empty()).then_some(taken)
    })
    .await;
    assert!(
        claimed_at.elapsed() + Duration::from_millis(50) >= IDLE,
        "reclaimed after {:?}, before the idle time",
        claimed_at.elapsed()
    );
    assert_eq!(ids(&taken), all[..2]);
    assert!(
        taken.iter().all(|c| c.deliveries >= 2),
        "deliveries: {taken:?}"
    );
    assert_eq!(taken[0].record, case(QUEUE_A, "c", 0));

    // The takeover restarts the idle clock, and the unclaimed case is not reclaimable.
    assert!(
        f.buffer
            .reclaim(QUEUE_A, "c3", IDLE, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        ids(&f.buffer.claim(QUEUE_A, "c3", 10).await.unwrap()),
        all[2..]
    );
    assert!(
        f.buffer
            .reclaim(QUEUE_A, "c3", IDLE, 0)
            .await
            .unwrap()
            .is_empty()
    );
}

pub(super) async fn a_multi_case_multi_queue_enqueue_is_written_whole(f: Fixture) {
    let batch = Enqueue {
        dedupe: Some(mark("github", "delivery-1", Duration::from_secs(60))),
        cases: vec![
            case(QUEUE_A, "a1", 1),
            case(QUEUE_B, "b1", 1),
            case(QUEUE_A, "a2", 1),
        ],
        dead_letters: vec![dead_letter("one"), dead_letter("two")],
    };
    let (case_ids, dead_letter_ids) = store(&f.buffer, batch).await;

    let a = f.buffer.claim(QUEUE_A, "c", 10).await.unwrap();
    let b = f.buffer.claim(QUEUE_B, "c", 10).await.unwrap();
    assert_eq!(titles(&a), ["a1", "a2"]);
    assert_eq!(titles(&b), ["b1"]);
    assert_eq!(ids(&a), [case_ids[0].clone(), case_ids[2].clone()]);
    assert_eq!(ids(&b), [case_ids[1].clone()]);
    let queues: BTreeSet<String> = f.buffer.queues().await.unwrap().into_iter().collect();
    assert_eq!(
        queues,
        BTreeSet::from([QUEUE_A.to_owned(), QUEUE_B.to_owned()])
    );
    let letters = f.buffer.list_dead_letters(None, 10).await.unwrap();
    assert_eq!(
        letters.iter().map(|l| l.id.clone()).collect::<Vec<_>>(),
        dead_letter_ids
    );
}

pub(super) async fn stats_report_depth_claims_and_the_oldest_case(f: Fixture) {
    assert_eq!(
        f.buffer.stats(QUEUE_A).await.unwrap(),
        QueueStats::default()
    );
    let all = store_cases(
        &f.buffer,
        (1..=3).map(|n| case(QUEUE_A, "c", n * 1000)).collect(),
    )
    .await;
    let expect = |depth, claimed, oldest| QueueStats {
        depth,
        claimed,
        oldest_received_at_ms: Some(oldest),
    };
    assert_eq!(f.buffer.stats(QUEUE_A).await.unwrap(), expect(3, 0, 1000));
    f.buffer.claim(QUEUE_A, "c1", 2).await.unwrap();
    assert_eq!(f.buffer.stats(QUEUE_A).await.unwrap(), expect(3, 2, 1000));
    f.buffer.ack(QUEUE_A, &all[..1]).await.unwrap();
    assert_eq!(f.buffer.stats(QUEUE_A).await.unwrap(), expect(2, 1, 2000));
    assert_eq!(
        f.buffer.stats(QUEUE_B).await.unwrap(),
        QueueStats::default()
    );
}

pub(super) async fn a_renewed_claim_stays_exclusive_and_a_late_renewal_steals_nothing(f: Fixture) {
    let all = store_cases(&f.buffer, (0..3).map(|n| case(QUEUE_A, "c", n)).collect()).await;
    let held = f.buffer.claim(QUEUE_A, "holder", 2).await.unwrap();
    // A visibility timeout long enough that a renewal every third of it stays on time on a
    // loaded machine (a renewal after the timeout is refused by design).
    let idle = IDLE * 3;
    // Renewed every third of the idle time for two idle times: never reclaimable.
    let start = std::time::Instant::now();
    while start.elapsed() < idle * 2 {
        assert_eq!(
            f.buffer
                .renew(QUEUE_A, "holder", idle, &ids(&held))
                .await
                .unwrap(),
            2
        );
        assert!(
            f.buffer
                .reclaim(QUEUE_A, "other", idle, 10)
                .await
                .unwrap()
                .is_empty(),
            "a renewed claim was taken after {:?}",
            start.elapsed()
        );
        tokio::time::sleep(idle / 3).await;
    }
    // The holder stops renewing (it died): the claims go to another consumer.
    let taken = eventually(
        "another consumer takes the idle claim over",
        DEADLINE,
        || async {
            let taken = f.buffer.reclaim(QUEUE_A, "other", idle, 10).await.unwrap();
            (!taken.is_empty()).then_some(taken)
        },
    )
    .await;
    assert_eq!(ids(&taken), all[..2]);
    // A late renewal by the old holder does not take them back.
    f.buffer
        .renew(QUEUE_A, "holder", idle, &ids(&held))
        .await
        .unwrap();
    let stats = f.buffer.stats(QUEUE_A).await.unwrap();
    assert_eq!(stats.claimed, 2);
    f.buffer.ack(QUEUE_A, &ids(&taken)).await.unwrap();
    assert_eq!(
        f.buffer
            .renew(QUEUE_A, "other", idle, &ids(&taken))
            .await
            .unwrap(),
        0,
        "acked cases are not renewed"
    );
}

pub(super) async fn released_cases_go_out_first_and_in_order(f: Fixture) {
    let all = store_cases(&f.buffer, (0..5).map(|n| case(QUEUE_A, "c", n)).collect()).await;
    let held = f.buffer.claim(QUEUE_A, "paused", 3).await.unwrap();
    assert_eq!(
        f.buffer
            .release(QUEUE_A, "paused", IDLE, &ids(&held))
            .await
            .unwrap(),
        3
    );
    // What a worker does: reclaim first, then claim new ones.
    let mut next = ids(&f.buffer.reclaim(QUEUE_A, "resumer", IDLE, 5).await.unwrap());
    next.extend(ids(&f
        .buffer
        .claim(QUEUE_A, "resumer", 5 - next.len())
        .await
        .unwrap()));
    assert_eq!(
        next, all,
        "released cases first, in buffered order, each once"
    );
    assert_eq!(f.buffer.stats(QUEUE_A).await.unwrap().claimed, 5);
}

pub(super) async fn concurrent_enqueues_get_distinct_ids_and_each_case_is_claimed_exactly_once(
    f: Fixture,
) {
    let tasks: Vec<_> = (0..200)
        .map(|n| {
            let buffer = f.buffer.clone();
            tokio::spawn(async move {
                let batch = Enqueue {
                    dedupe: Some(mark(
                        "github",
                        &format!("delivery-{n}"),
                        Duration::from_secs(60),
                    )),
                    cases: vec![case(QUEUE_A, &format!("case {n}"), n)],
                    dead_letters: vec![],
                };
                store(&buffer, batch).await.0
            })
        })
        .collect();
    let mut enqueued = HashSet::new();
    for task in tasks {
        for id in task.await.unwrap() {
            assert!(enqueued.insert(id.clone()), "id {id} handed out twice");
        }
    }
    assert_eq!(enqueued.len(), 200);

    let claimers: Vec<_> = (0..4)
        .map(|n| {
            let buffer = f.buffer.clone();
            tokio::spawn(async move {
                let mut mine = Vec::new();
                loop {
                    let batch = buffer
                        .claim(QUEUE_A, &format!("consumer-{n}"), 17)
                        .await
                        .unwrap();
                    if batch.is_empty() {
                        return mine;
                    }
                    mine.extend(ids(&batch));
                }
            })
        })
        .collect();
    let mut claimed = Vec::new();
    for claimer in claimers {
        claimed.extend(claimer.await.unwrap());
    }
    assert_eq!(claimed.len(), 200, "each case claimed exactly once");
    assert_eq!(claimed.into_iter().collect::<HashSet<_>>(), enqueued);
}
