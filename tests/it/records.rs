//! Stored records that cannot be read never block their queue, and dead letters replay from
//! what was stored (JSON or form bodies).

use std::time::Duration;

use casegate::buffer::Buffer;
use casegate::case::DeadLetterKind;
use casegate::inbound::Headers;

use crate::support::gateway::{Backend, GatewayOptions, QUEUE, TestGateway};
use crate::support::redis_server::RedisServer;
use crate::support::sandbox::TestSandbox;
use crate::support::wait::eventually;
use crate::support::{call, get_json};
use reqwest::Method;

fn json_headers() -> Headers {
    [("content-type", "application/json")].into_iter().collect()
}

fn mapping() -> String {
    format!(
        "verify: {{scheme: none}}\nrules:\n  - name: all\n    queue: {QUEUE}\n    title: 'Event {{{{ $.id }}}}'\n"
    )
}

/// Waits until `buffer` holds `n` dead letters; returns them.
async fn wait_for_dead_letters(buffer: &Buffer, n: usize) -> Vec<casegate::case::DeadLetter> {
    let what = format!("{n} dead letters");
    eventually(&what, Duration::from_secs(20), || async {
        let letters = buffer.list_dead_letters(None, 100).await.unwrap();
        if letters.len() >= n {
            Ok(letters)
        } else {
            Err(letters.len())
        }
    })
    .await
}

fn assert_undecodable(letters: &[casegate::case::DeadLetter], raw: &[u8]) {
    use base64::Engine;
    assert_eq!(letters.len(), 1, "{letters:?}");
    match &letters[0].record.kind {
        DeadLetterKind::Undecodable {
            queue, raw_base64, ..
        } => {
            assert_eq!(queue, QUEUE);
            let stored = base64::engine::general_purpose::STANDARD
                .decode(raw_base64)
                .unwrap();
            assert_eq!(stored, raw);
        }
        other => panic!("expected an undecodable dead letter, got {other:?}"),
    }
    assert!(letters[0].record.reason.contains("undecodable"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_embedded_record_moves_to_the_dead_letters_and_its_neighbours_are_delivered()
{
    // Three webhooks buffered while delivery is off.
    let yaml = mapping();
    let gateway = TestGateway::start(GatewayOptions::embedded(&[("src.yaml", &yaml)])).await;
    for id in 1..=3 {
        let answer = gateway
            .post("src", &json_headers(), format!(r#"{{"id": {id}}}"#))
            .await;
        assert_eq!(answer.status, 202);
    }
    let dir = gateway.stop().await;
    // The middle record is replaced by bytes this build cannot read (a newer format version).
    let raw: &[u8] = br#"{"v":7,"queue":"x","future":"format"}"#;
    {
        let db = redb::Database::open(dir.path().join("buffer.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let table: redb::TableDefinition<(&str, u64), &[u8]> =
                redb::TableDefinition::new("cases");
            let mut cases = txn.open_table(table).unwrap();
            assert!(cases.insert((QUEUE, 2), raw).unwrap().is_some());
        }
        txn.commit().unwrap();
    }
    let sandbox = TestSandbox::start(300, Duration::from_secs(60)).await;
    let mut options = GatewayOptions::embedded(&[("src.yaml", &yaml)]);
    options.settings.extend(sandbox.settings());
    let gateway = TestGateway::start_in(options, dir).await;
    assert_eq!(
        sandbox.wait_for(QUEUE, 2, Duration::from_secs(20)).await,
        2,
        "the readable neighbours are delivered"
    );
    let mut titles = sandbox.titles(QUEUE);
    titles.sort();
    assert_eq!(titles, ["Event 1", "Event 3"]);
    let dir = gateway.stop().await;
    let buffer = crate::support::gateway::embedded_buffer(dir.path());
    assert_undecodable(&wait_for_dead_letters(&buffer, 1).await, raw);
    assert!(crate::support::gateway::drain(&buffer).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_redis_entry_moves_to_the_dead_letters_and_its_neighbours_are_delivered() {
    let redis = RedisServer::start().await;
    let yaml = mapping();
    let mut options = GatewayOptions::embedded(&[("src.yaml", &yaml)]);
    options.backend = Backend::Redis(redis.url());
    let gateway = TestGateway::start(options).await;
    let mut conn = redis.connection().await;
    let raw: &[u8] = b"\xff\xfe not json at all";
    for id in 1..=2 {
        let answer = gateway
            .post("src", &json_headers(), format!(r#"{{"id": {id}}}"#))
            .await;
        assert_eq!(answer.status, 202);
        if id == 1 {
            let _: String = redis::cmd("XADD")
                .arg(format!("{{casegate}}:q:{QUEUE}"))
                .arg("*")
                .arg("r")
                .arg(raw)
                .query_async(&mut conn)
                .await
                .unwrap();
        }
    }
    drop(gateway);
    let sandbox = TestSandbox::start(300, Duration::from_secs(60)).await;
    let mut options = GatewayOptions::embedded(&[("src.yaml", &yaml)]);
    options.backend = Backend::Redis(redis.url());
    options.settings.extend(sandbox.settings());
    let gateway = TestGateway::start(options).await;
    assert_eq!(sandbox.wait_for(QUEUE, 2, Duration::from_secs(20)).await, 2);
    let buffer = Buffer::Redis(
        casegate::buffer::RedisBuffer::connect(&redis.url(), "casegate", Duration::from_secs(2))
            .await
            .unwrap(),
    );
    assert_undecodable(&wait_for_dead_letters(&buffer, 1).await, raw);
    assert_eq!(buffer.stats(QUEUE).await.unwrap().depth, 0);
    drop(gateway);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_form_encoded_dead_letter_replays_once_the_mapping_is_fixed() {
    const TOKEN: &str = "records-admin-token-0123456789abcdef";
    let strict = format!(
        "verify: {{scheme: none}}\nrules:\n  - name: all\n    queue: {QUEUE}\n    title: 'Action {{{{ $.action.name }}}}'\n"
    );
    let fixed = format!(
        "verify: {{scheme: none}}\nrules:\n  - name: all\n    queue: {QUEUE}\n    title: 'Action {{{{ $.type }}}}'\n"
    );
    let gateway = TestGateway::start(
        GatewayOptions::embedded(&[("src.yaml", &strict)]).setting("CASEGATE_ADMIN__TOKEN", TOKEN),
    )
    .await;
    let form: Headers = [("content-type", "application/x-www-form-urlencoded")]
        .into_iter()
        .collect();
    let answer = gateway
        .post(
            "src",
            &form,
            "token=x&payload=%7B%22type%22%3A%22block_actions%22%7D",
        )
        .await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    assert_eq!(answer.body["accepted"], 0);
    std::fs::write(gateway.dir.path().join("mappings/src.yaml"), fixed).unwrap();
    let (reload, _) = call(Method::POST, &gateway.url("/admin/reload"), Some(TOKEN)).await;
    assert_eq!(reload, 200);
    let (_, replayed) = call(Method::POST, &gateway.url("/admin/dlq/replay"), Some(TOKEN)).await;
    let outcomes = replayed["replayed"].as_array().unwrap();
    assert_eq!(outcomes.len(), 1, "{replayed}");
    assert_eq!(outcomes[0]["result"], "enqueued", "{replayed}");
    let dir = gateway.stop().await;
    let cases =
        crate::support::gateway::drain(&crate::support::gateway::embedded_buffer(dir.path())).await;
    assert_eq!(cases.len(), 1);
    assert_eq!(cases[0].record.title, "Action block_actions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_counts_and_purge_pages_through_more_dead_letters_than_one_page() {
    const TOKEN: &str = "records-admin-token-0123456789abcdef";
    let strict = format!(
        "verify: {{scheme: none}}\nrules:\n  - name: all\n    queue: {QUEUE}\n    title: 'Order {{{{ $.order.number }}}}'\n"
    );
    let gateway = TestGateway::start(
        GatewayOptions::embedded(&[("src.yaml", &strict)]).setting("CASEGATE_ADMIN__TOKEN", TOKEN),
    )
    .await;
    let total = casegate::dlq::PAGE * 2 + 37;
    for id in 0..total {
        let answer = gateway
            .post("src", &json_headers(), format!(r#"{{"id": {id}}}"#))
            .await;
        assert_eq!(answer.body["accepted"], 0, "{}", answer.body);
    }
    let status = async || get_json(&gateway.url("/admin/status"), Some(TOKEN)).await;
    assert_eq!(status().await["dead_letters"], total);
    let (_, purged) = call(Method::DELETE, &gateway.url("/admin/dlq"), Some(TOKEN)).await;
    assert_eq!(purged["purged"], total);
    assert_eq!(status().await["dead_letters"], 0);
}
