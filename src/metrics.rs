//! Prometheus metrics (`GET /metrics` on the HTTP port), in the OpenMetrics
//! text format that Prometheus scrapes.
//!
//! - `tollgate_rate_limit_{total_hits,over_limit,near_limit,within_limit,shadow_mode}_total`
//!   `{domain, rule}`: hits per rule, as envoyproxy/ratelimit counts them
//!   (`rule` is the rule's path, or the request's values where the rule says
//!   `detailed_metric`), read from [`crate::stats`] at scrape time;
//! - `tollgate_decisions_total{domain, code}`: requests by answer (`OK`,
//!   `OVER_LIMIT`, `ERROR`, `FAILED_OPEN`); unknown domains count under "";
//! - `tollgate_grpc_request_duration_seconds{method}` and
//!   `tollgate_http_request_duration_seconds{route, status}`: latency
//!   histograms (unknown gRPC methods count as `other`, unmatched HTTP paths
//!   as `unmatched`, so callers cannot add series);
//! - `tollgate_store_calls_total`, `tollgate_store_errors_total` and
//!   `tollgate_store_shard_up` `{store, shard}`: per Redis shard;
//! - `tollgate_usage_events_total{result}`: usage events `accepted`,
//!   `duplicate` or `rejected`;
//! - `tollgate_build_info{version}`.
//!
//! Labels are bounded by configuration, never by what callers send.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Instant;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::limiter::RateLimiter;
use crate::usage::Usage;

/// The content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// gRPC methods with their own latency series; anything else is `other`.
const GRPC_METHODS: [&str; 8] = [
    "/tollgate.v1.RateLimiter/CheckRateLimit",
    "/tollgate.v1.RateLimiter/TrackUsage",
    "/tollgate.v1.RateLimiter/TrackUsageBatch",
    "/tollgate.v1.RateLimiter/GetUsageSummary",
    "/tollgate.v1.RateLimiter/GetBilling",
    "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit",
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
];

/// Latency buckets in seconds: 50 µs to 2.5 s, covering an in-memory
/// decision (tens of µs) up to a slow PostgreSQL commit.
fn latency_buckets() -> impl Iterator<Item = f64> {
    [
        0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
        0.5, 1.0, 2.5,
    ]
    .into_iter()
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    route: String,
    status: u16,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric of one server. Cheap to clone; clones share everything.
#[derive(Debug, Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    registry: Registry,
    // One histogram per known method, found by position without hashing.
    grpc: Vec<Histogram>,
    grpc_other: Histogram,
    http: HistogramFamily<HttpLabels>,
}

impl Metrics {
    /// Metrics for a server deciding with `limiter` and metering with `usage`.
    pub fn new(limiter: &RateLimiter, usage: &Usage) -> Self {
        let mut registry = Registry::default();
        let grpc_family: HistogramFamily<MethodLabels> =
            Family::new_with_constructor(|| Histogram::new(latency_buckets()));
        let grpc = GRPC_METHODS
            .iter()
            .map(|m| {
                grpc_family
                    .get_or_create(&MethodLabels { method: m })
                    .clone()
            })
            .collect();
        let grpc_other = grpc_family
            .get_or_create(&MethodLabels { method: "other" })
            .clone();
        registry.register(
            "tollgate_grpc_request_duration_seconds",
            "Time to answer a gRPC call, by method",
            grpc_family,
        );
        let http: HistogramFamily<HttpLabels> =
            Family::new_with_constructor(|| Histogram::new(latency_buckets()));
        registry.register(
            "tollgate_http_request_duration_seconds",
            "Time to answer an HTTP request, by route and status",
            http.clone(),
        );
        registry.register(
            "tollgate_build",
            "The running build",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        registry.register_collector(Box::new(StatsCollector {
            limiter: limiter.clone(),
            usage: usage.clone(),
        }));
        Self {
            inner: Arc::new(Inner {
                registry,
                grpc,
                grpc_other,
                http,
            }),
        }
    }

    /// The histogram of the gRPC method at `path`.
    fn grpc_histogram(&self, path: &str) -> &Histogram {
        GRPC_METHODS
            .iter()
            .position(|m| *m == path)
            .and_then(|i| self.inner.grpc.get(i))
            .unwrap_or(&self.inner.grpc_other)
    }

    /// Records one HTTP request.
    pub fn observe_http(&self, route: &str, status: u16, seconds: f64) {
        self.inner
            .http
            .get_or_create(&HttpLabels {
                route: route.to_owned(),
                status,
            })
            .observe(seconds);
    }

    /// Everything, in the OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.inner.registry) {
            tracing::error!(error = %e, "could not encode metrics");
        }
        out
    }

    /// A tower layer that times every gRPC call by method.
    pub fn grpc_layer(&self) -> GrpcMetricsLayer {
        GrpcMetricsLayer {
            metrics: self.clone(),
        }
    }
}

/// Reads the limiter's decision counts, the store's shard counts and the
/// usage counts at scrape time, so the request path only touches atomics.
#[derive(Debug)]
struct StatsCollector {
    limiter: RateLimiter,
    usage: Usage,
}

impl Collector for StatsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = self.limiter.stats();
        let rules = stats.rules();
        type Field = fn(&crate::stats::RuleCounters) -> &std::sync::atomic::AtomicU64;
        let fields: [(&str, &str, Field); 5] = [
            (
                "tollgate_rate_limit_total_hits",
                "Hits checked against the rule",
                |c| &c.total_hits,
            ),
            (
                "tollgate_rate_limit_over_limit",
                "Hits over the rule's limit",
                |c| &c.over_limit,
            ),
            (
                "tollgate_rate_limit_near_limit",
                "Hits within the limit but above 80% of it",
                |c| &c.near_limit,
            ),
            (
                "tollgate_rate_limit_within_limit",
                "Hits within the rule's limit",
                |c| &c.within_limit,
            ),
            (
                "tollgate_rate_limit_shadow_mode",
                "Hits over the limit of a shadow-mode rule (answered OK)",
                |c| &c.shadow_mode,
            ),
        ];
        for (name, help, field) in fields {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (rule, counters) in &rules {
                let domain = rule.split('.').next().unwrap_or_default();
                let labels = [("domain", domain), ("rule", rule.as_ref())];
                ConstCounter::new(field(counters).load(Ordering::Relaxed))
                    .encode(family.encode_family(&labels)?)?;
            }
        }

        let domains = stats.domains();
        let mut family = encoder.encode_descriptor(
            "tollgate_decisions",
            "Rate-limit requests by domain and answer",
            None,
            MetricType::Counter,
        )?;
        for (domain, c) in &domains {
            for (code, value) in [
                ("OK", &c.ok),
                ("OVER_LIMIT", &c.over_limit),
                ("ERROR", &c.error),
                ("FAILED_OPEN", &c.failed_open),
            ] {
                let labels = [("domain", domain.as_ref()), ("code", code)];
                ConstCounter::new(value.load(Ordering::Relaxed))
                    .encode(family.encode_family(&labels)?)?;
            }
        }

        let store = self.limiter.store();
        let shards = store.shard_stats();
        let kind = store.name();
        for (name, help, kind_of) in [
            (
                "tollgate_store_calls",
                "Calls to a store shard",
                MetricType::Counter,
            ),
            (
                "tollgate_store_errors",
                "Failed, timed-out or skipped calls to a store shard",
                MetricType::Counter,
            ),
            (
                "tollgate_store_shard_up",
                "1 while the shard is connected and its circuit breaker closed",
                MetricType::Gauge,
            ),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, kind_of)?;
            for s in &shards {
                let labels = [("store", kind), ("shard", s.shard.as_str())];
                let sample = family.encode_family(&labels)?;
                match name {
                    "tollgate_store_calls" => ConstCounter::new(s.calls).encode(sample)?,
                    "tollgate_store_errors" => ConstCounter::new(s.errors).encode(sample)?,
                    _ => ConstGauge::new(i64::from(s.up)).encode(sample)?,
                }
            }
        }

        let usage = self.usage.stats();
        let mut family = encoder.encode_descriptor(
            "tollgate_usage_events",
            "Usage events by result: accepted, duplicate (already counted) or rejected (invalid)",
            None,
            MetricType::Counter,
        )?;
        for (result, value) in [
            ("accepted", &usage.accepted),
            ("duplicate", &usage.duplicate),
            ("rejected", &usage.rejected),
        ] {
            ConstCounter::new(value.load(Ordering::Relaxed))
                .encode(family.encode_family(&[("result", result)])?)?;
        }
        Ok(())
    }
}

/// See [`Metrics::grpc_layer`].
#[derive(Debug, Clone)]
pub struct GrpcMetricsLayer {
    metrics: Metrics,
}

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetricsService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// See [`Metrics::grpc_layer`].
#[derive(Debug, Clone)]
pub struct GrpcMetricsService<S> {
    inner: S,
    metrics: Metrics,
}

impl<S, B> tower::Service<http::Request<B>> for GrpcMetricsService<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Timed<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let histogram = self.metrics.grpc_histogram(req.uri().path()).clone();
        Timed {
            inner: self.inner.call(req),
            histogram,
            start: Instant::now(),
        }
    }
}

pin_project_lite::pin_project! {
    /// A response future that records its time to completion. Unary calls
    /// complete when the answer is ready, which is what is measured.
    #[derive(Debug)]
    pub struct Timed<F> {
        #[pin]
        inner: F,
        histogram: Histogram,
        start: Instant,
    }
}

impl<F: Future> Future for Timed<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = std::task::ready!(this.inner.poll(cx));
        this.histogram.observe(this.start.elapsed().as_secs_f64());
        Poll::Ready(out)
    }
}
