//! A captured signature cannot be replayed: outside the tolerance it is stale, inside it the
//! delivery id makes it a duplicate.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use casegate::inbound::Headers;
use serde_json::json;

use crate::support::gateway::{GatewayOptions, QUEUE, TestGateway, drain, embedded_buffer, sign};

fn pinned_now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_764_000_000)
}

async fn gateway_at(now: SystemTime, mappings: &[(&str, &str)]) -> TestGateway {
    let mut options = GatewayOptions::embedded(mappings);
    options.now = Some(now);
    TestGateway::start(options).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stripe_signature_replayed_after_the_tolerance_is_refused_as_stale() {
    let mapping = format!(
        "verify: {{scheme: stripe, secrets: [whsec_replay_test]}}\nrules:\n  - {{name: all, queue: {QUEUE}, title: 'Event {{{{ $.id }}}}'}}\n"
    );
    let body = r#"{"id": "evt_1", "type": "invoice.paid"}"#;
    let signed_at = pinned_now();
    // The captured request: headers as the provider sent them at `signed_at`.
    let captured = sign(
        &mapping,
        "http://gateway/hooks/stripe",
        body,
        Headers::new(),
        signed_at,
    );

    // Replayed within the tolerance (299 s later) it still verifies...
    let inside = gateway_at(
        signed_at + Duration::from_secs(299),
        &[("stripe.yaml", &mapping)],
    )
    .await;
    let answer = inside.post("stripe", &captured, body).await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    inside.stop().await;

    // ...but not once the tolerance has passed.
    let later = signed_at + Duration::from_secs(301);
    let outside = gateway_at(later, &[("stripe.yaml", &mapping)]).await;
    let answer = outside.post("stripe", &captured, body).await;
    assert_eq!(
        (answer.status, answer.body["error"].as_str()),
        (401, Some("stale_timestamp")),
        "{}",
        answer.body
    );
    // The same event freshly signed at the gateway's time is accepted: the refusal is about
    // the replayed timestamp.
    let fresh = sign(
        &mapping,
        "http://gateway/hooks/stripe",
        body,
        Headers::new(),
        later,
    );
    assert_eq!(outside.post("stripe", &fresh, body).await.status, 202);
    let dir = outside.stop().await;
    assert_eq!(drain(&embedded_buffer(dir.path())).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standard_webhook_replayed_inside_the_tolerance_is_a_duplicate() {
    let mapping = format!(
        "verify: {{scheme: standard-webhooks, secrets: [whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw]}}\n\
         delivery_id: {{header: webhook-id}}\n\
         rules:\n  - {{name: all, queue: {QUEUE}, title: 'Event {{{{ $.data.id }}}}'}}\n"
    );
    let gateway = gateway_at(pinned_now(), &[("std.yaml", &mapping)]).await;
    let url = gateway.url("/hooks/std");
    let body = r#"{"type": "invoice.paid", "data": {"id": "inv_1"}}"#;
    let captured = sign(
        &mapping,
        &url,
        body,
        Headers::new(),
        pinned_now() - Duration::from_secs(60),
    );
    let id = captured.get("webhook-id").unwrap().to_string();

    let first = gateway.post("std", &captured, body).await;
    assert_eq!(first.status, 202, "{}", first.body);
    // The very same bytes again, still inside the tolerance: acknowledged, not cased again.
    let replay = gateway.post("std", &captured, body).await;
    assert_eq!(
        (replay.status, replay.body),
        (200, json!({"duplicate": true}))
    );
    // The sender's own retry re-signs with a fresh timestamp but keeps the id: a duplicate too.
    let retry = sign(
        &mapping,
        &url,
        body,
        [("webhook-id", id.as_str())].into_iter().collect(),
        pinned_now() - Duration::from_secs(5),
    );
    let retried = gateway.post("std", &retry, body).await;
    assert_eq!(
        (retried.status, retried.body),
        (200, json!({"duplicate": true}))
    );
    // A replayer cannot dodge the dedupe by changing the id: the id is signed.
    let forged: Headers = captured
        .iter()
        .map(|(name, value)| match name {
            "webhook-id" => (name, "msg_forged_id"),
            _ => (name, value),
        })
        .collect();
    let answer = gateway.post("std", &forged, body).await;
    assert_eq!(
        (answer.status, answer.body["error"].as_str()),
        (401, Some("signature_mismatch"))
    );
    let dir = gateway.stop().await;
    assert_eq!(drain(&embedded_buffer(dir.path())).await.len(), 1);
}
