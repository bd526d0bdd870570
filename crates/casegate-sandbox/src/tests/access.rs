//! Who may call (the bearer key) and how often (the sliding-window rate limit), over HTTP.

use std::time::Duration;

use actix_web::test;
use serde_json::json;

use super::{KEY, Q, app, assert_error, call, cases_path, get, post, sandbox, sandbox_with};
use crate::SandboxConfig;

#[actix_web::test]
async fn requests_without_the_configured_bearer_key_get_401_and_use_no_quota() {
    let (_, sb) = sandbox();
    let app = app!(sb);
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
    let app = app!(sb);
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
