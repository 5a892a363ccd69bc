//! The maildrop policy (sans-IO): how a POP3 session opens a user's mailbox spread over
//! fragment nodes, deletes from it and lets it go — the sequence where a message deleted by
//! one session could be shown again to the next. One state machine per step of a session,
//! driven by the node with real requests and by the seeded simulator (`tests/policy_sim.rs`).
//!
//! - [`Open`]: only in a view that holds a majority of the known cluster (the minority side
//!   of a partition cannot know what the majority deleted); lock the maildrop at the user's
//!   bucket manager (a lock counts only if it was
//!   granted in the membership this node still has once the lock is recorded among this node's
//!   reports: then any later manager learns of it), list every fragment node the manager names,
//!   drop every message some node holds a tombstone for, and keep each id once, oldest first.
//!   A fragment node that does not answer fails the open (the client is told to retry): its
//!   tombstones are unknown, and a message it deleted could be shown again from a replica its
//!   tombstone has not reached. A membership change before the last listing starts the open
//!   again: views of a flapping partition can overlap, each with a majority and a manager that
//!   granted the lock, and a listing taken under the older one may predate the other
//!   session's deletes. The session is then confirmed in the view of its lock, not a later one.
//! - [`Delete`]: a tombstone on every node that listed each message and on every member of
//!   its replica set (a replica whose copy arrived after the listing holds one too); done only
//!   when every one of them took it durably. Acknowledged with a tombstone on a single holder,
//!   a delete could be undone by the next session if that holder stopped answering before it
//!   had replicated the tombstone (both found by `tests/policy_sim.rs`).
//! - [`Unlock`]: forget the lock here first (no later report names it), then ask managers until
//!   one releases it in the membership this node still has afterwards.
//!
//! Time comes in as [`Facts::now_ms`], the view as [`Facts::view`].

use std::collections::BTreeMap;

use crate::delivery::{Facts, StoreError};
use crate::membership::{Epoch, NodeId};
use crate::rpc::{CallError, Failure, LockMaildrop, Locked, UnlockMaildrop, Unlocked};
/// What one fragment node listed: its messages and its tombstoned ids.
pub use crate::rpc::{Listed as Listing, ListedMessage};

/// A lock owner: the node and its session number.
pub type Owner = (NodeId, u64);

/// Timing of the maildrop machines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaildropSettings {
    /// How long opening may wait for the cluster.
    pub patience_ms: u64,
    /// How long a session's end keeps trying to release its lock.
    pub unlock_patience_ms: u64,
    pub retry_pause_ms: u64,
}

impl Default for MaildropSettings {
    fn default() -> Self {
        Self {
            patience_ms: 5_000,
            unlock_patience_ms: 30_000,
            retry_pause_ms: 20,
        }
    }
}

/// One message of an open maildrop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaildropMessage {
    pub id: u128,
    pub size: u64,
    /// The nodes that listed it.
    pub holders: Vec<NodeId>,
    /// Its replica set as the holders know it (empty: not replicated).
    pub replicas: Vec<NodeId>,
}

/// An opened (locked, listed) maildrop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opened {
    /// Oldest first, each id once.
    pub messages: Vec<MaildropMessage>,
    /// Every node the manager knew to hold mail of the user when the maildrop opened.
    pub fragments: Vec<NodeId>,
    pub owner: Owner,
    /// The membership the lock was granted and recorded in, unchanged until the last listing:
    /// the session's deletes are acknowledged only while a majority still confirms it.
    pub epoch: Epoch,
}

/// Why a maildrop did not open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenFailure {
    BadCredentials,
    InUse,
    Unavailable,
}

/// How many members of a view of `members` nodes other than this one must answer that they
/// are in this node's epoch before a maildrop opens, and again before its deletes are
/// acknowledged: with this node, a majority of the view. The view's own majority of the known
/// cluster is not enough: while a partition heals, two views can each hold a majority of the
/// known nodes at once (a node in both moved on; the other has not heard), and each view's
/// manager would grant the same maildrop. A majority that answers "this epoch" after the
/// tombstones are written orders this session's deletes before any session of a later view.
pub fn confirmations_needed(members: usize) -> usize {
    members / 2
}

/// Whether a manager's answer from `epoch` holds: it is the epoch of the view the request
/// went out under (`asked_in`), and this node has not moved on since (`now_in`).
pub fn still_in(asked_in: Epoch, epoch: Epoch, now_in: Epoch) -> bool {
    epoch == asked_in && now_in == epoch
}

/// An event for [`Open`]: the answer to its last action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpenInput {
    Start,
    /// The manager's answer to the lock.
    Locked(Result<Locked, CallError>),
    /// A fragment node's listing (`None`: it did not answer).
    Listed(Option<Listing>),
    /// A fire-and-forget action was carried out, or a pause is over.
    Continue,
}

/// What the driver of [`Open`] does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpenAction {
    /// Ask the manager of the user's bucket in `Facts::view`. Answer: `Locked`.
    Lock(LockMaildrop),
    /// Record the lock among this node's reports to the managers. Answer: `Continue`.
    RecordLock(Owner),
    /// List the user's fragment on `node` (this node or another). Answer: `Listed`.
    List(NodeId),
    /// Pause, then `Continue`.
    Sleep {
        ms: u64,
    },
    /// Did not open. The lock may have been granted all the same (in an answer seen here or
    /// one lost with its connection): the driver releases it ([`Unlock`]) in the background.
    Failed(OpenFailure),
    Opened(Opened),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum OpenPhase {
    Locking,
    /// Waiting for the manager's answer to a lock asked in `asked_in`.
    AwaitingLock {
        asked_in: Epoch,
    },
    /// The lock was granted in `granted`; waiting for it to be recorded.
    Recording {
        asked_in: Epoch,
        granted: Epoch,
        fragments: Vec<NodeId>,
    },
    Pausing,
    /// Listing `fragments` under a lock granted and recorded in `granted`.
    Listing {
        fragments: Vec<NodeId>,
        next: usize,
        granted: Epoch,
    },
    Done,
}

/// Opening one user's maildrop for one session.
#[derive(Clone, Debug)]
pub struct Open {
    user: String,
    owner: Owner,
    settings: MaildropSettings,
    deadline_ms: u64,
    phase: OpenPhase,
    by_id: BTreeMap<u128, MaildropMessage>,
    tombstoned: Vec<u128>,
    /// The newest IMAP filing any copy reported, per message: POP3 shows INBOX only.
    filed: BTreeMap<u128, crate::mailbox::MessageMeta>,
}

impl Open {
    pub fn new(user: &str, owner: Owner, settings: MaildropSettings, now_ms: u64) -> Self {
        Self {
            user: user.to_owned(),
            owner,
            settings,
            deadline_ms: now_ms.saturating_add(settings.patience_ms),
            phase: OpenPhase::Locking,
            by_id: BTreeMap::new(),
            tombstoned: Vec::new(),
            filed: BTreeMap::new(),
        }
    }

    pub fn step(&mut self, input: OpenInput, facts: Facts<'_>) -> OpenAction {
        let phase = std::mem::replace(&mut self.phase, OpenPhase::Done);
        match (phase, input) {
            (OpenPhase::Done, _) => OpenAction::Failed(OpenFailure::Unavailable),
            (OpenPhase::Locking, _) | (OpenPhase::Pausing, _) => self.ask_lock(facts),
            (OpenPhase::AwaitingLock { asked_in }, OpenInput::Locked(answer)) => match answer {
                Ok(Locked { fragments, epoch }) => {
                    self.phase = OpenPhase::Recording {
                        asked_in,
                        granted: epoch,
                        fragments,
                    };
                    OpenAction::RecordLock(self.owner)
                }
                Err(CallError::Refused(Failure::InUse)) => self.fail(OpenFailure::InUse),
                _ if facts.now_ms >= self.deadline_ms => self.fail(OpenFailure::Unavailable),
                _ => {
                    self.phase = OpenPhase::Pausing;
                    OpenAction::Sleep {
                        ms: self.settings.retry_pause_ms,
                    }
                }
            },
            (OpenPhase::AwaitingLock { .. }, _) => self.fail(OpenFailure::Unavailable),
            (
                OpenPhase::Recording {
                    asked_in,
                    granted,
                    fragments,
                },
                _,
            ) => {
                // Granted in the membership this node now has: any later change finds the
                // lock among this node's reports. Otherwise lock again (same owner).
                if still_in(asked_in, granted, facts.view.epoch) && facts.majority {
                    self.list_next(fragments, 0, granted)
                } else if facts.now_ms >= self.deadline_ms {
                    self.fail(OpenFailure::Unavailable)
                } else {
                    self.ask_lock(facts)
                }
            }
            (
                OpenPhase::Listing {
                    fragments,
                    next,
                    granted,
                },
                input,
            ) => {
                // The membership changed while listing: the new one's manager may hold another
                // session's lock, granted in a view that overlapped this one (both sides of a
                // flapping partition can hold a majority for a moment), and what was listed may
                // predate that session's deletes. Start again under a lock of the new view; the
                // manager refuses it while the other session holds the maildrop.
                if facts.view.epoch != granted || !facts.majority {
                    self.by_id.clear();
                    self.tombstoned.clear();
                    self.filed.clear();
                    if facts.now_ms >= self.deadline_ms {
                        return self.fail(OpenFailure::Unavailable);
                    }
                    return self.ask_lock(facts);
                }
                let node = fragments.get(next).copied();
                let mut listed = false;
                if let (Some(node), OpenInput::Listed(Some(listing))) = (node, input) {
                    listed = true;
                    self.tombstoned.extend(listing.deleted);
                    for listed in listing.messages {
                        if let Some(meta) = listed.meta {
                            let newest = self.filed.entry(listed.id).or_insert(meta);
                            if meta.modseq > newest.modseq {
                                *newest = meta;
                            }
                        }
                        let message =
                            self.by_id
                                .entry(listed.id)
                                .or_insert_with(|| MaildropMessage {
                                    id: listed.id,
                                    size: listed.size,
                                    holders: Vec::new(),
                                    replicas: Vec::new(),
                                });
                        message.holders.push(node);
                        for replica in listed.replicas {
                            if !message.replicas.contains(&replica) {
                                message.replicas.push(replica);
                            }
                        }
                    }
                }
                if !listed {
                    return self.fail(OpenFailure::Unavailable);
                }
                self.list_next(fragments, next.saturating_add(1), granted)
            }
        }
    }

    fn ask_lock(&mut self, facts: Facts<'_>) -> OpenAction {
        // Without a majority this node may be the minority side of a partition: what the
        // majority deleted meanwhile is unknown here. Wait for one (a membership round may be
        // about to end), then give up.
        if !facts.majority {
            if facts.now_ms >= self.deadline_ms {
                return self.fail(OpenFailure::Unavailable);
            }
            self.phase = OpenPhase::Pausing;
            return OpenAction::Sleep {
                ms: self.settings.retry_pause_ms,
            };
        }
        self.phase = OpenPhase::AwaitingLock {
            asked_in: facts.view.epoch,
        };
        OpenAction::Lock(LockMaildrop {
            user: self.user.clone(),
            owner: self.owner,
        })
    }

    fn list_next(&mut self, fragments: Vec<NodeId>, next: usize, granted: Epoch) -> OpenAction {
        if let Some(&node) = fragments.get(next) {
            self.phase = OpenPhase::Listing {
                fragments,
                next,
                granted,
            };
            return OpenAction::List(node);
        }
        // A copy on a replica that its tombstone has not reached yet is deleted all the same.
        for id in std::mem::take(&mut self.tombstoned) {
            self.by_id.remove(&id);
        }
        // POP3 and IMAP share INBOX; mail an IMAP client filed in another folder is not in the
        // maildrop (a copy that missed the filing shows it until the next open sees it).
        for (id, meta) in std::mem::take(&mut self.filed) {
            if meta.folder != crate::mailbox::INBOX {
                self.by_id.remove(&id);
            }
        }
        // Ids begin with their arrival time: in id order the maildrop is oldest first, and
        // each message appears once however many replicas listed it.
        OpenAction::Opened(Opened {
            messages: std::mem::take(&mut self.by_id).into_values().collect(),
            fragments,
            owner: self.owner,
            epoch: granted,
        })
    }

    fn fail(&mut self, failure: OpenFailure) -> OpenAction {
        self.phase = OpenPhase::Done;
        OpenAction::Failed(failure)
    }
}

/// An event for [`Delete`]: the outcome at the node of its last action.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeleteInput {
    Start,
    Deleted(Result<(), StoreError>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeleteAction {
    /// Write tombstones for `ids` on `node` (even where a message is not, so a late copy
    /// cannot land) and replicate them to their messages' replica sets and to `also`.
    /// Answer: `Deleted`.
    DeleteAt {
        node: NodeId,
        ids: Vec<u128>,
        also: Vec<NodeId>,
    },
    Finish(Result<(), StoreError>),
}

/// What a node's answer to a delete means: a full disk (no tombstone fits), or any other
/// failure (the delete is not acknowledged).
pub fn delete_outcome(answer: Result<(), CallError>) -> Result<(), StoreError> {
    answer.map_err(|error| match error {
        CallError::Refused(Failure::NoSpace) => StoreError::NoSpace,
        _ => StoreError::Failed,
    })
}

/// Deleting the messages at some indices of an opened maildrop (POP3's QUIT).
#[derive(Clone, Debug)]
pub struct Delete {
    /// What to delete where, in node order, and where those tombstones go on to.
    plan: Vec<(NodeId, Vec<u128>, Vec<NodeId>)>,
    next: usize,
    failure: Option<StoreError>,
}

impl Delete {
    /// Deletes the messages at `indices`. `members`: the nodes of the view this node has now;
    /// `fragments`: the maildrop's fragment nodes (a copy may lie on one that did not list).
    ///
    /// A replica that is not a member gets its tombstone from the others once it is back. Until
    /// then the delete would rest on fewer copies than the message had, and if those went down
    /// before the replica returned, its copy would be shown again: so a **stand-in** — a member
    /// that is neither a holder nor a replica — takes a tombstone too, durably before the
    /// answer. It reports the user's fragment to the managers while the tombstone is pending
    /// (until the absent replica has it), so every later session lists it and is told.
    pub fn new(
        messages: &[MaildropMessage],
        indices: &[usize],
        members: &[NodeId],
        fragments: &[NodeId],
    ) -> Self {
        let mut by_node: BTreeMap<NodeId, (Vec<u128>, Vec<NodeId>)> = BTreeMap::new();
        for &index in indices {
            let Some(message) = messages.get(index) else {
                continue;
            };
            let live = message.replicas.iter().filter(|r| members.contains(r));
            let mut targets: Vec<NodeId> = message.holders.iter().chain(live).copied().collect();
            targets.sort_unstable();
            targets.dedup();
            let absent = message.replicas.iter().any(|r| !members.contains(r));
            let stand_in = absent
                .then(|| {
                    let mut others: Vec<NodeId> = members
                        .iter()
                        .copied()
                        .filter(|m| !targets.contains(m))
                        .collect();
                    others.sort_unstable();
                    others.first().copied()
                })
                .flatten();
            // Where the tombstones go on to: the message's replicas first (a set holds a few
            // nodes), then the stand-in, then the other fragment nodes.
            let mut onward: Vec<NodeId> = message.replicas.clone();
            onward.extend(stand_in);
            onward.extend(fragments.iter().copied());
            targets.extend(stand_in);
            for node in targets {
                let (ids, also) = by_node.entry(node).or_default();
                ids.push(message.id);
                for n in &onward {
                    if !also.contains(n) {
                        also.push(*n);
                    }
                }
            }
        }
        Self {
            plan: by_node
                .into_iter()
                .map(|(node, (ids, also))| (node, ids, also))
                .collect(),
            next: 0,
            failure: None,
        }
    }

    pub fn step(&mut self, input: DeleteInput) -> DeleteAction {
        if let DeleteInput::Deleted(outcome) = input {
            if let Err(error) = outcome {
                self.failure = Some(error);
            }
            self.next = self.next.saturating_add(1);
        }
        if let Some((node, ids, also)) = self.plan.get(self.next) {
            return DeleteAction::DeleteAt {
                node: *node,
                ids: ids.clone(),
                also: also.clone(),
            };
        }
        // Done when every holder of every message has a durable tombstone: whichever of them
        // the next session reaches knows of the delete.
        match self.failure {
            Some(error) => DeleteAction::Finish(Err(error)),
            None => DeleteAction::Finish(Ok(())),
        }
    }
}

/// An event for [`Unlock`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UnlockInput {
    Start,
    /// The manager's answer to the unlock.
    Unlocked(Result<Unlocked, CallError>),
    Continue,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UnlockAction {
    /// Forget the lock in this node's reports. Answer: `Continue`.
    ForgetLock(Owner),
    /// Ask the manager of the user's bucket in `Facts::view`. Answer: `Unlocked`.
    Unlock(UnlockMaildrop),
    Sleep {
        ms: u64,
    },
    /// Released in the membership this node has.
    Released,
    /// Not released in time: the next membership change drops it (this node no longer
    /// reports it).
    GaveUp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum UnlockPhase {
    Forgetting,
    Asking { asked_in: Epoch },
    Pausing,
    Done,
}

/// Releasing a cluster maildrop lock. A manager releases only once every member's report of
/// its epoch has arrived, so no report of that epoch or a later one brings the lock back.
#[derive(Clone, Debug)]
pub struct Unlock {
    user: String,
    owner: Owner,
    deadline_ms: u64,
    retry_pause_ms: u64,
    phase: UnlockPhase,
}

impl Unlock {
    pub fn new(user: &str, owner: Owner, settings: MaildropSettings, now_ms: u64) -> Self {
        Self {
            user: user.to_owned(),
            owner,
            deadline_ms: now_ms.saturating_add(settings.unlock_patience_ms),
            retry_pause_ms: settings.retry_pause_ms,
            phase: UnlockPhase::Forgetting,
        }
    }

    pub fn step(&mut self, input: UnlockInput, facts: Facts<'_>) -> UnlockAction {
        let ask = |this: &mut Self| {
            this.phase = UnlockPhase::Asking {
                asked_in: facts.view.epoch,
            };
            UnlockAction::Unlock(UnlockMaildrop {
                user: this.user.clone(),
                owner: this.owner,
            })
        };
        match (self.phase, input) {
            (UnlockPhase::Done, _) => UnlockAction::GaveUp,
            (UnlockPhase::Forgetting, UnlockInput::Start) => UnlockAction::ForgetLock(self.owner),
            (UnlockPhase::Forgetting, _) | (UnlockPhase::Pausing, _) => ask(self),
            (UnlockPhase::Asking { asked_in }, answer) => {
                if let UnlockInput::Unlocked(Ok(Unlocked { epoch })) = answer {
                    if still_in(asked_in, epoch, facts.view.epoch) {
                        self.phase = UnlockPhase::Done;
                        return UnlockAction::Released;
                    }
                }
                if facts.now_ms >= self.deadline_ms {
                    self.phase = UnlockPhase::Done;
                    return UnlockAction::GaveUp;
                }
                self.phase = UnlockPhase::Pausing;
                UnlockAction::Sleep {
                    ms: self.retry_pause_ms,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::membership::View;

    fn view(clock: u64) -> View {
        crate::membership::test_view(clock, &[1, 2, 3])
    }

    fn facts(view: &View, now_ms: u64) -> Facts<'_> {
        Facts {
            me: 3,
            view,
            now_ms,
            majority: true,
        }
    }

    #[test]
    fn a_view_is_confirmed_by_a_majority_of_its_members_counting_this_node() {
        // Alone: nothing to ask. Two: the other one. Three: one of the two others (two of
        // three). Four: two of the three others (three of four). Five: two others.
        let needed: Vec<usize> = (1..=5).map(confirmations_needed).collect();
        assert_eq!(needed, vec![0, 1, 1, 2, 2]);
        for members in 1..=9usize {
            let with_me = confirmations_needed(members) + 1;
            assert!(2 * with_me > members, "{members}: {with_me} is a majority");
            assert!(2 * (with_me - 1) <= members, "{members}: no fewer would be");
        }
    }

    #[test]
    fn a_node_without_a_majority_shows_no_maildrop() {
        let v = view(1);
        let minority = Facts {
            majority: false,
            ..facts(&v, 0)
        };
        let mut open = Open::new("u", (3, 1), MaildropSettings::default(), 0);
        // It waits (a membership round may be about to end) and asks nobody for the lock...
        assert!(matches!(
            open.step(OpenInput::Start, minority),
            OpenAction::Sleep { .. }
        ));
        // ...and asks once the majority is back.
        assert!(matches!(
            open.step(OpenInput::Continue, facts(&v, 10)),
            OpenAction::Lock(LockMaildrop { .. })
        ));
        // Lost again between the grant and the listing: the lock does not count.
        open.step(
            OpenInput::Locked(Ok(Locked {
                fragments: vec![1],
                epoch: v.epoch,
            })),
            facts(&v, 11),
        );
        let late = Facts {
            majority: false,
            ..facts(&v, 12)
        };
        assert!(matches!(
            open.step(OpenInput::Continue, late),
            OpenAction::Sleep { .. }
        ));
        // Still without one at the deadline: unavailable, nothing listed.
        let after = Facts {
            majority: false,
            ..facts(&v, MaildropSettings::default().patience_ms)
        };
        assert_eq!(
            open.step(OpenInput::Continue, after),
            OpenAction::Failed(OpenFailure::Unavailable)
        );
    }

    #[test]
    fn a_lock_from_an_older_membership_is_asked_again() {
        let (old, new) = (view(1), view(2));
        let mut open = Open::new("u", (3, 1), MaildropSettings::default(), 0);
        assert!(matches!(
            open.step(OpenInput::Start, facts(&old, 0)),
            OpenAction::Lock(LockMaildrop { .. })
        ));
        let granted = Locked {
            fragments: vec![1],
            epoch: old.epoch,
        };
        assert_eq!(
            open.step(OpenInput::Locked(Ok(granted)), facts(&old, 1)),
            OpenAction::RecordLock((3, 1))
        );
        // The membership changed before the lock was recorded: this node's report to the new
        // manager may have missed it, so the lock does not count.
        assert!(matches!(
            open.step(OpenInput::Continue, facts(&new, 2)),
            OpenAction::Lock(LockMaildrop { .. })
        ));
        let granted = Locked {
            fragments: vec![1, 2],
            epoch: new.epoch,
        };
        open.step(OpenInput::Locked(Ok(granted)), facts(&new, 3));
        assert_eq!(
            open.step(OpenInput::Continue, facts(&new, 4)),
            OpenAction::List(1)
        );
    }

    #[test]
    fn a_membership_change_while_listing_starts_the_open_again() {
        let (old, new) = (view(1), view(2));
        let mut open = Open::new("u", (3, 1), MaildropSettings::default(), 0);
        open.step(OpenInput::Start, facts(&old, 0));
        let granted = Locked {
            fragments: vec![1, 2],
            epoch: old.epoch,
        };
        open.step(OpenInput::Locked(Ok(granted)), facts(&old, 1));
        assert_eq!(
            open.step(OpenInput::Continue, facts(&old, 2)),
            OpenAction::List(1)
        );
        let listing = Listing {
            messages: vec![ListedMessage {
                hlc: 0,
                meta: None,
                id: 10,
                size: 100,
                replicas: vec![],
            }],
            deleted: vec![],
        };
        // Another session may have been granted the lock in a view overlapping the old one,
        // and deleted message 10 after node 1 listed it: the listing cannot be trusted.
        let mut late = open.clone();
        assert!(matches!(
            open.step(OpenInput::Listed(Some(listing.clone())), facts(&new, 3)),
            OpenAction::Lock(LockMaildrop { .. })
        ));
        let regranted = Locked {
            fragments: vec![2],
            epoch: new.epoch,
        };
        open.step(OpenInput::Locked(Ok(regranted)), facts(&new, 4));
        assert_eq!(
            open.step(OpenInput::Continue, facts(&new, 5)),
            OpenAction::List(2)
        );
        let OpenAction::Opened(opened) =
            open.step(OpenInput::Listed(Some(Listing::default())), facts(&new, 6))
        else {
            panic!("not opened");
        };
        assert!(opened.messages.is_empty(), "the old listing was dropped");
        assert_eq!(opened.epoch, new.epoch, "confirmed in the view of its lock");
        // Past its patience, it gives up instead.
        let patience = MaildropSettings::default().patience_ms;
        assert_eq!(
            late.step(OpenInput::Listed(Some(listing)), facts(&new, patience)),
            OpenAction::Failed(OpenFailure::Unavailable)
        );
    }

    #[test]
    fn listings_are_merged_once_per_id_without_tombstoned_ones() {
        let v = view(1);
        let mut open = Open::new("u", (3, 1), MaildropSettings::default(), 0);
        open.step(OpenInput::Start, facts(&v, 0));
        open.step(
            OpenInput::Locked(Ok(Locked {
                fragments: vec![1, 2, 3],
                epoch: v.epoch,
            })),
            facts(&v, 0),
        );
        assert_eq!(
            open.step(OpenInput::Continue, facts(&v, 0)),
            OpenAction::List(1)
        );
        let listed = |id: u128, size: u64, replicas: &[NodeId]| ListedMessage {
            hlc: 0,
            meta: None,
            id,
            size,
            replicas: replicas.to_vec(),
        };
        let first = Listing {
            messages: vec![
                listed(10, 100, &[]),
                listed(20, 200, &[1, 2]),
                listed(30, 300, &[]),
            ],
            deleted: vec![],
        };
        assert_eq!(
            open.step(OpenInput::Listed(Some(first)), facts(&v, 0)),
            OpenAction::List(2)
        );
        // Node 2 holds a tombstone for 30 (its delete has not reached node 1 yet).
        let second = Listing {
            messages: vec![listed(20, 200, &[1, 2])],
            deleted: vec![30],
        };
        assert_eq!(
            open.step(OpenInput::Listed(Some(second)), facts(&v, 0)),
            OpenAction::List(3)
        );
        let mut silent = open.clone();
        assert_eq!(
            silent.step(OpenInput::Listed(None), facts(&v, 0)),
            OpenAction::Failed(OpenFailure::Unavailable),
            "a fragment node that does not answer fails the open"
        );
        let third = Listing::default();
        let OpenAction::Opened(opened) = open.step(OpenInput::Listed(Some(third)), facts(&v, 0))
        else {
            panic!("not opened");
        };
        assert_eq!(
            opened.messages,
            vec![
                MaildropMessage {
                    id: 10,
                    size: 100,
                    holders: vec![1],
                    replicas: vec![],
                },
                MaildropMessage {
                    id: 20,
                    size: 200,
                    holders: vec![1, 2],
                    replicas: vec![1, 2],
                },
            ]
        );
        assert_eq!(opened.fragments, vec![1, 2, 3]);
    }

    #[test]
    fn the_maildrop_is_inbox_by_the_newest_filing_of_any_copy() {
        use crate::mailbox::MessageMeta;
        let v = view(1);
        let mut open = Open::new("u", (3, 1), MaildropSettings::default(), 0);
        open.step(OpenInput::Start, facts(&v, 0));
        open.step(
            OpenInput::Locked(Ok(Locked {
                fragments: vec![1, 2],
                epoch: v.epoch,
            })),
            facts(&v, 0),
        );
        open.step(OpenInput::Continue, facts(&v, 0));
        let filed = |id: u128, folder: u32, modseq: u64| ListedMessage {
            id,
            size: 10,
            replicas: vec![1, 2],
            hlc: 0,
            meta: Some(MessageMeta {
                folder,
                uid: 1,
                modseq,
                ..MessageMeta::default()
            }),
        };
        // 10: moved to folder 3 (node 2's copy missed it); 20: moved back to INBOX;
        // 30: never filed.
        let first = Listing {
            messages: vec![
                filed(10, 3, 5),
                filed(20, 0, 9),
                ListedMessage {
                    meta: None,
                    ..filed(30, 0, 0)
                },
            ],
            deleted: vec![],
        };
        open.step(OpenInput::Listed(Some(first)), facts(&v, 0));
        let second = Listing {
            messages: vec![filed(10, 0, 2), filed(20, 4, 3)],
            deleted: vec![],
        };
        let OpenAction::Opened(opened) = open.step(OpenInput::Listed(Some(second)), facts(&v, 0))
        else {
            panic!("not opened");
        };
        let ids: Vec<u128> = opened.messages.iter().map(|m| m.id).collect();
        assert_eq!(ids, vec![20, 30]);
    }

    #[test]
    fn in_use_fails_at_once_and_silence_runs_out_the_patience() {
        let v = view(1);
        let mut open = Open::new("u", (3, 1), MaildropSettings::default(), 0);
        open.step(OpenInput::Start, facts(&v, 0));
        assert_eq!(
            open.step(
                OpenInput::Locked(Err(CallError::Refused(Failure::InUse))),
                facts(&v, 0)
            ),
            OpenAction::Failed(OpenFailure::InUse)
        );
        let mut open = Open::new("u", (3, 1), MaildropSettings::default(), 0);
        open.step(OpenInput::Start, facts(&v, 0));
        assert!(matches!(
            open.step(OpenInput::Locked(Err(CallError::Timeout)), facts(&v, 10)),
            OpenAction::Sleep { .. }
        ));
        open.step(OpenInput::Continue, facts(&v, 30));
        assert_eq!(
            open.step(OpenInput::Locked(Err(CallError::Timeout)), facts(&v, 5_000)),
            OpenAction::Failed(OpenFailure::Unavailable)
        );
    }

    #[test]
    fn a_delete_counts_only_when_every_holder_took_its_tombstone() {
        let messages = vec![
            MaildropMessage {
                id: 1,
                size: 1,
                holders: vec![1, 2],
                replicas: vec![],
            },
            MaildropMessage {
                id: 2,
                size: 1,
                holders: vec![2],
                replicas: vec![],
            },
        ];
        let members = [1, 2, 3];
        let fragments = [1, 2];
        let mut delete = Delete::new(&messages, &[0, 1], &members, &fragments);
        assert_eq!(
            delete.step(DeleteInput::Start),
            DeleteAction::DeleteAt {
                node: 1,
                ids: vec![1],
                also: vec![1, 2],
            }
        );
        assert_eq!(
            delete.step(DeleteInput::Deleted(Err(StoreError::Failed))),
            DeleteAction::DeleteAt {
                node: 2,
                ids: vec![1, 2],
                also: vec![1, 2],
            }
        );
        // Node 1 failed: message 1 may be shown again from there, so the delete failed.
        assert_eq!(
            delete.step(DeleteInput::Deleted(Ok(()))),
            DeleteAction::Finish(Err(StoreError::Failed))
        );
        let mut delete = Delete::new(&messages, &[0, 1], &members, &fragments);
        delete.step(DeleteInput::Start);
        delete.step(DeleteInput::Deleted(Ok(())));
        assert_eq!(
            delete.step(DeleteInput::Deleted(Ok(()))),
            DeleteAction::Finish(Ok(()))
        );
        // Message 2's only holder failed: the delete failed.
        let mut delete = Delete::new(&messages, &[1], &members, &fragments);
        delete.step(DeleteInput::Start);
        assert_eq!(
            delete.step(DeleteInput::Deleted(Err(StoreError::NoSpace))),
            DeleteAction::Finish(Err(StoreError::NoSpace))
        );
    }

    #[test]
    fn a_delete_goes_to_live_replicas_and_a_stand_in_for_an_absent_one() {
        // Node 3's copy arrived after its listing; node 4, a replica, is not a member now:
        // node 2 stands in for it.
        let messages = vec![MaildropMessage {
            id: 7,
            size: 1,
            holders: vec![1],
            replicas: vec![1, 3, 4],
        }];
        let mut delete = Delete::new(&messages, &[0], &[1, 2, 3], &[1]);
        let also = vec![1, 3, 4, 2];
        let mut asked = Vec::new();
        let mut action = delete.step(DeleteInput::Start);
        while let DeleteAction::DeleteAt {
            node,
            ids,
            also: onward,
        } = action
        {
            assert_eq!((ids, &onward), (vec![7], &also));
            asked.push(node);
            action = delete.step(DeleteInput::Deleted(Ok(())));
        }
        assert_eq!(asked, vec![1, 2, 3]);
        assert_eq!(action, DeleteAction::Finish(Ok(())));
        // Every replica a member: no stand-in.
        let mut delete = Delete::new(&messages, &[0], &[1, 2, 3, 4], &[1]);
        let mut asked = Vec::new();
        let mut action = delete.step(DeleteInput::Start);
        while let DeleteAction::DeleteAt { node, .. } = action {
            asked.push(node);
            action = delete.step(DeleteInput::Deleted(Ok(())));
        }
        assert_eq!(asked, vec![1, 3, 4]);
    }

    #[test]
    fn an_unlock_forgets_first_and_counts_only_in_the_current_membership() {
        let (old, new) = (view(1), view(2));
        let mut unlock = Unlock::new("u", (3, 1), MaildropSettings::default(), 0);
        assert_eq!(
            unlock.step(UnlockInput::Start, facts(&old, 0)),
            UnlockAction::ForgetLock((3, 1))
        );
        assert!(matches!(
            unlock.step(UnlockInput::Continue, facts(&old, 0)),
            UnlockAction::Unlock(UnlockMaildrop { .. })
        ));
        let answer = Unlocked { epoch: old.epoch };
        assert!(matches!(
            unlock.step(UnlockInput::Unlocked(Ok(answer)), facts(&new, 1)),
            UnlockAction::Sleep { .. }
        ));
        unlock.step(UnlockInput::Continue, facts(&new, 21));
        let answer = Unlocked { epoch: new.epoch };
        assert_eq!(
            unlock.step(UnlockInput::Unlocked(Ok(answer)), facts(&new, 22)),
            UnlockAction::Released
        );
    }
}
