//! An offline check of a shard's directory (`porcupine fsck`): every record of every segment
//! read and its checksum verified, and the index checkpoint checked against the log, without
//! changing a byte (no torn tail cut, no leftover file removed, nothing written).
//!
//! What it reports, and how bad each is:
//! - **damage inside the log** (a record that fails its checks with valid records after it, or
//!   a sealed segment that ends in damage): mail was lost here; recovery skips it and keeps
//!   the rest, and a replica still has what it held. A problem.
//! - **a segment whose header is unreadable** or names another segment: recovery refuses to
//!   open the shard. A problem.
//! - **a checkpoint entry that points at a record that is not its message**: recovery trusts
//!   the checkpoint, so that message would be read wrong. A problem.
//! - **a torn tail** (damage at the end of the newest segment, nothing valid after it): the
//!   unfinished write group of a crash, never acknowledged; recovery cuts it. A note.
//! - **a checkpoint that fails its own checks**, or names segments that are gone: recovery
//!   ignores it and scans the whole log (slower to start, nothing wrong). A note.
//!
//! The scan is the recovery's own ([`crate::scan::Scanner`]), over the storage the node uses, so
//! what fsck calls damage is exactly what a start would skip.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::checkpoint;
use crate::config::EngineConfig;
use crate::error::Result;
use crate::index::Index;
use crate::record::{self, RecordKind};
use crate::recovery::{apply_recovered, in_flight_bytes_max, write_block};
use crate::scan::{ScanStop, Scanner, SkippedRange};
use crate::segment::{self, SegmentHeader, SEGMENT_HEADER_BYTES};
use crate::storage::{Storage, StorageFile};

/// How a shard's checkpoint fared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckpointCheck {
    Absent,
    /// Recovery would ignore it (and scan the whole log); why.
    Ignored(String),
    /// Every message entry was read back from the log: how many, and the ones that are wrong.
    Checked {
        covered: (u32, u64),
        entries: u64,
        wrong: Vec<String>,
    },
}

/// What the check of one shard directory found.
#[derive(Clone, Debug)]
pub struct FsckReport {
    pub dir: PathBuf,
    pub segments: usize,
    pub records: u64,
    pub bytes: u64,
    /// Live messages and mailboxes (users with mail), as the whole log says.
    pub messages: u64,
    pub users: usize,
    /// Profiles whose newest record is not a removal (internal ones included: the engine
    /// does not tell them apart).
    pub profiles: usize,
    /// Profiles removed (`user delete`).
    pub removed_profiles: usize,
    /// Damage inside the log, valid records after it (segment, range).
    pub damaged: Vec<(u32, SkippedRange)>,
    /// Sealed segments that end in damage (segment, offset, why).
    pub sealed_ends_damaged: Vec<(u32, u64, String)>,
    /// Segment files whose header cannot be used (segment, why).
    pub bad_headers: Vec<(u32, String)>,
    /// The newest segment's unfinished write group (segment, offset, why).
    pub torn_tail: Option<(u32, u64, String)>,
    pub checkpoint: CheckpointCheck,
    /// Files a crash left behind (`.tmp`), removed at the next start.
    pub leftovers: Vec<String>,
}

/// Entries of a list of wrong checkpoint entries that are spelt out; the rest are counted.
const WRONG_LISTED_MAX: usize = 20;

impl FsckReport {
    /// What lost or would misread data.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (seq, range) in &self.damaged {
            out.push(format!(
                "segment {seq}: {} damaged bytes at offset {} ({}); the records there are lost on \
                 this node (a replica has them), the ones after are kept",
                range.bytes, range.offset, range.error
            ));
        }
        for (seq, offset, why) in &self.sealed_ends_damaged {
            out.push(format!(
                "segment {seq}: a sealed segment ends in damage at offset {offset} ({why})"
            ));
        }
        for (seq, why) in &self.bad_headers {
            out.push(format!("segment {seq}: {why}; the shard will not open"));
        }
        if let CheckpointCheck::Checked { wrong, .. } = &self.checkpoint {
            out.extend(wrong.iter().cloned());
        }
        out
    }

    /// What is expected after a crash or harmless.
    pub fn notes(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some((seq, offset, why)) = &self.torn_tail {
            out.push(format!(
                "segment {seq}: torn tail at offset {offset} ({why}): a crash's unfinished \
                 write, never acknowledged; the next start cuts it"
            ));
        }
        if let CheckpointCheck::Ignored(why) = &self.checkpoint {
            out.push(format!(
                "checkpoint ignored ({why}): the next start scans the whole log"
            ));
        }
        for name in &self.leftovers {
            out.push(format!(
                "{name}: left by a crash, removed at the next start"
            ));
        }
        out
    }
}

/// Checks the shard in `dir` (see the module docs). Errors are I/O errors reading it.
pub async fn check_shard<S: Storage>(
    storage: &S,
    dir: &Path,
    config: &EngineConfig,
) -> Result<FsckReport> {
    let mut report = FsckReport {
        dir: dir.to_path_buf(),
        segments: 0,
        records: 0,
        bytes: 0,
        messages: 0,
        users: 0,
        profiles: 0,
        removed_profiles: 0,
        damaged: Vec::new(),
        sealed_ends_damaged: Vec::new(),
        bad_headers: Vec::new(),
        torn_tail: None,
        checkpoint: CheckpointCheck::Absent,
        leftovers: Vec::new(),
    };
    let mut seqs = Vec::new();
    for name in storage.list(dir)? {
        if name.ends_with(".tmp") {
            report.leftovers.push(name);
        } else if let Some(seq) = segment::parse_segment_name(&name) {
            seqs.push(seq);
        }
    }
    seqs.sort_unstable();
    report.segments = seqs.len();
    // The newest segment holding records is the one that was being written.
    let mut files = BTreeMap::new();
    for &seq in &seqs {
        files.insert(
            seq,
            storage
                .open(&segment::segment_path(dir, seq), false)
                .await?,
        );
    }
    let mut last = seqs.first().copied().unwrap_or(0);
    for (&seq, file) in files.iter().rev() {
        let first = file
            .read_at(SEGMENT_HEADER_BYTES, record::HEADER_BYTES)
            .await?;
        if first.iter().any(|&b| b != 0) {
            last = seq;
            break;
        }
    }
    let mut index = Index::new();
    for (&seq, file) in &files {
        let path = segment::segment_path(dir, seq);
        let head = file.read_at(0, 48).await?;
        let header = match SegmentHeader::parse(&head, &path) {
            Ok(header) if header.seq.get() == seq => header,
            Ok(header) => {
                let why = format!(
                    "its header says segment {}, its name {seq}",
                    header.seq.get()
                );
                report.bad_headers.push((seq, why));
                continue;
            }
            Err(error) => {
                report.bad_headers.push((seq, error.to_string()));
                continue;
            }
        };
        let limit = header.segment_bytes.get().min(file.len().await?);
        let is_last = seq >= last;
        let mut scanner = Scanner::new(file, SEGMENT_HEADER_BYTES, limit, true)
            .zero_run_max(in_flight_bytes_max(config))
            .segment(seq, header.recyclable(), write_block(config, file));
        while let Some((offset, view)) = scanner.next().await? {
            report.records += 1;
            report.bytes += view.encoded_len as u64;
            apply_recovered(&mut index, seq, offset, &view);
        }
        let end = scanner.position();
        for skipped in &scanner.skipped {
            if is_last && skipped.offset >= end {
                if report.torn_tail.is_none() {
                    report.torn_tail = Some((seq, skipped.offset, skipped.error.to_string()));
                }
            } else {
                report.damaged.push((seq, *skipped));
            }
        }
        if let Some(ScanStop::Damaged { offset, error }) = scanner.stop() {
            if is_last {
                if report.torn_tail.is_none() {
                    report.torn_tail = Some((seq, offset, error.to_string()));
                }
            } else {
                report
                    .sealed_ends_damaged
                    .push((seq, offset, error.to_string()));
            }
        }
    }
    report.messages = index.message_count();
    report.users = index.user_count();
    report.removed_profiles = index
        .profile_users()
        .filter(|(_, p)| p.is_removed())
        .count();
    report.profiles = index.profile_users().count() - report.removed_profiles;
    report.checkpoint = check_checkpoint(storage, dir, &seqs, &files).await?;
    Ok(report)
}

/// Reads back every message entry of the checkpoint from the log.
async fn check_checkpoint<S: Storage>(
    storage: &S,
    dir: &Path,
    seqs: &[u32],
    files: &BTreeMap<u32, S::File>,
) -> Result<CheckpointCheck> {
    let present = storage
        .list(dir)?
        .iter()
        .any(|name| name == checkpoint::CHECKPOINT_FILE);
    if !present {
        return Ok(CheckpointCheck::Absent);
    }
    let snapshot = match checkpoint::read(storage, dir).await {
        Ok(Some(snapshot)) => snapshot,
        Ok(None) => {
            return Ok(CheckpointCheck::Ignored(
                "it fails its checksum or format checks".into(),
            ))
        }
        Err(error) => return Ok(CheckpointCheck::Ignored(error.to_string())),
    };
    let missing: Vec<u32> = snapshot
        .segments
        .iter()
        .map(|(seq, _)| *seq)
        .chain([snapshot.covered.0])
        .filter(|seq| seqs.binary_search(seq).is_err())
        .collect();
    if !missing.is_empty() {
        return Ok(CheckpointCheck::Ignored(format!(
            "it names segments that are gone: {missing:?}"
        )));
    }
    let mut entries = 0;
    let mut wrong = Vec::new();
    let mut wrong_count = 0usize;
    for (user, _, messages) in snapshot.index.mailboxes() {
        for entry in messages {
            entries += 1;
            let loc = entry.location;
            let verdict = match files.get(&loc.segment) {
                None => Err(format!("segment {} does not exist", loc.segment)),
                Some(file) => {
                    let bytes = file
                        .read_at(u64::from(loc.offset), loc.len as usize)
                        .await?;
                    match record::decode(&bytes) {
                        Err(error) => Err(format!("no valid record there ({error})")),
                        Ok(view) if view.meta.kind != RecordKind::Put => Err(format!(
                            "a {:?} record is there, not the message",
                            view.meta.kind
                        )),
                        Ok(view) if view.meta.message_id != entry.id || view.user != user => {
                            Err(format!(
                                "the record there is message {:032x} of {}",
                                view.meta.message_id, view.user
                            ))
                        }
                        Ok(_) => Ok(()),
                    }
                }
            };
            if let Err(why) = verdict {
                wrong_count += 1;
                if wrong.len() < WRONG_LISTED_MAX {
                    wrong.push(format!(
                        "checkpoint: message {:032x} of {user} at segment {} offset {}: {why}",
                        entry.id, loc.segment, loc.offset
                    ));
                }
            }
        }
    }
    if wrong_count > wrong.len() {
        wrong.push(format!(
            "checkpoint: {} more entries are wrong",
            wrong_count - wrong.len()
        ));
    }
    Ok(CheckpointCheck::Checked {
        covered: snapshot.covered,
        entries,
        wrong,
    })
}
