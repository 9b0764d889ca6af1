use std::path::Path;

use super::*;
use crate::limits::{Match, lookup};
use crate::request::Entry;

fn parse(text: &str) -> Result<DomainLimits, ConfigErrors> {
    parse_limits_file(Path::new("limits/test.yaml"), text)
}

fn parsed(text: &str) -> DomainLimits {
    parse(text).unwrap_or_else(|e| panic!("unexpected errors:\n{e}"))
}

fn errors(text: &str) -> Vec<String> {
    match parse(text) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

fn entries(pairs: &[(&str, &str)]) -> Vec<Entry> {
    pairs.iter().map(|(k, v)| Entry::new(*k, *v)).collect()
}

fn matched<'a>(d: &'a DomainLimits, pairs: &[(&str, &str)]) -> Option<Match<'a>> {
    lookup(d, &entries(pairs))
}

fn rule_path(d: &DomainLimits, pairs: &[(&str, &str)]) -> Option<String> {
    matched(d, pairs).map(|m| m.rule.path.to_string())
}

const REFERENCE: &str = r#"
domain: test-domain
descriptors:
  - key: key1
    value: value1
    descriptors:
      - key: subkey1
        rate_limit:
          unit: second
          requests_per_unit: 5
  - key: key2
    rate_limit:
      unit: minute
      requests_per_unit: 20
  - key: key2
    value: value2
    rate_limit:
      unit: Hour
      requests_per_unit: 10
  - key: key2
    value: val*
    rate_limit:
      unit: day
      requests_per_unit: 30
  - key: key3
    value: value3
    rate_limit:
      unit: day
      requests_per_unit: 15
    descriptors:
      - key: subkey3
        rate_limit:
          unlimited: true
  - key: remote_address
    value: 50.0.0.5
    rate_limit:
      unit: second
      requests_per_unit: 0
"#;

#[test]
fn reads_the_reference_format() {
    let d = parsed(REFERENCE);
    assert_eq!(&*d.name, "test-domain");
    let m = matched(&d, &[("key2", "value2")]).map(|m| m.rule.limits.clone());
    let limits = m.unwrap_or_default();
    assert_eq!(limits.len(), 1);
    assert_eq!(limits[0].unit, Unit::Hour, "units ignore case");
    assert_eq!(limits[0].requests_per_unit, 10);
    assert_eq!(limits[0].algorithm, Algorithm::FixedWindow);
    let blocked =
        matched(&d, &[("remote_address", "50.0.0.5")]).map(|m| m.rule.limits[0].requests_per_unit);
    assert_eq!(
        blocked,
        Some(0),
        "requests_per_unit: 0 is the reference's way to block"
    );
    assert!(matched(&d, &[("key3", "value3"), ("subkey3", "x")]).is_some_and(|m| m.rule.unlimited));
}

#[test]
fn exact_value_beats_wildcard_beats_key_only() {
    let d = parsed(REFERENCE);
    assert_eq!(
        rule_path(&d, &[("key2", "value2")]).as_deref(),
        Some("test-domain.key2_value2")
    );
    assert_eq!(
        rule_path(&d, &[("key2", "valueX")]).as_deref(),
        Some("test-domain.key2_val*")
    );
    assert_eq!(
        rule_path(&d, &[("key2", "other")]).as_deref(),
        Some("test-domain.key2")
    );
    assert_eq!(
        rule_path(&d, &[("key2", "")]).as_deref(),
        Some("test-domain.key2")
    );
}

#[test]
fn a_rule_applies_only_to_the_last_entry_without_backtracking() {
    let d = parsed(REFERENCE);
    assert_eq!(
        rule_path(&d, &[("key1", "value1"), ("subkey1", "anything")]).as_deref(),
        Some("test-domain.key1_value1.subkey1")
    );
    // Shorter than the config path, and the node has no limit of its own.
    assert_eq!(rule_path(&d, &[("key1", "value1")]), None);
    // Longer than the config path: no limit, even though key3_value3 has one.
    assert_eq!(rule_path(&d, &[("key3", "value3"), ("other", "x")]), None);
    assert_eq!(
        rule_path(&d, &[("key3", "value3")]).as_deref(),
        Some("test-domain.key3_value3")
    );
    // Unknown keys match nothing.
    assert_eq!(rule_path(&d, &[("nope", "x")]), None);
    assert_eq!(rule_path(&d, &[("key1", "other"), ("subkey1", "x")]), None);
}

#[test]
fn first_wildcard_in_file_order_wins_and_a_star_inside_is_literal() {
    let d = parsed(
        r#"
domain: d
descriptors:
  - key: path
    value: /api*
    rate_limit: { unit: second, requests_per_unit: 1 }
  - key: path
    value: /api/v1*
    rate_limit: { unit: second, requests_per_unit: 2 }
  - key: k
    value: bar*b
    rate_limit: { unit: second, requests_per_unit: 3 }
"#,
    );
    assert_eq!(
        rule_path(&d, &[("path", "/api/v1/x")]).as_deref(),
        Some("d.path_/api*")
    );
    assert_eq!(rule_path(&d, &[("k", "barab")]), None);
    assert_eq!(
        rule_path(&d, &[("k", "bar*b")]).as_deref(),
        Some("d.k_bar*b")
    );
}

#[test]
fn several_limits_and_algorithms_on_one_descriptor() {
    let d = parsed(
        r#"
domain: d
descriptors:
  - key: user
    rate_limits:
      - { unit: second, requests_per_unit: 10, name: per_second }
      - { unit: hour, requests_per_unit: 1000, algorithm: sliding_window }
      - { unit: minute, requests_per_unit: 100, algorithm: token_bucket, burst: 20 }
"#,
    );
    let limits = matched(&d, &[("user", "a")])
        .map(|m| m.rule.limits.clone())
        .unwrap_or_default();
    assert_eq!(limits.len(), 3);
    assert_eq!(limits[0].name.as_deref(), Some("per_second"));
    assert_eq!(limits[1].algorithm, Algorithm::SlidingWindow);
    assert_eq!(
        (limits[2].algorithm, limits[2].burst),
        (Algorithm::TokenBucket, 20)
    );
    assert_eq!(limits[1].burst, 1000, "burst defaults to the limit");
}

#[test]
fn errors_name_the_line_and_the_problem() {
    let e = errors(
        "domain: d\ndescriptors:\n  - key: a\n    rate_limit:\n      unit: fortnight\n      requests_per_unit: 5\n",
    );
    assert_eq!(
        e,
        vec!["limits/test.yaml:5: invalid rate limit unit 'fortnight'"]
    );

    let e = errors("domain: d\ndescriptors:\n  - key: a\n    ratelimit:\n      unit: second\n");
    assert_eq!(e.len(), 1);
    assert!(
        e[0].starts_with("limits/test.yaml:4: Unknown field `ratelimit`"),
        "{e:?}"
    );

    let e = errors(
        "domain: d\ndescriptors:\n  - key: a\n    rate_limit:\n      unit: second\n      requests_per_unit: -3\n",
    );
    assert_eq!(
        e,
        vec!["limits/test.yaml:6: requests_per_unit must be between 0 and 4294967295, got -3"]
    );

    let e = errors("domain: d\ndescriptors:\n  - key: a\n    rate_limit:\n      unit: second\n");
    assert_eq!(
        e,
        vec![
            "limits/test.yaml:5: requests_per_unit is required (0 blocks every request; or set unlimited: true)"
        ]
    );
}

#[test]
fn every_problem_in_a_file_is_reported() {
    let e = errors(
        r#"domain: d
descriptors:
  - key: a
    value: x
    rate_limit: { unit: second, requests_per_unit: 1 }
  - key: a
    value: x
    rate_limit: { unit: second, requests_per_unit: 1 }
  - value: nokey
  - key: b
    rate_limit: { unit: second, requests_per_unit: 1, algorithm: leaky }
  - key: c
    rate_limit: { unlimited: true, unit: second }
  - key: e
    rate_limit: { unit: second, requests_per_unit: 1, burst: 3 }
  - key: f
    rate_limit:
      unit: second
      requests_per_unit: 1
      name: f1
      replaces: [ { name: f1 }, { } ]
"#,
    );
    assert_eq!(
        e,
        vec![
            "limits/test.yaml:6: duplicate descriptor composite key 'd.a_x'",
            "limits/test.yaml:9: descriptor has empty key",
            "limits/test.yaml:11: unknown algorithm 'leaky' (expected fixed_window, sliding_window or token_bucket)",
            "limits/test.yaml:13: should not specify rate limit unit when unlimited",
            "limits/test.yaml:15: burst applies only to algorithm: token_bucket",
            "limits/test.yaml:21: replaces should not contain name of same descriptor",
            "limits/test.yaml:21: should not have an empty replaces entry",
        ]
    );
}

#[test]
fn missing_domain_duplicate_yaml_keys_and_bad_yaml() {
    assert_eq!(
        errors(""),
        vec!["limits/test.yaml: config file cannot have empty domain"]
    );
    assert_eq!(
        errors("descriptors: []\n"),
        vec!["limits/test.yaml: config file cannot have empty domain"]
    );
    let e = errors("domain: d\ndomain: e\n");
    assert_eq!(
        e,
        vec!["limits/test.yaml:2: duplicate key 'domain' (first on line 1)"]
    );
    let e = errors("domain: d\ndescriptors:\n  - key: [unclosed\n");
    assert_eq!(e.len(), 1);
    assert!(e[0].starts_with("limits/test.yaml:"), "{e:?}");
    assert!(e[0].contains("invalid YAML"), "{e:?}");
}

#[test]
fn share_threshold_needs_a_wildcard_and_keys_by_the_pattern() {
    let e =
        errors("domain: d\ndescriptors:\n  - key: a\n    value: x\n    share_threshold: true\n");
    assert_eq!(
        e,
        vec![
            "limits/test.yaml:3: share_threshold can only be used with wildcard values (ending with '*'), but found key 'a_x'"
        ]
    );
    let d = parsed(
        "domain: d\ndescriptors:\n  - key: file\n    value: files/*\n    share_threshold: true\n    rate_limit: { unit: second, requests_per_unit: 1 }\n",
    );
    let es = entries(&[("file", "files/a.pdf")]);
    let m = lookup(&d, &es);
    assert_eq!(m.as_ref().map(|m| m.key_value(0, &es)), Some("files/*"));
}
