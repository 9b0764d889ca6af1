//! The counters script: arguments in, outcomes out.

use std::sync::LazyLock;

use redis::{Script, ScriptInvocation};

use crate::algorithm::{Algorithm, Charge, Outcome};
use crate::store::{CounterUpdate, StoreError};

/// Loaded once per connection (EVALSHA; redis-rs reloads it on NOSCRIPT).
pub(super) static COUNTERS: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("counters.lua")));

const VALUES_PER_OUTCOME: usize = 5;

/// Adds one counter's key and its 8 arguments to an invocation.
pub(super) fn push(invocation: &mut ScriptInvocation<'_>, u: &CounterUpdate) {
    let algorithm: u8 = match u.algorithm {
        Algorithm::FixedWindow => 0,
        Algorithm::SlidingWindow => 1,
        Algorithm::TokenBucket => 2,
    };
    invocation
        .key(u.key.as_str())
        .arg(algorithm)
        .arg(u.rate.limit)
        .arg(u.rate.window_micros)
        .arg(u.rate.burst)
        .arg(u.hits)
        .arg(u8::from(u.charge == Charge::Always))
        .arg(u8::from(u.dry_run))
        .arg(u.refund_of.unwrap_or(0));
}

/// Turns the script's flat reply into one outcome per counter.
pub(super) fn outcomes(reply: &[i64], expected: usize) -> Result<Vec<Outcome>, StoreError> {
    if reply.len() != expected * VALUES_PER_OUTCOME {
        return Err(StoreError::Unavailable(format!(
            "counters script returned {} values for {expected} counters",
            reply.len()
        )));
    }
    let non_negative = |v: i64| u64::try_from(v).unwrap_or(0);
    Ok(reply
        .chunks_exact(VALUES_PER_OUTCOME)
        .map(|c| Outcome {
            allowed: c[0] == 1,
            remaining: non_negative(c[1]),
            reset_after_micros: non_negative(c[2]),
            retry_after_micros: u64::try_from(c[3]).ok(),
            decided_at_micros: non_negative(c[4]),
        })
        .collect())
}
