//! Decision statistics, counted the way envoyproxy/ratelimit counts them so
//! dashboards built for it read ours: per rule `total_hits`, `over_limit`,
//! `near_limit`, `within_limit` and `shadow_mode`, each in hits (a request
//! with `hits_addend: 5` adds 5), plus decisions per domain and answer.
//!
//! Counting happens on every decision, so it is lock-free atomics found by
//! one hash lookup on a string the limits already hold; nothing is allocated
//! unless a rule asks for `detailed_metric`. [`crate::metrics`] reads them
//! at scrape time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;

/// The share of a limit after which hits count as `near_limit` (the
/// reference's `NEAR_LIMIT_RATIO` default).
pub const NEAR_LIMIT_RATIO: f64 = 0.8;

/// Most distinct `detailed_metric` series kept; beyond it, hits of new
/// values are counted under their rule's path, so a caller sending random
/// values cannot grow memory (or the scrape) without bound.
pub const MAX_DETAILED_SERIES: usize = 10_000;

type Map<V> = DashMap<Arc<str>, V, foldhash::fast::RandomState>;

/// Hits of one rule (or one detailed descriptor).
#[derive(Debug, Default)]
pub struct RuleCounters {
    pub total_hits: AtomicU64,
    pub over_limit: AtomicU64,
    pub near_limit: AtomicU64,
    pub within_limit: AtomicU64,
    pub shadow_mode: AtomicU64,
}

/// Requests of one domain, by answer.
#[derive(Debug, Default)]
pub struct DomainCounters {
    pub ok: AtomicU64,
    pub over_limit: AtomicU64,
    /// Answered with an error (store unavailable, fail-closed).
    pub error: AtomicU64,
    /// Allowed uncounted because the store failed (fail-open).
    pub failed_open: AtomicU64,
}

/// How a request was answered, for [`DecisionStats::decision`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Ok,
    OverLimit,
    Error,
    FailedOpen,
}

/// One limit's result, for [`DecisionStats::limit`].
#[derive(Debug, Clone, Copy)]
pub struct LimitResult {
    pub limit: u64,
    pub hits: u64,
    pub remaining: u64,
    pub allowed: bool,
    pub shadow: bool,
}

/// Every counter the limiter keeps. Cheap to share behind an `Arc`.
#[derive(Debug, Default)]
pub struct DecisionStats {
    rules: Map<Arc<RuleCounters>>,
    domains: Map<Arc<DomainCounters>>,
    detailed: AtomicU64,
}

impl DecisionStats {
    /// Counts one limit's result under `key` (a rule path such as
    /// `domain.key1_value1.key2`). `detailed` is the per-value key when the
    /// rule asks for it; it falls back to `key` once the cap is reached.
    pub fn limit(&self, key: &Arc<str>, detailed: Option<String>, r: LimitResult) {
        let counters = match detailed {
            Some(d) => self.detailed_counters(key, d),
            None => self.counters(key),
        };
        counters.total_hits.fetch_add(r.hits, Ordering::Relaxed);
        // Reference semantics: thresholds on the count after this request.
        let near = (r.limit as f64 * NEAR_LIMIT_RATIO).floor() as u64;
        if r.allowed {
            let after = r.limit.saturating_sub(r.remaining);
            let before = after.saturating_sub(r.hits);
            if after > near {
                let n = if before >= near { r.hits } else { after - near };
                counters.near_limit.fetch_add(n, Ordering::Relaxed);
            }
            counters.within_limit.fetch_add(r.hits, Ordering::Relaxed);
        } else {
            // A refused request's count before it is not known exactly
            // (the store reports what is left, which is 0), so all of its
            // hits are over the limit.
            counters.over_limit.fetch_add(r.hits, Ordering::Relaxed);
            if r.shadow {
                counters.shadow_mode.fetch_add(r.hits, Ordering::Relaxed);
            }
        }
    }

    /// Counts one answered request of `domain` (`None`: a domain no limits
    /// file defines, counted under "" so unknown names cannot add series).
    pub fn decision(&self, domain: Option<&Arc<str>>, answer: Answer) {
        static UNKNOWN: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from(""));
        let domain = domain.unwrap_or(&UNKNOWN);
        let counters = match self.domains.get(domain.as_ref()) {
            Some(c) => Arc::clone(&c),
            None => Arc::clone(&self.domains.entry(Arc::clone(domain)).or_default()),
        };
        let field = match answer {
            Answer::Ok => &counters.ok,
            Answer::OverLimit => &counters.over_limit,
            Answer::Error => &counters.error,
            Answer::FailedOpen => &counters.failed_open,
        };
        field.fetch_add(1, Ordering::Relaxed);
    }

    fn counters(&self, key: &Arc<str>) -> Arc<RuleCounters> {
        if let Some(c) = self.rules.get(key.as_ref()) {
            return Arc::clone(&c);
        }
        Arc::clone(&self.rules.entry(Arc::clone(key)).or_default())
    }

    fn detailed_counters(&self, key: &Arc<str>, detailed: String) -> Arc<RuleCounters> {
        if let Some(c) = self.rules.get(detailed.as_str()) {
            return Arc::clone(&c);
        }
        if self.detailed.load(Ordering::Relaxed) >= MAX_DETAILED_SERIES as u64 {
            return self.counters(key);
        }
        self.detailed.fetch_add(1, Ordering::Relaxed);
        Arc::clone(&self.rules.entry(Arc::from(detailed)).or_default())
    }

    /// Every rule's counters, sorted by key, for a scrape.
    pub fn rules(&self) -> Vec<(Arc<str>, Arc<RuleCounters>)> {
        let mut all: Vec<_> = self
            .rules
            .iter()
            .map(|e| (Arc::clone(e.key()), Arc::clone(e.value())))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Every domain's counters, sorted by name, for a scrape.
    pub fn domains(&self) -> Vec<(Arc<str>, Arc<DomainCounters>)> {
        let mut all: Vec<_> = self
            .domains
            .iter()
            .map(|e| (Arc::clone(e.key()), Arc::clone(e.value())))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(c: &RuleCounters) -> [u64; 5] {
        [
            c.total_hits.load(Ordering::Relaxed),
            c.over_limit.load(Ordering::Relaxed),
            c.near_limit.load(Ordering::Relaxed),
            c.within_limit.load(Ordering::Relaxed),
            c.shadow_mode.load(Ordering::Relaxed),
        ]
    }

    #[test]
    fn counts_as_the_reference_does() {
        let stats = DecisionStats::default();
        let key: Arc<str> = Arc::from("d.k");
        // limit 10, near threshold 8: counts 1..=10 admitted, then 2 refused.
        for used in 1..=10u64 {
            let r = LimitResult {
                limit: 10,
                hits: 1,
                remaining: 10 - used,
                allowed: true,
                shadow: false,
            };
            stats.limit(&key, None, r);
        }
        let refused = LimitResult {
            limit: 10,
            hits: 1,
            remaining: 0,
            allowed: false,
            shadow: false,
        };
        stats.limit(&key, None, refused);
        stats.limit(
            &key,
            None,
            LimitResult {
                shadow: true,
                ..refused
            },
        );
        let rules = stats.rules();
        assert_eq!(rules.len(), 1);
        // total 12, over 2, near: counts 9 and 10 → 2, within 10, shadow 1.
        assert_eq!(read(&rules[0].1), [12, 2, 2, 10, 1]);
    }

    #[test]
    fn a_request_crossing_the_near_threshold_counts_only_the_part_above_it() {
        let stats = DecisionStats::default();
        let key: Arc<str> = Arc::from("d.k");
        // 7 used, then 3 more: after 10, near threshold 8 → 2 near.
        let r = LimitResult {
            limit: 10,
            hits: 3,
            remaining: 0,
            allowed: true,
            shadow: false,
        };
        stats.limit(&key, None, r);
        assert_eq!(read(&stats.rules()[0].1), [3, 0, 2, 3, 0]);
    }

    #[test]
    fn detailed_series_are_capped() {
        let stats = DecisionStats::default();
        let key: Arc<str> = Arc::from("d.user");
        let r = LimitResult {
            limit: 5,
            hits: 1,
            remaining: 4,
            allowed: true,
            shadow: false,
        };
        for i in 0..MAX_DETAILED_SERIES + 5 {
            stats.limit(&key, Some(format!("d.user_{i}")), r);
        }
        let rules = stats.rules();
        assert_eq!(rules.len(), MAX_DETAILED_SERIES + 1);
        let fallback = rules.iter().find(|(k, _)| k.as_ref() == "d.user");
        assert_eq!(fallback.map(|(_, c)| read(c)[0]), Some(5));
    }

    #[test]
    fn decisions_by_domain_and_answer() {
        let stats = DecisionStats::default();
        let d: Arc<str> = Arc::from("api");
        stats.decision(Some(&d), Answer::Ok);
        stats.decision(Some(&d), Answer::OverLimit);
        stats.decision(Some(&d), Answer::OverLimit);
        stats.decision(None, Answer::Error);
        let domains = stats.domains();
        assert_eq!(domains[0].0.as_ref(), "");
        assert_eq!(domains[0].1.error.load(Ordering::Relaxed), 1);
        assert_eq!(domains[1].1.over_limit.load(Ordering::Relaxed), 2);
        assert_eq!(domains[1].1.ok.load(Ordering::Relaxed), 1);
    }
}
