//! Hostile input over real HTTP: signature headers with thousands of entries, webhooks forged
//! with a public development default secret, captured bodies replayed with a fresh delivery id,
//! mapping files that would hang the JSONPath parser, and bodies large enough to be verified off
//! the HTTP worker.

use std::time::{Duration, Instant, SystemTime};

use casegate::inbound::Headers;
use serde_json::json;

use crate::support::gateway::{Backend, GatewayOptions, QUEUE, TestGateway, sign};
use crate::support::redis_server::RedisServer;

/// 40 characters: long enough for any minimum the admin API asks of a token.
const ADMIN_TOKEN: &str = "hostile-admin-token-0123456789abcdefghij";

fn rule() -> String {
    format!("rules:\n  - {{name: all, queue: {QUEUE}, title: 'Order {{{{ $.id }}}}'}}\n")
}

fn stripe_mapping() -> String {
    format!(
        "verify: {{scheme: stripe, secrets: [whsec_hostile_a, whsec_hostile_b]}}\n{}",
        rule()
    )
}

fn with(headers: &Headers, name: &str, value: &str) -> Headers {
    let mut out: Headers = headers
        .iter()
        .filter(|(n, _)| !n.eq_ignore_ascii_case(name))
        .collect();
    out.insert(name, value.to_string());
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signature_header_with_thousands_of_entries_is_refused_as_malformed() {
    let mapping = stripe_mapping();
    let svix =
        "verify: {scheme: standard-webhooks, secrets: [whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw]}\n"
            .to_string()
            + &rule();
    let gateway = TestGateway::start(GatewayOptions::embedded(&[
        ("stripe.yaml", &mapping),
        ("svix.yaml", &svix),
    ]))
    .await;
    let now = SystemTime::now();
    let body = json!({"id": 1, "pad": "x".repeat(1024 * 1024)}).to_string();
    let signed = sign(
        &mapping,
        &gateway.url("/hooks/stripe"),
        &body,
        Headers::new(),
        now,
    );
    let header = signed.get("stripe-signature").unwrap().to_string();
    let (t, v1) = header.split_once(",v1=").unwrap();

    // 5,000 empty candidates over a 1 MiB body: refused before anything is hashed.
    let hostile = with(
        &signed,
        "stripe-signature",
        &format!("{t},{}", vec!["v1="; 5000].join(",")),
    );
    let started = Instant::now();
    let answer = gateway.post("stripe", &hostile, body.clone()).await;
    let hostile_took = started.elapsed();
    assert_eq!(answer.status, 401, "{}", answer.body);
    assert_eq!(answer.body["error"], "malformed_signature_header");
    assert!(
        answer.body["message"]
            .as_str()
            .unwrap()
            .contains("more than 8")
    );

    // The same for Standard Webhooks' space-separated list.
    let svix_signed = sign(
        &svix,
        &gateway.url("/hooks/svix"),
        &body,
        Headers::new(),
        now,
    );
    let entries = vec!["v1,AAAA"; 5000].join(" ");
    let answer = gateway
        .post(
            "svix",
            &with(&svix_signed, "webhook-signature", &entries),
            body.clone(),
        )
        .await;
    assert_eq!(answer.status, 401, "{}", answer.body);
    assert_eq!(answer.body["error"], "malformed_signature_header");

    // Eight candidates (seven wrong ones, then the right one) are within the bound.
    let wrong = "ab".repeat(32);
    let eight = format!("{t},{},v1={v1}", vec![format!("v1={wrong}"); 7].join(","));
    let answer = gateway
        .post(
            "stripe",
            &with(&signed, "stripe-signature", &eight),
            body.clone(),
        )
        .await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    eprintln!("5,000-entry header over 1 MiB answered in {hostile_took:?}");
}

fn default_secret_mapping() -> String {
    format!(
        "verify: {{scheme: stripe, secrets: ['${{HOSTILE_STRIPE_SECRET:-whsec_public_default}}']}}\n{}",
        rule()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_forged_with_a_development_default_secret_is_refused_outside_development_mode() {
    let mapping = default_secret_mapping();
    let open = format!("verify: {{scheme: none}}\n{}", rule());
    let gateway = TestGateway::start(
        GatewayOptions::embedded(&[("stripe.yaml", &mapping), ("open.yaml", &open)])
            .setting("CASEGATE_ADMIN__TOKEN", ADMIN_TOKEN),
    )
    .await;
    // Forged with the default from the repository.
    let body = json!({"id": 7}).to_string();
    let answer = gateway
        .post_signed("stripe", &mapping, &body, SystemTime::now())
        .await;
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert_eq!(answer.body["error"], "source_not_configured");
    let message = answer.body["message"].as_str().unwrap();
    assert!(message.contains("HOSTILE_STRIPE_SECRET"), "{message}");
    assert!(!message.contains("whsec_public_default"), "{message}");
    assert!(answer.headers.get("retry-after").is_some());
    // Sources without a default are unaffected.
    assert_eq!(
        gateway
            .post("open", &Headers::new(), body.clone())
            .await
            .status,
        415
    );

    let metrics = gateway.get("/metrics").await.body;
    let metrics = metrics.as_str().unwrap();
    assert!(
        metrics.contains("casegate_source_configured{source=\"stripe\"} 0"),
        "{metrics}"
    );
    assert!(metrics.contains("casegate_source_configured{source=\"open\"} 1"));

    let status = crate::support::http_client()
        .get(gateway.url("/admin/status"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    let source = status["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["source"] == "stripe")
        .unwrap();
    assert_eq!(source["configured"], false, "{status}");
    assert_eq!(source["unset_variables"], json!(["HOSTILE_STRIPE_SECRET"]));
    let rendered = casegate::status::render(&serde_json::from_value(status.clone()).unwrap());
    assert!(rendered.contains("HOSTILE_STRIPE_SECRET"), "{rendered}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn development_defaults_serve_only_with_the_explicit_opt_in() {
    let mapping = default_secret_mapping();
    let gateway = TestGateway::start(
        GatewayOptions::embedded(&[("stripe.yaml", &mapping)])
            .setting("CASEGATE_INGRESS__ALLOW_DEFAULT_SECRETS", "true"),
    )
    .await;
    let answer = gateway
        .post_signed(
            "stripe",
            &mapping,
            &json!({"id": 8}).to_string(),
            SystemTime::now(),
        )
        .await;
    assert_eq!(answer.status, 202, "{}", answer.body);
}

fn shopify_mapping() -> String {
    format!(
        "verify: {{scheme: shopify, secrets: [shpss_hostile]}}\ndelivery_id: {{header: X-Shopify-Event-Id}}\n{}",
        rule()
    )
}

async fn a_replayed_body_with_a_fresh_id_is_a_duplicate_on(options: GatewayOptions) {
    let mapping = shopify_mapping();
    let gateway = TestGateway::start(options).await;
    let url = gateway.url("/hooks/shop");
    let body = json!({"id": 1001, "total": "10.00"}).to_string();
    let first: Headers = [("x-shopify-event-id", "evt-1")].into_iter().collect();
    let headers = sign(&mapping, &url, &body, first, SystemTime::now());
    let answer = gateway.post("shop", &headers, body.clone()).await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    // The captured request, replayed with a new (unsigned) delivery id.
    let replay = with(&headers, "x-shopify-event-id", "evt-2-fresh");
    let answer = gateway.post("shop", &replay, body.clone()).await;
    assert_eq!(
        (answer.status, &answer.body),
        (200, &json!({"duplicate": true}))
    );
    // And without any delivery id at all.
    let bare = with(&headers, "x-shopify-event-id", "");
    let answer = gateway.post("shop", &bare, body.clone()).await;
    assert_eq!(
        (answer.status, &answer.body),
        (200, &json!({"duplicate": true}))
    );
    // A different body is a different event.
    let other = json!({"id": 1002}).to_string();
    let long_id = "i".repeat(4096);
    let headers = sign(
        &mapping,
        &url,
        &other,
        [("x-shopify-event-id", long_id.as_str())]
            .into_iter()
            .collect(),
        SystemTime::now(),
    );
    let answer = gateway.post("shop", &headers, other.clone()).await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    // A kilobytes-long id is stored bounded, and still recognised.
    let third = json!({"id": 1003}).to_string();
    let headers = sign(
        &mapping,
        &url,
        &third,
        [("x-shopify-event-id", long_id.as_str())]
            .into_iter()
            .collect(),
        SystemTime::now(),
    );
    let answer = gateway.post("shop", &headers, third).await;
    assert_eq!(
        (answer.status, &answer.body),
        (200, &json!({"duplicate": true}))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_captured_body_replayed_with_a_fresh_delivery_id_is_a_duplicate_embedded() {
    let mapping = shopify_mapping();
    a_replayed_body_with_a_fresh_id_is_a_duplicate_on(GatewayOptions::embedded(&[(
        "shop.yaml",
        &mapping,
    )]))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_captured_body_replayed_with_a_fresh_delivery_id_is_a_duplicate_on_redis() {
    let redis = RedisServer::start().await;
    let mapping = shopify_mapping();
    let mut options = GatewayOptions::embedded(&[("shop.yaml", &mapping)]);
    options.backend = Backend::Redis(redis.url());
    a_replayed_body_with_a_fresh_id_is_a_duplicate_on(options).await;
    // The body's mark is a hash of the verified MAC, never the signature itself: a store
    // reader must not get what would let the body be sent again, signed.
    let body = json!({"id": 1001, "total": "10.00"}).to_string();
    let signature = {
        use hmac::{KeyInit, Mac};
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"shpss_hostile").unwrap();
        mac.update(body.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    };
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*seen*")
        .query_async(&mut redis.connection().await)
        .await
        .unwrap();
    assert!(keys.iter().any(|k| k.contains(":mac:")), "{keys:?}");
    assert!(!keys.iter().any(|k| k.contains(&signature)), "{keys:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_sent_again_under_a_token_with_a_fresh_id_is_a_duplicate() {
    // A token signs nothing: the body's fingerprint is its own SHA-256, not a MAC.
    let mapping = format!(
        "verify: {{scheme: token, header: X-Token, secrets: [tok-hostile]}}\n\
         delivery_id: {{header: X-Delivery}}\n{}",
        rule()
    );
    let gateway = TestGateway::start(GatewayOptions::embedded(&[("tok.yaml", &mapping)])).await;
    let body = json!({"id": 2001}).to_string();
    let headers: Headers = [
        ("content-type", "application/json"),
        ("x-token", "tok-hostile"),
        ("x-delivery", "d-1"),
    ]
    .into_iter()
    .collect();
    let first = gateway.post("tok", &headers, body.clone()).await;
    assert_eq!(first.status, 202, "{}", first.body);
    let again = gateway
        .post("tok", &with(&headers, "x-delivery", "d-2"), body.clone())
        .await;
    assert_eq!(
        (again.status, &again.body),
        (200, &json!({"duplicate": true}))
    );
    let other = gateway
        .post(
            "tok",
            &with(&headers, "x-delivery", "d-3"),
            json!({"id": 2002}).to_string(),
        )
        .await;
    assert_eq!(other.status, 202, "{}", other.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timestamped_schemes_accept_the_same_body_signed_again() {
    // Stripe signs its timestamp: the same body re-signed later is a new delivery, not a replay.
    let mapping = stripe_mapping();
    let gateway = TestGateway::start(GatewayOptions::embedded(&[("stripe.yaml", &mapping)])).await;
    let body = json!({"id": 9}).to_string();
    let now = SystemTime::now();
    let first = gateway.post_signed("stripe", &mapping, &body, now).await;
    let again = gateway
        .post_signed("stripe", &mapping, &body, now + Duration::from_secs(1))
        .await;
    assert_eq!((first.status, again.status), (202, 202), "{}", again.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_of_a_mapping_with_deeply_nested_filters_fails_fast_with_a_clear_error() {
    let open = format!("verify: {{scheme: none}}\n{}", rule());
    let gateway = TestGateway::start(
        GatewayOptions::embedded(&[("open.yaml", &open)])
            .setting("CASEGATE_ADMIN__TOKEN", ADMIN_TOKEN),
    )
    .await;
    // 32 nested filters: hours for the parser without the bound.
    let path = format!("${}.x{}", "[?@".repeat(32), "]".repeat(32));
    let hostile = format!(
        "verify: {{scheme: none}}\nrules:\n  - {{name: all, queue: {QUEUE}, title: 'x', when: {{filter: {{path: '{path}', exists: true}}}}}}\n"
    );
    std::fs::write(gateway.dir.path().join("mappings/hostile.yaml"), hostile).unwrap();
    let answer = crate::support::http_client()
        .post(gateway.url("/admin/reload"))
        .bearer_auth(ADMIN_TOKEN)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap();
    let status = answer.status().as_u16();
    let text = answer.text().await.unwrap();
    assert_ne!(status, 200, "{text}");
    assert!(text.contains("filters"), "{text}");
    // The previous set keeps serving.
    let answer = gateway
        .post(
            "open",
            &[("content-type", "application/json")].into_iter().collect(),
            json!({"id": 1}).to_string(),
        )
        .await;
    assert_eq!(answer.status, 202, "{}", answer.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_above_the_offload_threshold_are_verified_like_any_other() {
    let mapping = stripe_mapping();
    let gateway = TestGateway::start(
        GatewayOptions::embedded(&[("stripe.yaml", &mapping)])
            .setting("CASEGATE_INGRESS__OFFLOAD_VERIFY_BYTES", "1024"),
    )
    .await;
    let now = SystemTime::now();
    let body = json!({"id": 5, "pad": "y".repeat(256 * 1024)}).to_string();
    let answer = gateway.post_signed("stripe", &mapping, &body, now).await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    let headers = sign(
        &mapping,
        &gateway.url("/hooks/stripe"),
        &body,
        Headers::new(),
        now,
    );
    let tampered = body.replace("\"id\":5", "\"id\":6");
    let answer = gateway.post("stripe", &headers, tampered).await;
    assert_eq!(answer.status, 401, "{}", answer.body);
    assert_eq!(answer.body["error"], "signature_mismatch");
}
