//! The sandbox through HTTP, with `actix_web::test::init_service` (no socket) and a manual clock,
//! plus one test of `serve` on a real port.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::body::MessageBody;
use actix_web::dev::ServiceResponse;
use actix_web::http::StatusCode;
use actix_web::http::header::HeaderMap;
use actix_web::{App, test};
use serde_json::{Value, json};

use super::*;

const Q: &str = "3c90c3cc-0d44-4b50-8888-8dd25736052a";
const KEY: &str = "dv_test";

fn sandbox_with(config: SandboxConfig) -> (ManualClock, Sandbox) {
    let clock = ManualClock::new(1_705_312_800_000);
    let sandbox = Sandbox::with_clock(
        SandboxConfig {
            api_key: KEY.to_owned(),
            ..config
        },
        Arc::new(clock.clone()),
    )
    .unwrap();
    (clock, sandbox)
}

fn sandbox() -> (ManualClock, Sandbox) {
    sandbox_with(SandboxConfig::default())
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn message(&self) -> &str {
        self.body["message"].as_str().unwrap_or_default()
    }
}

/// Calls the service and reads the answer (a macro because the request type is not nameable
/// without depending on actix-http).
macro_rules! call {
    ($app:expr, $req:expr) => {
        answer(test::call_service($app, $req.to_request()).await).await
    };
}

async fn answer<B: MessageBody>(resp: ServiceResponse<B>) -> Answer {
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = test::read_body(resp).await;
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!(
                "non-JSON answer {status}: {e}: {}",
                String::from_utf8_lossy(&bytes)
            )
        })
    };
    Answer {
        status,
        headers,
        body,
    }
}

fn post(path: &str, body: &Value) -> test::TestRequest {
    test::TestRequest::post()
        .uri(path)
        .insert_header(("authorization", format!("Bearer {KEY}")))
        .insert_header(("content-type", "application/json"))
        .set_payload(serde_json::to_vec(body).unwrap())
}

fn get(path: &str) -> test::TestRequest {
    test::TestRequest::get()
        .uri(path)
        .insert_header(("authorization", format!("Bearer {KEY}")))
}

fn cases_path(version: &str, queue: &str) -> String {
    format!("/{version}/queues/{queue}/cases")
}

fn assert_error(answer: &Answer, status: u16, code: &str) {
    assert_eq!(answer.status.as_u16(), status, "{}", answer.body);
    assert_eq!(answer.body["error"], code, "{}", answer.body);
    assert!(answer.body["message"].is_string(), "{}", answer.body);
    assert_eq!(answer.body.as_object().unwrap().len(), 2, "{}", answer.body);
}

#[actix_web::test]
async fn a_single_case_is_created_with_201_and_can_be_listed() {
    let (_, sb) = sandbox();
    let app = test::init_service(App::new().configure(configure(sb.clone()))).await;
    let body = json!({"case": {"title": "Order #1", "data": "{\"id\":1}",
        "labels": [{"key": "source", "value": "shop", "color_hue": 120}]}});
    let created = call!(&app, post(&cases_path("v2", Q), &body));

    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let added = &created.body["added_cases"];
    assert_eq!(added.as_array().unwrap().len(), 1);
    assert_eq!(added[0]["status"], "pending");
    assert_eq!(added[0]["queue_id"], Q);
    assert_eq!(added[0]["created_at"], "2024-01-15T10:00:00.000Z");
    assert_eq!(added[0]["labels"][0]["color_hue"], 120);
    let id = added[0]["id"].as_str().unwrap();
    assert!(contract::is_queue_id(id), "{id} is a UUID");
    assert_eq!(&id[14..15], "4", "version 4");

    let listed = call!(&app, get(&cases_path("v2", Q)));
    assert_eq!(listed.status, StatusCode::OK);
    assert_eq!(listed.body["total"], 1);
    assert_eq!(listed.body["limit"], 20);
    assert_eq!(listed.body["offset"], 0);
    assert_eq!(listed.body["cases"][0], added[0]);
    assert_eq!(sb.cases(Q)[0].title, "Order #1");
}

#[actix_web::test]
async fn v1_and_v2_serve_the_same_queues_and_queue_ids_ignore_case() {
    let (_, sb) = sandbox();
    let app = test::init_service(App::new().configure(configure(sb.clone()))).await;
    let one = json!({"case": {"title": "a"}});
    assert_eq!(call!(&app, post(&cases_path("v1", Q), &one)).status, 201);
    let upper = Q.to_ascii_uppercase();
    assert_eq!(
        call!(&app, post(&cases_path("v2", &upper), &one)).status,
        201
    );
    assert_eq!(sb.cases(Q).len(), 2);
    assert_eq!(sb.cases(&upper).len(), 2);
    let listed = call!(&app, get(&cases_path("v1", Q)));
    assert_eq!(listed.body["total"], 2);
    assert_eq!(sb.stats().queue_case_counts[Q], 2);
}

#[actix_web::test]
async fn a_batch_is_accepted_whole_and_labels_keep_their_ids_within_a_queue() {
    let (_, sb) = sandbox();
    let app = test::init_service(App::new().configure(configure(sb.clone()))).await;
    let label = json!({"key": "k", "value": "v"});
    let body = json!({"cases": [
        {"title": "a", "labels": [label, label]},
        {"title": "b", "labels": [label]},
    ]});
    let created = call!(&app, post(&cases_path("v2", Q), &body));
    assert_eq!(created.status, 201);
    let added = created.body["added_cases"].as_array().unwrap();
    assert_eq!(added.len(), 2);
    assert_eq!(added[0]["title"], "a");
    assert_eq!(
        added[0]["labels"].as_array().unwrap().len(),
        1,
        "duplicates merged"
    );
    assert_eq!(added[0]["labels"][0]["id"], added[1]["labels"][0]["id"]);
    assert!(added[0]["labels"][0]["color_hue"].as_u64().unwrap() <= 360);
    let stats = sb.stats();
    assert_eq!((stats.accepted_requests, stats.accepted_cases), (1, 2));
    assert_eq!(
        stats.accepted_log,
        [AcceptedBatch {
            at_ms: 1_705_312_800_000,
            queue_id: Q.to_owned(),
            cases: 2
        }]
    );
}

#[actix_web::test]
async fn requests_without_the_configured_bearer_key_get_401_and_use_no_quota() {
    let (_, sb) = sandbox();
    let app = test::init_service(App::new().configure(configure(sb.clone()))).await;
    let body = json!({"case": {"title": "a"}});
    let without = test::TestRequest::post()
        .uri(&cases_path("v2", Q))
        .set_json(&body);
    let cases = [
        ("missing", without),
        (
            "wrong key",
            post(&cases_path("v2", Q), &body).insert_header(("authorization", "Bearer dv_nope")),
        ),
        (
            "wrong scheme",
            post(&cases_path("v2", Q), &body)
                .insert_header(("authorization", format!("Basic {KEY}"))),
        ),
        (
            "no token",
            post(&cases_path("v2", Q), &body).insert_header(("authorization", "Bearer")),
        ),
    ];
    for (name, req) in cases {
        let answer = call!(&app, req);
        assert_error(&answer, 401, "unauthorized");
        assert_eq!(
            answer.header("x-ratelimit-remaining"),
            Some("300"),
            "{name}"
        );
        assert_eq!(answer.header("x-ratelimit-limit"), Some("300"), "{name}");
    }
    assert!(sb.cases(Q).is_empty());
    let ok = call!(&app, post(&cases_path("v2", Q), &body));
    assert_eq!(ok.status, 201);
    assert_eq!(ok.header("x-ratelimit-remaining"), Some("299"));
    assert_eq!(ok.header("x-ratelimit-reset"), Some("60"));
}

#[actix_web::test]
async fn the_rate_limit_answers_429_with_retry_after_and_slides() {
    let (clock, sb) = sandbox_with(SandboxConfig {
        rate: 2,
        window: Duration::from_secs(10),
        ..SandboxConfig::default()
    });
    let app = test::init_service(App::new().configure(configure(sb.clone()))).await;
    let body = json!({"case": {"title": "a"}});

    let first = call!(&app, post(&cases_path("v2", Q), &body));
    assert_eq!(first.header("x-ratelimit-remaining"), Some("1"));
    clock.advance(Duration::from_millis(2_500));
    let second = call!(&app, get(&cases_path("v2", Q)));
    assert_eq!(second.status, 200, "lists count too");
    assert_eq!(second.header("x-ratelimit-remaining"), Some("0"));
    assert_eq!(
        second.header("x-ratelimit-reset"),
        Some("8"),
        "7.5 s rounds up"
    );

    for _ in 0..5 {
        let refused = call!(&app, post(&cases_path("v2", Q), &body));
        assert_error(&refused, 429, "rate_limit_exceeded");
        assert_eq!(refused.header("retry-after"), Some("8"));
        assert_eq!(refused.header("x-ratelimit-reset"), Some("8"));
        assert_eq!(refused.header("x-ratelimit-remaining"), Some("0"));
        assert_eq!(refused.header("x-ratelimit-limit"), Some("2"));
    }

    clock.advance(Duration::from_millis(7_500)); // t = 10 s: the first request has left
    let again = call!(&app, post(&cases_path("v2", Q), &body));
    assert_eq!(again.status, 201, "429s consumed no quota");
    assert_eq!(again.header("x-ratelimit-reset"), Some("3"));
    assert_eq!(call!(&app, post(&cases_path("v2", Q), &body)).status, 429);

    let stats = sb.stats();
    assert_eq!(stats.rate_limited, 6);
    assert_eq!(stats.status_counts[&429], 6);
    assert_eq!(stats.accepted_requests, 2);
    assert_eq!(stats.total_requests, 9);
    assert_eq!(stats.rate_limit.peak_in_window, 2);
    let times: Vec<u64> = stats.accepted_log.iter().map(|b| b.at_ms).collect();
    assert_eq!(times, [1_705_312_800_000, 1_705_312_810_000]);
}

#[actix_web::test]
async fn malformed_queue_ids_get_400_and_unknown_routes_404() {
    let (_, sb) = sandbox();
    let app = test::init_service(App::new().configure(configure(sb.clone()))).await;
    let body = json!({"case": {"title": "a"}});
    let bad = call!(&app, post(&cases_path("v2", "orders"), &body));
    assert_error(&bad, 400, "invalid_request");
    assert!(bad.message().contains("queue_id"));
    assert!(bad.header("x-ratelimit-remaining").is_some());
    assert_error(
        &call!(&app, get(&cases_path("v1", "123"))),
        400,
        "invalid_request",
    );
    assert_error(&call!(&app, get("/v2/queues")), 404, "not_found");
    assert_error(&call!(&app, get("/_sandbox/nothing")), 404, "not_found");
    let delete = test::TestRequest::delete().uri(&cases_path("v2", Q));
    assert_error(&call!(&app, delete), 405, "method_not_allowed");
}

#[actix_web::test]
async fn an_invalid_case_refuses_the_whole_request_naming_its_index() {
    let (_, sb) = sandbox();
    let app = test::init_service(App::new().configure(configure(sb.clone()))).await;
    let body =
        json!({"cases": [{"title": "ok"}, {"title": "ok"}, {"title": "x", "data": {"a": 1}}]});
    let answer = call!(&app, post(&cases_path("v2", Q), &body));
    assert_error(&answer, 400, "invalid_request");
    assert!(
        answer
            .message()
            .starts_with("cases[2].data must be a string"),
        "{}",
        answer.message()
    );
    assert!(sb.cases(Q).is_empty());

    let both = json!({"case": {"title": "a"}, "cases": [{"title": "b"}]});
    assert_error(
        &call!(&app, post(&cases_path("v2", Q), &both)),
        400,
        "invalid_request",
    );
    assert_eq!(sb.stats().status_counts[&400], 2);
}

#[actix_web::test]
async fn bodies_over_the_cap_get_413_and_non_json_content_types_400() {
    let (_, sb) = sandbox_with(SandboxConfig {
        max_body_bytes: 64,
        ..SandboxConfig::default()
    });
    let app = test::init_service(App::new().configure(configure(sb.clone()))).await;
    let big = json!({"case": {"title": "x".repeat(100)}});
    assert_error(
        &call!(&app, post(&cases_path("v2", Q), &big)),
        413,
        "payload_too_large",
    );

    let small = json!({"case": {"title": "a"}});
    let as_text = post(&cases_path("v2", Q), &small).insert_header(("content-type", "text/plain"));
    let answer = call!(&app, as_text);
    assert_error(&answer, 400, "invalid_request");
    assert!(answer.message().contains("Content-Type"));
    assert!(sb.cases(Q).is_empty());
}

#[actix_web::test]
async fn the_list_pages_and_sorts_by_creation() {
    let (clock, sb) = sandbox();
    let app = test::init_service(App::new().configure(configure(sb.clone()))).await;
    for title in ["first", "second", "third"] {
        let body = json!({"case": {"title": title, "data": format!("data of {title}")}});
        assert_eq!(call!(&app, post(&cases_path("v2", Q), &body)).status, 201);
        clock.advance(Duration::from_secs(1));
    }
    let titles = |answer: &Answer| -> Vec<String> {
        answer.body["cases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["title"].as_str().unwrap().to_owned())
            .collect()
    };
    let path = cases_path("v2", Q);
    let newest_first = call!(&app, get(&path));
    assert_eq!(titles(&newest_first), ["third", "second", "first"]);
    let asc = call!(
        &app,
        get(&format!("{path}?sort_order=asc&limit=2&offset=1"))
    );
    assert_eq!(titles(&asc), ["second", "third"]);
    assert_eq!(
        (asc.body["total"].as_u64(), asc.body["limit"].as_u64()),
        (Some(3), Some(2))
    );
    let searched = call!(&app, get(&format!("{path}?search=DATA%20OF%20sec")));
    assert_eq!(titles(&searched), ["second"]);
    let failed = call!(&app, get(&format!("{path}?status=failed")));
    assert_eq!(failed.body["total"], 0);
    let pending = call!(&app, get(&format!("{path}?status=pending,failed")));
    assert_eq!(pending.body["total"], 3);
    let other_queue = call!(
        &app,
        get(&cases_path("v2", "00000000-0000-0000-0000-000000000000"))
    );
    assert_eq!(other_queue.body["total"], 0);
    for bad in [
        "limit=0",
        "limit=101",
        "offset=-1",
        "sort_order=up",
        "status=done",
    ] {
        let answer = call!(&app, get(&format!("{path}?{bad}")));
        assert_error(&answer, 400, "invalid_request");
    }
}

#[actix_web::test]
async fn an_open_outage_answers_503_until_switched_off() {
    let (_, sb) = sandbox();
    let app = test::init_service(App::new().configure(configure(sb.clone()))).await;
    sb.set_faults(Faults {
        outage: true,
        ..Faults::default()
    });
    let body = json!({"case": {"title": "a"}});
    let down = call!(&app, post(&cases_path("v2", Q), &body));
    assert_error(&down, 503, "service_unavailable");
    assert_eq!(down.header("retry-after"), None);
    assert_eq!(
        down.header("x-ratelimit-remaining"),
        Some("300"),
        "outages use no quota"
    );
    assert!(sb.stats().outage_active);
    sb.set_faults(Faults::default());
    assert_eq!(call!(&app, post(&cases_path("v2", Q), &body)).status, 201);
}

#[actix_web::test]
async fn a_bounded_outage_reports_retry_after_and_ends_on_time() {
    let (clock, sb) = sandbox_with(SandboxConfig {
        faults: Faults {
            outage_for_secs: Some(30),
            ..Faults::default()
        },
        ..SandboxConfig::default()
    });
    let app = test::init_service(App::new().configure(configure(sb.clone()))).await;
    let body = json!({"case": {"title": "a"}});
    clock.advance(Duration::from_millis(10_500));
    let down = call!(&app, post(&cases_path("v2", Q), &body));
    assert_error(&down, 503, "service_unavailable");
    assert_eq!(down.header("retry-after"), Some("20"));
    clock.advance(Duration::from_millis(19_500));
    assert_eq!(call!(&app, post(&cases_path("v2", Q), &body)).status, 201);

    sb.reset();
    assert_error(
        &call!(&app, post(&cases_path("v2", Q), &body)),
        503,
        "service_unavailable",
    );
}

#[actix_web::test]
async fn injected_server_errors_store_nothing_and_still_count_against_the_limit() {
    let (_, sb) = sandbox();
    let app = test::init_service(App::new().configure(configure(sb.clone()))).await;
    sb.set_faults(Faults {
        error_ratio: 1.0,
        ..Faults::default()
    });
    let body = json!({"case": {"title": "a"}});
    for i in 0..10u32 {
        let answer = call!(&app, post(&cases_path("v2", Q), &body));
        assert!(
            [500, 502, 503].contains(&answer.status.as_u16()),
            "{}",
            answer.status
        );
        assert!(answer.body["error"].is_string() && answer.body["message"].is_string());
        assert_eq!(
            answer.header("x-ratelimit-remaining"),
            Some((299 - i).to_string().as_str())
        );
    }
    assert!(sb.cases(Q).is_empty());
    assert_eq!(sb.stats().accepted_requests, 0);
}

#[actix_web::test]
async fn titles_matching_the_reject_pattern_are_refused_naming_the_case() {
    let (_, sb) = sandbox();
    let app = test::init_service(App::new().configure(configure(sb.clone()))).await;
    sb.set_faults(Faults {
        reject_title_pattern: Some("(?i)poison".to_owned()),
        ..Faults::default()
    });
    let body =
        json!({"cases": [{"title": "fine"}, {"title": "POISON pill"}, {"title": "poison 2"}]});
    let answer = call!(&app, post(&cases_path("v2", Q), &body));
    assert_error(&answer, 400, "invalid_request");
    assert!(
        answer.message().starts_with("cases[1].title"),
        "{}",
        answer.message()
    );
    let one = json!({"case": {"title": "poison"}});
    let single = call!(&app, post(&cases_path("v2", Q), &one));
    assert!(
        single.message().starts_with("case.title"),
        "{}",
        single.message()
    );
    let clean = json!({"cases": [{"title": "fine"}, {"title": "also fine"}]});
    assert_eq!(call!(&app, post(&cases_path("v2", Q), &clean)).status, 201);
}

#[actix_web::test]
async fn added_latency_delays_the_answer() {
    let (_, sb) = sandbox();
    let app = test::init_service(App::new().configure(configure(sb.clone()))).await;
    sb.set_faults(Faults {
        latency_ms: 60,
        ..Faults::default()
    });
    let started = Instant::now();
    let answer = call!(&app, get(&cases_path("v2", Q)));
    assert_eq!(answer.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(60));
}

#[actix_web::test]
async fn the_control_routes_set_faults_report_stats_and_reset() {
    let (_, sb) = sandbox();
    let app = test::init_service(App::new().configure(configure(sb.clone()))).await;
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
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let sb = Sandbox::new(SandboxConfig::default());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = actix_web::rt::spawn(serve(sb.clone(), listener, async {
        let _ = stopped.await;
    }));

    let body = r#"{"case":{"title":"over the wire"}}"#;
    let request = format!(
        "POST /v2/queues/{Q}/cases HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer dv_sandbox\r\n\
         content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    assert!(answer.contains("x-ratelimit-remaining: 299"), "{answer}");
    assert_eq!(sb.cases(Q)[0].title, "over the wire");

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("server stops")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn serve_runs_under_a_plain_tokio_runtime_and_answers_413_readably() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let sb = Sandbox::new(SandboxConfig::default());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(sb.clone(), listener, async {
        let _ = stopped.await;
    }));

    let body = format!(
        r#"{{"case":{{"title":"{}"}}}}"#,
        "x".repeat(2 * 1024 * 1024)
    );
    let head = format!(
        "POST /v1/queues/{Q}/cases HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer dv_sandbox\r\n\
         content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        answer.contains(r#""error":"payload_too_large""#),
        "{answer}"
    );
    assert!(sb.cases(Q).is_empty());

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("server stops")
        .unwrap()
        .unwrap();
}
