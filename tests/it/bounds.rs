//! Work one request can cause is bounded: a stuck disk answers 503, a huge fan-out is
//! dead-lettered whole, a slow sender gets a JSON 408.

use std::time::{Duration, Instant};

use casegate::buffer::EmbeddedBuffer;
use casegate::inbound::Headers;

use crate::support::gateway::{GatewayOptions, QUEUE, TestGateway};

fn json_headers() -> Headers {
    [("content-type", "application/json")].into_iter().collect()
}

fn open_mapping(extra: &str, rule_extra: &str) -> String {
    format!(
        "verify: {{scheme: none}}\n{extra}rules:\n  - name: all\n    queue: {QUEUE}\n    title: 'Event {{{{ $.id ?? \"none\" }}}}'\n{rule_extra}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_embedded_writer_answers_503_within_the_op_timeout_not_a_hang() {
    let yaml = open_mapping("", "");
    let gateway = TestGateway::start(
        GatewayOptions::embedded(&[("src.yaml", &yaml)])
            .setting("CASEGATE_BUFFER__OP_TIMEOUT_MS", "300"),
    )
    .await;
    assert_eq!(
        gateway
            .post("src", &json_headers(), r#"{"id": 0}"#)
            .await
            .status,
        202
    );
    let path = gateway.config.buffer.path.clone();
    EmbeddedBuffer::stall_writer_for_tests(&path, true);
    let started = Instant::now();
    let stuck = gateway.post("src", &json_headers(), r#"{"id": 1}"#).await;
    let waited = started.elapsed();
    EmbeddedBuffer::stall_writer_for_tests(&path, false);
    assert_eq!(stuck.status, 503, "{}", stuck.body);
    assert_eq!(stuck.body["error"], "buffer_unavailable");
    assert!(stuck.headers.contains_key("retry-after"));
    assert!(
        waited < Duration::from_secs(3),
        "answered after {waited:?}, not within the 300 ms op timeout"
    );
    // The disk answers again: so does the gateway.
    gateway
        .post_until(202, Duration::from_secs(10), "src", &json_headers(), || {
            r#"{"id": 2}"#.into()
        })
        .await;
}

fn fan_out_mapping(max_cases: Option<usize>) -> String {
    let limit = max_cases.map_or(String::new(), |n| format!("max_cases: {n}\n"));
    format!(
        "verify: {{scheme: none}}\n{limit}rules:\n  - name: items\n    queue: {QUEUE}\n    for_each: $.line_items\n    title: 'Item {{{{ @.sku }}}}'\n    data: {{sku: '@.sku', note: '$.note'}}\n"
    )
}

/// A body with `items` line items and a `note` every case copies.
fn fan_out_body(items: usize, note_bytes: usize) -> String {
    let line_items: Vec<_> = (0..items)
        .map(|i| serde_json::json!({"sku": format!("sku-{i}")}))
        .collect();
    serde_json::json!({"id": "order-1", "note": "n".repeat(note_bytes), "line_items": line_items})
        .to_string()
}

/// Dead letters in a stopped gateway's embedded buffer, and how many cases it holds.
async fn stored(dir: &std::path::Path) -> (Vec<casegate::case::DeadLetter>, usize) {
    let buffer = crate::support::gateway::embedded_buffer(dir);
    let letters = buffer.list_dead_letters(None, 100).await.unwrap();
    let cases = crate::support::gateway::drain(&buffer).await.len();
    (letters, cases)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_with_tens_of_thousands_of_line_items_is_dead_lettered_whole_naming_max_cases() {
    let yaml = fan_out_mapping(None);
    let gateway = TestGateway::start(GatewayOptions::embedded(&[("src.yaml", &yaml)])).await;
    let body = fan_out_body(30_000, 100);
    let answer = gateway.post("src", &json_headers(), body).await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    assert_eq!(answer.body["accepted"], 0);
    assert_eq!(answer.body["dead_letter_ids"].as_array().unwrap().len(), 1);
    // Within the limit, the same mapping makes every case.
    let small = gateway
        .post("src", &json_headers(), fan_out_body(3, 100))
        .await;
    assert_eq!(small.body["accepted"], 3, "{}", small.body);
    let dir = gateway.stop().await;
    let (letters, cases) = stored(dir.path()).await;
    assert_eq!(cases, 3, "nothing of the oversized event was enqueued");
    assert_eq!(letters.len(), 1);
    let reason = &letters[0].record.reason;
    assert!(
        reason.contains("max_cases") && reason.contains("1000"),
        "{reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_whose_cases_pass_the_size_bound_is_dead_lettered_whole_naming_it() {
    let yaml = fan_out_mapping(Some(100_000));
    let gateway = TestGateway::start(
        GatewayOptions::embedded(&[("src.yaml", &yaml)])
            .setting("CASEGATE_INGRESS__MAX_EVENT_CASES_BYTES", "1048576")
            .setting("CASEGATE_INGRESS__MAX_BODY_BYTES", "10485760"),
    )
    .await;
    // 20,000 cases each copying a 4 KB note: 80 MB of cases from a 4 MB body.
    let body = fan_out_body(20_000, 4096);
    let answer = gateway.post("src", &json_headers(), body).await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    assert_eq!(answer.body["accepted"], 0);
    let dir = gateway.stop().await;
    let (letters, cases) = stored(dir.path()).await;
    assert_eq!(cases, 0);
    assert_eq!(letters.len(), 1);
    let reason = &letters[0].record.reason;
    assert!(
        reason.contains("max_event_cases_bytes") && reason.contains("1048576"),
        "{reason}"
    );
}

#[test]
fn check_reports_each_mappings_limits() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.yaml"), fan_out_mapping(None)).unwrap();
    std::fs::write(dir.path().join("b.yaml"), fan_out_mapping(Some(50))).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_casegate"))
        .arg("check")
        .arg(dir.path())
        .env("CASEGATE_INGRESS__MAX_EVENT_CASES_BYTES", "2000000")
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let line = |file: &str| {
        stdout
            .lines()
            .find(|l| l.contains(file))
            .unwrap_or_default()
            .to_string()
    };
    assert!(line("a.yaml").contains("max_cases 1000"), "{stdout}");
    assert!(line("b.yaml").contains("max_cases 50"), "{stdout}");
    assert!(
        line("a.yaml").contains("max_event_cases_bytes 2000000"),
        "{stdout}"
    );
}
