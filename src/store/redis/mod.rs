//! Redis counter storage: several named instances ("shards", e.g. one per
//! region) with keys spread by the consistent hash in [`crate::ring`], or a
//! Redis Cluster ([`RedisClusterStore`]).
//!
//! Every decision runs in one Lua script ([`script`]) that reads, decides
//! and writes atomically with the Redis server's clock, so any number of
//! tollgate replicas sharing the shards count exactly. A request's counters
//! are grouped by shard: one round trip per shard, shards in parallel, over
//! one multiplexed (pipelined) connection per shard.
//!
//! Failure: every call has a timeout; a shard that fails
//! [`breaker::FAILURES_TO_OPEN`] times in a row is skipped at once until the
//! store's maintenance (every second) gets a PING through. Errors are
//! transient, so the limiter applies the configured failure mode. A dead
//! shard affects only the requests that have a counter on it.

mod breaker;
mod cluster;
mod coalesce;
mod script;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use futures_util::future::join_all;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

pub use cluster::RedisClusterStore;

use self::breaker::Breaker;
use self::coalesce::Coalescer;
use super::{CounterStore, CounterUpdate, ShardStats, StoreError, StoreFuture};
use crate::algorithm::Outcome;
use crate::ring::Ring;

/// A Redis URL whose password never reaches logs or `Debug` output.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct SecretUrl(String);

impl SecretUrl {
    /// Wraps a URL.
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The URL itself, for connecting only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with any password replaced by `***`.
    pub fn redacted(&self) -> String {
        let Some((scheme, rest)) = self.0.split_once("://") else {
            return self.0.clone();
        };
        match rest.rsplit_once('@') {
            Some((userinfo, host)) => {
                let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
                if userinfo.contains(':') || !user.is_empty() {
                    format!(
                        "{scheme}://{}***@{host}",
                        if user.is_empty() {
                            String::new()
                        } else {
                            format!("{user}:")
                        }
                    )
                } else {
                    self.0.clone()
                }
            }
            None => self.0.clone(),
        }
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

struct Shard {
    name: String,
    url: SecretUrl,
    client: redis::Client,
    // None until the first connection succeeds; afterwards the manager
    // reconnects by itself.
    conn: ArcSwapOption<ConnectionManager>,
    breaker: Breaker,
    calls: AtomicU64,
    errors: AtomicU64,
}

impl fmt::Debug for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shard")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("connected", &self.conn.load().is_some())
            .field("breaker", &self.breaker)
            .finish()
    }
}

/// Counters on named Redis instances, keys spread by a consistent hash.
#[derive(Debug)]
pub struct RedisStore {
    shards: Vec<Arc<Shard>>,
    ring: Ring,
    timeout: Duration,
    /// One per shard when concurrent requests share calls ([`coalesce`]).
    coalescers: Option<Vec<Coalescer>>,
}

impl RedisStore {
    /// Connects to every shard (concurrently, each within `timeout`). A shard
    /// that cannot be reached does not stop the start: it is marked down and
    /// retried every second, and its keys follow the failure mode meanwhile.
    ///
    /// # Errors
    /// [`StoreError::Config`] for an empty list, duplicate names or an invalid URL.
    pub async fn connect(
        shards: Vec<(String, SecretUrl)>,
        timeout: Duration,
    ) -> Result<Self, StoreError> {
        Self::connect_with(shards, timeout, true).await
    }

    /// [`RedisStore::connect`], choosing whether concurrent requests may
    /// share script calls (`coalesce`; see [`coalesce`]). Without it every
    /// request makes its own call: exactly one Redis command per decision.
    ///
    /// # Errors
    /// As [`RedisStore::connect`].
    pub async fn connect_with(
        shards: Vec<(String, SecretUrl)>,
        timeout: Duration,
        coalesce: bool,
    ) -> Result<Self, StoreError> {
        let ring = Ring::new(shards.iter().map(|(name, _)| name.clone()))
            .map_err(|e| StoreError::Config(format!("redis shards: {e}")))?;
        let shards = shards
            .into_iter()
            .map(|(name, url)| {
                let client = redis::Client::open(url.expose())
                    .map_err(|e| StoreError::Config(format!("redis shard {name} ({url}): {e}")))?;
                Ok(Arc::new(Shard {
                    name,
                    url,
                    client,
                    conn: ArcSwapOption::empty(),
                    breaker: Breaker::default(),
                    calls: AtomicU64::new(0),
                    errors: AtomicU64::new(0),
                }))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let coalescers = coalesce.then(|| {
            shards
                .iter()
                .map(|s| Coalescer::spawn(Arc::clone(s), timeout))
                .collect()
        });
        let store = Self {
            shards,
            ring,
            timeout,
            coalescers,
        };
        join_all(store.shards.iter().map(|s| store.reconnect(s))).await;
        Ok(store)
    }

    /// The shard names, in configuration order.
    pub fn shard_names(&self) -> impl Iterator<Item = &str> {
        self.shards.iter().map(|s| s.name.as_str())
    }

    /// The shard a counter key lives on.
    pub fn shard_of(&self, key: &str) -> &str {
        &self.shards[self.ring.shard_for(key.as_bytes())].name
    }

    async fn reconnect(&self, shard: &Shard) -> bool {
        if let Some(conn) = shard.conn.load_full() {
            let mut conn = (*conn).clone();
            let ping = tokio::time::timeout(
                self.timeout,
                redis::cmd("PING").query_async::<String>(&mut conn),
            )
            .await;
            return match ping {
                Ok(Ok(_)) => {
                    if !shard.breaker.is_closed() {
                        tracing::info!(shard = %shard.name, "redis shard answers again");
                    }
                    shard.breaker.success();
                    true
                }
                _ => false,
            };
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let connected = tokio::time::timeout(
            self.timeout * 4,
            ConnectionManager::new_with_config(shard.client.clone(), config),
        )
        .await;
        match connected {
            Ok(Ok(conn)) => {
                shard.conn.store(Some(Arc::new(conn)));
                shard.breaker.success();
                tracing::info!(shard = %shard.name, url = %shard.url, "connected to redis shard");
                true
            }
            Ok(Err(e)) => {
                tracing::warn!(shard = %shard.name, url = %shard.url, error = %e, "redis shard unreachable; retrying every second");
                false
            }
            Err(_) => {
                tracing::warn!(shard = %shard.name, url = %shard.url, "redis shard connection timed out; retrying every second");
                false
            }
        }
    }

    /// Decides `updates` (all on shard `i`), sharing a call with concurrent
    /// requests when coalescing.
    async fn apply_on_shard(
        &self,
        i: usize,
        updates: &[&CounterUpdate],
    ) -> Result<Vec<Outcome>, StoreError> {
        let shard = &self.shards[i];
        match &self.coalescers {
            Some(c) => {
                let owned = updates.iter().map(|u| (*u).clone()).collect();
                c[i].apply(shard, owned, self.timeout).await
            }
            None => shard.call(self.timeout, updates).await,
        }
    }
}

impl Shard {
    /// One script call for `updates`, counted for metrics.
    async fn call(
        &self,
        timeout: Duration,
        updates: &[&CounterUpdate],
    ) -> Result<Vec<Outcome>, StoreError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let result = self.call_script(timeout, updates).await;
        if result.is_err() {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    async fn call_script(
        &self,
        timeout: Duration,
        updates: &[&CounterUpdate],
    ) -> Result<Vec<Outcome>, StoreError> {
        let shard = self;
        if !shard.breaker.is_closed() {
            return Err(StoreError::Unavailable(format!(
                "redis shard {} is down",
                shard.name
            )));
        }
        let Some(conn) = shard.conn.load_full() else {
            return Err(StoreError::Unavailable(format!(
                "redis shard {} is not connected",
                shard.name
            )));
        };
        let mut conn = (*conn).clone();
        let invocation = script::invocation(updates);
        let reply =
            tokio::time::timeout(timeout, invocation.invoke_async::<Vec<u8>>(&mut conn)).await;
        let error = match reply {
            Ok(Ok(values)) => {
                shard.breaker.success();
                return script::outcomes(&values, updates.len());
            }
            Ok(Err(e)) => format!("redis shard {}: {e}", shard.name),
            Err(_) => format!("redis shard {}: no answer within {:?}", shard.name, timeout),
        };
        if shard.breaker.failure() {
            tracing::warn!(shard = %shard.name, error = %error, "redis shard keeps failing; skipping it until it answers");
        }
        Err(StoreError::Unavailable(error))
    }
}

impl CounterStore for RedisStore {
    fn apply<'a>(
        &'a self,
        updates: &'a [CounterUpdate],
    ) -> StoreFuture<'a, Result<Vec<Outcome>, StoreError>> {
        Box::pin(async move {
            if self.shards.len() == 1 {
                let all: Vec<&CounterUpdate> = updates.iter().collect();
                return self.apply_on_shard(0, &all).await;
            }
            // Group by shard, keeping each update's position for the answer.
            let mut groups: Vec<(Vec<usize>, Vec<&CounterUpdate>)> =
                vec![(Vec::new(), Vec::new()); self.shards.len()];
            for (i, u) in updates.iter().enumerate() {
                let shard = self.ring.shard_for(u.key.as_bytes());
                groups[shard].0.push(i);
                groups[shard].1.push(u);
            }
            let calls = groups
                .iter()
                .enumerate()
                .filter(|(_, (positions, _))| !positions.is_empty())
                .map(|(shard, (positions, group))| async move {
                    (positions, self.apply_on_shard(shard, group).await)
                });
            let mut outcomes = vec![Outcome::default(); updates.len()];
            for (positions, result) in join_all(calls).await {
                for (&i, outcome) in positions.iter().zip(result?) {
                    outcomes[i] = outcome;
                }
            }
            Ok(outcomes)
        })
    }

    fn maintain(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let down = self
                .shards
                .iter()
                .filter(|s| !s.breaker.is_closed() || s.conn.load().is_none());
            join_all(down.map(|s| self.reconnect(s))).await;
        })
    }

    fn name(&self) -> &'static str {
        "redis"
    }

    fn is_healthy(&self) -> bool {
        self.shards
            .iter()
            .all(|s| s.breaker.is_closed() && s.conn.load().is_some())
    }

    fn shard_stats(&self) -> Vec<ShardStats> {
        self.shards
            .iter()
            .map(|s| ShardStats {
                shard: s.name.clone(),
                calls: s.calls.load(Ordering::Relaxed),
                errors: s.errors.load(Ordering::Relaxed),
                up: s.breaker.is_closed() && s.conn.load().is_some(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_debug_or_display() {
        let url = SecretUrl::new("rediss://user:s3cret@host:6380/0");
        assert_eq!(format!("{url:?}"), "rediss://user:***@host:6380/0");
        assert_eq!(url.to_string(), "rediss://user:***@host:6380/0");
        assert_eq!(
            SecretUrl::new("redis://:pw@h:1/0").redacted(),
            "redis://***@h:1/0"
        );
        assert_eq!(
            SecretUrl::new("redis://127.0.0.1:6379/0").redacted(),
            "redis://127.0.0.1:6379/0"
        );
        assert!(!format!("{:?}", SecretUrl::new("redis://a:b@c")).contains('b'));
    }
}
