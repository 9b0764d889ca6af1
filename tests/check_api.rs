//! CheckRateLimit through the generated client against a real server.

mod common;

use std::sync::Arc;

use common::*;
use tollgate::api::pb::tollgate::v1 as pb;
use tollgate::limiter::FailureMode;
use tollgate::store::MemoryStore;
use tonic::Code as GrpcCode;

const LIMITS: &str = r#"
domain: api
descriptors:
  - key: user
    rate_limit:
      unit: minute
      requests_per_unit: 10
      name: per_user
  - key: hot
    rate_limit:
      unit: minute
      requests_per_unit: 1000
  - key: plan
    value: free
    rate_limits:
      - { unit: second, requests_per_unit: 2, name: free_per_second }
      - { unit: hour, requests_per_unit: 3, name: free_per_hour }
  - key: vip
    rate_limit:
      unlimited: true
  - key: sliding
    rate_limit: { unit: second, requests_per_unit: 4, algorithm: sliding_window }
  - key: bucket
    rate_limit: { unit: second, requests_per_unit: 10, algorithm: token_bucket, burst: 3 }
  - key: shadow
    shadow_mode: true
    rate_limit: { unit: minute, requests_per_unit: 1 }
  - key: block
    rate_limit: { unit: minute, requests_per_unit: 0 }
"#;

fn limits() -> LimitsDir {
    LimitsDir::with_file("api.yaml", LIMITS)
}

#[tokio::test]
async fn ten_per_minute_counts_down_then_refuses_with_retry_after() {
    let clock = minute_aligned_clock();
    clock.advance(20_000_000);
    let dir = limits();
    let server = ServerBuilder::with_clock(&clock).start(&dir).await;
    let mut client = server.client().await;

    for expected in (0..10).rev() {
        let r = client
            .check_rate_limit(check("api", vec![descriptor(&[("user", "alice")])]))
            .await
            .expect("call")
            .into_inner();
        assert_eq!(code(&r), pb::Code::Ok);
        let s = &r.statuses[0];
        assert_eq!(s.remaining, expected);
        let limit = s.limit.as_ref().expect("limit reported");
        assert_eq!(limit.requests_per_unit, 10);
        assert_eq!(limit.unit, pb::rate_limit::Unit::Minute as i32);
        assert_eq!(limit.name, "per_user");
        assert_eq!(seconds(&s.reset_after), 40.0);
        assert!(s.retry_after.is_none());
    }
    let r = client
        .check_rate_limit(check("api", vec![descriptor(&[("user", "alice")])]))
        .await
        .expect("call")
        .into_inner();
    assert_eq!(code(&r), pb::Code::OverLimit);
    assert_eq!(status_code(&r.statuses[0]), pb::Code::OverLimit);
    let retry = seconds(&r.statuses[0].retry_after);
    assert!(retry > 0.0 && retry <= 60.0, "retry_after {retry}");
    assert_eq!(retry, 40.0);

    // Another user has a counter of their own.
    let r = client
        .check_rate_limit(check("api", vec![descriptor(&[("user", "bob")])]))
        .await
        .expect("call")
        .into_inner();
    assert_eq!(r.statuses[0].remaining, 9);

    // The next window starts fresh.
    clock.advance(40_000_000);
    let r = client
        .check_rate_limit(check("api", vec![descriptor(&[("user", "alice")])]))
        .await
        .expect("call")
        .into_inner();
    assert_eq!(code(&r), pb::Code::Ok);
    assert_eq!(r.statuses[0].remaining, 9);
}

#[tokio::test]
async fn dry_run_answers_as_if_counted_and_counts_nothing() {
    let clock = minute_aligned_clock();
    let dir = limits();
    let server = ServerBuilder::with_clock(&clock).start(&dir).await;
    let mut client = server.client().await;
    let mut req = check("api", vec![descriptor(&[("user", "carol")])]);
    req.hits = 4;
    client.check_rate_limit(req.clone()).await.expect("call");

    req.dry_run = true;
    for _ in 0..5 {
        let r = client
            .check_rate_limit(req.clone())
            .await
            .expect("call")
            .into_inner();
        assert_eq!(code(&r), pb::Code::Ok);
        assert_eq!(r.statuses[0].remaining, 2, "as if 4 more were counted");
    }
    req.hits = 7;
    let r = client
        .check_rate_limit(req.clone())
        .await
        .expect("call")
        .into_inner();
    assert_eq!(
        code(&r),
        pb::Code::OverLimit,
        "dry run says what a real call would"
    );

    req.dry_run = false;
    req.hits = 6;
    let r = client
        .check_rate_limit(req)
        .await
        .expect("call")
        .into_inner();
    assert_eq!(code(&r), pb::Code::Ok, "dry runs spent nothing: 4 + 6 = 10");
    assert_eq!(r.statuses[0].remaining, 0);
}

#[tokio::test]
async fn hits_above_what_is_left_are_refused_whole() {
    let clock = minute_aligned_clock();
    let dir = limits();
    let server = ServerBuilder::with_clock(&clock).start(&dir).await;
    let mut client = server.client().await;
    let mut req = check("api", vec![descriptor(&[("user", "dave")])]);
    req.hits = 8;
    assert_eq!(
        code(
            &client
                .check_rate_limit(req.clone())
                .await
                .expect("call")
                .into_inner()
        ),
        pb::Code::Ok
    );
    req.hits = 3;
    let r = client
        .check_rate_limit(req.clone())
        .await
        .expect("call")
        .into_inner();
    assert_eq!(code(&r), pb::Code::OverLimit);
    assert_eq!(r.statuses[0].remaining, 2, "the refused 3 were not counted");
    req.hits = 11;
    let r = client
        .check_rate_limit(check("api", vec![descriptor(&[("user", "erin")])]))
        .await
        .expect("call")
        .into_inner();
    assert_eq!(r.statuses[0].remaining, 9);
    let r = client
        .check_rate_limit(pb::CheckRateLimitRequest {
            hits: 11,
            ..check("api", vec![descriptor(&[("user", "erin")])])
        })
        .await
        .expect("call")
        .into_inner();
    assert_eq!(
        code(&r),
        pb::Code::OverLimit,
        "more than the limit never fits"
    );
}

#[tokio::test]
async fn thirty_two_tasks_on_one_key_get_exactly_the_limit() {
    let clock = minute_aligned_clock();
    let dir = limits();
    let server = ServerBuilder::with_clock(&clock).start(&dir).await;
    let channel = server.channel().await;
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let mut client = Client::new(channel.clone());
            tokio::spawn(async move {
                let mut allowed = 0u32;
                for _ in 0..100 {
                    let r = client
                        .check_rate_limit(check("api", vec![descriptor(&[("hot", "key")])]))
                        .await
                        .expect("call")
                        .into_inner();
                    allowed += u32::from(code(&r) == pb::Code::Ok);
                }
                allowed
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("task");
    }
    assert_eq!(total, 1000);
}

#[tokio::test]
async fn several_limits_on_one_descriptor_report_the_tightest() {
    let clock = minute_aligned_clock();
    let dir = limits();
    let server = ServerBuilder::with_clock(&clock).start(&dir).await;
    let mut client = server.client().await;
    let req = || check("api", vec![descriptor(&[("plan", "free")])]);

    let r = client
        .check_rate_limit(req())
        .await
        .expect("call")
        .into_inner();
    // 2/second leaves 1, 3/hour leaves 2: the per-second limit is reported.
    assert_eq!(
        r.statuses[0].limit.as_ref().map(|l| l.name.as_str()),
        Some("free_per_second")
    );
    assert_eq!(r.statuses[0].remaining, 1);
    let r = client
        .check_rate_limit(req())
        .await
        .expect("call")
        .into_inner();
    assert_eq!(r.statuses[0].remaining, 0);
    let r = client
        .check_rate_limit(req())
        .await
        .expect("call")
        .into_inner();
    assert_eq!(code(&r), pb::Code::OverLimit);
    assert_eq!(
        r.statuses[0].limit.as_ref().map(|l| l.name.as_str()),
        Some("free_per_second")
    );

    // A second later the per-second limit has room, but the hourly one is the
    // tighter: one left, then over with a retry of the rest of the hour.
    clock.advance(1_000_000);
    let r = client
        .check_rate_limit(req())
        .await
        .expect("call")
        .into_inner();
    assert_eq!(code(&r), pb::Code::Ok);
    assert_eq!(
        r.statuses[0].limit.as_ref().map(|l| l.name.as_str()),
        Some("free_per_hour")
    );
    assert_eq!(r.statuses[0].remaining, 0);
    clock.advance(1_000_000);
    let r = client
        .check_rate_limit(req())
        .await
        .expect("call")
        .into_inner();
    assert_eq!(code(&r), pb::Code::OverLimit);
    assert_eq!(
        r.statuses[0].limit.as_ref().map(|l| l.name.as_str()),
        Some("free_per_hour")
    );
    assert_eq!(seconds(&r.statuses[0].retry_after), 3598.0);
}

#[tokio::test]
async fn unknown_domains_unmatched_and_unlimited_descriptors_are_ok_without_a_limit() {
    let dir = limits();
    let server = ServerBuilder::new().start(&dir).await;
    let mut client = server.client().await;
    let r = client
        .check_rate_limit(check(
            "api",
            vec![
                descriptor(&[("nobody", "x")]),
                descriptor(&[("vip", "y")]),
                descriptor(&[("user", "u1")]),
            ],
        ))
        .await
        .expect("call")
        .into_inner();
    assert_eq!(code(&r), pb::Code::Ok);
    assert_eq!(r.statuses.len(), 3, "one status per descriptor, in order");
    assert!(r.statuses[0].limit.is_none());
    assert!(r.statuses[1].limit.is_none());
    assert!(r.statuses[2].limit.is_some());
    let r = client
        .check_rate_limit(check("elsewhere", vec![descriptor(&[("user", "x")])]))
        .await
        .expect("call")
        .into_inner();
    assert_eq!(code(&r), pb::Code::Ok);
    assert!(r.statuses[0].limit.is_none());
}

#[tokio::test]
async fn any_descriptor_over_makes_the_request_over_and_shadow_mode_never_refuses() {
    let clock = minute_aligned_clock();
    let dir = limits();
    let server = ServerBuilder::with_clock(&clock).start(&dir).await;
    let mut client = server.client().await;
    for _ in 0..3 {
        let r = client
            .check_rate_limit(check("api", vec![descriptor(&[("shadow", "s")])]))
            .await
            .expect("call")
            .into_inner();
        assert_eq!(
            code(&r),
            pb::Code::Ok,
            "shadow mode answers OK even when over"
        );
    }
    let r = client
        .check_rate_limit(check(
            "api",
            vec![descriptor(&[("user", "f")]), descriptor(&[("block", "ip")])],
        ))
        .await
        .expect("call")
        .into_inner();
    assert_eq!(code(&r), pb::Code::OverLimit);
    assert_eq!(status_code(&r.statuses[0]), pb::Code::Ok);
    assert_eq!(
        status_code(&r.statuses[1]),
        pb::Code::OverLimit,
        "requests_per_unit: 0 blocks"
    );
}

#[tokio::test]
async fn sliding_window_across_a_second_boundary() {
    let dir = limits();
    let server = ServerBuilder::new().start(&dir).await;
    let mut client = server.client().await;
    let req = || check("api", vec![descriptor(&[("sliding", "s")])]);
    // Start just after a second boundary so the first four land in one window.
    wait_until_next_second_plus(50_000).await;
    for _ in 0..4 {
        let r = client
            .check_rate_limit(req())
            .await
            .expect("call")
            .into_inner();
        assert_eq!(code(&r), pb::Code::Ok);
    }
    let r = client
        .check_rate_limit(req())
        .await
        .expect("call")
        .into_inner();
    assert_eq!(code(&r), pb::Code::OverLimit);
    // Just after the boundary the previous window still weighs almost fully:
    // a fixed window would admit four again here, the sliding window does not.
    wait_until_next_second_plus(20_000).await;
    let r = client
        .check_rate_limit(req())
        .await
        .expect("call")
        .into_inner();
    assert_eq!(code(&r), pb::Code::OverLimit);
    let retry = r.statuses[0]
        .retry_after
        .as_ref()
        .map(|d| std::time::Duration::new(d.seconds as u64, d.nanos as u32));
    let retry = retry.expect("retry_after when over");
    assert!(retry < std::time::Duration::from_secs(1), "{retry:?}");
    tokio::time::sleep(retry).await;
    let r = client
        .check_rate_limit(req())
        .await
        .expect("call")
        .into_inner();
    assert_eq!(
        code(&r),
        pb::Code::Ok,
        "admitted once retry_after has passed"
    );
}

#[tokio::test]
async fn token_bucket_refills_at_its_rate_across_a_second_boundary() {
    let dir = limits();
    let server = ServerBuilder::new().start(&dir).await;
    let mut client = server.client().await;
    let req = || check("api", vec![descriptor(&[("bucket", "b")])]);
    wait_until_next_second_plus(900_000).await;
    for expected in [2, 1, 0] {
        let r = client
            .check_rate_limit(req())
            .await
            .expect("call")
            .into_inner();
        assert_eq!(code(&r), pb::Code::Ok);
        assert_eq!(r.statuses[0].remaining, expected);
    }
    let r = client
        .check_rate_limit(req())
        .await
        .expect("call")
        .into_inner();
    assert_eq!(code(&r), pb::Code::OverLimit, "burst of 3 used up");
    let retry = seconds(&r.statuses[0].retry_after);
    assert!(
        retry > 0.0 && retry <= 0.1,
        "one token every 100 ms: {retry}"
    );
    // The boundary of the unit changes nothing for a bucket: only time refills it.
    tokio::time::sleep(std::time::Duration::from_secs_f64(retry)).await;
    let r = client
        .check_rate_limit(req())
        .await
        .expect("call")
        .into_inner();
    assert_eq!(code(&r), pb::Code::Ok);
}

#[tokio::test]
async fn a_full_store_follows_the_failure_mode() {
    let dir = limits();
    for (mode, expect_error) in [
        (FailureMode::FailClosed, true),
        (FailureMode::FailOpen, false),
    ] {
        let store = Arc::new(MemoryStore::new(1));
        let server = ServerBuilder::with_store(store)
            .failure_mode(mode)
            .start(&dir)
            .await;
        let mut client = server.client().await;
        let first = client
            .check_rate_limit(check("api", vec![descriptor(&[("user", "first")])]))
            .await
            .expect("first key fits");
        assert!(!first.into_inner().failed_open);
        let second = client
            .check_rate_limit(check("api", vec![descriptor(&[("user", "second")])]))
            .await;
        match second {
            Err(status) => {
                assert!(expect_error, "{mode:?}: unexpected error {status:?}");
                assert_eq!(status.code(), GrpcCode::Unavailable);
                assert!(status.message().contains("full"), "{}", status.message());
            }
            Ok(r) => {
                assert!(!expect_error, "{mode:?}: expected UNAVAILABLE");
                let r = r.into_inner();
                assert_eq!(code(&r), pb::Code::Ok);
                assert!(r.failed_open);
            }
        }
    }
}

#[tokio::test]
async fn invalid_requests_name_the_field() {
    let dir = limits();
    let server = ServerBuilder::new().start(&dir).await;
    let mut client = server.client().await;
    let long = "x".repeat(1025);
    let cases: Vec<(pb::CheckRateLimitRequest, &str)> = vec![
        (check("", vec![descriptor(&[("user", "a")])]), "domain"),
        (check(&long, vec![descriptor(&[("user", "a")])]), "domain"),
        (check("api", vec![]), "descriptors"),
        (
            check("api", vec![descriptor(&[("user", "a")]); 65]),
            "descriptors",
        ),
        (
            check("api", vec![descriptor(&[])]),
            "descriptors[0].entries",
        ),
        (
            check("api", vec![descriptor(&[("k", "v"); 65])]),
            "descriptors[0].entries",
        ),
        (
            check(
                "api",
                vec![
                    descriptor(&[("user", "a")]),
                    descriptor(&[("user", "a"), ("", "b")]),
                ],
            ),
            "descriptors[1].entries[1].key",
        ),
        (
            check("api", vec![descriptor(&[(long.as_str(), "a")])]),
            "descriptors[0].entries[0].key",
        ),
        (
            check("api", vec![descriptor(&[("user", long.as_str())])]),
            "descriptors[0].entries[0].value",
        ),
    ];
    for (req, field) in cases {
        let err = client
            .check_rate_limit(req)
            .await
            .expect_err("invalid request");
        assert_eq!(err.code(), GrpcCode::InvalidArgument, "{field}: {err:?}");
        assert!(
            err.message().starts_with(&format!("{field}: ")),
            "{field}: {}",
            err.message()
        );
    }
    // Nothing was counted by the refused requests.
    let r = client
        .check_rate_limit(check("api", vec![descriptor(&[("user", "a")])]))
        .await
        .expect("call")
        .into_inner();
    assert_eq!(r.statuses[0].remaining, 9);
}

/// Sleeps until `offset_micros` past the next whole second of the system clock.
async fn wait_until_next_second_plus(offset_micros: u64) {
    let now = system_now_micros();
    let target = (now / 1_000_000 + 1) * 1_000_000 + offset_micros;
    tokio::time::sleep(std::time::Duration::from_micros(target - now)).await;
}
