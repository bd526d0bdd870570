pub mod cases;
pub mod gateway;
pub mod process;
pub mod redis_cluster;
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

/// A loopback port that was free a moment ago, for processes that bind it themselves.
pub fn free_port() -> u16 {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a probe socket");
    probe.local_addr().expect("probe socket address").port()
}
