//! Replay windows shared by the timestamped schemes.
//!
//! A signed timestamp only protects against replay if the receiver refuses old ones, and a
//! timestamp far in the future is just as suspicious (a sender with a broken clock, or a captured
//! request held back for later), so both directions are checked against the same tolerance.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::VerifyError;

/// The replay window used when a mapping file does not set `tolerance_secs`; five minutes is
/// what Stripe, Slack, HubSpot and the Standard Webhooks libraries use.
pub const DEFAULT_TOLERANCE_SECS: u64 = 300;

pub(super) fn default_tolerance_secs() -> u64 {
    DEFAULT_TOLERANCE_SECS
}

/// Time since the Unix epoch; a clock set before 1970 counts as the epoch itself.
pub(super) fn since_epoch(now: SystemTime) -> Duration {
    now.duration_since(UNIX_EPOCH).unwrap_or_default()
}

/// Rejects `signed_at` (time since the epoch) when it is more than `tolerance_secs` away from
/// `now` in either direction. The boundary itself is accepted.
pub(super) fn check_window(
    signed_at: Duration,
    now: SystemTime,
    tolerance_secs: u64,
) -> Result<(), VerifyError> {
    let now = since_epoch(now);
    let tolerance = Duration::from_secs(tolerance_secs);
    // `checked_add` because a hostile timestamp near u64::MAX must not overflow (and panic).
    match signed_at.checked_add(tolerance) {
        Some(latest_ok) if latest_ok < now => return Err(VerifyError::StaleTimestamp),
        _ => {}
    }
    match now.checked_add(tolerance) {
        Some(horizon) if signed_at > horizon => Err(VerifyError::FutureTimestamp),
        _ => Ok(()),
    }
}

/// Parses a decimal count of seconds since the epoch (Stripe, Slack, Standard Webhooks).
pub(super) fn parse_unix_secs(header: &str, value: &str) -> Result<Duration, VerifyError> {
    parse_digits(header, value).map(Duration::from_secs)
}

/// Parses a decimal count of milliseconds since the epoch (HubSpot v3).
pub(super) fn parse_unix_millis(header: &str, value: &str) -> Result<Duration, VerifyError> {
    parse_digits(header, value).map(Duration::from_millis)
}

/// Parses an RFC 3339 date-time such as `2021-07-25T10:00:00Z` (Zendesk).
pub(super) fn parse_rfc3339(header: &str, value: &str) -> Result<Duration, VerifyError> {
    let parsed = OffsetDateTime::parse(value, &Rfc3339)
        .map_err(|_| bad(header, "not an RFC 3339 timestamp"))?;
    let secs = u64::try_from(parsed.unix_timestamp())
        .map_err(|_| bad(header, "timestamp is before 1970"))?;
    Ok(Duration::from_secs(secs) + Duration::from_nanos(u64::from(parsed.nanosecond())))
}

/// `now` as an RFC 3339 string with whole seconds, the shape Zendesk sends.
pub(super) fn format_rfc3339(now: SystemTime) -> String {
    i64::try_from(since_epoch(now).as_secs())
        .ok()
        .and_then(|secs| OffsetDateTime::from_unix_timestamp(secs).ok())
        .and_then(|at| at.format(&Rfc3339).ok())
        // Only a clock past the year 9999 gets here; the epoch then yields a stale signature
        // rather than a panic.
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_string())
}

/// Only plain ASCII digits: `u64::from_str` would also take a leading `+`, which no provider
/// sends and which would let two different header strings mean the same time.
fn parse_digits(header: &str, value: &str) -> Result<u64, VerifyError> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad(header, "timestamp is not a decimal integer"));
    }
    value
        .parse()
        .map_err(|_| bad(header, "timestamp is out of range"))
}

fn bad(header: &str, reason: &str) -> VerifyError {
    VerifyError::BadFormat {
        header: header.to_string(),
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn a_timestamp_exactly_at_either_edge_of_the_window_is_accepted() {
        let now = at(10_000);
        assert_eq!(check_window(Duration::from_secs(9_700), now, 300), Ok(()));
        assert_eq!(check_window(Duration::from_secs(10_300), now, 300), Ok(()));
    }

    #[test]
    fn a_timestamp_one_second_outside_the_window_is_rejected_with_its_direction() {
        let now = at(10_000);
        assert_eq!(
            check_window(Duration::from_secs(9_699), now, 300),
            Err(VerifyError::StaleTimestamp)
        );
        assert_eq!(
            check_window(Duration::from_secs(10_301), now, 300),
            Err(VerifyError::FutureTimestamp)
        );
    }

    #[test]
    fn an_absurdly_large_timestamp_is_future_not_a_panic() {
        let huge = Duration::from_secs(u64::MAX);
        assert_eq!(check_window(huge, at(10_000), u64::MAX), Ok(()));
        assert_eq!(
            check_window(huge, at(10_000), 300),
            Err(VerifyError::FutureTimestamp)
        );
    }

    #[test]
    fn only_plain_decimal_digits_parse_as_a_unix_timestamp() {
        assert_eq!(
            parse_unix_secs("t", "1614265330"),
            Ok(Duration::from_secs(1_614_265_330))
        );
        assert_eq!(
            parse_unix_millis("t", "1614265330123"),
            Ok(Duration::from_millis(1_614_265_330_123))
        );
        for garbled in [
            "",
            "+1",
            "-1",
            " 1",
            "1.5",
            "abc",
            "99999999999999999999999",
        ] {
            assert!(
                matches!(
                    parse_unix_secs("t", garbled),
                    Err(VerifyError::BadFormat { .. })
                ),
                "{garbled:?} should be rejected"
            );
        }
    }

    #[test]
    fn rfc3339_timestamps_round_trip_through_format_and_parse() {
        let now = at(1_627_207_200);
        assert_eq!(format_rfc3339(now), "2021-07-25T10:00:00Z");
        assert_eq!(
            parse_rfc3339("t", "2021-07-25T10:00:00Z"),
            Ok(Duration::from_secs(1_627_207_200))
        );
        assert_eq!(
            parse_rfc3339("t", "2021-07-25T12:00:00+02:00"),
            Ok(Duration::from_secs(1_627_207_200))
        );
        assert!(parse_rfc3339("t", "1627207200").is_err());
        assert!(parse_rfc3339("t", "1969-12-31T23:59:59Z").is_err());
    }
}
