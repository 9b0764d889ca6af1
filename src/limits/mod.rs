//! Limit definitions and rule matching: which configured limits apply to a
//! request descriptor, and the counter key each one is counted under.
//!
//! The matching follows envoyproxy/ratelimit exactly (README "Limits files"):
//! at each level of nesting an entry matches the exact `key`/`value` rule
//! first, then the first wildcard rule (`value: prefix*`) in file order, then
//! the key-only rule; there is no backtracking, and a rule applies only if it
//! is reached by the descriptor's last entry.

mod key;
mod matching;
pub(crate) mod model;

pub use key::counter_key;
pub use matching::{Match, lookup};
pub use model::{Children, DescriptorNode, DomainLimits, FailureMode, Limit, Limits, Rule, Unit};
