//! Counter storage: one trait, [`CounterStore`], that every backend implements.
//!
//! A store takes a batch of counter updates, applies each atomically per key
//! with the algorithm it names, and returns each counter's [`Outcome`]. The
//! decision is made inside the store (in Redis, inside a Lua script) because
//! only there can "read, decide, write" be atomic across tollgate replicas.

pub mod memory;
pub mod redis;

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;

use crate::algorithm::{Algorithm, Charge, Outcome, Rate};

pub use memory::MemoryStore;
pub use redis::{RedisClusterStore, RedisStore, SecretUrl};

/// A boxed future, so the trait stays object-safe (`Arc<dyn CounterStore>`).
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One counter to decide and (unless `dry_run`) update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterUpdate {
    pub key: String,
    pub algorithm: Algorithm,
    pub rate: Rate,
    pub hits: u64,
    pub charge: Charge,
    /// Decide only; leave the stored state untouched.
    pub dry_run: bool,
    /// `Some(taken_at)`: instead of deciding, give back `hits` that an
    /// earlier update admitted at `taken_at` (the outcome's
    /// `decided_at_micros`). Used when another counter of the same request
    /// refused it, so a refused request costs nothing. The outcome of a
    /// refund is meaningless.
    pub refund_of: Option<u64>,
}

/// Why a store could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The memory store holds its maximum number of keys and the update
    /// needs a new one.
    #[error(
        "counter store is full ({max_keys} keys); new counters are refused until old ones expire"
    )]
    Full { max_keys: usize },
    /// The backend did not answer or answered with an error.
    #[error("counter store unavailable: {0}")]
    Unavailable(String),
    /// The store is configured wrongly (bad URL, bad shard list).
    #[error("counter store misconfigured: {0}")]
    Config(String),
}

impl StoreError {
    /// Whether the same call may succeed later. Transient errors follow the
    /// configured failure mode (fail open or closed); others are internal errors.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Full { .. } | StoreError::Unavailable(_) => true,
            StoreError::Config(_) => false,
        }
    }
}

/// Counter storage shared by every request of a tollgate process.
pub trait CounterStore: Send + Sync + Debug + 'static {
    /// Decides and applies `updates`, each atomically per key, and returns one
    /// outcome per update in the same order.
    ///
    /// # Errors
    /// [`StoreError`] if the store cannot answer; some updates of the batch
    /// may then have been applied.
    fn apply<'a>(
        &'a self,
        updates: &'a [CounterUpdate],
    ) -> StoreFuture<'a, Result<Vec<Outcome>, StoreError>>;

    /// Housekeeping the server runs periodically (evicting expired counters).
    fn maintain(&self) -> StoreFuture<'_, ()> {
        Box::pin(async {})
    }

    /// A short name for logs and metrics.
    fn name(&self) -> &'static str;

    /// Whether every part of the store answers (for readiness). A sharded
    /// store is unhealthy while any shard is down, even though requests for
    /// the other shards' keys are still served.
    fn is_healthy(&self) -> bool {
        true
    }

    /// Calls and failures per part of the store (per Redis shard), for
    /// metrics. Empty for a store with nothing to report.
    fn shard_stats(&self) -> Vec<ShardStats> {
        Vec::new()
    }
}

/// One store part's counts since start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardStats {
    pub shard: String,
    /// Calls made (one per request and shard).
    pub calls: u64,
    /// Calls that failed or timed out, or were skipped while the shard was down.
    pub errors: u64,
    /// Whether the shard is in use: connected and its circuit breaker closed.
    pub up: bool,
}
