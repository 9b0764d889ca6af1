//! The seed's response envelope: `{status, message, data}` on success and
//! `{status: "error", message, error: {detail, ...}}` on failure, one shape
//! for every `/v1` endpoint, so clients parse one thing.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::request::InvalidRequest;
use crate::usage::{UsageCallError, UsageError};

/// A successful answer.
#[derive(Debug, Serialize)]
pub struct Success<T: Serialize> {
    pub status: &'static str,
    pub message: String,
    pub data: T,
}

/// `200` with `data` in the envelope.
pub fn success<T: Serialize>(message: impl Into<String>, data: T) -> Response {
    Json(Success {
        status: "success",
        message: message.into(),
        data,
    })
    .into_response()
}

#[derive(Debug, Serialize)]
struct ErrorBody {
    status: &'static str,
    message: &'static str,
    error: ErrorDetail,
}

/// What went wrong, for the caller.
#[derive(Debug, Serialize, Default)]
pub struct ErrorDetail {
    pub detail: String,
    /// The request field at fault, for 400s.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// For 429s: the limit, the count this request would have made, and
    /// seconds to wait.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
}

/// An error answer: status, a fixed message per kind, and the detail.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub error: ErrorDetail,
}

impl ApiError {
    fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            status,
            error: ErrorDetail {
                detail: detail.into(),
                ..ErrorDetail::default()
            },
        }
    }

    pub fn bad_request(e: &InvalidRequest) -> Self {
        let mut err = Self::new(StatusCode::BAD_REQUEST, e.to_string());
        err.error.field = Some(e.field.clone());
        err
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, detail)
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, detail)
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "this method is not allowed on this path",
        )
    }

    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, detail)
    }

    pub fn rate_limited(limit: u64, retry_after: u64) -> Self {
        let mut err = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!("Minute limit of {limit} requests exceeded"),
        );
        err.error.limit = Some(limit);
        err.error.current = Some(limit + 1);
        err.error.retry_after = Some(retry_after);
        err
    }

    fn message(&self) -> &'static str {
        match self.status {
            StatusCode::BAD_REQUEST => "Invalid request",
            StatusCode::UNAUTHORIZED => "Unauthorized",
            StatusCode::FORBIDDEN => "Forbidden",
            StatusCode::NOT_FOUND => "Not found",
            StatusCode::METHOD_NOT_ALLOWED => "Method not allowed",
            StatusCode::TOO_MANY_REQUESTS => "Rate limit exceeded",
            StatusCode::SERVICE_UNAVAILABLE => "Service unavailable",
            _ => "Internal error",
        }
    }
}

impl From<UsageCallError> for ApiError {
    fn from(e: UsageCallError) -> Self {
        match e {
            UsageCallError::Invalid(e) => Self::bad_request(&e),
            UsageCallError::Store(UsageError::Unavailable(m) | UsageError::Busy(m)) => {
                Self::unavailable(m)
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status;
        let body = ErrorBody {
            status: "error",
            message: self.message(),
            error: self.error,
        };
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            // RFC 6750: tell the client which scheme to use.
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
