//! Tollgate limits its own HTTP API with its own limiter: a fixed window of
//! `requests_per_minute` per user, counted in the same counter store as
//! everything else (so replicas sharing Redis share the budget). If the
//! store cannot answer, the API stays available (fail-open): these are
//! reads of usage, and the usage store is not the counter store.

use std::sync::Arc;

use axum::http::{HeaderMap, HeaderValue};

use crate::algorithm::Algorithm;
use crate::limiter::{FailureMode, RateLimiter};
use crate::limits::{Children, DescriptorNode, DomainLimits, Limit, Limits, Rule, Unit};
use crate::request::{CheckRequest, Code, Descriptor};
use crate::store::CounterStore;

/// The internal domain the API's own counters live under.
pub const DOMAIN: &str = "tollgate_http";

/// One caller's standing after a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub allowed: bool,
    pub limit: u64,
    pub remaining: u64,
    /// Whole seconds until the window resets.
    pub reset: u64,
    /// Whole seconds to wait, when refused (at least 1).
    pub retry_after: u64,
}

impl Quota {
    /// `X-RateLimit-Limit`, `-Remaining`, `-Reset`, and `Retry-After` when refused.
    pub fn write_headers(&self, headers: &mut HeaderMap) {
        headers.insert("x-ratelimit-limit", HeaderValue::from(self.limit));
        headers.insert("x-ratelimit-remaining", HeaderValue::from(self.remaining));
        headers.insert("x-ratelimit-reset", HeaderValue::from(self.reset));
        if !self.allowed {
            headers.insert("retry-after", HeaderValue::from(self.retry_after));
        }
    }
}

/// The API's own limiter.
#[derive(Debug, Clone)]
pub struct SelfLimit {
    limiter: RateLimiter,
    per_minute: u32,
}

fn ceil_secs(micros: u64) -> u64 {
    micros.div_ceil(1_000_000)
}

impl SelfLimit {
    /// `per_minute` requests per user and minute, counted in `store`.
    pub fn new(store: Arc<dyn CounterStore>, per_minute: u32) -> Self {
        let domain: Arc<str> = Arc::from(DOMAIN);
        let mut descriptors = Children::default();
        descriptors.insert(
            "user",
            "",
            false,
            DescriptorNode {
                rule: Some(Rule {
                    limits: vec![Limit {
                        name: Some(Arc::from("http_api_per_user")),
                        unit: Unit::Minute,
                        requests_per_unit: per_minute,
                        algorithm: Algorithm::FixedWindow,
                        burst: per_minute,
                    }],
                    unlimited: false,
                    shadow_mode: false,
                    detailed_metric: false,
                    value_to_metric: false,
                    replaces: Vec::new(),
                    path: Arc::from(format!("{DOMAIN}.user")),
                }),
                children: Children::default(),
            },
        );
        let limits = Limits::from_domains([DomainLimits {
            name: domain,
            descriptors,
            source: Arc::from("<built-in: http.rate_limit>"),
            line: 0,
            failure_mode: Some(FailureMode::FailOpen),
        }]);
        Self {
            limiter: RateLimiter::new(limits, store, FailureMode::FailOpen),
            per_minute,
        }
    }

    /// Counts one request of `user`.
    pub async fn check(&self, user: &str) -> Quota {
        let request = CheckRequest::new(DOMAIN, vec![Descriptor::new([("user", user)])]);
        let limit = u64::from(self.per_minute);
        match self.limiter.check(&request).await {
            Ok(r) => {
                let status = r.statuses.first().cloned().unwrap_or_default();
                Quota {
                    allowed: r.overall == Code::Ok,
                    limit,
                    remaining: status.remaining,
                    reset: ceil_secs(status.reset_after_micros),
                    retry_after: ceil_secs(status.retry_after_micros.unwrap_or(0)).max(1),
                }
            }
            // Only an invalid user can get here (fail-open covers the store);
            // the caller has validated it, so let the request through.
            Err(e) => {
                tracing::warn!(error = %e, "HTTP self rate limit could not decide; allowing");
                Quota {
                    allowed: true,
                    limit,
                    remaining: limit,
                    reset: 60,
                    retry_after: 1,
                }
            }
        }
    }
}
