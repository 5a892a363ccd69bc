//! Compaction: copying the live records of a mostly dead sealed segment forward, then deleting it.
//!
//! Crash safety, step by step: (1) copies go through the normal group commit, so they are
//! durable before anything else happens; a crash here leaves both copies, and replay keeps the
//! later one. (2) The segment leaves the in-memory map and a checkpoint without it is written;
//! (3) the file is removed. A crash between (2) and (3) leaves a file the checkpoint does not
//! list, which the next open deletes.
//!
//! Never resurrect: a tombstone is copied forward while any segment from the oldest one that may
//! hold its put (recorded in the tombstone) up to its own still exists. A flag update is
//! rewritten with the current flags only when the message's put is older than it (a newer put
//! already carries the flags). Compaction runs one segment at a time per shard and reads at a
//! bounded rate.

use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::commit_queue::{IndexOp, Inner, Outcome, Recyclable, RECYCLE_POOL_MAX};
use crate::error::{EngineError, Result};
use crate::index::{Filing, Location};
use crate::record::RecordKind;
use crate::record::{self, ReplicaSet};
use crate::scan::Scanner;
use crate::segment::{self, SEGMENT_HEADER_BYTES};
use crate::shard::Stamp;
use crate::signal::Completion;
use crate::storage::{Storage, StorageFile};

/// What one compaction did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompactionReport {
    pub segment: u32,
    pub records_read: u64,
    pub records_copied: u64,
    pub bytes_copied: u64,
    pub elapsed_ms: u64,
}

/// Copies are awaited once this many are outstanding, bounding memory and queue use.
const OUTSTANDING_COPIES_MAX: usize = 256;
/// The rate limiter sleeps after each this many bytes read.
const RATE_STEP_BYTES: u64 = 256 << 10;

pub(crate) async fn run<S: Storage>(inner: Rc<Inner<S>>) {
    loop {
        crate::signal::either(
            crate::executor::sleep(inner.config.compaction.check_interval),
            inner.compaction_wake.notified(),
        )
        .await;
        // One segment each time (space comes back at that pace however full the pool is), and
        // then more, one after the other, while the recycle pool has room: the log's new
        // segments are made from these, so compaction keeps pace with the log, and no faster
        // (a segment left alone longer holds less to copy).
        loop {
            if inner.state.borrow().closing {
                return;
            }
            match compact_once(&inner).await {
                Ok(Some(report)) => {
                    tracing::info!(shard = %inner.name, ?report, "compacted a segment");
                    if inner.state.borrow().recycle_pool.len() < RECYCLE_POOL_MAX {
                        continue;
                    }
                }
                Ok(None) => {}
                Err(EngineError::Closed) => return,
                Err(EngineError::Busy { .. }) => {}
                Err(error) => {
                    tracing::warn!(shard = %inner.name, %error, "compaction failed; will retry")
                }
            }
            break;
        }
    }
}

/// The sealed segment with the smallest live fraction below the threshold.
fn pick<S: Storage>(inner: &Inner<S>) -> Option<u32> {
    let state = inner.state.borrow();
    let newest = state.append_seq.min(state.durable.0);
    state
        .segments
        .iter()
        .filter(|(seq, _)| **seq < newest)
        .map(|(seq, slot)| {
            let used = slot.end.saturating_sub(SEGMENT_HEADER_BYTES).max(1);
            (*seq, state.index.live_bytes(*seq) as f64 / used as f64)
        })
        .filter(|(_, live)| *live < inner.config.compaction.live_fraction_min)
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(seq, _)| seq)
}

pub(crate) async fn compact_once<S: Storage>(
    inner: &Rc<Inner<S>>,
) -> Result<Option<CompactionReport>> {
    {
        let mut state = inner.state.borrow_mut();
        if state.compacting {
            return Ok(None);
        }
        if let Some(cause) = &state.poisoned {
            return Err(EngineError::Poisoned {
                shard: inner.name.clone(),
                cause: cause.clone(),
            });
        }
        state.compacting = true;
    }
    let result = match pick(inner) {
        Some(seq) => compact(inner, seq).await.map(Some),
        None => Ok(None),
    };
    inner.state.borrow_mut().compacting = false;
    result
}

async fn compact<S: Storage>(inner: &Rc<Inner<S>>, seq: u32) -> Result<CompactionReport> {
    let started = Instant::now();
    let (file, end) = {
        let state = inner.state.borrow();
        let slot = state.segments.get(&seq).ok_or(EngineError::NotFound)?;
        (slot.file.clone(), slot.end)
    };
    let mut report = CompactionReport {
        segment: seq,
        ..CompactionReport::default()
    };
    let mut outstanding: Vec<Rc<Completion<Outcome>>> = Vec::new();
    let mut since_sleep = 0u64;
    let rate = inner.config.compaction.rate_bytes_per_s.max(1);
    let recyclable = inner
        .state
        .borrow()
        .segments
        .get(&seq)
        .is_some_and(|slot| slot.recyclable);
    let mut scanner =
        Scanner::new(&*file, SEGMENT_HEADER_BYTES, end, true).segment(seq, recyclable, inner.block);
    while let Some((offset, view)) = scanner.next().await? {
        report.records_read += 1;
        since_sleep += view.encoded_len as u64;
        let here = Location {
            segment: seq,
            offset: offset as u32,
            len: view.encoded_len as u32,
        };
        let id = view.meta.message_id;
        let user = view.user;
        let kind = view.meta.kind;
        let aux = view.meta.aux;
        let view_hlc = view.meta.hlc;
        // The message's filing now: a flag update is copied with it (not the old record's),
        // and a put copied forward is followed by it, or recovery would meet the put after
        // every record that filed it.
        let filing_now = if matches!(kind, RecordKind::Put | RecordKind::FlagUpdate) {
            inner
                .state
                .borrow()
                .index
                .message(user, id)
                .map(|m| m.filing)
                .unwrap_or_default()
        } else {
            Filing::default()
        };
        let filing_body = if filing_now == Filing::default() {
            Vec::new()
        } else {
            record::encode_filing(&filing_now).to_vec()
        };
        // Decided at the moment the copy is encoded (see `Inner::submit`).
        let decide = |state: &crate::commit_queue::State<S::File>| -> Option<u32> {
            if matches!(kind, RecordKind::Put | RecordKind::FlagUpdate) && state.queued.change(id) {
                // A queued change is not in the index yet; copying now could order the copy
                // after it. Skip: the segment keeps live bytes and is compacted again later.
                return None;
            }
            match kind {
                RecordKind::Put => state
                    .index
                    .message(user, id)
                    .filter(|m| m.location == here)
                    .map(|m| m.flags),
                // A tombstone still pending replication stays: a replica may yet need it.
                RecordKind::Delete
                    if state
                        .index
                        .pending(user, id)
                        .is_some_and(|p| p.hlc == view_hlc) =>
                {
                    Some(aux)
                }
                RecordKind::Delete => state.segments.range(aux..seq).next().map(|_| aux),
                // Retirements already took effect in the index (and a checkpoint follows).
                RecordKind::Retire => None,
                RecordKind::FlagUpdate => state
                    .index
                    .message(user, id)
                    .filter(|m| m.location.segment < seq && m.filing == filing_now)
                    .map(|m| m.flags),
                RecordKind::ProfilePut => state
                    .index
                    .profile(user)
                    .filter(|p| p.location == here)
                    .map(|_| 0),
            }
        };
        let op = match kind {
            RecordKind::Put => IndexOp::Relocate { id, from: here },
            RecordKind::ProfilePut => IndexOp::RelocateProfile { from: here },
            RecordKind::Delete | RecordKind::FlagUpdate | RecordKind::Retire => IndexOp::Nothing,
        };
        let submitted = inner
            .submit(
                kind,
                Some(Stamp {
                    hlc: view.meta.hlc,
                    origin: view.meta.node_id,
                }),
                view.meta.replicas,
                id,
                user,
                if kind == RecordKind::FlagUpdate {
                    record::Payload::body(&filing_body)
                } else {
                    // A put keeps its annex.
                    record::Payload {
                        annex: view.annex,
                        body: view.body,
                    }
                },
                decide,
                |_, _| op,
            )
            .await?;
        if let Some((done, _, _)) = submitted {
            report.records_copied += 1;
            report.bytes_copied += view.encoded_len as u64;
            outstanding.push(done);
            if kind == RecordKind::Put && filing_now != Filing::default() {
                let filed = inner
                    .submit(
                        RecordKind::FlagUpdate,
                        None,
                        ReplicaSet::NONE,
                        id,
                        user,
                        &filing_body,
                        |state| {
                            state
                                .index
                                .message(user, id)
                                .filter(|m| m.filing == filing_now)
                                .map(|m| m.flags)
                        },
                        |_, _| IndexOp::Nothing,
                    )
                    .await?;
                if let Some((done, _, _)) = filed {
                    outstanding.push(done);
                }
            }
        }
        if outstanding.len() >= OUTSTANDING_COPIES_MAX {
            wait_all(inner, &mut outstanding).await?;
        }
        if since_sleep >= RATE_STEP_BYTES {
            crate::executor::sleep(Duration::from_secs_f64(since_sleep as f64 / rate as f64)).await;
            since_sleep = 0;
        }
    }
    drop(scanner);
    wait_all(inner, &mut outstanding).await?;
    {
        let mut state = inner.state.borrow_mut();
        if state.index.live_bytes(seq) != 0 {
            // A message changed while it was being copied; try this segment again later.
            return Err(EngineError::Busy { segment: seq });
        }
        state.segments.remove(&seq);
        state.index.forget_segment(seq);
    }
    crate::writer::checkpoint(inner).await?;
    let path = segment::segment_path(&inner.dir, seq);
    let full_length = file.len().await.ok() == Some(inner.config.segment_bytes);
    let keep = full_length && inner.state.borrow().recycle_pool.len() < RECYCLE_POOL_MAX;
    if keep {
        // Kept to become a later segment: its bytes are written once more, not twice.
        inner
            .storage
            .rename(&path, &segment::recycle_path(&inner.dir, seq))
            .await?;
        inner.storage.sync_dir(&inner.dir).await?;
        inner
            .state
            .borrow_mut()
            .recycle_pool
            .push(Recyclable { old_seq: seq, file });
        crate::writer::prepare_spare(inner);
    } else {
        drop(file);
        inner.storage.remove(&path).await?;
        inner.storage.sync_dir(&inner.dir).await?;
    }
    {
        let mut metrics = inner.metrics.borrow_mut();
        metrics.compacted_segments += 1;
        metrics.compacted_bytes += report.bytes_copied;
    }
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

async fn wait_all<S: Storage>(
    inner: &Inner<S>,
    outstanding: &mut Vec<Rc<Completion<Outcome>>>,
) -> Result<()> {
    for done in outstanding.drain(..) {
        done.wait().await.map_err(|f| f.to_error(&inner.name))?;
    }
    Ok(())
}
