//! Rate-limit algorithms as pure functions of `(state, rate, now, hits)`.
//!
//! Each algorithm takes the counter's previous state (or its default for a new
//! counter), the configured rate, the time and the number of hits, and returns
//! the decision and the state to store. Nothing here knows about storage or
//! clocks, so every store (memory, Redis via Lua) computes the same answers and
//! the tests can drive time by hand.
//!
//! Shared rules:
//! - a request is admitted whole or not at all (no partial admission);
//! - hits larger than the limit are never admitted;
//! - a clock that steps backwards never yields extra allowance: a window or
//!   bucket that already lies "in the future" is kept as it is.

pub mod fixed_window;
pub mod sliding_window;
pub mod token_bucket;

pub use fixed_window::FixedWindow;
pub use sliding_window::SlidingWindow;
pub use token_bucket::TokenBucket;

/// Which algorithm counts a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Algorithm {
    /// Counts hits per window aligned to the unit (envoyproxy/ratelimit's
    /// behaviour). Allows up to twice the limit across a window edge.
    #[default]
    FixedWindow,
    /// Weighs the previous window's count by how much of it still overlaps the
    /// sliding window (Cloudflare's "sliding window counter").
    SlidingWindow,
    /// GCRA: a token bucket refilled at `limit / unit` that holds `burst`.
    TokenBucket,
}

impl Algorithm {
    /// The name used in limits files and counter keys.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::FixedWindow => "fixed_window",
            Algorithm::SlidingWindow => "sliding_window",
            Algorithm::TokenBucket => "token_bucket",
        }
    }
}

/// The allowance of one limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rate {
    /// Hits allowed per window. At least 1 (configs reject 0).
    pub limit: u64,
    /// The window (the limit's unit) in microseconds. At least 1.
    pub window_micros: u64,
    /// Token bucket only: how many hits may be taken at once. At least 1;
    /// defaults to `limit`.
    pub burst: u64,
}

impl Rate {
    /// A rate of `limit` per `window_micros` with the burst equal to the limit.
    pub fn new(limit: u64, window_micros: u64) -> Self {
        Self {
            limit,
            window_micros,
            burst: limit,
        }
    }

    /// Sets the token bucket's burst.
    pub fn with_burst(mut self, burst: u64) -> Self {
        self.burst = burst;
        self
    }

    // Guards against division by zero should an unvalidated rate slip through.
    fn window(&self) -> u64 {
        self.window_micros.max(1)
    }
}

/// Whether refused hits are still counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Charge {
    /// Only admitted hits count; a refused request costs nothing. Tollgate's
    /// own API uses this.
    #[default]
    AdmittedOnly,
    /// Hits count even when refused, as envoyproxy/ratelimit does (its
    /// counter is incremented before it is compared). Only fixed windows, the
    /// reference's algorithm, do this: a sliding window would carry the
    /// refused burst into the next window, and a token bucket would be pushed
    /// into the future without bound.
    Always,
}

/// The answer for one counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Outcome {
    /// Whether the hits were admitted.
    pub allowed: bool,
    /// Hits that could still be admitted right after this request.
    pub remaining: u64,
    /// Microseconds until the counter is back to its full allowance.
    pub reset_after_micros: u64,
    /// Set when refused: microseconds until the same request could be admitted
    /// (for hits larger than the limit, which never fit: until the reset).
    pub retry_after_micros: Option<u64>,
    /// The store's time of the decision, µs since the epoch: what a refund of
    /// these hits must name (see [`Algorithm::refund`]).
    pub decided_at_micros: u64,
}

/// The stored state of one counter, tagged by algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CounterState {
    FixedWindow(FixedWindow),
    SlidingWindow(SlidingWindow),
    TokenBucket(TokenBucket),
}

impl CounterState {
    /// When this state stops mattering: from then on it decides exactly like a
    /// new counter, so a store may drop it.
    pub fn expires_at(&self, rate: &Rate) -> u64 {
        match self {
            CounterState::FixedWindow(s) => s.expires_at(rate),
            CounterState::SlidingWindow(s) => s.expires_at(rate),
            CounterState::TokenBucket(s) => s.expires_at(),
        }
    }
}

impl Algorithm {
    /// Decides `hits` against `rate` at `now` (µs since the epoch), starting
    /// from `state` (`None` for a new counter, or a state left by another
    /// algorithm, which is then ignored).
    pub fn decide(
        self,
        state: Option<&CounterState>,
        rate: &Rate,
        now: u64,
        hits: u64,
        charge: Charge,
    ) -> (Outcome, CounterState) {
        match self {
            Algorithm::FixedWindow => {
                let prev = match state {
                    Some(CounterState::FixedWindow(s)) => *s,
                    _ => FixedWindow::default(),
                };
                let (o, s) = fixed_window::decide(prev, rate, now, hits, charge);
                (o, CounterState::FixedWindow(s))
            }
            Algorithm::SlidingWindow => {
                let prev = match state {
                    Some(CounterState::SlidingWindow(s)) => *s,
                    _ => SlidingWindow::default(),
                };
                let (o, s) = sliding_window::decide(prev, rate, now, hits, charge);
                (o, CounterState::SlidingWindow(s))
            }
            Algorithm::TokenBucket => {
                let prev = match state {
                    Some(CounterState::TokenBucket(s)) => *s,
                    _ => TokenBucket::default(),
                };
                let (o, s) = token_bucket::decide(prev, rate, now, hits);
                (o, CounterState::TokenBucket(s))
            }
        }
    }
}

impl Algorithm {
    /// Gives back `hits` that were admitted at `taken_at` (µs since the
    /// epoch), for a request that another of its limits then refused.
    ///
    /// Counts are commutative, so a refund subtracts exactly what the take
    /// added, whatever other requests did in between; a window that has
    /// since rolled over is left alone (its hits no longer count anyway).
    pub fn refund(
        self,
        state: &CounterState,
        rate: &Rate,
        taken_at: u64,
        hits: u64,
    ) -> CounterState {
        match (self, *state) {
            (Algorithm::FixedWindow, CounterState::FixedWindow(s)) => {
                CounterState::FixedWindow(fixed_window::refund(s, rate, taken_at, hits))
            }
            (Algorithm::SlidingWindow, CounterState::SlidingWindow(s)) => {
                CounterState::SlidingWindow(sliding_window::refund(s, rate, taken_at, hits))
            }
            (Algorithm::TokenBucket, CounterState::TokenBucket(s)) => {
                CounterState::TokenBucket(token_bucket::refund(s, rate, hits))
            }
            (_, other) => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refund_undoes_a_take_even_after_other_takes() {
        let rate = Rate::new(10, 60_000_000);
        for algorithm in [
            Algorithm::FixedWindow,
            Algorithm::SlidingWindow,
            Algorithm::TokenBucket,
        ] {
            let now = 600_000_000;
            let (_, s) = algorithm.decide(None, &rate, now, 3, Charge::AdmittedOnly);
            let (_, s) = algorithm.decide(Some(&s), &rate, now + 5, 2, Charge::AdmittedOnly);
            let s = algorithm.refund(&s, &rate, now, 3);
            let (o, _) = algorithm.decide(Some(&s), &rate, now + 5, 8, Charge::AdmittedOnly);
            assert!(
                o.allowed,
                "{algorithm:?}: 2 taken, 8 more fit after the refund"
            );
            assert_eq!(o.remaining, 0, "{algorithm:?}");
        }
    }

    #[test]
    fn a_refund_into_a_window_that_rolled_over_changes_nothing() {
        let rate = Rate::new(10, 60_000_000);
        let (_, s) =
            Algorithm::FixedWindow.decide(None, &rate, 600_000_000, 4, Charge::AdmittedOnly);
        let (_, s) =
            Algorithm::FixedWindow.decide(Some(&s), &rate, 660_000_000, 1, Charge::AdmittedOnly);
        let refunded = Algorithm::FixedWindow.refund(&s, &rate, 600_000_000, 4);
        assert_eq!(refunded, s);
    }

    #[test]
    fn a_state_of_another_algorithm_is_ignored() {
        let rate = Rate::new(2, 1_000_000);
        let foreign = CounterState::TokenBucket(TokenBucket { tat: u64::MAX / 2 });
        let (o, s) = Algorithm::FixedWindow.decide(Some(&foreign), &rate, 5, 1, Charge::default());
        assert!(o.allowed);
        assert_eq!(o.remaining, 1);
        assert!(matches!(s, CounterState::FixedWindow(_)));
    }
}
