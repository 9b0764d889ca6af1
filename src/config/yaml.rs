//! YAML reading with line numbers, shared by the limits files and the
//! service config.

use std::path::Path;

use marked_yaml::{LoadError, LoaderOptions, Node, Span};
use serde::de::DeserializeOwned;

use super::ConfigError;

/// Parses `text` into `T`, rejecting duplicate mapping keys. Errors carry the
/// line of the offending node.
pub(super) fn from_str<T: DeserializeOwned>(file: &Path, text: &str) -> Result<T, ConfigError> {
    let options = LoaderOptions::default().error_on_duplicate_keys(true);
    let node =
        marked_yaml::parse_yaml_with_options(0, text, options).map_err(|e| load_error(file, &e))?;
    marked_yaml::from_node(&node).map_err(|e| {
        let e = e.into_inner();
        let line = e.start_mark().map(|m| m.line()).or_else(|| match &e {
            // marked-yaml leaves unknown fields without a place: find the key.
            marked_yaml::spanned_serde::Error::UnknownFieldError(field, expected, _) => {
                unknown_key_line(&node, field, expected)
            }
            // Other errors without a place (an unknown enum variant) quote the
            // offending value in backticks: find that value.
            other => quoted(&other.to_string()).and_then(|v| value_line(&node, v)),
        });
        ConfigError::new(file, line, e.to_string())
    })
}

/// The line of the first mapping key `field` (in document order) whose
/// mapping's other keys are all known: the place serde stopped at.
fn unknown_key_line(node: &Node, field: &str, expected: &[&str]) -> Option<usize> {
    match node {
        Node::Scalar(_) => None,
        Node::Sequence(items) => items
            .iter()
            .find_map(|n| unknown_key_line(n, field, expected)),
        Node::Mapping(map) => {
            let here = map.keys().any(|k| k.as_str() == field)
                && map
                    .keys()
                    .all(|k| k.as_str() == field || expected.contains(&k.as_str()));
            if here {
                return map
                    .keys()
                    .find(|k| k.as_str() == field)
                    .and_then(|k| line(k.span()));
            }
            map.values()
                .find_map(|n| unknown_key_line(n, field, expected))
        }
    }
}

fn load_error(file: &Path, e: &LoadError) -> ConfigError {
    let (marker, problem) = match e {
        LoadError::TopLevelMustBeMapping(m) => {
            (Some(*m), "the file must be a YAML mapping".to_string())
        }
        LoadError::TopLevelMustBeSequence(m) => {
            (Some(*m), "the file must be a YAML sequence".to_string())
        }
        LoadError::UnexpectedAnchor(m) => (Some(*m), "YAML anchors are not supported".to_string()),
        LoadError::MappingKeyMustBeScalar(m) => {
            (Some(*m), "mapping keys must be plain strings".to_string())
        }
        LoadError::UnexpectedTag(m) => (Some(*m), "YAML tags are not supported".to_string()),
        LoadError::ScanError(m, err) => (Some(*m), format!("invalid YAML: {}", err.info())),
        LoadError::DuplicateKey(inner) => {
            let first = inner.prev_key.span().start().map(|m| m.line());
            (
                inner.key.span().start().copied(),
                format!(
                    "duplicate key '{}' (first on line {})",
                    inner.key.as_str(),
                    first.map_or_else(|| "?".to_string(), |l| l.to_string())
                ),
            )
        }
    };
    ConfigError::new(file, marker.map(|m| m.line()), problem)
}

fn quoted(message: &str) -> Option<&str> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(&message[start..start + len])
}

/// The line of the first scalar value equal to `value`, in document order.
fn value_line(node: &Node, value: &str) -> Option<usize> {
    match node {
        Node::Scalar(s) => (s.as_str() == value).then(|| line(s.span())).flatten(),
        Node::Sequence(items) => items.iter().find_map(|n| value_line(n, value)),
        Node::Mapping(map) => map.values().find_map(|n| value_line(n, value)),
    }
}

/// The line a span starts on.
pub(super) fn line(span: &Span) -> Option<usize> {
    span.start().map(|m| m.line())
}
