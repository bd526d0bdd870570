//! HTTP Basic authentication: `Authorization: Basic base64(username:password)`, for senders
//! that can only attach credentials (Zendesk's and many CRMs' "basic auth" option). It proves
//! who sent the request, not that the body is intact; prefer a signature scheme when the
//! provider offers one.
//!
//! Each `secrets` entry is an accepted password for the single configured username (rotation).
//! Username and password are compared as SHA-256 digests with `subtle`, so neither the
//! comparison time nor an early exit on the username reveals how much of a guess was right.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

use super::{BuildContext, InboundRequest, VerifyError, VerifySpecError};
use crate::secret::Secret;

const HEADER: &str = "Authorization";

/// `verify: { scheme: basic, username: "...", secrets: [passwords...] }`
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BasicSpec {
    /// May contain `${ENV}` references.
    pub username: String,
    /// Accepted passwords; any one matching is enough.
    pub secrets: Vec<String>,
}

impl BasicSpec {
    pub(super) fn build(&self, ctx: &mut BuildContext) -> Result<Basic, VerifySpecError> {
        let username = ctx.resolve("verify.username", &self.username)?;
        if username.expose().contains(':') {
            return Err(VerifySpecError::Invalid {
                field: "verify.username".to_string(),
                reason: "a Basic-auth username cannot contain ':'".to_string(),
            });
        }
        let passwords = ctx.secrets(&self.secrets)?;
        Ok(Basic {
            username_digest: digest(username.expose().as_bytes()),
            password_digests: passwords
                .iter()
                .map(|p| digest(p.expose().as_bytes()))
                .collect(),
            username,
            first_password: passwords
                .into_iter()
                .next()
                .expect("secrets() returns at least one"),
        })
    }
}

pub(super) struct Basic {
    username: Secret,
    first_password: Secret,
    username_digest: [u8; 32],
    password_digests: Vec<[u8; 32]>,
}

/// By hand: a password's digest is as good as the password to an offline guesser.
impl fmt::Debug for Basic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Basic")
            .field("username", &self.username)
            .field("passwords", &self.password_digests.len())
            .finish_non_exhaustive()
    }
}

impl Basic {
    pub(super) fn verify(&self, request: &InboundRequest) -> Result<(), VerifyError> {
        let header = request
            .headers
            .get(HEADER)
            .ok_or_else(|| VerifyError::MissingCredentials(HEADER.to_ascii_lowercase()))?;
        // Anything other than a well-formed `Basic <base64 user:pass>` is simply bad
        // credentials; the response says nothing about which part was wrong.
        let (user, password) = parse(header).ok_or(VerifyError::BadCredentials)?;
        let user_ok = self.username_digest.ct_eq(&digest(&user));
        let password = digest(&password);
        let password_ok = self
            .password_digests
            .iter()
            .fold(Choice::from(0), |any, expected| {
                any | expected.ct_eq(&password)
            });
        if bool::from(user_ok & password_ok) {
            Ok(())
        } else {
            Err(VerifyError::BadCredentials)
        }
    }

    pub(super) fn sign(&self, request: &mut InboundRequest) {
        let credentials = format!(
            "{}:{}",
            self.username.expose(),
            self.first_password.expose()
        );
        super::set_headers(
            request,
            vec![(HEADER, format!("Basic {}", STANDARD.encode(credentials)))],
        );
    }
}

/// `Basic <base64>` (scheme case-insensitive) into the user and password bytes.
fn parse(header: &str) -> Option<(Vec<u8>, Vec<u8>)> {
    let (scheme, encoded) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = STANDARD.decode(encoded.trim()).ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    Some((decoded[..colon].to_vec(), decoded[colon + 1..].to_vec()))
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::super::{VerifyError, VerifySpec, VerifySpecError};
    use crate::env::Env;

    const SPEC: &str = "{ scheme: basic, username: Aladdin, secrets: [open sesame] }";
    /// RFC 7617's example credentials.
    const PUBLISHED: &str = "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==";

    fn signed() -> crate::inbound::InboundRequest {
        request(&[("Authorization", PUBLISHED)], b"{}")
    }

    #[test]
    fn the_rfc_7617_example_credentials_are_accepted() {
        assert!(verifier(SPEC).verify(signed(), at(0)).is_ok());
        let lower_scheme = with_header(
            signed(),
            "Authorization",
            "basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==",
        );
        assert!(verifier(SPEC).verify(lower_scheme, at(0)).is_ok());
    }

    #[test]
    fn the_body_is_not_covered_so_any_body_passes_with_good_credentials() {
        assert!(
            verifier(SPEC)
                .verify(with_body(signed(), b"anything"), at(0))
                .is_ok()
        );
    }

    #[test]
    fn a_wrong_password_or_username_is_rejected() {
        let wrong_password =
            verifier("{ scheme: basic, username: Aladdin, secrets: [close sesame] }");
        assert_eq!(
            wrong_password.verify(signed(), at(0)).unwrap_err(),
            VerifyError::BadCredentials
        );
        let wrong_user = verifier("{ scheme: basic, username: Ali, secrets: [open sesame] }");
        assert_eq!(
            wrong_user.verify(signed(), at(0)).unwrap_err(),
            VerifyError::BadCredentials
        );
    }

    #[test]
    fn the_second_password_is_accepted_during_rotation() {
        let rotating =
            verifier("{ scheme: basic, username: Aladdin, secrets: [new password, open sesame] }");
        assert!(rotating.verify(signed(), at(0)).is_ok());
    }

    #[test]
    fn a_missing_authorization_header_is_reported_as_missing_credentials() {
        let err = verifier(SPEC)
            .verify(request(&[], b"{}"), at(0))
            .unwrap_err();
        assert_eq!(err, VerifyError::MissingCredentials("authorization".into()));
        assert_eq!(err.code(), "missing_credentials");
    }

    #[test]
    fn a_garbled_authorization_header_is_just_bad_credentials() {
        for garbled in [
            "Bearer QWxhZGRpbjpvcGVuIHNlc2FtZQ==",
            "Basic !!!",
            "Basic QWxhZGRpbg==",
            "Basic",
            "",
        ] {
            let err = verifier(SPEC)
                .verify(with_header(signed(), "Authorization", garbled), at(0))
                .unwrap_err();
            assert_eq!(err, VerifyError::BadCredentials, "{garbled:?}");
        }
    }

    #[test]
    fn a_username_with_a_colon_is_refused_at_load() {
        let spec: VerifySpec =
            serde_yaml_ng::from_str("{ scheme: basic, username: 'a:b', secrets: [p] }").unwrap();
        let err = spec.build(&Env::default()).unwrap_err();
        assert!(
            matches!(&err, VerifySpecError::Invalid { field, .. } if field == "verify.username"),
            "{err}"
        );
    }

    #[test]
    fn a_username_from_a_default_counts_as_a_default_secret() {
        let spec: VerifySpec = serde_yaml_ng::from_str(
            "{ scheme: basic, username: '${HOOK_USER:-dev}', secrets: [p] }",
        )
        .unwrap();
        assert!(spec.build(&Env::default()).unwrap().uses_default_secret());
        let env = Env::from_pairs([("HOOK_USER", "prod")]);
        assert!(!spec.build(&env).unwrap().uses_default_secret());
    }

    #[test]
    fn sign_then_verify_round_trips() {
        let v = verifier(SPEC);
        let mut req = request(&[], b"{}");
        v.sign(&mut req, at(0));
        assert_eq!(req.headers.get("authorization"), Some(PUBLISHED));
        assert!(v.verify(req, at(0)).is_ok());
    }
}
