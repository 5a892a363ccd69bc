//! The log record: the one on-disk unit of the engine, defined here and nowhere else.
//!
//! Every record is a 64-byte little-endian header followed by `payload_len` bytes of payload
//! (the user name, then the replica set, then the annex, then the body), padded with zeros to
//! the next multiple of 8 bytes so that a scan can resynchronise on 8-byte boundaries.
//!
//! | offset | size | field          | meaning                                                          |
//! |-------:|-----:|----------------|------------------------------------------------------------------|
//! | 0      | 4    | `magic`        | `0x5043_5252` (`"RRCP"` on disk); 0 marks the end of a segment     |
//! | 4      | 1    | `version`      | format version, currently 4 (1 to 3 are read, see below)         |
//! | 5      | 1    | `kind`         | [`RecordKind`]                                                    |
//! | 6      | 2    | `user_len`     | bytes of user name at the start of the payload (UTF-8)            |
//! | 8      | 4    | `payload_len`  | user name + replica set + annex + body bytes that follow the header |
//! | 12     | 4    | `crc32`        | CRC-32 (IEEE, crc32fast) of the header with this field zeroed, then the payload |
//! | 16     | 8    | `hlc`          | hybrid logical clock timestamp of the update ([`crate::hlc`])      |
//! | 24     | 16   | `message_id`   | object id: a message id, or 0 for a profile and a retire record    |
//! | 40     | 8    | `user_key`     | xxh3-64 of the user name: shard placement and a cheap check       |
//! | 48     | 4    | `node_id`      | node that made the update: the replication coordinator (HLC tie break; 0 from engine-only tools) |
//! | 52     | 4    | `aux`          | put / flag update: message flags; delete: the oldest segment that may hold the put |
//! | 56     | 1    | `replica_count`| nodes in the update's replica set (0 or 1: not replicated), at most [`REPLICAS_MAX`] |
//! | 57     | 3    | `annex_len`    | put: bytes of annex (24-bit); other kinds: zero (a reader rejects a record where it is not) |
//! | 60     | 4    | `segment`      | the sequence number of the segment the record was written to (never 0) |
//!
//! The payload is the user name (`user_len` bytes), then `replica_count` little-endian `u32`
//! node ids (the replica set, coordinator first), then the annex (`annex_len` bytes), then the
//! body.
//!
//! A put's *annex* is what the engine's annotator ([`crate::EngineConfig::annotate`]) derived
//! from the body when the message was stored (the node stores a message's MIME structure
//! there, so IMAP never parses a stored message again to describe it). The engine makes
//! nothing of it; a copy of the record (compaction) keeps it.
//!
//! A *flag update* (kind 3) sets the message's flags (`aux`); its body is empty, or the
//! message's 24-byte [`Filing`](crate::index::Filing) (little-endian `u32` folder, `u32` UID,
//! `u64` MODSEQ, `i64` date), which it then sets too.
//!
//! Kinds 1–5 are defined; 6–15 are reserved. A *retire* record (kind 5) has an empty user and
//! no replica set; its body is a list of 32-byte entries (`u64` user key, `u128` message id,
//! `u64` HLC of the update): those replicated updates are acknowledged by every replica and no
//! longer pending (DESIGN.md §1, "the log is the update log").
//!
//! Version 1 had `reserved` (8 bytes of zeros) where version 2 has `replica_count` and 7
//! reserved bytes, so a version-1 record is a version-2 record without a replica set. Version 3
//! puts the segment's sequence number in the last 4 of those bytes: segments are recycled (a
//! compacted file becomes the next segment without being zeroed, so each byte reaches the disk
//! once), and a record left over from a file's earlier life is valid but names another segment;
//! the scan of a recycled segment ([`crate::segment`]) takes it for the end of the log. All three
//! versions are read. Version 4 gives a put the annex, in what version 3 kept as 3 reserved
//! bytes (zero, so a version-3 record reads as a version-4 one without an annex). Changing
//! this layout requires a version bump and a test of the old version's bytes.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Marks the start of a record; chosen to be unlikely in mail text and never zero.
pub const RECORD_MAGIC: u32 = 0x5043_5252;
/// The record format written by this build.
pub const RECORD_VERSION: u8 = 4;
/// The oldest record format this build reads.
pub const RECORD_VERSION_MIN: u8 = 1;
/// Largest replica set a record can carry.
pub use porcupine_types::REPLICAS_MAX;
/// Bytes of one entry in a retire record's body.
pub const RETIRE_ENTRY_BYTES: usize = 32;
/// Bytes in a record header.
pub const HEADER_BYTES: usize = 64;
/// Records start on multiples of this many bytes.
pub const RECORD_ALIGN: usize = 8;
/// Longest user name a record can carry.
pub const USER_BYTES_MAX: usize = 320;
/// Largest annex a put can carry.
pub const ANNEX_BYTES_MAX: usize = (1 << 24) - 1;
/// Largest payload a record may declare; anything larger is garbage, not a record.
pub const PAYLOAD_BYTES_MAX: usize = 64 << 20;

/// What a record says happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RecordKind {
    /// A message stored in a user's mailbox fragment; the body is the payload after the user.
    Put = 1,
    /// A tombstone: the message `message_id` of the user is deleted.
    Delete = 2,
    /// The flags (`aux`) of message `message_id` changed.
    FlagUpdate = 3,
    /// The user's profile (opaque to the engine) is the body; the newest one wins. An empty
    /// body removes the user (a tombstone that wins like any newer profile).
    ProfilePut = 4,
    /// Replicated updates that every replica has acknowledged (see the module table).
    Retire = 5,
}

impl RecordKind {
    pub fn from_u8(value: u8) -> Option<Self> {
        match value {
            1 => Some(Self::Put),
            2 => Some(Self::Delete),
            3 => Some(Self::FlagUpdate),
            4 => Some(Self::ProfilePut),
            5 => Some(Self::Retire),
            _ => None,
        }
    }
}

/// The header exactly as it lies on disk.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct RecordHeader {
    pub magic: U32,
    pub version: u8,
    pub kind: u8,
    pub user_len: U16,
    pub payload_len: U32,
    pub crc32: U32,
    pub hlc: U64,
    pub message_id: [u8; 16],
    pub user_key: U64,
    pub node_id: U32,
    pub aux: U32,
    pub replica_count: u8,
    /// 24-bit little-endian; reserved (zero) before version 4.
    pub annex_len: [u8; 3],
    pub segment: U32,
}

const _: () = assert!(std::mem::size_of::<RecordHeader>() == HEADER_BYTES);

/// The nodes an update goes to, its coordinator first; fixed size so that it costs no heap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ReplicaSet {
    len: u8,
    ids: [u32; REPLICAS_MAX],
}

impl ReplicaSet {
    /// No replica set: an update that is not replicated.
    pub const NONE: Self = Self {
        len: 0,
        ids: [0; REPLICAS_MAX],
    };

    /// The first [`REPLICAS_MAX`] distinct nodes of `nodes`, in order.
    pub fn new(nodes: impl IntoIterator<Item = u32>) -> Self {
        let mut set = Self::NONE;
        for node in nodes {
            if usize::from(set.len) == REPLICAS_MAX {
                break;
            }
            if !set.contains(node) {
                set.ids[usize::from(set.len)] = node;
                set.len += 1;
            }
        }
        set
    }

    pub fn as_slice(&self) -> &[u32] {
        &self.ids[..usize::from(self.len)]
    }

    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the update has other replicas to reach (more than one node).
    pub fn is_replicated(&self) -> bool {
        self.len > 1
    }

    pub fn contains(&self, node: u32) -> bool {
        self.as_slice().contains(&node)
    }
}

/// The fields of a record that a caller chooses; the codec derives the rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordMeta {
    pub kind: RecordKind,
    pub hlc: u64,
    pub message_id: u128,
    pub node_id: u32,
    pub aux: u32,
    pub replicas: ReplicaSet,
}

/// One entry of a retire record: the replicated update (user key, message id, HLC) that every
/// replica holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Retired {
    pub user_key: u64,
    pub message_id: u128,
    pub hlc: u64,
}

/// Bytes of a filing in a flag-update record's body.
pub const FILING_BYTES: usize = 24;

/// A filing as a flag-update record's body.
pub fn encode_filing(filing: &crate::index::Filing) -> [u8; FILING_BYTES] {
    let mut out = [0u8; FILING_BYTES];
    out[0..4].copy_from_slice(&filing.folder.to_le_bytes());
    out[4..8].copy_from_slice(&filing.uid.to_le_bytes());
    out[8..16].copy_from_slice(&filing.modseq.to_le_bytes());
    out[16..24].copy_from_slice(&filing.date.to_le_bytes());
    out
}

/// The filing of a flag-update record's body (`None` for an empty body: flags only).
pub fn decode_filing(body: &[u8]) -> Option<crate::index::Filing> {
    let bytes: &[u8; FILING_BYTES] = body.get(..FILING_BYTES)?.try_into().ok()?;
    let word4 =
        |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let mut word8 = [0u8; 8];
    word8.copy_from_slice(&bytes[8..16]);
    let modseq = u64::from_le_bytes(word8);
    word8.copy_from_slice(&bytes[16..24]);
    Some(crate::index::Filing {
        folder: word4(0),
        uid: word4(4),
        modseq,
        date: i64::from_le_bytes(word8),
    })
}

/// Encodes retire entries as a retire record's body.
pub fn encode_retired(entries: &[Retired]) -> Vec<u8> {
    let mut body = Vec::with_capacity(entries.len() * RETIRE_ENTRY_BYTES);
    for entry in entries {
        body.extend_from_slice(&entry.user_key.to_le_bytes());
        body.extend_from_slice(&entry.message_id.to_le_bytes());
        body.extend_from_slice(&entry.hlc.to_le_bytes());
    }
    body
}

/// The entries of a retire record's body; a trailing partial entry is ignored (the CRC has
/// already vouched for the bytes, so there is none in anything this engine wrote).
pub fn decode_retired(body: &[u8]) -> impl Iterator<Item = Retired> + '_ {
    body.chunks_exact(RETIRE_ENTRY_BYTES).map(|chunk| {
        let mut user_key = [0u8; 8];
        let mut id = [0u8; 16];
        let mut hlc = [0u8; 8];
        user_key.copy_from_slice(&chunk[..8]);
        id.copy_from_slice(&chunk[8..24]);
        hlc.copy_from_slice(&chunk[24..32]);
        Retired {
            user_key: u64::from_le_bytes(user_key),
            message_id: u128::from_le_bytes(id),
            hlc: u64::from_le_bytes(hlc),
        }
    })
}

/// Why bytes are not a valid record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("end of records (zero header)")]
    End,
    #[error("need {needed} bytes, have {have}")]
    Short { needed: usize, have: usize },
    #[error("bad magic {0:#010x}")]
    BadMagic(u32),
    #[error("unsupported record version {0}")]
    BadVersion(u8),
    #[error("unknown record kind {0}")]
    BadKind(u8),
    #[error("implausible lengths (user {user_len}, payload {payload_len})")]
    BadLength { user_len: usize, payload_len: usize },
    #[error("reserved bytes are not zero")]
    BadReserved,
    #[error("replica set of {0} nodes is larger than the format allows")]
    BadReplicas(u8),
    #[error("crc mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    BadCrc { stored: u32, computed: u32 },
    #[error("user name is not UTF-8 or does not match its key")]
    BadUser,
    /// A valid record of another segment: left over from a recycled file's earlier life (or,
    /// for version 1 and 2, a record a recycled segment cannot hold).
    #[error("a record of segment {written_in:?} found in segment {segment}")]
    Stale {
        written_in: Option<u32>,
        segment: u32,
    },
}

/// A record borrowed from a buffer that has passed every check.
#[derive(Clone, Copy, Debug)]
pub struct RecordView<'a> {
    pub meta: RecordMeta,
    pub user: &'a str,
    /// A put's annex (empty for every other record, and for puts before version 4).
    pub annex: &'a [u8],
    pub body: &'a [u8],
    /// Bytes the record occupies in the log, padding included.
    pub encoded_len: usize,
    /// The segment the record says it was written to (version 3; `None` before).
    pub written_in: Option<u32>,
}

impl RecordView<'_> {
    /// Whether this record belongs where it was found: in segment `segment`, which is
    /// `recyclable` if its file may hold an earlier life's records (see the module table).
    pub fn check_segment(&self, segment: u32, recyclable: bool) -> Result<(), DecodeError> {
        match self.written_in {
            Some(seq) if seq == segment => Ok(()),
            None if !recyclable => Ok(()),
            written_in => Err(DecodeError::Stale {
                written_in,
                segment,
            }),
        }
    }
}

pub use porcupine_types::user_key;

/// Bytes a record with this user, replica count and body occupies in the log, padding included.
pub fn encoded_len(user_len: usize, replicas: usize, body_len: usize) -> usize {
    align_up(
        HEADER_BYTES + user_len + 4 * replicas + body_len,
        RECORD_ALIGN,
    )
}

pub(crate) fn align_up(value: usize, align: usize) -> usize {
    value.div_ceil(align) * align
}

/// A record's payload after its user and replica set: a put's annex, then the body.
#[derive(Clone, Copy, Debug, Default)]
pub struct Payload<'a> {
    pub annex: &'a [u8],
    pub body: &'a [u8],
}

impl<'a> From<&'a [u8]> for Payload<'a> {
    fn from(body: &'a [u8]) -> Self {
        Self::body(body)
    }
}

impl<'a, const N: usize> From<&'a [u8; N]> for Payload<'a> {
    fn from(body: &'a [u8; N]) -> Self {
        Self::body(body)
    }
}

impl<'a> From<&'a Vec<u8>> for Payload<'a> {
    fn from(body: &'a Vec<u8>) -> Self {
        Self::body(body)
    }
}

impl<'a> Payload<'a> {
    /// A body without an annex.
    pub fn body(body: &'a [u8]) -> Self {
        Self { annex: &[], body }
    }

    /// Annex and body bytes.
    pub fn len(&self) -> usize {
        self.annex.len() + self.body.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Writes a record of segment `segment` into `out`, which must be exactly
/// `encoded_len(user.len(), meta.replicas.len(), body.len())` bytes. Padding is zeroed here so
/// stale buffer contents never reach the disk.
pub fn encode_into(out: &mut [u8], segment: u32, meta: &RecordMeta, user: &str, body: &[u8]) {
    encode_payload_into(out, segment, meta, user, Payload::body(body));
}

/// [`encode_into`], with a put's annex before its body: `out` is
/// `encoded_len(user.len(), meta.replicas.len(), payload.len())` bytes.
pub fn encode_payload_into(
    out: &mut [u8],
    segment: u32,
    meta: &RecordMeta,
    user: &str,
    payload: Payload<'_>,
) {
    let Payload { annex, body } = payload;
    let replicas = meta.replicas.as_slice();
    let payload_len = user.len() + 4 * replicas.len() + annex.len() + body.len();
    debug_assert_eq!(
        out.len(),
        encoded_len(user.len(), replicas.len(), payload.len())
    );
    debug_assert!(user.len() <= USER_BYTES_MAX && payload_len <= PAYLOAD_BYTES_MAX);
    debug_assert!(annex.is_empty() || meta.kind == RecordKind::Put);
    debug_assert!(annex.len() <= ANNEX_BYTES_MAX);
    let annex_len = (annex.len() as u32).to_le_bytes();
    let mut header = RecordHeader {
        magic: U32::new(RECORD_MAGIC),
        version: RECORD_VERSION,
        kind: meta.kind as u8,
        user_len: U16::new(user.len() as u16),
        payload_len: U32::new(payload_len as u32),
        crc32: U32::new(0),
        hlc: U64::new(meta.hlc),
        message_id: meta.message_id.to_le_bytes(),
        user_key: U64::new(user_key(user)),
        node_id: U32::new(meta.node_id),
        aux: U32::new(meta.aux),
        replica_count: replicas.len() as u8,
        annex_len: [annex_len[0], annex_len[1], annex_len[2]],
        segment: U32::new(segment),
    };
    let (head, rest) = out.split_at_mut(HEADER_BYTES);
    let (user_out, rest) = rest.split_at_mut(user.len());
    let (replicas_out, rest) = rest.split_at_mut(4 * replicas.len());
    let (annex_out, rest) = rest.split_at_mut(annex.len());
    let (body_out, padding) = rest.split_at_mut(body.len());
    user_out.copy_from_slice(user.as_bytes());
    for (slot, node) in replicas_out.chunks_exact_mut(4).zip(replicas) {
        slot.copy_from_slice(&node.to_le_bytes());
    }
    annex_out.copy_from_slice(annex);
    body_out.copy_from_slice(body);
    padding.fill(0);
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(header.as_bytes());
    hasher.update(user.as_bytes());
    hasher.update(replicas_out);
    hasher.update(annex);
    hasher.update(body);
    header.crc32 = U32::new(hasher.finalize());
    head.copy_from_slice(header.as_bytes());
}

/// Encodes a record of segment `segment` into a fresh vector (tests, tools; the write path
/// encodes in place).
pub fn encode(segment: u32, meta: &RecordMeta, user: &str, body: &[u8]) -> Vec<u8> {
    encode_payload(segment, meta, user, Payload::body(body))
}

/// [`encode`], with a put's annex.
pub fn encode_payload(
    segment: u32,
    meta: &RecordMeta,
    user: &str,
    payload: Payload<'_>,
) -> Vec<u8> {
    let mut out = vec![0; encoded_len(user.len(), meta.replicas.len(), payload.len())];
    encode_payload_into(&mut out, segment, meta, user, payload);
    out
}

/// The 24-bit annex length of a header.
fn annex_len_of(header: &RecordHeader) -> usize {
    let [a, b, c] = header.annex_len;
    u32::from_le_bytes([a, b, c, 0]) as usize
}

/// Checks only the header: cheap, and enough to learn how many bytes the record needs.
pub fn check_header(bytes: &[u8]) -> Result<(RecordHeader, usize), DecodeError> {
    let Some(head) = bytes.get(..HEADER_BYTES) else {
        return Err(DecodeError::Short {
            needed: HEADER_BYTES,
            have: bytes.len(),
        });
    };
    let (header, _) = RecordHeader::read_from_prefix(head).map_err(|_| DecodeError::Short {
        needed: HEADER_BYTES,
        have: head.len(),
    })?;
    let magic = header.magic.get();
    if magic != RECORD_MAGIC {
        if magic == 0 && head.iter().all(|&b| b == 0) {
            return Err(DecodeError::End);
        }
        return Err(DecodeError::BadMagic(magic));
    }
    if !(RECORD_VERSION_MIN..=RECORD_VERSION).contains(&header.version) {
        return Err(DecodeError::BadVersion(header.version));
    }
    if RecordKind::from_u8(header.kind).is_none() {
        return Err(DecodeError::BadKind(header.kind));
    }
    let no_annex = header.annex_len == [0; 3];
    let reserved_clear = match header.version {
        1 => header.replica_count == 0 && no_annex && header.segment.get() == 0,
        2 => no_annex && header.segment.get() == 0,
        3 => no_annex && header.segment.get() != 0,
        _ => (no_annex || header.kind == RecordKind::Put as u8) && header.segment.get() != 0,
    };
    if !reserved_clear {
        return Err(DecodeError::BadReserved);
    }
    if usize::from(header.replica_count) > REPLICAS_MAX {
        return Err(DecodeError::BadReplicas(header.replica_count));
    }
    let user_len = header.user_len.get() as usize;
    let prefix_len = user_len + 4 * usize::from(header.replica_count) + annex_len_of(&header);
    let payload_len = header.payload_len.get() as usize;
    if user_len > USER_BYTES_MAX || prefix_len > payload_len || payload_len > PAYLOAD_BYTES_MAX {
        return Err(DecodeError::BadLength {
            user_len,
            payload_len,
        });
    }
    Ok((header, align_up(HEADER_BYTES + payload_len, RECORD_ALIGN)))
}

/// Decodes and fully verifies the record at the start of `bytes`.
pub fn decode(bytes: &[u8]) -> Result<RecordView<'_>, DecodeError> {
    let (header, encoded) = check_header(bytes)?;
    let payload_len = header.payload_len.get() as usize;
    let Some(payload) = bytes.get(HEADER_BYTES..HEADER_BYTES + payload_len) else {
        return Err(DecodeError::Short {
            needed: HEADER_BYTES + payload_len,
            have: bytes.len(),
        });
    };
    let mut zeroed = header;
    zeroed.crc32 = U32::new(0);
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(zeroed.as_bytes());
    hasher.update(payload);
    let computed = hasher.finalize();
    let stored = header.crc32.get();
    if computed != stored {
        return Err(DecodeError::BadCrc { stored, computed });
    }
    let (user_bytes, rest) = payload.split_at(header.user_len.get() as usize);
    let (replica_bytes, rest) = rest.split_at(4 * usize::from(header.replica_count));
    let (annex, body) = rest.split_at(annex_len_of(&header));
    let replicas = ReplicaSet::new(replica_bytes.chunks_exact(4).map(|chunk| {
        let mut id = [0u8; 4];
        id.copy_from_slice(chunk);
        u32::from_le_bytes(id)
    }));
    if replicas.len() != usize::from(header.replica_count) {
        // Repeated nodes: no writer makes such a set.
        return Err(DecodeError::BadReplicas(header.replica_count));
    }
    let user = std::str::from_utf8(user_bytes).map_err(|_| DecodeError::BadUser)?;
    if user_key(user) != header.user_key.get() {
        return Err(DecodeError::BadUser);
    }
    let kind = RecordKind::from_u8(header.kind).ok_or(DecodeError::BadKind(header.kind))?;
    Ok(RecordView {
        meta: RecordMeta {
            kind,
            hlc: header.hlc.get(),
            message_id: u128::from_le_bytes(header.message_id),
            node_id: header.node_id.get(),
            aux: header.aux.get(),
            replicas,
        },
        user,
        annex,
        body,
        encoded_len: encoded,
        written_in: (header.version >= 3).then(|| header.segment.get()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn kind_strategy() -> impl Strategy<Value = RecordKind> {
        prop_oneof![
            Just(RecordKind::Put),
            Just(RecordKind::Delete),
            Just(RecordKind::FlagUpdate),
            Just(RecordKind::ProfilePut),
            Just(RecordKind::Retire),
        ]
    }

    proptest! {
        #[test]
        fn round_trip(
            kind in kind_strategy(),
            hlc: u64,
            message_id: u128,
            node_id: u32,
            aux: u32,
            replica_nodes in proptest::collection::vec(any::<u32>(), 0..=REPLICAS_MAX),
            user in "[a-z0-9.@_-]{0,64}",
            body in proptest::collection::vec(any::<u8>(), 0..5000),
            annex in proptest::collection::vec(any::<u8>(), 0..300),
            segment in 1u32..,
        ) {
            let replicas = ReplicaSet::new(replica_nodes);
            let meta = RecordMeta { kind, hlc, message_id, node_id, aux, replicas };
            let annex = if kind == RecordKind::Put { &annex[..] } else { &[] };
            let bytes = encode_payload(segment, &meta, &user, Payload { annex, body: &body });
            prop_assert_eq!(bytes.len() % RECORD_ALIGN, 0);
            let view = decode(&bytes).unwrap();
            prop_assert_eq!(view.meta, meta);
            prop_assert_eq!(view.user, user.as_str());
            prop_assert_eq!(view.annex, annex);
            prop_assert_eq!(view.body, &body[..]);
            prop_assert_eq!(view.encoded_len, bytes.len());
            prop_assert_eq!(view.written_in, Some(segment));
            prop_assert!(view.check_segment(segment, true).is_ok());
            prop_assert!(view.check_segment(segment.wrapping_add(1).max(1), true).is_err());
        }

        #[test]
        fn any_single_byte_flip_is_rejected(
            body in proptest::collection::vec(any::<u8>(), 1..600),
            flip_at: prop::sample::Index,
            flip in 1u8..=255,
        ) {
            let replicas = ReplicaSet::new([4, 9]);
            let meta = RecordMeta { kind: RecordKind::Put, hlc: 7, message_id: 9, node_id: 1, aux: 0, replicas };
            let mut bytes = encode(3, &meta, "alice@localhost", &body);
            let payload_end = HEADER_BYTES + "alice@localhost".len() + 8 + body.len();
            let at = flip_at.index(payload_end);
            bytes[at] ^= flip;
            prop_assert!(decode(&bytes).is_err());
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode(&bytes);
        }
    }

    #[test]
    fn zeros_are_the_end() {
        assert_eq!(decode(&[0; 100]).unwrap_err(), DecodeError::End);
    }

    /// The bytes a version-1 writer produced for a delete of message 0x11 of user "u".
    fn version_one_delete() -> Vec<u8> {
        let mut bytes = vec![0u8; 72];
        bytes[0..4].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
        bytes[4] = 1;
        bytes[5] = 2;
        bytes[6..8].copy_from_slice(&1u16.to_le_bytes());
        bytes[8..12].copy_from_slice(&1u32.to_le_bytes());
        bytes[16..24].copy_from_slice(&0x0102_0304_0506_0708u64.to_le_bytes());
        bytes[24] = 0x11;
        bytes[40..48].copy_from_slice(&user_key("u").to_le_bytes());
        bytes[48..52].copy_from_slice(&3u32.to_le_bytes());
        bytes[52..56].copy_from_slice(&5u32.to_le_bytes());
        bytes[64] = b'u';
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&bytes[..65]);
        let crc = hasher.finalize();
        bytes[12..16].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    #[test]
    fn version_one_records_are_still_read() {
        let bytes = version_one_delete();
        let view = decode(&bytes).unwrap();
        assert_eq!(view.meta.kind, RecordKind::Delete);
        assert_eq!(view.meta.hlc, 0x0102_0304_0506_0708);
        assert_eq!(view.meta.message_id, 0x11);
        assert_eq!(view.meta.node_id, 3);
        assert_eq!(view.meta.aux, 5);
        assert!(view.meta.replicas.is_empty());
        assert_eq!(view.user, "u");
        assert_eq!(view.encoded_len, 72);
    }

    /// The bytes a version-2 writer produced for a put of message 0x11 of user "u", replicated
    /// to nodes 3 and 0x0a0b0c0d, with body "xy".
    fn version_two_put() -> Vec<u8> {
        let mut bytes = vec![0u8; 80];
        bytes[0..4].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
        bytes[4] = 2;
        bytes[5] = 1;
        bytes[6..8].copy_from_slice(&1u16.to_le_bytes());
        bytes[8..12].copy_from_slice(&11u32.to_le_bytes());
        bytes[16..24].copy_from_slice(&0x0102_0304_0506_0708u64.to_le_bytes());
        bytes[24] = 0x11;
        bytes[40..48].copy_from_slice(&user_key("u").to_le_bytes());
        bytes[48..52].copy_from_slice(&3u32.to_le_bytes());
        bytes[52..56].copy_from_slice(&5u32.to_le_bytes());
        bytes[56] = 2;
        bytes[64] = b'u';
        bytes[65..69].copy_from_slice(&3u32.to_le_bytes());
        bytes[69..73].copy_from_slice(&0x0a0b_0c0du32.to_le_bytes());
        bytes[73..75].copy_from_slice(b"xy");
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&bytes[..75]);
        let crc = hasher.finalize();
        bytes[12..16].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    #[test]
    fn version_two_records_are_still_read_but_not_in_a_recycled_segment() {
        let bytes = version_two_put();
        let view = decode(&bytes).unwrap();
        assert_eq!(view.meta.kind, RecordKind::Put);
        assert_eq!(view.meta.replicas.as_slice(), &[3, 0x0a0b_0c0d]);
        assert_eq!(view.body, b"xy");
        assert_eq!(view.written_in, None);
        assert!(view.check_segment(9, false).is_ok());
        assert_eq!(
            view.check_segment(9, true).unwrap_err(),
            DecodeError::Stale {
                written_in: None,
                segment: 9
            }
        );
    }

    #[test]
    fn a_version_three_record_without_its_segment_is_rejected() {
        let mut bytes = version_two_put();
        bytes[4] = 3;
        assert_eq!(decode(&bytes).unwrap_err(), DecodeError::BadReserved);
    }

    /// `bytes` (a valid record) under another version number, its CRC made again.
    fn as_version(mut bytes: Vec<u8>, version: u8) -> Vec<u8> {
        bytes[4] = version;
        bytes[12..16].fill(0);
        let payload_len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
        let crc = crc32fast::hash(&bytes[..HEADER_BYTES + payload_len]);
        bytes[12..16].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    #[test]
    fn version_three_layout_is_stable() {
        // The exact bytes of a version-3 record (a version-4 one without an annex, but for its
        // version number): a change here is a format change.
        let meta = RecordMeta {
            kind: RecordKind::Put,
            hlc: 0x0102_0304_0506_0708,
            message_id: 0x11,
            node_id: 3,
            aux: 5,
            replicas: ReplicaSet::new([3, 0x0a0b_0c0d]),
        };
        let bytes = as_version(encode(0x0102_0304, &meta, "u", b"xy"), 3);
        assert_eq!(bytes.len(), 80);
        assert_eq!(&bytes[0..4], &RECORD_MAGIC.to_le_bytes());
        assert_eq!(bytes[4], 3);
        assert_eq!(bytes[5], 1);
        assert_eq!(&bytes[6..8], &1u16.to_le_bytes());
        assert_eq!(&bytes[8..12], &11u32.to_le_bytes());
        assert_eq!(&bytes[16..24], &0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!(bytes[24], 0x11);
        assert_eq!(&bytes[48..52], &3u32.to_le_bytes());
        assert_eq!(&bytes[52..56], &5u32.to_le_bytes());
        assert_eq!(bytes[56], 2);
        assert!(bytes[57..60].iter().all(|&b| b == 0));
        assert_eq!(&bytes[60..64], &0x0102_0304u32.to_le_bytes());
        assert_eq!(bytes[64], b'u');
        assert_eq!(&bytes[65..69], &3u32.to_le_bytes());
        assert_eq!(&bytes[69..73], &0x0a0b_0c0du32.to_le_bytes());
        assert_eq!(&bytes[73..75], b"xy");
        assert!(bytes[75..].iter().all(|&b| b == 0));
        let view = decode(&bytes).unwrap();
        assert_eq!(view.meta, meta);
        assert_eq!(view.body, b"xy");
        assert_eq!(view.written_in, Some(0x0102_0304));
        // The same record written in another life of the file: valid, and stale here.
        let stale = view.check_segment(0x0102_0305, true).unwrap_err();
        assert!(matches!(
            stale,
            DecodeError::Stale {
                written_in: Some(0x0102_0304),
                ..
            }
        ));
    }

    #[test]
    fn version_four_puts_carry_an_annex_before_the_body() {
        let meta = RecordMeta {
            kind: RecordKind::Put,
            hlc: 7,
            message_id: 0x22,
            node_id: 1,
            aux: 0,
            replicas: ReplicaSet::new([1]),
        };
        let payload = Payload {
            annex: b"ANNEX",
            body: b"body",
        };
        let bytes = encode_payload(9, &meta, "u", payload);
        assert_eq!(bytes[4], 4);
        assert_eq!(&bytes[57..60], &[5, 0, 0]);
        assert_eq!(&bytes[8..12], &(1u32 + 4 + 5 + 4).to_le_bytes());
        assert_eq!(&bytes[69..74], b"ANNEX");
        assert_eq!(&bytes[74..78], b"body");
        let view = decode(&bytes).unwrap();
        assert_eq!((view.annex, view.body), (&b"ANNEX"[..], &b"body"[..]));
        // Without an annex the bytes are version 3's but for the version number.
        let plain = encode(9, &meta, "u", b"body");
        assert!(plain[57..60].iter().all(|&b| b == 0));
        assert_eq!(decode(&plain).unwrap().annex, b"");
        // A version-3 record with an annex length, or a delete with one, is not a record.
        assert_eq!(
            decode(&as_version(bytes.clone(), 3)).unwrap_err(),
            DecodeError::BadReserved
        );
        let mut delete = bytes;
        delete[5] = RecordKind::Delete as u8;
        assert_eq!(
            decode(&as_version(delete, 4)).unwrap_err(),
            DecodeError::BadReserved
        );
        // An annex longer than the payload is refused, never sliced past it.
        let mut long = encode_payload(9, &meta, "u", payload);
        long[57] = 200;
        assert!(matches!(
            decode(&as_version(long, 4)).unwrap_err(),
            DecodeError::BadLength { .. }
        ));
    }

    #[test]
    fn a_version_one_record_with_a_replica_count_is_rejected() {
        let mut bytes = version_one_delete();
        bytes[56] = 1;
        assert_eq!(decode(&bytes).unwrap_err(), DecodeError::BadReserved);
    }

    #[test]
    fn filings_round_trip() {
        let filing = crate::index::Filing {
            folder: 3,
            uid: 0x0102_0304,
            modseq: u64::MAX - 1,
            date: -5,
        };
        let bytes = encode_filing(&filing);
        assert_eq!(&bytes[4..8], &0x0102_0304u32.to_le_bytes());
        assert_eq!(decode_filing(&bytes), Some(filing));
        assert_eq!(decode_filing(&[]), None);
    }

    #[test]
    fn retire_entries_round_trip() {
        let entries = [
            Retired {
                user_key: 1,
                message_id: u128::MAX,
                hlc: 3,
            },
            Retired {
                user_key: u64::MAX,
                message_id: 7,
                hlc: 0,
            },
        ];
        let body = encode_retired(&entries);
        assert_eq!(body.len(), 2 * RETIRE_ENTRY_BYTES);
        assert_eq!(decode_retired(&body).collect::<Vec<_>>(), entries);
    }
}
