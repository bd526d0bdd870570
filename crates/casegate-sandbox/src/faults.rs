//! Fault injection: the [`Faults`] a test or demo asks for, compiled once (the title pattern) and
//! anchored in time (a bounded outage). Randomness comes in as plain numbers so the decisions are
//! pure and tested without a random source.

use std::time::{Duration, Instant};

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::contract::NewCase;

/// Faults to inject into the API routes (`/v1|v2/queues/{queue_id}/cases`). The control routes
/// under `/_sandbox` are never faulted. Missing fields in JSON take their defaults (no fault);
/// unknown fields are refused.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Share of requests (0.0-1.0) that passed auth and the rate limit but are answered with a
    /// random 500, 502 or 503 instead; nothing from such a request is stored.
    pub error_ratio: f64,
    /// Delay added before every API answer, errors included.
    pub latency_ms: u64,
    /// Every API request is answered 503 until switched off.
    pub outage: bool,
    /// Bounds the outage to this many seconds from when the faults were set (at startup or by
    /// `PUT /_sandbox/faults`); setting it alone also starts an outage. Such 503s carry
    /// `retry-after` with the seconds left; an open-ended outage's 503s do not.
    pub outage_for_secs: Option<u64>,
    /// A regex; a request holding a case whose title matches it is refused with 400, naming the
    /// first such case (`cases[3].title matches ...`), so a client can isolate poison cases.
    pub reject_title_pattern: Option<String>,
    /// A regex; a request holding a case whose title matches it is answered 500 and stores
    /// nothing, while every other request succeeds: a case the API fails on (not refuses).
    pub fail_title_pattern: Option<String>,
    /// Queue ids the API does not know: requests for them are answered 404.
    pub missing_queues: Vec<String>,
}

/// Faults that cannot be applied.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FaultsError {
    #[error("error_ratio must be between 0.0 and 1.0, got {0}")]
    ErrorRatio(f64),
    #[error("{field} is not a valid regex: {reason}")]
    Pattern { field: &'static str, reason: String },
}

impl Faults {
    /// Checks that the faults can be applied.
    pub fn validate(&self) -> Result<(), FaultsError> {
        Compiled::new(self.clone(), Instant::now()).map(|_| ())
    }
}

/// An outage in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outage {
    /// Whole seconds left (rounded up) for a bounded outage; `None` for an open-ended one.
    pub retry_after_secs: Option<u64>,
}

/// Faults ready to apply.
#[derive(Debug, Clone)]
pub struct Compiled {
    spec: Faults,
    pattern: Option<Regex>,
    fail_pattern: Option<Regex>,
    outage: OutageWindow,
}

#[derive(Debug, Clone, Copy)]
enum OutageWindow {
    None,
    Until(Instant),
    Open,
}

impl Compiled {
    /// Compiles `spec`, anchoring a bounded outage at `now`.
    pub fn new(spec: Faults, now: Instant) -> Result<Compiled, FaultsError> {
        if !(0.0..=1.0).contains(&spec.error_ratio) {
            return Err(FaultsError::ErrorRatio(spec.error_ratio));
        }
        let pattern = compile("reject_title_pattern", spec.reject_title_pattern.as_deref())?;
        let fail_pattern = compile("fail_title_pattern", spec.fail_title_pattern.as_deref())?;
        let outage = match (spec.outage, spec.outage_for_secs) {
            (_, Some(secs)) => OutageWindow::Until(now + Duration::from_secs(secs)),
            (true, None) => OutageWindow::Open,
            (false, None) => OutageWindow::None,
        };
        Ok(Compiled {
            spec,
            pattern,
            fail_pattern,
            outage,
        })
    }

    /// The faults as they were set.
    pub fn spec(&self) -> &Faults {
        &self.spec
    }

    /// The delay to add before answering.
    pub fn latency(&self) -> Duration {
        Duration::from_millis(self.spec.latency_ms)
    }

    /// The outage in force at `now`, if any.
    pub fn outage(&self, now: Instant) -> Option<Outage> {
        match self.outage {
            OutageWindow::None => None,
            OutageWindow::Open => Some(Outage {
                retry_after_secs: None,
            }),
            OutageWindow::Until(end) if now < end => {
                let left = end - now;
                Some(Outage {
                    retry_after_secs: Some(
                        u64::try_from(left.as_nanos().div_ceil(1_000_000_000))
                            .unwrap_or(u64::MAX)
                            .max(1),
                    ),
                })
            }
            OutageWindow::Until(_) => None,
        }
    }

    /// The index of the first case whose title matches the reject pattern.
    pub fn poisoned(&self, cases: &[NewCase]) -> Option<usize> {
        let pattern = self.pattern.as_ref()?;
        cases.iter().position(|c| pattern.is_match(&c.title))
    }

    /// Whether a case of this request makes the API fail (500) rather than refuse.
    pub fn fails_on(&self, cases: &[NewCase]) -> bool {
        self.fail_pattern
            .as_ref()
            .is_some_and(|p| cases.iter().any(|c| p.is_match(&c.title)))
    }

    /// Whether the API does not know this queue.
    pub fn missing(&self, queue_id: &str) -> bool {
        self.spec
            .missing_queues
            .iter()
            .any(|q| q.eq_ignore_ascii_case(queue_id))
    }

    /// Whether to fail this request, and with which status. `roll` is uniform in [0, 1) and
    /// `pick` any number (it chooses among 500, 502 and 503).
    pub fn injected_status(&self, roll: f64, pick: u32) -> Option<u16> {
        (roll < self.spec.error_ratio).then(|| [500, 502, 503][pick as usize % 3])
    }
}

/// Compiles a title pattern, if one is set.
fn compile(field: &'static str, pattern: Option<&str>) -> Result<Option<Regex>, FaultsError> {
    pattern
        .map(Regex::new)
        .transpose()
        .map_err(|e| FaultsError::Pattern {
            field,
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compiled(spec: Faults) -> (Instant, Compiled) {
        let now = Instant::now();
        (now, Compiled::new(spec, now).unwrap())
    }

    fn case(title: &str) -> NewCase {
        NewCase {
            title: title.to_owned(),
            data: None,
            labels: Vec::new(),
        }
    }

    #[test]
    fn no_faults_by_default() {
        let (now, f) = compiled(Faults::default());
        assert_eq!(f.outage(now), None);
        assert_eq!(f.latency(), Duration::ZERO);
        assert_eq!(f.poisoned(&[case("a")]), None);
        assert_eq!(f.injected_status(0.0, 0), None);
    }

    #[test]
    fn the_error_ratio_fails_that_share_of_rolls_with_500_502_or_503() {
        let (_, f) = compiled(Faults {
            error_ratio: 0.25,
            ..Faults::default()
        });
        assert_eq!(f.injected_status(0.24, 0), Some(500));
        assert_eq!(f.injected_status(0.24, 1), Some(502));
        assert_eq!(f.injected_status(0.0, 5), Some(503));
        assert_eq!(f.injected_status(0.25, 0), None);
        let (_, always) = compiled(Faults {
            error_ratio: 1.0,
            ..Faults::default()
        });
        assert!(always.injected_status(0.999_999, 0).is_some());
    }

    #[test]
    fn an_open_outage_lasts_until_switched_off() {
        let (now, f) = compiled(Faults {
            outage: true,
            ..Faults::default()
        });
        let later = now + Duration::from_secs(86_400);
        assert_eq!(
            f.outage(later),
            Some(Outage {
                retry_after_secs: None
            })
        );
    }

    #[test]
    fn a_bounded_outage_ends_on_time_and_reports_the_seconds_left() {
        for outage in [true, false] {
            let (now, f) = compiled(Faults {
                outage,
                outage_for_secs: Some(10),
                ..Faults::default()
            });
            let at = |ms| f.outage(now + Duration::from_millis(ms));
            assert_eq!(at(0).unwrap().retry_after_secs, Some(10));
            assert_eq!(at(8_500).unwrap().retry_after_secs, Some(2));
            assert_eq!(at(9_999).unwrap().retry_after_secs, Some(1));
            assert_eq!(at(10_000), None);
        }
    }

    #[test]
    fn the_first_title_matching_the_pattern_is_named() {
        let (_, f) = compiled(Faults {
            reject_title_pattern: Some("^poison".to_owned()),
            ..Faults::default()
        });
        let cases = [case("ok"), case("poison 1"), case("poison 2")];
        assert_eq!(f.poisoned(&cases), Some(1));
        assert_eq!(f.poisoned(&cases[..1]), None);
    }

    #[test]
    fn a_failing_title_fails_its_request_and_a_missing_queue_is_unknown() {
        let (_, f) = compiled(Faults {
            fail_title_pattern: Some("^boom".to_owned()),
            missing_queues: vec!["Q1".to_owned()],
            ..Faults::default()
        });
        assert!(f.fails_on(&[case("ok"), case("boom 7")]));
        assert!(!f.fails_on(&[case("ok"), case("fine boom")]));
        assert!(f.missing("q1"));
        assert!(!f.missing("q2"));
    }

    #[test]
    fn unusable_faults_are_refused() {
        let bad_ratio = Faults {
            error_ratio: 1.5,
            ..Faults::default()
        };
        assert_eq!(bad_ratio.validate(), Err(FaultsError::ErrorRatio(1.5)));
        let nan = Faults {
            error_ratio: f64::NAN,
            ..Faults::default()
        };
        assert!(nan.validate().is_err());
        let bad_pattern = Faults {
            reject_title_pattern: Some("(".to_owned()),
            ..Faults::default()
        };
        assert!(matches!(
            bad_pattern.validate(),
            Err(FaultsError::Pattern {
                field: "reject_title_pattern",
                ..
            })
        ));
        let bad_fail_pattern = Faults {
            fail_title_pattern: Some("[".to_owned()),
            ..Faults::default()
        };
        let error = bad_fail_pattern.validate().unwrap_err();
        assert!(
            error.to_string().starts_with("fail_title_pattern is not"),
            "{error}"
        );
    }

    #[test]
    fn faults_deserialize_with_defaults_and_refuse_unknown_fields() {
        let f: Faults = serde_json::from_str(r#"{"latency_ms": 5}"#).unwrap();
        assert_eq!(
            f,
            Faults {
                latency_ms: 5,
                ..Faults::default()
            }
        );
        assert!(serde_json::from_str::<Faults>(r#"{"latency": 5}"#).is_err());
    }
}
