//! Prometheus metrics: names, units and the one place they are registered.
//!
//! Names follow Prometheus conventions (`casegate_..._total` for counters, base units in the
//! name). Labels never carry user-controlled text beyond configured names (sources, queues), so
//! a stranger posting to random URLs cannot grow the series count.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const WEBHOOKS: &str = "casegate_webhooks_total";
pub const CASES_ENQUEUED: &str = "casegate_cases_enqueued_total";
pub const CASES_DELIVERED: &str = "casegate_cases_delivered_total";
pub const CASES_DEAD_LETTERED: &str = "casegate_cases_dead_lettered_total";
pub const API_RESPONSES: &str = "casegate_api_responses_total";
pub const API_RATE_LIMITED: &str = "casegate_api_rate_limited_total";
pub const BATCH_SIZE: &str = "casegate_delivery_batch_size";
pub const END_TO_END: &str = "casegate_end_to_end_latency_seconds";
pub const BUFFER_DEPTH: &str = "casegate_buffer_depth";
pub const BUFFER_OLDEST_AGE: &str = "casegate_buffer_oldest_case_age_seconds";
pub const PAUSED: &str = "casegate_delivery_paused";
pub const AMBIGUOUS_RESENDS: &str = "casegate_delivery_ambiguous_resends_total";
pub const MAPPING_RELOADS: &str = "casegate_mapping_reloads_total";
/// 1 when a source is served, 0 when it is refused for running on a development default secret.
pub const SOURCE_CONFIGURED: &str = "casegate_source_configured";

/// Every `outcome` of [`WEBHOOKS`]: each starts at zero for every loaded source.
pub const WEBHOOK_OUTCOMES: &[&str] = &[
    "accepted",
    "filtered",
    "ping",
    "duplicate",
    "mapping_failure",
    "unauthorized",
    "unavailable",
    "invalid",
];
/// `kind` of [`CASES_DEAD_LETTERED`]: refused by the Duvo API (labelled by queue) or failed to map
/// (labelled by source).
pub const DEAD_LETTER_REFUSED: &str = "refused";
pub const DEAD_LETTER_MAPPING_FAILURE: &str = "mapping_failure";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
/// Queues the buffer gauges have reported, so a queue that drains (and that a backend may stop
/// listing) is reported at zero instead of keeping its last value.
static KNOWN_QUEUES: std::sync::Mutex<std::collections::BTreeSet<String>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// Starts every counter family at zero for the loaded sources, their queues and the configured
/// API keys, so dashboards and alerts see zero rather than nothing before the first webhook.
/// Called at startup and after every successful mapping reload (new sources get their zeros);
/// adding zero to an existing counter changes nothing.
pub fn register_zeros(set: &crate::mapping::MappingSet, api_keys: &[String]) {
    use metrics::{counter, gauge};
    handle();
    let mut queues = std::collections::BTreeSet::new();
    for mapping in set.iter() {
        let source = mapping.source.clone();
        for outcome in WEBHOOK_OUTCOMES {
            counter!(WEBHOOKS, "source" => source.clone(), "outcome" => *outcome, "reason" => "")
                .increment(0);
        }
        counter!(CASES_DEAD_LETTERED, "kind" => DEAD_LETTER_MAPPING_FAILURE, "source" => source)
            .increment(0);
        queues.extend(mapping.queues().map(str::to_string));
    }
    for queue in &queues {
        counter!(CASES_ENQUEUED, "queue" => queue.clone()).increment(0);
        counter!(CASES_DELIVERED, "queue" => queue.clone()).increment(0);
        counter!(CASES_DEAD_LETTERED, "kind" => DEAD_LETTER_REFUSED, "queue" => queue.clone())
            .increment(0);
        gauge!(PAUSED, "kind" => "queue", "name" => queue.clone()).increment(0.0);
        counter!(AMBIGUOUS_RESENDS, "queue" => queue.clone()).increment(0);
    }
    for key in api_keys {
        gauge!(PAUSED, "kind" => "key", "name" => key.clone()).increment(0.0);
    }
    counter!(API_RESPONSES, "status" => "200").increment(0);
    counter!(API_RATE_LIMITED).increment(0);
    for result in ["ok", "failed"] {
        counter!(MAPPING_RELOADS, "result" => result).increment(0);
    }
    known_queues().extend(queues);
}

fn known_queues() -> std::sync::MutexGuard<'static, std::collections::BTreeSet<String>> {
    KNOWN_QUEUES
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Sets the buffer gauges from `(queue, Some((depth, oldest age)))` per queue the buffer
/// answered for (`None`: it could not answer; the gauges keep their value). A queue known
/// before and absent now (drained, no longer listed) is set to zero.
pub fn set_buffer_gauges(stats: &[(String, Option<(u64, f64)>)]) {
    let mut known = known_queues();
    known.extend(stats.iter().map(|(q, _)| q.clone()));
    for queue in known.iter() {
        let (depth, age) = match stats.iter().find(|(q, _)| q == queue) {
            Some((_, None)) => continue,
            Some((_, Some(figures))) => *figures,
            None => (0, 0.0),
        };
        metrics::gauge!(BUFFER_DEPTH, "queue" => queue.clone()).set(depth as f64);
        metrics::gauge!(BUFFER_OLDEST_AGE, "queue" => queue.clone()).set(age);
    }
}

/// Counter handles by source, for one `(outcome, reason)`.
type BySource = HashMap<String, metrics::Counter>;

thread_local! {
    /// This thread's handles on the per-webhook counters, by their labels: counting a webhook
    /// or a case then builds no label strings and skips the registry's lookup. Every label
    /// comes from a mapping loaded since start (or is fixed), never from a request, so the maps
    /// hold no more series than the registry itself. The recorder has no idle timeout: a series
    /// is never dropped, so a kept handle never counts into one that is no longer exported.
    static WEBHOOK_COUNTERS: RefCell<HashMap<(&'static str, &'static str), BySource>> =
        RefCell::default();
    static ENQUEUED_COUNTERS: RefCell<HashMap<String, metrics::Counter>> = RefCell::default();
}

/// Adds one to `casegate_webhooks_total{source, outcome, reason}`. `source` must be a loaded
/// mapping's source (or a fixed name): never text a sender chose.
pub fn count_webhook(source: &str, outcome: &'static str, reason: &'static str) {
    // The recorder is in place before any handle is kept, or the handle would record nothing.
    handle();
    WEBHOOK_COUNTERS.with_borrow_mut(|counters| {
        let by_source = counters.entry((outcome, reason)).or_default();
        increment_kept(by_source, source, || {
            metrics::counter!(WEBHOOKS, "source" => source.to_string(), "outcome" => outcome, "reason" => reason)
        });
    });
}

/// Adds one to `casegate_cases_enqueued_total{queue}`, for a queue of a loaded mapping.
pub fn count_enqueued(queue: &str) {
    handle();
    ENQUEUED_COUNTERS.with_borrow_mut(|counters| {
        increment_kept(
            counters,
            queue,
            || metrics::counter!(CASES_ENQUEUED, "queue" => queue.to_string()),
        );
    });
}

/// Adds one to the counter kept under `label`, registering it with `register` the first time.
fn increment_kept(
    kept: &mut HashMap<String, metrics::Counter>,
    label: &str,
    register: impl FnOnce() -> metrics::Counter,
) {
    if let Some(counter) = kept.get(label) {
        counter.increment(1);
        return;
    }
    let counter = register();
    counter.increment(1);
    kept.insert(label.to_string(), counter);
}

/// Installs the process-wide recorder once and returns its handle.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        // No idle timeout: count_webhook and count_enqueued keep handles on their series.
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full(BATCH_SIZE.into()),
                &[1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 75.0, 90.0, 99.0, 100.0],
            )
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full(END_TO_END.into()),
                    &[
                        0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
                        900.0, 3600.0,
                    ],
                )
            })
            .expect("static bucket lists are valid")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (an embedding application); then ours only
        // renders what it records, which is nothing, and that is the embedder's choice.
        let _ = metrics::set_global_recorder(recorder);
        describe();
        handle
    })
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        WEBHOOKS,
        "Webhooks received, by source and outcome (and reason for refusals)"
    );
    describe_counter!(CASES_ENQUEUED, "Cases written to the buffer, by queue");
    describe_counter!(CASES_DELIVERED, "Cases the Duvo API accepted, by queue");
    describe_counter!(
        CASES_DEAD_LETTERED,
        "Dead letters made: cases the Duvo API refused (kind=refused, by queue) and events whose mapping failed (kind=mapping_failure, by source)"
    );
    describe_counter!(
        API_RESPONSES,
        "Answers of the Duvo API, by status (0: no answer)"
    );
    describe_counter!(API_RATE_LIMITED, "429 answers of the Duvo API");
    describe_histogram!(BATCH_SIZE, Unit::Count, "Cases per request to the Duvo API");
    describe_histogram!(
        END_TO_END,
        Unit::Seconds,
        "From webhook received to case accepted by the Duvo API"
    );
    describe_gauge!(
        BUFFER_DEPTH,
        Unit::Count,
        "Cases buffered and not yet delivered, by queue"
    );
    describe_gauge!(
        BUFFER_OLDEST_AGE,
        Unit::Seconds,
        "Age of the oldest buffered case, by queue"
    );
    describe_gauge!(
        PAUSED,
        "1 while delivery is paused for a key (kind=key: 401/403 or 429) or a queue (kind=queue: \
         404), as recorded in the shared pause table"
    );
    describe_counter!(
        AMBIGUOUS_RESENDS,
        "Cases sent again after an attempt whose outcome is unknown (a timeout or 5xx after which \
         the API may have stored them, or a claim taken over from a stopped consumer): each is a \
         possible duplicate"
    );
    describe_counter!(MAPPING_RELOADS, "Mapping reloads, by result");
}
