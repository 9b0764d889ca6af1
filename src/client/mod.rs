//! The client side of tollgate (feature `client`), built on the generated
//! `tollgate.v1` stubs in [`crate::pb`]:
//!
//! - [`Client`]: a cheap-clone gRPC client that retries what can be retried
//!   ([`retry`]), sends an API key, and remembers the latest rate-limit answer.
//! - [`UsageBatcher`] ([`batcher`]): buffers usage events and sends them in
//!   batches, with back-pressure instead of loss.
//! - [`RateLimitLayer`] ([`layer`]): a tower layer that rate-limits and meters
//!   HTTP (axum) and gRPC (tonic) services.
//!
//! # Retries
//!
//! With `auto_retry` on (the default), a call that fails with one of the
//! `retry_codes` (default `RESOURCE_EXHAUSTED` and `UNAVAILABLE`) is tried
//! again, at most `max_retries` times, after an exponential backoff
//! (`min_retry_delay * retry_backoff_factor^n`, plus jitter). Permanent
//! errors (`INVALID_ARGUMENT` and the other [`retry::PERMANENT_CODES`]) are
//! never retried.
//!
//! An `OVER_LIMIT` answer of [`Client::check_rate_limit`] is retried too, as
//! the seed's clients retry HTTP 429: the client waits at least the server's
//! `retry_after` and asks again. If the server asks for a longer wait than
//! `max_retry_delay`, or the retries are spent, the `OVER_LIMIT` answer is
//! returned (it is an answer, not an error). [`Client::check_rate_limit_no_wait`]
//! never waits on `OVER_LIMIT`; the layer uses it.
//!
//! A retry of [`Client::track_usage`] sends the same `usage_id` (the client
//! fills a UUID v4 when the caller gave none), so the server counts the event
//! once however many attempts reached it.

pub mod batcher;
pub mod layer;
pub mod retry;

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

pub use batcher::{BatcherStats, RecordError, Rejected, UsageBatcher, UsageBatcherBuilder};
pub use layer::{Metered, RateLimitLayer, RateLimitLayerBuilder, RateLimitService, UsageMetrics};
pub use retry::{RetryPolicy, Sleeper, TokioSleeper};

use crate::pb::tollgate::v1 as pb;
use pb::rate_limiter_client::RateLimiterClient;

/// What a client call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The builder was given a setting that cannot work; the message names it.
    #[error("invalid client configuration: {0}")]
    Config(String),
    /// The [`UsageBatcher`] was shut down (or its task ended).
    #[error("usage batcher is shut down")]
    Closed,
    /// The server (or the transport) answered with an error, after `attempts`
    /// attempts.
    #[error("{} (after {attempts} attempt(s))", status)]
    Rpc {
        /// The last attempt's status.
        status: Status,
        /// How many calls were made.
        attempts: u32,
    },
}

impl Error {
    /// True when trying again later may succeed (the server was unreachable,
    /// overloaded or timed out), false for bad input and bad configuration.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Config(_) | Error::Closed => false,
            Error::Rpc { status, .. } => matches!(
                status.code(),
                Code::Unavailable
                    | Code::ResourceExhausted
                    | Code::DeadlineExceeded
                    | Code::Aborted
                    | Code::Cancelled
                    | Code::Unknown
                    | Code::Internal
            ),
        }
    }

    /// The gRPC status, for an RPC error.
    pub fn status(&self) -> Option<&Status> {
        match self {
            Error::Rpc { status, .. } => Some(status),
            Error::Config(_) | Error::Closed => None,
        }
    }
}

/// The limit a rate-limit answer reports: of all descriptors, the one that
/// binds (an exceeded one, else the one with the fewest units left).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitInfo {
    /// Requests allowed per unit of time (`X-RateLimit-Limit`).
    pub limit: u32,
    /// Units left (`X-RateLimit-Remaining`).
    pub remaining: u64,
    /// Time until the limit is back to its full allowance (`X-RateLimit-Reset`).
    pub reset: Duration,
    /// Set when over the limit: the earliest a retry could be allowed.
    pub retry_after: Option<Duration>,
    /// True when the answer was `OVER_LIMIT`.
    pub over_limit: bool,
}

impl RateLimitInfo {
    /// The binding limit of `response`; `None` when no limit applied to any
    /// descriptor.
    pub fn from_response(response: &pb::CheckRateLimitResponse) -> Option<Self> {
        let over = |s: &pb::DescriptorStatus| s.code == pb::Code::OverLimit as i32;
        let binding = response
            .statuses
            .iter()
            .filter(|s| s.limit.is_some())
            .min_by_key(|s| (!over(s), s.remaining))?;
        Some(Self {
            limit: binding.limit.as_ref().map_or(0, |l| l.requests_per_unit),
            remaining: binding.remaining,
            reset: duration(binding.reset_after.as_ref()),
            retry_after: retry_after(response),
            over_limit: response.overall_code == pb::Code::OverLimit as i32,
        })
    }
}

/// The longest `retry_after` of the descriptors over their limit: the wait
/// after which every one of them could allow the request. `None` unless the
/// answer is `OVER_LIMIT`.
pub fn retry_after(response: &pb::CheckRateLimitResponse) -> Option<Duration> {
    if response.overall_code != pb::Code::OverLimit as i32 {
        return None;
    }
    Some(
        response
            .statuses
            .iter()
            .filter_map(|s| s.retry_after.as_ref())
            .map(|d| duration(Some(d)))
            .max()
            .unwrap_or_default(),
    )
}

fn duration(d: Option<&prost_types::Duration>) -> Duration {
    d.map_or(Duration::ZERO, |d| {
        if d.seconds < 0 || d.nanos < 0 {
            Duration::ZERO
        } else {
            Duration::new(d.seconds.unsigned_abs(), d.nanos.unsigned_abs())
        }
    })
}

/// A descriptor from `(key, value)` pairs, outermost first:
/// `descriptor(&[("user", "alice"), ("route", "/generate")])`.
pub fn descriptor(entries: &[(&str, &str)]) -> pb::Descriptor {
    pb::Descriptor {
        entries: entries
            .iter()
            .map(|(key, value)| pb::Entry {
                key: (*key).to_owned(),
                value: (*value).to_owned(),
            })
            .collect(),
    }
}

/// Builds a [`Client`]; see the [module docs](self) for what retries do.
pub struct ClientBuilder {
    endpoint: String,
    policy: RetryPolicy,
    timeout: Option<Duration>,
    connect_timeout: Duration,
    api_key: Option<String>,
    sleeper: Arc<dyn Sleeper>,
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("endpoint", &self.endpoint)
            .field("policy", &self.policy)
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl ClientBuilder {
    /// Retry failed calls and `OVER_LIMIT` answers (default true).
    pub fn auto_retry(mut self, on: bool) -> Self {
        self.policy.auto_retry = on;
        self
    }

    /// Retries after the first attempt (default 3).
    pub fn max_retries(mut self, n: u32) -> Self {
        self.policy.max_retries = n;
        self
    }

    /// The first backoff (default 100 ms).
    pub fn min_retry_delay(mut self, d: Duration) -> Self {
        self.policy.min_retry_delay = d;
        self
    }

    /// How much each backoff grows over the one before (default 2, at least 1).
    pub fn retry_backoff_factor(mut self, factor: f64) -> Self {
        self.policy.backoff_factor = factor;
        self
    }

    /// The longest wait (default 30 s): backoffs are capped at it, and an
    /// `OVER_LIMIT` answer whose `retry_after` is longer is returned at once.
    pub fn max_retry_delay(mut self, d: Duration) -> Self {
        self.policy.max_retry_delay = d;
        self
    }

    /// The gRPC codes retried (default `RESOURCE_EXHAUSTED`, `UNAVAILABLE`).
    /// Permanent codes (e.g. `INVALID_ARGUMENT`) are refused by [`Self::build`].
    pub fn retry_codes(mut self, codes: impl IntoIterator<Item = Code>) -> Self {
        self.policy.retry_codes = codes.into_iter().collect();
        self
    }

    /// Up to this fraction of each wait is added at random (default 0.1,
    /// 0..=1). Only added, so a wait never undercuts the server's `retry_after`.
    pub fn jitter(mut self, fraction: f64) -> Self {
        self.policy.jitter = fraction;
        self
    }

    /// The deadline of each attempt (sent as `grpc-timeout` and enforced
    /// here); an attempt that runs out fails with `DEADLINE_EXCEEDED`.
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = Some(d);
        self
    }

    /// How long connecting may take (default 5 s).
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// Sent with every call as `authorization: Bearer <key>`. Never logged.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// What waits between retries (default [`TokioSleeper`]); tests record.
    pub fn sleeper(mut self, sleeper: Arc<dyn Sleeper>) -> Self {
        self.sleeper = sleeper;
        self
    }

    /// The client. It connects lazily: building succeeds while the server is
    /// down, and the first calls fail with `UNAVAILABLE` (retried) until it is
    /// up.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the setting: an endpoint that is not a URI, a
    /// negative or non-finite number, a permanent code in `retry_codes`, an
    /// API key that is not a valid header value, or no Tokio runtime.
    pub fn build(self) -> Result<Client, Error> {
        let p = &self.policy;
        if !(p.backoff_factor.is_finite() && p.backoff_factor >= 1.0) {
            return Err(Error::Config(format!(
                "retry_backoff_factor must be a finite number >= 1, got {}",
                p.backoff_factor
            )));
        }
        if !(p.jitter.is_finite() && (0.0..=1.0).contains(&p.jitter)) {
            return Err(Error::Config(format!(
                "jitter must be between 0 and 1, got {}",
                p.jitter
            )));
        }
        if let Some(code) = p
            .retry_codes
            .iter()
            .find(|c| retry::PERMANENT_CODES.contains(c))
        {
            return Err(Error::Config(format!(
                "retry_codes: {code:?} is permanent, a retry cannot succeed"
            )));
        }
        if self.timeout == Some(Duration::ZERO) {
            return Err(Error::Config("timeout must be more than 0".into()));
        }
        let auth = match &self.api_key {
            None => None,
            Some(key) if key.is_empty() => {
                return Err(Error::Config("api_key must not be empty".into()));
            }
            Some(key) => Some(
                MetadataValue::<Ascii>::try_from(format!("Bearer {key}")).map_err(|_| {
                    Error::Config("api_key must be visible ASCII (it is sent as a header)".into())
                })?,
            ),
        };
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::Config(
                "Client::build must be called inside a Tokio runtime".into(),
            ));
        }
        let endpoint = Endpoint::from_shared(self.endpoint.clone())
            .map_err(|e| Error::Config(format!("endpoint {:?}: {e}", self.endpoint)))?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true);
        let channel = endpoint.connect_lazy();
        Ok(Client {
            rpc: RateLimiterClient::new(channel),
            shared: Arc::new(Shared {
                policy: self.policy,
                timeout: self.timeout,
                auth,
                sleeper: self.sleeper,
                last: Mutex::new(None),
            }),
        })
    }
}

/// A tollgate gRPC client. Cheap to clone: clones share the connection, the
/// settings and the latest rate-limit answer.
#[derive(Clone)]
pub struct Client {
    rpc: RateLimiterClient<Channel>,
    shared: Arc<Shared>,
}

struct Shared {
    policy: RetryPolicy,
    timeout: Option<Duration>,
    /// `Bearer <key>`; redacted in `Debug`.
    auth: Option<MetadataValue<Ascii>>,
    sleeper: Arc<dyn Sleeper>,
    /// The latest rate-limit answer. A std `Mutex`: it is held only to copy a
    /// value in or out, never across an `.await`.
    last: Mutex<Option<RateLimitInfo>>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("policy", &self.shared.policy)
            .field("timeout", &self.shared.timeout)
            .field("api_key", &self.shared.auth.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A builder for a client of the tollgate at `endpoint`
    /// (e.g. `http://127.0.0.1:8081`).
    pub fn builder(endpoint: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            endpoint: endpoint.into(),
            policy: RetryPolicy::default(),
            timeout: None,
            connect_timeout: Duration::from_secs(5),
            api_key: None,
            sleeper: Arc::new(TokioSleeper),
        }
    }

    /// The retry settings.
    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.shared.policy
    }

    /// Asks whether `request` is within its limits. With `auto_retry` an
    /// `OVER_LIMIT` answer is retried after the server's `retry_after` (see
    /// the [module docs](self)); the last answer is returned either way.
    ///
    /// # Errors
    ///
    /// [`Error::Rpc`] when every attempt failed or the error is permanent
    /// (`INVALID_ARGUMENT` names the field).
    pub async fn check_rate_limit(
        &self,
        request: pb::CheckRateLimitRequest,
    ) -> Result<pb::CheckRateLimitResponse, Error> {
        self.check(request, true).await
    }

    /// Like [`Self::check_rate_limit`] but an `OVER_LIMIT` answer is returned
    /// at once (errors are still retried as configured).
    ///
    /// # Errors
    ///
    /// As [`Self::check_rate_limit`].
    pub async fn check_rate_limit_no_wait(
        &self,
        request: pb::CheckRateLimitRequest,
    ) -> Result<pb::CheckRateLimitResponse, Error> {
        self.check(request, false).await
    }

    async fn check(
        &self,
        request: pb::CheckRateLimitRequest,
        wait_over_limit: bool,
    ) -> Result<pb::CheckRateLimitResponse, Error> {
        let inspect = |r: &pb::CheckRateLimitResponse| {
            let info = RateLimitInfo::from_response(r);
            *self
                .shared
                .last
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = info;
            if wait_over_limit {
                retry_after(r)
            } else {
                None
            }
        };
        self.call(request, inspect, |mut rpc, req| async move {
            rpc.check_rate_limit(req).await
        })
        .await
    }

    /// Records one usage event. An empty `usage_id` is filled with a UUID v4
    /// first, and every retry sends that same id: the server counts the event
    /// once. The answer carries the id.
    ///
    /// # Errors
    ///
    /// [`Error::Rpc`] when every attempt failed (the event may or may not have
    /// been recorded: send it again with the same id) or it was invalid.
    pub async fn track_usage(
        &self,
        mut event: pb::TrackUsageRequest,
    ) -> Result<pb::TrackUsageResponse, Error> {
        fill_id(&mut event);
        self.call(
            event,
            |_| None,
            |mut rpc, req| async move { rpc.track_usage(req).await },
        )
        .await
    }

    /// Records many events in one call (at most 1000). Events without an id
    /// get a UUID v4 first; retries resend the same ids.
    ///
    /// # Errors
    ///
    /// As [`Self::track_usage`]; a single invalid event is not an error but a
    /// `STATUS_REJECTED` result.
    pub async fn track_usage_batch(
        &self,
        mut request: pb::TrackUsageBatchRequest,
    ) -> Result<pb::TrackUsageBatchResponse, Error> {
        request.events.iter_mut().for_each(fill_id);
        self.call(
            request,
            |_| None,
            |mut rpc, req| async move { rpc.track_usage_batch(req).await },
        )
        .await
    }

    /// A user's usage over the last `days` days (0 means 30).
    ///
    /// # Errors
    ///
    /// [`Error::Rpc`], e.g. `INVALID_ARGUMENT` for an empty user.
    pub async fn get_usage_summary(
        &self,
        user_id: impl Into<String>,
        days: u32,
    ) -> Result<pb::GetUsageSummaryResponse, Error> {
        let request = pb::GetUsageSummaryRequest {
            user_id: user_id.into(),
            days,
        };
        self.call(
            request,
            |_| None,
            |mut rpc, req| async move { rpc.get_usage_summary(req).await },
        )
        .await
    }

    /// A user's bill between two dates (`YYYY-MM-DD`, inclusive).
    ///
    /// # Errors
    ///
    /// [`Error::Rpc`], e.g. `INVALID_ARGUMENT` naming a bad date.
    pub async fn get_billing(
        &self,
        request: pb::GetBillingRequest,
    ) -> Result<pb::GetBillingResponse, Error> {
        self.call(
            request,
            |_| None,
            |mut rpc, req| async move { rpc.get_billing(req).await },
        )
        .await
    }

    /// The binding limit of the latest `CheckRateLimit` answer of this client
    /// (or a clone); `None` before any, or when no limit applied.
    pub fn rate_limit(&self) -> Option<RateLimitInfo> {
        self.shared
            .last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Units left under the latest answer's binding limit.
    pub fn rate_limit_remaining(&self) -> Option<u64> {
        self.rate_limit().map(|i| i.remaining)
    }

    /// The latest answer's binding limit (requests per unit).
    pub fn rate_limit_total(&self) -> Option<u32> {
        self.rate_limit().map(|i| i.limit)
    }

    /// Time until the latest answer's binding limit is full again.
    pub fn rate_limit_reset(&self) -> Option<Duration> {
        self.rate_limit().map(|i| i.reset)
    }

    pub(crate) fn sleeper(&self) -> &Arc<dyn Sleeper> {
        &self.shared.sleeper
    }

    /// The retry loop shared by every call. `inspect` sees each answer and
    /// returns `Some(wait)` when the answer itself asks to be retried
    /// (`OVER_LIMIT`); `rpc` makes one attempt.
    async fn call<T, R, I, F, Fut>(&self, message: T, inspect: I, rpc: F) -> Result<R, Error>
    where
        T: Clone,
        I: Fn(&R) -> Option<Duration>,
        F: Fn(RateLimiterClient<Channel>, tonic::Request<T>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<R>, Status>>,
    {
        let policy = &self.shared.policy;
        let mut retry = 0u32;
        loop {
            let attempt = rpc(self.rpc.clone(), self.request(message.clone()));
            let result = match self.shared.timeout {
                Some(t) => tokio::time::timeout(t, attempt).await.unwrap_or_else(|_| {
                    Err(Status::deadline_exceeded(format!(
                        "no answer within the client timeout of {t:?}"
                    )))
                }),
                None => attempt.await,
            };
            let wait = match &result {
                Ok(answer) => match inspect(answer.get_ref()) {
                    Some(after) if policy.auto_retry => policy.delay(retry, Some(after)),
                    _ => None,
                },
                Err(status) if policy.retries(status.code()) => {
                    policy.delay(retry, retry_after_metadata(status))
                }
                Err(_) => None,
            };
            match (wait, result) {
                (Some(wait), _) if retry < policy.max_retries => {
                    retry += 1;
                    tracing::debug!(retry, ?wait, "tollgate: retrying");
                    self.shared.sleeper.sleep(wait).await;
                }
                (_, Ok(answer)) => return Ok(answer.into_inner()),
                (_, Err(status)) => {
                    return Err(Error::Rpc {
                        status,
                        attempts: retry + 1,
                    });
                }
            }
        }
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(t) = self.shared.timeout {
            request.set_timeout(t);
        }
        if let Some(auth) = &self.shared.auth {
            request.metadata_mut().insert("authorization", auth.clone());
        }
        request
    }
}

/// A server (or proxy) may say when to come back in `retry-after` metadata
/// (whole seconds, as the HTTP header).
fn retry_after_metadata(status: &Status) -> Option<Duration> {
    let value = status.metadata().get("retry-after")?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// Gives an event without an id a UUID v4 and a timestamp of now, so that a
/// retry or a batch sent later describes the same event.
pub(crate) fn fill_id(event: &mut pb::TrackUsageRequest) {
    if event.usage_id.is_empty() {
        event.usage_id = uuid::Uuid::new_v4().to_string();
    }
    if event.timestamp.is_none() {
        event.timestamp = Some(prost_types::Timestamp::from(SystemTime::now()));
    }
}
