//! Which copies a node makes again once a node is declared dead (sans-IO): the plan for one
//! replicated message or tombstone, from its replica set and what this node knows of the
//! cluster.
//!
//! A copy is *under-replicated* when fewer nodes of its replica set than the target
//! (`--replicas`, capped by the live members) are not dead. Of its holders, the first in the
//! set's order that is live makes it again — the coordinator while it lives, so a healed
//! update is always pushed by a node that drives it — on the least loaded live nodes not in
//! the set and not full (ties broken by a hash of the message, so that one node's heals
//! spread). The new replicas join the set; dead nodes stay in it, so that a tombstone still
//! reaches a dead node that returns, unless the set would be too large for a record, when the
//! dead nodes leave it first.

use crate::membership::NodeId;
use porcupine_types::REPLICAS_MAX;

/// What this node knows when it plans.
#[derive(Clone, Copy, Debug)]
pub struct Cluster<'a> {
    pub me: NodeId,
    /// The members of the installed view.
    pub live: &'a [NodeId],
    /// Nodes declared dead.
    pub dead: &'a [NodeId],
    /// Copies every message should have (`--replicas`).
    pub target: usize,
}

/// A live node that could take a copy, as this node knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub node: NodeId,
    pub load: u32,
    pub full: bool,
}

/// What to do with one copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Enough holders that are not dead (or not replicated at all).
    Healthy,
    /// Under-replicated, and another holder makes it again.
    OtherHolder,
    /// Under-replicated, and no live node outside its set can take it now.
    NoRoom,
    /// Make it again on `add`; its replica set becomes `replicas`.
    Heal {
        add: Vec<NodeId>,
        replicas: Vec<NodeId>,
    },
}

impl Plan {
    /// Whether the copy has fewer holders than it should.
    pub fn under_replicated(&self) -> bool {
        !matches!(self, Plan::Healthy)
    }
}

/// The plan for a copy whose replica set is `replicas`; `candidates` are the live nodes with
/// their loads (others are ignored), `tie` a hash of the message.
pub fn plan(replicas: &[NodeId], cluster: Cluster<'_>, candidates: &[Candidate], tie: u64) -> Plan {
    if replicas.len() < 2 || !replicas.iter().any(|n| cluster.dead.contains(n)) {
        return Plan::Healthy;
    }
    let holders = replicas
        .iter()
        .filter(|n| !cluster.dead.contains(n))
        .count();
    let target = cluster.target.min(cluster.live.len()).min(REPLICAS_MAX);
    if holders >= target {
        return Plan::Healthy;
    }
    let healer = replicas
        .iter()
        .find(|n| !cluster.dead.contains(n) && cluster.live.contains(n));
    if healer != Some(&cluster.me) {
        return match healer {
            Some(_) => Plan::OtherHolder,
            None => Plan::NoRoom,
        };
    }
    let mut choices: Vec<Candidate> = candidates
        .iter()
        .copied()
        .filter(|c| {
            cluster.live.contains(&c.node)
                && !replicas.contains(&c.node)
                && !cluster.dead.contains(&c.node)
                && !c.full
        })
        .collect();
    choices.sort_by_key(|c| (c.load, mix(tie ^ c.node)));
    choices.dedup_by_key(|c| c.node);
    let add: Vec<NodeId> = choices
        .iter()
        .take(target - holders)
        .map(|c| c.node)
        .collect();
    if add.is_empty() {
        return Plan::NoRoom;
    }
    let mut set: Vec<NodeId> = replicas.to_vec();
    set.extend(add.iter().copied());
    while set.len() > REPLICAS_MAX {
        match set.iter().rposition(|n| cluster.dead.contains(n)) {
            Some(at) => {
                set.remove(at);
            }
            None => break,
        }
    }
    set.truncate(REPLICAS_MAX);
    let add = add.into_iter().filter(|n| set.contains(n)).collect();
    Plan::Heal { add, replicas: set }
}

/// A cheap 64-bit mix (splitmix64's finaliser), so that ties fall differently per message.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidates(loads: &[(NodeId, u32)]) -> Vec<Candidate> {
        loads
            .iter()
            .map(|&(node, load)| Candidate {
                node,
                load,
                full: false,
            })
            .collect()
    }

    #[test]
    fn the_first_live_holder_heals_on_the_least_loaded_node() {
        let live = [1, 2, 3, 5];
        let loads = candidates(&[(1, 0), (2, 0), (3, 9), (5, 1)]);
        let cluster = |me| Cluster {
            me,
            live: &live,
            dead: &[4],
            target: 2,
        };
        // {4, 2}: 4 is dead, 2 is the first live holder.
        assert_eq!(
            plan(&[4, 2], cluster(2), &loads, 7),
            Plan::Heal {
                add: vec![1],
                replicas: vec![4, 2, 1]
            }
        );
        assert_eq!(plan(&[4, 2], cluster(1), &loads, 7), Plan::OtherHolder);
        // Untouched by the death, or holding enough: nothing to do.
        assert_eq!(plan(&[1, 2], cluster(1), &loads, 7), Plan::Healthy);
        assert_eq!(plan(&[4, 2, 1], cluster(2), &loads, 7), Plan::Healthy);
        assert_eq!(plan(&[2], cluster(2), &loads, 7), Plan::Healthy);
        // A full node takes nothing; with no other node, there is no room.
        let full = [Candidate {
            node: 1,
            load: 0,
            full: true,
        }];
        let two = [1, 2];
        let squeezed = Cluster {
            me: 2,
            live: &two,
            dead: &[4],
            target: 2,
        };
        assert_eq!(plan(&[4, 2], squeezed, &full, 7), Plan::NoRoom);
        // Every holder dead: nobody can make it again.
        let both_dead = Cluster {
            me: 1,
            live: &live,
            dead: &[4, 6],
            target: 2,
        };
        assert_eq!(plan(&[4, 6], both_dead, &loads, 7), Plan::NoRoom);
    }

    #[test]
    fn ties_spread_and_a_full_set_drops_its_dead_first() {
        let live = [1, 2, 3, 5, 6];
        let loads = candidates(&[(3, 0), (5, 0), (6, 0)]);
        let cluster = Cluster {
            me: 1,
            live: &live,
            dead: &[4, 7],
            target: 3,
        };
        let mut chosen = std::collections::BTreeSet::new();
        for tie in 0..64 {
            if let Plan::Heal { add, .. } = plan(&[1, 2, 4], cluster, &loads, tie) {
                chosen.extend(add);
            }
        }
        assert_eq!(chosen.len(), 3, "ties fall on every equal node");
        // {1, 4, 7, 2}: two dead, one more needed; the set keeps 4 and drops 7.
        let Plan::Heal { add, replicas } = plan(&[1, 4, 7, 2], cluster, &loads, 1) else {
            panic!("expected a heal")
        };
        assert_eq!(add.len(), 1);
        assert_eq!(replicas.len(), REPLICAS_MAX);
        assert_eq!(&replicas[..3], &[1, 4, 2]);
        // The target is capped by the live members.
        let few = [1, 2];
        let small = Cluster {
            me: 1,
            live: &few,
            dead: &[4],
            target: 3,
        };
        assert_eq!(plan(&[1, 2, 4], small, &loads, 1), Plan::Healthy);
    }
}
