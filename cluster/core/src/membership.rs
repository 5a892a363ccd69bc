//! Membership: which nodes form the cluster, as a sans-IO state machine (events in, actions out).
//!
//! The paper's three-round protocol:
//! - every member pings its successor in node-id order (the highest pings the lowest); a
//!   successor silent for `suspect_after` makes the pinger suspect it and coordinate;
//! - round 1: the coordinator sends `NewGroup(epoch)` to every node it knows of, where
//!   epoch = (clock, coordinator id) and a larger epoch wins among concurrent coordinators;
//! - round 2: nodes answer `Accept` (only for an epoch larger than any they accepted);
//! - round 3: after `round_timeout` the coordinator sends `Commit(epoch, members, user map)` to
//!   those who accepted, and installs it itself.
//!
//! A booting node is a one-node group that probes its seeds; every node probes known nodes that
//! are not members, so partitions merge once they can talk. A node that hears from a node
//! outside its group, or in another epoch, coordinates. A coordinator commits each of its
//! epochs at most once, so no two nodes install different memberships for the same epoch.
//! Time is milliseconds, given by the caller (a real or simulated clock).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::usermap::UserMap;

pub type NodeId = u64;

/// A membership generation; larger wins.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Epoch {
    pub clock: u64,
    pub coordinator: NodeId,
}

/// A node and the address of its cluster port.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Member {
    pub id: NodeId,
    pub addr: String,
}

/// An installed membership.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    pub epoch: Epoch,
    /// Sorted by id.
    pub members: Vec<Member>,
    pub map: UserMap,
}

impl View {
    pub fn member(&self, id: NodeId) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }
}

/// Membership messages (one-way frames).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg {
    Ping {
        from: Member,
        epoch: Epoch,
    },
    Pong {
        from: Member,
        epoch: Epoch,
    },
    /// `known`: every cluster address the sender knows, so knowledge of nodes spreads.
    Probe {
        from: Member,
        epoch: Epoch,
        known: Vec<String>,
    },
    NewGroup {
        coordinator: Member,
        epoch: Epoch,
    },
    Accept {
        from: Member,
        epoch: Epoch,
        known: Vec<String>,
    },
    Commit {
        view: View,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub ping_interval_ms: u64,
    /// Silence from the successor after which it is suspected.
    pub suspect_after_ms: u64,
    pub probe_interval_ms: u64,
    /// How long a coordinator collects accepts.
    pub round_timeout_ms: u64,
    /// How long an accepted round may wait for its commit before this node coordinates.
    pub commit_timeout_ms: u64,
    pub buckets: usize,
    /// How long a node that was a member (or a seed never heard from) may be gone before it
    /// is declared dead (`--dead-after`): only while this node's view holds a majority, so a
    /// partition's minority never declares the majority dead. A dead node no longer counts
    /// toward the cluster's size for [`Membership::majority`], and the copies it held are
    /// made again elsewhere (`healing`).
    pub dead_after_ms: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            ping_interval_ms: 50,
            suspect_after_ms: 200,
            probe_interval_ms: 250,
            round_timeout_ms: 60,
            commit_timeout_ms: 300,
            buckets: crate::usermap::BUCKETS_DEFAULT,
            dead_after_ms: DEAD_AFTER_MS_DEFAULT,
        }
    }
}

/// `--dead-after`'s default: four hours, longer than a reboot, a kernel upgrade or a disk
/// swap, short enough that a second failure is unlikely meanwhile.
pub const DEAD_AFTER_MS_DEFAULT: u64 = 4 * 3600 * 1000;

/// What a node remembers of its cluster across restarts: every node it knew (address, id if
/// heard) and the nodes it declared dead. Without it a restarted node would count only its
/// seeds toward the majority, and would forget what it had declared dead.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Memory {
    pub known: Vec<(String, Option<NodeId>)>,
    pub dead: Vec<(NodeId, String)>,
}

/// What the caller must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Send {
        to: String,
        msg: Msg,
    },
    /// A new view was installed here.
    Installed(View),
}

#[derive(Clone, Debug)]
enum Phase {
    Stable,
    Coordinating {
        epoch: Epoch,
        accepted: BTreeMap<NodeId, Member>,
        deadline: u64,
    },
    Accepted {
        deadline: u64,
    },
}

#[derive(Debug)]
pub struct Membership {
    me: Member,
    settings: Settings,
    view: View,
    phase: Phase,
    /// The largest epoch this node accepted or proposed: smaller proposals are ignored.
    promised: Epoch,
    /// Every node ever heard of, by address (probed while not a member).
    known: BTreeMap<String, Option<NodeId>>,
    successor_heard: u64,
    /// Since when a member has shown a newer epoch than ours (its commit may still be on its
    /// way here; if it does not come, coordinate).
    behind_since: Option<u64>,
    next_ping: u64,
    next_probe: u64,
    now: u64,
    /// Messages refused as implausible (a broken view, an epoch from the far future).
    refused: u64,
    /// Every other node's address and when it was last a member of a view installed here
    /// (a seed, or a node remembered from before a restart: when this node started): the
    /// cluster's size for [`Membership::majority`]. Left when declared dead.
    last_member: BTreeMap<String, u64>,
    /// Nodes declared dead (gone longer than `dead_after_ms` while this node held a
    /// majority), with their addresses; a node leaves this set when it is a member again.
    dead: BTreeMap<NodeId, String>,
    /// Bumped when what [`Membership::memory`] returns changes.
    memory_version: u64,
    /// The addresses of the view's members, and whether the view holds a majority: kept at
    /// each install and declaration, so that neither costs a pass over the cluster per tick
    /// (a thousand nodes, every 5 ms).
    member_addrs: BTreeSet<String>,
    majority: bool,
    /// When to look next for nodes gone longer than `dead_after_ms`.
    next_presence_check: u64,
}

/// How often a node looks for members gone longer than `dead_after_ms`.
const PRESENCE_CHECK_MS: u64 = 1000;

/// Addresses of other nodes remembered at most (probed while they are not members).
pub const KNOWN_ADDRS_MAX: usize = 4096;

impl Membership {
    /// A one-node group at time `now` that will probe `seeds`.
    pub fn new(me: Member, seeds: &[String], settings: Settings, now: u64) -> Self {
        let epoch = Epoch {
            clock: now,
            coordinator: me.id,
        };
        let view = View {
            epoch,
            members: vec![me.clone()],
            map: UserMap::single(me.id, settings.buckets, epoch),
        };
        let known: BTreeMap<String, Option<NodeId>> = seeds
            .iter()
            .filter(|s| **s != me.addr)
            .map(|s| (s.clone(), None))
            .collect();
        let last_member = known.keys().map(|addr| (addr.clone(), now)).collect();
        let mut membership = Self {
            me,
            settings,
            view,
            phase: Phase::Stable,
            promised: epoch,
            known,
            successor_heard: now,
            behind_since: None,
            next_ping: now,
            next_probe: now,
            now,
            refused: 0,
            last_member,
            dead: BTreeMap::new(),
            memory_version: 0,
            member_addrs: BTreeSet::new(),
            majority: true,
            next_presence_check: now,
        };
        membership.member_addrs.insert(membership.me.addr.clone());
        membership.recount();
        membership
    }

    /// Counts again whether the view holds a majority of the cluster this node knows.
    fn recount(&mut self) {
        let members = self.view.members.len();
        let absent = self
            .last_member
            .keys()
            .filter(|addr| **addr != self.me.addr && !self.member_addrs.contains(*addr))
            .count();
        self.majority = members.saturating_mul(2) > members.saturating_add(absent);
    }

    /// What to keep across restarts; see [`Memory`].
    pub fn memory(&self) -> Memory {
        Memory {
            known: self
                .known
                .iter()
                .map(|(addr, id)| (addr.clone(), *id))
                .collect(),
            dead: self
                .dead
                .iter()
                .map(|(id, addr)| (*id, addr.clone()))
                .collect(),
        }
    }

    /// Changes each time [`Membership::memory`] would return something new.
    pub fn memory_version(&self) -> u64 {
        self.memory_version
    }

    /// Takes back what an earlier run remembered: its nodes count toward the majority (gone
    /// since this start, not since they were last seen: a node is declared dead only after
    /// `dead_after_ms` of this run), and its dead stay dead until they return. Entries that
    /// do not make sense (this node, implausible addresses) are left out.
    pub fn restore(&mut self, memory: Memory) {
        for (id, addr) in memory.dead {
            if id != self.me.id
                && self.dead.len() < KNOWN_ADDRS_MAX
                && crate::plausible::address_plausible(&addr)
            {
                self.dead.insert(id, addr);
            }
        }
        for (addr, id) in memory.known {
            if addr == self.me.addr
                || id == Some(self.me.id)
                || !crate::plausible::address_plausible(&addr)
                || (self.known.len() >= KNOWN_ADDRS_MAX && !self.known.contains_key(&addr))
            {
                continue;
            }
            let id = id.or_else(|| self.known.get(&addr).copied().flatten());
            self.known.insert(addr.clone(), id);
            if !id.is_some_and(|id| self.dead.contains_key(&id)) {
                self.last_member.insert(addr, self.now);
            }
        }
        self.memory_version += 1;
        self.recount();
    }

    /// The nodes declared dead: their copies are made again elsewhere, and they no longer
    /// count toward the majority.
    pub fn dead(&self) -> Vec<NodeId> {
        self.dead.keys().copied().collect()
    }

    /// A node gone from the view longer than `dead_after_ms` is declared dead, but only while
    /// this view holds a majority. Looked at every [`PRESENCE_CHECK_MS`].
    fn note_presence(&mut self) {
        let now = self.now;
        if now < self.next_presence_check {
            return;
        }
        self.next_presence_check = now.saturating_add(PRESENCE_CHECK_MS);
        if !self.majority {
            return;
        }
        let gone: Vec<String> = self
            .last_member
            .iter()
            .filter(|(addr, at)| {
                now.saturating_sub(**at) > self.settings.dead_after_ms
                    && !self.member_addrs.contains(*addr)
            })
            .map(|(addr, _)| addr.clone())
            .collect();
        let declared = !gone.is_empty();
        for addr in gone {
            self.last_member.remove(&addr);
            self.memory_version += 1;
            match self.known.get(&addr).copied().flatten() {
                Some(id) if self.dead.len() < KNOWN_ADDRS_MAX => {
                    tracing::warn!(
                        node = self.me.id,
                        dead = id,
                        %addr,
                        after_ms = self.settings.dead_after_ms,
                        "a node gone longer than --dead-after is declared dead: its copies are made again elsewhere"
                    );
                    self.dead.insert(id, addr);
                }
                _ => tracing::warn!(
                    node = self.me.id,
                    %addr,
                    "a seed never heard from, gone longer than --dead-after, no longer counts toward the majority"
                ),
            }
        }
        if declared {
            self.recount();
        }
    }

    /// Whether the view installed here holds a strict majority of the cluster this node knows:
    /// its members, and every node that was a member (or is a seed) and has not been declared
    /// dead. A node on the minority side of a partition — or alone after losing
    /// its peers — holds none: what the majority deleted meanwhile is unknown to it, so it must
    /// not show a maildrop (a deleted message would be shown again).
    pub fn majority(&self) -> bool {
        self.majority
    }

    /// How many messages this node refused as implausible.
    pub fn refused(&self) -> u64 {
        self.refused
    }

    pub fn view(&self) -> &View {
        &self.view
    }

    pub fn me(&self) -> &Member {
        &self.me
    }

    /// Whether a membership round is under way here.
    pub fn settled(&self) -> bool {
        matches!(self.phase, Phase::Stable)
    }

    fn successor(&self) -> Option<&Member> {
        if self.view.members.len() < 2 {
            return None;
        }
        self.view
            .members
            .iter()
            .find(|m| m.id > self.me.id)
            .or_else(|| self.view.members.first())
            .filter(|m| m.id != self.me.id)
    }

    fn is_member(&self, id: NodeId) -> bool {
        self.view.members.iter().any(|m| m.id == id)
    }

    fn learn(&mut self, member: &Member) {
        if member.id == self.me.id || !crate::plausible::address_plausible(&member.addr) {
            return;
        }
        if self.known.len() < KNOWN_ADDRS_MAX || self.known.contains_key(&member.addr) {
            let before = self.known.insert(member.addr.clone(), Some(member.id));
            if before != Some(Some(member.id)) {
                self.memory_version += 1;
            }
        }
    }

    fn known_addrs(&self) -> Vec<String> {
        let mut addrs: Vec<String> = self.known.keys().cloned().collect();
        addrs.push(self.me.addr.clone());
        addrs
    }

    /// Addresses heard of from another node. A coordinator collecting accepts invites the new
    /// ones into its round at once.
    fn learn_addrs(&mut self, addrs: Vec<String>, out: &mut Vec<Action>) {
        for addr in addrs {
            if addr == self.me.addr
                || self.known.contains_key(&addr)
                || self.known.len() >= KNOWN_ADDRS_MAX
                || !crate::plausible::address_plausible(&addr)
            {
                continue;
            }
            self.known.insert(addr.clone(), None);
            self.memory_version += 1;
            if let Phase::Coordinating { epoch, .. } = &self.phase {
                out.push(Action::Send {
                    to: addr,
                    msg: Msg::NewGroup {
                        coordinator: self.me.clone(),
                        epoch: *epoch,
                    },
                });
            }
        }
    }

    /// Time passes.
    pub fn tick(&mut self, now: u64, out: &mut Vec<Action>) {
        self.now = self.now.max(now);
        let now = self.now;
        self.note_presence();
        match &self.phase {
            Phase::Coordinating { deadline, .. } if now >= *deadline => self.commit(out),
            Phase::Accepted { deadline } if now >= *deadline => self.coordinate(out),
            Phase::Stable => {
                if self.behind_since.is_some_and(|since| {
                    now.saturating_sub(since) > self.settings.commit_timeout_ms
                }) {
                    tracing::info!(
                        node = self.me.id,
                        "a member is in a newer epoch; coordinating"
                    );
                    self.coordinate(out);
                    return;
                }
                if let Some(successor) = self.successor().cloned() {
                    if now.saturating_sub(self.successor_heard) > self.settings.suspect_after_ms {
                        tracing::info!(
                            node = self.me.id,
                            suspect = successor.id,
                            "successor silent; coordinating"
                        );
                        self.coordinate(out);
                        return;
                    }
                    if now >= self.next_ping {
                        self.next_ping = now.saturating_add(self.settings.ping_interval_ms);
                        out.push(Action::Send {
                            to: successor.addr.clone(),
                            msg: Msg::Ping {
                                from: self.me.clone(),
                                epoch: self.view.epoch,
                            },
                        });
                    }
                }
                if now >= self.next_probe {
                    self.next_probe = now.saturating_add(self.settings.probe_interval_ms);
                    let members: BTreeSet<&str> =
                        self.view.members.iter().map(|m| m.addr.as_str()).collect();
                    let known = self.known_addrs();
                    for addr in self.known.keys() {
                        if !members.contains(addr.as_str()) {
                            out.push(Action::Send {
                                to: addr.clone(),
                                msg: Msg::Probe {
                                    from: self.me.clone(),
                                    epoch: self.view.epoch,
                                    known: known.clone(),
                                },
                            });
                        }
                    }
                }
            }
            _ => {}
        }
    }

    /// A message arrived. One whose epoch is from the far future, or a commit of a view that
    /// does not hold together, is refused (counted, logged, otherwise ignored).
    pub fn receive(&mut self, now: u64, msg: Msg, out: &mut Vec<Action>) {
        self.now = self.now.max(now);
        if let Err(problem) = self.plausible(&msg) {
            self.refused += 1;
            tracing::warn!(node = self.me.id, %problem, "refused a membership message");
            return;
        }
        match msg {
            Msg::Ping { from, epoch } => {
                self.learn(&from);
                out.push(Action::Send {
                    to: from.addr.clone(),
                    msg: Msg::Pong {
                        from: self.me.clone(),
                        epoch: self.view.epoch,
                    },
                });
                self.compare(from.id, epoch, out);
            }
            Msg::Pong { from, epoch } => {
                self.learn(&from);
                if self.successor().is_some_and(|s| s.id == from.id) {
                    self.successor_heard = self.now;
                }
                self.compare(from.id, epoch, out);
            }
            Msg::Probe { from, epoch, known } => {
                self.learn(&from);
                self.learn_addrs(known, out);
                self.compare(from.id, epoch, out);
            }
            Msg::NewGroup { coordinator, epoch } => {
                self.learn(&coordinator);
                if epoch > self.promised {
                    self.promised = epoch;
                    self.phase = Phase::Accepted {
                        deadline: self.now.saturating_add(self.settings.commit_timeout_ms),
                    };
                    out.push(Action::Send {
                        to: coordinator.addr.clone(),
                        msg: Msg::Accept {
                            from: self.me.clone(),
                            epoch,
                            known: self.known_addrs(),
                        },
                    });
                }
            }
            Msg::Accept { from, epoch, known } => {
                self.learn(&from);
                self.learn_addrs(known, out);
                if let Phase::Coordinating {
                    epoch: mine,
                    accepted,
                    ..
                } = &mut self.phase
                {
                    if *mine == epoch {
                        accepted.insert(from.id, from);
                    }
                }
            }
            Msg::Commit { view } => {
                for member in &view.members {
                    self.learn(member);
                }
                let includes_me = view.members.iter().any(|m| m.id == self.me.id);
                if includes_me && view.epoch >= self.promised && view.epoch > self.view.epoch {
                    self.install(view, out);
                }
            }
        }
    }

    fn plausible(&self, msg: &Msg) -> Result<(), crate::plausible::ViewProblem> {
        use crate::plausible::{check_view, epoch_plausible, ViewProblem};
        let epoch = match msg {
            Msg::Commit { view } => return check_view(view, self.settings.buckets, self.now),
            Msg::Ping { epoch, .. }
            | Msg::Pong { epoch, .. }
            | Msg::Probe { epoch, .. }
            | Msg::NewGroup { epoch, .. }
            | Msg::Accept { epoch, .. } => epoch,
        };
        if epoch_plausible(epoch, self.now) {
            Ok(())
        } else {
            Err(ViewProblem::Ahead {
                ahead_ms: epoch.clock.saturating_sub(self.now),
            })
        }
    }

    /// Another node's epoch. A node outside the group makes this node coordinate (a join or a
    /// merge); a member in a newer epoch does after a grace period, in case its commit is still
    /// on the way; a member in an older one will learn ours from our next message.
    fn compare(&mut self, from: NodeId, epoch: Epoch, out: &mut Vec<Action>) {
        if !matches!(self.phase, Phase::Stable) || epoch == self.view.epoch {
            return;
        }
        if !self.is_member(from) {
            self.coordinate(out);
        } else if epoch > self.view.epoch && self.behind_since.is_none() {
            self.behind_since = Some(self.now);
        }
    }

    fn coordinate(&mut self, out: &mut Vec<Action>) {
        let epoch = Epoch {
            clock: self
                .now
                .max(self.promised.clock.saturating_add(1))
                .max(self.view.epoch.clock.saturating_add(1)),
            coordinator: self.me.id,
        };
        self.promised = epoch;
        let mut accepted = BTreeMap::new();
        accepted.insert(self.me.id, self.me.clone());
        let mut targets: BTreeSet<String> = self.known.keys().cloned().collect();
        targets.extend(self.view.members.iter().map(|m| m.addr.clone()));
        targets.remove(&self.me.addr);
        for to in targets {
            out.push(Action::Send {
                to,
                msg: Msg::NewGroup {
                    coordinator: self.me.clone(),
                    epoch,
                },
            });
        }
        self.phase = Phase::Coordinating {
            epoch,
            accepted,
            deadline: self.now.saturating_add(self.settings.round_timeout_ms),
        };
    }

    fn commit(&mut self, out: &mut Vec<Action>) {
        let Phase::Coordinating {
            epoch, accepted, ..
        } = std::mem::replace(&mut self.phase, Phase::Stable)
        else {
            return;
        };
        let members: Vec<Member> = accepted.into_values().collect();
        let ids: Vec<NodeId> = members.iter().map(|m| m.id).collect();
        let view = View {
            epoch,
            map: self.view.map.reassign(&ids, epoch),
            members,
        };
        for member in &view.members {
            if member.id != self.me.id {
                out.push(Action::Send {
                    to: member.addr.clone(),
                    msg: Msg::Commit { view: view.clone() },
                });
            }
        }
        self.install(view, out);
    }

    fn install(&mut self, view: View, out: &mut Vec<Action>) {
        tracing::info!(
            node = self.me.id,
            epoch = ?view.epoch,
            members = ?view.members.iter().map(|m| m.id).collect::<Vec<_>>(),
            "membership installed"
        );
        let addrs: BTreeSet<String> = view.members.iter().map(|m| m.addr.clone()).collect();
        // Members leaving the view are gone from now: `dead_after_ms` counts from here.
        for addr in &self.member_addrs {
            if !addrs.contains(addr) {
                if let Some(at) = self.last_member.get_mut(addr) {
                    *at = self.now;
                }
            }
        }
        for member in &view.members {
            if member.addr != self.me.addr
                && (self.last_member.len() < KNOWN_ADDRS_MAX
                    || self.last_member.contains_key(&member.addr))
            {
                self.last_member.insert(member.addr.clone(), self.now);
            }
            self.learn(member);
            if self.dead.remove(&member.id).is_some() {
                tracing::info!(
                    node = self.me.id,
                    returned = member.id,
                    "a node declared dead is a member again"
                );
                self.memory_version += 1;
            }
        }
        self.view = view;
        self.member_addrs = addrs;
        self.member_addrs.insert(self.me.addr.clone());
        self.recount();
        self.phase = Phase::Stable;
        self.behind_since = None;
        self.successor_heard = self.now;
        self.next_ping = self.now;
        out.push(Action::Installed(self.view.clone()));
    }
}

/// A view of `members` at epoch `clock`, the first member coordinating and managing every
/// bucket, for the unit tests of the machines that take views.
#[cfg(test)]
pub(crate) fn test_view(clock: u64, members: &[NodeId]) -> View {
    let epoch = Epoch {
        clock,
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
        map: UserMap::single(members[0], 16, epoch),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64) -> Member {
        Member {
            id,
            addr: format!("10.0.0.{id}:7946"),
        }
    }

    fn view_of(clock: u64, ids: &[NodeId]) -> View {
        let epoch = Epoch {
            clock,
            coordinator: ids[0],
        };
        View {
            epoch,
            members: ids.iter().map(|&id| member(id)).collect(),
            map: UserMap::single(ids[0], 16, epoch),
        }
    }

    #[test]
    fn only_a_view_of_most_of_the_known_cluster_holds_a_majority() {
        let settings = Settings {
            dead_after_ms: 10_000,
            ..Settings::default()
        };
        // A node on its own, told of no other: the whole cluster.
        let alone = Membership::new(member(1), &[], settings.clone(), 0);
        assert!(alone.majority());
        // Told of two seeds it has not heard from: one of three.
        let seeds = ["10.0.0.2:7946".to_owned(), "10.0.0.3:7946".to_owned()];
        let mut m = Membership::new(member(1), &seeds, settings.clone(), 0);
        assert!(!m.majority());
        let mut out = Vec::new();
        m.install(view_of(1, &[1, 2, 3]), &mut out);
        assert!(m.majority());
        // Two of three after one is lost; one of three after two are.
        m.install(view_of(2, &[1, 2]), &mut out);
        assert!(m.majority());
        m.install(view_of(3, &[1]), &mut out);
        assert!(!m.majority());
        // Alone, it never declares the others dead, however long they are gone: a
        // partition's minority must not make itself the cluster.
        m.tick(1_000_000, &mut out);
        assert!(!m.majority());
        assert!(m.dead().is_empty());
        // Four members, two of them cut off: two of four is no majority.
        let mut m = Membership::new(member(1), &[], settings, 0);
        m.install(view_of(1, &[1, 2, 3, 4]), &mut out);
        m.install(view_of(2, &[1, 2]), &mut out);
        assert!(!m.majority());
    }

    #[test]
    fn a_node_gone_longer_than_dead_after_is_declared_dead_by_a_majority_and_returns() {
        let settings = Settings {
            dead_after_ms: 10_000,
            ..Settings::default()
        };
        let mut out = Vec::new();
        let mut m = Membership::new(member(1), &[], settings, 0);
        m.install(view_of(1, &[1, 2, 3]), &mut out);
        // A long stable view: members stay present however old the install.
        m.tick(50_000, &mut out);
        m.tick(60_000, &mut out);
        assert!(m.dead().is_empty());
        m.install(view_of(60_000, &[1, 2]), &mut out);
        m.tick(65_000, &mut out);
        assert!(m.dead().is_empty(), "gone 5 s of 10");
        let version = m.memory_version();
        m.tick(70_001, &mut out);
        assert_eq!(m.dead(), vec![3]);
        assert_ne!(m.memory_version(), version);
        // Dead, it no longer counts: the two left are the whole cluster.
        m.install(view_of(70_002, &[1]), &mut out);
        assert!(!m.majority(), "one of two");
        m.install(view_of(70_003, &[1, 2, 3]), &mut out);
        assert!(m.dead().is_empty(), "a member again");
        assert!(m.majority());
    }

    #[test]
    fn a_restarted_node_remembers_its_cluster_and_its_dead() {
        let settings = Settings {
            dead_after_ms: 10_000,
            ..Settings::default()
        };
        let mut out = Vec::new();
        let mut m = Membership::new(member(1), &[], settings.clone(), 0);
        m.install(view_of(1, &[1, 2, 3, 4]), &mut out);
        m.now = 100;
        m.install(view_of(100, &[1, 2, 3]), &mut out);
        m.tick(20_000, &mut out);
        assert_eq!(m.dead(), vec![4]);
        let memory = m.memory();
        // Restarted with no seeds: without the memory it would be the whole cluster alone.
        let mut again = Membership::new(member(1), &[], settings, 50_000);
        again.restore(memory.clone());
        assert!(!again.majority(), "one of the three it knew");
        assert_eq!(again.dead(), vec![4]);
        // The memory survives its own encoding.
        let bytes = postcard::to_allocvec(&memory).unwrap();
        assert_eq!(postcard::from_bytes::<Memory>(&bytes).unwrap(), memory);
        // The others are gone since this start, not since they were last seen.
        again.install(view_of(50_001, &[1, 2]), &mut out);
        again.tick(55_000, &mut out);
        assert_eq!(again.dead(), vec![4]);
        again.tick(60_002, &mut out);
        assert_eq!(again.dead(), vec![3, 4]);
    }

    #[test]
    fn an_implausible_commit_or_epoch_is_refused_and_counted() {
        let mut m = Membership::new(member(1), &[], Settings::default(), 1000);
        let before = m.view().clone();
        let mut out = Vec::new();
        let epoch = Epoch {
            clock: 2000,
            coordinator: 2,
        };
        // The view: a larger epoch, this node in it, and a user map with no managers.
        let empty = View {
            epoch,
            members: vec![member(1), member(2)],
            map: UserMap {
                managers: Vec::new(),
                moved: Vec::new(),
            },
        };
        m.receive(1001, Msg::Commit { view: empty }, &mut out);
        assert_eq!(m.view(), &before);
        assert_eq!(m.refused(), 1);
        // A proposal from the far future would make every later epoch lose.
        let far = Epoch {
            clock: u64::MAX,
            coordinator: 2,
        };
        m.receive(
            1002,
            Msg::NewGroup {
                coordinator: member(2),
                epoch: far,
            },
            &mut out,
        );
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(m.refused(), 2);
        // A sound commit is still taken.
        let map = UserMap::single(1, Settings::default().buckets, epoch).reassign(&[1, 2], epoch);
        let view = View {
            epoch,
            members: vec![member(1), member(2)],
            map,
        };
        m.receive(1003, Msg::Commit { view: view.clone() }, &mut out);
        assert_eq!(m.view(), &view);
    }

    #[test]
    fn a_new_node_is_a_one_node_group_owning_every_bucket() {
        let m = Membership::new(member(1), &[], Settings::default(), 1000);
        assert_eq!(m.view().members, vec![member(1)]);
        assert_eq!(m.view().map.summary()[&1], 1024);
    }

    #[test]
    fn a_smaller_epoch_is_not_accepted_after_a_larger_one() {
        let mut m = Membership::new(member(1), &[], Settings::default(), 1000);
        let mut out = Vec::new();
        let big = Epoch {
            clock: 5000,
            coordinator: 3,
        };
        let small = Epoch {
            clock: 4000,
            coordinator: 9,
        };
        m.receive(
            1001,
            Msg::NewGroup {
                coordinator: member(3),
                epoch: big,
            },
            &mut out,
        );
        m.receive(
            1002,
            Msg::NewGroup {
                coordinator: member(9),
                epoch: small,
            },
            &mut out,
        );
        let accepts: Vec<_> = out
            .iter()
            .filter(|a| {
                matches!(
                    a,
                    Action::Send {
                        msg: Msg::Accept { .. },
                        ..
                    }
                )
            })
            .collect();
        assert_eq!(accepts.len(), 1);
    }
}
