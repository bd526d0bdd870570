//! The `casegate` binary as a child process, for tests that SIGKILL it.

use std::time::Duration;

/// The `casegate` binary as a child process, so a test can SIGKILL it.
pub struct GatewayProcess {
    child: tokio::process::Child,
    pub port: u16,
}

impl GatewayProcess {
    pub async fn spawn(dir: &std::path::Path, env: &[(String, String)]) -> GatewayProcess {
        let port = super::free_port();
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_casegate"));
        command
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--mappings",
            ])
            .arg(dir.join("mappings"))
            .env("CASEGATE_BUFFER__PATH", dir.join("buffer.redb"))
            .env("CASEGATE_LOG__LEVEL", "warn")
            // Replicas on one host share its name: each spawn is its own consumer unless the
            // test names one (a restart under the same identity).
            .env("CASEGATE_DELIVERY__CONSUMER", format!("process-{port}"))
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true);
        let child = command.spawn().unwrap();
        let process = GatewayProcess { child, port };
        let client = crate::support::http_client();
        for _ in 0..200 {
            if client.get(process.url("/healthz")).send().await.is_ok() {
                return process;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("gateway process did not come up");
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub async fn kill9(mut self) {
        self.child.start_kill().unwrap();
        self.child.wait().await.unwrap();
    }

    /// Sends SIGTERM and waits up to `within` for the exit; `None` if it is still running.
    pub async fn terminate(mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let pid = self.child.id().expect("still running").to_string();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -TERM {pid}");
        tokio::time::timeout(within, self.child.wait())
            .await
            .ok()
            .map(Result::unwrap)
    }
}
