pub mod gateway;
pub mod process;
pub mod redis_server;
pub mod sandbox;

/// An HTTP client for tests (installs the TLS crypto provider reqwest needs first).
pub fn http_client() -> reqwest::Client {
    casegate::delivery::client::install_crypto_provider();
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(20))
        .build()
        .unwrap()
}
