//! The mapping loader: `CompiledMapping::compile` on any text never panics, and a mapping it
//! accepts applies to a few payloads without panicking. Compiling is also time-limited: a
//! compile slower than [`COMPILE_LIMIT`] is a finding (the JSONPath parser's time is exponential
//! in nested filters, so an unbounded path would hang a reload), whatever libFuzzer's own
//! `-timeout` is.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use casegate::env::Env;
use casegate::inbound::Headers;
use casegate::mapping::{CompiledMapping, EventInput};
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

/// Longest a compile of any input (at most libFuzzer's `-max_len`, 4 KiB by default) may take.
const COMPILE_LIMIT: std::time::Duration = std::time::Duration::from_secs(1);

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        Env::from_pairs([
            ("QUEUE_ID", "4f9c3c1e-5b0a-4c8e-9d51-2a7f0e6b1c3d"),
            ("SECRET", "s"),
        ])
    })
}

fn payloads() -> &'static Vec<Value> {
    static PAYLOADS: OnceLock<Vec<Value>> = OnceLock::new();
    PAYLOADS.get_or_init(|| {
        vec![
            json!({}),
            json!({"id": 1, "type": "order", "name": "#1001", "line_items": [{"sku": "A", "title": "x"}], "data": {"object": {"id": "in_1"}}}),
            json!([{"objectId": 1, "subscriptionType": "contact.creation"}]),
            json!(null),
        ]
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let started = std::time::Instant::now();
    let compiled = CompiledMapping::compile(Path::new("fuzz.yaml"), text, env());
    let took = started.elapsed();
    assert!(took < COMPILE_LIMIT, "compiling took {took:?}: {text:?}");
    let Ok(mapping) = compiled else {
        return;
    };
    let headers: Headers = [("x-event", "order"), ("x-id", "d1")].into_iter().collect();
    for payload in payloads() {
        let delivery_id = mapping.delivery_id_of(payload, &headers);
        let _ = mapping.event_types_of(payload, &headers);
        let input = EventInput {
            payload,
            headers: &headers,
            request_id: "fuzz",
            delivery_id: delivery_id.as_deref(),
            received_at_ms: 0,
        };
        let _ = mapping.apply(&input);
    }
});
