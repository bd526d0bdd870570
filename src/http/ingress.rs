//! `POST /hooks/{source}`: read the body within its limits, hand it to the ingest step, and turn
//! the outcome into the answer providers expect.

use std::sync::atomic::{AtomicUsize, Ordering};

use actix_web::http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST, HeaderName, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use serde_json::json;

use super::AppState;
use crate::error::{ApiError, Refusal};
use crate::inbound::{Headers, InboundRequest};
use crate::ingest::{IngestError, IngestOutcome, body_format};
use crate::prometheus;

/// The `{source}` of `POST /hooks/{source}`: one non-empty path segment after the `/hooks`
/// scope. Anything else under `/hooks` is no endpoint at all.
fn source_of(request: &HttpRequest) -> Option<&str> {
    if request.method() != actix_web::http::Method::POST {
        return None;
    }
    let source = request.match_info().unprocessed().strip_prefix('/')?;
    (!source.is_empty() && !source.contains('/')).then_some(source)
}

/// Longest request id taken from an incoming `X-Request-Id`.
const MAX_REQUEST_ID_LEN: usize = 128;

pub async fn receive(
    request: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let Some(source) = source_of(&request) else {
        return super::not_found().await;
    };
    let request_id = request_id(&request);
    let mapping = state.ingestor.mapping(source).map_err(|e| {
        // Not the requested name: strangers must not be able to mint label values.
        count("unknown", "invalid", "unknown_source");
        ApiError::from_ingest(e, state.retry_after)
    })?;
    let refuse = |e: IngestError| {
        let error = ApiError::from_ingest(e, state.retry_after);
        let refusal = error.refusal();
        count(&mapping.source, refusal.label(), error.code);
        if refusal == Refusal::Unauthorized {
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
    // Held until the answer: the body's bytes stay in memory through verification and mapping.
    let mut reservation = state.inflight_bodies.reservation();
    let read = read_body(
        body,
        state.ingress.max_body_bytes,
        declared_length,
        &mut reservation,
    );
    let body = tokio::time::timeout(state.ingress.client_timeout, read)
        .await
        .map_err(|_| IngestError::BodyTimeout(state.ingress.client_timeout))
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
        url: public_url(
            &request,
            state.public_url.as_deref(),
            &state.ingress.trusted_proxies,
        ),
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
        IngestOutcome::Accepted { case_ids } => {
            accepted(source, &request_id, "accepted", &case_ids, &[])
        }
        IngestOutcome::MappingFailed { dead_letter_ids } => accepted(
            source,
            &request_id,
            "mapping_failure",
            &[],
            &dead_letter_ids,
        ),
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

/// The 202 for a webhook whose cases (or whose dead letter) are durably stored.
fn accepted(
    source: &str,
    request_id: &str,
    outcome: &'static str,
    case_ids: &[String],
    dead_letter_ids: &[String],
) -> HttpResponse {
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
    HttpResponse::Accepted().json(AcceptedBody {
        accepted: case_ids.len(),
        case_ids,
        dead_letter_ids,
    })
}

/// The body of a 202, serialized as it is (no intermediate `Value` per webhook).
#[derive(serde::Serialize)]
struct AcceptedBody<'a> {
    accepted: usize,
    case_ids: &'a [String],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    dead_letter_ids: &'a [String],
}

fn count(source: &str, outcome: &'static str, reason: &'static str) {
    prometheus::count_webhook(source, outcome, reason);
}

/// Reads the body chunk by chunk and stops as soon as it passes `limit`, so an oversize or
/// endless body never sits in memory whole.
async fn read_body(
    mut body: web::Payload,
    limit: usize,
    declared: Option<usize>,
    reservation: &mut Reservation<'_>,
) -> Result<Bytes, IngestError> {
    if declared.is_some_and(|len| len > limit) {
        return Err(IngestError::PayloadTooLarge { limit });
    }
    let capacity = declared.unwrap_or(8 * 1024).min(limit);
    reservation.grow(capacity)?;
    let mut bytes = BytesMut::with_capacity(capacity);
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| IngestError::BodyRead(e.to_string()))?;
        if bytes.len() + chunk.len() > limit {
            return Err(IngestError::PayloadTooLarge { limit });
        }
        reservation.grow(bytes.len() + chunk.len())?;
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes.freeze())
}

/// The global cap on body bytes being received at once: each request reserves what it holds
/// before it holds it, and gives it back when its answer is built. Past the cap a request is
/// refused (503) rather than queued, so a flood of large bodies cannot exhaust memory.
#[derive(Debug)]
pub struct InflightBodies {
    limit: usize,
    held: AtomicUsize,
}

impl InflightBodies {
    pub fn new(limit: usize) -> Self {
        InflightBodies {
            limit,
            held: AtomicUsize::new(0),
        }
    }

    /// Bytes currently reserved by all requests.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// An empty reservation, released on drop.
    pub fn reservation(&self) -> Reservation<'_> {
        Reservation {
            pool: self,
            bytes: 0,
        }
    }
}

/// One request's share of [`InflightBodies`].
#[derive(Debug)]
pub struct Reservation<'a> {
    pool: &'a InflightBodies,
    bytes: usize,
}

impl Reservation<'_> {
    /// Raises this request's share to `total` bytes, or refuses when the cap would be passed.
    pub fn grow(&mut self, total: usize) -> Result<(), IngestError> {
        let more = total.saturating_sub(self.bytes);
        if more == 0 {
            return Ok(());
        }
        let limit = self.pool.limit;
        self.pool
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(more).filter(|&next| next <= limit)
            })
            .map_err(|_| IngestError::BodiesInFlight { limit })?;
        self.bytes = total;
        Ok(())
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.pool.held.fetch_sub(self.bytes, Ordering::AcqRel);
    }
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
/// request itself says. `Forwarded`/`X-Forwarded-*` count only when the peer is a trusted proxy:
/// from anyone else they would let a client choose the URL its signature is checked against.
fn public_url(
    request: &HttpRequest,
    public_base: Option<&str>,
    trusted_proxies: &[crate::config::IpRange],
) -> String {
    let path_and_query = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    if let Some(base) = public_base {
        return format!("{base}{path_and_query}");
    }
    let trusted = request
        .peer_addr()
        .is_some_and(|peer| trusted_proxies.iter().any(|r| r.contains(peer.ip())));
    if trusted {
        let info = request.connection_info();
        return format!("{}://{}{}", info.scheme(), info.host(), path_and_query);
    }
    let host = request
        .headers()
        .get(HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| request.uri().authority().map(|a| a.to_string()))
        .unwrap_or_else(|| request.app_config().host().to_string());
    format!("http://{host}{path_and_query}")
}
