//! The same usage scenarios on every usage store: memory, PostgreSQL and
//! three Redis shards (real servers the tests start).

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{Days, Utc};
use common::postgres::Postgres;
use common::redis::RedisServer;
use tollgate::store::SecretUrl;
use tollgate::usage::{
    MemoryUsageStore, PostgresUsageStore, Pricing, Recorded, RedisUsageStore, Usage, UsageEvent,
    UsagePolicy, UsageStore,
};

fn event(id: String, user: &str, category: &str, micros: i64, tokens: f64) -> UsageEvent {
    UsageEvent {
        usage_id: id,
        user_id: user.into(),
        category: category.into(),
        timestamp_micros: micros,
        metrics: vec![("tokens".into(), tokens), ("compute_units".into(), 0.5)],
        ..Default::default()
    }
}

async fn sixteen_senders_count_once(usage: &Usage, user: &str) {
    let now = Utc::now().timestamp_micros();
    let senders: Vec<_> = (0..16)
        .map(|s| {
            let usage = usage.clone();
            let user = user.to_string();
            tokio::spawn(async move {
                let mut accepted = 0u32;
                for i in 0..1000u32 {
                    let n = (i * 7 + s * 131) % 1000;
                    let (_, status) = usage
                        .track(event(format!("{user}-{n}"), &user, "ai", now, 1.0))
                        .await
                        .unwrap_or_else(|e| panic!("track: {e}"));
                    accepted += u32::from(status == Recorded::Accepted);
                }
                accepted
            })
        })
        .collect();
    let mut accepted = 0;
    for s in senders {
        accepted += s.await.unwrap_or(0);
    }
    assert_eq!(accepted, 1000, "{user}");
    let (summary, _, _) = usage
        .summary(user, 1)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(summary.total, 1000, "{user}");
    assert_eq!(summary.metric("tokens"), 1000.0, "{user}");
}

async fn a_month_summarises_like_a_recomputation(usage: &Usage, user: &str) {
    let now = Utc::now();
    let today = now.date_naive();
    let mut expected: BTreeMap<String, (u64, f64)> = BTreeMap::new();
    let mut batch = Vec::new();
    for back in 0..30u64 {
        let date = today - Days::new(back);
        let midnight = date
            .and_hms_opt(0, 0, 0)
            .map_or(0, |t| t.and_utc().timestamp_micros());
        for i in 0..(3 + back % 4) {
            let ts = (midnight + (i as i64) * 3_600_000_000).min(now.timestamp_micros());
            let tokens = (back * 10 + i) as f64;
            batch.push(event(
                format!("{user}-m{back}-{i}"),
                user,
                if i % 2 == 0 { "ai" } else { "io" },
                ts,
                tokens,
            ));
            let day = expected
                .entry(date.format("%Y-%m-%d").to_string())
                .or_default();
            day.0 += 1;
            day.1 += tokens;
        }
    }
    let outcomes = usage
        .track_batch(batch)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(outcomes.iter().all(|o| matches!(
        o,
        tollgate::usage::TrackOutcome::Recorded {
            status: Recorded::Accepted,
            ..
        }
    )));
    let (summary, _, _) = usage
        .summary(user, 30)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(summary.daily.len(), 30);
    for day in &summary.daily {
        let key = day.date.format("%Y-%m-%d").to_string();
        let (n, tokens) = expected.get(&key).copied().unwrap_or_default();
        assert_eq!(day.total(), n, "{user} {key}");
        let got = day.metrics.get("tokens").copied().unwrap_or(0.0);
        assert!(
            (got - tokens).abs() < 1e-9,
            "{user} {key}: {got} vs {tokens}"
        );
    }
}

async fn run_all(store: Arc<dyn UsageStore>) {
    let usage = Usage::new(store, UsagePolicy::default(), Pricing::default());
    let tag = format!("u{}", Utc::now().timestamp_micros());
    sixteen_senders_count_once(&usage, &format!("{tag}-same")).await;
    a_month_summarises_like_a_recomputation(&usage, &format!("{tag}-month")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_usage_store() {
    run_all(Arc::new(MemoryUsageStore::new(400))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_usage_store() {
    let pg = Postgres::start();
    pg.create_database("stores");
    let store = PostgresUsageStore::connect(SecretUrl::new(pg.url("stores")))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    run_all(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_usage_store_on_three_shards() {
    let servers: Vec<RedisServer> = (0..3).map(|_| RedisServer::start()).collect();
    let shards = servers
        .iter()
        .enumerate()
        .map(|(i, s)| (format!("shard{i}"), SecretUrl::new(s.url())))
        .collect();
    let store = RedisUsageStore::new(shards, Duration::from_millis(500), 400)
        .unwrap_or_else(|e| panic!("{e}"));
    run_all(Arc::new(store)).await;
}
