//! Every operation a core serves on its shards, one type each with its reply type
//! ([`CoreCall`]): what the sessions, the admin endpoint, the peer calls and the cluster duties
//! ask of the core that owns a user, or of every core.
//!
//! Adding an operation is adding a type here (and, if it crosses nodes, a call in
//! [`crate::rpc`] whose server in [`super::peer_calls`] makes it).

use std::rc::Rc;
use std::sync::Arc;

use porcupine_engine::record::user_key;
use porcupine_engine::{DeleteOutcome, EngineError, ReplicaSet, Stamp};
use porcupine_protocols::sasl::ScramCredentials;

use super::core_call::{CoreCall, UserCall};
use super::service::{store_error, Applied, CoreService, Credential, LockMode, Login, ShardReport};
use super::users;
use crate::anti_entropy::{bucket_of, Digest, Item, ITEMS_PER_ANSWER_MAX};
use crate::delivery::StoreError;
use crate::membership::NodeId;
use crate::replication::Update;
use crate::rpc::{Listed, ListedMessage};

macro_rules! user_call {
    ($call:ty) => {
        impl UserCall for $call {
            fn user(&self) -> &str {
                &self.user
            }
        }
    };
}

/// Store a message here and coordinate its replication to `replicas` (this node first; empty
/// or this node alone: not replicated); `also`: nodes an earlier attempt may have left a copy
/// on (named in the replica set, not waited for).
#[derive(Debug)]
pub struct Deliver {
    pub user: String,
    pub id: u128,
    pub message: Arc<Vec<u8>>,
    pub replicas: Vec<NodeId>,
    pub also: Vec<NodeId>,
}
user_call!(Deliver);

impl CoreCall for Deliver {
    type Reply = Result<(), StoreError>;
    async fn serve(self, service: &CoreService) -> Self::Reply {
        service
            .replication()
            .coordinate_put(
                &self.user,
                self.id,
                self.message,
                &self.replicas,
                &self.also,
            )
            .await
    }
    fn unanswered() -> Self::Reply {
        Err(StoreError::Failed)
    }
}

/// Apply a replicated update pushed by the node driving it.
#[derive(Debug)]
pub struct ApplyUpdate {
    pub update: Update,
    pub message: Option<Vec<u8>>,
}

impl UserCall for ApplyUpdate {
    fn user(&self) -> &str {
        &self.update.user
    }
}

impl CoreCall for ApplyUpdate {
    type Reply = Result<Applied, StoreError>;
    async fn serve(self, service: &CoreService) -> Self::Reply {
        service.replication().apply(self.update, self.message).await
    }
    fn unanswered() -> Self::Reply {
        Err(StoreError::Failed)
    }
}

/// Retire updates the node driving them retired: (user, id, HLC), all of this core's users.
#[derive(Debug)]
pub struct RetireUpdates {
    pub entries: Vec<(String, u128, u64)>,
}

impl CoreCall for RetireUpdates {
    type Reply = ();
    async fn serve(self, service: &CoreService) {
        service.replication().retired(self.entries).await;
    }
    fn unanswered() {}
}

/// Which of the address's users has it now, if one does: see [`Incarnation`].
#[derive(Debug)]
pub struct UserIncarnation {
    pub user: String,
}
user_call!(UserIncarnation);

/// Tells apart the users an address has had: the time (HLC) the address was last deleted
/// before this user had it (`not-before` in the profile; `None` for its first user). A
/// session logged in as one never acts for the next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Incarnation(pub Option<u64>);

impl CoreCall for UserIncarnation {
    type Reply = Result<Option<Incarnation>, StoreError>;
    async fn serve(self, service: &CoreService) -> Self::Reply {
        let shard = service.shard(&self.user).ok_or(StoreError::Failed)?;
        if !shard.has_live_profile(&self.user) {
            return Ok(None);
        }
        let profile = shard
            .read_profile(&self.user)
            .await
            .map_err(|e| store_error(&e))?;
        Ok(profile
            .filter(|p| !p.is_empty())
            .map(|p| Incarnation(super::users::not_before_of(&p))))
    }
    fn unanswered() -> Self::Reply {
        Err(StoreError::Failed)
    }
}

/// What the user's messages on a core's shards add up to, by replica set (a quota's usage).
#[derive(Clone, Debug)]
pub struct UsageHere {
    pub user: String,
}

impl CoreCall for UsageHere {
    type Reply = Vec<crate::rpc::UsageEntry>;
    async fn serve(self, service: &CoreService) -> Self::Reply {
        let mut entries: Vec<crate::rpc::UsageEntry> = Vec::new();
        for shard in service.shards().all() {
            for usage in shard.usage(&self.user) {
                let replicas: Vec<u64> = usage
                    .replicas
                    .as_slice()
                    .iter()
                    .map(|&n| u64::from(n))
                    .collect();
                match entries.iter_mut().find(|e| e.replicas == replicas) {
                    Some(entry) => {
                        entry.messages = entry.messages.saturating_add(usage.messages);
                        entry.bytes = entry.bytes.saturating_add(usage.bytes);
                    }
                    None => entries.push(crate::rpc::UsageEntry {
                        replicas,
                        messages: usage.messages,
                        bytes: usage.bytes,
                    }),
                }
            }
        }
        entries
    }
    fn unanswered() -> Self::Reply {
        Vec::new()
    }
}

/// When the user was deleted (the HLC of their newest profile, a removed one), if they were.
#[derive(Debug)]
pub struct RemovedAt {
    pub user: String,
}
user_call!(RemovedAt);

impl CoreCall for RemovedAt {
    type Reply = Result<Option<u64>, StoreError>;
    async fn serve(self, service: &CoreService) -> Self::Reply {
        let shard = service.shard(&self.user).ok_or(StoreError::Failed)?;
        Ok(shard
            .profile_hlc(&self.user)
            .filter(|_| !shard.has_live_profile(&self.user)))
    }
    fn unanswered() -> Self::Reply {
        Err(StoreError::Failed)
    }
}

/// Forget that these users exist (they were deleted): asked of every core.
#[derive(Clone, Debug)]
pub struct ForgetUsers {
    pub users: Vec<String>,
}

impl CoreCall for ForgetUsers {
    type Reply = Vec<()>;
    async fn serve(self, service: &CoreService) -> Vec<()> {
        if let Some(context) = service.context() {
            context.forget_here(&self.users);
        }
        Vec::new()
    }
    fn unanswered() -> Vec<()> {
        Vec::new()
    }
}

/// Check the credential and, with [`LockMode::Local`], lock the maildrop; the user's messages.
#[derive(Debug)]
pub struct LogIn {
    pub user: String,
    pub credential: Credential,
    pub lock: LockMode,
}
user_call!(LogIn);

impl CoreCall for LogIn {
    type Reply = Login;
    async fn serve(self, service: &CoreService) -> Login {
        service.login(&self.user, &self.credential, self.lock).await
    }
    fn unanswered() -> Login {
        Login::Unavailable
    }
}

/// The user's stored SCRAM-SHA-256 credentials (`None`: no such user, or none stored).
#[derive(Debug)]
pub struct ReadScram {
    pub user: String,
}
user_call!(ReadScram);

impl CoreCall for ReadScram {
    type Reply = Result<Option<ScramCredentials>, StoreError>;
    async fn serve(self, service: &CoreService) -> Self::Reply {
        let shard = service.shard(&self.user).ok_or(StoreError::Failed)?;
        match shard.read_profile(&self.user).await {
            Ok(profile) => Ok(profile.and_then(|p| users::scram_of(&p))),
            Err(e) => Err(store_error(&e)),
        }
    }
    fn unanswered() -> Self::Reply {
        Err(StoreError::Failed)
    }
}

/// The user's fragment on this node: messages oldest first, and deletes still on their way.
#[derive(Debug)]
pub struct ListHere {
    pub user: String,
}
user_call!(ListHere);

impl CoreCall for ListHere {
    type Reply = Result<Listed, StoreError>;
    async fn serve(self, service: &CoreService) -> Self::Reply {
        let user = &self.user;
        Ok(service
            .shard(user)
            .map_or_else(Listed::default, |shard| Listed {
                messages: shard
                    .messages(user)
                    .iter()
                    .map(|m| ListedMessage {
                        id: m.id,
                        size: u64::from(m.body_len),
                        replicas: super::replicas::from_set(&m.replicas),
                        hlc: m.hlc,
                        meta: super::imap_authority::meta_of(m),
                    })
                    .collect(),
                deleted: shard.pending_tombstones(user),
            }))
    }
    fn unanswered() -> Self::Reply {
        Err(StoreError::Failed)
    }
}

/// Release the user's maildrop lock on this core.
#[derive(Debug)]
pub struct UnlockHere {
    pub user: String,
}
user_call!(UnlockHere);

impl CoreCall for UnlockHere {
    type Reply = ();
    async fn serve(self, service: &CoreService) {
        service.unlock(&self.user);
    }
    fn unanswered() {}
}

/// One message's body, as stored here.
#[derive(Debug)]
pub struct ReadMessage {
    pub user: String,
    pub id: u128,
}
user_call!(ReadMessage);

impl CoreCall for ReadMessage {
    type Reply = Result<Vec<u8>, StoreError>;
    async fn serve(self, service: &CoreService) -> Self::Reply {
        let shard = service.shard(&self.user).ok_or(StoreError::Failed)?;
        shard
            .read_message(&self.user, self.id)
            .await
            .map(|r| r.body().to_vec())
            .map_err(|e| {
                tracing::warn!(user = %self.user, error = %e, "read failed");
                store_error(&e)
            })
    }
    fn unanswered() -> Self::Reply {
        Err(StoreError::Failed)
    }
}

/// A message's description for IMAP (see `porcupine_protocols::imap::structure`): as stored
/// with it, or made now from its bytes for mail stored before descriptions were.
#[derive(Debug)]
pub struct DescribeMessage {
    pub user: String,
    pub id: u128,
}
user_call!(DescribeMessage);

impl CoreCall for DescribeMessage {
    type Reply = Result<Vec<u8>, StoreError>;
    async fn serve(self, service: &CoreService) -> Self::Reply {
        use porcupine_protocols::imap::structure::{describe, Described};
        let shard = service.shard(&self.user).ok_or(StoreError::Failed)?;
        let stored = shard
            .read_message(&self.user, self.id)
            .await
            .map_err(|e| store_error(&e))?;
        let as_stored = Described::decode(stored.annex()).is_some();
        if let Some(context) = service.context() {
            let metrics = &context.metrics;
            let counter = if as_stored {
                &metrics.descriptions_read
            } else {
                &metrics.descriptions_made
            };
            super::metrics::add(counter, 1);
        }
        Ok(if as_stored {
            stored.annex().to_vec()
        } else {
            describe(stored.body())
        })
    }
    fn unanswered() -> Self::Reply {
        Err(StoreError::Failed)
    }
}

/// Delete messages here; their tombstones also go to `fragments` (nodes that may hold copies),
/// beside each message's replica set.
#[derive(Debug)]
pub struct DeleteHere {
    pub user: String,
    pub ids: Vec<u128>,
    pub fragments: Vec<NodeId>,
}
user_call!(DeleteHere);

impl CoreCall for DeleteHere {
    type Reply = Result<(), StoreError>;
    async fn serve(self, service: &CoreService) -> Self::Reply {
        let shard = service.shard(&self.user).ok_or(StoreError::Failed)?;
        let also = ReplicaSet::new(self.fragments.iter().map(|&n| n as u32));
        // All at once, so one group commit (one fdatasync) carries them.
        let user = Rc::new(self.user);
        let tasks: Vec<_> = self
            .ids
            .into_iter()
            .map(|id| {
                let (shard, user) = (shard.clone(), user.clone());
                glommio::spawn_local(async move {
                    (id, shard.delete_replicated(&user, id, None, also).await)
                })
            })
            .collect();
        let mut result = Ok(());
        for task in tasks {
            match task.await {
                (id, Ok(DeleteOutcome::Deleted(tomb))) => {
                    service.replication().deleted(&user, id, tomb);
                }
                (_, Ok(_)) | (_, Err(EngineError::NotFound)) => {}
                (_, Err(e)) => result = Err(store_error(&e)),
            }
        }
        result
    }
    fn unanswered() -> Self::Reply {
        Err(StoreError::Failed)
    }
}

/// Files these messages of the user here (their IMAP state; copies not here are skipped).
#[derive(Debug)]
pub struct FileHere {
    pub user: String,
    pub items: Vec<(u128, crate::mailbox::MessageMeta)>,
}
user_call!(FileHere);

impl CoreCall for FileHere {
    /// The ids not held here (a copy still on its way, or deleted meanwhile).
    type Reply = Result<Vec<u128>, StoreError>;
    async fn serve(self, service: &CoreService) -> Self::Reply {
        let Some(shard) = service.shard(&self.user) else {
            return Ok(self.items.iter().map(|(id, _)| *id).collect());
        };
        // All at once, so one group commit carries them.
        let user = Rc::new(self.user);
        let tasks: Vec<_> = self
            .items
            .into_iter()
            .map(|(id, meta)| {
                let (shard, user) = (shard.clone(), user.clone());
                glommio::spawn_local(async move {
                    let filing = super::imap_authority::filing_of(&meta);
                    (id, shard.set_filing(&user, id, meta.flags, filing).await)
                })
            })
            .collect();
        let mut missing = Vec::new();
        let mut failed = None;
        for task in tasks {
            match task.await {
                (_, Ok(())) => {}
                (id, Err(EngineError::NotFound)) => missing.push(id),
                (_, Err(e)) => failed = Some(store_error(&e)),
            }
        }
        match failed {
            Some(error) => Err(error),
            None => Ok(missing),
        }
    }
    fn unanswered() -> Self::Reply {
        Err(StoreError::Failed)
    }
}

/// A user's profile as stored here (the IMAP authority's mailbox list is one).
#[derive(Debug)]
pub struct ReadProfile {
    pub user: String,
}
user_call!(ReadProfile);

impl CoreCall for ReadProfile {
    type Reply = Result<Option<Vec<u8>>, StoreError>;
    async fn serve(self, service: &CoreService) -> Self::Reply {
        let Some(shard) = service.shard(&self.user) else {
            return Ok(None);
        };
        shard
            .read_profile(&self.user)
            .await
            .map_err(|e| store_error(&e))
    }
    fn unanswered() -> Self::Reply {
        Err(StoreError::Failed)
    }
}

/// An IMAP operation for the user's authority on this node (see [`super::imap_authority`]).
#[derive(Debug)]
pub struct ImapCall {
    pub user: String,
    pub op: crate::mailbox::ImapOp,
}
user_call!(ImapCall);

impl CoreCall for ImapCall {
    type Reply = crate::mailbox::ImapAnswer;
    async fn serve(self, service: &CoreService) -> Self::Reply {
        match service.context() {
            Some(context) => super::imap_authority::serve(&context, &self.user, self.op).await,
            None => crate::mailbox::ImapAnswer::Unavailable,
        }
    }
    fn unanswered() -> Self::Reply {
        crate::mailbox::ImapAnswer::Unavailable
    }
}

/// Store a profile made here (`stamp` `None`) or on another node; the newest update wins. The
/// answer is the stored update's timestamp (`None`: the profile here was newer).
#[derive(Debug)]
pub struct PutProfile {
    pub user: String,
    pub profile: Arc<Vec<u8>>,
    pub stamp: Option<Stamp>,
}
user_call!(PutProfile);

impl CoreCall for PutProfile {
    type Reply = Result<Option<u64>, StoreError>;
    async fn serve(self, service: &CoreService) -> Self::Reply {
        let shard = service.shard(&self.user).ok_or(StoreError::Failed)?;
        let stored = shard
            .put_profile_stamped(&self.user, &self.profile, self.stamp)
            .await
            .map_err(|e| store_error(&e))?;
        if stored.is_some()
            && self.stamp.is_some()
            && !super::imap_authority::is_internal(&self.user)
        {
            service.note_profile_arrived(&self.user);
        }
        Ok(stored)
    }
    fn unanswered() -> Self::Reply {
        Err(StoreError::Failed)
    }
}

/// Users with messages, or with deletes not yet on every replica, on a core's shards.
#[derive(Clone, Copy, Debug)]
pub struct FragmentUsers;

impl CoreCall for FragmentUsers {
    type Reply = Vec<String>;
    async fn serve(self, service: &CoreService) -> Vec<String> {
        service
            .shards()
            .all()
            .flat_map(|shard| shard.fragment_users())
            .collect()
    }
    fn unanswered() -> Vec<String> {
        Vec::new()
    }
}

/// Every profile on a core's shards, with the timestamp of its update.
#[derive(Clone, Copy, Debug)]
pub struct AllProfiles {
    /// Only profiles updated at or after this wall-clock time (Unix ms; `None`: all): what a
    /// member that was away since then may have missed.
    pub since_ms: Option<u64>,
}

impl CoreCall for AllProfiles {
    type Reply = Vec<(String, u64, Vec<u8>)>;
    async fn serve(self, service: &CoreService) -> Self::Reply {
        let mut profiles = Vec::new();
        for shard in service.shards().all() {
            for (n, user) in shard.users().into_iter().enumerate() {
                // Reads served from memory never yield: a million of them in a row would
                // stall this core's membership driver past its peers' suspicion timeout.
                if n % 256 == 0 {
                    glommio::yield_if_needed().await;
                }
                let Some(hlc) = shard.profile_hlc(&user) else {
                    continue;
                };
                if self
                    .since_ms
                    .is_some_and(|since| porcupine_engine::hlc::millis_of(hlc) < since)
                {
                    continue;
                }
                if let Ok(Some(profile)) = shard.read_profile(&user).await {
                    profiles.push((user, hlc, profile));
                }
            }
        }
        profiles
    }
    fn unanswered() -> Self::Reply {
        Vec::new()
    }
}

/// The users with a profile on a core's shards.
#[derive(Clone, Copy, Debug)]
pub struct ListUsers;

impl CoreCall for ListUsers {
    type Reply = Vec<String>;
    async fn serve(self, service: &CoreService) -> Vec<String> {
        let mut users = Vec::new();
        for shard in service.shards().all() {
            users.extend(
                shard.users().into_iter().filter(|u| {
                    shard.has_live_profile(u) && !super::imap_authority::is_internal(u)
                }),
            );
        }
        users
    }
    fn unanswered() -> Vec<String> {
        Vec::new()
    }
}

/// How many users ever had a profile on a core's shards (removed ones too): a node where
/// every user was deleted is not a new node.
#[derive(Clone, Copy, Debug)]
pub struct ProfilesEver;

impl CoreCall for ProfilesEver {
    type Reply = Vec<usize>;
    async fn serve(self, service: &CoreService) -> Vec<usize> {
        service
            .shards()
            .all()
            .map(|shard| {
                shard
                    .users()
                    .iter()
                    .filter(|u| shard.has_profile(u) && !super::imap_authority::is_internal(u))
                    .count()
            })
            .collect()
    }
    fn unanswered() -> Vec<usize> {
        Vec::new()
    }
}

/// A summary of each of a core's shards, for `/status` and `/metrics`.
#[derive(Clone, Copy, Debug)]
pub struct ShardReports;

impl CoreCall for ShardReports {
    type Reply = Vec<ShardReport>;
    async fn serve(self, service: &CoreService) -> Vec<ShardReport> {
        service.reports()
    }
    fn unanswered() -> Vec<ShardReport> {
        Vec::new()
    }
}

/// Anti-entropy: the digest of what this core's shards hold for `node`; `None` if the core
/// did not answer (the round is then given up: a partial digest would differ everywhere).
#[derive(Clone, Copy, Debug)]
pub struct DigestHeldFor {
    pub node: NodeId,
}

impl CoreCall for DigestHeldFor {
    type Reply = Vec<Option<Digest>>;
    async fn serve(self, service: &CoreService) -> Self::Reply {
        let mut digest = Digest::default();
        for shard in service.shards().all() {
            shard.visit_held_for(self.node as u32, |user, id, hlc, tombstone| {
                digest.add(user_key(user), id, hlc, tombstone);
            });
        }
        vec![Some(digest)]
    }
    fn unanswered() -> Self::Reply {
        vec![None]
    }
}

/// Anti-entropy: what this core's shards hold for `node` in `buckets`, at most
/// [`ITEMS_PER_ANSWER_MAX`] items; `None` if the core did not answer.
#[derive(Clone, Debug)]
pub struct ItemsHeldFor {
    pub node: NodeId,
    pub buckets: Arc<Vec<u16>>,
}

impl CoreCall for ItemsHeldFor {
    type Reply = Vec<Option<Vec<Item>>>;
    async fn serve(self, service: &CoreService) -> Self::Reply {
        let mut items = Vec::new();
        for shard in service.shards().all() {
            shard.visit_held_for(self.node as u32, |user, id, hlc, tombstone| {
                if items.len() < ITEMS_PER_ANSWER_MAX
                    && self.buckets.contains(&bucket_of(user_key(user), id))
                {
                    items.push(Item {
                        user: user.to_owned(),
                        id,
                        hlc,
                        tombstone,
                    });
                }
            });
        }
        vec![Some(items)]
    }
    fn unanswered() -> Self::Reply {
        vec![None]
    }
}

/// Anti-entropy: push this node's copy of a message to `to`, which lacks it.
#[derive(Debug)]
pub struct PushMissing {
    pub user: String,
    pub id: u128,
    pub to: NodeId,
}
user_call!(PushMissing);

impl CoreCall for PushMissing {
    type Reply = bool;
    async fn serve(self, service: &CoreService) -> bool {
        service
            .replication()
            .push_missing(&self.user, self.id, self.to)
            .await
    }
    fn unanswered() -> bool {
        false
    }
}
