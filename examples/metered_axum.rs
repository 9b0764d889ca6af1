//! An axum service protected and metered by tollgate's [`RateLimitLayer`].
//!
//! ```text
//! cargo run -- serve --limits examples/limits &        # tollgate on 127.0.0.1:8081
//! cargo run --example metered_axum                     # this service on 127.0.0.1:3000
//! curl -X POST -H 'authorization: Bearer alice:pro' -d 'hello world' \
//!      -i http://127.0.0.1:3000/api/v1/ai/generate
//! ```
//!
//! Every call to `/api/v1/ai/generate` is checked against the `example`
//! domain with the descriptors `[user=<sub>]` and `[path=<route>]`; over the
//! limit it is answered 429 with `Retry-After` and `X-RateLimit-*`. A
//! successful call is recorded as an `ai`/`generate` usage event whose metrics
//! are the tokens the handler reports; the response carries `X-Usage-ID`.
//!
//! The user comes from the token's claims. A real service validates a JWT in
//! its auth layer and puts the claims in the request's extensions; this
//! example's stand-in auth reads demo tokens `Bearer <sub>:<tier>`.
//!
//! `TOLLGATE_URL` (default `http://127.0.0.1:8081`) and `ADDR` (default
//! `127.0.0.1:3000`) configure it. The test `tests/client_layer.rs` drives
//! [`app`] against a real tollgate.
#![allow(dead_code)]

use std::collections::HashMap;

use axum::Router;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tollgate::client::{Client, Metered, RateLimitLayer, UsageBatcher, UsageMetrics, descriptor};
use tollgate::pb::tollgate::v1::TrackUsageRequest;

/// The limits domain this service is checked against.
pub const DOMAIN: &str = "example";

/// The authenticated caller, as a JWT's claims would give it.
#[derive(Debug, Clone)]
pub struct Claims {
    /// The `sub` claim: the user id.
    pub sub: String,
    /// The `tier` claim: the pricing tier.
    pub tier: String,
}

/// The service: `/api/v1/ai/generate` limited and metered, `/health` neither.
/// `fail_open`: serve (unlimited) when tollgate cannot be reached, rather
/// than answer 503.
pub fn app(client: Client, batcher: UsageBatcher, fail_open: bool) -> Router {
    let limits = RateLimitLayer::builder(client, DOMAIN, classify)
        .usage(batcher)
        .fail_open(fail_open)
        .build();
    Router::new()
        .route("/api/v1/ai/generate", post(generate))
        .route_layer(limits)
        // Outside the rate-limit layer, so it runs first: that one needs the claims.
        .route_layer(middleware::from_fn(authenticate))
        // Added after the route layers: neither authenticated nor limited.
        .route("/health", get(|| async { "ok" }))
}

/// What to limit and meter, from the request head alone.
fn classify(parts: &axum::http::request::Parts) -> Option<Metered> {
    let claims = parts.extensions.get::<Claims>()?;
    let route = parts.uri.path();
    Some(Metered {
        descriptors: vec![
            descriptor(&[("user", &claims.sub)]),
            descriptor(&[("path", route)]),
        ],
        hits: 1,
        usage: Some(TrackUsageRequest {
            user_id: claims.sub.clone(),
            tier: claims.tier.clone(),
            category: "ai".into(),
            operation: "generate".into(),
            endpoint: route.into(),
            ..Default::default()
        }),
    })
}

/// The stand-in for JWT validation: `Bearer <sub>:<tier>` becomes [`Claims`].
async fn authenticate(mut request: Request, next: Next) -> Response {
    let token = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some((sub, tier)) = token.and_then(|t| t.split_once(':')) else {
        return (
            StatusCode::UNAUTHORIZED,
            "a bearer token <sub>:<tier> is required\n",
        )
            .into_response();
    };
    let claims = Claims {
        sub: sub.to_owned(),
        tier: tier.to_owned(),
    };
    request.extensions_mut().insert(claims);
    next.run(request).await
}

/// "Generates" text and reports the tokens it used: one per word in, two per
/// word out, in the JSON body for the caller and as [`UsageMetrics`] for the
/// rate-limit layer.
async fn generate(prompt: String) -> Response {
    let prompt_tokens = prompt.split_whitespace().count();
    let text = prompt.to_uppercase();
    let completion_tokens = 2 * prompt_tokens;
    let total = prompt_tokens + completion_tokens;
    let body = format!(
        "{{\"text\":{text:?},\"usage\":{{\"prompt_tokens\":{prompt_tokens},\"completion_tokens\":{completion_tokens},\"tokens\":{total}}}}}"
    );
    let metrics = UsageMetrics(HashMap::from([
        ("tokens".to_owned(), total as f64),
        ("prompt_tokens".to_owned(), prompt_tokens as f64),
        ("completion_tokens".to_owned(), completion_tokens as f64),
    ]));
    let mut response = ([("content-type", "application/json")], body).into_response();
    response.extensions_mut().insert(metrics);
    response
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let tollgate = std::env::var("TOLLGATE_URL").unwrap_or_else(|_| "http://127.0.0.1:8081".into());
    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:3000".into());
    // In front of users: fail fast rather than retry long.
    let client = Client::builder(tollgate)
        .timeout(std::time::Duration::from_millis(500))
        .max_retries(1)
        .build()?;
    let batcher = UsageBatcher::builder(client.clone()).build()?;
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app(client, batcher.clone(), false))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    // Usage still buffered is billing data: send it before leaving.
    batcher.shutdown().await?;
    Ok(())
}
