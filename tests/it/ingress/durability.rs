//! Acknowledged means durable: across a gateway restart and while Redis is down.

use std::time::Duration;

use casegate::buffer::{Buffer, RedisBuffer};

use super::{json_with, mapping_with};
use crate::support::gateway::{GatewayOptions, TestGateway, drain, embedded_buffer};
use crate::support::redis_server::RedisServer;
use crate::support::wait::eventually;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_cases_survive_a_gateway_restart_on_the_embedded_buffer() {
    let mapping = mapping_with("{scheme: none}", "");
    let gateway = TestGateway::start(GatewayOptions::embedded(&[("src.yaml", &mapping)])).await;
    let mut acknowledged = Vec::new();
    for i in 0..20 {
        let answer = gateway
            .post("src", &json_with(&[]), format!(r#"{{"id": {i}}}"#))
            .await;
        assert_eq!(answer.status, 202);
        acknowledged.push(answer.body["case_ids"][0].as_str().unwrap().to_string());
    }
    let dir = gateway.stop().await;
    let gateway =
        TestGateway::start_in(GatewayOptions::embedded(&[("src.yaml", &mapping)]), dir).await;
    let answer = gateway.post("src", &json_with(&[]), r#"{"id": 20}"#).await;
    acknowledged.push(answer.body["case_ids"][0].as_str().unwrap().to_string());
    let dir = gateway.stop().await;
    let mut stored: Vec<String> = drain(&embedded_buffer(dir.path()))
        .await
        .into_iter()
        .map(|c| c.id)
        .collect();
    stored.sort();
    acknowledged.sort();
    assert_eq!(stored, acknowledged);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_webhooks_get_503_and_nothing_acknowledged_is_lost() {
    let mut redis = RedisServer::start().await;
    let mapping = mapping_with("{scheme: none}", "delivery_id: {header: X-Delivery-Id}\n");
    let mut options = GatewayOptions::embedded(&[("src.yaml", &mapping)]);
    options.backend = crate::support::gateway::Backend::Redis(redis.url());
    let gateway = TestGateway::start(options).await;
    let acknowledged = std::sync::Mutex::new(Vec::new());
    let send = async |i: usize| {
        let answer = gateway
            .post(
                "src",
                &json_with(&[("X-Delivery-Id", &format!("d-{i}"))]),
                format!(r#"{{"id": {i}}}"#),
            )
            .await;
        if answer.status == 202 {
            let id = answer.body["case_ids"][0].as_str().unwrap().to_string();
            acknowledged.lock().unwrap().push(id);
        }
        answer
    };
    for i in 0..5 {
        assert_eq!(send(i).await.status, 202);
    }
    redis.stop();
    let down = send(5).await;
    assert_eq!(down.status, 503, "{}", down.body);
    assert_eq!(down.body["error"], "buffer_unavailable");
    assert!(down.headers.contains_key("retry-after"));
    assert!(
        !down.body.to_string().contains("redis://"),
        "no connection details leak"
    );
    let ready = gateway.get("/readyz").await;
    assert_eq!(ready.status, 503);

    redis.restart().await;
    // The provider retries the refused delivery until Redis is up again.
    eventually(
        "the retry after Redis came back is accepted",
        Duration::from_secs(5),
        || async {
            let answer = send(5).await;
            if answer.status == 202 {
                return Ok(());
            }
            assert_eq!(answer.status, 503, "{}", answer.body);
            Err(answer.body)
        },
    )
    .await;
    // Every HTTP worker's connection broke with the restart; each write that meets its broken
    // connection is made again on a fresh one, so none of these is refused.
    for i in 6..12 {
        let answer = send(i).await;
        assert_eq!(answer.status, 202, "webhook {i}: {}", answer.body);
    }
    assert_eq!(gateway.get("/readyz").await.status, 200);
    gateway.stop().await;

    let buffer = Buffer::Redis(
        RedisBuffer::connect(&redis.url(), "casegate", Duration::from_secs(2))
            .await
            .unwrap(),
    );
    let mut stored: Vec<String> = drain(&buffer).await.into_iter().map(|c| c.id).collect();
    stored.sort();
    let mut acknowledged = acknowledged.into_inner().unwrap();
    acknowledged.sort();
    assert_eq!(
        stored, acknowledged,
        "every acknowledged case is buffered, once"
    );
    assert_eq!(acknowledged.len(), 12);
}
