//! The benchmark baseline: both gRPC APIs on the same tonic stack, answering
//! OK (one status per descriptor) without matching, counting or storing
//! anything. `tollgate serve --noop` runs it, so every benchmark figure can be
//! read as a ratio to the ceiling of the stack measured in the same run.

use tonic::{Request, Response, Status};

use super::pb::envoy::service::ratelimit::v3 as rls;
use super::pb::tollgate::v1 as pb;

/// Answers every call OK at once.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoopService;

#[tonic::async_trait]
impl pb::rate_limiter_server::RateLimiter for NoopService {
    async fn check_rate_limit(
        &self,
        request: Request<pb::CheckRateLimitRequest>,
    ) -> Result<Response<pb::CheckRateLimitResponse>, Status> {
        let n = request.get_ref().descriptors.len();
        Ok(Response::new(pb::CheckRateLimitResponse {
            overall_code: pb::Code::Ok as i32,
            statuses: vec![
                pb::DescriptorStatus {
                    code: pb::Code::Ok as i32,
                    ..Default::default()
                };
                n
            ],
            failed_open: false,
        }))
    }

    async fn track_usage(
        &self,
        request: Request<pb::TrackUsageRequest>,
    ) -> Result<Response<pb::TrackUsageResponse>, Status> {
        Ok(Response::new(pb::TrackUsageResponse {
            usage_id: request.into_inner().usage_id,
            duplicate: false,
        }))
    }

    async fn track_usage_batch(
        &self,
        request: Request<pb::TrackUsageBatchRequest>,
    ) -> Result<Response<pb::TrackUsageBatchResponse>, Status> {
        use pb::track_usage_batch_response::{Result as Item, result::Status as S};
        let results = request
            .into_inner()
            .events
            .into_iter()
            .map(|e| Item {
                usage_id: e.usage_id,
                status: S::Accepted as i32,
                reason: String::new(),
            })
            .collect();
        Ok(Response::new(pb::TrackUsageBatchResponse { results }))
    }

    async fn get_usage_summary(
        &self,
        _: Request<pb::GetUsageSummaryRequest>,
    ) -> Result<Response<pb::GetUsageSummaryResponse>, Status> {
        Ok(Response::new(pb::GetUsageSummaryResponse::default()))
    }

    async fn get_billing(
        &self,
        _: Request<pb::GetBillingRequest>,
    ) -> Result<Response<pb::GetBillingResponse>, Status> {
        Ok(Response::new(pb::GetBillingResponse::default()))
    }
}

#[tonic::async_trait]
impl rls::rate_limit_service_server::RateLimitService for NoopService {
    async fn should_rate_limit(
        &self,
        request: Request<rls::RateLimitRequest>,
    ) -> Result<Response<rls::RateLimitResponse>, Status> {
        let n = request.get_ref().descriptors.len();
        Ok(Response::new(rls::RateLimitResponse {
            overall_code: rls::rate_limit_response::Code::Ok as i32,
            statuses: vec![
                rls::rate_limit_response::DescriptorStatus {
                    code: rls::rate_limit_response::Code::Ok as i32,
                    ..Default::default()
                };
                n
            ],
            ..Default::default()
        }))
    }
}
