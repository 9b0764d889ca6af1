//! A circuit breaker per shard: after a run of failures the shard is skipped
//! (calls fail at once, following the failure mode) instead of making every
//! request wait for the timeout; the store's maintenance pings it until it
//! answers, then closes the breaker.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

/// Consecutive failures that open the breaker.
pub(super) const FAILURES_TO_OPEN: u32 = 3;

#[derive(Debug, Default)]
pub(super) struct Breaker {
    failures: AtomicU32,
    open: AtomicBool,
}

impl Breaker {
    /// Whether calls may go to the shard.
    pub(super) fn is_closed(&self) -> bool {
        !self.open.load(Ordering::Acquire)
    }

    pub(super) fn success(&self) {
        self.failures.store(0, Ordering::Relaxed);
        self.open.store(false, Ordering::Release);
    }

    /// Records a failure; returns true if this one opened the breaker.
    pub(super) fn failure(&self) -> bool {
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        n >= FAILURES_TO_OPEN && !self.open.swap(true, Ordering::AcqRel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_a_run_of_failures_and_closes_on_success() {
        let b = Breaker::default();
        assert!(!b.failure());
        assert!(!b.failure());
        assert!(b.is_closed());
        assert!(b.failure(), "the third failure opens it");
        assert!(!b.is_closed());
        assert!(!b.failure(), "already open");
        b.success();
        assert!(b.is_closed());
        assert!(!b.failure(), "the count starts again");
    }
}
