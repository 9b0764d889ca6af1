//! `tollgate.v1.RateLimiter`: protobuf ↔ domain, errors → `Status`.

use std::time::Duration;

use tonic::{Request, Response, Status};

use super::pb::tollgate::v1 as pb;
use crate::algorithm::Charge;
use crate::limiter::RateLimiter;
use crate::limits::Unit;
use crate::request::{CheckRequest, CheckResponse, Code, Descriptor, DescriptorStatus};
use crate::usage::{Recorded, TrackOutcome, Usage, UsageCallError, UsageError, UsageEvent};

/// The tollgate.v1 gRPC service.
#[derive(Debug, Clone)]
pub struct TollgateService {
    limiter: RateLimiter,
    usage: Usage,
}

impl TollgateService {
    /// The service over `limiter` and `usage`.
    pub fn new(limiter: RateLimiter, usage: Usage) -> Self {
        Self { limiter, usage }
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

    async fn track_usage(
        &self,
        request: Request<pb::TrackUsageRequest>,
    ) -> Result<Response<pb::TrackUsageResponse>, Status> {
        let event = usage_event(request.into_inner());
        let (usage_id, recorded) = self.usage.track(event).await.map_err(usage_status)?;
        Ok(Response::new(pb::TrackUsageResponse {
            usage_id,
            duplicate: recorded == Recorded::Duplicate,
        }))
    }

    async fn track_usage_batch(
        &self,
        request: Request<pb::TrackUsageBatchRequest>,
    ) -> Result<Response<pb::TrackUsageBatchResponse>, Status> {
        use pb::track_usage_batch_response::{Result as Item, result::Status as S};
        let events = request
            .into_inner()
            .events
            .into_iter()
            .map(usage_event)
            .collect();
        let outcomes = self.usage.track_batch(events).await.map_err(usage_status)?;
        let results = outcomes
            .into_iter()
            .map(|o| match o {
                TrackOutcome::Recorded { usage_id, status } => Item {
                    usage_id,
                    status: match status {
                        Recorded::Accepted => S::Accepted,
                        Recorded::Duplicate => S::Duplicate,
                    } as i32,
                    reason: String::new(),
                },
                TrackOutcome::Rejected { usage_id, reason } => Item {
                    usage_id,
                    status: S::Rejected as i32,
                    reason,
                },
            })
            .collect();
        Ok(Response::new(pb::TrackUsageBatchResponse { results }))
    }

    async fn get_usage_summary(
        &self,
        request: Request<pb::GetUsageSummaryRequest>,
    ) -> Result<Response<pb::GetUsageSummaryResponse>, Status> {
        let r = request.into_inner();
        let (summary, from, to) = self
            .usage
            .summary(&r.user_id, r.days)
            .await
            .map_err(usage_status)?;
        let days = (to - from).num_days() + 1;
        Ok(Response::new(pb::GetUsageSummaryResponse {
            user_id: r.user_id,
            period: format!("Last {days} days"),
            requests: Some(pb::Requests {
                total: summary.total,
                by_category: summary.by_category.into_iter().collect(),
            }),
            metrics: summary.metrics.into_iter().collect(),
            daily: summary
                .daily
                .into_iter()
                .map(|d| pb::DailyUsage {
                    date: d.date.format("%Y-%m-%d").to_string(),
                    total: d.total(),
                    by_category: d.by_category.into_iter().collect(),
                    metrics: d.metrics.into_iter().collect(),
                })
                .collect(),
        }))
    }

    async fn get_billing(
        &self,
        request: Request<pb::GetBillingRequest>,
    ) -> Result<Response<pb::GetBillingResponse>, Status> {
        let r = request.into_inner();
        let (bill, from, to) = self
            .usage
            .bill(&r.user_id, &r.start_date, &r.end_date)
            .await
            .map_err(usage_status)?;
        Ok(Response::new(pb::GetBillingResponse {
            user_id: r.user_id,
            start_date: from.format("%Y-%m-%d").to_string(),
            end_date: to.format("%Y-%m-%d").to_string(),
            tier: bill.tier,
            usage: Some(pb::BillingUsage {
                requests: Some(pb::Requests {
                    total: bill.requests,
                    by_category: bill.by_category.into_iter().collect(),
                }),
                compute_units: bill.compute_units,
                tokens: bill.tokens,
                storage_bytes: bill.storage_bytes,
            }),
            charges: Some(pb::Charges {
                base_fee: bill.base_fee.to_string(),
                compute_charges: bill.compute_charges.to_string(),
                token_charges: bill.token_charges.to_string(),
                storage_charges: bill.storage_charges.to_string(),
                total: bill.total.to_string(),
                currency: bill.currency,
            }),
        }))
    }
}

fn usage_event(r: pb::TrackUsageRequest) -> UsageEvent {
    UsageEvent {
        usage_id: r.usage_id,
        user_id: r.user_id,
        tier: r.tier,
        category: r.category,
        operation: r.operation,
        endpoint: r.endpoint,
        timestamp_micros: r.timestamp.map_or(0, |t| {
            t.seconds
                .saturating_mul(1_000_000)
                .saturating_add(i64::from(t.nanos / 1_000))
        }),
        duration_ms: r.duration_ms,
        status_code: r.status_code,
        success: r.success,
        request_ip: r.request_ip,
        metrics: r.metrics.into_iter().collect(),
    }
}

/// Usage errors → gRPC: bad input names its field; a store that cannot take
/// the event now is UNAVAILABLE or RESOURCE_EXHAUSTED (retry with the same id).
fn usage_status(e: UsageCallError) -> Status {
    match e {
        UsageCallError::Invalid(e) => Status::invalid_argument(e.to_string()),
        UsageCallError::Store(UsageError::Unavailable(m)) => Status::unavailable(m),
        UsageCallError::Store(UsageError::Busy(m)) => Status::resource_exhausted(m),
    }
}

fn check_request(r: pb::CheckRateLimitRequest) -> CheckRequest {
    CheckRequest {
        domain: r.domain,
        descriptors: r
            .descriptors
            .into_iter()
            .map(|d| Descriptor::new(d.entries.into_iter().map(|e| (e.key, e.value))))
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
