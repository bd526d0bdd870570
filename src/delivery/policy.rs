//! What an answer of the Duvo API means for the batch that got it, and how long to wait before
//! trying again. Deciding *whether* to retry ([`decide`]) is separate from deciding *when*
//! ([`Backoff`]), and both are pure so they are table-tested.

use std::time::Duration;

/// The rate-limit headers the API sends with every answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimitHeaders {
    pub limit: Option<u64>,
    pub remaining: Option<u64>,
    /// Seconds until the window resets.
    pub reset: Option<Duration>,
}

/// One answer of `POST /queues/{id}/cases`, reduced to what delivery decides on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiAnswer {
    Response {
        status: u16,
        retry_after: Option<Duration>,
        rate: RateLimitHeaders,
        /// `error` and `message` of the API's error body, when it sent one.
        error: Option<(String, String)>,
    },
    /// No HTTP answer: connection refused or reset, DNS failure, or the request timed out.
    Transport(String),
}

/// What to do with the batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// The API accepted every case: remove them from the buffer.
    Ack,
    /// 429: pause the whole key for this long, then send the same batch again.
    ResendAfter(Duration),
    /// A transient failure: back off (exponentially, with jitter) and send the same batch again.
    Backoff,
    /// The API refused something in this batch: split it in halves and send each, so only the
    /// refused cases end in the dead-letter store.
    Split,
    /// The API refused this single case: dead-letter it with the reason.
    DeadLetter { status: u16, reason: String },
    /// The key is not accepted (401/403): pause every queue of this key and probe later.
    PauseKey { status: u16, reason: String },
    /// The queue does not exist for this key (404): pause this queue and probe later.
    PauseQueue { reason: String },
}

/// How long to wait after a 429 that carries no usable `retry-after`.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(5);

/// Classifies an answer for a batch of `batch_len` cases.
pub fn decide(answer: &ApiAnswer, batch_len: usize) -> Action {
    let (status, retry_after, error) = match answer {
        ApiAnswer::Transport(_) => return Action::Backoff,
        ApiAnswer::Response {
            status,
            retry_after,
            error,
            ..
        } => (*status, *retry_after, error),
    };
    let reason = || match error {
        Some((code, message)) => format!("{status} {code}: {message}"),
        None => format!("HTTP {status}"),
    };
    match status {
        200..=299 => Action::Ack,
        429 => Action::ResendAfter(retry_after.unwrap_or(DEFAULT_RETRY_AFTER)),
        408 | 500..=599 => Action::Backoff,
        401 | 403 => Action::PauseKey {
            status,
            reason: reason(),
        },
        404 => Action::PauseQueue { reason: reason() },
        400..=499 if batch_len > 1 => Action::Split,
        400..=499 => Action::DeadLetter {
            status,
            reason: reason(),
        },
        // 1xx/3xx are not answers this endpoint gives; treat them as transient.
        _ => Action::Backoff,
    }
}

/// How long to hold a key after an answer that says its API window is spent
/// (`x-ratelimit-remaining: 0`), or `None` to go on. When the API counts at least as much as
/// casegate's own limiter allows (`our_rate`), the sliding window already paces exactly and
/// pausing for the whole-second `reset` would waste up to a second per window; only a stricter
/// API limit (or one that does not say its limit) is waited out, until its reset (1 s if unsaid).
pub fn window_spent(answer: &ApiAnswer, our_rate: u32) -> Option<Duration> {
    let ApiAnswer::Response { rate, .. } = answer else {
        return None;
    };
    if rate.remaining != Some(0) || rate.limit.is_some_and(|limit| limit >= u64::from(our_rate)) {
        return None;
    }
    Some(rate.reset.unwrap_or(Duration::from_secs(1)))
}

/// Failures (5xx, timeouts) of one batch in a row before it is bisected: a poison case then
/// costs a few requests, not the queue. Bisecting loses nothing, so it needs no proof that the
/// API is otherwise healthy; only dead-lettering does.
pub const SPLIT_AFTER: u32 = 3;

/// What to do with a batch (or single case) after a transient failure (5xx or timeout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// Back off and send it again.
    Retry,
    /// Bisect it and send each half in turn.
    Split,
    /// A single case that keeps failing without proof of health: send the other pending
    /// batches first (their answers tell an outage from a poison case), then this one again.
    SetAside,
    /// A single case failed `max_attempts` times while the key's other requests succeeded.
    DeadLetter,
}

/// The rule for a transient failure of `len` cases that failed `failures` times in a row, of
/// which `counted` happened while the key's other requests succeeded. A whole-API outage counts
/// nothing, so it never dead-letters, however long it lasts.
pub fn after_failure(
    len: usize,
    failures: u32,
    counted: u32,
    max_attempts: u32,
    others_waiting: bool,
) -> AfterFailure {
    if len > 1 {
        if failures >= SPLIT_AFTER {
            AfterFailure::Split
        } else {
            AfterFailure::Retry
        }
    } else if counted >= max_attempts {
        AfterFailure::DeadLetter
    } else if others_waiting && failures.is_multiple_of(SPLIT_AFTER) {
        AfterFailure::SetAside
    } else {
        AfterFailure::Retry
    }
}

/// Capped exponential backoff with equal jitter: attempt `n` waits between half and all of
/// `min(max, base * 2^n)`, so retries of many batches spread out instead of arriving together.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The delay before retry number `attempt` (0-based); `jitter` is a uniform sample in [0, 1).
    pub fn delay(&self, attempt: u32, jitter: f64) -> Duration {
        let exponential = self
            .base
            .saturating_mul(2u32.saturating_pow(attempt.min(20)));
        let capped = exponential.min(self.max);
        capped.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16, retry_after: Option<u64>) -> ApiAnswer {
        ApiAnswer::Response {
            status,
            retry_after: retry_after.map(Duration::from_secs),
            rate: RateLimitHeaders::default(),
            error: Some(("invalid_request".into(), "cases[3].title is empty".into())),
        }
    }

    #[test]
    fn every_answer_maps_to_one_action() {
        let refusal = || "400 invalid_request: cases[3].title is empty".to_string();
        let cases: Vec<(ApiAnswer, usize, Action)> = vec![
            (response(200, None), 100, Action::Ack),
            (response(201, None), 1, Action::Ack),
            (
                response(429, Some(7)),
                100,
                Action::ResendAfter(Duration::from_secs(7)),
            ),
            (
                response(429, None),
                100,
                Action::ResendAfter(DEFAULT_RETRY_AFTER),
            ),
            (response(408, None), 10, Action::Backoff),
            (response(500, None), 10, Action::Backoff),
            (response(502, None), 10, Action::Backoff),
            (response(503, Some(3)), 10, Action::Backoff),
            (
                ApiAnswer::Transport("connection refused".into()),
                10,
                Action::Backoff,
            ),
            (response(400, None), 100, Action::Split),
            (response(413, None), 2, Action::Split),
            (response(422, None), 50, Action::Split),
            (
                response(400, None),
                1,
                Action::DeadLetter {
                    status: 400,
                    reason: refusal(),
                },
            ),
            (
                response(413, None),
                1,
                Action::DeadLetter {
                    status: 413,
                    reason: refusal().replacen("400", "413", 1),
                },
            ),
            (
                response(401, None),
                100,
                Action::PauseKey {
                    status: 401,
                    reason: refusal().replacen("400", "401", 1),
                },
            ),
            (
                response(403, None),
                1,
                Action::PauseKey {
                    status: 403,
                    reason: refusal().replacen("400", "403", 1),
                },
            ),
            (
                response(404, None),
                5,
                Action::PauseQueue {
                    reason: refusal().replacen("400", "404", 1),
                },
            ),
            (response(302, None), 5, Action::Backoff),
        ];
        for (answer, batch_len, expected) in cases {
            assert_eq!(
                decide(&answer, batch_len),
                expected,
                "{answer:?} for {batch_len} cases"
            );
        }
    }

    fn with_rate(limit: Option<u64>, remaining: Option<u64>, reset: Option<u64>) -> ApiAnswer {
        ApiAnswer::Response {
            status: 201,
            retry_after: None,
            rate: RateLimitHeaders {
                limit,
                remaining,
                reset: reset.map(Duration::from_secs),
            },
            error: None,
        }
    }

    #[test]
    fn a_spent_window_holds_the_key_only_when_the_api_is_stricter_than_casegate() {
        let table: Vec<(ApiAnswer, Option<Duration>)> = vec![
            (with_rate(Some(300), Some(0), Some(4)), None),
            (with_rate(Some(600), Some(0), Some(4)), None),
            (
                with_rate(Some(100), Some(0), Some(4)),
                Some(Duration::from_secs(4)),
            ),
            (with_rate(None, Some(0), None), Some(Duration::from_secs(1))),
            (with_rate(Some(100), Some(3), Some(4)), None),
            (with_rate(None, None, None), None),
            (ApiAnswer::Transport("timed out".into()), None),
        ];
        for (answer, expected) in table {
            assert_eq!(window_spent(&answer, 300), expected, "{answer:?}");
        }
    }

    #[test]
    fn transient_failures_bisect_batches_and_dead_letter_only_counted_failures() {
        use AfterFailure::*;
        let table = [
            // (len, failures, counted, max, others waiting) -> step
            ((100, 1, 0, 20, false), Retry),
            ((100, 2, 0, 20, true), Retry),
            ((100, 3, 0, 20, false), Split),
            ((2, 3, 0, 20, false), Split),
            ((1, 1, 0, 20, true), Retry),
            ((1, 3, 0, 20, true), SetAside),
            ((1, 3, 0, 20, false), Retry),
            ((1, 50, 0, 20, false), Retry),
            ((1, 200, 19, 20, true), Retry),
            ((1, 21, 20, 20, false), DeadLetter),
            ((1, 20, 20, 20, true), DeadLetter),
        ];
        for ((len, failures, counted, max, others), expected) in table {
            assert_eq!(
                after_failure(len, failures, counted, max, others),
                expected,
                "{len} cases, {failures} failures, {counted} counted"
            );
        }
    }

    #[test]
    fn a_refusal_without_an_error_body_still_has_a_reason() {
        let answer = ApiAnswer::Response {
            status: 400,
            retry_after: None,
            rate: Default::default(),
            error: None,
        };
        assert_eq!(
            decide(&answer, 1),
            Action::DeadLetter {
                status: 400,
                reason: "HTTP 400".into()
            }
        );
    }

    #[test]
    fn backoff_grows_exponentially_with_jitter_and_is_capped() {
        let backoff = Backoff {
            base: Duration::from_millis(500),
            max: Duration::from_secs(60),
        };
        assert_eq!(backoff.delay(0, 0.0), Duration::from_millis(250));
        assert_eq!(
            backoff.delay(0, 0.999_999),
            Duration::from_micros(499_999) + Duration::from_nanos(750)
        );
        assert_eq!(backoff.delay(3, 1.0), Duration::from_secs(4));
        assert_eq!(backoff.delay(3, 0.0), Duration::from_secs(2));
        assert_eq!(backoff.delay(10, 1.0), Duration::from_secs(60));
        assert_eq!(backoff.delay(u32::MAX, 1.0), Duration::from_secs(60));
        for attempt in 0..30 {
            for jitter in [0.0, 0.3, 0.7, 1.0] {
                let delay = backoff.delay(attempt, jitter);
                assert!(
                    delay <= backoff.max && delay >= Duration::from_millis(250),
                    "{attempt} {jitter}: {delay:?}"
                );
            }
        }
    }
}
