//! Sliding window counter (Cloudflare's approximation): the count of the
//! current aligned window plus the previous window's count weighted by how
//! much of it the sliding window still covers.
//!
//! All arithmetic is exact integer arithmetic scaled by the window length, so
//! there is no float rounding that could admit one hit too many. The weight
//! is computed in whole milliseconds: that keeps every product below 2^53, so
//! the Redis Lua script (whose numbers are doubles) computes the very same
//! answers; limits files reject sliding windows whose `limit × window in ms`
//! would not fit.
//!
//! Refused hits are never counted here ([`Charge`] applies to fixed windows
//! only): counting them would let one abusive burst weigh on the next window.

use super::{Charge, Outcome, Rate};

/// Counts of the aligned window starting at `window_start` and of the one before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SlidingWindow {
    pub window_start: u64,
    pub current: u64,
    pub previous: u64,
}

impl SlidingWindow {
    /// After the window following the current one has passed, neither count weighs anything.
    pub fn expires_at(&self, rate: &Rate) -> u64 {
        self.window_start
            .saturating_add(rate.window().saturating_mul(2))
    }

    /// Rolls the counts forward to the window containing `now`. A stored window
    /// later than `now` (the clock stepped back) is kept as it is.
    fn advance(self, window: u64, now: u64) -> Self {
        let current_start = now - now % window;
        if self.window_start >= current_start {
            self
        } else if self.window_start.saturating_add(window) == current_start {
            Self {
                window_start: current_start,
                current: 0,
                previous: self.current,
            }
        } else {
            Self {
                window_start: current_start,
                current: 0,
                previous: 0,
            }
        }
    }
}

/// Decides `hits` at `now`; see the module docs of [`crate::algorithm`].
pub fn decide(
    state: SlidingWindow,
    rate: &Rate,
    now: u64,
    hits: u64,
    _charge: Charge,
) -> (Outcome, SlidingWindow) {
    let w_us = rate.window();
    let mut next = state.advance(w_us, now);
    // If the clock stepped back, reason from the start of the stored window and
    // add the distance back onto every duration we report.
    let lag = next.window_start.saturating_sub(now);
    let elapsed_us = now.saturating_sub(next.window_start).min(w_us);
    // The weight in whole milliseconds (see the module docs).
    let w = (w_us / MICROS_PER_MILLI).max(1);
    let elapsed = (elapsed_us / MICROS_PER_MILLI).min(w);
    let (w128, limit128) = (u128::from(w), u128::from(rate.limit));
    let capacity = limit128 * w128;
    let weighted_previous = u128::from(next.previous) * u128::from(w - elapsed);
    let usage = |current: u64| weighted_previous + u128::from(current) * w128;

    let wanted = next.current.saturating_add(hits);
    let allowed = usage(wanted) <= capacity;
    if allowed {
        next.current = wanted;
    }
    let remaining = capacity.saturating_sub(usage(next.current)) / w128;

    let to_window_end = w_us - elapsed_us;
    let reset_after = if next.current > 0 {
        to_window_end + w_us
    } else if next.previous > 0 {
        to_window_end
    } else {
        0
    };
    let retry_after = (!allowed).then(|| {
        if hits > rate.limit {
            reset_after
        } else {
            // In milliseconds from the start of the current millisecond.
            let wait_ms = retry_after(&next, rate.limit, w, elapsed, hits);
            (wait_ms * MICROS_PER_MILLI)
                .saturating_sub(elapsed_us % MICROS_PER_MILLI)
                .max(1)
        }
    });
    let outcome = Outcome {
        allowed,
        remaining: u64::try_from(remaining).unwrap_or(u64::MAX),
        reset_after_micros: reset_after + lag,
        retry_after_micros: retry_after.map(|r| r + lag),
        decided_at_micros: now,
    };
    (outcome, next)
}

const MICROS_PER_MILLI: u64 = 1_000;

/// Gives back `hits` taken at `taken_at`, from whichever stored window holds them.
pub fn refund(state: SlidingWindow, rate: &Rate, taken_at: u64, hits: u64) -> SlidingWindow {
    let w = rate.window();
    let taken_window = taken_at - taken_at % w;
    if state.window_start == taken_window {
        SlidingWindow {
            current: state.current.saturating_sub(hits),
            ..state
        }
    } else if state.window_start == taken_window.saturating_add(w) {
        SlidingWindow {
            previous: state.previous.saturating_sub(hits),
            ..state
        }
    } else {
        state
    }
}

/// The shortest wait after which `hits` fit, assuming no other traffic, in
/// the units of `w` and `elapsed` (milliseconds). Requires `hits <= limit`.
fn retry_after(s: &SlidingWindow, limit: u64, w: u64, elapsed: u64, hits: u64) -> u64 {
    let w128 = u128::from(w);
    let to_window_end = w - elapsed;
    // Later in the current window, as the previous window's weight fades:
    // previous * (w - elapsed - t) <= (limit - current - hits) * w.
    if let Some(room) = limit
        .checked_sub(s.current)
        .and_then(|r| r.checked_sub(hits))
    {
        if s.previous == 0 {
            return 1;
        }
        let max_weight = (u128::from(room) * w128) / u128::from(s.previous);
        let t = u128::from(to_window_end).saturating_sub(max_weight);
        if t < u128::from(to_window_end) {
            return u64::try_from(t).unwrap_or(u64::MAX).max(1);
        }
    }
    // In the next window, where today's count becomes the weighted one:
    // current * (w - e) <= (limit - hits) * w, solved for the offset e.
    let offset = if s.current == 0 {
        0
    } else {
        let max_weight = (u128::from(limit - hits) * w128) / u128::from(s.current);
        u64::try_from(w128.saturating_sub(max_weight)).unwrap_or(w)
    };
    to_window_end + offset
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000;
    const MIN: u64 = 60 * SEC;

    fn rate(limit: u64) -> Rate {
        Rate::new(limit, MIN)
    }

    fn fill(limit: u64, at: u64, n: u64) -> SlidingWindow {
        let mut s = SlidingWindow::default();
        for _ in 0..n {
            let (o, next) = decide(s, &rate(limit), at, 1, Charge::AdmittedOnly);
            assert!(o.allowed);
            s = next;
        }
        s
    }

    #[test]
    fn within_one_window_it_counts_like_a_fixed_window() {
        let t0 = 10 * MIN;
        let s = fill(10, t0 + SEC, 10);
        let (o, s2) = decide(s, &rate(10), t0 + 2 * SEC, 1, Charge::AdmittedOnly);
        assert!(!o.allowed);
        assert_eq!(o.remaining, 0);
        assert_eq!(s2.current, 10);
    }

    #[test]
    fn the_previous_window_weighs_by_its_overlap() {
        let t0 = 10 * MIN;
        let s = fill(10, t0 + 59 * SEC, 10);
        // 15 s into the next window, the previous 10 still weigh 10 * 45/60 = 7.5,
        // so 2 more fit (7.5 + 2 = 9.5) but a third does not (10.5).
        let now = t0 + MIN + 15 * SEC;
        let (o, s) = decide(s, &rate(10), now, 2, Charge::AdmittedOnly);
        assert!(o.allowed);
        assert_eq!(o.remaining, 0);
        let (o, s) = decide(s, &rate(10), now, 1, Charge::AdmittedOnly);
        assert!(!o.allowed);
        // The next hit fits once the previous weight drops to 8: 10 * (60 - e)/60 <= 8
        // => e >= 12 s... already past; it needs weight <= 7: e >= 18 s, i.e. 3 s from now.
        assert_eq!(o.retry_after_micros, Some(3 * SEC));
        let (o, _) = decide(s, &rate(10), now + 3 * SEC, 1, Charge::AdmittedOnly);
        assert!(o.allowed, "admitted exactly when retry_after said");
    }

    #[test]
    fn unlike_a_fixed_window_it_does_not_allow_a_double_burst_at_the_edge() {
        let t0 = 10 * MIN;
        let s = fill(10, t0 + MIN - 1, 10);
        let (o, _) = decide(s, &rate(10), t0 + MIN, 1, Charge::AdmittedOnly);
        assert!(
            !o.allowed,
            "right after the edge the previous window still weighs ~10"
        );
    }

    #[test]
    fn a_window_two_windows_ago_weighs_nothing() {
        let t0 = 10 * MIN;
        let s = fill(10, t0, 10);
        let (o, s) = decide(s, &rate(10), t0 + 2 * MIN, 10, Charge::AdmittedOnly);
        assert!(o.allowed);
        assert_eq!((s.previous, s.current), (0, 10));
    }

    #[test]
    fn no_partial_admission_and_hits_above_the_limit_never_fit() {
        let s = fill(10, 0, 8);
        let (o, s2) = decide(s, &rate(10), 0, 3, Charge::AdmittedOnly);
        assert!(!o.allowed);
        assert_eq!(s2.current, 8);
        let (o, _) = decide(
            SlidingWindow::default(),
            &rate(10),
            0,
            11,
            Charge::AdmittedOnly,
        );
        assert!(!o.allowed);
        assert_eq!(o.retry_after_micros, Some(o.reset_after_micros));
    }

    #[test]
    fn retry_after_in_the_next_window_is_exact() {
        // 10 counted in this window; at 30 s in, a request of 5 must wait until
        // the next window's weight of those 10 falls to 5: halfway into it.
        let t0 = 10 * MIN;
        let s = fill(10, t0, 10);
        let (o, _) = decide(s, &rate(10), t0 + 30 * SEC, 5, Charge::AdmittedOnly);
        assert!(!o.allowed);
        assert_eq!(o.retry_after_micros, Some(30 * SEC + 30 * SEC));
        let (o, _) = decide(s, &rate(10), t0 + MIN + 30 * SEC, 5, Charge::AdmittedOnly);
        assert!(o.allowed);
        let (o, _) = decide(
            s,
            &rate(10),
            t0 + MIN + 30 * SEC - 1,
            5,
            Charge::AdmittedOnly,
        );
        assert!(!o.allowed, "one microsecond earlier is still too early");
    }

    #[test]
    fn a_clock_stepping_back_keeps_the_counts() {
        let t0 = 10 * MIN;
        let s = fill(3, t0 + 10 * SEC, 3);
        let (o, s2) = decide(s, &rate(3), t0 - 5 * MIN, 1, Charge::AdmittedOnly);
        assert!(!o.allowed);
        assert_eq!(s2, s);
    }
}
