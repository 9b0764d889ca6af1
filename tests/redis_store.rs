//! The Redis store under the conditions it exists for: several tollgate
//! processes sharing shards, a shard dying and coming back, a cluster
//! failing over, and the cost in Redis commands per decision.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::redis::{RedisCluster, RedisServer, command, info_field};
use common::*;
use tollgate::api::pb::tollgate::v1 as pb;
use tollgate::limiter::FailureMode;
use tollgate::limits::{Limit, Unit, counter_key};
use tollgate::request::Entry;
use tollgate::store::{RedisClusterStore, RedisStore, SecretUrl};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const LIMITS: &str = r#"
domain: r
descriptors:
  - key: fixed
    rate_limit: { unit: minute, requests_per_unit: 1000 }
  - key: bucket
    rate_limit: { unit: day, requests_per_unit: 1000, algorithm: token_bucket }
  - key: user
    rate_limit: { unit: hour, requests_per_unit: 1000000 }
"#;

/// Starts `tollgate serve` with `config` and returns it with its URL.
fn spawn_with_config(limits: &LimitsDir, config: &std::path::Path) -> (ChildGuard, String) {
    let (guard, addr) = spawn_tollgate(limits, &["--config".as_ref(), config.as_os_str()]);
    (guard, format!("http://{addr}"))
}

fn shards_config(servers: &[RedisServer]) -> String {
    let mut yaml = String::from("store:\n  redis:\n    timeout_ms: 200\n    shards:\n");
    for (i, s) in servers.iter().enumerate() {
        yaml.push_str(&format!(
            "      - {{ name: shard{i}, url: \"{}\" }}\n",
            s.url()
        ));
    }
    yaml
}

/// Waits, if needed, so a minute-long window is not crossed by a short test.
async fn stay_inside_one_minute() {
    let into_minute = (system_now_micros() / 1_000_000) % 60;
    if into_minute > 40 {
        tokio::time::sleep(Duration::from_secs(61 - into_minute)).await;
    }
}

async fn allowed_across(
    urls: &[String],
    descriptor_pairs: &[(&str, &str)],
    clients: usize,
    calls: usize,
) -> u32 {
    let mut tasks = Vec::new();
    for i in 0..clients {
        let url = urls[i % urls.len()].clone();
        let pairs: Vec<(String, String)> = descriptor_pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        tasks.push(tokio::spawn(async move {
            let mut client = Client::connect(url).await.expect("connect");
            let pairs: Vec<(&str, &str)> = pairs
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let mut allowed = 0u32;
            for _ in 0..calls {
                let r = client
                    .check_rate_limit(check("r", vec![descriptor(&pairs)]))
                    .await
                    .expect("call")
                    .into_inner();
                allowed += u32::from(code(&r) == pb::Code::Ok);
            }
            allowed
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("client task");
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tollgate_processes_on_three_shards_count_exactly() {
    let servers: Vec<RedisServer> = (0..3).map(|_| RedisServer::start()).collect();
    let limits = LimitsDir::with_file("r.yaml", LIMITS);
    let config = limits.dir.path().join("tollgate-config.yml.conf");
    std::fs::write(&config, shards_config(&servers)).expect("write config");
    let (_a, url_a) = spawn_with_config(&limits, &config);
    let (_b, url_b) = spawn_with_config(&limits, &config);
    let urls = vec![url_a, url_b];

    stay_inside_one_minute().await;
    let tag = format!("k{}", system_now_micros());
    let fixed = allowed_across(&urls, &[("fixed", &tag)], 32, 40).await;
    assert_eq!(
        fixed, 1000,
        "fixed window: 1280 tries over two processes, exactly 1000 admitted"
    );
    let bucket = allowed_across(&urls, &[("bucket", &tag)], 32, 40).await;
    assert_eq!(
        bucket, 1000,
        "token bucket: exactly its burst of 1000 admitted"
    );
}

fn key_for(value: &str) -> String {
    let limit = Limit {
        name: None,
        unit: Unit::Hour,
        requests_per_unit: 1_000_000,
        algorithm: tollgate::algorithm::Algorithm::FixedWindow,
        burst: 1_000_000,
    };
    counter_key("r", &[Entry::new("user", value)], None, &limit)
}

async fn timed_check(
    client: &mut Client,
    value: &str,
) -> (Result<pb::CheckRateLimitResponse, tonic::Status>, Duration) {
    let start = Instant::now();
    let r = client
        .check_rate_limit(check("r", vec![descriptor(&[("user", value)])]))
        .await
        .map(|r| r.into_inner());
    (r, start.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_shard_follows_the_failure_mode_fast_and_comes_back() {
    const TIMEOUT: Duration = Duration::from_millis(50);
    let mut servers: Vec<RedisServer> = (0..3).map(|_| RedisServer::start()).collect();
    let shards: Vec<(String, SecretUrl)> = servers
        .iter()
        .enumerate()
        .map(|(i, s)| (format!("shard{i}"), SecretUrl::new(s.url())))
        .collect();
    let limits = LimitsDir::with_file("r.yaml", LIMITS);
    for mode in [FailureMode::FailClosed, FailureMode::FailOpen] {
        let store = Arc::new(
            RedisStore::connect(shards.clone(), TIMEOUT)
                .await
                .expect("connect"),
        );
        // Values whose counters live on shard1 (the one we kill) and elsewhere.
        let (mut on_dead, mut on_live) = (Vec::new(), Vec::new());
        for i in 0.. {
            let value = format!("{mode:?}-{i}");
            if store.shard_of(&key_for(&value)) == "shard1" {
                on_dead.push(value);
            } else {
                on_live.push(value);
            }
            if on_dead.len() >= 5 && on_live.len() >= 5 {
                break;
            }
        }
        let server = ServerBuilder::with_store(store)
            .failure_mode(mode)
            .start(&limits)
            .await;
        let mut client = server.client().await;
        for v in on_dead.iter().chain(&on_live) {
            let (r, _) = timed_check(&mut client, v).await;
            assert!(r.is_ok_and(|r| !r.failed_open), "all shards up: {v}");
        }

        servers[1].kill();
        for round in 0..4 {
            for v in &on_dead {
                let (r, took) = timed_check(&mut client, v).await;
                assert!(
                    took <= TIMEOUT + Duration::from_millis(25),
                    "{mode:?}: a dead shard answered in {took:?} (round {round})"
                );
                match mode {
                    FailureMode::FailClosed => {
                        let status = r.expect_err("fail_closed: UNAVAILABLE");
                        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                    }
                    FailureMode::FailOpen => {
                        let r = r.expect("fail_open: allowed");
                        assert!(r.failed_open && code(&r) == pb::Code::Ok);
                    }
                }
            }
            for v in &on_live {
                let (r, took) = timed_check(&mut client, v).await;
                let r = r.expect("keys on live shards are unaffected");
                assert!(!r.failed_open, "{v} is on a live shard");
                assert!(took < TIMEOUT, "live shard slowed down: {took:?}");
            }
        }

        // Readiness reports the dead shard (the maintenance tick updates it
        // every second: poll with a deadline).
        let mut health = HealthClient::new(server.channel().await);
        wait_store_health(&mut health, ServingStatus::NotServing).await;

        // Per-shard counts for /metrics: the dead shard's failures (timeouts,
        // then calls skipped by its breaker) are all errors; the others have none.
        let stats = server.limiter.store().shard_stats();
        let n = |v: &Vec<String>| v.len() as u64;
        let dead = stats.iter().find(|s| s.shard == "shard1").expect("shard1");
        assert_eq!(
            (dead.calls, dead.errors, dead.up),
            (n(&on_dead) * 5, n(&on_dead) * 4, false),
            "{mode:?}"
        );
        let live: Vec<_> = stats.iter().filter(|s| s.shard != "shard1").collect();
        assert!(live.iter().all(|s| s.errors == 0 && s.up), "{live:?}");
        assert_eq!(live.iter().map(|s| s.calls).sum::<u64>(), n(&on_live) * 5);
        let text = tollgate::metrics::Metrics::new(&server.limiter, &Default::default()).render();
        assert!(
            text.contains("tollgate_store_shard_up{store=\"redis\",shard=\"shard1\"} 0"),
            "{text}"
        );
        assert!(text.contains(&format!(
            "tollgate_store_errors_total{{store=\"redis\",shard=\"shard1\"}} {}",
            n(&on_dead) * 4
        )));

        servers[1].restart();
        wait_store_health(&mut health, ServingStatus::Serving).await;
        // The store's maintenance reconnects within about a second; there is
        // no signal to wait on from outside, so poll with a deadline.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let (r, _) = timed_check(&mut client, &on_dead[0]).await;
            if r.is_ok_and(|r| !r.failed_open) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{mode:?}: the restarted shard was never used again"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for v in &on_dead {
            let (r, _) = timed_check(&mut client, v).await;
            assert!(
                r.is_ok_and(|r| !r.failed_open),
                "{mode:?}: {v} counted again after the restart"
            );
        }
        server.stop().await;
    }
}

async fn wait_store_health(
    health: &mut HealthClient<tonic::transport::Channel>,
    want: ServingStatus,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = health
            .check(HealthCheckRequest {
                service: tollgate::server::STORE_HEALTH_SERVICE.into(),
            })
            .await;
        let got = r.ok().map(|r| r.into_inner().status);
        if got == Some(want as i32) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "store health never became {want:?} (last {got:?})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_redis_command_per_single_descriptor_decision() {
    let server = RedisServer::start();
    let store = RedisStore::connect(
        vec![("one".into(), SecretUrl::new(server.url()))],
        Duration::from_millis(500),
    )
    .await
    .expect("connect");
    let limits = LimitsDir::with_file("r.yaml", LIMITS);
    let tollgate = ServerBuilder::with_store(Arc::new(store))
        .start(&limits)
        .await;
    let mut client = tollgate.client().await;
    // The first call loads the script; count from a clean slate after it.
    let _ = timed_check(&mut client, "warm-up").await;
    command(server.port, &["CONFIG", "RESETSTAT"]);
    const DECISIONS: u64 = 50;
    for i in 0..DECISIONS {
        let (r, _) = timed_check(&mut client, &format!("u{}", i % 7)).await;
        assert!(r.is_ok());
    }
    let stats = command(server.port, &["INFO", "commandstats"]);
    let calls = |name: &str| {
        info_field(&stats, &format!("cmdstat_{name}"))
            .and_then(|v| {
                v.split(',')
                    .next()
                    .and_then(|c| c.strip_prefix("calls="))
                    .map(str::to_string)
            })
            .and_then(|c| c.parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert_eq!(
        calls("evalsha"),
        DECISIONS,
        "one EVALSHA per decision:\n{stats}"
    );
    assert_eq!(calls("eval"), 0, "the script stays loaded:\n{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_failover_during_load_does_not_lose_the_service() {
    let cluster = RedisCluster::start(3, 1);
    let nodes = cluster.urls().into_iter().map(SecretUrl::new).collect();
    let store = RedisClusterStore::connect(nodes, Duration::from_millis(500))
        .await
        .expect("connect");
    let limits = LimitsDir::with_file("r.yaml", LIMITS);
    let server = ServerBuilder::with_store(Arc::new(store))
        .start(&limits)
        .await;
    let channel = server.channel().await;

    let stop = tokio_util::sync::CancellationToken::new();
    let load: Vec<_> = (0..4)
        .map(|t| {
            let mut client = Client::new(channel.clone());
            let stop = stop.clone();
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0u32, 0u32);
                let mut i = 0u32;
                while !stop.is_cancelled() {
                    i += 1;
                    let value = format!("load{t}-{}", i % 50);
                    match client
                        .check_rate_limit(check("r", vec![descriptor(&[("user", &value)])]))
                        .await
                    {
                        Ok(_) => ok += 1,
                        Err(_) => failed += 1,
                    }
                }
                (ok, failed)
            })
        })
        .collect();

    let mut client = Client::new(channel.clone());
    let (before, _) = timed_check(&mut client, "probe").await;
    assert!(before.is_ok(), "cluster answers before the failover");
    let promoted = tokio::task::spawn_blocking(move || {
        let port = cluster.failover();
        (port, cluster)
    })
    .await
    .expect("failover");
    let _cluster = promoted.1;

    // Answers resume: every key answers again within a bounded time.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut consecutive = 0;
    let mut i = 0;
    let mut errors = Vec::new();
    while consecutive < 50 {
        i += 1;
        let (r, took) = timed_check(&mut client, &format!("after-{}", i % 50)).await;
        match r {
            Ok(_) => consecutive += 1,
            Err(e) => {
                consecutive = 0;
                errors.push(format!("{took:?} {}", e.message()));
            }
        }
        assert!(
            Instant::now() < deadline,
            "answers did not resume after the failover ({i} calls, {consecutive} ok in a row); errors: {errors:?}"
        );
    }
    stop.cancel();
    let mut total_ok = 0;
    for t in load {
        total_ok += t.await.expect("load task").0;
    }
    assert!(total_ok > 0);
    server.stop().await;
}

/// EVALSHA calls since the last CONFIG RESETSTAT, and the raw stats.
fn evalsha_calls(port: u16) -> (u64, String) {
    let stats = command(port, &["INFO", "commandstats"]);
    let calls = info_field(&stats, "cmdstat_evalsha")
        .and_then(|v| {
            v.split(',')
                .next()?
                .strip_prefix("calls=")?
                .parse::<u64>()
                .ok()
        })
        .unwrap_or(0);
    (calls, stats)
}

const COALESCE_LIMITS: &str = r#"
domain: c
descriptors:
  - key: hot
    rate_limit: { unit: minute, requests_per_unit: 300 }
  - key: narrow
    rate_limit: { unit: minute, requests_per_unit: 100 }
  - key: wide
    rate_limit: { unit: minute, requests_per_unit: 1000 }
"#;

/// Tollgate on one Redis shard, the script loaded by a first call that
/// `warm_up` (a descriptor with a rule) makes.
async fn one_shard(
    domain: &str,
    limits: &str,
    warm_up: (&str, &str),
    coalesce: bool,
) -> (
    RedisServer,
    TestServer,
    LimitsDir,
    tonic::transport::Channel,
) {
    let server = RedisServer::start();
    let store = RedisStore::connect_with(
        vec![("one".into(), SecretUrl::new(server.url()))],
        Duration::from_millis(1000),
        coalesce,
    )
    .await
    .expect("connect");
    let limits = LimitsDir::with_file("limits.yaml", limits);
    let tollgate = ServerBuilder::with_store(Arc::new(store))
        .start(&limits)
        .await;
    let channel = tollgate.channel().await;
    Client::new(channel.clone())
        .check_rate_limit(check(domain, vec![descriptor(&[warm_up])]))
        .await
        .expect("warm-up");
    (server, tollgate, limits, channel)
}

/// Concurrent requests on one shard share script calls (fewer EVALSHAs than
/// decisions) and still count exactly, hot keys repeated within a call and
/// refunds of refused multi-counter requests included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalesced_calls_share_commands_and_count_exactly() {
    let (server, _tollgate, _limits, channel) =
        one_shard("c", COALESCE_LIMITS, ("hot", "warm-up"), true).await;
    stay_inside_one_minute().await;
    command(server.port, &["CONFIG", "RESETSTAT"]);

    const TASKS: usize = 64;
    const EACH: usize = 10;
    let run = |descriptors: Vec<pb::Descriptor>| {
        let channel = channel.clone();
        async move {
            let tasks: Vec<_> = (0..TASKS)
                .map(|_| {
                    let mut client = Client::new(channel.clone());
                    let descriptors = descriptors.clone();
                    tokio::spawn(async move {
                        let mut admitted = 0;
                        for _ in 0..EACH {
                            let r = client
                                .check_rate_limit(check("c", descriptors.clone()))
                                .await
                                .expect("check")
                                .into_inner();
                            if code(&r) == pb::Code::Ok {
                                admitted += 1;
                            }
                        }
                        admitted
                    })
                })
                .collect();
            let mut total = 0;
            for t in tasks {
                total += t.await.expect("task");
            }
            total
        }
    };
    // One hot key: 640 requests for 300.
    assert_eq!(run(vec![descriptor(&[("hot", "x")])]).await, 300);
    // Two counters per request: the narrow one refuses 540, and the wide
    // one's hits for those are given back.
    let both = vec![descriptor(&[("narrow", "x")]), descriptor(&[("wide", "x")])];
    assert_eq!(run(both).await, 100);
    let mut client = Client::new(channel.clone());
    let mut dry = check("c", vec![descriptor(&[("wide", "x")])]);
    dry.dry_run = true;
    let r = client
        .check_rate_limit(dry)
        .await
        .expect("dry run")
        .into_inner();
    // A dry run answers as if its own hit were counted: 1000 - 100 - 1.
    assert_eq!(
        r.statuses[0].remaining, 899,
        "only the admitted 100 stay counted"
    );

    let (evalsha, stats) = evalsha_calls(server.port);
    let decisions = (2 * TASKS * EACH) as u64;
    assert!(evalsha > 0, "{stats}");
    assert!(
        evalsha < decisions,
        "{evalsha} calls for {decisions} decisions: concurrent requests share calls"
    );
}

/// With coalescing off, every request makes its own call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_coalescing_each_concurrent_decision_is_one_command() {
    let (server, _tollgate, _limits, channel) = one_shard("r", LIMITS, ("user", "w"), false).await;
    command(server.port, &["CONFIG", "RESETSTAT"]);
    let tasks: Vec<_> = (0..32)
        .map(|t| {
            let mut client = Client::new(channel.clone());
            tokio::spawn(async move {
                for i in 0..10 {
                    let value = format!("u{t}-{i}");
                    client
                        .check_rate_limit(check("r", vec![descriptor(&[("user", &value)])]))
                        .await
                        .expect("check");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    let (evalsha, stats) = evalsha_calls(server.port);
    assert_eq!(evalsha, 320, "{stats}");
}
