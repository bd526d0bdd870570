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
