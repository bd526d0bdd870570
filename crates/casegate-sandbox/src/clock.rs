//! Time as the sandbox sees it: a monotonic instant for the rate limiter and outage windows, and
//! wall-clock milliseconds for `created_at` and the stats log. Injected so tests use fixed
//! instants instead of sleeping.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A source of time.
pub trait Clock: Send + Sync + 'static {
    /// Monotonic time, for windows and deadlines.
    fn now(&self) -> Instant;
    /// Milliseconds since the Unix epoch, for timestamps shown to clients.
    fn unix_ms(&self) -> u64;
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now(&self) -> Instant {
        (**self).now()
    }

    fn unix_ms(&self) -> u64 {
        (**self).unix_ms()
    }
}

/// The real clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn unix_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// A clock that moves only when told to. Clones share the same time.
#[derive(Debug, Clone)]
pub struct ManualClock {
    start: Instant,
    start_unix_ms: u64,
    elapsed: Arc<Mutex<Duration>>,
}

impl ManualClock {
    /// A clock standing at `start_unix_ms` milliseconds since the Unix epoch.
    pub fn new(start_unix_ms: u64) -> ManualClock {
        ManualClock {
            start: Instant::now(),
            start_unix_ms,
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

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.start + self.elapsed()
    }

    fn unix_ms(&self) -> u64 {
        let elapsed_ms = u64::try_from(self.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.start_unix_ms.saturating_add(elapsed_ms)
    }
}

/// Formats milliseconds since the Unix epoch as ISO-8601 UTC with millisecond precision,
/// e.g. `2024-01-15T10:00:00.123Z`.
pub fn iso8601_ms(unix_ms: u64) -> String {
    let ms = unix_ms % 1000;
    let secs = unix_ms / 1000;
    let (hour, minute, second) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    let (year, month, day) = civil_from_days(secs / 86_400);
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{ms:03}Z")
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day); Howard Hinnant's
/// `civil_from_days`, restricted to dates on or after the epoch.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
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
            assert_eq!(iso8601_ms(ms), want, "{ms}");
        }
    }

    #[test]
    fn a_manual_clock_moves_only_when_advanced_and_clones_share_it() {
        let clock = ManualClock::new(1_000);
        let other = clock.clone();
        let before = clock.now();
        clock.advance(Duration::from_millis(1_500));
        assert_eq!(other.now() - before, Duration::from_millis(1_500));
        assert_eq!(other.unix_ms(), 2_500);
    }
}
