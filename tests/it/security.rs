//! Security properties against real servers: secrets never reach a log line or an answer, slow
//! clients cannot hold a connection (or the gateway) hostage, and a captured signature cannot be
//! replayed.

use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use casegate::env::Env;
use casegate::inbound::{Headers, InboundRequest};
use casegate::mapping::CompiledMapping;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::support::gateway::{GatewayOptions, QUEUE, TestGateway, drain, embedded_buffer, sign};

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
    let mapping = CompiledMapping::compile(Path::new("signer.yaml"), yaml, env).unwrap();
    let mut request = InboundRequest {
        method: "POST".into(),
        url: url.into(),
        headers: [("content-type", "application/json")].into_iter().collect(),
        body: Bytes::from(body.to_string()),
    };
    mapping.verifier.sign(&mut request, now);
    request.headers
}

use crate::support::free_port;

/// A child process whose stdout and stderr are read continuously (a full pipe would block a
/// process logging at debug level).
struct Captured {
    child: tokio::process::Child,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    pumps: Vec<tokio::task::JoinHandle<()>>,
}

impl Captured {
    fn spawn(mut command: tokio::process::Command) -> Captured {
        command
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().unwrap();
        let (stdout, stderr) = (Arc::default(), Arc::default());
        let pumps = vec![
            tokio::spawn(pump(child.stdout.take().unwrap(), Arc::clone(&stdout))),
            tokio::spawn(pump(child.stderr.take().unwrap(), Arc::clone(&stderr))),
        ];
        Captured {
            child,
            stdout,
            stderr,
            pumps,
        }
    }

    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    fn exited(&mut self) -> bool {
        self.child.try_wait().unwrap().is_some()
    }

    /// SIGTERM, then waits for the exit and the end of both pipes: (stdout, stderr).
    async fn terminate(mut self) -> (String, String) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        let Ok(status) = tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await
        else {
            panic!(
                "the process stops within 20 s of SIGTERM; it printed:\n{}\n{}",
                self.stdout(),
                self.stderr()
            );
        };
        let status = status.unwrap();
        for pump in std::mem::take(&mut self.pumps) {
            pump.await.unwrap();
        }
        assert!(status.success(), "exit {status:?}: {}", self.stderr());
        (self.stdout(), self.stderr())
    }
}

async fn pump(mut from: impl AsyncRead + Unpin, into: Arc<Mutex<Vec<u8>>>) {
    let mut chunk = [0u8; 8192];
    while let Ok(n) = from.read(&mut chunk).await {
        if n == 0 {
            break;
        }
        into.lock().unwrap().extend_from_slice(&chunk[..n]);
    }
}

/// A `redis-server` that requires a password, on its own port and directory.
struct PasswordRedis {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl PasswordRedis {
    async fn start(password: &str) -> PasswordRedis {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let binary = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let child = std::process::Command::new(binary)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--requirepass",
                password,
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        // Owned (and so killed and reaped on drop) before anything can panic.
        let redis = PasswordRedis {
            child,
            port,
            _dir: dir,
        };
        for _ in 0..200 {
            if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return redis;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("redis-server did not come up on port {port}");
    }
}

impl Drop for PasswordRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
    let redis = PasswordRedis::start(REDIS_PASSWORD).await;
    let sandbox_port = free_port();
    let sandbox = Captured::spawn({
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_casegate"));
        command
            .args(["sandbox", "--port", &sandbox_port.to_string()])
            .args(["--api-key", API_KEY])
            .current_dir(dir.path());
        command
    });
    let port = free_port();
    let mut gateway = Captured::spawn({
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_casegate"));
        command
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--mappings",
            ])
            .arg(&mappings_dir)
            .current_dir(dir.path())
            .envs(secret_env())
            .env("CASEGATE_LOG__LEVEL", "debug")
            .env("CASEGATE_LOG__FORMAT", "json")
            .env("CASEGATE_INGRESS__WORKERS", "2")
            .env("CASEGATE_BUFFER__BACKEND", "redis")
            .env(
                "CASEGATE_BUFFER__REDIS_URL",
                format!("redis://:{REDIS_PASSWORD}@127.0.0.1:{}/", redis.port),
            )
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
    let mut up = false;
    for _ in 0..400 {
        assert!(
            !gateway.exited(),
            "gateway exited while starting: {}{}",
            gateway.stdout(),
            gateway.stderr()
        );
        if client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(up, "gateway did not become ready: {}", gateway.stdout());

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
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = gateway.stdout();
        if log.contains("batch delivered") && log.contains("refuses this key") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "delivery did not happen: {log}{}",
            gateway.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stats: Value = client
        .get(format!("http://127.0.0.1:{sandbox_port}/_sandbox/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
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

// ---------------------------------------------------------------------------------------------
// Slow clients
// ---------------------------------------------------------------------------------------------

fn open_mapping() -> String {
    format!(
        "verify: {{scheme: none}}\nrules:\n  - {{name: all, queue: {QUEUE}, title: 'Order {{{{ $.id }}}}'}}\n"
    )
}

async fn slow_gateway() -> TestGateway {
    TestGateway::start(
        GatewayOptions::embedded(&[("src.yaml", &open_mapping())])
            .setting("CASEGATE_INGRESS__CLIENT_TIMEOUT_SECS", "1"),
    )
    .await
}

/// A complete, valid webhook request for `src` as raw HTTP/1.1: head and body.
fn raw_request(id: u32) -> (String, String) {
    let body = format!(r#"{{"id": {id}}}"#);
    let head = format!(
        "POST /hooks/src HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\n\
         x-padding: {}\r\ncontent-length: {}\r\n\r\n",
        "p".repeat(40),
        body.len()
    );
    (head, body)
}

/// What a dribbling client experienced.
struct Dribbled {
    /// Status line, headers and body of the answer, if one came.
    answer: Option<(String, Vec<String>, Vec<u8>)>,
    /// From the first byte sent to the answer (or to the end of the connection).
    after: Duration,
    /// Whether the connection was closed by the server after the answer.
    closed: bool,
    /// Bytes of `slow` that went out before the answer.
    slow_bytes_sent: usize,
}

/// Connects, sends `fast` at once, then `slow` one byte every `every`, and reads the answer.
async fn dribble(address: &str, fast: &[u8], slow: &[u8], every: Duration) -> Dribbled {
    let stream = TcpStream::connect(address).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (read, write) = stream.into_split();
    dribble_on(read, write, fast, slow, every).await
}

/// [`dribble`] on an open connection.
async fn dribble_on(
    mut read: OwnedReadHalf,
    mut write: OwnedWriteHalf,
    fast: &[u8],
    slow: &[u8],
    every: Duration,
) -> Dribbled {
    let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let writer = {
        let (fast, slow, sent) = (fast.to_vec(), slow.to_vec(), Arc::clone(&sent));
        tokio::spawn(async move {
            if !fast.is_empty() && write.write_all(&fast).await.is_err() {
                return;
            }
            for byte in slow {
                if write.write_all(&[byte]).await.is_err() {
                    return;
                }
                sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(every).await;
            }
            // Keep the connection open (no FIN) until aborted.
            std::future::pending::<()>().await;
        })
    };
    let answer = tokio::time::timeout(Duration::from_secs(8), read_answer(&mut read))
        .await
        .ok()
        .flatten();
    let after = started.elapsed();
    let slow_bytes_sent = sent.load(std::sync::atomic::Ordering::SeqCst);
    let mut rest = [0u8; 64];
    let closed = matches!(
        tokio::time::timeout(Duration::from_secs(2), read.read(&mut rest)).await,
        Ok(Ok(0)) | Ok(Err(_))
    );
    writer.abort();
    Dribbled {
        answer,
        after,
        closed,
        slow_bytes_sent,
    }
}

/// Reads one HTTP/1.1 answer with a `content-length` (actix always sends one for these), or
/// `None` when the connection ends before a complete head.
async fn read_answer(read: &mut OwnedReadHalf) -> Option<(String, Vec<String>, Vec<u8>)> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        match read.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let mut lines = head.split("\r\n").map(str::to_string);
    let status = lines.next().unwrap_or_default();
    let headers: Vec<String> = lines.map(|l| l.to_ascii_lowercase()).collect();
    let length = headers
        .iter()
        .find_map(|h| h.strip_prefix("content-length:"))
        .map(|v| v.trim().parse::<usize>().unwrap())
        .unwrap_or(0);
    let mut body = buffer[head_end + 4..].to_vec();
    while body.len() < length {
        match read.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    Some((status, headers, body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_dribbling_their_headers_are_cut_off_with_408_while_others_are_served() {
    let gateway = slow_gateway().await;
    let address = gateway.base_url.trim_start_matches("http://").to_string();
    let (head, body) = raw_request(666);
    let request = format!("{head}{body}");
    // Eight slowloris connections: one byte of the request every 200 ms (the whole request
    // would take about 30 s).
    let slow: Vec<_> = (0..8)
        .map(|_| {
            let (address, request) = (address.clone(), request.clone());
            tokio::spawn(async move {
                dribble(
                    &address,
                    b"",
                    request.as_bytes(),
                    Duration::from_millis(200),
                )
                .await
            })
        })
        .collect();
    // Meanwhile a normal client is served promptly.
    let headers: Headers = [("content-type", "application/json")].into_iter().collect();
    for id in 0..10 {
        let started = Instant::now();
        let answer = gateway
            .post("src", &headers, format!(r#"{{"id": {id}}}"#))
            .await;
        assert_eq!(answer.status, 202, "{}", answer.body);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "a normal webhook took {:?} next to slow clients",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    for task in slow {
        let outcome = task.await.unwrap();
        // The connection's head deadline answers 408 with the JSON error shape every other
        // error has (not actix's bare, empty 408) and closes the connection.
        let (status, headers, body) = outcome.answer.expect("a 408 answer before the close");
        assert_eq!(status, "HTTP/1.1 408 Request Timeout");
        assert!(
            headers
                .iter()
                .any(|h| h == "content-type: application/json"),
            "{headers:?}"
        );
        let body: serde_json::Value = serde_json::from_slice(&body).expect("a JSON body");
        assert_eq!(body["error"], "request_timeout");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert!(outcome.closed, "the connection is closed after the 408");
        assert!(
            outcome.after >= Duration::from_millis(400) && outcome.after < Duration::from_secs(3),
            "answered after {:?}",
            outcome.after
        );
        assert!(outcome.slow_bytes_sent < request.len() / 2);
    }
    let dir = gateway.stop().await;
    let titles: Vec<String> = drain(&embedded_buffer(dir.path()))
        .await
        .into_iter()
        .map(|c| c.record.title)
        .collect();
    assert_eq!(titles.len(), 10, "{titles:?}");
    assert!(!titles.contains(&"Order 666".to_string()));
}

/// actix-http arms its head timer (`client_request_timeout`) only for the FIRST request of a
/// connection, and the keep-alive timer is cleared by the first byte of the next request, so with
/// keep-alive on nothing bounds the headers of a second request. `ingress.keep_alive_secs = 0`
/// (for a gateway exposed without a proxy) closes that gap: the connection ends after the first
/// answer, and the dribbler is cut off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_keep_alive_a_client_dribbling_a_second_request_is_cut_off_too() {
    let gateway = TestGateway::start(
        GatewayOptions::embedded(&[("src.yaml", &open_mapping())])
            .setting("CASEGATE_INGRESS__CLIENT_TIMEOUT_SECS", "1")
            .setting("CASEGATE_INGRESS__KEEP_ALIVE_SECS", "0"),
    )
    .await;
    let address = gateway.base_url.trim_start_matches("http://").to_string();
    let stream = TcpStream::connect(&address).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (mut read, mut write) = stream.into_split();
    write
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: gateway\r\n\r\n")
        .await
        .unwrap();
    let (status, _, _) = read_answer(&mut read).await.expect("a first answer");
    assert_eq!(status, "HTTP/1.1 200 OK");
    let (head, body) = raw_request(668);
    let request = format!("{head}{body}");
    let outcome = dribble_on(
        read,
        write,
        b"",
        request.as_bytes(),
        Duration::from_millis(200),
    )
    .await;
    assert!(
        outcome.answer.is_some() || outcome.closed,
        "after {:?} and {} bytes the connection is still held open",
        outcome.after,
        outcome.slow_bytes_sent
    );
    assert!(
        outcome.after < Duration::from_secs(3),
        "{:?}",
        outcome.after
    );
    let dir = gateway.stop().await;
    assert!(drain(&embedded_buffer(dir.path())).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_slower_than_the_client_timeout_gets_408_request_timeout_as_json() {
    let gateway = slow_gateway().await;
    let address = gateway.base_url.trim_start_matches("http://").to_string();
    let (head, body) = raw_request(667);
    let outcome = dribble(
        &address,
        head.as_bytes(),
        body.as_bytes(),
        Duration::from_millis(200),
    )
    .await;
    // The head arrived at once, so the handler ran; its own read timeout (the same
    // `ingress.client_timeout_secs`) answers the documented JSON error.
    let (status, headers, answer) = outcome.answer.expect("an answer");
    assert_eq!(status, "HTTP/1.1 408 Request Timeout");
    assert!(
        headers
            .iter()
            .any(|h| h == "content-type: application/json"),
        "{headers:?}"
    );
    let json: Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(json["error"], "request_timeout", "{json}");
    assert!(!json["message"].as_str().unwrap_or_default().is_empty());
    assert!(
        outcome.after >= Duration::from_millis(950) && outcome.after < Duration::from_secs(3),
        "answered after {:?}",
        outcome.after
    );
    assert!(outcome.slow_bytes_sent < body.len());
    let dir = gateway.stop().await;
    assert!(drain(&embedded_buffer(dir.path())).await.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Replayed signatures
// ---------------------------------------------------------------------------------------------

fn pinned_now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_764_000_000)
}

async fn gateway_at(now: SystemTime, mappings: &[(&str, &str)]) -> TestGateway {
    let mut options = GatewayOptions::embedded(mappings);
    options.now = Some(now);
    TestGateway::start(options).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stripe_signature_replayed_after_the_tolerance_is_refused_as_stale() {
    let mapping = format!(
        "verify: {{scheme: stripe, secrets: [whsec_replay_test]}}\nrules:\n  - {{name: all, queue: {QUEUE}, title: 'Event {{{{ $.id }}}}'}}\n"
    );
    let body = r#"{"id": "evt_1", "type": "invoice.paid"}"#;
    let signed_at = pinned_now();
    // The captured request: headers as the provider sent them at `signed_at`.
    let captured = sign(
        &mapping,
        "http://gateway/hooks/stripe",
        body,
        Headers::new(),
        signed_at,
    );

    // Replayed within the tolerance (299 s later) it still verifies...
    let inside = gateway_at(
        signed_at + Duration::from_secs(299),
        &[("stripe.yaml", &mapping)],
    )
    .await;
    let answer = inside.post("stripe", &captured, body).await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    inside.stop().await;

    // ...but not once the tolerance has passed.
    let later = signed_at + Duration::from_secs(301);
    let outside = gateway_at(later, &[("stripe.yaml", &mapping)]).await;
    let answer = outside.post("stripe", &captured, body).await;
    assert_eq!(
        (answer.status, answer.body["error"].as_str()),
        (401, Some("stale_timestamp")),
        "{}",
        answer.body
    );
    // The same event freshly signed at the gateway's time is accepted: the refusal is about
    // the replayed timestamp.
    let fresh = sign(
        &mapping,
        "http://gateway/hooks/stripe",
        body,
        Headers::new(),
        later,
    );
    assert_eq!(outside.post("stripe", &fresh, body).await.status, 202);
    let dir = outside.stop().await;
    assert_eq!(drain(&embedded_buffer(dir.path())).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standard_webhook_replayed_inside_the_tolerance_is_a_duplicate() {
    let mapping = format!(
        "verify: {{scheme: standard-webhooks, secrets: [whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw]}}\n\
         delivery_id: {{header: webhook-id}}\n\
         rules:\n  - {{name: all, queue: {QUEUE}, title: 'Event {{{{ $.data.id }}}}'}}\n"
    );
    let gateway = gateway_at(pinned_now(), &[("std.yaml", &mapping)]).await;
    let url = gateway.url("/hooks/std");
    let body = r#"{"type": "invoice.paid", "data": {"id": "inv_1"}}"#;
    let captured = sign(
        &mapping,
        &url,
        body,
        Headers::new(),
        pinned_now() - Duration::from_secs(60),
    );
    let id = captured.get("webhook-id").unwrap().to_string();

    let first = gateway.post("std", &captured, body).await;
    assert_eq!(first.status, 202, "{}", first.body);
    // The very same bytes again, still inside the tolerance: acknowledged, not cased again.
    let replay = gateway.post("std", &captured, body).await;
    assert_eq!(
        (replay.status, replay.body),
        (200, json!({"duplicate": true}))
    );
    // The sender's own retry re-signs with a fresh timestamp but keeps the id: a duplicate too.
    let retry = sign(
        &mapping,
        &url,
        body,
        [("webhook-id", id.as_str())].into_iter().collect(),
        pinned_now() - Duration::from_secs(5),
    );
    let retried = gateway.post("std", &retry, body).await;
    assert_eq!(
        (retried.status, retried.body),
        (200, json!({"duplicate": true}))
    );
    // A replayer cannot dodge the dedupe by changing the id: the id is signed.
    let forged: Headers = captured
        .iter()
        .map(|(name, value)| match name {
            "webhook-id" => (name, "msg_forged_id"),
            _ => (name, value),
        })
        .collect();
    let answer = gateway.post("std", &forged, body).await;
    assert_eq!(
        (answer.status, answer.body["error"].as_str()),
        (401, Some("signature_mismatch"))
    );
    let dir = gateway.stop().await;
    assert_eq!(drain(&embedded_buffer(dir.path())).await.len(), 1);
}
