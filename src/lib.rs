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
//! - [`pb`]: the generated protobuf and gRPC code, shared by both sides.
//! - [`client`]: the client side (feature `client`): a retrying gRPC
//!   [`client::Client`], the [`client::UsageBatcher`] and a tower layer that
//!   rate-limits and meters HTTP and gRPC services.
//!
//! # Features
//!
//! - `server` (default): everything above except [`client`], and the binaries.
//! - `client` (default): [`client`] and [`pb`] only; it needs none of the
//!   server's dependencies (Redis, PostgreSQL, axum).

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

#[cfg(feature = "server")]
pub mod algorithm;
#[cfg(feature = "server")]
pub mod api;
#[cfg(feature = "server")]
pub mod auth;
#[cfg(feature = "client")]
pub mod client;
#[cfg(feature = "server")]
pub mod clock;
#[cfg(feature = "server")]
pub mod config;
#[cfg(feature = "server")]
pub mod limiter;
#[cfg(feature = "server")]
pub mod limits;
#[cfg(feature = "server")]
pub mod metrics;
#[allow(
    clippy::all,
    clippy::pedantic,
    missing_docs,
    missing_debug_implementations
)]
#[cfg(any(feature = "server", feature = "client"))]
pub mod pb;
#[cfg(feature = "server")]
pub mod request;
#[cfg(feature = "server")]
pub mod ring;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod stats;
#[cfg(feature = "server")]
pub mod store;
#[cfg(feature = "server")]
pub mod usage;
