//! What the operator and the mapping author rely on: metrics from startup, dry-run replays
//! (admin API and CLI, both backends), the shipped alert rules and dashboard, asymmetric
//! Standard Webhooks signatures, and the CLI's manners (broken pipes, colours, variable names).

use std::time::Duration;

use casegate::inbound::Headers;
use serde_json::Value;

use crate::support::gateway::{Backend, GatewayOptions, TestGateway};
use crate::support::get_text;
use crate::support::redis_server::RedisServer;
use crate::support::sandbox::TestSandbox;
use crate::support::wait::eventually;

const TOKEN: &str = "operator-token-for-tests-0123456789abcdef";

fn json() -> Headers {
    [("content-type", "application/json")].into_iter().collect()
}

/// A queue id of this test's own, so process-wide metrics of other tests do not mix in.
fn queue(n: u8) -> String {
    format!("00000000-0000-4000-8000-0000000014{n:02x}")
}

/// A rule whose title needs `$.order.number`.
fn strict(queue: &str) -> String {
    format!(
        "verify: {{scheme: none}}\nrules:\n  - {{name: orders, queue: {queue}, title: 'Order {{{{ $.order.number }}}}'}}\n"
    )
}

/// The same rule, tolerant of a missing number.
fn fixed(queue: &str) -> String {
    format!(
        "verify: {{scheme: none}}\nrules:\n  - {{name: orders, queue: {queue}, title: 'Order {{{{ $.id }}}}'}}\n"
    )
}

async fn admin(gateway: &TestGateway, method: reqwest::Method, path: &str) -> (u16, Value) {
    let response = crate::support::http_client()
        .request(method, gateway.url(path))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn scrape(gateway: &TestGateway) -> String {
    get_text(&gateway.url("/metrics"), None).await
}

/// The value of one exact series (`name{labels}`) in a scrape.
fn value(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_counter_family_is_at_zero_from_startup_and_for_sources_added_by_reload() {
    let q = queue(1);
    let gateway = TestGateway::start(
        GatewayOptions::embedded(&[("zero-a.yaml", &strict(&q))])
            .setting("CASEGATE_ADMIN__TOKEN", TOKEN),
    )
    .await;
    let metrics = scrape(&gateway).await;
    for family in [
        "casegate_webhooks_total",
        "casegate_cases_enqueued_total",
        "casegate_cases_delivered_total",
        "casegate_cases_dead_lettered_total",
        "casegate_api_responses_total",
        "casegate_api_rate_limited_total",
        "casegate_mapping_reloads_total",
        "casegate_buffer_depth",
        "casegate_buffer_oldest_case_age_seconds",
        "casegate_delivery_paused",
    ] {
        assert!(
            metrics.contains(&format!("# HELP {family} ")),
            "no HELP for {family}:\n{metrics}"
        );
    }
    for outcome in casegate::prometheus::WEBHOOK_OUTCOMES {
        let series =
            format!(r#"casegate_webhooks_total{{source="zero-a",outcome="{outcome}",reason=""}}"#);
        assert_eq!(value(&metrics, &series), Some(0.0), "{series}:\n{metrics}");
    }
    for series in [
        format!(r#"casegate_cases_enqueued_total{{queue="{q}"}}"#),
        format!(r#"casegate_cases_delivered_total{{queue="{q}"}}"#),
        format!(r#"casegate_cases_dead_lettered_total{{kind="refused",queue="{q}"}}"#),
        r#"casegate_cases_dead_lettered_total{kind="mapping_failure",source="zero-a"}"#.into(),
        format!(r#"casegate_delivery_paused{{kind="queue",name="{q}"}}"#),
        format!(r#"casegate_buffer_depth{{queue="{q}"}}"#),
        format!(r#"casegate_buffer_oldest_case_age_seconds{{queue="{q}"}}"#),
    ] {
        assert_eq!(value(&metrics, &series), Some(0.0), "{series}:\n{metrics}");
    }

    // A mapping failure is counted as a dead letter of its kind.
    let answer = gateway.post("zero-a", &json(), r#"{"id": "x"}"#).await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    let metrics = scrape(&gateway).await;
    assert_eq!(
        value(
            &metrics,
            r#"casegate_cases_dead_lettered_total{kind="mapping_failure",source="zero-a"}"#
        ),
        Some(1.0),
        "{metrics}"
    );

    // A source added by a reload starts at zero too.
    let q2 = queue(2);
    std::fs::write(gateway.dir.path().join("mappings/zero-b.yaml"), fixed(&q2)).unwrap();
    let (status, body) = admin(&gateway, reqwest::Method::POST, "/admin/reload").await;
    assert_eq!(status, 200, "{body}");
    let metrics = scrape(&gateway).await;
    for series in [
        r#"casegate_webhooks_total{source="zero-b",outcome="accepted",reason=""}"#.to_string(),
        format!(r#"casegate_cases_enqueued_total{{queue="{q2}"}}"#),
        format!(r#"casegate_buffer_depth{{queue="{q2}"}}"#),
    ] {
        assert_eq!(value(&metrics, &series), Some(0.0), "{series}:\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffer_gauges_fall_to_zero_when_the_queue_drains() {
    let q = queue(3);
    let held = TestGateway::start(
        GatewayOptions::embedded(&[("drain.yaml", &fixed(&q))])
            .setting("CASEGATE_DELIVERY__ENABLED", "false"),
    )
    .await;
    for id in ["a", "b"] {
        let answer = held
            .post("drain", &json(), format!(r#"{{"id": "{id}"}}"#))
            .await;
        assert_eq!(answer.status, 202, "{}", answer.body);
    }
    let depth = format!(r#"casegate_buffer_depth{{queue="{q}"}}"#);
    let age = format!(r#"casegate_buffer_oldest_case_age_seconds{{queue="{q}"}}"#);
    let metrics = scrape(&held).await;
    assert_eq!(value(&metrics, &depth), Some(2.0), "{metrics}");
    let dir = held.stop().await;

    let sandbox = TestSandbox::start(300, Duration::from_secs(60)).await;
    let mut options = GatewayOptions::embedded(&[("drain.yaml", &fixed(&q))]);
    options.settings.extend(sandbox.settings());
    let gateway = TestGateway::start_in(options, dir).await;
    assert_eq!(sandbox.wait_for(&q, 2, Duration::from_secs(20)).await, 2);
    eventually(
        "the gauges fall once the queue drained",
        Duration::from_secs(20),
        || async {
            let metrics = scrape(&gateway).await;
            if value(&metrics, &depth) == Some(0.0) && value(&metrics, &age) == Some(0.0) {
                Ok(())
            } else {
                Err(metrics)
            }
        },
    )
    .await;
}

/// The `casegate` binary run as a CLI against `gateway`'s configuration.
async fn cli(
    gateway: &TestGateway,
    extra_env: &[(String, String)],
    args: &[&str],
) -> (bool, String, String) {
    let address = gateway.base_url.trim_start_matches("http://");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_casegate"))
        .args(args)
        .current_dir(gateway.dir.path())
        .env("CASEGATE_LISTEN", address)
        .env("CASEGATE_ADMIN__TOKEN", TOKEN)
        .env(
            "CASEGATE_BUFFER__PATH",
            gateway.dir.path().join("buffer.redb"),
        )
        .env("CASEGATE_MAPPINGS", gateway.dir.path().join("mappings"))
        .envs(extra_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .await
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_replay_shows_what_each_dead_letter_would_become_and_writes_nothing() {
    let redis = RedisServer::start().await;
    for backend in ["embedded", "redis"] {
        let q = queue(if backend == "redis" { 5 } else { 4 });
        let mut options = GatewayOptions::embedded(&[("dry.yaml", &strict(&q))])
            .setting("CASEGATE_ADMIN__TOKEN", TOKEN);
        let mut cli_env = Vec::new();
        if backend == "redis" {
            options.backend = Backend::Redis(redis.url());
            cli_env = vec![
                ("CASEGATE_BUFFER__BACKEND".to_string(), "redis".to_string()),
                ("CASEGATE_BUFFER__REDIS_URL".to_string(), redis.url()),
            ];
        }
        let gateway = TestGateway::start(options).await;
        for id in ["a", "b"] {
            let answer = gateway
                .post("dry", &json(), format!(r#"{{"id": "{id}"}}"#))
                .await;
            assert_eq!(answer.body["accepted"], 0, "{backend}: {}", answer.body);
        }
        let (_, listed) = admin(&gateway, reqwest::Method::GET, "/admin/dlq").await;
        let ids: Vec<String> = listed["dead_letters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(ids.len(), 2, "{backend}: {listed}");

        // Unfixed: each would still fail, and says why.
        let (status, dry) = admin(
            &gateway,
            reqwest::Method::POST,
            "/admin/dlq/replay?dry_run=true",
        )
        .await;
        assert_eq!(status, 200, "{backend}: {dry}");
        for preview in dry["dry_run"].as_array().unwrap() {
            assert_eq!(preview["result"], "still_failing", "{backend}: {dry}");
            assert!(
                preview["reason"].as_str().unwrap().contains("order.number"),
                "{backend}: {dry}"
            );
        }

        // Fixed: each would become its case; nothing is written.
        std::fs::write(gateway.dir.path().join("mappings/dry.yaml"), fixed(&q)).unwrap();
        let (status, _) = admin(&gateway, reqwest::Method::POST, "/admin/reload").await;
        assert_eq!(status, 200);
        let (_, dry) = admin(
            &gateway,
            reqwest::Method::POST,
            "/admin/dlq/replay?dry_run=true&source=dry",
        )
        .await;
        let titles: Vec<&str> = dry["dry_run"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                assert_eq!(p["result"], "would_enqueue", "{backend}: {dry}");
                p["cases"][0]["title"].as_str().unwrap()
            })
            .collect();
        assert_eq!(titles, ["Order a", "Order b"], "{backend}: {dry}");
        // Paged: one letter per page, `next` leads to the second, and the last page says so.
        let (_, first) = admin(
            &gateway,
            reqwest::Method::POST,
            "/admin/dlq/replay?dry_run=true&limit=1",
        )
        .await;
        assert_eq!(first["dry_run"].as_array().unwrap().len(), 1, "{first}");
        assert_eq!(first["dry_run"][0]["id"], ids[0].as_str(), "{first}");
        let next = first["next"].as_str().expect("a next page").to_string();
        let (_, second) = admin(
            &gateway,
            reqwest::Method::POST,
            &format!("/admin/dlq/replay?dry_run=true&limit=1&after={next}"),
        )
        .await;
        assert_eq!(second["dry_run"][0]["id"], ids[1].as_str(), "{second}");
        let (_, last) = admin(
            &gateway,
            reqwest::Method::POST,
            &format!("/admin/dlq/replay?dry_run=true&limit=1&after={}", ids[1]),
        )
        .await;
        assert!(last["dry_run"].as_array().unwrap().is_empty(), "{last}");
        assert!(last["next"].is_null(), "{last}");
        let (_, one) = admin(
            &gateway,
            reqwest::Method::POST,
            &format!("/admin/dlq/{}/replay?dry_run=true", ids[0]),
        )
        .await;
        assert_eq!(one["cases"][0]["queue"], q.as_str(), "{backend}: {one}");

        // The CLI: through the admin API (embedded store held by the gateway) or the buffer.
        let (ok, out, err) =
            cli(&gateway, &cli_env, &["dlq", "replay", "--all", "--dry-run"]).await;
        assert!(ok, "{backend}: {out}{err}");
        assert_eq!(
            out.matches("would enqueue 1 case(s)").count(),
            2,
            "{backend}: {out}"
        );
        assert!(
            out.contains("\"Order b\"") && out.contains("nothing was written"),
            "{out}"
        );
        let (ok, out, err) = cli(&gateway, &cli_env, &["try", "--dead-letter", &ids[0]]).await;
        assert!(ok, "{backend}: {out}{err}");
        assert!(out.contains("\"title\": \"Order a\""), "{backend}: {out}");
        let strict_file = gateway.dir.path().join("strict.yaml");
        std::fs::write(&strict_file, strict(&q)).unwrap();
        let (ok, out, err) = cli(
            &gateway,
            &cli_env,
            &[
                "try",
                "--dead-letter",
                &ids[1],
                strict_file.to_str().unwrap(),
            ],
        )
        .await;
        assert!(!ok, "{backend}: {out}");
        assert!(
            err.contains("mapping failed") && err.contains("order.number"),
            "{err}"
        );

        // Nothing was written: both dead letters remain, then a real replay enqueues them.
        let (_, listed) = admin(&gateway, reqwest::Method::GET, "/admin/dlq").await;
        assert_eq!(
            listed["dead_letters"].as_array().unwrap().len(),
            2,
            "{listed}"
        );
        let (ok, out, err) = cli(&gateway, &cli_env, &["dlq", "replay", "--all"]).await;
        assert!(
            ok && out.contains("replayed 2 dead letter(s); 0 still failing"),
            "{out}{err}"
        );
        let (_, listed) = admin(&gateway, reqwest::Method::GET, "/admin/dlq").await;
        assert_eq!(listed["dead_letters"], serde_json::json!([]), "{listed}");
        gateway.stop().await;
    }
}

/// Metric names a Prometheus expression or dashboard uses.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let re = regex::Regex::new(r"casegate_[a-z_]+").unwrap();
    re.find_iter(text).map(|m| m.as_str().to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alert_rules_and_dashboard_use_only_metrics_casegate_exports() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let rules_file = root.join("deploy/prometheus/casegate-alerts.yml");
    let rules = std::fs::read_to_string(&rules_file).unwrap();
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("deploy/grafana/casegate-dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut used = metric_names(&rules);
    let mut panels = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        panels += 1;
        for target in panel["targets"].as_array().unwrap() {
            used.extend(metric_names(target["expr"].as_str().unwrap()));
        }
    }
    assert!(panels >= 8 && used.len() >= 8, "{used:?}");

    // A real gateway, after startup and one delivered case (histograms appear on first use).
    let q = queue(6);
    let sandbox = TestSandbox::start(300, Duration::from_secs(60)).await;
    let mut options = GatewayOptions::embedded(&[("exported.yaml", &fixed(&q))]);
    options.settings.extend(sandbox.settings());
    let gateway = TestGateway::start(options).await;
    let startup = scrape(&gateway).await;
    let answer = gateway.post("exported", &json(), r#"{"id": "1"}"#).await;
    assert_eq!(answer.status, 202);
    assert_eq!(sandbox.wait_for(&q, 1, Duration::from_secs(20)).await, 1);
    let metrics = eventually(
        "the end-to-end latency histogram appears",
        Duration::from_secs(10),
        || async {
            let metrics = scrape(&gateway).await;
            if metrics.contains("casegate_end_to_end_latency_seconds_bucket") {
                Ok(metrics)
            } else {
                Err(metrics)
            }
        },
    )
    .await;
    let exported = |text: &str| -> std::collections::BTreeSet<String> {
        text.lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .flat_map(|l| {
                let mut parts = l.split_whitespace();
                let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
                if kind == "histogram" {
                    ["_bucket", "_sum", "_count"]
                        .iter()
                        .map(|s| format!("{name}{s}"))
                        .collect::<Vec<_>>()
                } else {
                    vec![name.to_string()]
                }
            })
            .collect()
    };
    let exported_now = exported(&metrics);
    for name in &used {
        assert!(
            exported_now.contains(name),
            "{name} is not exported:\n{metrics}"
        );
    }
    // Whatever the alert rules use is there from startup, before any traffic.
    let exported_at_startup = exported(&startup);
    for name in metric_names(&rules) {
        assert!(
            exported_at_startup.contains(&name),
            "{name} missing at startup"
        );
    }

    // promtool (the `prometheus` system package; .ci/run installs it) checks the rules.
    match std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(&rules_file)
        .output()
    {
        Ok(output) => assert!(
            output.status.success(),
            "promtool check rules:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
        Err(error) => eprintln!("promtool not installed ({error}); rules not checked by it"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_asymmetric_v1a_signature_is_accepted_over_http_and_a_forged_one_refused() {
    use base64::Engine as _;
    use ed25519_dalek::Signer as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    let public = format!("whpk_{}", b64.encode(key.verifying_key().as_bytes()));
    let q = queue(7);
    let mapping = format!(
        "verify: {{scheme: standard-webhooks, public_keys: ['{public}']}}\nrules:\n  - {{name: all, queue: {q}, title: 'Event {{{{ $.id }}}}'}}\n"
    );
    let gateway = TestGateway::start(GatewayOptions::embedded(&[("asym.yaml", &mapping)])).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let body = r#"{"id": "evt_1"}"#;
    let signed = |id: &str, signer: &ed25519_dalek::SigningKey| {
        let message = format!("{id}.{now}.{body}");
        let sig = b64.encode(signer.sign(message.as_bytes()).to_bytes());
        let headers: Headers = [
            ("content-type", "application/json".to_string()),
            ("webhook-id", id.to_string()),
            ("webhook-timestamp", now.clone()),
            ("webhook-signature", format!("v1,bm90LWEtbWFj v1a,{sig}")),
        ]
        .into_iter()
        .collect();
        headers
    };
    let answer = gateway.post("asym", &signed("msg_1", &key), body).await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    let forger = ed25519_dalek::SigningKey::from_bytes(&[8u8; 32]);
    let answer = gateway.post("asym", &signed("msg_2", &forger), body).await;
    assert_eq!(answer.status, 401, "{}", answer.body);
    assert_eq!(
        answer.body["error"], "signature_mismatch",
        "{}",
        answer.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn printing_commands_exit_quietly_on_a_closed_pipe_and_name_unknown_variables() {
    let dir = tempfile::tempdir().unwrap();
    let mapping = dir.path().join("m.yaml");
    std::fs::write(&mapping, fixed(&queue(8))).unwrap();
    let payload = dir.path().join("p.json");
    std::fs::write(&payload, r#"{"id": "pipe"}"#).unwrap();
    // The reader is gone before the command writes: `casegate try ... | head -0`.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_casegate"))
        .args(["try"])
        .arg(&mapping)
        .arg(&payload)
        .current_dir(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
        "{stderr}"
    );

    let output = std::process::Command::new(env!("CARGO_BIN_EXE_casegate"))
        .args(["check"])
        .arg(dir.path())
        .current_dir(dir.path())
        .env("CASEGATE_FOO", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("unknown environment variable CASEGATE_FOO"),
        "{stderr}"
    );
}

/// `casegate try` applies the gateway's bound on one event's cases, so it refuses what ingest
/// would dead-letter for its size.
#[test]
fn try_applies_the_configured_bound_on_an_event_s_cases() {
    let dir = tempfile::tempdir().unwrap();
    let mapping = dir.path().join("m.yaml");
    std::fs::write(&mapping, fixed(&queue(9))).unwrap();
    let payload = dir.path().join("p.json");
    std::fs::write(&payload, format!(r#"{{"id": "{}"}}"#, "x".repeat(300))).unwrap();
    let try_with = |bound: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_casegate"))
            .args(["try"])
            .arg(&mapping)
            .arg(&payload)
            .current_dir(dir.path())
            .env("CASEGATE_INGRESS__MAX_EVENT_CASES_BYTES", bound)
            .output()
            .unwrap()
    };
    let refused = try_with("200");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        stderr.contains("mapping failed") && stderr.contains("200"),
        "{stderr}"
    );
    let accepted = try_with("65536");
    let stdout = String::from_utf8_lossy(&accepted.stdout);
    assert!(
        accepted.status.success(),
        "{}",
        String::from_utf8_lossy(&accepted.stderr)
    );
    assert!(stdout.contains(&"x".repeat(300)), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_logs_written_to_a_file_carry_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("mappings")).unwrap();
    std::fs::write(dir.path().join("mappings/plain.yaml"), fixed(&queue(9))).unwrap();
    let log = dir.path().join("casegate.log");
    let port = crate::support::free_port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_casegate"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--mappings",
        ])
        .arg(dir.path().join("mappings"))
        .current_dir(dir.path())
        .env("CASEGATE_BUFFER__PATH", dir.path().join("buffer.redb"))
        .env("CASEGATE_LOG__FORMAT", "text")
        .stdout(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let text = eventually(
        "casegate logs that it listens",
        Duration::from_secs(20),
        || async {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("casegate listening") {
                Ok(text)
            } else {
                Err(text)
            }
        },
    )
    .await;
    child.start_kill().unwrap();
    let _ = child.wait().await;
    assert!(text.contains("WARN") || text.contains("INFO"), "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "colour codes in a log file:\n{text:?}"
    );
}
