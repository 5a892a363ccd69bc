//! A bucket manager's soft state: the mail map (user → nodes holding a fragment of the user's
//! mailbox) and the maildrop locks of POP sessions, for the buckets this node manages.
//!
//! Nothing here is stored: after every membership commit the map starts empty and each member
//! reports the users it holds fragments for, from its shards' in-memory indexes. Until every
//! member of the epoch has reported, lookups answer "try again". Sans-IO: typed calls in
//! ([`ManagerCall`]), their replies out.

use std::collections::{HashMap, HashSet};

use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::membership::{Epoch, NodeId, View};
use crate::placement::{self, PlacementPolicy};
use crate::rpc::{
    Call, Failure, Fragments, LockMaildrop, Locked, NoteFragment, PlaceMail, Placed,
    ReportFragments, UnlockMaildrop, Unlocked, UserFragments,
};

#[derive(Debug)]
pub struct Manager {
    me: NodeId,
    policy: PlacementPolicy,
    view: Option<View>,
    mail_map: HashMap<String, Vec<NodeId>>,
    reported: HashSet<NodeId>,
    locks: HashMap<String, (u64, u64)>,
    rng: StdRng,
}

impl Manager {
    /// A manager on node `me`; `seed` drives its placement choices (a node passes entropy,
    /// the simulator a seed it can replay).
    pub fn new(me: NodeId, policy: PlacementPolicy, seed: u64) -> Self {
        Self {
            me,
            policy,
            view: None,
            mail_map: HashMap::new(),
            reported: HashSet::new(),
            locks: HashMap::new(),
            rng: StdRng::seed_from_u64(seed),
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

    /// A member's report of its fragments and maildrop locks for an epoch.
    pub fn report(&mut self, report: ReportFragments) -> Result<(), Failure> {
        let ReportFragments {
            epoch,
            node,
            users,
            locks,
        } = report;
        match self.epoch() {
            // A report sent again (its answer was lost) could bring back a lock released since
            // the first one arrived.
            Some(mine) if mine == epoch && self.reported.contains(&node) => Ok(()),
            Some(mine) if mine == epoch => {
                for (user, owner) in locks {
                    if self.manages(&user) {
                        tracing::debug!(%user, ?owner, node, "maildrop lock reported");
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
                Ok(())
            }
            // Not installed here yet: the sender retries.
            Some(mine) if mine < epoch => Err(Failure::TryAgain),
            // A report for an old epoch is moot.
            _ => Ok(()),
        }
    }

    /// The candidates for a user's new mail, remembered as holding the user's mail.
    pub fn place_mail(&mut self, call: PlaceMail) -> Result<Placed, Failure> {
        let PlaceMail {
            user,
            replicas,
            avoid,
        } = call;
        if !self.manages(&user) || !self.complete() {
            return Err(Failure::TryAgain);
        }
        let nodes = self.place(&user, usize::from(replicas.max(1)), &avoid);
        if nodes.is_empty() {
            return Err(Failure::TryAgain);
        }
        let known = self.mail_map.entry(user).or_default();
        for node in &nodes {
            if !known.contains(node) {
                known.push(*node);
            }
        }
        Ok(Placed { nodes })
    }

    /// A message stored outside a placement this manager made.
    pub fn note(&mut self, call: NoteFragment) -> Result<(), Failure> {
        let NoteFragment { user, node, epoch } = call;
        if self.epoch() != Some(epoch) || !self.manages(&user) {
            // The noting node and this one disagree on the membership: it asks again with its
            // newer view, or this one installs its own first.
            return Err(Failure::TryAgain);
        }
        let nodes = self.mail_map.entry(user).or_default();
        if !nodes.contains(&node) {
            nodes.push(node);
        }
        Ok(())
    }

    pub fn lock(&mut self, call: LockMaildrop) -> Result<Locked, Failure> {
        let LockMaildrop { user, owner } = call;
        if !self.manages(&user) || !self.complete() {
            return Err(Failure::TryAgain);
        }
        match self.locks.get(&user) {
            Some(held) if *held != owner => {
                tracing::debug!(%user, ?held, ?owner, "maildrop lock refused");
                Err(Failure::InUse)
            }
            _ => {
                tracing::debug!(%user, ?owner, epoch = ?self.epoch(), "maildrop lock granted");
                let fragments = self.live_fragments(&user);
                self.locks.insert(user, owner);
                Ok(Locked {
                    fragments,
                    epoch: self.epoch().unwrap_or_default(),
                })
            }
        }
    }

    /// The nodes holding `user`'s mail, without a lock (the IMAP authority's listing).
    pub fn fragments(&mut self, call: UserFragments) -> Result<Fragments, Failure> {
        if !self.manages(&call.user) || !self.complete() {
            return Err(Failure::TryAgain);
        }
        Ok(Fragments {
            nodes: self.live_fragments(&call.user),
            epoch: self.epoch().unwrap_or_default(),
        })
    }

    /// Only a complete manager releases a lock: every member's report of this epoch (which
    /// may name the lock) has arrived, so none can bring it back later.
    pub fn unlock(&mut self, call: UnlockMaildrop) -> Result<Unlocked, Failure> {
        let UnlockMaildrop { user, owner } = call;
        if !self.manages(&user) || !self.complete() {
            return Err(Failure::TryAgain);
        }
        if self.locks.get(&user) == Some(&owner) {
            self.locks.remove(&user);
        }
        tracing::debug!(%user, ?owner, epoch = ?self.epoch(), "maildrop lock released");
        Ok(Unlocked {
            epoch: self.epoch().unwrap_or_default(),
        })
    }

    /// The candidates for new messages of `user` under the policy (see [`placement`]).
    fn place(&mut self, user: &str, replicas: usize, avoid: &[NodeId]) -> Vec<NodeId> {
        let Some(view) = &self.view else {
            return Vec::new();
        };
        let live: Vec<NodeId> = view.members.iter().map(|m| m.id).collect();
        let holders = self.live_fragments(user);
        placement::candidates(
            self.policy,
            porcupine_types::user_key(user),
            &live,
            &holders,
            replicas,
            avoid,
            &mut self.rng,
        )
    }

    /// Users in the mail map (for status).
    pub fn users(&self) -> usize {
        self.mail_map.len()
    }
}

/// An operation a bucket manager answers, wherever it was asked (a peer's request, a session
/// on this node, the simulator).
pub trait ManagerCall: Call + Send + 'static
where
    Self::Reply: Send,
{
    fn serve(self, manager: &mut Manager) -> Result<Self::Reply, Failure>;
}

impl ManagerCall for PlaceMail {
    fn serve(self, manager: &mut Manager) -> Result<Placed, Failure> {
        manager.place_mail(self)
    }
}

impl ManagerCall for NoteFragment {
    fn serve(self, manager: &mut Manager) -> Result<(), Failure> {
        manager.note(self)
    }
}

impl ManagerCall for ReportFragments {
    fn serve(self, manager: &mut Manager) -> Result<(), Failure> {
        manager.report(self)
    }
}

impl ManagerCall for LockMaildrop {
    fn serve(self, manager: &mut Manager) -> Result<Locked, Failure> {
        manager.lock(self)
    }
}

impl ManagerCall for UserFragments {
    fn serve(self, manager: &mut Manager) -> Result<Fragments, Failure> {
        manager.fragments(self)
    }
}

impl ManagerCall for UnlockMaildrop {
    fn serve(self, manager: &mut Manager) -> Result<Unlocked, Failure> {
        manager.unlock(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(members: &[u64]) -> View {
        crate::membership::test_view(10, members)
    }

    fn place(
        m: &mut Manager,
        user: &str,
        replicas: u8,
        avoid: &[NodeId],
    ) -> Result<Placed, Failure> {
        m.place_mail(PlaceMail {
            user: user.into(),
            replicas,
            avoid: avoid.to_vec(),
        })
    }

    fn report(m: &mut Manager, v: &View, node: NodeId, users: &[&str]) {
        m.report(ReportFragments {
            epoch: v.epoch,
            node,
            users: users.iter().map(|u| u.to_string()).collect(),
            locks: vec![],
        })
        .expect("taken");
    }

    #[test]
    fn lookups_wait_for_every_report_then_prefer_fragment_holders() {
        let v = view(&[1, 2, 3]);
        let mut m = Manager::new(1, PlacementPolicy::Dynamic { spread: 1 }, 7);
        m.install(&v);
        assert_eq!(place(&mut m, "a@x", 1, &[]), Err(Failure::TryAgain));
        report(&mut m, &v, 1, &[]);
        report(&mut m, &v, 2, &[]);
        assert_eq!(place(&mut m, "a@x", 1, &[]), Err(Failure::TryAgain));
        report(&mut m, &v, 3, &["a@x"]);
        // At the spread: the holder alone.
        assert_eq!(place(&mut m, "a@x", 1, &[]), Ok(Placed { nodes: vec![3] }));
        // Two replicas: the holder first, then another node, remembered as a holder.
        let Ok(Placed { nodes }) = place(&mut m, "a@x", 2, &[]) else {
            panic!("not placed")
        };
        assert_eq!((nodes.len(), nodes[0]), (2, 3));
        assert_eq!(place(&mut m, "a@x", 2, &[]), Ok(Placed { nodes }));
        // More replicas than live nodes: every node once.
        let Ok(Placed { mut nodes }) = place(&mut m, "b@x", 9, &[]) else {
            panic!("not placed")
        };
        nodes.sort_unstable();
        assert_eq!(nodes, vec![1, 2, 3]);
    }

    #[test]
    fn a_placement_avoiding_the_holders_adds_a_node_beyond_the_spread() {
        let v = view(&[1, 2, 3]);
        let mut m = Manager::new(1, PlacementPolicy::Dynamic { spread: 1 }, 7);
        m.install(&v);
        for node in [1, 2] {
            report(&mut m, &v, node, &[]);
        }
        report(&mut m, &v, 3, &["a@x"]);
        let Ok(Placed { nodes }) = place(&mut m, "a@x", 1, &[3]) else {
            panic!("not placed")
        };
        assert_eq!(nodes.len(), 1);
        assert_ne!(nodes[0], 3);
        // The new node is now a holder too: a lock names both fragments.
        let Ok(Locked { mut fragments, .. }) = m.lock(LockMaildrop {
            user: "a@x".into(),
            owner: (1, 1),
        }) else {
            panic!("not locked")
        };
        fragments.sort_unstable();
        let mut expected = vec![3, nodes[0]];
        expected.sort_unstable();
        assert_eq!(fragments, expected);
    }

    #[test]
    fn a_maildrop_has_one_lock_holder() {
        let v = view(&[1]);
        let mut m = Manager::new(1, PlacementPolicy::default(), 7);
        m.install(&v);
        report(&mut m, &v, 1, &[]);
        let lock = |m: &mut Manager, owner| {
            m.lock(LockMaildrop {
                user: "a@x".into(),
                owner,
            })
        };
        assert!(matches!(lock(&mut m, (1, 1)), Ok(Locked { .. })));
        assert_eq!(lock(&mut m, (1, 2)), Err(Failure::InUse));
        m.unlock(UnlockMaildrop {
            user: "a@x".into(),
            owner: (1, 1),
        })
        .expect("released");
        assert!(matches!(lock(&mut m, (1, 2)), Ok(Locked { .. })));
    }

    #[test]
    fn an_unlock_waits_for_every_report_and_a_repeated_report_brings_no_lock_back() {
        let v = view(&[1, 2]);
        let mut m = Manager::new(1, PlacementPolicy::default(), 7);
        m.install(&v);
        let unlock = |m: &mut Manager| {
            m.unlock(UnlockMaildrop {
                user: "a@x".into(),
                owner: (2, 7),
            })
        };
        // Node 2's report (naming its session's lock) has not arrived: releasing now would
        // let that report bring the lock back for good.
        assert_eq!(unlock(&mut m), Err(Failure::TryAgain));
        let held = ReportFragments {
            epoch: v.epoch,
            node: 2,
            users: vec![],
            locks: vec![("a@x".into(), (2, 7))],
        };
        report(&mut m, &v, 1, &[]);
        assert_eq!(m.report(held.clone()), Ok(()));
        assert_eq!(unlock(&mut m), Ok(Unlocked { epoch: v.epoch }));
        // The same report again (its first answer was lost) is moot.
        assert_eq!(m.report(held), Ok(()));
        assert!(matches!(
            m.lock(LockMaildrop {
                user: "a@x".into(),
                owner: (1, 1),
            }),
            Ok(Locked { .. })
        ));
    }
}
