//! Delivery's edge: drives the pure delivery policy ([`crate::delivery`]) with this node's
//! real requests — the local store, the user's bucket manager, the coordinator elsewhere — and
//! keeps the per-core cache of the manager's placements.
//!
//! Delivery: user → bucket manager (user map) → the manager names the candidates (see
//! [`crate::placement`]) → this node picks the replicas among them by load → the first of them,
//! the coordinator, stores the message and replicates it (locally, or a store request that the
//! coordinator answers under the ack policy). On a lone node all of this is local. A manager
//! that is rebuilding its mail map answers "try again", and the policy does, for a bounded time.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::cluster_driver::PEER_TIMEOUT;
use super::core_calls::Deliver;
use super::core_context::CoreContext;
use super::service::StoreError;
use super::NodeContext;
use crate::delivery::{Delivery, DeliveryAction, DeliveryInput, DeliverySettings, Facts};
use crate::loads::LOAD_MAX_AGE;
use crate::manager::ManagerCall;
use crate::membership::{Epoch, NodeId, View};
use crate::node::clock::now_ms;
use crate::placement::CandidateLoad;
use crate::rpc::{CallError, NoteFragment, PlaceMail, Placed, StoreMessage};
use crate::transport::Peers;

/// How long a session waits for the cluster (a membership change, a mail-map rebuild).
pub(crate) const PATIENCE: Duration = Duration::from_secs(5);
pub(crate) const RETRY_PAUSE: Duration = Duration::from_millis(20);

/// Stores a message in the user's fragment on this node and replicates it to `replicas` (this
/// node first; empty: not replicated). `placed`: the membership epoch in which the manager chose
/// this node. If the membership changed since, or this node reported its fragments while the
/// store was under way, the current manager may not know of this fragment: it is told before
/// the store counts as done.
pub async fn store_here(
    context: &CoreContext,
    user: &str,
    id: u128,
    message: Arc<Vec<u8>>,
    placed: Epoch,
    replicas: Vec<NodeId>,
    also: Vec<NodeId>,
) -> Result<(), StoreError> {
    let shared = &context.cluster;
    let snapshots = shared.snapshots.load(Ordering::SeqCst);
    let deliver = Deliver {
        user: user.to_owned(),
        id,
        message,
        replicas,
        also,
    };
    let result = context.call(deliver).await;
    if result.is_ok()
        && shared.clustered()
        && (shared.view.load().epoch != placed
            || shared.snapshots.load(Ordering::SeqCst) != snapshots)
    {
        note(context, &context.peers, user).await;
    }
    result
}

/// Tells the user's current manager that this node holds a fragment of the user's mailbox.
pub(crate) async fn note(context: &NodeContext, peers: &Rc<Peers>, user: &str) {
    let shared = &context.cluster;
    let deadline = Instant::now() + PATIENCE;
    loop {
        let view = shared.view.load_full();
        let note = NoteFragment {
            user: user.to_owned(),
            node: shared.me.id,
            epoch: view.epoch,
        };
        if ask_manager(context, peers, &view, user, note).await.is_ok() {
            return;
        }
        if Instant::now() >= deadline {
            tracing::warn!(%user, "could not tell the manager about a new fragment; it is found at the next membership change");
            return;
        }
        glommio::timer::sleep(RETRY_PAUSE).await;
    }
}

/// Asks the manager of `user`'s bucket in `view` (this node's own, or a peer).
pub(crate) async fn ask_manager<C: ManagerCall>(
    context: &NodeContext,
    peers: &Rc<Peers>,
    view: &View,
    user: &str,
    call: C,
) -> Result<C::Reply, CallError>
where
    C::Reply: Send,
{
    let shared = &context.cluster;
    let manager = view.map.manager_of(user);
    if manager == shared.me.id {
        return shared.ask_local_manager(call).await;
    }
    let member = view.member(manager).ok_or(CallError::Unreachable)?;
    peers.call(&member.addr, call, PEER_TIMEOUT).await
}

/// Candidates this core was given recently: user → (candidates, epoch). A user's next message
/// is placed among the same nodes without asking the manager again (the manager recorded them
/// as the user's fragment nodes), until the membership changes. One per core, in its
/// [`CoreContext`].
#[derive(Debug, Default)]
pub struct PlacementCache {
    entries: HashMap<String, (Rc<[NodeId]>, Epoch)>,
}

/// Entries before the cache starts over (bounded memory).
const PLACEMENT_CACHE_MAX: usize = 1 << 18;

impl PlacementCache {
    fn get(&self, user: &str, epoch: Epoch) -> Option<Rc<[NodeId]>> {
        self.entries
            .get(user)
            .filter(|(_, at)| *at == epoch)
            .map(|(nodes, _)| nodes.clone())
    }

    fn remember(&mut self, user: &str, nodes: Rc<[NodeId]>, epoch: Epoch) {
        if self.entries.len() >= PLACEMENT_CACHE_MAX {
            self.entries.clear();
        }
        self.entries.insert(user.to_owned(), (nodes, epoch));
    }

    fn forget(&mut self, user: &str) {
        self.entries.remove(user);
    }
}

/// Warns, once per membership on each core, when there are fewer live nodes than replicas.
fn warn_if_few_nodes(context: &CoreContext, view: &View) {
    let wanted = context.config.replicas.max(1);
    let live = view.members.len();
    if wanted > live && context.warned_few_nodes.get() != Some(view.epoch) {
        context.warned_few_nodes.set(Some(view.epoch));
        tracing::warn!(
            replicas = wanted,
            live,
            "fewer live nodes than replicas: each message is stored on every live node"
        );
    }
}

fn settings(context: &CoreContext) -> DeliverySettings {
    DeliverySettings {
        replicas: context.config.replicas,
        placement: context.config.placement,
        overload_ops: context.config.overload_ops,
        patience_ms: PATIENCE.as_millis() as u64,
        retry_pause_ms: RETRY_PAUSE.as_millis() as u64,
    }
}

/// A node's load as this node knows it: its own first-hand, the others' as last heard.
fn load_of(context: &CoreContext, node: NodeId) -> CandidateLoad {
    let shared = &context.cluster;
    if node == shared.me.id {
        return CandidateLoad {
            load: shared.load.total(),
            full: shared.load.is_full(now_ms()),
        };
    }
    shared
        .loads
        .get(node, now_ms())
        .filter(|h| h.age < LOAD_MAX_AGE)
        .map(|h| CandidateLoad {
            load: h.load,
            full: h.full,
        })
        .unwrap_or_default()
}

/// Delivers one copy of a message to `user`, wherever the cluster places it (the policy is
/// [`Delivery`]'s; this loop carries out its actions).
pub async fn deliver(
    context: &CoreContext,
    user: &str,
    id: u128,
    message: Arc<Vec<u8>>,
) -> Result<(), StoreError> {
    deliver_noting_holders(context, user, id, message, None).await
}

/// [`deliver`], answering with the nodes the message was stored on (its coordinator and
/// replicas), so a caller that files it (IMAP) needs no listing to find its copies.
pub async fn deliver_to_holders(
    context: &CoreContext,
    user: &str,
    id: u128,
    message: Arc<Vec<u8>>,
) -> Result<Vec<NodeId>, StoreError> {
    let mut holders = Vec::new();
    deliver_noting_holders(context, user, id, message, Some(&mut holders)).await?;
    Ok(holders)
}

/// The delivery loop; the holders of the last store tried are noted in `holders` only when
/// asked (SMTP's deliveries allocate nothing for it).
async fn deliver_noting_holders(
    context: &CoreContext,
    user: &str,
    id: u128,
    message: Arc<Vec<u8>>,
    mut holders: Option<&mut Vec<NodeId>>,
) -> Result<(), StoreError> {
    let shared = &context.cluster;
    if shared.is_joining() {
        shared.wait_joined(PATIENCE).await;
    }
    if !shared.clustered() {
        // A lone node: no manager to ask (and no shared reference count to bump per message).
        let epoch = shared.view.load().epoch;
        if let Some(holders) = holders {
            *holders = vec![shared.me.id];
        }
        return store_here(context, user, id, message, epoch, Vec::new(), Vec::new()).await;
    }
    let me = shared.me.id;
    let mut machine = Delivery::new(settings(context), now_ms());
    let mut input = DeliveryInput::Start;
    let mut rng = rand::thread_rng();
    loop {
        let view = shared.view.load_full();
        let facts = Facts {
            me,
            view: &view,
            now_ms: now_ms(),
            majority: shared.has_majority(),
        };
        let action = machine.step(input, facts, |node| load_of(context, node), &mut rng);
        input = match action {
            DeliveryAction::Finish(result) => return result,
            DeliveryAction::StoreHere {
                placed,
                replicas,
                also,
            } => {
                note_holders(holders.as_deref_mut(), me, &replicas);
                DeliveryInput::Stored(
                    store_here(context, user, id, message.clone(), placed, replicas, also).await,
                )
            }
            DeliveryAction::StoreAt {
                coordinator,
                placed,
                replicas,
                also,
            } => DeliveryInput::Stored(match view.member(coordinator) {
                Some(member) => {
                    note_holders(holders.as_deref_mut(), coordinator, &replicas);
                    let store = StoreMessage {
                        user: user.to_owned(),
                        id,
                        epoch: placed,
                        replicas,
                        also,
                        message: message.to_vec(),
                    };
                    StoreError::of_remote(
                        context.peers.call(&member.addr, store, PEER_TIMEOUT).await,
                    )
                }
                None => Err(StoreError::Unavailable),
            }),
            DeliveryAction::AskCandidates {
                epoch,
                replicas,
                avoid,
            } => {
                warn_if_few_nodes(context, &view);
                DeliveryInput::Candidates(
                    candidates_for(context, &view, user, epoch, replicas, &avoid).await,
                )
            }
            DeliveryAction::ForgetCandidates => {
                context.placements.borrow_mut().forget(user);
                DeliveryInput::Continue
            }
            DeliveryAction::MarkFull(node) => {
                let load = shared.loads.get(node, now_ms()).map_or(0, |h| h.load);
                shared.loads.set(node, load, true, now_ms());
                DeliveryInput::Continue
            }
            DeliveryAction::Sleep { ms } => {
                glommio::timer::sleep(Duration::from_millis(ms)).await;
                DeliveryInput::Continue
            }
        };
    }
}

/// Notes a store's coordinator and its replica set, once each, where they are asked for.
fn note_holders(holders: Option<&mut Vec<NodeId>>, coordinator: NodeId, replicas: &[NodeId]) {
    let Some(holders) = holders else {
        return;
    };
    holders.clear();
    holders.push(coordinator);
    for &node in replicas {
        if !holders.contains(&node) {
            holders.push(node);
        }
    }
}

/// The candidates for `user`'s new mail: with nothing to avoid, cached for the membership
/// epoch, else the manager's; with nodes to avoid, always the manager's (the usual candidates
/// are weighed again with fresh loads next time).
async fn candidates_for(
    context: &CoreContext,
    view: &View,
    user: &str,
    epoch: Epoch,
    wanted: usize,
    avoid: &[NodeId],
) -> Option<Rc<[NodeId]>> {
    if avoid.is_empty() {
        let cached = context.placements.borrow().get(user, epoch);
        if let Some(nodes) = cached {
            return Some(nodes);
        }
    }
    let place = PlaceMail {
        user: user.to_owned(),
        replicas: wanted.min(usize::from(u8::MAX)) as u8,
        avoid: avoid.to_vec(),
    };
    let nodes: Rc<[NodeId]> = match ask_manager(context, &context.peers, view, user, place).await {
        Ok(Placed { nodes }) if !nodes.is_empty() => nodes.into(),
        _ => return None,
    };
    if avoid.is_empty() {
        context
            .placements
            .borrow_mut()
            .remember(user, nodes.clone(), epoch);
    }
    Some(nodes)
}
