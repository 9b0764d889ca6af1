//! When a failed call is tried again and how long the client waits first:
//! the [`RetryPolicy`] and the [`Sleeper`] that does the waiting (a trait, so
//! tests can see every wait without spending real time).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use rand::Rng;
use tonic::Code;

/// Waits for a duration. The client waits through this trait only, so a test
/// can record the waits it asks for instead of sleeping.
pub trait Sleeper: Send + Sync + fmt::Debug + 'static {
    /// A future that completes after `duration`.
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>>;
}

/// The real sleeper: [`tokio::time::sleep`].
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioSleeper;

impl Sleeper for TokioSleeper {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        Box::pin(tokio::time::sleep(duration))
    }
}

/// Codes that say the request itself is wrong (or the caller may not make
/// it): sending it again cannot help, so they are never retried and the
/// builder refuses them in `retry_codes`.
pub const PERMANENT_CODES: [Code; 9] = [
    Code::Ok,
    Code::InvalidArgument,
    Code::NotFound,
    Code::AlreadyExists,
    Code::PermissionDenied,
    Code::Unauthenticated,
    Code::FailedPrecondition,
    Code::OutOfRange,
    Code::Unimplemented,
];

/// When to retry and how long to wait. Built by
/// [`ClientBuilder`](super::ClientBuilder).
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Off: every call is tried exactly once.
    pub(crate) auto_retry: bool,
    /// Retries after the first attempt (so at most `max_retries + 1` calls).
    pub(crate) max_retries: u32,
    /// The first backoff; later ones grow by `backoff_factor`.
    pub(crate) min_retry_delay: Duration,
    pub(crate) backoff_factor: f64,
    /// No backoff is longer. A server that asks for a longer wait
    /// (`retry_after`) is not retried at all: the answer is returned, so the
    /// caller is not parked for an hour by a per-hour limit.
    pub(crate) max_retry_delay: Duration,
    /// gRPC codes that are retried (never a [`PERMANENT_CODES`] one).
    pub(crate) retry_codes: Vec<Code>,
    /// Up to this fraction of a wait is added at random, so many clients
    /// limited at once do not come back in the same instant. Only ever added:
    /// a wait is never shorter than the server's `retry_after`.
    pub(crate) jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            auto_retry: true,
            max_retries: 3,
            min_retry_delay: Duration::from_millis(100),
            backoff_factor: 2.0,
            max_retry_delay: Duration::from_secs(30),
            retry_codes: vec![Code::ResourceExhausted, Code::Unavailable],
            jitter: 0.1,
        }
    }
}

impl RetryPolicy {
    /// Whether an error with `code` may be retried at all.
    pub(crate) fn retries(&self, code: Code) -> bool {
        self.auto_retry && !PERMANENT_CODES.contains(&code) && self.retry_codes.contains(&code)
    }

    /// The exponential backoff before retry number `retry` (0 for the first),
    /// capped at `max_retry_delay`, without jitter.
    pub(crate) fn backoff(&self, retry: u32) -> Duration {
        let exp = i32::try_from(retry).unwrap_or(i32::MAX);
        let secs = self.min_retry_delay.as_secs_f64() * self.backoff_factor.powi(exp);
        let cap = self.max_retry_delay.as_secs_f64();
        Duration::from_secs_f64(if secs.is_finite() { secs.min(cap) } else { cap })
    }

    /// The wait before retry number `retry`: the larger of the backoff and the
    /// server's `retry_after`, plus jitter. `None` when the server asks for
    /// more than `max_retry_delay` (give up rather than wait that long).
    pub(crate) fn delay(&self, retry: u32, retry_after: Option<Duration>) -> Option<Duration> {
        let hint = retry_after.unwrap_or_default();
        if hint > self.max_retry_delay {
            return None;
        }
        let base = self.backoff(retry).max(hint);
        let extra = if self.jitter > 0.0 {
            base.mul_f64(self.jitter * rand::rng().random::<f64>())
        } else {
            Duration::ZERO
        };
        Some(base + extra)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            min_retry_delay: Duration::from_secs(1),
            backoff_factor: 2.0,
            max_retry_delay: Duration::from_secs(10),
            jitter: 0.0,
            ..RetryPolicy::default()
        }
    }

    #[test]
    fn backoff_grows_by_the_factor_up_to_the_cap() {
        let p = policy();
        let secs: Vec<u64> = (0..6).map(|r| p.backoff(r).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 10, 10]);
        assert_eq!(p.backoff(u32::MAX), Duration::from_secs(10));
    }

    #[test]
    fn a_server_hint_is_a_floor_and_too_long_a_hint_gives_up() {
        let p = policy();
        assert_eq!(
            p.delay(0, Some(Duration::from_secs(3))),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            p.delay(3, Some(Duration::from_secs(3))),
            Some(Duration::from_secs(8))
        );
        assert_eq!(p.delay(0, Some(Duration::from_secs(11))), None);
    }

    #[test]
    fn jitter_only_adds_and_stays_within_its_fraction() {
        let p = RetryPolicy {
            jitter: 0.5,
            ..policy()
        };
        for _ in 0..200 {
            let d = p.delay(0, Some(Duration::from_secs(4))).unwrap_or_default();
            assert!(
                d >= Duration::from_secs(4) && d <= Duration::from_secs(6),
                "{d:?}"
            );
        }
    }

    #[test]
    fn permanent_codes_are_never_retried() {
        let p = RetryPolicy {
            retry_codes: vec![Code::InvalidArgument, Code::Unavailable],
            ..policy()
        };
        assert!(!p.retries(Code::InvalidArgument));
        assert!(p.retries(Code::Unavailable));
        assert!(!p.retries(Code::Internal));
        let off = RetryPolicy {
            auto_retry: false,
            ..policy()
        };
        assert!(!off.retries(Code::Unavailable));
    }
}
