//! The providers' own signatures over real HTTP: every fixed vector the unit tests verify (a
//! published example where the provider publishes one, else its recipe computed independently)
//! is posted as received to a gateway whose clock reads the vector's signing time. Every other
//! integration test signs with casegate's own signer; these cannot pass by the signer and the
//! verifier agreeing on the same mistake.

use std::time::{Duration, UNIX_EPOCH};

use casegate::inbound::Headers;

use crate::support::gateway::{GatewayOptions, QUEUE, TestGateway};

// The unit tests read the fields this test has no use for.
#[allow(dead_code)]
#[path = "../../src/verify/vectors.rs"]
mod data;

use data::{VECTORS, Vector};

/// What the gateway answers once the signature is accepted: a case for an event, and for the
/// published examples whose bodies are not events (GitHub's `Hello, World!`, a Slack slash
/// command without a `payload` field) the 400 of a body it cannot map, which only a verified
/// request reaches (a failed signature answers 401 first).
fn accepted(vector: &Vector) -> (u16, Option<&'static str>) {
    match vector.name {
        "github, published" => (400, Some("malformed_json")),
        "slack, published" => (400, Some("missing_form_payload")),
        _ => (202, None),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fixed_vector_is_accepted_over_http_as_the_provider_sent_it() {
    // The URL a sender signed is `https://hooks.example.com/webhooks/test`, which no gateway
    // path reproduces; those vectors stay at the unit level.
    let vectors: Vec<&Vector> = VECTORS.iter().filter(|v| !v.signs_url).collect();
    assert_eq!(vectors.len(), 8);
    for vector in vectors {
        let mapping = format!(
            "verify: {}\nrules:\n  - {{name: all, queue: {QUEUE}, title: 'Vector'}}\n",
            vector.block_with(&[vector.secret])
        );
        // Only the answer matters here: nothing is delivered.
        let mut options = GatewayOptions::embedded(&[("vector.yaml", &mapping)])
            .setting("CASEGATE_DELIVERY__ENABLED", "false");
        options.now = Some(UNIX_EPOCH + Duration::from_secs(vector.signed_at));
        let gateway = TestGateway::start(options).await;
        let mut headers: Headers = vector.headers.iter().copied().collect();
        if headers.get("content-type").is_none() {
            headers.insert("content-type", "application/json");
        }

        let answer = gateway.post("vector", &headers, vector.body).await;
        let (status, code) = accepted(vector);
        assert_eq!(answer.status, status, "{}: {}", vector.name, answer.body);
        assert_eq!(
            answer.body["error"].as_str(),
            code,
            "{}: {}",
            vector.name,
            answer.body
        );

        let tampered = gateway.post("vector", &headers, vector.tampered_body).await;
        assert_eq!(
            (tampered.status, tampered.body["error"].as_str()),
            (401, Some("signature_mismatch")),
            "{}: {}",
            vector.name,
            tampered.body
        );
        // Dropped, not stopped: its buffer is not read, and a graceful stop waits for the
        // client's idle keep-alive connection.
        drop(gateway);
    }
}
