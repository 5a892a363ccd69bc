//! Anti-entropy between two replica holders (sans-IO): compact digests of what each holds for
//! the other, the buckets where they differ, and which of this node's copies the other lacks.
//!
//! What node A holds *for* node P: every copy on A whose replica set names P, and every
//! tombstone on A still pending for P. Both sides hash the same facts — (user, message id,
//! HLC, put or tombstone) — into [`BUCKETS`] buckets by message, and a bucket's digest is the
//! XOR of its items' hashes with their count, so two equal sets have equal digests whatever
//! order they were built in, and a digest costs one pass over the in-memory index, never over
//! the log. Where digests differ, the holders exchange that bucket's items, and A pushes to P
//! each copy that P has neither as a copy nor as a pending tombstone.
//!
//! Why that is safe (never shows a deleted message again): a copy on A names P, so every
//! tombstone of it made on P is pending on P until A has acknowledged it, and A deletes its
//! copy before acknowledging. A copy on A that P lacks with no pending tombstone on P is one P
//! never stored (a lost push, a record lost to damage), or one P deleted so long ago that A
//! must have deleted it too — which A's own listing, taken after P's, rules out.
//!
//! Each side initiates rounds with its peers in turn, so each direction is repaired by the
//! side that holds the copy.

use serde::{Deserialize, Serialize};

/// Buckets a digest has: one item in 256 is listed when one bucket differs.
pub const BUCKETS: usize = 256;
/// Buckets whose items are exchanged in one round at most (the rest wait for the next).
pub const BUCKETS_PER_ROUND_MAX: usize = 16;
/// Items one list answer carries at most.
pub const ITEMS_PER_ANSWER_MAX: usize = 20_000;

/// One fact a holder has for the other.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Item {
    pub user: String,
    pub id: u128,
    pub hlc: u64,
    pub tombstone: bool,
}

/// The bucket of message `id` of the user whose key is `user_key`.
pub fn bucket_of(user_key: u64, id: u128) -> u16 {
    (mix(user_key ^ (id as u64) ^ ((id >> 64) as u64)) % BUCKETS as u64) as u16
}

fn item_hash(user_key: u64, id: u128, hlc: u64, tombstone: bool) -> u64 {
    let mut h = mix(user_key);
    h = mix(h ^ id as u64);
    h = mix(h ^ (id >> 64) as u64);
    h = mix(h ^ hlc);
    mix(h ^ u64::from(tombstone))
}

/// Per bucket: the XOR of the items' hashes and their count.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    pub buckets: Vec<(u64, u32)>,
}

impl Default for Digest {
    fn default() -> Self {
        Self {
            buckets: vec![(0, 0); BUCKETS],
        }
    }
}

impl Digest {
    /// Adds one item (`user_key`: the user's key, [`porcupine_types::user_key`]).
    pub fn add(&mut self, user_key: u64, id: u128, hlc: u64, tombstone: bool) {
        let bucket = usize::from(bucket_of(user_key, id));
        if let Some(slot) = self.buckets.get_mut(bucket) {
            slot.0 ^= item_hash(user_key, id, hlc, tombstone);
            slot.1 = slot.1.saturating_add(1);
        }
    }

    /// Adds a digest of other items (another core's shards).
    pub fn merge(&mut self, other: &Digest) {
        for (slot, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
            slot.0 ^= theirs.0;
            slot.1 = slot.1.saturating_add(theirs.1);
        }
    }

    /// Items in the digest.
    pub fn items(&self) -> u64 {
        self.buckets.iter().map(|b| u64::from(b.1)).sum()
    }

    /// Whether the digest has the shape of one (a peer's may not).
    pub fn well_formed(&self) -> bool {
        self.buckets.len() == BUCKETS
    }
}

/// The buckets where the two digests differ, at most `max`, starting after `from` (so that
/// rounds that cannot take every difference go on where the last stopped).
pub fn differing(mine: &Digest, theirs: &Digest, from: u16, max: usize) -> Vec<u16> {
    if !mine.well_formed() || !theirs.well_formed() {
        return Vec::new();
    }
    (0..BUCKETS)
        .map(|k| ((usize::from(from) + 1 + k) % BUCKETS) as u16)
        .filter(|&b| mine.buckets[usize::from(b)] != theirs.buckets[usize::from(b)])
        .take(max)
        .collect()
}

/// This node's copies (not its tombstones) that the other has neither as a copy nor as a
/// tombstone, whatever its stamp.
pub fn missing_there<'a>(mine: &'a [Item], theirs: &[Item]) -> Vec<&'a Item> {
    let known: std::collections::HashSet<(&str, u128)> =
        theirs.iter().map(|i| (i.user.as_str(), i.id)).collect();
    mine.iter()
        .filter(|i| !i.tombstone && !known.contains(&(i.user.as_str(), i.id)))
        .collect()
}

/// splitmix64's finaliser.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn item(user: &str, id: u128, hlc: u64, tombstone: bool) -> Item {
        Item {
            user: user.into(),
            id,
            hlc,
            tombstone,
        }
    }

    fn digest(items: &BTreeSet<Item>) -> Digest {
        let mut d = Digest::default();
        for i in items {
            d.add(porcupine_types::user_key(&i.user), i.id, i.hlc, i.tombstone);
        }
        d
    }

    fn bucket(i: &Item) -> u16 {
        bucket_of(porcupine_types::user_key(&i.user), i.id)
    }

    #[test]
    fn what_is_missing_there_is_found_and_tombstones_are_never_pushed() {
        let mine = vec![
            item("a", 1, 10, false),
            item("a", 2, 10, false),
            item("b", 1, 10, true),
        ];
        let theirs = vec![item("a", 2, 11, true)];
        let missing = missing_there(&mine, &theirs);
        assert_eq!(
            missing,
            vec![&mine[0]],
            "a/2 is deleted there, b/1 a tombstone here"
        );
    }

    #[test]
    fn a_malformed_digest_differs_nowhere_and_rounds_resume() {
        let short = Digest {
            buckets: vec![(1, 1)],
        };
        assert!(differing(&Digest::default(), &short, 0, 16).is_empty());
        let mut a = Digest::default();
        for b in [3u16, 7, 200] {
            a.buckets[usize::from(b)] = (1, 1);
        }
        let none = Digest::default();
        assert_eq!(differing(&a, &none, 0, 2), vec![3, 7]);
        assert_eq!(differing(&a, &none, 7, 2), vec![200, 3]);
    }

    proptest! {
        #[test]
        fn digests_differ_exactly_where_the_sets_do(
            common in proptest::collection::btree_set(("[a-c]", 0u128..50, 0u64..3, any::<bool>()), 0..60),
            only_mine in proptest::collection::btree_set(("[d-e]", 0u128..50, 0u64..3, any::<bool>()), 0..5),
            merged_at in 0usize..60,
        ) {
            let to_item = |(u, id, hlc, t): (String, u128, u64, bool)| item(&u, id, hlc, t);
            let common: BTreeSet<Item> = common.into_iter().map(to_item).collect();
            let only_mine: BTreeSet<Item> = only_mine.into_iter().map(to_item).collect();
            let mine: BTreeSet<Item> = common.union(&only_mine).cloned().collect();
            // Built in two parts and merged (two cores), the digest is the same.
            let first: BTreeSet<Item> = mine.iter().take(merged_at).cloned().collect();
            let second: BTreeSet<Item> = mine.iter().skip(merged_at).cloned().collect();
            let mut merged = digest(&first);
            merged.merge(&digest(&second));
            prop_assert_eq!(&merged, &digest(&mine));
            let diff: BTreeSet<u16> = differing(&digest(&mine), &digest(&common), 0, BUCKETS)
                .into_iter().collect();
            let expected: BTreeSet<u16> = only_mine.iter().map(bucket).collect();
            prop_assert_eq!(diff, expected);
            let mine: Vec<Item> = mine.into_iter().collect();
            let common: Vec<Item> = common.into_iter().collect();
            let missing: BTreeSet<&Item> = missing_there(&mine, &common).into_iter().collect();
            let expected: BTreeSet<&Item> = only_mine.iter().filter(|i| !i.tombstone).collect();
            prop_assert_eq!(missing, expected);
        }
    }
}
