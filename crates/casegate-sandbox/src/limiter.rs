//! A sliding-window-log rate limiter: per key, the instants of the requests it let through in the
//! last `window`. A request is let through only if fewer than `rate` are in the log, so no span of
//! `window` ever holds more than `rate` admitted requests, wherever it starts. This is the
//! strictest of the usual models (fixed window, token bucket, GCRA): a client that never hits 429
//! here never hits it under any of them.
//!
//! Refused requests are not logged (they do not consume quota), which is what real APIs do.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::clock::SandboxClock;

/// What the limiter decided for one request, with the values for the `x-ratelimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateDecision {
    /// Whether the request was let through (and counted).
    pub allowed: bool,
    /// `x-ratelimit-limit`: requests allowed per window.
    pub limit: u32,
    /// `x-ratelimit-remaining`: requests that would still be let through right now.
    pub remaining: u32,
    /// `x-ratelimit-reset`: whole seconds (rounded up) until the oldest logged request leaves the
    /// window and frees a slot; 0 when nothing is logged.
    pub reset_secs: u64,
}

impl RateDecision {
    /// The `retry-after` value for a refused request: `reset_secs`, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        self.reset_secs.max(1)
    }
}

/// A sliding-window-log limiter keyed by API key.
#[derive(Debug)]
pub struct SlidingWindowLimiter<C> {
    clock: C,
    rate: u32,
    window: Duration,
    logs: HashMap<String, VecDeque<Instant>>,
    peak: u32,
}

impl<C: SandboxClock> SlidingWindowLimiter<C> {
    /// At most `rate` requests per key in any `window`. A `rate` of 0 refuses everything.
    pub fn new(clock: C, rate: u32, window: Duration) -> Self {
        SlidingWindowLimiter {
            clock,
            rate,
            window,
            logs: HashMap::new(),
            peak: 0,
        }
    }

    /// Decides one request for `key`, logging it if it is let through.
    pub fn check(&mut self, key: &str) -> RateDecision {
        let now = self.clock.now();
        let log = self.logs.entry(key.to_owned()).or_default();
        prune(log, now, self.window);
        let allowed = len_u32(log) < self.rate;
        if allowed {
            log.push_back(now);
            self.peak = self.peak.max(len_u32(log));
        }
        decision(log, now, self.rate, self.window, allowed)
    }

    /// The current state for `key` without counting a request (`allowed` tells whether one would
    /// be let through).
    pub fn peek(&mut self, key: &str) -> RateDecision {
        let now = self.clock.now();
        match self.logs.get_mut(key) {
            Some(log) => {
                prune(log, now, self.window);
                let allowed = len_u32(log) < self.rate;
                decision(log, now, self.rate, self.window, allowed)
            }
            None => decision(&VecDeque::new(), now, self.rate, self.window, self.rate > 0),
        }
    }

    /// The most requests ever in one key's log at once: how close clients came to the limit.
    pub fn peak(&self) -> u32 {
        self.peak
    }

    /// Forgets every logged request.
    pub fn clear(&mut self) {
        self.logs.clear();
        self.peak = 0;
    }
}

/// Drops the entries that have left the window: an entry logged at `t` frees its slot at
/// `t + window` exactly.
fn prune(log: &mut VecDeque<Instant>, now: Instant, window: Duration) {
    while log
        .front()
        .is_some_and(|&at| now.saturating_duration_since(at) >= window)
    {
        log.pop_front();
    }
}

fn decision(
    log: &VecDeque<Instant>,
    now: Instant,
    rate: u32,
    window: Duration,
    allowed: bool,
) -> RateDecision {
    let reset = log.front().map_or(Duration::ZERO, |&oldest| {
        (oldest + window).saturating_duration_since(now)
    });
    RateDecision {
        allowed,
        limit: rate,
        remaining: rate.saturating_sub(len_u32(log)),
        reset_secs: ceil_secs(reset),
    }
}

fn len_u32(log: &VecDeque<Instant>) -> u32 {
    u32::try_from(log.len()).unwrap_or(u32::MAX)
}

fn ceil_secs(d: Duration) -> u64 {
    u64::try_from(d.as_nanos().div_ceil(1_000_000_000)).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn limiter(rate: u32, window_secs: u64) -> (ManualClock, SlidingWindowLimiter<ManualClock>) {
        let clock = ManualClock::new(0);
        let limiter =
            SlidingWindowLimiter::new(clock.clone(), rate, Duration::from_secs(window_secs));
        (clock, limiter)
    }

    #[test]
    fn requests_up_to_the_rate_pass_and_the_next_is_refused() {
        let (_, mut l) = limiter(3, 60);
        let got: Vec<_> = (0..4).map(|_| l.check("k")).collect();
        assert!(got[..3].iter().all(|d| d.allowed));
        assert_eq!(
            got.iter().map(|d| d.remaining).collect::<Vec<_>>(),
            [2, 1, 0, 0]
        );
        assert!(!got[3].allowed);
        assert_eq!(got[3].reset_secs, 60);
        assert_eq!(got[3].retry_after_secs(), 60);
        assert_eq!(got[3].limit, 3);
    }

    #[test]
    fn the_window_slides_rather_than_resetting_on_a_boundary() {
        let (clock, mut l) = limiter(2, 60);
        assert!(l.check("k").allowed); // t = 0
        clock.advance(Duration::from_secs(59));
        assert!(l.check("k").allowed); // t = 59
        clock.advance(Duration::from_millis(999));
        // t = 59.999: both still in the window; a fixed window at 60 s would not protect the
        // span 59..119 from holding three.
        let refused = l.check("k");
        assert!(!refused.allowed);
        assert_eq!(refused.reset_secs, 1, "0.001 s rounds up to 1");
        clock.advance(Duration::from_millis(1));
        // t = 60: the first request has left the window, the second has not.
        let d = l.check("k");
        assert!(d.allowed);
        assert_eq!(d.remaining, 0);
        assert_eq!(d.reset_secs, 59, "the t=59 entry frees its slot at t=119");
        assert!(!l.check("k").allowed);
    }

    #[test]
    fn refused_requests_do_not_consume_quota() {
        let (clock, mut l) = limiter(1, 10);
        assert!(l.check("k").allowed);
        for _ in 0..50 {
            clock.advance(Duration::from_millis(100));
            assert!(!l.check("k").allowed);
        }
        clock.advance(Duration::from_secs(5)); // t = 10 s
        assert!(l.check("k").allowed);
    }

    #[test]
    fn keys_are_limited_independently() {
        let (_, mut l) = limiter(1, 60);
        assert!(l.check("a").allowed);
        assert!(l.check("b").allowed);
        assert!(!l.check("a").allowed);
    }

    #[test]
    fn peek_reports_without_counting() {
        let (clock, mut l) = limiter(2, 60);
        let fresh = l.peek("k");
        assert_eq!(
            (fresh.allowed, fresh.remaining, fresh.reset_secs),
            (true, 2, 0)
        );
        l.check("k");
        clock.advance(Duration::from_millis(500));
        let d = l.peek("k");
        assert_eq!((d.remaining, d.reset_secs), (1, 60));
        assert_eq!(l.peek("k").remaining, 1);
    }

    #[test]
    fn a_zero_rate_refuses_everything() {
        let (_, mut l) = limiter(0, 60);
        let d = l.check("k");
        assert!(!d.allowed);
        assert_eq!(d.retry_after_secs(), 1);
    }

    #[test]
    fn no_window_ever_holds_more_than_the_rate_under_a_steady_flood() {
        let (clock, mut l) = limiter(5, 1);
        let mut admitted = Vec::new();
        for step in 0..2_000u64 {
            if l.check("k").allowed {
                admitted.push(step);
            }
            clock.advance(Duration::from_millis(7));
        }
        // Steps are 7 ms apart, so a 1 s window spans fewer than 143 steps.
        for (i, &start) in admitted.iter().enumerate() {
            let in_window = admitted[i..]
                .iter()
                .take_while(|&&s| (s - start) * 7 < 1_000)
                .count();
            assert!(
                in_window <= 5,
                "window starting at step {start} held {in_window}"
            );
        }
        assert_eq!(l.peak(), 5);
        l.clear();
        assert_eq!(l.peak(), 0);
        assert_eq!(l.peek("k").remaining, 5);
    }
}
