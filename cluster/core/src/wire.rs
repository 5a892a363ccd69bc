//! The cluster wire format: every frame between nodes, defined here and nowhere else.
//!
//! A frame is a 32-byte little-endian header followed by `payload_len` bytes of payload: the
//! postcard encoding of what [`crate::rpc`] defines (a request, a reply, or a one-way message,
//! as the header's `kind` says).
//!
//! | offset | size | field         | meaning                                                      |
//! |-------:|-----:|---------------|--------------------------------------------------------------|
//! | 0      | 4    | `magic`       | `0x5043_4c55` (`"ULCP"` on the wire)                          |
//! | 4      | 1    | `version`     | frame format version, currently 12; other versions are refused |
//! | 5      | 1    | `kind`        | [`FrameKind`]: request, reply or one-way                      |
//! | 6      | 2    | `flags`       | zero                                                         |
//! | 8      | 4    | `payload_len` | bytes after the header, at most [`PAYLOAD_BYTES_MAX`]         |
//! | 12     | 4    | `crc32`       | CRC-32 of the header with this field zeroed, then the payload |
//! | 16     | 8    | `request_id`  | pairs a reply with its request; 0 for one-way frames          |
//! | 24     | 4    | `load`        | the sender's load (pending disk operations), on every frame   |
//! | 28     | 4    | `sender`      | low 32 bits of the sender's node id (diagnostics)             |
//!
//! A peer that sends a bad magic, version, length or CRC is disconnected with a log line.
//! Changing this layout or a payload type of [`crate::rpc`] requires a version bump and a test.
//! Version 2 added replication; version 3 the load exchange and the nodes a placement must
//! avoid; version 4 the epoch in which a maildrop lock was released; version 5 each listed
//! message's replica set and the answer that a pushed message is deleted at the replica;
//! version 6 typed calls (a reply is its operation's `Result`, not a tagged body); version 7
//! the anti-entropy calls (digests and bucket listings); version 8 the nodes a store names
//! besides its replicas (`StoreMessage::also`: where an earlier attempt may have left a copy);
//! version 9 the epoch a peer is in (`CurrentEpoch`: a maildrop's view confirmed by a majority);
//! version 10 listings carry each message's delivery time and IMAP state, and the calls of
//! the IMAP authority (`FileMessages`, `UserFragments`, `ImapRequest`); version 11 a folder's
//! count of `\Deleted` messages in the IMAP authority's counts (IMAP4rev2's STATUS DELETED);
//! version 12 several APPENDs in one call (`AppendMany`, for imports); version 13 the
//! authority's `RemoveAll` (a deleted user's mail and folders) and `UserUsage` (quotas);
//! version 14 the next UID an import's source would give (`AppendMany::uid_next`) and a
//! message's stored description (`DescribeMessage`).

use serde::de::DeserializeOwned;
use serde::Serialize;
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

pub const FRAME_MAGIC: u32 = 0x5043_4c55;
pub const FRAME_VERSION: u8 = 14;
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

/// Encodes one frame carrying `body` into `out` (appended).
pub fn encode<T: Serialize + ?Sized>(
    out: &mut Vec<u8>,
    kind: FrameKind,
    request_id: u64,
    load: u32,
    sender: u64,
    body: &T,
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

/// Decodes a header (the CRC is checked with the payload by [`verify_payload`]).
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

/// Verifies the frame's CRC over its header and payload.
pub fn verify_payload(
    header_bytes: &[u8; HEADER_BYTES],
    header: &Header,
    payload: &[u8],
) -> Result<(), WireError> {
    let mut zeroed = *header_bytes;
    zeroed[12..16].fill(0);
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&zeroed);
    hasher.update(payload);
    if hasher.finalize() != header.crc32 {
        return Err(WireError::Crc);
    }
    Ok(())
}

/// Decodes a verified payload as `T` (what the frame's kind says it carries).
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, WireError> {
    postcard::from_bytes(payload).map_err(|e| WireError::Payload(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::Epoch;
    use crate::rpc::{FetchMessage, OneWay, PlaceMail, Request, StoreMessage};
    use proptest::prelude::*;

    fn frame<T: Serialize>(kind: FrameKind, body: &T) -> Vec<u8> {
        let mut out = Vec::new();
        encode(&mut out, kind, 7, 3, 42, body).expect("encodes");
        out
    }

    fn request(request: impl Into<Request>) -> Vec<u8> {
        frame(FrameKind::Request, &request.into())
    }

    fn decode_frame<T: DeserializeOwned>(bytes: &[u8]) -> Result<(Header, T), WireError> {
        let header_bytes: [u8; HEADER_BYTES] = bytes[..HEADER_BYTES].try_into().expect("header");
        let header = decode_header(&header_bytes)?;
        verify_payload(&header_bytes, &header, &bytes[HEADER_BYTES..])?;
        Ok((header, decode(&bytes[HEADER_BYTES..])?))
    }

    #[test]
    fn a_frame_round_trips() {
        let store: Request = StoreMessage {
            user: "a@x".into(),
            id: 9,
            epoch: Epoch::default(),
            replicas: vec![1, 2],
            also: vec![7],
            message: b"hello".to_vec(),
        }
        .into();
        let (header, decoded) =
            decode_frame::<Request>(&frame(FrameKind::Request, &store)).expect("decodes");
        assert_eq!(decoded, store);
        assert_eq!(
            (header.kind, header.request_id, header.load),
            (FrameKind::Request, 7, 3)
        );
    }

    #[test]
    fn a_load_exchange_and_a_placement_round_trip() {
        let loads = OneWay::Loads {
            entries: vec![crate::loads::LoadEntry {
                node: u64::from(u32::MAX) + 5,
                load: 17,
                full: true,
                age_ms: 250,
            }],
        };
        let bytes = frame(FrameKind::OneWay, &loads);
        assert_eq!(decode_frame::<OneWay>(&bytes).expect("decodes").1, loads);
        let place: Request = PlaceMail {
            user: "a@x".into(),
            replicas: 2,
            avoid: vec![3],
        }
        .into();
        let bytes = frame(FrameKind::Request, &place);
        assert_eq!(decode_frame::<Request>(&bytes).expect("decodes").1, place);
    }

    fn fetch() -> FetchMessage {
        FetchMessage {
            user: "someone@example.org".into(),
            id: u128::MAX,
        }
    }

    #[test]
    fn other_versions_and_magic_are_refused() {
        let mut bytes = request(fetch());
        for old in 1..FRAME_VERSION {
            // 2 lacked the load exchange; 3 answered an unlock with `Done` whatever the
            // manager's state; 4 listed messages without their replica sets; 5 answered with
            // tagged bodies; 6 knew no anti-entropy; 7 stored without the nodes an earlier
            // attempt may have left a copy on; 8 could not confirm a view; 9 listed no IMAP
            // state and knew no IMAP authority; 10 counted no deleted messages; 11 knew no
            // AppendMany; 12 knew no RemoveAll nor UserUsage; 13 sent AppendMany without
            // the source's next UID: each is refused, never misread.
            bytes[4] = old;
            assert_eq!(
                decode_frame::<Request>(&bytes).unwrap_err(),
                WireError::Version(old)
            );
        }
        let mut bytes = request(fetch());
        bytes[0] ^= 1;
        assert!(matches!(
            decode_frame::<Request>(&bytes),
            Err(WireError::Magic(_))
        ));
    }

    proptest! {
        #[test]
        fn any_flipped_bit_is_caught(byte in 0usize..64, bit in 0u8..8) {
            let bytes = request(fetch());
            let mut damaged = bytes.clone();
            let at = byte % damaged.len();
            damaged[at] ^= 1 << bit;
            prop_assert!(decode_frame::<Request>(&damaged).is_err());
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), HEADER_BYTES..200)) {
            let _ = decode_frame::<Request>(&bytes);
            let _ = decode_frame::<OneWay>(&bytes);
        }
    }
}
