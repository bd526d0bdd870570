//! The webhook request as the domain sees it: raw bytes and headers, no HTTP framework types.
//!
//! The HTTP layer builds an [`InboundRequest`]; verifiers check it and wrap it in
//! [`crate::verify::Verified`]; only a verified request reaches the mapper.

use bytes::Bytes;

/// Request headers with lower-cased names, in arrival order. Values that are not valid UTF-8 are
/// kept as lossy strings: every signature header casegate reads is ASCII.
#[derive(Debug, Clone, Default)]
pub struct Headers(Vec<(String, String)>);

impl Headers {
    pub fn new() -> Self {
        Headers(Vec::new())
    }

    pub fn insert(&mut self, name: &str, value: impl Into<String>) {
        self.0.push((name.to_ascii_lowercase(), value.into()));
    }

    /// The first value of `name` (case-insensitive).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// The headers whose names are not in `credentials`, as stored in a dead letter.
    pub fn without_credentials(&self, credentials: &[String]) -> Vec<(String, String)> {
        self.0
            .iter()
            .filter(|(name, _)| !is_credential(credentials, name))
            .cloned()
            .collect()
    }
}

/// Whether the header `name` is one of `credentials` (a verifier's credential headers): such a
/// header is never stored, logged or copied into a case.
pub fn is_credential(credentials: &[String], name: &str) -> bool {
    credentials.iter().any(|c| c.eq_ignore_ascii_case(name))
}

impl<K: AsRef<str>, V: Into<String>> FromIterator<(K, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut headers = Headers::new();
        for (k, v) in iter {
            headers.insert(k.as_ref(), v);
        }
        headers
    }
}

/// One received webhook, exactly as it arrived.
#[derive(Debug, Clone)]
pub struct InboundRequest {
    /// Upper-case HTTP method, e.g. `POST`.
    pub method: String,
    /// The full public URL the sender signed (scheme, host, path and query). Behind a
    /// URL-rewriting proxy this comes from the configured public base URL, not the socket.
    pub url: String,
    pub headers: Headers,
    /// The body's raw bytes: signatures are computed over these, before any parsing.
    pub body: Bytes,
}

impl InboundRequest {
    /// A request made locally rather than received: a sample, a mapping example, a stored dead
    /// letter. Its method is `POST` and its URL empty.
    pub fn local(headers: Headers, body: impl Into<Bytes>) -> Self {
        InboundRequest {
            method: "POST".into(),
            url: String::new(),
            headers,
            body: body.into(),
        }
    }
}
