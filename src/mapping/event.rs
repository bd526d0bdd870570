//! The one road from a verified event to cases or a dead letter.
//!
//! Ingest, dead-letter replay and `casegate try` all call [`CompiledMapping::map_event`]: it
//! parses the verified body (building only what the mapping reads), reads or takes the delivery
//! id, and applies the rules. The mapper reads an event only through an [`EventInput`], which
//! only a [`Verified`] request can make, so an unverified body cannot be mapped by accident.
//! When the rules fail, [`CompiledMapping::dead_letter`] is the one constructor of the event's
//! dead letter (credential headers stripped).

use serde_json::Value;

use super::{CompiledMapping, MapFailure};
use crate::case::{CaseRecord, DeadLetterKind, DeadLetterRecord};
use crate::inbound::{Headers, InboundRequest};
use crate::ingest::{BodyFormat, IngestError};
use crate::verify::Verified;

/// What the mapper reads about one event: a verified request's headers, its parsed payload,
/// and where it came from.
#[derive(Debug, Clone, Copy)]
pub struct EventInput<'a> {
    pub(super) payload: &'a Value,
    pub(super) headers: &'a Headers,
    pub(super) request_id: &'a str,
    pub(super) delivery_id: Option<&'a str>,
    pub(super) received_at_ms: u64,
}

impl<'a> EventInput<'a> {
    /// The event of `request` whose body parsed to `payload` (possibly only the parts the
    /// mapping reads). Request id empty, no delivery id, received at 0 until set.
    pub fn new(request: &'a Verified<InboundRequest>, payload: &'a Value) -> Self {
        EventInput {
            payload,
            headers: &request.get().headers,
            request_id: "",
            delivery_id: None,
            received_at_ms: 0,
        }
    }

    pub fn request_id(self, request_id: &'a str) -> Self {
        EventInput { request_id, ..self }
    }

    pub fn delivery_id(self, delivery_id: Option<&'a str>) -> Self {
        EventInput {
            delivery_id,
            ..self
        }
    }

    pub fn received_at_ms(self, received_at_ms: u64) -> Self {
        EventInput {
            received_at_ms,
            ..self
        }
    }
}

/// Where the delivery id of an event comes from.
#[derive(Debug, Clone, Copy)]
pub enum DeliveryIdFrom<'a> {
    /// Read from the event as the mapping says (a received webhook, a sample).
    Event,
    /// As stored when the event was first received (a dead-letter replay).
    Stored(Option<&'a str>),
}

/// Where an event came from, besides its request.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    pub request_id: &'a str,
    pub received_at_ms: u64,
    pub delivery_id: DeliveryIdFrom<'a>,
}

/// One event mapped: its delivery id, and its cases (empty: filtered) or why it failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedEvent {
    pub delivery_id: Option<String>,
    pub cases: Result<Vec<CaseRecord>, MapFailure>,
}

impl CompiledMapping {
    /// Maps one verified request: parses its body as `format` says, then applies the rules
    /// under at most `max_bytes` of cases. `Err` when the body is not a readable event.
    pub fn map_event(
        &self,
        request: &Verified<InboundRequest>,
        format: BodyFormat,
        origin: &Origin<'_>,
        max_bytes: usize,
    ) -> Result<MappedEvent, IngestError> {
        // Only what the mapping reads is built; the raw bytes stay for digests and dead letters.
        let payload = crate::ingest::parse_payload_for(&request.get().body, format, &self.keep)?;
        let delivery_id = match origin.delivery_id {
            DeliveryIdFrom::Event => self.delivery_id_of(&payload, &request.get().headers),
            DeliveryIdFrom::Stored(stored) => stored.map(str::to_string),
        };
        let input = EventInput::new(request, &payload)
            .request_id(origin.request_id)
            .delivery_id(delivery_id.as_deref())
            .received_at_ms(origin.received_at_ms);
        let cases = self.apply_within(&input, max_bytes);
        Ok(MappedEvent { delivery_id, cases })
    }

    /// The dead letter of an event this mapping could not map: the body as received and the
    /// headers without credentials, so a replay can map it again.
    pub fn dead_letter(
        &self,
        request: &Verified<InboundRequest>,
        failure: MapFailure,
        origin: &Origin<'_>,
        delivery_id: Option<String>,
    ) -> DeadLetterRecord {
        let request = request.get();
        DeadLetterRecord {
            source: self.source.clone(),
            reason: failure.to_string(),
            created_at_ms: origin.received_at_ms,
            kind: DeadLetterKind::MappingFailure {
                payload: String::from_utf8_lossy(&request.body).into_owned(),
                headers: request
                    .headers
                    .without_credentials(&self.verifier.credential_headers()),
                mapping_file: self.file.clone(),
                mapping_version: self.version.clone(),
                rule: Some(failure.rule),
                request_id: Some(origin.request_id.to_string()),
                delivery_id,
            },
        }
    }
}
