//! Status bookkeeping: what each queue delivered lately and its last error, for `casegate
//! status`. Pauses are not kept here: they live in the shared pause table of the limiter, so the
//! status, the paused gauge and the probes read one source.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// Per queue: deliveries in the last minute, in total, and the last error.
#[derive(Default)]
pub struct Activity {
    queues: Mutex<HashMap<String, Book>>,
}

#[derive(Default)]
struct Book {
    delivered_total: u64,
    /// (delivered at ms, cases) within the last minute.
    recent: VecDeque<(u64, u64)>,
    last_error: Option<(u64, String)>,
    /// When this queue last delivered or failed (ms).
    last_at: u64,
}

/// What `casegate status` shows about a queue's delivery.
#[derive(Debug, Clone, serde::Serialize)]
pub struct QueueActivity {
    pub queue: String,
    pub delivered_total: u64,
    pub delivered_last_minute: u64,
    pub last_error: Option<String>,
    pub last_error_at_ms: Option<u64>,
    pub paused_for_ms: Option<u64>,
}

const MINUTE_MS: u64 = 60_000;

impl Activity {
    pub fn delivered(&self, queue: &str, cases: u64, now_ms: u64) {
        let mut queues = self.queues.lock().expect("activity lock");
        let book = queues.entry(queue.to_string()).or_default();
        book.delivered_total += cases;
        book.last_at = book.last_at.max(now_ms);
        book.recent.push_back((now_ms, cases));
        while book
            .recent
            .front()
            .is_some_and(|(at, _)| now_ms.saturating_sub(*at) > MINUTE_MS)
        {
            book.recent.pop_front();
        }
    }

    pub fn error(&self, queue: &str, error: String, now_ms: u64) {
        let mut queues = self.queues.lock().expect("activity lock");
        let book = queues.entry(queue.to_string()).or_default();
        book.last_error = Some((now_ms, error));
        book.last_at = book.last_at.max(now_ms);
    }

    /// Forgets queues with no delivery or error for `idle_ms`, so this bookkeeping follows the
    /// queues with recent work, not every queue ever seen.
    pub fn forget_idle(&self, now_ms: u64, idle_ms: u64) {
        let mut queues = self.queues.lock().expect("activity lock");
        queues.retain(|_, book| now_ms.saturating_sub(book.last_at) < idle_ms);
    }

    /// Every queue seen, sorted; `paused_for_ms` is left for the caller to fill from the pauses.
    pub fn snapshot(&self, now_ms: u64) -> Vec<QueueActivity> {
        let queues = self.queues.lock().expect("activity lock");
        let mut out: Vec<QueueActivity> = queues
            .iter()
            .map(|(queue, book)| QueueActivity {
                queue: queue.clone(),
                delivered_total: book.delivered_total,
                delivered_last_minute: book
                    .recent
                    .iter()
                    .filter(|(at, _)| now_ms.saturating_sub(*at) <= MINUTE_MS)
                    .map(|(_, n)| n)
                    .sum(),
                last_error: book.last_error.as_ref().map(|(_, e)| e.clone()),
                last_error_at_ms: book.last_error.as_ref().map(|(at, _)| *at),
                paused_for_ms: None,
            })
            .collect();
        out.sort_by(|a, b| a.queue.cmp(&b.queue));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_minute_slides_and_the_total_stays() {
        let activity = Activity::default();
        activity.delivered("q", 100, 1_000);
        activity.delivered("q", 5, 50_000);
        activity.error("q", "HTTP 503; retrying".into(), 55_000);
        let now = activity.snapshot(60_000);
        assert_eq!(now[0].delivered_last_minute, 105);
        let later = activity.snapshot(61_001 + 1_000);
        assert_eq!(later[0].delivered_last_minute, 5);
        assert_eq!(later[0].delivered_total, 105);
        assert_eq!(later[0].last_error.as_deref(), Some("HTTP 503; retrying"));
        activity.delivered("other", 1, 70_000);
        activity.forget_idle(120_000, 60_000);
        let kept: Vec<String> = activity
            .snapshot(120_000)
            .into_iter()
            .map(|a| a.queue)
            .collect();
        assert_eq!(kept, ["other"], "a queue idle past the period is forgotten");
    }
}
