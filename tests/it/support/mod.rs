pub mod cases;
pub mod gateway;
pub mod process;
pub mod redis_cluster;
pub mod redis_server;
pub mod sandbox;
pub mod wait;

/// An HTTP client for tests (installs the TLS crypto provider reqwest needs first).
pub fn http_client() -> reqwest::Client {
    casegate::delivery::client::install_crypto_provider();
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(20))
        .build()
        .unwrap()
}

/// A loopback port that was free a moment ago, for processes that bind it themselves.
pub fn free_port() -> u16 {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a probe socket");
    probe.local_addr().expect("probe socket address").port()
}

/// Sends `method` to `url` (with `token` as the bearer, when given): the status, and the body
/// as JSON (null when it is not JSON).
pub async fn call(
    method: reqwest::Method,
    url: &str,
    token: Option<&str>,
) -> (u16, serde_json::Value) {
    let response = send(method, url, token).await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

/// GETs `url` (with `token` as the bearer, when given) and returns the body as text.
pub async fn get_text(url: &str, token: Option<&str>) -> String {
    send(reqwest::Method::GET, url, token)
        .await
        .text()
        .await
        .unwrap()
}

/// GETs `url` (with `token` as the bearer, when given) and returns the body as JSON.
pub async fn get_json(url: &str, token: Option<&str>) -> serde_json::Value {
    send(reqwest::Method::GET, url, token)
        .await
        .json()
        .await
        .unwrap()
}

async fn send(method: reqwest::Method, url: &str, token: Option<&str>) -> reqwest::Response {
    let mut request = http_client().request(method, url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

/// POSTs `body` to `url` as JSON with `client`; returns the status.
pub async fn post_json(client: &reqwest::Client, url: &str, body: impl Into<String>) -> u16 {
    client
        .post(url)
        .header("content-type", "application/json")
        .body(body.into())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}
