//! The domain model: a case as the Duvo API takes it, where it came from, and a dead letter.
//!
//! Ingest and mapping make these, delivery sends them, the dead-letter tools show and replay
//! them; the buffer only stores them (its record encoding is in [`crate::buffer`]).

use serde::{Deserialize, Serialize};

/// The buffer's id for a dead letter.
pub type DeadLetterId = String;

/// A label as the Duvo API takes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Label {
    pub key: String,
    pub value: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub color_hue: Option<u16>,
}

/// Where a case came from; carried for tracing, metrics and dead-letter replays.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaseMeta {
    pub source: String,
    /// File name of the mapping that made the case, and its content hash.
    pub mapping_file: String,
    pub mapping_version: String,
    pub rule: String,
    pub request_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    /// Milliseconds since the Unix epoch when the webhook was received.
    pub received_at_ms: u64,
}

/// One case ready for the Duvo API, plus its provenance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaseRecord {
    /// The Duvo queue id (a UUID).
    pub queue: String,
    /// Name of the API key (from config) that submits this case; `None` is the default key.
    /// Never the key itself: secrets are not stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_name: Option<String>,
    pub title: String,
    /// Already JSON-encoded, as the API requires `data` to be a string.
    pub data: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<Label>,
    pub meta: CaseMeta,
}

/// Why a dead letter exists and what it takes to replay it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DeadLetterKind {
    /// The mapping could not turn the event into cases; a replay maps the payload again with the
    /// current mapping file.
    MappingFailure {
        /// The verified raw body (UTF-8: it parsed as JSON).
        payload: String,
        /// Request headers with credentials removed.
        headers: Vec<(String, String)>,
        mapping_file: String,
        mapping_version: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rule: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        delivery_id: Option<String>,
    },
    /// The API refused the case; a replay enqueues it again.
    Refused {
        case: CaseRecord,
        status: u16,
        attempts: u64,
    },
    /// A buffered case this build could not decode (foreign data, or a record format from a
    /// newer version). Moved here on claim so it never blocks the rest of its queue; a replay
    /// decodes the bytes again and enqueues them if that now works.
    Undecodable {
        queue: String,
        /// The buffer's id the entry had.
        case_id: String,
        /// The stored bytes, base64 (they need not be UTF-8).
        raw_base64: String,
    },
}

/// One dead letter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterRecord {
    pub source: String,
    /// Human-readable reason: the mapping error, or the API's error code and message.
    pub reason: String,
    pub created_at_ms: u64,
    #[serde(flatten)]
    pub kind: DeadLetterKind,
}

impl DeadLetterRecord {
    /// The dead letter for a case the API refused (on its own, or after `attempts` failures).
    pub fn refused(
        case: CaseRecord,
        status: u16,
        attempts: u64,
        reason: String,
        now_ms: u64,
    ) -> Self {
        DeadLetterRecord {
            source: case.meta.source.clone(),
            reason,
            created_at_ms: now_ms,
            kind: DeadLetterKind::Refused {
                case,
                status,
                attempts,
            },
        }
    }

    /// The dead letter for a buffered entry that could not be decoded.
    pub fn undecodable(queue: &str, case_id: &str, raw: &[u8], reason: &str) -> Self {
        use base64::Engine;
        // The source is worth showing when the bytes still say it.
        let source = serde_json::from_slice::<serde_json::Value>(raw)
            .ok()
            .and_then(|v| v["meta"]["source"].as_str().map(str::to_string))
            .unwrap_or_else(|| "unknown".to_string());
        DeadLetterRecord {
            source,
            reason: format!("undecodable buffer record: {reason}"),
            created_at_ms: crate::clock::now_ms(),
            kind: DeadLetterKind::Undecodable {
                queue: queue.to_string(),
                case_id: case_id.to_string(),
                raw_base64: base64::engine::general_purpose::STANDARD.encode(raw),
            },
        }
    }
}

/// A stored dead letter with its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub id: DeadLetterId,
    pub record: DeadLetterRecord,
}
