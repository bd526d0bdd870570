//! Sending a batch and acting on the API's answer: ack, resend after a 429, back off, bisect,
//! set a case aside, dead-letter, or pause the key or the queue.

use std::collections::VecDeque;

use tokio::time::Instant;

use super::{MAX_SUSPECTS, Probing, Suspect, Worker};
use crate::buffer::{BufferedCase, CaseId};
use crate::case::CaseRecord;
use crate::delivery::limiter::{Grant, PauseKind, key_pause, queue_pause};
use crate::delivery::policy::{
    Action, AfterFailure, ApiAnswer, after_failure, decide, window_spent,
};
use crate::prometheus;
use crate::secret::Secret;

/// How a send ended.
pub(super) enum Sent {
    /// Every case was acked or dead-lettered.
    Done,
    /// A pause stopped it; these cases were not finished.
    Paused(Vec<BufferedCase>),
    /// Shutdown.
    Stopped,
}

/// Cases sent together, with their failure record.
pub(super) struct Group {
    pub(super) cases: Vec<BufferedCase>,
    /// Transient failures in a row.
    failures: u32,
    /// Of those (for a single case), how many came with fresh evidence that the key was
    /// otherwise healthy (see [`crate::delivery::health`]).
    counted: u32,
    /// The last attempt's outcome was unknown (timeout, 5xx), or the cases were taken over from
    /// a stopped consumer: the API may hold them already.
    ambiguous: bool,
    last_answer: String,
    /// Set aside once already: it keeps its own backoff instead of holding the queue.
    aside: bool,
}

impl Group {
    pub(super) fn new(cases: Vec<BufferedCase>) -> Group {
        let ambiguous = cases.iter().any(|c| c.deliveries > 1);
        Group {
            cases,
            failures: 0,
            counted: 0,
            ambiguous,
            last_answer: String::new(),
            aside: false,
        }
    }

    fn halves(mut self) -> (Group, Group) {
        let right = self.cases.split_off(self.cases.len() / 2);
        let half = |cases| Group {
            cases,
            failures: 0,
            counted: 0,
            ambiguous: self.ambiguous,
            last_answer: self.last_answer.clone(),
            aside: false,
        };
        (half(self.cases.clone()), half(right))
    }

    fn ids(&self) -> Vec<CaseId> {
        self.cases.iter().map(|c| c.id.clone()).collect()
    }
}

impl Worker {
    /// Sends `batch` until each case is acked or dead-lettered, or a pause or shutdown stops it.
    /// The first request goes out on `grant`.
    pub(super) async fn send(
        &mut self,
        key: &str,
        secret: &Secret,
        mut work: VecDeque<Group>,
        mut probing: Probing,
        grant: Grant,
    ) -> Sent {
        let inner = self.delivery.inner.clone();
        let config = &inner.config;
        let queue = self.queue.clone();
        let mut granted = Some(grant);
        while !work.is_empty() {
            if self.stopping() {
                return Sent::Stopped;
            }
            let grant = match granted.take() {
                Some(grant) => grant,
                None => {
                    let grant = inner.limiter.acquire(key).await;
                    if self.stopping() {
                        return Sent::Stopped;
                    }
                    grant
                }
            };
            let others = work.len() > 1;
            let group = work.front_mut().expect("not empty");
            if group.ambiguous {
                metrics::counter!(prometheus::AMBIGUOUS_RESENDS, "queue" => queue.clone())
                    .increment(group.cases.len() as u64);
            }
            let records: Vec<&CaseRecord> = group.cases.iter().map(|c| &c.record).collect();
            let answer = match tokio::time::timeout_at(
                grant.deadline(),
                inner.client.create_cases(secret, &queue, &records),
            )
            .await
            {
                Ok(answer) => answer,
                Err(_) => ApiAnswer::Transport(
                    "no answer within the request timeout since its grant".into(),
                ),
            };
            inner.limiter.settle(grant).await;
            if let Some(reset) = window_spent(&answer, inner.limiter.rate()) {
                inner.limiter.pause(key, reset).await;
            }
            let status = match &answer {
                ApiAnswer::Response { status, .. } => status.to_string(),
                ApiAnswer::Transport(_) => "0".to_string(),
            };
            metrics::counter!(prometheus::API_RESPONSES, "status" => status).increment(1);
            match decide(&answer, group.cases.len()) {
                Action::Ack => {
                    let group = work.pop_front().expect("not empty");
                    let ids = group.ids();
                    inner.health.record(key, true, &queue, &ids);
                    self.ack(&ids).await;
                    self.record_delivered(&group.cases);
                    tracing::info!(%queue, key, cases = ids.len(), "batch delivered");
                    if probing.key {
                        inner.limiter.resume(&key_pause(key)).await;
                        tracing::info!(%queue, key, "the API accepts the key again; resuming");
                    }
                    if probing.queue {
                        inner.limiter.resume(&queue_pause(&queue)).await;
                        tracing::info!(%queue, "the API knows the queue again; resuming");
                    }
                    probing = Probing::default();
                }
                Action::ResendAfter(wait) => {
                    metrics::counter!(prometheus::API_RATE_LIMITED).increment(1);
                    let reason = format!("429 from the API; key paused {}s", wait.as_secs());
                    self.record_error(reason.clone());
                    tracing::warn!(%queue, key, wait_ms = wait.as_millis() as u64, "429 from the API; pausing the key");
                    inner.limiter.pause(key, wait).await;
                    inner
                        .limiter
                        .hold(&key_pause(key), PauseKind::RateLimited, wait, &reason)
                        .await;
                    // The batch keeps its claim (renewed) and is sent again once the pause
                    // ends: the next grant waits for it.
                }
                Action::Backoff => {
                    let summary = answer_summary(&answer);
                    group.ambiguous = true;
                    group.failures += 1;
                    group.last_answer = summary.clone();
                    let ids = group.ids();
                    if group.cases.len() == 1
                        && inner.health.verdict(key, &queue, &ids[0]) == Some(true)
                    {
                        group.counted += 1;
                    }
                    inner.health.record(key, false, &queue, &ids);
                    // Each group backs off on its own failures: a bisected half starts
                    // afresh (it is a different request), a case retried in place slows down.
                    let attempt = group.failures - 1;
                    self.record_error(format!("{summary}; retrying"));
                    let mut step = after_failure(
                        group.cases.len(),
                        group.failures,
                        group.counted,
                        config.max_attempts,
                        others || self.suspects.len() < MAX_SUSPECTS,
                    );
                    if step == AfterFailure::Retry && group.aside && !others {
                        step = AfterFailure::SetAside;
                    }
                    match step {
                        AfterFailure::Retry => {}
                        AfterFailure::Split => {
                            let group = work.pop_front().expect("not empty");
                            tracing::info!(%queue, cases = group.cases.len(), failures = group.failures, "a batch keeps failing; bisecting it to find a poison case");
                            let (left, right) = group.halves();
                            work.push_front(right);
                            work.push_front(left);
                        }
                        AfterFailure::SetAside if work.len() > 1 => {
                            let group = work.pop_front().expect("not empty");
                            work.push_back(group);
                        }
                        AfterFailure::SetAside => {
                            // The last of its batch: keep it claimed and retry it on its own
                            // backoff while the rest of the queue goes on (whose answers also
                            // tell a poison case from an outage).
                            let mut group = work.pop_front().expect("not empty");
                            group.aside = true;
                            let delay = config
                                .backoff
                                .delay(group.failures.saturating_sub(1), config.jitter.sample());
                            tracing::warn!(%queue, case = %group.cases[0].id, failures = group.failures, retry_in_ms = delay.as_millis() as u64, "a case keeps failing; retrying it aside while the queue goes on");
                            self.suspects.push_back(Suspect {
                                group,
                                key: key.to_string(),
                                secret: secret.clone(),
                                due: Instant::now() + delay,
                            });
                            continue;
                        }
                        AfterFailure::DeadLetter => {
                            let group = work.pop_front().expect("not empty");
                            let reason = format!(
                                "failed {} times while the API accepted other cases; last answer: {}",
                                group.failures, group.last_answer
                            );
                            metrics::counter!(prometheus::CASES_DEAD_LETTERED, "kind" => prometheus::DEAD_LETTER_REFUSED, "queue" => queue.clone()).increment(1);
                            self.record_error(format!("case dead-lettered: {reason}"));
                            let status = match &answer {
                                ApiAnswer::Response { status, .. } => *status,
                                ApiAnswer::Transport(_) => 0,
                            };
                            self.dead_letter(group.cases, status, reason, group.failures)
                                .await;
                            continue;
                        }
                    }
                    let delay = config.backoff.delay(attempt, config.jitter.sample());
                    tracing::warn!(%queue, key, answer = %summary, retry_in_ms = delay.as_millis() as u64, "delivery failed; retrying");
                    if !self.sleep(delay).await {
                        return Sent::Stopped;
                    }
                }
                Action::Split => {
                    let group = work.pop_front().expect("not empty");
                    tracing::info!(%queue, cases = group.cases.len(), "API refused the batch; splitting it");
                    let (left, right) = group.halves();
                    work.push_front(right);
                    work.push_front(left);
                }
                Action::DeadLetter { status, reason } => {
                    let group = work.pop_front().expect("not empty");
                    metrics::counter!(prometheus::CASES_DEAD_LETTERED, "kind" => prometheus::DEAD_LETTER_REFUSED, "queue" => queue.clone())
                        .increment(group.cases.len() as u64);
                    self.record_error(format!("case dead-lettered: {reason}"));
                    let attempts = group.failures + 1;
                    self.dead_letter(group.cases, status, reason, attempts)
                        .await;
                }
                Action::PauseKey { status, reason } => {
                    tracing::error!(%queue, key, status, %reason, probe_in_s = config.probe_interval.as_secs(), "the API refuses this key; every queue of the key is paused");
                    inner
                        .limiter
                        .hold(
                            &key_pause(key),
                            PauseKind::KeyRefused,
                            config.probe_interval,
                            &reason,
                        )
                        .await;
                    self.record_error(format!("key paused: {reason}"));
                    return Sent::Paused(work.into_iter().flat_map(|g| g.cases).collect());
                }
                Action::PauseQueue { reason } => {
                    tracing::error!(%queue, key, %reason, probe_in_s = config.probe_interval.as_secs(), "the API does not know this queue; it is paused");
                    inner
                        .limiter
                        .hold(
                            &queue_pause(&queue),
                            PauseKind::QueueUnknown,
                            config.probe_interval,
                            &reason,
                        )
                        .await;
                    self.record_error(format!("queue paused: {reason}"));
                    return Sent::Paused(work.into_iter().flat_map(|g| g.cases).collect());
                }
            }
        }
        Sent::Done
    }

    fn record_delivered(&self, cases: &[BufferedCase]) {
        let inner = self.inner();
        let now = (inner.config.now_ms)();
        metrics::counter!(prometheus::CASES_DELIVERED, "queue" => self.queue.clone())
            .increment(cases.len() as u64);
        metrics::histogram!(prometheus::BATCH_SIZE).record(cases.len() as f64);
        let latency = metrics::histogram!(prometheus::END_TO_END);
        for case in cases {
            latency.record(now.saturating_sub(case.record.meta.received_at_ms) as f64 / 1000.0);
        }
        inner
            .activity
            .delivered(&self.queue, cases.len() as u64, now);
    }

    pub(super) fn record_error(&self, error: String) {
        let inner = self.inner();
        inner
            .activity
            .error(&self.queue, error, (inner.config.now_ms)());
    }
}

fn answer_summary(answer: &ApiAnswer) -> String {
    match answer {
        ApiAnswer::Response {
            status,
            error: Some((code, message)),
            ..
        } => format!("HTTP {status} {code}: {message}"),
        ApiAnswer::Response { status, .. } => format!("HTTP {status}"),
        ApiAnswer::Transport(reason) => reason.clone(),
    }
}
