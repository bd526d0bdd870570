//! No header value, body, URL or clock makes any scheme panic, in verifying or in signing.

use proptest::prelude::*;

use super::*;

/// Every header any scheme reads.
const ALL_HEADERS: &[&str] = &[
    "x-shopify-hmac-sha256",
    "stripe-signature",
    "x-hub-signature-256",
    "x-hubspot-signature-v3",
    "x-hubspot-request-timestamp",
    "x-hubspot-signature",
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
    "x-signature",
    "x-timestamp",
    "authorization",
    "x-webhook-token",
];

/// Header values that look almost right, mixed with arbitrary bytes (decoded lossily, as the
/// HTTP layer does for non-UTF-8 values).
fn header_value() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..80)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        "(t=|v1=|v0=|v1,|sha256=|Basic |Bearer )?[0-9a-zA-Z+/=,. :%-]{0,90}",
        "[0-9]{0,25}",
        Just("18446744073709551615".to_string()),
        Just("9999-12-31T23:59:59Z".to_string()),
        Just("t=18446744073709551615,v1=00".to_string()),
    ]
}

proptest! {
    #[test]
    fn no_header_value_body_url_or_clock_makes_any_scheme_panic(
        values in proptest::collection::vec(proptest::option::of(header_value()), ALL_HEADERS.len()),
        body in proptest::collection::vec(any::<u8>(), 0..200),
        url in "[ -~]{0,60}",
        now_secs in prop_oneof![Just(1_700_000_000u64), any::<u64>().prop_map(|s| s % 400_000_000_000)],
    ) {
        let headers: Vec<(&str, &str)> = ALL_HEADERS
            .iter()
            .zip(&values)
            .filter_map(|(name, value)| value.as_deref().map(|v| (*name, v)))
            .collect();
        let mut req = request(&headers, &body);
        req.url = url;
        let now = at(now_secs);
        for (_, yaml) in every_scheme() {
            let v = build(&yaml, &Env::default()).unwrap();
            let _ = v.verify(req.clone(), now);
            let mut signed = req.clone();
            v.sign(&mut signed, now);
        }
    }
}
