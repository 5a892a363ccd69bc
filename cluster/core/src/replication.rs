//! The replication manager of one core (sans-IO): which replicated updates have not reached
//! every replica yet, who pushes them where and when, and when they retire.
//!
//! An update (a message put or a tombstone) is made on its coordinator, the first node of its
//! replica set, and is pending on every node that holds it until every replica acknowledged
//! it. The coordinator pushes it to the other replicas; once all have acknowledged, it waits a
//! little for stragglers (a push of the same update still on the wire), retires it and tells
//! the others to retire it too. A holder that is not the coordinator pushes only when the
//! coordinator is not a live member (takeover) or when the update has been pending there for
//! long (the coordinator's retire notice was lost): pushes are idempotent, so several pushers
//! are harmless. Updates older than the log retention are dropped, as the paper's were after
//! a week: a replica away longer rejoins as a new node.
//!
//! A node declared dead (`--dead-after`, [`crate::membership`]) is no longer waited for by a
//! put: its copies are made again elsewhere (`healing`), which widens the update's replica
//! set. A tombstone still waits for it, until the retention: a dead node that returns must
//! learn of every delete made meanwhile, or it would show those messages again.
//!
//! Events in ([`Replicator::add`], [`Replicator::acked`], [`Replicator::failed`],
//! [`Replicator::retired`], [`Replicator::view_changed`], [`Replicator::tick`]), actions out.
//! Time is milliseconds from any origin, given by the caller.

use std::collections::{BTreeSet, HashMap};

use porcupine_types::{supersedes, UpdateKind, REPLICAS_MAX};

use crate::membership::NodeId;

/// The default [`Settings::tombstone_min_age_ms`]: 10 s, against a delivery patience of 5 s
/// and a peer timeout of 2 s. Not more: every pending tombstone of a user is in each of its
/// listings, and a hot mailbox makes thousands a second.
pub const TOMBSTONE_MIN_AGE_MS: u64 = 10_000;

/// Timing of the replication manager.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Pause before a failed push to a node is tried again.
    pub retry_ms: u64,
    /// Wait after the last acknowledgement before retiring (pushes still on the wire land).
    pub straggler_wait_ms: u64,
    /// A holder that is not the coordinator pushes an update pending this long itself.
    pub takeover_after_ms: u64,
    /// Updates pending longer than this are dropped (DESIGN.md §1: a week in the paper).
    pub retention_ms: u64,
    /// A tombstone is kept at least this long after it was made, acknowledged or not: a
    /// delivery still retrying the same message id (its first answer was lost, and it is
    /// placed again under the same id for up to its patience, plus a request on the wire)
    /// must find it, or the copy it lands would show the deleted message again. Longer than
    /// the delivery's patience and a peer timeout together.
    pub tombstone_min_age_ms: u64,
    /// Pushes in flight at once from this core.
    pub pushes_in_flight_max: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            retry_ms: 250,
            straggler_wait_ms: 500,
            takeover_after_ms: 10_000,
            retention_ms: 7 * 24 * 3600 * 1000,
            tombstone_min_age_ms: TOMBSTONE_MIN_AGE_MS,
            pushes_in_flight_max: 512,
        }
    }
}

/// One replicated update of a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Update {
    pub user: String,
    pub id: u128,
    pub kind: UpdateKind,
    pub hlc: u64,
    /// The coordinator.
    pub origin: NodeId,
    /// Every replica, the coordinator first.
    pub replicas: Vec<NodeId>,
}

/// What the caller does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send the update to `to`; answer with [`Replicator::acked`] or [`Replicator::failed`].
    Push { to: NodeId, update: Update },
    /// Write the update's retirement here, and tell `notify` (the other live replicas).
    Retire { update: Update, notify: Vec<NodeId> },
}

type Key = (String, u128);

#[derive(Debug)]
struct Entry {
    update: Update,
    acked: Vec<NodeId>,
    in_flight: Vec<NodeId>,
    added_ms: u64,
    /// When the last acknowledgement needed arrived.
    complete_ms: Option<u64>,
    /// The entry's place in the wake-up queue, if it has one.
    wake: Option<(u64, u64)>,
    serial: u64,
}

/// The pending updates of one core and the schedule of their pushes.
#[derive(Debug)]
pub struct Replicator {
    me: NodeId,
    settings: Settings,
    live: Vec<NodeId>,
    /// Nodes declared dead: puts do not wait for them.
    dead: Vec<NodeId>,
    entries: HashMap<Key, Entry>,
    by_serial: HashMap<u64, Key>,
    /// (time, serial): entries to look at again at that time.
    wakes: BTreeSet<(u64, u64)>,
    next_serial: u64,
    in_flight: usize,
}

impl Replicator {
    pub fn new(me: NodeId, settings: Settings) -> Self {
        Self {
            me,
            settings,
            live: vec![me],
            dead: Vec::new(),
            entries: HashMap::new(),
            by_serial: HashMap::new(),
            wakes: BTreeSet::new(),
            next_serial: 0,
            in_flight: 0,
        }
    }

    pub fn pending(&self) -> usize {
        self.entries.len()
    }

    pub fn pushes_in_flight(&self) -> usize {
        self.in_flight
    }

    /// Whether the update is still pending here.
    pub fn is_pending(&self, user: &str, id: u128, hlc: u64) -> bool {
        self.entries
            .get(&(user.to_owned(), id))
            .is_some_and(|e| e.update.hlc == hlc)
    }

    /// The replica set of a pending update (widened by healing, perhaps).
    pub fn pending_replicas(&self, user: &str, id: u128, hlc: u64) -> Option<Vec<NodeId>> {
        self.entries
            .get(&(user.to_owned(), id))
            .filter(|e| e.update.hlc == hlc)
            .map(|e| e.update.replicas.clone())
    }

    fn is_live(&self, node: NodeId) -> bool {
        self.live.contains(&node)
    }

    /// The live members changed: everything waiting on a node is looked at again.
    pub fn view_changed(&mut self, live: &[NodeId], now: u64) {
        self.live = live.to_vec();
        if !self.live.contains(&self.me) {
            self.live.push(self.me);
        }
        let serials: Vec<u64> = self.by_serial.keys().copied().collect();
        for serial in serials {
            self.schedule(serial, now);
        }
    }

    /// The nodes declared dead changed: what waited on them is looked at again.
    pub fn dead_changed(&mut self, dead: &[NodeId], now: u64) {
        if self.dead == dead {
            return;
        }
        self.dead = dead.to_vec();
        let serials: Vec<u64> = self.by_serial.keys().copied().collect();
        for serial in serials {
            self.schedule(serial, now);
        }
    }

    fn is_dead(&self, node: NodeId) -> bool {
        self.dead.contains(&node)
    }

    /// An update is pending here: made here, received from its coordinator, or found in the
    /// log at start. A tombstone replaces a pending put of the same message; a put never
    /// replaces a tombstone; otherwise the newer update wins, and the same update with more
    /// replicas (a replica set widened by healing) widens the pending one. `acked`: replicas
    /// known to hold it (this node always does). Returns the pushes to make now.
    pub fn add(&mut self, update: Update, acked: &[NodeId], now: u64) -> Vec<Action> {
        if update.replicas.len() < 2 {
            return Vec::new();
        }
        let key = (update.user.clone(), update.id);
        if let Some(old) = self.entries.get_mut(&key) {
            if old.update.kind == update.kind && old.update.hlc == update.hlc {
                let before = old.update.replicas.clone();
                for node in &update.replicas {
                    if !old.update.replicas.contains(node) {
                        old.update.replicas.push(*node);
                    }
                }
                if old.update.replicas.len() > REPLICAS_MAX {
                    // Healing rebuilt the set without a dead node: the new set is the newer.
                    old.update.replicas = update.replicas.clone();
                }
                for node in acked {
                    if !old.acked.contains(node) {
                        old.acked.push(*node);
                    }
                }
                if old.update.replicas == before {
                    return Vec::new();
                }
                old.complete_ms = None;
                let mut actions = Vec::new();
                self.visit(&key, now, &mut actions);
                return actions;
            }
            if !supersedes((old.update.kind, old.update.hlc), (update.kind, update.hlc)) {
                return Vec::new();
            }
            self.remove(&key);
        }
        let serial = self.next_serial;
        self.next_serial += 1;
        let mut acked_nodes = vec![self.me];
        acked_nodes.extend(acked.iter().copied().filter(|n| *n != self.me));
        self.entries.insert(
            key.clone(),
            Entry {
                update,
                acked: acked_nodes,
                in_flight: Vec::new(),
                added_ms: now,
                complete_ms: None,
                wake: None,
                serial,
            },
        );
        self.by_serial.insert(serial, key.clone());
        let mut actions = Vec::new();
        self.visit(&key, now, &mut actions);
        actions
    }

    /// `from` holds the update durably (or holds a newer one of the same message).
    pub fn acked(&mut self, user: &str, id: u128, hlc: u64, from: NodeId, now: u64) -> Vec<Action> {
        let key = (user.to_owned(), id);
        let Some(entry) = self.entries.get_mut(&key) else {
            return Vec::new();
        };
        if let Some(at) = entry.in_flight.iter().position(|n| *n == from) {
            entry.in_flight.swap_remove(at);
            self.in_flight = self.in_flight.saturating_sub(1);
        }
        if entry.update.hlc != hlc {
            return Vec::new();
        }
        if !entry.acked.contains(&from) {
            entry.acked.push(from);
        }
        let mut actions = Vec::new();
        self.visit(&key, now, &mut actions);
        actions
    }

    /// A push to `to` failed (no answer in time, or an error): it is tried again later.
    pub fn failed(&mut self, user: &str, id: u128, to: NodeId, now: u64) {
        let key = (user.to_owned(), id);
        let Some(entry) = self.entries.get_mut(&key) else {
            return;
        };
        if let Some(at) = entry.in_flight.iter().position(|n| *n == to) {
            entry.in_flight.swap_remove(at);
            self.in_flight = self.in_flight.saturating_sub(1);
        }
        let serial = entry.serial;
        self.schedule(serial, now + self.settings.retry_ms);
    }

    /// Whether every replica but those named has acknowledged the update.
    pub fn acked_by_all(&self, user: &str, id: u128, hlc: u64) -> bool {
        self.entries
            .get(&(user.to_owned(), id))
            .filter(|e| e.update.hlc == hlc)
            .is_some_and(|e| e.update.replicas.iter().all(|r| e.acked.contains(r)))
    }

    /// The coordinator (or a holder that took over) retired the update: it leaves here too.
    /// Returns whether it was pending here (the caller then writes the retirement).
    pub fn retired(&mut self, user: &str, id: u128, hlc: u64) -> bool {
        let key = (user.to_owned(), id);
        match self.entries.get(&key) {
            Some(entry) if entry.update.hlc == hlc => {
                self.remove(&key);
                true
            }
            _ => false,
        }
    }

    /// Entries due by `now`: pushes to make and updates to retire.
    pub fn tick(&mut self, now: u64) -> Vec<Action> {
        let mut actions = Vec::new();
        while let Some(&(at, serial)) = self.wakes.first() {
            if at > now {
                break;
            }
            self.wakes.remove(&(at, serial));
            let Some(key) = self.by_serial.get(&serial).cloned() else {
                continue;
            };
            if let Some(entry) = self.entries.get_mut(&key) {
                entry.wake = None;
            }
            self.visit(&key, now, &mut actions);
        }
        actions
    }

    /// The earliest time something is due, if anything is scheduled.
    pub fn next_wake(&self) -> Option<u64> {
        self.wakes.first().map(|(at, _)| *at)
    }

    fn remove(&mut self, key: &Key) {
        if let Some(entry) = self.entries.remove(key) {
            self.in_flight = self.in_flight.saturating_sub(entry.in_flight.len());
            self.by_serial.remove(&entry.serial);
            if let Some(wake) = entry.wake {
                self.wakes.remove(&wake);
            }
        }
    }

    /// Looks at `serial` again at `at` (or earlier, if it is already due earlier).
    fn schedule(&mut self, serial: u64, at: u64) {
        let Some(key) = self.by_serial.get(&serial) else {
            return;
        };
        let Some(entry) = self.entries.get_mut(key) else {
            return;
        };
        if let Some(old) = entry.wake {
            if old.0 <= at {
                return;
            }
            self.wakes.remove(&old);
        }
        entry.wake = Some((at, serial));
        self.wakes.insert((at, serial));
    }

    /// Decides what an entry needs now.
    fn visit(&mut self, key: &Key, now: u64, actions: &mut Vec<Action>) {
        let settings = self.settings;
        let me = self.me;
        let Some(entry) = self.entries.get(key) else {
            return;
        };
        let serial = entry.serial;
        let added_ms = entry.added_ms;
        if now.saturating_sub(entry.added_ms) >= settings.retention_ms {
            // Retention passed: a replica still missing it rejoins as new.
            let update = entry.update.clone();
            self.remove(key);
            actions.push(Action::Retire {
                update,
                notify: Vec::new(),
            });
            return;
        }
        let origin = entry.update.origin;
        let origin_live = origin == me || self.is_live(origin);
        let tombstone = entry.update.kind == UpdateKind::Delete;
        // A tombstone's coordinator keeps it for its minimum age before it tells the others
        // to retire it: that wait is not a lost notice.
        let takeover_after = if tombstone {
            settings
                .takeover_after_ms
                .saturating_add(settings.tombstone_min_age_ms)
        } else {
            settings.takeover_after_ms
        };
        let overdue = now.saturating_sub(entry.added_ms) >= takeover_after;
        if !(origin == me || !origin_live || overdue) {
            // The coordinator drives it; look again when it may be overdue.
            self.schedule(serial, entry.added_ms.saturating_add(takeover_after));
            return;
        }
        // Replicas whose acknowledgement is needed: all but a coordinator that is not live,
        // and for a put, none declared dead (healing replaces them).
        let missing: Vec<NodeId> = entry
            .update
            .replicas
            .iter()
            .copied()
            .filter(|r| {
                !entry.acked.contains(r)
                    && (*r != origin || origin_live)
                    && (tombstone || !self.is_dead(*r))
            })
            .collect();
        if missing.is_empty() {
            let complete = entry.complete_ms.unwrap_or(now);
            let mut retire_at = complete.saturating_add(settings.straggler_wait_ms);
            if tombstone {
                retire_at = retire_at.max(added_ms.saturating_add(settings.tombstone_min_age_ms));
            }
            if retire_at <= now {
                let update = entry.update.clone();
                let notify = update
                    .replicas
                    .iter()
                    .copied()
                    .filter(|r| *r != me && self.is_live(*r))
                    .collect();
                self.remove(key);
                actions.push(Action::Retire { update, notify });
            } else {
                if let Some(entry) = self.entries.get_mut(key) {
                    entry.complete_ms = Some(complete);
                }
                self.schedule(serial, retire_at);
            }
            return;
        }
        let mut pushed = Vec::new();
        let mut blocked = false;
        for node in missing {
            if entry.in_flight.contains(&node) || !self.is_live(node) {
                continue;
            }
            if self.in_flight + pushed.len() >= settings.pushes_in_flight_max {
                blocked = true;
                break;
            }
            pushed.push(node);
        }
        let update = entry.update.clone();
        if let Some(entry) = self.entries.get_mut(key) {
            entry.in_flight.extend(pushed.iter().copied());
        }
        self.in_flight += pushed.len();
        for to in pushed {
            actions.push(Action::Push {
                to,
                update: update.clone(),
            });
        }
        if blocked {
            self.schedule(serial, now + settings.retry_ms);
        }
        // Otherwise it waits for answers (acked / failed) or a view change, and at the latest
        // for its retention to pass.
        self.schedule(serial, added_ms + settings.retention_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(kind: UpdateKind, hlc: u64, origin: NodeId, replicas: &[NodeId]) -> Update {
        Update {
            user: "u".into(),
            id: 1,
            kind,
            hlc,
            origin,
            replicas: replicas.to_vec(),
        }
    }

    fn pushes(actions: &[Action]) -> Vec<NodeId> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Push { to, .. } => Some(*to),
                Action::Retire { .. } => None,
            })
            .collect()
    }

    fn settings() -> Settings {
        Settings {
            retry_ms: 100,
            straggler_wait_ms: 50,
            takeover_after_ms: 1000,
            retention_ms: 100_000,
            tombstone_min_age_ms: 0,
            pushes_in_flight_max: 8,
        }
    }

    #[test]
    fn the_coordinator_pushes_retires_after_the_straggler_wait_and_notifies() {
        let mut r = Replicator::new(1, settings());
        r.view_changed(&[1, 2, 3], 0);
        let actions = r.add(update(UpdateKind::Put, 10, 1, &[1, 2, 3]), &[], 0);
        assert_eq!(pushes(&actions), vec![2, 3]);
        assert!(r.acked("u", 1, 10, 2, 5).is_empty());
        assert!(!r.acked_by_all("u", 1, 10));
        assert!(r.acked("u", 1, 10, 3, 6).is_empty());
        assert!(r.acked_by_all("u", 1, 10));
        assert!(r.tick(40).is_empty());
        let actions = r.tick(60);
        assert_eq!(
            actions,
            vec![Action::Retire {
                update: update(UpdateKind::Put, 10, 1, &[1, 2, 3]),
                notify: vec![2, 3]
            }]
        );
        assert_eq!(r.pending(), 0);
    }

    #[test]
    fn failed_pushes_are_retried_and_dead_replicas_wait_for_their_return() {
        let mut r = Replicator::new(1, settings());
        r.view_changed(&[1, 2], 0);
        let actions = r.add(update(UpdateKind::Put, 10, 1, &[1, 3]), &[], 0);
        assert!(pushes(&actions).is_empty(), "3 is not live");
        assert!(r.tick(10_000).is_empty());
        r.view_changed(&[1, 2, 3], 20_000);
        assert_eq!(pushes(&r.tick(20_000)), vec![3]);
        r.failed("u", 1, 3, 20_010);
        assert!(r.tick(20_050).is_empty());
        assert_eq!(pushes(&r.tick(20_110)), vec![3]);
        r.acked("u", 1, 10, 3, 20_120);
        assert!(matches!(r.tick(20_200)[..], [Action::Retire { .. }]));
    }

    #[test]
    fn a_tombstone_outlives_a_delivery_that_may_still_retry_its_message() {
        let settings = Settings {
            tombstone_min_age_ms: 30_000,
            ..settings()
        };
        let mut r = Replicator::new(1, settings);
        r.view_changed(&[1, 2], 0);
        assert_eq!(
            pushes(&r.add(update(UpdateKind::Delete, 20, 1, &[1, 2]), &[], 0)),
            vec![2]
        );
        r.acked("u", 1, 20, 2, 10);
        // Acknowledged by every replica, past the straggler wait: still kept.
        assert!(r.tick(1_000).is_empty());
        assert!(r.tick(29_999).is_empty());
        assert_eq!(r.pending(), 1);
        assert!(matches!(r.tick(30_000)[..], [Action::Retire { .. }]));
        // A put waits only for the stragglers.
        let mut r = Replicator::new(1, settings);
        r.view_changed(&[1, 2], 0);
        r.add(update(UpdateKind::Put, 10, 1, &[1, 2]), &[], 0);
        r.acked("u", 1, 10, 2, 10);
        assert!(matches!(r.tick(100)[..], [Action::Retire { .. }]));
        // A holder that is not the coordinator does not take a kept tombstone for a lost
        // retire notice until the minimum age and the takeover wait have both passed.
        let mut r = Replicator::new(2, settings);
        r.view_changed(&[1, 2, 3], 0);
        assert!(r
            .add(update(UpdateKind::Delete, 20, 1, &[1, 2, 3]), &[1], 0)
            .is_empty());
        assert!(pushes(&r.tick(30_000)).is_empty());
        assert_eq!(pushes(&r.tick(31_000)), vec![3]);
    }

    #[test]
    fn a_holder_takes_over_when_the_coordinator_is_gone_or_silent() {
        let mut r = Replicator::new(2, settings());
        r.view_changed(&[1, 2, 3], 0);
        let actions = r.add(update(UpdateKind::Put, 10, 1, &[1, 2, 3]), &[1], 0);
        assert!(actions.is_empty(), "the coordinator is live and drives it");
        // The coordinator dies: this holder pushes to the third replica and retires.
        r.view_changed(&[2, 3], 100);
        assert_eq!(pushes(&r.tick(100)), vec![3]);
        r.acked("u", 1, 10, 3, 110);
        let actions = r.tick(200);
        assert_eq!(
            actions,
            vec![Action::Retire {
                update: update(UpdateKind::Put, 10, 1, &[1, 2, 3]),
                notify: vec![3]
            }]
        );
        // A live coordinator whose retire notice never came: taken over after a while.
        let mut r = Replicator::new(2, settings());
        r.view_changed(&[1, 2, 3], 0);
        r.add(update(UpdateKind::Put, 10, 1, &[1, 2, 3]), &[1], 0);
        assert!(r.tick(999).is_empty());
        assert_eq!(pushes(&r.tick(1000)), vec![3]);
        r.acked("u", 1, 10, 3, 1001);
        assert!(matches!(r.tick(1100)[..], [Action::Retire { .. }]));
    }

    #[test]
    fn a_tombstone_replaces_a_pending_put_but_not_the_reverse() {
        let mut r = Replicator::new(1, settings());
        r.view_changed(&[1], 0);
        r.add(update(UpdateKind::Put, 10, 1, &[1, 2]), &[], 0);
        r.add(update(UpdateKind::Delete, 20, 1, &[1, 2]), &[], 1);
        assert!(r.is_pending("u", 1, 20));
        r.add(update(UpdateKind::Put, 30, 2, &[2, 1]), &[], 2);
        assert!(r.is_pending("u", 1, 20));
        assert!(!r.retired("u", 1, 10));
        assert!(r.retired("u", 1, 20));
        assert_eq!(r.pending(), 0);
    }

    #[test]
    fn a_put_stops_waiting_for_a_dead_node_and_a_tombstone_does_not() {
        let mut r = Replicator::new(1, settings());
        r.view_changed(&[1, 2], 0);
        r.add(update(UpdateKind::Put, 10, 1, &[1, 3]), &[], 0);
        let mut tomb = update(UpdateKind::Delete, 20, 1, &[1, 3]);
        tomb.id = 2;
        r.add(tomb, &[], 0);
        assert!(r.tick(5_000).is_empty(), "3 is away, not dead");
        r.dead_changed(&[3], 5_000);
        let actions = r.tick(5_000);
        assert!(actions.is_empty(), "straggler wait first: {actions:?}");
        let actions = r.tick(5_100);
        assert_eq!(actions.len(), 1);
        assert!(
            matches!(&actions[0], Action::Retire { update, .. } if update.id == 1),
            "the put retires without the dead node, the tombstone waits: {actions:?}"
        );
        assert!(r.is_pending("u", 2, 20));
        // The dead node returns: the tombstone reaches it.
        r.view_changed(&[1, 2, 3], 6_000);
        r.dead_changed(&[], 6_000);
        assert_eq!(pushes(&r.tick(6_000)), vec![3]);
    }

    #[test]
    fn a_widened_replica_set_widens_the_pending_update() {
        let mut r = Replicator::new(2, settings());
        r.view_changed(&[1, 2, 4], 0);
        // Coordinated by 1, which already pushed to 2; 3 has died.
        r.add(update(UpdateKind::Put, 10, 1, &[1, 2, 3]), &[1], 0);
        r.dead_changed(&[3], 0);
        // Healing here widens it to 4: this node pushes to 4 itself.
        let actions = r.add(update(UpdateKind::Put, 10, 1, &[1, 2, 3, 4]), &[2], 10);
        assert!(actions.is_empty(), "the coordinator is live and drives it");
        assert_eq!(pushes(&r.tick(1_000)), vec![4], "taken over when overdue");
        r.acked("u", 1, 10, 4, 1_010);
        let actions = r.tick(1_100);
        assert!(
            matches!(&actions[..], [Action::Retire { update, notify }]
                if update.replicas == vec![1, 2, 3, 4] && notify == &vec![1, 4]),
            "{actions:?}"
        );
        // The same replicas again: nothing new.
        let mut r = Replicator::new(1, settings());
        r.view_changed(&[1, 2], 0);
        r.add(update(UpdateKind::Put, 10, 1, &[1, 2]), &[], 0);
        assert!(r
            .add(update(UpdateKind::Put, 10, 1, &[1, 2]), &[], 1)
            .is_empty());
    }

    #[test]
    fn pushes_in_flight_are_bounded_and_retention_drops_old_updates() {
        let mut r = Replicator::new(
            1,
            Settings {
                pushes_in_flight_max: 2,
                ..settings()
            },
        );
        r.view_changed(&[1, 2], 0);
        let mut pushed = 0;
        for id in 0..5 {
            let mut u = update(UpdateKind::Put, 10, 1, &[1, 2]);
            u.id = id;
            pushed += pushes(&r.add(u, &[], 0)).len();
        }
        assert_eq!(pushed, 2);
        assert_eq!(r.pushes_in_flight(), 2);
        r.acked("u", 0, 10, 2, 1);
        assert_eq!(pushes(&r.tick(100)).len(), 1);
        let retired = r
            .tick(100_000)
            .iter()
            .filter(|a| matches!(a, Action::Retire { notify, .. } if notify.is_empty()))
            .count();
        assert!(retired >= 3, "old entries are dropped");
    }
}
