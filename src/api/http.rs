//! The HTTP face (`--http-addr`): liveness and readiness for orchestrators.
//! The usage, billing and JSON check endpoints, auth and metrics join it in
//! their own change.
//!
//! - `GET /healthz`: 200 while the process serves at all.
//! - `GET /readyz`: 200 when the counter store answers (every Redis shard)
//!   and the server is not draining; 503 otherwise, so a load balancer stops
//!   sending traffic before shutdown completes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

use crate::limiter::RateLimiter;

#[derive(Debug, Clone)]
struct Health {
    limiter: RateLimiter,
    draining: Arc<AtomicBool>,
}

/// The HTTP routes; `draining` turns true when shutdown begins.
pub fn router(limiter: RateLimiter, draining: Arc<AtomicBool>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(Health { limiter, draining })
}

async fn readyz(State(h): State<Health>) -> (StatusCode, &'static str) {
    if h.draining.load(Ordering::Acquire) {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else if !h.limiter.store().is_healthy() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "counter store unavailable\n",
        )
    } else {
        (StatusCode::OK, "ready\n")
    }
}
