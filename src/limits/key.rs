//! Counter keys: one per (domain, descriptor values, limit).
//!
//! Every part is length-prefixed, so no value a caller sends can make two
//! different descriptors collide (`a_b`+`c` vs `a`+`b_c` is a real collision
//! in underscore-joined keys). The algorithm and unit are part of the key so
//! several limits on one descriptor count separately; the configured number is
//! not, so changing a limit keeps the counts of the current window, as in the
//! reference.

use super::matching::Match;
use super::model::Limit;
use crate::request::Entry;

/// The key `limit` is counted under for a descriptor with `entries` that
/// reached `matched` in `domain` (`None` for a limit sent with the request,
/// which is keyed by the entries' own values).
pub fn counter_key(
    domain: &str,
    entries: &[Entry],
    matched: Option<&Match<'_>>,
    limit: &Limit,
) -> String {
    let mut key = String::with_capacity(
        16 + domain.len()
            + entries
                .iter()
                .map(|e| e.key.len() + e.value.len() + 8)
                .sum::<usize>(),
    );
    // The version changes whenever the stored state's format does (tg2:
    // binary state in Redis), so processes of two versions sharing a
    // Redis never read each other's values.
    key.push_str("tg2:");
    push_part(&mut key, domain);
    for (i, entry) in entries.iter().enumerate() {
        push_part(&mut key, &entry.key);
        let value = matched.map_or(entry.value.as_str(), |m| m.key_value(i, entries));
        push_part(&mut key, value);
    }
    key.push_str(limit.algorithm.as_str());
    key.push(':');
    key.push_str(limit.unit.as_str());
    key
}

// Built on every decision: itoa rather than the formatting machinery.
fn push_part(key: &mut String, part: &str) {
    key.push_str(itoa::Buffer::new().format(part.len()));
    key.push(':');
    key.push_str(part);
}
