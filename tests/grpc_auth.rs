//! gRPC authentication: API keys in metadata, TLS, and mutual TLS with
//! client certificates, against the real server with a real client.

mod common;

use std::sync::Arc;

use common::*;
use tollgate::api::pb::tollgate::v1 as pb;
use tollgate::auth::{ApiKey, ApiKeys};
use tollgate::config::auth::TlsConfig;
use tonic::Code;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const LIMITS: &str = "domain: api\ndescriptors:\n  - key: user\n    rate_limit: { unit: minute, requests_per_unit: 100 }\n";

fn fixtures() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn pem(name: &str) -> Vec<u8> {
    let path = fixtures().join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn with_key<T>(message: T, key: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(key) = key {
        let value: MetadataValue<_> = format!("Bearer {key}").parse().expect("metadata");
        request.metadata_mut().insert("authorization", value);
    }
    request
}

fn usage(id: &str) -> pb::TrackUsageRequest {
    pb::TrackUsageRequest {
        usage_id: id.into(),
        user_id: "u1".into(),
        category: "ai".into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn api_keys_admit_only_known_services_to_their_calls() {
    let keys = ApiKeys::new(vec![
        ApiKey {
            name: "billing".into(),
            key: "billing-key-0123456789".into(),
            allow: vec!["TrackUsage".into(), "TrackUsageBatch".into()],
        },
        ApiKey {
            name: "edge".into(),
            key: "edge-key-0123456789ab".into(),
            allow: vec!["CheckRateLimit".into(), "ShouldRateLimit".into()],
        },
    ])
    .expect("keys");
    let dir = LimitsDir::with_file("api.yaml", LIMITS);
    let server = ServerBuilder::new()
        .configure(|o| o.api_keys = Some(Arc::new(keys)))
        .start(&dir)
        .await;
    let mut client = server.client().await;

    let err = client
        .track_usage(with_key(usage("a"), None))
        .await
        .expect_err("no key");
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    let err = client
        .track_usage(with_key(usage("a"), Some("wrong-key-0123456789")))
        .await
        .expect_err("unknown key");
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    assert_eq!(err.message(), "unknown API key");

    let ok = client
        .track_usage(with_key(usage("a"), Some("billing-key-0123456789")))
        .await
        .expect("billing may track");
    assert!(!ok.into_inner().duplicate);

    let check = check("api", vec![descriptor(&[("user", "u1")])]);
    let err = client
        .check_rate_limit(with_key(check.clone(), Some("billing-key-0123456789")))
        .await
        .expect_err("billing may not check");
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    assert_eq!(
        err.message(),
        "API key 'billing' may not call CheckRateLimit"
    );
    client
        .check_rate_limit(with_key(check, Some("edge-key-0123456789ab")))
        .await
        .expect("edge may check");
    let err = client
        .get_usage_summary(with_key(
            pb::GetUsageSummaryRequest {
                user_id: "u1".into(),
                days: 1,
            },
            Some("edge-key-0123456789ab"),
        ))
        .await
        .expect_err("edge may not read usage");
    assert_eq!(err.code(), Code::PermissionDenied);

    // Health stays open for orchestrators.
    let mut health = HealthClient::new(server.channel().await);
    health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health needs no key");
}

async fn tls_server(client_ca: bool) -> (TestServer, LimitsDir) {
    let config = TlsConfig {
        cert_file: fixtures().join("tls/server.pem"),
        key_file: fixtures().join("tls/server.key"),
        client_ca_file: client_ca.then(|| fixtures().join("tls/ca.pem")),
    };
    let tls = config
        .server_tls(std::path::Path::new("test.yaml"))
        .expect("TLS config");
    let dir = LimitsDir::with_file("api.yaml", LIMITS);
    let server = ServerBuilder::new()
        .configure(|o| o.tls = Some(tls))
        .start(&dir)
        .await;
    (server, dir)
}

async fn tls_channel(
    server: &TestServer,
    identity: Option<(&str, &str)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(pem("tls/ca.pem")))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(pem(cert), pem(key)));
    }
    Channel::from_shared(format!("https://{}", server.addr))
        .expect("url")
        .tls_config(tls)?
        .connect()
        .await
}

async fn checks(channel: Channel) -> Result<(), tonic::Status> {
    let mut client = pb::rate_limiter_client::RateLimiterClient::new(channel);
    client
        .check_rate_limit(check("api", vec![descriptor(&[("user", "u1")])]))
        .await
        .map(|_| ())
}

#[tokio::test]
async fn tls_serves_verified_clients_and_refuses_plaintext() {
    let (server, _dir) = tls_server(false).await;
    let channel = tls_channel(&server, None).await.expect("TLS handshake");
    checks(channel).await.expect("check over TLS");

    // A plaintext client cannot talk to the TLS port.
    let plain = Channel::from_shared(server.url())
        .expect("url")
        .connect()
        .await;
    let refused = match plain {
        Err(_) => true,
        Ok(channel) => checks(channel).await.is_err(),
    };
    assert!(refused, "a plaintext call must not succeed on the TLS port");
}

#[tokio::test]
async fn mutual_tls_needs_a_client_certificate_from_the_configured_ca() {
    let (server, _dir) = tls_server(true).await;
    let channel = tls_channel(&server, Some(("tls/client.pem", "tls/client.key")))
        .await
        .expect("mTLS handshake");
    checks(channel)
        .await
        .expect("check with a client certificate");

    for (identity, what) in [
        (None, "no client certificate"),
        (
            Some(("tls/rogue.pem", "tls/rogue.key")),
            "a certificate of another CA",
        ),
    ] {
        let refused = match tls_channel(&server, identity).await {
            Err(_) => true,
            Ok(channel) => checks(channel).await.is_err(),
        };
        assert!(refused, "{what} must be refused");
    }
}

#[test]
fn a_bad_certificate_is_a_config_error_naming_the_field() {
    let config = TlsConfig {
        cert_file: fixtures().join("tls/missing.pem"),
        key_file: fixtures().join("tls/server.key"),
        client_ca_file: None,
    };
    let err = config
        .server_tls(std::path::Path::new("/etc/tollgate/config.yaml"))
        .expect_err("missing file");
    let text = err.to_string();
    assert!(text.contains("server.tls.cert_file"), "{text}");
    assert!(text.contains("config.yaml"), "{text}");
    let garbage = TlsConfig {
        cert_file: fixtures().join("README.md"),
        key_file: fixtures().join("README.md"),
        client_ca_file: None,
    };
    assert!(garbage.server_tls(std::path::Path::new("c.yaml")).is_err());
}
