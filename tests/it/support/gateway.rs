//! Starts the real gateway (`casegate::run_with_clock`) on port 0 with its own mappings and
//! buffer, and signs requests the way each provider would.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use casegate::buffer::{Buffer, BufferedCase};
use casegate::config::{Config, Overrides};
use casegate::env::Env;
use casegate::inbound::{Headers, InboundRequest};
use casegate::mapping::CompiledMapping;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::wait::eventually;

/// A queue id every test mapping can use.
pub const QUEUE: &str = "4f9c3c1e-5b0a-4c8e-9d51-2a7f0e6b1c3d";

pub enum Backend {
    Embedded,
    Redis(String),
}

pub struct GatewayOptions {
    pub backend: Backend,
    /// (file name, YAML) pairs written to the gateway's mapping directory.
    pub mappings: Vec<(String, String)>,
    /// Extra CASEGATE_* settings.
    pub settings: Vec<(String, String)>,
    /// The gateway's clock; the real one when `None`.
    pub now: Option<SystemTime>,
}

impl GatewayOptions {
    pub fn embedded(mappings: &[(&str, &str)]) -> Self {
        GatewayOptions {
            backend: Backend::Embedded,
            mappings: mappings
                .iter()
                .map(|(n, y)| (n.to_string(), y.to_string()))
                .collect(),
            settings: Vec::new(),
            now: None,
        }
    }

    pub fn setting(mut self, key: &str, value: &str) -> Self {
        self.settings.push((key.into(), value.into()));
        self
    }
}

pub struct TestGateway {
    pub base_url: String,
    pub dir: tempfile::TempDir,
    pub config: Config,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), casegate::RunError>>>,
    client: reqwest::Client,
}

pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub headers: reqwest::header::HeaderMap,
}

impl TestGateway {
    pub async fn start(options: GatewayOptions) -> TestGateway {
        Self::start_in(options, tempfile::tempdir().unwrap()).await
    }

    /// Starts on an existing directory (a restart keeps the embedded buffer file).
    pub async fn start_in(options: GatewayOptions, dir: tempfile::TempDir) -> TestGateway {
        let mappings = dir.path().join("mappings");
        std::fs::create_dir_all(&mappings).unwrap();
        for (name, yaml) in &options.mappings {
            std::fs::write(mappings.join(name), yaml).unwrap();
        }
        let mut env = vec![
            (
                "CASEGATE_BUFFER__PATH".to_string(),
                dir.path().join("buffer.redb").display().to_string(),
            ),
            ("CASEGATE_INGRESS__WORKERS".to_string(), "2".to_string()),
            // Replicas in one test process share a host name: each gets its own consumer.
            (
                "CASEGATE_DELIVERY__CONSUMER".to_string(),
                format!("gateway-{:016x}", rand::random::<u64>()),
            ),
        ];
        if let Backend::Redis(url) = &options.backend {
            env.push(("CASEGATE_BUFFER__BACKEND".into(), "redis".into()));
            env.push(("CASEGATE_BUFFER__REDIS_URL".into(), url.clone()));
            env.push(("CASEGATE_BUFFER__OP_TIMEOUT_MS".into(), "500".into()));
        }
        env.extend(options.settings.iter().cloned());
        let overrides = Overrides {
            listen: Some("127.0.0.1:0".into()),
            mappings: Some(mappings),
            ..Overrides::default()
        };
        let config = Config::load(None, &Env::from_pairs(env), &overrides).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let clock: casegate::ingest::Clock = match options.now {
            Some(now) => Arc::new(move || now),
            None => casegate::ingest::system_clock(),
        };
        let task = tokio::spawn(casegate::run_with_clock(
            config.clone(),
            listener,
            async move {
                let _ = rx.await;
            },
            clock,
        ));
        let mut gateway = TestGateway {
            base_url,
            dir,
            config,
            shutdown: Some(tx),
            task: Some(task),
            client: super::http_client(),
        };
        gateway.wait_until_serving().await;
        gateway
    }

    async fn wait_until_serving(&mut self) {
        let serving = eventually("the gateway serves", Duration::from_secs(10), || async {
            if self.task.as_ref().is_some_and(|t| t.is_finished()) {
                return Some(false);
            }
            let health = self
                .client
                .get(format!("{}/healthz", self.base_url))
                .send()
                .await;
            health
                .is_ok_and(|r| r.status().is_success())
                .then_some(true)
        })
        .await;
        if !serving {
            let result = self.task.take().unwrap().await.unwrap();
            panic!("gateway stopped while starting: {result:?}");
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// Sends a webhook as-is.
    pub async fn post(&self, source: &str, headers: &Headers, body: impl Into<Bytes>) -> Answer {
        let mut request = self
            .client
            .post(self.url(&format!("/hooks/{source}")))
            .body(body.into());
        for (name, value) in headers.iter() {
            request = request.header(name, value);
        }
        answer(request.send().await.unwrap()).await
    }

    /// Signs `body` with `mapping_yaml`'s verifier at `now`, then sends it as JSON.
    pub async fn post_signed(
        &self,
        source: &str,
        mapping_yaml: &str,
        body: &str,
        now: SystemTime,
    ) -> Answer {
        let headers = sign(
            mapping_yaml,
            &self.url(&format!("/hooks/{source}")),
            body,
            Headers::new(),
            now,
        );
        self.post(source, &headers, body.to_string()).await
    }

    /// Posts `body()` to `source` until the gateway answers `status` (a store or a replica coming
    /// back), for at most `within`; returns that answer.
    pub async fn post_until(
        &self,
        status: u16,
        within: Duration,
        source: &str,
        headers: &Headers,
        body: impl Fn() -> String,
    ) -> Answer {
        let what = format!("{source} answers {status}");
        eventually(&what, within, || async {
            let answer = self.post(source, headers, body()).await;
            if answer.status == status {
                Ok(answer)
            } else {
                Err(format!("{} {}", answer.status, answer.body))
            }
        })
        .await
    }

    pub async fn get(&self, path: &str) -> Answer {
        answer(self.client.get(self.url(path)).send().await.unwrap()).await
    }

    /// Stops gracefully and returns the directory (for restarts and buffer inspection).
    pub async fn stop(mut self) -> tempfile::TempDir {
        self.shutdown.take().unwrap().send(()).unwrap();
        self.task.take().unwrap().await.unwrap().unwrap();
        // actix drops its workers' app state (and with it the buffer handle) just after the
        // server future ends; wait until the embedded file is free again.
        if self.config.buffer.backend == casegate::config::BufferBackendKind::Embedded {
            let path = self.config.buffer.path.clone();
            eventually(
                "the buffer is closed after stop",
                Duration::from_secs(5),
                || async { casegate::buffer::EmbeddedBuffer::open(&path).map(drop) },
            )
            .await;
        }
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

async fn answer(response: reqwest::Response) -> Answer {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.unwrap();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    Answer {
        status,
        body,
        headers,
    }
}

/// The headers a provider configured like `mapping_yaml` would send with `body` to `url`.
pub fn sign(
    mapping_yaml: &str,
    url: &str,
    body: &str,
    headers: Headers,
    now: SystemTime,
) -> Headers {
    sign_in(&Env::default(), mapping_yaml, url, body, headers, now)
}

/// [`sign`], with `${VAR}`s in `mapping_yaml` resolved from `env`.
pub fn sign_in(
    env: &Env,
    mapping_yaml: &str,
    url: &str,
    body: &str,
    mut headers: Headers,
    now: SystemTime,
) -> Headers {
    let mapping = CompiledMapping::compile(Path::new("signer.yaml"), mapping_yaml, env).unwrap();
    if headers.get("content-type").is_none() {
        headers.insert("content-type", "application/json");
    }
    let mut request = InboundRequest {
        method: "POST".into(),
        url: url.into(),
        headers,
        body: Bytes::from(body.to_string()),
    };
    mapping.verifier.sign(&mut request, now);
    request.headers
}

/// Every case in `buffer`, claimed by a test consumer.
pub async fn drain(buffer: &Buffer) -> Vec<BufferedCase> {
    let mut all = Vec::new();
    for queue in buffer.queues().await.unwrap() {
        loop {
            let batch = buffer.claim(&queue, "test-drain", 100).await.unwrap();
            if batch.is_empty() {
                break;
            }
            all.extend(batch);
        }
    }
    all
}

/// Opens the embedded buffer a stopped gateway left in `dir`.
pub fn embedded_buffer(dir: &Path) -> Buffer {
    Buffer::Embedded(
        casegate::buffer::EmbeddedBuffer::open(&PathBuf::from(dir).join("buffer.redb")).unwrap(),
    )
}
