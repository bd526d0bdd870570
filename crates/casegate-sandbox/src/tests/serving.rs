//! The control routes, mounting into a host app, and `serve_until` on a real port.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{App, test};
use futures_util::future::BoxFuture;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

use super::{Q, app, assert_error, call, cases_path, get, post, sandbox};
use crate::{Sandbox, SandboxConfig, SandboxStats, configure, serve_until};

#[actix_web::test]
async fn the_control_routes_set_faults_report_stats_and_reset() {
    let (_, sb) = sandbox();
    let app = app!(sb);
    let put = |body: Value| {
        test::TestRequest::put()
            .uri("/_sandbox/faults")
            .set_json(body)
    };
    let set = call!(&app, put(json!({"outage": true, "latency_ms": 0})));
    assert_eq!(set.status, 200);
    assert_eq!(set.body["outage"], true);
    assert!(sb.faults().outage);
    assert_error(
        &call!(&app, put(json!({"reject_title_pattern": "("}))),
        400,
        "invalid_request",
    );
    assert_error(
        &call!(&app, put(json!({"error_ratio": 2.0}))),
        400,
        "invalid_request",
    );
    assert_error(
        &call!(&app, put(json!({"outage": "yes"}))),
        400,
        "invalid_request",
    );
    assert!(sb.faults().outage, "a refused PUT changes nothing");
    let read = call!(&app, test::TestRequest::get().uri("/_sandbox/faults"));
    assert_eq!(read.body["outage"], true);

    assert_eq!(call!(&app, put(json!({}))).status, 200);
    let body = json!({"case": {"title": "a"}});
    assert_eq!(call!(&app, post(&cases_path("v1", Q), &body)).status, 201);

    let stats = call!(&app, test::TestRequest::get().uri("/_sandbox/stats"));
    assert_eq!(stats.status, 200);
    assert_eq!(stats.body["status_counts"]["201"], 1);
    let parsed: SandboxStats = serde_json::from_value(stats.body.clone()).unwrap();
    assert_eq!(parsed, sb.stats());
    assert_eq!(parsed.total_requests, 1, "control routes are not counted");

    let reset = call!(&app, test::TestRequest::post().uri("/_sandbox/reset"));
    assert_eq!(reset.status, StatusCode::NO_CONTENT);
    let after = sb.stats();
    assert_eq!((after.total_requests, after.accepted_cases), (0, 0));
    assert!(after.accepted_log.is_empty() && after.status_counts.is_empty());
    assert!(sb.cases(Q).is_empty());
}

#[actix_web::test]
async fn mounted_into_another_app_it_leaves_the_host_routes_alone() {
    let (_, sb) = sandbox();
    let app = test::init_service(
        App::new()
            .route("/healthz", actix_web::web::get().to(|| async { "ok" }))
            .configure(configure(sb)),
    )
    .await;
    let resp =
        test::call_service(&app, test::TestRequest::get().uri("/healthz").to_request()).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(call!(&app, get(&cases_path("v2", Q))).status, 200);
}

#[actix_web::test]
async fn serve_answers_on_a_real_port_and_stops_on_shutdown() {
    let body = r#"{"case":{"title":"over the wire"}}"#;
    let (sb, answer) = post_over_tcp(|server| actix_web::rt::spawn(server), "v2", body).await;
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    assert!(answer.contains("x-ratelimit-remaining: 299"), "{answer}");
    assert_eq!(sb.cases(Q)[0].title, "over the wire");
}

#[tokio::test]
async fn serve_runs_under_a_plain_tokio_runtime_and_answers_413_readably() {
    let body = format!(
        r#"{{"case":{{"title":"{}"}}}}"#,
        "x".repeat(2 * 1024 * 1024)
    );
    let (sb, answer) = post_over_tcp(tokio::spawn, "v1", &body).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        answer.contains(r#""error":"payload_too_large""#),
        "{answer}"
    );
    assert!(sb.cases(Q).is_empty());
}

type Server = BoxFuture<'static, std::io::Result<()>>;

/// Serves a default sandbox on a loopback port in a task started by `spawn`, POSTs `body` to
/// its `version` cases route over a raw connection (`connection: close`) and reads the whole
/// answer; then stops the server, which must stop within 5 s. Returns the sandbox and the answer.
async fn post_over_tcp(
    spawn: impl FnOnce(Server) -> JoinHandle<std::io::Result<()>>,
    version: &str,
    body: &str,
) -> (Sandbox, String) {
    let sb = Sandbox::new(SandboxConfig::default());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = spawn(Box::pin(serve_until(sb.clone(), listener, async {
        let _ = stopped.await;
    })));

    let head = format!(
        "POST /{version}/queues/{Q}/cases HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer dv_sandbox\r\n\
         content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("server stops")
        .unwrap()
        .unwrap();
    (sb, answer)
}
