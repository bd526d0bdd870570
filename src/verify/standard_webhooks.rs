//! Standard Webhooks (and Svix, which it grew out of): the signature is the base64
//! HMAC-SHA256 of `"{webhook-id}.{webhook-timestamp}.{body}"`, and `webhook-signature` holds one
//! or more space-separated `v1,<base64>` entries (several while a secret is being rotated).
//!
//! Pitfall: the secret is `whsec_` followed by base64; the key is the DECODED bytes, not the
//! string (the opposite of Stripe). A secret without the prefix is decoded the same way, as the
//! reference libraries do. Svix's original `svix-id` / `svix-timestamp` / `svix-signature`
//! header names are accepted when the `webhook-*` ones are absent.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;

use super::timestamp::{self, default_tolerance_secs};
use super::{BuildContext, InboundRequest, Key, VerifyError, VerifySpecError};

/// `(id, timestamp, signature)` header names, standard first.
const STANDARD_NAMES: [&str; 3] = ["webhook-id", "webhook-timestamp", "webhook-signature"];
const SVIX_NAMES: [&str; 3] = ["svix-id", "svix-timestamp", "svix-signature"];
pub(super) const CREDENTIAL_HEADERS: &[&str] = &["webhook-signature", "svix-signature"];
const SECRET_PREFIX: &str = "whsec_";

/// `verify: { scheme: standard-webhooks, secrets: ["whsec_..."], tolerance_secs: 300 }`
/// (`scheme: svix` is accepted as an alias).
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StandardWebhooksSpec {
    /// Signing secrets, `whsec_<base64>`.
    pub secrets: Vec<String>,
    /// How far `webhook-timestamp` may be from now, in either direction.
    #[serde(default = "default_tolerance_secs")]
    pub tolerance_secs: u64,
}

impl StandardWebhooksSpec {
    pub(super) fn build(
        &self,
        ctx: &mut BuildContext,
    ) -> Result<StandardWebhooks, VerifySpecError> {
        let keys = ctx
            .secrets(&self.secrets)?
            .iter()
            .enumerate()
            .map(|(i, secret)| {
                let encoded = secret
                    .expose()
                    .strip_prefix(SECRET_PREFIX)
                    .unwrap_or(secret.expose());
                let bad = |reason: &str| VerifySpecError::BadSecret {
                    field: format!("verify.secrets[{i}]"),
                    reason: reason.to_string(),
                };
                let key = STANDARD
                    .decode(encoded)
                    .map_err(|_| bad("expected whsec_ followed by base64"))?;
                if key.is_empty() {
                    return Err(bad("the key after whsec_ is empty"));
                }
                Ok(Key(key))
            })
            .collect::<Result<_, _>>()?;
        Ok(StandardWebhooks {
            keys,
            tolerance_secs: self.tolerance_secs,
        })
    }
}

#[derive(Debug)]
pub(super) struct StandardWebhooks {
    keys: Vec<Key>,
    tolerance_secs: u64,
}

impl StandardWebhooks {
    pub(super) fn verify(
        &self,
        request: &InboundRequest,
        now: SystemTime,
    ) -> Result<(), VerifyError> {
        // One naming family for all three headers, never a mix.
        let [id_name, ts_name, sig_name] = if request.headers.get(STANDARD_NAMES[2]).is_none()
            && request.headers.get(SVIX_NAMES[2]).is_some()
        {
            SVIX_NAMES
        } else {
            STANDARD_NAMES
        };
        let signatures = super::required_header(request, sig_name)?;
        let id = super::required_header(request, id_name)?;
        let ts = super::required_header(request, ts_name)?;
        // Entries are counted before any is decoded, so a header of thousands of entries is
        // refused without work.
        let entries: Vec<&str> = signatures
            .split_whitespace()
            .take(super::MAX_SIGNATURE_CANDIDATES + 1)
            .collect();
        super::check_candidate_count(sig_name, entries.len())?;
        let candidates: Vec<Vec<u8>> = entries
            .iter()
            .filter_map(|entry| entry.split_once(','))
            .filter(|(version, _)| *version == "v1")
            // An undecodable entry cannot match; skipping it lets the others count.
            .filter_map(|(_, sig)| STANDARD.decode(sig).ok())
            .collect();
        if candidates.is_empty() {
            return Err(VerifyError::bad_format(
                sig_name,
                "no v1,<base64> signature",
            ));
        }
        let signed_at = timestamp::parse_unix_secs(ts_name, ts)?;
        timestamp::check_window(signed_at, now, self.tolerance_secs)?;
        let parts: [&[u8]; 5] = [id.as_bytes(), b".", ts.as_bytes(), b".", &request.body];
        if super::any_hmac_sha256_matches(&self.keys, &parts, &candidates) {
            Ok(())
        } else {
            Err(VerifyError::Mismatch)
        }
    }

    pub(super) fn sign(&self, request: &mut InboundRequest, now: SystemTime) {
        let id = match request.headers.get(STANDARD_NAMES[0]) {
            Some(id) => id.to_string(),
            None => new_message_id(now),
        };
        let ts = timestamp::since_epoch(now).as_secs().to_string();
        let tag = super::hmac_sha256_bytes(
            &self.keys[0],
            &[id.as_bytes(), b".", ts.as_bytes(), b".", &request.body],
        );
        let [id_name, ts_name, sig_name] = STANDARD_NAMES;
        super::set_headers(
            request,
            vec![
                (id_name, id),
                (ts_name, ts),
                (sig_name, format!("v1,{}", STANDARD.encode(tag))),
            ],
        );
    }
}

/// A unique-enough `msg_...` id for samples: the clock's nanoseconds plus a process-wide
/// counter, so two samples signed in the same instant still differ.
fn new_message_id(now: SystemTime) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("msg_{:x}{n:04x}", timestamp::since_epoch(now).as_nanos())
}

#[cfg(test)]
mod tests {
    use super::super::VerifyError;
    use super::super::test_support::*;
    use super::super::{VerifySpec, VerifySpecError};
    use crate::env::Env;

    const SPEC: &str =
        "{ scheme: standard-webhooks, secrets: [whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw] }";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: u64 = 1_614_265_330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    /// The test vector of the Standard Webhooks spec and the svix libraries.
    const PUBLISHED: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn signed() -> crate::inbound::InboundRequest {
        request(
            &[
                ("webhook-id", ID),
                ("webhook-timestamp", &TS.to_string()),
                ("webhook-signature", PUBLISHED),
            ],
            BODY,
        )
    }

    #[test]
    fn the_published_test_vector_is_accepted() {
        assert!(verifier(SPEC).verify(signed(), at(TS)).is_ok());
    }

    #[test]
    fn the_svix_header_names_are_accepted() {
        let req = request(
            &[
                ("svix-id", ID),
                ("svix-timestamp", &TS.to_string()),
                ("svix-signature", PUBLISHED),
            ],
            BODY,
        );
        assert!(verifier(SPEC).verify(req, at(TS)).is_ok());
        assert!(
            verifier("{ scheme: svix, secrets: [whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw] }")
                .verify(signed(), at(TS))
                .is_ok()
        );
    }

    #[test]
    fn a_secret_without_the_whsec_prefix_is_decoded_the_same_way() {
        let bare =
            verifier("{ scheme: standard-webhooks, secrets: [MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw] }");
        assert!(bare.verify(signed(), at(TS)).is_ok());
    }

    #[test]
    fn any_of_several_space_separated_signatures_may_match() {
        let header = format!("v1a,ignored v1,{} {PUBLISHED} v2,xyz", "A".repeat(44));
        let req = with_header(signed(), "webhook-signature", &header);
        assert!(verifier(SPEC).verify(req, at(TS)).is_ok());
    }

    #[test]
    fn a_tampered_body_is_rejected() {
        let tampered = with_body(signed(), br#"{"test": 2432232315}"#);
        assert_eq!(
            verifier(SPEC).verify(tampered, at(TS)).unwrap_err(),
            VerifyError::Mismatch
        );
    }

    #[test]
    fn a_changed_message_id_breaks_the_signature() {
        let req = with_header(signed(), "webhook-id", "msg_other");
        assert_eq!(
            verifier(SPEC).verify(req, at(TS)).unwrap_err(),
            VerifyError::Mismatch
        );
    }

    #[test]
    fn a_signature_made_with_another_secret_is_rejected() {
        let other = verifier("{ scheme: standard-webhooks, secrets: [whsec_c2VjcmV0] }");
        assert_eq!(
            other.verify(signed(), at(TS)).unwrap_err(),
            VerifyError::Mismatch
        );
    }

    #[test]
    fn the_second_secret_is_accepted_during_rotation() {
        let rotating = verifier(
            "{ scheme: standard-webhooks, secrets: [whsec_c2VjcmV0, whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw] }",
        );
        assert!(rotating.verify(signed(), at(TS)).is_ok());
    }

    #[test]
    fn each_missing_header_is_reported_by_name() {
        for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
            let err = verifier(SPEC)
                .verify(without_header(signed(), name), at(TS))
                .unwrap_err();
            assert_eq!(err, VerifyError::MissingHeader(name.into()));
        }
    }

    #[test]
    fn a_signature_header_without_a_v1_entry_or_a_bad_timestamp_is_malformed() {
        for (name, value) in [
            ("webhook-signature", "garbage"),
            ("webhook-signature", "v1,!!!notbase64"),
            (
                "webhook-signature",
                "v2,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            ),
            ("webhook-timestamp", "yesterday"),
        ] {
            let err = verifier(SPEC)
                .verify(with_header(signed(), name, value), at(TS))
                .unwrap_err();
            assert_eq!(err.code(), "malformed_signature_header", "{name}: {value}");
        }
    }

    #[test]
    fn a_timestamp_older_than_the_tolerance_is_stale() {
        assert_eq!(
            verifier(SPEC).verify(signed(), at(TS + 301)).unwrap_err(),
            VerifyError::StaleTimestamp
        );
    }

    #[test]
    fn a_timestamp_beyond_the_tolerance_in_the_future_is_rejected() {
        assert_eq!(
            verifier(SPEC).verify(signed(), at(TS - 301)).unwrap_err(),
            VerifyError::FutureTimestamp
        );
    }

    #[test]
    fn a_secret_that_is_not_base64_is_refused_at_load_naming_the_field() {
        let spec: VerifySpec = serde_yaml_ng::from_str(
            "{ scheme: standard-webhooks, secrets: [whsec_c2VjcmV0, whsec_not*base64] }",
        )
        .unwrap();
        let err = spec.build(&Env::default()).unwrap_err();
        assert!(
            matches!(&err, VerifySpecError::BadSecret { field, .. } if field == "verify.secrets[1]"),
            "{err:?}"
        );
        assert!(!err.to_string().contains("not*base64"));
    }

    #[test]
    fn sign_then_verify_round_trips_and_keeps_an_existing_id() {
        let v = verifier(SPEC);
        let mut req = request(&[("webhook-id", ID)], BODY);
        v.sign(&mut req, at(TS));
        assert_eq!(req.headers.get("webhook-signature"), Some(PUBLISHED));
        assert!(v.verify(req, at(TS)).is_ok());
    }

    #[test]
    fn sign_adds_a_fresh_message_id_when_there_is_none() {
        let v = verifier(SPEC);
        let (mut first, mut second) = (request(&[], BODY), request(&[], BODY));
        v.sign(&mut first, at(TS));
        v.sign(&mut second, at(TS));
        let id = first.headers.get("webhook-id").unwrap().to_string();
        assert!(id.starts_with("msg_"));
        assert_ne!(Some(id.as_str()), second.headers.get("webhook-id"));
        assert!(v.verify(first, at(TS)).is_ok());
    }
}
