//! Pauses: a refused key, an unknown queue, a queue without a key and a spent API window.

use std::time::Duration;

use tokio::time::Instant;

use super::helpers::*;
use crate::delivery::limiter::PauseKind;
use crate::delivery::policy::{ApiAnswer, RateLimitHeaders};

#[tokio::test(start_paused = true)]
async fn a_refused_key_claims_nothing_probes_once_per_interval_and_resumes_in_order() {
    let start = Instant::now();
    let fake = Fake::new(move |r| {
        if r.key == "key-a" && start.elapsed() < Duration::from_secs(20) {
            status(401)
        } else {
            status(200)
        }
    });
    let rig = Rig::new(&fake, limits(300, Duration::from_secs(60)), config());
    // Two queues on the refused key, one on another key that keeps flowing.
    enqueue(&rig.buffer, QUEUE, None, 0..250).await;
    enqueue(&rig.buffer, OTHER_QUEUE, None, 1000..1250).await;
    enqueue(&rig.buffer, "q-three", Some("team-b"), 2000..2100).await;
    let mut most_claimed = 0;
    while start.elapsed() < Duration::from_secs(19) {
        most_claimed = most_claimed.max(rig.claimed(QUEUE).await + rig.claimed(OTHER_QUEUE).await);
        if start.elapsed() > Duration::from_secs(2) {
            let pauses = rig.delivery.pauses().await;
            assert!(
                pauses.iter().any(|p| p.kind == PauseKind::KeyRefused),
                "the pause shows: {pauses:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        most_claimed <= 100,
        "a paused key claims nothing beyond one probe batch: {most_claimed} claimed"
    );
    let refused: Vec<Instant> = fake
        .requests()
        .iter()
        .filter(|r| r.key == "key-a" && r.at - start < Duration::from_secs(19))
        .map(|r| r.at)
        .collect();
    assert!(
        (15..=21).contains(&refused.len()),
        "one probe per 1 s interval across both queues: {} in 19 s",
        refused.len()
    );
    for pair in refused.windows(2).skip(1) {
        assert!(
            pair[1] - pair[0] >= Duration::from_secs(1),
            "probes {pair:?} too close"
        );
    }
    assert_eq!(
        fake.accepted()
            .iter()
            .filter(|t| t.starts_with("Event 2"))
            .count(),
        100,
        "the other key's queue flowed meanwhile"
    );
    assert!(
        eventually(Duration::from_secs(30), || fake.accepted().len() >= 600).await,
        "resumed after the pause"
    );
    let accepted = fake.accepted();
    let of = |lo: usize, hi: usize| -> Vec<String> {
        accepted
            .iter()
            .filter(|t| (lo..hi).contains(&t[6..].parse::<usize>().unwrap()))
            .cloned()
            .collect()
    };
    in_order_once(&of(0, 1000), &titles(0..250));
    in_order_once(&of(1000, 2000), &titles(1000..1250));
    assert!(
        eventually(Duration::from_secs(3), || true).await && rig.delivery.pauses().await.is_empty(),
        "the pause ended with the probe's success"
    );
    rig.shut_down().await;
}

#[tokio::test(start_paused = true)]
async fn an_unknown_queue_and_a_queue_without_a_key_claim_nothing_and_keep_their_cases() {
    let start = Instant::now();
    let fake = Fake::new(move |r| {
        if r.queue == QUEUE && start.elapsed() < Duration::from_secs(10) {
            status(404)
        } else {
            status(200)
        }
    });
    let rig = Rig::new(&fake, limits(300, Duration::from_secs(60)), config());
    enqueue(&rig.buffer, QUEUE, None, 0..150).await;
    enqueue(&rig.buffer, OTHER_QUEUE, Some("no-such-key"), 1000..1150).await;
    let (mut most_claimed, mut most_claimed_other) = (0, 0);
    while start.elapsed() < Duration::from_secs(9) {
        most_claimed = most_claimed.max(rig.claimed(QUEUE).await);
        most_claimed_other = most_claimed_other.max(rig.claimed(OTHER_QUEUE).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(most_claimed <= 100, "{most_claimed} claimed while paused");
    assert!(
        most_claimed_other <= 100,
        "a queue without a key claims no more than its probe: {most_claimed_other}"
    );
    let pauses = rig.delivery.pauses().await;
    for queue in [QUEUE, OTHER_QUEUE] {
        assert!(
            pauses
                .iter()
                .any(|p| p.kind == PauseKind::QueueUnknown && p.name == format!("queue:{queue}")),
            "{queue} shows as paused: {pauses:?}"
        );
    }
    let status = rig.delivery.activity().await;
    let other = status.iter().find(|a| a.queue == OTHER_QUEUE).unwrap();
    assert!(other.paused_for_ms.is_some(), "{other:?}");
    assert!(
        other
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("no-such-key"),
        "{other:?}"
    );
    let probes = fake
        .requests()
        .iter()
        .filter(|r| r.queue == QUEUE && r.at - start < Duration::from_secs(9))
        .count();
    assert!((7..=10).contains(&probes), "{probes} probes in 9 s");
    assert!(eventually(Duration::from_secs(20), || fake.accepted().len() >= 150).await);
    in_order_once(&fake.accepted(), &titles(0..150));
    assert!(
        fake.requests().iter().all(|r| r.queue != OTHER_QUEUE),
        "never sent without a key"
    );
    assert_eq!(
        rig.buffer.stats(OTHER_QUEUE).await.unwrap().depth,
        150,
        "its cases are kept"
    );
    assert!(rig.dead_letters().await.is_empty());
    rig.shut_down().await;
}

#[tokio::test(start_paused = true)]
async fn a_spent_api_window_holds_the_key_until_the_reset() {
    let fake = Fake::new(|_| ApiAnswer::Response {
        status: 200,
        retry_after: None,
        rate: RateLimitHeaders {
            limit: Some(10),
            remaining: Some(0),
            reset: Some(Duration::from_secs(7)),
        },
        error: None,
    });
    let rig = Rig::new(&fake, limits(300, Duration::from_secs(60)), config());
    enqueue(&rig.buffer, QUEUE, None, 0..300).await;
    assert!(eventually(Duration::from_secs(60), || fake.accepted().len() >= 300).await);
    let requests = fake.requests();
    assert_eq!(requests.len(), 3);
    for pair in requests.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(
            gap >= Duration::from_secs(7) && gap < Duration::from_secs(8),
            "the next request waits for the window's reset: {gap:?}"
        );
    }
    in_order_once(&fake.accepted(), &titles(0..300));
    rig.shut_down().await;
}
