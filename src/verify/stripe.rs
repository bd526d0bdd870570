//! Stripe: `Stripe-Signature: t=<unix secs>,v1=<hex>,v1=<hex>,...`, each `v1` the hex
//! HMAC-SHA256 of `"{t}.{body}"`.
//!
//! Pitfall: the key is the WHOLE `whsec_...` string as bytes. Unlike Standard Webhooks, the
//! prefix is not stripped and the rest is not base64-decoded. Several `v1` entries appear while
//! Stripe rolls an endpoint's secret; any one matching is enough. `v0` entries (test-mode
//! legacy) are ignored.

use std::time::SystemTime;

use serde::Deserialize;

use super::timestamp::{self, default_tolerance_secs};
use super::{BuildContext, InboundRequest, Key, VerifyError, VerifySpecError};

const SIGNATURE_HEADER: &str = "Stripe-Signature";
pub(super) const CREDENTIAL_HEADERS: &[&str] = &[SIGNATURE_HEADER];

/// `verify: { scheme: stripe, secrets: ["whsec_..."], tolerance_secs: 300 }`
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StripeSpec {
    /// Endpoint signing secrets (`whsec_...`), used whole as HMAC keys.
    pub secrets: Vec<String>,
    /// How far `t` may be from now, in either direction.
    #[serde(default = "default_tolerance_secs")]
    pub tolerance_secs: u64,
}

impl StripeSpec {
    pub(super) fn build(&self, ctx: &mut BuildContext) -> Result<Stripe, VerifySpecError> {
        Ok(Stripe {
            keys: ctx.keys(&self.secrets)?,
            tolerance_secs: self.tolerance_secs,
        })
    }
}

#[derive(Debug)]
pub(super) struct Stripe {
    keys: Vec<Key>,
    tolerance_secs: u64,
}

impl Stripe {
    pub(super) fn verify(
        &self,
        request: &InboundRequest,
        now: SystemTime,
    ) -> Result<(), VerifyError> {
        let header = super::required_header(request, SIGNATURE_HEADER)?;
        let mut t = None;
        // Raw `v1` values: counted before any is decoded, so a header of thousands of entries
        // is refused without work.
        let mut candidates = Vec::new();
        for item in header.split(',') {
            let Some((key, value)) = item.split_once('=') else {
                continue;
            };
            match key.trim() {
                "t" if t.is_none() => t = Some(value.trim()),
                "v1" => candidates.push(value.trim()),
                _ => {}
            }
            super::check_candidate_count(SIGNATURE_HEADER, candidates.len())?;
        }
        let t = t.ok_or_else(|| VerifyError::bad_format(SIGNATURE_HEADER, "no t= timestamp"))?;
        // A v1 entry that is not hex cannot match; dropping it lets the others count.
        let tags: Vec<Vec<u8>> = candidates
            .iter()
            .filter_map(|value| hex::decode(value).ok())
            .collect();
        if tags.is_empty() {
            return Err(VerifyError::bad_format(
                SIGNATURE_HEADER,
                "no v1= signature",
            ));
        }
        let signed_at = timestamp::parse_unix_secs(SIGNATURE_HEADER, t)?;
        timestamp::check_window(signed_at, now, self.tolerance_secs)?;
        let parts: [&[u8]; 3] = [t.as_bytes(), b".", &request.body];
        super::check_hmac_sha256(&self.keys, &parts, &tags)
    }

    pub(super) fn sign(&self, request: &mut InboundRequest, now: SystemTime) {
        let t = timestamp::since_epoch(now).as_secs().to_string();
        let tag = super::hmac_sha256_bytes(&self.keys[0], &[t.as_bytes(), b".", &request.body]);
        super::set_headers(
            request,
            vec![(SIGNATURE_HEADER, format!("t={t},v1={}", hex::encode(tag)))],
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::VerifyError;
    use super::super::test_support::*;

    const SPEC: &str = "{ scheme: stripe, secrets: [whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw] }";
    const BODY: &[u8] = br#"{"id":"evt_1","object":"event","type":"payment_intent.succeeded"}"#;
    const T: u64 = 1_700_000_000;
    /// Stripe publishes no fixed vector; this is the documented recipe computed independently
    /// with Python, keyed with the whole secret string, `whsec_` included:
    /// hmac.new(b"whsec_MfKQ...LaSw", b"1700000000." + BODY, sha256).hexdigest().
    const V1: &str = "a82551674fad90f00a490f8455060aed6e282b5149812f4c8651c020249f73c4";

    fn signed() -> crate::inbound::InboundRequest {
        request(&[("Stripe-Signature", &format!("t={T},v1={V1}"))], BODY)
    }

    #[test]
    fn a_signature_keyed_with_the_base64_decoded_secret_is_not_stripes_recipe() {
        // Standard Webhooks strips `whsec_` and decodes the rest; Stripe does not. A verifier
        // that did so would accept this signature, made with the decoded bytes.
        use base64::Engine as _;
        use hmac::{KeyInit, Mac};
        let decoded = base64::engine::general_purpose::STANDARD
            .decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .unwrap();
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&decoded).unwrap();
        mac.update(format!("{T}.").as_bytes());
        mac.update(BODY);
        let wrong = hex::encode(mac.finalize().into_bytes());
        let req = with_header(signed(), "Stripe-Signature", &format!("t={T},v1={wrong}"));
        assert_eq!(
            verifier(SPEC).verify(req, at(T)).unwrap_err(),
            VerifyError::Mismatch
        );
    }

    #[test]
    fn any_of_several_v1_signatures_may_match() {
        let header = format!("t={T},v1={},v1={V1},v0=ignored", "ab".repeat(32));
        let req = with_header(signed(), "Stripe-Signature", &header);
        assert!(verifier(SPEC).verify(req, at(T)).is_ok());
    }

    #[test]
    fn a_changed_timestamp_breaks_the_signature() {
        let req = with_header(
            signed(),
            "Stripe-Signature",
            &format!("t={},v1={V1}", T + 1),
        );
        assert_eq!(
            verifier(SPEC).verify(req, at(T)).unwrap_err(),
            VerifyError::Mismatch
        );
    }

    #[test]
    fn a_header_without_timestamp_or_v1_is_malformed() {
        for garbled in [
            "garbage",
            &format!("v1={V1}"),
            &format!("t={T}"),
            &format!("t=abc,v1={V1}"),
            "",
        ] {
            let req = with_header(signed(), "Stripe-Signature", garbled);
            let err = verifier(SPEC).verify(req, at(T)).unwrap_err();
            assert_eq!(err.code(), "malformed_signature_header", "{garbled:?}");
        }
    }

    #[test]
    fn the_tolerance_is_configurable_per_source() {
        let relaxed = verifier(
            "{ scheme: stripe, secrets: [whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw], tolerance_secs: 3600 }",
        );
        assert!(relaxed.verify(signed(), at(T + 3000)).is_ok());
    }

    #[test]
    fn sign_then_verify_round_trips() {
        let v = verifier(SPEC);
        let mut req = request(&[], BODY);
        v.sign(&mut req, at(T));
        assert_eq!(
            req.headers.get("stripe-signature"),
            Some(format!("t={T},v1={V1}").as_str())
        );
        assert!(v.verify(req, at(T)).is_ok());
    }
}
