//! Usage in Redis: the design guide's daily counters per user, day and
//! category and per metric, on the same shards as the rate-limit counters.
//!
//! Keys are routed by *user* through the consistent hash, so one user's
//! aggregates live on one shard and a summary is one shard's business. Each
//! event is one Lua script that marks its id and adds its counts atomically.
//! Ids, days and tiers expire after the retention.
//!
//! Idempotency is per user and id: the mark lives with the user's data, so a
//! retry (always the same user) is recognised; two different users reusing
//! one id are counted separately.

use std::fmt;
use std::sync::LazyLock;
use std::time::Duration;

use chrono::NaiveDate;
use futures_util::future::join_all;
use redis::Script;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::event::UsageEvent;
use super::store::{DayUsage, Recorded, UsageError, UsageStore};
use crate::ring::Ring;
use crate::store::{SecretUrl, StoreFuture};

static TRACK: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("usage.lua")));

struct Shard {
    name: String,
    client: redis::Client,
    conn: tokio::sync::OnceCell<ConnectionManager>,
}

/// Usage counters on Redis shards.
pub struct RedisUsageStore {
    shards: Vec<Shard>,
    ring: Ring,
    timeout: Duration,
    ttl_seconds: u64,
}

impl fmt::Debug for RedisUsageStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisUsageStore")
            .field(
                "shards",
                &self.shards.iter().map(|s| &s.name).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// The per-user key prefix: a hash of the user id in braces, a Redis Cluster
/// hash tag that keeps one user's keys in one slot whatever the id contains.
fn user_prefix(user: &str) -> String {
    format!(
        "tgu:{{{:016x}}}:",
        xxhash_rust::xxh3::xxh3_64(user.as_bytes())
    )
}

fn unavailable(shard: &str, e: impl fmt::Display) -> UsageError {
    UsageError::Unavailable(format!("redis shard {shard}: {e}"))
}

impl RedisUsageStore {
    /// Usage on `shards` (the counter store's), kept `retention_days`.
    /// Connections open on first use, so a shard that is down at start only
    /// affects its users.
    ///
    /// # Errors
    /// Invalid shard names or URLs.
    pub fn new(
        shards: Vec<(String, SecretUrl)>,
        timeout: Duration,
        retention_days: u32,
    ) -> Result<Self, UsageError> {
        let ring = Ring::new(shards.iter().map(|(n, _)| n.clone()))
            .map_err(|e| UsageError::Unavailable(format!("redis usage shards: {e}")))?;
        let shards = shards
            .into_iter()
            .map(|(name, url)| {
                let client =
                    redis::Client::open(url.expose()).map_err(|e| unavailable(&name, e))?;
                Ok(Shard {
                    name,
                    client,
                    conn: tokio::sync::OnceCell::new(),
                })
            })
            .collect::<Result<_, UsageError>>()?;
        Ok(Self {
            shards,
            ring,
            timeout,
            ttl_seconds: u64::from(retention_days) * 86_400,
        })
    }

    fn shard(&self, user: &str) -> &Shard {
        &self.shards[self.ring.shard_for(user.as_bytes())]
    }

    async fn conn(&self, shard: &Shard) -> Result<ConnectionManager, UsageError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        let conn = tokio::time::timeout(
            self.timeout * 4,
            shard.conn.get_or_try_init(|| {
                ConnectionManager::new_with_config(shard.client.clone(), config)
            }),
        )
        .await
        .map_err(|_| unavailable(&shard.name, "connection timed out"))?
        .map_err(|e| unavailable(&shard.name, e))?;
        Ok(conn.clone())
    }

    async fn record_one(&self, e: &UsageEvent) -> Result<Recorded, UsageError> {
        let shard = self.shard(&e.user_id);
        let mut conn = self.conn(shard).await?;
        let prefix = user_prefix(&e.user_id);
        let mut call = TRACK.prepare_invoke();
        call.key(format!("{prefix}id:{}", e.usage_id))
            .key(format!("{prefix}day:{}", e.day().format("%Y-%m-%d")))
            .key(format!("{prefix}tier"))
            .arg(self.ttl_seconds)
            .arg(&e.category)
            .arg(e.timestamp_micros)
            .arg(e.tier_or_default());
        for (name, value) in &e.metrics {
            call.arg(name).arg(*value);
        }
        let counted: i64 = tokio::time::timeout(self.timeout, call.invoke_async(&mut conn))
            .await
            .map_err(|_| unavailable(&shard.name, "no answer in time"))?
            .map_err(|e| unavailable(&shard.name, e))?;
        Ok(if counted == 1 {
            Recorded::Accepted
        } else {
            Recorded::Duplicate
        })
    }
}

impl UsageStore for RedisUsageStore {
    fn record<'a>(
        &'a self,
        events: &'a [UsageEvent],
    ) -> StoreFuture<'a, Result<Vec<Recorded>, UsageError>> {
        // Each event is atomic on its own; concurrent calls share each
        // shard's multiplexed connection (pipelined). If one fails the call
        // fails, and the caller's retry with the same ids counts the others
        // as duplicates: nothing is counted twice.
        Box::pin(async move {
            join_all(events.iter().map(|e| self.record_one(e)))
                .await
                .into_iter()
                .collect()
        })
    }

    fn daily<'a>(
        &'a self,
        user_id: &'a str,
        from: NaiveDate,
        to: NaiveDate,
    ) -> StoreFuture<'a, Result<Vec<DayUsage>, UsageError>> {
        Box::pin(async move {
            let shard = self.shard(user_id);
            let conn = self.conn(shard).await?;
            let prefix = user_prefix(user_id);
            let dates: Vec<NaiveDate> = from.iter_days().take_while(|d| *d <= to).collect();
            let reads = dates.iter().map(|date| {
                let mut conn = conn.clone();
                let key = format!("{prefix}day:{}", date.format("%Y-%m-%d"));
                async move {
                    tokio::time::timeout(
                        self.timeout,
                        redis::cmd("HGETALL")
                            .arg(key)
                            .query_async::<Vec<(String, String)>>(&mut conn),
                    )
                    .await
                }
            });
            let mut days = Vec::new();
            for (date, fields) in dates.iter().zip(join_all(reads).await) {
                let fields = fields
                    .map_err(|_| unavailable(&shard.name, "no answer in time"))?
                    .map_err(|e| unavailable(&shard.name, e))?;
                if fields.is_empty() {
                    continue;
                }
                let mut day = DayUsage {
                    date: *date,
                    ..Default::default()
                };
                for (field, value) in fields {
                    if let Some(category) = field.strip_prefix("c:") {
                        day.by_category
                            .insert(category.to_string(), value.parse().unwrap_or(0));
                    } else if let Some(metric) = field.strip_prefix("m:") {
                        day.metrics
                            .insert(metric.to_string(), value.parse().unwrap_or(0.0));
                    }
                }
                days.push(day);
            }
            Ok(days)
        })
    }

    fn tier<'a>(&'a self, user_id: &'a str) -> StoreFuture<'a, Result<Option<String>, UsageError>> {
        Box::pin(async move {
            let shard = self.shard(user_id);
            let mut conn = self.conn(shard).await?;
            let key = format!("{}tier", user_prefix(user_id));
            tokio::time::timeout(
                self.timeout,
                redis::cmd("HGET")
                    .arg(key)
                    .arg("tier")
                    .query_async::<Option<String>>(&mut conn),
            )
            .await
            .map_err(|_| unavailable(&shard.name, "no answer in time"))?
            .map_err(|e| unavailable(&shard.name, e))
        })
    }

    fn name(&self) -> &'static str {
        "redis"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_users_keys_share_one_hash_tag_whatever_the_id_holds() {
        let p = user_prefix("we}ird{user");
        assert!(p.starts_with("tgu:{") && p.ends_with("}:"));
        assert_eq!(p.len(), "tgu:{0123456789abcdef}:".len());
        assert_ne!(user_prefix("a"), user_prefix("b"));
    }
}
