//! Every fixed vector of [`crate::verify::vectors`], verified as received and as an attacker or a
//! misconfiguration would change it: for each scheme, in one table.

use super::super::vectors::{VECTORS, Vector};
use super::*;

fn received(vector: &Vector) -> InboundRequest {
    let mut request = request(vector.headers, vector.body);
    request.method = vector.method.to_string();
    request.url = vector.url.to_string();
    request
}

fn verifier_with(vector: &Vector, secrets: &[&str]) -> Verifier {
    build(&vector.block_with(secrets), &Env::default())
        .unwrap_or_else(|e| panic!("{}: {e}", vector.name))
}

#[test]
fn every_vector_is_accepted_as_received() {
    for vector in VECTORS {
        let verified =
            verifier_with(vector, &[vector.secret]).verify(received(vector), at(vector.signed_at));
        assert!(verified.is_ok(), "{}: {:?}", vector.name, verified.err());
    }
}

#[test]
fn a_tampered_body_is_rejected_for_every_vector() {
    for vector in VECTORS {
        let mut tampered = received(vector);
        tampered.body = bytes::Bytes::from_static(vector.tampered_body);
        assert_eq!(
            verifier_with(vector, &[vector.secret])
                .verify(tampered, at(vector.signed_at))
                .unwrap_err(),
            VerifyError::Mismatch,
            "{}",
            vector.name
        );
    }
}

#[test]
fn a_signature_made_with_another_secret_is_rejected_for_every_vector() {
    for vector in VECTORS {
        assert_eq!(
            verifier_with(vector, &[vector.other_secret])
                .verify(received(vector), at(vector.signed_at))
                .unwrap_err(),
            VerifyError::Mismatch,
            "{}",
            vector.name
        );
    }
}

#[test]
fn the_second_secret_is_accepted_during_rotation_for_every_vector() {
    for vector in VECTORS {
        let rotating = verifier_with(vector, &[vector.other_secret, vector.secret]);
        assert!(
            rotating
                .verify(received(vector), at(vector.signed_at))
                .is_ok(),
            "{}",
            vector.name
        );
    }
}

#[test]
fn stale_and_future_timestamps_are_rejected_for_every_timestamped_vector() {
    let mut timestamped = 0;
    for vector in VECTORS {
        let Some(tolerance) = vector.tolerance_secs else {
            continue;
        };
        timestamped += 1;
        let v = verifier_with(vector, &[vector.secret]);
        let t = vector.signed_at;
        assert_eq!(
            v.verify(received(vector), at(t + tolerance + 1))
                .unwrap_err(),
            VerifyError::StaleTimestamp,
            "{}",
            vector.name
        );
        assert!(
            v.verify(received(vector), at(t + tolerance)).is_ok(),
            "{}",
            vector.name
        );
        assert_eq!(
            v.verify(received(vector), at(t - tolerance - 1))
                .unwrap_err(),
            VerifyError::FutureTimestamp,
            "{}",
            vector.name
        );
    }
    assert_eq!(
        timestamped, 5,
        "slack, standard-webhooks, stripe, zendesk, hmac"
    );
}

#[test]
fn another_url_is_rejected_for_every_vector_that_signs_its_url() {
    for vector in VECTORS.iter().filter(|v| v.signs_url) {
        let mut moved = received(vector);
        moved.url = "https://elsewhere.example.com/webhooks/test".to_string();
        assert_eq!(
            verifier_with(vector, &[vector.secret])
                .verify(moved, at(vector.signed_at))
                .unwrap_err(),
            VerifyError::Mismatch,
            "{}",
            vector.name
        );
    }
}

#[test]
fn each_missing_header_is_reported_by_name_for_every_vector() {
    // HubSpot falls back from one signature version to another: its own tests cover that.
    for vector in VECTORS.iter().filter(|v| !v.name.starts_with("hubspot")) {
        for (name, _) in vector.headers {
            if name.eq_ignore_ascii_case("content-type") {
                continue;
            }
            let err = verifier_with(vector, &[vector.secret])
                .verify(without_header(received(vector), name), at(vector.signed_at))
                .unwrap_err();
            assert_eq!(
                err,
                VerifyError::MissingHeader(name.to_ascii_lowercase()),
                "{}",
                vector.name
            );
        }
    }
}
