//! Is the API healthy apart from this case? The evidence that tells a poison case (the API fails
//! on it alone) from an outage (the API fails on everything): the key's recent answers to
//! requests that did not carry the case.
//!
//! Only answers after the case's first failure count: answers from before then say nothing
//! about the fault that began with it. When no such answer exists yet, the caller keeps the
//! case's previous verdict (a lone case retried back to back sees only its own failures).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use tokio::time::Instant;

use crate::buffer::CaseId;

/// Answers remembered per key: enough to look past a case's own retries.
const REMEMBERED: usize = 32;

#[derive(Debug, Clone)]
struct Answer {
    at: Instant,
    ok: bool,
    queue: String,
    ids: Vec<CaseId>,
}

/// Recent answers per API key, shared by every worker of this process.
#[derive(Default)]
pub struct Health {
    keys: Mutex<HashMap<String, VecDeque<Answer>>>,
}

impl Health {
    /// Records the answer (2xx or transient failure) to a request carrying `ids` of `queue`.
    pub fn record(&self, key: &str, at: Instant, ok: bool, queue: &str, ids: &[CaseId]) {
        let mut keys = self.keys.lock().expect("health lock");
        let answers = keys.entry(key.to_string()).or_default();
        answers.push_back(Answer {
            at,
            ok,
            queue: queue.to_string(),
            ids: ids.to_vec(),
        });
        while answers.len() > REMEMBERED {
            answers.pop_front();
        }
    }

    /// Whether the key's newest answer since `since` to a request without `case` of `queue` was
    /// a success; `None` when there is no such answer.
    pub fn verdict(&self, key: &str, queue: &str, case: &CaseId, since: Instant) -> Option<bool> {
        let keys = self.keys.lock().expect("health lock");
        keys.get(key)?
            .iter()
            .rev()
            .take_while(|a| a.at >= since)
            .find(|a| !(a.queue == queue && a.ids.contains(case)))
            .map(|a| a.ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ids(range: std::ops::Range<u32>) -> Vec<CaseId> {
        range.map(|i| i.to_string()).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_case_failing_while_its_neighbours_succeed_is_told_from_an_outage() {
        let health = Health::default();
        let t0 = Instant::now();
        health.record("k", t0, true, "q", &ids(0..100));
        let first_failure = t0 + Duration::from_secs(1);
        health.record("k", first_failure, false, "q", &ids(100..200));
        let poison = "150".to_string();
        assert_eq!(
            health.verdict("k", "q", &poison, first_failure),
            None,
            "only its own batch failed since: no evidence either way"
        );
        health.record("k", t0 + Duration::from_secs(2), true, "q", &ids(100..150));
        health.record("k", t0 + Duration::from_secs(3), false, "q", &ids(150..151));
        assert_eq!(
            health.verdict("k", "q", &poison, first_failure),
            Some(true),
            "its neighbours went through after it failed"
        );
        assert_eq!(
            health.verdict("k", "other", &poison, first_failure),
            Some(false),
            "ids are per queue"
        );
        health.record("k", t0 + Duration::from_secs(4), false, "q2", &ids(0..10));
        assert_eq!(
            health.verdict("k", "q", &poison, first_failure),
            Some(false),
            "another queue of the key failing too is an outage"
        );
        assert_eq!(
            health.verdict("k", "q", &poison, t0 + Duration::from_secs(5)),
            None,
            "answers before the first failure do not count"
        );
    }
}
