//! Wall-clock time for the counters, behind a trait so tests can drive it.
//!
//! Windows are aligned to unit boundaries of Unix time (like envoyproxy/ratelimit),
//! so the clock returns microseconds since the Unix epoch rather than an
//! `Instant`. Microseconds keep token-bucket intervals exact enough for limits of
//! up to a million per second and stay below 2^53, so the same numbers can be
//! handled by Redis Lua scripts (whose numbers are doubles).

use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds in one second.
pub const MICROS_PER_SEC: u64 = 1_000_000;

/// A source of "now" in microseconds since the Unix epoch.
pub trait Clock: Send + Sync + Debug + 'static {
    /// The current time in microseconds since the Unix epoch.
    fn now_micros(&self) -> u64;
}

/// The system clock. A clock set before 1970 reads as 0.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_micros(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }
}

/// A clock that only moves when told to; cheap to clone, all clones share the time.
///
/// Used by tests and benchmarks; it can also step backwards, to check that
/// the algorithms never hand out extra allowance when the system clock does.
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    now: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock reading `micros` since the epoch.
    pub fn new(micros: u64) -> Self {
        Self {
            now: Arc::new(AtomicU64::new(micros)),
        }
    }

    /// Sets the time, forwards or backwards.
    pub fn set(&self, micros: u64) {
        self.now.store(micros, Ordering::SeqCst);
    }

    /// Moves the time forwards by `micros`.
    pub fn advance(&self, micros: u64) {
        self.now.fetch_add(micros, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_micros(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }
}
