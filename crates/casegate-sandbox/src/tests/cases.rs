//! Creating and listing cases over HTTP: the body contract, queue ids, body sizes, routes and pages.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::test;
use serde_json::json;

use super::{Q, Reply, app, assert_error, call, cases_path, get, post, sandbox, sandbox_with};
use crate::contract;
use crate::{AcceptedBatch, SandboxConfig};

#[actix_web::test]
async fn a_single_case_is_created_with_201_and_can_be_listed() {
    let (_, sb) = sandbox();
    let app = app!(sb);
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
    let app = app!(sb);
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
    let app = app!(sb);
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
async fn an_invalid_case_refuses_the_whole_request_naming_its_index() {
    let (_, sb) = sandbox();
    let app = app!(sb);
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
async fn malformed_queue_ids_get_400_and_unknown_routes_404() {
    let (_, sb) = sandbox();
    let app = app!(sb);
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
async fn bodies_over_the_cap_get_413_and_non_json_content_types_400() {
    let (_, sb) = sandbox_with(SandboxConfig {
        max_body_bytes: 64,
        ..SandboxConfig::default()
    });
    let app = app!(sb);
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
    let app = app!(sb);
    for title in ["first", "second", "third"] {
        let body = json!({"case": {"title": title, "data": format!("data of {title}")}});
        assert_eq!(call!(&app, post(&cases_path("v2", Q), &body)).status, 201);
        clock.advance(Duration::from_secs(1));
    }
    let titles = |answer: &Reply| -> Vec<String> {
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
