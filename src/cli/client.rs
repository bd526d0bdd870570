//! The one HTTP client the CLI uses for a running gateway's admin API and health probe.

use super::*;

/// A running gateway's admin API, as the CLI reaches it.
pub(super) struct AdminApi {
    base: String,
    token: String,
    client: reqwest::Client,
}

impl AdminApi {
    /// The configured admin token, else the one `serve --sandbox` saved; the configured admin
    /// (or listen) address unless `url` is given.
    pub(super) fn from_config(config: &Config, url: Option<String>) -> Result<AdminApi, CliError> {
        let token = match &config.admin_token {
            Some(token) => token.expose().to_string(),
            None => std::fs::read_to_string(sandbox_token_file(config))
                .map(|t| t.trim().to_string())
                .ok()
                .filter(|t| !t.is_empty())
                .ok_or("the admin API is off: set CASEGATE_ADMIN__TOKEN (here and on the gateway), or run `serve --sandbox`")?,
        };
        let base = url.unwrap_or_else(|| local_url(config.admin_listen.unwrap_or(config.listen)));
        Ok(AdminApi {
            base: base.trim_end_matches('/').to_string(),
            token,
            client: http_client(CALL_TIMEOUT)?,
        })
    }

    /// One admin call; a non-2xx answer becomes its `message`.
    pub(super) async fn call(
        &self,
        method: &str,
        path: &str,
    ) -> Result<serde_json::Value, CliError> {
        let method = reqwest::Method::from_bytes(method.as_bytes())
            .map_err(|e| CliError::Failed(e.to_string()))?;
        let response = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|source| CliError::Unreachable {
                url: self.base.clone(),
                source,
            })?;
        let status = response.status();
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        if !status.is_success() {
            return Err(CliError::Answered {
                url: self.base.clone(),
                status,
                message: body["message"].as_str().unwrap_or_default().to_string(),
            });
        }
        Ok(body)
    }
}

/// The client every CLI request goes through; `timeout` bounds each request.
pub(super) fn http_client(timeout: Duration) -> Result<reqwest::Client, CliError> {
    crate::delivery::client::install_crypto_provider();
    Ok(reqwest::Client::builder().timeout(timeout).build()?)
}

/// How long an admin call or a health probe may take.
pub(super) const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A URL for a local address: a wildcard listen address is reached on loopback.
pub(super) fn local_url(address: std::net::SocketAddr) -> String {
    let port = address.port();
    if address.ip().is_unspecified() {
        format!("http://127.0.0.1:{port}")
    } else {
        format!("http://{address}")
    }
}

/// A dead-letter id as one URL path segment (ids are `[0-9-]` today; this keeps a typo from
/// becoming another path).
pub(super) fn path_segment(id: &str) -> String {
    id.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
