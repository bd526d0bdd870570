//! The buffer contract, run unchanged against both backends: a real `redis-server` spawned per
//! test (never the machine's Redis) and a redb file in a temp dir. Each contract test is an async
//! fn taking a [`Fixture`]; `contract!` turns it into `buffer::redis::<name>` and
//! `buffer::embedded::<name>`.

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use casegate::buffer::redis::Topology;
use casegate::buffer::{
    Buffer, BufferError, CaseId, DedupeMark, EmbeddedBuffer, Enqueue, EnqueueOutcome, QueueStats,
    RedisBuffer,
};
use casegate::case::{CaseMeta, CaseRecord, DeadLetterId, DeadLetterKind, DeadLetterRecord};

use crate::support::post_json;
use crate::support::redis_cluster::RedisCluster;
use crate::support::redis_server::RedisServer;
use crate::support::wait::eventually;

pub(crate) const QUEUE_A: &str = "0b5f0c3e-7f35-4d3c-9a51-6f2f1c1d0a01";
pub(crate) const QUEUE_B: &str = "0b5f0c3e-7f35-4d3c-9a51-6f2f1c1d0a02";

/// Short, so a down Redis fails tests fast; long enough for a loaded CI machine.
pub(crate) const OP_TIMEOUT: Duration = Duration::from_secs(2);

/// The visibility timeout the reclaim tests use: long enough that the steps of a test on a
/// loaded machine fit well inside it.
pub(crate) const IDLE: Duration = Duration::from_secs(1);

/// How long a test waits for something that should happen.
pub(crate) const DEADLINE: Duration = Duration::from_secs(10);

pub(crate) enum Backend {
    Redis(RedisServer),
    Embedded(tempfile::TempDir),
    /// A Redis Cluster shared by several tests, each under its own key prefix (hash tag).
    Cluster(
        std::sync::Arc<tokio::sync::Mutex<RedisCluster>>,
        &'static str,
    ),
}

/// A buffer under test plus what it takes to crash it and bring it back on the same data.
pub(crate) struct Fixture {
    pub(crate) backend: Backend,
    pub(crate) buffer: Buffer,
}

impl Fixture {
    pub(crate) async fn redis() -> Fixture {
        let backend = Backend::Redis(RedisServer::start().await);
        let buffer = open(&backend).await;
        Fixture { backend, buffer }
    }

    async fn embedded() -> Fixture {
        let backend = Backend::Embedded(tempfile::tempdir().expect("temp dir"));
        let buffer = open(&backend).await;
        Fixture { backend, buffer }
    }

    /// Kills casegate (drops the buffer without ceremony) and, for Redis, SIGKILLs the server,
    /// then restarts both on the same data.
    async fn crash_and_restart(self) -> Fixture {
        let Fixture {
            mut backend,
            buffer,
        } = self;
        drop(buffer);
        match &mut backend {
            Backend::Redis(server) => server.restart().await,
            Backend::Cluster(cluster, _) => cluster.lock().await.restart_all().await,
            Backend::Embedded(_) => {}
        }
        let buffer = open(&backend).await;
        Fixture { backend, buffer }
    }
}

pub(crate) async fn open(backend: &Backend) -> Buffer {
    match backend {
        Backend::Redis(server) => Buffer::Redis(
            RedisBuffer::connect(&server.url(), "casegate", OP_TIMEOUT)
                .await
                .expect("connect to redis"),
        ),
        Backend::Cluster(cluster, prefix) => Buffer::Redis(
            RedisBuffer::connect_to(
                Topology::Cluster,
                &cluster.lock().await.urls(),
                prefix,
                OP_TIMEOUT,
            )
            .await
            .expect("connect to the redis cluster"),
        ),
        // A nested path: opening creates the missing directories.
        Backend::Embedded(dir) => Buffer::Embedded(
            EmbeddedBuffer::open(&dir.path().join("state").join("buffer.redb"))
                .expect("open embedded buffer"),
        ),
    }
}

macro_rules! contract {
    ($($test:ident),* $(,)?) => {
        /// The whole contract against one Redis Cluster (three masters, one replica each), each
        /// test under its own hash tag so the tests land on different masters' slots.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn redis_cluster_keeps_the_whole_contract() {
            let cluster = std::sync::Arc::new(tokio::sync::Mutex::new(RedisCluster::start().await));
            $(
                let backend = Backend::Cluster(cluster.clone(), stringify!($test));
                let buffer = open(&backend).await;
                $test(Fixture { backend, buffer }).await;
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::Fixture::redis().await).await;
                }
            )*
        }
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::Fixture::embedded().await).await;
                }
            )*
        }
    };
}

contract!(
    enqueue_returns_an_id_for_every_case_and_dead_letter,
    claim_hands_out_the_oldest_cases_first_and_at_most_max,
    a_claimed_case_is_not_handed_out_twice,
    an_acked_case_is_gone_and_acking_an_unknown_id_is_a_no_op,
    reclaim_hands_over_the_cases_of_a_dead_consumer_only_after_the_idle_time,
    a_repeated_delivery_is_a_duplicate_and_writes_nothing,
    the_same_delivery_id_from_another_source_is_not_a_duplicate,
    a_dedupe_mark_expires_after_its_ttl,
    concurrent_repeats_of_one_delivery_store_it_once,
    a_multi_case_multi_queue_enqueue_is_written_whole,
    dead_letters_can_be_listed_read_removed_and_replayed,
    dead_lettering_cases_acks_them_and_stores_their_dead_letters,
    stats_report_depth_claims_and_the_oldest_case,
    nothing_acknowledged_is_lost_across_a_restart,
    a_renewed_claim_stays_exclusive_and_a_late_renewal_steals_nothing,
    released_cases_go_out_first_and_in_order,
    concurrent_enqueues_get_distinct_ids_and_each_case_is_claimed_exactly_once,
);

async fn enqueue_returns_an_id_for_every_case_and_dead_letter(f: Fixture) {
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

async fn claim_hands_out_the_oldest_cases_first_and_at_most_max(f: Fixture) {
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

async fn a_claimed_case_is_not_handed_out_twice(f: Fixture) {
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

async fn an_acked_case_is_gone_and_acking_an_unknown_id_is_a_no_op(f: Fixture) {
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

async fn reclaim_hands_over_the_cases_of_a_dead_consumer_only_after_the_idle_time(f: Fixture) {
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

async fn a_repeated_delivery_is_a_duplicate_and_writes_nothing(f: Fixture) {
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

async fn the_same_delivery_id_from_another_source_is_not_a_duplicate(f: Fixture) {
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

async fn a_dedupe_mark_expires_after_its_ttl(f: Fixture) {
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
async fn concurrent_repeats_of_one_delivery_store_it_once(f: Fixture) {
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

async fn a_multi_case_multi_queue_enqueue_is_written_whole(f: Fixture) {
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

async fn dead_letters_can_be_listed_read_removed_and_replayed(f: Fixture) {
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

async fn dead_lettering_cases_acks_them_and_stores_their_dead_letters(f: Fixture) {
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

async fn stats_report_depth_claims_and_the_oldest_case(f: Fixture) {
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

/// A restart of the buffer (for Redis: the server SIGKILLed and restarted on its AOF); the
/// embedded buffer under a real SIGKILL of its process is
/// `the_embedded_buffer_keeps_what_a_killed_process_acknowledged`.
async fn nothing_acknowledged_is_lost_across_a_restart(f: Fixture) {
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

async fn a_renewed_claim_stays_exclusive_and_a_late_renewal_steals_nothing(f: Fixture) {
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

async fn released_cases_go_out_first_and_in_order(f: Fixture) {
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

async fn concurrent_enqueues_get_distinct_ids_and_each_case_is_claimed_exactly_once(f: Fixture) {
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

pub(crate) fn single(case: CaseRecord) -> Enqueue {
    Enqueue {
        dedupe: None,
        cases: vec![case],
        dead_letters: vec![],
    }
}

pub(crate) async fn store(buffer: &Buffer, batch: Enqueue) -> (Vec<CaseId>, Vec<DeadLetterId>) {
    match buffer.enqueue(batch).await.unwrap() {
        EnqueueOutcome::Stored {
            case_ids,
            dead_letter_ids,
        } => (case_ids, dead_letter_ids),
        EnqueueOutcome::Duplicate => panic!("unexpected duplicate"),
    }
}

/// Enqueues each case as its own webhook, in order.
pub(crate) async fn store_cases(buffer: &Buffer, cases: Vec<CaseRecord>) -> Vec<CaseId> {
    let mut ids = Vec::new();
    for case in cases {
        ids.extend(store(buffer, single(case)).await.0);
    }
    ids
}

pub(crate) fn ids(cases: &[casegate::buffer::BufferedCase]) -> Vec<CaseId> {
    cases.iter().map(|c| c.id.clone()).collect()
}

pub(crate) fn titles(cases: &[casegate::buffer::BufferedCase]) -> Vec<&str> {
    cases.iter().map(|c| c.record.title.as_str()).collect()
}

pub(crate) fn mark(source: &str, delivery_id: &str, ttl: Duration) -> DedupeMark {
    DedupeMark {
        source: source.into(),
        delivery_id: delivery_id.into(),
        body_digest: None,
        ttl,
    }
}

pub(crate) fn case(queue: &str, title: &str, received_at_ms: u64) -> CaseRecord {
    CaseRecord {
        queue: queue.into(),
        api_key_name: None,
        title: title.into(),
        data: r#"{"n":1}"#.into(),
        labels: vec![],
        meta: CaseMeta {
            source: "github".into(),
            mapping_file: "github.yaml".into(),
            mapping_version: "abc123".into(),
            rule: "issues".into(),
            request_id: "req-1".into(),
            delivery_id: Some("delivery-1".into()),
            event_type: Some("issues".into()),
            received_at_ms,
        },
    }
}

pub(crate) fn dead_letter(reason: &str) -> DeadLetterRecord {
    DeadLetterRecord {
        source: "github".into(),
        reason: reason.into(),
        created_at_ms: 1,
        kind: DeadLetterKind::Refused {
            case: case(QUEUE_A, "refused", 1),
            status: 422,
            attempts: 1,
        },
    }
}
