//! The embedded in-memory counter store: exact within one process, no global
//! lock, bounded in size.
//!
//! Counters live in a [`DashMap`], whose shards each have their own lock: two
//! requests contend only when their keys hash to the same shard, and each
//! decision runs under that shard's lock, so concurrent hits on one key are
//! counted exactly (never over-admitted). No lock is held across an `.await`:
//! `apply` does all its work synchronously.
//!
//! Memory is bounded by `max_keys`. Expired counters (whose state no longer
//! affects any decision) are evicted by [`CounterStore::maintain`], which the
//! server runs every second. When the store is full, updates that would
//! create a new key fail with [`StoreError::Full`], a transient error that
//! follows the configured failure mode; keys already present keep being
//! counted exactly. Live counters are never evicted to make room, since that
//! would silently reset them and over-admit.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;

use super::{CounterStore, CounterUpdate, StoreError, StoreFuture};
use crate::algorithm::{CounterState, Outcome};
use crate::clock::{Clock, SystemClock};

/// The default bound on live counters.
pub const DEFAULT_MAX_KEYS: usize = 1_000_000;

#[derive(Debug, Clone, Copy)]
struct Slot {
    state: CounterState,
    expires_at: u64,
}

/// In-process counters. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct MemoryStore {
    // foldhash: several times faster than SipHash on short keys, and seeded
    // per process, so callers cannot aim keys at one shard of the map.
    counters: DashMap<Box<str>, Slot, foldhash::fast::RandomState>,
    // Tracked separately from the map so a new key can reserve room
    // atomically before it is inserted: the bound is exact under concurrency.
    len: AtomicUsize,
    max_keys: usize,
    clock: Arc<dyn Clock>,
}

impl MemoryStore {
    /// A store on the system clock holding at most `max_keys` counters.
    pub fn new(max_keys: usize) -> Self {
        Self::with_clock(max_keys, Arc::new(SystemClock))
    }

    /// A store reading time from `clock` (tests drive it by hand).
    pub fn with_clock(max_keys: usize, clock: Arc<dyn Clock>) -> Self {
        Self {
            counters: DashMap::with_hasher(foldhash::fast::RandomState::default()),
            len: AtomicUsize::new(0),
            max_keys,
            clock,
        }
    }

    /// Counters currently held, expired ones included until evicted.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// True when no counter is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every counter whose state no longer matters at `now`. Returns
    /// how many were dropped.
    pub fn evict_expired(&self, now: u64) -> usize {
        let mut evicted = 0;
        self.counters.retain(|_, slot| {
            let keep = slot.expires_at > now;
            evicted += usize::from(!keep);
            keep
        });
        self.len.fetch_sub(evicted, Ordering::Relaxed);
        evicted
    }

    fn reserve(&self) -> bool {
        self.len
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_keys).then_some(n + 1)
            })
            .is_ok()
    }

    fn apply_one(&self, u: &CounterUpdate, now: u64) -> Result<Outcome, StoreError> {
        if let Some(taken_at) = u.refund_of {
            if let Some(mut slot) = self.counters.get_mut(u.key.as_str()) {
                slot.state = u.algorithm.refund(&slot.state, &u.rate, taken_at, u.hits);
            }
            return Ok(Outcome::default());
        }
        if let Some(mut slot) = self.counters.get_mut(u.key.as_str()) {
            let (outcome, state) =
                u.algorithm
                    .decide(Some(&slot.state), &u.rate, now, u.hits, u.charge);
            if !u.dry_run {
                *slot = Slot {
                    state,
                    expires_at: state.expires_at(&u.rate),
                };
            }
            return Ok(outcome);
        }
        if u.dry_run {
            let (outcome, _) = u.algorithm.decide(None, &u.rate, now, u.hits, u.charge);
            return Ok(outcome);
        }
        if !self.reserve() {
            return Err(StoreError::Full {
                max_keys: self.max_keys,
            });
        }
        // Another request may have created the key since the lookup above;
        // the entry API decides under the shard lock either way.
        match self.counters.entry(u.key.as_str().into()) {
            Entry::Occupied(mut e) => {
                self.len.fetch_sub(1, Ordering::Relaxed);
                let slot = e.get_mut();
                let (outcome, state) =
                    u.algorithm
                        .decide(Some(&slot.state), &u.rate, now, u.hits, u.charge);
                *slot = Slot {
                    state,
                    expires_at: state.expires_at(&u.rate),
                };
                Ok(outcome)
            }
            Entry::Vacant(e) => {
                let (outcome, state) = u.algorithm.decide(None, &u.rate, now, u.hits, u.charge);
                e.insert(Slot {
                    state,
                    expires_at: state.expires_at(&u.rate),
                });
                Ok(outcome)
            }
        }
    }
}

impl CounterStore for MemoryStore {
    fn apply<'a>(
        &'a self,
        updates: &'a [CounterUpdate],
    ) -> StoreFuture<'a, Result<Vec<Outcome>, StoreError>> {
        let now = self.clock.now_micros();
        let result = updates.iter().map(|u| self.apply_one(u, now)).collect();
        Box::pin(std::future::ready(result))
    }

    fn maintain(&self) -> StoreFuture<'_, ()> {
        self.evict_expired(self.clock.now_micros());
        Box::pin(std::future::ready(()))
    }

    fn name(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algorithm::{Algorithm, Charge, Rate};
    use crate::clock::ManualClock;

    const SEC: u64 = 1_000_000;

    fn update(key: &str, limit: u64) -> CounterUpdate {
        CounterUpdate {
            key: key.into(),
            algorithm: Algorithm::FixedWindow,
            rate: Rate::new(limit, 60 * SEC),
            hits: 1,
            charge: Charge::AdmittedOnly,
            dry_run: false,
            refund_of: None,
        }
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .map(|rt| rt.block_on(f))
            .unwrap_or_else(|e| panic!("runtime: {e}"))
    }

    #[test]
    fn concurrent_hits_on_one_key_are_never_over_admitted() {
        let store = Arc::new(MemoryStore::new(10));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let store = store.clone();
                std::thread::spawn(move || {
                    let mut allowed = 0u32;
                    for _ in 0..500 {
                        let out = block_on(store.apply(std::slice::from_ref(&update("hot", 1000))));
                        allowed += u32::from(out.map(|o| o[0].allowed).unwrap_or(false));
                    }
                    allowed
                })
            })
            .collect();
        let total: u32 = threads.into_iter().map(|t| t.join().unwrap_or(0)).sum();
        assert_eq!(total, 1000);
    }

    #[test]
    fn dry_run_decides_without_storing() {
        let store = MemoryStore::new(10);
        let mut u = update("k", 2);
        u.dry_run = true;
        for _ in 0..3 {
            let out = block_on(store.apply(std::slice::from_ref(&u))).unwrap_or_default();
            assert!(out[0].allowed);
            assert_eq!(out[0].remaining, 1);
        }
        assert!(store.is_empty());
    }

    #[test]
    fn full_store_refuses_new_keys_but_keeps_counting_old_ones() {
        let clock = ManualClock::new(1_000 * SEC);
        let store = MemoryStore::with_clock(2, Arc::new(clock.clone()));
        for key in ["a", "b"] {
            assert!(block_on(store.apply(&[update(key, 5)])).is_ok());
        }
        assert_eq!(
            block_on(store.apply(&[update("c", 5)])),
            Err(StoreError::Full { max_keys: 2 })
        );
        let out = block_on(store.apply(&[update("a", 5)])).unwrap_or_default();
        assert_eq!(out[0].remaining, 3, "existing key still counted");

        // Once the windows are over, eviction makes room again.
        clock.advance(120 * SEC);
        assert_eq!(store.evict_expired(clock.now_micros()), 2);
        assert!(block_on(store.apply(&[update("c", 5)])).is_ok());
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn eviction_keeps_live_counters() {
        let clock = ManualClock::new(1_000 * SEC);
        let store = MemoryStore::with_clock(10, Arc::new(clock.clone()));
        assert!(block_on(store.apply(&[update("live", 5)])).is_ok());
        clock.advance(SEC);
        assert_eq!(store.evict_expired(clock.now_micros()), 0);
        let out = block_on(store.apply(&[update("live", 5)])).unwrap_or_default();
        assert_eq!(out[0].remaining, 3);
    }
}
