//! HubSpot, three signature versions:
//!
//! - **v3** (default): `X-HubSpot-Signature-v3` is the base64 HMAC-SHA256, keyed with the app's
//!   client secret, of `method + uri + body + timestamp`, where the timestamp is the
//!   `X-HubSpot-Request-Timestamp` header in MILLISECONDS since the epoch, and the URI is the full
//!   public URL with these percent-escapes decoded (and no others, per HubSpot's docs):
//!   `%3A : %2F / %3F ? %40 @ %21 ! %24 $ %27 ' %28 ( %29 ) %2A * %2C , %3B ;`.
//! - **v2**: `X-HubSpot-Signature` is the hex SHA-256 (a plain hash, not an HMAC) of
//!   `secret + method + uri + body`, URI exactly as requested. No timestamp, so no replay window.
//! - **v1**: the same header, hex SHA-256 of `secret + body` (sent with CRM object webhooks).
//!
//! v1 and v2 share `X-HubSpot-Signature`; `X-HubSpot-Signature-Version` says which one it is.
//! HubSpot sends v3 alongside the legacy one. The configured `versions` are tried in order; the
//! first whose headers are present decides, so `[v3, v1]` prefers v3 and never falls back to v1
//! when a v3 signature is present but wrong.

use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::timestamp::{self, default_tolerance_secs};
use super::{BuildContext, InboundRequest, Key, VerifyError, VerifySpecError};

const V3_SIGNATURE_HEADER: &str = "X-HubSpot-Signature-v3";
const TIMESTAMP_HEADER: &str = "X-HubSpot-Request-Timestamp";
const LEGACY_SIGNATURE_HEADER: &str = "X-HubSpot-Signature";
const VERSION_HEADER: &str = "X-HubSpot-Signature-Version";
pub(super) const CREDENTIAL_HEADERS: &[&str] = &[V3_SIGNATURE_HEADER, LEGACY_SIGNATURE_HEADER];

/// A HubSpot signature version, written `v1`, `v2` or `v3`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum HubspotVersion {
    V1,
    V2,
    V3,
}

impl HubspotVersion {
    fn as_str(self) -> &'static str {
        match self {
            HubspotVersion::V1 => "v1",
            HubspotVersion::V2 => "v2",
            HubspotVersion::V3 => "v3",
        }
    }
}

fn default_versions() -> Vec<HubspotVersion> {
    vec![HubspotVersion::V3]
}

/// `verify: { scheme: hubspot, secrets: [...], versions: [v3, v2], tolerance_secs: 300 }`
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HubspotSpec {
    /// App client secrets.
    pub secrets: Vec<String>,
    /// Accepted signature versions in order of preference; default `[v3]`. v1 and v2 carry no
    /// timestamp, so accepting them gives up replay protection.
    #[serde(default = "default_versions")]
    pub versions: Vec<HubspotVersion>,
    /// How far the v3 request timestamp may be from now, in either direction.
    #[serde(default = "default_tolerance_secs")]
    pub tolerance_secs: u64,
}

impl HubspotSpec {
    pub(super) fn build(&self, ctx: &mut BuildContext) -> Result<Hubspot, VerifySpecError> {
        if self.versions.is_empty() {
            return Err(VerifySpecError::Invalid {
                field: "verify.versions".to_string(),
                reason: "list at least one of v1, v2, v3".to_string(),
            });
        }
        Ok(Hubspot {
            keys: ctx.keys(&self.secrets)?,
            versions: self.versions.clone(),
            tolerance_secs: self.tolerance_secs,
        })
    }
}

#[derive(Debug)]
pub(super) struct Hubspot {
    keys: Vec<Key>,
    versions: Vec<HubspotVersion>,
    tolerance_secs: u64,
}

impl Hubspot {
    /// True when v1 or v2 (which sign no timestamp) is accepted.
    pub(super) fn accepts_unstamped(&self) -> bool {
        self.versions.iter().any(|v| *v != HubspotVersion::V3)
    }

    pub(super) fn verify(
        &self,
        request: &InboundRequest,
        now: SystemTime,
    ) -> Result<(), VerifyError> {
        let v3 = request.headers.get(V3_SIGNATURE_HEADER);
        let legacy = request.headers.get(LEGACY_SIGNATURE_HEADER);
        let legacy_version = request.headers.get(VERSION_HEADER).map(str::trim);
        for &version in &self.versions {
            match version {
                HubspotVersion::V3 => {
                    if let Some(signature) = v3 {
                        return self.verify_v3(request, signature, now);
                    }
                }
                HubspotVersion::V1 | HubspotVersion::V2 => {
                    if let Some(signature) = legacy
                        && legacy_version.is_some_and(|v| v.eq_ignore_ascii_case(version.as_str()))
                    {
                        return self.verify_legacy(version, request, signature);
                    }
                }
            }
        }
        if legacy.is_some() && self.versions.iter().any(|v| *v != HubspotVersion::V3) {
            return Err(VerifyError::bad_format(
                VERSION_HEADER,
                "missing, or a version this source does not accept",
            ));
        }
        Err(VerifyError::MissingHeader(match self.versions[0] {
            HubspotVersion::V3 => V3_SIGNATURE_HEADER.to_ascii_lowercase(),
            _ => LEGACY_SIGNATURE_HEADER.to_ascii_lowercase(),
        }))
    }

    fn verify_v3(
        &self,
        request: &InboundRequest,
        signature: &str,
        now: SystemTime,
    ) -> Result<(), VerifyError> {
        let ts = super::required_header(request, TIMESTAMP_HEADER)?;
        let tag = STANDARD
            .decode(signature.trim())
            .map_err(|_| VerifyError::bad_format(V3_SIGNATURE_HEADER, "not base64"))?;
        let signed_at = timestamp::parse_unix_millis(TIMESTAMP_HEADER, ts)?;
        timestamp::check_window(signed_at, now, self.tolerance_secs)?;
        let uri = decode_uri(&request.url);
        let parts: [&[u8]; 4] = [
            request.method.as_bytes(),
            uri.as_bytes(),
            &request.body,
            ts.as_bytes(),
        ];
        super::check_hmac_sha256(&self.keys, &parts, &[&tag])
    }

    fn verify_legacy(
        &self,
        version: HubspotVersion,
        request: &InboundRequest,
        signature: &str,
    ) -> Result<(), VerifyError> {
        let tag = hex::decode(signature.trim())
            .map_err(|_| VerifyError::bad_format(LEGACY_SIGNATURE_HEADER, "not hex"))?;
        let tag_len = <Sha256 as Digest>::output_size();
        if super::any_tag_matches(&self.keys, &[&tag], tag_len, |key| {
            legacy_hash(version, key, request)
        }) {
            Ok(())
        } else {
            Err(VerifyError::Mismatch)
        }
    }

    /// Signs every configured version, as HubSpot sends v3 alongside a legacy signature; the
    /// legacy header holds the first of v1/v2 listed.
    pub(super) fn sign(&self, request: &mut InboundRequest, now: SystemTime) {
        let mut headers = Vec::new();
        if self.versions.contains(&HubspotVersion::V3) {
            let ts = timestamp::since_epoch(now).as_millis().to_string();
            let uri = decode_uri(&request.url);
            let tag = super::hmac_sha256_bytes(
                &self.keys[0],
                &[
                    request.method.as_bytes(),
                    uri.as_bytes(),
                    &request.body,
                    ts.as_bytes(),
                ],
            );
            headers.push((TIMESTAMP_HEADER, ts));
            headers.push((V3_SIGNATURE_HEADER, STANDARD.encode(tag)));
        }
        if let Some(&legacy) = self.versions.iter().find(|v| **v != HubspotVersion::V3) {
            headers.push((VERSION_HEADER, legacy.as_str().to_string()));
            headers.push((
                LEGACY_SIGNATURE_HEADER,
                hex::encode(legacy_hash(legacy, &self.keys[0], request)),
            ));
        }
        super::set_headers(request, headers);
    }
}

/// SHA-256 of `secret + body` (v1) or `secret + method + uri + body` (v2).
fn legacy_hash(version: HubspotVersion, key: &Key, request: &InboundRequest) -> Vec<u8> {
    let mut hash = Sha256::new();
    hash.update(key.bytes());
    if version == HubspotVersion::V2 {
        hash.update(request.method.as_bytes());
        hash.update(request.url.as_bytes());
    }
    hash.update(&request.body);
    hash.finalize().to_vec()
}

/// Decodes exactly the percent-escapes HubSpot's v3 recipe lists (either hex case); every other
/// escape, such as `%20` or `%26`, stays as sent. A general URL decoder would decode those too
/// and break the signature, hence this small scan.
fn decode_uri(uri: &str) -> String {
    const DECODED: &[u8] = b":/?@!$'()*,;";
    let bytes = uri.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(pair) = bytes.get(i + 1..i + 3)
            && let Ok(hex_pair) = std::str::from_utf8(pair)
            && let Ok(byte) = u8::from_str_radix(hex_pair, 16)
            && DECODED.contains(&byte)
        {
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    // Only ASCII bytes replaced ASCII escapes, so the result is still UTF-8.
    String::from_utf8(out).unwrap_or_else(|_| uri.to_string())
}

#[cfg(test)]
mod tests {
    use super::super::VerifyError;
    use super::super::test_support::*;
    use super::decode_uri;
    use crate::inbound::InboundRequest;

    const SECRET: &str = "yyyyyyyy-yyyy-yyyy-yyyy-yyyyyyyyyyyy";
    const V3_SPEC: &str = "{ scheme: hubspot, secrets: [yyyyyyyy-yyyy-yyyy-yyyy-yyyyyyyyyyyy] }";
    const TS_MS: u64 = 1_700_000_000_123;
    const NOW_SECS: u64 = 1_700_000_000;
    const URL: &str = "https://hooks.example.com/hubspot?portal=62515&filter=a%3Ab%20c";
    const BODY: &[u8] = br#"[{"eventId":1,"subscriptionType":"contact.creation"}]"#;
    /// HubSpot publishes no v3 vector; this is the documented recipe computed independently
    /// with Python, with only `%3A` decoded (`%20` stays):
    /// base64(hmac(SECRET, "POST" + "https://hooks.example.com/hubspot?portal=62515&filter=a:b%20c"
    /// + BODY + "1700000000123")).
    const V3_SIGNATURE: &str = "1e2HLFDSmC+LlvlA7BLSU5RG8AWlkf1uxkn+bmNDUJQ=";

    fn v3_signed() -> InboundRequest {
        let mut req = request(
            &[
                ("X-HubSpot-Signature-v3", V3_SIGNATURE),
                ("X-HubSpot-Request-Timestamp", &TS_MS.to_string()),
            ],
            BODY,
        );
        req.url = URL.to_string();
        req
    }

    /// HubSpot's published v1 example ("Validate requests using the v1 request signature").
    fn v1_published() -> InboundRequest {
        request(
            &[
                ("X-HubSpot-Signature", "232db2615f3d666fe21a8ec971ac7b5402d33b9a925784df3ca654d05f4817de"),
                ("X-HubSpot-Signature-Version", "v1"),
            ],
            br#"[{"eventId":1,"subscriptionId":12345,"portalId":62515,"occurredAt":1564113600000,"subscriptionType":"contact.creation","attemptNumber":0,"objectId":123,"changeSource":"CRM","changeFlag":"NEW","appId":54321}]"#,
        )
    }

    /// HubSpot's published v2 example: a GET with no body.
    fn v2_published() -> InboundRequest {
        let mut req = request(
            &[
                (
                    "X-HubSpot-Signature",
                    "eee2dddcc73c94d699f5e395f4b9d454a069a6855fbfa152e91e88823087200e",
                ),
                ("X-HubSpot-Signature-Version", "v2"),
            ],
            b"",
        );
        req.method = "GET".to_string();
        req.url = "https://www.example.com/webhook_uri".to_string();
        req
    }

    #[test]
    fn only_the_listed_escapes_are_decoded_in_the_uri() {
        assert_eq!(
            decode_uri("https://x.io/a%2Fb?q=%3a%3F%40%21%24%27%28%29%2A%2C%3B&s=%20%26%25"),
            "https://x.io/a/b?q=:?@!$'()*,;&s=%20%26%25"
        );
        assert_eq!(decode_uri("%"), "%");
        assert_eq!(decode_uri("%3"), "%3");
        assert_eq!(decode_uri("ü%zz"), "ü%zz");
    }

    #[test]
    fn a_v3_signature_over_the_decoded_uri_is_accepted() {
        assert!(verifier(V3_SPEC).verify(v3_signed(), at(NOW_SECS)).is_ok());
    }

    #[test]
    fn hubspots_published_v1_example_is_accepted_when_v1_is_allowed() {
        let v = verifier(&format!(
            "{{ scheme: hubspot, secrets: [{SECRET}], versions: [v1] }}"
        ));
        assert!(v.verify(v1_published(), at(NOW_SECS)).is_ok());
    }

    #[test]
    fn hubspots_published_v2_example_is_accepted_when_v2_is_allowed() {
        let v = verifier(&format!(
            "{{ scheme: hubspot, secrets: [{SECRET}], versions: [v3, v2] }}"
        ));
        assert!(v.verify(v2_published(), at(NOW_SECS)).is_ok());
    }

    #[test]
    fn legacy_signatures_are_refused_by_default() {
        let err = verifier(V3_SPEC)
            .verify(v1_published(), at(NOW_SECS))
            .unwrap_err();
        assert_eq!(
            err,
            VerifyError::MissingHeader("x-hubspot-signature-v3".into())
        );
    }

    #[test]
    fn a_legacy_signature_of_a_version_not_listed_is_malformed() {
        let v = verifier(&format!(
            "{{ scheme: hubspot, secrets: [{SECRET}], versions: [v2] }}"
        ));
        let err = v.verify(v1_published(), at(NOW_SECS)).unwrap_err();
        assert_eq!(err.code(), "malformed_signature_header");
    }

    #[test]
    fn a_wrong_v3_signature_does_not_fall_back_to_a_valid_legacy_one() {
        let v = verifier(&format!(
            "{{ scheme: hubspot, secrets: [{SECRET}], versions: [v3, v1] }}"
        ));
        let mut req = v1_published();
        req = with_header(req, "X-HubSpot-Signature-v3", "AAAA");
        req = with_header(req, "X-HubSpot-Request-Timestamp", &TS_MS.to_string());
        assert_eq!(
            v.verify(req, at(NOW_SECS)).unwrap_err(),
            VerifyError::Mismatch
        );
    }

    #[test]
    fn a_v3_signature_over_the_undecoded_uri_is_rejected() {
        let mut req = v3_signed();
        req.url = "https://hooks.example.com/hubspot?portal=62515&filter=a:b%20c".to_string();
        assert!(
            verifier(V3_SPEC).verify(req.clone(), at(NOW_SECS)).is_ok(),
            "same decoded uri"
        );
        req.url = "https://hooks.example.com/hubspot?portal=62515&filter=a:b c".to_string();
        assert_eq!(
            verifier(V3_SPEC).verify(req, at(NOW_SECS)).unwrap_err(),
            VerifyError::Mismatch
        );
    }

    #[test]
    fn a_tampered_body_is_rejected_in_every_version() {
        assert_eq!(
            verifier(V3_SPEC)
                .verify(with_body(v3_signed(), b"[]"), at(NOW_SECS))
                .unwrap_err(),
            VerifyError::Mismatch
        );
        let legacy = verifier(&format!(
            "{{ scheme: hubspot, secrets: [{SECRET}], versions: [v1, v2] }}"
        ));
        assert_eq!(
            legacy
                .verify(with_body(v1_published(), b"[]"), at(0))
                .unwrap_err(),
            VerifyError::Mismatch
        );
        assert_eq!(
            legacy
                .verify(with_body(v2_published(), b"x"), at(0))
                .unwrap_err(),
            VerifyError::Mismatch
        );
    }

    #[test]
    fn a_missing_v3_timestamp_is_reported_by_name() {
        let req = without_header(v3_signed(), "X-HubSpot-Request-Timestamp");
        assert_eq!(
            verifier(V3_SPEC).verify(req, at(NOW_SECS)).unwrap_err(),
            VerifyError::MissingHeader("x-hubspot-request-timestamp".into())
        );
    }

    #[test]
    fn garbled_signatures_and_timestamps_are_malformed() {
        assert_each_malformed(
            V3_SPEC,
            v3_signed,
            at(NOW_SECS),
            &[
                ("X-HubSpot-Signature-v3", "***"),
                ("X-HubSpot-Request-Timestamp", "1.7e12"),
            ],
        );
        let legacy = verifier(&format!(
            "{{ scheme: hubspot, secrets: [{SECRET}], versions: [v1] }}"
        ));
        let garbled = with_header(v1_published(), "X-HubSpot-Signature", "xyz");
        assert_eq!(
            legacy.verify(garbled, at(0)).unwrap_err().code(),
            "malformed_signature_header"
        );
    }

    #[test]
    fn the_v3_timestamp_is_in_milliseconds() {
        // Read as seconds, 1_700_000_000_123 would be tens of thousands of years ahead.
        assert!(
            verifier(V3_SPEC)
                .verify(v3_signed(), at(NOW_SECS + 300))
                .is_ok()
        );
        assert_eq!(
            verifier(V3_SPEC)
                .verify(v3_signed(), at(NOW_SECS + 301))
                .unwrap_err(),
            VerifyError::StaleTimestamp
        );
    }

    #[test]
    fn a_v3_timestamp_beyond_the_tolerance_in_the_future_is_rejected() {
        assert_eq!(
            verifier(V3_SPEC)
                .verify(v3_signed(), at(NOW_SECS - 301))
                .unwrap_err(),
            VerifyError::FutureTimestamp
        );
    }

    #[test]
    fn an_empty_version_list_is_refused_at_load() {
        let spec: super::super::VerifySpec =
            serde_yaml_ng::from_str("{ scheme: hubspot, secrets: [s], versions: [] }").unwrap();
        let err = spec.build(&crate::env::Env::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "verify.versions: list at least one of v1, v2, v3"
        );
    }

    #[test]
    fn sign_then_verify_round_trips_for_every_version() {
        for versions in ["[v3]", "[v2]", "[v1]", "[v3, v2]"] {
            let v = verifier(&format!(
                "{{ scheme: hubspot, secrets: [{SECRET}], versions: {versions} }}"
            ));
            let mut req = request(&[], BODY);
            req.url = URL.to_string();
            v.sign(&mut req, at(NOW_SECS));
            assert!(v.verify(req, at(NOW_SECS)).is_ok(), "{versions}");
        }
        let v = verifier(V3_SPEC);
        let mut req = request(&[], BODY);
        req.url = URL.to_string();
        v.sign(
            &mut req,
            crate::verify::test_support::at(0) + std::time::Duration::from_millis(TS_MS),
        );
        assert_eq!(
            req.headers.get("x-hubspot-signature-v3"),
            Some(V3_SIGNATURE)
        );
    }
}
