//! The HTTP face (`--http-addr`), on axum, in the same process as gRPC.
//!
//! - `GET /v1/usage/summary`, `GET /v1/usage/billing`: usage and bills in
//!   the seed's envelope, behind a bearer JWT ([`usage`]), limited per user
//!   by tollgate's own limiter ([`self_limit`]);
//! - `POST /v1/check`: the JSON twin of `CheckRateLimit` ([`check`]);
//! - `GET /openapi.yaml`: the OpenAPI 3 document of all of the above;
//! - `GET /metrics`: Prometheus ([`crate::metrics`]);
//! - `GET /healthz`: 200 while the process serves at all;
//! - `GET /readyz`: 200 when the counter store answers (every Redis shard),
//!   the usage store answers (PostgreSQL) and the server is not draining;
//!   503 otherwise, so a load balancer stops sending traffic before shutdown
//!   completes.

pub mod check;
pub mod envelope;
pub mod self_limit;
pub mod usage;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use self::envelope::ApiError;
use self::self_limit::{Quota, SelfLimit};
use crate::auth::{ApiKeys, JwtVerifier};
use crate::limiter::RateLimiter;
use crate::metrics::{self, Metrics};
use crate::request::InvalidRequest;
use crate::usage::Usage;

/// The OpenAPI document, served as written.
pub const OPENAPI: &str = include_str!("openapi.yaml");

/// Who may call the HTTP API.
#[derive(Debug, Clone, Default)]
pub struct HttpAuth {
    /// Bearer tokens for the usage endpoints. Without it those endpoints
    /// are open and need `?user_id=` (for local use; the default listens
    /// on loopback only).
    pub jwt: Option<Arc<JwtVerifier>>,
    /// API keys for `POST /v1/check` (the same keys as gRPC).
    pub api_keys: Option<Arc<ApiKeys>>,
}

/// Everything the handlers share. Cheap to clone.
#[derive(Debug, Clone)]
pub struct HttpState {
    pub limiter: RateLimiter,
    pub usage: Usage,
    pub metrics: Metrics,
    pub auth: HttpAuth,
    pub self_limit: Option<SelfLimit>,
    /// Turns true when shutdown begins.
    pub draining: Arc<AtomicBool>,
}

/// The HTTP routes.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/openapi.yaml", get(openapi))
        .route("/v1/usage/summary", get(usage::summary))
        .route("/v1/usage/billing", get(usage::billing))
        .route("/v1/check", post(check::check))
        .fallback(|| async { ApiError::not_found("no such endpoint; see /openapi.yaml") })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(axum::middleware::from_fn_with_state(state.clone(), timed))
        .with_state(state)
}

/// Times every request by route (the pattern, not the path, so callers
/// cannot add series) and status.
async fn timed(State(state): State<HttpState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let start = Instant::now();
    let response = next.run(request).await;
    state.metrics.observe_http(
        &route,
        response.status().as_u16(),
        start.elapsed().as_secs_f64(),
    );
    response
}

impl HttpState {
    /// Authenticates a usage request and counts it against its caller's
    /// budget. Returns the user whose data is asked for and the caller's
    /// quota (for the response headers) when the API limits itself.
    async fn admit(
        &self,
        headers: &HeaderMap,
        asked_user: Option<&str>,
    ) -> Result<(String, Option<Quota>), Response> {
        let asked_user = asked_user.filter(|u| !u.is_empty());
        let (caller, target) = match &self.auth.jwt {
            Some(jwt) => {
                let token = bearer(headers).map_err(IntoResponse::into_response)?;
                let principal = jwt
                    .verify(token)
                    .map_err(|e| ApiError::unauthorized(e.0).into_response())?;
                let target = match asked_user {
                    Some(u) if u != principal.user_id && !principal.admin => {
                        return Err(ApiError::forbidden(format!(
                            "this token may read only the usage of '{}' (reading others needs the {} scope)",
                            principal.user_id,
                            crate::auth::ADMIN_SCOPE
                        ))
                        .into_response());
                    }
                    Some(u) => u.to_owned(),
                    None => principal.user_id.clone(),
                };
                (principal.user_id, target)
            }
            None => {
                let user = asked_user.ok_or_else(|| {
                    ApiError::bad_request(&InvalidRequest::new(
                        "user_id",
                        "required when auth.jwt is not configured",
                    ))
                    .into_response()
                })?;
                (user.to_owned(), user.to_owned())
            }
        };
        let Some(limit) = &self.self_limit else {
            return Ok((target, None));
        };
        let quota = limit.check(&caller).await;
        if quota.allowed {
            Ok((target, Some(quota)))
        } else {
            let mut response =
                ApiError::rate_limited(quota.limit, quota.retry_after).into_response();
            quota.write_headers(response.headers_mut());
            Err(response)
        }
    }
}

/// The token of `Authorization: Bearer <token>`.
fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("a bearer token is required"))?;
    let value = value
        .to_str()
        .map_err(|_| ApiError::unauthorized("the authorization header is not text"))?;
    value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::unauthorized("authorization must be 'Bearer <token>'"))
}

async fn readyz(State(s): State<HttpState>) -> (StatusCode, &'static str) {
    if s.draining.load(Ordering::Acquire) {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else if !s.limiter.store().is_healthy() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "counter store unavailable\n",
        )
    } else if s.usage.check().await.is_err() {
        (StatusCode::SERVICE_UNAVAILABLE, "usage store unavailable\n")
    } else {
        (StatusCode::OK, "ready\n")
    }
}

async fn metrics_text(State(s): State<HttpState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(metrics::CONTENT_TYPE),
        )],
        s.metrics.render(),
    )
}

async fn openapi() -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/yaml"),
        )],
        OPENAPI,
    )
}
