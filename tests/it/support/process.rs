//! The `casegate` binary as a child process, for tests of the binary itself (flags, logs, signals)
//! and tests that SIGKILL it. Its stdout and stderr are read continuously (a full pipe would block
//! a process logging at debug level) and kept for assertions; it is killed when dropped.

use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

use super::wait::eventually;

/// How long a process may take to come up, or to exit once asked to.
const LIMIT: Duration = Duration::from_secs(20);

pub struct CasegateProcess {
    child: tokio::process::Child,
    /// The port `serve` listens on, when it was started by [`Self::serve`].
    pub port: u16,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    pumps: Vec<tokio::task::JoinHandle<()>>,
}

/// `casegate` with no arguments yet, outside the test's own `RUST_LOG`.
pub fn command() -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_casegate"));
    command.env_remove("RUST_LOG");
    command
}

/// `casegate serve --listen 127.0.0.1:<port> --mappings <dir>/mappings`, buffered in
/// `<dir>/buffer.redb`, with `env` on top.
pub fn serve_command(
    dir: &std::path::Path,
    port: u16,
    env: &[(String, String)],
) -> tokio::process::Command {
    let mut command = command();
    command
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--mappings",
        ])
        .arg(dir.join("mappings"))
        .env("CASEGATE_BUFFER__PATH", dir.join("buffer.redb"))
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    command
}

impl CasegateProcess {
    /// Starts `command` with its output captured.
    pub fn spawn(mut command: tokio::process::Command) -> CasegateProcess {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().unwrap();
        let (stdout, stderr) = (Arc::default(), Arc::default());
        let pumps = vec![
            tokio::spawn(pump(child.stdout.take().unwrap(), Arc::clone(&stdout))),
            tokio::spawn(pump(child.stderr.take().unwrap(), Arc::clone(&stderr))),
        ];
        CasegateProcess {
            child,
            port: 0,
            stdout,
            stderr,
            pumps,
        }
    }

    /// `casegate serve` on `dir` (see [`serve_command`]) at warn level, once it answers
    /// `/healthz`.
    pub async fn serve(dir: &std::path::Path, env: &[(String, String)]) -> CasegateProcess {
        let port = super::free_port();
        let mut command = serve_command(dir, port, &[]);
        command
            .env("CASEGATE_LOG__LEVEL", "warn")
            // Replicas on one host share its name: each spawn is its own consumer unless the
            // test names one (a restart under the same identity).
            .env("CASEGATE_DELIVERY__CONSUMER", format!("process-{port}"))
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let mut process = CasegateProcess::spawn(command);
        process.port = port;
        process.wait_until_up(port, "/healthz").await;
        process
    }

    /// Waits until `path` on `port` answers 2xx; panics with the output if the process exits.
    pub async fn wait_until_up(&mut self, port: u16, path: &str) {
        let client = super::http_client();
        let url = format!("http://127.0.0.1:{port}{path}");
        let what = format!("casegate answers {url}");
        let process = Mutex::new(self);
        eventually(&what, LIMIT, || async {
            {
                let mut process = process.lock().unwrap();
                assert!(
                    !process.exited(),
                    "casegate exited while starting: {}{}",
                    process.stdout(),
                    process.stderr()
                );
            }
            client
                .get(&url)
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false)
        })
        .await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    pub fn exited(&mut self) -> bool {
        self.child.try_wait().unwrap().is_some()
    }

    /// Waits (at most 20 s) for the process to exit by itself and for the end of both pipes:
    /// (status, stdout, stderr).
    pub async fn exit(mut self) -> (ExitStatus, String, String) {
        let Ok(status) = tokio::time::timeout(LIMIT, self.child.wait()).await else {
            panic!(
                "the process exits within 20 s; it printed:\n{}\n{}",
                self.stdout(),
                self.stderr()
            );
        };
        let status = status.unwrap();
        for pump in std::mem::take(&mut self.pumps) {
            pump.await.unwrap();
        }
        (status, self.stdout(), self.stderr())
    }

    /// SIGTERM, then waits for a successful exit: (stdout, stderr).
    pub async fn terminate(self) -> (String, String) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        let (status, stdout, stderr) = self.exit().await;
        assert!(status.success(), "exit {status:?}: {stderr}");
        (stdout, stderr)
    }

    /// SIGKILL, and waits until the process is gone.
    pub async fn kill9(mut self) {
        self.child.start_kill().unwrap();
        self.child.wait().await.unwrap();
    }
}

async fn pump(mut from: impl AsyncRead + Unpin, into: Arc<Mutex<Vec<u8>>>) {
    let mut chunk = [0u8; 8192];
    while let Ok(n) = from.read(&mut chunk).await {
        if n == 0 {
            break;
        }
        into.lock().unwrap().extend_from_slice(&chunk[..n]);
    }
}
