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
