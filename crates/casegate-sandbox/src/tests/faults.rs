//! Injected faults over HTTP: outages, server errors, refused titles and added latency.

use std::time::{Duration, Instant};

use serde_json::json;

use super::{Q, app, assert_error, call, cases_path, get, post, sandbox, sandbox_with};
use crate::{Faults, SandboxConfig};

#[actix_web::test]
async fn an_open_outage_answers_503_until_switched_off() {
    let (_, sb) = sandbox();
    let app = app!(sb);
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
    let app = app!(sb);
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
    let app = app!(sb);
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
    let app = app!(sb);
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
    let app = app!(sb);
    sb.set_faults(Faults {
        latency_ms: 60,
        ..Faults::default()
    });
    let started = Instant::now();
    let answer = call!(&app, get(&cases_path("v2", Q)));
    assert_eq!(answer.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(60));
}
