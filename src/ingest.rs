//! The ingest step: from a received request to durably buffered cases.
//!
//! Order of checks, cheapest and least revealing first: unknown source (404), content type
//! (415), body size (413, enforced by the HTTP layer while streaming), authenticity (401, over
//! the raw bytes), then parsing (400). Only then is the payload mapped and written; the answer
//! is 2xx only after [`Buffer::enqueue`] returned, and the dedupe mark is written in the same
//! atomic write as the cases, so a failed write leaves the provider's retry free to succeed.
//!
//! Before anything else, a source whose secret is a public `${VAR:-default}` is refused (503)
//! unless development mode allows it. Where the scheme signs no timestamp, the dedupe mark also
//! covers a fingerprint of the body, so a captured request replayed with a fresh delivery id is
//! a duplicate: the SHA-256 of the verified MAC where the scheme's MAC covers exactly the body
//! (Shopify, GitHub, WooCommerce: 32 bytes hashed instead of the whole body a second time), else
//! the body's SHA-256. Large bodies are verified on the blocking pool so their HMAC does not
//! stall the HTTP worker's other connections.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use crate::buffer::{Buffer, BufferError, CaseId, DedupeMark, Enqueue, EnqueueOutcome};
use crate::case::DeadLetterId;
use crate::inbound::InboundRequest;
use crate::mapping::prune::Keep;
use crate::mapping::{CompiledMapping, DeliveryIdFrom, MappedEvent, MappingSet, Origin};
use crate::verify::{Verified, VerifyError};

pub use crate::clock::{Clock, system_clock};

/// How the body carries its JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    /// `application/json` or any `application/*+json`.
    Json,
    /// `application/x-www-form-urlencoded` with the JSON in a `payload` field (Slack, some
    /// legacy senders).
    FormPayload,
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("no mapping for source `{0}`")]
    UnknownSource(String),
    #[error(
        "content type {0:?} is not supported: send application/json (or a form with a JSON `payload` field)"
    )]
    UnsupportedMediaType(String),
    #[error("body is larger than the {limit} byte limit")]
    PayloadTooLarge { limit: usize },
    #[error(
        "the gateway is receiving too many large bodies at once (over {limit} bytes in flight); retry later"
    )]
    BodiesInFlight { limit: usize },
    #[error("the body was not received within {0:?}")]
    BodyTimeout(Duration),
    #[error("the body could not be read: {0}")]
    BodyRead(String),
    #[error("the request is not authentic: {0}")]
    Unauthorized(#[from] VerifyError),
    /// The source's secret is a development default: serving it would accept webhooks forged
    /// with the public default. A real provider retries until the operator sets the variable.
    #[error(
        "source `{source_name}` is not configured: set {} (its secret is a development default, which is refused outside development mode)",
        .variables.join(", ")
    )]
    SourceNotConfigured {
        source_name: String,
        variables: Vec<String>,
    },
    #[error("body is not valid UTF-8 (byte {0})")]
    InvalidUtf8(usize),
    #[error("body is not valid JSON: {message} at line {line} column {column}")]
    MalformedJson {
        line: usize,
        column: usize,
        message: String,
    },
    #[error("body nests deeper than the JSON parser allows (at line {line} column {column})")]
    TooDeep { line: usize, column: usize },
    #[error("form body has no `payload` field holding the JSON event")]
    MissingFormPayload,
    #[error(transparent)]
    Buffer(#[from] BufferError),
}

/// What happened to an accepted webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IngestOutcome {
    /// Cases are durably buffered.
    Accepted { case_ids: Vec<CaseId> },
    /// The mapping could not turn the event into cases: its dead letter is durably stored
    /// (acknowledged all the same, so the provider does not retry what would fail again).
    MappingFailed { dead_letter_ids: Vec<DeadLetterId> },
    /// No rule matched: acknowledged, counted, no case.
    Filtered,
    /// The delivery id was seen within its TTL: nothing written.
    Duplicate,
    /// A sender's unsigned set-up ping (WooCommerce on webhook creation): answered 200 so the
    /// sender saves the webhook, nothing written.
    Ping,
}

/// Turns verified requests into buffered cases with the current mapping set.
#[derive(Clone)]
pub struct Ingestor {
    mappings: Arc<ArcSwap<MappingSet>>,
    buffer: Buffer,
    default_dedupe_ttl: Duration,
    /// `ingress.max_event_cases_bytes`: the total size of one event's cases.
    max_event_bytes: usize,
    clock: Clock,
    /// Poked after cases were written, so local delivery starts without waiting for its poll.
    wake: Option<Arc<Notify>>,
    /// Serve sources running on `${VAR:-default}` secrets (development mode only).
    allow_default_secrets: bool,
    /// Bodies larger than this are verified on the blocking pool.
    offload_verify_bytes: usize,
}

/// Longest delivery id stored as it is in a dedupe mark; longer ones are stored as a digest.
pub const MAX_STORED_DELIVERY_ID: usize = 128;

/// Default for [`Ingestor::offload_verify_above`] (the shipped `ingress.offload_verify_bytes`).
pub const DEFAULT_OFFLOAD_VERIFY_BYTES: usize = 64 * 1024;

impl Ingestor {
    /// This ingestor for one HTTP worker (see [`Buffer::for_worker`]).
    pub fn for_worker(&self) -> Ingestor {
        Ingestor {
            buffer: self.buffer.for_worker(),
            ..self.clone()
        }
    }

    pub fn new(
        mappings: Arc<ArcSwap<MappingSet>>,
        buffer: Buffer,
        default_dedupe_ttl: Duration,
        clock: Clock,
    ) -> Self {
        Ingestor {
            mappings,
            buffer,
            default_dedupe_ttl,
            max_event_bytes: crate::mapping::DEFAULT_MAX_EVENT_CASES_BYTES,
            clock,
            wake: None,
            allow_default_secrets: false,
            offload_verify_bytes: DEFAULT_OFFLOAD_VERIFY_BYTES,
        }
    }

    /// The ingestor `[ingress]` asks for.
    pub fn from_config(
        mappings: Arc<ArcSwap<MappingSet>>,
        buffer: Buffer,
        ingress: &crate::config::IngressConfig,
        clock: Clock,
    ) -> Self {
        Ingestor::new(mappings, buffer, ingress.dedupe_ttl, clock)
            .with_max_event_bytes(ingress.max_event_cases_bytes)
            .allow_default_secrets(ingress.allow_default_secrets)
            .offload_verify_above(ingress.offload_verify_bytes)
    }

    /// Bounds the total size of one event's cases (the default is
    /// [`crate::mapping::DEFAULT_MAX_EVENT_CASES_BYTES`]).
    pub fn with_max_event_bytes(mut self, max_event_bytes: usize) -> Self {
        self.max_event_bytes = max_event_bytes;
        self
    }

    /// Serves sources whose secret is a `${VAR:-default}` (development mode).
    pub fn allow_default_secrets(mut self, allow: bool) -> Self {
        self.allow_default_secrets = allow;
        self
    }

    /// Whether sources on development default secrets are served.
    pub fn default_secrets_allowed(&self) -> bool {
        self.allow_default_secrets
    }

    /// Verifies bodies larger than `bytes` on the blocking pool.
    pub fn offload_verify_above(mut self, bytes: usize) -> Self {
        self.offload_verify_bytes = bytes;
        self
    }

    /// Wakes `wake` after every write that stored cases.
    pub fn with_waker(mut self, wake: Arc<Notify>) -> Self {
        self.wake = Some(wake);
        self
    }

    /// The mapping serving `source` right now (a reload never changes it under a request).
    pub fn mapping(&self, source: &str) -> Result<Arc<CompiledMapping>, IngestError> {
        self.mappings
            .load()
            .get(source)
            .cloned()
            .ok_or_else(|| IngestError::UnknownSource(source.to_string()))
    }

    pub fn buffer(&self) -> &Buffer {
        &self.buffer
    }

    /// How dead letters are mapped again here: this ingest's clock and per-event bound.
    pub fn remap(&self) -> crate::dlq::Remap {
        crate::dlq::Remap {
            clock: self.clock.clone(),
            max_event_bytes: self.max_event_bytes,
        }
    }

    /// The mapping set serving right now.
    pub fn mappings(&self) -> Arc<MappingSet> {
        self.mappings.load_full()
    }

    /// Tells local delivery that cases were written outside ingress (a dead-letter replay).
    pub fn wake_delivery(&self) {
        if let Some(wake) = &self.wake {
            wake.notify_one();
        }
    }

    /// Verifies, parses, maps and buffers one request.
    pub async fn ingest(
        &self,
        mapping: &CompiledMapping,
        format: BodyFormat,
        request: InboundRequest,
        request_id: &str,
    ) -> Result<IngestOutcome, IngestError> {
        if mapping.verifier.uses_default_secret() && !self.allow_default_secrets {
            return Err(IngestError::SourceNotConfigured {
                source_name: mapping.source.clone(),
                variables: mapping.verifier.defaulted_variables().to_vec(),
            });
        }
        let now = (self.clock)();
        let verdict = if request.body.len() > self.offload_verify_bytes {
            let verifier = mapping.verifier.clone();
            tokio::task::spawn_blocking(move || verifier.verify(request, now))
                .await
                .unwrap_or_else(|join| std::panic::resume_unwind(join.into_panic()))
        } else {
            mapping.verifier.verify(request, now)
        };
        let verified = match verdict {
            Err(VerifyError::UnsignedPing) => return Ok(IngestOutcome::Ping),
            verified => verified?,
        };
        let origin = Origin {
            request_id,
            received_at_ms: crate::clock::unix_ms(now),
            delivery_id: DeliveryIdFrom::Event,
        };
        let mapped = mapping.map_event(&verified, format, &origin, self.max_event_bytes)?;
        let batch = self.batch(mapping, &verified, &origin, mapped);
        let queues: Vec<String> = batch.cases.iter().map(|c| c.queue.clone()).collect();
        match self.buffer.enqueue(batch).await? {
            EnqueueOutcome::Duplicate => Ok(IngestOutcome::Duplicate),
            EnqueueOutcome::Stored {
                case_ids,
                dead_letter_ids,
            } if case_ids.is_empty() && dead_letter_ids.is_empty() => Ok(IngestOutcome::Filtered),
            EnqueueOutcome::Stored {
                dead_letter_ids, ..
            } if !dead_letter_ids.is_empty() => {
                metrics::counter!(crate::prometheus::CASES_DEAD_LETTERED, "kind" => crate::prometheus::DEAD_LETTER_MAPPING_FAILURE, "source" => mapping.source.clone())
                    .increment(dead_letter_ids.len() as u64);
                Ok(IngestOutcome::MappingFailed { dead_letter_ids })
            }
            EnqueueOutcome::Stored { case_ids, .. } => {
                for queue in queues {
                    crate::prometheus::count_enqueued(&queue);
                }
                if let Some(wake) = &self.wake {
                    wake.notify_one();
                }
                Ok(IngestOutcome::Accepted { case_ids })
            }
        }
    }

    /// Builds the atomic write for one mapped event: its cases, or its dead letter when the
    /// mapping failed, plus the dedupe mark. A filtered event still gets its mark, so a resend
    /// of it is a duplicate too.
    fn batch(
        &self,
        mapping: &CompiledMapping,
        verified: &Verified<InboundRequest>,
        origin: &Origin<'_>,
        mapped: MappedEvent,
    ) -> Enqueue {
        let MappedEvent { delivery_id, cases } = mapped;
        let body_digest = mapping.verifier.signs_no_timestamp().then(|| {
            // The MAC is hashed, not stored as it is: it is the request's valid
            // signature, and the store must not hold what would let a copy of the body
            // be sent again.
            let (kind, fingerprinted): (&str, &[u8]) = match verified.body_mac() {
                Some(mac) => ("mac", mac),
                None => ("body", &verified.get().body),
            };
            format!("{kind}:{}", hex::encode(Sha256::digest(fingerprinted)))
        });
        let stored_id = delivery_id.as_deref().map(bounded_delivery_id);
        let ttl = mapping.dedupe_ttl.unwrap_or(self.default_dedupe_ttl);
        let dedupe = match (stored_id, body_digest) {
            (Some(delivery_id), body_digest) => Some(DedupeMark {
                source: mapping.source.clone(),
                delivery_id,
                body_digest,
                ttl,
            }),
            (None, Some(digest)) => Some(DedupeMark {
                source: mapping.source.clone(),
                delivery_id: digest,
                body_digest: None,
                ttl,
            }),
            (None, None) => None,
        };
        match cases {
            Ok(cases) => Enqueue {
                dedupe,
                cases,
                dead_letters: Vec::new(),
            },
            Err(failure) => {
                tracing::warn!(source = %mapping.source, rule = %failure.rule, request_id = origin.request_id, "mapping failed; event dead-lettered");
                Enqueue {
                    dedupe,
                    cases: Vec::new(),
                    dead_letters: vec![mapping.dead_letter(verified, failure, origin, delivery_id)],
                }
            }
        }
    }
}

/// The delivery id as stored in a dedupe mark: as sent up to [`MAX_STORED_DELIVERY_ID`] bytes,
/// otherwise `sha256:<hex>` of it, so a sender cannot make casegate store kilobytes per event.
pub fn bounded_delivery_id(id: &str) -> String {
    if id.len() <= MAX_STORED_DELIVERY_ID {
        id.to_string()
    } else {
        format!("sha256:{}", hex::encode(Sha256::digest(id.as_bytes())))
    }
}

/// Which body format a `Content-Type` announces.
pub fn body_format(content_type: Option<&str>) -> Result<BodyFormat, IngestError> {
    let raw = content_type.unwrap_or("");
    let essence = raw
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/json" => Ok(BodyFormat::Json),
        e if e.starts_with("application/") && e.ends_with("+json") => Ok(BodyFormat::Json),
        "application/x-www-form-urlencoded" => Ok(BodyFormat::FormPayload),
        _ => Err(IngestError::UnsupportedMediaType(
            raw.chars().take(100).collect(),
        )),
    }
}

/// Parses the verified body into JSON, with errors that say where.
pub fn parse_payload(body: &[u8], format: BodyFormat) -> Result<Value, IngestError> {
    parse_payload_for(body, format, &Keep::All)
}

/// Parses the verified body like [`parse_payload`] (the same errors), building only the parts
/// `keep` keeps: a mapping's results are the same as over the full payload.
pub fn parse_payload_for(
    body: &[u8],
    format: BodyFormat,
    keep: &Keep,
) -> Result<Value, IngestError> {
    let text = std::str::from_utf8(body).map_err(|e| IngestError::InvalidUtf8(e.valid_up_to()))?;
    let parse_json = |text: &str| parse_json(text, keep);
    match format {
        BodyFormat::Json => parse_json(text),
        BodyFormat::FormPayload => {
            let fields: Vec<(String, String)> = serde_urlencoded::from_bytes(body)
                .map_err(|e| IngestError::BodyRead(format!("form body: {e}")))?;
            let payload = fields
                .into_iter()
                .find(|(k, _)| k == "payload")
                .ok_or(IngestError::MissingFormPayload)?;
            parse_json(&payload.1)
        }
    }
}

fn parse_json(text: &str, keep: &Keep) -> Result<Value, IngestError> {
    crate::mapping::prune::from_str(text, keep).map_err(|e| {
        let (line, column) = (e.line(), e.column());
        if e.to_string().starts_with("recursion limit exceeded") {
            IngestError::TooDeep { line, column }
        } else {
            let message = e.to_string();
            let message = message
                .split(" at line ")
                .next()
                .unwrap_or(&message)
                .to_string();
            IngestError::MalformedJson {
                line,
                column,
                message,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_table() {
        let cases = [
            (Some("application/json"), Some(BodyFormat::Json)),
            (
                Some("application/json; charset=utf-8"),
                Some(BodyFormat::Json),
            ),
            (Some("Application/JSON"), Some(BodyFormat::Json)),
            (Some("application/cloudevents+json"), Some(BodyFormat::Json)),
            (
                Some("application/x-www-form-urlencoded"),
                Some(BodyFormat::FormPayload),
            ),
            (Some("text/plain"), None),
            (Some("application/xml"), None),
            (None, None),
        ];
        for (content_type, expected) in cases {
            assert_eq!(body_format(content_type).ok(), expected, "{content_type:?}");
        }
    }

    #[test]
    fn parse_errors_say_where() {
        match parse_payload(b"{\"a\":\n  tru}", BodyFormat::Json).unwrap_err() {
            IngestError::MalformedJson { line, column, .. } => assert_eq!((line, column), (2, 6)),
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            parse_payload(b"", BodyFormat::Json),
            Err(IngestError::MalformedJson { .. })
        ));
        assert!(matches!(
            parse_payload(b"{\"a\":\"\xff\"}", BodyFormat::Json),
            Err(IngestError::InvalidUtf8(6))
        ));
        let bomb = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(matches!(
            parse_payload(bomb.as_bytes(), BodyFormat::Json),
            Err(IngestError::TooDeep { .. })
        ));
    }

    /// README's "Limits" section states this number.
    #[test]
    fn json_nests_up_to_127_levels() {
        let nested = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        assert!(parse_payload(nested(127).as_bytes(), BodyFormat::Json).is_ok());
        assert!(matches!(
            parse_payload(nested(128).as_bytes(), BodyFormat::Json),
            Err(IngestError::TooDeep { .. })
        ));
    }

    #[test]
    fn a_form_body_carries_its_json_in_the_payload_field() {
        let body = b"token=x&payload=%7B%22type%22%3A%22block_actions%22%7D";
        let value = parse_payload(body, BodyFormat::FormPayload).unwrap();
        assert_eq!(value, serde_json::json!({"type": "block_actions"}));
        assert!(matches!(
            parse_payload(b"token=x", BodyFormat::FormPayload),
            Err(IngestError::MissingFormPayload)
        ));
    }
}
