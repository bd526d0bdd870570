//! Claims held through waits and taken over when nobody renews them, batches filling under
//! backlog, and a restart resuming what it held.

use std::time::Duration;

use tokio::time::Instant;

use super::helpers::*;
use crate::delivery::policy::{ApiAnswer, RateLimitHeaders};

#[tokio::test(start_paused = true)]
async fn a_claim_held_through_backoff_and_a_429_pause_is_renewed_before_the_visibility_timeout() {
    let start = Instant::now();
    let fake = Fake::new(move |_| {
        let t = start.elapsed();
        if t < Duration::from_secs(30) {
            status(503)
        } else if t < Duration::from_secs(33) {
            ApiAnswer::Response {
                status: 429,
                retry_after: Some(Duration::from_secs(20)),
                rate: RateLimitHeaders::default(),
                error: None,
            }
        } else {
            status(200)
        }
    });
    let rig = Rig::new(&fake, limits(300, Duration::from_secs(60)), config());
    enqueue(&rig.buffer, QUEUE, None, 0..150).await;
    assert!(eventually(Duration::from_secs(5), || !fake.requests().is_empty()).await);
    // A rival consumer tries to take over every half second through 30 s of 503s (ten
    // visibility timeouts) and the 20 s pause: the held claims are never idle long enough.
    let visibility = config().visibility_timeout;
    let mut rival_took = 0;
    while fake.accepted().is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "delivery never resumed"
        );
        rival_took += rig
            .buffer
            .reclaim(QUEUE, "rival", visibility, 100)
            .await
            .unwrap()
            .len();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(rival_took, 0, "no held claim expired");
    assert!(
        eventually(Duration::from_secs(30), || fake.accepted().len() >= 150).await,
        "delivered after the faults"
    );
    let mut accepted = fake.accepted();
    accepted.sort_by_key(|t| t[6..].parse::<usize>().unwrap());
    assert_eq!(accepted, titles(0..150), "each case exactly once");
    let requests = fake.requests();
    let first_429 = requests
        .iter()
        .find(|r| r.at - start >= Duration::from_secs(30))
        .expect("a request met the 429")
        .at;
    let during_pause = requests
        .iter()
        .filter(|r| r.at > first_429 && r.at - first_429 < Duration::from_secs(20))
        .count();
    assert_eq!(during_pause, 0, "nothing is sent while the 429 pause holds");
    let first_ok = requests.iter().find(|r| r.ok).unwrap().at;
    assert!(first_ok - first_429 >= Duration::from_secs(20));
    assert!(rig.dead_letters().await.is_empty());
    rig.shut_down().await;
}

/// The rule the renewal protects: a claim nobody renews is taken over after the timeout.
#[tokio::test(start_paused = true)]
async fn an_unrenewed_claim_is_taken_over_after_the_visibility_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let buffer = Rig::open(&dir);
    enqueue(&buffer, QUEUE, None, 0..3).await;
    assert_eq!(buffer.claim(QUEUE, "dead", 10).await.unwrap().len(), 3);
    let visibility = Duration::from_secs(3);
    tokio::time::sleep(visibility - Duration::from_millis(10)).await;
    assert!(
        buffer
            .reclaim(QUEUE, "rival", visibility, 10)
            .await
            .unwrap()
            .is_empty()
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        buffer
            .reclaim(QUEUE, "rival", visibility, 10)
            .await
            .unwrap()
            .len(),
        3
    );
}

#[tokio::test(start_paused = true)]
async fn under_backlog_batches_fill_toward_max_batch_and_when_idle_they_go_at_once() {
    let fake = Fake::new(|_| status(200));
    // Two requests a second: the backlog grows faster than it drains.
    let rig = Rig::new(&fake, limits(2, Duration::from_secs(1)), config());
    let mut next = 0;
    for _ in 0..100 {
        enqueue(&rig.buffer, QUEUE, None, next..next + 30).await;
        next += 30;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(eventually(Duration::from_secs(60), || fake.accepted().len() >= next).await);
    let sizes: Vec<usize> = fake.requests().iter().map(|r| r.titles.len()).collect();
    // The first window's two grants go at once; from then on the backlog fills every batch.
    let middle = &sizes[2..sizes.len() - 1];
    assert!(
        middle.len() > 20 && middle.iter().all(|&n| n == 100),
        "under backlog every batch but the first window's and the last is full: {sizes:?}"
    );
    in_order_once(&fake.accepted(), &titles(0..next));
    // Idle again (and the rate window clear): one case goes out after the linger, not a poll
    // or a window later.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = fake.requests().len();
    let sent_at = Instant::now();
    enqueue(&rig.buffer, QUEUE, None, next..next + 1).await;
    rig.delivery.waker().notify_one();
    assert!(eventually(Duration::from_secs(5), || fake.requests().len() > before).await);
    let latency = fake.requests()[before].at - sent_at;
    assert!(
        latency <= config().linger + Duration::from_millis(50),
        "idle latency {latency:?}"
    );
    rig.shut_down().await;
}

#[tokio::test(start_paused = true)]
async fn a_restart_resumes_the_cases_held_before_at_once() {
    let fake = Fake::new(|_| status(200));
    let dir = tempfile::tempdir().unwrap();
    let buffer = Rig::open(&dir);
    enqueue(&buffer, QUEUE, None, 0..120).await;
    // The process that held these died mid-batch.
    assert_eq!(
        buffer.claim(QUEUE, "replica-1", 100).await.unwrap().len(),
        100
    );
    drop(buffer);
    let restarted = Rig::open(&dir);
    let mut slow = config();
    slow.visibility_timeout = Duration::from_secs(300);
    let started = Instant::now();
    let rig = Rig::start(
        dir,
        restarted,
        &fake,
        limits(300, Duration::from_secs(60)),
        slow,
    );
    assert!(eventually(Duration::from_secs(5), || fake.accepted().len() >= 120).await);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "resumed in {:?}, not after the 300 s visibility timeout",
        started.elapsed()
    );
    in_order_once(&fake.accepted(), &titles(0..120));
    let (_dir, buffer) = rig.shut_down().await;
    assert_eq!(buffer.stats(QUEUE).await.unwrap().depth, 0);
}
