//! The `casegate` binary itself: flags, environment, graceful shutdown on SIGTERM.

use std::time::Duration;

use serde_json::Value;

use crate::support::gateway::{GatewayOptions, QUEUE, TestGateway, drain, embedded_buffer, sign};

use crate::support::free_port;
use crate::support::process::{CasegateProcess, serve_command};
use crate::support::wait::eventually;

/// A temp dir holding `mappings/orders.yaml`: unsigned, every event one case titled by its id.
fn orders_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mappings = dir.path().join("mappings");
    std::fs::create_dir_all(&mappings).unwrap();
    std::fs::write(
        mappings.join("orders.yaml"),
        format!("verify: {{scheme: none}}\nrules:\n  - {{name: all, queue: {QUEUE}, title: 'Order {{{{ $.id }}}}'}}\n"),
    )
    .unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_runs_with_flags_and_stops_cleanly_on_sigterm_keeping_what_it_acknowledged() {
    let dir = orders_dir();
    let port = free_port();
    let mut command = serve_command(dir.path(), port, &[]);
    command
        .env("CASEGATE_LOG__FORMAT", "json")
        .current_dir(dir.path());
    let child = CasegateProcess::spawn(command);
    let client = crate::support::http_client();
    let url = format!("http://127.0.0.1:{port}/hooks/orders");
    let (status, body) = eventually("the gateway comes up", Duration::from_secs(5), || async {
        let response = client
            .post(&url)
            .header("content-type", "application/json")
            .body(r#"{"id": 7}"#)
            .send()
            .await?;
        Ok::<_, reqwest::Error>((
            response.status().as_u16(),
            response.json::<Value>().await.unwrap(),
        ))
    })
    .await;
    assert_eq!(status, 202, "{body}");

    let (log, _) = child.terminate().await;
    assert!(log.contains("shutting down"), "{log}");
    assert!(
        log.lines()
            .all(|l| serde_json::from_str::<Value>(l).is_ok()),
        "JSON log lines: {log}"
    );
    assert!(
        log.contains("unauthenticated"),
        "a `none` source is warned about: {log}"
    );

    let cases = drain(&embedded_buffer(dir.path())).await;
    assert_eq!(cases.len(), 1);
    assert_eq!(cases[0].record.title, "Order 7");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_mapping_stops_serve_with_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.yaml"),
        "verify: {scheme: nonsense}\nrules: []\n",
    )
    .unwrap();
    let output = crate::support::process::command()
        .args(["serve", "--listen", "127.0.0.1:0", "--mappings"])
        .arg(dir.path())
        .env("CASEGATE_BUFFER__PATH", dir.path().join("b.redb"))
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("bad.yaml") && stderr.contains("nonsense"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_signing_schemes_use_the_configured_public_url_behind_a_proxy() {
    let mapping = format!(
        "verify: {{scheme: hubspot, versions: [v3], secrets: [hs-secret]}}\nrules:\n  - {{name: all, queue: {QUEUE}, title: 'Contact {{{{ $[0].objectId }}}}'}}\n"
    );
    let gateway = TestGateway::start(
        GatewayOptions::embedded(&[("hubspot.yaml", &mapping)])
            .setting("CASEGATE_PUBLIC_URL", "https://hooks.example.com/"),
    )
    .await;
    let body = r#"[{"objectId": 1, "subscriptionType": "contact.creation"}]"#;
    let now = std::time::SystemTime::now();
    let public = sign(
        &mapping,
        "https://hooks.example.com/hooks/hubspot?portal=1",
        body,
        Default::default(),
        now,
    );
    let answer = gateway.post("hubspot?portal=1", &public, body).await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    let internal = sign(
        &mapping,
        &gateway.url("/hooks/hubspot?portal=1"),
        body,
        Default::default(),
        now,
    );
    let answer = gateway.post("hubspot?portal=1", &internal, body).await;
    assert_eq!(
        (answer.status, answer.body["error"].as_str()),
        (401, Some("signature_mismatch"))
    );
    let dir = gateway.stop().await;
    assert_eq!(drain(&embedded_buffer(dir.path())).await.len(), 1);
}

/// HTTP clients open spare connections they may never send on. On SIGTERM such a connection has
/// nothing in flight, so it must not hold the stop for the whole header timeout (here an hour).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_sent_a_byte_does_not_hold_the_shutdown() {
    let dir = orders_dir();
    let gateway = crate::support::process::CasegateProcess::serve(
        dir.path(),
        &[
            (
                "CASEGATE_INGRESS__CLIENT_TIMEOUT_SECS".into(),
                "3600".into(),
            ),
            ("CASEGATE_INGRESS__KEEP_ALIVE_SECS".into(), "1".into()),
        ],
    )
    .await;
    let silent = tokio::net::TcpStream::connect(("127.0.0.1", gateway.port))
        .await
        .unwrap();
    // A request on another connection is answered: the silent one is accepted and open.
    let answered = crate::support::http_client()
        .get(gateway.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert!(answered.status().is_success());

    // Exits cleanly within 20 s (or the call panics with the output), long before the hour.
    let (_stdout, stderr) = gateway.terminate().await;
    assert!(!stderr.contains("panicked"), "{stderr}");
    drop(silent);
}
