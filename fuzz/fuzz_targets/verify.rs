//! Signature header parsers and verifiers: `Verifier::verify` on arbitrary headers and bodies
//! never panics, and whatever the request, signing it (`Verifier::sign`) and verifying it at the
//! same instant succeeds. `many` builds signature headers of thousands of entries: a header
//! over the candidate bound is refused as malformed, whatever its entries.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

use arbitrary::Arbitrary;
use bytes::Bytes;
use casegate::env::Env;
use casegate::inbound::{Headers, InboundRequest};
use casegate::mapping::CompiledMapping;
use casegate::verify::{MAX_SIGNATURE_CANDIDATES, Verifier};
use libfuzzer_sys::fuzz_target;

/// One `verify:` block per scheme (and a few variants).
const SPECS: &[&str] = &[
    "{scheme: shopify, secrets: [s1, s2]}",
    "{scheme: stripe, secrets: [whsec_s1, whsec_s2]}",
    "{scheme: github, secrets: [s1]}",
    "{scheme: hubspot, secrets: [s1]}",
    "{scheme: hubspot, versions: [v1, v2, v3], secrets: [s1]}",
    "{scheme: standard-webhooks, secrets: [whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw]}",
    "{scheme: slack, secrets: [s1]}",
    "{scheme: zendesk, secrets: [s1]}",
    "{scheme: woocommerce, secrets: ['s&amp;1']}",
    "{scheme: hmac, header: X-Sig, algorithm: sha1, encoding: base64, prefix: 'sha1=', signed_content: '{timestamp}.{method}.{url}.{header:x-extra}.{body}', timestamp_header: X-Ts, secrets: [s1]}",
    "{scheme: hmac, header: X-Sig, algorithm: sha512, encoding: hex, secrets: [s1, s2]}",
    "{scheme: basic, username: u, secrets: [p1, p2]}",
    "{scheme: token, header: X-Token, secrets: [t1]}",
];

/// Header names the schemes read, so the fuzzer reaches their parsers.
const KNOWN_HEADERS: &[&str] = &[
    "x-shopify-hmac-sha256",
    "stripe-signature",
    "x-hub-signature-256",
    "x-hub-signature",
    "x-hubspot-signature",
    "x-hubspot-signature-v3",
    "x-hubspot-request-timestamp",
    "x-hubspot-signature-version",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "svix-id",
    "svix-timestamp",
    "svix-signature",
    "x-slack-signature",
    "x-slack-request-timestamp",
    "x-zendesk-webhook-signature",
    "x-zendesk-webhook-signature-timestamp",
    "x-wc-webhook-signature",
    "x-sig",
    "x-ts",
    "x-extra",
    "authorization",
    "x-token",
];

fn verifiers() -> &'static Vec<Verifier> {
    static VERIFIERS: OnceLock<Vec<Verifier>> = OnceLock::new();
    VERIFIERS.get_or_init(|| {
        SPECS
            .iter()
            .map(|spec| {
                let yaml = format!(
                    "verify: {spec}\nrules:\n  - {{name: all, queue: 4f9c3c1e-5b0a-4c8e-9d51-2a7f0e6b1c3d, title: x}}\n"
                );
                CompiledMapping::compile(Path::new("fuzz.yaml"), &yaml, &Env::default())
                    .unwrap_or_else(|e| panic!("{spec}: {e}"))
                    .verifier
            })
            .collect()
    })
}

#[derive(Arbitrary, Debug)]
struct Input {
    scheme: u8,
    method: u8,
    path: String,
    known: Vec<(u8, String)>,
    other: Vec<(String, String)>,
    body: Vec<u8>,
    /// Seconds since the epoch, bounded below so `SystemTime` arithmetic stays in range.
    now: u64,
    /// A many-entry signature header: which multi-entry header, how many copies of `entry`.
    many: Option<(bool, u16, String)>,
}

fuzz_target!(|input: Input| {
    let verifiers = verifiers();
    let verifier = &verifiers[input.scheme as usize % verifiers.len()];
    let mut headers = Headers::new();
    for (index, value) in &input.known {
        headers.insert(
            KNOWN_HEADERS[*index as usize % KNOWN_HEADERS.len()],
            value.clone(),
        );
    }
    for (name, value) in &input.other {
        headers.insert(name, value.clone());
    }
    let mut many_entries = None;
    if let Some((svix, count, entry)) = &input.many {
        let count = usize::from(*count);
        let value = if *svix {
            let entry: String = entry.chars().filter(|c| !c.is_whitespace()).collect();
            let entry = if entry.is_empty() { "v1,".to_string() } else { entry };
            headers.insert("webhook-id", "msg_1".to_string());
            headers.insert("webhook-timestamp", (input.now % (1 << 36)).to_string());
            vec![entry; count].join(" ")
        } else {
            let entry: String = entry.chars().filter(|c| *c != ',').collect();
            format!("t={},{}", input.now % (1 << 36), vec![format!("v1={entry}"); count].join(","))
        };
        let name = if *svix { "webhook-signature" } else { "stripe-signature" };
        headers.insert(name, value.clone());
        many_entries = Some((*svix, count, name, value));
    }
    let request = InboundRequest {
        method: ["POST", "PUT", "GET", "post"][input.method as usize % 4].to_string(),
        url: format!("https://hooks.example.com/hooks/fuzz{}", input.path),
        headers,
        body: Bytes::from(input.body),
    };
    let now = UNIX_EPOCH + Duration::from_secs(input.now % (1 << 36));
    let verdict = verifier.verify(request.clone(), now);
    if let Some((svix, count, name, value)) = many_entries {
        let scheme = if svix { "standard-webhooks" } else { "stripe" };
        // Only when this header is the one read (an arbitrary one of the same name may precede).
        let read = request.headers.get(name) == Some(value.as_str());
        if read && count > MAX_SIGNATURE_CANDIDATES && verifier.scheme_name() == scheme {
            let code = verdict.as_ref().err().map(|e| e.code());
            assert_eq!(code, Some("malformed_signature_header"), "{count} entries");
        }
    }
    if let Err(error) = verdict {
        assert!(!error.code().is_empty());
        let message = error.to_string();
        assert!(
            !message.contains("whsec_s1") && !message.contains("whsec_s2"),
            "a secret in an error: {message}"
        );
    }
    let mut signed = request;
    // `{header:x-extra}` is signed content: a request without it is refused (rightly), and
    // `sign` cannot add a header it does not know the value of.
    if signed.headers.get("x-extra").is_none() {
        signed.headers.insert("x-extra", "extra");
    }
    verifier.sign(&mut signed, now);
    if let Err(error) = verifier.verify(signed.clone(), now) {
        panic!(
            "{} refuses its own signature ({error}): {signed:?}",
            verifier.scheme_name()
        );
    }
});
