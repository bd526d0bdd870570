//! Failing cases: a poison case bisected out and dead-lettered, and outages that dead-letter
//! nothing.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::helpers::*;

#[tokio::test(start_paused = true)]
async fn a_500_poison_case_is_bisected_out_and_dead_lettered_while_the_rest_flows_in_order() {
    let fake = Fake::new(|r| {
        if r.titles.iter().any(|t| t == "Event 37") {
            status(500)
        } else {
            status(200)
        }
    });
    let rig = Rig::new(&fake, limits(300, Duration::from_secs(60)), config());
    enqueue(&rig.buffer, QUEUE, None, 0..300).await;
    assert!(eventually(Duration::from_secs(60), || fake.accepted().len() >= 299).await);
    let mut expected = titles(0..300);
    expected.retain(|t| t != "Event 37");
    in_order_once(&fake.accepted(), &expected);
    // Later arrivals give the fresh evidence that counts the poison case's attempts.
    for i in 0..40 {
        enqueue(&rig.buffer, QUEUE, None, 300 + i..301 + i).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        if !rig.dead_letters().await.is_empty() {
            break;
        }
    }
    let letters = rig.dead_letters().await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].0, "Event 37");
    assert_eq!(letters[0].2, 500);
    assert!(letters[0].1.contains("HTTP 500"), "{}", letters[0].1);
    let requests = fake.requests().len();
    assert!(
        requests < 120,
        "bisecting costs a few requests, not one per case: {requests}"
    );
    rig.shut_down().await;
}

#[tokio::test(start_paused = true)]
async fn a_whole_api_outage_of_an_hour_dead_letters_nothing() {
    let start = Instant::now();
    let fake = Fake::new(move |_| {
        if start.elapsed() < Duration::from_secs(3600) {
            status(500)
        } else {
            status(200)
        }
    });
    let rig = Rig::new(&fake, limits(300, Duration::from_secs(60)), config());
    enqueue(&rig.buffer, QUEUE, None, 0..250).await;
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert!(
        fake.requests().len() > 1000,
        "it kept trying: {}",
        fake.requests().len()
    );
    assert!(
        rig.dead_letters().await.is_empty(),
        "an outage dead-letters nothing"
    );
    assert!(eventually(Duration::from_secs(60), || fake.accepted().len() >= 250).await);
    let mut accepted = fake.accepted();
    accepted.sort_by_key(|t| t[6..].parse::<usize>().unwrap());
    assert_eq!(accepted, titles(0..250), "each case once");
    assert!(rig.dead_letters().await.is_empty());
    rig.shut_down().await;
}

/// A poison case that failed while its neighbours succeeded, then an outage where nothing else
/// is sent on its key: the outage's failures are not counted, so it is not dead-lettered until
/// the neighbours succeed again.
#[tokio::test(start_paused = true)]
async fn an_outage_that_begins_after_a_case_started_failing_does_not_dead_letter_it() {
    let outage = Duration::from_secs(1800);
    let outage_from: Arc<Mutex<Option<Instant>>> = Arc::default();
    let poison_alone: Arc<Mutex<u32>> = Arc::default();
    let (from, alone) = (outage_from.clone(), poison_alone.clone());
    let fake = Fake::new(move |r| {
        let poison = r.titles.iter().any(|t| t == "Event 0");
        if poison && r.titles.len() == 1 {
            *alone.lock().unwrap() += 1;
        }
        let in_outage = from
            .lock()
            .unwrap()
            .is_some_and(|from| r.at >= from && r.at - from < outage);
        if poison || in_outage {
            status(500)
        } else {
            status(200)
        }
    });
    let max_attempts = config().max_attempts;
    let rig = Rig::new(&fake, limits(300, Duration::from_secs(60)), config());
    enqueue(&rig.buffer, QUEUE, None, 0..10).await;
    let mut next = 10;
    // Neighbours keep arriving and succeeding while the poison case is retried alone a few
    // times (fewer than max_attempts)...
    while *poison_alone.lock().unwrap() < max_attempts - 2 {
        enqueue(&rig.buffer, QUEUE, None, next..next + 1).await;
        next += 1;
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(next < 1000, "the poison case was never retried alone");
    }
    // ...then they stop, every one of them delivered, and the whole API goes down.
    assert!(
        eventually(Duration::from_secs(10), || fake.accepted().len()
            == next - 1)
        .await
    );
    *outage_from.lock().unwrap() = Some(Instant::now());
    let before = *poison_alone.lock().unwrap();
    tokio::time::sleep(outage - Duration::from_secs(1)).await;
    let during = *poison_alone.lock().unwrap() - before;
    assert!(
        during > 2 * max_attempts,
        "retried through the outage: {during}"
    );
    assert!(
        rig.dead_letters().await.is_empty(),
        "an outage that began later never dead-letters it"
    );
    // The API recovers and neighbours flow again: the poison case's attempts count now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut waited = 0;
    while rig.dead_letters().await.is_empty() {
        enqueue(&rig.buffer, QUEUE, None, next..next + 1).await;
        next += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
        waited += 1;
        assert!(waited < 300, "never dead-lettered after the outage");
    }
    let letters = rig.dead_letters().await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].0, "Event 0");
    assert!(
        eventually(Duration::from_secs(10), || fake.accepted().len()
            == next - 1)
        .await,
        "every neighbour delivered: {} of {}",
        fake.accepted().len(),
        next - 1
    );
    rig.shut_down().await;
}
