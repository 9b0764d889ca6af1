//! Tollgate: rate-limit decisions and usage metering over gRPC, and a drop-in
//! Envoy rate-limit service.
//!
//! # Layout
//!
//! - [`algorithm`]: fixed window, sliding window and token bucket (GCRA) as
//!   pure functions of `(state, rate, now, hits)`.
//! - [`limits`]: limit definitions, descriptor → rule matching
//!   (envoyproxy/ratelimit's rules) and counter keys.
//! - [`config`]: the limits directory (YAML), the service config file,
//!   validation with file and line, hot reload.
//! - [`store`]: the [`store::CounterStore`] trait and its backends (the
//!   embedded [`store::MemoryStore`]).
//! - [`limiter`]: [`limiter::RateLimiter`], which ties limits and store
//!   together; knows nothing of any wire protocol.
//! - [`request`]: the domain's request and answer types and their validation.
//! - [`api`]: the edges; [`api::grpc`] serves `tollgate.v1`.
//! - [`server`]: wiring, health, reflection, load shedding, graceful shutdown.
//! - [`usage`]: usage metering: events counted once per id, daily
//!   aggregates, summaries and bills ([`usage::UsageStore`]).
//! - [`stats`]: decision counts per rule and domain, as envoyproxy/ratelimit
//!   keeps them.
//! - [`metrics`]: Prometheus exposition of everything counted.
//! - [`auth`]: JWT bearer tokens (HTTP) and API keys and TLS (gRPC).
//! - [`clock`]: wall-clock time behind a trait that tests control.
//! - [`ring`]: rendezvous hashing of counter keys onto named shards.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod algorithm;
pub mod api;
pub mod auth;
pub mod clock;
pub mod config;
pub mod limiter;
pub mod limits;
pub mod metrics;
pub mod request;
pub mod ring;
pub mod server;
pub mod stats;
pub mod store;
pub mod usage;
