//! README.md stays true: its configuration table matches `config/casegate.toml`, and its quick
//! start works as written (with free ports instead of the fixed ones).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::get_json;
use crate::support::process::{self, CasegateProcess};
use crate::support::wait::eventually;

fn repo_file(name: &str) -> String {
    std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(name)).unwrap()
}

/// Every setting of the shipped config file with its default, as the README writes it.
fn shipped_settings() -> BTreeMap<String, String> {
    let table: toml::Table = repo_file("config/casegate.toml").parse().unwrap();
    let mut settings = BTreeMap::new();
    fn walk(prefix: &str, table: &toml::Table, out: &mut BTreeMap<String, String>) {
        for (key, value) in table {
            let path = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            match value {
                toml::Value::Table(inner) if path == "duvo.api_keys" => {
                    assert!(inner.is_empty(), "named keys are not shipped");
                    out.insert("duvo.api_keys.<name>".into(), "none".into());
                }
                toml::Value::Table(inner) => walk(&path, inner, out),
                toml::Value::String(s) if s.is_empty() => {
                    out.insert(path, "empty".into());
                }
                toml::Value::String(s) => {
                    out.insert(path, s.clone());
                }
                other => {
                    out.insert(path, other.to_string());
                }
            }
        }
    }
    walk("", &table, &mut settings);
    settings
}

#[test]
fn the_readme_configuration_table_matches_the_shipped_config_file() {
    let readme = repo_file("README.md");
    let section = readme
        .split("## Configuration")
        .nth(1)
        .unwrap()
        .split("\n## ")
        .next()
        .unwrap();
    let mut documented = BTreeMap::new();
    for row in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let key = cells[1].trim_matches('`').to_string();
        let variable = cells[2].trim_matches('`');
        let expected_variable = format!(
            "CASEGATE_{}",
            key.replace('.', "__")
                .replace("<name>", "<NAME>")
                .to_uppercase()
        );
        assert_eq!(
            variable,
            expected_variable.replace("<name>", "<NAME>"),
            "variable of {key}"
        );
        documented.insert(key, cells[3].trim_matches('`').to_string());
    }
    assert_eq!(
        documented,
        shipped_settings(),
        "README table (left) vs config/casegate.toml (right)"
    );
}

/// The commands of the README's quick start, in order.
fn quick_start_commands() -> Vec<String> {
    let readme = repo_file("README.md");
    let section = readme
        .split("## Quick start")
        .nth(1)
        .unwrap()
        .split("\n## ")
        .next()
        .unwrap();
    let mut commands = Vec::new();
    let mut in_block = false;
    let mut current = String::new();
    for line in section.lines() {
        if line.starts_with("```") {
            in_block = !in_block;
            continue;
        }
        if in_block {
            current.push_str(line.trim_end_matches('\\').trim());
            current.push(' ');
            if !line.ends_with('\\') {
                commands.push(current.trim().to_string());
                current.clear();
            }
        }
    }
    commands
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_quick_start_delivers_a_sample_case_to_the_sandbox() {
    let commands = quick_start_commands();
    assert_eq!(commands[0], "cargo run --release -- serve --sandbox");
    assert_eq!(
        commands[1],
        "cargo run --release -- send-sample shopify-orders"
    );
    assert!(commands[2].starts_with(
        "curl -s -H 'Authorization: Bearer dv_sandbox' http://127.0.0.1:8081/v1/queues/"
    ));
    assert_eq!(commands[3], "cargo run --release -- status");
    assert_eq!(commands[4], "cargo run --release -- dlq list");
    assert_eq!(commands[5], "cargo test");
    let list_url = commands[2].split_whitespace().last().unwrap().to_string();

    let free = crate::support::free_port;
    let (port, sandbox_port) = (free(), free());
    let data = tempfile::tempdir().unwrap();
    let args = |command: &str| -> Vec<String> {
        command
            .trim_start_matches("cargo run --release -- ")
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    let mut command = process::command();
    command
        .args(args(&commands[0]))
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--sandbox-listen",
            &format!("127.0.0.1:{sandbox_port}"),
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("CASEGATE_BUFFER__PATH", data.path().join("casegate.redb"));
    let mut serve = CasegateProcess::spawn(command);
    serve.wait_until_up(port, "/healthz").await;

    let sent = process::command()
        .args(args(&commands[1]))
        .args(["--url", &format!("http://127.0.0.1:{port}")])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .await
        .unwrap();
    let printed = String::from_utf8_lossy(&sent.stdout);
    assert!(
        sent.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&sent.stderr)
    );
    assert!(
        printed.contains("202 Accepted") && printed.contains("\"accepted\":1"),
        "{printed}"
    );

    let list_url = list_url.replace("8081", &sandbox_port.to_string());
    let cases = eventually(
        "the sandbox holds the case",
        Duration::from_secs(5),
        || async {
            let cases = get_json(&list_url, Some("dv_sandbox")).await;
            if cases["total"].as_u64() == Some(1) {
                Ok(cases)
            } else {
                Err(cases)
            }
        },
    )
    .await;
    assert!(
        cases["cases"][0]["title"]
            .as_str()
            .unwrap()
            .starts_with("Paid order #1042"),
        "{cases}"
    );

    // The operator commands, as written: the admin token is the one serve --sandbox generated.
    let operate = |command: String| {
        let mut process = process::command();
        process
            .args(args(&command))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("CASEGATE_LISTEN", format!("127.0.0.1:{port}"))
            .env("CASEGATE_BUFFER__PATH", data.path().join("casegate.redb"))
            .env_remove("CASEGATE_ADMIN__TOKEN");
        async move { process.output().await.unwrap() }
    };
    let token = std::fs::read_to_string(data.path().join("sandbox-admin-token")).unwrap();
    assert!(
        token.trim().len() >= 32,
        "a development token of 32+ characters"
    );
    let status = operate(commands[3].clone()).await;
    let printed = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success() && printed.contains("shopify-orders"),
        "{printed}{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let dlq = operate(commands[4].clone()).await;
    let printed = String::from_utf8_lossy(&dlq.stdout);
    assert!(
        dlq.status.success() && printed.contains("the dead-letter store is empty"),
        "{printed}{}",
        String::from_utf8_lossy(&dlq.stderr)
    );
    serve.kill9().await;
}
