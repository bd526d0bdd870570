//! Operating a gateway: health, readiness, metrics, the admin API and the dead-letter cycle of
//! fixing a mapping and replaying its failures.

use casegate::inbound::Headers;
use serde_json::Value;

use crate::support::gateway::{GatewayOptions, QUEUE, TestGateway};

const TOKEN: &str = "admin-token-for-tests-0123456789abcdef";

fn json() -> Headers {
    [("content-type", "application/json")].into_iter().collect()
}

/// A mapping whose title needs `$.order.number`.
fn strict_mapping() -> String {
    format!(
        "verify: {{scheme: none}}\nrules:\n  - {{name: orders, queue: {QUEUE}, title: 'Order {{{{ $.order.number }}}}'}}\n"
    )
}

/// The same rule, tolerant of a missing number.
fn fixed_mapping() -> String {
    format!(
        "verify: {{scheme: none}}\nrules:\n  - {{name: orders, queue: {QUEUE}, title: 'Order {{{{ $.id }}}}'}}\n"
    )
}

async fn admin(
    gateway: &TestGateway,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
) -> (u16, Value) {
    crate::support::call(method, &gateway.url(path), token).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics_describe_the_gateway() {
    let gateway =
        TestGateway::start(GatewayOptions::embedded(&[("src.yaml", &strict_mapping())])).await;
    assert_eq!(gateway.get("/healthz").await.status, 200);
    assert_eq!(gateway.get("/readyz").await.body["status"], "ready");
    assert_eq!(
        gateway
            .post("src", &json(), r#"{"order": {"number": 1}}"#)
            .await
            .status,
        202
    );
    assert_eq!(gateway.post("src", &json(), "{not json").await.status, 400);
    assert_eq!(gateway.post("nowhere", &json(), "{}").await.status, 404);
    let metrics = crate::support::http_client()
        .get(gateway.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for expected in [
        r#"casegate_webhooks_total{source="src",outcome="accepted",reason=""}"#,
        r#"casegate_webhooks_total{source="src",outcome="invalid",reason="malformed_json"}"#,
        r#"casegate_webhooks_total{source="unknown",outcome="invalid",reason="unknown_source"}"#,
        &format!(r#"casegate_cases_enqueued_total{{queue="{QUEUE}"}}"#),
        &format!(r#"casegate_buffer_depth{{queue="{QUEUE}"}}"#),
        &format!(r#"casegate_buffer_oldest_case_age_seconds{{queue="{QUEUE}"}}"#),
    ] {
        assert!(
            metrics.contains(expected),
            "missing {expected} in:\n{metrics}"
        );
    }
    assert!(
        !metrics.contains("nowhere"),
        "request paths never become label values"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_is_off_without_a_token_and_refuses_missing_or_wrong_tokens() {
    let off =
        TestGateway::start(GatewayOptions::embedded(&[("src.yaml", &strict_mapping())])).await;
    let (status, _) = admin(&off, reqwest::Method::GET, "/admin/status", Some(TOKEN)).await;
    assert_eq!(status, 404);

    let on = TestGateway::start(
        GatewayOptions::embedded(&[("src.yaml", &strict_mapping())])
            .setting("CASEGATE_ADMIN__TOKEN", TOKEN),
    )
    .await;
    let (status, body) = admin(&on, reqwest::Method::GET, "/admin/status", None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("unauthorized"))
    );
    let (status, body) = admin(
        &on,
        reqwest::Method::GET,
        "/admin/dlq",
        Some("admin-token-for-test"),
    )
    .await;
    assert_eq!(status, 401);
    assert!(!body.to_string().contains(TOKEN));
    let (status, body) = admin(&on, reqwest::Method::GET, "/admin/status", Some(TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sources"][0]["source"], "src");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixing_a_mapping_and_replaying_its_dead_letters_recovers_the_events() {
    let gateway = TestGateway::start(
        GatewayOptions::embedded(&[("src.yaml", &strict_mapping())])
            .setting("CASEGATE_ADMIN__TOKEN", TOKEN),
    )
    .await;
    for id in ["a", "b"] {
        let answer = gateway
            .post("src", &json(), format!(r#"{{"id": "{id}"}}"#))
            .await;
        assert_eq!(answer.status, 202);
        assert_eq!(answer.body["accepted"], 0);
    }
    let (_, listed) = admin(&gateway, reqwest::Method::GET, "/admin/dlq", Some(TOKEN)).await;
    let letters = listed["dead_letters"].as_array().unwrap().clone();
    assert_eq!(letters.len(), 2);
    assert_eq!(letters[0]["kind"], "mapping_failure");
    assert!(
        letters[0]["reason"]
            .as_str()
            .unwrap()
            .contains("$.order.number")
    );
    let first = letters[0]["id"].as_str().unwrap().to_string();

    let (status, shown) = admin(
        &gateway,
        reqwest::Method::GET,
        &format!("/admin/dlq/{first}"),
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(shown["detail"]["payload"], r#"{"id": "a"}"#);

    // Replaying before the fix changes nothing.
    let (_, still) = admin(
        &gateway,
        reqwest::Method::POST,
        &format!("/admin/dlq/{first}/replay"),
        Some(TOKEN),
    )
    .await;
    assert_eq!(still["result"], "still_failing");

    std::fs::write(
        gateway.dir.path().join("mappings/src.yaml"),
        fixed_mapping(),
    )
    .unwrap();
    let (status, reloaded) = admin(
        &gateway,
        reqwest::Method::POST,
        "/admin/reload",
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, 200, "{reloaded}");
    let (_, replayed) = admin(
        &gateway,
        reqwest::Method::POST,
        "/admin/dlq/replay",
        Some(TOKEN),
    )
    .await;
    let outcomes = replayed["replayed"].as_array().unwrap();
    assert_eq!(outcomes.len(), 2);
    assert!(
        outcomes.iter().all(|o| o["result"] == "enqueued"),
        "{replayed}"
    );
    let (_, listed) = admin(&gateway, reqwest::Method::GET, "/admin/dlq", Some(TOKEN)).await;
    assert!(listed["dead_letters"].as_array().unwrap().is_empty());
    let (_, status) = admin(&gateway, reqwest::Method::GET, "/admin/status", Some(TOKEN)).await;
    assert_eq!(status["queues"][0]["depth"], 2, "{status}");

    let dir = gateway.stop().await;
    let cases =
        crate::support::gateway::drain(&crate::support::gateway::embedded_buffer(dir.path())).await;
    let mut titles: Vec<_> = cases.iter().map(|c| c.record.title.clone()).collect();
    titles.sort();
    assert_eq!(titles, ["Order a", "Order b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_reload_keeps_the_previous_mappings_serving() {
    let gateway = TestGateway::start(
        GatewayOptions::embedded(&[("src.yaml", &strict_mapping())])
            .setting("CASEGATE_ADMIN__TOKEN", TOKEN),
    )
    .await;
    std::fs::write(
        gateway.dir.path().join("mappings/src.yaml"),
        "verify: {scheme: nope}\n",
    )
    .unwrap();
    let (status, body) = admin(
        &gateway,
        reqwest::Method::POST,
        "/admin/reload",
        Some(TOKEN),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (422, Some("mapping_errors"))
    );
    assert!(body["message"].as_str().unwrap().contains("src.yaml"));
    assert_eq!(
        gateway
            .post("src", &json(), r#"{"order": {"number": 5}}"#)
            .await
            .status,
        202
    );
}
