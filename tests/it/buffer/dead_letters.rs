//! Dead letters: listed, read, removed, replayed, and written when cases are dead-lettered.

use std::time::Duration;

use casegate::buffer::{BufferError, Enqueue};
use casegate::case::DeadLetterId;

use super::{Fixture, QUEUE_A, QUEUE_B, case, dead_letter, ids, store, store_cases};

pub(super) async fn dead_letters_can_be_listed_read_removed_and_replayed(f: Fixture) {
    let batch = Enqueue {
        dedupe: None,
        cases: vec![],
        dead_letters: vec![
            dead_letter("first"),
            dead_letter("second"),
            dead_letter("third"),
        ],
    };
    let (_, dl) = store(&f.buffer, batch).await;
    let later = f
        .buffer
        .dead_letter_cases(QUEUE_A, vec![("1-0".into(), dead_letter("fourth"))])
        .await
        .unwrap();
    let all: Vec<DeadLetterId> = dl.iter().chain(&later).cloned().collect();

    let listed = f.buffer.list_dead_letters(None, 10).await.unwrap();
    assert_eq!(
        listed.iter().map(|l| l.id.clone()).collect::<Vec<_>>(),
        all,
        "oldest first"
    );
    assert_eq!(
        listed
            .iter()
            .map(|l| l.record.reason.as_str())
            .collect::<Vec<_>>(),
        ["first", "second", "third", "fourth"]
    );
    let page = f.buffer.list_dead_letters(None, 2).await.unwrap();
    assert_eq!(
        page.iter().map(|l| l.id.clone()).collect::<Vec<_>>(),
        all[..2]
    );
    let next = f
        .buffer
        .list_dead_letters(Some(&page[1].id), 2)
        .await
        .unwrap();
    assert_eq!(
        next.iter().map(|l| l.id.clone()).collect::<Vec<_>>(),
        all[2..]
    );
    assert!(
        f.buffer
            .list_dead_letters(Some(&all[3]), 2)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        f.buffer
            .list_dead_letters(None, 0)
            .await
            .unwrap()
            .is_empty()
    );

    let got = f
        .buffer
        .get_dead_letter(&all[1])
        .await
        .unwrap()
        .expect("second dead letter");
    assert_eq!(got.record, dead_letter("second"));
    assert!(
        f.buffer
            .get_dead_letter("no-such-id")
            .await
            .unwrap()
            .is_none()
    );

    assert_eq!(
        f.buffer
            .remove_dead_letters(&[all[0].clone(), "no-such-id".into()])
            .await
            .unwrap(),
        1
    );
    assert!(f.buffer.get_dead_letter(&all[0]).await.unwrap().is_none());
    assert_eq!(
        f.buffer
            .remove_dead_letters(&[all[0].clone()])
            .await
            .unwrap(),
        0
    );

    let replayed = f
        .buffer
        .replay_dead_letter(&all[1], vec![case(QUEUE_B, "replayed", 7)])
        .await
        .unwrap();
    assert_eq!(replayed.len(), 1);
    assert!(f.buffer.get_dead_letter(&all[1]).await.unwrap().is_none());
    let claimed = f.buffer.claim(QUEUE_B, "c", 10).await.unwrap();
    assert_eq!(ids(&claimed), replayed);
    assert_eq!(claimed[0].record, case(QUEUE_B, "replayed", 7));

    // The dead letter is gone, so a second replay writes nothing.
    let again = f
        .buffer
        .replay_dead_letter(&all[1], vec![case(QUEUE_B, "again", 8)])
        .await;
    assert!(
        matches!(again, Err(BufferError::NoSuchDeadLetter(_))),
        "{again:?}"
    );
    let bogus = f
        .buffer
        .replay_dead_letter("no-such-id", vec![case(QUEUE_B, "again", 8)])
        .await;
    assert!(
        matches!(bogus, Err(BufferError::NoSuchDeadLetter(_))),
        "{bogus:?}"
    );
    assert_eq!(f.buffer.stats(QUEUE_B).await.unwrap().depth, 1);
    let left = f.buffer.list_dead_letters(None, 10).await.unwrap();
    assert_eq!(
        left.iter().map(|l| l.id.clone()).collect::<Vec<_>>(),
        all[2..]
    );
}

pub(super) async fn dead_lettering_cases_acks_them_and_stores_their_dead_letters(f: Fixture) {
    let all = store_cases(&f.buffer, (0..3).map(|n| case(QUEUE_A, "c", n)).collect()).await;
    f.buffer.claim(QUEUE_A, "c1", 3).await.unwrap();
    let refused = vec![
        (all[0].clone(), dead_letter("refused 0")),
        (all[2].clone(), dead_letter("refused 2")),
    ];
    let dl = f.buffer.dead_letter_cases(QUEUE_A, refused).await.unwrap();
    assert_eq!(dl.len(), 2);

    let stats = f.buffer.stats(QUEUE_A).await.unwrap();
    assert_eq!(
        (stats.depth, stats.claimed, stats.oldest_received_at_ms),
        (1, 1, Some(1))
    );
    let letters = f.buffer.list_dead_letters(None, 10).await.unwrap();
    assert_eq!(letters.iter().map(|l| l.id.clone()).collect::<Vec<_>>(), dl);
    assert_eq!(letters[1].record, dead_letter("refused 2"));

    let back = f
        .buffer
        .reclaim(QUEUE_A, "c2", Duration::ZERO, 10)
        .await
        .unwrap();
    assert_eq!(
        ids(&back),
        all[1..2],
        "dead-lettered cases are not handed out again"
    );
}
