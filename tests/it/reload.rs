//! Hot reload against the real gateway: mapping files edited, added, broken and removed while
//! it serves, with no restart.

use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::support::gateway::{Answer, GatewayOptions, QUEUE, TestGateway, drain, embedded_buffer};

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
async fn eventually(gateway: &TestGateway, source: &str, status: u16) -> Answer {
    let mut last = None;
    for _ in 0..100 {
        let answer = post(gateway, source, 0).await;
        if answer.status == status {
            return answer;
        }
        last = Some(answer.status);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{source} never answered {status} (last {last:?})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mapping_files_take_effect_without_a_restart() {
    let gateway =
        TestGateway::start(GatewayOptions::embedded(&[("alpha.yaml", &mapping("v1"))])).await;
    let dir = gateway.config.mappings.clone();
    assert_eq!(post(&gateway, "alpha", 1).await.status, 202);
    assert_eq!(post(&gateway, "beta", 1).await.status, 404);

    // Added: the new source answers.
    write(&dir, "beta.yaml", &mapping("beta"));
    eventually(&gateway, "beta", 202).await;

    // Edited in place, as an editor saves: v2 filters out events with id 0 (answered 200).
    std::fs::write(
        dir.join("alpha.yaml"),
        mapping("v2").replace(
            "  - name: all\n",
            "  - name: all\n    when: {filter: {path: $.id, gt: 0}}\n",
        ),
    )
    .unwrap();
    eventually(&gateway, "alpha", 200).await;
    assert_eq!(post(&gateway, "alpha", 2).await.status, 202);

    // Broken: the previous set keeps serving, and a source added meanwhile is not served.
    write(&dir, "alpha.yaml", "verify: {scheme: none}\nrules: [\n");
    write(&dir, "gamma.yaml", &mapping("gamma"));
    tokio::time::sleep(Duration::from_secs(2)).await;
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
    eventually(&gateway, "gamma", 202).await;
    let gone = eventually(&gateway, "beta", 404).await;
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
