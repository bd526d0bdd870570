//! Standard Webhooks (and Svix, which it grew out of): the signature is the base64
//! HMAC-SHA256 of `"{webhook-id}.{webhook-timestamp}.{body}"`, and `webhook-signature` holds one
//! or more space-separated `v1,<base64>` entries (several while a secret is being rotated).
//!
//! Pitfall: the secret is `whsec_` followed by base64; the key is the DECODED bytes, not the
//! string (the opposite of Stripe). A secret without the prefix is decoded the same way, as the
//! reference libraries do. Svix's original `svix-id` / `svix-timestamp` / `svix-signature`
//! header names are accepted when the `webhook-*` ones are absent.
//!
//! The asymmetric variant signs the same message with Ed25519: entries read `v1a,<base64 of the
//! 64-byte signature>` and the sender publishes a `whpk_<base64 of the 32-byte key>` public key
//! (`public_keys:`). A source may list both secrets and public keys; any matching entry passes.

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
const PUBLIC_KEY_PREFIX: &str = "whpk_";
/// `v1a` entries checked per request: each costs an Ed25519 verification per public key, so a
/// header stuffed with entries cannot buy unbounded work (rotation needs two or three).
const MAX_V1A_ENTRIES: usize = 8;

/// `verify: { scheme: standard-webhooks, secrets: ["whsec_..."], tolerance_secs: 300 }`
/// (`scheme: svix` is accepted as an alias).
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StandardWebhooksSpec {
    /// Signing secrets, `whsec_<base64>` (symmetric `v1` signatures).
    #[serde(default)]
    pub secrets: Vec<String>,
    /// Ed25519 public keys, `whpk_<base64>` (asymmetric `v1a` signatures).
    #[serde(default)]
    pub public_keys: Vec<String>,
    /// How far `webhook-timestamp` may be from now, in either direction.
    #[serde(default = "default_tolerance_secs")]
    pub tolerance_secs: u64,
}

impl StandardWebhooksSpec {
    pub(super) fn build(
        &self,
        ctx: &mut BuildContext,
    ) -> Result<StandardWebhooks, VerifySpecError> {
        let public_keys = self.public_keys(ctx)?;
        if !public_keys.is_empty() && self.secrets.is_empty() {
            return Ok(StandardWebhooks {
                keys: Vec::new(),
                public_keys,
                tolerance_secs: self.tolerance_secs,
            });
        }
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
            public_keys,
            tolerance_secs: self.tolerance_secs,
        })
    }

    /// `public_keys`, each `whpk_` + base64 of a 32-byte Ed25519 key (the prefix is optional, as
    /// for secrets).
    fn public_keys(
        &self,
        ctx: &mut BuildContext,
    ) -> Result<Vec<ed25519_dalek::VerifyingKey>, VerifySpecError> {
        self.public_keys
            .iter()
            .enumerate()
            .map(|(i, raw)| {
                let field = format!("verify.public_keys[{i}]");
                let value = ctx.resolve(&field, raw)?;
                let encoded = value
                    .expose()
                    .strip_prefix(PUBLIC_KEY_PREFIX)
                    .unwrap_or(value.expose());
                let bytes: [u8; 32] = STANDARD
                    .decode(encoded)
                    .ok()
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| VerifySpecError::BadSecret {
                        field: field.clone(),
                        reason: "expected whpk_ followed by the base64 of a 32-byte Ed25519 key"
                            .to_string(),
                    })?;
                ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(|_| {
                    VerifySpecError::BadSecret {
                        field,
                        reason: "not a valid Ed25519 public key".to_string(),
                    }
                })
            })
            .collect()
    }
}

#[derive(Debug)]
pub(super) struct StandardWebhooks {
    keys: Vec<Key>,
    /// Ed25519 keys for `v1a` entries.
    public_keys: Vec<ed25519_dalek::VerifyingKey>,
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
        let mut candidates: Vec<Vec<u8>> = Vec::new();
        let mut asymmetric: Vec<ed25519_dalek::Signature> = Vec::new();
        for (version, sig) in entries.iter().filter_map(|entry| entry.split_once(',')) {
            // An undecodable entry cannot match; skipping it lets the others count.
            match (version, STANDARD.decode(sig)) {
                ("v1", Ok(tag)) => candidates.push(tag),
                ("v1a", Ok(sig)) if asymmetric.len() < MAX_V1A_ENTRIES => {
                    if let Ok(sig) = <[u8; 64]>::try_from(sig.as_slice()) {
                        asymmetric.push(ed25519_dalek::Signature::from_bytes(&sig));
                    }
                }
                _ => {}
            }
        }
        if candidates.is_empty() && asymmetric.is_empty() {
            return Err(VerifyError::bad_format(
                sig_name,
                "no v1,<base64> or v1a,<base64> signature",
            ));
        }
        let signed_at = timestamp::parse_unix_secs(ts_name, ts)?;
        timestamp::check_window(signed_at, now, self.tolerance_secs)?;
        let parts: [&[u8]; 5] = [id.as_bytes(), b".", ts.as_bytes(), b".", &request.body];
        let symmetric_ok = super::any_hmac_sha256_matches(&self.keys, &parts, &candidates);
        if symmetric_ok || self.any_ed25519_matches(&parts, &asymmetric) {
            Ok(())
        } else {
            Err(VerifyError::Mismatch)
        }
    }

    /// Whether any `v1a` signature verifies under any public key (strict verification: no
    /// malleable or small-order signatures).
    fn any_ed25519_matches(
        &self,
        parts: &[&[u8]],
        signatures: &[ed25519_dalek::Signature],
    ) -> bool {
        if signatures.is_empty() || self.public_keys.is_empty() {
            return false;
        }
        let message = parts.concat();
        signatures.iter().any(|sig| {
            self.public_keys
                .iter()
                .any(|key| key.verify_strict(&message, sig).is_ok())
        })
    }

    pub(super) fn sign(&self, request: &mut InboundRequest, now: SystemTime) {
        let id = match request.headers.get(STANDARD_NAMES[0]) {
            Some(id) => id.to_string(),
            None => new_message_id(now),
        };
        let ts = timestamp::since_epoch(now).as_secs().to_string();
        // With only public keys there is nothing to sign with (the private key is the sender's).
        let Some(key) = self.keys.first() else { return };
        let tag = super::hmac_sha256_bytes(
            key,
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
    fn a_changed_message_id_breaks_the_signature() {
        let req = with_header(signed(), "webhook-id", "msg_other");
        assert_eq!(
            verifier(SPEC).verify(req, at(TS)).unwrap_err(),
            VerifyError::Mismatch
        );
    }

    #[test]
    fn a_signature_header_without_a_v1_entry_or_a_bad_timestamp_is_malformed() {
        assert_each_malformed(
            SPEC,
            signed,
            at(TS),
            &[
                ("webhook-signature", "garbage"),
                ("webhook-signature", "v1,!!!notbase64"),
                (
                    "webhook-signature",
                    "v2,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
                ),
                ("webhook-timestamp", "yesterday"),
            ],
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

    /// The asymmetric test vector of the Standard Webhooks reference libraries
    /// (`libraries/go/webhook_asymmetric_test.go`, `TestAsymmetricWebhookSign`): the signing
    /// key's seed, and the `v1a` signature of the same id, timestamp and body as above.
    const ASYMMETRIC_SEED: &str = "VEVTVFNJR05JTkdLRVlET05PVFVTRVRISVNGT1JBTlk=";
    const PUBLISHED_V1A: &str = "v1a,tQ9V2XOqn7jL/DQenEFpqIugdBVtiMmER5mhSkXBNwM0mkATuDe6KYYUuxqtaiHeYGb7KaaBRdM5WqyeFiL8Ag==";

    fn signing_key() -> ed25519_dalek::SigningKey {
        use base64::Engine as _;
        let seed: [u8; 32] = base64::engine::general_purpose::STANDARD
            .decode(ASYMMETRIC_SEED)
            .unwrap()
            .try_into()
            .unwrap();
        ed25519_dalek::SigningKey::from_bytes(&seed)
    }

    fn public_key() -> String {
        use base64::Engine as _;
        format!(
            "whpk_{}",
            base64::engine::general_purpose::STANDARD
                .encode(signing_key().verifying_key().as_bytes())
        )
    }

    fn asymmetric_spec() -> String {
        format!(
            "{{ scheme: standard-webhooks, public_keys: [{}] }}",
            public_key()
        )
    }

    #[test]
    fn the_published_asymmetric_vector_is_reproduced_and_accepted() {
        use base64::Engine as _;
        use ed25519_dalek::Signer as _;
        let message = [ID.as_bytes(), b".", TS.to_string().as_bytes(), b".", BODY].concat();
        let signature = signing_key().sign(&message);
        let ours = format!(
            "v1a,{}",
            base64::engine::general_purpose::STANDARD.encode(signature.to_bytes())
        );
        assert_eq!(ours, PUBLISHED_V1A);
        let req = with_header(signed(), "webhook-signature", PUBLISHED_V1A);
        assert!(verifier(&asymmetric_spec()).verify(req, at(TS)).is_ok());
    }

    #[test]
    fn a_v1a_signature_over_a_tampered_body_or_id_is_rejected() {
        let v = verifier(&asymmetric_spec());
        let req = with_header(signed(), "webhook-signature", PUBLISHED_V1A);
        let tampered = with_body(req, br#"{"test": 2432232315}"#);
        assert_eq!(
            v.verify(tampered, at(TS)).unwrap_err(),
            VerifyError::Mismatch
        );
        let req = with_header(signed(), "webhook-signature", PUBLISHED_V1A);
        let other_id = with_header(req, "webhook-id", "msg_other");
        assert_eq!(
            v.verify(other_id, at(TS)).unwrap_err(),
            VerifyError::Mismatch
        );
    }

    #[test]
    fn v1a_entries_of_the_wrong_length_are_skipped_and_the_valid_one_counts() {
        // The reference libraries' "invalid signature" (a 32-byte value under v1a) and an empty one.
        let header =
            format!("v1a,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= v1a, v2,xyz {PUBLISHED_V1A}");
        let req = with_header(signed(), "webhook-signature", &header);
        assert!(verifier(&asymmetric_spec()).verify(req, at(TS)).is_ok());
        let only_bad = with_header(
            signed(),
            "webhook-signature",
            "v1a,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=",
        );
        assert_eq!(
            verifier(&asymmetric_spec())
                .verify(only_bad, at(TS))
                .unwrap_err()
                .code(),
            "malformed_signature_header"
        );
    }

    #[test]
    fn a_v1_signature_does_not_pass_a_public_key_only_source_and_both_kinds_can_coexist() {
        assert_eq!(
            verifier(&asymmetric_spec())
                .verify(signed(), at(TS))
                .unwrap_err(),
            VerifyError::Mismatch
        );
        let both = format!(
            "{{ scheme: standard-webhooks, secrets: [whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw], public_keys: [{}] }}",
            public_key()
        );
        assert!(verifier(&both).verify(signed(), at(TS)).is_ok());
        let req = with_header(signed(), "webhook-signature", PUBLISHED_V1A);
        assert!(verifier(&both).verify(req, at(TS)).is_ok());
    }

    #[test]
    fn a_public_key_that_is_not_32_bytes_of_base64_is_refused_at_load_naming_the_field() {
        for bad in ["whpk_not*base64", "whpk_c2VjcmV0"] {
            let spec: VerifySpec = serde_yaml_ng::from_str(&format!(
                "{{ scheme: standard-webhooks, public_keys: [{bad}] }}"
            ))
            .unwrap();
            let err = spec.build(&Env::default()).unwrap_err();
            assert!(
                matches!(&err, VerifySpecError::BadSecret { field, .. } if field == "verify.public_keys[0]"),
                "{err:?}"
            );
        }
        let none: VerifySpec = serde_yaml_ng::from_str("{ scheme: standard-webhooks }").unwrap();
        assert!(matches!(
            none.build(&Env::default()).unwrap_err(),
            VerifySpecError::NoSecrets { .. }
        ));
    }

    #[test]
    fn at_most_eight_v1a_entries_are_checked() {
        // A ninth entry makes the whole header malformed: nothing is checked at all.
        let filler = format!("v1a,{}==", "A".repeat(86));
        let late = format!("{} {PUBLISHED_V1A}", [filler.as_str(); 8].join(" "));
        let req = with_header(signed(), "webhook-signature", &late);
        assert_eq!(
            verifier(&asymmetric_spec())
                .verify(req, at(TS))
                .unwrap_err()
                .code(),
            "malformed_signature_header"
        );
        let early = format!("{} {PUBLISHED_V1A}", [filler.as_str(); 7].join(" "));
        let req = with_header(signed(), "webhook-signature", &early);
        assert!(verifier(&asymmetric_spec()).verify(req, at(TS)).is_ok());
    }
}
