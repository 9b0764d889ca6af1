//! Usage metering: every unit a user consumed, counted exactly once per
//! `usage_id`, summarised per UTC day and category, and priced into a bill.
//!
//! - [`event`]: the event model and its validation;
//! - [`store`]: the [`UsageStore`] trait (record idempotently, read daily
//!   aggregates) and [`MemoryUsageStore`], the embedded default;
//! - [`postgres`]: [`PostgresUsageStore`], durable, with group commit;
//! - [`redis`]: [`RedisUsageStore`], daily counters on the Redis shards;
//! - [`report`]: summaries and billing (exact money, half-even cents);
//! - [`service`]: [`Usage`], the handle the API edges call.
//!
//! Knows nothing of gRPC or HTTP.

pub mod event;
pub mod postgres;
pub mod redis;
pub mod report;
pub mod service;
pub mod store;

pub use event::{UsageEvent, UsagePolicy};
pub use postgres::PostgresUsageStore;
pub use redis::RedisUsageStore;
pub use report::{Bill, Pricing, TierPrices, UsageSummary};
pub use service::{MAX_BATCH, MAX_DAYS, TrackOutcome, Usage, UsageCallError, UsageStats};
pub use store::{DayUsage, MemoryUsageStore, Recorded, UsageError, UsageStore};
