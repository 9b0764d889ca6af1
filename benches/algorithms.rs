//! The three algorithms as pure functions: the cost of one decision.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use tollgate::algorithm::{Algorithm, Charge, Rate};

fn decisions(c: &mut Criterion) {
    let rate = Rate::new(1_000, 60_000_000).with_burst(100);
    let mut group = c.benchmark_group("decide");
    for algorithm in [
        Algorithm::FixedWindow,
        Algorithm::SlidingWindow,
        Algorithm::TokenBucket,
    ] {
        group.bench_function(algorithm.as_str(), |b| {
            let mut now = 1_800_000_000_000_000u64;
            let (_, mut state) = algorithm.decide(None, &rate, now, 1, Charge::AdmittedOnly);
            b.iter(|| {
                // Advance time so the state keeps changing and windows roll.
                now += 7_919;
                let (outcome, next) = algorithm.decide(
                    Some(&state),
                    black_box(&rate),
                    black_box(now),
                    1,
                    Charge::AdmittedOnly,
                );
                state = next;
                black_box(outcome)
            });
        });
    }
    group.finish();
}

criterion_group!(benches, decisions);
criterion_main!(benches);
