//! Counters on a Redis Cluster, through redis-rs's cluster client (slot
//! routing, MOVED/ASK redirects, topology refresh after a failover).
//!
//! Each counter is one key and the script touches only that key, so no
//! cross-slot problem arises and no hash tag is needed; a request's counters
//! are sent concurrently over the cluster connection (pipelined per node).

use std::fmt;
use std::time::Duration;

use futures_util::future::join_all;
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;

use super::{SecretUrl, script};
use crate::algorithm::Outcome;
use crate::store::{CounterStore, CounterUpdate, StoreError, StoreFuture};

/// Counters on a Redis Cluster.
pub struct RedisClusterStore {
    conn: ClusterConnection,
    nodes: Vec<SecretUrl>,
    timeout: Duration,
}

impl fmt::Debug for RedisClusterStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisClusterStore")
            .field("nodes", &self.nodes)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl RedisClusterStore {
    /// Connects to the cluster through any of `nodes`.
    ///
    /// # Errors
    /// [`StoreError::Config`] for invalid URLs, [`StoreError::Unavailable`]
    /// when no node answers.
    pub async fn connect(nodes: Vec<SecretUrl>, timeout: Duration) -> Result<Self, StoreError> {
        let client = ClusterClientBuilder::new(
            nodes
                .iter()
                .map(|u| u.expose().to_string())
                .collect::<Vec<_>>(),
        )
        .connection_timeout(timeout)
        .response_timeout(timeout)
        .build()
        .map_err(|e| StoreError::Config(format!("redis cluster: {e}")))?;
        let conn = tokio::time::timeout(timeout * 20, client.get_async_connection())
            .await
            .map_err(|_| StoreError::Unavailable("redis cluster: no node answered".into()))?
            .map_err(|e| StoreError::Unavailable(format!("redis cluster: {e}")))?;
        tracing::info!(nodes = ?nodes, "connected to redis cluster");
        Ok(Self {
            conn,
            nodes,
            timeout,
        })
    }

    async fn apply_one(&self, u: &CounterUpdate) -> Result<Outcome, StoreError> {
        let mut conn = self.conn.clone();
        let invocation = script::invocation(&[u]);
        match tokio::time::timeout(self.timeout, invocation.invoke_async::<Vec<u8>>(&mut conn))
            .await
        {
            Ok(Ok(values)) => script::outcomes(&values, 1)?
                .pop()
                .ok_or_else(|| StoreError::Unavailable("redis cluster: empty answer".into())),
            Ok(Err(e)) => Err(StoreError::Unavailable(format!("redis cluster: {e}"))),
            Err(_) => Err(StoreError::Unavailable(format!(
                "redis cluster: no answer within {:?}",
                self.timeout
            ))),
        }
    }
}

impl CounterStore for RedisClusterStore {
    fn apply<'a>(
        &'a self,
        updates: &'a [CounterUpdate],
    ) -> StoreFuture<'a, Result<Vec<Outcome>, StoreError>> {
        Box::pin(async move {
            join_all(updates.iter().map(|u| self.apply_one(u)))
                .await
                .into_iter()
                .collect()
        })
    }

    fn name(&self) -> &'static str {
        "redis-cluster"
    }
}
