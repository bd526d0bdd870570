//! Every signature scheme over HTTP: rotated secrets, tampering, wrong secrets, missing
//! signatures and timestamps outside the window.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use casegate::inbound::Headers;

use super::mapping_with;
use crate::support::gateway::{GatewayOptions, TestGateway, drain, embedded_buffer, sign};

/// Pinned "now" for timestamped schemes: published examples and stale-timestamp tests need it.
fn pinned_now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_764_000_000)
}

const STANDARD_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const STANDARD_OTHER: &str = "whsec_dGhpcyBpcyBhIGRpZmZlcmVudCBzZWNyZXQ=";

/// Every scheme: its `verify` block around `{secrets}`, two valid secrets, and whether it signs
/// a timestamp.
struct Scheme {
    name: &'static str,
    block: &'static str,
    secret: &'static str,
    other: &'static str,
    timestamped: bool,
    /// The 401 code a wrong secret gives.
    wrong_code: &'static str,
    /// The 401 code an unsigned request gives.
    missing_code: &'static str,
}

const SCHEMES: &[Scheme] = &[
    Scheme {
        name: "shopify",
        block: "{scheme: shopify, secrets: SECRETS}",
        secret: "shpss_one",
        other: "shpss_two",
        timestamped: false,
        wrong_code: "signature_mismatch",
        missing_code: "missing_signature_header",
    },
    Scheme {
        name: "stripe",
        block: "{scheme: stripe, secrets: SECRETS}",
        secret: "whsec_stripe_one",
        other: "whsec_stripe_two",
        timestamped: true,
        wrong_code: "signature_mismatch",
        missing_code: "missing_signature_header",
    },
    Scheme {
        name: "github",
        block: "{scheme: github, secrets: SECRETS}",
        secret: "gh-one",
        other: "gh-two",
        timestamped: false,
        wrong_code: "signature_mismatch",
        missing_code: "missing_signature_header",
    },
    Scheme {
        name: "hubspot",
        block: "{scheme: hubspot, versions: [v3], secrets: SECRETS}",
        secret: "hs-one",
        other: "hs-two",
        timestamped: true,
        wrong_code: "signature_mismatch",
        missing_code: "missing_signature_header",
    },
    Scheme {
        name: "standard",
        block: "{scheme: standard-webhooks, secrets: SECRETS}",
        secret: STANDARD_SECRET,
        other: STANDARD_OTHER,
        timestamped: true,
        wrong_code: "signature_mismatch",
        missing_code: "missing_signature_header",
    },
    Scheme {
        name: "slack",
        block: "{scheme: slack, secrets: SECRETS}",
        secret: "slack-one",
        other: "slack-two",
        timestamped: true,
        wrong_code: "signature_mismatch",
        missing_code: "missing_signature_header",
    },
    Scheme {
        name: "zendesk",
        block: "{scheme: zendesk, secrets: SECRETS}",
        secret: "dGhpc2xvb2tzYmFzZTY0",
        other: "zd-two",
        timestamped: true,
        wrong_code: "signature_mismatch",
        missing_code: "missing_signature_header",
    },
    Scheme {
        name: "woo",
        block: "{scheme: woocommerce, secrets: SECRETS}",
        secret: "wc&amp;one",
        other: "wc-two",
        timestamped: false,
        wrong_code: "signature_mismatch",
        missing_code: "missing_signature_header",
    },
    Scheme {
        name: "generic",
        block: "{scheme: hmac, header: X-Signature, algorithm: sha512, encoding: base64, prefix: 'v1=', signed_content: '{timestamp}.{method}.{url}.{body}', timestamp_header: X-Timestamp, secrets: SECRETS}",
        secret: "gen-one",
        other: "gen-two",
        timestamped: true,
        wrong_code: "signature_mismatch",
        missing_code: "missing_signature_header",
    },
    Scheme {
        name: "basic",
        block: "{scheme: basic, username: hooks, secrets: SECRETS}",
        secret: "pw-one",
        other: "pw-two",
        timestamped: false,
        wrong_code: "bad_credentials",
        missing_code: "missing_credentials",
    },
    Scheme {
        name: "token",
        block: "{scheme: token, header: X-Webhook-Token, secrets: SECRETS}",
        secret: "tok-one",
        other: "tok-two",
        timestamped: false,
        wrong_code: "bad_credentials",
        missing_code: "missing_credentials",
    },
];

fn scheme_mapping(scheme: &Scheme, secrets: &[&str]) -> String {
    let list = format!(
        "[{}]",
        secrets
            .iter()
            .map(|s| format!("'{s}'"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    mapping_with(&scheme.block.replace("SECRETS", &list), "")
}

async fn gateway_for_all_schemes(now: SystemTime) -> TestGateway {
    let mappings: Vec<(String, String)> = SCHEMES
        .iter()
        .map(|s| {
            (
                format!("{}.yaml", s.name),
                scheme_mapping(s, &[s.other, s.secret]),
            )
        })
        .collect();
    let mut options = GatewayOptions::embedded(&[]);
    options.mappings = mappings;
    options.now = Some(now);
    TestGateway::start(options).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scheme_accepts_a_correctly_signed_webhook_under_a_rotated_secret() {
    let gateway = gateway_for_all_schemes(pinned_now()).await;
    for scheme in SCHEMES {
        let signer = scheme_mapping(scheme, &[scheme.secret]);
        let answer = gateway
            .post_signed(scheme.name, &signer, r#"{"id": "evt_1"}"#, pinned_now())
            .await;
        assert_eq!(answer.status, 202, "{}: {}", scheme.name, answer.body);
        assert_eq!(answer.body["accepted"], 1, "{}", scheme.name);
        assert_eq!(answer.body["case_ids"].as_array().unwrap().len(), 1);
    }
    let dir = gateway.stop().await;
    let cases = drain(&embedded_buffer(dir.path())).await;
    assert_eq!(cases.len(), SCHEMES.len());
    assert!(cases.iter().all(|c| c.record.title == "Event evt_1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_bodies_wrong_secrets_and_missing_signatures_are_refused_with_specific_codes() {
    let gateway = gateway_for_all_schemes(pinned_now()).await;
    for scheme in SCHEMES {
        let url = gateway.url(&format!("/hooks/{}", scheme.name));
        let signer = scheme_mapping(scheme, &[scheme.secret]);
        let headers = sign(
            &signer,
            &url,
            r#"{"id": "evt_1"}"#,
            Headers::new(),
            pinned_now(),
        );
        let tampered = gateway
            .post(scheme.name, &headers, r#"{"id": "evt_2"}"#)
            .await;
        let expected_tampered = if scheme.wrong_code == "bad_credentials" {
            202
        } else {
            401
        };
        assert_eq!(
            tampered.status, expected_tampered,
            "{} tampered: {}",
            scheme.name, tampered.body
        );
        if expected_tampered == 401 {
            assert_eq!(
                tampered.body["error"], "signature_mismatch",
                "{}",
                scheme.name
            );
        }

        let wrong = scheme_mapping(scheme, &["a-secret-nobody-configured"]);
        let wrong = if scheme.name == "standard" {
            scheme_mapping(scheme, &["whsec_bm9ib2R5IGNvbmZpZ3VyZWQgdGhpcw=="])
        } else {
            wrong
        };
        let answer = gateway
            .post_signed(scheme.name, &wrong, r#"{"id": "evt_3"}"#, pinned_now())
            .await;
        assert_eq!(answer.status, 401, "{} wrong secret", scheme.name);
        assert_eq!(
            answer.body["error"], scheme.wrong_code,
            "{}: {}",
            scheme.name, answer.body
        );

        let unsigned: Headers = [("content-type", "application/json")].into_iter().collect();
        let answer = gateway
            .post(scheme.name, &unsigned, r#"{"id": "evt_4"}"#)
            .await;
        assert_eq!(answer.status, 401, "{} unsigned", scheme.name);
        assert_eq!(
            answer.body["error"], scheme.missing_code,
            "{}: {}",
            scheme.name, answer.body
        );
        for secret in [scheme.secret, scheme.other] {
            assert!(
                !answer.body.to_string().contains(secret),
                "{} leaked a secret",
                scheme.name
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_and_future_timestamps_are_refused() {
    let gateway = gateway_for_all_schemes(pinned_now()).await;
    for scheme in SCHEMES.iter().filter(|s| s.timestamped) {
        let signer = scheme_mapping(scheme, &[scheme.secret]);
        let old = pinned_now() - Duration::from_secs(3600);
        let answer = gateway
            .post_signed(scheme.name, &signer, r#"{"id": 1}"#, old)
            .await;
        assert_eq!(
            (answer.status, answer.body["error"].as_str()),
            (401, Some("stale_timestamp")),
            "{}",
            scheme.name
        );
        let future = pinned_now() + Duration::from_secs(3600);
        let answer = gateway
            .post_signed(scheme.name, &signer, r#"{"id": 1}"#, future)
            .await;
        assert_eq!(
            (answer.status, answer.body["error"].as_str()),
            (401, Some("future_timestamp")),
            "{}",
            scheme.name
        );
        let inside = pinned_now() - Duration::from_secs(200);
        let answer = gateway
            .post_signed(scheme.name, &signer, r#"{"id": 1}"#, inside)
            .await;
        assert_eq!(
            answer.status, 202,
            "{} inside the tolerance: {}",
            scheme.name, answer.body
        );
    }
}
