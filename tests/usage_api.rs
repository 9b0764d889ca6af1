//! Usage metering over gRPC: exactly-once counting, summaries that match the
//! raw events, bills in exact cents, and named validation errors.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{Days, NaiveDate, Utc};
use common::*;
use tollgate::api::pb::tollgate::v1 as pb;
use tollgate::usage::{MemoryUsageStore, Pricing, TierPrices, Usage, UsagePolicy};
use tonic::Code as GrpcCode;

/// Per day: events by category, and metric sums.
type Expected = BTreeMap<NaiveDate, (BTreeMap<String, u64>, BTreeMap<String, f64>)>;

const LIMITS: &str = "domain: d\ndescriptors: []\n";

fn pricing() -> Pricing {
    let d = |s: &str| s.parse().unwrap_or_default();
    let mut p = Pricing::default();
    p.tiers.insert(
        "gold".into(),
        TierPrices {
            base_fee: d("5.00"),
            per_compute_unit: d("0.025"),
            per_1k_tokens: d("0.003"),
            per_gb_storage: d("0.10"),
        },
    );
    p
}

async fn server() -> (TestServer, LimitsDir) {
    let dir = LimitsDir::with_file("d.yaml", LIMITS);
    let policy = UsagePolicy::default();
    let usage = Usage::new(
        Arc::new(MemoryUsageStore::new(policy.retention_days)),
        policy,
        pricing(),
    );
    let server = ServerBuilder::new().usage(usage).start(&dir).await;
    (server, dir)
}

fn event(id: &str, user: &str, category: &str, metrics: &[(&str, f64)]) -> pb::TrackUsageRequest {
    pb::TrackUsageRequest {
        usage_id: id.into(),
        user_id: user.into(),
        category: category.into(),
        metrics: metrics.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        success: true,
        ..Default::default()
    }
}

fn at(mut e: pb::TrackUsageRequest, micros: i64) -> pb::TrackUsageRequest {
    e.timestamp = Some(prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1_000) as i32,
    });
    e
}

#[tokio::test]
async fn an_id_counts_once_and_an_empty_id_gets_one() {
    let (server, _dir) = server().await;
    let mut client = server.client().await;
    let first = client
        .track_usage(event("e-1", "alice", "ai", &[]))
        .await
        .expect("track")
        .into_inner();
    assert_eq!((first.usage_id.as_str(), first.duplicate), ("e-1", false));
    let again = client
        .track_usage(event("e-1", "alice", "ai", &[]))
        .await
        .expect("track")
        .into_inner();
    assert!(again.duplicate, "a retry with the same id counts nothing");
    let generated = client
        .track_usage(event("", "alice", "ai", &[]))
        .await
        .expect("track")
        .into_inner();
    assert_eq!(
        generated.usage_id.len(),
        36,
        "a UUID: {}",
        generated.usage_id
    );
    assert!(!generated.duplicate);
    let summary = client
        .get_usage_summary(pb::GetUsageSummaryRequest {
            user_id: "alice".into(),
            days: 1,
        })
        .await
        .expect("summary")
        .into_inner();
    assert_eq!(summary.requests.map(|r| r.total), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_senders_of_the_same_thousand_events_count_a_thousand() {
    let (server, _dir) = server().await;
    let channel = server.channel().await;
    let senders: Vec<_> = (0..16)
        .map(|s| {
            let mut client = Client::new(channel.clone());
            tokio::spawn(async move {
                let mut accepted = 0u32;
                // Each sender goes through the events in its own order.
                for i in 0..1000 {
                    let n = (i * 7 + s * 131) % 1000;
                    let r = client
                        .track_usage(event(&format!("same-{n}"), "bob", "ai", &[("tokens", 1.0)]))
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
    assert_eq!(accepted, 1000, "each event accepted by exactly one sender");
    let mut client = Client::new(channel);
    let summary = client
        .get_usage_summary(pb::GetUsageSummaryRequest {
            user_id: "bob".into(),
            days: 1,
        })
        .await
        .expect("summary")
        .into_inner();
    assert_eq!(summary.requests.map(|r| r.total), Some(1000));
    assert_eq!(summary.metrics.get("tokens"), Some(&1000.0));
}

#[tokio::test]
async fn a_month_of_events_summarises_like_a_recomputation() {
    let (server, _dir) = server().await;
    let mut client = server.client().await;
    let now = Utc::now();
    let today = now.date_naive();
    let midnight = |d: NaiveDate| {
        d.and_hms_opt(0, 0, 0)
            .map_or(0, |t| t.and_utc().timestamp_micros())
    };
    let categories = ["ai", "multimodal", "storage"];
    let mut expected = Expected::new();
    let mut batch = Vec::new();
    let mut n = 0u64;
    for back in 0..30u64 {
        let date = today - Days::new(back);
        for i in 0..(5 + back % 7) {
            n += 1;
            let category = categories[(n % 3) as usize];
            let tokens = ((n * 37) % 500) as f64;
            let compute = ((n % 9) as f64) * 0.5;
            // Spread over the day, but never after now.
            let offset = ((i * 5_003 + back * 101) % 86_000) as i64 * 1_000_000;
            let ts = (midnight(date) + offset).min(now.timestamp_micros());
            batch.push(at(
                event(
                    &format!("m-{n}"),
                    "carol",
                    category,
                    &[("tokens", tokens), ("compute_units", compute)],
                ),
                ts,
            ));
            let day = expected.entry(date).or_default();
            *day.0.entry(category.to_string()).or_default() += 1;
            *day.1.entry("tokens".into()).or_default() += tokens;
            *day.1.entry("compute_units".into()).or_default() += compute;
        }
    }
    for chunk in batch.chunks(100) {
        let r = client
            .track_usage_batch(pb::TrackUsageBatchRequest {
                events: chunk.to_vec(),
            })
            .await
            .expect("batch")
            .into_inner();
        assert!(
            r.results.iter().all(
                |x| x.status == pb::track_usage_batch_response::result::Status::Accepted as i32
            )
        );
    }
    let summary = client
        .get_usage_summary(pb::GetUsageSummaryRequest {
            user_id: "carol".into(),
            days: 30,
        })
        .await
        .expect("summary")
        .into_inner();
    assert_eq!(summary.period, "Last 30 days");
    assert_eq!(summary.daily.len(), 30, "every day present");
    assert_eq!(summary.requests.as_ref().map(|r| r.total), Some(n));
    for day in &summary.daily {
        let date = NaiveDate::parse_from_str(&day.date, "%Y-%m-%d").expect("date");
        let (cats, metrics) = expected.get(&date).cloned().unwrap_or_default();
        let got_cats: BTreeMap<String, u64> = day.by_category.clone().into_iter().collect();
        assert_eq!(got_cats, cats, "{date}");
        assert_eq!(day.total, cats.values().sum::<u64>(), "{date}");
        for (name, value) in metrics {
            let got = day.metrics.get(&name).copied().unwrap_or(0.0);
            assert!(
                (got - value).abs() < 1e-9,
                "{date} {name}: {got} vs {value}"
            );
        }
    }
    // Two days ago and ten days ago are in the summary in date order.
    assert!(summary.daily.windows(2).all(|w| w[0].date < w[1].date));
}

#[tokio::test]
async fn billing_is_priced_by_tier_in_exact_half_even_cents() {
    let (server, _dir) = server().await;
    let mut client = server.client().await;
    let today = Utc::now().date_naive();
    let mut e1 = event(
        "b-1",
        "dave",
        "ai",
        &[("compute_units", 0.5), ("tokens", 2000.0)],
    );
    e1.tier = "gold".into();
    let mut e2 = event(
        "b-2",
        "dave",
        "storage",
        &[("tokens", 3000.0), ("storage_bytes", 1.25e9)],
    );
    e2.tier = "gold".into();
    for e in [e1, e2] {
        client.track_usage(e).await.expect("track");
    }
    let day = today.format("%Y-%m-%d").to_string();
    let bill = client
        .get_billing(pb::GetBillingRequest {
            user_id: "dave".into(),
            start_date: day.clone(),
            end_date: day.clone(),
        })
        .await
        .expect("billing")
        .into_inner();
    assert_eq!(bill.tier, "gold");
    let usage = bill.usage.expect("usage");
    assert_eq!(usage.requests.map(|r| r.total), Some(2));
    assert_eq!((usage.tokens, usage.storage_bytes), (5000, 1_250_000_000));
    let c = bill.charges.expect("charges");
    // 0.5 × 0.025 = 0.0125 → 0.01 (half-even; half-up would say 0.02)
    // 5000/1000 × 0.003 = 0.015 → 0.02; 1.25 GB × 0.10 = 0.125 → 0.12
    assert_eq!(
        (
            c.base_fee.as_str(),
            c.compute_charges.as_str(),
            c.token_charges.as_str(),
            c.storage_charges.as_str()
        ),
        ("5.00", "0.01", "0.02", "0.12")
    );
    assert_eq!(c.total, "5.15");
    assert_eq!(c.currency, "USD");
}

#[tokio::test]
async fn batches_report_each_event() {
    let (server, _dir) = server().await;
    let mut client = server.client().await;
    client
        .track_usage(event("dup", "erin", "ai", &[]))
        .await
        .expect("track");
    let r = client
        .track_usage_batch(pb::TrackUsageBatchRequest {
            events: vec![
                event("new", "erin", "ai", &[]),
                event("dup", "erin", "ai", &[]),
                event("bad", "erin", "", &[]),
            ],
        })
        .await
        .expect("batch")
        .into_inner();
    use pb::track_usage_batch_response::result::Status;
    let statuses: Vec<i32> = r.results.iter().map(|x| x.status).collect();
    assert_eq!(
        statuses,
        vec![
            Status::Accepted as i32,
            Status::Duplicate as i32,
            Status::Rejected as i32
        ]
    );
    assert_eq!(r.results[2].reason, "events[2].category: must not be empty");
}

#[tokio::test]
async fn invalid_usage_requests_name_the_field() {
    let (server, _dir) = server().await;
    let mut client = server.client().await;
    let now = Utc::now().timestamp_micros();
    let cases: Vec<(pb::TrackUsageRequest, &str)> = vec![
        (event("x1", "", "ai", &[]), "user_id"),
        (event("x2", "u", "", &[]), "category"),
        (
            event("x3", "u", "ai", &[("tokens", f64::NAN)]),
            "metrics[tokens]",
        ),
        (
            event("x4", "u", "ai", &[("tokens", f64::INFINITY)]),
            "metrics[tokens]",
        ),
        (
            event("x5", "u", "ai", &[("tokens", -1.0)]),
            "metrics[tokens]",
        ),
        (
            at(event("x6", "u", "ai", &[]), now + 3_600_000_000),
            "timestamp",
        ),
        (
            at(event("x7", "u", "ai", &[]), now - 500 * 86_400_000_000),
            "timestamp",
        ),
    ];
    for (req, field) in cases {
        let err = client.track_usage(req).await.expect_err("invalid");
        assert_eq!(err.code(), GrpcCode::InvalidArgument, "{field}");
        assert!(
            err.message().starts_with(&format!("{field}: ")),
            "{field}: {}",
            err.message()
        );
    }
    let err = client
        .get_usage_summary(pb::GetUsageSummaryRequest {
            user_id: "u".into(),
            days: 367,
        })
        .await
        .expect_err("days");
    assert!(err.message().starts_with("days: "), "{}", err.message());
    for (start, end, field) in [
        ("2026-13-01", "2026-01-02", "start_date"),
        ("2026-01-01", "yesterday", "end_date"),
        ("2026-02-01", "2026-01-01", "end_date"),
        ("2025-01-01", "2026-06-01", "end_date"),
    ] {
        let err = client
            .get_billing(pb::GetBillingRequest {
                user_id: "u".into(),
                start_date: start.into(),
                end_date: end.into(),
            })
            .await
            .expect_err("dates");
        assert_eq!(err.code(), GrpcCode::InvalidArgument);
        assert!(
            err.message().starts_with(&format!("{field}: ")),
            "{start}..{end}: {}",
            err.message()
        );
    }
    // Nothing invalid was counted.
    let summary = client
        .get_usage_summary(pb::GetUsageSummaryRequest {
            user_id: "u".into(),
            days: 1,
        })
        .await
        .expect("summary")
        .into_inner();
    assert_eq!(summary.requests.map(|r| r.total), Some(0));
}
