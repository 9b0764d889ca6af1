//! Usage in a real PostgreSQL (started by the tests on an ephemeral port):
//! exactly once under concurrency, nothing lost or half-written when the
//! database goes away mid-load, nothing lost when tollgate restarts.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::http_client::HttpClient;
use common::postgres::Postgres;
use common::*;
use tollgate::api::pb::tollgate::v1 as pb;
use tollgate::store::SecretUrl;
use tollgate::usage::{PostgresUsageStore, Pricing, Usage, UsagePolicy};
use tonic::Code as GrpcCode;

const LIMITS: &str = "domain: d\ndescriptors: []\n";

async fn tollgate_on(pg: &Postgres, db: &str) -> (TestServer, LimitsDir) {
    let store = PostgresUsageStore::connect(SecretUrl::new(pg.url(db)))
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    let usage = Usage::new(Arc::new(store), UsagePolicy::default(), Pricing::default());
    let dir = LimitsDir::with_file("d.yaml", LIMITS);
    let server = ServerBuilder::new()
        .usage(usage)
        .with_http()
        .start(&dir)
        .await;
    (server, dir)
}

fn event(id: &str, user: &str) -> pb::TrackUsageRequest {
    pb::TrackUsageRequest {
        usage_id: id.into(),
        user_id: user.into(),
        category: "ai".into(),
        metrics: [("tokens".to_string(), 10.0)].into(),
        success: true,
        ..Default::default()
    }
}

fn count(pg: &Postgres, db: &str, sql: &str) -> u64 {
    pg.psql(db, sql)
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

async fn total(client: &mut Client, user: &str) -> u64 {
    client
        .get_usage_summary(pb::GetUsageSummaryRequest {
            user_id: user.into(),
            days: 1,
        })
        .await
        .expect("summary")
        .into_inner()
        .requests
        .map_or(0, |r| r.total)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_senders_of_the_same_events_count_each_once() {
    let pg = Postgres::start();
    pg.create_database("once");
    let (server, _dir) = tollgate_on(&pg, "once").await;
    let channel = server.channel().await;
    let senders: Vec<_> = (0..16)
        .map(|s| {
            let mut client = Client::new(channel.clone());
            tokio::spawn(async move {
                let mut accepted = 0u32;
                for i in 0..1000 {
                    let n = (i * 7 + s * 131) % 1000;
                    let r = client
                        .track_usage(event(&format!("e{n}"), "pat"))
                        .await
                        .expect("track")
                        .into_inner();
                    accepted += u32::from(!r.duplicate);
                }
                accepted
            })
        })
        .collect();
    let mut accepted = 0;
    for s in senders {
        accepted += s.await.expect("sender");
    }
    assert_eq!(accepted, 1000);
    assert_eq!(total(&mut Client::new(channel), "pat").await, 1000);
    assert_eq!(count(&pg, "once", "SELECT count(*) FROM api_usage"), 1000);
    assert_eq!(
        count(&pg, "once", "SELECT sum(request_count) FROM daily_usage"),
        1000
    );
    assert_eq!(
        count(&pg, "once", "SELECT count(*) FROM usage_metrics"),
        1000
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_mid_load_loses_nothing_and_writes_nothing_half() {
    let mut pg = Postgres::start();
    pg.create_database("outage");
    let (server, _dir) = tollgate_on(&pg, "outage").await;
    let channel = server.channel().await;
    const EVENTS: u32 = 2000;
    let accepted = Arc::new(AtomicU32::new(0));
    let failures = Arc::new(AtomicU32::new(0));
    let senders: Vec<_> = (0..8)
        .map(|s| {
            let mut client = Client::new(channel.clone());
            let (accepted, failures) = (accepted.clone(), failures.clone());
            tokio::spawn(async move {
                for i in (s..EVENTS).step_by(8) {
                    // A client that retries failed events with their ids.
                    loop {
                        match client.track_usage(event(&format!("o{i}"), "quinn")).await {
                            Ok(_) => {
                                accepted.fetch_add(1, Ordering::SeqCst);
                                break;
                            }
                            Err(status) => {
                                assert!(
                                    matches!(
                                        status.code(),
                                        GrpcCode::Unavailable | GrpcCode::ResourceExhausted
                                    ),
                                    "a retryable error: {status:?}"
                                );
                                failures.fetch_add(1, Ordering::SeqCst);
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                        }
                    }
                }
            })
        })
        .collect();
    // Take the database away once the load is under way, and bring it back.
    while accepted.load(Ordering::SeqCst) < EVENTS / 4 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::task::block_in_place(|| pg.kill());
    // Let the outage last long enough for calls to fail.
    while failures.load(Ordering::SeqCst) < 20 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let http = HttpClient::new(server.http_addr.expect("HTTP"));
    let ready = http.get("/readyz", None).await;
    assert_eq!(
        (ready.status, ready.body.as_str()),
        (503, "usage store unavailable\n")
    );
    tokio::task::block_in_place(|| pg.start_again());
    for s in senders {
        tokio::time::timeout(Duration::from_secs(120), s)
            .await
            .expect("every event is eventually recorded")
            .expect("sender");
    }
    assert!(failures.load(Ordering::SeqCst) >= 20, "the outage was felt");
    // Counted = sent, exactly; no event without its aggregate or metric.
    assert_eq!(
        count(&pg, "outage", "SELECT count(*) FROM api_usage"),
        u64::from(EVENTS)
    );
    assert_eq!(
        count(&pg, "outage", "SELECT sum(request_count) FROM daily_usage"),
        u64::from(EVENTS)
    );
    assert_eq!(
        count(&pg, "outage", "SELECT count(*) FROM usage_metrics"),
        u64::from(EVENTS)
    );
    assert_eq!(
        count(
            &pg,
            "outage",
            "SELECT sum(value)::bigint FROM daily_metrics"
        ),
        u64::from(EVENTS) * 10
    );
    assert_eq!(
        total(&mut Client::new(channel), "quinn").await,
        u64::from(EVENTS)
    );
    assert_eq!(http.get("/readyz", None).await.status, 200, "ready again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_tollgate_loses_nothing() {
    let pg = Postgres::start();
    pg.create_database("restart");
    {
        let (server, _dir) = tollgate_on(&pg, "restart").await;
        let mut client = server.client().await;
        for i in 0..50 {
            client
                .track_usage(event(&format!("r{i}"), "rene"))
                .await
                .expect("track");
        }
        server.stop().await;
    }
    let (server, _dir) = tollgate_on(&pg, "restart").await;
    let mut client = server.client().await;
    assert_eq!(
        total(&mut client, "rene").await,
        50,
        "everything answered OK was committed"
    );
    let again = client
        .track_usage(event("r7", "rene"))
        .await
        .expect("track")
        .into_inner();
    assert!(again.duplicate, "ids survive the restart too");
}

/// `sslmode=require`: usage goes to PostgreSQL over TLS, and the server's
/// certificate is verified (a CA nobody gave tollgate is refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_require_connects_over_verified_tls() {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls");
    let pg = Postgres::start_with_tls(Some((
        &fixtures.join("server.pem"),
        &fixtures.join("server.key"),
    )));
    pg.create_database("tls");
    let url = format!("{}?sslmode=require", pg.url("tls"));

    let untrusted = PostgresUsageStore::connect(SecretUrl::new(&url)).await;
    let err = untrusted.expect_err("the test CA is not among the Mozilla roots");
    assert!(err.to_string().contains("certificate"), "{err}");

    let ca = std::fs::read(fixtures.join("ca.pem")).expect("CA");
    let store = PostgresUsageStore::connect_with_ca(SecretUrl::new(&url), Some(&ca))
        .await
        .unwrap_or_else(|e| panic!("connect over TLS: {e}"));
    let usage = Usage::new(Arc::new(store), UsagePolicy::default(), Pricing::default());
    let dir = LimitsDir::with_file("d.yaml", LIMITS);
    let server = ServerBuilder::new().usage(usage).start(&dir).await;
    let mut client = server.client().await;
    client
        .track_usage(event("tls-1", "tessa"))
        .await
        .expect("track over TLS");
    assert_eq!(total(&mut client, "tessa").await, 1);
    // Every connection tollgate holds (the writers and the reader) is TLS.
    let plain = count(
        &pg,
        "tls",
        "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.datname = 'tls' AND a.client_addr IS NOT NULL AND NOT s.ssl \
         AND a.pid <> pg_backend_pid()",
    );
    let tls = count(
        &pg,
        "tls",
        "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.datname = 'tls' AND s.ssl",
    );
    assert_eq!(plain, 0, "no plaintext connection from tollgate");
    assert!(tls >= 2, "the writers and the reader use TLS: {tls}");
}
