//! Time as the sandbox sees it: a monotonic instant for the rate limiter and outage windows, and
//! the UTC wall clock for `created_at` and the stats log. Injected so tests use fixed instants
//! instead of sleeping.

use std::num::NonZero;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use time::format_description::well_known::Iso8601;
use time::format_description::well_known::iso8601::{Config, EncodedConfig, TimePrecision};

/// A source of time for the sandbox.
pub trait SandboxClock: Send + Sync + 'static {
    /// Monotonic time, for windows and deadlines.
    fn now(&self) -> Instant;
    /// The wall clock, for timestamps shown to clients.
    fn now_utc(&self) -> OffsetDateTime;
}

impl<C: SandboxClock + ?Sized> SandboxClock for Arc<C> {
    fn now(&self) -> Instant {
        (**self).now()
    }

    fn now_utc(&self) -> OffsetDateTime {
        (**self).now_utc()
    }
}

/// The real clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct RealClock;

impl SandboxClock for RealClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn now_utc(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// A clock that moves only when told to. Clones share the same time.
#[derive(Debug, Clone)]
pub struct ManualClock {
    start: Instant,
    start_utc: OffsetDateTime,
    elapsed: Arc<Mutex<Duration>>,
}

impl ManualClock {
    /// A clock standing at `start_unix_ms` milliseconds since the Unix epoch.
    ///
    /// # Panics
    /// If that is after the year 9999.
    pub fn new(start_unix_ms: u64) -> ManualClock {
        let start_utc =
            OffsetDateTime::from_unix_timestamp_nanos(i128::from(start_unix_ms) * 1_000_000)
                .expect("a manual clock starts before the year 10000");
        ManualClock {
            start: Instant::now(),
            start_utc,
            elapsed: Arc::new(Mutex::new(Duration::ZERO)),
        }
    }

    /// Moves time forward by `by`.
    pub fn advance(&self, by: Duration) {
        *self.elapsed.lock().unwrap_or_else(PoisonError::into_inner) += by;
    }

    fn elapsed(&self) -> Duration {
        *self.elapsed.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl SandboxClock for ManualClock {
    fn now(&self) -> Instant {
        self.start + self.elapsed()
    }

    fn now_utc(&self) -> OffsetDateTime {
        let elapsed = time::Duration::try_from(self.elapsed()).unwrap_or(time::Duration::MAX);
        self.start_utc.saturating_add(elapsed)
    }
}

/// ISO 8601 in UTC with exactly three decimal digits of seconds: `2024-01-15T10:00:00.123Z`.
const TIMESTAMP: EncodedConfig = Config::DEFAULT
    .set_time_precision(TimePrecision::Second {
        decimal_digits: NonZero::new(3),
    })
    .encode();

/// Formats `at` the way the API shows `created_at`: ISO 8601 (RFC 3339) UTC with milliseconds,
/// e.g. `2024-01-15T10:00:00.123Z`.
pub fn format_timestamp(at: OffsetDateTime) -> String {
    at.to_offset(time::UtcOffset::UTC)
        .format(&Iso8601::<TIMESTAMP>)
        .expect("a time's year is within 0-9999")
}

/// Milliseconds since the Unix epoch (0 for times before it).
pub fn epoch_ms(at: OffsetDateTime) -> u64 {
    u64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_format_as_iso_8601_utc_with_milliseconds() {
        let table = [
            (0, "1970-01-01T00:00:00.000Z"),
            (1_705_312_800_123, "2024-01-15T10:00:00.123Z"),
            (951_782_400_000, "2000-02-29T00:00:00.000Z"),
            (1_709_251_199_999, "2024-02-29T23:59:59.999Z"),
            (4_102_444_800_000, "2100-01-01T00:00:00.000Z"),
        ];
        for (ms, want) in table {
            let at = ManualClock::new(ms).now_utc();
            assert_eq!(format_timestamp(at), want, "{ms}");
            assert_eq!(epoch_ms(at), ms);
        }
    }

    #[test]
    fn a_manual_clock_moves_only_when_advanced_and_clones_share_it() {
        let clock = ManualClock::new(1_000);
        let other = clock.clone();
        let before = clock.now();
        clock.advance(Duration::from_millis(1_500));
        assert_eq!(other.now() - before, Duration::from_millis(1_500));
        assert_eq!(epoch_ms(other.now_utc()), 2_500);
    }
}
