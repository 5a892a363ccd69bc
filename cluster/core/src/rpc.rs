//! What nodes ask of each other: one request type per operation, each with its reply type,
//! carried by a typed RPC over the frame ([`crate::wire`]).
//!
//! | frame kind | payload (postcard)                                                   |
//! |------------|----------------------------------------------------------------------|
//! | request    | [`Request`]: one variant per operation, holding the operation's type  |
//! | reply      | `Result<C::Reply, Failure>` of that request's operation `C`          |
//! | one-way    | [`OneWay`]                                                           |
//!
//! The asker knows which operation it asked, so a reply carries no tag of its own and cannot
//! be of the wrong kind. Adding an operation is one struct and one line of [`calls!`] here
//! (its reply type with it), and its server on the node; the node's dispatch is an exhaustive
//! `match` on [`Request`], so the compiler names every place that must learn it. The variant
//! order is part of the wire format (version 7).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::membership::{self, Epoch};

/// One operation one node asks of another, with the type of its answer.
pub trait Call: Into<Request> {
    type Reply: Serialize + DeserializeOwned;
}

/// Why a remote operation was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Failure {
    /// The disk is full there (SMTP 452).
    NoSpace,
    /// Anything else (SMTP 451).
    Failed,
    /// The bucket's mail map is being rebuilt, or the addressee is not its manager: ask again.
    TryAgain,
    /// The maildrop is locked by another session.
    InUse,
    /// Wrong user or password.
    BadCredentials,
}

/// Why a call has no answer to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("refused: {0:?}")]
    Refused(Failure),
    #[error("peer unreachable")]
    Unreachable,
    #[error("no reply in time")]
    Timeout,
    #[error("connection lost")]
    Closed,
    /// The reply did not decode as the operation's reply (a peer of another build).
    #[error("undecodable reply")]
    BadReply,
}

impl CallError {
    /// The refusal, if the peer answered with one.
    pub fn refusal(self) -> Option<Failure> {
        match self {
            CallError::Refused(failure) => Some(failure),
            _ => None,
        }
    }
}

/// The reply payload of operation `C`.
pub fn reply_bytes<C: Call>(reply: &Result<C::Reply, Failure>) -> Result<Vec<u8>, String> {
    postcard::to_allocvec(reply).map_err(|e| e.to_string())
}

/// Decodes a reply payload as operation `C`'s reply.
pub fn read_reply<C: Call>(payload: &[u8]) -> Result<C::Reply, CallError> {
    match postcard::from_bytes::<Result<C::Reply, Failure>>(payload) {
        Ok(reply) => reply.map_err(CallError::Refused),
        Err(_) => Err(CallError::BadReply),
    }
}

/// One message in a fragment's listing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListedMessage {
    pub id: u128,
    pub size: u64,
    /// The nodes the message was stored on (empty: not replicated): a delete goes to each
    /// of them that is a member, whether it answered the listing or not.
    pub replicas: Vec<u64>,
    /// When it was delivered (HLC), and its IMAP state here (`None`: never filed).
    pub hlc: u64,
    pub meta: Option<crate::mailbox::MessageMeta>,
}

/// Files messages of `user` on the receiving node: each copy there takes this IMAP state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMessages {
    pub user: String,
    pub items: Vec<(u128, crate::mailbox::MessageMeta)>,
}

/// Manager: the nodes holding `user`'s mail (the mail map), without locking anything.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserFragments {
    pub user: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fragments {
    pub nodes: Vec<u64>,
    pub epoch: Epoch,
}

/// What `user`'s messages on the receiver add up to, by replica set (a quota's usage).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserUsage {
    pub user: String,
}

/// The messages of one replica set (its nodes ascending; empty: stored on the answering node
/// only), added up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageEntry {
    pub replicas: Vec<u64>,
    pub messages: u64,
    pub bytes: u64,
}

/// An IMAP operation for the authority of `user`'s mailboxes (on the node managing the user).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImapRequest {
    pub user: String,
    pub op: crate::mailbox::ImapOp,
}

/// Manager: the candidate nodes for new messages of `user` (at least `replicas` of them when
/// the cluster has that many live nodes), which it remembers as holding the user's mail;
/// `avoid`: nodes the asker found full or overloaded, to leave out if others exist. The asker
/// picks the replicas among the candidates under the placement policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlaceMail {
    pub user: String,
    pub replicas: u8,
    pub avoid: Vec<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placed {
    pub nodes: Vec<u64>,
}

/// Store a message in the user's fragment on the receiving node, which coordinates its
/// replication to `replicas` (itself first). `epoch`: the membership of the placement.
/// `also`: nodes an earlier attempt of this delivery may have left a copy on, named in the
/// replica set after `replicas` and pushed to, but not waited for (see [`crate::delivery`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreMessage {
    pub user: String,
    pub id: u128,
    pub epoch: Epoch,
    pub replicas: Vec<u64>,
    pub also: Vec<u64>,
    #[serde(with = "serde_bytes")]
    pub message: Vec<u8>,
}

/// A replicated update pushed by the node driving it: answered once it is durable here (or a
/// newer update of the message is).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushUpdate {
    pub user: String,
    pub id: u128,
    pub hlc: u64,
    pub origin: u64,
    pub replicas: Vec<u64>,
    pub update: ReplicaUpdate,
}

/// What a [`PushUpdate`] carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplicaUpdate {
    Put {
        #[serde(with = "serde_bytes")]
        message: Vec<u8>,
    },
    Delete,
}

/// How a replica took a pushed update.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Pushed {
    /// Durable here (or a newer update of the message is).
    Taken,
    /// A tombstone, durable here over a copy whose replica set also named these nodes (a
    /// delivery placed again): the pusher sends them the tombstone too, or their copies
    /// would outlive the delete.
    TakenNaming(Vec<u64>),
    /// This node holds a tombstone for the pushed message: it was read and deleted already,
    /// and the pusher's copy is to be deleted too.
    DeletedHere,
}

/// The user's fragment on the receiving node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListFragment {
    pub user: String,
}

/// A fragment, oldest first. `deleted`: the user's messages deleted on this node whose
/// tombstones have not reached every replica yet; other replicas' copies are not to be shown.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listed {
    pub messages: Vec<ListedMessage>,
    pub deleted: Vec<u128>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchMessage {
    pub user: String,
    pub id: u128,
}

/// A message's description for IMAP (ENVELOPE, BODYSTRUCTURE), as stored with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DescribeMessage {
    pub user: String,
    pub id: u128,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fetched {
    #[serde(with = "serde_bytes")]
    pub message: Vec<u8>,
}

/// Delete these messages of the user here; `fragments`: every node the manager knew to hold
/// mail of the user, which the tombstones also go to (a copy may be on one of them).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteMessages {
    pub user: String,
    pub ids: Vec<u128>,
    pub fragments: Vec<u64>,
}

/// Check a POP3 login where the user's profile is served (one verified-credentials cache per
/// user in the cluster).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Authenticate {
    pub user: String,
    pub password: String,
}

/// Manager: lock the maildrop for a POP session; the answer lists the fragment nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockMaildrop {
    pub user: String,
    pub owner: (u64, u64),
}

/// `epoch`: the manager's membership when it granted the lock (a lock granted in another epoch
/// than the session's may have missed the report that carries locks to a new manager: the
/// session locks again).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Locked {
    pub fragments: Vec<u64>,
    pub epoch: Epoch,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnlockMaildrop {
    pub user: String,
    pub owner: (u64, u64),
}

/// `epoch`: the manager's membership when it released the lock (every member's report of that
/// epoch had arrived). A session whose node has moved on to another epoch since unlocks again,
/// at that epoch's manager.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unlocked {
    pub epoch: Epoch,
}

/// Profiles to store (every node holds every profile): (user, HLC of the update, profile). The
/// newest update of a user's profile wins on every node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncProfiles {
    pub profiles: Vec<(String, u64, Vec<u8>)>,
}

/// Manager, after a commit: the users `node` holds fragments for, and the maildrops its POP
/// sessions hold locked (user, lock owner), in buckets the receiver manages.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportFragments {
    pub epoch: Epoch,
    pub node: u64,
    pub users: Vec<String>,
    pub locks: Vec<(String, (u64, u64))>,
}

/// Manager: a message for `user` was stored on `node` (outside a placement it made).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoteFragment {
    pub user: String,
    pub node: u64,
    pub epoch: Epoch,
}

/// Anti-entropy: the digest of what the receiver holds for `from` (copies naming it, and
/// tombstones pending for it), see [`crate::anti_entropy`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldDigest {
    pub from: u64,
}

/// Anti-entropy: what the receiver holds for `from` in these buckets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldItems {
    pub from: u64,
    pub buckets: Vec<u16>,
}

/// The items of [`HeldItems`]; `truncated`: there were more than an answer carries.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    pub items: Vec<crate::anti_entropy::Item>,
    pub truncated: bool,
}

/// The membership epoch the receiver is in now. A POP3 session's node asks a majority of its
/// view before its maildrop opens and before its deletes are acknowledged: a view that a
/// majority has left behind (two overlapping majorities while a partition heals) must not
/// grant a maildrop a second time (see [`crate::maildrop::confirmations_needed`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CurrentEpoch {}

/// Declares the operations: the [`Request`] enum (one variant per operation, named as its
/// type) and each operation's [`Call`] impl with its reply type.
macro_rules! calls {
    ($($(#[$doc:meta])* $call:ident -> $reply:ty;)*) => {
        /// Every request one node makes of another.
        #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
        pub enum Request {
            $($(#[$doc])* $call($call),)*
        }

        impl Request {
            /// The operation's name, for logs.
            pub fn name(&self) -> &'static str {
                match self {
                    $(Request::$call(_) => stringify!($call),)*
                }
            }
        }

        $(
            impl Call for $call {
                type Reply = $reply;
            }

            impl From<$call> for Request {
                fn from(call: $call) -> Self {
                    Request::$call(call)
                }
            }
        )*
    };
}

calls! {
    PlaceMail -> Placed;
    StoreMessage -> ();
    PushUpdate -> Pushed;
    ListFragment -> Listed;
    FetchMessage -> Fetched;
    /// The message's description for IMAP, in `Fetched::message`.
    DescribeMessage -> Fetched;
    DeleteMessages -> ();
    Authenticate -> ();
    LockMaildrop -> Locked;
    UnlockMaildrop -> Unlocked;
    SyncProfiles -> ();
    ReportFragments -> ();
    NoteFragment -> ();
    HeldDigest -> crate::anti_entropy::Digest;
    HeldItems -> Held;
    CurrentEpoch -> Epoch;
    /// The ids the node does not hold (yet).
    FileMessages -> Vec<u128>;
    UserFragments -> Fragments;
    ImapRequest -> crate::mailbox::ImapAnswer;
    UserUsage -> Vec<UsageEntry>;
}

/// What nodes tell each other without an answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OneWay {
    /// Membership protocol.
    Membership(membership::Msg),
    /// To the ring successor, periodically: the loads the sender knows.
    Loads {
        entries: Vec<crate::loads::LoadEntry>,
    },
    /// These updates (user, message id, HLC) reached every replica; retire them.
    Retired { entries: Vec<(String, u128, u64)> },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_decodes_as_its_operations_reply_only() {
        let listed = Listed {
            messages: vec![ListedMessage {
                hlc: 0,
                meta: None,
                id: u128::MAX,
                size: 4_700,
                replicas: vec![1, u64::from(u32::MAX) + 2],
            }],
            deleted: vec![3],
        };
        let bytes = reply_bytes::<ListFragment>(&Ok(listed.clone())).expect("encodes");
        assert_eq!(read_reply::<ListFragment>(&bytes), Ok(listed));
        let refused = reply_bytes::<LockMaildrop>(&Err(Failure::InUse)).expect("encodes");
        assert_eq!(
            read_reply::<LockMaildrop>(&refused),
            Err(CallError::Refused(Failure::InUse))
        );
        let pushed = reply_bytes::<PushUpdate>(&Ok(Pushed::DeletedHere)).expect("encodes");
        assert_eq!(read_reply::<PushUpdate>(&pushed), Ok(Pushed::DeletedHere));
        // Truncated: undecodable, never misread.
        assert_eq!(
            read_reply::<ListFragment>(&bytes[..bytes.len() / 2]),
            Err(CallError::BadReply)
        );
    }

    #[test]
    fn requests_round_trip_with_their_names() {
        let requests: Vec<Request> = vec![
            PlaceMail {
                user: "a@x".into(),
                replicas: 2,
                avoid: vec![3],
            }
            .into(),
            StoreMessage {
                user: "a@x".into(),
                id: 9,
                epoch: Epoch::default(),
                replicas: vec![1, 2],
                also: vec![3],
                message: b"hello".to_vec(),
            }
            .into(),
            NoteFragment {
                user: "a@x".into(),
                node: 4,
                epoch: Epoch::default(),
            }
            .into(),
        ];
        for request in requests {
            let bytes = postcard::to_allocvec(&request).expect("encodes");
            assert_eq!(postcard::from_bytes::<Request>(&bytes), Ok(request.clone()));
        }
        let fetch: Request = FetchMessage {
            user: "a@x".into(),
            id: 1,
        }
        .into();
        assert_eq!(fetch.name(), "FetchMessage");
    }
}
