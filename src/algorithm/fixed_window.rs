//! Fixed window: hits are counted per window aligned to the unit (a minute
//! window runs from :00 to :59 of Unix time), as envoyproxy/ratelimit counts.

use super::{Charge, Outcome, Rate};

/// The count of the window that starts at `window_start` (µs since the epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FixedWindow {
    pub window_start: u64,
    pub count: u64,
}

impl FixedWindow {
    /// The end of the counted window: after it the count no longer matters.
    pub fn expires_at(&self, rate: &Rate) -> u64 {
        self.window_start.saturating_add(rate.window())
    }
}

/// Decides `hits` at `now`; see the module docs of [`crate::algorithm`].
pub fn decide(
    state: FixedWindow,
    rate: &Rate,
    now: u64,
    hits: u64,
    charge: Charge,
) -> (Outcome, FixedWindow) {
    let window = rate.window();
    let current_start = now - now % window;
    // A stored window at or after the current one is still counting; one that
    // is later than now means the clock stepped back, and it is kept so the
    // step back cannot hand out a fresh window.
    let mut next = if state.window_start >= current_start {
        state
    } else {
        FixedWindow {
            window_start: current_start,
            count: 0,
        }
    };
    let reset_after = next.expires_at(rate).saturating_sub(now).min(window);
    let wanted = next.count.saturating_add(hits);
    let allowed = wanted <= rate.limit;
    if allowed || charge == Charge::Always {
        next.count = wanted;
    }
    let outcome = Outcome {
        allowed,
        remaining: rate.limit.saturating_sub(next.count),
        reset_after_micros: reset_after,
        retry_after_micros: (!allowed).then_some(reset_after),
        decided_at_micros: now,
    };
    (outcome, next)
}

/// Gives back `hits` taken at `taken_at`, if that window is still the one counted.
pub fn refund(state: FixedWindow, rate: &Rate, taken_at: u64, hits: u64) -> FixedWindow {
    let window = rate.window();
    if state.window_start == taken_at - taken_at % window {
        FixedWindow {
            count: state.count.saturating_sub(hits),
            ..state
        }
    } else {
        state
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000;
    const MIN: u64 = 60 * SEC;

    fn run(state: FixedWindow, limit: u64, now: u64, hits: u64) -> (Outcome, FixedWindow) {
        decide(
            state,
            &Rate::new(limit, MIN),
            now,
            hits,
            Charge::AdmittedOnly,
        )
    }

    #[test]
    fn counts_down_then_refuses_until_the_window_ends() {
        let t0 = 1_700_000_000 * SEC - (1_700_000_000 * SEC) % MIN + 15 * SEC;
        let mut s = FixedWindow::default();
        for expected in (0..10).rev() {
            let (o, n) = run(s, 10, t0, 1);
            assert!(o.allowed);
            assert_eq!(o.remaining, expected);
            assert_eq!(o.reset_after_micros, 45 * SEC);
            assert_eq!(o.retry_after_micros, None);
            s = n;
        }
        let (o, n) = run(s, 10, t0 + SEC, 1);
        assert!(!o.allowed);
        assert_eq!(o.remaining, 0);
        assert_eq!(o.retry_after_micros, Some(44 * SEC));
        assert_eq!(n, s, "a refused hit is not counted");
    }

    #[test]
    fn window_edges_are_aligned_to_the_unit() {
        let start = 100 * MIN;
        let (_, s) = run(FixedWindow::default(), 1, start + MIN - 1, 1);
        assert_eq!(s.window_start, start);
        let (o, _) = run(s, 1, start + MIN - 1, 1);
        assert!(
            !o.allowed,
            "last microsecond of the window is still the window"
        );
        assert_eq!(o.retry_after_micros, Some(1));
        let (o, s2) = run(s, 1, start + MIN, 1);
        assert!(o.allowed, "first microsecond of the next window is fresh");
        assert_eq!(s2.window_start, start + MIN);
        assert_eq!(o.reset_after_micros, MIN);
    }

    #[test]
    fn several_hits_at_once_are_admitted_whole_or_not_at_all() {
        let (o, s) = run(FixedWindow::default(), 10, 0, 7);
        assert!(o.allowed);
        assert_eq!(o.remaining, 3);
        let (o, s2) = run(s, 10, 0, 4);
        assert!(!o.allowed, "7 + 4 > 10");
        assert_eq!(s2.count, 7, "no partial admission");
        let (o, _) = run(s2, 10, 0, 3);
        assert!(o.allowed);
        assert_eq!(o.remaining, 0);
    }

    #[test]
    fn hits_larger_than_the_limit_are_never_admitted() {
        let (o, s) = run(FixedWindow::default(), 5, 10 * SEC, 6);
        assert!(!o.allowed);
        assert_eq!(s.count, 0);
        assert_eq!(o.remaining, 5);
        assert_eq!(o.retry_after_micros, Some(50 * SEC));
    }

    #[test]
    fn charge_always_counts_refused_hits_like_the_envoy_reference() {
        let rate = Rate::new(10, MIN);
        let (_, s) = decide(FixedWindow::default(), &rate, 0, 8, Charge::Always);
        let (o, s) = decide(s, &rate, 0, 5, Charge::Always);
        assert!(!o.allowed);
        assert_eq!(s.count, 13);
        let (o, _) = decide(s, &rate, 0, 1, Charge::Always);
        assert!(!o.allowed, "still over: the refused hits were counted");
    }

    #[test]
    fn a_clock_stepping_back_does_not_open_a_fresh_window() {
        let start = 50 * MIN;
        let (_, s) = run(FixedWindow::default(), 1, start + 30 * SEC, 1);
        // The clock jumps back two minutes: the full window must stay full.
        let (o, s2) = run(s, 1, start - 2 * MIN, 1);
        assert!(!o.allowed);
        assert_eq!(s2, s);
        assert!(o.reset_after_micros <= MIN);
    }
}
