//! [`RateLimitLayer`]: a tower layer that puts tollgate in front of an HTTP
//! (axum) or gRPC (tonic) service.
//!
//! For each request a caller-supplied function decides what to limit and meter
//! ([`Metered`]: descriptors, e.g. the user from a JWT claim and the route,
//! and the usage event's user, tier and category). Then:
//!
//! 1. `CheckRateLimit`. Over the limit, the handler is not called: HTTP gets
//!    `429 Too Many Requests` with a JSON body, gRPC (a request whose
//!    content-type is `application/grpc…`) gets `RESOURCE_EXHAUSTED`
//!    (HTTP 200, trailers-only). Both carry `Retry-After` and
//!    `X-RateLimit-Limit`/`-Remaining`/`-Reset` (seconds, rounded up).
//! 2. When tollgate cannot answer, `fail_open` (default false) decides: call
//!    the handler anyway, or answer `503` / `UNAVAILABLE`.
//! 3. After a successful response (2xx, and for gRPC no error `grpc-status`
//!    in the headers), a usage event with the duration, the status and the
//!    metrics the response carries goes to the [`UsageBatcher`], and the
//!    response gets `X-Usage-ID`. Metrics come from a [`UsageMetrics`]
//!    response extension by default, or from a caller-supplied function.
//!
//! A gRPC handler that fails after sending a message reports its status in
//! trailers, which this layer does not wait for: such a response counts as a
//! success. Unary tonic handlers that return an error are trailers-only, so
//! they are seen.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use tonic::body::Body;

use super::{Client, RateLimitInfo, UsageBatcher};
use crate::pb::tollgate::v1 as pb;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// `X-RateLimit-Limit`: requests allowed per unit of time.
pub const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
/// `X-RateLimit-Remaining`: units left.
pub const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
/// `X-RateLimit-Reset`: seconds until the limit is full again.
pub const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
/// `X-Usage-ID`: the id of the usage event recorded for the response.
pub const X_USAGE_ID: HeaderName = HeaderName::from_static("x-usage-id");

/// What to do with one request: limit it by `descriptors` and, when `usage`
/// is set, meter it. `None` from the classify function passes a request
/// through untouched (e.g. health checks).
#[derive(Debug, Clone, Default)]
pub struct Metered {
    /// Checked with `CheckRateLimit`; empty means not limited.
    pub descriptors: Vec<pb::Descriptor>,
    /// Units the request costs (0 means 1).
    pub hits: u32,
    /// The usage event to record after a successful response: user, tier,
    /// category, operation, endpoint. The layer fills the id, timestamp,
    /// duration, status and metrics.
    pub usage: Option<pb::TrackUsageRequest>,
}

/// Metrics a handler puts in its response's extensions for the layer to
/// record, e.g. `{"tokens": 42.0}`. Not sent to the caller.
#[derive(Debug, Clone, Default)]
pub struct UsageMetrics(pub HashMap<String, f64>);

type Classify = dyn Fn(&http::request::Parts) -> Option<Metered> + Send + Sync;
type Metrics = dyn Fn(&http::response::Parts) -> HashMap<String, f64> + Send + Sync;

struct Config {
    client: Client,
    domain: String,
    classify: Box<Classify>,
    metrics: Box<Metrics>,
    batcher: Option<UsageBatcher>,
    fail_open: bool,
}

/// Builds a [`RateLimitLayer`].
pub struct RateLimitLayerBuilder {
    config: Config,
}

impl fmt::Debug for RateLimitLayerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayerBuilder")
            .field("domain", &self.config.domain)
            .finish_non_exhaustive()
    }
}

impl RateLimitLayerBuilder {
    /// Record usage through `batcher` (without one, nothing is metered).
    pub fn usage(mut self, batcher: UsageBatcher) -> Self {
        self.config.batcher = Some(batcher);
        self
    }

    /// Take the usage metrics from the response with `f` instead of its
    /// [`UsageMetrics`] extension.
    pub fn metrics<F>(mut self, f: F) -> Self
    where
        F: Fn(&http::response::Parts) -> HashMap<String, f64> + Send + Sync + 'static,
    {
        self.config.metrics = Box::new(f);
        self
    }

    /// When tollgate cannot answer: true calls the handler anyway, false
    /// (the default) answers 503 / `UNAVAILABLE`.
    pub fn fail_open(mut self, open: bool) -> Self {
        self.config.fail_open = open;
        self
    }

    /// The layer.
    pub fn build(self) -> RateLimitLayer {
        RateLimitLayer {
            config: Arc::new(self.config),
        }
    }
}

/// The tower layer; see the [module docs](self).
#[derive(Clone)]
pub struct RateLimitLayer {
    config: Arc<Config>,
}

impl fmt::Debug for RateLimitLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("domain", &self.config.domain)
            .field("fail_open", &self.config.fail_open)
            .finish_non_exhaustive()
    }
}

impl RateLimitLayer {
    /// A builder: `client` asks tollgate about `domain` with the descriptors
    /// `classify` builds from each request (only its head: method, URI,
    /// headers, extensions).
    ///
    /// The layer checks with [`Client::check_rate_limit_no_wait`], so the
    /// client's retry settings apply to errors (keep them short in front of
    /// users) and an `OVER_LIMIT` answer is returned to the caller at once.
    pub fn builder<F>(
        client: Client,
        domain: impl Into<String>,
        classify: F,
    ) -> RateLimitLayerBuilder
    where
        F: Fn(&http::request::Parts) -> Option<Metered> + Send + Sync + 'static,
    {
        RateLimitLayerBuilder {
            config: Config {
                client,
                domain: domain.into(),
                classify: Box::new(classify),
                metrics: Box::new(|parts| {
                    parts
                        .extensions
                        .get::<UsageMetrics>()
                        .map(|m| m.0.clone())
                        .unwrap_or_default()
                }),
                batcher: None,
                fail_open: false,
            },
        }
    }
}

impl<S> tower::Layer<S> for RateLimitLayer {
    type Service = RateLimitService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimitService {
            inner,
            config: self.config.clone(),
        }
    }
}

/// The service [`RateLimitLayer`] wraps around `S`.
#[derive(Clone)]
pub struct RateLimitService<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> fmt::Debug for RateLimitService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitService")
            .field("domain", &self.config.domain)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for RateLimitService<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        // The clone that was polled ready serves this request.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let config = self.config.clone();
        Box::pin(handle(config, inner, request))
    }
}

async fn handle<S, ReqBody, ResBody>(
    config: Arc<Config>,
    mut inner: S,
    request: http::Request<ReqBody>,
) -> Result<http::Response<Body>, S::Error>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let (parts, body) = request.into_parts();
    let grpc = is_grpc(&parts.headers);
    let Some(metered) = (config.classify)(&parts) else {
        return Ok(inner
            .call(http::Request::from_parts(parts, body))
            .await?
            .map(Body::new));
    };

    let mut info = None;
    if !metered.descriptors.is_empty() {
        let check = pb::CheckRateLimitRequest {
            domain: config.domain.clone(),
            descriptors: metered.descriptors,
            hits: metered.hits,
            dry_run: false,
        };
        match config.client.check_rate_limit_no_wait(check).await {
            Ok(answer) => {
                info = RateLimitInfo::from_response(&answer);
                if answer.overall_code == pb::Code::OverLimit as i32 {
                    return Ok(limited(grpc, info.as_ref()));
                }
            }
            Err(e) if config.fail_open => {
                tracing::warn!(error = %e, "tollgate unreachable; failing open");
            }
            Err(e) => {
                tracing::warn!(error = %e, "tollgate unreachable; failing closed");
                return Ok(unavailable(grpc));
            }
        }
    }

    let started = Instant::now();
    let response = inner.call(http::Request::from_parts(parts, body)).await?;
    let elapsed = started.elapsed();
    let (mut head, body) = response.into_parts();
    if let Some(info) = &info {
        limit_headers(&mut head.headers, info);
    }
    if let (Some(mut event), Some(batcher)) = (metered.usage, &config.batcher) {
        if succeeded(&head, grpc) {
            event.duration_ms = u32::try_from(elapsed.as_millis()).unwrap_or(u32::MAX);
            event.status_code = u32::from(head.status.as_u16());
            event.success = true;
            event.metrics.extend((config.metrics)(&head));
            match batcher.record(event).await {
                Ok(id) => {
                    if let Ok(v) = HeaderValue::from_str(&id) {
                        head.headers.insert(X_USAGE_ID, v);
                    }
                }
                Err(e) => tracing::error!(error = %e, "tollgate: usage event not recorded"),
            }
        }
    }
    Ok(http::Response::from_parts(head, Body::new(body)))
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

fn succeeded(head: &http::response::Parts, grpc: bool) -> bool {
    let grpc_ok = head
        .headers
        .get("grpc-status")
        .is_none_or(|v| v.as_bytes() == b"0");
    head.status.is_success() && (!grpc || grpc_ok)
}

/// Whole seconds, rounded up (a client that waits this long is not early).
fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

fn limit_headers(headers: &mut HeaderMap, info: &RateLimitInfo) {
    headers.insert(X_RATELIMIT_LIMIT, HeaderValue::from(info.limit));
    headers.insert(X_RATELIMIT_REMAINING, HeaderValue::from(info.remaining));
    headers.insert(X_RATELIMIT_RESET, HeaderValue::from(ceil_secs(info.reset)));
}

fn limited(grpc: bool, info: Option<&RateLimitInfo>) -> http::Response<Body> {
    let retry_after = info
        .and_then(|i| i.retry_after)
        .map_or(1, |d| ceil_secs(d).max(1));
    let message = format!("rate limit exceeded; retry after {retry_after} s");
    let mut response = if grpc {
        tonic::Status::resource_exhausted(message).into_http::<Body>()
    } else {
        json_response(StatusCode::TOO_MANY_REQUESTS, &message, Some(retry_after))
    };
    let headers = response.headers_mut();
    headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
    if let Some(info) = info {
        limit_headers(headers, info);
    }
    response
}

fn unavailable(grpc: bool) -> http::Response<Body> {
    let message = "rate limiter unavailable";
    if grpc {
        tonic::Status::unavailable(message).into_http::<Body>()
    } else {
        json_response(StatusCode::SERVICE_UNAVAILABLE, message, None)
    }
}

fn json_response(
    status: StatusCode,
    message: &str,
    retry_after: Option<u64>,
) -> http::Response<Body> {
    // `message` is ours (no quotes or backslashes), so it needs no escaping.
    let body = match retry_after {
        Some(s) => format!(r#"{{"error":"{message}","retry_after_seconds":{s}}}"#),
        None => format!(r#"{{"error":"{message}"}}"#),
    };
    let mut response = http::Response::new(Body::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
