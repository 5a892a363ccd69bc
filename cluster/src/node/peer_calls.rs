//! What this node answers to each call of a peer: one server per operation of
//! [`crate::rpc`], dispatched by an exhaustive `match` (a new operation does not compile until
//! it is served here), each answered with its own reply type.

use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;

use super::cluster_driver::stamp_ok;
use super::core_calls::{
    ApplyUpdate, DeleteHere, DigestHeldFor, FileHere, ImapCall, ItemsHeldFor, ListHere, LogIn,
    PutProfile, ReadMessage, UsageHere,
};
use super::core_context::CoreContext;
use super::service::{Applied, Credential, LockMode, Login};
use crate::anti_entropy::{Digest, BUCKETS, BUCKETS_PER_ROUND_MAX, ITEMS_PER_ANSWER_MAX};
use crate::manager::ManagerCall;
use crate::replication::Update;
use crate::rpc::{
    Authenticate, Call, CurrentEpoch, DeleteMessages, Failure, FetchMessage, Fetched, FileMessages,
    Held, HeldDigest, HeldItems, ImapRequest, ListFragment, Listed, LockMaildrop, NoteFragment,
    PlaceMail, PushUpdate, Pushed, ReplicaUpdate, ReportFragments, Request, StoreMessage,
    SyncProfiles, UnlockMaildrop, UserFragments, UserUsage,
};
use crate::transport::Peers;
use porcupine_engine::{Stamp, UpdateKind};

/// Profile writes in flight while storing a batch from a peer.
const PROFILE_PARALLELISM: usize = 512;

/// Serves `request` on this core; the reply frame to send back (`None`: it did not encode,
/// which is logged).
pub async fn answer(
    context: &Rc<CoreContext>,
    request_id: u64,
    request: Request,
) -> Option<Vec<u8>> {
    let peers = &context.peers;
    match request {
        Request::PlaceMail(call) => {
            reply::<PlaceMail>(peers, request_id, manager(context, call).await)
        }
        Request::NoteFragment(call) => {
            reply::<NoteFragment>(peers, request_id, manager(context, call).await)
        }
        Request::ReportFragments(call) => {
            reply::<ReportFragments>(peers, request_id, manager(context, call).await)
        }
        Request::LockMaildrop(call) => {
            reply::<LockMaildrop>(peers, request_id, manager(context, call).await)
        }
        Request::UnlockMaildrop(call) => {
            reply::<UnlockMaildrop>(peers, request_id, manager(context, call).await)
        }
        Request::StoreMessage(call) => {
            reply::<StoreMessage>(peers, request_id, store(context, call).await)
        }
        Request::PushUpdate(call) => {
            reply::<PushUpdate>(peers, request_id, push(context, call).await)
        }
        Request::ListFragment(call) => {
            reply::<ListFragment>(peers, request_id, list(context, call).await)
        }
        Request::FetchMessage(call) => {
            reply::<FetchMessage>(peers, request_id, fetch(context, call).await)
        }
        Request::DescribeMessage(call) => {
            let describe = super::core_calls::DescribeMessage {
                user: call.user,
                id: call.id,
            };
            let result = context
                .call(describe)
                .await
                .map(|message| Fetched { message })
                .map_err(Failure::from);
            reply::<crate::rpc::DescribeMessage>(peers, request_id, result)
        }
        Request::DeleteMessages(call) => {
            reply::<DeleteMessages>(peers, request_id, delete(context, call).await)
        }
        Request::Authenticate(call) => {
            reply::<Authenticate>(peers, request_id, authenticate(context, call).await)
        }
        Request::SyncProfiles(call) => {
            reply::<SyncProfiles>(peers, request_id, profiles(context, call).await)
        }
        Request::HeldDigest(call) => {
            reply::<HeldDigest>(peers, request_id, held_digest(context, call).await)
        }
        Request::HeldItems(call) => {
            reply::<HeldItems>(peers, request_id, held_items(context, call).await)
        }
        Request::CurrentEpoch(_) => {
            let epoch = context.cluster.view.load().epoch;
            reply::<CurrentEpoch>(peers, request_id, Ok(epoch))
        }
        Request::UserFragments(call) => {
            reply::<UserFragments>(peers, request_id, manager(context, call).await)
        }
        Request::FileMessages(call) => {
            let file = FileHere {
                user: call.user,
                items: call.items,
            };
            let result = context.call(file).await.map_err(Failure::from);
            reply::<FileMessages>(peers, request_id, result)
        }
        Request::UserUsage(call) => {
            let entries = context.call_each(UsageHere { user: call.user }).await;
            reply::<UserUsage>(peers, request_id, Ok(entries))
        }
        Request::ImapRequest(call) => {
            let fence = matches!(call.op, crate::mailbox::ImapOp::Fence { .. });
            let answer = if fence
                || context.cluster.view.load().map.manager_of(&call.user) == context.cluster.me.id
            {
                context
                    .call(ImapCall {
                        user: call.user,
                        op: call.op,
                    })
                    .await
            } else {
                // Not the authority (any more): the caller asks again where it now is.
                crate::mailbox::ImapAnswer::Unavailable
            };
            reply::<ImapRequest>(peers, request_id, Ok(answer))
        }
    }
}

fn reply<C: Call>(
    peers: &Peers,
    request_id: u64,
    reply: Result<C::Reply, Failure>,
) -> Option<Vec<u8>> {
    peers.reply_frame::<C>(request_id, &reply)
}

/// A call for the bucket manager, on core 0.
async fn manager<C: ManagerCall>(context: &CoreContext, call: C) -> Result<C::Reply, Failure>
where
    C::Reply: Send,
{
    context
        .cluster
        .ask_local_manager(call)
        .await
        .map_err(|error| error.refusal().unwrap_or(Failure::Failed))
}

async fn store(context: &CoreContext, call: StoreMessage) -> Result<(), Failure> {
    let StoreMessage {
        user,
        id,
        epoch,
        replicas,
        also,
        message,
    } = call;
    let message = Arc::new(message);
    super::delivery::store_here(context, &user, id, message, epoch, replicas, also)
        .await
        .map_err(Failure::from)
}

async fn push(context: &CoreContext, call: PushUpdate) -> Result<Pushed, Failure> {
    if !stamp_ok(context, call.hlc) {
        return Err(Failure::Failed);
    }
    let (kind, message) = match call.update {
        ReplicaUpdate::Put { message } => (UpdateKind::Put, Some(message)),
        ReplicaUpdate::Delete => (UpdateKind::Delete, None),
    };
    let update = Update {
        user: call.user,
        id: call.id,
        kind,
        hlc: call.hlc,
        origin: call.origin,
        replicas: call.replicas,
    };
    match context.call(ApplyUpdate { update, message }).await {
        Ok(Applied::Taken) => Ok(Pushed::Taken),
        Ok(Applied::TakenNaming(nodes)) => Ok(Pushed::TakenNaming(nodes)),
        // The pusher deletes its copy too (see `replicas::Edge::push`).
        Ok(Applied::DeletedHere) => Ok(Pushed::DeletedHere),
        Err(error) => Err(error.into()),
    }
}

async fn list(context: &CoreContext, call: ListFragment) -> Result<Listed, Failure> {
    let list = ListHere { user: call.user };
    context.call(list).await.map_err(Failure::from)
}

async fn fetch(context: &CoreContext, call: FetchMessage) -> Result<Fetched, Failure> {
    let read = ReadMessage {
        user: call.user,
        id: call.id,
    };
    context
        .call(read)
        .await
        .map(|message| Fetched { message })
        .map_err(Failure::from)
}

async fn delete(context: &CoreContext, call: DeleteMessages) -> Result<(), Failure> {
    let delete = DeleteHere {
        user: call.user,
        ids: call.ids,
        fragments: call.fragments,
    };
    context.call(delete).await.map_err(Failure::from)
}

async fn authenticate(context: &CoreContext, call: Authenticate) -> Result<(), Failure> {
    let login = LogIn {
        user: call.user,
        credential: Credential::Password(call.password),
        lock: LockMode::Elsewhere,
    };
    match context.call(login).await {
        Login::Ok(_) => Ok(()),
        Login::BadCredentials => Err(Failure::BadCredentials),
        Login::InUse | Login::Unavailable => Err(Failure::Failed),
    }
}

async fn profiles(context: &Rc<CoreContext>, call: SyncProfiles) -> Result<(), Failure> {
    // A profile stamped in the far future would beat every later password change.
    if !call
        .profiles
        .iter()
        .all(|(_, hlc, _)| stamp_ok(context, *hlc))
    {
        return Err(Failure::Failed);
    }
    // A deleted user's removal, or a user's new quota: this node's cores forget what they
    // knew of the user.
    let changed: Vec<String> = call
        .profiles
        .iter()
        .filter_map(
            |(name, _, profile)| match super::quota::user_of_profile(name) {
                Some(user) => Some(user.to_owned()),
                None => profile.is_empty().then(|| name.clone()),
            },
        )
        .collect();
    // Many at once, so they share group commits. The newest update of each wins.
    let mut result = Ok(());
    let mut in_flight = VecDeque::new();
    for (user, hlc, profile) in call.profiles {
        let context = context.clone();
        let put = PutProfile {
            user,
            profile: Arc::new(profile),
            stamp: Some(Stamp { hlc, origin: 0 }),
        };
        in_flight.push_back(glommio::spawn_local(async move { context.call(put).await }));
        if in_flight.len() >= PROFILE_PARALLELISM {
            if let Some(task) = in_flight.pop_front() {
                if let Err(error) = task.await {
                    result = Err(error.into());
                }
            }
        }
    }
    for task in in_flight {
        if let Err(error) = task.await {
            result = Err(error.into());
        }
    }
    context.forget_users(changed).await;
    result
}

/// Anti-entropy: the digest of what every core here holds for the asker.
async fn held_digest(context: &CoreContext, call: HeldDigest) -> Result<Digest, Failure> {
    let parts = context.call_each(DigestHeldFor { node: call.from }).await;
    let mut digest = Digest::default();
    for part in parts {
        digest.merge(&part.ok_or(Failure::Failed)?);
    }
    Ok(digest)
}

/// Anti-entropy: what every core here holds for the asker in the buckets asked (a few, each a
/// real bucket: anything else is refused).
async fn held_items(context: &CoreContext, call: HeldItems) -> Result<Held, Failure> {
    if call.buckets.len() > BUCKETS_PER_ROUND_MAX
        || call.buckets.iter().any(|&b| usize::from(b) >= BUCKETS)
    {
        return Err(Failure::Failed);
    }
    let asked = ItemsHeldFor {
        node: call.from,
        buckets: Arc::new(call.buckets),
    };
    let mut held = Held::default();
    for part in context.call_each(asked).await {
        held.items.extend(part.ok_or(Failure::Failed)?);
    }
    if held.items.len() > ITEMS_PER_ANSWER_MAX {
        held.items.truncate(ITEMS_PER_ANSWER_MAX);
        held.truncated = true;
    }
    Ok(held)
}
