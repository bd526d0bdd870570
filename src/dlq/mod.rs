//! The dead-letter store's operations: list, show, replay, purge. Shared by the CLI
//! (`casegate dlq`) and the admin API, so both give the same answers.
//!
//! A replayed mapping failure is mapped again with the *current* mapping file, so fixing the file
//! and replaying recovers the events; a replayed API refusal is enqueued again as it was. Either
//! way the new cases and the removal of the dead letter are one atomic write.

use serde::Serialize;
use serde_json::Value;

use crate::buffer::{Buffer, BufferError, CaseId, CaseRecord, DeadLetter, DeadLetterKind};
use crate::clock::now_ms;
use crate::inbound::Headers;
use crate::mapping::{CompiledMapping, EventInput, MappingSet};

/// What a replay did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum ReplayOutcome {
    /// The dead letter became these cases and is gone.
    Enqueued { id: String, case_ids: Vec<CaseId> },
    /// The current mapping filters the event out: the dead letter is removed, no case made.
    Filtered { id: String },
    /// Still failing; the dead letter stays, with this reason.
    StillFailing { id: String, reason: String },
}

/// What a replay would do, computed without writing anything (`dlq replay --dry-run`,
/// `try --dead-letter`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum ReplayPreview {
    /// The dead letter would become these cases.
    WouldEnqueue { id: String, cases: Vec<Value> },
    /// The current mapping filters the event out: the dead letter would be removed.
    WouldFilter { id: String },
    /// The replay would still fail, with this reason.
    StillFailing { id: String, reason: String },
}

/// A case as `try` and dry runs show it: rule, queue, title, `data` as JSON, labels.
pub fn case_preview(case: &CaseRecord) -> Value {
    serde_json::json!({
        "rule": case.meta.rule,
        "queue": case.queue,
        "title": case.title,
        "data": serde_json::from_str::<Value>(&case.data).unwrap_or(Value::Null),
        "labels": case.labels,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error(transparent)]
    Buffer(#[from] BufferError),
    #[error("no such dead letter: {0}")]
    NotFound(String),
}

/// One dead letter as the CLI and the admin API show it.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetterView {
    pub id: String,
    pub source: String,
    pub kind: &'static str,
    pub reason: String,
    pub created_at_ms: u64,
    /// The whole record (payload or case), for `show`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<Value>,
}

impl DeadLetterView {
    pub fn summary(letter: &DeadLetter) -> Self {
        DeadLetterView {
            id: letter.id.clone(),
            source: letter.record.source.clone(),
            kind: match letter.record.kind {
                DeadLetterKind::MappingFailure { .. } => "mapping_failure",
                DeadLetterKind::Refused { .. } => "refused",
            },
            reason: letter.record.reason.clone(),
            created_at_ms: letter.record.created_at_ms,
            detail: None,
        }
    }

    pub fn full(letter: &DeadLetter) -> Self {
        DeadLetterView {
            detail: serde_json::to_value(&letter.record.kind).ok(),
            ..Self::summary(letter)
        }
    }
}

/// Dead letters oldest first, optionally of one source, at most `limit`.
pub async fn list(
    buffer: &Buffer,
    source: Option<&str>,
    limit: usize,
) -> Result<Vec<DeadLetter>, DlqError> {
    let mut found = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = buffer.list_dead_letters(after.as_deref(), 500).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.id.clone());
        found.extend(
            page.into_iter()
                .filter(|d| source.is_none_or(|s| d.record.source == s)),
        );
        if found.len() >= limit {
            found.truncate(limit);
            break;
        }
    }
    Ok(found)
}

pub async fn show(buffer: &Buffer, id: &str) -> Result<DeadLetter, DlqError> {
    buffer
        .get_dead_letter(id)
        .await?
        .ok_or_else(|| DlqError::NotFound(id.to_string()))
}

/// The cases a dead letter would become now: a refused case as it was, a mapping failure
/// mapped again with `mapping` (the current one of its source, or another file for `try`).
/// `Err` holds why it would still fail.
pub fn plan(
    letter: &DeadLetter,
    mapping: Option<&CompiledMapping>,
) -> Result<Vec<CaseRecord>, String> {
    match &letter.record.kind {
        DeadLetterKind::Refused { case, .. } => Ok(vec![case.clone()]),
        DeadLetterKind::MappingFailure {
            payload,
            headers,
            request_id,
            delivery_id,
            ..
        } => {
            let Some(mapping) = mapping else {
                return Err(format!(
                    "no mapping for source `{}` any more",
                    letter.record.source
                ));
            };
            let payload: Value = serde_json::from_str(payload)
                .map_err(|e| format!("stored payload is not JSON: {e}"))?;
            let headers: Headers = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.clone()))
                .collect();
            let input = EventInput {
                payload: &payload,
                headers: &headers,
                request_id: request_id.as_deref().unwrap_or("replay"),
                delivery_id: delivery_id.as_deref(),
                received_at_ms: now_ms(),
            };
            mapping.apply(&input).map_err(|failure| failure.to_string())
        }
    }
}

/// What replaying `letter` would do under `mapping`, writing nothing.
pub fn preview(letter: &DeadLetter, mapping: Option<&CompiledMapping>) -> ReplayPreview {
    let id = letter.id.clone();
    match plan(letter, mapping) {
        Err(reason) => ReplayPreview::StillFailing { id, reason },
        Ok(cases) if cases.is_empty() => ReplayPreview::WouldFilter { id },
        Ok(cases) => ReplayPreview::WouldEnqueue {
            id,
            cases: cases.iter().map(case_preview).collect(),
        },
    }
}

/// What replaying every dead letter (of one source, if given) would do, writing nothing.
pub async fn preview_all(
    buffer: &Buffer,
    mappings: &MappingSet,
    source: Option<&str>,
) -> Result<Vec<ReplayPreview>, DlqError> {
    let letters = list(buffer, source, usize::MAX).await?;
    Ok(letters
        .iter()
        .map(|letter| {
            let mapping = mappings.get(&letter.record.source);
            preview(letter, mapping.map(|m| m.as_ref()))
        })
        .collect())
}

/// Replays one dead letter.
pub async fn replay(
    buffer: &Buffer,
    mappings: &MappingSet,
    id: &str,
) -> Result<ReplayOutcome, DlqError> {
    let letter = show(buffer, id).await?;
    let id = letter.id.clone();
    let mapping = mappings.get(&letter.record.source);
    let cases = match plan(&letter, mapping.map(|m| m.as_ref())) {
        Ok(cases) => cases,
        Err(reason) => return Ok(ReplayOutcome::StillFailing { id, reason }),
    };
    if cases.is_empty() {
        buffer
            .remove_dead_letters(std::slice::from_ref(&id))
            .await?;
        return Ok(ReplayOutcome::Filtered { id });
    }
    let case_ids = buffer.replay_dead_letter(&id, cases).await?;
    Ok(ReplayOutcome::Enqueued { id, case_ids })
}

/// Replays every dead letter (of one source, if given), reporting progress after each.
pub async fn replay_all(
    buffer: &Buffer,
    mappings: &MappingSet,
    source: Option<&str>,
    mut progress: impl FnMut(usize, usize, &ReplayOutcome),
) -> Result<Vec<ReplayOutcome>, DlqError> {
    let letters = list(buffer, source, usize::MAX).await?;
    let total = letters.len();
    let mut outcomes = Vec::with_capacity(total);
    for (done, letter) in letters.iter().enumerate() {
        let outcome = replay(buffer, mappings, &letter.id).await?;
        progress(done + 1, total, &outcome);
        outcomes.push(outcome);
    }
    Ok(outcomes)
}

/// Deletes the given dead letters, or every one (of one source) when `ids` is empty.
pub async fn purge(buffer: &Buffer, ids: &[String], source: Option<&str>) -> Result<u64, DlqError> {
    let ids: Vec<String> = if ids.is_empty() {
        list(buffer, source, usize::MAX)
            .await?
            .into_iter()
            .map(|d| d.id)
            .collect()
    } else {
        ids.to_vec()
    };
    let mut removed = 0;
    for chunk in ids.chunks(500) {
        removed += buffer.remove_dead_letters(chunk).await?;
    }
    Ok(removed)
}
