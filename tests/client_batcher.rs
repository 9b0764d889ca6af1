//! The usage batcher against a real tollgate: nothing is lost while the
//! server is down (back-pressure instead), nothing on shutdown, batches that
//! were recorded but whose answer was lost are resent with the same ids and
//! counted once; what the server rejects is kept with its reason.

mod common;

use std::time::Duration;

use common::LimitsDir;
use common::client::SwitchedServer;
use tollgate::client::{Client, Error, RecordError, UsageBatcher};
use tollgate::pb::tollgate::v1 as pb;

const LIMITS: &str = "domain: d\ndescriptors: []\n";

fn event(user: &str, tokens: f64) -> pb::TrackUsageRequest {
    pb::TrackUsageRequest {
        user_id: user.into(),
        category: "ai".into(),
        success: true,
        metrics: [("tokens".to_owned(), tokens)].into(),
        ..Default::default()
    }
}

/// A client whose every batch attempt is one call (the batcher retries), with
/// short real waits.
fn client(server: &SwitchedServer) -> Client {
    Client::builder(server.url())
        .max_retries(0)
        .min_retry_delay(Duration::from_millis(5))
        .max_retry_delay(Duration::from_millis(20))
        .build()
        .expect("client")
}

async fn counted(client: &Client, user: &str) -> (u64, f64) {
    let s = client.get_usage_summary(user, 1).await.expect("summary");
    (
        s.requests.map_or(0, |r| r.total),
        s.metrics.get("tokens").copied().unwrap_or_default(),
    )
}

#[tokio::test]
async fn a_server_briefly_down_loses_nothing_and_a_full_queue_makes_callers_wait() {
    let dir = LimitsDir::with_file("d.yaml", LIMITS);
    let server = SwitchedServer::start(&dir, None).await;
    let client = client(&server);
    let batcher = UsageBatcher::builder(client.clone())
        .max_batch_size(5)
        .capacity(10)
        .max_batch_age(Duration::from_secs(3600))
        .build()
        .expect("batcher");
    server.switch.set_down(true);

    // A full batch goes out, and fails: the batcher now retries it.
    for i in 0..5 {
        batcher
            .record(event("ann", f64::from(i)))
            .await
            .expect("record");
    }
    server.switch.wait_failures(1).await;
    // The queue takes exactly `capacity` more, then refuses without losing.
    for i in 5..15 {
        batcher
            .try_record(event("ann", f64::from(i)))
            .expect("room in the queue");
    }
    match batcher.try_record(event("ann", 15.0)) {
        Err(RecordError::Full(e)) => assert_eq!(e.metrics.get("tokens"), Some(&15.0)),
        other => panic!("expected Full with the event back, got {other:?}"),
    }
    // `record` waits for room instead.
    let waiting = {
        let batcher = batcher.clone();
        tokio::spawn(async move { batcher.record(event("ann", 15.0)).await })
    };
    server.switch.wait_failures(2).await;
    assert!(!waiting.is_finished(), "no room while the server is down");

    server.switch.set_down(false);
    waiting
        .await
        .expect("task")
        .expect("recorded once there is room");
    for i in 16..20 {
        batcher
            .record(event("ann", f64::from(i)))
            .await
            .expect("record");
    }
    batcher.shutdown().await.expect("shutdown");

    let stats = batcher.stats();
    assert_eq!(
        (stats.accepted, stats.duplicates, stats.rejected),
        (20, 0, 0)
    );
    assert!(stats.failed_sends >= 3, "{stats:?}");
    // 0 + 1 + ... + 19 tokens.
    assert_eq!(counted(&client, "ann").await, (20, 190.0), "sent = counted");

    match batcher.record(event("ann", 1.0)).await {
        Err(RecordError::Closed(e)) => assert_eq!(e.user_id, "ann"),
        other => panic!("expected Closed after shutdown, got {other:?}"),
    }
    batcher
        .shutdown()
        .await
        .expect("a second shutdown is a no-op");
}

#[tokio::test]
async fn shutdown_sends_everything_still_buffered() {
    let dir = LimitsDir::with_file("d.yaml", LIMITS);
    let server = SwitchedServer::start(&dir, None).await;
    let client = client(&server);
    let batcher = UsageBatcher::builder(client.clone())
        .max_batch_size(100)
        .max_batch_age(Duration::from_secs(3600))
        .build()
        .expect("batcher");
    for _ in 0..250 {
        batcher.record(event("bo", 2.0)).await.expect("record");
    }
    batcher.shutdown().await.expect("shutdown");
    assert_eq!(counted(&client, "bo").await, (250, 500.0));
    let stats = batcher.stats();
    assert_eq!((stats.accepted, stats.batches), (250, 3), "100 + 100 + 50");
}

#[tokio::test]
async fn a_batch_whose_answer_was_lost_is_resent_with_the_same_ids() {
    let dir = LimitsDir::with_file("d.yaml", LIMITS);
    let server = SwitchedServer::start(&dir, None).await;
    let client = client(&server);
    let batcher = UsageBatcher::builder(client.clone())
        .max_batch_size(10)
        .build()
        .expect("batcher");
    // The server records the first send but the answer is lost.
    server.switch.fail_after_handling(1);
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(batcher.record(event("cy", 1.0)).await.expect("record"));
    }
    batcher.flush().await.expect("flush");
    let stats = batcher.stats();
    assert_eq!(
        (stats.accepted, stats.duplicates, stats.failed_sends),
        (0, 3, 1),
        "the resend carried the ids the server already had"
    );
    assert_eq!(counted(&client, "cy").await, (3, 3.0), "counted once");
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "each event its own id");
    batcher.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_partial_batch_is_sent_when_it_is_old_enough() {
    let dir = LimitsDir::with_file("d.yaml", LIMITS);
    let server = SwitchedServer::start(&dir, None).await;
    let client = client(&server);
    let batcher = UsageBatcher::builder(client.clone())
        .max_batch_size(100)
        .max_batch_age(Duration::from_millis(50))
        .build()
        .expect("batcher");
    batcher.record(event("dee", 1.0)).await.expect("record");
    batcher.record(event("dee", 1.0)).await.expect("record");
    // Neither full nor flushed: only its age sends it.
    server.switch.wait_answered(1).await;
    assert_eq!(counted(&client, "dee").await, (2, 2.0));
    assert_eq!(batcher.stats().batches, 1);
    batcher.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn rejected_events_are_kept_with_the_servers_reason() {
    let dir = LimitsDir::with_file("d.yaml", LIMITS);
    let server = SwitchedServer::start(&dir, None).await;
    let client = client(&server);
    let batcher = UsageBatcher::builder(client.clone())
        .build()
        .expect("batcher");
    batcher.record(event("eve", 1.0)).await.expect("record");
    let bad_id = batcher.record(event("eve", -1.0)).await.expect("record");
    batcher.flush().await.expect("flush");
    let rejected = batcher.take_rejected();
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(rejected[0].event.usage_id, bad_id);
    assert!(
        rejected[0].reason.contains("metrics"),
        "{}",
        rejected[0].reason
    );
    assert_eq!(batcher.stats().rejected, 1);
    assert_eq!(counted(&client, "eve").await, (1, 1.0));

    // What can never be accepted is refused at once, with the event back.
    let no_category = pb::TrackUsageRequest {
        category: String::new(),
        ..event("eve", 1.0)
    };
    match batcher.record(no_category).await {
        Err(RecordError::Invalid(msg, e)) => {
            assert!(msg.contains("category"), "{msg}");
            assert_eq!(e.user_id, "eve");
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
    for size in [0, 1001] {
        let built = UsageBatcher::builder(client.clone())
            .max_batch_size(size)
            .build();
        assert!(matches!(built, Err(Error::Config(_))), "{size}: {built:?}");
    }
    batcher.shutdown().await.expect("shutdown");
}
