//! Fixed signature vectors, one or two per signing scheme: the provider's published example
//! where it publishes one, else its documented recipe computed independently with Python (the
//! recipe is noted on each). The unit tests verify them (and tamper with them); the integration
//! tests post them to a running gateway, so casegate's signer and verifier cannot pass by
//! agreeing on the same mistake.
//!
//! Plain data, no dependency: the integration tests include this file as it is.

/// One signed request, as the provider sent it.
pub struct Vector {
    /// The scheme, and which example this is.
    pub name: &'static str,
    /// The `verify:` block, with `SECRETS` where the list of secrets goes.
    pub block: &'static str,
    /// The secret that signed the request.
    pub secret: &'static str,
    /// Another well-formed secret for the scheme, which did not sign it.
    pub other_secret: &'static str,
    pub method: &'static str,
    /// The URL the sender signed (it matters only where [`Vector::signs_url`]).
    pub url: &'static str,
    pub signs_url: bool,
    /// Every header the provider sent, the signature's included.
    pub headers: &'static [(&'static str, &'static str)],
    pub body: &'static [u8],
    /// The body with a change the signature does not cover.
    pub tampered_body: &'static [u8],
    /// When it was signed, in seconds since the Unix epoch: a clock at which it verifies.
    pub signed_at: u64,
    /// The freshness window, when the signature covers a timestamp.
    pub tolerance_secs: Option<u64>,
}

impl Vector {
    /// The `verify:` block with `secrets` (quoted as YAML strings).
    pub fn block_with(&self, secrets: &[&str]) -> String {
        let quoted: Vec<String> = secrets.iter().map(|s| format!("{s:?}")).collect();
        self.block
            .replace("SECRETS", &format!("[{}]", quoted.join(", ")))
    }
}

/// The URL the unit tests' requests carry.
const TEST_URL: &str = "https://hooks.example.com/webhooks/test";

pub const VECTORS: &[Vector] = &[
    Vector {
        // GitHub's published example ("Validating webhook deliveries").
        name: "github, published",
        block: "{ scheme: github, secrets: SECRETS }",
        secret: "It's a Secret to Everybody",
        other_secret: "something-else",
        method: "POST",
        url: TEST_URL,
        signs_url: false,
        headers: &[(
            "X-Hub-Signature-256",
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
        )],
        body: b"Hello, World!",
        tampered_body: b"Hello, World?",
        signed_at: 1_700_000_000,
        tolerance_secs: None,
    },
    Vector {
        // Slack's published example ("Verifying requests from Slack").
        name: "slack, published",
        block: "{ scheme: slack, secrets: SECRETS }",
        secret: "8f742231b10e8888abcd99yyyzzz85a5",
        other_secret: "another-signing-secret",
        method: "POST",
        url: TEST_URL,
        signs_url: false,
        headers: &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("X-Slack-Request-Timestamp", "1531420618"),
            (
                "X-Slack-Signature",
                "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503",
            ),
        ],
        body: b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c",
        tampered_body: b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c&admin=true",
        signed_at: 1_531_420_618,
        tolerance_secs: Some(300),
    },
    Vector {
        // The Standard Webhooks specification's published test vector.
        name: "standard-webhooks, published",
        block: "{ scheme: standard-webhooks, secrets: SECRETS }",
        secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        other_secret: "whsec_c2VjcmV0",
        method: "POST",
        url: TEST_URL,
        signs_url: false,
        headers: &[
            ("Content-Type", "application/json"),
            ("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek"),
            ("webhook-timestamp", "1614265330"),
            (
                "webhook-signature",
                "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            ),
        ],
        body: br#"{"test": 2432232314}"#,
        tampered_body: br#"{"test": 2432232315}"#,
        signed_at: 1_614_265_330,
        tolerance_secs: Some(300),
    },
    Vector {
        // HubSpot's published v1 example ("Validate requests using the v1 request signature").
        name: "hubspot v1, published",
        block: "{ scheme: hubspot, secrets: SECRETS, versions: [v3, v1] }",
        secret: "yyyyyyyy-yyyy-yyyy-yyyy-yyyyyyyyyyyy",
        other_secret: "zzzz",
        method: "POST",
        url: TEST_URL,
        signs_url: false,
        headers: &[
            ("Content-Type", "application/json"),
            (
                "X-HubSpot-Signature",
                "232db2615f3d666fe21a8ec971ac7b5402d33b9a925784df3ca654d05f4817de",
            ),
            ("X-HubSpot-Signature-Version", "v1"),
        ],
        body: br#"[{"eventId":1,"subscriptionId":12345,"portalId":62515,"occurredAt":1564113600000,"subscriptionType":"contact.creation","attemptNumber":0,"objectId":123,"changeSource":"CRM","changeFlag":"NEW","appId":54321}]"#,
        tampered_body: b"[]",
        signed_at: 1_700_000_000,
        tolerance_secs: None,
    },
    Vector {
        // HubSpot publishes no v3 vector; its documented recipe, with only `%3A` decoded (`%20`
        // stays): base64(hmac(secret, "POST" +
        // "https://hooks.example.com/hubspot?portal=62515&filter=a:b%20c" + body +
        // "1700000000123")).
        name: "hubspot v3, computed",
        block: "{ scheme: hubspot, secrets: SECRETS, versions: [v3, v1] }",
        secret: "yyyyyyyy-yyyy-yyyy-yyyy-yyyyyyyyyyyy",
        other_secret: "zzzz",
        method: "POST",
        url: "https://hooks.example.com/hubspot?portal=62515&filter=a%3Ab%20c",
        signs_url: true,
        headers: &[
            ("Content-Type", "application/json"),
            (
                "X-HubSpot-Signature-v3",
                "1e2HLFDSmC+LlvlA7BLSU5RG8AWlkf1uxkn+bmNDUJQ=",
            ),
            ("X-HubSpot-Request-Timestamp", "1700000000123"),
        ],
        body: br#"[{"eventId":1,"subscriptionType":"contact.creation"}]"#,
        tampered_body: b"[]",
        signed_at: 1_700_000_000,
        tolerance_secs: None,
    },
    Vector {
        // Shopify publishes no vector; its documented recipe:
        // base64(hmac.new(b"hush", body, sha256).digest()).
        name: "shopify, computed",
        block: "{ scheme: shopify, secrets: SECRETS }",
        secret: "hush",
        other_secret: "not-hush",
        method: "POST",
        url: TEST_URL,
        signs_url: false,
        headers: &[
            ("Content-Type", "application/json"),
            (
                "X-Shopify-Hmac-Sha256",
                "D0UMXmhjwBRi4y66TmhJrDlhQABD7zI2fm3p6/QLMo8=",
            ),
        ],
        body: br#"{"id":820982911946154508,"email":"jon@example.com"}"#,
        tampered_body: br#"{"id":820982911946154508,"email":"eve@example.com"}"#,
        signed_at: 1_700_000_000,
        tolerance_secs: None,
    },
    Vector {
        // Stripe publishes no fixed vector; its documented recipe, keyed with the whole secret
        // string, `whsec_` included: hmac.new(secret, b"1700000000." + body, sha256).hexdigest().
        name: "stripe, computed",
        block: "{ scheme: stripe, secrets: SECRETS }",
        secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        other_secret: "whsec_other",
        method: "POST",
        url: TEST_URL,
        signs_url: false,
        headers: &[
            ("Content-Type", "application/json"),
            (
                "Stripe-Signature",
                "t=1700000000,v1=a82551674fad90f00a490f8455060aed6e282b5149812f4c8651c020249f73c4",
            ),
        ],
        body: br#"{"id":"evt_1","object":"event","type":"payment_intent.succeeded"}"#,
        tampered_body: br#"{"id":"evt_2","object":"event","type":"payment_intent.succeeded"}"#,
        signed_at: 1_700_000_000,
        tolerance_secs: Some(300),
    },
    Vector {
        // The secret and body of the example on Zendesk's "Verifying webhook authenticity" page,
        // signed with the documented recipe (timestamp then body, the secret string as-is):
        // base64(hmac.new(secret, timestamp + body, sha256).digest()).
        name: "zendesk, computed",
        block: "{ scheme: zendesk, secrets: SECRETS }",
        secret: "HRkRd4BeOAoUkfZr-mhauJT64rvBASlJRoIyPsd3zeA=",
        other_secret: "dGhpc19zZWNyZXRfaXNfZm9yX3Rlc3Rpbmdfb25seQ==",
        method: "POST",
        url: TEST_URL,
        signs_url: false,
        headers: &[
            ("Content-Type", "application/json"),
            (
                "X-Zendesk-Webhook-Signature",
                "Rry/4TtIdFyawtXXp8QdI6tlAUUQ/5kL1OTp5qo/ZIk=",
            ),
            ("X-Zendesk-Webhook-Signature-Timestamp", "2021-07-25T10:00:00Z"),
        ],
        body: br#"{"say": "hello"}"#,
        tampered_body: br#"{"say": "goodbye"}"#,
        signed_at: 1_627_207_200,
        tolerance_secs: Some(300),
    },
    Vector {
        // WooCommerce publishes no vector; its recipe with the entity-decoded key:
        // base64(hmac.new(b"s3cr3t&key", body, sha256).digest()).
        name: "woocommerce, computed",
        block: "{ scheme: woocommerce, secrets: SECRETS }",
        secret: "s3cr3t&amp;key",
        other_secret: "other",
        method: "POST",
        url: TEST_URL,
        signs_url: false,
        headers: &[
            ("Content-Type", "application/json"),
            (
                "X-WC-Webhook-Signature",
                "qEw7uCyH31ofpGUPjHEMUg4fbR0ALZ4hcKJ9h57BuvE=",
            ),
        ],
        body: br#"{"id":727,"status":"processing"}"#,
        tampered_body: br#"{"id":727,"status":"refunded"}"#,
        signed_at: 1_700_000_000,
        tolerance_secs: None,
    },
    Vector {
        // A Stripe-like generic recipe: "sha256=" + hmac.new(b"generic-secret",
        // b"1700000000.POST.https://hooks.example.com/webhooks/test.ping." + body,
        // sha256).hexdigest().
        name: "hmac, computed",
        block: r#"{ scheme: hmac, secrets: SECRETS, header: X-Signature, algorithm: sha256,
            encoding: hex, prefix: "sha256=", signed_content: "{timestamp}.{method}.{url}.{header:X-Event}.{body}",
            timestamp_header: X-Timestamp, tolerance_secs: 300 }"#,
        secret: "generic-secret",
        other_secret: "other-secret",
        method: "POST",
        url: TEST_URL,
        signs_url: true,
        headers: &[
            ("Content-Type", "application/json"),
            (
                "X-Signature",
                "sha256=8470af2099317bc749a4b11e6f8c62a9f6eee9812224f9921f75887d93e78344",
            ),
            ("X-Timestamp", "1700000000"),
            ("X-Event", "ping"),
        ],
        body: br#"{"event":"ping"}"#,
        tampered_body: br#"{"event":"pong"}"#,
        signed_at: 1_700_000_000,
        tolerance_secs: Some(300),
    },
];
