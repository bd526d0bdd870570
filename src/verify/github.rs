//! GitHub: `X-Hub-Signature-256` is `sha256=` followed by the hex HMAC-SHA256 of the raw body,
//! keyed with the webhook secret. No signed timestamp.
//!
//! The legacy SHA-1 `X-Hub-Signature` is not checked (GitHub recommends the SHA-256 one and
//! still sends both), but it is stripped from stored headers like any other signature.

use serde::Deserialize;

use super::{BuildContext, InboundRequest, Key, VerifyError, VerifySpecError};

const SIGNATURE_HEADER: &str = "X-Hub-Signature-256";
const PREFIX: &str = "sha256=";
pub(super) const CREDENTIAL_HEADERS: &[&str] = &[SIGNATURE_HEADER, "X-Hub-Signature"];

/// `verify: { scheme: github, secrets: [...] }`
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GithubSpec {
    /// Webhook secrets; any one matching accepts the request (rotation).
    pub secrets: Vec<String>,
}

impl GithubSpec {
    pub(super) fn build(&self, ctx: &mut BuildContext) -> Result<Github, VerifySpecError> {
        Ok(Github {
            keys: ctx.keys(&self.secrets)?,
        })
    }
}

#[derive(Debug)]
pub(super) struct Github {
    keys: Vec<Key>,
}

impl Github {
    /// Returns the verified MAC, which covers exactly the body.
    pub(super) fn verify(&self, request: &InboundRequest) -> Result<Vec<u8>, VerifyError> {
        let header = super::required_header(request, SIGNATURE_HEADER)?;
        let hex_tag = header
            .trim()
            .strip_prefix(PREFIX)
            .ok_or_else(|| VerifyError::bad_format(SIGNATURE_HEADER, "expected sha256=<hex>"))?;
        let tag = hex::decode(hex_tag)
            .map_err(|_| VerifyError::bad_format(SIGNATURE_HEADER, "not hex"))?;
        super::matching_hmac_sha256(&self.keys, &[&request.body], &[&tag])
    }

    pub(super) fn sign(&self, request: &mut InboundRequest) {
        let tag = super::hmac_sha256_bytes(&self.keys[0], &[&request.body]);
        super::set_headers(
            request,
            vec![(SIGNATURE_HEADER, format!("{PREFIX}{}", hex::encode(tag)))],
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::VerifyError;
    use super::super::test_support::*;

    const SPEC: &str = r#"{ scheme: github, secrets: ["It's a Secret to Everybody"] }"#;
    /// GitHub's published example ("Validating webhook deliveries").
    const PUBLISHED: &str =
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

    fn signed() -> crate::inbound::InboundRequest {
        github_published_example()
    }

    #[test]
    fn an_upper_case_hex_signature_is_accepted_too() {
        let upper = format!(
            "sha256={}",
            PUBLISHED["sha256=".len()..].to_ascii_uppercase()
        );
        assert!(
            verifier(SPEC)
                .verify(with_header(signed(), "X-Hub-Signature-256", &upper), at(0))
                .is_ok()
        );
    }

    #[test]
    fn a_signature_without_the_prefix_or_with_bad_hex_is_malformed() {
        for garbled in [&PUBLISHED["sha256=".len()..], "sha256=zz", "sha1=abcd"] {
            let req = with_header(signed(), "X-Hub-Signature-256", garbled);
            let err = verifier(SPEC).verify(req, at(0)).unwrap_err();
            assert!(
                matches!(err, VerifyError::BadFormat { .. }),
                "{garbled}: {err:?}"
            );
        }
    }

    #[test]
    fn the_legacy_sha1_header_alone_is_not_enough() {
        let req = request(&[("X-Hub-Signature", "sha1=0123")], b"Hello, World!");
        assert_eq!(
            verifier(SPEC).verify(req, at(0)).unwrap_err().code(),
            "missing_signature_header"
        );
    }

    #[test]
    fn sign_then_verify_round_trips() {
        let v = verifier(SPEC);
        let mut req = request(&[], b"Hello, World!");
        v.sign(&mut req, at(0));
        assert_eq!(req.headers.get("x-hub-signature-256"), Some(PUBLISHED));
        assert!(v.verify(req, at(0)).is_ok());
    }
}
