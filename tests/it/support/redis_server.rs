//! A real `redis-server` for tests, never the machine's own Redis: its own free loopback port and
//! its own data directory with AOF on, so a test can kill it and bring it back on the same port
//! with its data. It may require a password. The process is killed when the value is dropped.
//!
//! The binary is `$REDIS_SERVER`, else `redis-server` on the `PATH`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a starting server may take to answer `PING`.
const START_TIMEOUT: Duration = Duration::from_secs(10);

pub struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Extra `redis-server` arguments (a cluster node's), kept for restarts.
    extra: Vec<String>,
    /// The password clients must give (`--requirepass`), if any.
    password: Option<String>,
}

impl RedisServer {
    /// Starts a server on a free port with an empty data directory and waits until it answers.
    pub async fn start() -> RedisServer {
        RedisServer::start_with(&[]).await
    }

    /// [`Self::start`] with extra `redis-server` arguments.
    pub async fn start_with(extra: &[&str]) -> RedisServer {
        RedisServer::start_inner(extra, None).await
    }

    /// [`Self::start`], requiring `password` from clients ([`Self::url`] carries it).
    pub async fn start_with_password(password: &str) -> RedisServer {
        RedisServer::start_inner(&[], Some(password)).await
    }

    async fn start_inner(extra: &[&str], password: Option<&str>) -> RedisServer {
        let mut last_error = String::new();
        // Another process may take the free port between our probe and the server's bind.
        for _ in 0..5 {
            let mut server = RedisServer {
                port: super::free_port(),
                dir: tempfile::tempdir().expect("temp dir for redis"),
                child: None,
                extra: extra.iter().map(|a| a.to_string()).collect(),
                password: password.map(str::to_string),
            };
            match server.spawn_and_wait().await {
                Ok(()) => return server,
                Err(e) => last_error = e,
            }
        }
        panic!("redis-server did not start: {last_error}");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection for the test's own commands, patient enough for large setup pipelines
    /// (the server fsyncs every write: `appendfsync always`).
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        connect(&self.url()).await
    }

    pub fn url(&self) -> String {
        match &self.password {
            Some(password) => format!("redis://:{password}@127.0.0.1:{}/", self.port),
            None => format!("redis://127.0.0.1:{}/", self.port),
        }
    }

    /// Kills the server with SIGKILL (no shutdown save; only the AOF keeps data) and waits until
    /// the process is gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open but nothing answers, like a network
    /// partition. [`Self::thaw`] resumes it.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("redis-server is not running");
        let status = Command::new("kill")
            .arg(signal)
            .arg(child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} failed");
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the server if it runs, then starts it again on the same port and data directory.
    pub async fn restart(&mut self) {
        self.stop();
        let mut last_error = String::new();
        for _ in 0..20 {
            match self.spawn_and_wait().await {
                Ok(()) => return,
                Err(e) => last_error = e,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "redis-server did not restart on port {}: {last_error}",
            self.port
        );
    }

    async fn spawn_and_wait(&mut self) -> Result<(), String> {
        let binary = std::env::var_os("REDIS_SERVER").unwrap_or_else(|| "redis-server".into());
        let log = self.dir.path().join("redis.log");
        let mut child = Command::new(&binary)
            .arg("--port")
            .arg(self.port.to_string())
            .args([
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                // As the README asks for: with `everysec`, a busy disk lets Redis answer before
                // it writes the AOF, and a SIGKILL then loses acknowledged writes.
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--daemonize",
                "no",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log)
            .args(&self.extra)
            .args(
                self.password
                    .iter()
                    .flat_map(|p| ["--requirepass", p.as_str()]),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", binary.to_string_lossy()))?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                return Err(format!("exited with {status}: {}", tail.join(" | ")));
            }
            if answers_ping(self.port, self.password.clone()).await {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err("no answer to PING".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// True once the server answers `+PONG` (not `-LOADING` while it replays the AOF).
async fn answers_ping(port: u16, password: Option<String>) -> bool {
    tokio::task::spawn_blocking(move || {
        let limit = Duration::from_millis(500);
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        let Ok(mut stream) = TcpStream::connect_timeout(&address, limit) else {
            return false;
        };
        let mut reply = [0u8; 7];
        let mut authenticated = [0u8; 5];
        let authenticated = match password {
            Some(password) => {
                stream.set_read_timeout(Some(limit)).is_ok()
                    && stream
                        .write_all(format!("AUTH {password}\r\n").as_bytes())
                        .is_ok()
                    && stream.read_exact(&mut authenticated).is_ok()
                    && &authenticated == b"+OK\r\n"
            }
            None => true,
        };
        authenticated
            && stream.set_read_timeout(Some(limit)).is_ok()
            && stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    })
    .await
    .unwrap_or(false)
}

/// A connection to `url` for a test's own commands: a generous response timeout, since a setup
/// pipeline of thousands of writes on a loaded machine takes longer than the client's default.
pub async fn connect(url: &str) -> redis::aio::MultiplexedConnection {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(10)))
        .set_response_timeout(Some(Duration::from_secs(60)));
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .unwrap()
}
