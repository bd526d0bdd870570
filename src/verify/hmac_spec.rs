//! The generic HMAC recipe, for providers without a dedicated scheme:
//!
//! ```yaml
//! verify:
//!   scheme: hmac
//!   secrets: ["${ACME_SECRET}"]
//!   header: X-Signature               # where the signature arrives
//!   algorithm: sha256                 # sha1 | sha256 (default) | sha512
//!   encoding: hex                     # hex (default) | base64 | base64url
//!   prefix: "sha256="                 # stripped before decoding; default none
//!   signed_content: "{timestamp}.{body}"  # default "{body}"
//!   timestamp_header: X-Timestamp     # Unix seconds; required iff {timestamp} is used
//!   tolerance_secs: 300
//! ```
//!
//! `signed_content` placeholders: `{body}` (raw bytes), `{timestamp}` (the timestamp header's
//! exact value), `{method}`, `{url}` (the public URL), `{header:NAME}` (another header's value);
//! `{{` and `}}` are literal braces. The template is parsed once at load.

use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::{
    STANDARD, STANDARD_PAD_INDIFFERENT, URL_SAFE_NO_PAD, URL_SAFE_NO_PAD_INDIFFERENT,
};
use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use sha1::Sha1;
use sha2::{Sha256, Sha512};

use super::timestamp::{self, default_tolerance_secs};
use super::{
    BuildContext, InboundRequest, Key, VerifyError, VerifySpecError, validate_header_name,
};

/// The hash under the HMAC.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum HmacAlgorithm {
    /// Only for providers that still use it; prefer sha256.
    Sha1,
    #[default]
    Sha256,
    Sha512,
}

/// How the signature bytes are written in the header.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SignatureEncoding {
    /// Either case is accepted; `sign` writes lower case.
    #[default]
    Hex,
    /// Standard alphabet; padding optional when verifying, written when signing.
    Base64,
    /// URL-safe alphabet; padding optional when verifying, omitted when signing.
    Base64url,
}

fn body_template() -> String {
    "{body}".to_string()
}

/// `verify: { scheme: hmac, ... }`; see the module documentation.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HmacSpec {
    /// Shared secrets used as HMAC keys; any one matching accepts the request (rotation).
    pub secrets: Vec<String>,
    /// The header carrying the signature.
    pub header: String,
    /// The hash under the HMAC; default sha256.
    #[serde(default)]
    pub algorithm: HmacAlgorithm,
    /// How the signature bytes are written; default hex.
    #[serde(default)]
    pub encoding: SignatureEncoding,
    /// Text before the encoded signature, e.g. `sha256=`; matched case-insensitively.
    #[serde(default)]
    pub prefix: String,
    /// What is signed; default `{body}`.
    #[serde(default = "body_template")]
    pub signed_content: String,
    /// The header carrying a Unix-seconds timestamp, checked against `tolerance_secs`.
    #[serde(default)]
    pub timestamp_header: Option<String>,
    /// How far the timestamp may be from now, in either direction.
    #[serde(default = "default_tolerance_secs")]
    pub tolerance_secs: u64,
}

impl HmacSpec {
    pub(super) fn build(&self, ctx: &mut BuildContext) -> Result<HmacScheme, VerifySpecError> {
        validate_header_name("verify.header", &self.header)?;
        let template = parse_template(&self.signed_content)?;
        let uses_timestamp = template.iter().any(|part| matches!(part, Part::Timestamp));
        match (&self.timestamp_header, uses_timestamp) {
            (Some(name), true) => validate_header_name("verify.timestamp_header", name)?,
            (None, false) => {}
            (None, true) => {
                return Err(invalid(
                    "verify.timestamp_header",
                    "required because signed_content uses {timestamp}",
                ));
            }
            (Some(_), false) => {
                return Err(invalid(
                    "verify.signed_content",
                    "must include {timestamp} when timestamp_header is set, or the timestamp is not authenticated",
                ));
            }
        }
        Ok(HmacScheme {
            keys: ctx.keys(&self.secrets)?,
            header: self.header.clone(),
            algorithm: self.algorithm,
            encoding: self.encoding,
            prefix: self.prefix.clone(),
            template,
            timestamp_header: self.timestamp_header.clone(),
            tolerance_secs: self.tolerance_secs,
        })
    }
}

fn invalid(field: &str, reason: &str) -> VerifySpecError {
    VerifySpecError::Invalid {
        field: field.to_string(),
        reason: reason.to_string(),
    }
}

/// One piece of a parsed `signed_content` template.
#[derive(Debug, Clone, PartialEq)]
enum Part {
    Literal(String),
    Body,
    Timestamp,
    Method,
    Url,
    Header(String),
}

fn parse_template(template: &str) -> Result<Vec<Part>, VerifySpecError> {
    const FIELD: &str = "verify.signed_content";
    let mut parts = Vec::new();
    let mut literal = String::new();
    let mut rest = template;
    while let Some(c) = rest.chars().next() {
        if let Some(tail) = rest.strip_prefix("{{") {
            literal.push('{');
            rest = tail;
        } else if let Some(tail) = rest.strip_prefix("}}") {
            literal.push('}');
            rest = tail;
        } else if c == '{' {
            let end = rest
                .find('}')
                .ok_or_else(|| invalid(FIELD, "unclosed { (write {{ for a literal brace)"))?;
            let name = &rest[1..end];
            let part = match name {
                "body" => Part::Body,
                "timestamp" => Part::Timestamp,
                "method" => Part::Method,
                "url" => Part::Url,
                _ => match name.strip_prefix("header:") {
                    Some(header) => {
                        validate_header_name(FIELD, header)?;
                        Part::Header(header.to_string())
                    }
                    None => {
                        return Err(VerifySpecError::Invalid {
                            field: FIELD.to_string(),
                            reason: format!(
                                "unknown placeholder {{{name}}} (use {{body}}, {{timestamp}}, {{method}}, {{url}} or {{header:NAME}})"
                            ),
                        });
                    }
                },
            };
            if !literal.is_empty() {
                parts.push(Part::Literal(std::mem::take(&mut literal)));
            }
            parts.push(part);
            rest = &rest[end + 1..];
        } else if c == '}' {
            return Err(invalid(FIELD, "unmatched } (write }} for a literal brace)"));
        } else {
            literal.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    if !literal.is_empty() {
        parts.push(Part::Literal(literal));
    }
    Ok(parts)
}

#[derive(Debug)]
pub(super) struct HmacScheme {
    keys: Vec<Key>,
    header: String,
    algorithm: HmacAlgorithm,
    encoding: SignatureEncoding,
    prefix: String,
    template: Vec<Part>,
    timestamp_header: Option<String>,
    tolerance_secs: u64,
}

impl HmacScheme {
    /// True when a timestamp header is part of the signed content.
    pub(super) fn signs_timestamp(&self) -> bool {
        self.timestamp_header.is_some()
    }

    pub(super) fn signature_header(&self) -> String {
        self.header.to_ascii_lowercase()
    }

    pub(super) fn verify(
        &self,
        request: &InboundRequest,
        now: SystemTime,
    ) -> Result<(), VerifyError> {
        let header = super::required_header(request, &self.header)?;
        let encoded = strip_prefix_ignore_case(header.trim(), &self.prefix).ok_or_else(|| {
            VerifyError::bad_format(&self.header, "does not start with the configured prefix")
        })?;
        let tag = self.decode(encoded)?;
        let timestamp = match &self.timestamp_header {
            Some(name) => {
                let value = super::required_header(request, name)?;
                timestamp::check_window(
                    timestamp::parse_unix_secs(name, value)?,
                    now,
                    self.tolerance_secs,
                )?;
                Some(value)
            }
            None => None,
        };
        let parts = self.signed_parts(request, timestamp)?;
        let tag_len = match self.algorithm {
            HmacAlgorithm::Sha1 => 20,
            HmacAlgorithm::Sha256 => 32,
            HmacAlgorithm::Sha512 => 64,
        };
        if super::any_tag_matches(&self.keys, &[&tag], tag_len, |key| {
            self.compute(key, &parts)
        }) {
            Ok(())
        } else {
            Err(VerifyError::Mismatch)
        }
    }

    pub(super) fn sign(&self, request: &mut InboundRequest, now: SystemTime) {
        let timestamp = timestamp::since_epoch(now).as_secs().to_string();
        let mut headers = Vec::new();
        let tag = {
            let stamped = self.timestamp_header.as_ref().map(|_| timestamp.as_str());
            // A sample lacking a `{header:NAME}` it needs cannot be signed meaningfully: the MAC
            // of nothing is written, and verify reports the header as missing.
            let parts = self.signed_parts(request, stamped).unwrap_or_default();
            self.compute(&self.keys[0], &parts)
        };
        if let Some(name) = &self.timestamp_header {
            headers.push((name.as_str(), timestamp.clone()));
        }
        headers.push((
            self.header.as_str(),
            format!("{}{}", self.prefix, self.encode(&tag)),
        ));
        super::set_headers(request, headers);
    }

    /// The configured algorithm's MAC of `parts` under `key`.
    fn compute(&self, key: &Key, parts: &[&[u8]]) -> Vec<u8> {
        match self.algorithm {
            HmacAlgorithm::Sha1 => mac::<Hmac<Sha1>>(key, parts)
                .finalize()
                .into_bytes()
                .to_vec(),
            HmacAlgorithm::Sha256 => mac::<Hmac<Sha256>>(key, parts)
                .finalize()
                .into_bytes()
                .to_vec(),
            HmacAlgorithm::Sha512 => mac::<Hmac<Sha512>>(key, parts)
                .finalize()
                .into_bytes()
                .to_vec(),
        }
    }

    fn decode(&self, encoded: &str) -> Result<Vec<u8>, VerifyError> {
        let decoded = match self.encoding {
            SignatureEncoding::Hex => hex::decode(encoded).map_err(|_| "not hex"),
            SignatureEncoding::Base64 => STANDARD_PAD_INDIFFERENT
                .decode(encoded)
                .map_err(|_| "not base64"),
            SignatureEncoding::Base64url => URL_SAFE_NO_PAD_INDIFFERENT
                .decode(encoded)
                .map_err(|_| "not base64url"),
        };
        decoded.map_err(|reason| VerifyError::bad_format(&self.header, reason))
    }

    fn encode(&self, tag: &[u8]) -> String {
        match self.encoding {
            SignatureEncoding::Hex => hex::encode(tag),
            SignatureEncoding::Base64 => STANDARD.encode(tag),
            SignatureEncoding::Base64url => URL_SAFE_NO_PAD.encode(tag),
        }
    }

    /// The template's pieces as byte slices borrowed from the request, fed to the MAC in turn.
    fn signed_parts<'a>(
        &'a self,
        request: &'a InboundRequest,
        timestamp: Option<&'a str>,
    ) -> Result<Vec<&'a [u8]>, VerifyError> {
        self.template
            .iter()
            .map(|part| {
                Ok(match part {
                    Part::Literal(text) => text.as_bytes(),
                    Part::Body => &request.body[..],
                    // Build guarantees a timestamp header whenever the template uses it.
                    Part::Timestamp => timestamp.unwrap_or_default().as_bytes(),
                    Part::Method => request.method.as_bytes(),
                    Part::Url => request.url.as_bytes(),
                    Part::Header(name) => super::required_header(request, name)?.as_bytes(),
                })
            })
            .collect()
    }
}

fn mac<M: Mac + KeyInit>(key: &Key, parts: &[&[u8]]) -> M {
    let mut mac =
        <M as KeyInit>::new_from_slice(key.bytes()).expect("HMAC accepts keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac
}

fn strip_prefix_ignore_case<'a>(value: &'a str, prefix: &str) -> Option<&'a str> {
    let head = value.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &value[prefix.len()..])
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::super::{VerifyError, VerifySpec, VerifySpecError};
    use crate::env::Env;

    /// A Stripe-like recipe expressed generically.
    const SPEC: &str = r#"{ scheme: hmac, secrets: [generic-secret], header: X-Signature, algorithm: sha256,
        encoding: hex, prefix: "sha256=", signed_content: "{timestamp}.{method}.{url}.{header:X-Event}.{body}",
        timestamp_header: X-Timestamp, tolerance_secs: 300 }"#;
    const TS: u64 = 1_700_000_000;
    const BODY: &[u8] = br#"{"event":"ping"}"#;
    /// Computed independently with Python:
    /// "sha256=" + hmac.new(b"generic-secret",
    ///     b"1700000000.POST.https://hooks.example.com/webhooks/test.ping." + BODY,
    ///     sha256).hexdigest().
    const SIGNATURE: &str =
        "sha256=8470af2099317bc749a4b11e6f8c62a9f6eee9812224f9921f75887d93e78344";

    fn signed() -> crate::inbound::InboundRequest {
        request(
            &[
                ("X-Signature", SIGNATURE),
                ("X-Timestamp", &TS.to_string()),
                ("X-Event", "ping"),
            ],
            BODY,
        )
    }

    fn build_error(yaml: &str) -> VerifySpecError {
        let spec: VerifySpec = serde_yaml_ng::from_str(yaml).expect("parses");
        spec.build(&Env::default()).expect_err("should be refused")
    }

    #[test]
    fn the_prefix_is_matched_case_insensitively() {
        let upper = SIGNATURE.replacen("sha256=", "SHA256=", 1);
        assert!(
            verifier(SPEC)
                .verify(with_header(signed(), "X-Signature", &upper), at(TS))
                .is_ok()
        );
    }

    #[test]
    fn every_signed_part_is_covered() {
        let v = verifier(SPEC);
        assert_eq!(
            v.verify(with_body(signed(), b"{}"), at(TS)).unwrap_err(),
            VerifyError::Mismatch
        );
        assert_eq!(
            v.verify(with_header(signed(), "X-Event", "pong"), at(TS))
                .unwrap_err(),
            VerifyError::Mismatch
        );
        assert_eq!(
            v.verify(
                with_header(signed(), "X-Timestamp", &(TS + 1).to_string()),
                at(TS)
            )
            .unwrap_err(),
            VerifyError::Mismatch
        );
        let mut other_url = signed();
        other_url.url.push_str("?x=1");
        assert_eq!(
            v.verify(other_url, at(TS)).unwrap_err(),
            VerifyError::Mismatch
        );
        let mut other_method = signed();
        other_method.method = "PUT".into();
        assert_eq!(
            v.verify(other_method, at(TS)).unwrap_err(),
            VerifyError::Mismatch
        );
    }

    #[test]
    fn a_garbled_signature_or_timestamp_is_malformed() {
        assert_each_malformed(
            SPEC,
            signed,
            at(TS),
            &[
                ("X-Signature", "md5=abc"),
                ("X-Signature", "sha256=xyz"),
                ("X-Timestamp", "later"),
            ],
        );
    }

    #[test]
    fn the_simplest_recipe_signs_the_body_alone() {
        // Same as GitHub's published example, expressed generically.
        let v = verifier(
            r#"{ scheme: hmac, secrets: ["It's a Secret to Everybody"], header: X-Hub-Signature-256, prefix: "sha256=" }"#,
        );
        assert!(v.verify(github_published_example(), at(0)).is_ok());
    }

    #[test]
    fn every_algorithm_and_encoding_round_trips() {
        for algorithm in ["sha1", "sha256", "sha512"] {
            for encoding in ["hex", "base64", "base64url"] {
                let v = verifier(&format!(
                    "{{ scheme: hmac, secrets: [k], header: X-Sig, algorithm: {algorithm}, encoding: {encoding} }}"
                ));
                let mut req = request(&[], BODY);
                v.sign(&mut req, at(TS));
                assert!(v.verify(req, at(TS)).is_ok(), "{algorithm}/{encoding}");
            }
        }
    }

    #[test]
    fn sha1_and_sha512_match_independent_vectors() {
        // RFC 2202 test case 2 (HMAC-SHA1) and RFC 4231 test case 2 (HMAC-SHA512): key "Jefe".
        let sha1 = verifier("{ scheme: hmac, secrets: [Jefe], header: X-Sig, algorithm: sha1 }");
        let req = request(
            &[("X-Sig", "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79")],
            b"what do ya want for nothing?",
        );
        assert!(sha1.verify(req, at(0)).is_ok());
        let sha512 =
            verifier("{ scheme: hmac, secrets: [Jefe], header: X-Sig, algorithm: sha512 }");
        let req = request(
            &[(
                "X-Sig",
                "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea2505549758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737",
            )],
            b"what do ya want for nothing?",
        );
        assert!(sha512.verify(req, at(0)).is_ok());
    }

    #[test]
    fn sign_then_verify_round_trips_with_timestamp_and_headers() {
        let v = verifier(SPEC);
        let mut req = request(&[("X-Event", "ping")], BODY);
        v.sign(&mut req, at(TS));
        assert_eq!(req.headers.get("x-signature"), Some(SIGNATURE));
        assert!(v.verify(req, at(TS)).is_ok());
    }

    #[test]
    fn literal_braces_are_written_doubled() {
        let v = verifier(
            r#"{ scheme: hmac, secrets: [k], header: X-Sig, signed_content: "{{{body}}}" }"#,
        );
        let mut req = request(&[], b"x");
        v.sign(&mut req, at(0));
        // Independent: hmac(k, "{x}").
        use hmac::{KeyInit, Mac};
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"k").unwrap();
        mac.update(b"{x}");
        assert_eq!(
            req.headers.get("x-sig"),
            Some(hex::encode(mac.finalize().into_bytes()).as_str())
        );
    }

    #[test]
    fn bad_recipes_are_refused_at_load_naming_the_field() {
        let cases = [
            (
                "{ scheme: hmac, secrets: [k], header: X-Sig, signed_content: \"{bdy}\" }",
                "verify.signed_content",
            ),
            (
                "{ scheme: hmac, secrets: [k], header: X-Sig, signed_content: \"{body\" }",
                "verify.signed_content",
            ),
            (
                "{ scheme: hmac, secrets: [k], header: X-Sig, signed_content: \"body}\" }",
                "verify.signed_content",
            ),
            (
                "{ scheme: hmac, secrets: [k], header: X-Sig, signed_content: \"{header:}\" }",
                "verify.signed_content",
            ),
            (
                "{ scheme: hmac, secrets: [k], header: X-Sig, signed_content: \"{timestamp}{body}\" }",
                "verify.timestamp_header",
            ),
            (
                "{ scheme: hmac, secrets: [k], header: X-Sig, timestamp_header: X-Ts }",
                "verify.signed_content",
            ),
            (
                "{ scheme: hmac, secrets: [k], header: \"X-Sig:\" }",
                "verify.header",
            ),
            (
                "{ scheme: hmac, secrets: [k], header: \"\" }",
                "verify.header",
            ),
        ];
        for (yaml, field) in cases {
            let err = build_error(yaml);
            assert!(
                matches!(&err, VerifySpecError::Invalid { field: f, .. } if f == field),
                "{yaml}: {err}"
            );
        }
    }

    #[test]
    fn an_unknown_algorithm_or_encoding_is_refused_when_parsing() {
        for yaml in [
            "{ scheme: hmac, secrets: [k], header: X-Sig, algorithm: md5 }",
            "{ scheme: hmac, secrets: [k], header: X-Sig, encoding: base32 }",
        ] {
            let err = serde_yaml_ng::from_str::<VerifySpec>(yaml)
                .unwrap_err()
                .to_string();
            assert!(err.contains("unknown variant"), "{err}");
        }
    }
}
