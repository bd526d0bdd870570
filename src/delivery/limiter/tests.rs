use super::*;

fn limiter(rate: u32, window_ms: u64) -> LocalLimiter {
    LocalLimiter {
        config: LimiterConfig {
            rate,
            window: Duration::from_millis(window_ms),
            margin: Duration::ZERO,
            answer_within: Duration::ZERO,
        },
        keys: Mutex::new(HashMap::new()),
        turns: Mutex::new(HashMap::new()),
        pauses: Mutex::new(HashMap::new()),
    }
}

fn grant(key: &str) -> Grant {
    Grant {
        key: key.to_string(),
        id: rand::random(),
        deadline: Instant::now(),
    }
}

#[test]
fn a_probed_pause_hands_out_one_probe_per_interval_and_a_429_pause_just_ends() {
    let limiter = limiter(100, 1_000);
    let t0 = Instant::now();
    let probe = Duration::from_secs(30);
    limiter.hold("key:k", PauseKind::KeyRefused, t0 + probe, "401");
    limiter.hold(
        "key:r",
        PauseKind::RateLimited,
        t0 + Duration::from_secs(5),
        "429",
    );
    assert_eq!(limiter.gate("key:k", t0, probe), Gate::Wait(probe));
    assert_eq!(limiter.gate("key:other", t0, probe), Gate::Open);
    let later = t0 + probe;
    assert_eq!(limiter.gate("key:k", later, probe), Gate::Probe);
    assert_eq!(
        limiter.gate("key:k", later, probe),
        Gate::Wait(probe),
        "one probe per interval"
    );
    assert_eq!(limiter.gate("key:k", later + probe, probe), Gate::Probe);
    let shown = limiter.pauses(t0);
    assert_eq!(shown.len(), 2, "a 429 pause shows too: {shown:?}");
    assert_eq!(
        limiter.gate("key:r", t0 + Duration::from_secs(5), probe),
        Gate::Open
    );
    assert_eq!(limiter.pauses(t0 + Duration::from_secs(5)).len(), 1);
}

#[test]
fn a_probe_handed_back_goes_to_the_next_asker_at_once() {
    let limiter = limiter(100, 1_000);
    let t0 = Instant::now();
    let probe = Duration::from_secs(30);
    limiter.hold("key:k", PauseKind::KeyRefused, t0, "401");
    assert_eq!(limiter.gate("key:k", t0, probe), Gate::Probe);
    assert_eq!(limiter.gate("key:k", t0, probe), Gate::Wait(probe));
    limiter.hand_back("key:k", t0);
    assert_eq!(
        limiter.gate("key:k", t0, probe),
        Gate::Probe,
        "the probe that sent nothing is another worker's now"
    );
    limiter.hand_back("key:other", t0);
    assert_eq!(limiter.gate("key:other", t0, probe), Gate::Open);
}

#[test]
fn a_key_gets_at_most_rate_grants_in_any_window() {
    let limiter = limiter(10, 2_000);
    let start = Instant::now();
    let mut grants = Vec::new();
    // Ask every 10 ms for 10 s; record every grant.
    for step in 0..1_000u64 {
        let now = start + Duration::from_millis(step * 10);
        if limiter.try_acquire(&grant("k"), now).is_none() {
            grants.push(now);
        }
    }
    for (i, first) in grants.iter().enumerate() {
        let in_window = grants[i..]
            .iter()
            .take_while(|t| t.duration_since(*first) < Duration::from_secs(2))
            .count();
        assert!(
            in_window <= 10,
            "{in_window} grants in the window starting at grant {i}"
        );
    }
    assert_eq!(
        grants.len(),
        50,
        "the budget is used in full: 10 per 2 s over 10 s"
    );
}

#[test]
fn the_wait_is_until_the_oldest_grant_leaves_the_window() {
    let limiter = limiter(2, 1_000);
    let t0 = Instant::now();
    assert_eq!(limiter.try_acquire(&grant("k"), t0), None);
    assert_eq!(
        limiter.try_acquire(&grant("k"), t0 + Duration::from_millis(300)),
        None
    );
    assert_eq!(
        limiter.try_acquire(&grant("k"), t0 + Duration::from_millis(400)),
        Some(Duration::from_millis(600))
    );
    assert_eq!(
        limiter.try_acquire(&grant("other"), t0 + Duration::from_millis(400)),
        None,
        "keys are independent"
    );
    assert_eq!(
        limiter.try_acquire(&grant("k"), t0 + Duration::from_millis(1_000)),
        None
    );
}

#[test]
fn a_pause_holds_the_whole_key_and_is_never_shortened() {
    let limiter = limiter(100, 1_000);
    let t0 = Instant::now();
    limiter.pause("k", t0 + Duration::from_secs(5));
    limiter.pause("k", t0 + Duration::from_secs(1));
    assert_eq!(
        limiter.try_acquire(&grant("k"), t0 + Duration::from_secs(2)),
        Some(Duration::from_secs(3))
    );
    assert_eq!(
        limiter.try_acquire(&grant("k"), t0 + Duration::from_secs(5)),
        None
    );
}

#[test]
fn a_settled_grant_counts_from_its_answer() {
    // Two per second. The first request waits 400 ms in the API's queue before the API counts
    // it; counted from its send, the third would go out at 1 s and land 0.6 s after it.
    let limiter = limiter(2, 1_000);
    let t0 = Instant::now();
    let first = grant("k");
    assert_eq!(limiter.try_acquire(&first, t0), None);
    assert_eq!(
        limiter.try_acquire(&grant("k"), t0 + Duration::from_millis(100)),
        None
    );
    limiter.settle(&first, t0 + Duration::from_millis(400));
    assert_eq!(
        limiter.try_acquire(&grant("k"), t0 + Duration::from_millis(1_000)),
        Some(Duration::from_millis(100)),
        "the second is the oldest now: counted from its send, the first would have left at 1 s"
    );
    assert_eq!(
        limiter.try_acquire(&grant("k"), t0 + Duration::from_millis(1_100)),
        None,
        "the second (sent at 100 ms) left"
    );
    assert_eq!(
        limiter.try_acquire(&grant("k"), t0 + Duration::from_millis(1_200)),
        Some(Duration::from_millis(200)),
        "the first, counted from its answer at 400 ms, leaves at 1.4 s"
    );
    assert_eq!(
        limiter.try_acquire(&grant("k"), t0 + Duration::from_millis(1_400)),
        None
    );
}

#[test]
fn a_grant_in_flight_holds_its_slot_until_a_window_after_its_end() {
    // One per second; a request may take up to 5 s.
    let mut limiter = limiter(1, 1_000);
    limiter.config.answer_within = Duration::from_secs(5);
    let t0 = Instant::now();
    let slow = grant("k");
    assert_eq!(limiter.try_acquire(&slow, t0), None);
    for at in [1, 3, 4] {
        assert_eq!(
            limiter.try_acquire(&grant("k"), t0 + Duration::from_secs(at)),
            Some(Duration::from_secs(1)),
            "still in flight at {at} s: a window from now at the earliest"
        );
    }
    limiter.settle(&slow, t0 + Duration::from_secs(4));
    assert_eq!(
        limiter.try_acquire(&grant("k"), t0 + Duration::from_millis(4_500)),
        Some(Duration::from_millis(500)),
        "answered at 4 s: free one window later"
    );
    assert_eq!(
        limiter.try_acquire(&grant("k"), t0 + Duration::from_secs(5)),
        None
    );
}

#[tokio::test(start_paused = true)]
async fn a_grant_is_due_to_end_its_request_by_the_end_the_log_assumes() {
    let limiter = RateLimiter::local(LimiterConfig {
        rate: 1,
        window: Duration::from_secs(1),
        margin: Duration::ZERO,
        answer_within: Duration::from_secs(5),
    });
    let start = Instant::now();
    let first = limiter.acquire("k").await;
    assert_eq!(first.deadline(), start + Duration::from_secs(5));
    tokio::time::advance(Duration::from_secs(2)).await;
    limiter.settle(first).await;
    let second = limiter.acquire("k").await;
    assert_eq!(
        Instant::now(),
        start + Duration::from_secs(3),
        "a window after the first request ended"
    );
    assert_eq!(second.deadline(), start + Duration::from_secs(8));
}

#[tokio::test(start_paused = true)]
async fn acquire_waits_in_virtual_time_and_serves_waiters_in_order() {
    let limiter = RateLimiter::local(LimiterConfig {
        rate: 3,
        window: Duration::from_secs(60),
        margin: Duration::ZERO,
        answer_within: Duration::ZERO,
    });
    let start = Instant::now();
    for _ in 0..3 {
        let _unsent = limiter.acquire("k").await;
    }
    assert_eq!(Instant::now(), start, "the first three are immediate");
    let _unsent = limiter.acquire("k").await;
    assert_eq!(Instant::now() - start, Duration::from_secs(60));
}

#[test]
fn key_ids_hide_the_key() {
    let id = key_id(&Secret::new("dv_live_abcdef"));
    assert_eq!(id.len(), 16);
    assert!(!id.contains("abcdef"));
    assert_eq!(id, key_id(&Secret::new("dv_live_abcdef")));
}
