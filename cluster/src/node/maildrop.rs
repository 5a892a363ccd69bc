//! The maildrop's edge: drives the pure maildrop policy ([`crate::maildrop`]) with this node's
//! real requests — the user's bucket manager, the fragment nodes, this node's shards — and
//! fetches messages from the least loaded holder.
//!
//! Retrieval: the manager locks the maildrop and names the fragment nodes; each lists its
//! fragment; copies are deduplicated by message id; each message is fetched from a holder (this
//! node, else the least loaded) and deleted on every holder at QUIT. On a lone node the lock
//! and the listing are the local shard's.

use std::rc::Rc;
use std::time::{Duration, Instant};

use super::cluster_driver::PEER_TIMEOUT;
use super::core_calls::{DeleteHere, ListHere, LogIn, ReadMessage, UnlockHere};
use super::core_context::CoreContext;
use super::delivery::{ask_manager, PATIENCE, RETRY_PAUSE};
use super::service::{Credential, LockMode, Login, StoreError};
use crate::delivery::Facts;
use crate::maildrop::{
    delete_outcome, Delete, DeleteAction, DeleteInput, MaildropSettings, Open, OpenAction,
    OpenInput, Owner, Unlock, UnlockAction, UnlockInput,
};
pub use crate::maildrop::{MaildropMessage, OpenFailure};
use crate::membership::Epoch;
use crate::membership::NodeId;
use crate::node::clock::now_ms;
use crate::rpc::{
    Authenticate, Call, CallError, CurrentEpoch, DeleteMessages, Failure, FetchMessage, Fetched,
    ListFragment,
};
use crate::transport::Peers;

/// An open (locked) maildrop: its messages and where each is.
#[derive(Debug)]
pub struct Maildrop {
    pub user: String,
    /// Oldest first, each id once.
    pub messages: Vec<MaildropMessage>,
    /// Every node the manager knew to hold mail of the user when the maildrop opened.
    fragments: Vec<NodeId>,
    /// The lock owner at the manager, if the lock is the cluster's.
    cluster_owner: Option<Owner>,
    /// `ClusterShared::majority_losses` when it opened: a loss since then may have let the
    /// other side's managers drop the lock, so its deletes are not acknowledged.
    majority_losses: u64,
    /// The view it opened in, confirmed by a majority of that view; its deletes are
    /// acknowledged only if a majority still confirms it once the tombstones are written.
    epoch: Epoch,
}

fn settings() -> MaildropSettings {
    MaildropSettings {
        patience_ms: PATIENCE.as_millis() as u64,
        unlock_patience_ms: UNLOCK_PATIENCE.as_millis() as u64,
        retry_pause_ms: RETRY_PAUSE.as_millis() as u64,
    }
}

/// Authenticates and locks the user's maildrop (the policy is [`Open`]'s; this loop carries
/// out its actions).
pub async fn open(
    context: &Rc<CoreContext>,
    user: &str,
    credential: &Credential,
) -> Result<Maildrop, OpenFailure> {
    let shared = &context.cluster;
    let me = shared.me.id;
    if shared.is_joining() {
        shared.wait_joined(PATIENCE).await;
    }
    let majority_losses = shared.majority_losses();
    if !shared.has_majority() {
        // Alone or on a partition's minority side: a membership round may be about to end.
        let deadline = std::time::Instant::now() + PATIENCE;
        while !shared.has_majority() && std::time::Instant::now() < deadline {
            glommio::timer::sleep(RETRY_PAUSE).await;
        }
        if !shared.has_majority() {
            return unavailable(context, user, credential).await;
        }
    }
    if !shared.clustered() {
        // Read after the view: a view of this node alone that came with the loss of the
        // majority (a partition, a pause) is published after that loss, so it is seen here;
        // only a node that is the whole cluster it knows opens a maildrop without its lock.
        if !shared.has_majority() {
            return unavailable(context, user, credential).await;
        }
        let login = LogIn {
            user: user.to_owned(),
            credential: credential.clone(),
            lock: LockMode::Local,
        };
        return match context.call(login).await {
            Login::Ok(messages) => Ok(Maildrop {
                user: user.to_owned(),
                messages: messages
                    .into_iter()
                    .map(|(id, size)| MaildropMessage {
                        id,
                        size,
                        holders: vec![me],
                        replicas: Vec::new(),
                    })
                    .collect(),
                fragments: Vec::new(),
                cluster_owner: None,
                majority_losses,
                epoch: shared.view.load().epoch,
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
    let mut machine = Open::new(user, owner, settings(), now_ms());
    let mut input = OpenInput::Start;
    let peers = &context.peers;
    loop {
        let view = shared.view.load_full();
        let facts = Facts {
            me,
            view: &view,
            now_ms: now_ms(),
            majority: shared.has_majority(),
        };
        input = match machine.step(input, facts) {
            OpenAction::Lock(lock) => {
                OpenInput::Locked(ask_manager(context, peers, &view, user, lock).await)
            }
            OpenAction::RecordLock(owner) => {
                shared.note_maildrop(user, owner);
                OpenInput::Continue
            }
            OpenAction::List(node) if node == me => {
                let list = ListHere {
                    user: user.to_owned(),
                };
                OpenInput::Listed(context.call(list).await.ok())
            }
            OpenAction::List(node) => {
                let list = ListFragment {
                    user: user.to_owned(),
                };
                let addr = view.member(node).map(|m| m.addr.clone());
                let listed = remote(peers, addr, list).await;
                if let Err(error) = &listed {
                    tracing::warn!(%user, node, %error, "a fragment node did not list its messages");
                }
                OpenInput::Listed(listed.ok())
            }
            OpenAction::Sleep { ms } => {
                glommio::timer::sleep(Duration::from_millis(ms)).await;
                OpenInput::Continue
            }
            OpenAction::Failed(failure) => {
                // In the background: the client's answer does not wait for the release.
                let (context, user) = (context.clone(), user.to_owned());
                glommio::spawn_local(async move { unlock(&context, &user, owner).await }).detach();
                return Err(failure);
            }
            OpenAction::Opened(opened) => {
                // The view the lock was granted in, not whichever this node has now: a session
                // whose lock came from an older view must not be confirmed by a newer one.
                let epoch = opened.epoch;
                if !view_confirmed(context, epoch).await {
                    tracing::warn!(%user, "a maildrop did not open: no majority of this node's view confirmed it (the cluster may have moved on without this node)");
                    let (context, user) = (context.clone(), user.to_owned());
                    glommio::spawn_local(async move { unlock(&context, &user, owner).await })
                        .detach();
                    return Err(OpenFailure::Unavailable);
                }
                return Ok(Maildrop {
                    user: user.to_owned(),
                    messages: opened.messages,
                    fragments: opened.fragments,
                    cluster_owner: Some(opened.owner),
                    majority_losses,
                    epoch,
                });
            }
        };
    }
}

/// A maildrop that cannot open now (no majority). The password is still checked, so a wrong
/// one is told as such.
async fn unavailable(
    context: &CoreContext,
    user: &str,
    credential: &Credential,
) -> Result<Maildrop, OpenFailure> {
    if let Credential::Password(password) = credential {
        authenticate(context, user, password).await?;
    }
    Err(OpenFailure::Unavailable)
}

/// Checks the password where the user's bucket is managed, so that one node's cache of
/// verified credentials serves the user whichever node the client connects to.
pub(crate) async fn authenticate(
    context: &CoreContext,
    user: &str,
    password: &str,
) -> Result<(), OpenFailure> {
    let shared = &context.cluster;
    let deadline = Instant::now() + PATIENCE;
    loop {
        let view = shared.view.load_full();
        let manager = view.map.manager_of(user);
        let remote = view.member(manager).filter(|_| manager != shared.me.id);
        let Some(member) = remote else {
            let login = LogIn {
                user: user.to_owned(),
                credential: Credential::Password(password.to_owned()),
                lock: LockMode::Elsewhere,
            };
            return match context.call(login).await {
                Login::Ok(_) => Ok(()),
                Login::BadCredentials => Err(OpenFailure::BadCredentials),
                Login::InUse | Login::Unavailable => Err(OpenFailure::Unavailable),
            };
        };
        let call = Authenticate {
            user: user.to_owned(),
            password: password.to_owned(),
        };
        match context.peers.call(&member.addr, call, PEER_TIMEOUT).await {
            Ok(()) => return Ok(()),
            Err(CallError::Refused(Failure::BadCredentials)) => {
                return Err(OpenFailure::BadCredentials)
            }
            Err(_) if Instant::now() >= deadline => return Err(OpenFailure::Unavailable),
            Err(_) => glommio::timer::sleep(RETRY_PAUSE).await,
        }
    }
}

fn member_addr(context: &CoreContext, node: NodeId) -> Option<String> {
    context
        .cluster
        .view
        .load()
        .member(node)
        .map(|m| m.addr.clone())
}

/// A call to another node, retried while it cannot be reached (it may be restarting, or this
/// core may still be backing off from it) until [`PATIENCE`] runs out; a refusal is final.
async fn remote<C: Call + Clone>(
    peers: &Rc<Peers>,
    addr: Option<String>,
    call: C,
) -> Result<C::Reply, CallError> {
    let addr = addr.ok_or(CallError::Unreachable)?;
    let deadline = Instant::now() + PATIENCE;
    loop {
        match peers.call(&addr, call.clone(), PEER_TIMEOUT).await {
            Err(CallError::Unreachable | CallError::Timeout | CallError::Closed)
                if Instant::now() < deadline =>
            {
                glommio::timer::sleep(RETRY_PAUSE).await
            }
            answer => return answer,
        }
    }
}

/// The holders of a message in the order to read from: this node, then by load heard.
pub(crate) fn read_order(context: &CoreContext, holders: &[NodeId]) -> Vec<NodeId> {
    let me = context.cluster.me.id;
    let peers = &context.peers;
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
pub async fn fetch(context: &CoreContext, maildrop: &Maildrop, index: usize) -> Option<Vec<u8>> {
    let message = maildrop.messages.get(index)?;
    for node in read_order(context, &message.holders) {
        if node == context.cluster.me.id {
            let read = ReadMessage {
                user: maildrop.user.clone(),
                id: message.id,
            };
            if let Ok(body) = context.call(read).await {
                return Some(body);
            }
            continue;
        }
        let call = FetchMessage {
            user: maildrop.user.clone(),
            id: message.id,
        };
        if let Ok(Fetched { message }) =
            remote(&context.peers, member_addr(context, node), call).await
        {
            return Some(message);
        }
    }
    None
}

/// Deletes the messages at `indices` on every node that listed them, every member of their
/// replica sets and a stand-in for an absent replica (the policy is [`Delete`]'s).
pub async fn delete(
    context: &CoreContext,
    maildrop: &Maildrop,
    indices: &[usize],
) -> Result<(), StoreError> {
    let shared = &context.cluster;
    if !shared.has_majority() || shared.majority_losses() != maildrop.majority_losses {
        tracing::warn!(user = %maildrop.user, "a POP3 session's deletes are not acknowledged: this node lost its majority since the maildrop opened (its lock may have been dropped meanwhile)");
        return Err(StoreError::Failed);
    }
    let peers = &context.peers;
    let members: Vec<NodeId> = context
        .cluster
        .view
        .load()
        .members
        .iter()
        .map(|m| m.id)
        .collect();
    let mut machine = Delete::new(&maildrop.messages, indices, &members, &maildrop.fragments);
    let mut input = DeleteInput::Start;
    loop {
        let (node, ids, also) = match machine.step(input) {
            DeleteAction::Finish(Ok(())) if maildrop.cluster_owner.is_some() => {
                // After the tombstones, not before: a session of any later view that a
                // majority moves to lists after them.
                if !view_confirmed(context, maildrop.epoch).await {
                    tracing::warn!(user = %maildrop.user, "a POP3 session's deletes are not acknowledged: no majority of the view it opened in still confirms it (its lock may have been granted again elsewhere)");
                    return Err(StoreError::Failed);
                }
                return Ok(());
            }
            DeleteAction::Finish(result) => return result,
            DeleteAction::DeleteAt { node, ids, also } => (node, ids, also),
        };
        let outcome = if node == context.cluster.me.id {
            let delete = DeleteHere {
                user: maildrop.user.clone(),
                ids,
                fragments: also,
            };
            context.call(delete).await
        } else {
            let call = DeleteMessages {
                user: maildrop.user.clone(),
                ids,
                fragments: also,
            };
            delete_outcome(remote(peers, member_addr(context, node), call).await)
        };
        input = DeleteInput::Deleted(outcome);
    }
}

/// Whether this node is still in `epoch` and enough other members of that view answer that
/// they are too ([`crate::maildrop::confirmations_needed`]): asked at once, done at the first
/// answers that suffice, so one silent member costs nothing while the others answer.
async fn view_confirmed(context: &CoreContext, epoch: Epoch) -> bool {
    let shared = &context.cluster;
    let view = shared.view.load_full();
    if view.epoch != epoch {
        return false;
    }
    let needed = crate::maildrop::confirmations_needed(view.members.len());
    if needed == 0 {
        return true;
    }
    let (sender, answers) = flume::unbounded::<bool>();
    for member in view.members.iter().filter(|m| m.id != shared.me.id) {
        let (peers, sender, addr) = (context.peers.clone(), sender.clone(), member.addr.clone());
        glommio::spawn_local(async move {
            let answer = peers.call(&addr, CurrentEpoch {}, PEER_TIMEOUT).await;
            let _ = sender.send(matches!(answer, Ok(theirs) if theirs == epoch));
        })
        .detach();
    }
    drop(sender);
    let mut agreeing = 0usize;
    while let Ok(agrees) = answers.recv_async().await {
        if agrees {
            agreeing += 1;
            if agreeing >= needed {
                return true;
            }
        }
    }
    false
}

/// Releases the maildrop's lock.
pub async fn close(context: &CoreContext, maildrop: &Maildrop) {
    match maildrop.cluster_owner {
        None => {
            let unlock = UnlockHere {
                user: maildrop.user.clone(),
            };
            context.call(unlock).await
        }
        Some(owner) => unlock(context, &maildrop.user, owner).await,
    }
}

/// How long a session's end keeps trying to release its lock while the membership changes.
const UNLOCK_PATIENCE: Duration = Duration::from_secs(30);

/// Releases a cluster maildrop lock (the policy is [`Unlock`]'s). A lock that cannot be
/// released in time stays until the next membership change, which drops it (this node no
/// longer reports it).
async fn unlock(context: &CoreContext, user: &str, owner: Owner) {
    let shared = &context.cluster;
    let mut machine = Unlock::new(user, owner, settings(), now_ms());
    let mut input = UnlockInput::Start;
    loop {
        let view = shared.view.load_full();
        let facts = Facts {
            me: shared.me.id,
            view: &view,
            now_ms: now_ms(),
            majority: shared.has_majority(),
        };
        input = match machine.step(input, facts) {
            UnlockAction::ForgetLock(owner) => {
                shared.forget_maildrop(user, owner);
                UnlockInput::Continue
            }
            UnlockAction::Unlock(call) => {
                UnlockInput::Unlocked(ask_manager(context, &context.peers, &view, user, call).await)
            }
            UnlockAction::Sleep { ms } => {
                glommio::timer::sleep(Duration::from_millis(ms)).await;
                UnlockInput::Continue
            }
            UnlockAction::Released => return,
            UnlockAction::GaveUp => {
                tracing::warn!(%user, "a maildrop lock could not be released; the next membership change drops it");
                return;
            }
        };
    }
}
