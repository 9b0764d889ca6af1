//! Health, reflection, load shedding and graceful drain of the real server.

mod common;

use std::time::Duration;

use common::*;
use tollgate::api::pb::tollgate::v1 as pb;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

const LIMITS: &str = "domain: d\ndescriptors:\n  - key: k\n    rate_limit: { unit: minute, requests_per_unit: 100 }\n";
const SERVICE: &str = "tollgate.v1.RateLimiter";

fn health_request(service: &str) -> HealthCheckRequest {
    HealthCheckRequest {
        service: service.into(),
    }
}

fn serving(r: &HealthCheckResponse) -> ServingStatus {
    ServingStatus::try_from(r.status).unwrap_or(ServingStatus::Unknown)
}

#[tokio::test]
async fn health_reports_serving_for_the_server_and_the_service() {
    let dir = LimitsDir::with_file("d.yaml", LIMITS);
    let server = ServerBuilder::new().start(&dir).await;
    let mut health = HealthClient::new(server.channel().await);
    for service in ["", SERVICE] {
        let r = health
            .check(health_request(service))
            .await
            .expect("health check")
            .into_inner();
        assert_eq!(serving(&r), ServingStatus::Serving, "service {service:?}");
    }
    let unknown = health.check(health_request("no.such.Service")).await;
    assert_eq!(
        unknown.map_err(|s| s.code()).err(),
        Some(tonic::Code::NotFound)
    );
    server.stop().await;
}

#[tokio::test]
async fn reflection_lists_the_services() {
    let dir = LimitsDir::with_file("d.yaml", LIMITS);
    let server = ServerBuilder::new().start(&dir).await;
    let mut reflection = ServerReflectionClient::new(server.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = reflection
        .server_reflection_info(tokio_stream::once(request))
        .await
        .expect("reflection call")
        .into_inner();
    let response = stream
        .message()
        .await
        .expect("reflection answer")
        .expect("one message");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer: {response:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&SERVICE.to_string()), "{names:?}");
    assert!(
        names.contains(&"grpc.health.v1.Health".to_string()),
        "{names:?}"
    );
}

#[tokio::test]
async fn requests_beyond_the_concurrency_bound_are_shed_with_resource_exhausted() {
    let dir = LimitsDir::with_file("d.yaml", LIMITS);
    let store = GatedStore::new();
    let server = ServerBuilder::with_store(store.clone())
        .max_concurrent_requests(1)
        .start(&dir)
        .await;
    let channel = server.channel().await;

    let mut first_client = Client::new(channel.clone());
    let first = tokio::spawn(async move {
        first_client
            .check_rate_limit(check("d", vec![descriptor(&[("k", "a")])]))
            .await
    });
    store.wait_entered(1).await;

    // The one slot is held: the next call is refused at once, not queued.
    let mut second_client = Client::new(channel.clone());
    let shed = tokio::time::timeout(
        Duration::from_secs(5),
        second_client.check_rate_limit(check("d", vec![descriptor(&[("k", "b")])])),
    )
    .await
    .expect("shed without waiting");
    let status = shed.expect_err("over the concurrency bound");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");

    store.open(1);
    let first = first.await.expect("task").expect("the held call completes");
    assert_eq!(code(&first.into_inner()), pb::Code::Ok);

    // With the slot free again, calls pass.
    store.open(1);
    let again = second_client
        .check_rate_limit(check("d", vec![descriptor(&[("k", "b")])]))
        .await
        .expect("call after the slot is free");
    assert_eq!(code(&again.into_inner()), pb::Code::Ok);
}

#[tokio::test]
async fn shutdown_turns_health_not_serving_and_lets_in_flight_calls_finish() {
    let dir = LimitsDir::with_file("d.yaml", LIMITS);
    let store = GatedStore::new();
    let mut server = ServerBuilder::with_store(store.clone()).start(&dir).await;
    let channel = server.channel().await;

    let mut health = HealthClient::new(channel.clone());
    let mut watch = health
        .watch(health_request(SERVICE))
        .await
        .expect("health watch")
        .into_inner();
    let first = watch.message().await.expect("watch").expect("status");
    assert_eq!(serving(&first), ServingStatus::Serving);

    let mut client = Client::new(channel.clone());
    let in_flight = tokio::spawn(async move {
        client
            .check_rate_limit(check("d", vec![descriptor(&[("k", "a")])]))
            .await
    });
    store.wait_entered(1).await;

    server.begin_shutdown();
    let next = tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .expect("health changes on shutdown")
        .expect("watch")
        .expect("status");
    assert_eq!(serving(&next), ServingStatus::NotServing);

    // The call that was in flight when shutdown began completes normally.
    store.open(1);
    let answer = in_flight
        .await
        .expect("task")
        .expect("in-flight call completes");
    assert_eq!(code(&answer.into_inner()), pb::Code::Ok);

    drop(watch);
    server.wait_stopped().await;
}
