//! A real Redis Cluster for tests: three masters with one replica each, every node a
//! [`RedisServer`] on its own free loopback port (AOF on), joined with `redis-cli --cluster
//! create`. A short `cluster-node-timeout` makes a failover take about two seconds.
//!
//! The binaries are `$REDIS_SERVER` / `$REDIS_CLI`, else `redis-server` / `redis-cli` on the
//! `PATH`. Every node is killed when the value is dropped.

use std::process::Command;
use std::time::Duration;

use super::redis_server::RedisServer;
use super::wait::eventually;

/// Milliseconds without an answer before the cluster fails a node over.
const NODE_TIMEOUT_MS: &str = "1000";

pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts six nodes, creates the cluster and waits until every node reports it healthy.
    pub async fn start() -> RedisCluster {
        let mut nodes = Vec::new();
        for _ in 0..6 {
            nodes.push(
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    NODE_TIMEOUT_MS,
                    // A slot without master answers CLUSTERDOWN at once instead of queueing.
                    "--cluster-require-full-coverage",
                    "yes",
                ])
                .await,
            );
        }
        let cluster = RedisCluster { nodes };
        let addresses: Vec<String> = cluster
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let output = Command::new(cli())
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        cluster.wait_healthy(Duration::from_secs(20)).await;
        cluster
    }

    /// Seed URLs for `CASEGATE_BUFFER__REDIS_URL`: every node, comma-separated (the client
    /// discovers the topology from whichever answers).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Ports of the nodes now running.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.is_running())
            .map(|n| n.port())
            .collect()
    }

    /// Runs `redis-cli -p <port> <args>` and returns its output (empty when it failed).
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        Command::new(cli())
            .arg("-p")
            .arg(port.to_string())
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// Port of the master that owns `key`'s slot, as the running nodes see it.
    pub fn master_of(&self, key: &str) -> Option<u16> {
        let port = *self.ports().first()?;
        let slot: u16 = self
            .cli(port, &["cluster", "keyslot", key])
            .trim()
            .parse()
            .ok()?;
        self.masters()
            .into_iter()
            .find(|(_, ranges)| ranges.iter().any(|(a, b)| (*a..=*b).contains(&slot)))
            .map(|(port, _)| port)
    }

    /// Port of a running replica of the master on `master_port`.
    pub fn replica_of(&self, master_port: u16) -> Option<u16> {
        let id = self.node_id(master_port)?;
        self.ports().into_iter().find(|&port| {
            self.cli(port, &["cluster", "nodes"]).lines().any(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                f.len() > 3 && f[2].contains("myself") && f[2].contains("slave") && f[3] == id
            })
        })
    }

    /// SIGKILLs the node on `port` (no shutdown, no save).
    pub fn kill(&mut self, port: u16) {
        if let Some(node) = self.nodes.iter_mut().find(|n| n.port() == port) {
            node.stop();
        }
    }

    /// Starts the node on `port` again on its data (it rejoins; a failed-over master comes back
    /// as a replica of its successor).
    pub async fn revive(&mut self, port: u16) {
        if let Some(node) = self.nodes.iter_mut().find(|n| n.port() == port) {
            node.restart().await;
        }
    }

    /// SIGKILLs every node and starts them again on their data, then waits for health.
    pub async fn restart_all(&mut self) {
        for node in &mut self.nodes {
            node.stop();
        }
        for node in &mut self.nodes {
            node.restart().await;
        }
        self.wait_healthy(Duration::from_secs(30)).await;
    }

    /// Waits until every running node says `cluster_state:ok` and running masters cover all
    /// 16384 slots.
    pub async fn wait_healthy(&self, limit: Duration) {
        eventually("the cluster becomes healthy", limit, || async {
            let ports = self.ports();
            let all_ok = ports.iter().all(|&port| {
                self.cli(port, &["cluster", "info"])
                    .contains("cluster_state:ok")
            });
            let covered: u32 = self
                .masters()
                .iter()
                .flat_map(|(_, ranges)| ranges.iter().map(|(a, b)| u32::from(b - a) + 1))
                .sum();
            if all_ok && covered == 16384 {
                return Ok(());
            }
            // Each look runs redis-cli seven times: look about ten times a second.
            tokio::time::sleep(Duration::from_millis(75)).await;
            Err(self.cli(ports[0], &["cluster", "nodes"]))
        })
        .await;
    }

    /// Running masters that this node's view says serve slots, with their slot ranges.
    fn masters(&self) -> Vec<(u16, Vec<(u16, u16)>)> {
        let Some(&port) = self.ports().first() else {
            return Vec::new();
        };
        let running = self.ports();
        self.cli(port, &["cluster", "nodes"])
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                    return None;
                }
                let node_port: u16 = fields[1].split(['@', ':']).nth(1)?.parse().ok()?;
                if !running.contains(&node_port) {
                    return None;
                }
                let ranges = fields[8..]
                    .iter()
                    .filter(|r| !r.starts_with('['))
                    .filter_map(|r| match r.split_once('-') {
                        Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                        None => {
                            let s = r.parse().ok()?;
                            Some((s, s))
                        }
                    })
                    .collect();
                Some((node_port, ranges))
            })
            .collect()
    }

    fn node_id(&self, port: u16) -> Option<String> {
        let id = self.cli(port, &["cluster", "myid"]).trim().to_string();
        (!id.is_empty()).then_some(id)
    }

    /// Whether the node on `port` is a master now.
    pub fn is_master(&self, port: u16) -> bool {
        self.cli(port, &["info", "replication"])
            .contains("role:master")
    }
}

fn cli() -> std::ffi::OsString {
    std::env::var_os("REDIS_CLI").unwrap_or_else(|| "redis-cli".into())
}
