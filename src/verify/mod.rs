//! Proving that a webhook came from the provider it claims to come from.
//!
//! A mapping file's `verify:` block ([`VerifySpec`]) is built once at load into a [`Verifier`];
//! the ingress handler calls [`Verifier::verify`] on every request and only gets a
//! [`Verified`] request back when the check passes, so an unverified payload cannot reach a
//! queue by mistake.
//!
//! Invariants every scheme keeps:
//! - The signature is computed over the body's raw bytes as received, before any parsing.
//! - Signatures are compared in constant time (`subtle`).
//! - The work one request causes is bounded by the configured secrets, never by the request:
//!   each secret's MAC is computed at most once per request, a candidate of the wrong length or
//!   encoding is dropped without hashing, and a header with more than
//!   [`MAX_SIGNATURE_CANDIDATES`] candidates is refused before anything is hashed.
//! - Several secrets may be configured at once so a secret can be rotated without downtime; a
//!   request is accepted if any of them matches.
//! - Where the provider signs a timestamp, timestamps further than `tolerance_secs` (default 300)
//!   in the past or the future are rejected, so a captured request cannot be replayed later.
//! - No error message, and no `Debug` output, ever contains a secret or an expected signature.
//!
//! One file per scheme; `hmac` (in `hmac_spec.rs`) covers providers without a dedicated scheme.

mod basic;
mod github;
mod hmac_spec;
mod hubspot;
mod mac;
mod shopify;
mod slack;
mod standard_webhooks;
mod stripe;
mod timestamp;
mod token;
mod woocommerce;
mod zendesk;

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use serde::Deserialize;

use crate::env::{Env, InterpolationError, interpolate};
use crate::inbound::{Headers, InboundRequest};
use crate::secret::Secret;

pub use basic::BasicSpec;
pub use github::GithubSpec;
pub use hmac_spec::{HmacAlgorithm, HmacSpec, SignatureEncoding};
pub use hubspot::{HubspotSpec, HubspotVersion};
pub use mac::MAX_SIGNATURE_CANDIDATES;
#[cfg(test)]
pub(crate) use mac::macs_computed;
pub use shopify::ShopifySpec;
pub use slack::SlackSpec;
pub use standard_webhooks::StandardWebhooksSpec;
pub use stripe::StripeSpec;
pub use timestamp::DEFAULT_TOLERANCE_SECS;
pub use token::TokenSpec;
pub use woocommerce::WoocommerceSpec;
pub use zendesk::ZendeskSpec;

use mac::{
    Key, any_hmac_sha256_matches, any_tag_matches, check_candidate_count, check_hmac_sha256,
    hmac_sha256_bytes, matching_hmac_sha256,
};

/// The `verify:` block of a mapping file, tagged by `scheme`:
///
/// ```yaml
/// verify: { scheme: shopify, secrets: ["${SHOPIFY_SECRET:-dev-secret}"] }
/// verify: { scheme: stripe, secrets: ["${STRIPE_WHSEC}"], tolerance_secs: 300 }
/// verify: { scheme: none }
/// ```
///
/// Secrets and usernames are raw strings that may contain `${ENV}` references; they are
/// resolved by [`VerifySpec::build`], never at parse time. Even so a raw value may be a literal
/// secret or carry one as its `:-` default, so `Debug` prints the scheme and how many secrets it
/// lists, never their text.
#[derive(Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(tag = "scheme", rename_all = "kebab-case", deny_unknown_fields)]
pub enum VerifySpec {
    Shopify(ShopifySpec),
    Stripe(StripeSpec),
    Github(GithubSpec),
    Hubspot(HubspotSpec),
    /// Standard Webhooks, as sent by Svix and the many providers built on it.
    #[serde(alias = "svix")]
    StandardWebhooks(StandardWebhooksSpec),
    Slack(SlackSpec),
    Zendesk(ZendeskSpec),
    Woocommerce(WoocommerceSpec),
    /// A generic HMAC recipe for providers without a dedicated scheme.
    Hmac(HmacSpec),
    /// HTTP Basic authentication (`Authorization: Basic ...`).
    Basic(BasicSpec),
    /// A shared token in a header, compared as a whole.
    Token(TokenSpec),
    /// No authentication at all. A struct variant (written `VerifySpec::None {}`) so that
    /// `{ scheme: none, secrets: [...] }`, which shows a confused configuration, is rejected
    /// instead of silently accepting every request.
    None {},
}

impl fmt::Debug for VerifySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (scheme, secrets) = match self {
            VerifySpec::Shopify(s) => ("shopify", s.secrets.len()),
            VerifySpec::Stripe(s) => ("stripe", s.secrets.len()),
            VerifySpec::Github(s) => ("github", s.secrets.len()),
            VerifySpec::Hubspot(s) => ("hubspot", s.secrets.len()),
            VerifySpec::StandardWebhooks(s) => ("standard-webhooks", s.secrets.len()),
            VerifySpec::Slack(s) => ("slack", s.secrets.len()),
            VerifySpec::Zendesk(s) => ("zendesk", s.secrets.len()),
            VerifySpec::Woocommerce(s) => ("woocommerce", s.secrets.len()),
            VerifySpec::Hmac(s) => ("hmac", s.secrets.len()),
            VerifySpec::Basic(s) => ("basic", s.secrets.len()),
            VerifySpec::Token(s) => ("token", s.secrets.len()),
            VerifySpec::None {} => ("none", 0),
        };
        f.debug_struct("VerifySpec")
            .field("scheme", &scheme)
            .field("secrets", &format_args!("[{secrets} redacted]"))
            .finish_non_exhaustive()
    }
}

impl VerifySpec {
    /// Resolves `${ENV}` references and validates the block. Errors name the offending field
    /// (e.g. `verify.secrets[1]`) and never contain a secret's value.
    pub fn build(&self, env: &Env) -> Result<Verifier, VerifySpecError> {
        let mut ctx = BuildContext {
            env,
            defaulted: Vec::new(),
        };
        let scheme = match self {
            VerifySpec::Shopify(spec) => Scheme::Shopify(spec.build(&mut ctx)?),
            VerifySpec::Stripe(spec) => Scheme::Stripe(spec.build(&mut ctx)?),
            VerifySpec::Github(spec) => Scheme::Github(spec.build(&mut ctx)?),
            VerifySpec::Hubspot(spec) => Scheme::Hubspot(spec.build(&mut ctx)?),
            VerifySpec::StandardWebhooks(spec) => Scheme::StandardWebhooks(spec.build(&mut ctx)?),
            VerifySpec::Slack(spec) => Scheme::Slack(spec.build(&mut ctx)?),
            VerifySpec::Zendesk(spec) => Scheme::Zendesk(spec.build(&mut ctx)?),
            VerifySpec::Woocommerce(spec) => Scheme::Woocommerce(spec.build(&mut ctx)?),
            VerifySpec::Hmac(spec) => Scheme::Hmac(spec.build(&mut ctx)?),
            VerifySpec::Basic(spec) => Scheme::Basic(spec.build(&mut ctx)?),
            VerifySpec::Token(spec) => Scheme::Token(spec.build(&mut ctx)?),
            VerifySpec::None {} => Scheme::None,
        };
        Ok(Verifier {
            scheme: Arc::new(scheme),
            defaulted: Arc::new(ctx.defaulted),
        })
    }
}

/// A compiled `verify:` block. Cheap to clone (the scheme sits behind an `Arc`); its `Debug`
/// output shows the scheme and its settings with every secret redacted.
#[derive(Debug, Clone)]
pub struct Verifier {
    scheme: Arc<Scheme>,
    /// Variables whose `${VAR:-default}` fallback supplied a secret (or the basic username).
    defaulted: Arc<Vec<String>>,
}

#[derive(Debug)]
enum Scheme {
    Shopify(shopify::Shopify),
    Stripe(stripe::Stripe),
    Github(github::Github),
    Hubspot(hubspot::Hubspot),
    StandardWebhooks(standard_webhooks::StandardWebhooks),
    Slack(slack::Slack),
    Zendesk(zendesk::Zendesk),
    Woocommerce(woocommerce::Woocommerce),
    Hmac(hmac_spec::HmacScheme),
    Basic(basic::Basic),
    Token(token::Token),
    None,
}

impl Verifier {
    /// Checks `request` exactly as received. `now` is injected so tests can pin the clock
    /// (published examples carry old timestamps).
    pub fn verify(
        &self,
        request: InboundRequest,
        now: SystemTime,
    ) -> Result<Verified<InboundRequest>, VerifyError> {
        let body_mac = self.check(&request, now)?;
        Ok(Verified {
            value: request,
            body_mac,
        })
    }

    /// Checks the request; for the schemes whose MAC covers exactly the body, returns it.
    fn check(
        &self,
        request: &InboundRequest,
        now: SystemTime,
    ) -> Result<Option<Vec<u8>>, VerifyError> {
        let checked = match &*self.scheme {
            Scheme::Shopify(s) => return s.verify(request).map(Some),
            Scheme::Github(s) => return s.verify(request).map(Some),
            Scheme::Woocommerce(s) => return s.verify(request).map(Some),
            Scheme::Stripe(s) => s.verify(request, now),
            Scheme::Hubspot(s) => s.verify(request, now),
            Scheme::StandardWebhooks(s) => s.verify(request, now),
            Scheme::Slack(s) => s.verify(request, now),
            Scheme::Zendesk(s) => s.verify(request, now),
            Scheme::Hmac(s) => s.verify(request, now),
            Scheme::Basic(s) => s.verify(request),
            Scheme::Token(s) => s.verify(request),
            Scheme::None => Ok(()),
        };
        checked.map(|()| None)
    }

    /// Computes and inserts the headers the provider would send for `request`, using the FIRST
    /// secret (used by `casegate send-sample`, the load generator and tests). Existing headers
    /// of the same names are replaced. Timestamps come from `now`; Standard Webhooks also gets a
    /// fresh `webhook-id` unless one is present. Basic and token insert the credential header;
    /// `none` does nothing.
    pub fn sign(&self, request: &mut InboundRequest, now: SystemTime) {
        match &*self.scheme {
            Scheme::Shopify(s) => s.sign(request),
            Scheme::Stripe(s) => s.sign(request, now),
            Scheme::Github(s) => s.sign(request),
            Scheme::Hubspot(s) => s.sign(request, now),
            Scheme::StandardWebhooks(s) => s.sign(request, now),
            Scheme::Slack(s) => s.sign(request, now),
            Scheme::Zendesk(s) => s.sign(request, now),
            Scheme::Woocommerce(s) => s.sign(request),
            Scheme::Hmac(s) => s.sign(request, now),
            Scheme::Basic(s) => s.sign(request),
            Scheme::Token(s) => s.sign(request),
            Scheme::None => {}
        }
    }

    /// The scheme's name as written in mapping files, e.g. `standard-webhooks`.
    pub fn scheme_name(&self) -> &'static str {
        match &*self.scheme {
            Scheme::Shopify(_) => "shopify",
            Scheme::Stripe(_) => "stripe",
            Scheme::Github(_) => "github",
            Scheme::Hubspot(_) => "hubspot",
            Scheme::StandardWebhooks(_) => "standard-webhooks",
            Scheme::Slack(_) => "slack",
            Scheme::Zendesk(_) => "zendesk",
            Scheme::Woocommerce(_) => "woocommerce",
            Scheme::Hmac(_) => "hmac",
            Scheme::Basic(_) => "basic",
            Scheme::Token(_) => "token",
            Scheme::None => "none",
        }
    }

    /// True for `scheme: none`; startup warns about sources anyone can post to.
    pub fn is_none(&self) -> bool {
        matches!(&*self.scheme, Scheme::None)
    }

    /// True when any secret (or the basic-auth username) came from a `${VAR:-default}`
    /// fallback: a development default is running, and startup warns.
    pub fn uses_default_secret(&self) -> bool {
        !self.defaulted.is_empty()
    }

    /// The environment variables to set so no secret falls back to its development default.
    pub fn defaulted_variables(&self) -> &[String] {
        &self.defaulted
    }

    /// True when the scheme signs no timestamp, so a captured request verifies again forever;
    /// ingest then dedupes on the body too.
    pub fn signs_no_timestamp(&self) -> bool {
        match &*self.scheme {
            Scheme::Shopify(_)
            | Scheme::Github(_)
            | Scheme::Woocommerce(_)
            | Scheme::Basic(_)
            | Scheme::Token(_) => true,
            Scheme::Hmac(s) => !s.signs_timestamp(),
            Scheme::Hubspot(s) => s.accepts_unstamped(),
            Scheme::Stripe(_)
            | Scheme::StandardWebhooks(_)
            | Scheme::Slack(_)
            | Scheme::Zendesk(_)
            | Scheme::None => false,
        }
    }

    /// Lower-case names of the headers that carry credentials or signatures; they must be
    /// stripped before a request's headers are stored (dead-letter store) or logged.
    /// `authorization` is always included: a sender may attach one even where this scheme does
    /// not check it.
    pub fn credential_headers(&self) -> Vec<String> {
        let own: Vec<String> = match &*self.scheme {
            Scheme::Shopify(_) => names(shopify::CREDENTIAL_HEADERS),
            Scheme::Stripe(_) => names(stripe::CREDENTIAL_HEADERS),
            Scheme::Github(_) => names(github::CREDENTIAL_HEADERS),
            Scheme::Hubspot(_) => names(hubspot::CREDENTIAL_HEADERS),
            Scheme::StandardWebhooks(_) => names(standard_webhooks::CREDENTIAL_HEADERS),
            Scheme::Slack(_) => names(slack::CREDENTIAL_HEADERS),
            Scheme::Zendesk(_) => names(zendesk::CREDENTIAL_HEADERS),
            Scheme::Woocommerce(_) => names(woocommerce::CREDENTIAL_HEADERS),
            Scheme::Hmac(s) => vec![s.signature_header()],
            Scheme::Basic(_) => Vec::new(),
            Scheme::Token(s) => vec![s.header()],
            Scheme::None => Vec::new(),
        };
        let mut all = vec!["authorization".to_string()];
        for name in own {
            if !all.contains(&name) {
                all.push(name);
            }
        }
        all
    }
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|name| name.to_ascii_lowercase()).collect()
}

/// Proof that a value passed verification. Only this module can construct it (the field is
/// private), so the mapper, which accepts only `Verified` requests, cannot be handed an
/// unverified payload by mistake.
#[derive(Debug, Clone)]
pub struct Verified<T> {
    value: T,
    /// The verified MAC where the scheme's MAC covers exactly the body (Shopify, GitHub,
    /// WooCommerce); see [`Verified::body_mac`].
    body_mac: Option<Vec<u8>>,
}

impl<T> Verified<T> {
    pub fn get(&self) -> &T {
        &self.value
    }

    pub fn into_inner(self) -> T {
        self.value
    }

    /// The MAC that verified the body, when the scheme's MAC covers exactly the body: equal
    /// for equal bodies under one secret, unforgeable without it, so it fingerprints the body
    /// for the dedupe mark at no extra cost. `None` for every other scheme and for input that
    /// was not verified here.
    pub fn body_mac(&self) -> Option<&[u8]> {
        self.body_mac.as_deref()
    }

    /// Wraps a value WITHOUT checking it. Only for replaying dead letters that were verified
    /// when they were first received (their signature headers were stripped before storage, so
    /// they cannot be checked again). Any other use defeats the point of this type.
    pub fn previously_verified(value: T) -> Self {
        Verified {
            value,
            body_mac: None,
        }
    }

    /// Wraps a value WITHOUT checking it, for input the operator supplies on the local machine
    /// (`casegate try` on a sample, a mapping's examples, tests and benchmarks). Never for
    /// anything received over the network.
    pub fn trusted_local_input(value: T) -> Self {
        Verified {
            value,
            body_mac: None,
        }
    }
}

/// Why a request failed verification. Messages say which check failed; they never contain a
/// secret, an expected signature or the received credential.
///
/// Stable machine codes ([`VerifyError::code`]); all are meant to be answered with 401:
///
/// | code | meaning |
/// |---|---|
/// | `missing_signature_header` | a signature or signed-timestamp header is absent |
/// | `malformed_signature_header` | a signature or timestamp header cannot be parsed |
/// | `stale_timestamp` | the signed timestamp is older than the tolerance |
/// | `future_timestamp` | the signed timestamp is further ahead than the tolerance |
/// | `signature_mismatch` | well-formed, but no configured secret produces it |
/// | `missing_credentials` | basic/token: the credential header is absent |
/// | `bad_credentials` | basic/token: the credential is wrong or malformed |
/// | `unsigned_ping` | WooCommerce's unsigned `webhook_id=N` creation ping |
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("missing {0} header")]
    MissingHeader(String),
    #[error("malformed {header} header: {reason}")]
    BadFormat { header: String, reason: String },
    #[error("signed timestamp is older than the allowed tolerance (replayed or delayed request)")]
    StaleTimestamp,
    #[error("signed timestamp is further in the future than the allowed tolerance")]
    FutureTimestamp,
    #[error("signature does not match the request under any configured secret")]
    Mismatch,
    #[error("missing {0} header with credentials")]
    MissingCredentials(String),
    #[error("credentials are not valid")]
    BadCredentials,
    /// WooCommerce posts an unsigned `webhook_id=N` body when a webhook is created and refuses to
    /// save the webhook unless it gets a 200. The HTTP layer may answer 200 without enqueueing;
    /// it is still an error here so nothing unsigned reaches a queue.
    #[error("unsigned WooCommerce creation ping (answer 200, do not enqueue)")]
    UnsignedPing,
}

impl VerifyError {
    /// A stable machine-readable code; see the table on [`VerifyError`].
    pub fn code(&self) -> &'static str {
        match self {
            VerifyError::MissingHeader(_) => "missing_signature_header",
            VerifyError::BadFormat { .. } => "malformed_signature_header",
            VerifyError::StaleTimestamp => "stale_timestamp",
            VerifyError::FutureTimestamp => "future_timestamp",
            VerifyError::Mismatch => "signature_mismatch",
            VerifyError::MissingCredentials(_) => "missing_credentials",
            VerifyError::BadCredentials => "bad_credentials",
            VerifyError::UnsignedPing => "unsigned_ping",
        }
    }

    fn bad_format(header: &str, reason: &str) -> Self {
        VerifyError::BadFormat {
            header: header.to_ascii_lowercase(),
            reason: reason.to_string(),
        }
    }
}

/// Why a `verify:` block could not be built. Every variant names the field; none contains a
/// secret's value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifySpecError {
    /// An `${ENV}` reference could not be resolved (names the field and the variable).
    #[error("{field}: {error}")]
    Env {
        field: String,
        error: InterpolationError,
    },
    #[error("{field} is empty: list at least one secret")]
    NoSecrets { field: String },
    #[error("{field} is empty after resolving environment variables")]
    EmptySecret { field: String },
    /// A secret that must be encoded (Standard Webhooks' `whsec_<base64>`) is not.
    #[error("{field} is not a valid secret for this scheme: {reason}")]
    BadSecret { field: String, reason: String },
    /// Any other invalid setting (header name, template, version list, ...).
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
}

/// What [`VerifySpec::build`] threads through the per-scheme builders.
struct BuildContext<'a> {
    env: &'a Env,
    defaulted: Vec<String>,
}

impl BuildContext<'_> {
    /// Resolves one secret-bearing value; an empty result is an error.
    fn resolve(&mut self, field: &str, raw: &str) -> Result<Secret, VerifySpecError> {
        let resolved = interpolate(raw, self.env).map_err(|error| VerifySpecError::Env {
            field: field.to_string(),
            error,
        })?;
        if resolved.value.is_empty() {
            return Err(VerifySpecError::EmptySecret {
                field: field.to_string(),
            });
        }
        for name in resolved.defaulted {
            if !self.defaulted.contains(&name) {
                self.defaulted.push(name);
            }
        }
        Ok(Secret::new(resolved.value))
    }

    /// Resolves `verify.secrets`, which must hold at least one non-empty secret.
    fn secrets(&mut self, raw: &[String]) -> Result<Vec<Secret>, VerifySpecError> {
        if raw.is_empty() {
            return Err(VerifySpecError::NoSecrets {
                field: "verify.secrets".to_string(),
            });
        }
        raw.iter()
            .enumerate()
            .map(|(i, raw)| self.resolve(&format!("verify.secrets[{i}]"), raw))
            .collect()
    }

    /// Secrets used byte-for-byte as HMAC keys.
    fn keys(&mut self, raw: &[String]) -> Result<Vec<Key>, VerifySpecError> {
        Ok(self
            .secrets(raw)?
            .iter()
            .map(|s| Key(s.expose().as_bytes().to_vec()))
            .collect())
    }
}

/// Checks a configured header name (`header`, `timestamp_header`, `{header:NAME}`): an HTTP
/// token, so a typo such as a trailing colon is caught at load rather than as 401s later.
fn validate_header_name(field: &str, name: &str) -> Result<(), VerifySpecError> {
    let is_token_char = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if name.is_empty() || !name.chars().all(is_token_char) {
        return Err(VerifySpecError::Invalid {
            field: field.to_string(),
            reason: format!("{name:?} is not a valid HTTP header name"),
        });
    }
    Ok(())
}

/// Replaces (not appends) headers on `request`: `Headers::get` returns the first value, so a
/// stale signature left in place would shadow the new one.
fn set_headers(request: &mut InboundRequest, values: Vec<(&str, String)>) {
    let mut headers: Headers = request
        .headers
        .iter()
        .filter(|(name, _)| !values.iter().any(|(new, _)| new.eq_ignore_ascii_case(name)))
        .collect();
    for (name, value) in values {
        headers.insert(name, value);
    }
    request.headers = headers;
}

/// The header's value, or `MissingHeader` naming it.
fn required_header<'a>(request: &'a InboundRequest, name: &'a str) -> Result<&'a str, VerifyError> {
    request
        .headers
        .get(name)
        .ok_or_else(|| VerifyError::MissingHeader(name.to_ascii_lowercase()))
}

#[cfg(test)]
pub(crate) mod test_support;
#[cfg(test)]
pub(crate) mod vectors;

#[cfg(test)]
mod tests;
