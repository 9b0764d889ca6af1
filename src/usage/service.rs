//! [`Usage`]: validation, ids, the store, summaries and bills, for every edge.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{Days, NaiveDate, Utc};

use super::event::{UsageEvent, UsagePolicy};
use super::report::{Bill, Pricing, UsageSummary};
use super::store::{MemoryUsageStore, Recorded, UsageError, UsageStore};
use crate::request::InvalidRequest;

/// Most events in one batch.
pub const MAX_BATCH: usize = 1000;
/// Longest summary or billing period, in days.
pub const MAX_DAYS: u32 = 366;

/// Why a usage call could not be answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsageCallError {
    #[error("invalid request: {0}")]
    Invalid(#[from] InvalidRequest),
    #[error(transparent)]
    Store(#[from] UsageError),
}

/// The result for one event of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrackOutcome {
    Recorded { usage_id: String, status: Recorded },
    Rejected { usage_id: String, reason: String },
}

/// Events by how they ended, since start, for metrics.
#[derive(Debug, Default)]
pub struct UsageStats {
    pub accepted: AtomicU64,
    pub duplicate: AtomicU64,
    pub rejected: AtomicU64,
}

impl UsageStats {
    fn count(&self, recorded: Recorded) {
        match recorded {
            Recorded::Accepted => &self.accepted,
            Recorded::Duplicate => &self.duplicate,
        }
        .fetch_add(1, Ordering::Relaxed);
    }
}

/// Usage metering, shared by the API edges. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Usage {
    store: Arc<dyn UsageStore>,
    policy: UsagePolicy,
    pricing: Arc<Pricing>,
    stats: Arc<UsageStats>,
}

impl Default for Usage {
    fn default() -> Self {
        let policy = UsagePolicy::default();
        Self::new(
            Arc::new(MemoryUsageStore::new(policy.retention_days)),
            policy,
            Pricing::default(),
        )
    }
}

fn now_micros() -> i64 {
    Utc::now().timestamp_micros()
}

impl Usage {
    /// Metering into `store`.
    pub fn new(store: Arc<dyn UsageStore>, policy: UsagePolicy, pricing: Pricing) -> Self {
        Self {
            store,
            policy,
            pricing: Arc::new(pricing),
            stats: Arc::default(),
        }
    }

    /// Whether the usage store answers (for readiness).
    ///
    /// # Errors
    /// The store's error when it does not.
    pub async fn check(&self) -> Result<(), UsageError> {
        self.store.check().await
    }

    /// Events counted so far, for metrics.
    pub fn stats(&self) -> &UsageStats {
        &self.stats
    }

    /// Fills what the caller may leave out: the id (a UUID) and the time.
    fn complete(event: &mut UsageEvent, now: i64) {
        if event.usage_id.is_empty() {
            event.usage_id = uuid::Uuid::new_v4().to_string();
        }
        if event.timestamp_micros == 0 {
            event.timestamp_micros = now;
        }
    }

    /// Records one event.
    ///
    /// # Errors
    /// Invalid events; store failures (nothing recorded: retry with the id).
    pub async fn track(&self, mut event: UsageEvent) -> Result<(String, Recorded), UsageCallError> {
        let now = now_micros();
        Self::complete(&mut event, now);
        if let Err(e) = event.validate(&self.policy, now, "") {
            self.stats.rejected.fetch_add(1, Ordering::Relaxed);
            return Err(e.into());
        }
        let recorded = self.store.record(std::slice::from_ref(&event)).await?;
        let status = recorded.first().copied().unwrap_or(Recorded::Duplicate);
        self.stats.count(status);
        Ok((event.usage_id, status))
    }

    /// Records a batch: invalid events are rejected one by one, the valid
    /// ones go to the store in one call.
    ///
    /// # Errors
    /// An empty or too large batch; store failures (nothing recorded).
    pub async fn track_batch(
        &self,
        mut events: Vec<UsageEvent>,
    ) -> Result<Vec<TrackOutcome>, UsageCallError> {
        if events.is_empty() {
            return Err(InvalidRequest::new("events", "at least one event is required").into());
        }
        if events.len() > MAX_BATCH {
            return Err(InvalidRequest::new(
                "events",
                format!("at most {MAX_BATCH} events per batch, got {}", events.len()),
            )
            .into());
        }
        let now = now_micros();
        let mut outcomes: Vec<Option<TrackOutcome>> = Vec::with_capacity(events.len());
        let mut valid = Vec::with_capacity(events.len());
        let mut positions = Vec::with_capacity(events.len());
        for (i, event) in events.iter_mut().enumerate() {
            Self::complete(event, now);
            match event.validate(&self.policy, now, &format!("events[{i}].")) {
                Ok(()) => {
                    positions.push(i);
                    valid.push(std::mem::take(event));
                    outcomes.push(None);
                }
                Err(e) => {
                    self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                    outcomes.push(Some(TrackOutcome::Rejected {
                        usage_id: event.usage_id.clone(),
                        reason: e.to_string(),
                    }));
                }
            }
        }
        if !valid.is_empty() {
            let recorded = self.store.record(&valid).await?;
            for ((i, event), status) in positions.into_iter().zip(valid).zip(recorded) {
                self.stats.count(status);
                outcomes[i] = Some(TrackOutcome::Recorded {
                    usage_id: event.usage_id,
                    status,
                });
            }
        }
        Ok(outcomes.into_iter().flatten().collect())
    }

    /// The last `days` days (today included, UTC) of a user's usage.
    ///
    /// # Errors
    /// Empty user, days out of range, store failures.
    pub async fn summary(
        &self,
        user_id: &str,
        days: u32,
    ) -> Result<(UsageSummary, NaiveDate, NaiveDate), UsageCallError> {
        if user_id.is_empty() {
            return Err(InvalidRequest::new("user_id", "must not be empty").into());
        }
        let days = if days == 0 { 30 } else { days };
        if days > MAX_DAYS {
            return Err(InvalidRequest::new(
                "days",
                format!("must be between 1 and {MAX_DAYS}, got {days}"),
            )
            .into());
        }
        let to = Utc::now().date_naive();
        let from = to - Days::new(u64::from(days - 1));
        let stored = self.store.daily(user_id, from, to).await?;
        Ok((UsageSummary::new(stored, from, to), from, to))
    }

    /// A user's bill for `start..=end` (YYYY-MM-DD).
    ///
    /// # Errors
    /// Empty user, malformed or reversed dates, a period over 366 days,
    /// store failures.
    pub async fn bill(
        &self,
        user_id: &str,
        start: &str,
        end: &str,
    ) -> Result<(Bill, NaiveDate, NaiveDate), UsageCallError> {
        if user_id.is_empty() {
            return Err(InvalidRequest::new("user_id", "must not be empty").into());
        }
        let parse = |field: &str, value: &str| {
            NaiveDate::parse_from_str(value, "%Y-%m-%d").map_err(|_| {
                InvalidRequest::new(
                    field,
                    format!("must be a date as YYYY-MM-DD, got '{value}'"),
                )
            })
        };
        let from = parse("start_date", start)?;
        let to = parse("end_date", end)?;
        if to < from {
            return Err(InvalidRequest::new("end_date", "must not be before start_date").into());
        }
        let days = (to - from).num_days() + 1;
        if days > i64::from(MAX_DAYS) {
            return Err(InvalidRequest::new(
                "end_date",
                format!("the period is {days} days; at most {MAX_DAYS}"),
            )
            .into());
        }
        let stored = self.store.daily(user_id, from, to).await?;
        let tier = self.store.tier(user_id).await?.unwrap_or_default();
        let summary = UsageSummary::new(stored, from, to);
        Ok((self.pricing.bill(&tier, &summary), from, to))
    }
}
