//! The dead-letter store's operations: list, show, replay, purge. Shared by the CLI
//! (`casegate dlq`) and the admin API, so both give the same answers.
//!
//! A replayed mapping failure is mapped again with the *current* mapping file, so fixing the file
//! and replaying recovers the events; a replayed API refusal is enqueued again as it was. Either
//! way the new cases and the removal of the dead letter are one atomic write.

use serde::Serialize;
use serde_json::Value;

use crate::buffer::{Buffer, BufferError, CaseId};
use crate::case::{CaseRecord, DeadLetter, DeadLetterKind};
use crate::clock::Clock;
use crate::inbound::{Headers, InboundRequest};
use crate::mapping::{CompiledMapping, DeliveryIdFrom, MappingSet, Origin};
use crate::verify::Verified;

/// How a replay maps a stored event again: the clock stamping its cases, and the bound on one
/// event's cases that ingest applies (`ingress.max_event_cases_bytes`), so a replay accepts what
/// a fresh delivery of the event would (an event dead-lettered for its size replays once the
/// bound was raised).
#[derive(Clone)]
pub struct Remap {
    pub clock: Clock,
    pub max_event_bytes: usize,
}

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
                DeadLetterKind::Undecodable { .. } => "undecodable",
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

/// How many dead letters one page reads. Bounds what list, replay and purge hold in memory: a
/// letter can be as large as a webhook body.
pub const PAGE: usize = 100;

/// Dead letters oldest first, optionally of one source, at most `limit`.
pub async fn list(
    buffer: &Buffer,
    source: Option<&str>,
    limit: usize,
) -> Result<Vec<DeadLetter>, DlqError> {
    let mut found = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = buffer.list_dead_letters(after.as_deref(), PAGE).await?;
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
/// `Err` holds why it would still fail. `clock` stamps the new cases' receipt time.
pub fn plan(
    letter: &DeadLetter,
    mapping: Option<&CompiledMapping>,
    remap: &Remap,
) -> Result<Vec<CaseRecord>, String> {
    match &letter.record.kind {
        DeadLetterKind::Refused { case, .. } => Ok(vec![case.clone()]),
        DeadLetterKind::Undecodable { raw_base64, .. } => {
            // Replayable once this build reads the bytes (after an upgrade or a manual fix).
            use base64::Engine;
            base64::engine::general_purpose::STANDARD
                .decode(raw_base64)
                .map_err(|e| e.to_string())
                .and_then(|raw| crate::buffer::decode_record(&raw))
                .map(|case| vec![case])
                .map_err(|reason| format!("still undecodable: {reason}"))
        }
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
            // The stored payload is the body as received: JSON, or a form with a `payload`
            // field, as its content type said.
            let content_type = headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
                .map(|(_, v)| v.as_str());
            let format =
                crate::ingest::body_format(content_type).unwrap_or(crate::ingest::BodyFormat::Json);
            let headers: Headers = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.clone()))
                .collect();
            // Verified when it was received; its credentials were stripped before storage.
            let request = Verified::previously_verified(InboundRequest::local(
                headers,
                payload.clone().into_bytes(),
            ));
            let origin = Origin {
                request_id: request_id.as_deref().unwrap_or("replay"),
                received_at_ms: crate::clock::unix_ms((remap.clock)()),
                delivery_id: DeliveryIdFrom::Stored(delivery_id.as_deref()),
            };
            let mapped = mapping
                .map_event(&request, format, &origin, remap.max_event_bytes)
                .map_err(|e| format!("stored payload cannot be read: {e}"))?;
            mapped.cases.map_err(|failure| failure.to_string())
        }
    }
}

/// What replaying `letter` would do under `mapping`, writing nothing.
pub fn preview(
    letter: &DeadLetter,
    mapping: Option<&CompiledMapping>,
    remap: &Remap,
) -> ReplayPreview {
    let id = letter.id.clone();
    match plan(letter, mapping, remap) {
        Err(reason) => ReplayPreview::StillFailing { id, reason },
        Ok(cases) if cases.is_empty() => ReplayPreview::WouldFilter { id },
        Ok(cases) => ReplayPreview::WouldEnqueue {
            id,
            cases: cases.iter().map(case_preview).collect(),
        },
    }
}

/// The most dead letters one dry-run page may cover: a preview holds the cases a letter would
/// become, which can be as large as its body, so a dry run over the whole store is paged.
pub const MAX_PREVIEW_PAGE: usize = 1_000;

/// One page of a dry run over the dead-letter store, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PreviewPage {
    /// What each dead letter of the page (of the requested source) would become.
    pub dry_run: Vec<ReplayPreview>,
    /// Where the next page starts (`after`), or `None` when this was the last one.
    pub next: Option<String>,
}

/// What replaying the dead letters after `after` (of one source, if given) would do, writing
/// nothing: at most `limit` letters (capped at [`MAX_PREVIEW_PAGE`]), one in memory at a time
/// while the page's previews are built.
pub async fn preview_page(
    buffer: &Buffer,
    mappings: &MappingSet,
    remap: &Remap,
    source: Option<&str>,
    after: Option<&str>,
    limit: usize,
) -> Result<PreviewPage, DlqError> {
    let limit = limit.clamp(1, MAX_PREVIEW_PAGE);
    let ids = buffer.list_dead_letter_ids(after, limit).await?;
    let next = (ids.len() == limit).then(|| ids.last().cloned()).flatten();
    let mut dry_run = Vec::new();
    for id in ids {
        let Some(letter) = buffer.get_dead_letter(&id).await? else {
            continue;
        };
        if source.is_some_and(|s| letter.record.source != s) {
            continue;
        }
        let mapping = mappings.get(&letter.record.source);
        dry_run.push(preview(&letter, mapping.map(|m| m.as_ref()), remap));
    }
    Ok(PreviewPage { dry_run, next })
}

/// Replays one dead letter.
pub async fn replay(
    buffer: &Buffer,
    mappings: &MappingSet,
    remap: &Remap,
    id: &str,
) -> Result<ReplayOutcome, DlqError> {
    let letter = show(buffer, id).await?;
    let id = letter.id.clone();
    let mapping = mappings.get(&letter.record.source);
    let cases = match plan(&letter, mapping.map(|m| m.as_ref()), remap) {
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

/// Replays every dead letter (of one source, if given), reporting progress after each. Pages
/// through the store by id, one letter in memory at a time. A replay never writes a new letter
/// (one still failing keeps its id), so each letter is visited once.
pub async fn replay_all(
    buffer: &Buffer,
    mappings: &MappingSet,
    remap: &Remap,
    source: Option<&str>,
    mut progress: impl FnMut(usize, usize, &ReplayOutcome),
) -> Result<Vec<ReplayOutcome>, DlqError> {
    let total = usize::try_from(buffer.count_dead_letters().await?).unwrap_or(usize::MAX);
    let mut outcomes = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let ids = buffer.list_dead_letter_ids(after.as_deref(), PAGE).await?;
        let Some(last) = ids.last() else { break };
        after = Some(last.clone());
        for id in ids {
            let letter = match buffer.get_dead_letter(&id).await? {
                Some(letter) => letter,
                None => continue,
            };
            if source.is_some_and(|s| letter.record.source != s) {
                continue;
            }
            drop(letter);
            let outcome = replay(buffer, mappings, remap, &id).await?;
            progress(outcomes.len() + 1, total, &outcome);
            outcomes.push(outcome);
        }
    }
    Ok(outcomes)
}

/// Deletes the given dead letters, or every one (of one source) when `ids` is empty, a page at
/// a time: without a source only ids are read, never the records.
pub async fn purge(buffer: &Buffer, ids: &[String], source: Option<&str>) -> Result<u64, DlqError> {
    let mut removed = 0;
    if !ids.is_empty() {
        for chunk in ids.chunks(PAGE) {
            removed += buffer.remove_dead_letters(chunk).await?;
        }
        return Ok(removed);
    }
    let mut after: Option<String> = None;
    loop {
        let page: Vec<String> = match source {
            None => buffer.list_dead_letter_ids(after.as_deref(), PAGE).await?,
            Some(source) => {
                let letters = buffer.list_dead_letters(after.as_deref(), PAGE).await?;
                if let Some(last) = letters.last() {
                    after = Some(last.id.clone());
                } else {
                    break;
                }
                let ids: Vec<String> = letters
                    .into_iter()
                    .filter(|d| d.record.source == source)
                    .map(|d| d.id)
                    .collect();
                removed += buffer.remove_dead_letters(&ids).await?;
                continue;
            }
        };
        let Some(last) = page.last() else { break };
        after = Some(last.clone());
        removed += buffer.remove_dead_letters(&page).await?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use super::*;
    use crate::case::{DeadLetterKind, DeadLetterRecord};
    use crate::env::Env;

    const QUEUE: &str = "4f9c3c1e-5b0a-4c8e-9d51-2a7f0e6b1c3d";

    fn mapping() -> CompiledMapping {
        CompiledMapping::compile(
            Path::new("mappings/test-source.yaml"),
            "verify: {scheme: none}\nrules:\n  - name: all\n    queue: ${QUEUE}\n    title: '{{ $.name }}'\n    data: {name: $.name}\n",
            &Env::from_pairs([("QUEUE", QUEUE)]),
        )
        .unwrap()
    }

    fn remap(clock: Clock, max_event_bytes: usize) -> Remap {
        Remap {
            clock,
            max_event_bytes,
        }
    }

    #[test]
    fn a_replay_applies_the_configured_bound_on_an_event_s_cases() {
        let name = "n".repeat(4000);
        let letter = letter(&format!(r#"{{"name":"{name}"}}"#));
        let clock = crate::clock::system_clock();
        let refused = plan(&letter, Some(&mapping()), &remap(clock.clone(), 2000));
        assert!(
            refused
                .as_ref()
                .is_err_and(|reason| reason.contains("2000")),
            "{refused:?}"
        );
        let cases = plan(&letter, Some(&mapping()), &remap(clock, 64 * 1024)).unwrap();
        assert_eq!(cases[0].data, format!(r#"{{"name":"{name}"}}"#));
    }

    #[test]
    fn a_replayed_mapping_failure_is_stamped_by_the_injected_clock() {
        let letter = letter(r#"{"name":"n-1"}"#);
        let at = UNIX_EPOCH + Duration::from_millis(1_234_567);
        let clock: Clock = Arc::new(move || at);
        let cases = plan(&letter, Some(&mapping()), &remap(clock, 1024 * 1024)).unwrap();
        assert_eq!(cases.len(), 1);
        assert_eq!(cases[0].title, "n-1");
        assert_eq!(cases[0].meta.received_at_ms, 1_234_567);
        assert_eq!(cases[0].meta.request_id, "req-7");
        assert_eq!(cases[0].meta.delivery_id.as_deref(), Some("d-7"));
        // Not the wall clock.
        assert!(crate::clock::unix_ms(SystemTime::now()) > 1_234_567);
    }

    fn letter(payload: &str) -> DeadLetter {
        DeadLetter {
            id: "1".into(),
            record: DeadLetterRecord {
                source: "test-source".into(),
                reason: "rule `all`: title: missing".into(),
                created_at_ms: 1,
                kind: DeadLetterKind::MappingFailure {
                    payload: payload.into(),
                    headers: vec![("content-type".into(), "application/json".into())],
                    mapping_file: "test-source.yaml".into(),
                    mapping_version: "v".into(),
                    rule: Some("all".into()),
                    request_id: Some("req-7".into()),
                    delivery_id: Some("d-7".into()),
                },
            },
        }
    }
}
