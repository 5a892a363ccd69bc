//! The user map: a fixed number of buckets, each managed by one live node.
//!
//! A user's bucket is a hash of the user name. A membership commit reassigns buckets with as
//! few moves as possible: buckets of nodes that left, and what nodes above their fair share give
//! up, go to nodes below theirs. Each bucket remembers the epoch it last moved.

use serde::{Deserialize, Serialize};

use crate::membership::{Epoch, NodeId};

/// Buckets in a new cluster (fixed for the cluster's life).
pub const BUCKETS_DEFAULT: usize = 1024;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserMap {
    /// Manager of each bucket.
    pub managers: Vec<NodeId>,
    /// The epoch in which each bucket last changed manager.
    pub moved: Vec<Epoch>,
}

/// The bucket of a user name (already canonical: lower-case).
pub fn bucket_of(user: &str, buckets: usize) -> usize {
    // `max(1)`: a map is never empty once installed (views are checked), and a division by
    // zero must not be one mistake away.
    (xxhash_rust::xxh3::xxh3_64_with_seed(user.as_bytes(), 0x7573_6572_6d61_7021)
        % buckets.max(1) as u64) as usize
}

impl UserMap {
    /// Every bucket managed by `node` (a one-node group).
    pub fn single(node: NodeId, buckets: usize, epoch: Epoch) -> Self {
        Self {
            managers: vec![node; buckets.max(1)],
            moved: vec![epoch; buckets.max(1)],
        }
    }

    pub fn buckets(&self) -> usize {
        self.managers.len()
    }

    /// The user's bucket manager (0, no node, in an empty map, which views never have).
    pub fn manager_of(&self, user: &str) -> NodeId {
        self.managers
            .get(bucket_of(user, self.managers.len()))
            .copied()
            .unwrap_or(0)
    }

    /// The map for `members` (sorted, non-empty), moving as few buckets as possible.
    pub fn reassign(&self, members: &[NodeId], epoch: Epoch) -> Self {
        let mut map = self.clone();
        if members.is_empty() {
            return map;
        }
        let buckets = map.managers.len();
        let base = buckets / members.len();
        let extra = buckets % members.len();
        // Nodes that hold the most keep the extra bucket, so fewer buckets move.
        let mut held: Vec<(usize, NodeId)> = members
            .iter()
            .map(|&m| (map.managers.iter().filter(|&&o| o == m).count(), m))
            .collect();
        held.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        let quota = |node: NodeId| -> usize {
            let rank = held.iter().position(|&(_, m)| m == node).unwrap_or(0);
            base + usize::from(rank < extra)
        };
        let mut count: std::collections::HashMap<NodeId, usize> =
            members.iter().map(|&m| (m, 0)).collect();
        let mut free = Vec::new();
        for (bucket, owner) in map.managers.iter().enumerate() {
            match count.get_mut(owner) {
                Some(c) if *c < quota(*owner) => *c += 1,
                _ => free.push(bucket),
            }
        }
        let mut free = free.into_iter();
        for &member in members {
            while count[&member] < quota(member) {
                let Some(bucket) = free.next() else { break };
                map.managers[bucket] = member;
                map.moved[bucket] = epoch;
                *count.get_mut(&member).expect("member counted") += 1;
            }
        }
        map
    }

    /// How many buckets each node manages.
    pub fn summary(&self) -> std::collections::BTreeMap<NodeId, usize> {
        let mut summary = std::collections::BTreeMap::new();
        for &m in &self.managers {
            *summary.entry(m).or_default() += 1;
        }
        summary
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epoch(n: u64) -> Epoch {
        Epoch {
            clock: n,
            coordinator: 1,
        }
    }

    #[test]
    fn newcomers_get_a_fair_share_and_only_that_moves() {
        let map = UserMap::single(1, 1024, epoch(1));
        let two = map.reassign(&[1, 2], epoch(2));
        assert_eq!(two.summary()[&1], 512);
        assert_eq!(two.summary()[&2], 512);
        let three = two.reassign(&[1, 2, 3], epoch(3));
        let moved = (0..1024)
            .filter(|&b| three.managers[b] != two.managers[b])
            .count();
        assert_eq!(moved, 341);
        for b in 0..1024 {
            if three.managers[b] != two.managers[b] {
                assert_eq!(three.managers[b], 3);
                assert_eq!(three.moved[b], epoch(3));
            }
        }
    }

    #[test]
    fn departed_nodes_buckets_are_shared_and_no_other_moves() {
        let three = UserMap::single(1, 1024, epoch(1)).reassign(&[1, 2, 3], epoch(2));
        let two = three.reassign(&[1, 3], epoch(3));
        for b in 0..1024 {
            assert_ne!(two.managers[b], 2);
            if three.managers[b] != 2 {
                assert_eq!(two.managers[b], three.managers[b]);
            }
        }
        let summary = two.summary();
        assert_eq!(summary[&1] + summary[&3], 1024);
        assert!(summary[&1].abs_diff(summary[&3]) <= 1);
    }

    #[test]
    fn reassigning_the_same_members_moves_nothing() {
        let map = UserMap::single(5, 100, epoch(1)).reassign(&[2, 5, 9], epoch(2));
        assert_eq!(map.reassign(&[2, 5, 9], epoch(3)), map);
    }
}
