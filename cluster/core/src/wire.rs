//! The cluster wire format: every frame between nodes, defined here and nowhere else.
//!
//! A frame is a 32-byte little-endian header followed by `payload_len` bytes of payload, the
//! postcard encoding of a [`Body`].
//!
//! | offset | size | field         | meaning                                                      |
//! |-------:|-----:|---------------|--------------------------------------------------------------|
//! | 0      | 4    | `magic`       | `0x5043_4c55` (`"ULCP"` on the wire)                          |
//! | 4      | 1    | `version`     | frame format version, currently 5; other versions are refused |
//! | 5      | 1    | `kind`        | [`FrameKind`]: request, reply or one-way                      |
//! | 6      | 2    | `flags`       | zero                                                         |
//! | 8      | 4    | `payload_len` | bytes after the header, at most [`PAYLOAD_BYTES_MAX`]         |
//! | 12     | 4    | `crc32`       | CRC-32 of the header with this field zeroed, then the payload |
//! | 16     | 8    | `request_id`  | pairs a reply with its request; 0 for one-way frames          |
//! | 24     | 4    | `load`        | the sender's load (pending disk operations), on every frame   |
//! | 28     | 4    | `sender`      | low 32 bits of the sender's node id (diagnostics)             |
//!
//! A peer that sends a bad magic, version, length or CRC is disconnected with a log line.
//! Changing this layout or the payload's [`Body`] requires a version bump and a test.
//! Version 2 added replication; version 3 the load exchange ([`Body::Loads`]) and the nodes a
//! placement must avoid ([`Body::Place`]'s `avoid`); version 4 the epoch in which a maildrop
//! lock was released ([`Body::Unlocked`]); version 5 each listed message's replica set
//! ([`ListedMessage`]) and the answer that a pushed message is deleted at the replica
//! ([`Failure::Deleted`]).

use serde::{Deserialize, Serialize};
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::membership;

pub const FRAME_MAGIC: u32 = 0x5043_4c55;
pub const FRAME_VERSION: u8 = 5;
pub const HEADER_BYTES: usize = 32;
/// Largest payload accepted (a profile batch of 100,000 users is about 15 MiB).
pub const PAYLOAD_BYTES_MAX: usize = 64 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    Request = 1,
    Reply = 2,
    OneWay = 3,
}

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy, Debug)]
#[repr(C)]
struct RawHeader {
    magic: U32,
    version: u8,
    kind: u8,
    flags: U16,
    payload_len: U32,
    crc32: U32,
    request_id: U64,
    load: U32,
    sender: U32,
}

const _: () = assert!(std::mem::size_of::<RawHeader>() == HEADER_BYTES);

/// A decoded frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub kind: FrameKind,
    pub payload_len: usize,
    crc32: u32,
    pub request_id: u64,
    pub load: u32,
    pub sender: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("bad frame magic {0:#x}")]
    Magic(u32),
    #[error("frame version {0} (this node speaks {FRAME_VERSION})")]
    Version(u8),
    #[error("unknown frame kind {0}")]
    Kind(u8),
    #[error("frame payload of {0} bytes exceeds the limit")]
    TooLong(usize),
    #[error("frame CRC mismatch")]
    Crc,
    #[error("undecodable payload: {0}")]
    Payload(String),
}

/// The header of a frame carrying `payload` (its length and CRC filled in); `None` if the
/// payload is over [`PAYLOAD_BYTES_MAX`].
pub fn header_for(
    kind: FrameKind,
    request_id: u64,
    load: u32,
    sender: u64,
    payload: &[u8],
) -> Option<[u8; HEADER_BYTES]> {
    if payload.len() > PAYLOAD_BYTES_MAX {
        return None;
    }
    let mut raw = RawHeader {
        magic: FRAME_MAGIC.into(),
        version: FRAME_VERSION,
        kind: kind as u8,
        flags: 0.into(),
        payload_len: (payload.len() as u32).into(),
        crc32: 0.into(),
        request_id: request_id.into(),
        load: load.into(),
        sender: (sender as u32).into(),
    };
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(raw.as_bytes());
    hasher.update(payload);
    raw.crc32 = hasher.finalize().into();
    let mut header = [0u8; HEADER_BYTES];
    header.copy_from_slice(raw.as_bytes());
    Some(header)
}

/// Encodes one frame into `out` (appended).
pub fn encode(
    out: &mut Vec<u8>,
    kind: FrameKind,
    request_id: u64,
    load: u32,
    sender: u64,
    body: &Body,
) -> Result<(), WireError> {
    let start = out.len();
    out.resize(start + HEADER_BYTES, 0);
    let out_len_before = out.len();
    let mut writer = std::mem::take(out);
    writer = postcard::to_extend(body, writer).map_err(|e| WireError::Payload(e.to_string()))?;
    *out = writer;
    let payload_len = out.len() - out_len_before;
    let Some(header) = header_for(kind, request_id, load, sender, &out[out_len_before..]) else {
        out.truncate(start);
        return Err(WireError::TooLong(payload_len));
    };
    out[start..start + HEADER_BYTES].copy_from_slice(&header);
    Ok(())
}

/// Decodes a header (the CRC is checked with the payload by [`decode_payload`]).
pub fn decode_header(bytes: &[u8; HEADER_BYTES]) -> Result<Header, WireError> {
    let raw = RawHeader::read_from_bytes(bytes).map_err(|_| WireError::Magic(0))?;
    if raw.magic.get() != FRAME_MAGIC {
        return Err(WireError::Magic(raw.magic.get()));
    }
    if raw.version != FRAME_VERSION {
        return Err(WireError::Version(raw.version));
    }
    let kind = match raw.kind {
        1 => FrameKind::Request,
        2 => FrameKind::Reply,
        3 => FrameKind::OneWay,
        other => return Err(WireError::Kind(other)),
    };
    let payload_len = raw.payload_len.get() as usize;
    if payload_len > PAYLOAD_BYTES_MAX {
        return Err(WireError::TooLong(payload_len));
    }
    Ok(Header {
        kind,
        payload_len,
        crc32: raw.crc32.get(),
        request_id: raw.request_id.get(),
        load: raw.load.get(),
        sender: raw.sender.get(),
    })
}

/// Verifies the frame's CRC and decodes its body.
pub fn decode_payload(
    header_bytes: &[u8; HEADER_BYTES],
    header: &Header,
    payload: &[u8],
) -> Result<Body, WireError> {
    let mut zeroed = *header_bytes;
    zeroed[12..16].fill(0);
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&zeroed);
    hasher.update(payload);
    if hasher.finalize() != header.crc32 {
        return Err(WireError::Crc);
    }
    postcard::from_bytes(payload).map_err(|e| WireError::Payload(e.to_string()))
}

/// Why a remote operation failed.
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
    NotFound,
    /// Wrong user or password.
    BadCredentials,
    /// The answer to a pushed message that this node holds a tombstone for: the message was
    /// read and deleted already, and the pusher's copy is to be deleted too.
    Deleted,
}

/// One message in a fragment's listing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListedMessage {
    pub id: u128,
    pub size: u64,
    /// The nodes the message was stored on (empty: not replicated): a delete goes to each
    /// of them that is a member, whether it answered the listing or not.
    pub replicas: Vec<u64>,
}

/// What nodes say to each other.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    /// Membership protocol (one-way).
    Membership(membership::Msg),
    /// Manager: the candidate nodes for new messages of `user` (at least `replicas` of them
    /// when the cluster has that many live nodes), which it remembers as holding the user's
    /// mail; `avoid`: nodes the asker found full or overloaded, to leave out if others exist.
    /// The sender picks the replicas among the candidates under the placement policy.
    Place {
        user: String,
        replicas: u8,
        avoid: Vec<u64>,
    },
    Placed {
        nodes: Vec<u64>,
    },
    /// One-way, to the ring successor, periodically: the loads the sender knows.
    Loads {
        entries: Vec<crate::loads::LoadEntry>,
    },
    /// Store a message in the user's fragment on the receiving node, which coordinates its
    /// replication to `replicas` (itself first). `epoch`: the membership of the placement.
    Store {
        user: String,
        id: u128,
        epoch: membership::Epoch,
        replicas: Vec<u64>,
        #[serde(with = "serde_bytes")]
        message: Vec<u8>,
    },
    /// A replicated update pushed by the node driving it: store it and answer `Done` once it
    /// is durable here (or a newer update of the message is).
    Replicate {
        user: String,
        id: u128,
        hlc: u64,
        origin: u64,
        replicas: Vec<u64>,
        update: ReplicaUpdate,
    },
    /// One-way: these updates (user, message id, HLC) reached every replica; retire them.
    Retired {
        entries: Vec<(String, u128, u64)>,
    },
    /// The user's fragment on the receiving node: (id, size), oldest first.
    List {
        user: String,
    },
    /// `deleted`: the user's messages deleted on this node whose tombstones have not reached
    /// every replica yet; other replicas' copies of them are not to be shown.
    Listed {
        messages: Vec<ListedMessage>,
        deleted: Vec<u128>,
    },
    Fetch {
        user: String,
        id: u128,
    },
    Fetched {
        #[serde(with = "serde_bytes")]
        message: Vec<u8>,
    },
    /// Delete these messages of the user here; `fragments`: every node the manager knew to hold
    /// mail of the user, which the tombstones also go to (a copy may be on one of them).
    Delete {
        user: String,
        ids: Vec<u128>,
        fragments: Vec<u64>,
    },
    /// Manager: check a POP3 login (one verified-credentials cache per user in the cluster).
    Authenticate {
        user: String,
        password: String,
    },
    /// Manager: lock the maildrop for a POP session; the answer lists the fragment nodes.
    Lock {
        user: String,
        owner: (u64, u64),
    },
    /// `epoch`: the manager's membership when it granted the lock (a lock granted in another
    /// epoch than the session's may have missed the report that carries locks to a new
    /// manager: the session locks again).
    Locked {
        fragments: Vec<u64>,
        epoch: membership::Epoch,
    },
    Unlock {
        user: String,
        owner: (u64, u64),
    },
    /// `epoch`: the manager's membership when it released the lock (every member's report of
    /// that epoch had arrived). A session whose node has moved on to another epoch since
    /// unlocks again, at that epoch's manager.
    Unlocked {
        epoch: membership::Epoch,
    },
    /// Profiles to store (every node holds every profile): (user, HLC of the update, profile).
    /// The newest update of a user's profile wins on every node.
    Profiles {
        profiles: Vec<(String, u64, Vec<u8>)>,
    },
    /// After a commit: the users this node holds fragments for, and the maildrops its POP
    /// sessions hold locked (user, lock owner), in buckets the receiver manages.
    Fragments {
        epoch: membership::Epoch,
        node: u64,
        users: Vec<String>,
        locks: Vec<(String, (u64, u64))>,
    },
    /// Manager: a message for `user` was stored on `node` (outside a placement it made).
    Noted {
        user: String,
        node: u64,
        epoch: membership::Epoch,
    },
    Done,
    Error(Failure),
}

/// What a [`Body::Replicate`] carries.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ReplicaUpdate {
    Put {
        #[serde(with = "serde_bytes")]
        message: Vec<u8>,
    },
    Delete,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(body: &Body) -> Vec<u8> {
        let mut out = Vec::new();
        encode(&mut out, FrameKind::Request, 7, 3, 42, body).expect("encodes");
        out
    }

    fn decode(bytes: &[u8]) -> Result<(Header, Body), WireError> {
        let header_bytes: [u8; HEADER_BYTES] = bytes[..HEADER_BYTES].try_into().expect("header");
        let header = decode_header(&header_bytes)?;
        let body = decode_payload(&header_bytes, &header, &bytes[HEADER_BYTES..])?;
        Ok((header, body))
    }

    #[test]
    fn a_frame_round_trips() {
        let body = Body::Store {
            user: "a@x".into(),
            id: 9,
            epoch: membership::Epoch::default(),
            replicas: vec![1, 2],
            message: b"hello".to_vec(),
        };
        let (header, decoded) = decode(&frame(&body)).expect("decodes");
        assert_eq!(decoded, body);
        assert_eq!(
            (header.kind, header.request_id, header.load),
            (FrameKind::Request, 7, 3)
        );
    }

    #[test]
    fn a_load_exchange_and_a_placement_round_trip() {
        for body in [
            Body::Loads {
                entries: vec![crate::loads::LoadEntry {
                    node: u64::from(u32::MAX) + 5,
                    load: 17,
                    full: true,
                    age_ms: 250,
                }],
            },
            Body::Place {
                user: "a@x".into(),
                replicas: 2,
                avoid: vec![3],
            },
        ] {
            assert_eq!(decode(&frame(&body)).expect("decodes").1, body);
        }
    }

    #[test]
    fn a_listing_with_replica_sets_and_a_deleted_answer_round_trip() {
        for body in [
            Body::Listed {
                messages: vec![ListedMessage {
                    id: u128::MAX,
                    size: 4_700,
                    replicas: vec![1, u64::from(u32::MAX) + 2],
                }],
                deleted: vec![3],
            },
            Body::Error(Failure::Deleted),
        ] {
            assert_eq!(decode(&frame(&body)).expect("decodes").1, body);
        }
    }

    #[test]
    fn other_versions_and_magic_are_refused() {
        let mut bytes = frame(&Body::Done);
        bytes[4] = 1;
        assert_eq!(decode(&bytes).unwrap_err(), WireError::Version(1));
        // Version 2 lacked the load exchange and a placement's `avoid`: refused, not misread.
        bytes[4] = 2;
        assert_eq!(decode(&bytes).unwrap_err(), WireError::Version(2));
        // Version 3 answered an unlock with `Done` whatever the manager's state: refused.
        bytes[4] = 3;
        assert_eq!(decode(&bytes).unwrap_err(), WireError::Version(3));
        // Version 4 listed messages without their replica sets: refused.
        bytes[4] = 4;
        assert_eq!(decode(&bytes).unwrap_err(), WireError::Version(4));
        let mut bytes = frame(&Body::Done);
        bytes[0] ^= 1;
        assert!(matches!(decode(&bytes), Err(WireError::Magic(_))));
    }

    proptest! {
        #[test]
        fn any_flipped_bit_is_caught(byte in 0usize..64, bit in 0u8..8) {
            let bytes = frame(&Body::Fetch { user: "someone@example.org".into(), id: u128::MAX });
            let mut damaged = bytes.clone();
            let at = byte % damaged.len();
            damaged[at] ^= 1 << bit;
            prop_assert!(decode(&damaged).is_err());
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), HEADER_BYTES..200)) {
            let _ = decode(&bytes);
        }
    }
}
