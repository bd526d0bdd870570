//! `POST /hooks/{source}` end to end: real server, real signatures, real buffers.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use casegate::buffer::{Buffer, RedisBuffer};
use casegate::inbound::Headers;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::gateway::{GatewayOptions, QUEUE, TestGateway, drain, embedded_buffer, sign};
use crate::support::redis_server::RedisServer;
use crate::support::wait::eventually;

/// Pinned "now" for timestamped schemes: published examples and stale-timestamp tests need it.
fn pinned_now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_764_000_000)
}

const STANDARD_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const STANDARD_OTHER: &str = "whsec_dGhpcyBpcyBhIGRpZmZlcmVudCBzZWNyZXQ=";

/// Every scheme: its `verify` block around `{secrets}`, two valid secrets, and whether it signs
/// a timestamp.
struct Scheme {
    name: &'static str,
    block: &'static str,
    secret: &'static str,
    other: &'static str,
    timestamped: bool,
    /// The 401 code a wrong secret gives.
    wrong_code: &'static str,
    /// The 401 code an unsigned request gives.
    missing_code: &'static str,
}

const SCHEMES: &[Scheme] = &[
    Scheme {
        name: "shopify",
        block: "{scheme: shopify, secrets: SECRETS}",
        secret: "shpss_one",
        other: "shpss_two",
        timestamped: false,
        wrong_code: "signature_mismatch",
        missing_code: "missing_signature_header",
    },
    Scheme {
        name: "stripe",
        block: "{scheme: stripe, secrets: SECRETS}",
        secret: "whsec_stripe_one",
        other: "whsec_stripe_two",
        timestamped: true,
        wrong_code: "signature_mismatch",
        missing_code: "missing_signature_header",
    },
    Scheme {
        name: "github",
        block: "{scheme: github, secrets: SECRETS}",
        secret: "gh-one",
        other: "gh-two",
        timestamped: false,
        wrong_code: "signature_mismatch",
        missing_code: "missing_signature_header",
    },
    Scheme {
        name: "hubspot",
        block: "{scheme: hubspot, versions: [v3], secrets: SECRETS}",
        secret: "hs-one",
        other: "hs-two",
        timestamped: true,
        wrong_code: "signature_mismatch",
        missing_code: "missing_signature_header",
    },
    Scheme {
        name: "standard",
        block: "{scheme: standard-webhooks, secrets: SECRETS}",
        secret: STANDARD_SECRET,
        other: STANDARD_OTHER,
        timestamped: true,
        wrong_code: "signature_mismatch",
        missing_code: "missing_signature_header",
    },
    Scheme {
        name: "slack",
        block: "{scheme: slack, secrets: SECRETS}",
        secret: "slack-one",
        other: "slack-two",
        timestamped: true,
        wrong_code: "signature_mismatch",
        missing_code: "missing_signature_header",
    },
    Scheme {
        name: "zendesk",
        block: "{scheme: zendesk, secrets: SECRETS}",
        secret: "dGhpc2xvb2tzYmFzZTY0",
        other: "zd-two",
        timestamped: true,
        wrong_code: "signature_mismatch",
        missing_code: "missing_signature_header",
    },
    Scheme {
        name: "woo",
        block: "{scheme: woocommerce, secrets: SECRETS}",
        secret: "wc&amp;one",
        other: "wc-two",
        timestamped: false,
        wrong_code: "signature_mismatch",
        missing_code: "missing_signature_header",
    },
    Scheme {
        name: "generic",
        block: "{scheme: hmac, header: X-Signature, algorithm: sha512, encoding: base64, prefix: 'v1=', signed_content: '{timestamp}.{method}.{url}.{body}', timestamp_header: X-Timestamp, secrets: SECRETS}",
        secret: "gen-one",
        other: "gen-two",
        timestamped: true,
        wrong_code: "signature_mismatch",
        missing_code: "missing_signature_header",
    },
    Scheme {
        name: "basic",
        block: "{scheme: basic, username: hooks, secrets: SECRETS}",
        secret: "pw-one",
        other: "pw-two",
        timestamped: false,
        wrong_code: "bad_credentials",
        missing_code: "missing_credentials",
    },
    Scheme {
        name: "token",
        block: "{scheme: token, header: X-Webhook-Token, secrets: SECRETS}",
        secret: "tok-one",
        other: "tok-two",
        timestamped: false,
        wrong_code: "bad_credentials",
        missing_code: "missing_credentials",
    },
];

fn mapping_with(verify: &str, extra: &str) -> String {
    format!(
        "verify: {verify}\n{extra}rules:\n  - name: all\n    queue: {QUEUE}\n    title: 'Event {{{{ $.id ?? \"none\" }}}}'\n"
    )
}

fn scheme_mapping(scheme: &Scheme, secrets: &[&str]) -> String {
    let list = format!(
        "[{}]",
        secrets
            .iter()
            .map(|s| format!("'{s}'"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    mapping_with(&scheme.block.replace("SECRETS", &list), "")
}

async fn gateway_for_all_schemes(now: SystemTime) -> TestGateway {
    let mappings: Vec<(String, String)> = SCHEMES
        .iter()
        .map(|s| {
            (
                format!("{}.yaml", s.name),
                scheme_mapping(s, &[s.other, s.secret]),
            )
        })
        .collect();
    let mut options = GatewayOptions::embedded(&[]);
    options.mappings = mappings;
    options.now = Some(now);
    TestGateway::start(options).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scheme_accepts_a_correctly_signed_webhook_under_a_rotated_secret() {
    let gateway = gateway_for_all_schemes(pinned_now()).await;
    for scheme in SCHEMES {
        let signer = scheme_mapping(scheme, &[scheme.secret]);
        let answer = gateway
            .post_signed(scheme.name, &signer, r#"{"id": "evt_1"}"#, pinned_now())
            .await;
        assert_eq!(answer.status, 202, "{}: {}", scheme.name, answer.body);
        assert_eq!(answer.body["accepted"], 1, "{}", scheme.name);
        assert_eq!(answer.body["case_ids"].as_array().unwrap().len(), 1);
    }
    let dir = gateway.stop().await;
    let cases = drain(&embedded_buffer(dir.path())).await;
    assert_eq!(cases.len(), SCHEMES.len());
    assert!(cases.iter().all(|c| c.record.title == "Event evt_1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_bodies_wrong_secrets_and_missing_signatures_are_refused_with_specific_codes() {
    let gateway = gateway_for_all_schemes(pinned_now()).await;
    for scheme in SCHEMES {
        let url = gateway.url(&format!("/hooks/{}", scheme.name));
        let signer = scheme_mapping(scheme, &[scheme.secret]);
        let headers = sign(
            &signer,
            &url,
            r#"{"id": "evt_1"}"#,
            Headers::new(),
            pinned_now(),
        );
        let tampered = gateway
            .post(scheme.name, &headers, r#"{"id": "evt_2"}"#)
            .await;
        let expected_tampered = if scheme.wrong_code == "bad_credentials" {
            202
        } else {
            401
        };
        assert_eq!(
            tampered.status, expected_tampered,
            "{} tampered: {}",
            scheme.name, tampered.body
        );
        if expected_tampered == 401 {
            assert_eq!(
                tampered.body["error"], "signature_mismatch",
                "{}",
                scheme.name
            );
        }

        let wrong = scheme_mapping(scheme, &["a-secret-nobody-configured"]);
        let wrong = if scheme.name == "standard" {
            scheme_mapping(scheme, &["whsec_bm9ib2R5IGNvbmZpZ3VyZWQgdGhpcw=="])
        } else {
            wrong
        };
        let answer = gateway
            .post_signed(scheme.name, &wrong, r#"{"id": "evt_3"}"#, pinned_now())
            .await;
        assert_eq!(answer.status, 401, "{} wrong secret", scheme.name);
        assert_eq!(
            answer.body["error"], scheme.wrong_code,
            "{}: {}",
            scheme.name, answer.body
        );

        let unsigned: Headers = [("content-type", "application/json")].into_iter().collect();
        let answer = gateway
            .post(scheme.name, &unsigned, r#"{"id": "evt_4"}"#)
            .await;
        assert_eq!(answer.status, 401, "{} unsigned", scheme.name);
        assert_eq!(
            answer.body["error"], scheme.missing_code,
            "{}: {}",
            scheme.name, answer.body
        );
        for secret in [scheme.secret, scheme.other] {
            assert!(
                !answer.body.to_string().contains(secret),
                "{} leaked a secret",
                scheme.name
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_and_future_timestamps_are_refused() {
    let gateway = gateway_for_all_schemes(pinned_now()).await;
    for scheme in SCHEMES.iter().filter(|s| s.timestamped) {
        let signer = scheme_mapping(scheme, &[scheme.secret]);
        let old = pinned_now() - Duration::from_secs(3600);
        let answer = gateway
            .post_signed(scheme.name, &signer, r#"{"id": 1}"#, old)
            .await;
        assert_eq!(
            (answer.status, answer.body["error"].as_str()),
            (401, Some("stale_timestamp")),
            "{}",
            scheme.name
        );
        let future = pinned_now() + Duration::from_secs(3600);
        let answer = gateway
            .post_signed(scheme.name, &signer, r#"{"id": 1}"#, future)
            .await;
        assert_eq!(
            (answer.status, answer.body["error"].as_str()),
            (401, Some("future_timestamp")),
            "{}",
            scheme.name
        );
        let inside = pinned_now() - Duration::from_secs(200);
        let answer = gateway
            .post_signed(scheme.name, &signer, r#"{"id": 1}"#, inside)
            .await;
        assert_eq!(
            answer.status, 202,
            "{} inside the tolerance: {}",
            scheme.name, answer.body
        );
    }
}

fn dedupe_mapping() -> String {
    mapping_with("{scheme: none}", "delivery_id: {header: X-Delivery-Id}\n")
}

fn json_with(pairs: &[(&str, &str)]) -> Headers {
    std::iter::once(("content-type", "application/json"))
        .chain(pairs.iter().copied())
        .collect()
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_cases_survive_a_gateway_restart_on_the_embedded_buffer() {
    let mapping = mapping_with("{scheme: none}", "");
    let gateway = TestGateway::start(GatewayOptions::embedded(&[("src.yaml", &mapping)])).await;
    let mut acknowledged = Vec::new();
    for i in 0..20 {
        let answer = gateway
            .post("src", &json_with(&[]), format!(r#"{{"id": {i}}}"#))
            .await;
        assert_eq!(answer.status, 202);
        acknowledged.push(answer.body["case_ids"][0].as_str().unwrap().to_string());
    }
    let dir = gateway.stop().await;
    let gateway =
        TestGateway::start_in(GatewayOptions::embedded(&[("src.yaml", &mapping)]), dir).await;
    let answer = gateway.post("src", &json_with(&[]), r#"{"id": 20}"#).await;
    acknowledged.push(answer.body["case_ids"][0].as_str().unwrap().to_string());
    let dir = gateway.stop().await;
    let mut stored: Vec<String> = drain(&embedded_buffer(dir.path()))
        .await
        .into_iter()
        .map(|c| c.id)
        .collect();
    stored.sort();
    acknowledged.sort();
    assert_eq!(stored, acknowledged);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_webhooks_get_503_and_nothing_acknowledged_is_lost() {
    let mut redis = RedisServer::start().await;
    let mapping = mapping_with("{scheme: none}", "delivery_id: {header: X-Delivery-Id}\n");
    let mut options = GatewayOptions::embedded(&[("src.yaml", &mapping)]);
    options.backend = crate::support::gateway::Backend::Redis(redis.url());
    let gateway = TestGateway::start(options).await;
    let acknowledged = std::sync::Mutex::new(Vec::new());
    let send = async |i: usize| {
        let answer = gateway
            .post(
                "src",
                &json_with(&[("X-Delivery-Id", &format!("d-{i}"))]),
                format!(r#"{{"id": {i}}}"#),
            )
            .await;
        if answer.status == 202 {
            let id = answer.body["case_ids"][0].as_str().unwrap().to_string();
            acknowledged.lock().unwrap().push(id);
        }
        answer
    };
    for i in 0..5 {
        assert_eq!(send(i).await.status, 202);
    }
    redis.stop();
    let down = send(5).await;
    assert_eq!(down.status, 503, "{}", down.body);
    assert_eq!(down.body["error"], "buffer_unavailable");
    assert!(down.headers.contains_key("retry-after"));
    assert!(
        !down.body.to_string().contains("redis://"),
        "no connection details leak"
    );
    let ready = gateway.get("/readyz").await;
    assert_eq!(ready.status, 503);

    redis.restart().await;
    // The provider retries the refused delivery; the first attempts may meet the dead connection.
    eventually(
        "the retry after Redis came back is accepted",
        Duration::from_secs(5),
        || async {
            let answer = send(5).await;
            if answer.status == 202 {
                return Ok(());
            }
            assert_eq!(answer.status, 503, "{}", answer.body);
            Err(answer.body)
        },
    )
    .await;
    for i in 6..10 {
        assert_eq!(send(i).await.status, 202);
    }
    assert_eq!(gateway.get("/readyz").await.status, 200);
    gateway.stop().await;

    let buffer = Buffer::Redis(
        RedisBuffer::connect(&redis.url(), "casegate", Duration::from_secs(2))
            .await
            .unwrap(),
    );
    let mut stored: Vec<String> = drain(&buffer).await.into_iter().map(|c| c.id).collect();
    stored.sort();
    let mut acknowledged = acknowledged.into_inner().unwrap();
    acknowledged.sort();
    assert_eq!(
        stored, acknowledged,
        "every acknowledged case is buffered, once"
    );
    assert_eq!(acknowledged.len(), 10);
}
