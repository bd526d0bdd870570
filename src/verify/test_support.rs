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
