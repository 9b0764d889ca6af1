//! A running server keeps its limits when a bad file is written, and takes a
//! good one, without dropping requests.

mod common;

use std::time::Duration;

use common::*;
use tokio_util::sync::CancellationToken;
use tollgate::api::pb::tollgate::v1 as pb;
use tollgate::config::{LimitsWatcher, ReloadStatus};

const FIVE: &str =
    "domain: d\ndescriptors:\n  - key: k\n    rate_limit: { unit: minute, requests_per_unit: 5 }\n";
const SEVEN: &str =
    "domain: d\ndescriptors:\n  - key: k\n    rate_limit: { unit: minute, requests_per_unit: 7 }\n";
const BAD: &str = "domain: d\ndescriptors:\n  - key: k\n    rate_limit: { unit: fortnight, requests_per_unit: 1 }\n";

async fn limit_of(client: &mut Client) -> Option<u32> {
    let r = client
        .check_rate_limit(pb::CheckRateLimitRequest {
            dry_run: true,
            ..check("d", vec![descriptor(&[("k", "x")])])
        })
        .await
        .expect("call")
        .into_inner();
    r.statuses[0].limit.as_ref().map(|l| l.requests_per_unit)
}

async fn next_attempt(status: &mut tokio::sync::watch::Receiver<ReloadStatus>) -> ReloadStatus {
    tokio::time::timeout(Duration::from_secs(10), status.changed())
        .await
        .expect("a reload attempt within 10 s")
        .expect("watcher alive");
    status.borrow_and_update().clone()
}

#[tokio::test]
async fn bad_files_are_rejected_whole_and_good_ones_take_effect() {
    let dir = LimitsDir::with_file("d.yaml", FIVE);
    let server = ServerBuilder::new().start(&dir).await;
    let stop = CancellationToken::new();
    let watcher = LimitsWatcher::spawn(
        dir.path().to_path_buf(),
        server.limiter.clone(),
        Duration::from_millis(50),
        stop.clone(),
    )
    .expect("watch");
    let mut status = watcher.status();
    let mut client = server.client().await;
    assert_eq!(limit_of(&mut client).await, Some(5));

    // A broken edit of one file, then a good new file: every reload sees the
    // broken one, so nothing of either may be applied.
    dir.write("d.yaml", BAD);
    dir.write("other.yaml", "domain: other\ndescriptors: []\n");
    let mut s = next_attempt(&mut status).await;
    while s.last_error.is_none() {
        s = next_attempt(&mut status).await;
    }
    let error = s.last_error.clone().unwrap_or_default();
    assert!(
        error.contains("d.yaml:4: invalid rate limit unit 'fortnight'"),
        "{error}"
    );
    assert_eq!(s.generation, 1, "nothing was applied");
    assert_eq!(limit_of(&mut client).await, Some(5));
    assert!(
        server.limiter.limits().domain("other").is_none(),
        "not half-applied"
    );

    dir.write("d.yaml", SEVEN);
    let mut s = next_attempt(&mut status).await;
    while s.last_error.is_some() || s.generation == 1 {
        s = next_attempt(&mut status).await;
    }
    assert_eq!(limit_of(&mut client).await, Some(7));
    assert!(server.limiter.limits().domain("other").is_some());

    stop.cancel();
    watcher.join().await;
}

#[tokio::test]
async fn requests_keep_being_answered_during_reloads() {
    let dir = LimitsDir::with_file("d.yaml", FIVE);
    let server = ServerBuilder::new().start(&dir).await;
    let stop = CancellationToken::new();
    let watcher = LimitsWatcher::spawn(
        dir.path().to_path_buf(),
        server.limiter.clone(),
        Duration::from_millis(1),
        stop.clone(),
    )
    .expect("watch");
    let mut status = watcher.status();
    let channel = server.channel().await;
    let load = tokio::spawn(async move {
        let mut client = Client::new(channel);
        let mut answered = 0u32;
        for i in 0..400 {
            let r = client
                .check_rate_limit(check("d", vec![descriptor(&[("k", &format!("{i}"))])]))
                .await
                .expect("no request fails during a reload");
            let limit = r.into_inner().statuses[0]
                .limit
                .as_ref()
                .map(|l| l.requests_per_unit);
            assert!(
                matches!(limit, Some(5) | Some(7)),
                "one limit or the other, never none: {limit:?}"
            );
            answered += 1;
        }
        answered
    });
    for i in 0..10 {
        dir.write("d.yaml", if i % 2 == 0 { SEVEN } else { FIVE });
        next_attempt(&mut status).await;
    }
    assert_eq!(load.await.expect("load task"), 400);
    stop.cancel();
    watcher.join().await;
}
