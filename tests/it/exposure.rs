//! What an unauthenticated stranger can learn or exhaust: readiness answers, forwarded headers,
//! the admin token's strength, and the global cap on bodies being received at once.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use casegate::inbound::Headers;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::gateway::{GatewayOptions, QUEUE, TestGateway, sign};
use crate::support::get_text;
use crate::support::wait::eventually;

fn pinned_now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_764_000_000)
}

fn mapping(verify: &str) -> String {
    format!(
        "verify: {verify}\nrules:\n  - name: all\n    queue: {QUEUE}\n    title: 'Event {{{{ $.id ?? \"none\" }}}}'\n"
    )
}

/// A generic HMAC scheme that signs the URL, as HubSpot v3 does.
const URL_SIGNED: &str = "{scheme: hmac, header: X-Signature, algorithm: sha256, encoding: hex, signed_content: '{timestamp}.{method}.{url}.{body}', timestamp_header: X-Timestamp, secrets: ['url-secret']}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_answers_ready_or_a_reason_code_and_nothing_internal() {
    let yaml = mapping("{scheme: none}");
    let token = "readyz-admin-token-0123456789abcdef";
    let gateway = TestGateway::start(
        GatewayOptions::embedded(&[("src.yaml", &yaml)]).setting("CASEGATE_ADMIN__TOKEN", token),
    )
    .await;
    let ready = gateway.get("/readyz").await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.body, json!({"status": "ready"}));
    // A broken file keeps the old set serving; its error (and the file name) is on the admin
    // API only.
    let mappings = gateway.dir.path().join("mappings");
    std::fs::write(mappings.join("broken.yaml"), "verify: [not a map\n").unwrap();
    let status_url = gateway.url("/admin/status");
    eventually(
        "the reload error is shown",
        Duration::from_secs(15),
        || async {
            let status = get_text(&status_url, Some(token)).await;
            if status.contains("broken.yaml") {
                Ok(())
            } else {
                Err(status)
            }
        },
    )
    .await;
    let ready = gateway.get("/readyz").await;
    assert_eq!(ready.status, 200, "{}", ready.body);
    assert_eq!(ready.body, json!({"status": "ready"}));
}

async fn post_with(gateway: &TestGateway, signed_url: &str, extra: &[(&str, &str)]) -> u16 {
    let body = r#"{"id": "evt_url"}"#;
    let mut headers = sign(
        &mapping(URL_SIGNED),
        signed_url,
        body,
        Headers::new(),
        pinned_now(),
    );
    for (name, value) in extra {
        headers.insert(name, *value);
    }
    gateway.post("src", &headers, body.to_string()).await.status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_count_only_from_trusted_proxies() {
    let yaml = mapping(URL_SIGNED);
    let mut options = GatewayOptions::embedded(&[("src.yaml", &yaml)]);
    options.now = Some(pinned_now());
    let gateway = TestGateway::start(options).await;
    let own = gateway.url("/hooks/src");
    let forged = [
        ("x-forwarded-host", "evil.example"),
        ("x-forwarded-proto", "https"),
    ];
    // From an untrusted peer the forwarded headers are ignored: the URL is the request's own.
    assert_eq!(
        post_with(&gateway, "https://evil.example/hooks/src", &forged).await,
        401
    );
    assert_eq!(post_with(&gateway, &own, &forged).await, 202);
    assert_eq!(
        post_with(
            &gateway,
            "https://evil.example/hooks/src",
            &[("forwarded", "host=evil.example;proto=https")]
        )
        .await,
        401
    );
    drop(gateway);

    let mut options = GatewayOptions::embedded(&[("src.yaml", &yaml)])
        .setting("CASEGATE_INGRESS__TRUSTED_PROXIES", "127.0.0.0/8");
    options.now = Some(pinned_now());
    let behind_proxy = TestGateway::start(options).await;
    assert_eq!(
        post_with(&behind_proxy, "https://evil.example/hooks/src", &forged).await,
        202,
        "a trusted proxy's forwarded host and scheme are the signed URL"
    );
}

#[test]
fn an_admin_token_shorter_than_32_characters_stops_startup() {
    let env = casegate::env::Env::from_pairs([(
        "CASEGATE_ADMIN__TOKEN",
        "admin-token-31-characters-long!",
    )]);
    let error = casegate::config::Config::load(None, &env, &Default::default())
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("admin.token") && error.contains("32"),
        "{error}"
    );
    assert!(!error.contains("admin-token-31"), "{error}");
}

/// Sends the head and `send` bytes of a `declared`-byte body, then keeps the connection open.
async fn partial_post(address: &str, declared: usize, send: usize) -> TcpStream {
    let mut stream = TcpStream::connect(address).await.unwrap();
    let head = format!(
        "POST /hooks/src HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {declared}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&vec![b' '; send]).await.unwrap();
    stream.flush().await.unwrap();
    stream
}

/// Reads one whole response (head and a Content-Length body) within a deadline.
async fn read_response(stream: &mut TcpStream) -> (u16, String, String) {
    let mut bytes = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            let n = stream.read(&mut buf).await.unwrap();
            bytes.extend_from_slice(&buf[..n]);
            if let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
                let length = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if bytes.len() >= end + 4 + length || n == 0 {
                    break;
                }
            } else if n == 0 {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("an answer within the deadline");
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_beyond_the_in_flight_cap_get_503_and_the_cap_frees_again() {
    let yaml = mapping("{scheme: none}");
    let gateway = TestGateway::start(
        GatewayOptions::embedded(&[("src.yaml", &yaml)])
            .setting("CASEGATE_INGRESS__MAX_INFLIGHT_BODY_BYTES", "1048576")
            .setting("CASEGATE_INGRESS__MAX_BODY_BYTES", "1048576"),
    )
    .await;
    let address = gateway.base_url.trim_start_matches("http://").to_string();
    // Two slow senders each announce a 700 KB body and send a little of it: together beyond
    // the 1 MiB cap, so whichever the gateway reaches second is refused.
    let declared = 700_000;
    let mut a = partial_post(&address, declared, 1000).await;
    let mut b = partial_post(&address, declared, 1000).await;
    let (refused, mut first) = tokio::select! {
        answer = read_response(&mut a) => (answer, b),
        answer = read_response(&mut b) => (answer, a),
    };
    let (status, head, body) = refused;
    assert_eq!(status, 503, "{head}\n{body}");
    assert!(head.contains("retry-after:"), "{head}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"], "overloaded");
    assert!(body["message"].as_str().unwrap().contains("1048576"));
    // The other sender finishes: its body is accepted, its share is given back.
    let rest = format!("{{\"id\": \"big\"}}{}", " ".repeat(declared - 1000 - 13));
    first.write_all(rest.as_bytes()).await.unwrap();
    let (status, _, body) = read_response(&mut first).await;
    assert_eq!(status, 202, "{body}");
    // Once the others are gone too, a normal webhook goes through.
    let json: Headers = [("content-type", "application/json")].into_iter().collect();
    gateway
        .post_until(202, Duration::from_secs(10), "src", &json, || {
            r#"{"id": 1}"#.into()
        })
        .await;
}
