//! Delivery and retrieval proxies: what a session on any node does to store mail for a user,
//! or to open the user's maildrop, wherever the user's fragments are.
//!
//! Delivery: user → bucket manager (user map) → the manager names the candidates (see
//! [`crate::placement`]) → this node picks the replicas among them by load → the first of them,
//! the coordinator, stores the message and replicates it (locally, or a store request that the
//! coordinator answers under the ack policy). A replica that fails makes the proxy place the
//! message again, under the same id, so no copy is counted twice. Retrieval: the manager locks
//! the maildrop and names the fragment nodes; each lists its fragment; copies are deduplicated
//! by message id; each message is fetched from a holder (this node, else the least loaded) and
//! deleted on every holder at QUIT. On a lone node all of this is local. A manager that is
//! rebuilding its mail map answers "try again", and the proxy does, for a bounded time.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::cluster_driver::PEER_TIMEOUT;
use super::cluster_state::{peers, ClusterShared};
use super::service::{Credential, LockMode, Login, StoreError};
use super::NodeContext;
use crate::loads::LOAD_MAX_AGE;
use crate::membership::{Epoch, NodeId, View};
use crate::node::clock::now_ms;
use crate::placement::{self, CandidateLoad, Choice};
use crate::transport::Peers;
use crate::wire::{Body, Failure};

/// How long a session waits for the cluster (a membership change, a mail-map rebuild).
const PATIENCE: Duration = Duration::from_secs(5);
const RETRY_PAUSE: Duration = Duration::from_millis(20);

/// Stores a message in the user's fragment on this node and replicates it to `replicas` (this
/// node first; empty: not replicated). `placed`: the membership epoch in which the manager chose
/// this node. If the membership changed since, or this node reported its fragments while the
/// store was under way, the current manager may not know of this fragment: it is told before
/// the store counts as done.
pub async fn store_here(
    context: &NodeContext,
    user: &str,
    id: u128,
    message: Arc<Vec<u8>>,
    placed: Epoch,
    replicas: Vec<NodeId>,
) -> Result<(), StoreError> {
    let shared = &context.cluster;
    let snapshots = shared.snapshots.load(Ordering::SeqCst);
    let result = context.router.deliver(user, id, message, replicas).await;
    if result.is_ok()
        && shared.clustered()
        && (shared.view.load().epoch != placed
            || shared.snapshots.load(Ordering::SeqCst) != snapshots)
    {
        note(context, user).await;
    }
    result
}

/// Tells the user's current manager that this node holds a fragment of the user's mailbox.
pub(crate) async fn note(context: &NodeContext, user: &str) {
    let shared = &context.cluster;
    let deadline = Instant::now() + PATIENCE;
    loop {
        let view = shared.view.load_full();
        let body = Body::Noted {
            user: user.to_owned(),
            node: shared.me.id,
            epoch: view.epoch,
        };
        if ask_manager(context, &view, user, &body).await == Some(Body::Done) {
            return;
        }
        if Instant::now() >= deadline {
            tracing::warn!(%user, "could not tell the manager about a new fragment; it is found at the next membership change");
            return;
        }
        glommio::timer::sleep(RETRY_PAUSE).await;
    }
}

/// Asks the manager of `user`'s bucket; `None` if it cannot be reached.
async fn ask_manager(context: &NodeContext, view: &View, user: &str, body: &Body) -> Option<Body> {
    let shared = &context.cluster;
    let manager = view.map.manager_of(user);
    if manager == shared.me.id {
        return shared.ask_local_manager(body.clone()).await;
    }
    let member = view.member(manager)?;
    peers(shared)
        .request(&member.addr, body, PEER_TIMEOUT)
        .await
        .ok()
}

/// Candidates this core was given recently: user → (candidates, epoch). A user's next message
/// is placed among the same nodes without asking the manager again (the manager recorded them
/// as the user's fragment nodes), until the membership changes.
struct PlacementCache {
    entries: HashMap<String, (Rc<[NodeId]>, Epoch)>,
}

/// Entries before the cache starts over (bounded memory).
const PLACEMENT_CACHE_MAX: usize = 1 << 18;

thread_local! {
    static PLACEMENTS: RefCell<PlacementCache> = RefCell::new(PlacementCache {
        entries: HashMap::new(),
    });
    /// The epoch in which this core last warned that there are fewer nodes than replicas.
    static WARNED_FEW_NODES: RefCell<Option<Epoch>> = const { RefCell::new(None) };
}

fn cached_placement(user: &str, epoch: Epoch) -> Option<Rc<[NodeId]>> {
    PLACEMENTS.with(|cache| {
        cache
            .borrow()
            .entries
            .get(user)
            .filter(|(_, at)| *at == epoch)
            .map(|(nodes, _)| nodes.clone())
    })
}

fn remember_placement(user: &str, nodes: Rc<[NodeId]>, epoch: Epoch) {
    PLACEMENTS.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.entries.len() >= PLACEMENT_CACHE_MAX {
            cache.entries.clear();
        }
        cache.entries.insert(user.to_owned(), (nodes, epoch));
    });
}

fn forget_placement(user: &str) {
    PLACEMENTS.with(|cache| cache.borrow_mut().entries.remove(user));
}

/// Replicas per message in `view`: the setting, capped by the live node count (with a warning,
/// once per membership on each core).
fn replicas_wanted(context: &NodeContext, view: &View) -> usize {
    let wanted = context.config.replicas.max(1);
    let live = view.members.len();
    if wanted > live {
        WARNED_FEW_NODES.with(|warned| {
            let mut warned = warned.borrow_mut();
            if *warned != Some(view.epoch) {
                *warned = Some(view.epoch);
                tracing::warn!(
                    replicas = wanted,
                    live,
                    "fewer live nodes than replicas: each message is stored on every live node"
                );
            }
        });
    }
    wanted.min(live)
}

/// Delivers one copy of a message to `user`, wherever the cluster places it.
pub async fn deliver(
    context: &NodeContext,
    user: &str,
    id: u128,
    message: Arc<Vec<u8>>,
) -> Result<(), StoreError> {
    let shared = &context.cluster;
    if shared.is_joining() {
        shared.wait_joined(PATIENCE).await;
    }
    if !shared.clustered() {
        // A lone node: no manager to ask (and no shared reference count to bump per message).
        let epoch = shared.view.load().epoch;
        return store_here(context, user, id, message, epoch, Vec::new()).await;
    }
    let me = shared.me.id;
    let deadline = Instant::now() + PATIENCE;
    let mut full_nodes = 0usize;
    loop {
        let view = shared.view.load_full();
        if view.members.len() <= 1 {
            match store_here(context, user, id, message.clone(), view.epoch, Vec::new()).await {
                Err(StoreError::Unavailable) => {}
                done => return done,
            }
        } else if let Some(nodes) = replicas_for(context, &view, user).await {
            let coordinator = nodes[0];
            let outcome = if coordinator == me {
                store_here(context, user, id, message.clone(), view.epoch, nodes).await
            } else {
                match view.member(coordinator) {
                    Some(member) => {
                        let store = Body::Store {
                            user: user.to_owned(),
                            id,
                            epoch: view.epoch,
                            replicas: nodes,
                            message: message.to_vec(),
                        };
                        match peers(shared)
                            .request(&member.addr, &store, PEER_TIMEOUT)
                            .await
                        {
                            Ok(Body::Done) => Ok(()),
                            Ok(Body::Error(Failure::NoSpace)) => Err(StoreError::NoSpace),
                            Ok(Body::Error(Failure::TryAgain)) | Err(_) => {
                                Err(StoreError::Unavailable)
                            }
                            Ok(_) => Err(StoreError::Failed),
                        }
                    }
                    None => Err(StoreError::Unavailable),
                }
            };
            match outcome {
                Ok(()) => return Ok(()),
                // Placed again with a fresh answer from the manager, under the same id.
                Err(StoreError::Unavailable) => forget_placement(user),
                // A full disk there: placement avoids that node now; another may have room.
                Err(StoreError::NoSpace) => {
                    full_nodes += 1;
                    if full_nodes >= view.members.len() {
                        return Err(StoreError::NoSpace);
                    }
                    if coordinator != me {
                        let load = shared
                            .loads
                            .get(coordinator, now_ms())
                            .map_or(0, |h| h.load);
                        shared.loads.set(coordinator, load, true, now_ms());
                    }
                    forget_placement(user);
                    continue;
                }
                Err(error) => return Err(error),
            }
        }
        if Instant::now() >= deadline {
            return Err(StoreError::Failed);
        }
        glommio::timer::sleep(RETRY_PAUSE).await;
    }
}

/// The replicas of a new message of `user`, the coordinator first (this node when it is one
/// of them, to save a hop), picked among the manager's candidates under the placement policy;
/// `None` if the manager cannot answer now.
async fn replicas_for(context: &NodeContext, view: &View, user: &str) -> Option<Vec<NodeId>> {
    let shared = &context.cluster;
    let me = shared.me.id;
    let wanted = replicas_wanted(context, view);
    let load_of = |node: NodeId| {
        if node == me {
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
    };
    let mut avoid = Vec::new();
    loop {
        let candidates = if avoid.is_empty() {
            candidates_for(context, view, user, wanted).await?
        } else {
            // Not cached: the usual candidates are weighed again with fresh loads next time.
            ask_candidates(context, view, user, wanted, &avoid).await?
        };
        let choice = placement::choose(
            context.config.placement,
            &candidates,
            wanted,
            load_of,
            context.config.overload_ops,
            avoid.is_empty(),
            &mut rand::thread_rng(),
        );
        match choice {
            Choice::Nodes(mut nodes) if !nodes.is_empty() => {
                if let Some(at) = nodes.iter().position(|&n| n == me) {
                    nodes.swap(0, at);
                }
                return Some(nodes);
            }
            Choice::Nodes(_) => return None,
            Choice::Avoid(nodes) => avoid = nodes,
        }
    }
}

/// The candidates for `user`'s new mail: cached for the membership epoch, else the manager's.
async fn candidates_for(
    context: &NodeContext,
    view: &View,
    user: &str,
    wanted: usize,
) -> Option<Rc<[NodeId]>> {
    if let Some(nodes) = cached_placement(user, view.epoch) {
        return Some(nodes);
    }
    let nodes = ask_candidates(context, view, user, wanted, &[]).await?;
    remember_placement(user, nodes.clone(), view.epoch);
    Some(nodes)
}

async fn ask_candidates(
    context: &NodeContext,
    view: &View,
    user: &str,
    wanted: usize,
    avoid: &[NodeId],
) -> Option<Rc<[NodeId]>> {
    let place = Body::Place {
        user: user.to_owned(),
        replicas: wanted.min(usize::from(u8::MAX)) as u8,
        avoid: avoid.to_vec(),
    };
    match ask_manager(context, view, user, &place).await {
        Some(Body::Placed { nodes }) if !nodes.is_empty() => Some(nodes.into()),
        _ => None,
    }
}

/// One message of an open maildrop.
#[derive(Debug)]
pub struct MaildropMessage {
    pub id: u128,
    pub size: u64,
    /// The nodes that listed it (its live replicas).
    pub holders: Vec<NodeId>,
}

/// An open (locked) maildrop: its messages and where each is.
#[derive(Debug)]
pub struct Maildrop {
    pub user: String,
    /// Oldest first, each id once.
    pub messages: Vec<MaildropMessage>,
    /// Every node the manager knew to hold mail of the user when the maildrop opened.
    fragments: Vec<NodeId>,
    /// The lock owner at the manager, if the lock is the cluster's.
    cluster_owner: Option<(u64, u64)>,
}

/// Why a maildrop did not open.
#[derive(Debug, PartialEq, Eq)]
pub enum OpenFailure {
    BadCredentials,
    InUse,
    Unavailable,
}

/// Authenticates and locks the user's maildrop.
pub async fn open(
    context: &Arc<NodeContext>,
    user: &str,
    credential: &Credential,
) -> Result<Maildrop, OpenFailure> {
    let shared = &context.cluster;
    let me = shared.me.id;
    if shared.is_joining() {
        shared.wait_joined(PATIENCE).await;
    }
    if !shared.clustered() {
        return match context
            .router
            .login(user, credential, LockMode::Local)
            .await
        {
            Login::Ok(messages) => Ok(Maildrop {
                user: user.to_owned(),
                messages: messages
                    .into_iter()
                    .map(|(id, size)| MaildropMessage {
                        id,
                        size,
                        holders: vec![me],
                    })
                    .collect(),
                fragments: Vec::new(),
                cluster_owner: None,
            }),
            Login::BadCredentials => Err(OpenFailure::BadCredentials),
            Login::InUse => Err(OpenFailure::InUse),
            Login::Unavailable => Err(OpenFailure::Unavailable),
        };
    }
    if let Credential::Password(password) = credential {
        authenticate(context, user, password).await?;
    }
    let owner = (me, shared.session_id());
    let lock = Body::Lock {
        user: user.to_owned(),
        owner,
    };
    let deadline = Instant::now() + PATIENCE;
    // A failure below releases the lock all the same: a manager may have granted it (in an
    // answer seen here, or one lost with its connection), and a lock left behind would be
    // carried by this node's reports to every later manager. Releasing a lock held by another
    // owner changes nothing. In the background: the client's answer does not wait for it.
    let failed = |failure: OpenFailure| {
        let (context, user) = (context.clone(), user.to_owned());
        glommio::spawn_local(async move { unlock(&context, &user, owner).await }).detach();
        Err(failure)
    };
    let (view, fragments) = loop {
        let view = shared.view.load_full();
        match ask_manager(context, &view, user, &lock).await {
            Some(Body::Locked { fragments, epoch }) => {
                shared.note_maildrop(user, owner);
                // Granted in the membership this node now has: any later change finds the
                // lock among this node's reports. Otherwise lock again (same owner).
                if still_in(shared, &view, epoch) {
                    break (view, fragments);
                }
                if Instant::now() >= deadline {
                    return failed(OpenFailure::Unavailable);
                }
            }
            Some(Body::Error(Failure::InUse)) => return failed(OpenFailure::InUse),
            _ if Instant::now() >= deadline => return failed(OpenFailure::Unavailable),
            _ => glommio::timer::sleep(RETRY_PAUSE).await,
        }
    };
    let mut maildrop = Maildrop {
        user: user.to_owned(),
        messages: Vec::new(),
        fragments: fragments.clone(),
        cluster_owner: Some(owner),
    };
    let peers = peers(shared);
    let mut by_id: std::collections::BTreeMap<u128, MaildropMessage> = Default::default();
    let mut tombstoned: Vec<u128> = Vec::new();
    for node in fragments {
        let listed = if node == me {
            context
                .router
                .list(user)
                .await
                .ok()
                .map(|f| (f.messages, f.deleted))
        } else {
            let list = Body::List {
                user: user.to_owned(),
            };
            let addr = view.member(node).map(|m| m.addr.clone());
            match remote(&peers, addr, &list).await {
                Some(Body::Listed { messages, deleted }) => Some((messages, deleted)),
                _ => None,
            }
        };
        match listed {
            Some((messages, deleted)) => {
                tombstoned.extend(deleted);
                for (id, size) in messages {
                    by_id
                        .entry(id)
                        .or_insert_with(|| MaildropMessage {
                            id,
                            size,
                            holders: Vec::new(),
                        })
                        .holders
                        .push(node);
                }
            }
            // Mail on a node that cannot answer is on its other replicas, or shows up once it
            // answers again.
            None => tracing::warn!(%user, node, "a fragment node did not list its messages"),
        }
    }
    // A copy on a replica that its tombstone has not reached yet is deleted all the same.
    for id in tombstoned {
        by_id.remove(&id);
    }
    // Ids begin with their arrival time: in id order the maildrop is oldest first, and each
    // message appears once however many replicas listed it.
    maildrop.messages = by_id.into_values().collect();
    Ok(maildrop)
}

/// Checks the password where the user's bucket is managed, so that one node's cache of
/// verified credentials serves the user whichever node the client connects to.
async fn authenticate(
    context: &NodeContext,
    user: &str,
    password: &str,
) -> Result<(), OpenFailure> {
    let shared = &context.cluster;
    let deadline = Instant::now() + PATIENCE;
    loop {
        let view = shared.view.load_full();
        let manager = view.map.manager_of(user);
        if manager == shared.me.id || view.member(manager).is_none() {
            let credential = Credential::Password(password.to_owned());
            return match context
                .router
                .login(user, &credential, LockMode::Elsewhere)
                .await
            {
                Login::Ok(_) => Ok(()),
                Login::BadCredentials => Err(OpenFailure::BadCredentials),
                Login::InUse | Login::Unavailable => Err(OpenFailure::Unavailable),
            };
        }
        let body = Body::Authenticate {
            user: user.to_owned(),
            password: password.to_owned(),
        };
        match ask_manager(context, &view, user, &body).await {
            Some(Body::Done) => return Ok(()),
            Some(Body::Error(Failure::BadCredentials)) => return Err(OpenFailure::BadCredentials),
            _ if Instant::now() >= deadline => return Err(OpenFailure::Unavailable),
            _ => glommio::timer::sleep(RETRY_PAUSE).await,
        }
    }
}

fn member_addr(context: &NodeContext, node: NodeId) -> Option<String> {
    context
        .cluster
        .view
        .load()
        .member(node)
        .map(|m| m.addr.clone())
}

/// A request to another node, retried while it cannot be reached (it may be restarting, or
/// this core may still be backing off from it) until [`PATIENCE`] runs out.
async fn remote(peers: &Rc<Peers>, addr: Option<String>, body: &Body) -> Option<Body> {
    let addr = addr?;
    let deadline = Instant::now() + PATIENCE;
    loop {
        match peers.request(&addr, body, PEER_TIMEOUT).await {
            Ok(answer) => return Some(answer),
            Err(_) if Instant::now() < deadline => glommio::timer::sleep(RETRY_PAUSE).await,
            Err(_) => return None,
        }
    }
}

/// The holders of a message in the order to read from: this node, then by load heard.
fn read_order(context: &NodeContext, holders: &[NodeId]) -> Vec<NodeId> {
    let me = context.cluster.me.id;
    let peers = peers(&context.cluster);
    let mut order = holders.to_vec();
    order.sort_by_key(|&node| {
        if node == me {
            (0, 0)
        } else {
            (1, peers.heard_load(node).map_or(u32::MAX, |h| h.load))
        }
    });
    order
}

/// The message at `index` of the maildrop, from the first holder that answers.
pub async fn fetch(context: &NodeContext, maildrop: &Maildrop, index: usize) -> Option<Vec<u8>> {
    let message = maildrop.messages.get(index)?;
    for node in read_order(context, &message.holders) {
        if node == context.cluster.me.id {
            if let Ok(body) = context.router.fetch(&maildrop.user, message.id).await {
                return Some(body);
            }
            continue;
        }
        let body = Body::Fetch {
            user: maildrop.user.clone(),
            id: message.id,
        };
        if let Some(Body::Fetched { message }) =
            remote(&peers(&context.cluster), member_addr(context, node), &body).await
        {
            return Some(message);
        }
    }
    None
}

/// Deletes the messages at `indices` on every node that holds them. Each holder's tombstone
/// also goes to the message's replicas that did not answer, once they are back.
pub async fn delete(
    context: &NodeContext,
    maildrop: &Maildrop,
    indices: &[usize],
) -> Result<(), StoreError> {
    let mut by_node: std::collections::BTreeMap<NodeId, Vec<u128>> = Default::default();
    for &index in indices {
        if let Some(message) = maildrop.messages.get(index) {
            for &node in &message.holders {
                by_node.entry(node).or_default().push(message.id);
            }
        }
    }
    let peers = peers(&context.cluster);
    let mut failure = None;
    let mut deleted_on = Vec::new();
    for (node, ids) in by_node {
        // Each holder's tombstones also go to every fragment node: a copy may lie on one that
        // did not answer the listing (down, or slow), outside the holder's replica set.
        let outcome = if node == context.cluster.me.id {
            context
                .router
                .delete(&maildrop.user, ids, maildrop.fragments.clone())
                .await
        } else {
            let body = Body::Delete {
                user: maildrop.user.clone(),
                ids,
                fragments: maildrop.fragments.clone(),
            };
            match remote(&peers, member_addr(context, node), &body).await {
                Some(Body::Done) => Ok(()),
                Some(Body::Error(Failure::NoSpace)) => Err(StoreError::NoSpace),
                _ => Err(StoreError::Failed),
            }
        };
        match outcome {
            Ok(()) => deleted_on.push(node),
            Err(error) => failure = Some(error),
        }
    }
    // Done when every message has a durable tombstone on at least one of its holders: that
    // holder replicates it to the others.
    let all_deleted = indices.iter().all(|&index| {
        maildrop
            .messages
            .get(index)
            .is_none_or(|m| m.holders.iter().any(|h| deleted_on.contains(h)))
    });
    match failure {
        Some(error) if !all_deleted => Err(error),
        _ => Ok(()),
    }
}

/// Releases the maildrop's lock.
pub async fn close(context: &NodeContext, maildrop: &Maildrop) {
    match maildrop.cluster_owner {
        None => context.router.unlock(&maildrop.user).await,
        Some(owner) => unlock(context, &maildrop.user, owner).await,
    }
}

/// Whether a manager's answer from `epoch` holds here: it is the epoch of the view the request
/// went out under, and this node has not moved on since.
fn still_in(shared: &ClusterShared, view: &View, epoch: Epoch) -> bool {
    epoch == view.epoch && shared.view.load().epoch == epoch
}

/// How long a session's end keeps trying to release its lock while the membership changes.
const UNLOCK_PATIENCE: Duration = Duration::from_secs(30);

/// Releases a cluster maildrop lock: forgets it here (so no later report names it), then asks
/// the user's manager until one releases it in the membership this node still has afterwards.
/// A manager releases only once every member's report of its epoch has arrived, so no report
/// of that epoch or a later one brings the lock back. A lock that cannot be released in time
/// stays until the next membership change, which drops it (this node no longer reports it).
async fn unlock(context: &NodeContext, user: &str, owner: (u64, u64)) {
    let shared = &context.cluster;
    shared.forget_maildrop(user, owner);
    let body = Body::Unlock {
        user: user.to_owned(),
        owner,
    };
    let deadline = Instant::now() + UNLOCK_PATIENCE;
    loop {
        let view = shared.view.load_full();
        if let Some(Body::Unlocked { epoch }) = ask_manager(context, &view, user, &body).await {
            if still_in(shared, &view, epoch) {
                return;
            }
        }
        if Instant::now() >= deadline {
            tracing::warn!(%user, "a maildrop lock could not be released; the next membership change drops it");
            return;
        }
        glommio::timer::sleep(RETRY_PAUSE).await;
    }
}
