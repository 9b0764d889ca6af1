//! The in-memory form of the limits files, built by [`crate::config`] and
//! read on every request. Immutable once built: a reload builds a new one.

use std::collections::HashMap;

/// Maps read on every decision: foldhash is several times faster than the
/// default SipHash on short keys. Their keys come from limits files, not from
/// callers, so flooding resistance is not needed here.
pub(crate) type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
use std::sync::Arc;

use crate::algorithm::{Algorithm, Rate};
use crate::clock::MICROS_PER_SEC;

/// The unit a limit is counted over. Week, month (30 days) and year (365 days)
/// are fixed lengths aligned to the Unix epoch, as in envoyproxy/ratelimit;
/// they are not calendar months.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Unit {
    Second,
    Minute,
    Hour,
    Day,
    Week,
    Month,
    Year,
}

impl Unit {
    /// Every unit, shortest first.
    pub const ALL: [Unit; 7] = [
        Unit::Second,
        Unit::Minute,
        Unit::Hour,
        Unit::Day,
        Unit::Week,
        Unit::Month,
        Unit::Year,
    ];

    /// The unit's length in seconds.
    pub fn seconds(self) -> u64 {
        match self {
            Unit::Second => 1,
            Unit::Minute => 60,
            Unit::Hour => 3_600,
            Unit::Day => 86_400,
            Unit::Week => 7 * 86_400,
            Unit::Month => 30 * 86_400,
            Unit::Year => 365 * 86_400,
        }
    }

    /// The unit's length in microseconds.
    pub fn micros(self) -> u64 {
        self.seconds() * MICROS_PER_SEC
    }

    /// The lower-case name used in limits files.
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Second => "second",
            Unit::Minute => "minute",
            Unit::Hour => "hour",
            Unit::Day => "day",
            Unit::Week => "week",
            Unit::Month => "month",
            Unit::Year => "year",
        }
    }

    /// Parses a unit name, ignoring case like the reference does.
    pub fn parse(name: &str) -> Option<Unit> {
        Unit::ALL
            .into_iter()
            .find(|u| u.as_str().eq_ignore_ascii_case(name))
    }
}

/// One rate limit: `requests_per_unit` per `unit`, counted by `algorithm`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    /// The `name` from the file; reported to callers and used by `replaces`.
    pub name: Option<Arc<str>>,
    pub unit: Unit,
    /// 0 is allowed and refuses everything (the reference's way to block).
    pub requests_per_unit: u32,
    pub algorithm: Algorithm,
    /// Token bucket only: hits that may be taken at once (defaults to the limit).
    pub burst: u32,
}

impl Limit {
    /// The rate the algorithms count with.
    pub fn rate(&self) -> Rate {
        Rate::new(u64::from(self.requests_per_unit), self.unit.micros())
            .with_burst(u64::from(self.burst))
    }
}

/// What a descriptor node says about requests that end on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Checked in order; usually one. Empty for an `unlimited` rule.
    pub limits: Vec<Limit>,
    /// Matching requests are never limited (and not counted).
    pub unlimited: bool,
    /// Counted and reported in metrics, but always answered OK.
    pub shadow_mode: bool,
    /// Metrics name the request's values rather than the rule's path.
    pub detailed_metric: bool,
    /// Put the runtime value into metric names for wildcard/key-only levels.
    pub value_to_metric: bool,
    /// Names of limits this rule's limits replace when both match in one
    /// request (unlimited rules included).
    pub replaces: Vec<Arc<str>>,
    /// The rule's path for metrics, e.g. `domain.key1_value1.key2`.
    pub path: Arc<str>,
}

/// A node of the descriptor tree: a rule (if requests may end here) and the
/// nested descriptors below it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DescriptorNode {
    pub rule: Option<Rule>,
    pub children: Children,
}

/// The nested descriptors of one level, indexed for lookup without allocating.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Children {
    /// By descriptor key, then by exact value ("" for a key-only rule).
    pub(crate) by_key: FastMap<Box<str>, FastMap<Box<str>, DescriptorNode>>,
    /// Wildcard rules in file order: the prefix of `key_value` they match.
    pub(crate) wildcards: Vec<Wildcard>,
}

/// A `value: prefix*` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wildcard {
    /// `key + "_" + value` without the trailing `*`, as the reference compares.
    pub(crate) prefix: Box<str>,
    /// All matching values share one counter, keyed by the pattern.
    pub(crate) share_threshold: bool,
    /// The pattern as written (`value` with its `*`).
    pub(crate) pattern: Arc<str>,
    pub(crate) node: DescriptorNode,
}

impl Children {
    /// True when this level has no descriptors at all.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty() && self.wildcards.is_empty()
    }

    /// Adds a rule node for `key` and `value` (empty for key-only). Returns
    /// false, adding nothing, if that key/value already exists at this level.
    pub(crate) fn insert(
        &mut self,
        key: &str,
        value: &str,
        share_threshold: bool,
        node: DescriptorNode,
    ) -> bool {
        if let Some(pattern) = value.strip_suffix('*') {
            let prefix: Box<str> = format!("{key}_{pattern}").into();
            if self.wildcards.iter().any(|w| w.prefix == prefix) {
                return false;
            }
            self.wildcards.push(Wildcard {
                prefix,
                share_threshold,
                pattern: value.into(),
                node,
            });
            return true;
        }
        let values = self.by_key.entry(key.into()).or_default();
        if values.contains_key(value) {
            return false;
        }
        values.insert(value.into(), node);
        true
    }
}

/// What to answer when the counter store cannot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailureMode {
    /// Answer with an error (gRPC UNAVAILABLE), so the caller's own policy
    /// decides; Envoy's `failure_mode_deny` then applies.
    #[default]
    FailClosed,
    /// Allow the request uncounted, and say so in the response.
    FailOpen,
}

/// The limits of one domain: the top level of its descriptor tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainLimits {
    pub name: Arc<str>,
    pub descriptors: Children,
    /// The file this domain was read from, for messages.
    pub source: Arc<str>,
    /// The line of its `domain:`.
    pub line: usize,
    /// Overrides the service's failure mode for this domain.
    pub failure_mode: Option<FailureMode>,
}

/// Every domain's limits: one consistent snapshot of the limits directory.
#[derive(Debug, Default, Clone)]
pub struct Limits {
    domains: FastMap<Box<str>, DomainLimits>,
}

impl FromIterator<DomainLimits> for Limits {
    fn from_iter<I: IntoIterator<Item = DomainLimits>>(iter: I) -> Self {
        Self::from_domains(iter)
    }
}

impl Limits {
    /// An empty set of limits: every request is answered OK, nothing counted.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Builds from domains whose names are known to be distinct (a later
    /// domain of the same name replaces an earlier one; loading a directory
    /// reports duplicates instead, see [`crate::config::load_limits_dir`]).
    pub fn from_domains(domains: impl IntoIterator<Item = DomainLimits>) -> Self {
        Self {
            domains: domains
                .into_iter()
                .map(|d| (d.name.as_ref().into(), d))
                .collect(),
        }
    }

    /// The limits of `domain`, if any file defines it.
    pub fn domain(&self, domain: &str) -> Option<&DomainLimits> {
        self.domains.get(domain)
    }

    /// The number of domains.
    pub fn len(&self) -> usize {
        self.domains.len()
    }

    /// True when no domain is defined.
    pub fn is_empty(&self) -> bool {
        self.domains.is_empty()
    }

    /// Domain names, sorted, for logs.
    pub fn domain_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.domains.keys().map(|k| k.as_ref()).collect();
        names.sort_unstable();
        names
    }
}
