//! The connection to Redis: one server (`redis`) or a Redis Cluster (`redis-cluster`).
//!
//! Both are one auto-reconnecting multiplexed connection per server, made lazily so casegate
//! starts while Redis is down. The cluster client follows `MOVED`/`ASK` redirections and
//! re-reads the slot map after a failover or resharding on its own; every key casegate uses
//! carries one hash tag, so every script and command lands on the one master owning that slot.
//!
//! Commands without a key (`WAIT`, `PING`) are routed by hand to the master owning the
//! deployment's slot: `WAIT` only means something on the connection that did the writes, and a
//! readiness `PING` should not fail because an unrelated shard is down.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, FromRedisValue, Pipeline, RedisFuture, RedisResult, Value};

use super::BufferError;

/// Which protocol the configured URL speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// One server (or a primary behind a failover proxy): one URL.
    Single,
    /// Redis Cluster: comma-separated seed URLs; the rest of the cluster is discovered.
    Cluster,
}

/// A cheap-to-clone handle on the shared connection.
#[derive(Clone)]
pub enum RedisConn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl RedisConn {
    /// Prepares the connection without waiting for it; fails only for a malformed URL (the error
    /// never repeats the URL, which may hold a password).
    pub fn open(
        topology: Topology,
        url: &str,
        op_timeout: Duration,
    ) -> Result<RedisConn, BufferError> {
        let invalid = || {
            BufferError::Unavailable("invalid redis url (not shown: it may hold a password)".into())
        };
        match topology {
            Topology::Single => {
                let client = redis::Client::open(url).map_err(|_| invalid())?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(op_timeout))
                    .set_response_timeout(Some(op_timeout))
                    .set_number_of_retries(1)
                    .set_min_delay(Duration::from_millis(50))
                    .set_max_delay(Duration::from_secs(1));
                let conn =
                    ConnectionManager::new_lazy_with_config(client, config).map_err(|e| {
                        BufferError::Unavailable(format!(
                            "redis connection setup failed: {:?}",
                            e.kind()
                        ))
                    })?;
                Ok(RedisConn::Single(conn))
            }
            Topology::Cluster => {
                let seeds: Vec<&str> = url
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .collect();
                if seeds.is_empty() {
                    return Err(invalid());
                }
                // Retries cover a redirection or a refreshed slot map; the operation timeout
                // bounds the whole, so a failover in progress answers 503, never a hang.
                let client = ClusterClientBuilder::new(seeds)
                    .connection_timeout(op_timeout)
                    .response_timeout(op_timeout)
                    .retries(4)
                    .min_retry_wait(50)
                    .max_retry_wait(500)
                    .build()
                    .map_err(|_| invalid())?;
                let config = redis::cluster::ClusterConfig::new()
                    .set_connection_timeout(op_timeout)
                    .set_response_timeout(op_timeout);
                Ok(RedisConn::Cluster(
                    client.get_pending_async_connection_with_config(config),
                ))
            }
        }
    }

    /// Runs a keyless command on the master that owns `slot_key`'s slot (any command on a
    /// single server).
    pub async fn on_slot_master<T: FromRedisValue>(
        &mut self,
        cmd: Cmd,
        slot_key: &str,
    ) -> RedisResult<T> {
        match self {
            RedisConn::Single(conn) => cmd.query_async(conn).await,
            RedisConn::Cluster(conn) => {
                let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(
                    Route::with_key(slot_key, SlotAddr::Master),
                ));
                let value = conn.route_command(cmd, route).await?;
                redis::from_redis_value(value).map_err(Into::into)
            }
        }
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(conn) => conn.req_packed_command(cmd),
            RedisConn::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Single(conn) => conn.req_packed_commands(cmd, offset, count),
            RedisConn::Cluster(conn) => conn.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(conn) => conn.get_db(),
            RedisConn::Cluster(conn) => conn.get_db(),
        }
    }
}
