//! Shopify: `X-Shopify-Hmac-Sha256` is the base64 HMAC-SHA256 of the raw body, keyed with the
//! app's client secret (or the shop's webhook signing secret). There is no signed timestamp.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;

use super::{BuildContext, InboundRequest, Key, VerifyError, VerifySpecError};

const SIGNATURE_HEADER: &str = "X-Shopify-Hmac-Sha256";
pub(super) const CREDENTIAL_HEADERS: &[&str] = &[SIGNATURE_HEADER];

/// `verify: { scheme: shopify, secrets: [...] }`
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ShopifySpec {
    /// Client secrets; any one matching accepts the request (rotation).
    pub secrets: Vec<String>,
}

impl ShopifySpec {
    pub(super) fn build(&self, ctx: &mut BuildContext) -> Result<Shopify, VerifySpecError> {
        Ok(Shopify {
            keys: ctx.keys(&self.secrets)?,
        })
    }
}

#[derive(Debug)]
pub(super) struct Shopify {
    keys: Vec<Key>,
}

impl Shopify {
    /// Returns the verified MAC, which covers exactly the body.
    pub(super) fn verify(&self, request: &InboundRequest) -> Result<Vec<u8>, VerifyError> {
        let header = super::required_header(request, SIGNATURE_HEADER)?;
        let tag = STANDARD
            .decode(header.trim())
            .map_err(|_| VerifyError::bad_format(SIGNATURE_HEADER, "not base64"))?;
        super::matching_hmac_sha256(&self.keys, &[&request.body], &[&tag])
    }

    pub(super) fn sign(&self, request: &mut InboundRequest) {
        let tag = super::hmac_sha256_bytes(&self.keys[0], &[&request.body]);
        super::set_headers(request, vec![(SIGNATURE_HEADER, STANDARD.encode(tag))]);
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;

    const SPEC: &str = "{ scheme: shopify, secrets: [hush] }";
    const BODY: &[u8] = br#"{"id":820982911946154508,"email":"jon@example.com"}"#;
    /// Shopify publishes no test vector; this is the documented recipe computed independently
    /// with Python: base64(hmac.new(b"hush", BODY, sha256).digest()).
    const SIGNATURE: &str = "D0UMXmhjwBRi4y66TmhJrDlhQABD7zI2fm3p6/QLMo8=";

    fn signed() -> crate::inbound::InboundRequest {
        request(&[("X-Shopify-Hmac-Sha256", SIGNATURE)], BODY)
    }

    #[test]
    fn a_signature_that_is_not_base64_is_malformed() {
        let garbled = with_header(signed(), "X-Shopify-Hmac-Sha256", "not base64!!");
        assert_eq!(
            verifier(SPEC).verify(garbled, at(0)).unwrap_err().code(),
            "malformed_signature_header"
        );
    }

    #[test]
    fn sign_then_verify_round_trips() {
        let v = verifier(SPEC);
        let mut req = request(&[("X-Shopify-Hmac-Sha256", "stale")], b"any body");
        v.sign(&mut req, at(0));
        assert!(v.verify(req, at(0)).is_ok());
    }
}
