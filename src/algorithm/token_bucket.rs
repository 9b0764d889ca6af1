//! Token bucket as GCRA (the generic cell rate algorithm): the state is one
//! timestamp, the "theoretical arrival time" (TAT) at which the bucket would
//! be full again. A request of `n` hits is admitted if, after adding
//! `n × interval` to the TAT, the TAT is at most `burst × interval` ahead of now.
//!
//! The emission interval is `unit / limit`, rounded *up* to whole
//! microseconds, so rounding can only make the bucket refill a hair slower,
//! never admit more than the configured rate.

use super::{Outcome, Rate};

/// The theoretical arrival time, µs since the epoch; 0 for a full bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TokenBucket {
    pub tat: u64,
}

impl TokenBucket {
    /// From the TAT on the bucket is full, the same as a new one.
    pub fn expires_at(&self) -> u64 {
        self.tat
    }
}

/// Microseconds between two tokens.
pub fn interval(rate: &Rate) -> u64 {
    rate.window().div_ceil(rate.limit.max(1))
}

/// Decides `hits` at `now`. Refused hits are never charged (see [`super::Charge`]).
pub fn decide(state: TokenBucket, rate: &Rate, now: u64, hits: u64) -> (Outcome, TokenBucket) {
    let interval = interval(rate);
    let burst = rate.burst.max(1);
    // A limit of 0 admits nothing; treat it as an empty bucket that never fills.
    let burst = if rate.limit == 0 { 0 } else { burst };
    let tat = state.tat.max(now);
    let new_tat = tat.saturating_add(hits.saturating_mul(interval));
    let horizon = now.saturating_add(burst.saturating_mul(interval));
    let allowed = hits <= burst && new_tat <= horizon;
    let next = TokenBucket {
        tat: if allowed { new_tat } else { tat },
    };
    let reset_after = next.tat - now.min(next.tat);
    let retry_after = (!allowed).then(|| {
        if hits > burst {
            reset_after.max(1)
        } else {
            new_tat - horizon
        }
    });
    let outcome = Outcome {
        allowed,
        remaining: horizon.saturating_sub(next.tat) / interval,
        reset_after_micros: reset_after,
        retry_after_micros: retry_after,
        decided_at_micros: now,
    };
    (outcome, TokenBucket { tat: next.tat })
}

/// Gives back `hits`: the bucket's TAT moves back by what they moved it forward.
pub fn refund(state: TokenBucket, rate: &Rate, hits: u64) -> TokenBucket {
    TokenBucket {
        tat: state
            .tat
            .saturating_sub(hits.saturating_mul(interval(rate))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000;

    #[test]
    fn a_full_bucket_admits_the_burst_then_refills_at_the_rate() {
        let rate = Rate::new(10, SEC).with_burst(5); // one token every 100 ms
        let t0 = 1_000 * SEC;
        let mut s = TokenBucket::default();
        for expected in (0..5).rev() {
            let (o, n) = decide(s, &rate, t0, 1);
            assert!(o.allowed);
            assert_eq!(o.remaining, expected);
            s = n;
        }
        let (o, _) = decide(s, &rate, t0, 1);
        assert!(!o.allowed);
        assert_eq!(o.retry_after_micros, Some(100_000));
        assert_eq!(o.reset_after_micros, 500_000);
        let (o, _) = decide(s, &rate, t0 + 99_999, 1);
        assert!(!o.allowed, "a token is not there a microsecond early");
        let (o, s) = decide(s, &rate, t0 + 100_000, 1);
        assert!(o.allowed);
        assert_eq!(o.remaining, 0);
        let (o, _) = decide(s, &rate, t0 + 350_000, 3);
        assert!(!o.allowed, "only 2.5 tokens after 250 ms");
        assert_eq!(o.retry_after_micros, Some(50_000));
    }

    #[test]
    fn sustained_rate_never_exceeds_the_limit_across_unit_boundaries() {
        let rate = Rate::new(10, SEC);
        let mut s = TokenBucket::default();
        let mut admitted = 0;
        // Hammer every millisecond for 3 s: at most burst + 10/s × 3 s.
        for ms in 0..3_000 {
            let (o, n) = decide(s, &rate, 5 * SEC + ms * 1_000, 1);
            admitted += u64::from(o.allowed);
            s = n;
        }
        assert_eq!(admitted, 10 + 30 - 1, "burst of 10, then one every 100 ms");
    }

    #[test]
    fn hits_above_the_burst_are_never_admitted() {
        let rate = Rate::new(10, SEC).with_burst(3);
        let (o, s) = decide(TokenBucket::default(), &rate, SEC, 4);
        assert!(!o.allowed);
        assert_eq!(s, TokenBucket { tat: SEC });
        assert_eq!(o.remaining, 3);
    }

    #[test]
    fn interval_rounds_up_so_the_rate_is_never_exceeded() {
        assert_eq!(interval(&Rate::new(3, SEC)), 333_334);
        assert_eq!(interval(&Rate::new(7, 60 * SEC)), 8_571_429);
    }

    #[test]
    fn a_clock_stepping_back_does_not_refill_the_bucket() {
        let rate = Rate::new(2, SEC);
        let (_, s) = decide(TokenBucket::default(), &rate, 10 * SEC, 2);
        let (o, s2) = decide(s, &rate, 5 * SEC, 1);
        assert!(!o.allowed);
        assert_eq!(s2, s);
    }

    #[test]
    fn a_zero_limit_admits_nothing() {
        let (o, _) = decide(TokenBucket::default(), &Rate::new(0, SEC), SEC, 1);
        assert!(!o.allowed);
    }
}
