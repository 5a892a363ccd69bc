//! A bucket manager's soft state: the mail map (user → nodes holding a fragment of the user's
//! mailbox) and the maildrop locks of POP sessions, for the buckets this node manages.
//!
//! Nothing here is stored: after every membership commit the map starts empty and each member
//! reports the users it holds fragments for, from its shards' in-memory indexes. Until every
//! member of the epoch has reported, lookups answer "try again". Sans-IO: requests in, replies
//! out.

use std::collections::{HashMap, HashSet};

use crate::membership::{Epoch, NodeId, View};
use crate::wire::{Body, Failure};

#[derive(Debug, Default)]
pub struct Manager {
    me: NodeId,
    view: Option<View>,
    mail_map: HashMap<String, Vec<NodeId>>,
    reported: HashSet<NodeId>,
    locks: HashMap<String, (u64, u64)>,
    /// Round-robin tie break among equally loaded nodes.
    turn: usize,
}

impl Manager {
    pub fn new(me: NodeId) -> Self {
        Self {
            me,
            ..Self::default()
        }
    }

    /// A new membership: the map and the maildrop locks are rebuilt from the members' reports
    /// (so a lock follows its bucket to a new manager, and locks of departed nodes are gone).
    /// Until every member has reported, no lock is granted.
    pub fn install(&mut self, view: &View) {
        self.mail_map.clear();
        self.reported.clear();
        self.locks.clear();
        self.view = Some(view.clone());
    }

    pub fn epoch(&self) -> Option<Epoch> {
        self.view.as_ref().map(|v| v.epoch)
    }

    /// Whether every member has reported its fragments for this epoch.
    pub fn complete(&self) -> bool {
        self.view
            .as_ref()
            .is_some_and(|v| v.members.iter().all(|m| self.reported.contains(&m.id)))
    }

    fn manages(&self, user: &str) -> bool {
        self.view
            .as_ref()
            .is_some_and(|v| v.map.manager_of(user) == self.me)
    }

    fn live_fragments(&self, user: &str) -> Vec<NodeId> {
        let Some(view) = &self.view else {
            return Vec::new();
        };
        self.mail_map
            .get(user)
            .map(|nodes| {
                nodes
                    .iter()
                    .copied()
                    .filter(|n| view.member(*n).is_some())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Answers one request; `load_of` gives the last load heard from a node.
    pub fn handle(&mut self, body: Body, load_of: impl Fn(NodeId) -> u32) -> Body {
        match body {
            Body::Fragments {
                epoch,
                node,
                users,
                locks,
            } => {
                match self.epoch() {
                    Some(mine) if mine == epoch => {
                        for (user, owner) in locks {
                            if self.manages(&user) {
                                self.locks.insert(user, owner);
                            }
                        }
                        for user in users {
                            if self.manages(&user) {
                                let nodes = self.mail_map.entry(user).or_default();
                                if !nodes.contains(&node) {
                                    nodes.push(node);
                                }
                            }
                        }
                        self.reported.insert(node);
                        Body::Done
                    }
                    // Not installed here yet: the sender retries.
                    Some(mine) if mine < epoch => Body::Error(Failure::TryAgain),
                    // A report for an old epoch is moot.
                    _ => Body::Done,
                }
            }
            Body::Place { user, replicas } => {
                if !self.manages(&user) || !self.complete() {
                    return Body::Error(Failure::TryAgain);
                }
                let nodes = self.place(&user, usize::from(replicas.max(1)), load_of);
                if nodes.is_empty() {
                    return Body::Error(Failure::TryAgain);
                }
                let known = self.mail_map.entry(user).or_default();
                for node in &nodes {
                    if !known.contains(node) {
                        known.push(*node);
                    }
                }
                Body::Placed { nodes }
            }
            Body::Noted { user, node, epoch } => {
                if self.epoch() != Some(epoch) || !self.manages(&user) {
                    // The noting node and this one disagree on the membership: it asks again
                    // with its newer view, or this one installs its own first.
                    return Body::Error(Failure::TryAgain);
                }
                let nodes = self.mail_map.entry(user).or_default();
                if !nodes.contains(&node) {
                    nodes.push(node);
                }
                Body::Done
            }
            Body::Lock { user, owner } => {
                if !self.manages(&user) || !self.complete() {
                    return Body::Error(Failure::TryAgain);
                }
                match self.locks.get(&user) {
                    Some(held) if *held != owner => Body::Error(Failure::InUse),
                    _ => {
                        let fragments = self.live_fragments(&user);
                        self.locks.insert(user, owner);
                        Body::Locked {
                            fragments,
                            epoch: self.epoch().unwrap_or_default(),
                        }
                    }
                }
            }
            Body::Unlock { user, owner } => {
                if self.locks.get(&user) == Some(&owner) {
                    self.locks.remove(&user);
                }
                Body::Done
            }
            _ => Body::Error(Failure::Failed),
        }
    }

    /// The nodes a new message of `user` goes to, the coordinator first: the nodes already
    /// holding a fragment of the user's mailbox, least loaded first (affinity), then the least
    /// loaded other live nodes, until there are `replicas` (or every live node).
    fn place(
        &mut self,
        user: &str,
        replicas: usize,
        load_of: impl Fn(NodeId) -> u32,
    ) -> Vec<NodeId> {
        let Some(view) = &self.view else {
            return Vec::new();
        };
        let holders = self.live_fragments(user);
        let others: Vec<NodeId> = view
            .members
            .iter()
            .map(|m| m.id)
            .filter(|id| !holders.contains(id))
            .collect();
        let mut chosen = Vec::with_capacity(replicas);
        for mut group in [holders, others] {
            while chosen.len() < replicas {
                let Some(node) = self.least_loaded(&group, &load_of) else {
                    break;
                };
                group.retain(|n| *n != node);
                chosen.push(node);
            }
        }
        chosen
    }

    fn least_loaded(
        &mut self,
        candidates: &[NodeId],
        load_of: &impl Fn(NodeId) -> u32,
    ) -> Option<NodeId> {
        let lowest = candidates.iter().map(|&n| load_of(n)).min()?;
        let tied: Vec<NodeId> = candidates
            .iter()
            .copied()
            .filter(|&n| load_of(n) == lowest)
            .collect();
        self.turn = self.turn.wrapping_add(1);
        tied.get(self.turn % tied.len()).copied()
    }

    /// Users in the mail map (for status).
    pub fn users(&self) -> usize {
        self.mail_map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::Member;
    use crate::usermap::UserMap;

    fn view(members: &[u64]) -> View {
        let epoch = Epoch {
            clock: 10,
            coordinator: members[0],
        };
        View {
            epoch,
            members: members
                .iter()
                .map(|&id| Member {
                    id,
                    addr: format!("n{id}"),
                })
                .collect(),
            map: UserMap::single(members[0], 16, epoch).reassign(&[members[0]], epoch),
        }
    }

    #[test]
    fn lookups_wait_for_every_report_then_prefer_fragment_holders() {
        let v = view(&[1, 2, 3]);
        let mut m = Manager::new(1);
        m.install(&v);
        let place = |m: &mut Manager| {
            m.handle(
                Body::Place {
                    user: "a@x".into(),
                    replicas: 1,
                },
                |_| 0,
            )
        };
        assert_eq!(place(&mut m), Body::Error(Failure::TryAgain));
        for node in [1, 2] {
            m.handle(
                Body::Fragments {
                    epoch: v.epoch,
                    node,
                    users: vec![],
                    locks: vec![],
                },
                |_| 0,
            );
        }
        assert_eq!(place(&mut m), Body::Error(Failure::TryAgain));
        m.handle(
            Body::Fragments {
                epoch: v.epoch,
                node: 3,
                users: vec!["a@x".into()],
                locks: vec![],
            },
            |_| 0,
        );
        assert_eq!(place(&mut m), Body::Placed { nodes: vec![3] });
        // Two replicas: the holder first, then the least loaded other node.
        let placed = m.handle(
            Body::Place {
                user: "a@x".into(),
                replicas: 2,
            },
            |n| if n == 1 { 5 } else { 1 },
        );
        assert_eq!(placed, Body::Placed { nodes: vec![3, 2] });
        // More replicas than live nodes: every node once.
        let placed = m.handle(
            Body::Place {
                user: "b@x".into(),
                replicas: 9,
            },
            |_| 0,
        );
        match placed {
            Body::Placed { mut nodes } => {
                nodes.sort_unstable();
                assert_eq!(nodes, vec![1, 2, 3]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_maildrop_has_one_lock_holder() {
        let v = view(&[1]);
        let mut m = Manager::new(1);
        m.install(&v);
        m.handle(
            Body::Fragments {
                epoch: v.epoch,
                node: 1,
                users: vec![],
                locks: vec![],
            },
            |_| 0,
        );
        let lock = |m: &mut Manager, owner| {
            m.handle(
                Body::Lock {
                    user: "a@x".into(),
                    owner,
                },
                |_| 0,
            )
        };
        assert!(matches!(lock(&mut m, (1, 1)), Body::Locked { .. }));
        assert_eq!(lock(&mut m, (1, 2)), Body::Error(Failure::InUse));
        m.handle(
            Body::Unlock {
                user: "a@x".into(),
                owner: (1, 1),
            },
            |_| 0,
        );
        assert!(matches!(lock(&mut m, (1, 2)), Body::Locked { .. }));
    }
}
