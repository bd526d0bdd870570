//! The in-process limiter, for the embedded backend: a sliding-window log and a pause table per
//! process.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::{Gate, Grant, LimiterConfig, PauseInfo, PauseKind, Turns, turn_of};

#[derive(Debug, Clone)]
pub(super) struct LocalPause {
    until: Instant,
    kind: PauseKind,
    reason: String,
}

#[derive(Default)]
pub(super) struct KeyState {
    /// `(counted from, grant id)`, oldest first; a grant in flight counts from its timeout.
    grants: VecDeque<(Instant, u64)>,
    paused_until: Option<Instant>,
}

pub struct LocalLimiter {
    pub(super) config: LimiterConfig,
    pub(super) keys: Mutex<HashMap<String, KeyState>>,
    pub(super) turns: Turns,
    pub(super) pauses: Mutex<HashMap<String, LocalPause>>,
}

impl LocalLimiter {
    pub(super) fn turn(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        turn_of(&self.turns, key)
    }

    /// Grants and returns `None`, or returns how long to wait before asking again.
    pub fn try_acquire(&self, grant: &Grant, now: Instant) -> Option<Duration> {
        let mut keys = self.keys.lock().expect("limiter lock");
        let state = keys.entry(grant.key.clone()).or_default();
        if let Some(until) = state.paused_until.filter(|until| *until > now) {
            return Some(until - now);
        }
        let span = self.config.window + self.config.margin;
        while state
            .grants
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) >= span)
        {
            state.grants.pop_front();
        }
        if state.grants.len() < self.config.rate as usize {
            insert_sorted(&mut state.grants, now + self.config.answer_within, grant.id);
            return None;
        }
        // An oldest grant still in flight frees its slot a window after it ends, which is now
        // at the earliest.
        let (oldest, _) = *state.grants.front().expect("rate > 0 grants");
        Some(
            (oldest.min(now) + span)
                .saturating_duration_since(now)
                .max(Duration::from_millis(1)),
        )
    }

    /// Counts `grant` from `now`, its request's end, on.
    pub fn settle(&self, grant: &Grant, now: Instant) {
        let mut keys = self.keys.lock().expect("limiter lock");
        let state = keys.entry(grant.key.clone()).or_default();
        state.grants.retain(|(_, id)| *id != grant.id);
        insert_sorted(&mut state.grants, now, grant.id);
    }

    pub fn hold(&self, name: &str, kind: PauseKind, until: Instant, reason: &str) {
        let mut pauses = self.pauses.lock().expect("limiter lock");
        let until = pauses.get(name).map_or(until, |p| {
            if p.kind == kind {
                p.until.max(until)
            } else {
                until
            }
        });
        pauses.insert(
            name.to_string(),
            LocalPause {
                until,
                kind,
                reason: reason.to_string(),
            },
        );
    }

    pub fn gate(&self, name: &str, now: Instant, probe_interval: Duration) -> Gate {
        let mut pauses = self.pauses.lock().expect("limiter lock");
        let Some(pause) = pauses.get_mut(name) else {
            return Gate::Open;
        };
        if pause.until > now {
            return Gate::Wait(pause.until - now);
        }
        if !pause.kind.probed() {
            pauses.remove(name);
            return Gate::Open;
        }
        pause.until = now + probe_interval;
        Gate::Probe
    }

    pub fn hand_back(&self, name: &str, now: Instant) {
        let mut pauses = self.pauses.lock().expect("limiter lock");
        if let Some(pause) = pauses.get_mut(name)
            && pause.kind.probed()
        {
            pause.until = pause.until.min(now);
        }
    }

    pub fn pauses(&self, now: Instant) -> Vec<PauseInfo> {
        let mut pauses = self.pauses.lock().expect("limiter lock");
        pauses.retain(|_, p| p.kind.probed() || p.until > now);
        let mut out: Vec<PauseInfo> = pauses
            .iter()
            .map(|(name, p)| PauseInfo {
                name: name.clone(),
                kind: p.kind,
                remaining_ms: p.until.saturating_duration_since(now).as_millis() as u64,
                reason: p.reason.clone(),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    pub fn pause(&self, key: &str, until: Instant) {
        let mut keys = self.keys.lock().expect("limiter lock");
        let state = keys.entry(key.to_string()).or_default();
        state.paused_until = Some(state.paused_until.map_or(until, |u| u.max(until)));
    }
}

/// Keeps the log ordered by when each grant counts from.
fn insert_sorted(grants: &mut VecDeque<(Instant, u64)>, at: Instant, id: u64) {
    let position = grants.partition_point(|(t, _)| *t <= at);
    grants.insert(position, (at, id));
}
