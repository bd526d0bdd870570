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
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = gateway.post("src", &json_headers(), r#"{"id": 2}"#).await;
        if answer.status == 202 {
            break;
        }
        assert!(Instant::now() < deadline, "{}", answer.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
