//! The buffer contract, run unchanged against both backends: a real `redis-server` spawned per
//! test (never the machine's Redis) and a redb file in a temp dir. Each contract test is an async
//! fn taking a [`Fixture`]; `contract!` turns it into `buffer::redis::<name>`,
//! `buffer::embedded::<name>` and `buffer::embedded_marks_on_disk::<name>` (no dedupe mark in
//! memory: every one takes the on-disk index). The tests sit in files by subject (`claims`,
//! `dedupe`, `dead_letters`, `restarts`); the fixture, the helpers and the contract's list stay
//! here.

use std::time::Duration;

use casegate::buffer::redis::Topology;
use casegate::buffer::{
    Buffer, CaseId, DedupeMark, EmbeddedBuffer, EmbeddedOptions, Enqueue, EnqueueOutcome,
    RedisBuffer,
};
use casegate::case::{CaseMeta, CaseRecord, DeadLetterId, DeadLetterKind, DeadLetterRecord};

use crate::support::redis_cluster::RedisCluster;
use crate::support::redis_server::RedisServer;

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
    /// A redb file, opened with this many dedupe marks indexed in memory.
    Embedded(tempfile::TempDir, usize),
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

    async fn embedded(dedupe_index_marks: usize) -> Fixture {
        let backend = Backend::Embedded(tempfile::tempdir().expect("temp dir"), dedupe_index_marks);
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
            Backend::Embedded(..) => {}
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
        Backend::Embedded(dir, dedupe_index_marks) => Buffer::Embedded(
            EmbeddedBuffer::open_with(
                &dir.path().join("state").join("buffer.redb"),
                EmbeddedOptions {
                    dedupe_index_marks: *dedupe_index_marks,
                    ..EmbeddedOptions::default()
                },
            )
            .expect("open embedded buffer"),
        ),
    }
}

mod claims;
mod dead_letters;
mod dedupe;
mod restarts;

use claims::*;
use dead_letters::*;
use dedupe::*;
use restarts::*;

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
                    let fixture = super::Fixture::embedded(casegate::buffer::DEFAULT_DEDUPE_INDEX_MARKS);
                    super::$test(fixture.await).await;
                }
            )*
        }
        mod embedded_marks_on_disk {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::Fixture::embedded(0).await).await;
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
    a_duplicate_caught_by_one_mark_leaves_its_other_mark_unwritten,
    a_dedupe_mark_expires_after_its_ttl,
    a_ttl_of_zero_expires_at_once,
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
