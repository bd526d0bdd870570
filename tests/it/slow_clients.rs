//! Slow clients cannot hold a connection (or the gateway) hostage: a dribbled head or body is cut
//! off with a JSON 408 while others are served.

use std::sync::Arc;
use std::time::{Duration, Instant};

use casegate::inbound::Headers;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::support::gateway::{GatewayOptions, QUEUE, TestGateway, drain, embedded_buffer};

fn open_mapping() -> String {
    format!(
        "verify: {{scheme: none}}\nrules:\n  - {{name: all, queue: {QUEUE}, title: 'Order {{{{ $.id }}}}'}}\n"
    )
}

async fn slow_gateway() -> TestGateway {
    TestGateway::start(
        GatewayOptions::embedded(&[("src.yaml", &open_mapping())])
            .setting("CASEGATE_INGRESS__CLIENT_TIMEOUT_SECS", "1"),
    )
    .await
}

/// A complete, valid webhook request for `src` as raw HTTP/1.1: head and body.
fn raw_request(id: u32) -> (String, String) {
    let body = format!(r#"{{"id": {id}}}"#);
    let head = format!(
        "POST /hooks/src HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\n\
         x-padding: {}\r\ncontent-length: {}\r\n\r\n",
        "p".repeat(40),
        body.len()
    );
    (head, body)
}

/// What a dribbling client experienced.
struct Dribbled {
    /// Status line, headers and body of the answer, if one came.
    answer: Option<(String, Vec<String>, Vec<u8>)>,
    /// From the first byte sent to the answer (or to the end of the connection).
    after: Duration,
    /// Whether the connection was closed by the server after the answer.
    closed: bool,
    /// Bytes of `slow` that went out before the answer.
    slow_bytes_sent: usize,
}

/// Connects, sends `fast` at once, then `slow` one byte every `every`, and reads the answer.
async fn dribble(address: &str, fast: &[u8], slow: &[u8], every: Duration) -> Dribbled {
    let stream = TcpStream::connect(address).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (read, write) = stream.into_split();
    dribble_on(read, write, fast, slow, every).await
}

/// [`dribble`] on an open connection.
async fn dribble_on(
    mut read: OwnedReadHalf,
    mut write: OwnedWriteHalf,
    fast: &[u8],
    slow: &[u8],
    every: Duration,
) -> Dribbled {
    let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let writer = {
        let (fast, slow, sent) = (fast.to_vec(), slow.to_vec(), Arc::clone(&sent));
        tokio::spawn(async move {
            if !fast.is_empty() && write.write_all(&fast).await.is_err() {
                return;
            }
            for byte in slow {
                if write.write_all(&[byte]).await.is_err() {
                    return;
                }
                sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(every).await;
            }
            // Keep the connection open (no FIN) until aborted.
            std::future::pending::<()>().await;
        })
    };
    let answer = tokio::time::timeout(Duration::from_secs(8), read_answer(&mut read))
        .await
        .ok()
        .flatten();
    let after = started.elapsed();
    let slow_bytes_sent = sent.load(std::sync::atomic::Ordering::SeqCst);
    let mut rest = [0u8; 64];
    let closed = matches!(
        tokio::time::timeout(Duration::from_secs(2), read.read(&mut rest)).await,
        Ok(Ok(0)) | Ok(Err(_))
    );
    writer.abort();
    Dribbled {
        answer,
        after,
        closed,
        slow_bytes_sent,
    }
}

/// A 408 with the JSON error shape every other error has (not actix's bare, empty 408).
fn assert_json_408((status, headers, body): (String, Vec<String>, Vec<u8>)) {
    assert_eq!(status, "HTTP/1.1 408 Request Timeout");
    assert!(
        headers
            .iter()
            .any(|h| h == "content-type: application/json"),
        "{headers:?}"
    );
    let body: Value = serde_json::from_slice(&body).expect("a JSON body");
    assert_eq!(body["error"], "request_timeout", "{body}");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
}

/// Reads one HTTP/1.1 answer with a `content-length` (actix always sends one for these), or
/// `None` when the connection ends before a complete head.
async fn read_answer(read: &mut OwnedReadHalf) -> Option<(String, Vec<String>, Vec<u8>)> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        match read.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let mut lines = head.split("\r\n").map(str::to_string);
    let status = lines.next().unwrap_or_default();
    let headers: Vec<String> = lines.map(|l| l.to_ascii_lowercase()).collect();
    let length = headers
        .iter()
        .find_map(|h| h.strip_prefix("content-length:"))
        .map(|v| v.trim().parse::<usize>().unwrap())
        .unwrap_or(0);
    let mut body = buffer[head_end + 4..].to_vec();
    while body.len() < length {
        match read.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    Some((status, headers, body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_dribbling_their_headers_are_cut_off_with_408_while_others_are_served() {
    let gateway = slow_gateway().await;
    let address = gateway.base_url.trim_start_matches("http://").to_string();
    let (head, body) = raw_request(666);
    let request = format!("{head}{body}");
    // Eight slowloris connections: one byte of the request every 200 ms (the whole request
    // would take about 30 s).
    let slow: Vec<_> = (0..8)
        .map(|_| {
            let (address, request) = (address.clone(), request.clone());
            tokio::spawn(async move {
                dribble(
                    &address,
                    b"",
                    request.as_bytes(),
                    Duration::from_millis(200),
                )
                .await
            })
        })
        .collect();
    // Meanwhile a normal client is served promptly.
    let headers: Headers = [("content-type", "application/json")].into_iter().collect();
    for id in 0..10 {
        let started = Instant::now();
        let answer = gateway
            .post("src", &headers, format!(r#"{{"id": {id}}}"#))
            .await;
        assert_eq!(answer.status, 202, "{}", answer.body);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "a normal webhook took {:?} next to slow clients",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    for task in slow {
        let outcome = task.await.unwrap();
        // The connection's head deadline answers 408 with the JSON error shape every other
        // error has (not actix's bare, empty 408) and closes the connection.
        assert_json_408(outcome.answer.expect("a 408 answer before the close"));
        assert!(outcome.closed, "the connection is closed after the 408");
        assert!(
            outcome.after >= Duration::from_millis(400) && outcome.after < Duration::from_secs(3),
            "answered after {:?}",
            outcome.after
        );
        assert!(outcome.slow_bytes_sent < request.len() / 2);
    }
    let dir = gateway.stop().await;
    let titles: Vec<String> = drain(&embedded_buffer(dir.path()))
        .await
        .into_iter()
        .map(|c| c.record.title)
        .collect();
    assert_eq!(titles.len(), 10, "{titles:?}");
    assert!(!titles.contains(&"Order 666".to_string()));
}

/// actix-http arms its head timer (`client_request_timeout`) only for the FIRST request of a
/// connection, and the keep-alive timer is cleared by the first byte of the next request, so with
/// keep-alive on nothing bounds the headers of a second request. `ingress.keep_alive_secs = 0`
/// (for a gateway exposed without a proxy) closes that gap: the connection ends after the first
/// answer, and the dribbler is cut off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_keep_alive_a_client_dribbling_a_second_request_is_cut_off_too() {
    let gateway = TestGateway::start(
        GatewayOptions::embedded(&[("src.yaml", &open_mapping())])
            .setting("CASEGATE_INGRESS__CLIENT_TIMEOUT_SECS", "1")
            .setting("CASEGATE_INGRESS__KEEP_ALIVE_SECS", "0"),
    )
    .await;
    let address = gateway.base_url.trim_start_matches("http://").to_string();
    let stream = TcpStream::connect(&address).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (mut read, mut write) = stream.into_split();
    write
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: gateway\r\n\r\n")
        .await
        .unwrap();
    let (status, _, _) = read_answer(&mut read).await.expect("a first answer");
    assert_eq!(status, "HTTP/1.1 200 OK");
    let (head, body) = raw_request(668);
    let request = format!("{head}{body}");
    let outcome = dribble_on(
        read,
        write,
        b"",
        request.as_bytes(),
        Duration::from_millis(200),
    )
    .await;
    assert!(
        outcome.answer.is_some() || outcome.closed,
        "after {:?} and {} bytes the connection is still held open",
        outcome.after,
        outcome.slow_bytes_sent
    );
    assert!(
        outcome.after < Duration::from_secs(3),
        "{:?}",
        outcome.after
    );
    let dir = gateway.stop().await;
    assert!(drain(&embedded_buffer(dir.path())).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_slower_than_the_client_timeout_gets_408_request_timeout_as_json() {
    let gateway = slow_gateway().await;
    let address = gateway.base_url.trim_start_matches("http://").to_string();
    let (head, body) = raw_request(667);
    let outcome = dribble(
        &address,
        head.as_bytes(),
        body.as_bytes(),
        Duration::from_millis(200),
    )
    .await;
    // The head arrived at once, so the handler ran; its own read timeout (the same
    // `ingress.client_timeout_secs`) answers the documented JSON error.
    assert_json_408(outcome.answer.expect("an answer"));
    assert!(
        outcome.after >= Duration::from_millis(950) && outcome.after < Duration::from_secs(3),
        "answered after {:?}",
        outcome.after
    );
    assert!(outcome.slow_bytes_sent < body.len());
    let dir = gateway.stop().await;
    assert!(drain(&embedded_buffer(dir.path())).await.is_empty());
}
