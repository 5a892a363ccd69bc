//! Opening a shard's directory: load the checkpoint if it is usable, scan the log after it
//! verifying every record, truncate a torn tail, and rebuild the index.
//!
//! Rules: every segment is scanned record by record; at a bad record the scan resynchronises on
//! 8-byte boundaries to the next valid one. Damage that valid records follow (a flipped bit, a
//! bad sector in the middle of the log) costs only the records it covers: it is skipped and
//! reported, never zeroed, and the records after it — acknowledged mail — are kept. Damage that
//! nothing valid follows, at the end of the newest segment, is a *torn tail*: the unfinished
//! write group of a crash, never acknowledged; the log ends before it and its bytes are zeroed so
//! later appends never sit next to stale, valid-looking bytes. No record whose CRC fails is ever
//! indexed.

use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::checkpoint;
use crate::commit_queue::{Recyclable, SegmentSlot, TailBlock, RECYCLE_POOL_MAX};
use crate::config::EngineConfig;
use crate::error::{EngineError, Result};
use crate::index::{Index, Location, MessageEntry, ProfileEntry, Tomb};
use crate::record::{RecordKind, RecordView};
use crate::scan::{ScanStop, Scanner, SkippedRange};
use crate::segment::{self, SegmentHeader, SEGMENT_HEADER_BYTES};
use crate::storage::{IoBuffer, Storage, StorageFile};
use crate::writer::BLOCK_BYTES;

/// What recovery found; logged by the node and asserted by tests.
#[derive(Clone, Debug, Default)]
pub struct RecoveryReport {
    pub segments: usize,
    pub from_checkpoint: bool,
    pub records_scanned: u64,
    pub bytes_scanned: u64,
    /// The newest segment's torn tail was cut here (segment, offset, why).
    pub truncated: Option<(u32, u64, String)>,
    /// Damaged ranges skipped inside the log, with valid records after them: what they held
    /// is lost here (a replica still has it).
    pub skipped: Vec<(u32, SkippedRange)>,
    pub messages: u64,
    pub elapsed: Duration,
}

pub(crate) struct Recovered<F> {
    /// The unit of the log's writes (see [`EngineConfig::write_block_bytes`]).
    pub write_block: u64,
    pub index: Index,
    pub segments: BTreeMap<u32, SegmentSlot<F>>,
    pub recycle_pool: Vec<Recyclable<F>>,
    pub active: u32,
    pub end: u64,
    pub tail: TailBlock,
    pub clock: u64,
    pub report: RecoveryReport,
}

pub(crate) async fn recover<S: Storage>(
    storage: &S,
    dir: &Path,
    config: &EngineConfig,
) -> Result<Recovered<S::File>> {
    let started = Instant::now();
    storage.create_dir_all(dir)?;
    let mut seqs = Vec::new();
    let mut recycle_pool = Vec::new();
    for name in storage.list(dir)? {
        if name.ends_with(".tmp") {
            storage.remove(&dir.join(&name)).await?;
        } else if let Some(seq) = segment::parse_segment_name(&name) {
            seqs.push(seq);
        } else if let Some(old_seq) = segment::parse_recycle_name(&name) {
            let path = dir.join(&name);
            let file = storage.open(&path, false).await?;
            if recycle_pool.len() < RECYCLE_POOL_MAX && file.len().await? == config.segment_bytes {
                recycle_pool.push(Recyclable {
                    old_seq,
                    file: Rc::new(file),
                });
            } else {
                drop(file);
                storage.remove(&path).await?;
            }
        }
    }
    seqs.sort_unstable();
    let mut report = RecoveryReport::default();
    if seqs.is_empty() {
        let (file, unwritten_from) =
            segment::prepare(storage, dir, 1, config.segment_bytes, 0, config.io_depth).await?;
        let mut segments = BTreeMap::new();
        segments.insert(
            1,
            SegmentSlot {
                file,
                end: SEGMENT_HEADER_BYTES,
                recyclable: true,
                unwritten_from,
            },
        );
        report.segments = 1;
        report.elapsed = started.elapsed();
        let write_block = write_block(config, &*segments[&1].file);
        return Ok(Recovered {
            write_block,
            index: Index::new(),
            segments,
            recycle_pool,
            active: 1,
            end: SEGMENT_HEADER_BYTES,
            tail: TailBlock {
                seq: 1,
                start: SEGMENT_HEADER_BYTES,
                bytes: Vec::new(),
            },
            clock: 0,
            report,
        });
    }

    let snapshot = checkpoint::read(storage, dir).await.unwrap_or_else(|error| {
        tracing::warn!(dir = %dir.display(), %error, "index checkpoint unreadable; scanning the whole log");
        None
    });
    let snapshot = snapshot.filter(|snap| {
        let usable = snap.segments.iter().all(|(seq, _)| seqs.binary_search(seq).is_ok())
            && seqs.binary_search(&snap.covered.0).is_ok();
        if !usable {
            tracing::warn!(dir = %dir.display(), "index checkpoint names missing segments; scanning the whole log");
        }
        usable
    });

    let mut index = Index::new();
    let mut ends: BTreeMap<u32, u64> = BTreeMap::new();
    let mut clock = 0;
    let mut scan_from = (seqs[0], SEGMENT_HEADER_BYTES);
    if let Some(snap) = snapshot {
        // Segments older than the checkpoint's position that it does not list were already
        // compacted away; only their deletion was lost.
        let listed: Vec<u32> = snap.segments.iter().map(|(s, _)| *s).collect();
        let mut kept = Vec::new();
        for seq in seqs {
            if seq < snap.covered.0 && listed.binary_search(&seq).is_err() {
                storage.remove(&segment::segment_path(dir, seq)).await?;
            } else {
                kept.push(seq);
            }
        }
        seqs = kept;
        storage.sync_dir(dir).await?;
        ends.extend(snap.segments.iter().copied());
        index = snap.index;
        clock = snap.clock;
        scan_from = snap.covered;
        report.from_checkpoint = true;
    }

    // The segment that was being written is the newest one holding records: spares prepared
    // ahead of the writer may follow it, empty.
    let mut last = *seqs
        .first()
        .ok_or_else(|| EngineError::Setup("no segments".into()))?;
    for &seq in seqs.iter().rev() {
        let file = storage
            .open(&segment::segment_path(dir, seq), false)
            .await?;
        let first = file
            .read_at(SEGMENT_HEADER_BYTES, crate::record::HEADER_BYTES)
            .await?;
        if first.iter().any(|&b| b != 0) {
            last = seq;
            break;
        }
    }
    let mut segments = BTreeMap::new();
    for &seq in &seqs {
        let path = segment::segment_path(dir, seq);
        let file = storage.open(&path, false).await?;
        let head = file.read_at(0, 48).await?;
        let header = SegmentHeader::parse(&head, &path)?;
        if header.seq.get() != seq {
            return Err(EngineError::Corrupt {
                path,
                offset: 0,
                reason: format!(
                    "segment header says seq {}, file name says {seq}",
                    header.seq.get()
                ),
            });
        }
        let limit = header.segment_bytes.get().min(file.len().await?);
        let recyclable = header.recyclable();
        if seq < scan_from.0 {
            let end = ends.get(&seq).copied().unwrap_or(SEGMENT_HEADER_BYTES);
            segments.insert(
                seq,
                SegmentSlot {
                    file: Rc::new(file),
                    end,
                    recyclable,
                    // Not known after a restart: taken as written (at worst, some syncs of
                    // this segment commit the journal).
                    unwritten_from: config.segment_bytes,
                },
            );
            continue;
        }
        let start = if seq == scan_from.0 {
            scan_from.1
        } else {
            SEGMENT_HEADER_BYTES
        };
        let is_last = seq >= last;
        let mut scanner = Scanner::new(&file, start, limit, true)
            .zero_run_max(in_flight_bytes_max(config))
            .segment(seq, recyclable, write_block(config, &file));
        while let Some((offset, view)) = scanner.next().await? {
            clock = clock.max(view.meta.hlc);
            report.records_scanned += 1;
            report.bytes_scanned += view.encoded_len as u64;
            apply_recovered(&mut index, seq, offset, &view);
        }
        let end = scanner.position();
        // Damage after the last valid record of the newest segment is its torn tail; any other
        // damage had acknowledged records after it (a sealed segment was complete).
        let (inside, tail): (Vec<SkippedRange>, Vec<SkippedRange>) = scanner
            .skipped
            .iter()
            .partition(|s| !is_last || s.offset < end);
        for skipped in &inside {
            tracing::error!(path = %path.display(), offset = skipped.offset, bytes = skipped.bytes, error = %skipped.error,
                "damaged records skipped; the valid records after them are kept");
        }
        report.skipped.extend(inside.iter().map(|s| (seq, *s)));
        let torn = tail
            .first()
            .map(|s| (s.offset, s.bytes, s.error))
            .or(match scanner.stop() {
                Some(ScanStop::Damaged { offset, error }) if is_last => Some((offset, 0, error)),
                _ => None,
            });
        if let (false, Some(ScanStop::Damaged { offset, error })) = (is_last, scanner.stop()) {
            tracing::error!(path = %path.display(), offset, %error, "sealed segment ends in damage");
        }
        drop(scanner);
        if is_last {
            // Whatever an unfinished write group left past the end is zeroed, so a later
            // append can never end up adjacent to a stale, valid-looking record.
            let torn_end = torn.map_or(end, |(offset, bytes, _)| offset.saturating_add(bytes));
            let window = in_flight_bytes_max(config).max(torn_end.saturating_sub(end));
            let stale = if recyclable {
                Stale::NamingThis(seq)
            } else {
                Stale::AnythingButZeros
            };
            let scrubbed = scrub(&file, end, limit, window, stale).await?;
            if let Some((offset, bytes, error)) = torn {
                tracing::warn!(path = %path.display(), offset, bytes, %error, "torn tail: the log now ends here");
                report.truncated = Some((seq, offset, error.to_string()));
            } else if scrubbed {
                tracing::warn!(path = %path.display(), offset = end, "unacknowledged bytes past the end were zeroed");
                report.truncated = Some((seq, end, "bytes past the end".into()));
            }
        }
        segments.insert(
            seq,
            SegmentSlot {
                file: Rc::new(file),
                end,
                recyclable,
                unwritten_from: config.segment_bytes,
            },
        );
    }

    let (active, end) = segments
        .iter()
        .next_back()
        .map(|(seq, slot)| (*seq, slot.end))
        .ok_or_else(|| EngineError::Setup("no segments".into()))?;
    let write_block = write_block(config, &*segments[&active].file);
    let tail_start = end / write_block * write_block;
    let tail_bytes = if end > tail_start {
        let file = &segments[&active].file;
        file.read_at(tail_start, (end - tail_start) as usize)
            .await?
            .to_vec()
    } else {
        Vec::new()
    };
    report.segments = segments.len();
    report.messages = index.message_count();
    report.elapsed = started.elapsed();
    Ok(Recovered {
        write_block,
        index,
        segments,
        recycle_pool,
        active,
        end,
        tail: TailBlock {
            seq: active,
            start: tail_start,
            bytes: tail_bytes,
        },
        clock,
        report,
    })
}

/// The unit of the log's writes: as configured, else the device's logical block size; never
/// below the device's, 512 or 4096.
pub(crate) fn write_block<F: StorageFile>(config: &EngineConfig, file: &F) -> u64 {
    let device = file.alignment().clamp(512, BLOCK_BYTES);
    let wanted = match config.write_block_bytes {
        0 => device,
        bytes => bytes.max(device),
    };
    wanted.next_power_of_two().min(BLOCK_BYTES) as u64
}

/// How far past the durable end an unfinished write group can have reached.
pub(crate) fn in_flight_bytes_max(config: &EngineConfig) -> u64 {
    let batch = config
        .batch_bytes_max
        .max(config.record_bytes_max + crate::record::USER_BYTES_MAX + 2 * BLOCK_BYTES);
    (crate::writer::WRITE_GROUP_BYTES_MAX + batch + 2 * BLOCK_BYTES) as u64
}

/// Applies one verified record to the index, as the writer would have.
pub(crate) fn apply_recovered(index: &mut Index, seq: u32, offset: u64, view: &RecordView<'_>) {
    let location = Location {
        segment: seq,
        offset: offset as u32,
        len: view.encoded_len as u32,
    };
    let id = view.meta.message_id;
    match view.meta.kind {
        RecordKind::Put => index.put(
            view.user,
            MessageEntry {
                id,
                location,
                body_len: view.body.len() as u32,
                hlc: view.meta.hlc,
                flags: view.meta.aux,
                oldest_segment: seq,
                origin: view.meta.node_id,
                replicas: view.meta.replicas,
                filing: crate::index::Filing::default(),
            },
        ),
        RecordKind::Delete => {
            index.delete(view.user, id, Tomb::of(&view.meta));
        }
        RecordKind::Retire => {
            for retired in crate::record::decode_retired(view.body) {
                index.retire(&retired);
            }
        }
        RecordKind::FlagUpdate => match crate::record::decode_filing(view.body) {
            Some(filing) => {
                index.set_filing(view.user, id, view.meta.aux, filing);
            }
            None => {
                index.set_flags(view.user, id, view.meta.aux);
            }
        },
        RecordKind::ProfilePut => index.put_profile(
            view.user,
            ProfileEntry {
                location,
                hlc: view.meta.hlc,
                body_len: view.body.len() as u32,
            },
        ),
    }
}

/// Which bytes past the log's end could one day pass for its records.
#[derive(Clone, Copy, Debug)]
enum Stale {
    /// A segment that is never recycled: anything but zeros.
    AnythingButZeros,
    /// A recycled segment `seq`: what looks like the start of a record naming it (the earlier
    /// life's records name other segments and can never pass).
    NamingThis(u32),
}

impl Stale {
    fn found_in(self, bytes: &[u8]) -> bool {
        match self {
            Stale::AnythingButZeros => bytes.iter().any(|&b| b != 0),
            Stale::NamingThis(seq) => {
                let magic = crate::record::RECORD_MAGIC.to_le_bytes();
                (0..bytes.len())
                    .step_by(crate::record::RECORD_ALIGN)
                    .any(|at| {
                        let head = &bytes[at..];
                        head.starts_with(&magic)
                            && head.get(4).is_some_and(|&v| v >= 3)
                            // A header cut by the chunk's end counts (zeroing it is harmless).
                            && head.get(60..64).is_none_or(|s| s == seq.to_le_bytes())
                    })
            }
        }
    }
}

/// Zeroes every chunk of `[offset, offset + window)` holding bytes that could pass for records
/// (keeping the bytes before `offset` in its block) and syncs if anything changed. Returns
/// whether it wrote.
async fn scrub<F: StorageFile>(
    file: &F,
    offset: u64,
    limit: u64,
    window: u64,
    stale: Stale,
) -> Result<bool> {
    const CHUNK: u64 = 1 << 20;
    let block = BLOCK_BYTES as u64;
    let first_block = offset / block * block;
    let end = limit.min(offset.saturating_add(window));
    let mut pos = first_block;
    let mut wrote = false;
    while pos < end {
        let len = CHUNK.min(end - pos) as usize;
        let len = len.div_ceil(BLOCK_BYTES) * BLOCK_BYTES;
        let current = file.read_at(pos, len).await?;
        let keep = if pos == first_block {
            (offset - first_block) as usize
        } else {
            0
        };
        if current.len() >= keep && stale.found_in(&current[keep..]) {
            let mut buf = file.alloc_buffer(len);
            let bytes = buf.bytes_mut();
            bytes[..len].fill(0);
            bytes[..keep].copy_from_slice(&current[..keep]);
            buf.truncate(len);
            file.write_at(Rc::new(buf), pos).await?;
            wrote = true;
        }
        pos += len as u64;
    }
    if wrote {
        file.sync_data().await?;
    }
    Ok(wrote)
}
