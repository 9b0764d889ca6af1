//! `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`: Envoy's
//! protocol ↔ domain, with envoyproxy/ratelimit's answers.
//!
//! Differences from tollgate's own API, all to match the reference:
//! - refused hits are still counted (`Charge::Always`);
//! - `duration_until_reset` is whole seconds to the window end;
//! - an unlimited descriptor reports `limit_remaining` 4294967295;
//! - optional `RateLimit-*` response headers, chosen as the reference does.
//!
//! Where the reference answers UNKNOWN (empty domain or descriptors) tollgate
//! answers INVALID_ARGUMENT naming the field; a store failure is UNAVAILABLE
//! (so Envoy's `failure_mode_deny` decides) unless the service fails open.

use tonic::{Request, Response, Status};

use super::pb::envoy::config::core::v3::HeaderValue;
use super::pb::envoy::extensions::common::ratelimit::v3 as common;
use super::pb::envoy::service::ratelimit::v3 as rls;
use super::pb::envoy::r#type::v3::RateLimitUnit;
use crate::algorithm::Charge;
use crate::clock::MICROS_PER_SEC;
use crate::limiter::RateLimiter;
use crate::limits::Unit;
use crate::request::{
    CheckRequest, CheckResponse, Code, Descriptor, DescriptorStatus, Entry, InvalidRequest,
    LimitOverride,
};

/// How the Envoy adapter answers, beyond the limits themselves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvoyOptions {
    /// Answer OK overall even when over (statuses still say OVER_LIMIT), like
    /// the reference's `SHADOW_MODE`.
    pub shadow_mode: bool,
    /// Add `RateLimit-Limit`/`-Remaining`/`-Reset` headers to responses.
    pub response_headers: Option<HeaderNames>,
}

/// Names of the three response headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderNames {
    pub limit: String,
    pub remaining: String,
    pub reset: String,
}

impl Default for HeaderNames {
    fn default() -> Self {
        Self {
            limit: "RateLimit-Limit".into(),
            remaining: "RateLimit-Remaining".into(),
            reset: "RateLimit-Reset".into(),
        }
    }
}

/// The Envoy RLS v3 service.
#[derive(Debug, Clone)]
pub struct EnvoyRlsService {
    limiter: RateLimiter,
    options: EnvoyOptions,
}

impl EnvoyRlsService {
    /// The service over `limiter`.
    pub fn new(limiter: RateLimiter, options: EnvoyOptions) -> Self {
        Self { limiter, options }
    }

    /// The tonic server wrapping this service.
    pub fn into_server(self) -> rls::rate_limit_service_server::RateLimitServiceServer<Self> {
        rls::rate_limit_service_server::RateLimitServiceServer::new(self)
    }
}

#[tonic::async_trait]
impl rls::rate_limit_service_server::RateLimitService for EnvoyRlsService {
    async fn should_rate_limit(
        &self,
        request: Request<rls::RateLimitRequest>,
    ) -> Result<Response<rls::RateLimitResponse>, Status> {
        let request = check_request(request.into_inner())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let response = self
            .limiter
            .check(&request)
            .await
            .map_err(super::check_error_status)?;
        Ok(Response::new(self.response(response)))
    }
}

fn check_request(r: rls::RateLimitRequest) -> Result<CheckRequest, InvalidRequest> {
    let descriptors = r
        .descriptors
        .into_iter()
        .enumerate()
        .map(|(i, d)| descriptor(i, d))
        .collect::<Result<_, _>>()?;
    Ok(CheckRequest {
        domain: r.domain,
        descriptors,
        hits: u64::from(r.hits_addend.max(1)),
        dry_run: false,
        charge: Charge::Always,
    })
}

fn descriptor(i: usize, d: common::RateLimitDescriptor) -> Result<Descriptor, InvalidRequest> {
    let limit_override = match d.limit {
        None => None,
        Some(o) => Some(LimitOverride {
            requests_per_unit: o.requests_per_unit,
            unit: RateLimitUnit::try_from(o.unit)
                .ok()
                .and_then(unit_from_envoy)
                .ok_or_else(|| {
                    InvalidRequest::new(
                        format!("descriptors[{i}].limit.unit"),
                        "must be a known unit",
                    )
                })?,
        }),
    };
    Ok(Descriptor {
        entries: d
            .entries
            .into_iter()
            .map(|e| Entry {
                key: e.key,
                value: e.value,
            })
            .collect(),
        hits: d.hits_addend,
        limit_override,
    })
}

fn unit_from_envoy(u: RateLimitUnit) -> Option<Unit> {
    match u {
        RateLimitUnit::Unknown => None,
        RateLimitUnit::Second => Some(Unit::Second),
        RateLimitUnit::Minute => Some(Unit::Minute),
        RateLimitUnit::Hour => Some(Unit::Hour),
        RateLimitUnit::Day => Some(Unit::Day),
        RateLimitUnit::Week => Some(Unit::Week),
        RateLimitUnit::Month => Some(Unit::Month),
        RateLimitUnit::Year => Some(Unit::Year),
    }
}

fn unit_to_envoy(u: Unit) -> rls::rate_limit_response::rate_limit::Unit {
    use rls::rate_limit_response::rate_limit::Unit as P;
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

fn code(c: Code) -> rls::rate_limit_response::Code {
    match c {
        Code::Ok => rls::rate_limit_response::Code::Ok,
        Code::OverLimit => rls::rate_limit_response::Code::OverLimit,
    }
}

/// Whole seconds until the reset, rounded up: at 12:00:02.7 a minute window
/// resets in 58 s, the reference's `divider - now % divider`.
fn reset_seconds(micros: u64) -> u64 {
    micros.div_ceil(MICROS_PER_SEC)
}

fn descriptor_status(s: &DescriptorStatus) -> rls::rate_limit_response::DescriptorStatus {
    if s.unlimited {
        return rls::rate_limit_response::DescriptorStatus {
            code: rls::rate_limit_response::Code::Ok as i32,
            limit_remaining: u32::MAX,
            ..Default::default()
        };
    }
    rls::rate_limit_response::DescriptorStatus {
        code: code(s.code) as i32,
        current_limit: s
            .limit
            .as_ref()
            .map(|l| rls::rate_limit_response::RateLimit {
                name: l.name.as_deref().unwrap_or_default().to_string(),
                requests_per_unit: l.requests_per_unit,
                unit: unit_to_envoy(l.unit) as i32,
            }),
        limit_remaining: u32::try_from(s.remaining).unwrap_or(u32::MAX),
        duration_until_reset: s.limit.as_ref().map(|_| prost_types::Duration {
            seconds: i64::try_from(reset_seconds(s.reset_after_micros)).unwrap_or(i64::MAX),
            nanos: 0,
        }),
    }
}

impl EnvoyRlsService {
    fn response(&self, r: CheckResponse) -> rls::RateLimitResponse {
        let mut overall = code(r.overall);
        if overall == rls::rate_limit_response::Code::OverLimit && self.options.shadow_mode {
            overall = rls::rate_limit_response::Code::Ok;
        }
        let response_headers_to_add = self
            .options
            .response_headers
            .as_ref()
            .and_then(|names| headers(names, &r.statuses))
            .unwrap_or_default();
        rls::RateLimitResponse {
            overall_code: overall as i32,
            statuses: r.statuses.iter().map(descriptor_status).collect(),
            response_headers_to_add,
            request_headers_to_add: Vec::new(),
        }
    }
}

/// The reference's choice: the descriptor with a limit and the fewest left
/// (the first on ties), unless one is over the limit (then the last such).
fn headers(names: &HeaderNames, statuses: &[DescriptorStatus]) -> Option<Vec<HeaderValue>> {
    let mut chosen: Option<&DescriptorStatus> = None;
    for s in statuses
        .iter()
        .filter(|s| !s.unlimited && s.limit.is_some())
    {
        let fewer = chosen.is_none_or(|c| s.remaining < c.remaining && c.code != Code::OverLimit);
        if s.code == Code::OverLimit || fewer {
            chosen = Some(s);
        }
    }
    let s = chosen?;
    let limit = s.limit.as_ref()?;
    let remaining = if s.code == Code::OverLimit {
        0
    } else {
        s.remaining
    };
    let header = |key: &str, value: String| HeaderValue {
        key: key.to_string(),
        value,
        raw_value: Vec::new(),
    };
    Some(vec![
        header(&names.limit, limit.requests_per_unit.to_string()),
        header(&names.remaining, remaining.to_string()),
        header(
            &names.reset,
            reset_seconds(s.reset_after_micros).to_string(),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::ReportedLimit;

    fn status(code: Code, remaining: u64, requests: u32) -> DescriptorStatus {
        DescriptorStatus {
            code,
            limit: Some(ReportedLimit {
                requests_per_unit: requests,
                unit: Unit::Minute,
                name: None,
            }),
            remaining,
            reset_after_micros: 57_300_000,
            ..Default::default()
        }
    }

    fn values(h: Option<Vec<HeaderValue>>) -> Vec<(String, String)> {
        h.unwrap_or_default()
            .into_iter()
            .map(|h| (h.key, h.value))
            .collect()
    }

    #[test]
    fn headers_follow_the_fewest_remaining_first_on_ties() {
        let names = HeaderNames::default();
        let got = values(headers(
            &names,
            &[
                status(Code::Ok, 5, 10),
                status(Code::Ok, 3, 20),
                status(Code::Ok, 3, 30),
            ],
        ));
        assert_eq!(
            got,
            vec![
                ("RateLimit-Limit".to_string(), "20".to_string()),
                ("RateLimit-Remaining".to_string(), "3".to_string()),
                ("RateLimit-Reset".to_string(), "58".to_string()),
            ]
        );
    }

    #[test]
    fn headers_prefer_the_last_over_limit_descriptor() {
        let names = HeaderNames::default();
        let got = values(headers(
            &names,
            &[
                status(Code::OverLimit, 0, 10),
                status(Code::Ok, 0, 20),
                status(Code::OverLimit, 0, 30),
                status(Code::Ok, 0, 40),
            ],
        ));
        assert_eq!(got[0].1, "30");
    }

    #[test]
    fn no_headers_without_a_limit() {
        let names = HeaderNames::default();
        assert!(headers(&names, &[DescriptorStatus::default()]).is_none());
    }

    #[test]
    fn reset_rounds_up_to_whole_seconds() {
        assert_eq!(reset_seconds(57_300_000), 58);
        assert_eq!(reset_seconds(60_000_000), 60);
        assert_eq!(reset_seconds(1), 1);
    }
}
