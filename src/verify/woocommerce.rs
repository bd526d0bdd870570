//! WooCommerce: `X-WC-Webhook-Signature` is the base64 HMAC-SHA256 of the raw body.
//!
//! Pitfall: WooCommerce keys the HMAC with `wp_specialchars_decode($secret, ENT_QUOTES)`, so a
//! secret containing `&amp;`, `&lt;`, `&quot;`, `&#039;`, ... (as WordPress may store or display
//! it) is used with those entities decoded. We decode HTML entities in the configured secret the
//! same way; a secret without entities is unchanged.
//!
//! When a webhook is created WooCommerce posts an UNSIGNED body `webhook_id=<n>` and refuses to
//! save the webhook unless it gets a 200. That request fails with [`VerifyError::UnsignedPing`]
//! so the HTTP layer can answer 200 without enqueueing anything.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;

use super::{BuildContext, InboundRequest, Key, VerifyError, VerifySpecError};

const SIGNATURE_HEADER: &str = "X-WC-Webhook-Signature";
pub(super) const CREDENTIAL_HEADERS: &[&str] = &[SIGNATURE_HEADER];

/// `verify: { scheme: woocommerce, secrets: [...] }`
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WoocommerceSpec {
    /// Webhook secrets as entered in WooCommerce; HTML entities are decoded before use.
    pub secrets: Vec<String>,
}

impl WoocommerceSpec {
    pub(super) fn build(&self, ctx: &mut BuildContext) -> Result<Woocommerce, VerifySpecError> {
        let keys = ctx
            .secrets(&self.secrets)?
            .iter()
            .map(|secret| {
                Key(html_escape::decode_html_entities(secret.expose())
                    .as_bytes()
                    .to_vec())
            })
            .collect();
        Ok(Woocommerce { keys })
    }
}

#[derive(Debug)]
pub(super) struct Woocommerce {
    keys: Vec<Key>,
}

impl Woocommerce {
    /// Returns the verified MAC, which covers exactly the body.
    pub(super) fn verify(&self, request: &InboundRequest) -> Result<Vec<u8>, VerifyError> {
        let Some(header) = request.headers.get(SIGNATURE_HEADER) else {
            return Err(if is_creation_ping(&request.body) {
                VerifyError::UnsignedPing
            } else {
                VerifyError::MissingHeader(SIGNATURE_HEADER.to_ascii_lowercase())
            });
        };
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

/// `webhook_id=<digits>`, the whole body of WooCommerce's creation ping.
fn is_creation_ping(body: &[u8]) -> bool {
    body.strip_prefix(b"webhook_id=")
        .is_some_and(|id| !id.is_empty() && id.iter().all(u8::is_ascii_digit))
}

#[cfg(test)]
mod tests {
    use super::super::VerifyError;
    use super::super::test_support::*;

    const SPEC: &str = r#"{ scheme: woocommerce, secrets: ["s3cr3t&amp;key"] }"#;
    const BODY: &[u8] = br#"{"id":727,"status":"processing"}"#;
    /// WooCommerce publishes no vector; this is its recipe computed independently with Python
    /// with the entity-decoded key: base64(hmac.new(b"s3cr3t&key", BODY, sha256).digest()).
    const SIGNATURE: &str = "qEw7uCyH31ofpGUPjHEMUg4fbR0ALZ4hcKJ9h57BuvE=";

    fn signed() -> crate::inbound::InboundRequest {
        request(&[("X-WC-Webhook-Signature", SIGNATURE)], BODY)
    }

    #[test]
    fn a_signature_keyed_with_the_raw_entity_text_is_not_woocommerces_recipe() {
        use base64::Engine as _;
        use hmac::{KeyInit, Mac};
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"s3cr3t&amp;key").unwrap();
        mac.update(BODY);
        let wrong = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        let req = with_header(signed(), "X-WC-Webhook-Signature", &wrong);
        assert_eq!(
            verifier(SPEC).verify(req, at(0)).unwrap_err(),
            VerifyError::Mismatch
        );
    }

    #[test]
    fn the_unsigned_creation_ping_is_told_apart_but_still_not_verified() {
        let err = verifier(SPEC)
            .verify(request(&[], b"webhook_id=42"), at(0))
            .unwrap_err();
        assert_eq!(err, VerifyError::UnsignedPing);
        assert_eq!(err.code(), "unsigned_ping");
        for not_a_ping in [&b"webhook_id="[..], b"webhook_id=4&x=1", b"webhook_id=42 "] {
            let err = verifier(SPEC)
                .verify(request(&[], not_a_ping), at(0))
                .unwrap_err();
            assert_eq!(err.code(), "missing_signature_header");
        }
    }

    #[test]
    fn a_signature_that_is_not_base64_is_malformed() {
        let garbled = with_header(signed(), "X-WC-Webhook-Signature", "sha256=abc");
        assert_eq!(
            verifier(SPEC).verify(garbled, at(0)).unwrap_err().code(),
            "malformed_signature_header"
        );
    }

    #[test]
    fn sign_then_verify_round_trips() {
        let v = verifier(SPEC);
        let mut req = request(&[], BODY);
        v.sign(&mut req, at(0));
        assert_eq!(req.headers.get("x-wc-webhook-signature"), Some(SIGNATURE));
        assert!(v.verify(req, at(0)).is_ok());
    }
}
