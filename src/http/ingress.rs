//! `POST /hooks/{source}`: read the body within its limits, hand it to the ingest step, and turn
//! the outcome into the answer providers expect.

use actix_web::http::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderName, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use serde_json::json;

use super::AppState;
use crate::error::ApiError;
use crate::inbound::{Headers, InboundRequest};
use crate::ingest::{IngestError, IngestOutcome, body_format};
use crate::prometheus;

/// Longest request id taken from an incoming `X-Request-Id`.
const MAX_REQUEST_ID_LEN: usize = 128;

pub async fn receive(
    request: HttpRequest,
    source: web::Path<String>,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let request_id = request_id(&request);
    let mapping = state.ingestor.mapping(&source).map_err(|e| {
        // Not the requested name: strangers must not be able to mint label values.
        count("unknown", "invalid", "unknown_source");
        ApiError::from_ingest(e, state.retry_after)
    })?;
    let refuse = |e: IngestError| {
        let error = ApiError::from_ingest(e, state.retry_after);
        let outcome = match error.status.as_u16() {
            401 => "unauthorized",
            503 => "unavailable",
            _ => "invalid",
        };
        count(&mapping.source, outcome, error.code);
        if outcome == "unauthorized" {
            tracing::warn!(source = %mapping.source, request_id, code = error.code, "webhook refused");
        }
        error
    };
    let content_type = request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let format = body_format(content_type).map_err(refuse)?;
    let declared_length = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let read = read_body(body, state.max_body_bytes, declared_length);
    let body = tokio::time::timeout(state.client_timeout, read)
        .await
        .map_err(|_| IngestError::BodyTimeout(state.client_timeout))
        .and_then(|read| read)
        .map_err(refuse)?;
    let headers = request
        .headers()
        .iter()
        .map(|(name, value)| {
            (
                name.as_str(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect::<Headers>();
    let inbound = InboundRequest {
        method: request.method().as_str().to_string(),
        url: public_url(&request, state.public_url.as_deref()),
        headers,
        body,
    };
    let outcome = state
        .ingestor
        .ingest(&mapping, format, inbound, &request_id)
        .await
        .map_err(refuse)?;
    let source = mapping.source.as_str();
    let mut response = match outcome {
        IngestOutcome::Accepted {
            case_ids,
            dead_letter_ids,
        } => {
            let outcome = if case_ids.is_empty() {
                "mapping_failure"
            } else {
                "accepted"
            };
            count(source, outcome, "");
            // `debug`, not `info`: a line per accepted webhook cost more CPU than the rest of the
            // answer at high rates; the webhooks counter and the cases' metadata keep the record.
            tracing::debug!(
                source,
                request_id,
                cases = case_ids.len(),
                dead_letters = dead_letter_ids.len(),
                "webhook accepted"
            );
            let mut body = json!({"accepted": case_ids.len(), "case_ids": case_ids});
            if !dead_letter_ids.is_empty() {
                body["dead_letter_ids"] = json!(dead_letter_ids);
            }
            HttpResponse::Accepted().json(body)
        }
        IngestOutcome::Filtered => {
            count(source, "filtered", "");
            tracing::debug!(source, request_id, "webhook filtered out by its mapping");
            HttpResponse::Ok().json(json!({"accepted": 0}))
        }
        IngestOutcome::Ping => {
            count(source, "ping", "");
            HttpResponse::Ok().json(json!({"accepted": 0, "ping": true}))
        }
        IngestOutcome::Duplicate => {
            count(source, "duplicate", "");
            tracing::info!(source, request_id, "duplicate webhook ignored");
            HttpResponse::Ok().json(json!({"duplicate": true}))
        }
    };
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response
            .headers_mut()
            .insert(HeaderName::from_static("x-request-id"), value);
    }
    Ok(response)
}

fn count(source: &str, outcome: &'static str, reason: &'static str) {
    metrics::counter!(prometheus::WEBHOOKS, "source" => source.to_string(), "outcome" => outcome, "reason" => reason)
        .increment(1);
}

/// Reads the body chunk by chunk and stops as soon as it passes `limit`, so an oversize or
/// endless body never sits in memory whole.
async fn read_body(
    mut body: web::Payload,
    limit: usize,
    declared: Option<usize>,
) -> Result<Bytes, IngestError> {
    if declared.is_some_and(|len| len > limit) {
        return Err(IngestError::PayloadTooLarge { limit });
    }
    let mut bytes = BytesMut::with_capacity(declared.unwrap_or(8 * 1024).min(limit));
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| IngestError::BodyRead(e.to_string()))?;
        if bytes.len() + chunk.len() > limit {
            return Err(IngestError::PayloadTooLarge { limit });
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes.freeze())
}

/// The incoming `X-Request-Id` when it is short printable ASCII, else a fresh random id.
fn request_id(request: &HttpRequest) -> String {
    request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|id| {
            !id.is_empty()
                && id.len() <= MAX_REQUEST_ID_LEN
                && id.bytes().all(|b| b.is_ascii_graphic())
        })
        .map(str::to_string)
        .unwrap_or_else(|| format!("{:032x}", rand::random::<u128>()))
}

/// The URL the sender signed: the configured public base URL plus path and query, or what the
/// request itself says.
fn public_url(request: &HttpRequest, public_base: Option<&str>) -> String {
    let path_and_query = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    match public_base {
        Some(base) => format!("{base}{path_and_query}"),
        None => {
            let info = request.connection_info();
            format!("{}://{}{}", info.scheme(), info.host(), path_and_query)
        }
    }
}
