//! Where new mail goes: the placement policies, sans-IO.
//!
//! Placement is split as in the paper. The user's bucket manager names the *candidates* (and
//! remembers them as the user's fragment nodes); the node that received the message picks the
//! replicas among them with its own load table, per delivery, without asking again.
//!
//! - `dynamic` (the default): candidates are the live nodes already holding a fragment of the
//!   user's mailbox; below the *spread*, random live nodes are added. The least loaded
//!   candidates take the message, ties broken at random. A candidate that is full or
//!   overloaded is avoided; only when every candidate is down, full or overloaded does the
//!   manager add nodes beyond the spread (the asker names the ones to avoid).
//! - `static`: each user has fixed nodes (rendezvous hashing of the user over the live nodes),
//!   like a conventional mail server's fixed mailbox home; loads are ignored.
//! - `random`: any live nodes, chosen at random per message; no affinity at all.

use rand::seq::SliceRandom;
use rand::Rng;

use crate::membership::NodeId;

/// How new mail is placed (`--placement`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlacementPolicy {
    Static,
    Random,
    /// Least loaded among the user's fragment nodes, topped up at random to `spread` nodes.
    Dynamic {
        spread: usize,
    },
}

impl Default for PlacementPolicy {
    fn default() -> Self {
        Self::Dynamic { spread: 2 }
    }
}

impl std::fmt::Display for PlacementPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Static => write!(f, "static"),
            Self::Random => write!(f, "random"),
            Self::Dynamic { spread } => write!(f, "dynamic (spread {spread})"),
        }
    }
}

/// A candidate's state as the choosing node knows it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CandidateLoad {
    pub load: u32,
    pub full: bool,
}

/// The candidates for a new message of a user, best first (see the module comment).
/// `live`: the members; `holders`: nodes known to hold a fragment of the user's mailbox;
/// `avoid`: nodes the asker found full or overloaded.
pub fn candidates(
    policy: PlacementPolicy,
    user_key: u64,
    live: &[NodeId],
    holders: &[NodeId],
    replicas: usize,
    avoid: &[NodeId],
    rng: &mut impl Rng,
) -> Vec<NodeId> {
    let replicas = replicas.clamp(1, live.len().max(1));
    let (usable, avoided): (Vec<NodeId>, Vec<NodeId>) =
        live.iter().partition(|n| !avoid.contains(n));
    let mut chosen: Vec<NodeId> = match policy {
        PlacementPolicy::Static => {
            let mut ranked = usable;
            ranked.sort_by_key(|&n| std::cmp::Reverse(rendezvous(user_key, n)));
            ranked.truncate(replicas);
            ranked
        }
        PlacementPolicy::Random => usable,
        PlacementPolicy::Dynamic { spread } => {
            let want = spread.max(replicas);
            let mut chosen: Vec<NodeId> = holders
                .iter()
                .copied()
                .filter(|n| usable.contains(n))
                .collect();
            let mut others: Vec<NodeId> = usable
                .iter()
                .copied()
                .filter(|n| !chosen.contains(n))
                .collect();
            others.shuffle(rng);
            while chosen.len() < want {
                let Some(node) = others.pop() else { break };
                chosen.push(node);
            }
            chosen
        }
    };
    // Too few usable nodes: the avoided ones after all (fragment holders first), rather than
    // fewer copies than asked for.
    let mut fallback: Vec<NodeId> = avoided;
    fallback.sort_by_key(|n| !holders.contains(n));
    for node in fallback {
        if chosen.len() >= replicas {
            break;
        }
        chosen.push(node);
    }
    chosen
}

/// What the node placing a message makes of its candidates.
#[derive(Debug, PartialEq, Eq)]
pub enum Choice {
    /// These nodes take the message (the first coordinates).
    Nodes(Vec<NodeId>),
    /// Fewer than the replicas wanted are usable: ask the manager for candidates without these.
    Avoid(Vec<NodeId>),
}

/// Picks `replicas` of `candidates` for one message. `load_of` gives each candidate's load;
/// a load at or over `overload` counts as overloaded. `may_ask`: whether the manager may still
/// be asked for other candidates (otherwise the least loaded are taken, whatever their state).
pub fn choose(
    policy: PlacementPolicy,
    candidates: &[NodeId],
    replicas: usize,
    load_of: impl Fn(NodeId) -> CandidateLoad,
    overload: u32,
    may_ask: bool,
    rng: &mut impl Rng,
) -> Choice {
    let replicas = replicas.clamp(1, candidates.len().max(1));
    match policy {
        PlacementPolicy::Static => {
            Choice::Nodes(candidates.iter().copied().take(replicas).collect())
        }
        PlacementPolicy::Random => {
            Choice::Nodes(candidates.choose_multiple(rng, replicas).copied().collect())
        }
        PlacementPolicy::Dynamic { .. } => {
            // Shuffled first, so the stable sort by load breaks ties at random.
            let mut ranked: Vec<(NodeId, CandidateLoad)> =
                candidates.iter().map(|&n| (n, load_of(n))).collect();
            ranked.shuffle(rng);
            let usable = |l: &CandidateLoad| !l.full && l.load < overload;
            ranked.sort_by_key(|(_, l)| (!usable(l), l.full, l.load));
            let good = ranked.iter().filter(|(_, l)| usable(l)).count();
            if good < replicas && may_ask {
                return Choice::Avoid(
                    ranked
                        .iter()
                        .filter(|(_, l)| !usable(l))
                        .map(|(n, _)| *n)
                        .collect(),
                );
            }
            Choice::Nodes(ranked.into_iter().take(replicas).map(|(n, _)| n).collect())
        }
    }
}

/// The rendezvous (highest random weight) score of a node for a user: the static home of a
/// user is the live node with the highest score, so it moves only when that node leaves.
fn rendezvous(user_key: u64, node: NodeId) -> u64 {
    let mut x = user_key ^ node.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    // splitmix64's finaliser.
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use std::collections::HashMap;

    const LIVE: [NodeId; 4] = [1, 2, 3, 4];

    fn rng() -> StdRng {
        StdRng::seed_from_u64(7)
    }

    #[test]
    fn static_gives_each_user_fixed_nodes_spread_evenly() {
        let mut homes: HashMap<NodeId, usize> = HashMap::new();
        for user in 0..4000u64 {
            let key = user.wrapping_mul(0x2545_f491_4f6c_dd1d);
            let first = candidates(PlacementPolicy::Static, key, &LIVE, &[], 2, &[], &mut rng());
            let again = candidates(
                PlacementPolicy::Static,
                key,
                &LIVE,
                &[3],
                2,
                &[],
                &mut rng(),
            );
            assert_eq!(first, again, "holders and randomness do not matter");
            assert_eq!(first.len(), 2);
            *homes.entry(first[0]).or_default() += 1;
            // A node leaving moves only the users it was home to.
            let without_4 = candidates(
                PlacementPolicy::Static,
                key,
                &LIVE[..3],
                &[],
                1,
                &[],
                &mut rng(),
            );
            if first[0] != 4 {
                assert_eq!(without_4[0], first[0]);
            }
        }
        for node in LIVE {
            let share = homes[&node];
            assert!((800..1200).contains(&share), "node {node}: {share} of 4000");
        }
    }

    #[test]
    fn dynamic_keeps_to_the_holders_and_tops_up_to_the_spread() {
        let policy = PlacementPolicy::Dynamic { spread: 2 };
        // No holder: two random nodes.
        let fresh = candidates(policy, 9, &LIVE, &[], 1, &[], &mut rng());
        assert_eq!(fresh.len(), 2);
        // One holder: it, plus one random other.
        let one = candidates(policy, 9, &LIVE, &[3], 1, &[], &mut rng());
        assert_eq!(one.len(), 2);
        assert_eq!(one[0], 3);
        // At the spread: the holders only, even if more nodes exist.
        assert_eq!(
            candidates(policy, 9, &LIVE, &[3, 1], 1, &[], &mut rng()),
            vec![3, 1]
        );
        // A dead holder is not a candidate.
        let dead = candidates(policy, 9, &LIVE, &[3, 9], 1, &[], &mut rng());
        assert_eq!(dead.len(), 2);
        assert!(!dead.contains(&9));
        // Avoided holders: others instead, beyond the spread.
        let beyond = candidates(policy, 9, &LIVE, &[3, 1], 1, &[3, 1], &mut rng());
        assert_eq!(beyond.len(), 2);
        assert!(beyond.iter().all(|n| [2, 4].contains(n)));
        // Every node avoided: still enough candidates for the replicas.
        let all = candidates(policy, 9, &LIVE, &[3], 2, &LIVE, &mut rng());
        assert_eq!(all.len(), 2);
        assert_eq!(all[0], 3);
        // More replicas than the spread: as many candidates as replicas.
        assert_eq!(
            candidates(policy, 9, &LIVE, &[3], 3, &[], &mut rng()).len(),
            3
        );
    }

    #[test]
    fn random_offers_every_live_node() {
        let mut all = candidates(PlacementPolicy::Random, 9, &LIVE, &[1], 1, &[], &mut rng());
        all.sort_unstable();
        assert_eq!(all, LIVE.to_vec());
        assert_eq!(
            candidates(PlacementPolicy::Random, 9, &LIVE, &[], 1, &[2], &mut rng()).len(),
            3
        );
    }

    fn loads(table: &[(NodeId, u32, bool)]) -> impl Fn(NodeId) -> CandidateLoad + '_ {
        move |n| {
            table
                .iter()
                .find(|(m, ..)| *m == n)
                .map(|&(_, load, full)| CandidateLoad { load, full })
                .unwrap_or_default()
        }
    }

    #[test]
    fn dynamic_chooses_the_least_loaded_and_breaks_ties_at_random() {
        let policy = PlacementPolicy::Dynamic { spread: 2 };
        let table = [(1, 9, false), (2, 3, false), (3, 3, false)];
        let mut seen = HashMap::new();
        let mut rng = rng();
        for _ in 0..200 {
            match choose(policy, &[1, 2, 3], 1, loads(&table), 100, true, &mut rng) {
                Choice::Nodes(nodes) => *seen.entry(nodes[0]).or_insert(0) += 1,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(seen.get(&1), None);
        assert!(seen[&2] > 50 && seen[&3] > 50, "{seen:?}");
        assert_eq!(
            choose(
                policy,
                &[1, 2, 3],
                2,
                loads(&[(1, 0, false), (2, 5, false), (3, 1, false)]),
                100,
                true,
                &mut rng
            ),
            Choice::Nodes(vec![1, 3])
        );
    }

    #[test]
    fn dynamic_avoids_full_and_overloaded_candidates_until_none_is_left() {
        let policy = PlacementPolicy::Dynamic { spread: 2 };
        let table = [(1, 0, true), (2, 500, false), (3, 7, false)];
        // One usable candidate is enough for one replica, even if a full one is less loaded.
        assert_eq!(
            choose(policy, &[1, 2, 3], 1, loads(&table), 100, true, &mut rng()),
            Choice::Nodes(vec![3])
        );
        // None usable: ask for others, naming the ones to avoid.
        match choose(policy, &[1, 2], 1, loads(&table), 100, true, &mut rng()) {
            Choice::Avoid(mut nodes) => {
                nodes.sort_unstable();
                assert_eq!(nodes, vec![1, 2]);
            }
            other => panic!("{other:?}"),
        }
        // Nobody else to ask: an overloaded node rather than a full one.
        assert_eq!(
            choose(policy, &[1, 2], 1, loads(&table), 100, false, &mut rng()),
            Choice::Nodes(vec![2])
        );
    }

    #[test]
    fn static_and_random_ignore_loads() {
        let table = [(1, 1000, true)];
        assert_eq!(
            choose(
                PlacementPolicy::Static,
                &[1, 2],
                1,
                loads(&table),
                10,
                true,
                &mut rng()
            ),
            Choice::Nodes(vec![1])
        );
        match choose(
            PlacementPolicy::Random,
            &[1, 2, 3],
            2,
            loads(&table),
            10,
            true,
            &mut rng(),
        ) {
            Choice::Nodes(nodes) => assert_eq!(nodes.len(), 2),
            other => panic!("{other:?}"),
        }
    }
}
