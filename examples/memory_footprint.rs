//! How much memory the in-memory store needs per live counter:
//! `cargo run --release --example memory_footprint -- [KEYS]` fills a store
//! with KEYS (default 1,000,000) live counters with keys shaped like real
//! ones and prints the process's resident set before and after.

use std::sync::Arc;

use tollgate::algorithm::{Algorithm, Charge, Rate};
use tollgate::clock::SystemClock;
use tollgate::store::{CounterStore, CounterUpdate, MemoryStore};

fn resident_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let keys: usize = std::env::args()
        .nth(1)
        .map_or(Ok(1_000_000), |a| a.parse())?;
    let before = resident_kib();
    let store = MemoryStore::with_clock(keys, Arc::new(SystemClock));
    let mut batch = Vec::with_capacity(1);
    for i in 0..keys {
        batch.clear();
        batch.push(CounterUpdate {
            // The shape of a real key: domain, one descriptor entry, algorithm, unit.
            key: format!(
                "tg1:3:api4:user{}:{i}fixed_window:hour",
                i.to_string().len()
            ),
            algorithm: Algorithm::FixedWindow,
            rate: Rate::new(100, 3_600_000_000),
            hits: 1,
            charge: Charge::AdmittedOnly,
            dry_run: false,
            refund_of: None,
        });
        store.apply(&batch).await?;
    }
    let after = resident_kib();
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "{keys} live counters: resident {:.1} MiB -> {:.1} MiB ({:.1} MiB for the store, {:.0} bytes per counter)",
        mib(before),
        mib(after),
        mib(after.saturating_sub(before)),
        (after.saturating_sub(before) * 1024) as f64 / keys as f64
    );
    Ok(())
}
