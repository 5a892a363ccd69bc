//! The replication edge of one core: runs the core's [`Replicator`] against its shards and the
//! network. It coordinates the puts stored here (first pushes with the body still in memory,
//! and the ack policy), applies updates pushed by other nodes, replicates tombstones, and on a
//! timer makes the pushes and retirements the replicator asks for.
//!
//! The log is the update log: what is pending lives in the shards' indexes (replica sets in the
//! put and delete records, retire records), so after a restart the replicator is refilled from
//! [`porcupine_engine::Shard::pending_updates`] and carries on.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use porcupine_engine::record::user_key;
use porcupine_engine::{
    DeleteOutcome, MessageEntry, PendingUpdate, PutOutcome, ReplicaSet, Retired, Shard, Stamp,
    UpdateKind,
};

use super::clock::now_ms;
use super::cluster_driver::PEER_TIMEOUT;
use super::core_shards::CoreShards;
use super::service::StoreError;
use super::NodeContext;
use crate::membership::{Epoch, NodeId};
use crate::replication::{Action, Replicator, Update};
use crate::rpc::{OneWay, PushUpdate, Pushed, ReplicaUpdate};
use crate::transport::Peers;
use porcupine_engine::record::REPLICAS_MAX;

/// When a delivery's 250 may be sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AckPolicy {
    /// Once every chosen replica has the message durably (the default).
    #[default]
    AllReplicas,
    /// Once the coordinator has it durably; the other replicas follow in the background.
    Coordinator,
}

/// How often the replicator is looked at for due pushes and retirements.
const TICK: Duration = Duration::from_millis(25);

/// One core's replication: its replicator and what it needs to act.
/// What applying a pushed update did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// Stored (or there already, or superseded by a newer update of the same kind).
    Taken,
    /// A tombstone taken over a copy that also named these nodes ([`Pushed::TakenNaming`]).
    TakenNaming(Vec<NodeId>),
    /// A put of a message this node holds a tombstone for: the pusher deletes its copy.
    DeletedHere,
}

/// How a push went.
#[derive(Clone, Debug, PartialEq, Eq)]
enum PushOutcome {
    Held,
    /// Held; the replica's copy named these nodes too, which the tombstone must reach.
    HeldNaming(Vec<NodeId>),
    /// The replica holds a tombstone of the pushed message: it counts as held, and this
    /// node's copy is deleted.
    DeletedThere,
    Failed,
}

pub struct CoreReplication {
    pub(super) context: Arc<NodeContext>,
    /// This core's connections to the other nodes.
    peers: Rc<Peers>,
    pub(super) shards: Rc<CoreShards>,
    replicator: RefCell<Replicator>,
    seen_epoch: Cell<Option<Epoch>>,
    /// The dead set last given to the replicator.
    seen_dead: RefCell<Arc<Vec<NodeId>>>,
    started: Instant,
}

impl std::fmt::Debug for CoreReplication {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoreReplication")
            .field("pending", &self.replicator.borrow().pending())
            .finish()
    }
}

fn to_set(nodes: &[NodeId]) -> ReplicaSet {
    ReplicaSet::new(nodes.iter().map(|&n| n as u32))
}

/// The nodes of a record's replica set.
pub(super) fn from_set(set: &ReplicaSet) -> Vec<NodeId> {
    set.as_slice().iter().map(|&n| NodeId::from(n)).collect()
}

/// The replicated update an index's pending entry stands for.
pub(super) fn pending_update(pending: &PendingUpdate) -> Update {
    Update {
        user: pending.user.to_string(),
        id: pending.id,
        kind: pending.kind,
        hlc: pending.hlc,
        origin: NodeId::from(pending.origin),
        replicas: from_set(&pending.replicas),
    }
}

/// The put that stored a copy here.
pub(super) fn put_update(user: String, entry: &MessageEntry) -> Update {
    Update {
        user,
        id: entry.id,
        kind: UpdateKind::Put,
        hlc: entry.hlc,
        origin: NodeId::from(entry.origin),
        replicas: from_set(&entry.replicas),
    }
}

impl CoreReplication {
    /// Creates the edge and loads every update still pending in the shards' logs.
    pub fn new(context: Arc<NodeContext>, peers: Rc<Peers>, shards: Rc<CoreShards>) -> Rc<Self> {
        let me = context.cluster.me.id;
        let settings = context.config.replication;
        let edge = Rc::new(Self {
            context,
            peers,
            shards,
            replicator: RefCell::new(Replicator::new(me, settings)),
            seen_epoch: Cell::new(None),
            seen_dead: RefCell::new(Arc::new(Vec::new())),
            started: Instant::now(),
        });
        let mut loaded = 0usize;
        for shard in edge.shards.all() {
            for pending in shard.pending_updates() {
                let update = pending_update(&pending);
                edge.replicator.borrow_mut().add(update, &[], 0);
                loaded += 1;
            }
        }
        if loaded > 0 {
            tracing::info!(
                pending = loaded,
                "replicated updates still pending in the log"
            );
        }
        edge
    }

    fn now(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn shard(&self, user: &str) -> Option<&Shard> {
        self.shards.for_user(user)
    }

    /// Updates pending on this core.
    pub fn pending(&self) -> usize {
        self.replicator.borrow().pending()
    }

    /// Tells the replicator the live members if the view changed since it last looked.
    pub(super) fn sync_view(&self) {
        let dead = self.context.cluster.dead.load();
        if !Arc::ptr_eq(&dead, &self.seen_dead.borrow()) {
            self.seen_dead.replace(Arc::clone(&dead));
            let now = self.now();
            self.replicator.borrow_mut().dead_changed(&dead, now);
        }
        let view = self.context.cluster.view.load();
        if self.seen_epoch.get() == Some(view.epoch) {
            return;
        }
        self.seen_epoch.set(Some(view.epoch));
        let live: Vec<NodeId> = view.members.iter().map(|m| m.id).collect();
        let now = self.now();
        self.replicator.borrow_mut().view_changed(&live, now);
    }

    /// Stores a message delivered here and coordinates its replication to `replicas` (this
    /// node first). Under [`AckPolicy::AllReplicas`] it returns only once every replica holds
    /// the message durably; a replica that cannot take it makes it `Unavailable` (delivery
    /// then places the message again, under the same id). `also` (where an earlier attempt
    /// may have left a copy) joins the replica set and gets the message, but is not waited for.
    pub async fn coordinate_put(
        self: &Rc<Self>,
        user: &str,
        id: u128,
        message: Arc<Vec<u8>>,
        replicas: &[NodeId],
        also: &[NodeId],
    ) -> Result<(), StoreError> {
        let shard = self.shard(user).ok_or(StoreError::Failed)?;
        let mut named = replicas.to_vec();
        named.extend(also.iter().copied().filter(|n| !replicas.contains(n)));
        named.truncate(REPLICAS_MAX);
        let set = if replicas.len() > 1 {
            to_set(&named)
        } else {
            ReplicaSet::NONE
        };
        let stored = shard.put_message(user, id, &message, 0, set, None).await;
        let (entry, fresh) = match stored {
            Ok(PutOutcome::Stored(entry)) => (entry, true),
            Ok(PutOutcome::AlreadyHere(entry)) => (entry, false),
            // Deleted already: this is a retry of a message its owner has read and deleted.
            Ok(PutOutcome::Deleted) => return Ok(()),
            Err(error) => {
                tracing::warn!(%user, %error, "delivery failed");
                let error = super::service::store_error(&error);
                if error == StoreError::NoSpace {
                    // Placement avoids this node, and new users this disk, for a while.
                    self.context.cluster.load.note_full(now_ms());
                    self.shards.note_full(shard);
                }
                return Err(error);
            }
        };
        if !set.is_replicated() {
            return Ok(());
        }
        // A copy that was here already now names every node of this attempt too (the engine
        // widened its replica set), so its tombstone will reach them all.
        let update = Update {
            user: user.to_owned(),
            id,
            kind: UpdateKind::Put,
            hlc: entry.hlc,
            origin: NodeId::from(entry.origin),
            replicas: if fresh {
                std::mem::take(&mut named)
            } else {
                from_set(&entry.replicas)
            },
        };
        self.sync_view();
        let pushes: Vec<NodeId> = if fresh {
            let actions = self
                .replicator
                .borrow_mut()
                .add(update.clone(), &[], self.now());
            actions
                .into_iter()
                .filter_map(|action| match action {
                    Action::Push { to, .. } => Some(to),
                    Action::Retire { .. } => None,
                })
                .collect()
        } else {
            // A retry: the message is here from an earlier attempt (perhaps with other
            // replicas); this attempt's nodes get it directly, with the widened set.
            let me = self.context.cluster.me.id;
            named.into_iter().filter(|&n| n != me).collect()
        };
        let expected = replicas.len() - 1;
        let mut tasks = Vec::new();
        for to in pushes {
            let (edge, update, message) = (self.clone(), update.clone(), message.clone());
            let task =
                glommio::spawn_local(async move { edge.push(to, update, Some(message)).await });
            if replicas.contains(&to) {
                tasks.push(task);
            } else {
                // Where an earlier attempt may have left a copy: not waited for (it may be
                // the node that failed); the replicator keeps it pending until it has it.
                task.detach();
            }
        }
        if self.context.config.ack_policy == AckPolicy::Coordinator {
            for task in tasks {
                task.detach();
            }
            return Ok(());
        }
        let mut held = 0;
        for task in tasks {
            if task.await {
                held += 1;
            }
        }
        if held == expected {
            Ok(())
        } else {
            Err(StoreError::Unavailable)
        }
    }

    /// Pushes one update to `to` (reading the body from the log unless given); feeds the
    /// answer back to the replicator. Returns whether `to` holds it.
    async fn push(self: Rc<Self>, to: NodeId, update: Update, body: Option<Arc<Vec<u8>>>) -> bool {
        let outcome = self.push_once(to, &update, body).await;
        if outcome == PushOutcome::DeletedThere {
            // A copy here of a message that was read and deleted while it was on its way (a
            // delivery placed again under the same id, after a session deleted the first
            // copy): deleted here too, or the next session would show it again.
            self.delete_copy(&update.user, update.id).await;
        }
        let held = outcome != PushOutcome::Failed;
        let now = self.now();
        let actions = {
            let mut replicator = self.replicator.borrow_mut();
            if held {
                let mut actions = replicator.acked(&update.user, update.id, update.hlc, to, now);
                if let PushOutcome::HeldNaming(nodes) = &outcome {
                    // The replica's copy named more nodes: this tombstone goes to them too
                    // (the pending entry widens, and waits for them before it retires).
                    let mut wider = update.clone();
                    for node in nodes {
                        if !wider.replicas.contains(node) {
                            wider.replicas.push(*node);
                        }
                    }
                    actions.extend(replicator.add(wider, &[to], now));
                }
                actions
            } else {
                replicator.failed(&update.user, update.id, to, now);
                Vec::new()
            }
        };
        self.execute(actions);
        held
    }

    /// Deletes this node's copy of a message that a replica holds a tombstone for; the new
    /// tombstone goes to the copy's replicas.
    async fn delete_copy(self: &Rc<Self>, user: &str, id: u128) {
        let Some(shard) = self.shard(user) else {
            return;
        };
        match shard
            .delete_replicated(user, id, None, ReplicaSet::NONE)
            .await
        {
            Ok(DeleteOutcome::Deleted(tomb)) => self.deleted(user, id, tomb),
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(%user, %error, "cannot delete a copy whose message was deleted elsewhere");
            }
        }
    }

    async fn push_once(
        &self,
        to: NodeId,
        update: &Update,
        body: Option<Arc<Vec<u8>>>,
    ) -> PushOutcome {
        let Some(addr) = self
            .context
            .cluster
            .view
            .load()
            .member(to)
            .map(|m| m.addr.clone())
        else {
            return PushOutcome::Failed;
        };
        let carried = match update.kind {
            UpdateKind::Delete => ReplicaUpdate::Delete,
            UpdateKind::Put => {
                let message = match body {
                    Some(body) => body.to_vec(),
                    None => {
                        let Some(shard) = self.shard(&update.user) else {
                            return PushOutcome::Failed;
                        };
                        match shard.read_message(&update.user, update.id).await {
                            Ok(record) => record.body().to_vec(),
                            Err(error) => {
                                tracing::warn!(user = %update.user, %error, "cannot read a pending message to push it");
                                return PushOutcome::Failed;
                            }
                        }
                    }
                };
                ReplicaUpdate::Put { message }
            }
        };
        let push = PushUpdate {
            user: update.user.clone(),
            id: update.id,
            hlc: update.hlc,
            origin: update.origin,
            replicas: update.replicas.clone(),
            update: carried,
        };
        match self.peers.call(&addr, push, PEER_TIMEOUT).await {
            Ok(Pushed::Taken) => PushOutcome::Held,
            Ok(Pushed::TakenNaming(nodes)) => PushOutcome::HeldNaming(nodes),
            Ok(Pushed::DeletedHere) => PushOutcome::DeletedThere,
            Err(_) => PushOutcome::Failed,
        }
    }

    /// Carries out what the replicator decided: pushes run as tasks; retirements of one round
    /// go to the log together and to the other replicas in one notice per node.
    fn execute(self: &Rc<Self>, actions: Vec<Action>) {
        let mut retiring = Vec::new();
        for action in actions {
            match action {
                Action::Push { to, update } => {
                    glommio::spawn_local(self.clone().push(to, update, None)).detach();
                }
                Action::Retire { update, notify } => retiring.push((update, notify)),
            }
        }
        if !retiring.is_empty() {
            glommio::spawn_local(self.clone().retire(retiring)).detach();
        }
    }

    async fn retire(self: Rc<Self>, retiring: Vec<(Update, Vec<NodeId>)>) {
        let mut by_shard: BTreeMap<String, (Shard, Vec<Retired>)> = BTreeMap::new();
        let mut notices: BTreeMap<NodeId, Vec<(String, u128, u64)>> = BTreeMap::new();
        for (update, notify) in retiring {
            let Some(shard) = self.shard(&update.user) else {
                continue;
            };
            by_shard
                .entry(shard.name().to_owned())
                .or_insert_with(|| (shard.clone(), Vec::new()))
                .1
                .push(Retired {
                    user_key: user_key(&update.user),
                    message_id: update.id,
                    hlc: update.hlc,
                });
            for node in notify {
                notices
                    .entry(node)
                    .or_default()
                    .push((update.user.clone(), update.id, update.hlc));
            }
        }
        for (shard, entries) in by_shard.into_values() {
            if let Err(error) = shard.retire(&entries).await {
                // Not retired on disk: after a restart they are pushed again (harmless).
                tracing::warn!(shard = shard.name(), %error, "cannot write retirements");
            }
        }
        let view = self.context.cluster.view.load_full();
        for (node, entries) in notices {
            if let Some(member) = view.member(node) {
                self.peers.send(&member.addr, &OneWay::Retired { entries });
            }
        }
    }

    /// Applies an update pushed by the node driving it; `Ok` once it (or a newer update of the
    /// message) is durable here.
    pub async fn apply(
        self: &Rc<Self>,
        mut update: Update,
        message: Option<Vec<u8>>,
    ) -> Result<Applied, StoreError> {
        let shard = self.shard(&update.user).ok_or(StoreError::Failed)?;
        let stamp = Stamp {
            hlc: update.hlc,
            origin: update.origin as u32,
        };
        let set = to_set(&update.replicas);
        let shared = &self.context.cluster;
        // The nodes beyond the update's that a deleted copy here named.
        let mut naming: Vec<NodeId> = Vec::new();
        let applied = match (update.kind, message) {
            (UpdateKind::Put, Some(message)) => {
                let known_before = shard.has_messages(&update.user);
                let snapshots = shared.snapshots.load(Ordering::SeqCst);
                let epoch = shared.view.load().epoch;
                let stored = shard
                    .put_message(&update.user, update.id, &message, 0, set, Some(stamp))
                    .await;
                match stored {
                    Ok(PutOutcome::Stored(_)) => {
                        let unknown = !known_before
                            || shared.snapshots.load(Ordering::SeqCst) != snapshots
                            || shared.view.load().epoch != epoch;
                        if unknown && shared.clustered() {
                            // The user's manager may not know this node holds mail of theirs.
                            let (context, peers, user) = (
                                self.context.clone(),
                                self.peers.clone(),
                                update.user.clone(),
                            );
                            glommio::spawn_local(async move {
                                super::delivery::note(&context, &peers, &user).await;
                            })
                            .detach();
                        }
                        true
                    }
                    Ok(PutOutcome::AlreadyHere(_)) => false,
                    // Read and deleted here already: the pusher's copy goes too.
                    Ok(PutOutcome::Deleted) => return Ok(Applied::DeletedHere),
                    Err(error) => {
                        let error = super::service::store_error(&error);
                        if error == StoreError::NoSpace {
                            shared.load.note_full(now_ms());
                            self.shards.note_full(shard);
                        }
                        return Err(error);
                    }
                }
            }
            (UpdateKind::Put, None) => return Err(StoreError::Failed),
            (UpdateKind::Delete, _) => {
                let deleted = shard
                    .delete_replicated(
                        &update.user,
                        update.id,
                        Some((stamp, set)),
                        ReplicaSet::NONE,
                    )
                    .await;
                match deleted {
                    Ok(DeleteOutcome::Deleted(tomb)) => {
                        naming = from_set(&tomb.replicas)
                            .into_iter()
                            .filter(|n| !update.replicas.contains(n))
                            .collect();
                        true
                    }
                    Ok(DeleteOutcome::AlreadyDeleted | DeleteOutcome::NotFound) => false,
                    Err(error) => return Err(super::service::store_error(&error)),
                }
            }
        };
        if applied {
            self.sync_view();
            let origin = update.origin;
            update.replicas.extend(naming.iter().copied());
            let actions = self
                .replicator
                .borrow_mut()
                .add(update, &[origin], self.now());
            self.execute(actions);
        }
        if naming.is_empty() {
            Ok(Applied::Taken)
        } else {
            Ok(Applied::TakenNaming(naming))
        }
    }

    /// Healing: this node's copy of a message (or its pending tombstone) now names `update`'s
    /// replicas, nodes added by healing among them; the replicator pushes it to those that
    /// lack it. A message's copy here is written again with the new set first, so that its
    /// tombstone, when it comes, reaches the new replicas too.
    pub(super) async fn heal(
        self: &Rc<Self>,
        update: Update,
        flags: u32,
    ) -> Result<(), StoreError> {
        if update.kind == UpdateKind::Put {
            let shard = self.shard(&update.user).ok_or(StoreError::Failed)?;
            let record = shard
                .read_message(&update.user, update.id)
                .await
                .map_err(|e| super::service::store_error(&e))?;
            let stamp = Stamp {
                hlc: update.hlc,
                origin: update.origin as u32,
            };
            match shard
                .put_message(
                    &update.user,
                    update.id,
                    record.body(),
                    flags,
                    to_set(&update.replicas),
                    Some(stamp),
                )
                .await
            {
                Ok(PutOutcome::AlreadyHere(_) | PutOutcome::Stored(_)) => {}
                // Deleted meanwhile: its tombstone replicates as any other.
                Ok(PutOutcome::Deleted) => return Ok(()),
                Err(error) => return Err(super::service::store_error(&error)),
            }
        }
        self.sync_view();
        let me = self.context.cluster.me.id;
        let actions = self.replicator.borrow_mut().add(update, &[me], self.now());
        self.execute(actions);
        Ok(())
    }

    /// The replica set of a pending update as the replicator has it (healing may have widened
    /// it beyond its record's).
    pub(super) fn pending_replicas(&self, user: &str, id: u128, hlc: u64) -> Option<Vec<NodeId>> {
        self.replicator.borrow().pending_replicas(user, id, hlc)
    }

    /// Anti-entropy: pushes this node's copy of a message to `to`, which lacks it (a lost
    /// push, a record lost to damage there). Returns whether `to` holds it now; a copy gone
    /// from here meanwhile needs nothing.
    pub(super) async fn push_missing(self: &Rc<Self>, user: &str, id: u128, to: NodeId) -> bool {
        let Some(entry) = self.shard(user).and_then(|shard| shard.message(user, id)) else {
            return true;
        };
        let update = put_update(user.to_owned(), &entry);
        self.clone().push(to, update, None).await
    }

    /// Pushes under way from this core (healing waits while there are many).
    pub(super) fn pushes_in_flight(&self) -> usize {
        self.replicator.borrow().pushes_in_flight()
    }

    /// A tombstone made here: it goes to the message's other replicas.
    pub fn deleted(self: &Rc<Self>, user: &str, id: u128, tomb: porcupine_engine::Tomb) {
        if !tomb.replicas.is_replicated() {
            return;
        }
        let update = Update {
            user: user.to_owned(),
            id,
            kind: UpdateKind::Delete,
            hlc: tomb.hlc,
            origin: NodeId::from(tomb.origin),
            replicas: from_set(&tomb.replicas),
        };
        self.sync_view();
        let actions = self.replicator.borrow_mut().add(update, &[], self.now());
        self.execute(actions);
    }

    /// The node driving these updates retired them: they are retired here too.
    pub async fn retired(self: &Rc<Self>, entries: Vec<(String, u128, u64)>) {
        let retiring: Vec<(Update, Vec<NodeId>)> = {
            let mut replicator = self.replicator.borrow_mut();
            entries
                .into_iter()
                .filter(|(user, id, hlc)| replicator.retired(user, *id, *hlc))
                .map(|(user, id, hlc)| {
                    (
                        Update {
                            user,
                            id,
                            kind: UpdateKind::Put,
                            hlc,
                            origin: 0,
                            replicas: Vec::new(),
                        },
                        Vec::new(),
                    )
                })
                .collect()
        };
        if !retiring.is_empty() {
            self.clone().retire(retiring).await;
        }
    }

    /// Makes due pushes and retirements until the node stops.
    pub async fn run(self: Rc<Self>, stop: flume::Receiver<()>) {
        loop {
            if !super::clock::sleep_unless_stopping(&stop, TICK).await {
                return;
            }
            self.sync_view();
            let now = self.now();
            let actions = self.replicator.borrow_mut().tick(now);
            self.execute(actions);
        }
    }
}
