//! A shard's in-memory index: user → messages (id, location, size, timestamp, flags, replica
//! set), the newest profile of each user, how many live bytes each segment holds (for
//! compaction), and the replicated updates not yet acknowledged by every replica (pending).
//!
//! The index is soft state: it is rebuilt from the log (or a checkpoint plus the log's tail)
//! and is changed only by the writer, in log order, once the records are durable.

use std::collections::{BTreeMap, HashMap};

use crate::record::{user_key, ReplicaSet, Retired};

/// Where a record lies: segment, byte offset, and its encoded length (padding included).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Location {
    pub segment: u32,
    pub offset: u32,
    pub len: u32,
}

/// One stored message of a user.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MessageEntry {
    pub id: u128,
    pub location: Location,
    pub body_len: u32,
    pub hlc: u64,
    pub flags: u32,
    /// The oldest segment that may still hold a copy of this message's put record: a
    /// tombstone for it must survive compaction while any segment from here on exists.
    pub oldest_segment: u32,
    /// The node that coordinated the put.
    pub origin: u32,
    /// Where the put was replicated (empty if it was not).
    pub replicas: ReplicaSet,
    /// Where the message is filed for IMAP (set with [`crate::Shard::set_filing`]).
    pub filing: Filing,
}

/// Where a message is filed for IMAP: folder, UID, MODSEQ and an INTERNALDATE override. The
/// engine keeps it with the message (in flag-update records, see [`crate::record`]) and makes
/// nothing of it; all zero: never filed (new mail, in INBOX).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Filing {
    pub folder: u32,
    pub uid: u32,
    pub modseq: u64,
    pub date: i64,
}

pub use porcupine_types::UpdateKind;

/// A replicated update that not every replica has acknowledged yet: the update log's entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingUpdate {
    pub user: Box<str>,
    pub id: u128,
    pub kind: UpdateKind,
    pub hlc: u64,
    /// The node that coordinated the update.
    pub origin: u32,
    pub replicas: ReplicaSet,
}

pub use porcupine_types::supersedes;

/// A tombstone's replication: when, by whom, and to which nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tomb {
    pub hlc: u64,
    pub origin: u32,
    pub replicas: ReplicaSet,
}

impl Tomb {
    /// The tombstone a delete record describes.
    pub fn of(meta: &crate::record::RecordMeta) -> Self {
        Self {
            hlc: meta.hlc,
            origin: meta.node_id,
            replicas: meta.replicas,
        }
    }
}

/// The newest profile record of a user.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProfileEntry {
    pub location: Location,
    pub hlc: u64,
    pub body_len: u32,
}

impl ProfileEntry {
    /// An empty profile is a removed user's tombstone: it replaces the profile everywhere (the
    /// newest update wins), so the user is gone on every node and an older copy that comes
    /// back later loses to it.
    pub fn is_removed(&self) -> bool {
        self.body_len == 0
    }
}

/// One user's messages, by id (O(1) put, lookup and delete however large the mailbox grows),
/// and what they add up to.
#[derive(Debug, Default)]
struct Mailbox {
    messages: HashMap<u128, MessageEntry>,
    usage: Vec<Usage>,
}

/// The messages of one user here that share one replica set, added up (a quota's usage is
/// told from these without reading the mailbox: every holder of a set counts the same
/// messages, so across nodes each set is counted once).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    /// The replica set, its nodes in ascending order (empty: not replicated).
    pub replicas: ReplicaSet,
    pub messages: u64,
    pub bytes: u64,
}

/// A replica set in the order [`Usage`] keys it by.
fn usage_key(replicas: ReplicaSet) -> ReplicaSet {
    let mut nodes = [0u32; crate::record::REPLICAS_MAX];
    let slice = replicas.as_slice();
    nodes[..slice.len()].copy_from_slice(slice);
    nodes[..slice.len()].sort_unstable();
    ReplicaSet::new(nodes[..slice.len()].iter().copied())
}

impl Mailbox {
    fn count(&mut self, entry: &MessageEntry, sign: Sign) -> Result<(), String> {
        let key = usage_key(entry.replicas);
        let bytes = u64::from(entry.body_len);
        let at = match self.usage.iter().position(|u| u.replicas == key) {
            Some(at) => at,
            None => {
                self.usage.push(Usage {
                    replicas: key,
                    messages: 0,
                    bytes: 0,
                });
                self.usage.len() - 1
            }
        };
        let usage = &mut self.usage[at];
        match sign {
            Sign::Add => {
                usage.messages = usage.messages.saturating_add(1);
                usage.bytes = usage.bytes.saturating_add(bytes);
            }
            Sign::Sub => {
                let (Some(messages), Some(left)) = (
                    usage.messages.checked_sub(1),
                    usage.bytes.checked_sub(bytes),
                ) else {
                    return Err(format!(
                        "usage below zero removing message {} ({bytes} bytes) from {usage:?}",
                        entry.id
                    ));
                };
                usage.messages = messages;
                usage.bytes = left;
                if messages == 0 {
                    self.usage.swap_remove(at);
                }
            }
        }
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum Sign {
    Add,
    Sub,
}

#[derive(Debug, Default)]
pub struct Index {
    mailboxes: HashMap<Box<str>, Mailbox>,
    profiles: HashMap<Box<str>, ProfileEntry>,
    live_bytes: BTreeMap<u32, u64>,
    message_count: u64,
    /// (user key, message id) → the newest pending update of that message.
    pending: HashMap<(u64, u128), PendingUpdate>,
    /// User → ids of messages whose tombstone is pending (so a listing can leave out copies
    /// that other replicas still show).
    pending_tombstones: HashMap<Box<str>, Vec<u128>>,
    /// Tombstones retired recently (oldest first): a put of such a message still on its way
    /// (a retried push, a placement retried elsewhere) is refused for a while after.
    retired_tombstones: std::collections::VecDeque<(u64, u128)>,
    retired_tombstone_set: std::collections::HashSet<(u64, u128)>,
    /// The first broken invariant of the bookkeeping seen since the last
    /// [`Index::take_violation`] (the writer and recovery check it and poison the shard).
    violation: Option<String>,
}

/// Retired tombstones remembered (in memory only) to refuse late puts.
const RETIRED_TOMBSTONES_KEPT: usize = 1 << 16;

impl Index {
    pub fn new() -> Self {
        Self::default()
    }

    /// Messages of a user, oldest first (by timestamp, then id).
    pub fn messages(&self, user: &str) -> Vec<MessageEntry> {
        let mut messages: Vec<MessageEntry> = self
            .mailboxes
            .get(user)
            .map(|m| m.messages.values().copied().collect())
            .unwrap_or_default();
        messages.sort_unstable_by_key(|m| (m.hlc, m.id));
        messages
    }

    pub fn has_messages(&self, user: &str) -> bool {
        self.mailboxes.contains_key(user)
    }

    pub fn message(&self, user: &str, id: u128) -> Option<&MessageEntry> {
        self.mailboxes.get(user)?.messages.get(&id)
    }

    /// The timestamp of the user's oldest message here.
    pub fn oldest_hlc(&self, user: &str) -> Option<u64> {
        self.mailboxes
            .get(user)?
            .messages
            .values()
            .map(|m| m.hlc)
            .min()
    }

    /// What the user's messages here add up to, by replica set.
    pub fn usage(&self, user: &str) -> &[Usage] {
        self.mailboxes.get(user).map_or(&[], |m| m.usage.as_slice())
    }

    pub fn profile(&self, user: &str) -> Option<&ProfileEntry> {
        self.profiles.get(user)
    }

    /// Users with at least one message.
    pub fn users(&self) -> impl Iterator<Item = &str> {
        self.mailboxes.keys().map(|u| &**u)
    }

    /// Users with a profile.
    pub fn profile_users(&self) -> impl Iterator<Item = (&str, &ProfileEntry)> {
        self.profiles.iter().map(|(u, p)| (&**u, p))
    }

    /// Every mailbox, its messages in no particular order.
    pub fn mailboxes(
        &self,
    ) -> impl Iterator<Item = (&str, usize, impl Iterator<Item = &MessageEntry>)> {
        self.mailboxes
            .iter()
            .map(|(u, m)| (&**u, m.messages.len(), m.messages.values()))
    }

    pub fn message_count(&self) -> u64 {
        self.message_count
    }

    pub fn user_count(&self) -> usize {
        self.mailboxes.len()
    }

    /// Bytes of records in `segment` that the index still points at.
    pub fn live_bytes(&self, segment: u32) -> u64 {
        self.live_bytes.get(&segment).copied().unwrap_or(0)
    }

    fn add_live(&mut self, location: Location) {
        *self.live_bytes.entry(location.segment).or_default() += u64::from(location.len);
    }

    fn sub_live(&mut self, location: Location) {
        let len = u64::from(location.len);
        match self.live_bytes.get_mut(&location.segment) {
            Some(bytes) if *bytes >= len => *bytes -= len,
            found => {
                let had = found.map(std::mem::take);
                self.violate(format!(
                    "live bytes of segment {} would go below zero: {had:?} less {len} for the \
                     record at {location:?}",
                    location.segment
                ));
            }
        }
    }

    fn violate(&mut self, what: String) {
        self.violation.get_or_insert(what);
    }

    /// The first broken invariant of the index's bookkeeping since the last call, if any:
    /// bytes counted live in a segment going below zero (or in a segment already forgotten),
    /// a message count going below zero, a segment forgotten while records in it are live.
    pub fn take_violation(&mut self) -> Option<String> {
        self.violation.take()
    }

    /// Forgets a segment's accounting once the segment is gone.
    pub fn forget_segment(&mut self, segment: u32) {
        if let Some(live) = self.live_bytes.remove(&segment).filter(|&b| b != 0) {
            self.violate(format!(
                "segment {segment} forgotten with {live} live bytes"
            ));
        }
    }

    /// The pending replicated update of a message, if any.
    pub fn pending(&self, user: &str, id: u128) -> Option<&PendingUpdate> {
        self.pending.get(&(user_key(user), id))
    }

    /// Whether a tombstone of this message is pending or was retired recently (so a put of it
    /// must not land).
    pub fn is_tombstoned(&self, user: &str, id: u128) -> bool {
        self.pending(user, id)
            .is_some_and(|p| p.kind == UpdateKind::Delete)
            || self.retired_tombstone_set.contains(&(user_key(user), id))
    }

    /// Ids of the user's messages deleted here whose tombstones are still pending.
    pub fn pending_tombstones(&self, user: &str) -> &[u128] {
        self.pending_tombstones
            .get(user)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// Users with at least one pending tombstone.
    pub fn tombstoned_users(&self) -> impl Iterator<Item = &str> {
        self.pending_tombstones.keys().map(|u| &**u)
    }

    fn track_tombstone(&mut self, update: &PendingUpdate, pending: bool) {
        if update.kind != UpdateKind::Delete {
            return;
        }
        if pending {
            let ids = match self.pending_tombstones.get_mut(&update.user) {
                Some(ids) => ids,
                None => self
                    .pending_tombstones
                    .entry(update.user.clone())
                    .or_default(),
            };
            if !ids.contains(&update.id) {
                ids.push(update.id);
            }
        } else if let Some(ids) = self.pending_tombstones.get_mut(&update.user) {
            ids.retain(|id| *id != update.id);
            if ids.is_empty() {
                self.pending_tombstones.remove(&update.user);
            }
        }
    }

    /// Every pending replicated update.
    pub fn pending_updates(&self) -> impl Iterator<Item = &PendingUpdate> {
        self.pending.values()
    }

    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// Records a replicated update as pending. A delete supersedes a put of the same message;
    /// a put never supersedes a delete; otherwise the newer update wins.
    pub fn note_pending(&mut self, update: PendingUpdate) {
        if !update.replicas.is_replicated() {
            return;
        }
        let key = (user_key(&update.user), update.id);
        let replace = self
            .pending
            .get(&key)
            .is_none_or(|old| supersedes((old.kind, old.hlc), (update.kind, update.hlc)));
        if replace {
            self.track_tombstone(&update, true);
            self.pending.insert(key, update);
        }
    }

    /// Retires a pending update if it is still the one pending; returns whether it was.
    pub fn retire(&mut self, retired: &Retired) -> bool {
        let key = (retired.user_key, retired.message_id);
        match self.pending.get(&key) {
            Some(p) if p.hlc == retired.hlc => {
                if let Some(update) = self.pending.remove(&key) {
                    self.track_tombstone(&update, false);
                    if update.kind == UpdateKind::Delete && self.retired_tombstone_set.insert(key) {
                        self.retired_tombstones.push_back(key);
                        if self.retired_tombstones.len() > RETIRED_TOMBSTONES_KEPT {
                            if let Some(oldest) = self.retired_tombstones.pop_front() {
                                self.retired_tombstone_set.remove(&oldest);
                            }
                        }
                    }
                }
                true
            }
            _ => false,
        }
    }

    /// Stores a message; a put of an id already present (a copy made by compaction, or a
    /// re-delivery) replaces it and keeps the older `oldest_segment`. A replicated put of a new
    /// message is pending until retired.
    pub fn put(&mut self, user: &str, entry: MessageEntry) {
        if !self.insert(user, entry) {
            // The same put written again with a wider replica set: a pending entry of it
            // reaches the wider set too.
            if let Some(pending) = self.pending.get_mut(&(user_key(user), entry.id)) {
                if pending.kind == UpdateKind::Put && pending.hlc == entry.hlc {
                    pending.replicas = entry.replicas;
                }
            }
            return;
        }
        self.note_pending(PendingUpdate {
            user: user.into(),
            id: entry.id,
            kind: UpdateKind::Put,
            hlc: entry.hlc,
            origin: entry.origin,
            replicas: entry.replicas,
        });
    }

    /// Stores a message as a checkpoint had it (its pending state is restored separately).
    pub fn restore(&mut self, user: &str, entry: MessageEntry) {
        self.insert(user, entry);
    }

    /// Inserts or replaces a message; returns whether it is new.
    fn insert(&mut self, user: &str, mut entry: MessageEntry) -> bool {
        self.add_live(entry.location);
        let mailbox = match self.mailboxes.get_mut(user) {
            Some(mailbox) => mailbox,
            None => self.mailboxes.entry(user.into()).or_default(),
        };
        // The replaced message's location, or `None` for a new message; then the tally.
        let (replaced, counted) = match mailbox.messages.insert(entry.id, entry) {
            Some(old) => {
                entry.oldest_segment = entry.oldest_segment.min(old.oldest_segment);
                // The same message written again (a wider replica set, compaction): its
                // filing stays unless the new record says otherwise.
                if entry.filing == Filing::default() {
                    entry.filing = old.filing;
                }
                mailbox.messages.insert(entry.id, entry);
                let counted = mailbox
                    .count(&old, Sign::Sub)
                    .and_then(|()| mailbox.count(&entry, Sign::Add));
                (Some(old.location), counted)
            }
            None => (None, mailbox.count(&entry, Sign::Add)),
        };
        if let Err(what) = counted {
            self.violate(what);
        }
        match replaced {
            Some(location) => {
                self.sub_live(location);
                false
            }
            None => {
                self.message_count += 1;
                true
            }
        }
    }

    /// Applies a tombstone: removes the message, and if the delete is replicated, keeps it
    /// pending until every replica has it.
    pub fn delete(&mut self, user: &str, id: u128, tomb: Tomb) -> Option<MessageEntry> {
        let removed = self.remove(user, id);
        self.note_pending(PendingUpdate {
            user: user.into(),
            id,
            kind: UpdateKind::Delete,
            hlc: tomb.hlc,
            origin: tomb.origin,
            replicas: tomb.replicas,
        });
        removed
    }

    /// Removes a message; returns it if it was there.
    pub fn remove(&mut self, user: &str, id: u128) -> Option<MessageEntry> {
        let mailbox = self.mailboxes.get_mut(user)?;
        let entry = mailbox.messages.remove(&id)?;
        let counted = mailbox.count(&entry, Sign::Sub);
        if mailbox.messages.is_empty() {
            self.mailboxes.remove(user);
        }
        if let Err(what) = counted {
            self.violate(what);
        }
        match self.message_count.checked_sub(1) {
            Some(count) => self.message_count = count,
            None => self.violate(format!("message count below zero removing {id} of {user}")),
        }
        self.sub_live(entry.location);
        Some(entry)
    }

    pub fn set_flags(&mut self, user: &str, id: u128, flags: u32) -> bool {
        match self
            .mailboxes
            .get_mut(user)
            .and_then(|m| m.messages.get_mut(&id))
        {
            Some(entry) => {
                entry.flags = flags;
                true
            }
            None => false,
        }
    }

    /// Sets a message's flags and filing.
    pub fn set_filing(&mut self, user: &str, id: u128, flags: u32, filing: Filing) -> bool {
        match self
            .mailboxes
            .get_mut(user)
            .and_then(|m| m.messages.get_mut(&id))
        {
            Some(entry) => {
                entry.flags = flags;
                entry.filing = filing;
                true
            }
            None => false,
        }
    }

    /// Points a message at its compacted copy, but only if it still lies at `from`: a delete
    /// or a newer put that raced with compaction wins.
    pub fn relocate(&mut self, user: &str, id: u128, from: Location, to: Location) -> bool {
        let Some(entry) = self
            .mailboxes
            .get_mut(user)
            .and_then(|m| m.messages.get_mut(&id))
        else {
            return false;
        };
        if entry.location != from {
            return false;
        }
        entry.location = to;
        self.sub_live(from);
        self.add_live(to);
        true
    }

    /// Records a profile; later records (in log order) win.
    pub fn put_profile(&mut self, user: &str, entry: ProfileEntry) {
        self.add_live(entry.location);
        let old = match self.profiles.get_mut(user) {
            Some(slot) => Some(std::mem::replace(slot, entry)),
            None => {
                self.profiles.insert(user.into(), entry);
                None
            }
        };
        if let Some(old) = old {
            self.sub_live(old.location);
        }
    }

    pub fn relocate_profile(&mut self, user: &str, from: Location, to: Location) -> bool {
        match self.profiles.get_mut(user) {
            Some(entry) if entry.location == from => {
                entry.location = to;
                self.sub_live(from);
                self.add_live(to);
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(segment: u32, offset: u32) -> Location {
        Location {
            segment,
            offset,
            len: 100,
        }
    }

    fn entry(id: u128, location: Location) -> MessageEntry {
        MessageEntry {
            id,
            location,
            body_len: 10,
            hlc: 1,
            flags: 0,
            oldest_segment: location.segment,
            origin: 0,
            replicas: ReplicaSet::NONE,
            filing: Filing::default(),
        }
    }

    #[test]
    fn usage_adds_up_by_replica_set_and_follows_rewrites_and_deletes() {
        let mut index = Index::new();
        let replicated = |id, nodes: &[u32]| MessageEntry {
            replicas: ReplicaSet::new(nodes.iter().copied()),
            ..entry(id, loc(1, id as u32 * 100))
        };
        index.put("u", entry(1, loc(1, 0)));
        index.put("u", replicated(2, &[2, 1]));
        index.put("u", replicated(3, &[1, 2]));
        let mut usage = index.usage("u").to_vec();
        usage.sort_by_key(|u| u.replicas.len());
        assert_eq!(usage.len(), 2, "{usage:?}");
        assert_eq!((usage[0].messages, usage[0].bytes), (1, 10));
        // One key for {2, 1} and {1, 2}: the holders of a set count the same messages.
        assert_eq!(usage[1].replicas.as_slice(), &[1, 2]);
        assert_eq!((usage[1].messages, usage[1].bytes), (2, 20));
        // Written again with a wider set: it moves, it is not counted twice.
        index.put("u", replicated(1, &[1, 3]));
        assert_eq!(index.usage("u").iter().map(|u| u.messages).sum::<u64>(), 3);
        index.remove("u", 2);
        index.remove("u", 3);
        index.remove("u", 1);
        assert!(index.usage("u").is_empty());
        assert!(index.take_violation().is_none());
    }

    #[test]
    fn replicated_updates_are_pending_until_retired_and_deletes_win() {
        let mut index = Index::new();
        let replicas = ReplicaSet::new([1, 2]);
        index.put(
            "a",
            MessageEntry {
                replicas,
                origin: 1,
                hlc: 5,
                ..entry(1, loc(1, 0))
            },
        );
        assert_eq!(index.pending("a", 1).map(|p| p.kind), Some(UpdateKind::Put));
        // A copy of the same message (compaction) does not make it pending again.
        let retired = Retired {
            user_key: user_key("a"),
            message_id: 1,
            hlc: 5,
        };
        assert!(index.retire(&retired));
        index.put(
            "a",
            MessageEntry {
                replicas,
                origin: 1,
                hlc: 5,
                ..entry(1, loc(2, 0))
            },
        );
        assert_eq!(index.pending_count(), 0);
        index.delete(
            "a",
            1,
            Tomb {
                hlc: 9,
                origin: 2,
                replicas,
            },
        );
        assert!(index.is_tombstoned("a", 1));
        // An older put does not replace the pending tombstone; a stale retire does not retire it.
        index.note_pending(PendingUpdate {
            user: "a".into(),
            id: 1,
            kind: UpdateKind::Put,
            hlc: 20,
            origin: 1,
            replicas,
        });
        assert!(index.is_tombstoned("a", 1));
        assert!(!index.retire(&retired));
        assert!(index.retire(&Retired { hlc: 9, ..retired }));
        assert!(index.pending("a", 1).is_none());
        assert!(
            index.is_tombstoned("a", 1),
            "remembered for a while after retirement"
        );
        assert!(index.pending_tombstones("a").is_empty());
        // Unreplicated updates are never pending.
        index.put("b", entry(3, loc(3, 0)));
        index.delete(
            "b",
            3,
            Tomb {
                hlc: 1,
                origin: 1,
                replicas: ReplicaSet::new([1]),
            },
        );
        assert_eq!(index.pending_count(), 0);
    }

    #[test]
    fn put_remove_and_accounting() {
        let mut index = Index::new();
        index.put("a", entry(1, loc(1, 0)));
        index.put("a", entry(2, loc(1, 100)));
        index.put("b", entry(3, loc(2, 0)));
        assert_eq!(index.message_count(), 3);
        assert_eq!(index.live_bytes(1), 200);
        assert_eq!(index.remove("a", 1).map(|e| e.id), Some(1));
        assert_eq!(index.remove("a", 1), None);
        assert_eq!(index.live_bytes(1), 100);
        assert_eq!(index.messages("a").len(), 1);
        assert_eq!(index.message_count(), 2);
    }

    #[test]
    fn relocation_loses_to_a_racing_delete_and_keeps_the_oldest_segment() {
        let mut index = Index::new();
        index.put("a", entry(1, loc(1, 0)));
        assert!(index.relocate("a", 1, loc(1, 0), loc(3, 0)));
        assert!(!index.relocate("a", 1, loc(1, 0), loc(4, 0)));
        assert_eq!(index.message("a", 1).map(|e| e.location), Some(loc(3, 0)));
        index.put("a", entry(1, loc(5, 0)));
        assert_eq!(index.message("a", 1).map(|e| e.oldest_segment), Some(1));
        assert_eq!(index.live_bytes(1), 0);
        assert_eq!(index.live_bytes(3), 0);
        assert_eq!(index.live_bytes(5), 100);
        index.remove("a", 1);
        assert!(!index.relocate("a", 1, loc(5, 0), loc(6, 0)));
    }
}
