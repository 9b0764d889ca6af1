//! `tollgate.v1.RateLimiter`: protobuf ↔ domain, errors → `Status`.

use std::time::Duration;

use tonic::{Request, Response, Status};

use super::pb::tollgate::v1 as pb;
use crate::algorithm::Charge;
use crate::limiter::RateLimiter;
use crate::limits::Unit;
use crate::request::{CheckRequest, CheckResponse, Code, Descriptor, DescriptorStatus, Entry};

/// The tollgate.v1 gRPC service.
#[derive(Debug, Clone)]
pub struct TollgateService {
    limiter: RateLimiter,
}

impl TollgateService {
    /// The service over `limiter`.
    pub fn new(limiter: RateLimiter) -> Self {
        Self { limiter }
    }

    /// The tonic server wrapping this service.
    pub fn into_server(self) -> pb::rate_limiter_server::RateLimiterServer<Self> {
        pb::rate_limiter_server::RateLimiterServer::new(self)
    }
}

#[tonic::async_trait]
impl pb::rate_limiter_server::RateLimiter for TollgateService {
    async fn check_rate_limit(
        &self,
        request: Request<pb::CheckRateLimitRequest>,
    ) -> Result<Response<pb::CheckRateLimitResponse>, Status> {
        let request = check_request(request.into_inner());
        let response = self
            .limiter
            .check(&request)
            .await
            .map_err(super::check_error_status)?;
        Ok(Response::new(check_response(response)))
    }
}

fn check_request(r: pb::CheckRateLimitRequest) -> CheckRequest {
    CheckRequest {
        domain: r.domain,
        descriptors: r
            .descriptors
            .into_iter()
            .map(|d| Descriptor {
                entries: d
                    .entries
                    .into_iter()
                    .map(|e| Entry {
                        key: e.key,
                        value: e.value,
                    })
                    .collect(),
                hits: None,
                limit_override: None,
            })
            .collect(),
        hits: u64::from(r.hits.max(1)),
        dry_run: r.dry_run,
        charge: Charge::AdmittedOnly,
    }
}

fn check_response(r: CheckResponse) -> pb::CheckRateLimitResponse {
    pb::CheckRateLimitResponse {
        overall_code: code(r.overall) as i32,
        statuses: r.statuses.into_iter().map(descriptor_status).collect(),
        failed_open: r.failed_open,
    }
}

fn descriptor_status(s: DescriptorStatus) -> pb::DescriptorStatus {
    let over = s.code == Code::OverLimit;
    pb::DescriptorStatus {
        code: code(s.code) as i32,
        limit: s.limit.as_ref().map(|l| pb::RateLimit {
            requests_per_unit: l.requests_per_unit,
            unit: unit(l.unit) as i32,
            name: l.name.as_deref().unwrap_or_default().to_string(),
        }),
        remaining: s.remaining,
        reset_after: s.limit.as_ref().map(|_| duration(s.reset_after_micros)),
        retry_after: if over {
            s.retry_after_micros.map(duration)
        } else {
            None
        },
    }
}

fn code(c: Code) -> pb::Code {
    match c {
        Code::Ok => pb::Code::Ok,
        Code::OverLimit => pb::Code::OverLimit,
    }
}

fn unit(u: Unit) -> pb::rate_limit::Unit {
    use pb::rate_limit::Unit as P;
    match u {
        Unit::Second => P::Second,
        Unit::Minute => P::Minute,
        Unit::Hour => P::Hour,
        Unit::Day => P::Day,
        Unit::Week => P::Week,
        Unit::Month => P::Month,
        Unit::Year => P::Year,
    }
}

fn duration(micros: u64) -> prost_types::Duration {
    let d = Duration::from_micros(micros);
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}
