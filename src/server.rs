//! Wiring: the gRPC services on one listener, health, reflection, load
//! shedding, store housekeeping and graceful shutdown.
//!
//! Shutdown order: health turns NOT_SERVING, the listener stops accepting,
//! in-flight calls finish (up to the grace period), then background tasks
//! are cancelled and joined.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Server, ServerTlsConfig};
use tonic_health::ServingStatus;
use tower::limit::GlobalConcurrencyLimitLayer;

use crate::api::envoy::{EnvoyOptions, EnvoyRlsService};
use crate::api::grpc::TollgateService;
use crate::api::http::self_limit::SelfLimit;
use crate::api::http::{HttpAuth, HttpState};
use crate::api::noop::NoopService;
use crate::api::pb;
use crate::auth::{ApiKeys, JwtVerifier};
use crate::limiter::RateLimiter;
use crate::metrics::Metrics;
use crate::usage::Usage;

type TollgateServer = pb::tollgate::v1::rate_limiter_server::RateLimiterServer<TollgateService>;
type EnvoyServer =
    pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer<
        EnvoyRlsService,
    >;

/// How often expired counters are evicted.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(1);

/// Server settings that are not part of the domain.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Requests in flight across all connections before new ones are shed
    /// with RESOURCE_EXHAUSTED.
    pub max_concurrent_requests: usize,
    /// How long in-flight calls may run on after shutdown starts.
    pub shutdown_grace: Duration,
    /// How the Envoy RLS API answers.
    pub envoy: EnvoyOptions,
    /// Serve the benchmark baseline ([`crate::api::noop`]) instead of the
    /// real services: same stack, no work.
    pub noop: bool,
    /// Usage metering behind the usage RPCs.
    pub usage: Usage,
    /// Bearer tokens for the HTTP usage API (open with `?user_id=` without).
    pub jwt: Option<Arc<JwtVerifier>>,
    /// API keys required on gRPC calls (and `POST /v1/check`); open without.
    pub api_keys: Option<Arc<ApiKeys>>,
    /// TLS, or mutual TLS, on the gRPC port.
    pub tls: Option<ServerTlsConfig>,
    /// Requests per minute and user on the HTTP usage API; 0 = no limit.
    pub http_requests_per_minute: u32,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            max_concurrent_requests: 10_000,
            shutdown_grace: Duration::from_secs(10),
            envoy: EnvoyOptions::default(),
            noop: false,
            usage: Usage::default(),
            jwt: None,
            api_keys: None,
            tls: None,
            http_requests_per_minute: 600,
        }
    }
}

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves gRPC on `listener` until `shutdown` completes, then drains.
///
/// # Errors
/// When the server cannot be built or the listener fails.
pub async fn run(
    listener: TcpListener,
    limiter: RateLimiter,
    options: ServerOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    run_with_http(listener, None, limiter, options, shutdown).await
}

/// [`run`], plus the HTTP routes of [`crate::api::http`] on `http` when
/// given. HTTP keeps answering (`/readyz` with 503) until the gRPC drain is
/// over, so orchestrators see the shutdown.
///
/// # Errors
/// When the server cannot be built or a listener fails.
pub async fn run_with_http(
    listener: TcpListener,
    http: Option<TcpListener>,
    limiter: RateLimiter,
    options: ServerOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<TollgateServer>().await;
    health.set_serving::<EnvoyServer>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;

    let tasks = TaskTracker::new();
    let stop_tasks = CancellationToken::new();
    tasks.spawn(maintenance(
        limiter.clone(),
        health.clone(),
        stop_tasks.clone(),
    ));
    let http_draining = Arc::new(AtomicBool::new(false));
    let metrics = Metrics::new(&limiter, &options.usage);
    if let Some(http) = http {
        let app = crate::api::http::router(HttpState {
            limiter: limiter.clone(),
            usage: options.usage.clone(),
            metrics: metrics.clone(),
            auth: HttpAuth {
                jwt: options.jwt.clone(),
                api_keys: options.api_keys.clone(),
            },
            self_limit: (options.http_requests_per_minute > 0).then(|| {
                SelfLimit::new(
                    Arc::clone(limiter.store()),
                    options.http_requests_per_minute,
                )
            }),
            draining: http_draining.clone(),
        });
        let stop = stop_tasks.clone();
        tasks.spawn(async move {
            let served = axum::serve(http, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "HTTP server failed");
            }
        });
    }

    let draining = CancellationToken::new();
    let signal = {
        let draining = draining.clone();
        let health = health.clone();
        let http_draining = http_draining.clone();
        async move {
            shutdown.await;
            http_draining.store(true, Ordering::Release);
            tracing::info!("shutting down: health NOT_SERVING, draining in-flight calls");
            health
                .set_service_status("", ServingStatus::NotServing)
                .await;
            health
                .set_not_serving::<pb::tollgate::v1::rate_limiter_server::RateLimiterServer<TollgateService>>()
                .await;
            draining.cancel();
        }
    };

    let mut builder = Server::builder();
    if let Some(tls) = options.tls {
        builder = builder.tls_config(tls)?;
    }
    let mut router = builder
        .load_shed(true)
        .layer(metrics.grpc_layer())
        .layer(crate::auth::api_keys::layer(options.api_keys))
        .layer(GlobalConcurrencyLimitLayer::new(
            options.max_concurrent_requests,
        ))
        .add_service(health_service)
        .add_service(reflection);
    router = if options.noop {
        tracing::warn!("--noop: answering OK without checking any limit (benchmark baseline)");
        router
            .add_service(pb::tollgate::v1::rate_limiter_server::RateLimiterServer::new(NoopService))
            .add_service(
                pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer::new(NoopService),
            )
    } else {
        router
            .add_service(TollgateService::new(limiter.clone(), options.usage).into_server())
            .add_service(EnvoyRlsService::new(limiter, options.envoy).into_server())
    };
    let serve = router
        .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), signal);
    tokio::pin!(serve);

    let result = tokio::select! {
        r = &mut serve => r.map_err(ServerError::from),
        () = async {
            draining.cancelled().await;
            tokio::time::sleep(options.shutdown_grace).await;
        } => {
            tracing::warn!(grace = ?options.shutdown_grace, "calls still in flight after the grace period; stopping anyway");
            Ok(())
        }
    };

    stop_tasks.cancel();
    tasks.close();
    tasks.wait().await;
    tracing::info!("stopped");
    result
}

/// The health-service name that reports whether the counter store answers
/// (every Redis shard reachable): a readiness check for the store.
pub const STORE_HEALTH_SERVICE: &str = "tollgate.store";

async fn maintenance(
    limiter: RateLimiter,
    health: tonic_health::server::HealthReporter,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(MAINTENANCE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut healthy = None;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {
                let store = limiter.store();
                store.maintain().await;
                let now = store.is_healthy();
                if healthy != Some(now) {
                    let status = if now { ServingStatus::Serving } else { ServingStatus::NotServing };
                    health.set_service_status(STORE_HEALTH_SERVICE, status).await;
                    healthy = Some(now);
                }
            }
        }
    }
}
