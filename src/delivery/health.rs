//! Is the API healthy apart from this case? The evidence that tells a poison case (the API fails
//! on it alone) from an outage (the API fails on everything): the key's answers to requests that
//! did not carry the case.
//!
//! Only fresh evidence counts: answers that came after the case's own previous attempt. A failed
//! attempt counts toward `delivery.max_attempts` only when the key's newest such answer is a
//! success; with no fresh answer (a lone case retried back to back, or an outage that stopped
//! everything else) it does not count. So a case that failed while its neighbours succeeded is
//! still never dead-lettered by an outage that begins later, however long it lasts.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use crate::buffer::CaseId;

/// Answers remembered per key: enough to look past a case's own retries.
const REMEMBERED: usize = 32;

#[derive(Debug, Clone)]
struct Answer {
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
    pub fn record(&self, key: &str, ok: bool, queue: &str, ids: &[CaseId]) {
        let mut keys = self.keys.lock().expect("health lock");
        let answers = keys.entry(key.to_string()).or_default();
        answers.push_back(Answer {
            ok,
            queue: queue.to_string(),
            ids: ids.to_vec(),
        });
        while answers.len() > REMEMBERED {
            answers.pop_front();
        }
    }

    /// Whether the key's newest answer to a request without `case` of `queue`, among those that
    /// came after the case's own latest recorded attempt, was a success; `None` when there is no
    /// such answer (no fresh evidence). Call it before recording the attempt being judged.
    pub fn verdict(&self, key: &str, queue: &str, case: &CaseId) -> Option<bool> {
        let keys = self.keys.lock().expect("health lock");
        keys.get(key)?
            .iter()
            .rev()
            .take_while(|a| !(a.queue == queue && a.ids.contains(case)))
            .next()
            .map(|a| a.ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(range: std::ops::Range<u32>) -> Vec<CaseId> {
        range.map(|i| i.to_string()).collect()
    }

    #[test]
    fn a_case_failing_while_its_neighbours_succeed_is_told_from_an_outage() {
        let health = Health::default();
        let poison = "150".to_string();
        health.record("k", true, "q", &ids(0..100));
        health.record("k", false, "q", &ids(100..200));
        assert_eq!(
            health.verdict("k", "q", &poison),
            None,
            "only its own batch answered since its last attempt: no evidence either way"
        );
        health.record("k", true, "q", &ids(100..150));
        assert_eq!(
            health.verdict("k", "q", &poison),
            Some(true),
            "its neighbours went through after it failed"
        );
        health.record("k", false, "q", &ids(150..151));
        assert_eq!(
            health.verdict("k", "q", &poison),
            None,
            "evidence counts once: the next attempt needs news from after this one"
        );
        assert_eq!(
            health.verdict("k", "other", &poison),
            Some(false),
            "ids are per queue"
        );
        health.record("k", true, "q", &ids(151..160));
        health.record("k", false, "q2", &ids(0..10));
        assert_eq!(
            health.verdict("k", "q", &poison),
            Some(false),
            "another queue of the key failing last is an outage"
        );
    }

    #[test]
    fn an_outage_that_begins_after_the_neighbours_succeeded_gives_no_evidence() {
        let health = Health::default();
        let poison = "7".to_string();
        health.record("k", false, "q", &ids(0..10));
        health.record("k", true, "q", &ids(0..5));
        health.record("k", true, "q", &ids(8..10));
        assert_eq!(health.verdict("k", "q", &poison), Some(true));
        health.record("k", false, "q", &ids(7..8));
        // The outage: nothing else is sent on the key, the case is retried alone.
        for _ in 0..100 {
            assert_eq!(health.verdict("k", "q", &poison), None);
            health.record("k", false, "q", &ids(7..8));
        }
    }
}
