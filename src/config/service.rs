//! The service config file (`--config FILE`): server, store and logging
//! settings. Every setting has a default, so the file is optional; command-line
//! flags and `TOLLGATE_*` variables override it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;

use super::ConfigError;
use super::auth::{AuthConfig, HttpConfig, TlsConfig};
use super::yaml::from_str;
use crate::api::envoy::{EnvoyOptions, HeaderNames};
use crate::limiter::FailureMode;
use crate::store::SecretUrl;
use crate::usage::{Pricing, TierPrices, UsagePolicy};
use rust_decimal::Decimal;

/// The whole service config.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceConfig {
    pub server: ServerConfig,
    pub store: StoreConfig,
    pub envoy: EnvoyConfig,
    pub usage: UsageConfig,
    pub auth: AuthConfig,
    pub http: HttpConfig,
    pub log: LogConfig,
}

/// Usage metering: bounds on events and the pricing table.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct UsageConfig {
    /// How far in the future an event's timestamp may be.
    pub max_future_skew_ms: u64,
    /// How long usage (and the ids that make retries idempotent) is kept.
    pub retention_days: u32,
    /// ISO 4217 code the prices are in.
    pub currency: String,
    /// Prices by tier, as decimal strings ("0.002"); events name their tier,
    /// and unknown tiers are billed as `basic`.
    pub pricing: BTreeMap<String, TierPricesConfig>,
    /// Store usage durably in PostgreSQL (`TOLLGATE_POSTGRES_URL` overrides);
    /// without it usage is kept in memory. `?sslmode=require` connects over
    /// TLS and verifies the server's certificate.
    pub postgres_url: Option<SecretUrl>,
    /// PEM CA certificates to trust for PostgreSQL's TLS, besides the
    /// Mozilla roots (for a private CA); relative to this file.
    pub postgres_ca_file: Option<std::path::PathBuf>,
    /// Where usage lives: `memory`, `postgres` (the default when
    /// `postgres_url` is set) or `redis` (the `store.redis.shards`).
    pub store: Option<UsageBackend>,
    /// Per-call timeout of the Redis usage store. Longer than the counters'
    /// `store.redis.timeout_ms`: usage is written after the work, off the
    /// request's critical path, and a batch of events is many script calls.
    pub redis_timeout_ms: u64,
}

/// Where usage lives.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum UsageBackend {
    Memory,
    Postgres,
    Redis,
}

/// Unit prices of one tier, as decimal strings so they stay exact.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TierPricesConfig {
    pub base_fee: String,
    pub per_compute_unit: String,
    pub per_1k_tokens: String,
    pub per_gb_storage: String,
}

impl Default for UsageConfig {
    fn default() -> Self {
        let policy = UsagePolicy::default();
        let pricing = Pricing::default();
        Self {
            max_future_skew_ms: u64::try_from(policy.max_future_skew.as_millis())
                .unwrap_or(u64::MAX),
            retention_days: policy.retention_days,
            currency: pricing.currency,
            pricing: pricing
                .tiers
                .into_iter()
                .map(|(tier, p)| {
                    (
                        tier,
                        TierPricesConfig {
                            base_fee: p.base_fee.to_string(),
                            per_compute_unit: p.per_compute_unit.to_string(),
                            per_1k_tokens: p.per_1k_tokens.to_string(),
                            per_gb_storage: p.per_gb_storage.to_string(),
                        },
                    )
                })
                .collect(),
            postgres_url: None,
            postgres_ca_file: None,
            store: None,
            redis_timeout_ms: 1000,
        }
    }
}

impl UsageConfig {
    /// The policy and pricing this config describes.
    ///
    /// # Errors
    /// A price that is not a non-negative decimal number, naming it.
    pub fn parts(&self, path: &Path) -> Result<(UsagePolicy, Pricing), ConfigError> {
        let mut tiers = BTreeMap::new();
        for (tier, p) in &self.pricing {
            let price = |field: &str, text: &str| {
                let value = if text.is_empty() { "0" } else { text };
                match value.parse::<Decimal>() {
                    Ok(d) if !d.is_sign_negative() => Ok(d),
                    _ => Err(ConfigError::new(
                        path,
                        None,
                        format!(
                            "usage.pricing.{tier}.{field}: '{text}' is not a price (a decimal >= 0)"
                        ),
                    )),
                }
            };
            tiers.insert(
                tier.clone(),
                TierPrices {
                    base_fee: price("base_fee", &p.base_fee)?,
                    per_compute_unit: price("per_compute_unit", &p.per_compute_unit)?,
                    per_1k_tokens: price("per_1k_tokens", &p.per_1k_tokens)?,
                    per_gb_storage: price("per_gb_storage", &p.per_gb_storage)?,
                },
            );
        }
        Ok((
            UsagePolicy {
                max_future_skew: std::time::Duration::from_millis(self.max_future_skew_ms),
                retention_days: self.retention_days,
            },
            Pricing {
                currency: self.currency.clone(),
                tiers,
            },
        ))
    }
}

/// How `ShouldRateLimit` (the Envoy API) answers.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct EnvoyConfig {
    /// Answer OK overall even when over (the reference's `SHADOW_MODE`).
    pub shadow_mode: bool,
    pub response_headers: ResponseHeadersConfig,
}

/// `RateLimit-*` headers in Envoy responses (the reference's
/// `LIMIT_RESPONSE_HEADERS_ENABLED` and `LIMIT_*_HEADER`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ResponseHeadersConfig {
    pub enabled: bool,
    pub limit_header: String,
    pub remaining_header: String,
    pub reset_header: String,
}

impl Default for ResponseHeadersConfig {
    fn default() -> Self {
        let names = HeaderNames::default();
        Self {
            enabled: false,
            limit_header: names.limit,
            remaining_header: names.remaining,
            reset_header: names.reset,
        }
    }
}

impl From<&EnvoyConfig> for EnvoyOptions {
    fn from(c: &EnvoyConfig) -> Self {
        let h = &c.response_headers;
        EnvoyOptions {
            shadow_mode: c.shadow_mode,
            response_headers: h.enabled.then(|| HeaderNames {
                limit: h.limit_header.clone(),
                remaining: h.remaining_header.clone(),
                reset: h.reset_header.clone(),
            }),
        }
    }
}

/// The gRPC server.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Where gRPC listens.
    pub grpc_addr: SocketAddr,
    /// Where the HTTP API (usage, check, metrics, health) listens;
    /// `null` turns it off.
    pub http_addr: Option<SocketAddr>,
    /// Requests handled at once across all connections; beyond it requests
    /// are refused at once with RESOURCE_EXHAUSTED rather than queued.
    pub max_concurrent_requests: usize,
    /// How long in-flight calls may take to finish after a shutdown signal
    /// before the server stops anyway.
    pub shutdown_grace_ms: u64,
    /// How often the limits directory is re-read when files change
    /// (changes within this time are coalesced into one reload).
    pub reload_debounce_ms: u64,
    /// TLS (and mutual TLS) on the gRPC port; plaintext when unset.
    pub tls: Option<TlsConfig>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 8081)),
            http_addr: Some(SocketAddr::from(([127, 0, 0, 1], 8080))),
            max_concurrent_requests: 10_000,
            shutdown_grace_ms: 10_000,
            reload_debounce_ms: 200,
            tls: None,
        }
    }
}

/// Counter storage.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// What to answer when the store cannot: `fail_closed` (UNAVAILABLE) or
    /// `fail_open`. Limits files may override it per domain.
    pub failure_mode: FailureModeName,
    /// The embedded store, used when `redis` is not configured.
    pub memory: MemoryConfig,
    /// Redis: named shards or a cluster.
    pub redis: Option<RedisConfig>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            failure_mode: FailureModeName::FailClosed,
            memory: MemoryConfig::default(),
            redis: None,
        }
    }
}

impl StoreConfig {
    /// The failure mode in force: `store.redis.failure_mode` if given, else
    /// `store.failure_mode`.
    pub fn failure_mode(&self) -> FailureMode {
        self.redis
            .as_ref()
            .and_then(|r| r.failure_mode)
            .unwrap_or(self.failure_mode)
            .into()
    }
}

/// Redis counter storage: `shards` (regional instances, keys spread by a
/// consistent hash) or `cluster` (seed nodes of a Redis Cluster).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    pub shards: Vec<ShardConfig>,
    pub cluster: Vec<SecretUrl>,
    /// Per-call timeout; a shard that does not answer in time follows the
    /// failure mode.
    pub timeout_ms: u64,
    /// Overrides `store.failure_mode` (the spelling keeps it here).
    pub failure_mode: Option<FailureModeName>,
    /// Let concurrent requests for a shard share one script call under
    /// load (fewer Redis commands than decisions); `false` makes exactly
    /// one call per request and shard.
    pub coalesce: bool,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            shards: Vec::new(),
            cluster: Vec::new(),
            timeout_ms: 50,
            failure_mode: None,
            coalesce: true,
        }
    }
}

/// One named Redis instance. TLS (`rediss://`) and passwords go in the URL.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ShardConfig {
    pub name: String,
    pub url: SecretUrl,
}

/// The failure mode as written in the file.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum FailureModeName {
    #[default]
    FailClosed,
    FailOpen,
}

impl From<FailureModeName> for FailureMode {
    fn from(n: FailureModeName) -> Self {
        match n {
            FailureModeName::FailClosed => FailureMode::FailClosed,
            FailureModeName::FailOpen => FailureMode::FailOpen,
        }
    }
}

/// The embedded in-memory store.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryConfig {
    /// The most counters held at once (see the memory store's docs for what
    /// happens when it is full).
    pub max_keys: usize,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            max_keys: crate::store::memory::DEFAULT_MAX_KEYS,
        }
    }
}

/// Logging.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl ServiceConfig {
    /// Reads and checks a service config file.
    ///
    /// # Errors
    /// The file cannot be read, is not valid YAML, has an unknown field or a
    /// value out of range; the error names the line.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(path, None, format!("cannot read: {e}")))?;
        Self::parse(path, &text)
    }

    /// Parses the text of a service config file.
    ///
    /// # Errors
    /// As [`ServiceConfig::load`].
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        let config: ServiceConfig = from_str(path, text)?;
        if config.server.max_concurrent_requests == 0 {
            return Err(ConfigError::new(
                path,
                None,
                "server.max_concurrent_requests must be at least 1",
            ));
        }
        let h = &config.envoy.response_headers;
        for (field, name) in [
            ("limit_header", &h.limit_header),
            ("remaining_header", &h.remaining_header),
            ("reset_header", &h.reset_header),
        ] {
            if tonic::metadata::MetadataKey::<tonic::metadata::Ascii>::from_bytes(name.as_bytes())
                .is_err()
            {
                return Err(ConfigError::new(
                    path,
                    None,
                    format!(
                        "envoy.response_headers.{field}: '{name}' is not a valid HTTP header name"
                    ),
                ));
            }
        }
        if let Some(redis) = &config.store.redis {
            match (redis.shards.is_empty(), redis.cluster.is_empty()) {
                (true, true) => {
                    return Err(ConfigError::new(
                        path,
                        None,
                        "store.redis needs either shards or cluster",
                    ));
                }
                (false, false) => {
                    return Err(ConfigError::new(
                        path,
                        None,
                        "store.redis takes shards or cluster, not both",
                    ));
                }
                _ => {}
            }
            if redis.timeout_ms == 0 {
                return Err(ConfigError::new(
                    path,
                    None,
                    "store.redis.timeout_ms must be at least 1",
                ));
            }
            let mut names: Vec<&str> = redis.shards.iter().map(|s| s.name.as_str()).collect();
            names.sort_unstable();
            if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
                return Err(ConfigError::new(
                    path,
                    None,
                    format!("store.redis.shards: duplicate name '{}'", w[0]),
                ));
            }
            if names.iter().any(|n| n.is_empty()) {
                return Err(ConfigError::new(
                    path,
                    None,
                    "store.redis.shards: every shard needs a name",
                ));
            }
        }
        config.usage.parts(path)?;
        match config.usage.store {
            Some(UsageBackend::Postgres) if config.usage.postgres_url.is_none() => {
                // TOLLGATE_POSTGRES_URL may still supply it; checked at start.
            }
            Some(UsageBackend::Redis)
                if config
                    .store
                    .redis
                    .as_ref()
                    .is_none_or(|r| r.shards.is_empty()) =>
            {
                return Err(ConfigError::new(
                    path,
                    None,
                    "usage.store: redis needs store.redis.shards (usage is routed by user over the same shards)",
                ));
            }
            _ => {}
        }
        if config.usage.retention_days == 0 {
            return Err(ConfigError::new(
                path,
                None,
                "usage.retention_days must be at least 1",
            ));
        }
        if config.store.memory.max_keys == 0 {
            return Err(ConfigError::new(
                path,
                None,
                "store.memory.max_keys must be at least 1",
            ));
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pricing_is_read_exactly_and_bad_prices_are_named() {
        let p = Path::new("tollgate.yaml");
        let c = ServiceConfig::parse(
            p,
            "usage:\n  pricing:\n    gold: { base_fee: \"99.99\", per_1k_tokens: \"0.0015\" }\n",
        )
        .unwrap_or_default();
        let (_, pricing) = c.usage.parts(p).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(pricing.tiers["gold"].base_fee.to_string(), "99.99");
        assert_eq!(pricing.tiers["gold"].per_1k_tokens.to_string(), "0.0015");
        let e = ServiceConfig::parse(p, "usage:\n  pricing:\n    gold: { base_fee: \"ten\" }\n")
            .map_err(|e| e.problem);
        assert_eq!(
            e,
            Err("usage.pricing.gold.base_fee: 'ten' is not a price (a decimal >= 0)".to_string())
        );
    }

    #[test]
    fn redis_shards_and_their_checks() {
        let p = Path::new("tollgate.yaml");
        let text = "store:\n  redis:\n    shards:\n      - { name: us-east, url: \"redis://127.0.0.1:6379/0\" }\n      - { name: eu-west, url: \"rediss://user:pass@host:6380/0\" }\n    timeout_ms: 25\n    failure_mode: fail_open\n";
        let c = ServiceConfig::parse(p, text).unwrap_or_default();
        let redis = c.store.redis.clone().unwrap_or_default();
        assert_eq!(redis.shards.len(), 2);
        assert_eq!(redis.timeout_ms, 25);
        assert_eq!(c.store.failure_mode(), FailureMode::FailOpen);
        assert!(
            !format!("{c:?}").contains("pass@"),
            "no password in Debug output"
        );

        let both = "store:\n  redis:\n    shards: [{ name: a, url: \"redis://h/0\" }]\n    cluster: [\"redis://h:7000\"]\n";
        assert!(ServiceConfig::parse(p, both).is_err());
        let dup = "store:\n  redis:\n    shards: [{ name: a, url: \"redis://h/0\" }, { name: a, url: \"redis://i/0\" }]\n";
        let e = ServiceConfig::parse(p, dup).map_err(|e| e.problem);
        assert_eq!(e, Err("store.redis.shards: duplicate name 'a'".to_string()));
    }

    #[test]
    fn defaults_and_overrides() {
        let p = Path::new("tollgate.yaml");
        assert_eq!(ServiceConfig::parse(p, ""), Ok(ServiceConfig::default()));
        let c = ServiceConfig::parse(
            p,
            "server:\n  grpc_addr: 127.0.0.1:9000\nstore:\n  failure_mode: fail_open\n  memory:\n    max_keys: 5\nlog:\n  format: json\n",
        );
        let c = c.unwrap_or_default();
        assert_eq!(c.server.grpc_addr.port(), 9000);
        assert_eq!(c.store.failure_mode, FailureModeName::FailOpen);
        assert_eq!(c.store.memory.max_keys, 5);
        assert_eq!(c.log.format, LogFormat::Json);
    }

    #[test]
    fn unknown_fields_and_bad_values_name_the_line() {
        let p = Path::new("tollgate.yaml");
        let e = ServiceConfig::parse(p, "server:\n  grpc_adr: x\n").map_err(|e| e.to_string());
        assert!(
            e.as_ref()
                .is_err_and(|e| e.starts_with("tollgate.yaml:2: Unknown field `grpc_adr`")),
            "{e:?}"
        );
        let e = ServiceConfig::parse(p, "store:\n  failure_mode: maybe\n").map_err(|e| e.line);
        assert_eq!(e, Err(Some(2)));
    }
}
