//! The counters script: arguments in, outcomes out.

use std::sync::LazyLock;

use redis::{Script, ScriptInvocation};

use crate::algorithm::{Algorithm, Charge, Outcome};
use crate::store::{CounterUpdate, StoreError};

/// Loaded once per connection (EVALSHA; redis-rs reloads it on NOSCRIPT).
pub(super) static COUNTERS: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("counters.lua")));

/// Bytes of reply per counter: 5 little-endian doubles.
const OUTCOME_BYTES: usize = 5 * 8;

/// Bytes of arguments per counter: 8 little-endian doubles.
const ARG_BYTES: usize = 8 * 8;

/// The script call for `updates`: their keys, and their arguments packed in
/// one binary value (the script's header says why). Every value is below
/// 2^53 (limits files and requests are checked), so the doubles are exact.
pub(super) fn invocation<'a>(updates: &[&CounterUpdate]) -> ScriptInvocation<'a> {
    let mut invocation = COUNTERS.prepare_invoke();
    let mut args = Vec::with_capacity(updates.len() * ARG_BYTES);
    for u in updates {
        let algorithm: u8 = match u.algorithm {
            Algorithm::FixedWindow => 0,
            Algorithm::SlidingWindow => 1,
            Algorithm::TokenBucket => 2,
        };
        invocation.key(u.key.as_str());
        for value in [
            u64::from(algorithm),
            u.rate.limit,
            u.rate.window_micros,
            u.rate.burst,
            u.hits,
            u64::from(u.charge == Charge::Always),
            u64::from(u.dry_run),
            u.refund_of.unwrap_or(0),
        ] {
            // Exact below 2^53, which every value is (see above).
            #[allow(clippy::cast_precision_loss)]
            args.extend_from_slice(&(value as f64).to_le_bytes());
        }
    }
    invocation.arg(args);
    invocation
}

/// Turns the script's reply (5 doubles per counter) into outcomes.
pub(super) fn outcomes(reply: &[u8], expected: usize) -> Result<Vec<Outcome>, StoreError> {
    if reply.len() != expected * OUTCOME_BYTES {
        return Err(StoreError::Unavailable(format!(
            "counters script returned {} bytes for {expected} counters",
            reply.len()
        )));
    }
    let values = |chunk: &[u8]| {
        let mut v = [0f64; 5];
        for (value, bytes) in v.iter_mut().zip(chunk.chunks_exact(8)) {
            let mut le = [0u8; 8];
            le.copy_from_slice(bytes);
            *value = f64::from_le_bytes(le);
        }
        v
    };
    // Whole numbers below 2^53, so the casts are exact; `as` saturates
    // anything else rather than wrapping.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let whole = |v: f64| v.max(0.0) as u64;
    Ok(reply
        .chunks_exact(OUTCOME_BYTES)
        .map(|chunk| {
            let [allowed, remaining, reset, retry, decided_at] = values(chunk);
            Outcome {
                allowed: allowed > 0.5,
                remaining: whole(remaining),
                reset_after_micros: whole(reset),
                retry_after_micros: (retry >= 0.0).then(|| whole(retry)),
                decided_at_micros: whole(decided_at),
            }
        })
        .collect())
}
