//! `POST /v1/check`: the JSON twin of `CheckRateLimit`, for callers without
//! gRPC. Same request fields, same decision; the answer is data (200 with
//! `overall_code`), as it is over gRPC. When API keys are configured it
//! needs a key allowed `CheckRateLimit`, as the gRPC call does.

use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::{Json, http};
use serde::{Deserialize, Serialize};

use super::HttpState;
use super::envelope::{ApiError, success};
use crate::algorithm::Charge;
use crate::auth::Refusal;
use crate::limiter::CheckError;
use crate::request::{CheckRequest, Code, Descriptor, InvalidRequest};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckBody {
    domain: String,
    descriptors: Vec<DescriptorBody>,
    #[serde(default)]
    hits: Option<u32>,
    #[serde(default)]
    dry_run: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DescriptorBody {
    entries: Vec<EntryBody>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryBody {
    key: String,
    value: String,
}

#[derive(Debug, Serialize)]
struct LimitJson {
    requests_per_unit: u32,
    unit: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
}

#[derive(Debug, Serialize)]
struct StatusJson {
    code: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    limit: Option<LimitJson>,
    remaining: u64,
    /// Milliseconds until the limit is back to its full allowance.
    reset_after_ms: u64,
    /// When over: milliseconds until the same request could pass.
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after_ms: Option<u64>,
}

#[derive(Debug, Serialize)]
struct CheckJson {
    overall_code: &'static str,
    statuses: Vec<StatusJson>,
    failed_open: bool,
}

fn code(c: Code) -> &'static str {
    match c {
        Code::Ok => "OK",
        Code::OverLimit => "OVER_LIMIT",
    }
}

fn millis(micros: u64) -> u64 {
    micros.div_ceil(1000)
}

/// `POST /v1/check`
pub async fn check(
    State(state): State<HttpState>,
    headers: HeaderMap,
    body: Result<Json<CheckBody>, JsonRejection>,
) -> Response {
    if let Some(keys) = &state.auth.api_keys {
        let authorization = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if let Err(refusal) = keys.authorize(authorization, "CheckRateLimit") {
            return match refusal {
                Refusal::Unauthenticated(_) => ApiError::unauthorized(refusal.to_string()),
                Refusal::Forbidden { .. } => ApiError::forbidden(refusal.to_string()),
            }
            .into_response();
        }
    }
    let Json(body) = match body {
        Ok(body) => body,
        Err(e) => {
            return ApiError::bad_request(&InvalidRequest::new("body", e.body_text()))
                .into_response();
        }
    };
    let request = CheckRequest {
        domain: body.domain,
        descriptors: body
            .descriptors
            .into_iter()
            .map(|d| Descriptor::new(d.entries.into_iter().map(|e| (e.key, e.value))))
            .collect(),
        hits: u64::from(body.hits.unwrap_or(1).max(1)),
        dry_run: body.dry_run,
        charge: Charge::AdmittedOnly,
    };
    match state.limiter.check(&request).await {
        Ok(r) => {
            let data = CheckJson {
                overall_code: code(r.overall),
                failed_open: r.failed_open,
                statuses: r
                    .statuses
                    .into_iter()
                    .map(|s| StatusJson {
                        code: code(s.code),
                        remaining: s.remaining,
                        reset_after_ms: millis(s.reset_after_micros),
                        retry_after_ms: (s.code == Code::OverLimit)
                            .then_some(s.retry_after_micros)
                            .flatten()
                            .map(millis),
                        limit: s.limit.map(|l| LimitJson {
                            requests_per_unit: l.requests_per_unit,
                            unit: l.unit.as_str(),
                            name: l.name.map(|n| n.to_string()),
                        }),
                    })
                    .collect(),
            };
            success(
                format!("Checked {} descriptor(s)", data.statuses.len()),
                data,
            )
        }
        Err(CheckError::Invalid(e)) => ApiError::bad_request(&e).into_response(),
        Err(CheckError::Store(e)) => ApiError::unavailable(e.to_string()).into_response(),
    }
}
