//! The consistent hash that routes counter keys to named shards (regional
//! Redis instances such as `us-east`, `eu-west`).
//!
//! # Rendezvous hashing
//!
//! Every shard gets a seed, `xxh3_64(name)`. The score of a key on a shard is
//! `xxh3_64_with_seed(key, seed)`, and the key belongs to the shard with the
//! highest score (ties, which need a 64-bit collision, go to the greater
//! name). This is rendezvous, or highest-random-weight, hashing. Why it and
//! not a ring of virtual nodes or `hash % N`:
//!
//! - **Minimal disruption, exactly.** Adding a shard to `N` moves only the
//!   keys on which the new shard's score beats all the others: an expected
//!   `1/(N+1)` of them, and every one of them moves *to the new shard*.
//!   Removing a shard moves only that shard's keys (an expected `1/N`); each
//!   goes to its runner-up, and no other key changes owner. A counter that
//!   moves starts again from zero on its new shard, so this is the fraction
//!   of counters that reset when a shard joins or leaves.
//! - **Balance within binomial noise**, with nothing to tune: there are no
//!   virtual nodes whose count trades memory against evenness.
//! - **O(N) per lookup**, one hash per shard and no allocation. That is
//!   cheaper than a virtual-node search for the few (up to about 16) regional
//!   shards this routes to; with hundreds of shards a ring would win.
//! - **The same everywhere.** The owner depends only on the shard *names* and
//!   the key bytes: not on the order in which shards are listed, their URLs,
//!   the process or its start: xxh3 with explicit seeds is a fixed
//!   function, unlike std's `RandomState`, which is keyed anew in every
//!   process. Every tollgate process, before and after a restart, sends a
//!   key to the same shard, so they all count it in one place. Renaming a shard is a change of shard;
//!   moving it to a new URL under the same name is not.
//!
//! The seed design's `md5(key) % N` is not consistent: going from `N` to
//! `N+1` shards (or back) remaps about `N/(N+1)` of all keys, resetting
//! nearly every counter.
//!
//! What to hash is the caller's choice: counter keys are hashed whole, so one
//! busy user's counters spread over the shards; usage keys are hashed by user,
//! so one user's aggregates live together. The mapping is pinned by a test: a
//! change of hash or seed scheme would reshuffle every counter in production.

use std::collections::HashSet;

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// Why a list of shard names cannot make a [`Ring`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// No shards at all: no key would have an owner.
    #[error("a shard ring needs at least one shard")]
    Empty,
    /// A shard name is empty; names are the shards' identities in the hash.
    #[error("shard name at position {index} is empty")]
    EmptyName {
        /// Position of the name in the list given to [`Ring::new`].
        index: usize,
    },
    /// Two shards share a name, so they would score every key alike.
    #[error("shard name {name:?} appears more than once")]
    Duplicate {
        /// The repeated name.
        name: String,
    },
}

impl RingError {
    /// Whether the same call may succeed later: never, the names are wrong.
    pub fn is_transient(&self) -> bool {
        match self {
            RingError::Empty | RingError::EmptyName { .. } | RingError::Duplicate { .. } => false,
        }
    }
}

/// One shard: its name and the seed derived from it.
#[derive(Debug, Clone)]
struct Shard {
    name: String,
    /// `xxh3_64(name)`, computed once so a lookup hashes only the key.
    seed: u64,
}

/// Shard names → owner of each key, by rendezvous hashing (see the
/// [module docs](self)).
///
/// Lookups answer with an index into the names as given to [`Ring::new`], so
/// callers keep their own shard handles (connections, pools) in a parallel
/// `Vec` in the same order. Ownership is by name: rings built from the same
/// names in any order send every key to the same name.
#[derive(Debug, Clone)]
pub struct Ring {
    /// Never empty; in the order given to [`Ring::new`].
    shards: Box<[Shard]>,
}

impl Ring {
    /// A ring over the shards named `names`.
    ///
    /// # Errors
    /// [`RingError`] if `names` is empty, a name is empty, or a name repeats.
    pub fn new<I, S>(names: I) -> Result<Self, RingError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut seen = HashSet::new();
        let mut shards = Vec::new();
        for (index, name) in names.into_iter().enumerate() {
            let name: String = name.into();
            if name.is_empty() {
                return Err(RingError::EmptyName { index });
            }
            if !seen.insert(name.clone()) {
                return Err(RingError::Duplicate { name });
            }
            let seed = xxh3_64(name.as_bytes());
            shards.push(Shard { name, seed });
        }
        if shards.is_empty() {
            return Err(RingError::Empty);
        }
        Ok(Self {
            shards: shards.into_boxed_slice(),
        })
    }

    /// Index (into the names as given to [`Ring::new`]) of the shard owning
    /// `key`. No allocation: one xxh3 of `key` per shard.
    pub fn shard_for(&self, key: &[u8]) -> usize {
        let mut best = 0;
        let mut best_score = 0;
        for (index, shard) in self.shards.iter().enumerate() {
            let score = xxh3_64_with_seed(key, shard.seed);
            // Ties go to the greater name, so the winner never depends on the
            // order in which the names were listed.
            if index == 0
                || score > best_score
                || (score == best_score && shard.name > self.shards[best].name)
            {
                best = index;
                best_score = score;
            }
        }
        best
    }

    /// The shard names, in the order given to [`Ring::new`].
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.shards.iter().map(|s| s.name.as_str())
    }

    /// Number of shards; at least one.
    pub fn len(&self) -> usize {
        self.shards.len()
    }

    /// Always `false`: [`Ring::new`] refuses an empty list.
    pub fn is_empty(&self) -> bool {
        self.shards.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regional shard names; rings of `N` shards use the first `N`.
    const NAMES: [&str; 9] = [
        "us-east",
        "us-west",
        "eu-west",
        "eu-central",
        "ap-south",
        "ap-northeast",
        "sa-east",
        "af-south",
        "me-central",
    ];

    const KEYS: usize = 100_000;

    /// Counter keys shaped like the limiter's, varying only the user.
    fn keys() -> Vec<String> {
        (0..KEYS)
            .map(|i| format!("tg1:5:api4:user7:user{i}fixed_window:minute"))
            .collect()
    }

    fn ring(names: &[&str]) -> Ring {
        Ring::new(names.iter().copied()).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The owner's name of each key.
    fn owners<'r>(ring: &'r Ring, keys: &[String]) -> Vec<&'r str> {
        keys.iter()
            .map(|k| ring.shards[ring.shard_for(k.as_bytes())].name.as_str())
            .collect()
    }

    #[test]
    fn lookups_are_stable_and_independent_of_name_order() {
        let keys = keys();
        let names = &NAMES[..5];
        let forward = ring(names);
        let mut reversed_names = names.to_vec();
        reversed_names.reverse();
        let reversed = ring(&reversed_names);
        let mut rotated_names = names.to_vec();
        rotated_names.rotate_left(2);
        let rotated = ring(&rotated_names);

        let first = owners(&forward, &keys);
        assert_eq!(first, owners(&forward, &keys), "same ring, second pass");
        assert_eq!(first, owners(&forward.clone(), &keys), "a clone");
        assert_eq!(first, owners(&reversed, &keys), "names reversed");
        assert_eq!(first, owners(&rotated, &keys), "names rotated");
        for key in keys.iter().take(1000) {
            assert!(forward.shard_for(key.as_bytes()) < forward.len());
        }
    }

    #[test]
    fn load_is_balanced() {
        let keys = keys();
        for n in 3..=8 {
            let ring = ring(&NAMES[..n]);
            let mut counts = vec![0usize; n];
            for key in &keys {
                counts[ring.shard_for(key.as_bytes())] += 1;
            }
            assert_eq!(counts.iter().sum::<usize>(), KEYS);
            let mean = KEYS as f64 / n as f64;
            let max = counts.iter().copied().max().unwrap_or(0) as f64;
            let min = counts.iter().copied().min().unwrap_or(0) as f64;
            println!(
                "balance N={n}: max/mean {:.4}, min/mean {:.4}, counts {counts:?}",
                max / mean,
                min / mean
            );
            assert!(
                max <= 1.1 * mean,
                "N={n}: busiest shard {max} vs mean {mean}"
            );
        }
    }

    #[test]
    fn adding_a_shard_moves_about_one_in_n_plus_one_keys_all_to_it() {
        let keys = keys();
        let rings: Vec<Ring> = (3..=8).map(|n| ring(&NAMES[..n])).collect();
        let owned: Vec<Vec<&str>> = rings.iter().map(|r| owners(r, &keys)).collect();
        for (pair, n) in owned.windows(2).zip(3..) {
            let (before, after) = (&pair[0], &pair[1]);
            let mut moved = 0usize;
            for (old, new) in before.iter().zip(after) {
                if old != new {
                    moved += 1;
                    assert_eq!(*new, NAMES[n], "a key moved between old shards");
                }
            }
            let fraction = moved as f64 / KEYS as f64;
            let expected = 1.0 / (n + 1) as f64;
            println!(
                "add N={n}->{}: moved {fraction:.4}, expected {expected:.4}, ratio {:.4}",
                n + 1,
                fraction / expected
            );
            assert!(
                (fraction - expected).abs() <= 0.2 * expected,
                "N={n}: moved {fraction}, expected {expected}"
            );
        }
    }

    #[test]
    fn removing_a_shard_moves_only_its_keys() {
        let keys = keys();
        for n in 4..=8 {
            let removed = NAMES[n / 2];
            let before_ring = ring(&NAMES[..n]);
            let before = owners(&before_ring, &keys);
            let remaining: Vec<&str> = NAMES[..n]
                .iter()
                .copied()
                .filter(|&s| s != removed)
                .collect();
            let after_ring = ring(&remaining);
            let after = owners(&after_ring, &keys);
            let mut moved = 0usize;
            for (old, new) in before.iter().zip(&after) {
                if *old == removed {
                    moved += 1;
                    assert_ne!(*new, removed);
                } else {
                    assert_eq!(old, new, "a key of a remaining shard moved");
                }
            }
            println!(
                "remove 1 of N={n}: moved {:.4}, expected {:.4}",
                moved as f64 / KEYS as f64,
                1.0 / n as f64
            );
        }
    }

    /// These pin the mapping itself, computed once with this implementation.
    /// If this fails, the hash or seed scheme changed: in production that
    /// would send most counter keys to a different shard, resetting their
    /// counters. Change them only on purpose, with a migration plan.
    #[test]
    fn mapping_is_pinned() {
        // xxh3 itself: a failure here alone means the hash crate changed.
        assert_eq!(xxh3_64(b"us-east"), 0x7880_0ff9_53a6_be7a);

        let names = ["us-east", "us-west", "eu-west", "ap-south"];
        let pinned = [
            ("", "ap-south"),
            ("user42", "ap-south"),
            ("tg1:5:api4:user7:user0fixed_window:minute", "us-west"),
            ("tg1:5:api4:user7:user4fixed_window:minute", "eu-west"),
            ("tg1:5:api4:user7:user14fixed_window:minute", "us-east"),
            ("tg1:5:api4:user7:user12345fixed_window:minute", "ap-south"),
            ("tg1:5:api4:user7:user99999fixed_window:minute", "us-west"),
        ];
        let forward = ring(&names);
        let mut reversed_names = names;
        reversed_names.reverse();
        let reversed = ring(&reversed_names);
        for (key, owner) in pinned {
            for ring in [&forward, &reversed] {
                let got = ring.shards[ring.shard_for(key.as_bytes())].name.as_str();
                assert_eq!(got, owner, "key {key:?}");
            }
        }
    }

    #[test]
    fn bad_name_lists_are_refused() {
        assert_eq!(
            Ring::new(Vec::<String>::new()).unwrap_err(),
            RingError::Empty
        );
        assert_eq!(
            Ring::new(["a", "", "b"]).unwrap_err(),
            RingError::EmptyName { index: 1 }
        );
        assert_eq!(
            Ring::new(["a", "b", "a"]).unwrap_err(),
            RingError::Duplicate { name: "a".into() }
        );
        assert!(!RingError::Empty.is_transient());

        let one = Ring::new(["only"]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(one.len(), 1);
        assert!(!one.is_empty());
        assert_eq!(one.shard_for(b"anything"), 0);
        assert_eq!(one.names().collect::<Vec<_>>(), ["only"]);
    }
}
