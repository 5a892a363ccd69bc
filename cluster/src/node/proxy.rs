//! Delivery and retrieval proxies: what a session on any node does to store mail for a user,
//! or to open the user's maildrop, wherever the user's fragments are.
//!
//! Delivery: user → bucket manager (user map) → the manager picks the target (a node holding a
//! fragment of the user's mailbox, else the least loaded live node) → store there (locally, or
//! a store request that the target makes durable before answering). Retrieval: the manager
//! locks the maildrop and names the fragment nodes; each lists its fragment; messages are
//! fetched from the node that holds them and deleted there at QUIT. On a lone node all of this
//! is local. A manager that is rebuilding its mail map answers "try again", and the proxy does,
//! for a bounded time.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::cluster_driver::PEER_TIMEOUT;
use super::cluster_state::peers;
use super::service::{LockMode, Login, StoreError};
use super::NodeContext;
use crate::membership::{Epoch, NodeId, View};
use crate::transport::Peers;
use crate::wire::{Body, Failure};

/// How long a session waits for the cluster (a membership change, a mail-map rebuild).
const PATIENCE: Duration = Duration::from_secs(5);
const RETRY_PAUSE: Duration = Duration::from_millis(20);

/// Stores a message in the user's fragment on this node, counting it in this node's load.
/// `placed`: the membership epoch in which the manager chose this node. If the membership
/// changed since, or this node reported its fragments while the store was under way, the
/// current manager may not know of this fragment: it is told before the store counts as done.
pub async fn store_here(
    context: &NodeContext,
    user: &str,
    id: u128,
    message: Arc<Vec<u8>>,
    placed: Epoch,
) -> Result<(), StoreError> {
    let shared = &context.cluster;
    let snapshots = shared.snapshots.load(Ordering::SeqCst);
    shared.load.fetch_add(1, Ordering::Relaxed);
    let result = context.router.deliver(user, id, message).await;
    shared.load.fetch_sub(1, Ordering::Relaxed);
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
async fn note(context: &NodeContext, user: &str) {
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

/// Placements this core made recently: user → (node, epoch). A user's next message goes to
/// the same node without asking the manager again (the manager recorded the fragment when it
/// placed it), until the membership changes.
struct PlacementCache {
    entries: HashMap<String, (NodeId, Epoch)>,
}

/// Entries before the cache starts over (bounded memory).
const PLACEMENT_CACHE_MAX: usize = 1 << 18;

thread_local! {
    static PLACEMENTS: RefCell<PlacementCache> = RefCell::new(PlacementCache {
        entries: HashMap::new(),
    });
}

fn cached_placement(user: &str, epoch: Epoch) -> Option<NodeId> {
    PLACEMENTS.with(|cache| {
        cache
            .borrow()
            .entries
            .get(user)
            .filter(|(_, at)| *at == epoch)
            .map(|(node, _)| *node)
    })
}

fn remember_placement(user: &str, node: NodeId, epoch: Epoch) {
    PLACEMENTS.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.entries.len() >= PLACEMENT_CACHE_MAX {
            cache.entries.clear();
        }
        cache.entries.insert(user.to_owned(), (node, epoch));
    });
}

fn forget_placement(user: &str) {
    PLACEMENTS.with(|cache| cache.borrow_mut().entries.remove(user));
}

/// Delivers one copy of a message to `user`, wherever the cluster places it.
pub async fn deliver(
    context: &NodeContext,
    user: &str,
    id: u128,
    message: Arc<Vec<u8>>,
) -> Result<(), StoreError> {
    let shared = &context.cluster;
    if !shared.clustered() {
        // A lone node: no manager to ask (and no shared reference count to bump per message).
        let epoch = shared.view.load().epoch;
        return store_here(context, user, id, message, epoch).await;
    }
    let deadline = Instant::now() + PATIENCE;
    loop {
        let view = shared.view.load_full();
        if view.members.len() <= 1 {
            return store_here(context, user, id, message, view.epoch).await;
        }
        let placed = match cached_placement(user, view.epoch) {
            Some(node) => Some(node),
            None => {
                let place = Body::Place {
                    user: user.to_owned(),
                };
                match ask_manager(context, &view, user, &place).await {
                    Some(Body::Placed { node }) => {
                        remember_placement(user, node, view.epoch);
                        Some(node)
                    }
                    _ => None,
                }
            }
        };
        if let Some(node) = placed {
            if node == shared.me.id {
                return store_here(context, user, id, message, view.epoch).await;
            }
            forget_placement(user);
            if let Some(member) = view.member(node) {
                let store = Body::Store {
                    user: user.to_owned(),
                    id,
                    epoch: view.epoch,
                    message: message.to_vec(),
                };
                match peers(shared)
                    .request(&member.addr, &store, PEER_TIMEOUT)
                    .await
                {
                    Ok(Body::Done) => {
                        remember_placement(user, node, view.epoch);
                        return Ok(());
                    }
                    Ok(Body::Error(Failure::NoSpace)) => return Err(StoreError::NoSpace),
                    Ok(Body::Error(Failure::TryAgain)) | Err(_) => {}
                    Ok(_) => return Err(StoreError::Failed),
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(StoreError::Failed);
        }
        glommio::timer::sleep(RETRY_PAUSE).await;
    }
}

/// An open (locked) maildrop: its messages and where each is.
#[derive(Debug)]
pub struct Maildrop {
    pub user: String,
    /// (id, size, node holding it), oldest first, each id once.
    pub messages: Vec<(u128, u64, NodeId)>,
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
    context: &NodeContext,
    user: &str,
    password: &str,
) -> Result<Maildrop, OpenFailure> {
    let shared = &context.cluster;
    let me = shared.me.id;
    if !shared.clustered() {
        return match context.router.login(user, password, LockMode::Local).await {
            Login::Ok(messages) => Ok(Maildrop {
                user: user.to_owned(),
                messages: messages
                    .into_iter()
                    .map(|(id, size)| (id, size, me))
                    .collect(),
                cluster_owner: None,
            }),
            Login::BadCredentials => Err(OpenFailure::BadCredentials),
            Login::InUse => Err(OpenFailure::InUse),
            Login::Unavailable => Err(OpenFailure::Unavailable),
        };
    }
    authenticate(context, user, password).await?;
    let owner = (me, shared.session_id());
    let lock = Body::Lock {
        user: user.to_owned(),
        owner,
    };
    let deadline = Instant::now() + PATIENCE;
    let (view, fragments) = loop {
        let view = shared.view.load_full();
        match ask_manager(context, &view, user, &lock).await {
            Some(Body::Locked { fragments }) => break (view, fragments),
            Some(Body::Error(Failure::InUse)) => return Err(OpenFailure::InUse),
            _ if Instant::now() >= deadline => return Err(OpenFailure::Unavailable),
            _ => glommio::timer::sleep(RETRY_PAUSE).await,
        }
    };
    let mut maildrop = Maildrop {
        user: user.to_owned(),
        messages: Vec::new(),
        cluster_owner: Some(owner),
    };
    let peers = peers(shared);
    for node in fragments {
        let listed = if node == me {
            context.router.list(user).await.ok()
        } else {
            let list = Body::List {
                user: user.to_owned(),
            };
            let addr = view.member(node).map(|m| m.addr.clone());
            match remote(&peers, addr, &list).await {
                Some(Body::Listed { messages }) => Some(messages),
                _ => None,
            }
        };
        match listed {
            Some(messages) => maildrop
                .messages
                .extend(messages.into_iter().map(|(id, size)| (id, size, node))),
            // Mail on a node that cannot answer stays there; it shows up once it does.
            None => tracing::warn!(%user, node, "a fragment node did not list its messages"),
        }
    }
    // Ids begin with their arrival time: sorting keeps the maildrop oldest first.
    maildrop.messages.sort_by_key(|m| m.0);
    maildrop.messages.dedup_by_key(|m| m.0);
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
            return match context
                .router
                .login(user, password, LockMode::Elsewhere)
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

/// The message at `index` of the maildrop.
pub async fn fetch(context: &NodeContext, maildrop: &Maildrop, index: usize) -> Option<Vec<u8>> {
    let &(id, _, node) = maildrop.messages.get(index)?;
    if node == context.cluster.me.id {
        return context.router.fetch(&maildrop.user, id).await.ok();
    }
    let body = Body::Fetch {
        user: maildrop.user.clone(),
        id,
    };
    match remote(&peers(&context.cluster), member_addr(context, node), &body).await {
        Some(Body::Fetched { message }) => Some(message),
        _ => None,
    }
}

/// Deletes the messages at `indices`, each on the node that holds it.
pub async fn delete(
    context: &NodeContext,
    maildrop: &Maildrop,
    indices: &[usize],
) -> Result<(), StoreError> {
    let mut by_node: std::collections::BTreeMap<NodeId, Vec<u128>> = Default::default();
    for &index in indices {
        if let Some(&(id, _, node)) = maildrop.messages.get(index) {
            by_node.entry(node).or_default().push(id);
        }
    }
    let peers = peers(&context.cluster);
    let mut result = Ok(());
    for (node, ids) in by_node {
        let outcome = if node == context.cluster.me.id {
            context.router.delete(&maildrop.user, ids).await
        } else {
            let body = Body::Delete {
                user: maildrop.user.clone(),
                ids,
            };
            match remote(&peers, member_addr(context, node), &body).await {
                Some(Body::Done) => Ok(()),
                Some(Body::Error(Failure::NoSpace)) => Err(StoreError::NoSpace),
                _ => Err(StoreError::Failed),
            }
        };
        if outcome.is_err() {
            result = outcome;
        }
    }
    result
}

/// Releases the maildrop's lock.
pub async fn close(context: &NodeContext, maildrop: &Maildrop) {
    match maildrop.cluster_owner {
        None => context.router.unlock(&maildrop.user).await,
        Some(owner) => {
            let view = context.cluster.view.load_full();
            let unlock = Body::Unlock {
                user: maildrop.user.clone(),
                owner,
            };
            let _ = ask_manager(context, &view, &maildrop.user, &unlock).await;
        }
    }
}
