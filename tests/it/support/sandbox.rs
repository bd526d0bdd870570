//! The sandbox Duvo API on a loopback port, for delivery tests.

use std::time::Duration;

use casegate_sandbox::{Sandbox, SandboxConfig, SandboxStats};
use tokio::sync::oneshot;

use super::wait::eventually;

pub const API_KEY: &str = "dv_sandbox_test";

pub struct TestSandbox {
    pub sandbox: Sandbox,
    pub base_url: String,
    /// The one API key this sandbox accepts.
    pub api_key: String,
    _stop: oneshot::Sender<()>,
}

impl TestSandbox {
    /// A sandbox allowing `rate` requests per `window`.
    pub async fn start(rate: u32, window: Duration) -> TestSandbox {
        TestSandbox::start_with_key(rate, window, API_KEY).await
    }

    /// Likewise, accepting `api_key`: a key no other test uses, for tests that read the
    /// process-wide metrics of that key.
    pub async fn start_with_key(rate: u32, window: Duration, api_key: &str) -> TestSandbox {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        TestSandbox::serve(rate, window, api_key, listener)
    }

    /// A sandbox on `port`, free again after whatever listened there before (an "API" that
    /// dropped every connection, say).
    pub async fn start_on(rate: u32, window: Duration, port: u16) -> TestSandbox {
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        TestSandbox::serve(rate, window, API_KEY, listener)
    }

    fn serve(
        rate: u32,
        window: Duration,
        api_key: &str,
        listener: std::net::TcpListener,
    ) -> TestSandbox {
        let config = SandboxConfig {
            api_key: api_key.into(),
            rate,
            window,
            ..SandboxConfig::default()
        };
        let sandbox = Sandbox::new(config);
        let base_url = format!("http://{}/v1", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(casegate_sandbox::serve_until(
            sandbox.clone(),
            listener,
            async move {
                let _ = stopped.await;
            },
        ));
        TestSandbox {
            sandbox,
            base_url,
            api_key: api_key.into(),
            _stop: stop,
        }
    }

    pub fn stats(&self) -> SandboxStats {
        self.sandbox.stats()
    }

    /// Titles of every case the sandbox accepted for `queue`, oldest first.
    pub fn titles(&self, queue: &str) -> Vec<String> {
        self.sandbox
            .cases(queue)
            .into_iter()
            .map(|c| c.title)
            .collect()
    }

    /// Waits until `queue` holds at least `n` cases (panics after `within`); returns how many it
    /// holds.
    pub async fn wait_for(&self, queue: &str, n: usize, within: Duration) -> usize {
        let what = format!("{n} cases in queue {queue}");
        eventually(&what, within, || async {
            let have = self.sandbox.cases(queue).len();
            if have >= n { Ok(have) } else { Err(have) }
        })
        .await
    }

    /// The CASEGATE_* settings that point a gateway at this sandbox.
    pub fn settings(&self) -> Vec<(String, String)> {
        vec![
            ("CASEGATE_DUVO__BASE_URL".into(), self.base_url.clone()),
            ("CASEGATE_DUVO__API_KEY".into(), self.api_key.clone()),
        ]
    }

    /// Asserts casegate's pacing as the API saw it: no request refused with 429, and no `rate`
    /// accepted requests closer together than one `window` (a sliding window, the strictest
    /// model: what the sandbox let through proves nothing by itself, it only counts what it
    /// admitted).
    pub fn assert_paced(&self, rate: usize, window: Duration) {
        let stats = self.stats();
        assert_eq!(stats.rate_limited, 0, "the API refused requests with 429");
        let mut at: Vec<u64> = stats.accepted_log.iter().map(|b| b.at_ms).collect();
        at.sort_unstable();
        let window_ms = window.as_millis() as u64;
        for (i, pair) in at.windows(rate + 1).enumerate() {
            let gap = pair[rate] - pair[0];
            assert!(
                gap >= window_ms,
                "{} accepted requests within {gap} ms (from request {i}); the limit is {rate} per {window_ms} ms",
                rate + 1
            );
        }
    }
}
