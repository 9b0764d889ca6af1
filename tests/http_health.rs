//! `--http-addr`: liveness and readiness over real HTTP requests.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tollgate::config::load_limits_dir;
use tollgate::limiter::{FailureMode, RateLimiter};
use tollgate::server::{ServerOptions, run_with_http};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const LIMITS: &str = "domain: d\ndescriptors:\n  - key: k\n    rate_limit: { unit: minute, requests_per_unit: 100 }\n";

/// One HTTP/1.1 GET; returns the status code and the body.
async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    (status, body)
}

#[tokio::test]
async fn healthz_and_readyz_answer_and_readyz_turns_503_while_draining() {
    let dir = LimitsDir::with_file("d.yaml", LIMITS);
    let store = GatedStore::new();
    let limiter = RateLimiter::new(
        load_limits_dir(dir.path()).expect("limits"),
        store.clone(),
        FailureMode::FailClosed,
    );
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let http = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let (grpc_addr, http_addr) = (
        grpc.local_addr().expect("addr"),
        http.local_addr().expect("addr"),
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(run_with_http(
        grpc,
        Some(http),
        limiter,
        ServerOptions::default(),
        async move {
            let _ = stop_rx.await;
        },
    ));

    assert_eq!(get(http_addr, "/healthz").await, (200, "ok\n".to_string()));
    assert_eq!(
        get(http_addr, "/readyz").await,
        (200, "ready\n".to_string())
    );
    assert_eq!(get(http_addr, "/nope").await.0, 404);

    // Hold a gRPC call in flight, then begin the shutdown.
    let channel = tonic::transport::Channel::from_shared(format!("http://{grpc_addr}"))
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut client = Client::new(channel.clone());
    let call = tokio::spawn(async move {
        client
            .check_rate_limit(check("d", vec![descriptor(&[("k", "v")])]))
            .await
    });
    store.wait_entered(1).await;
    let mut watch = HealthClient::new(channel)
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health watch")
        .into_inner();
    assert_eq!(
        watch.message().await.expect("watch").map(|m| m.status),
        Some(ServingStatus::Serving as i32)
    );
    let _ = stop_tx.send(());
    // The server marks HTTP as draining before gRPC health turns NOT_SERVING,
    // so once the watch says so, /readyz must already answer 503.
    let next = watch.message().await.expect("watch").map(|m| m.status);
    assert_eq!(next, Some(ServingStatus::NotServing as i32));
    drop(watch);
    assert_eq!(
        get(http_addr, "/readyz").await,
        (503, "draining\n".to_string())
    );
    assert_eq!(
        get(http_addr, "/healthz").await.0,
        200,
        "still alive while draining"
    );

    store.open(1);
    assert!(call.await.expect("task").is_ok(), "the held call completes");
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("server stops")
        .expect("task")
        .expect("server ran");
    assert!(
        tokio::net::TcpStream::connect(http_addr).await.is_err(),
        "HTTP is closed after the drain"
    );
}
