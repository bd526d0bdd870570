//! The Duvo API client: `POST {base_url}/queues/{queue_id}/cases` with `{"cases": [...]}`.
//!
//! Always the `cases` form (1-100), never `case`, so one code path serves every batch size; `data`
//! is already a JSON-encoded string in the buffer, as the API requires.

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, RETRY_AFTER};
use serde::Serialize;

use super::policy::{ApiAnswer, RateLimitHeaders};
use crate::case::{CaseRecord, Label};
use crate::secret::Secret;

#[derive(Serialize)]
struct CaseBody<'a> {
    title: &'a str,
    data: &'a str,
    #[serde(skip_serializing_if = "<[Label]>::is_empty")]
    labels: &'a [Label],
}

#[derive(Serialize)]
struct CreateCases<'a> {
    cases: Vec<CaseBody<'a>>,
}

#[derive(serde::Deserialize)]
struct ErrorBody {
    error: Option<String>,
    message: Option<String>,
}

/// What delivery sends batches to: the Duvo API over HTTP, or a stand-in that answers in
/// process, so the worker and batcher run in unit tests on paused time with no socket.
#[derive(Clone)]
pub enum Api {
    Http(DuvoClient),
    StandIn(Arc<dyn StandIn>),
}

/// Answers `POST /queues/{queue}/cases` in process (tests substitute it for the HTTP client).
pub trait StandIn: Send + Sync {
    fn create_cases(&self, api_key: &Secret, queue: &str, cases: &[&CaseRecord]) -> ApiAnswer;
}

impl From<DuvoClient> for Api {
    fn from(client: DuvoClient) -> Api {
        Api::Http(client)
    }
}

impl Api {
    /// Sends one batch. Never fails: a transport error is an answer too.
    pub async fn create_cases(
        &self,
        api_key: &Secret,
        queue: &str,
        cases: &[&CaseRecord],
    ) -> ApiAnswer {
        match self {
            Api::Http(client) => {
                client
                    .create_cases(api_key, queue, DuvoClient::body(cases))
                    .await
            }
            Api::StandIn(stand_in) => stand_in.create_cases(api_key, queue, cases),
        }
    }
}

/// A client for one API base URL; cheap to clone.
#[derive(Clone, Debug)]
pub struct DuvoClient {
    http: reqwest::Client,
    base_url: String,
}

/// Installs rustls' ring provider once per process (reqwest is built without a default one,
/// which would need a C toolchain and CMake to compile).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl DuvoClient {
    pub fn new(
        base_url: &str,
        connect_timeout: Duration,
        request_timeout: Duration,
    ) -> Result<Self, String> {
        install_crypto_provider();
        let http = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .timeout(request_timeout)
            .user_agent(concat!("casegate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(DuvoClient {
            http,
            base_url: base_url.trim_end_matches('/').to_string(),
        })
    }

    /// The request body for `cases`, also used to keep a batch under the request-size cap.
    pub fn body(cases: &[&CaseRecord]) -> Vec<u8> {
        let body = CreateCases {
            cases: cases
                .iter()
                .map(|c| CaseBody {
                    title: &c.title,
                    data: &c.data,
                    labels: &c.labels,
                })
                .collect(),
        };
        serde_json::to_vec(&body).expect("cases serialize")
    }

    /// Sends one batch. Never fails: a transport error is an answer too.
    pub async fn create_cases(&self, api_key: &Secret, queue: &str, body: Vec<u8>) -> ApiAnswer {
        let url = format!("{}/queues/{queue}/cases", self.base_url);
        let sent = self
            .http
            .post(url)
            .bearer_auth(api_key.expose())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            // reqwest's errors can include the URL but never headers, so the key cannot leak.
            Err(error) => return ApiAnswer::Transport(transport_reason(&error)),
        };
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let error = if response.status().is_success() {
            None
        } else {
            response
                .bytes()
                .await
                .ok()
                .and_then(|b| serde_json::from_slice::<ErrorBody>(&b).ok())
                .map(|b| (b.error.unwrap_or_default(), b.message.unwrap_or_default()))
        };
        ApiAnswer::Response {
            status,
            retry_after: seconds(&headers, RETRY_AFTER.as_str()),
            rate: rate_limit(&headers),
            error,
        }
    }
}

fn transport_reason(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        "request timed out".into()
    } else if error.is_connect() {
        "connection failed".into()
    } else {
        "transport error".into()
    }
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

fn seconds(headers: &HeaderMap, name: &str) -> Option<Duration> {
    header_u64(headers, name).map(Duration::from_secs)
}

/// Reads `x-ratelimit-limit/-remaining/-reset`.
pub fn rate_limit(headers: &HeaderMap) -> RateLimitHeaders {
    RateLimitHeaders {
        limit: header_u64(headers, "x-ratelimit-limit"),
        remaining: header_u64(headers, "x-ratelimit-remaining"),
        reset: seconds(headers, "x-ratelimit-reset"),
    }
}
