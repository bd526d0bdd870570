//! Hot reload against the real gateway: mapping files edited, added, broken and removed while
//! it serves, with no restart.

use std::path::Path;
use std::time::{Duration, SystemTime};

use serde_json::Value;

use crate::support::gateway::{Answer, GatewayOptions, QUEUE, TestGateway, drain, embedded_buffer};
use crate::support::get_json;
use crate::support::wait::eventually;

const TOKEN: &str = "reload-admin-token-0123456789abcdef";

fn mapping(title: &str) -> String {
    format!(
        "verify: {{scheme: none}}\nrules:\n  - name: all\n    queue: {QUEUE}\n    title: '{title} {{{{ $.id }}}}'\n"
    )
}

async fn post(gateway: &TestGateway, source: &str, id: u32) -> Answer {
    let body = format!("{{\"id\": {id}}}");
    gateway
        .post_signed(source, &mapping("x"), &body, SystemTime::now())
        .await
}

/// Writes `text` to `name` in the gateway's mapping directory through a temporary file and a
/// rename, as deployment tools do, so the gateway never reads a half-written file.
fn write(dir: &Path, name: &str, text: &str) {
    let temporary = dir.join(format!(".{name}.tmp"));
    std::fs::write(&temporary, text).unwrap();
    std::fs::rename(&temporary, dir.join(name)).unwrap();
}

/// Posts `{"id": 0}` until `source` answers `status` (a reload is asynchronous), for at most 10
/// seconds.
async fn eventually_answers(gateway: &TestGateway, source: &str, status: u16) -> Answer {
    let what = format!("{source} answers {status}");
    eventually(&what, Duration::from_secs(10), || async {
        let answer = post(gateway, source, 0).await;
        if answer.status == status {
            Ok(answer)
        } else {
            Err(answer.status)
        }
    })
    .await
}

/// The gateway's last reload, as the admin API reports it.
async fn reload_status(gateway: &TestGateway) -> Value {
    get_json(&gateway.url("/admin/status"), Some(TOKEN)).await["mappings"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mapping_files_take_effect_without_a_restart() {
    let gateway = TestGateway::start(
        GatewayOptions::embedded(&[("alpha.yaml", &mapping("v1"))])
            .setting("CASEGATE_ADMIN__TOKEN", TOKEN),
    )
    .await;
    let dir = gateway.config.mappings.clone();
    assert_eq!(post(&gateway, "alpha", 1).await.status, 202);
    assert_eq!(post(&gateway, "beta", 1).await.status, 404);

    // Added: the new source answers.
    write(&dir, "beta.yaml", &mapping("beta"));
    eventually_answers(&gateway, "beta", 202).await;

    // Edited in place, as an editor saves: v2 filters out events with id 0 (answered 200).
    std::fs::write(
        dir.join("alpha.yaml"),
        mapping("v2").replace(
            "  - name: all\n",
            "  - name: all\n    when: {filter: {path: $.id, gt: 0}}\n",
        ),
    )
    .unwrap();
    eventually_answers(&gateway, "alpha", 200).await;
    assert_eq!(post(&gateway, "alpha", 2).await.status, 202);

    // Broken: the previous set keeps serving, and a source added meanwhile is not served.
    write(&dir, "alpha.yaml", "verify: {scheme: none}\nrules: [\n");
    write(&dir, "gamma.yaml", &mapping("gamma"));
    let refused = eventually(
        "the file change is refused",
        Duration::from_secs(10),
        || async {
            let status = reload_status(&gateway).await;
            if status["reloads_failed"].as_u64() >= Some(1) {
                Ok(status)
            } else {
                Err(status)
            }
        },
    )
    .await;
    assert!(
        refused["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("alpha.yaml"),
        "{refused}"
    );
    // However the watcher's reloads fell, one reload certainly saw both files: it is refused too.
    let manual = crate::support::http_client()
        .post(gateway.url("/admin/reload"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(manual.status().as_u16(), 422);
    assert_eq!(
        post(&gateway, "alpha", 3).await.status,
        202,
        "old alpha still serves"
    );
    assert_eq!(post(&gateway, "beta", 3).await.status, 202);
    assert_eq!(
        post(&gateway, "gamma", 3).await.status,
        404,
        "a broken set is not half-loaded"
    );

    // Fixed, and beta removed: gamma appears, beta is gone.
    write(&dir, "alpha.yaml", &mapping("v3"));
    std::fs::remove_file(dir.join("beta.yaml")).unwrap();
    eventually_answers(&gateway, "gamma", 202).await;
    let gone = eventually_answers(&gateway, "beta", 404).await;
    assert_eq!(gone.body["error"], "unknown_source", "{}", gone.body);
    assert_eq!(post(&gateway, "alpha", 4).await.status, 202);

    let stopped = gateway.stop().await;
    let mut titles: Vec<String> = drain(&embedded_buffer(stopped.path()))
        .await
        .into_iter()
        .map(|case| case.record.title)
        .filter(|title| title.starts_with('v') && !title.ends_with(" 0"))
        .collect();
    titles.sort();
    assert_eq!(titles, ["v1 1", "v2 2", "v2 3", "v3 4"]);
}
