//! The index checkpoint: a snapshot of a shard's index and the log position it covers, so a
//! restart loads it and scans only the log after that position.
//!
//! File `DIR/index.ckpt`, written as `index.ckpt.tmp`, synced, renamed, directory synced: a
//! reader sees the old checkpoint or the new one, never a mix. A checkpoint that fails any check
//! is ignored (the shard then scans its whole log), so it can never make data wrong, only slow.
//!
//! Layout, little-endian: a 64-byte header, then the body.
//!
//! | offset | size | field            | meaning                                         |
//! |-------:|-----:|------------------|-------------------------------------------------|
//! | 0      | 4    | `magic`          | `0x504b_4350` (`"PCKP"` on disk)               |
//! | 4      | 1    | `version`        | 3; 2 is read (it has no filings); a version-1 checkpoint is ignored: the log is scanned |
//! | 5      | 3    | `reserved`       | zero                                            |
//! | 8      | 4    | `crc32`          | CRC-32 of this header (this field zeroed) and the body |
//! | 12     | 4    | `covered_segment`| the log up to (`covered_segment`, `covered_offset`) is in the snapshot |
//! | 16     | 8    | `covered_offset` |                                                 |
//! | 24     | 8    | `body_len`       | bytes of body after the header                  |
//! | 32     | 8    | `clock`          | the largest HLC timestamp seen                  |
//! | 40     | 24   | `reserved`       | zero                                            |
//!
//! Body: `u32` segment count, then per segment (`u32` seq, `u64` end offset); `u32` mailbox
//! count, then per mailbox `u16` user length, the user, `u32` message count and that many
//! 96-byte [`MessageRecord`]s (72 bytes in version 2: without the filing's last four fields); `u32` profile count, then per profile `u16` user length, the user
//! and a 24-byte [`ProfileRecord`]; `u32` pending-update count, then per update `u16` user
//! length, the user and a 48-byte [`PendingRecord`].

use std::path::{Path, PathBuf};
use std::rc::Rc;

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::error::{EngineError, Result};
use crate::index::{Index, Location, MessageEntry, PendingUpdate, ProfileEntry, UpdateKind};
use crate::record::{ReplicaSet, REPLICAS_MAX};
use crate::storage::{IoBuffer, Storage, StorageFile};

pub const CHECKPOINT_MAGIC: u32 = 0x504b_4350;
pub const CHECKPOINT_VERSION: u8 = 3;
/// The oldest version read.
pub const CHECKPOINT_VERSION_MIN: u8 = 2;
/// Bytes of a message record in version 2 (no filing).
const MESSAGE_RECORD_V2_BYTES: usize = 72;
pub const CHECKPOINT_FILE: &str = "index.ckpt";

#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
struct CheckpointHeader {
    magic: U32,
    version: u8,
    reserved0: [u8; 3],
    crc32: U32,
    covered_segment: U32,
    covered_offset: U64,
    body_len: U64,
    clock: U64,
    reserved1: [u8; 24],
}
const _: () = assert!(std::mem::size_of::<CheckpointHeader>() == 64);

#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
struct MessageRecord {
    id: [u8; 16],
    segment: U32,
    offset: U32,
    len: U32,
    body_len: U32,
    hlc: U64,
    flags: U32,
    oldest_segment: U32,
    origin: U32,
    replica_count: U32,
    replicas: [U32; REPLICAS_MAX],
    filing_folder: U32,
    filing_uid: U32,
    filing_modseq: U64,
    filing_date: U64,
}
const _: () = assert!(std::mem::size_of::<MessageRecord>() == 96);

#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
struct PendingRecord {
    id: [u8; 16],
    hlc: U64,
    origin: U32,
    /// 1: put, 2: delete (the record kinds).
    kind: u8,
    replica_count: u8,
    reserved: [u8; 2],
    replicas: [U32; REPLICAS_MAX],
}
const _: () = assert!(std::mem::size_of::<PendingRecord>() == 48);

fn replica_words(set: &ReplicaSet) -> (U32, [U32; REPLICAS_MAX]) {
    let mut words = [U32::new(0); REPLICAS_MAX];
    for (word, node) in words.iter_mut().zip(set.as_slice()) {
        *word = U32::new(*node);
    }
    (U32::new(set.len() as u32), words)
}

fn replica_set(count: u32, words: &[U32; REPLICAS_MAX]) -> Option<ReplicaSet> {
    let count = usize::try_from(count).ok().filter(|&c| c <= REPLICAS_MAX)?;
    let set = ReplicaSet::new(words[..count].iter().map(|w| w.get()));
    (set.len() == count).then_some(set)
}

#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
struct ProfileRecord {
    segment: U32,
    offset: U32,
    len: U32,
    body_len: U32,
    hlc: U64,
}
const _: () = assert!(std::mem::size_of::<ProfileRecord>() == 24);

/// What a checkpoint restores.
#[derive(Debug)]
pub struct Snapshot {
    pub index: Index,
    /// Every segment that existed, with the offset where its records end.
    pub segments: Vec<(u32, u64)>,
    pub covered: (u32, u64),
    pub clock: u64,
}

pub fn path(dir: &Path) -> PathBuf {
    dir.join(CHECKPOINT_FILE)
}

/// Serialises the index (synchronously: the snapshot must match `covered` exactly).
pub fn encode(index: &Index, segments: &[(u32, u64)], covered: (u32, u64), clock: u64) -> Vec<u8> {
    encode_version(index, segments, covered, clock, CHECKPOINT_VERSION)
}

/// [`encode`] in format `version` (2 or 3; 2 only to test that it is still read).
fn encode_version(
    index: &Index,
    segments: &[(u32, u64)],
    covered: (u32, u64),
    clock: u64,
    version: u8,
) -> Vec<u8> {
    let mut body = Vec::with_capacity(64 + index.message_count() as usize * 64);
    body.extend_from_slice(&(segments.len() as u32).to_le_bytes());
    for &(seq, end) in segments {
        body.extend_from_slice(&seq.to_le_bytes());
        body.extend_from_slice(&end.to_le_bytes());
    }
    body.extend_from_slice(&(index.user_count() as u32).to_le_bytes());
    for (user, count, messages) in index.mailboxes() {
        body.extend_from_slice(&(user.len() as u16).to_le_bytes());
        body.extend_from_slice(user.as_bytes());
        body.extend_from_slice(&(count as u32).to_le_bytes());
        for m in messages {
            let (replica_count, replicas) = replica_words(&m.replicas);
            let record = MessageRecord {
                id: m.id.to_le_bytes(),
                segment: U32::new(m.location.segment),
                offset: U32::new(m.location.offset),
                len: U32::new(m.location.len),
                body_len: U32::new(m.body_len),
                hlc: U64::new(m.hlc),
                flags: U32::new(m.flags),
                oldest_segment: U32::new(m.oldest_segment),
                origin: U32::new(m.origin),
                replica_count,
                replicas,
                filing_folder: U32::new(m.filing.folder),
                filing_uid: U32::new(m.filing.uid),
                filing_modseq: U64::new(m.filing.modseq),
                filing_date: U64::new(m.filing.date as u64),
            };
            let bytes = record.as_bytes();
            if version == 2 {
                body.extend_from_slice(&bytes[..MESSAGE_RECORD_V2_BYTES]);
            } else {
                body.extend_from_slice(bytes);
            }
        }
    }
    let profiles: Vec<_> = index.profile_users().collect();
    body.extend_from_slice(&(profiles.len() as u32).to_le_bytes());
    for (user, p) in profiles {
        body.extend_from_slice(&(user.len() as u16).to_le_bytes());
        body.extend_from_slice(user.as_bytes());
        let record = ProfileRecord {
            segment: U32::new(p.location.segment),
            offset: U32::new(p.location.offset),
            len: U32::new(p.location.len),
            body_len: U32::new(p.body_len),
            hlc: U64::new(p.hlc),
        };
        body.extend_from_slice(record.as_bytes());
    }
    body.extend_from_slice(&(index.pending_count() as u32).to_le_bytes());
    for p in index.pending_updates() {
        body.extend_from_slice(&(p.user.len() as u16).to_le_bytes());
        body.extend_from_slice(p.user.as_bytes());
        let (replica_count, replicas) = replica_words(&p.replicas);
        let record = PendingRecord {
            id: p.id.to_le_bytes(),
            hlc: U64::new(p.hlc),
            origin: U32::new(p.origin),
            kind: match p.kind {
                UpdateKind::Put => 1,
                UpdateKind::Delete => 2,
            },
            replica_count: replica_count.get() as u8,
            reserved: [0; 2],
            replicas,
        };
        body.extend_from_slice(record.as_bytes());
    }
    let mut header = CheckpointHeader {
        magic: U32::new(CHECKPOINT_MAGIC),
        version,
        reserved0: [0; 3],
        crc32: U32::new(0),
        covered_segment: U32::new(covered.0),
        covered_offset: U64::new(covered.1),
        body_len: U64::new(body.len() as u64),
        clock: U64::new(clock),
        reserved1: [0; 24],
    };
    header.crc32 = U32::new(checksum(&header, &body));
    let mut out = Vec::with_capacity(64 + body.len());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&body);
    out
}

fn checksum(header: &CheckpointHeader, body: &[u8]) -> u32 {
    let mut zeroed = *header;
    zeroed.crc32 = U32::new(0);
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(zeroed.as_bytes());
    hasher.update(body);
    hasher.finalize()
}

/// A cursor over the body that fails instead of panicking on short input.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.bytes.len() < n {
            return None;
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Some(head)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn user(&mut self) -> Option<&'a str> {
        let len = self.u16()? as usize;
        std::str::from_utf8(self.take(len)?).ok()
    }
}

/// Parses a checkpoint; `None` if it fails any check.
pub fn decode(bytes: &[u8]) -> Option<Snapshot> {
    let (header, rest) = CheckpointHeader::read_from_prefix(bytes).ok()?;
    if header.magic.get() != CHECKPOINT_MAGIC
        || !(CHECKPOINT_VERSION_MIN..=CHECKPOINT_VERSION).contains(&header.version)
    {
        return None;
    }
    let record_bytes = if header.version == 2 {
        MESSAGE_RECORD_V2_BYTES
    } else {
        std::mem::size_of::<MessageRecord>()
    };
    let body = rest.get(..usize::try_from(header.body_len.get()).ok()?)?;
    if checksum(&header, body) != header.crc32.get() {
        return None;
    }
    let mut r = Reader { bytes: body };
    let segment_count = r.u32()?;
    let mut segments = Vec::with_capacity(segment_count.min(1 << 20) as usize);
    for _ in 0..segment_count {
        segments.push((r.u32()?, r.u64()?));
    }
    let mut index = Index::new();
    for _ in 0..r.u32()? {
        let user = r.user()?;
        for _ in 0..r.u32()? {
            // A version-2 record is a version-3 one without the filing (zeros).
            let mut bytes = [0u8; std::mem::size_of::<MessageRecord>()];
            bytes[..record_bytes].copy_from_slice(r.take(record_bytes)?);
            let (m, _) = MessageRecord::read_from_prefix(&bytes[..]).ok()?;
            index.restore(
                user,
                MessageEntry {
                    id: u128::from_le_bytes(m.id),
                    location: Location {
                        segment: m.segment.get(),
                        offset: m.offset.get(),
                        len: m.len.get(),
                    },
                    body_len: m.body_len.get(),
                    hlc: m.hlc.get(),
                    flags: m.flags.get(),
                    oldest_segment: m.oldest_segment.get(),
                    origin: m.origin.get(),
                    replicas: replica_set(m.replica_count.get(), &m.replicas)?,
                    filing: crate::index::Filing {
                        folder: m.filing_folder.get(),
                        uid: m.filing_uid.get(),
                        modseq: m.filing_modseq.get(),
                        date: m.filing_date.get() as i64,
                    },
                },
            );
        }
    }
    for _ in 0..r.u32()? {
        let user = r.user()?;
        let (p, _) = ProfileRecord::read_from_prefix(r.take(24)?).ok()?;
        index.put_profile(
            user,
            ProfileEntry {
                location: Location {
                    segment: p.segment.get(),
                    offset: p.offset.get(),
                    len: p.len.get(),
                },
                hlc: p.hlc.get(),
                body_len: p.body_len.get(),
            },
        );
    }
    for _ in 0..r.u32()? {
        let user = r.user()?;
        let (p, _) = PendingRecord::read_from_prefix(r.take(48)?).ok()?;
        let kind = match p.kind {
            1 => UpdateKind::Put,
            2 => UpdateKind::Delete,
            _ => return None,
        };
        index.note_pending(PendingUpdate {
            user: user.into(),
            id: u128::from_le_bytes(p.id),
            kind,
            hlc: p.hlc.get(),
            origin: p.origin.get(),
            replicas: replica_set(u32::from(p.replica_count), &p.replicas)?,
        });
    }
    Some(Snapshot {
        index,
        segments,
        covered: (header.covered_segment.get(), header.covered_offset.get()),
        clock: header.clock.get(),
    })
}

/// Writes `bytes` as the checkpoint of `dir`, atomically.
pub async fn write<S: Storage>(storage: &S, dir: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = dir.join(format!("{CHECKPOINT_FILE}.tmp"));
    let file = storage.open(&tmp, true).await?;
    let align = file.alignment().max(4096);
    let padded = bytes.len().div_ceil(align) * align;
    let mut buf = file.alloc_buffer(padded);
    let out = buf.bytes_mut();
    out[..bytes.len()].copy_from_slice(bytes);
    out[bytes.len()..padded].fill(0);
    buf.truncate(padded);
    file.write_at(Rc::new(buf), 0).await?;
    file.sync_data().await?;
    drop(file);
    storage.rename(&tmp, &path(dir)).await?;
    storage.sync_dir(dir).await
}

/// Reads the checkpoint of `dir`: `Ok(None)` if there is none or it is unusable.
pub async fn read<S: Storage>(storage: &S, dir: &Path) -> Result<Option<Snapshot>> {
    let file_path = path(dir);
    // Asked of the storage, not of the file system: it may not be a real one.
    if !storage
        .list(dir)?
        .iter()
        .any(|name| name == CHECKPOINT_FILE)
    {
        return Ok(None);
    }
    let file = storage.open(&file_path, false).await?;
    let len = file.len().await?;
    let len = usize::try_from(len).map_err(|_| EngineError::Corrupt {
        path: file_path.clone(),
        offset: 0,
        reason: "checkpoint larger than memory".into(),
    })?;
    let bytes = file.read_at(0, len).await?;
    Ok(decode(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage_is_refused() {
        let mut index = Index::new();
        let loc = Location {
            segment: 2,
            offset: 4096,
            len: 128,
        };
        index.put(
            "bob@x",
            MessageEntry {
                id: 77,
                location: loc,
                body_len: 40,
                hlc: 5,
                flags: 1,
                oldest_segment: 1,
                origin: 3,
                replicas: ReplicaSet::new([3, 4]),
                filing: crate::index::Filing {
                    folder: 2,
                    uid: 9,
                    modseq: 11,
                    date: -1,
                },
            },
        );
        index.delete(
            "ann@x",
            12,
            crate::index::Tomb {
                hlc: 8,
                origin: 4,
                replicas: ReplicaSet::new([4, 3]),
            },
        );
        index.put_profile(
            "bob@x",
            ProfileEntry {
                location: loc,
                hlc: 6,
                body_len: 3,
            },
        );
        let bytes = encode(&index, &[(1, 9000), (2, 5000)], (2, 5000), 42);
        let snap = decode(&bytes).unwrap();
        assert_eq!(snap.covered, (2, 5000));
        assert_eq!(snap.clock, 42);
        assert_eq!(snap.segments, vec![(1, 9000), (2, 5000)]);
        assert_eq!(snap.index.messages("bob@x")[0].oldest_segment, 1);
        assert_eq!(snap.index.profile("bob@x").map(|p| p.hlc), Some(6));
        assert_eq!(
            snap.index.messages("bob@x")[0].replicas,
            ReplicaSet::new([3, 4])
        );
        assert_eq!(snap.index.pending_count(), 2);
        assert_eq!(
            snap.index.pending("bob@x", 77).map(|p| p.kind),
            Some(UpdateKind::Put)
        );
        assert!(snap.index.is_tombstoned("ann@x", 12));
        for at in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x40;
            assert!(
                decode(&damaged).is_none(),
                "damage at byte {at} went unnoticed"
            );
        }
        assert!(decode(&bytes[..bytes.len() - 1]).is_none());
        assert_eq!(snap.index.messages("bob@x")[0].filing.uid, 9);
        assert_eq!(snap.index.messages("bob@x")[0].filing.date, -1);
        // The previous format is still read: everything but the filings.
        let old = encode_version(&index, &[(1, 9000), (2, 5000)], (2, 5000), 42, 2);
        assert_eq!(old[4], 2);
        assert_eq!(old.len(), bytes.len() - 24);
        let snap = decode(&old).unwrap();
        assert_eq!(
            snap.index.messages("bob@x")[0].replicas,
            ReplicaSet::new([3, 4])
        );
        assert_eq!(
            snap.index.messages("bob@x")[0].filing,
            crate::index::Filing::default()
        );
        assert!(snap.index.is_tombstoned("ann@x", 12));
    }
}
