//! One scenario suite, every counter store: the embedded memory store, one
//! Redis, three Redis shards, and a three-master Redis Cluster. The Redis
//! backends are real `redis-server` processes on ephemeral ports.
//!
//! Each backend runs the whole suite in one test so its servers start once;
//! every scenario uses keys of its own.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::redis::{RedisCluster, RedisServer};
use tollgate::algorithm::{Algorithm, Charge, Rate};
use tollgate::config::parse_limits_file;
use tollgate::limiter::{FailureMode, RateLimiter};
use tollgate::limits::Limits;
use tollgate::request::{CheckRequest, Code, Descriptor};
use tollgate::store::{
    CounterStore, CounterUpdate, MemoryStore, RedisClusterStore, RedisStore, SecretUrl,
};

const LIMITS: &str = r#"
domain: s
descriptors:
  - key: fixed
    rate_limit: { unit: hour, requests_per_unit: 10 }
  - key: hot
    rate_limit: { unit: hour, requests_per_unit: 1000 }
  - key: pair
    rate_limits:
      - { unit: hour, requests_per_unit: 3 }
      - { unit: day, requests_per_unit: 100, algorithm: sliding_window }
  - key: bucket
    rate_limit: { unit: day, requests_per_unit: 86400, algorithm: token_bucket, burst: 5 }
  - key: fast_bucket
    rate_limit: { unit: second, requests_per_unit: 20, algorithm: token_bucket, burst: 2 }
  - key: sliding
    rate_limit: { unit: second, requests_per_unit: 4, algorithm: sliding_window }
  - key: many
    rate_limit: { unit: hour, requests_per_unit: 2 }
"#;

fn limiter(store: Arc<dyn CounterStore>) -> RateLimiter {
    let domain =
        parse_limits_file(std::path::Path::new("s.yaml"), LIMITS).unwrap_or_else(|e| panic!("{e}"));
    RateLimiter::new(Limits::from_iter([domain]), store, FailureMode::FailClosed)
}

fn req(pairs: &[(&str, &str)], hits: u64) -> CheckRequest {
    let mut r = CheckRequest::new("s", vec![Descriptor::new(pairs.iter().copied())]);
    r.hits = hits;
    r
}

async fn check(l: &RateLimiter, r: &CheckRequest) -> tollgate::request::CheckResponse {
    l.check(r)
        .await
        .unwrap_or_else(|e| panic!("check failed: {e}"))
}

async fn counts_down_then_refuses(l: &RateLimiter, tag: &str) {
    for expected in (0..10).rev() {
        let r = check(l, &req(&[("fixed", tag)], 1)).await;
        assert_eq!(r.overall, Code::Ok, "{tag}");
        assert_eq!(r.statuses[0].remaining, expected, "{tag}");
    }
    let r = check(l, &req(&[("fixed", tag)], 1)).await;
    assert_eq!(r.overall, Code::OverLimit, "{tag}");
    let retry = r.statuses[0].retry_after_micros.unwrap_or(0);
    assert!(retry > 0 && retry <= 3_600_000_000, "{tag}: retry {retry}");
}

async fn no_partial_admission_and_dry_run(l: &RateLimiter, tag: &str) {
    let value = format!("{tag}-partial");
    assert_eq!(
        check(l, &req(&[("fixed", &value)], 8)).await.overall,
        Code::Ok
    );
    let r = check(l, &req(&[("fixed", &value)], 3)).await;
    assert_eq!(r.overall, Code::OverLimit, "{tag}: 8 + 3 > 10");
    assert_eq!(
        r.statuses[0].remaining, 2,
        "{tag}: the refused 3 were not counted"
    );
    let mut dry = req(&[("fixed", &value)], 2);
    dry.dry_run = true;
    for _ in 0..3 {
        let r = check(l, &dry).await;
        assert_eq!(
            (r.overall, r.statuses[0].remaining),
            (Code::Ok, 0),
            "{tag}: dry run"
        );
    }
    let r = check(l, &req(&[("fixed", &value)], 2)).await;
    assert_eq!(
        (r.overall, r.statuses[0].remaining),
        (Code::Ok, 0),
        "{tag}: dry runs counted nothing"
    );
    let r = check(l, &req(&[("fixed", &format!("{tag}-big"))], 11)).await;
    assert_eq!(
        r.overall,
        Code::OverLimit,
        "{tag}: more than the limit never fits"
    );
}

async fn charge_always_counts_refused_hits(l: &RateLimiter, tag: &str) {
    let value = format!("{tag}-always");
    let mut r = req(&[("fixed", &value)], 8);
    r.charge = Charge::Always;
    assert_eq!(check(l, &r).await.overall, Code::Ok);
    r.hits = 5;
    assert_eq!(check(l, &r).await.overall, Code::OverLimit);
    r.hits = 1;
    assert_eq!(
        check(l, &r).await.overall,
        Code::OverLimit,
        "{tag}: 13 counted, still over"
    );
}

async fn a_refused_request_costs_its_other_limits_nothing(l: &RateLimiter, tag: &str) {
    // 3/hour refuses the fourth; the daily sliding window must not count it.
    for _ in 0..3 {
        assert_eq!(check(l, &req(&[("pair", tag)], 1)).await.overall, Code::Ok);
    }
    for _ in 0..5 {
        assert_eq!(
            check(l, &req(&[("pair", tag)], 1)).await.overall,
            Code::OverLimit
        );
    }
    let mut dry = req(&[("pair", tag)], 97);
    dry.dry_run = true;
    let r = check(l, &dry).await;
    // The daily limit saw 3 hits: 97 more fit there (the hourly still refuses).
    assert_eq!(
        r.statuses[0].limit.as_ref().map(|l| l.requests_per_unit),
        Some(3),
        "{tag}"
    );
    let mut daily_only = req(&[("pair", tag)], 98);
    daily_only.dry_run = true;
    let r = check(l, &daily_only).await;
    assert_eq!(
        r.statuses[0].limit.as_ref().map(|l| l.requests_per_unit),
        Some(100),
        "{tag}: 3 + 98 > 100"
    );
}

async fn a_refused_request_gives_back_every_algorithm(l: &RateLimiter, tag: &str) {
    // 2/hour on `many` refuses the third request; its hits on the fixed
    // window and the token bucket are given back.
    let value = format!("{tag}-refund");
    let request = |hits: u64, dry_run: bool| {
        let mut r = CheckRequest::new(
            "s",
            ["bucket", "fixed", "many"]
                .iter()
                .map(|k| Descriptor::new([(*k, value.as_str())]))
                .collect(),
        );
        r.hits = hits;
        r.dry_run = dry_run;
        r
    };
    for _ in 0..2 {
        assert_eq!(check(l, &request(1, false)).await.overall, Code::Ok);
    }
    let r = check(l, &request(1, false)).await;
    assert_eq!(r.overall, Code::OverLimit, "{tag}: {r:?}");
    assert_eq!(r.statuses[2].code, Code::OverLimit, "{tag}: {r:?}");
    // As if one more hit were counted: the two admitted requests are all
    // that the other counters hold.
    let r = check(l, &request(1, true)).await;
    assert_eq!(r.statuses[1].remaining, 7, "{tag}: fixed 10/hour: {r:?}");
    // Burst 5, refilling one a second: 2 at most, more if a second passed;
    // 1 if the refused request's hit had been kept.
    assert!(
        r.statuses[0].remaining >= 2,
        "{tag}: token bucket kept a refused hit: {r:?}"
    );
}

async fn concurrent_hits_on_one_key_are_exact(l: &RateLimiter, tag: &str) {
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let l = l.clone();
            let r = req(&[("hot", tag)], 1);
            tokio::spawn(async move {
                let mut allowed = 0u32;
                for _ in 0..40 {
                    allowed += u32::from(check(&l, &r).await.overall == Code::Ok);
                }
                allowed
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap_or(0);
    }
    assert_eq!(
        total, 1000,
        "{tag}: 32 × 40 = 1280 tries, exactly 1000 admitted"
    );
}

async fn token_bucket_burst_then_refill(l: &RateLimiter, tag: &str) {
    for expected in (0..5).rev() {
        let r = check(l, &req(&[("bucket", tag)], 1)).await;
        assert_eq!(
            (r.overall, r.statuses[0].remaining),
            (Code::Ok, expected),
            "{tag}"
        );
    }
    let r = check(l, &req(&[("bucket", tag)], 1)).await;
    assert_eq!(r.overall, Code::OverLimit, "{tag}: burst of 5 used");
    let retry = r.statuses[0].retry_after_micros.unwrap_or(0);
    assert!(
        retry > 0 && retry <= 1_000_000,
        "{tag}: one token a second: {retry}"
    );

    let value = format!("{tag}-fast");
    for _ in 0..2 {
        assert_eq!(
            check(l, &req(&[("fast_bucket", &value)], 1)).await.overall,
            Code::Ok
        );
    }
    let r = check(l, &req(&[("fast_bucket", &value)], 1)).await;
    assert_eq!(r.overall, Code::OverLimit, "{tag}");
    let retry = r.statuses[0].retry_after_micros.unwrap_or(0);
    assert!(
        retry > 0 && retry <= 50_000,
        "{tag}: one token every 50 ms: {retry}"
    );
    tokio::time::sleep(Duration::from_micros(retry)).await;
    assert_eq!(
        check(l, &req(&[("fast_bucket", &value)], 1)).await.overall,
        Code::Ok,
        "{tag}: refilled"
    );
}

async fn sliding_window_waits_for_the_weight_to_fade(l: &RateLimiter, tag: &str) {
    let mut admitted = 0;
    let mut last = None;
    for _ in 0..6 {
        let r = check(l, &req(&[("sliding", tag)], 1)).await;
        admitted += u32::from(r.overall == Code::Ok);
        last = Some(r);
    }
    assert!(
        admitted <= 4,
        "{tag}: never more than 4 in a sliding second"
    );
    let r = last.unwrap_or_default();
    assert_eq!(r.overall, Code::OverLimit, "{tag}");
    let retry = r.statuses[0].retry_after_micros.unwrap_or(0);
    assert!(retry > 0 && retry <= 2_000_000, "{tag}: {retry}");
    tokio::time::sleep(Duration::from_micros(retry)).await;
    assert_eq!(
        check(l, &req(&[("sliding", tag)], 1)).await.overall,
        Code::Ok,
        "{tag}: admitted after retry_after"
    );
}

async fn many_descriptors_in_one_request(l: &RateLimiter, tag: &str) {
    // Enough distinct keys to land on every shard; each has a counter of its own.
    let values: Vec<String> = (0..24).map(|i| format!("{tag}-{i}")).collect();
    let request = CheckRequest::new(
        "s",
        values
            .iter()
            .map(|v| Descriptor::new([("many", v.as_str())]))
            .collect(),
    );
    let r = check(l, &request).await;
    assert!(r.statuses.iter().all(|s| s.remaining == 1), "{tag}: {r:?}");
    let r = check(l, &request).await;
    assert!(
        r.statuses
            .iter()
            .all(|s| s.remaining == 0 && s.code == Code::Ok),
        "{tag}"
    );
    let r = check(l, &request).await;
    assert!(
        r.statuses.iter().all(|s| s.code == Code::OverLimit),
        "{tag}"
    );
}

async fn run_all(store: Arc<dyn CounterStore>) {
    let l = limiter(store);
    // Distinct per run so a rerun against a kept server starts fresh.
    let tag = format!("t{}", common::system_now_micros());
    counts_down_then_refuses(&l, &tag).await;
    no_partial_admission_and_dry_run(&l, &tag).await;
    charge_always_counts_refused_hits(&l, &tag).await;
    a_refused_request_costs_its_other_limits_nothing(&l, &tag).await;
    a_refused_request_gives_back_every_algorithm(&l, &tag).await;
    concurrent_hits_on_one_key_are_exact(&l, &tag).await;
    token_bucket_burst_then_refill(&l, &tag).await;
    sliding_window_waits_for_the_weight_to_fade(&l, &tag).await;
    many_descriptors_in_one_request(&l, &tag).await;
}

const TIMEOUT: Duration = Duration::from_millis(500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store() {
    run_all(Arc::new(MemoryStore::new(100_000))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_one_shard() {
    let server = RedisServer::start();
    let store = RedisStore::connect(vec![("only".into(), SecretUrl::new(server.url()))], TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let store = Arc::new(store);
    run_all(store.clone()).await;
    counters_expire_when_their_window_ends(&store, &server).await;
}

fn pttl(server: &RedisServer, key: &str) -> i64 {
    let reply = server.command(&["PTTL", key]);
    reply
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("PTTL {key}: {reply:?}: {e}"))
}

fn one_hit(key: &str, algorithm: Algorithm, rate: Rate) -> CounterUpdate {
    CounterUpdate {
        key: key.to_owned(),
        algorithm,
        rate,
        hits: 1,
        charge: Charge::AdmittedOnly,
        dry_run: false,
        refund_of: None,
    }
}

/// The script sets a TTL when a window starts and keeps it (KEEPTTL) while
/// the window lasts. Every path must leave each key expiring at its
/// window's end: a fresh key counted twice in one call (the second write
/// keeps the first one's TTL), a key counted again in a later call, and a
/// key whose stored window is over (even one left without a TTL).
async fn counters_expire_when_their_window_ends(store: &RedisStore, server: &RedisServer) {
    const MINUTE: u64 = 60_000_000;
    let tag = common::system_now_micros();
    // (algorithm, rate, longest TTL, remaining after three hits)
    let cases = [
        (Algorithm::FixedWindow, Rate::new(10, MINUTE), MINUTE, 7),
        (
            Algorithm::SlidingWindow,
            Rate::new(10, MINUTE),
            2 * MINUTE,
            7,
        ),
        (
            Algorithm::TokenBucket,
            Rate::new(10, MINUTE).with_burst(5),
            MINUTE,
            2,
        ),
    ];
    for (algorithm, rate, longest, remaining) in cases {
        let key = format!("ttl:{tag}:{}", algorithm.as_str());
        let update = one_hit(&key, algorithm, rate);
        let longest_ms = i64::try_from(longest / 1000).unwrap_or(i64::MAX);
        let first = store
            .apply(&[update.clone(), update.clone()])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(first.iter().all(|o| o.allowed), "{algorithm:?}: {first:?}");
        let after_first = pttl(server, &key);
        assert!(
            after_first > 0 && after_first <= longest_ms,
            "{algorithm:?}: fresh key counted twice in one call has PTTL {after_first}"
        );
        let second = store
            .apply(std::slice::from_ref(&update))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(second[0].remaining, remaining, "{algorithm:?}: {second:?}");
        let after_second = pttl(server, &key);
        assert!(
            after_second > 0 && after_second <= longest_ms,
            "{algorithm:?}: PTTL {after_second} after a later call"
        );
        if algorithm != Algorithm::TokenBucket {
            // Same window: the expiry instant is unchanged, so the TTL only
            // counts down.
            assert!(
                after_second <= after_first,
                "{algorithm:?}: PTTL grew from {after_first} to {after_second} within one window"
            );
        }
    }

    // A stored window long over (state as the script stores it: window
    // start and count as doubles), on a key without a TTL: the new window
    // sets one, and the old count is gone.
    let key = format!("ttl:{tag}:stale");
    server.command(&[
        "EVAL",
        "redis.call('SET', KEYS[1], struct.pack('<dd', 1000000, 9))",
        "1",
        &key,
    ]);
    assert_eq!(pttl(server, &key), -1);
    let update = one_hit(&key, Algorithm::FixedWindow, Rate::new(10, MINUTE));
    let outcome = store
        .apply(&[update])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(outcome[0].remaining, 9, "{outcome:?}");
    let ttl = pttl(server, &key);
    assert!(ttl > 0 && ttl <= 60_000, "rolled window has PTTL {ttl}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_three_shards() {
    let servers: Vec<RedisServer> = (0..3).map(|_| RedisServer::start()).collect();
    let shards = ["us-east", "eu-west", "ap-south"]
        .iter()
        .zip(&servers)
        .map(|(name, s)| (name.to_string(), SecretUrl::new(s.url())))
        .collect();
    let store = RedisStore::connect(shards, TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    run_all(Arc::new(store)).await;
    // The keys really were spread: every shard holds some.
    for s in &servers {
        let keys = common::redis::command(s.port, &["DBSIZE"]);
        assert_ne!(keys.trim(), "0", "shard on port {} got no keys", s.port);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_three_masters() {
    let cluster = RedisCluster::start(3, 0);
    let nodes = cluster.urls().into_iter().map(SecretUrl::new).collect();
    let store = RedisClusterStore::connect(nodes, TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    run_all(Arc::new(store)).await;
}
