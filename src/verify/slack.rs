//! Slack: `X-Slack-Signature` is `v0=` followed by the hex HMAC-SHA256 of
//! `"v0:{X-Slack-Request-Timestamp}:{body}"`, keyed with the app's signing secret.

use std::time::SystemTime;

use serde::Deserialize;

use super::timestamp::{self, default_tolerance_secs};
use super::{BuildContext, InboundRequest, Key, VerifyError, VerifySpecError};

const SIGNATURE_HEADER: &str = "X-Slack-Signature";
const TIMESTAMP_HEADER: &str = "X-Slack-Request-Timestamp";
const VERSION: &str = "v0";
pub(super) const CREDENTIAL_HEADERS: &[&str] = &[SIGNATURE_HEADER];

/// `verify: { scheme: slack, secrets: [...], tolerance_secs: 300 }`
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SlackSpec {
    /// Signing secrets (not the deprecated verification token).
    pub secrets: Vec<String>,
    /// How far the request timestamp may be from now, in either direction.
    #[serde(default = "default_tolerance_secs")]
    pub tolerance_secs: u64,
}

impl SlackSpec {
    pub(super) fn build(&self, ctx: &mut BuildContext) -> Result<Slack, VerifySpecError> {
        Ok(Slack {
            keys: ctx.keys(&self.secrets)?,
            tolerance_secs: self.tolerance_secs,
        })
    }
}

#[derive(Debug)]
pub(super) struct Slack {
    keys: Vec<Key>,
    tolerance_secs: u64,
}

impl Slack {
    pub(super) fn verify(
        &self,
        request: &InboundRequest,
        now: SystemTime,
    ) -> Result<(), VerifyError> {
        let header = super::required_header(request, SIGNATURE_HEADER)?;
        let ts = super::required_header(request, TIMESTAMP_HEADER)?;
        let tag = header
            .trim()
            .strip_prefix("v0=")
            .ok_or_else(|| VerifyError::bad_format(SIGNATURE_HEADER, "expected v0=<hex>"))
            .and_then(|hex_tag| {
                hex::decode(hex_tag)
                    .map_err(|_| VerifyError::bad_format(SIGNATURE_HEADER, "not hex"))
            })?;
        let signed_at = timestamp::parse_unix_secs(TIMESTAMP_HEADER, ts)?;
        timestamp::check_window(signed_at, now, self.tolerance_secs)?;
        let parts: [&[u8]; 5] = [VERSION.as_bytes(), b":", ts.as_bytes(), b":", &request.body];
        super::check_hmac_sha256(&self.keys, &parts, &[&tag])
    }

    pub(super) fn sign(&self, request: &mut InboundRequest, now: SystemTime) {
        let ts = timestamp::since_epoch(now).as_secs().to_string();
        let tag = super::hmac_sha256_bytes(
            &self.keys[0],
            &[VERSION.as_bytes(), b":", ts.as_bytes(), b":", &request.body],
        );
        super::set_headers(
            request,
            vec![
                (TIMESTAMP_HEADER, ts),
                (SIGNATURE_HEADER, format!("{VERSION}={}", hex::encode(tag))),
            ],
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::VerifyError;
    use super::super::test_support::*;

    const SPEC: &str = "{ scheme: slack, secrets: [8f742231b10e8888abcd99yyyzzz85a5] }";
    const TS: u64 = 1_531_420_618;
    /// The slash-command body from Slack's "Verifying requests from Slack" walkthrough.
    const BODY: &[u8] = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
    /// The signature Slack's docs give for that body, secret and timestamp.
    const PUBLISHED: &str = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";

    fn signed() -> crate::inbound::InboundRequest {
        request(
            &[
                ("X-Slack-Request-Timestamp", &TS.to_string()),
                ("X-Slack-Signature", PUBLISHED),
            ],
            BODY,
        )
    }

    #[test]
    fn a_changed_timestamp_breaks_the_signature() {
        let req = with_header(signed(), "X-Slack-Request-Timestamp", &(TS + 1).to_string());
        assert_eq!(
            verifier(SPEC).verify(req, at(TS)).unwrap_err(),
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
                (
                    "X-Slack-Signature",
                    "a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503",
                ),
                ("X-Slack-Signature", "v0=not-hex"),
                ("X-Slack-Request-Timestamp", "soon"),
            ],
        );
    }

    #[test]
    fn sign_then_verify_round_trips() {
        let v = verifier(SPEC);
        let mut req = request(&[], BODY);
        v.sign(&mut req, at(TS));
        assert_eq!(req.headers.get("x-slack-signature"), Some(PUBLISHED));
        assert!(v.verify(req, at(TS)).is_ok());
    }
}
