//! One limits file → one [`DomainLimits`], with every problem found.
//!
//! The format is envoyproxy/ratelimit's, with the same error texts where the
//! reference has one, plus tollgate's extensions:
//! - `algorithm: fixed_window | sliding_window | token_bucket` and `burst`
//!   inside `rate_limit`;
//! - `rate_limits: [...]`, a list of rate limits on one descriptor (a request
//!   is over if it is over any of them);
//! - a top-level `failure_mode: fail_open | fail_closed` for the domain.
//!
//! Fields are checked where they stand (an unknown or misplaced field is an
//! error naming its line), which is stricter than the reference's flat list
//! of allowed keys but accepts every file the reference documents.

use std::path::Path;
use std::sync::Arc;

use marked_yaml::Spanned;
use serde::Deserialize;

use super::yaml::{from_str, line};
use super::{ConfigError, ConfigErrors};
use crate::algorithm::Algorithm;
use crate::limits::model::Children;
use crate::limits::{DescriptorNode, DomainLimits, FailureMode, Limit, Rule, Unit};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    domain: Option<Spanned<String>>,
    failure_mode: Option<Spanned<String>>,
    descriptors: Option<Vec<Spanned<RawDescriptor>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDescriptor {
    key: Option<Spanned<String>>,
    value: Option<Spanned<String>>,
    rate_limit: Option<Spanned<RawRateLimit>>,
    rate_limits: Option<Vec<Spanned<RawRateLimit>>>,
    descriptors: Option<Vec<Spanned<RawDescriptor>>>,
    shadow_mode: Option<bool>,
    detailed_metric: Option<bool>,
    value_to_metric: Option<bool>,
    share_threshold: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    unit: Option<Spanned<String>>,
    requests_per_unit: Option<Spanned<i64>>,
    unlimited: Option<bool>,
    name: Option<Spanned<String>>,
    replaces: Option<Vec<Spanned<RawReplace>>>,
    algorithm: Option<Spanned<String>>,
    burst: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReplace {
    name: Option<Spanned<String>>,
}

/// Parses the text of one limits file.
///
/// # Errors
/// Every problem found, each with its line. YAML syntax and type errors stop
/// the reading of the file at the first one.
pub fn parse_limits_file(file: &Path, text: &str) -> Result<DomainLimits, ConfigErrors> {
    // An empty file is valid YAML but not a mapping; answer like the reference.
    if text.trim().is_empty() {
        return Err(ConfigError::new(file, None, "config file cannot have empty domain").into());
    }
    let raw: RawFile = from_str(file, text)?;
    let mut reader = Reader {
        file,
        errors: Vec::new(),
        domain: String::new(),
    };
    let (domain, domain_line) = match &raw.domain {
        Some(d) if !d.trim().is_empty() => (d.to_string(), line(d.span()).unwrap_or(1)),
        other => {
            reader.error(
                other.as_ref().and_then(|d| line(d.span())),
                "config file cannot have empty domain",
            );
            (String::new(), 1)
        }
    };
    reader.domain = domain.clone();
    let prefix = format!("{domain}.");
    let descriptors = reader.level(raw.descriptors.as_deref().unwrap_or_default(), &prefix);
    let failure_mode = match raw.failure_mode.as_ref() {
        None => None,
        Some(m) => match m.as_str() {
            "fail_open" => Some(FailureMode::FailOpen),
            "fail_closed" => Some(FailureMode::FailClosed),
            other => {
                reader.error(
                    line(m.span()),
                    format!("unknown failure_mode '{other}' (expected fail_open or fail_closed)"),
                );
                None
            }
        },
    };
    if reader.errors.is_empty() {
        Ok(DomainLimits {
            name: domain.into(),
            descriptors,
            source: file.display().to_string().into(),
            line: domain_line,
            failure_mode,
        })
    } else {
        Err(ConfigErrors(reader.errors))
    }
}

struct Reader<'a> {
    file: &'a Path,
    errors: Vec<ConfigError>,
    domain: String,
}

impl Reader<'_> {
    fn error(&mut self, line: Option<usize>, problem: impl Into<String>) {
        self.errors.push(ConfigError::new(self.file, line, problem));
    }

    /// Reads one level of descriptors; `parent` is the metric path so far
    /// (`domain.` or `domain.k1_v1.`).
    fn level(&mut self, raws: &[Spanned<RawDescriptor>], parent: &str) -> Children {
        let mut children = Children::default();
        for raw in raws {
            let at = line(raw.span());
            let key = raw.key.as_ref().map(|k| k.as_str()).unwrap_or_default();
            if key.is_empty() {
                self.error(at, "descriptor has empty key");
                continue;
            }
            let value = raw.value.as_ref().map(|v| v.as_str()).unwrap_or_default();
            let final_key = if value.is_empty() {
                key.to_string()
            } else {
                format!("{key}_{value}")
            };
            let path = format!("{parent}{final_key}");
            let share_threshold = raw.share_threshold.unwrap_or(false);
            if share_threshold && !value.ends_with('*') {
                self.error(
                    at,
                    format!(
                        "share_threshold can only be used with wildcard values (ending with '*'), but found key '{final_key}'"
                    ),
                );
            }
            let node = DescriptorNode {
                rule: self.rule(raw, &path),
                children: self.level(
                    raw.descriptors.as_deref().unwrap_or_default(),
                    &format!("{path}."),
                ),
            };
            if !children.insert(key, value, share_threshold, node) {
                self.error(at, format!("duplicate descriptor composite key '{path}'"));
            }
        }
        children
    }

    fn rule(&mut self, raw: &RawDescriptor, path: &str) -> Option<Rule> {
        let raws: Vec<&Spanned<RawRateLimit>> = match (&raw.rate_limit, &raw.rate_limits) {
            (Some(_), Some(list)) => {
                self.error(
                    list.first().and_then(|l| line(l.span())),
                    "use either rate_limit or rate_limits on a descriptor, not both",
                );
                return None;
            }
            (Some(one), None) => vec![one],
            (None, Some(list)) if !list.is_empty() => list.iter().collect(),
            _ => return None,
        };
        let mut limits: Vec<Limit> = Vec::new();
        let mut unlimited = false;
        let mut replaces: Vec<Arc<str>> = Vec::new();
        for raw_limit in &raws {
            let at = line(raw_limit.span());
            let parsed = self.limit(raw_limit);
            if let Some((_, names)) = &parsed {
                replaces.extend(names.iter().cloned());
            }
            match parsed.map(|(limit, _)| limit) {
                Some(None) => unlimited = true,
                Some(Some(limit)) => {
                    if limits
                        .iter()
                        .any(|l| l.unit == limit.unit && l.algorithm == limit.algorithm)
                    {
                        self.error(
                            at,
                            format!(
                                "two {} limits per {} on one descriptor; give them different units or algorithms",
                                limit.algorithm.as_str(),
                                limit.unit.as_str()
                            ),
                        );
                    }
                    limits.push(limit);
                }
                None => {}
            }
        }
        if unlimited && raws.len() > 1 {
            self.error(
                line(raws[0].span()),
                "an unlimited rate limit cannot be combined with other rate limits on one descriptor",
            );
        }
        Some(Rule {
            limits,
            unlimited,
            shadow_mode: raw.shadow_mode.unwrap_or(false),
            detailed_metric: raw.detailed_metric.unwrap_or(false),
            value_to_metric: raw.value_to_metric.unwrap_or(false),
            replaces,
            path: path.into(),
        })
    }

    /// `Some((Some(limit), replaces))` for a limit, `Some((None, replaces))`
    /// for `unlimited` (whose `replaces` still count, as in the reference),
    /// `None` after recording an error.
    fn limit(&mut self, raw: &Spanned<RawRateLimit>) -> Option<(Option<Limit>, Vec<Arc<str>>)> {
        let at = line(raw.span());
        let errors_before = self.errors.len();
        let unit_text = raw.unit.as_ref().map(|u| u.as_str()).unwrap_or_default();
        let unit_line = raw.unit.as_ref().and_then(|u| line(u.span())).or(at);
        let unit = Unit::parse(unit_text);
        let name = raw
            .name
            .as_ref()
            .map(|n| n.as_str())
            .filter(|n| !n.is_empty());

        let mut replaces: Vec<Arc<str>> = Vec::new();
        for r in raw.replaces.as_deref().unwrap_or_default() {
            match r
                .name
                .as_ref()
                .map(|n| n.as_str())
                .filter(|n| !n.is_empty())
            {
                None => self.error(line(r.span()), "should not have an empty replaces entry"),
                Some(n) if Some(n) == name => self.error(
                    line(r.span()),
                    "replaces should not contain name of same descriptor",
                ),
                Some(n) => replaces.push(n.into()),
            }
        }

        if raw.unlimited.unwrap_or(false) {
            if unit.is_some() {
                self.error(
                    unit_line,
                    "should not specify rate limit unit when unlimited",
                );
            }
            return (self.errors.len() == errors_before).then_some((None, replaces));
        }
        let Some(unit) = unit else {
            self.error(unit_line, format!("invalid rate limit unit '{unit_text}'"));
            return None;
        };
        let algorithm = match raw.algorithm.as_ref() {
            None => Algorithm::FixedWindow,
            Some(a) => match a.as_str() {
                "fixed_window" => Algorithm::FixedWindow,
                "sliding_window" => Algorithm::SlidingWindow,
                "token_bucket" => Algorithm::TokenBucket,
                other => {
                    self.error(
                        line(a.span()),
                        format!("unknown algorithm '{other}' (expected fixed_window, sliding_window or token_bucket)"),
                    );
                    return None;
                }
            },
        };
        let requests_per_unit = match raw.requests_per_unit.as_ref() {
            None => {
                self.error(at, "requests_per_unit is required (0 blocks every request; or set unlimited: true)");
                return None;
            }
            Some(n) => match u32::try_from(**n) {
                Ok(n) => n,
                Err(_) => {
                    self.error(
                        line(n.span()),
                        format!(
                            "requests_per_unit must be between 0 and {}, got {}",
                            u32::MAX,
                            **n
                        ),
                    );
                    return None;
                }
            },
        };
        let burst = match raw.burst.as_ref() {
            None => requests_per_unit,
            Some(b) if algorithm != Algorithm::TokenBucket => {
                self.error(
                    line(b.span()),
                    "burst applies only to algorithm: token_bucket",
                );
                return None;
            }
            Some(b) => match u32::try_from(**b) {
                Ok(n) if n >= 1 => n,
                _ => {
                    self.error(
                        line(b.span()),
                        format!("burst must be between 1 and {}, got {}", u32::MAX, **b),
                    );
                    return None;
                }
            },
        };
        if algorithm == Algorithm::TokenBucket && requests_per_unit == 0 {
            self.error(at, "a token_bucket needs requests_per_unit of at least 1");
            return None;
        }
        // Redis runs the algorithms in Lua, whose numbers are doubles: keep
        // every intermediate product exact (below 2^53).
        const EXACT: u128 = 1 << 53;
        let unit_ms = u128::from(unit.seconds()) * 1_000;
        if algorithm == Algorithm::SlidingWindow && u128::from(requests_per_unit) * unit_ms >= EXACT
        {
            self.error(
                at,
                format!(
                    "a sliding_window of {requests_per_unit} per {} is too large to count exactly; use a shorter unit or a fixed_window",
                    unit.as_str()
                ),
            );
            return None;
        }
        let interval = (unit_ms * 1_000).div_ceil(u128::from(requests_per_unit.max(1)));
        if algorithm == Algorithm::TokenBucket && u128::from(burst) * interval >= EXACT {
            self.error(
                at,
                format!("a token_bucket with burst {burst} at {requests_per_unit} per {} is too large to count exactly", unit.as_str()),
            );
            return None;
        }
        if self.errors.len() != errors_before {
            return None;
        }
        Some((
            Some(Limit {
                name: name.map(Arc::from),
                unit,
                requests_per_unit,
                algorithm,
                burst,
            }),
            replaces,
        ))
    }
}

#[cfg(test)]
mod tests;
