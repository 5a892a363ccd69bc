//! Segment files: naming, the segment header block, and making a segment ready ahead of use.
//!
//! A shard's log is a sequence of files `DIR/<seq>.log` (`seq` zero-padded to 12 digits), each
//! exactly `segment_bytes` long. The first [`SEGMENT_HEADER_BYTES`] hold the segment header;
//! records follow from there. A `.log` file always has its full length, so the writer's
//! `fdatasync` never commits a size change. A segment comes to be in one of two ways:
//! - **recycled** ([`recycle`]): a segment that compaction emptied is kept as `<old>.recycle`
//!   and becomes the next segment by rewriting its first two blocks (the new header, and zeros
//!   where the first record goes), then a rename. Its old records stay on disk behind the new
//!   ones but cannot be mistaken for them: every version-3 record names its segment
//!   ([`crate::record`]), and the scan of a version-2 segment stops at a record of another
//!   segment. In steady state (mail deleted about as fast as it comes) every segment is
//!   recycled and each byte of the log reaches the disk once.
//! - **created** ([`prepare`]), when there is none to recycle (the store is growing): as
//!   `<seq>.log.tmp` with its blocks reserved (`fallocate`) and its first two blocks written,
//!   synced, then renamed. Reserved blocks read as zeros, but the first `fdatasync` after a
//!   write into one commits the file system's journal (extent conversion), about halving the
//!   commit rate. So the shard's zeroer (`crate::zeroer`) writes zeros ahead of the log while
//!   the disk has nothing else to do: at low and moderate load the log always writes into
//!   written blocks (fast syncs, at the price of writing those bytes twice, in idle time); a
//!   saturated disk is never idle, the zeros are never written, and each byte reaches it once
//!   (a journal commit per group commit is cheap beside a large batch).
//!
//! Leftover `.tmp` files are removed on open; `.recycle` files of the right length are kept
//! for reuse.
//!
//! Segment header (little-endian, at offset 0, rest of the 4 KiB block zero):
//!
//! | offset | size | field           | meaning                                     |
//! |-------:|-----:|-----------------|---------------------------------------------|
//! | 0      | 4    | `magic`         | `0x4745_5350` (`"PSEG"` on disk)            |
//! | 4      | 1    | `version`       | 2; 1 (read): records need not name their segment, never recycled |
//! | 5      | 3    | `reserved`      | zero                                         |
//! | 8      | 4    | `seq`           | this segment's sequence number               |
//! | 12     | 4    | `crc32`         | CRC-32 of these 48 bytes with this field 0   |
//! | 16     | 8    | `segment_bytes` | the file's fixed length                      |
//! | 24     | 8    | `created_hlc`   | when it was prepared                         |
//! | 32     | 16   | `reserved`      | zero                                         |

use std::path::{Path, PathBuf};
use std::rc::Rc;

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::error::{EngineError, Result};
use crate::storage::{IoBuffer, Storage, StorageFile};

pub const SEGMENT_MAGIC: u32 = 0x4745_5350;
pub const SEGMENT_VERSION: u8 = 2;
/// The oldest segment header this build reads.
pub const SEGMENT_VERSION_MIN: u8 = 1;
/// Records start here in every segment.
pub const SEGMENT_HEADER_BYTES: u64 = 4096;
/// The largest segment: a record's [`Location`](crate::Location) is a 32-bit offset into it.
pub const SEGMENT_BYTES_MAX: u64 = 1 << 32;
/// Zeros are written in pieces of this size when a segment is written out whole (a file
/// system without `fallocate`).
pub const PREPARE_CHUNK_BYTES: usize = 256 << 10;

#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct SegmentHeader {
    pub magic: U32,
    pub version: u8,
    pub reserved0: [u8; 3],
    pub seq: U32,
    pub crc32: U32,
    pub segment_bytes: U64,
    pub created_hlc: U64,
    pub reserved1: [u8; 16],
}

const _: () = assert!(std::mem::size_of::<SegmentHeader>() == 48);

impl SegmentHeader {
    pub fn new(seq: u32, segment_bytes: u64, created_hlc: u64) -> Self {
        let mut header = SegmentHeader {
            magic: U32::new(SEGMENT_MAGIC),
            version: SEGMENT_VERSION,
            reserved0: [0; 3],
            seq: U32::new(seq),
            crc32: U32::new(0),
            segment_bytes: U64::new(segment_bytes),
            created_hlc: U64::new(created_hlc),
            reserved1: [0; 16],
        };
        header.crc32 = U32::new(crc32fast::hash(header.as_bytes()));
        header
    }

    /// Parses and checks a header block read from `path`.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self> {
        let corrupt = |reason: String| EngineError::Corrupt {
            path: path.to_path_buf(),
            offset: 0,
            reason,
        };
        let (header, _) = SegmentHeader::read_from_prefix(bytes)
            .map_err(|_| corrupt("segment header is truncated".into()))?;
        if header.magic.get() != SEGMENT_MAGIC {
            return Err(corrupt(format!(
                "bad segment magic {:#x}",
                header.magic.get()
            )));
        }
        if !(SEGMENT_VERSION_MIN..=SEGMENT_VERSION).contains(&header.version) {
            return Err(corrupt(format!(
                "unsupported segment version {}",
                header.version
            )));
        }
        let mut zeroed = header;
        zeroed.crc32 = U32::new(0);
        if crc32fast::hash(zeroed.as_bytes()) != header.crc32.get() {
            return Err(corrupt("segment header crc mismatch".into()));
        }
        let bytes = header.segment_bytes.get();
        if !(SEGMENT_HEADER_BYTES..=SEGMENT_BYTES_MAX).contains(&bytes) {
            return Err(corrupt(format!(
                "segment length {bytes} is outside what a location can address \
                 ({SEGMENT_HEADER_BYTES}..={SEGMENT_BYTES_MAX})"
            )));
        }
        Ok(header)
    }
}

impl SegmentHeader {
    /// Whether the segment's file may hold records of an earlier life (version 2): then only
    /// records naming this segment belong to it.
    pub fn recyclable(&self) -> bool {
        self.version >= 2
    }
}

/// `DIR/<seq>.log`.
pub fn segment_path(dir: &Path, seq: u32) -> PathBuf {
    dir.join(format!("{seq:012}.log"))
}

/// `DIR/<seq>.recycle`: a compacted segment kept to become a later one.
pub fn recycle_path(dir: &Path, seq: u32) -> PathBuf {
    dir.join(format!("{seq:012}.recycle"))
}

/// The old sequence number of a recycle file name, if it is one.
pub fn parse_recycle_name(name: &str) -> Option<u32> {
    let digits = name.strip_suffix(".recycle")?;
    if digits.len() != 12 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Makes the recycle file `from` segment `seq`: a new header, a zero block where the first
/// record goes (so the segment reads as empty), synced, then renamed to its segment name. Only
/// the first two blocks are written; the rest keeps the old life's records, which name another
/// segment.
pub(crate) async fn recycle<S: Storage>(
    storage: &S,
    dir: &Path,
    from: &Path,
    seq: u32,
    segment_bytes: u64,
    created_hlc: u64,
) -> Result<Rc<S::File>> {
    let file = storage.open(from, false).await?;
    if file.len().await? != segment_bytes {
        return Err(EngineError::Setup(format!(
            "{} is not {segment_bytes} bytes long",
            from.display()
        )));
    }
    let len = 2 * SEGMENT_HEADER_BYTES as usize;
    let mut head = file.alloc_buffer(len);
    head.bytes_mut()[..len].fill(0);
    let header = SegmentHeader::new(seq, segment_bytes, created_hlc);
    head.bytes_mut()[..48].copy_from_slice(header.as_bytes());
    head.truncate(len);
    file.write_at(Rc::new(head), 0).await?;
    file.sync_data().await?;
    drop(file);
    let final_path = segment_path(dir, seq);
    storage.rename(from, &final_path).await?;
    storage.sync_dir(dir).await?;
    Ok(Rc::new(storage.open(&final_path, false).await?))
}

/// The sequence number of a segment file name, if it is one.
pub fn parse_segment_name(name: &str) -> Option<u32> {
    let digits = name.strip_suffix(".log")?;
    if digits.len() != 12 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Creates segment `seq` and makes it durable under its final name: its blocks reserved
/// (`fallocate`), its header and the zero block where the first record goes written and synced.
/// The rest is not written: the shard's zeroer writes it out while the disk is idle
/// (`crate::zeroer`), so that a commit's `fdatasync` need not commit the file system's journal.
/// If the file system cannot reserve blocks (`fallocate` unsupported), the whole segment is
/// written out with zeros here instead, `io_depth` pieces at a time. On failure the partial
/// `.tmp` file is removed (best effort). Returns the file and where its unwritten part starts.
pub(crate) async fn prepare<S: Storage>(
    storage: &S,
    dir: &Path,
    seq: u32,
    segment_bytes: u64,
    created_hlc: u64,
    io_depth: usize,
) -> Result<(Rc<S::File>, u64)> {
    let final_path = segment_path(dir, seq);
    let tmp_path = dir.join(format!("{seq:012}.log.tmp"));
    let result = create(
        storage,
        &tmp_path,
        seq,
        segment_bytes,
        created_hlc,
        io_depth,
    )
    .await;
    let (file, unwritten_from) = match result {
        Ok(created) => created,
        Err(error) => {
            let _ = storage.remove(&tmp_path).await;
            return Err(error);
        }
    };
    storage.rename(&tmp_path, &final_path).await?;
    storage.sync_dir(dir).await?;
    drop(file);
    // Reopen under the final name so error messages name the real file.
    Ok((
        Rc::new(storage.open(&final_path, false).await?),
        unwritten_from,
    ))
}

/// Where a newly created segment's unwritten blocks start: past its header and first block.
pub const CREATED_WRITTEN_BYTES: u64 = 2 * SEGMENT_HEADER_BYTES;

async fn create<S: Storage>(
    storage: &S,
    tmp_path: &Path,
    seq: u32,
    segment_bytes: u64,
    created_hlc: u64,
    io_depth: usize,
) -> Result<(Rc<S::File>, u64)> {
    let file = Rc::new(storage.open(tmp_path, true).await?);
    let unwritten_from = match file.allocate(segment_bytes).await {
        Ok(()) => {
            let len = CREATED_WRITTEN_BYTES as usize;
            let mut head = file.alloc_buffer(len);
            head.bytes_mut()[..len].fill(0);
            let header = SegmentHeader::new(seq, segment_bytes, created_hlc);
            head.bytes_mut()[..48].copy_from_slice(header.as_bytes());
            head.truncate(len);
            file.write_at(Rc::new(head), 0).await?;
            CREATED_WRITTEN_BYTES
        }
        Err(error @ EngineError::NoSpace { .. }) => return Err(error),
        Err(error) => {
            tracing::warn!(path = %tmp_path.display(), %error,
                "cannot reserve a segment's blocks; writing it out with zeros instead");
            write_out(&file, seq, segment_bytes, created_hlc, io_depth).await?;
            segment_bytes
        }
    };
    file.sync_data().await?;
    Ok((file, unwritten_from))
}

/// Writes the whole segment: its header, then zeros.
async fn write_out<F: StorageFile>(
    file: &Rc<F>,
    seq: u32,
    segment_bytes: u64,
    created_hlc: u64,
    io_depth: usize,
) -> Result<()> {
    let mut offset = 0u64;
    while offset < segment_bytes {
        // Up to `io_depth` pieces at once, polled together in this task: no spawned task
        // outlives the segment's preparation if it is abandoned.
        let mut writes = Vec::with_capacity(io_depth.max(1));
        while offset < segment_bytes && writes.len() < io_depth.max(1) {
            let len = PREPARE_CHUNK_BYTES.min((segment_bytes - offset) as usize);
            let mut chunk = file.alloc_buffer(len);
            chunk.bytes_mut().fill(0);
            if offset == 0 {
                let header = SegmentHeader::new(seq, segment_bytes, created_hlc);
                chunk.bytes_mut()[..48].copy_from_slice(header.as_bytes());
            }
            chunk.truncate(len);
            let write = file.write_at(Rc::new(chunk), offset);
            offset += len as u64;
            if io_depth <= 1 {
                write.await?;
            } else {
                writes.push(Box::pin(write));
            }
        }
        join_all(writes).await?;
    }
    Ok(())
}

/// Polls every future until all are done; the first error, if any.
async fn join_all<F>(mut futures: Vec<std::pin::Pin<Box<F>>>) -> Result<()>
where
    F: std::future::Future<Output = Result<()>>,
{
    let mut failure = None;
    std::future::poll_fn(|cx| {
        futures.retain_mut(|future| match future.as_mut().poll(cx) {
            std::task::Poll::Ready(result) => {
                if let Err(error) = result {
                    failure.get_or_insert(error);
                }
                false
            }
            std::task::Poll::Pending => true,
        });
        if futures.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    failure.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let p = segment_path(Path::new("/d"), 42);
        assert_eq!(p, Path::new("/d/000000000042.log"));
        assert_eq!(parse_segment_name("000000000042.log"), Some(42));
        assert_eq!(parse_segment_name("000000000042.log.tmp"), None);
        assert_eq!(parse_segment_name("42.log"), None);
        let r = recycle_path(Path::new("/d"), 42);
        assert_eq!(r, Path::new("/d/000000000042.recycle"));
        assert_eq!(parse_recycle_name("000000000042.recycle"), Some(42));
        assert_eq!(parse_recycle_name("000000000042.log"), None);
    }

    #[test]
    fn version_one_headers_are_read_and_not_recyclable() {
        let mut h = SegmentHeader::new(7, 1 << 20, 99);
        assert!(h.recyclable());
        h.version = 1;
        h.crc32 = U32::new(0);
        h.crc32 = U32::new(crc32fast::hash(h.as_bytes()));
        let parsed = SegmentHeader::parse(h.as_bytes(), Path::new("x")).unwrap();
        assert!(!parsed.recyclable());
        h.version = 3;
        h.crc32 = U32::new(0);
        h.crc32 = U32::new(crc32fast::hash(h.as_bytes()));
        assert!(SegmentHeader::parse(h.as_bytes(), Path::new("x")).is_err());
    }

    #[test]
    fn header_round_trip_and_rejects_damage() {
        let h = SegmentHeader::new(7, 1 << 20, 99);
        let mut bytes = h.as_bytes().to_vec();
        let parsed = SegmentHeader::parse(&bytes, Path::new("x")).unwrap();
        assert_eq!(parsed.seq.get(), 7);
        bytes[20] ^= 1;
        assert!(SegmentHeader::parse(&bytes, Path::new("x")).is_err());
    }

    #[test]
    fn a_header_claiming_more_than_a_location_addresses_is_corrupt() {
        let h = SegmentHeader::new(7, SEGMENT_BYTES_MAX + 4096, 99);
        let error = SegmentHeader::parse(h.as_bytes(), Path::new("x")).unwrap_err();
        assert!(
            error.to_string().contains("outside what a location"),
            "{error}"
        );
        let h = SegmentHeader::new(7, SEGMENT_BYTES_MAX, 99);
        assert!(SegmentHeader::parse(h.as_bytes(), Path::new("x")).is_ok());
    }
}
