//! A usage event and the checks it must pass before it is counted.

use std::time::Duration;

use crate::request::InvalidRequest;

/// One unit of work a user consumed.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct UsageEvent {
    /// The idempotency key: the same id is counted once, ever (within retention).
    pub usage_id: String,
    pub user_id: String,
    /// Pricing tier; empty means [`DEFAULT_TIER`].
    pub tier: String,
    pub category: String,
    pub operation: String,
    pub endpoint: String,
    /// µs since the Unix epoch.
    pub timestamp_micros: i64,
    pub duration_ms: u32,
    pub status_code: u32,
    pub success: bool,
    pub request_ip: String,
    /// Quantities consumed, by metric name.
    pub metrics: Vec<(String, f64)>,
}

/// The tier of users whose events name none.
pub const DEFAULT_TIER: &str = "basic";

/// Bounds an event must respect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsagePolicy {
    /// How far in the future a timestamp may be (clock skew between callers).
    pub max_future_skew: Duration,
    /// How long events and their ids are kept; older timestamps are refused
    /// (their day may already be gone, and a retry could no longer be
    /// recognised as one).
    pub retention_days: u32,
}

impl Default for UsagePolicy {
    fn default() -> Self {
        Self {
            max_future_skew: Duration::from_secs(300),
            retention_days: 400,
        }
    }
}

/// Most metrics one event may carry.
pub const MAX_METRICS: usize = 64;

impl UsageEvent {
    /// Checks the event against `policy` at `now_micros`. `prefix` is put
    /// before field names (`events[3].`) for batches.
    ///
    /// # Errors
    /// The first problem, naming its field.
    pub fn validate(
        &self,
        policy: &UsagePolicy,
        now_micros: i64,
        prefix: &str,
    ) -> Result<(), InvalidRequest> {
        let field = |name: &str| format!("{prefix}{name}");
        let strings: [(&str, &str, usize, bool); 7] = [
            ("usage_id", &self.usage_id, 128, false),
            ("user_id", &self.user_id, 256, true),
            ("tier", &self.tier, 64, false),
            ("category", &self.category, 64, true),
            ("operation", &self.operation, 64, false),
            ("endpoint", &self.endpoint, 255, false),
            ("request_ip", &self.request_ip, 64, false),
        ];
        for (name, value, max, required) in strings {
            if required && value.is_empty() {
                return Err(InvalidRequest::new(field(name), "must not be empty"));
            }
            if value.len() > max {
                return Err(InvalidRequest::new(
                    field(name),
                    format!("must be at most {max} bytes, got {}", value.len()),
                ));
            }
        }
        if self.metrics.len() > MAX_METRICS {
            return Err(InvalidRequest::new(
                field("metrics"),
                format!(
                    "at most {MAX_METRICS} metrics are allowed, got {}",
                    self.metrics.len()
                ),
            ));
        }
        for (name, value) in &self.metrics {
            if name.is_empty() || name.len() > 64 {
                return Err(InvalidRequest::new(
                    field("metrics"),
                    "metric names must be 1 to 64 bytes",
                ));
            }
            if !value.is_finite() || *value < 0.0 {
                return Err(InvalidRequest::new(
                    field(&format!("metrics[{name}]")),
                    format!("must be a finite number >= 0, got {value}"),
                ));
            }
        }
        let skew = i64::try_from(policy.max_future_skew.as_micros()).unwrap_or(i64::MAX);
        if self.timestamp_micros > now_micros.saturating_add(skew) {
            return Err(InvalidRequest::new(
                field("timestamp"),
                format!("is more than {:?} in the future", policy.max_future_skew),
            ));
        }
        let retention = i64::from(policy.retention_days) * 86_400 * 1_000_000;
        if self.timestamp_micros < now_micros.saturating_sub(retention) {
            return Err(InvalidRequest::new(
                field("timestamp"),
                format!(
                    "is older than the retention of {} days",
                    policy.retention_days
                ),
            ));
        }
        Ok(())
    }

    /// The tier to price this user's events with.
    pub fn tier_or_default(&self) -> &str {
        if self.tier.is_empty() {
            DEFAULT_TIER
        } else {
            &self.tier
        }
    }

    /// The UTC day of the event.
    pub fn day(&self) -> chrono::NaiveDate {
        chrono::DateTime::from_timestamp_micros(self.timestamp_micros)
            .map(|t| t.date_naive())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000_000;

    fn event() -> UsageEvent {
        UsageEvent {
            usage_id: "u1".into(),
            user_id: "alice".into(),
            category: "ai".into(),
            timestamp_micros: NOW,
            metrics: vec![("tokens".into(), 12.0)],
            ..Default::default()
        }
    }

    fn field_of(e: &UsageEvent) -> Option<String> {
        e.validate(&UsagePolicy::default(), NOW, "")
            .err()
            .map(|e| e.field)
    }

    #[test]
    fn names_the_offending_field() {
        assert_eq!(field_of(&event()), None);
        let mut e = event();
        e.user_id.clear();
        assert_eq!(field_of(&e).as_deref(), Some("user_id"));
        let mut e = event();
        e.category.clear();
        assert_eq!(field_of(&e).as_deref(), Some("category"));
        for bad in [f64::NAN, f64::INFINITY, -1.0] {
            let mut e = event();
            e.metrics = vec![("tokens".into(), bad)];
            assert_eq!(field_of(&e).as_deref(), Some("metrics[tokens]"), "{bad}");
        }
        let mut e = event();
        e.timestamp_micros = NOW + 301_000_000;
        assert_eq!(field_of(&e).as_deref(), Some("timestamp"));
        let mut e = event();
        e.timestamp_micros = NOW - 401 * 86_400 * 1_000_000;
        assert_eq!(field_of(&e).as_deref(), Some("timestamp"));
        let mut e = event();
        e.user_id.clear();
        let err = e
            .validate(&UsagePolicy::default(), NOW, "events[3].")
            .err()
            .map(|e| e.field);
        assert_eq!(err.as_deref(), Some("events[3].user_id"));
    }
}
