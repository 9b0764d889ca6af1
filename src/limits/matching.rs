//! Descriptor → rule, following envoyproxy/ratelimit's `GetLimit`.

use super::model::{Children, DescriptorNode, DomainLimits, Rule};
use crate::request::Entry;

/// The rule a descriptor reached, and how its values are keyed.
#[derive(Debug, Clone)]
pub struct Match<'a> {
    pub rule: &'a Rule,
    /// Entries that matched a wildcard rule with `share_threshold`, with its
    /// pattern: those are counted under the pattern, so every matching value
    /// shares one counter. Empty (and not allocated) in the common case.
    shared: Vec<(usize, &'a str)>,
}

impl Match<'_> {
    /// The value entry `index` is counted under: the shared pattern or its own value.
    pub fn key_value<'e>(&'e self, index: usize, entries: &'e [Entry]) -> &'e str {
        if let Some((_, pattern)) = self.shared.iter().find(|(i, _)| *i == index) {
            return pattern;
        }
        entries.get(index).map(|e| e.value.as_str()).unwrap_or("")
    }
}

struct Step<'a> {
    node: &'a DescriptorNode,
    shared: Option<&'a str>,
}

/// One level of the walk: exact value, then the first matching wildcard in
/// file order, then the key-only rule.
fn step<'a>(level: &'a Children, key: &str, value: &str) -> Option<Step<'a>> {
    let values = level.by_key.get(key);
    if let Some(node) = values.and_then(|v| if value.is_empty() { None } else { v.get(value) }) {
        return Some(Step { node, shared: None });
    }
    if let Some(w) = level
        .wildcards
        .iter()
        .find(|w| key_value_starts_with(key, value, &w.prefix))
    {
        return Some(Step {
            node: &w.node,
            shared: w.share_threshold.then_some(w.pattern.as_ref()),
        });
    }
    values
        .and_then(|v| v.get(""))
        .map(|node| Step { node, shared: None })
}

/// Whether `key + "_" + value` starts with `prefix`, without building the string.
fn key_value_starts_with(key: &str, value: &str, prefix: &str) -> bool {
    match prefix.strip_prefix(key) {
        Some(rest) => match rest.strip_prefix('_') {
            Some(rest) => value.starts_with(rest),
            None => rest.is_empty(),
        },
        // The prefix may end inside the key itself (`key_value` quirk of the reference).
        None => key.starts_with(prefix),
    }
}

/// The rule that applies to a descriptor with these entries, if any.
pub fn lookup<'a>(domain: &'a DomainLimits, entries: &[Entry]) -> Option<Match<'a>> {
    let mut level = &domain.descriptors;
    let mut shared = Vec::new();
    let last = entries.len().checked_sub(1)?;
    for (i, entry) in entries.iter().enumerate() {
        let step = step(level, &entry.key, &entry.value)?;
        if let Some(pattern) = step.shared {
            shared.push((i, pattern));
        }
        if i == last {
            return step.node.rule.as_ref().map(|rule| Match { rule, shared });
        }
        if step.node.children.is_empty() {
            return None;
        }
        level = &step.node.children;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_value_prefix_matches_like_the_concatenated_string() {
        assert!(key_value_starts_with("path", "/api/v1", "path_/api"));
        assert!(key_value_starts_with("path", "", "path_"));
        assert!(!key_value_starts_with("path", "/web", "path_/api"));
        assert!(key_value_starts_with("a_bc", "x", "a_b"));
        assert!(!key_value_starts_with("pat", "h_x", "path_"));
    }
}
