//! The memory store: one hot key hit from two threads, and 100,000 distinct
//! keys. The single-thread figure is the baseline the two-thread one is read
//! against (same run, same machine).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use tollgate::algorithm::{Algorithm, Charge, Rate};
use tollgate::store::{CounterStore, CounterUpdate, MemoryStore};

fn update(key: String) -> CounterUpdate {
    CounterUpdate {
        key,
        algorithm: Algorithm::FixedWindow,
        // Never refuses during the bench, so every call does the full update.
        rate: Rate::new(u64::from(u32::MAX), 3_600_000_000),
        hits: 1,
        charge: Charge::AdmittedOnly,
        dry_run: false,
        refund_of: None,
    }
}

fn apply(store: &MemoryStore, update: &CounterUpdate) {
    // The memory store answers synchronously: its future is ready at once.
    let result = futures_lite_block_on(store.apply(std::slice::from_ref(update)));
    black_box(result).ok();
}

// A minimal executor for an already-ready future, so the bench measures the
// store rather than a runtime.
fn futures_lite_block_on<F: std::future::Future>(f: F) -> F::Output {
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

fn hot_key(c: &mut Criterion) {
    let mut group = c.benchmark_group("memory_store/hot_key");
    group.bench_function("1_thread", |b| {
        let store = MemoryStore::new(10);
        let u = update("tg1:hot".into());
        b.iter(|| apply(&store, &u));
    });
    group.bench_function("2_threads", |b| {
        let store = Arc::new(MemoryStore::new(10));
        b.iter_custom(|iters| {
            let per_thread = iters.div_ceil(2);
            let start = Instant::now();
            let handles: Vec<_> = (0..2)
                .map(|_| {
                    let store = store.clone();
                    std::thread::spawn(move || {
                        let u = update("tg1:hot".into());
                        for _ in 0..per_thread {
                            apply(&store, &u);
                        }
                    })
                })
                .collect();
            for h in handles {
                h.join().ok();
            }
            // Wall time for 2 × per_thread decisions: time per decision overall.
            start
                .elapsed()
                .mul_f64(iters as f64 / (2 * per_thread) as f64)
        });
    });
    group.finish();
}

fn distinct_keys(c: &mut Criterion) {
    const KEYS: usize = 100_000;
    let updates: Vec<CounterUpdate> = (0..KEYS).map(|i| update(format!("tg1:user:{i}"))).collect();
    let store = MemoryStore::new(KEYS);
    for u in &updates {
        apply(&store, u);
    }
    let mut group = c.benchmark_group("memory_store/100k_keys");
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("1_thread", |b| {
        let mut i = 0usize;
        b.iter(|| {
            // A stride through the keys defeats the cache like real traffic.
            i = (i + 7_919) % KEYS;
            apply(&store, &updates[i]);
        });
    });
    group.finish();
}

criterion_group!(benches, hot_key, distinct_keys);
criterion_main!(benches);
