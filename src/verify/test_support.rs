//! Shared fixtures for the per-scheme tests.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::{Verifier, VerifySpec};
use crate::env::Env;
use crate::inbound::{Headers, InboundRequest};

/// A POST with the given headers and body to a fixed public URL.
pub fn request(headers: &[(&str, &str)], body: &[u8]) -> InboundRequest {
    InboundRequest {
        method: "POST".to_string(),
        url: "https://hooks.example.com/webhooks/test".to_string(),
        headers: headers.iter().copied().collect::<Headers>(),
        body: Bytes::copy_from_slice(body),
    }
}

pub fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// Parses a `verify:` block from YAML (as a mapping file would) and builds it with an empty
/// environment.
pub fn verifier(yaml: &str) -> Verifier {
    let spec: VerifySpec = serde_yaml_ng::from_str(yaml).expect("test spec parses");
    spec.build(&Env::default()).expect("test spec builds")
}

/// The same request with one header replaced.
pub fn with_header(mut request: InboundRequest, name: &str, value: &str) -> InboundRequest {
    super::set_headers(&mut request, vec![(name, value.to_string())]);
    request
}

/// The same request without the named header.
pub fn without_header(mut request: InboundRequest, name: &str) -> InboundRequest {
    request.headers = request
        .headers
        .iter()
        .filter(|(n, _)| !n.eq_ignore_ascii_case(name))
        .collect();
    request
}

/// The same request with a different body (headers untouched).
pub fn with_body(mut request: InboundRequest, body: &[u8]) -> InboundRequest {
    request.body = Bytes::copy_from_slice(body);
    request
}

/// GitHub's published example ("Validating webhook deliveries"): `Hello, World!` signed with
/// the secret `It's a Secret to Everybody`.
pub fn github_published_example() -> InboundRequest {
    request(
        &[(
            "X-Hub-Signature-256",
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
        )],
        b"Hello, World!",
    )
}

/// Asserts that `signed` fails as `malformed_signature_header` under `spec` at `now` with each
/// of the given headers replaced in turn.
pub fn assert_each_malformed(
    spec: &str,
    signed: fn() -> InboundRequest,
    now: SystemTime,
    replacements: &[(&str, &str)],
) {
    for (name, value) in replacements {
        let err = verifier(spec)
            .verify(with_header(signed(), name, value), now)
            .unwrap_err();
        assert_eq!(err.code(), "malformed_signature_header", "{name}: {value}");
    }
}
