//! What a request can carry: repeated deliveries, bad bodies, oversize streams, filtered events,
//! mapping failures and form payloads.

use std::time::Duration;

use casegate::inbound::Headers;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{json_with, mapping_with};
use crate::support::gateway::{GatewayOptions, QUEUE, TestGateway, drain, embedded_buffer};

fn dedupe_mapping() -> String {
    mapping_with("{scheme: none}", "delivery_id: {header: X-Delivery-Id}\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_delivery_id_is_answered_as_a_duplicate_and_creates_no_case() {
    let gateway =
        TestGateway::start(GatewayOptions::embedded(&[("src.yaml", &dedupe_mapping())])).await;
    let first = gateway
        .post(
            "src",
            &json_with(&[("X-Delivery-Id", "d-1")]),
            r#"{"id": 1}"#,
        )
        .await;
    assert_eq!(first.status, 202);
    let again = gateway
        .post(
            "src",
            &json_with(&[("X-Delivery-Id", "d-1")]),
            r#"{"id": 1}"#,
        )
        .await;
    assert_eq!(
        (again.status, again.body.clone()),
        (200, json!({"duplicate": true}))
    );
    let other = gateway
        .post(
            "src",
            &json_with(&[("X-Delivery-Id", "d-2")]),
            r#"{"id": 2}"#,
        )
        .await;
    assert_eq!(other.status, 202);
    let no_id = gateway.post("src", &json_with(&[]), r#"{"id": 3}"#).await;
    assert_eq!(
        no_id.status, 202,
        "without a delivery id there is nothing to dedupe on"
    );
    let dir = gateway.stop().await;
    assert_eq!(drain(&embedded_buffer(dir.path())).await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bodies_get_specific_json_errors() {
    let mapping = mapping_with("{scheme: none}", "");
    let gateway = TestGateway::start(
        GatewayOptions::embedded(&[("src.yaml", &mapping)])
            .setting("CASEGATE_INGRESS__MAX_BODY_BYTES", "4096"),
    )
    .await;
    let nesting_bomb = format!("{}{}", "[".repeat(1500), "]".repeat(1500));
    let cases: Vec<(&str, Headers, Vec<u8>, u16, &str)> = vec![
        ("src", json_with(&[]), b"".to_vec(), 400, "malformed_json"),
        (
            "src",
            json_with(&[]),
            b"{\"id\": 1,}".to_vec(),
            400,
            "malformed_json",
        ),
        (
            "src",
            json_with(&[]),
            b"not json at all".to_vec(),
            400,
            "malformed_json",
        ),
        (
            "src",
            json_with(&[]),
            b"{\"id\": \"\xff\xfe\"}".to_vec(),
            400,
            "invalid_utf8",
        ),
        (
            "src",
            json_with(&[]),
            nesting_bomb.into_bytes(),
            400,
            "json_too_deep",
        ),
        (
            "src",
            json_with(&[]),
            vec![b' '; 5000],
            413,
            "payload_too_large",
        ),
        (
            "src",
            [("content-type", "text/plain")].into_iter().collect(),
            b"{}".to_vec(),
            415,
            "unsupported_media_type",
        ),
        (
            "src",
            Headers::new(),
            b"{}".to_vec(),
            415,
            "unsupported_media_type",
        ),
        (
            "src",
            [("content-type", "application/x-www-form-urlencoded")]
                .into_iter()
                .collect(),
            b"a=1".to_vec(),
            400,
            "missing_form_payload",
        ),
        (
            "nope",
            json_with(&[]),
            b"{}".to_vec(),
            404,
            "unknown_source",
        ),
    ];
    for (source, headers, body, status, code) in cases {
        let answer = gateway.post(source, &headers, body).await;
        assert_eq!(answer.status, status, "{code}: {}", answer.body);
        assert_eq!(answer.body["error"], code, "{}", answer.body);
        assert!(
            answer.body["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    let malformed = gateway
        .post("src", &json_with(&[]), "{\n  \"id\": ]\n}")
        .await;
    assert!(
        malformed.body["message"]
            .as_str()
            .unwrap()
            .contains("line 2 column 9"),
        "{}",
        malformed.body
    );
    let wrong_method = gateway.get("/hooks/src").await;
    assert_eq!(
        (wrong_method.status, wrong_method.body["error"].as_str()),
        (404, Some("not_found"))
    );
    // Only one segment after /hooks names a source.
    for path in ["", "src/extra", "src/"] {
        let answer = gateway.post(path, &json_with(&[]), "{}").await;
        assert_eq!(
            (answer.status, answer.body["error"].as_str()),
            (404, Some("not_found")),
            "/hooks/{path}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_chunked_body_is_refused_while_streaming() {
    let mapping = mapping_with("{scheme: none}", "");
    let gateway = TestGateway::start(
        GatewayOptions::embedded(&[("src.yaml", &mapping)])
            .setting("CASEGATE_INGRESS__MAX_BODY_BYTES", "65536"),
    )
    .await;
    let address = gateway.base_url.trim_start_matches("http://").to_string();
    let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    let head = format!(
        "POST /hooks/src HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = format!("{:x}\r\n{}\r\n", 8192, " ".repeat(8192));
    // An endless body: the server must answer long before this loop could finish.
    let mut sent = 0usize;
    let mut response = Vec::new();
    while sent < 64 * 1024 * 1024 {
        if stream.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
        sent += 8192;
        if sent > 128 * 1024 {
            let mut buf = [0u8; 1024];
            if let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(10), stream.read(&mut buf)).await
            {
                response.extend_from_slice(&buf[..n]);
                if n == 0 || response.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response);
    assert!(
        text.starts_with("HTTP/1.1 413"),
        "got {text:?} after {sent} bytes"
    );
    assert!(text.contains("payload_too_large"), "{text}");
    assert!(
        sent < 8 * 1024 * 1024,
        "the server read {sent} bytes before refusing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filtered_events_mapping_failures_and_form_payloads() {
    let mapping = format!(
        "verify: {{scheme: none}}\nevent_type: {{path: $.type}}\nrules:\n  - name: orders\n    when: {{event: order.created}}\n    queue: {QUEUE}\n    title: 'Order {{{{ $.order.number }}}}'\n"
    );
    let gateway = TestGateway::start(GatewayOptions::embedded(&[("src.yaml", &mapping)])).await;
    let filtered = gateway
        .post("src", &json_with(&[]), r#"{"type": "order.deleted"}"#)
        .await;
    assert_eq!(
        (filtered.status, filtered.body.clone()),
        (200, json!({"accepted": 0}))
    );

    let failing = gateway
        .post(
            "src",
            &json_with(&[("X-Request-Id", "req-42")]),
            r#"{"type": "order.created"}"#,
        )
        .await;
    assert_eq!(
        failing.status, 202,
        "a mapping failure is acknowledged: {}",
        failing.body
    );
    assert_eq!(failing.body["accepted"], 0);
    assert_eq!(failing.headers["x-request-id"], "req-42");
    let dead_letter_id = failing.body["dead_letter_ids"][0]
        .as_str()
        .unwrap()
        .to_string();

    let form: Headers = [("content-type", "application/x-www-form-urlencoded")]
        .into_iter()
        .collect();
    let body = format!(
        "payload={}",
        "%7B%22type%22%3A%22order.created%22%2C%22order%22%3A%7B%22number%22%3A7%7D%7D"
    );
    let accepted = gateway.post("src", &form, body).await;
    assert_eq!(accepted.status, 202, "{}", accepted.body);

    let dir = gateway.stop().await;
    let buffer = embedded_buffer(dir.path());
    let cases = drain(&buffer).await;
    assert_eq!(
        cases
            .iter()
            .map(|c| c.record.title.as_str())
            .collect::<Vec<_>>(),
        ["Order 7"]
    );
    let dead = buffer
        .get_dead_letter(&dead_letter_id)
        .await
        .unwrap()
        .expect("dead letter stored");
    assert!(
        dead.record.reason.contains("$.order.number"),
        "{}",
        dead.record.reason
    );
    match dead.record.kind {
        casegate::case::DeadLetterKind::MappingFailure {
            payload,
            rule,
            request_id,
            ..
        } => {
            assert_eq!(payload, r#"{"type": "order.created"}"#);
            assert_eq!(rule.as_deref(), Some("orders"));
            assert_eq!(request_id.as_deref(), Some("req-42"));
        }
        other => panic!("unexpected {other:?}"),
    }
}
