//! The whole decision without the network: request validation, rule
//! matching, key building, the memory store and the answer. Read it against
//! `memory_store` (the store alone) from the same run.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use tollgate::config::parse_limits_file;
use tollgate::limiter::{FailureMode, RateLimiter};
use tollgate::limits::Limits;
use tollgate::request::{CheckRequest, Descriptor};
use tollgate::store::MemoryStore;

const LIMITS: &str = "domain: bench\ndescriptors:\n  - key: user\n    rate_limit: { unit: hour, requests_per_unit: 1000000000 }\n";

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let mut f = std::pin::pin!(f);
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

fn check(c: &mut Criterion) {
    let domain = parse_limits_file(std::path::Path::new("bench.yaml"), LIMITS)
        .unwrap_or_else(|e| panic!("{e}"));
    let limiter = RateLimiter::new(
        Limits::from_iter([domain]),
        Arc::new(MemoryStore::new(1_000_000)),
        FailureMode::FailClosed,
    );
    let mut group = c.benchmark_group("limiter");
    group.bench_function("check_hot_key", |b| {
        let request = CheckRequest::new("bench", vec![Descriptor::new([("user", "hot")])]);
        b.iter(|| black_box(block_on(limiter.check(black_box(&request))).ok()));
    });
    group.bench_function("check_10k_keys", |b| {
        let requests: Vec<CheckRequest> = (0..10_000)
            .map(|i| CheckRequest::new("bench", vec![Descriptor::new([("user", i.to_string())])]))
            .collect();
        let mut i = 0;
        b.iter(|| {
            i = (i + 7_919) % requests.len();
            black_box(block_on(limiter.check(&requests[i])).ok())
        });
    });
    group.finish();
}

criterion_group!(benches, check);
criterion_main!(benches);
