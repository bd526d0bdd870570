//! A shared token in a header (`X-Webhook-Token: <token>`, or `Authorization: Bearer <token>`
//! with `prefix: "Bearer "`), compared as a whole. Like basic auth it proves who sent the request,
//! not that the body is intact.
//!
//! Tokens are compared as SHA-256 digests with `subtle`, so the comparison takes the same time
//! whatever the length or the number of leading characters guessed right.

use std::fmt;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

use super::{BuildContext, InboundRequest, VerifyError, VerifySpecError, validate_header_name};
use crate::secret::Secret;

/// `verify: { scheme: token, header: X-Webhook-Token, secrets: [...] }`
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenSpec {
    /// The header carrying the token.
    pub header: String,
    /// Accepted tokens; any one matching is enough.
    pub secrets: Vec<String>,
    /// Text before the token, e.g. `"Bearer "`; matched case-insensitively. Default none.
    #[serde(default)]
    pub prefix: String,
}

impl TokenSpec {
    pub(super) fn build(&self, ctx: &mut BuildContext) -> Result<Token, VerifySpecError> {
        validate_header_name("verify.header", &self.header)?;
        let tokens = ctx.secrets(&self.secrets)?;
        Ok(Token {
            header: self.header.clone(),
            prefix: self.prefix.clone(),
            digests: tokens
                .iter()
                .map(|t| digest(t.expose().as_bytes()))
                .collect(),
            first: tokens
                .into_iter()
                .next()
                .expect("secrets() returns at least one"),
        })
    }
}

pub(super) struct Token {
    header: String,
    prefix: String,
    first: Secret,
    digests: Vec<[u8; 32]>,
}

/// By hand: a token's digest is as good as the token to an offline guesser.
impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("header", &self.header)
            .field("prefix", &self.prefix)
            .field("tokens", &self.digests.len())
            .finish_non_exhaustive()
    }
}

impl Token {
    pub(super) fn header(&self) -> String {
        self.header.to_ascii_lowercase()
    }

    pub(super) fn verify(&self, request: &InboundRequest) -> Result<(), VerifyError> {
        let value = request
            .headers
            .get(&self.header)
            .ok_or_else(|| VerifyError::MissingCredentials(self.header()))?;
        let value = value.trim();
        let token = value
            .get(..self.prefix.len())
            .filter(|head| head.eq_ignore_ascii_case(&self.prefix))
            .map(|_| &value[self.prefix.len()..])
            .ok_or(VerifyError::BadCredentials)?;
        let token = digest(token.as_bytes());
        let ok = self.digests.iter().fold(Choice::from(0), |any, expected| {
            any | expected.ct_eq(&token)
        });
        if bool::from(ok) {
            Ok(())
        } else {
            Err(VerifyError::BadCredentials)
        }
    }

    pub(super) fn sign(&self, request: &mut InboundRequest) {
        super::set_headers(
            request,
            vec![(
                self.header.as_str(),
                format!("{}{}", self.prefix, self.first.expose()),
            )],
        );
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::super::{VerifyError, VerifySpec, VerifySpecError};
    use crate::env::Env;

    const SPEC: &str = "{ scheme: token, header: X-Webhook-Token, secrets: [t0k3n-value] }";

    fn signed() -> crate::inbound::InboundRequest {
        request(&[("x-webhook-token", "t0k3n-value")], b"{}")
    }

    #[test]
    fn the_configured_token_is_accepted() {
        assert!(verifier(SPEC).verify(signed(), at(0)).is_ok());
    }

    #[test]
    fn a_wrong_token_a_prefix_of_it_or_a_longer_one_is_rejected() {
        for wrong in [
            "t0k3n-valuf",
            "t0k3n",
            "t0k3n-value-and-more",
            "T0K3N-VALUE",
        ] {
            let req = with_header(signed(), "X-Webhook-Token", wrong);
            assert_eq!(
                verifier(SPEC).verify(req, at(0)).unwrap_err(),
                VerifyError::BadCredentials,
                "{wrong}"
            );
        }
    }

    #[test]
    fn the_second_token_is_accepted_during_rotation() {
        let rotating = verifier(
            "{ scheme: token, header: X-Webhook-Token, secrets: [new-token, t0k3n-value] }",
        );
        assert!(rotating.verify(signed(), at(0)).is_ok());
    }

    #[test]
    fn a_missing_token_header_is_reported_as_missing_credentials() {
        let err = verifier(SPEC)
            .verify(request(&[], b"{}"), at(0))
            .unwrap_err();
        assert_eq!(
            err,
            VerifyError::MissingCredentials("x-webhook-token".into())
        );
    }

    #[test]
    fn a_bearer_token_needs_its_prefix() {
        let bearer = verifier(
            r#"{ scheme: token, header: Authorization, prefix: "Bearer ", secrets: [abc] }"#,
        );
        assert!(
            bearer
                .verify(request(&[("Authorization", "Bearer abc")], b""), at(0))
                .is_ok()
        );
        assert!(
            bearer
                .verify(request(&[("Authorization", "bearer abc")], b""), at(0))
                .is_ok()
        );
        for garbled in ["abc", "Basic abc", "Bearer", "Bé"] {
            let err = bearer
                .verify(request(&[("Authorization", garbled)], b""), at(0))
                .unwrap_err();
            assert_eq!(err, VerifyError::BadCredentials, "{garbled}");
        }
    }

    #[test]
    fn an_invalid_header_name_is_refused_at_load() {
        let spec: VerifySpec =
            serde_yaml_ng::from_str("{ scheme: token, header: 'X Token', secrets: [t] }").unwrap();
        let err = spec.build(&Env::default()).unwrap_err();
        assert!(
            matches!(&err, VerifySpecError::Invalid { field, .. } if field == "verify.header"),
            "{err}"
        );
    }

    #[test]
    fn sign_then_verify_round_trips() {
        let v = verifier(
            r#"{ scheme: token, header: Authorization, prefix: "Bearer ", secrets: [abc, def] }"#,
        );
        let mut req = request(&[("Authorization", "Bearer stale")], b"{}");
        v.sign(&mut req, at(0));
        assert_eq!(req.headers.get("authorization"), Some("Bearer abc"));
        assert!(v.verify(req, at(0)).is_ok());
    }
}
