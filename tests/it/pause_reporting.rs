//! Pauses as operators see them and as the fleet shares them: the paused gauge and `status`
//! while a key (401, 429) or a queue (a missing API key) is paused, and the probe an idle worker
//! hands back when a pause runs out.

use std::time::{Duration, Instant};

use casegate::buffer::Buffer;
use casegate::case::CaseRecord;

use crate::support::cases::{backlog, case};
use crate::support::gateway::{Backend, GatewayOptions, QUEUE, TestGateway, embedded_buffer};
use crate::support::post_json;
use crate::support::process::CasegateProcess;
use crate::support::redis_server::RedisServer;
use crate::support::sandbox::TestSandbox;
use crate::support::wait::eventually;

use crate::long_faults::{
    ADMIN_TOKEN, counts, mapping, options, pause_story, redis_buffer, scaled, status_count,
};

/// The value of the paused gauge for the default key in `/metrics`, if the series exists.
async fn default_key_paused(client: &reqwest::Client, url: &str) -> Option<String> {
    let metrics = client.get(url).send().await.ok()?.text().await.ok()?;
    metrics
        .lines()
        .find(|line| {
            line.starts_with("casegate_delivery_paused{")
                && line.contains("kind=\"key\"")
                && line.contains("name=\"default\"")
        })
        .and_then(|line| line.rsplit(' ').next())
        .map(str::to_string)
}

/// Serves a sandbox accepting only `api_key` on `listener`; stops when the sender is dropped.
fn serve_sandbox(
    api_key: &str,
    listener: std::net::TcpListener,
) -> (casegate_sandbox::Sandbox, tokio::sync::oneshot::Sender<()>) {
    let sandbox = casegate_sandbox::Sandbox::new(casegate_sandbox::SandboxConfig {
        api_key: api_key.into(),
        rate: 1_000,
        window: Duration::from_secs(1),
        ..Default::default()
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(casegate_sandbox::serve_until(
        sandbox.clone(),
        listener,
        async move {
            let _ = stopped.await;
        },
    ));
    (sandbox, stop)
}

/// The paused gauge's zero series for the default key (registered at startup) is the series a
/// 401 pause sets to 1, and it falls back to 0 when a probe succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_paused_gauge_of_the_configured_key_flips_during_a_401_pause() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    // The API knows another key: every request of the gateway's key is refused.
    let (refusing, stop_refusing) = serve_sandbox("dv_other_key", listener);
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("mappings")).unwrap();
    std::fs::write(dir.path().join("mappings/src.yaml"), mapping()).unwrap();
    let mut env: Vec<(String, String)> = vec![
        (
            "CASEGATE_DUVO__BASE_URL".into(),
            format!("http://{address}/v1"),
        ),
        ("CASEGATE_DUVO__API_KEY".into(), "dv_gateway_key".into()),
    ];
    env.extend(scaled().into_iter().map(|(k, v)| (k.to_string(), v)));
    let process = CasegateProcess::serve(dir.path(), &env).await;
    let client = crate::support::http_client();
    let metrics = process.url("/metrics");
    assert_eq!(
        default_key_paused(&client, &metrics).await.as_deref(),
        Some("0"),
        "the zero series exists from startup"
    );
    let status = post_json(&client, &process.url("/hooks/src"), r#"{"id": 7}"#).await;
    assert_eq!(status, 202);
    eventually(
        "the 401 pause sets the default key's series to 1",
        Duration::from_secs(5),
        || async { default_key_paused(&client, &metrics).await.as_deref() == Some("1") },
    )
    .await;
    assert!(
        refusing
            .stats()
            .status_counts
            .get(&401)
            .copied()
            .unwrap_or(0)
            >= 1
    );

    // The API accepts the key again (same address): the next probe resumes delivery.
    drop(stop_refusing);
    let (accepting, _stop) = eventually(
        "the API address is free again",
        Duration::from_secs(5),
        || async {
            std::net::TcpListener::bind(address)
                .map(|listener| serve_sandbox("dv_gateway_key", listener))
        },
    )
    .await;
    eventually(
        "the probe's success delivers the case and sets the series to 0",
        Duration::from_secs(10),
        || async {
            accepting.cases(QUEUE).len() == 1
                && default_key_paused(&client, &metrics).await.as_deref() == Some("0")
        },
    )
    .await;
    process.kill9().await;
}

/// A worker with nothing to claim (its queue's one case is held by another consumer) gives back
/// a probe it won: when a key's 401 pause runs out, the fleet's one probe reaches a queue with
/// cases waiting, not held off for another interval by a worker that sent nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_with_nothing_to_send_hands_back_the_probe_of_its_paused_key() {
    use casegate::delivery::limiter::{LimiterConfig, PauseKind, RateLimiter, key_id, key_pause};
    const IDLE_QUEUE: &str = "0b1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f";
    let redis = RedisServer::start().await;
    let sandbox = TestSandbox::start(1_000, Duration::from_secs(1)).await;
    let buffer = redis_buffer(&redis).await;
    let write = async |i| backlog(&buffer, [crate::support::cases::case_in(IDLE_QUEUE, i)]).await;
    // Another consumer holds the idle queue's first case (and keeps it: 60 s visibility).
    write(0).await;
    assert_eq!(
        buffer
            .claim(IDLE_QUEUE, "other-holder", 10)
            .await
            .unwrap()
            .len(),
        1
    );
    let gateway = TestGateway::start(
        options(&sandbox, Backend::Redis(redis.url()))
            .setting("CASEGATE_DELIVERY__PROBE_INTERVAL_SECS", "10")
            .setting("CASEGATE_DELIVERY__VISIBILITY_TIMEOUT_SECS", "60"),
    )
    .await;
    // Its worker delivers the second case with the default key, then finds nothing to claim.
    write(1).await;
    assert_eq!(
        sandbox
            .wait_for(IDLE_QUEUE, 1, Duration::from_secs(10))
            .await,
        1
    );

    // The key is refused for a moment (as a 401 would pause it), then its pause runs out.
    let Buffer::Redis(redis_buffer) = &buffer else {
        unreachable!()
    };
    let (conn, prefix, timeout) = redis_buffer.connection_for("limiter");
    let limits = LimiterConfig {
        rate: 100,
        window: Duration::from_secs(1),
        margin: Duration::ZERO,
        answer_within: Duration::ZERO,
    };
    let limiter = RateLimiter::redis(limits, conn, prefix, timeout);
    let pause = key_pause(&key_id(&casegate::secret::Secret::new(
        crate::support::sandbox::API_KEY,
    )));
    let held_at = Instant::now();
    limiter
        .hold(
            &pause,
            PauseKind::KeyRefused,
            Duration::from_millis(300),
            "401 (test)",
        )
        .await;
    // Wait until the pause has run out for longer than an idle worker's longest look-again
    // (1 s), or until someone took its probe meanwhile.
    loop {
        let probed = limiter
            .pauses()
            .await
            .iter()
            .any(|p| p.name == pause && p.remaining_ms > 1_000);
        if probed || held_at.elapsed() > Duration::from_millis(2_000) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    backlog(&buffer, (0..1).map(case)).await;
    let delivered_in = Instant::now();
    assert_eq!(
        sandbox.wait_for(QUEUE, 1, Duration::from_secs(5)).await,
        1,
        "the waiting queue got the probe (probe interval 10 s), not the idle one"
    );
    println!(
        "after a pause ran out, the waiting queue's probe went out in {:?}",
        delivered_in.elapsed()
    );
    // The API stored the case before it answered: the worker resumes the key once it reads
    // the answer.
    eventually(
        "the probe's success resumes the key",
        Duration::from_secs(5),
        || async { limiter.pauses().await.iter().all(|p| p.name != pause) },
    )
    .await;
    gateway.stop().await;
}

/// A 429 pauses the key: `status` and the paused gauge say so while it holds, and both clear
/// once the key sends again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_429_pause_shows_in_status_and_the_paused_gauge_and_clears_after() {
    let redis = RedisServer::start().await;
    // One request per 4 s at the API, spent by another client before the gateway starts: the
    // gateway's first request meets a 429 with a retry-after of up to 4 s.
    let api_key = "dv_sandbox_429_status";
    // The gauge names the key as configured, never by the key itself (a name of its own, so
    // other tests' pauses in this process do not show on its series).
    let key_label = "name=\"status429\"";
    let sandbox = TestSandbox::start_with_key(1, Duration::from_secs(4), api_key).await;
    let spent = crate::support::http_client()
        .post(format!("{}/queues/{QUEUE}/cases", sandbox.base_url))
        .bearer_auth(api_key)
        .json(&serde_json::json!({"cases": [{"title": "another client", "data": "{}"}]}))
        .send()
        .await
        .unwrap();
    assert!(spent.status().is_success(), "{}", spent.status());
    let cases: Vec<CaseRecord> = (0..200)
        .map(|i| {
            let mut case = case(i);
            case.api_key_name = Some("status429".into());
            case
        })
        .collect();
    backlog(&redis_buffer(&redis).await, cases).await;
    let gateway = TestGateway::start(
        options(&sandbox, Backend::Redis(redis.url()))
            .setting("CASEGATE_DUVO__API_KEY", "dv_default_unused")
            .setting("CASEGATE_DUVO__API_KEYS__STATUS429", api_key)
            .setting("CASEGATE_ADMIN__TOKEN", ADMIN_TOKEN),
    )
    .await;
    eventually("the API answers 429", Duration::from_secs(20), || async {
        status_count(&sandbox, 429) >= 1
    })
    .await;
    eventually("the 429 pause shows", Duration::from_secs(10), || async {
        let (report, paused) = pause_story(&gateway).await;
        let listed = report
            .paused_keys
            .iter()
            .any(|k| k.reason.contains("429") && k.for_ms > 0);
        let rendered = casegate::status::render(&report);
        let gauged = paused
            .iter()
            .any(|line| line.contains("kind=\"key\"") && line.contains(key_label));
        if listed && gauged && rendered.contains("is paused") {
            Ok(())
        } else {
            Err(format!("{rendered} / gauge {paused:?}"))
        }
    })
    .await;
    // Delivered after the pause.
    sandbox.wait_for(QUEUE, 201, Duration::from_secs(40)).await;
    eventually("the pause clears", Duration::from_secs(15), || async {
        let (report, paused) = pause_story(&gateway).await;
        if report.paused_keys.is_empty()
            && !paused
                .iter()
                .any(|line| line.contains("kind=\"key\"") && line.contains(key_label))
        {
            Ok(())
        } else {
            Err(format!("{:?} / gauge {paused:?}", report.paused_keys))
        }
    })
    .await;
    let titles = sandbox.titles(QUEUE);
    assert!(counts(&titles).values().all(|&n| n == 1), "each case once");
    gateway.stop().await;
}

/// A rule naming an API key the config does not have: its queue pauses (shown by `status` and
/// the gauge), keeps every case, and sends nothing; the other queues flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_whose_rule_names_a_missing_key_is_paused_and_keeps_its_cases() {
    const KEYLESS: &str = "9a1d2c3b-4e5f-4a6b-8c7d-0e1f2a3b4c5d";
    let sandbox = TestSandbox::start(1_000, Duration::from_secs(1)).await;
    let keyless = format!(
        "verify: {{scheme: none}}\nrules:\n  - {{name: all, queue: {KEYLESS}, api_key: team-x, title: 'Keyless {{{{ $.id }}}}'}}\n"
    );
    let mut options =
        GatewayOptions::embedded(&[("src.yaml", &mapping()), ("keyless.yaml", &keyless)]);
    options.settings.extend(sandbox.settings());
    for (key, value) in scaled() {
        options.settings.push((key.into(), value));
    }
    let gateway = TestGateway::start(options.setting("CASEGATE_ADMIN__TOKEN", ADMIN_TOKEN)).await;
    let client = crate::support::http_client();
    for i in 0..5 {
        for source in ["src", "keyless"] {
            let status = post_json(
                &client,
                &gateway.url(&format!("/hooks/{source}")),
                format!(r#"{{"id": {i}}}"#),
            )
            .await;
            assert_eq!(status, 202, "{source}");
        }
    }
    // The configured queue flows.
    sandbox.wait_for(QUEUE, 5, Duration::from_secs(20)).await;
    eventually(
        "the keyless queue shows as paused",
        Duration::from_secs(15),
        || async {
            let (report, paused) = pause_story(&gateway).await;
            let queue = report.queues.iter().find(|q| q.queue == KEYLESS);
            let listed = queue.is_some_and(|q| {
                q.paused_for_ms.is_some()
                    && q.last_error.as_deref().unwrap_or("").contains("team-x")
            });
            let gauged = paused
                .iter()
                .any(|line| line.contains("kind=\"queue\"") && line.contains(KEYLESS));
            let rendered = casegate::status::render(&report);
            if listed && gauged && rendered.contains("paused") {
                Ok(())
            } else {
                Err(format!("{rendered} / gauge {paused:?}"))
            }
        },
    )
    .await;
    assert!(
        sandbox.titles(KEYLESS).is_empty(),
        "nothing is sent without its key"
    );
    let dir = gateway.stop().await;
    let buffer = embedded_buffer(dir.path());
    assert_eq!(
        buffer.stats(KEYLESS).await.unwrap().depth,
        5,
        "its cases are kept"
    );
    assert!(buffer.list_dead_letters(None, 10).await.unwrap().is_empty());
}
