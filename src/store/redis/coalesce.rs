//! Coalescing: under load, the counters of several concurrent requests for
//! one shard go to Redis in one script call instead of one call each.
//!
//! Why: on a loaded shard most of a decision's cost is per call, not per
//! counter: the client's command round trip and Redis's own per-script
//! overhead (the script's `TIME`, argument parsing, the reply). Sharing a
//! call shares that cost.
//!
//! How: a driver task per shard takes requests in arrival order and keeps at
//! most [`MAX_IN_FLIGHT`] calls outstanding. A request that arrives while
//! fewer are outstanding is sent at once, alone, so an idle shard adds no
//! latency; requests that arrive while the shard is busy wait for the next
//! call and go together (group commit, as PostgreSQL does for fsyncs).
//!
//! What it does not change: every counter is still decided atomically by the
//! script, a request's counters on one shard still go in one call, and the
//! script decides the counters of a call one after the other, exactly as if
//! the calls had been separate. Only the Redis command count goes down.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::{mpsc, oneshot};

use super::Shard;
use crate::algorithm::Outcome;
use crate::store::{CounterUpdate, StoreError};

/// Calls outstanding per shard before requests wait to be coalesced.
pub(super) const MAX_IN_FLIGHT: usize = 4;
/// Most counters in one call (the script's arguments grow with it).
const MAX_KEYS: usize = 256;
/// Requests waiting per shard before new ones are refused (transient, so
/// the failure mode decides).
const QUEUE: usize = 16_384;

type Reply = oneshot::Sender<Result<Vec<Outcome>, StoreError>>;

struct Pending {
    updates: Vec<CounterUpdate>,
    reply: Reply,
}

/// The sending side of one shard's driver.
#[derive(Debug, Clone)]
pub(super) struct Coalescer {
    tx: mpsc::Sender<Pending>,
}

impl Coalescer {
    /// Starts the driver for `shard`; it stops when the last sender is dropped.
    pub(super) fn spawn(shard: Arc<Shard>, timeout: Duration) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(drive(shard, timeout, rx));
        Self { tx }
    }

    /// Decides `updates` (all on this shard) in the next call.
    pub(super) async fn apply(
        &self,
        shard: &Shard,
        updates: Vec<CounterUpdate>,
        timeout: Duration,
    ) -> Result<Vec<Outcome>, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.tx.try_send(Pending { updates, reply }).map_err(|_| {
            StoreError::Unavailable(format!(
                "redis shard {}: too many requests waiting",
                shard.name
            ))
        })?;
        // The call itself has the timeout; waiting for a turn may add at
        // most one more call's time.
        match tokio::time::timeout(timeout * 2, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(StoreError::Unavailable(format!(
                "redis shard {}: the call was dropped",
                shard.name
            ))),
            Err(_) => Err(StoreError::Unavailable(format!(
                "redis shard {}: no answer within {:?}",
                shard.name,
                timeout * 2
            ))),
        }
    }
}

async fn drive(shard: Arc<Shard>, timeout: Duration, mut rx: mpsc::Receiver<Pending>) {
    let mut in_flight = FuturesUnordered::new();
    let mut open = true;
    while open || !in_flight.is_empty() {
        tokio::select! {
            next = rx.recv(), if open && in_flight.len() < MAX_IN_FLIGHT => {
                let Some(first) = next else {
                    open = false;
                    continue;
                };
                let mut keys = first.updates.len();
                let mut batch = vec![first];
                while keys < MAX_KEYS {
                    match rx.try_recv() {
                        Ok(p) => {
                            keys += p.updates.len();
                            batch.push(p);
                        }
                        Err(_) => break,
                    }
                }
                in_flight.push(call(Arc::clone(&shard), timeout, batch));
            }
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
        }
    }
}

/// One script call for a batch; each request gets its own outcomes back.
async fn call(shard: Arc<Shard>, timeout: Duration, batch: Vec<Pending>) {
    let all: Vec<&CounterUpdate> = batch.iter().flat_map(|p| p.updates.iter()).collect();
    let result = shard.call(timeout, &all).await;
    let counts: Vec<usize> = batch.iter().map(|p| p.updates.len()).collect();
    match result {
        Ok(outcomes) => {
            let mut outcomes = outcomes.into_iter();
            for (pending, n) in batch.into_iter().zip(counts) {
                let mine: Vec<Outcome> = outcomes.by_ref().take(n).collect();
                let _ = pending.reply.send(Ok(mine));
            }
        }
        Err(e) => {
            for pending in batch {
                let _ = pending.reply.send(Err(e.clone()));
            }
        }
    }
}
