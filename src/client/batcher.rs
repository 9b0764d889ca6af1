//! [`UsageBatcher`]: buffers usage events and sends them with
//! `TrackUsageBatch`, when a batch is full or its oldest event is old enough.
//!
//! Usage is billing data, so nothing is dropped:
//!
//! - memory is bounded by `capacity` queued events plus one batch in flight;
//!   when the queue is full, [`UsageBatcher::record`] waits for room
//!   (back-pressure) and [`UsageBatcher::try_record`] hands the event back;
//! - a batch that fails for a transient reason (server down, overloaded) is
//!   sent again, with the same ids, until it is taken, so a retry of a batch
//!   the server had in fact recorded counts nothing twice;
//! - [`UsageBatcher::flush`] and [`UsageBatcher::shutdown`] send everything
//!   recorded before them;
//! - an event the server rejects (invalid) is kept with its reason for
//!   [`UsageBatcher::take_rejected`] and logged, never silently lost.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{Client, Error, fill_id};
use crate::pb::tollgate::v1 as pb;
use pb::track_usage_batch_response::result::Status as ResultStatus;

/// The server takes at most this many events per batch.
const MAX_BATCH: usize = 1000;

/// Why an event was not queued. Every variant hands the event back.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The queue is full (only from [`UsageBatcher::try_record`]).
    #[error("usage queue is full")]
    Full(Box<pb::TrackUsageRequest>),
    /// The batcher was shut down.
    #[error("usage batcher is shut down")]
    Closed(Box<pb::TrackUsageRequest>),
    /// The event can never be accepted; the message names the field.
    #[error("invalid usage event: {0}")]
    Invalid(String, Box<pb::TrackUsageRequest>),
}

/// An event the server refused, and why.
#[derive(Debug, Clone)]
pub struct Rejected {
    /// The event as it was sent.
    pub event: pb::TrackUsageRequest,
    /// The server's reason, naming the field (or the permanent error of the
    /// whole batch).
    pub reason: String,
}

/// Counters since the batcher started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatcherStats {
    /// Events the server counted.
    pub accepted: u64,
    /// Events the server had already counted (a resend of a batch it took).
    pub duplicates: u64,
    /// Events the server refused (see [`UsageBatcher::take_rejected`]).
    pub rejected: u64,
    /// Batches sent successfully.
    pub batches: u64,
    /// Attempts to send a batch that failed and were tried again.
    pub failed_sends: u64,
}

#[derive(Debug, Default)]
struct Stats {
    accepted: AtomicU64,
    duplicates: AtomicU64,
    rejected: AtomicU64,
    batches: AtomicU64,
    failed_sends: AtomicU64,
}

#[derive(Debug)]
enum Command {
    Event(Box<pb::TrackUsageRequest>),
    Flush(oneshot::Sender<()>),
    Shutdown(oneshot::Sender<()>),
}

/// Builds a [`UsageBatcher`].
#[derive(Debug)]
pub struct UsageBatcherBuilder {
    client: Client,
    max_batch_size: usize,
    max_batch_age: Duration,
    capacity: usize,
}

impl UsageBatcherBuilder {
    /// Send when a batch holds this many events (default 100, at most 1000).
    pub fn max_batch_size(mut self, n: usize) -> Self {
        self.max_batch_size = n;
        self
    }

    /// Send when the oldest event of a batch has waited this long (default 1 s).
    pub fn max_batch_age(mut self, d: Duration) -> Self {
        self.max_batch_age = d;
        self
    }

    /// Events queued while a batch is being sent (default 10 000); beyond
    /// them `record` waits.
    pub fn capacity(mut self, n: usize) -> Self {
        self.capacity = n;
        self
    }

    /// Starts the batcher's task on the current Tokio runtime.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a batch size outside 1..=1000, a zero capacity or
    /// age, or no Tokio runtime.
    pub fn build(self) -> Result<UsageBatcher, Error> {
        if !(1..=MAX_BATCH).contains(&self.max_batch_size) {
            return Err(Error::Config(format!(
                "max_batch_size must be 1..={MAX_BATCH}, got {}",
                self.max_batch_size
            )));
        }
        if self.capacity == 0 {
            return Err(Error::Config("capacity must be at least 1".into()));
        }
        if self.max_batch_age.is_zero() {
            return Err(Error::Config("max_batch_age must be more than 0".into()));
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::Config("UsageBatcher must be built inside a Tokio runtime".into())
        })?;
        let (tx, rx) = mpsc::channel(self.capacity);
        let shared = Arc::new(Shared::default());
        let worker = Worker {
            client: self.client,
            rx,
            max_batch_size: self.max_batch_size,
            max_batch_age: self.max_batch_age,
            shared: shared.clone(),
        };
        let handle = runtime.spawn(worker.run());
        Ok(UsageBatcher {
            tx,
            shared,
            handle: Arc::new(Mutex::new(Some(handle))),
        })
    }
}

#[derive(Debug, Default)]
struct Shared {
    stats: Stats,
    /// A std `Mutex`: only pushed to and drained, never held across `.await`.
    rejected: Mutex<Vec<Rejected>>,
}

/// A handle to the batching task. Cheap to clone; clones feed the same queue.
/// Call [`Self::shutdown`] before the runtime stops, or events still queued
/// are not sent.
#[derive(Debug, Clone)]
pub struct UsageBatcher {
    tx: mpsc::Sender<Command>,
    shared: Arc<Shared>,
    /// The task, joined by the first `shutdown`.
    handle: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl UsageBatcher {
    /// A builder for a batcher that sends through `client` (whose retry
    /// settings apply to each attempt; the batcher adds its own endless,
    /// backed-off retries for transient failures).
    pub fn builder(client: Client) -> UsageBatcherBuilder {
        UsageBatcherBuilder {
            client,
            max_batch_size: 100,
            max_batch_age: Duration::from_secs(1),
            capacity: 10_000,
        }
    }

    /// Queues `event`, waiting for room while the queue is full. Returns the
    /// event's `usage_id` (a UUID v4 when it had none).
    ///
    /// # Errors
    ///
    /// [`RecordError::Invalid`] for an event without user or category,
    /// [`RecordError::Closed`] after [`Self::shutdown`].
    pub async fn record(&self, event: pb::TrackUsageRequest) -> Result<String, RecordError> {
        let (id, event) = prepare(event)?;
        self.tx
            .send(Command::Event(event))
            .await
            .map_err(|e| RecordError::Closed(into_event(e.0)))?;
        Ok(id)
    }

    /// Queues `event` if there is room now.
    ///
    /// # Errors
    ///
    /// As [`Self::record`], and [`RecordError::Full`] when the queue is full.
    pub fn try_record(&self, event: pb::TrackUsageRequest) -> Result<String, RecordError> {
        let (id, event) = prepare(event)?;
        self.tx
            .try_send(Command::Event(event))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(c) => RecordError::Full(into_event(c)),
                mpsc::error::TrySendError::Closed(c) => RecordError::Closed(into_event(c)),
            })?;
        Ok(id)
    }

    /// Sends every event recorded before this call and waits until the server
    /// has taken them.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] if the batcher was shut down.
    pub async fn flush(&self) -> Result<(), Error> {
        let (ack, done) = oneshot::channel();
        self.tx
            .send(Command::Flush(ack))
            .await
            .map_err(|_| Error::Closed)?;
        done.await.map_err(|_| Error::Closed)
    }

    /// Stops taking events, sends everything queued, and waits for the task
    /// to end. Later calls return at once.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if the task panicked.
    pub async fn shutdown(&self) -> Result<(), Error> {
        let (ack, done) = oneshot::channel();
        if self.tx.send(Command::Shutdown(ack)).await.is_ok() {
            let _ = done.await;
        }
        let handle = self
            .handle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(handle) = handle {
            handle
                .await
                .map_err(|e| Error::Config(format!("usage batcher task failed: {e}")))?;
        }
        Ok(())
    }

    /// The counters so far.
    pub fn stats(&self) -> BatcherStats {
        let s = &self.shared.stats;
        BatcherStats {
            accepted: s.accepted.load(Ordering::Relaxed),
            duplicates: s.duplicates.load(Ordering::Relaxed),
            rejected: s.rejected.load(Ordering::Relaxed),
            batches: s.batches.load(Ordering::Relaxed),
            failed_sends: s.failed_sends.load(Ordering::Relaxed),
        }
    }

    /// The events the server refused since the last call, with reasons.
    pub fn take_rejected(&self) -> Vec<Rejected> {
        std::mem::take(
            &mut *self
                .shared
                .rejected
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }
}

fn prepare(
    mut event: pb::TrackUsageRequest,
) -> Result<(String, Box<pb::TrackUsageRequest>), RecordError> {
    let missing = if event.user_id.is_empty() {
        Some("user_id")
    } else if event.category.is_empty() {
        Some("category")
    } else {
        None
    };
    if let Some(field) = missing {
        return Err(RecordError::Invalid(
            format!("{field}: must not be empty"),
            Box::new(event),
        ));
    }
    fill_id(&mut event);
    Ok((event.usage_id.clone(), Box::new(event)))
}

fn into_event(command: Command) -> Box<pb::TrackUsageRequest> {
    match command {
        Command::Event(e) => e,
        // Only events are ever sent with `record`/`try_record`.
        Command::Flush(_) | Command::Shutdown(_) => Box::default(),
    }
}

struct Worker {
    client: Client,
    rx: mpsc::Receiver<Command>,
    max_batch_size: usize,
    max_batch_age: Duration,
    shared: Arc<Shared>,
}

impl Worker {
    async fn run(mut self) {
        let mut batch: Vec<pb::TrackUsageRequest> = Vec::with_capacity(self.max_batch_size);
        let mut deadline: Option<Instant> = None;
        let mut shutdown_acks = Vec::new();
        loop {
            let command = match deadline {
                Some(at) => tokio::select! {
                    c = self.rx.recv() => c,
                    () = tokio::time::sleep_until(at) => {
                        self.send(&mut batch).await;
                        deadline = None;
                        continue;
                    }
                },
                None => self.rx.recv().await,
            };
            match command {
                // Every handle dropped, or shut down and drained: send the rest.
                None => break,
                Some(Command::Event(event)) => {
                    if batch.is_empty() {
                        deadline = Some(Instant::now() + self.max_batch_age);
                    }
                    batch.push(*event);
                    if batch.len() >= self.max_batch_size {
                        self.send(&mut batch).await;
                        deadline = None;
                    }
                }
                Some(Command::Flush(ack)) => {
                    self.send(&mut batch).await;
                    deadline = None;
                    let _ = ack.send(());
                }
                Some(Command::Shutdown(ack)) => {
                    // No new events; what is queued is still received.
                    self.rx.close();
                    shutdown_acks.push(ack);
                }
            }
        }
        self.send(&mut batch).await;
        for ack in shutdown_acks {
            let _ = ack.send(());
        }
    }

    /// Sends `batch` until the server has taken it, then empties it.
    async fn send(&self, batch: &mut Vec<pb::TrackUsageRequest>) {
        if batch.is_empty() {
            return;
        }
        let stats = &self.shared.stats;
        let request = pb::TrackUsageBatchRequest {
            events: std::mem::take(batch),
        };
        let policy = self.client.retry_policy();
        let mut failures = 0u32;
        let response = loop {
            match self.client.track_usage_batch(request.clone()).await {
                Ok(response) => break Ok(response),
                Err(e) if e.is_transient() => {
                    stats.failed_sends.fetch_add(1, Ordering::Relaxed);
                    let wait = policy
                        .delay(failures, None)
                        .unwrap_or(policy.max_retry_delay);
                    failures = failures.saturating_add(1);
                    tracing::warn!(error = %e, ?wait, events = request.events.len(),
                        "tollgate: usage batch not taken, sending it again");
                    self.client.sleeper().sleep(wait).await;
                }
                Err(e) => break Err(e),
            }
        };
        match response {
            Ok(response) => {
                stats.batches.fetch_add(1, Ordering::Relaxed);
                let mut rejected = Vec::new();
                for (event, result) in request.events.into_iter().zip(response.results) {
                    match ResultStatus::try_from(result.status) {
                        Ok(ResultStatus::Accepted) => {
                            stats.accepted.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(ResultStatus::Duplicate) => {
                            stats.duplicates.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => rejected.push(Rejected {
                            event,
                            reason: result.reason,
                        }),
                    }
                }
                self.reject(rejected);
            }
            Err(e) => {
                let reason = e.to_string();
                tracing::error!(error = %e, events = request.events.len(),
                    "tollgate: usage batch refused for good");
                let rejected = request
                    .events
                    .into_iter()
                    .map(|event| Rejected {
                        event,
                        reason: reason.clone(),
                    })
                    .collect();
                self.reject(rejected);
            }
        }
    }

    fn reject(&self, rejected: Vec<Rejected>) {
        if rejected.is_empty() {
            return;
        }
        for r in &rejected {
            tracing::error!(usage_id = %r.event.usage_id, reason = %r.reason,
                "tollgate: usage event rejected");
        }
        self.shared
            .stats
            .rejected
            .fetch_add(rejected.len() as u64, Ordering::Relaxed);
        self.shared
            .rejected
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(rejected);
    }
}
