//! The domain's request and answer types, shared by every edge (tollgate.v1
//! gRPC, Envoy RLS, HTTP). The edges translate their wire types into these
//! and back; nothing here knows about protobuf.

use std::sync::Arc;

use crate::algorithm::Charge;
use crate::limits::Unit;

/// At most this many descriptors per request, and entries per descriptor.
pub const MAX_DESCRIPTORS: usize = 64;
/// At most this many entries per descriptor.
pub const MAX_ENTRIES: usize = 64;
/// The longest domain, key or value accepted, in bytes.
pub const MAX_STRING_BYTES: usize = 1024;

/// One key/value pair of a descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Entry {
    pub key: String,
    pub value: String,
}

impl Entry {
    /// An entry from anything string-like.
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            value: value.into(),
        }
    }
}

/// What one part of a request is limited by, e.g. `[user=alice, path=/upload]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Descriptor {
    pub entries: Vec<Entry>,
    /// Hits for this descriptor alone, overriding the request's (Envoy's
    /// per-descriptor `hits_addend`; 0 here means "check without counting").
    pub hits: Option<u64>,
    /// A limit sent with the request that replaces the configured rules for
    /// this descriptor (Envoy's `RateLimitOverride`). It applies only in a
    /// domain that has a limits file, like the reference.
    pub limit_override: Option<LimitOverride>,
}

/// A caller-supplied limit for one descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitOverride {
    pub requests_per_unit: u32,
    pub unit: Unit,
}

impl Descriptor {
    /// A descriptor of these `(key, value)` pairs.
    pub fn new<K: Into<String>, V: Into<String>>(
        entries: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Self {
            entries: entries.into_iter().map(|(k, v)| Entry::new(k, v)).collect(),
            hits: None,
            limit_override: None,
        }
    }
}

/// A rate-limit check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckRequest {
    pub domain: String,
    pub descriptors: Vec<Descriptor>,
    /// Hits per descriptor (unless the descriptor says otherwise). The edges
    /// turn a wire value of 0 into 1.
    pub hits: u64,
    /// Decide as if counted, count nothing.
    pub dry_run: bool,
    /// Whether refused hits are still counted (Envoy compatibility).
    pub charge: Charge,
}

impl CheckRequest {
    /// A request for one hit on each descriptor.
    pub fn new(domain: impl Into<String>, descriptors: Vec<Descriptor>) -> Self {
        Self {
            domain: domain.into(),
            descriptors,
            hits: 1,
            dry_run: false,
            charge: Charge::AdmittedOnly,
        }
    }

    /// Checks sizes and required fields.
    ///
    /// # Errors
    /// The first problem found, naming the field as the wire API spells it
    /// (`descriptors[1].entries[0].key`).
    pub fn validate(&self) -> Result<(), InvalidRequest> {
        check_string(|| "domain".to_string(), &self.domain, true)?;
        if self.descriptors.is_empty() {
            return Err(InvalidRequest::new(
                "descriptors",
                "at least one descriptor is required",
            ));
        }
        if self.descriptors.len() > MAX_DESCRIPTORS {
            return Err(InvalidRequest::new(
                "descriptors",
                format!(
                    "at most {MAX_DESCRIPTORS} descriptors are allowed, got {}",
                    self.descriptors.len()
                ),
            ));
        }
        for (i, d) in self.descriptors.iter().enumerate() {
            if d.entries.is_empty() {
                return Err(InvalidRequest::new(
                    format!("descriptors[{i}].entries"),
                    "at least one entry is required",
                ));
            }
            if d.entries.len() > MAX_ENTRIES {
                return Err(InvalidRequest::new(
                    format!("descriptors[{i}].entries"),
                    format!(
                        "at most {MAX_ENTRIES} entries are allowed, got {}",
                        d.entries.len()
                    ),
                ));
            }
            for (j, e) in d.entries.iter().enumerate() {
                // Field names are built only for an error: this runs on every request.
                check_string(
                    || format!("descriptors[{i}].entries[{j}].key"),
                    &e.key,
                    true,
                )?;
                check_string(
                    || format!("descriptors[{i}].entries[{j}].value"),
                    &e.value,
                    false,
                )?;
            }
        }
        Ok(())
    }
}

fn check_string(
    field: impl FnOnce() -> String,
    value: &str,
    required: bool,
) -> Result<(), InvalidRequest> {
    if required && value.is_empty() {
        return Err(InvalidRequest::new(field(), "must not be empty"));
    }
    if value.len() > MAX_STRING_BYTES {
        return Err(InvalidRequest::new(
            field(),
            format!(
                "must be at most {MAX_STRING_BYTES} bytes, got {}",
                value.len()
            ),
        ));
    }
    Ok(())
}

/// A request that cannot be answered as sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct InvalidRequest {
    /// The offending field, as the wire API names it.
    pub field: String,
    pub problem: String,
}

impl InvalidRequest {
    /// A problem with `field`.
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

/// The decision for a request or a descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Code {
    #[default]
    Ok,
    OverLimit,
}

/// The configured limit a status reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportedLimit {
    pub requests_per_unit: u32,
    pub unit: Unit,
    pub name: Option<Arc<str>>,
}

/// The answer for one descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DescriptorStatus {
    pub code: Code,
    /// The limit reported: the exceeded one, else the one with the fewest left.
    /// `None` when no limit applies (no rule, unlimited, or replaced).
    pub limit: Option<ReportedLimit>,
    /// Hits left under `limit`.
    pub remaining: u64,
    /// Microseconds until `limit` is back to its full allowance.
    pub reset_after_micros: u64,
    /// When over: microseconds until the same request could be admitted.
    pub retry_after_micros: Option<u64>,
    /// The descriptor matched an `unlimited` rule.
    pub unlimited: bool,
    /// A limit was exceeded but its rule is in shadow mode, so the code is OK.
    pub shadowed: bool,
}

/// The answer for a whole request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CheckResponse {
    /// OverLimit if any descriptor is over.
    pub overall: Code,
    /// One per request descriptor, in request order.
    pub statuses: Vec<DescriptorStatus>,
    /// The counter store could not answer and the failure mode is fail-open,
    /// so the request was allowed without being counted.
    pub failed_open: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> CheckRequest {
        CheckRequest::new("d", vec![Descriptor::new([("k", "v")])])
    }

    #[test]
    fn names_the_offending_field() {
        let mut r = request();
        r.domain.clear();
        assert_eq!(r.validate().map_err(|e| e.field), Err("domain".into()));

        let mut r = request();
        r.descriptors.clear();
        assert_eq!(r.validate().map_err(|e| e.field), Err("descriptors".into()));

        let mut r = request();
        r.descriptors.push(Descriptor::new([("a", "b"), ("", "c")]));
        assert_eq!(
            r.validate().map_err(|e| e.field),
            Err("descriptors[1].entries[1].key".into())
        );

        let mut r = request();
        r.descriptors[0].entries[0].value = "x".repeat(MAX_STRING_BYTES + 1);
        assert_eq!(
            r.validate().map_err(|e| e.field),
            Err("descriptors[0].entries[0].value".into())
        );

        let mut r = request();
        r.descriptors = vec![Descriptor::new([("k", "v")]); MAX_DESCRIPTORS + 1];
        assert_eq!(r.validate().map_err(|e| e.field), Err("descriptors".into()));

        let mut r = request();
        r.descriptors[0].entries = vec![Entry::new("k", "v"); MAX_ENTRIES + 1];
        assert_eq!(
            r.validate().map_err(|e| e.field),
            Err("descriptors[0].entries".into())
        );
        assert!(request().validate().is_ok());
    }
}
