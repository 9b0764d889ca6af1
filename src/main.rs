//! The `tollgate` binary: flags → config → tracing → bind → `server::run`.

#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tollgate::auth::{ApiKeys, JwtVerifier};
use tollgate::config::auth::JWT_SECRET_ENV;
use tollgate::config::{
    LimitsWatcher, LogFormat, ServiceConfig, UsageBackend, limits_files, load_limits_dir,
};
use tollgate::limiter::RateLimiter;
use tollgate::server::{self, ServerOptions};
use tollgate::store::{CounterStore, MemoryStore, RedisClusterStore, RedisStore, SecretUrl};
use tollgate::usage::{MemoryUsageStore, PostgresUsageStore, RedisUsageStore, Usage, UsageStore};
use tracing_subscriber::EnvFilter;

// Every request allocates (HTTP/2 frames, protobuf messages, counter keys);
// profiles under load showed glibc malloc/free at ~20% of the server's time.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Rate-limit decisions and usage metering over gRPC; a drop-in Envoy rate-limit service.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve gRPC on the limits in a directory, reloading them when they change.
    Serve(ServeArgs),
    /// Check a limits directory (and service config); print every problem.
    Validate(ConfigArgs),
}

#[derive(Debug, Args)]
struct ConfigArgs {
    /// Directory of limits files (envoyproxy/ratelimit YAML format).
    #[arg(long, env = "TOLLGATE_LIMITS")]
    limits: PathBuf,
    /// Service config file (YAML); without it the embedded defaults apply.
    #[arg(long, env = "TOLLGATE_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct ServeArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// gRPC listen address [default: 127.0.0.1:8081, or server.grpc_addr in the config].
    #[arg(long, env = "TOLLGATE_GRPC_ADDR")]
    grpc_addr: Option<SocketAddr>,
    /// HTTP API listen address, or `off` [default: 127.0.0.1:8080, or server.http_addr in the config].
    #[arg(long, env = "TOLLGATE_HTTP_ADDR")]
    http_addr: Option<Listen>,
    /// PostgreSQL URL for durable usage [default: usage.postgres_url in the config, else in memory].
    #[arg(long, env = "TOLLGATE_POSTGRES_URL", hide_env_values = true)]
    postgres_url: Option<String>,
    /// Log format [default: text, or log.format in the config].
    #[arg(long, env = "TOLLGATE_LOG_FORMAT", value_enum)]
    log_format: Option<LogFormat>,
    /// Runtime worker threads; 1 runs a single-threaded runtime [default: one per core].
    #[arg(long, env = "TOLLGATE_WORKER_THREADS")]
    worker_threads: Option<usize>,
    /// Benchmark baseline: answer every call OK without checking anything.
    #[arg(long)]
    noop: bool,
}

/// A listen address, or `off`.
#[derive(Debug, Clone, Copy)]
enum Listen {
    Off,
    At(SocketAddr),
}

impl std::str::FromStr for Listen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("off") {
            return Ok(Listen::Off);
        }
        s.parse()
            .map(Listen::At)
            .map_err(|_| format!("'{s}' is not an address like 127.0.0.1:8080, or off"))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate(args) => validate(&args),
        Command::Serve(args) => match serve(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tollgate: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn load_service_config(
    path: Option<&Path>,
) -> Result<ServiceConfig, tollgate::config::ConfigError> {
    path.map_or_else(|| Ok(ServiceConfig::default()), ServiceConfig::load)
}

fn validate(args: &ConfigArgs) -> ExitCode {
    let mut failed = false;
    match load_service_config(args.config.as_deref()) {
        Ok(config) => {
            if let Err(e) = Auth::load(&config, args.config.as_deref()) {
                eprintln!("{e}");
                failed = true;
            }
        }
        Err(e) => {
            eprintln!("{e}");
            failed = true;
        }
    }
    match load_limits_dir(&args.limits) {
        Ok(limits) => {
            let files = limits_files(&args.limits).map(|f| f.len()).unwrap_or(0);
            if !failed {
                println!(
                    "ok: {} domain(s) in {} file(s): {}",
                    limits.len(),
                    files,
                    limits.domain_names().join(", ")
                );
            }
        }
        Err(errors) => {
            eprintln!("{errors}");
            failed = true;
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = load_service_config(args.config.config.as_deref())?;
    // One TLS provider for every rustls user (rediss:// connections).
    let _ = rustls::crypto::ring::default_provider().install_default();
    init_tracing(args.log_format.unwrap_or(config.log.format));
    let runtime = match args.worker_threads {
        Some(1) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n.max(1))
            .enable_all()
            .build(),
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
    }
    .context("starting the async runtime")?;
    runtime.block_on(serve_async(args, config))
}

async fn serve_async(args: ServeArgs, config: ServiceConfig) -> anyhow::Result<()> {
    let limits_dir = args.config.limits;
    let limits =
        load_limits_dir(&limits_dir).map_err(|e| anyhow::anyhow!("invalid limits:\n{e}"))?;
    tracing::info!(dir = %limits_dir.display(), domains = ?limits.domain_names(), "limits loaded");

    let auth = Auth::load(&config, args.config.config.as_deref())?;
    let store = build_store(&config).await?;
    let (policy, pricing) = config.usage.parts(
        args.config
            .config
            .as_deref()
            .unwrap_or(Path::new("(defaults)")),
    )?;
    let postgres = args
        .postgres_url
        .clone()
        .map(SecretUrl::new)
        .or(config.usage.postgres_url.clone());
    let backend = config.usage.store.unwrap_or(if postgres.is_some() {
        UsageBackend::Postgres
    } else {
        UsageBackend::Memory
    });
    let usage_store: Arc<dyn UsageStore> = match (backend, postgres) {
        (UsageBackend::Postgres, Some(url)) => {
            let ca = match &config.usage.postgres_ca_file {
                Some(file) => {
                    let path = match args.config.config.as_deref().and_then(Path::parent) {
                        Some(dir) if file.is_relative() => dir.join(file),
                        _ => file.clone(),
                    };
                    Some(std::fs::read(&path).with_context(|| {
                        format!("usage.postgres_ca_file: reading {}", path.display())
                    })?)
                }
                None => None,
            };
            Arc::new(PostgresUsageStore::connect_with_ca(url, ca.as_deref()).await?)
        }
        (UsageBackend::Postgres, None) => {
            anyhow::bail!(
                "usage.store is postgres but no usage.postgres_url or TOLLGATE_POSTGRES_URL is set"
            )
        }
        (UsageBackend::Redis, _) => {
            let redis = config.store.redis.clone().unwrap_or_default();
            let shards = redis
                .shards
                .iter()
                .map(|s| (s.name.clone(), s.url.clone()))
                .collect();
            Arc::new(RedisUsageStore::new(
                shards,
                Duration::from_millis(config.usage.redis_timeout_ms.max(1)),
                policy.retention_days,
            )?)
        }
        (UsageBackend::Memory, _) => Arc::new(MemoryUsageStore::new(policy.retention_days)),
    };
    tracing::info!(usage_store = usage_store.name(), "usage metering ready");
    let usage = Usage::new(usage_store, policy, pricing);
    let store_name = store.name();
    let limiter = RateLimiter::new(limits, store, config.store.failure_mode());

    let grpc_addr = args.grpc_addr.unwrap_or(config.server.grpc_addr);
    let listener = tokio::net::TcpListener::bind(grpc_addr)
        .await
        .with_context(|| format!("binding gRPC to {grpc_addr}"))?;
    let bound = listener.local_addr().context("reading the bound address")?;
    let http_addr = match args.http_addr {
        Some(Listen::Off) => None,
        Some(Listen::At(addr)) => Some(addr),
        None => config.server.http_addr,
    };
    let http_listener = match http_addr {
        None => None,
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding HTTP to {addr}"))?;
            tracing::info!(http_addr = %l.local_addr().context("reading the bound address")?, "HTTP listening");
            Some(l)
        }
    };
    tracing::info!(grpc_addr = %bound, store = store_name, "listening");

    let shutdown = CancellationToken::new();
    let watcher = LimitsWatcher::spawn(
        limits_dir.clone(),
        limiter.clone(),
        Duration::from_millis(config.server.reload_debounce_ms),
        shutdown.clone(),
    )
    .with_context(|| format!("watching {}", limits_dir.display()))?;

    let options = ServerOptions {
        max_concurrent_requests: config.server.max_concurrent_requests,
        shutdown_grace: Duration::from_millis(config.server.shutdown_grace_ms),
        envoy: (&config.envoy).into(),
        noop: args.noop,
        usage,
        jwt: auth.jwt.map(Arc::new),
        api_keys: auth.api_keys.map(Arc::new),
        tls: auth.tls,
        http_requests_per_minute: config.http.requests_per_minute,
    };
    let signal = {
        let shutdown = shutdown.clone();
        async move {
            shutdown_signal().await;
            shutdown.cancel();
        }
    };
    let result = server::run_with_http(listener, http_listener, limiter, options, signal).await;
    shutdown.cancel();
    watcher.join().await;
    result.context("serving")
}

/// Who may call, from the config's `auth` and `server.tls`.
struct Auth {
    jwt: Option<JwtVerifier>,
    api_keys: Option<ApiKeys>,
    tls: Option<tonic::transport::ServerTlsConfig>,
}

impl Auth {
    fn load(
        config: &ServiceConfig,
        path: Option<&Path>,
    ) -> Result<Self, tollgate::config::ConfigError> {
        let path = path.unwrap_or(Path::new("(defaults)"));
        let auth = Self {
            jwt: config
                .auth
                .jwt_verifier(path, std::env::var(JWT_SECRET_ENV).ok())?,
            api_keys: config.auth.api_keys(path, |v| std::env::var(v).ok())?,
            tls: match &config.server.tls {
                Some(t) => Some(t.server_tls(path)?),
                None => None,
            },
        };
        if auth.api_keys.is_some() && auth.tls.is_none() {
            tracing::warn!(
                "API keys are configured without server.tls: keys cross the network in clear text"
            );
        }
        Ok(auth)
    }
}

/// The counter store the config asks for: Redis shards, a Redis Cluster, or
/// the embedded memory store.
async fn build_store(config: &ServiceConfig) -> anyhow::Result<Arc<dyn CounterStore>> {
    let Some(redis) = &config.store.redis else {
        return Ok(Arc::new(MemoryStore::new(config.store.memory.max_keys)));
    };
    let timeout = Duration::from_millis(redis.timeout_ms);
    if redis.cluster.is_empty() {
        let shards = redis
            .shards
            .iter()
            .map(|s| (s.name.clone(), s.url.clone()))
            .collect();
        Ok(Arc::new(
            RedisStore::connect_with(shards, timeout, redis.coalesce).await?,
        ))
    } else {
        Ok(Arc::new(
            RedisClusterStore::connect(redis.cluster.clone(), timeout).await?,
        ))
    }
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the server");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
