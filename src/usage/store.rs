//! Usage storage: one trait, [`UsageStore`], and the embedded memory store.
//!
//! A store records events idempotently (an id seen before counts nothing)
//! and keeps daily aggregates per user, UTC day and category, with metric
//! sums. Recording a batch is atomic per event: an event is either marked
//! and counted, or neither.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::sync::Mutex;

use chrono::NaiveDate;

use super::event::UsageEvent;
use crate::store::StoreFuture;

/// What recording one event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Counted now.
    Accepted,
    /// Its id was recorded before; nothing was counted.
    Duplicate,
}

/// Why a usage store could not record or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsageError {
    /// The store cannot answer now; nothing of the call was recorded, so a
    /// retry with the same ids is safe.
    #[error("usage store unavailable: {0}")]
    Unavailable(String),
    /// The store is at capacity (its write queue is full); retry later with
    /// the same ids.
    #[error("usage store busy: {0}")]
    Busy(String),
}

/// One user's usage on one UTC day.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DayUsage {
    pub date: NaiveDate,
    /// Events per category.
    pub by_category: BTreeMap<String, u64>,
    /// Metric sums.
    pub metrics: BTreeMap<String, f64>,
}

impl DayUsage {
    /// Events of the day, all categories.
    pub fn total(&self) -> u64 {
        self.by_category.values().sum()
    }

    /// Adds one event.
    pub fn add(&mut self, event: &UsageEvent) {
        *self.by_category.entry(event.category.clone()).or_default() += 1;
        for (name, value) in &event.metrics {
            *self.metrics.entry(name.clone()).or_default() += value;
        }
    }
}

/// Durable (or embedded) usage storage.
pub trait UsageStore: Send + Sync + Debug + 'static {
    /// Records `events` (already validated, each with an id); one result per
    /// event, in order.
    ///
    /// # Errors
    /// [`UsageError`]: then none of the events was recorded.
    fn record<'a>(
        &'a self,
        events: &'a [UsageEvent],
    ) -> StoreFuture<'a, Result<Vec<Recorded>, UsageError>>;

    /// The user's days from `from` to `to` (inclusive) that have usage,
    /// oldest first. Days without usage may be missing.
    ///
    /// # Errors
    /// [`UsageError`] when the store cannot answer.
    fn daily<'a>(
        &'a self,
        user_id: &'a str,
        from: NaiveDate,
        to: NaiveDate,
    ) -> StoreFuture<'a, Result<Vec<DayUsage>, UsageError>>;

    /// The user's tier: the one on their most recent event.
    ///
    /// # Errors
    /// [`UsageError`] when the store cannot answer.
    fn tier<'a>(&'a self, user_id: &'a str) -> StoreFuture<'a, Result<Option<String>, UsageError>>;

    /// A short name for logs.
    fn name(&self) -> &'static str;

    /// Whether the store answers now (for readiness); stores that cannot be
    /// down answer Ok.
    ///
    /// # Errors
    /// [`UsageError::Unavailable`] when it does not.
    fn check(&self) -> StoreFuture<'_, Result<(), UsageError>> {
        Box::pin(async { Ok(()) })
    }
}

/// Usage kept in the process: the embedded default. Exact and idempotent
/// within the process; lost on restart (configure PostgreSQL for durability).
///
/// One `std::sync::Mutex` guards it: recording is not the decision hot path,
/// and the lock is never held across an `.await`. Ids and days older than the
/// retention are pruned once a day, so memory stays bounded by the traffic of
/// the retention period.
#[derive(Debug)]
pub struct MemoryUsageStore {
    retention_days: u32,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    ids: HashMap<String, NaiveDate>,
    days: BTreeMap<(String, NaiveDate), DayUsage>,
    tiers: HashMap<String, (i64, String)>,
    pruned_on: Option<NaiveDate>,
}

impl MemoryUsageStore {
    /// An empty store keeping `retention_days` of usage.
    pub fn new(retention_days: u32) -> Self {
        Self {
            retention_days,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (each event is
        // applied whole), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl UsageStore for MemoryUsageStore {
    fn record<'a>(
        &'a self,
        events: &'a [UsageEvent],
    ) -> StoreFuture<'a, Result<Vec<Recorded>, UsageError>> {
        let mut inner = self.lock();
        let today = chrono::Utc::now().date_naive();
        if inner.pruned_on != Some(today) {
            let oldest = today - chrono::Days::new(u64::from(self.retention_days));
            inner.ids.retain(|_, day| *day >= oldest);
            inner.days.retain(|(_, day), _| *day >= oldest);
            inner.pruned_on = Some(today);
        }
        let results = events
            .iter()
            .map(|e| {
                if inner.ids.contains_key(&e.usage_id) {
                    return Recorded::Duplicate;
                }
                let day = e.day();
                inner.ids.insert(e.usage_id.clone(), day);
                let entry = inner
                    .days
                    .entry((e.user_id.clone(), day))
                    .or_insert_with(|| DayUsage {
                        date: day,
                        ..Default::default()
                    });
                entry.add(e);
                let tier = inner
                    .tiers
                    .entry(e.user_id.clone())
                    .or_insert((i64::MIN, String::new()));
                if e.timestamp_micros >= tier.0 {
                    *tier = (e.timestamp_micros, e.tier_or_default().to_string());
                }
                Recorded::Accepted
            })
            .collect();
        Box::pin(std::future::ready(Ok(results)))
    }

    fn daily<'a>(
        &'a self,
        user_id: &'a str,
        from: NaiveDate,
        to: NaiveDate,
    ) -> StoreFuture<'a, Result<Vec<DayUsage>, UsageError>> {
        let inner = self.lock();
        let days = inner
            .days
            .range((user_id.to_string(), from)..=(user_id.to_string(), to))
            .map(|(_, d)| d.clone())
            .collect();
        Box::pin(std::future::ready(Ok(days)))
    }

    fn tier<'a>(&'a self, user_id: &'a str) -> StoreFuture<'a, Result<Option<String>, UsageError>> {
        let tier = self.lock().tiers.get(user_id).map(|(_, t)| t.clone());
        Box::pin(std::future::ready(Ok(tier)))
    }

    fn name(&self) -> &'static str {
        "memory"
    }
}
