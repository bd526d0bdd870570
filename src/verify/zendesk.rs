//! Zendesk: `X-Zendesk-Webhook-Signature` is the base64 HMAC-SHA256 of
//! `"{X-Zendesk-Webhook-Signature-Timestamp}{body}"` (no separator), keyed with the webhook's
//! signing secret. The timestamp is RFC 3339 (`2021-03-25T05:09:27Z`), not Unix seconds.
//!
//! Pitfall: the signing secret looks like base64 but is used as-is, string bytes, never decoded.
//!
//! Order: Zendesk's current docs say `TIMESTAMP + BODY`, and that is what is implemented. An
//! older revision of the page wrote `(BODY)(TIMESTAMP)` and its sample signature matches that
//! order; the community implementations written against live traffic all use timestamp first.

use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;

use super::timestamp::{self, default_tolerance_secs};
use super::{BuildContext, InboundRequest, Key, VerifyError, VerifySpecError};

const SIGNATURE_HEADER: &str = "X-Zendesk-Webhook-Signature";
const TIMESTAMP_HEADER: &str = "X-Zendesk-Webhook-Signature-Timestamp";
pub(super) const CREDENTIAL_HEADERS: &[&str] = &[SIGNATURE_HEADER];

/// `verify: { scheme: zendesk, secrets: [...], tolerance_secs: 300 }`
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ZendeskSpec {
    /// Webhook signing secrets, exactly as Zendesk shows them.
    pub secrets: Vec<String>,
    /// How far the signature timestamp may be from now, in either direction.
    #[serde(default = "default_tolerance_secs")]
    pub tolerance_secs: u64,
}

impl ZendeskSpec {
    pub(super) fn build(&self, ctx: &mut BuildContext) -> Result<Zendesk, VerifySpecError> {
        Ok(Zendesk {
            keys: ctx.keys(&self.secrets)?,
            tolerance_secs: self.tolerance_secs,
        })
    }
}

#[derive(Debug)]
pub(super) struct Zendesk {
    keys: Vec<Key>,
    tolerance_secs: u64,
}

impl Zendesk {
    pub(super) fn verify(
        &self,
        request: &InboundRequest,
        now: SystemTime,
    ) -> Result<(), VerifyError> {
        let header = super::required_header(request, SIGNATURE_HEADER)?;
        let ts = super::required_header(request, TIMESTAMP_HEADER)?;
        let tag = STANDARD
            .decode(header.trim())
            .map_err(|_| VerifyError::bad_format(SIGNATURE_HEADER, "not base64"))?;
        let signed_at = timestamp::parse_rfc3339(TIMESTAMP_HEADER, ts)?;
        timestamp::check_window(signed_at, now, self.tolerance_secs)?;
        // The timestamp is signed as the exact header string, not a re-formatted date.
        super::check_hmac_sha256(&self.keys, &[ts.as_bytes(), &request.body], &[&tag])
    }

    pub(super) fn sign(&self, request: &mut InboundRequest, now: SystemTime) {
        let ts = timestamp::format_rfc3339(now);
        let tag = super::hmac_sha256_bytes(&self.keys[0], &[ts.as_bytes(), &request.body]);
        super::set_headers(
            request,
            vec![
                (TIMESTAMP_HEADER, ts),
                (SIGNATURE_HEADER, STANDARD.encode(tag)),
            ],
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::VerifyError;
    use super::super::test_support::*;

    /// The secret and body of the example in Zendesk's "Verifying webhook authenticity" page.
    const SPEC: &str =
        "{ scheme: zendesk, secrets: [HRkRd4BeOAoUkfZr-mhauJT64rvBASlJRoIyPsd3zeA=] }";
    const BODY: &[u8] = br#"{"say": "hello"}"#;
    const TS: &str = "2021-07-25T10:00:00Z";
    const TS_SECS: u64 = 1_627_207_200;
    /// The documented recipe (timestamp then body, secret string used as-is) computed
    /// independently with Python: base64(hmac.new(SECRET, TS + BODY, sha256).digest()).
    const SIGNATURE: &str = "Rry/4TtIdFyawtXXp8QdI6tlAUUQ/5kL1OTp5qo/ZIk=";
    /// The sample signature printed on the older revision of the page, which signs body then
    /// timestamp.
    const OLD_DOCS_SIGNATURE: &str = "tRDSF7URY8BLCDlaBcQ7FHu051Zk+aAB0NKMP53teMw=";

    fn signed() -> crate::inbound::InboundRequest {
        request(
            &[
                ("X-Zendesk-Webhook-Signature", SIGNATURE),
                ("X-Zendesk-Webhook-Signature-Timestamp", TS),
            ],
            BODY,
        )
    }

    #[test]
    fn the_old_docs_body_then_timestamp_order_is_not_accepted() {
        let req = with_header(signed(), "X-Zendesk-Webhook-Signature", OLD_DOCS_SIGNATURE);
        assert_eq!(
            verifier(SPEC).verify(req, at(TS_SECS)).unwrap_err(),
            VerifyError::Mismatch
        );
    }

    #[test]
    fn the_secret_is_not_base64_decoded() {
        // Independent construction: key = base64-decoded secret. Must NOT verify.
        use base64::Engine as _;
        use hmac::{KeyInit, Mac};
        let decoded = base64::engine::general_purpose::URL_SAFE
            .decode("HRkRd4BeOAoUkfZr-mhauJT64rvBASlJRoIyPsd3zeA=")
            .unwrap();
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&decoded).unwrap();
        mac.update(TS.as_bytes());
        mac.update(BODY);
        let wrong = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        let req = with_header(signed(), "X-Zendesk-Webhook-Signature", &wrong);
        assert_eq!(
            verifier(SPEC).verify(req, at(TS_SECS)).unwrap_err(),
            VerifyError::Mismatch
        );
    }

    #[test]
    fn a_garbled_signature_or_a_unix_timestamp_is_malformed() {
        assert_each_malformed(
            SPEC,
            signed,
            at(TS_SECS),
            &[
                ("X-Zendesk-Webhook-Signature", "%%%"),
                ("X-Zendesk-Webhook-Signature-Timestamp", "1627207200"),
            ],
        );
    }

    #[test]
    fn sign_then_verify_round_trips() {
        let v = verifier(SPEC);
        let mut req = request(&[], BODY);
        v.sign(&mut req, at(TS_SECS));
        assert_eq!(
            req.headers.get("x-zendesk-webhook-signature-timestamp"),
            Some(TS)
        );
        assert_eq!(
            req.headers.get("x-zendesk-webhook-signature"),
            Some(SIGNATURE)
        );
        assert!(v.verify(req, at(TS_SECS)).is_ok());
    }
}
