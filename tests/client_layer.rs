//! The tower layer in front of the example axum service
//! (`examples/metered_axum.rs`) and of a tonic service, against a real
//! tollgate: allowed, limited (status, body, headers), tollgate down with
//! fail-open and fail-closed, and usage recorded with the handler's metrics.

mod common;

#[path = "../examples/metered_axum.rs"]
mod metered_axum;

use std::time::Duration;

use axum::body::Body;
use common::client::{SwitchedServer, memory_usage};
use common::*;
use http::{Request, StatusCode};
use tollgate::client::{Client, Metered, RateLimitLayer, UsageBatcher, descriptor};
use tollgate::pb::tollgate::v1 as pb;
use tower::ServiceExt;

/// Two calls a minute per user; the route's own limit is far away.
const LIMITS: &str = "
domain: example
descriptors:
  - key: user
    rate_limit: { unit: minute, requests_per_unit: 2 }
  - key: path
    value: /api/v1/ai/generate
    rate_limit: { unit: minute, requests_per_unit: 100 }
";

const GENERATE: &str = "/api/v1/ai/generate";

fn fast_client(url: String) -> Client {
    Client::builder(url)
        .max_retries(0)
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client")
}

fn generate(user: &str, prompt: &str) -> Request<Body> {
    Request::post(GENERATE)
        .header("authorization", format!("Bearer {user}:pro"))
        .body(Body::from(prompt.to_owned()))
        .expect("request")
}

fn header<'a>(r: &'a http::Response<Body>, name: &str) -> Option<&'a str> {
    r.headers().get(name).and_then(|v| v.to_str().ok())
}

async fn body_text(r: http::Response<Body>) -> String {
    let bytes = axum::body::to_bytes(r.into_body(), 1 << 20)
        .await
        .expect("body");
    String::from_utf8(bytes.to_vec()).expect("utf-8")
}

async fn tollgate() -> (TestServer, LimitsDir) {
    let dir = LimitsDir::with_file("example.yaml", LIMITS);
    // Counters on a clock at a minute boundary: every window has 60 s left.
    let server = ServerBuilder::with_clock(&minute_aligned_clock())
        .usage(memory_usage())
        .start(&dir)
        .await;
    (server, dir)
}

#[tokio::test]
async fn allowed_calls_carry_limit_headers_and_are_metered_then_the_third_is_429() {
    let (server, _dir) = tollgate().await;
    let client = fast_client(server.url());
    let batcher = UsageBatcher::builder(client.clone())
        .build()
        .expect("batcher");
    let app = metered_axum::app(client.clone(), batcher.clone(), false);

    let mut ids = Vec::new();
    for remaining in ["1", "0"] {
        let r = app
            .clone()
            .oneshot(generate("alice", "a b c"))
            .await
            .expect("call");
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(header(&r, "x-ratelimit-limit"), Some("2"));
        assert_eq!(header(&r, "x-ratelimit-remaining"), Some(remaining));
        assert_eq!(header(&r, "x-ratelimit-reset"), Some("60"));
        let id = header(&r, "x-usage-id").expect("x-usage-id").to_owned();
        assert_eq!(
            uuid::Uuid::parse_str(&id).expect("uuid").get_version_num(),
            4
        );
        ids.push(id);
        assert!(body_text(r).await.contains(r#""tokens":9"#));
    }
    assert_ne!(ids[0], ids[1]);

    let r = app
        .clone()
        .oneshot(generate("alice", "a b c"))
        .await
        .expect("call");
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&r, "retry-after"), Some("60"));
    assert_eq!(header(&r, "x-ratelimit-limit"), Some("2"));
    assert_eq!(header(&r, "x-ratelimit-remaining"), Some("0"));
    assert_eq!(header(&r, "x-ratelimit-reset"), Some("60"));
    assert_eq!(header(&r, "content-type"), Some("application/json"));
    assert_eq!(
        header(&r, "x-usage-id"),
        None,
        "a refused call is not metered"
    );
    assert_eq!(
        body_text(r).await,
        r#"{"error":"rate limit exceeded; retry after 60 s","retry_after_seconds":60}"#
    );

    // Another user is not limited by alice's calls.
    let r = app
        .clone()
        .oneshot(generate("bob", "x"))
        .await
        .expect("call");
    assert_eq!(r.status(), StatusCode::OK);

    // Neither limited nor metered.
    for _ in 0..3 {
        let r = app
            .clone()
            .oneshot(
                Request::get("/health")
                    .body(Body::empty())
                    .expect("request"),
            )
            .await
            .expect("call");
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(header(&r, "x-ratelimit-limit"), None);
        assert_eq!(header(&r, "x-usage-id"), None);
    }

    batcher.flush().await.expect("flush");
    let summary = client.get_usage_summary("alice", 1).await.expect("summary");
    assert_eq!(summary.requests.as_ref().map(|r| r.total), Some(2));
    assert_eq!(
        summary
            .requests
            .as_ref()
            .and_then(|r| r.by_category.get("ai").copied()),
        Some(2)
    );
    // "a b c": 3 prompt tokens, 6 completion tokens, 9 in all, per call.
    let metric = |k: &str| summary.metrics.get(k).copied();
    assert_eq!(metric("tokens"), Some(18.0));
    assert_eq!(metric("prompt_tokens"), Some(6.0));
    assert_eq!(metric("completion_tokens"), Some(12.0));
    batcher.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn tollgate_down_fails_closed_with_503_or_open_to_the_handler() {
    let dir = LimitsDir::with_file("example.yaml", LIMITS);
    let server = SwitchedServer::start(&dir, None).await;
    let client = fast_client(server.url());
    let batcher = UsageBatcher::builder(client.clone())
        .max_batch_age(Duration::from_secs(3600))
        .build()
        .expect("batcher");
    server.switch.set_down(true);

    let closed = metered_axum::app(client.clone(), batcher.clone(), false);
    let r = closed.oneshot(generate("carol", "hi")).await.expect("call");
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(header(&r, "x-usage-id"), None);
    assert_eq!(
        body_text(r).await,
        r#"{"error":"rate limiter unavailable"}"#
    );

    let open = metered_axum::app(client.clone(), batcher.clone(), true);
    let r = open
        .oneshot(generate("carol", "hi there"))
        .await
        .expect("call");
    assert_eq!(r.status(), StatusCode::OK, "served without a decision");
    assert_eq!(header(&r, "x-ratelimit-limit"), None, "no limit is known");
    assert!(header(&r, "x-usage-id").is_some(), "still metered");

    // The usage is kept until tollgate is back, then counted.
    server.switch.set_down(false);
    batcher.flush().await.expect("flush");
    let summary = client.get_usage_summary("carol", 1).await.expect("summary");
    assert_eq!(summary.requests.map(|r| r.total), Some(1));
    assert_eq!(summary.metrics.get("tokens"), Some(&6.0));
    batcher.shutdown().await.expect("shutdown");
}

/// A tonic service (tollgate's own API, standing in for any gRPC service)
/// behind the layer on 127.0.0.1:0. `GetUsageSummary` is limited per user
/// (from `x-user` metadata) and metered.
async fn protected_grpc(
    layer: RateLimitLayer,
) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let limiter_dir = LimitsDir::with_file("d.yaml", "domain: d\ndescriptors: []\n");
    let parsed = tollgate::config::load_limits_dir(limiter_dir.path()).expect("limits");
    let limiter = tollgate::limiter::RateLimiter::new(
        parsed,
        std::sync::Arc::new(tollgate::store::MemoryStore::new(1000)),
        tollgate::limiter::FailureMode::FailClosed,
    );
    let service = tollgate::api::grpc::TollgateService::new(limiter, memory_usage()).into_server();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .layer(layer)
            .add_service(service)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async {
                    let _ = rx.await;
                },
            )
            .await
            .expect("protected server runs");
    });
    (addr, tx)
}

fn grpc_layer(client: Client, batcher: UsageBatcher, fail_open: bool) -> RateLimitLayer {
    RateLimitLayer::builder(client, "example", |parts| {
        if !parts.uri.path().ends_with("/GetUsageSummary") {
            return None;
        }
        let user = parts.headers.get("x-user")?.to_str().ok()?.to_owned();
        Some(Metered {
            descriptors: vec![descriptor(&[("user", &user)])],
            hits: 1,
            usage: Some(pb::TrackUsageRequest {
                user_id: user,
                category: "grpc".into(),
                operation: "summary".into(),
                ..Default::default()
            }),
        })
    })
    .usage(batcher)
    .fail_open(fail_open)
    .build()
}

fn summary_call(user: &str) -> tonic::Request<pb::GetUsageSummaryRequest> {
    let mut r = tonic::Request::new(pb::GetUsageSummaryRequest {
        user_id: "anyone".into(),
        days: 1,
    });
    r.metadata_mut()
        .insert("x-user", user.parse().expect("ascii"));
    r
}

#[tokio::test]
async fn grpc_over_the_limit_is_resource_exhausted_with_the_same_headers() {
    let (server, _dir) = tollgate().await;
    let client = fast_client(server.url());
    let batcher = UsageBatcher::builder(client.clone())
        .build()
        .expect("batcher");
    let (addr, _stop) = protected_grpc(grpc_layer(client.clone(), batcher.clone(), false)).await;
    let mut grpc = pb::rate_limiter_client::RateLimiterClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");

    for remaining in ["1", "0"] {
        let r = grpc
            .get_usage_summary(summary_call("gina"))
            .await
            .expect("allowed");
        let md = r.metadata();
        assert_eq!(
            md.get("x-ratelimit-remaining")
                .and_then(|v| v.to_str().ok()),
            Some(remaining)
        );
        assert!(md.get("x-usage-id").is_some());
    }
    let status = grpc
        .get_usage_summary(summary_call("gina"))
        .await
        .expect_err("limited");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    let md = status.metadata();
    let get = |k: &str| md.get(k).and_then(|v| v.to_str().ok());
    assert_eq!(get("retry-after"), Some("60"));
    assert_eq!(get("x-ratelimit-limit"), Some("2"));
    assert_eq!(get("x-ratelimit-remaining"), Some("0"));
    assert_eq!(get("x-ratelimit-reset"), Some("60"));

    // Unlimited methods pass through untouched.
    let r = grpc
        .check_rate_limit(check("d", vec![descriptor(&[("k", "v")])]))
        .await
        .expect("passes");
    assert!(r.metadata().get("x-ratelimit-limit").is_none());

    batcher.flush().await.expect("flush");
    let summary = client.get_usage_summary("gina", 1).await.expect("summary");
    assert_eq!(
        summary
            .requests
            .and_then(|r| r.by_category.get("grpc").copied()),
        Some(2),
        "the two allowed calls were metered"
    );
    batcher.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn grpc_with_tollgate_down_fails_closed_as_unavailable() {
    let dir = LimitsDir::with_file("example.yaml", LIMITS);
    let server = SwitchedServer::start(&dir, None).await;
    server.switch.set_down(true);
    let client = fast_client(server.url());
    let batcher = UsageBatcher::builder(client.clone())
        .build()
        .expect("batcher");
    let (addr, _stop) = protected_grpc(grpc_layer(client.clone(), batcher.clone(), false)).await;
    let mut grpc = pb::rate_limiter_client::RateLimiterClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    let status = grpc
        .get_usage_summary(summary_call("hank"))
        .await
        .expect_err("closed");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert_eq!(batcher.stats(), Default::default(), "nothing metered");
}
