//! Secrets never reach a log line or an answer, against real processes: the gateway (at debug
//! level), the sandbox and a password-protected Redis. (Slow clients and replayed signatures have
//! their own modules.)

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use casegate::env::Env;
use casegate::inbound::Headers;
use serde_json::{Value, json};

use crate::support::gateway::{QUEUE, sign_in};
use crate::support::process::{self, CasegateProcess};
use crate::support::redis_server::RedisServer;
use crate::support::wait::eventually;
use crate::support::{free_port, get_json};

// ---------------------------------------------------------------------------------------------
// Secrets never reach logs or answers
// ---------------------------------------------------------------------------------------------

/// Distinctive values: finding one of them in a log line or an answer means it leaked.
const SHOPIFY_SECRET: &str = "shpss_CANARY_shopify_5e1d7a";
const STRIPE_SECRET: &str = "whsec_CANARY_stripe_93b2c4";
const BASIC_USER: &str = "crm-user";
const BASIC_PASSWORD: &str = "pw_CANARY_basic_0c8f61";
const TOKEN: &str = "tok_CANARY_token_7a4e22";
const GITHUB_SECRET: &str = "gh_CANARY_github_41ac0e";
const HUBSPOT_SECRET: &str = "hs_CANARY_hubspot_9d2b71";
/// `whsec_` + base64 of [`SVIX_KEY`]: neither form may leak.
const SVIX_SECRET: &str = "whsec_Q0FOQVJZX3N2aXhfa2V5XzNkN2YxOQ==";
const SVIX_KEY: &str = "CANARY_svix_key_3d7f19";
const SLACK_SECRET: &str = "sl_CANARY_slack_5f80c3";
const ZENDESK_SECRET: &str = "zd_CANARY_zendesk_e61d24";
const WOO_SECRET: &str = "woo_CANARY_woo_07b9aa";
const HMAC_SECRET: &str = "hm_CANARY_hmac_c2e5f8";
const API_KEY: &str = "dv_CANARY_apikey_d41e07";
/// A second API key, which the sandbox refuses (401): the delivery error path logs about it.
const REFUSED_API_KEY: &str = "dv_CANARY_refusedkey_88aa10";
const ADMIN_TOKEN: &str = "adm_CANARY_admin_6b3f95_0123456789abcdef";
const REDIS_PASSWORD: &str = "redisCANARYpw2d9c1b";
/// What a client presents as a wrong credential: it is not echoed either.
const PRESENTED: &str = "presented_CANARY_guess_417f";
/// In every webhook body; payloads are never logged at info (or above).
const PAYLOAD_MARKER: &str = "PAYLOAD_CANARY_c0ffee";
/// The queue of the rule whose API key the sandbox refuses.
const REFUSED_QUEUE: &str = "0d3c5a7e-2b4f-4e6a-8c1d-9f0a1b2c3d4e";

/// The sources, one per scheme under test, with secrets read from the environment as in
/// production. (file stem, YAML)
fn leak_mappings() -> Vec<(&'static str, String)> {
    let rule = |queue: &str, extra: &str| {
        format!("rules:\n  - {{name: all, queue: {queue}, title: 'Order {{{{ $.id }}}}'{extra}}}\n")
    };
    vec![
        (
            "shop",
            format!(
                "verify: {{scheme: shopify, secrets: ['${{LEAK_SHOPIFY_SECRET}}']}}\n{}",
                rule(QUEUE, "")
            ),
        ),
        (
            "stripe",
            format!(
                "verify: {{scheme: stripe, secrets: ['${{LEAK_STRIPE_SECRET}}']}}\n{}",
                rule(QUEUE, "")
            ),
        ),
        (
            "basic",
            format!(
                "verify: {{scheme: basic, username: '${{LEAK_BASIC_USER}}', secrets: ['${{LEAK_BASIC_PASSWORD}}']}}\n{}",
                rule(QUEUE, "")
            ),
        ),
        (
            "token",
            format!(
                "verify: {{scheme: token, header: X-Leak-Token, secrets: ['${{LEAK_TOKEN}}']}}\n{}",
                rule(QUEUE, "")
            ),
        ),
        (
            "github",
            format!(
                "verify: {{scheme: github, secrets: ['${{LEAK_GITHUB_SECRET}}']}}\n{}",
                rule(QUEUE, "")
            ),
        ),
        (
            "hubspot",
            format!(
                "verify: {{scheme: hubspot, secrets: ['${{LEAK_HUBSPOT_SECRET}}']}}\n{}",
                rule(QUEUE, "")
            ),
        ),
        (
            "svix",
            format!(
                "verify: {{scheme: standard-webhooks, secrets: ['${{LEAK_SVIX_SECRET}}']}}\n{}",
                rule(QUEUE, "")
            ),
        ),
        (
            "slack",
            format!(
                "verify: {{scheme: slack, secrets: ['${{LEAK_SLACK_SECRET}}']}}\n{}",
                rule(QUEUE, "")
            ),
        ),
        (
            "zendesk",
            format!(
                "verify: {{scheme: zendesk, secrets: ['${{LEAK_ZENDESK_SECRET}}']}}\n{}",
                rule(QUEUE, "")
            ),
        ),
        (
            "woo",
            format!(
                "verify: {{scheme: woocommerce, secrets: ['${{LEAK_WOO_SECRET}}']}}\n{}",
                rule(QUEUE, "")
            ),
        ),
        (
            "hmac",
            format!(
                "verify: {{scheme: hmac, header: X-Leak-Sig, encoding: hex, signed_content: '{{timestamp}}.{{body}}', timestamp_header: X-Leak-Ts, secrets: ['${{LEAK_HMAC_SECRET}}']}}\n{}",
                rule(QUEUE, "")
            ),
        ),
        (
            "refused",
            format!(
                "verify: {{scheme: token, header: X-Leak-Token, secrets: ['${{LEAK_TOKEN}}']}}\n{}",
                rule(REFUSED_QUEUE, ", api_key: refused")
            ),
        ),
    ]
}

fn secret_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("LEAK_SHOPIFY_SECRET", SHOPIFY_SECRET),
        ("LEAK_STRIPE_SECRET", STRIPE_SECRET),
        ("LEAK_BASIC_USER", BASIC_USER),
        ("LEAK_BASIC_PASSWORD", BASIC_PASSWORD),
        ("LEAK_TOKEN", TOKEN),
        ("LEAK_GITHUB_SECRET", GITHUB_SECRET),
        ("LEAK_HUBSPOT_SECRET", HUBSPOT_SECRET),
        ("LEAK_SVIX_SECRET", SVIX_SECRET),
        ("LEAK_SLACK_SECRET", SLACK_SECRET),
        ("LEAK_ZENDESK_SECRET", ZENDESK_SECRET),
        ("LEAK_WOO_SECRET", WOO_SECRET),
        ("LEAK_HMAC_SECRET", HMAC_SECRET),
    ]
}

/// The sources whose scheme signs the body, each reached with a tampered body below.
const SIGNING_SOURCES: [&str; 8] = [
    "shop", "stripe", "github", "hubspot", "svix", "slack", "zendesk", "woo",
];

/// The headers a sender configured like `yaml` (resolved with `env`) sends with `body`.
fn signed(yaml: &str, env: &Env, url: &str, body: &str, now: SystemTime) -> Headers {
    sign_in(env, yaml, url, body, Headers::new(), now)
}

/// Everything a client saw: status line, headers and body.
async fn observe(response: reqwest::Response) -> (u16, Value, String) {
    let status = response.status().as_u16();
    let headers = format!("{:?}", response.headers());
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    (status, body, format!("{status} {headers}\n{text}"))
}

/// The line of `text` around `needle`, for failure messages.
fn line_with<'a>(text: &'a str, needle: &str) -> &'a str {
    text.lines().find(|l| l.contains(needle)).unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_logs_or_answers_and_payloads_stay_out_of_info_logs() {
    let dir = tempfile::tempdir().unwrap();
    let mappings_dir = dir.path().join("mappings");
    std::fs::create_dir_all(&mappings_dir).unwrap();
    let mappings = leak_mappings();
    for (stem, yaml) in &mappings {
        std::fs::write(mappings_dir.join(format!("{stem}.yaml")), yaml).unwrap();
    }
    let yaml = |source: &str| {
        mappings
            .iter()
            .find(|(stem, _)| *stem == source)
            .unwrap()
            .1
            .clone()
    };
    let redis = RedisServer::start_with_password(REDIS_PASSWORD).await;
    let sandbox_port = free_port();
    let sandbox = CasegateProcess::spawn({
        let mut command = process::command();
        command
            .args(["sandbox", "--port", &sandbox_port.to_string()])
            .args(["--api-key", API_KEY])
            .current_dir(dir.path());
        command
    });
    let port = free_port();
    let mut gateway = CasegateProcess::spawn({
        let mut command = process::serve_command(dir.path(), port, &[]);
        command
            .current_dir(dir.path())
            .envs(secret_env())
            .env("CASEGATE_LOG__LEVEL", "debug")
            .env("CASEGATE_LOG__FORMAT", "json")
            .env("CASEGATE_INGRESS__WORKERS", "2")
            .env("CASEGATE_BUFFER__BACKEND", "redis")
            .env("CASEGATE_BUFFER__REDIS_URL", redis.url())
            .env("CASEGATE_BUFFER__PATH", dir.path().join("unused.redb"))
            .env(
                "CASEGATE_DUVO__BASE_URL",
                format!("http://127.0.0.1:{sandbox_port}/v1"),
            )
            .env("CASEGATE_DUVO__API_KEY", API_KEY)
            .env("CASEGATE_DUVO__API_KEYS__REFUSED", REFUSED_API_KEY)
            .env("CASEGATE_ADMIN__TOKEN", ADMIN_TOKEN);
        command
    });
    let client = crate::support::http_client();
    let base = format!("http://127.0.0.1:{port}");
    gateway.wait_until_up(port, "/readyz").await;

    let env = Env::from_pairs(secret_env());
    let hook = |source: &str| format!("{base}/hooks/{source}");
    let body = |id: u32| json!({"id": id, "note": PAYLOAD_MARKER}).to_string();
    let now = SystemTime::now();
    // Every answer the gateway gave, and values that must appear nowhere.
    let mut answers: Vec<String> = Vec::new();
    let mut forbidden: Vec<(String, String)> = [
        ("shopify secret", SHOPIFY_SECRET),
        ("stripe secret", STRIPE_SECRET),
        ("basic password", BASIC_PASSWORD),
        ("token", TOKEN),
        ("github secret", GITHUB_SECRET),
        ("hubspot secret", HUBSPOT_SECRET),
        ("standard webhooks secret", SVIX_SECRET),
        ("standard webhooks key", SVIX_KEY),
        ("slack secret", SLACK_SECRET),
        ("zendesk secret", ZENDESK_SECRET),
        ("woocommerce secret", WOO_SECRET),
        ("hmac secret", HMAC_SECRET),
        ("API key", API_KEY),
        ("refused API key", REFUSED_API_KEY),
        ("admin token", ADMIN_TOKEN),
        ("redis password", REDIS_PASSWORD),
        ("presented credential", PRESENTED),
    ]
    .iter()
    .map(|(what, value)| (what.to_string(), value.to_string()))
    .collect();
    for (what, credentials) in [
        (
            "basic credentials",
            format!("{BASIC_USER}:{BASIC_PASSWORD}"),
        ),
        (
            "presented basic credentials",
            format!("{BASIC_USER}:{PRESENTED}"),
        ),
        ("admin token as basic", format!("admin:{ADMIN_TOKEN}")),
    ] {
        forbidden.push((what.to_string(), BASE64.encode(credentials)));
    }

    let post = |source: &str, headers: &Headers, body: String| {
        let mut request = client.post(hook(source)).body(body);
        for (name, value) in headers.iter() {
            request = request.header(name, value);
        }
        request.send()
    };
    let json_only: Headers = [("content-type", "application/json")].into_iter().collect();
    let with = |pairs: &[(&str, String)]| -> Headers {
        std::iter::once(("content-type", "application/json".to_string()))
            .chain(pairs.iter().map(|(n, v)| (*n, v.clone())))
            .collect()
    };

    // Valid webhooks, one per scheme; `refused` is delivered with the key the sandbox refuses.
    for (i, source) in SIGNING_SOURCES
        .into_iter()
        .chain(["hmac", "basic", "token", "refused"])
        .enumerate()
    {
        let body = body(i as u32 + 1);
        let headers = signed(&yaml(source), &env, &hook(source), &body, now);
        let (status, json, transcript) = observe(post(source, &headers, body).await.unwrap()).await;
        assert_eq!(status, 202, "{source}: {json}");
        answers.push(transcript);
    }

    // Wrong signatures, credentials and tokens: each answered 401 with its code.
    let tampered = body(100);
    let expected_shopify = signed(&yaml("shop"), &env, &hook("shop"), &tampered, now);
    forbidden.push((
        "expected shopify signature".into(),
        expected_shopify
            .get("x-shopify-hmac-sha256")
            .unwrap()
            .to_string(),
    ));
    let of_other_body = signed(&yaml("shop"), &env, &hook("shop"), &body(101), now);
    let wrong_stripe_env = Env::from_pairs([("LEAK_STRIPE_SECRET", "whsec_not_the_one")]);
    let expected_stripe = signed(&yaml("stripe"), &env, &hook("stripe"), &body(102), now);
    let v1 = expected_stripe
        .get("stripe-signature")
        .unwrap()
        .split(',')
        .find_map(|part| part.strip_prefix("v1="))
        .unwrap()
        .to_string();
    forbidden.push(("expected stripe signature".into(), v1));
    let refusals: Vec<(&str, Headers, String, &str)> = vec![
        ("shop", of_other_body, tampered, "signature_mismatch"),
        (
            "shop",
            with(&[("x-shopify-hmac-sha256", PRESENTED.to_string())]),
            body(103),
            "malformed_signature_header",
        ),
        (
            "shop",
            json_only.clone(),
            body(104),
            "missing_signature_header",
        ),
        (
            "stripe",
            signed(
                &yaml("stripe"),
                &wrong_stripe_env,
                &hook("stripe"),
                &body(102),
                now,
            ),
            body(102),
            "signature_mismatch",
        ),
        (
            "stripe",
            signed(
                &yaml("stripe"),
                &env,
                &hook("stripe"),
                &body(105),
                now - Duration::from_secs(3600),
            ),
            body(105),
            "stale_timestamp",
        ),
        (
            "stripe",
            with(&[("stripe-signature", format!("t=1,v1={PRESENTED}"))]),
            body(106),
            "malformed_signature_header",
        ),
        (
            "basic",
            with(&[(
                "authorization",
                format!(
                    "Basic {}",
                    BASE64.encode(format!("{BASIC_USER}:{PRESENTED}"))
                ),
            )]),
            body(107),
            "bad_credentials",
        ),
        (
            "basic",
            with(&[("authorization", format!("Bearer {PRESENTED}"))]),
            body(108),
            "bad_credentials",
        ),
        ("basic", json_only.clone(), body(109), "missing_credentials"),
        (
            "token",
            with(&[("x-leak-token", PRESENTED.to_string())]),
            body(110),
            "bad_credentials",
        ),
        ("token", json_only.clone(), body(111), "missing_credentials"),
    ];
    // Every signing scheme, signed now (inside its window) over another body: each reaches its
    // signature comparison, and neither the secret nor the expected signature is answered.
    let mut refusals = refusals;
    for (i, source) in SIGNING_SOURCES.into_iter().chain(["hmac"]).enumerate() {
        let sent = body(200 + i as u32);
        let other = body(300 + i as u32);
        let headers = signed(&yaml(source), &env, &hook(source), &other, now);
        let expected = signed(&yaml(source), &env, &hook(source), &sent, now);
        for (name, value) in expected.iter() {
            if (name.contains("sig") || name.contains("hmac")) && !name.contains("timestamp") {
                let what = format!("expected {source} signature");
                forbidden.push((what.clone(), value.to_string()));
                // Each signature of a list, without its `v1=` / `sha256=` label.
                for piece in value.split([',', ' ']) {
                    let tag = match piece.split_once('=') {
                        Some((label, tag)) if label.len() <= 6 => tag,
                        _ => piece,
                    };
                    if tag.len() >= 20 {
                        forbidden.push((what.clone(), tag.to_string()));
                    }
                }
            }
        }
        refusals.push((source, headers, sent, "signature_mismatch"));
    }
    for (source, headers, body, code) in refusals {
        let (status, json, transcript) = observe(post(source, &headers, body).await.unwrap()).await;
        assert_eq!(
            (status, json["error"].as_str()),
            (401, Some(code)),
            "{source}: {json}"
        );
        answers.push(transcript);
    }

    // A verified event its mapping cannot map (no `id` for the title): dead-lettered, with
    // the sender's headers minus credentials.
    let no_id = json!({"note": PAYLOAD_MARKER}).to_string();
    let headers = signed(&yaml("basic"), &env, &hook("basic"), &no_id, now);
    let (status, json, transcript) = observe(post("basic", &headers, no_id).await.unwrap()).await;
    assert_eq!(status, 202, "{json}");
    let dead_letter = json["dead_letter_ids"][0].as_str().unwrap().to_string();
    answers.push(transcript);

    // Admin requests with wrong tokens, then with the right one.
    let admin = |method: reqwest::Method, path: &str, authorization: Option<String>| {
        let mut request = client.request(method, format!("{base}{path}"));
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        request.send()
    };
    let wrong_admin = [
        None,
        Some(format!("Bearer {PRESENTED}")),
        Some(format!("Bearer {API_KEY}")),
        Some(format!(
            "Basic {}",
            BASE64.encode(format!("admin:{ADMIN_TOKEN}"))
        )),
        Some(format!("bearer {ADMIN_TOKEN}x")),
    ];
    for authorization in wrong_admin {
        for (method, path) in [
            (reqwest::Method::GET, "/admin/status"),
            (reqwest::Method::GET, "/admin/dlq"),
            (reqwest::Method::POST, "/admin/reload"),
            (reqwest::Method::POST, "/admin/dlq/replay"),
        ] {
            let response = admin(method, path, authorization.clone()).await.unwrap();
            let (status, json, transcript) = observe(response).await;
            assert_eq!(
                (status, json["error"].as_str()),
                (401, Some("unauthorized")),
                "{path} with {authorization:?}"
            );
            answers.push(transcript);
        }
    }
    let right = Some(format!("Bearer {ADMIN_TOKEN}"));
    for path in [
        "/admin/status".to_string(),
        "/admin/dlq".to_string(),
        format!("/admin/dlq/{dead_letter}"),
    ] {
        let response = admin(reqwest::Method::GET, &path, right.clone())
            .await
            .unwrap();
        let (status, json, transcript) = observe(response).await;
        assert_eq!(status, 200, "{path}: {json}");
        answers.push(transcript);
    }
    assert!(
        answers.last().unwrap().contains(PAYLOAD_MARKER),
        "the dead letter keeps its payload (so the check for credentials in it is not vacuous)"
    );

    // Let delivery run: four cases delivered with the good key, the refused key paused.
    eventually("delivery happens", Duration::from_secs(20), || async {
        let log = gateway.stdout();
        if log.contains("batch delivered") && log.contains("refuses this key") {
            Ok(())
        } else {
            Err(format!("{log}{}", gateway.stderr()))
        }
    })
    .await;
    let stats = get_json(
        &format!("http://127.0.0.1:{sandbox_port}/_sandbox/stats"),
        None,
    )
    .await;
    assert!(
        stats["status_counts"]["401"].as_u64() >= Some(1),
        "the refused key was refused: {stats}"
    );

    let (log, gateway_stderr) = gateway.terminate().await;
    let (sandbox_stdout, sandbox_stderr) = sandbox.terminate().await;
    drop(redis);

    // The capture is real: debug lines, refusals and delivery are all in it.
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not a JSON line: {l}")))
        .collect();
    assert!(
        lines.iter().any(|l| l["level"] == "DEBUG"),
        "debug lines are captured"
    );
    assert!(log.contains("webhook refused"), "{log}");
    assert!(log.contains("mapping failed"), "{log}");

    let mut places: Vec<(String, &str)> = vec![
        ("gateway stdout".into(), &log),
        ("gateway stderr".into(), &gateway_stderr),
        ("sandbox stdout".into(), &sandbox_stdout),
        ("sandbox stderr".into(), &sandbox_stderr),
    ];
    for (i, answer) in answers.iter().enumerate() {
        places.push((format!("answer #{i}"), answer));
    }
    for (what, value) in &forbidden {
        for (place, text) in &places {
            assert!(
                !text.contains(value.as_str()),
                "the {what} leaked into the {place}: {}",
                line_with(text, value)
            );
        }
    }
    for line in &lines {
        let level = line["level"].as_str().unwrap_or_default();
        if matches!(level, "INFO" | "WARN" | "ERROR") {
            assert!(
                !line.to_string().contains(PAYLOAD_MARKER),
                "a payload reached the log at {level}: {line}"
            );
        }
    }
}
