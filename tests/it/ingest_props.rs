//! A property test of `POST /hooks/{source}` through the whole app, without a socket
//! (`actix_web::test::init_service(build_app(..))`): whatever the body, headers, content type and
//! source, the gateway answers (never panics), never with a 5xx, and every 4xx is the documented
//! JSON error shape with a code from README.md's table.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::test::{self, TestRequest};
use arc_swap::ArcSwap;
use casegate::buffer::{Buffer, EmbeddedBuffer};
use casegate::config::IngressConfig;
use casegate::env::Env;
use casegate::http::{AppState, build_app};
use casegate::ingest::{Ingestor, system_clock};
use casegate::mapping::{CompiledMapping, MappingSet};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::Value;

use crate::support::gateway::QUEUE;

/// Error codes README.md documents for `POST /hooks/{source}`.
const DOCUMENTED_CODES: &[&str] = &[
    "malformed_json",
    "invalid_utf8",
    "json_too_deep",
    "missing_form_payload",
    "missing_signature_header",
    "malformed_signature_header",
    "stale_timestamp",
    "future_timestamp",
    "signature_mismatch",
    "missing_credentials",
    "bad_credentials",
    "unknown_source",
    "request_timeout",
    "payload_too_large",
    "unsupported_media_type",
];

/// Small, so that some generated bodies are refused as too large.
const MAX_BODY_BYTES: usize = 1024;

/// One source per interesting path: unauthenticated with filters, mapping failures and a
/// delivery id; an HMAC scheme; a timestamped scheme; basic auth; a token.
fn mappings() -> Vec<(&'static str, String)> {
    vec![
        (
            "open",
            format!(
                "verify: {{scheme: none}}\n\
                 event_type: {{path: $.type}}\n\
                 delivery_id: {{header: x-delivery-id}}\n\
                 rules:\n\
                 \x20 - {{name: orders, when: {{event: order}}, queue: {QUEUE}, title: 'Order {{{{ $.id }}}}'}}\n\
                 \x20 - {{name: items, when: {{event: items}}, for_each: $.items, queue: {QUEUE}, title: 'Item {{{{ @.sku ?? \"?\" | upper | truncate(20) }}}}'}}\n\
                 \x20 - {{name: rest, queue: {QUEUE}, title: '{{{{ $.title }}}}', data: {{whole: $}}}}\n"
            ),
        ),
        (
            "shop",
            format!(
                "verify: {{scheme: shopify, secrets: [prop-secret]}}\nrules:\n  - {{name: all, queue: {QUEUE}, title: 'x'}}\n"
            ),
        ),
        (
            "std",
            format!(
                "verify: {{scheme: standard-webhooks, secrets: [whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw]}}\n\
                 delivery_id: {{header: webhook-id}}\nrules:\n  - {{name: all, queue: {QUEUE}, title: 'x'}}\n"
            ),
        ),
        (
            "basic",
            format!(
                "verify: {{scheme: basic, username: u, secrets: [p]}}\nrules:\n  - {{name: all, queue: {QUEUE}, title: 'x'}}\n"
            ),
        ),
        (
            "token",
            format!(
                "verify: {{scheme: token, header: x-token, secrets: [t]}}\nrules:\n  - {{name: all, queue: {QUEUE}, title: 'x'}}\n"
            ),
        ),
    ]
}

fn state(dir: &Path) -> AppState {
    let compiled = mappings().into_iter().map(|(source, yaml)| {
        CompiledMapping::compile(&dir.join(format!("{source}.yaml")), &yaml, &Env::default())
            .unwrap()
    });
    let set = MappingSet::from_mappings(compiled);
    let buffer = Buffer::Embedded(EmbeddedBuffer::open(&dir.join("buffer.redb")).unwrap());
    let defaults =
        casegate::config::Config::load(None, &Env::default(), &Default::default()).unwrap();
    AppState {
        ingestor: Ingestor::new(
            Arc::new(ArcSwap::from_pointee(set)),
            buffer,
            Duration::from_secs(3600),
            system_clock(),
        ),
        ingress: Arc::new(IngressConfig {
            max_body_bytes: MAX_BODY_BYTES,
            client_timeout: Duration::from_secs(5),
            ..defaults.ingress
        }),
        public_url: None,
        inflight_bodies: Arc::new(casegate::http::ingress::InflightBodies::new(256 << 20)),
        retry_after: Duration::from_secs(5),
        delivery: None,
        admin_token: None,
        admin_here: true,
        mapping_reloader: None,
    }
}

/// One generated request.
#[derive(Debug, Clone)]
struct Webhook {
    source: String,
    content_type: Option<Vec<u8>>,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

/// JSON values up to a few levels deep, with the keys the mappings read.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec(
                (
                    prop_oneof![
                        Just("type".to_string()),
                        Just("id".to_string()),
                        Just("items".to_string()),
                        Just("sku".to_string()),
                        Just("title".to_string()),
                        "\\PC{0,6}"
                    ],
                    inner
                ),
                0..6
            )
            .prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
        ]
    })
}

/// An event shaped like what the `open` mapping reads.
fn event() -> impl Strategy<Value = String> {
    (
        prop_oneof![Just("order"), Just("items"), Just("other")],
        json_value(),
        json_value(),
    )
        .prop_map(|(kind, id, items)| {
            serde_json::json!({"type": kind, "id": id, "items": items, "title": id}).to_string()
        })
}

/// Bodies: arbitrary bytes, JSON documents (some shaped like the mappings' events), forms
/// carrying JSON, and deep nesting.
fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..1500),
        json_value().prop_map(|v| v.to_string().into_bytes()),
        event().prop_map(String::into_bytes),
        event().prop_map(|json| {
            serde_urlencoded::to_string([("token", "x"), ("payload", json.as_str())])
                .unwrap()
                .into_bytes()
        }),
        "[a-z=&%0-9A-F]{0,64}".prop_map(String::into_bytes),
        (1usize..400)
            .prop_map(|depth| format!("{}{}", "[".repeat(depth), "]".repeat(depth)).into_bytes()),
    ]
}

/// Bytes that are valid in an HTTP header value (visible ASCII, space, tab, obs-text).
fn header_value() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            8 => 0x20u8..=0x7e,
            1 => Just(b'\t'),
            1 => 0x80u8..=0xff,
        ],
        0..60,
    )
}

fn header_name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "authorization",
            "x-shopify-hmac-sha256",
            "webhook-id",
            "webhook-timestamp",
            "webhook-signature",
            "svix-signature",
            "x-token",
            "x-delivery-id",
            "x-request-id",
            "content-length",
            "content-encoding",
            "expect",
        ])
        .prop_map(str::to_string),
        "[a-z][a-z0-9!#$%&'*+.^_`|~-]{0,24}",
    ]
}

fn webhook() -> impl Strategy<Value = Webhook> {
    let source = prop_oneof![
        4 => Just("open".to_string()),
        4 => prop::sample::select(vec!["shop", "std", "basic", "token"]).prop_map(str::to_string),
        1 => "[A-Za-z0-9_-]{1,16}",
    ];
    let content_type = prop_oneof![
        4 => Just(Some(b"application/json".to_vec())),
        1 => Just(Some(b"application/json; charset=utf-8".to_vec())),
        1 => Just(Some(b"application/cloudevents+json".to_vec())),
        2 => Just(Some(b"application/x-www-form-urlencoded".to_vec())),
        1 => Just(Some(b"text/plain".to_vec())),
        1 => Just(None),
        1 => header_value().prop_map(Some),
    ];
    (
        source,
        content_type,
        prop::collection::vec((header_name(), header_value()), 0..6),
        body(),
    )
        .prop_map(|(source, content_type, headers, body)| Webhook {
            source,
            content_type,
            headers,
            body,
        })
}

#[test]
fn any_request_gets_a_non_5xx_answer_and_every_4xx_is_a_documented_json_error() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let app = runtime.block_on(test::init_service(build_app(state(dir.path()))));
    let mut runner = TestRunner::new(Config {
        cases: 64,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&webhook(), |hook| {
            let mut request = TestRequest::post()
                .uri(&format!("/hooks/{}", hook.source))
                .set_payload(hook.body.clone());
            if let Some(content_type) = &hook.content_type {
                request = request.insert_header((
                    HeaderName::from_static("content-type"),
                    HeaderValue::from_bytes(content_type).unwrap(),
                ));
            }
            for (name, value) in &hook.headers {
                request = request.append_header((
                    HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    HeaderValue::from_bytes(value).unwrap(),
                ));
            }
            let (status, body) = runtime.block_on(async {
                let response = test::call_service(&app, request.to_request()).await;
                let status = response.status();
                (status, test::read_body(response).await)
            });
            prop_assert!(
                !status.is_server_error(),
                "{status}: {}",
                String::from_utf8_lossy(&body)
            );
            if status.is_client_error() {
                let json: Value = serde_json::from_slice(&body).map_err(|e| {
                    TestCaseError::fail(format!(
                        "{status} body is not JSON ({e}): {}",
                        String::from_utf8_lossy(&body)
                    ))
                })?;
                let code = json["error"].as_str().unwrap_or_default();
                prop_assert!(
                    DOCUMENTED_CODES.contains(&code),
                    "{status} with undocumented code {code:?}: {json}"
                );
                prop_assert!(json["message"].is_string(), "{json}");
            } else {
                prop_assert!(
                    matches!(status.as_u16(), 200 | 202),
                    "{status}: {}",
                    String::from_utf8_lossy(&body)
                );
            }
            Ok(())
        })
        .unwrap();
}
