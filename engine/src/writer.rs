//! Group commit: how appends become durable.
//!
//! [`enqueue`] encodes a record straight into the newest batch of the shard's queue. One
//! writer task per shard ([`run`]) takes every queued batch of one segment, writes each with one
//! aligned DMA write, issues one `fdatasync` for all of them, applies their index updates in log
//! order and wakes every append of those batches. While a sync is in flight new appends gather
//! in the next batch, so the batch size follows the load with no timer.
//!
//! A batch starts at the aligned block holding the current end of the log and carries that
//! block's earlier bytes, so each write rewrites the partly filled last block with the same
//! bytes plus new ones. This relies on the device writing each 512-byte sector atomically (old
//! or new, never torn within a sector): the already durable prefix is rewritten identically, so
//! a torn write can only damage records that were never acknowledged.
//!
//! A failed write or sync poisons the shard: no retry (after a failed `fdatasync` the kernel may
//! have dropped the dirty pages and a retry could report success for data that is gone). The
//! shard then refuses appends until it is reopened, which recovers from what is on disk.

use std::rc::Rc;
use std::time::Instant;

use crate::checkpoint;
use crate::commit_queue::{Batch, Failure, IndexOp, Inner, Outcome, Span, Spare, State, TailBlock};
use crate::error::{EngineError, Result};
use crate::index::Location;
use crate::invariant::violated;
use crate::record::{self, RecordMeta};
use crate::segment::{self, SEGMENT_HEADER_BYTES};
use crate::signal::Completion;
use crate::storage::{IoBuffer, Storage, StorageFile};

/// The largest write block ([`crate::EngineConfig::write_block_bytes`]): the largest logical
/// block size in common use.
pub const BLOCK_BYTES: usize = 4096;
/// At most this many bytes of batches are written before one sync.
pub(crate) const WRITE_GROUP_BYTES_MAX: usize = 8 << 20;
/// The smallest batch buffer (a few messages).
const BATCH_BYTES_MIN: usize = 16 << 10;

fn align_down(value: u64, block: u64) -> u64 {
    value / block * block
}

/// Encodes one record into the queue; returns the batch's completion and the record's place.
pub(crate) fn enqueue<S: Storage>(
    inner: &Inner<S>,
    state: &mut State<S::File>,
    meta: &RecordMeta,
    user: &str,
    payload: record::Payload<'_>,
    op: impl FnOnce(Location) -> IndexOp,
) -> Result<(Rc<Completion<Outcome>>, Location)> {
    let len = record::encoded_len(user.len(), meta.replicas.len(), payload.len());
    if state.append_pos + len as u64 > inner.config.segment_bytes {
        // Seal the segment: this record and those after it go to the next one.
        state.append_seq += 1;
        state.append_pos = SEGMENT_HEADER_BYTES;
    }
    let seq = state.append_seq;
    let pos = state.append_pos;
    invariant!(
        &inner.name,
        pos >= SEGMENT_HEADER_BYTES
            && pos % record::RECORD_ALIGN as u64 == 0
            && pos + len as u64 <= inner.config.segment_bytes
            && (seq, pos) >= state.durable,
        "append position {pos} of segment {seq} (a record of {len} bytes) is misaligned, \
         outside the segment ({} bytes) or behind the durable end {:?}",
        inner.config.segment_bytes,
        state.durable
    )?;
    let fits = state
        .queue
        .back()
        .is_some_and(|b| b.seq == seq && b.used + len <= b.capacity);
    if !fits {
        let batch = new_batch(inner, state, seq, pos, len)?;
        state.queue.push_back(batch);
    }
    let Some(batch) = state.queue.back_mut() else {
        return Err(violated(&inner.name, "no batch after creating one".into()));
    };
    invariant!(
        &inner.name,
        batch.start + batch.used as u64 == pos,
        "the newest batch of segment {seq} ends at {}, the log at {pos}",
        batch.start + batch.used as u64
    )?;
    let at = batch.used;
    let Some(buf) = Rc::get_mut(&mut batch.buf) else {
        return Err(violated(
            &inner.name,
            "a queued batch buffer is shared".into(),
        ));
    };
    record::encode_payload_into(&mut buf.bytes_mut()[at..at + len], seq, meta, user, payload);
    batch.used += len;
    let location = Location {
        segment: seq,
        offset: pos as u32,
        len: len as u32,
    };
    let span = Span {
        at: (at + record::HEADER_BYTES) as u32,
        len: user.len() as u16,
    };
    let op = op(location);
    state.queued.note(&op);
    batch.ops.push((span, location, op));
    let done = batch.done.clone();
    state.append_pos += len as u64;
    state.queued_bytes += len;
    Ok((done, location))
}

fn new_batch<S: Storage>(
    inner: &Inner<S>,
    state: &State<S::File>,
    seq: u32,
    pos: u64,
    record_len: usize,
) -> Result<Batch<<S::File as StorageFile>::Buffer>> {
    let block = inner.block;
    let start = align_down(pos, block);
    let prefix_len = (pos - start) as usize;
    // Sized to what recent groups held (twice that, rounded up), not to the largest batch: a
    // buffer's pages are touched, and kept by the read cache, in proportion to its size.
    let sized = (2 * state.group_bytes_recent)
        .next_power_of_two()
        .clamp(BATCH_BYTES_MIN, inner.config.batch_bytes_max);
    let capacity = sized.max(prefix_len + record_len);
    let alloc_len = capacity.div_ceil(BLOCK_BYTES) * BLOCK_BYTES;
    // Any segment's file can allocate: buffers depend only on alignment.
    let file = state
        .segments
        .values()
        .next_back()
        .map(|slot| slot.file.clone())
        .ok_or_else(|| violated(&inner.name, "the shard has no segment".into()))?;
    let mut buf = file.alloc_buffer(alloc_len);
    if prefix_len > 0 {
        let prefix: &[u8] = match state.queue.back() {
            Some(prev) if prev.seq == seq => {
                let prev_block = align_down(prev.start + prev.used as u64, block);
                let from = (prev_block - prev.start) as usize;
                &prev.buf.bytes()[from..prev.used]
            }
            _ if state.tail.seq == seq && state.tail.start == start => &state.tail.bytes,
            _ => {
                return Err(violated(
                    &inner.name,
                    format!(
                        "the tail block ({}, {}) is not where the log ends ({seq}, {pos})",
                        state.tail.seq, state.tail.start
                    ),
                ))
            }
        };
        invariant!(
            &inner.name,
            prefix.len() == prefix_len,
            "the tail block holds {} bytes, the log's last block {prefix_len}",
            prefix.len()
        )?;
        buf.bytes_mut()[..prefix_len].copy_from_slice(prefix);
    }
    Ok(Batch {
        seq,
        start,
        buf: Rc::new(buf),
        capacity,
        alloc_bytes: alloc_len,
        used: prefix_len,
        ops: Vec::new(),
        done: Rc::new(Completion::default()),
    })
}

/// The writer task of a shard.
pub(crate) async fn run<S: Storage>(inner: Rc<Inner<S>>) {
    loop {
        loop {
            let (has_work, stopping) = {
                let state = inner.state.borrow();
                (
                    !state.queue.is_empty(),
                    state.closing || state.poisoned.is_some(),
                )
            };
            if has_work {
                break;
            }
            if stopping {
                inner.writer_done.complete(());
                inner.idle_wake.notify();
                return;
            }
            inner.writer_wake.notified().await;
        }
        if !inner.config.commit_window.is_zero() {
            crate::executor::sleep(inner.config.commit_window).await;
        }
        let (group, checked) = take_group(&inner);
        inner.space_wake.notify();
        let Some(first) = group.first() else { continue };
        if let Err(error) = checked {
            poison(&inner, group, &error);
            inner.idle_wake.notify();
            continue;
        }
        inner.state.borrow_mut().writing = true;
        let seq = first.seq;
        let file = match file_for(&inner, seq).await {
            Ok(file) => file,
            Err(failure) => {
                fail_segment(&inner, group, seq, failure);
                inner.idle_wake.notify();
                continue;
            }
        };
        // A zero write of the zeroer in flight where this group writes lands first.
        let group_start = first.start;
        loop {
            let overlapping = inner
                .state
                .borrow()
                .zeroing
                .is_some_and(|(zseq, _, zend)| zseq == seq && zend > group_start);
            if !overlapping {
                break;
            }
            inner.zero_done.notified().await;
        }
        let started = Instant::now();
        let mut result = Ok(());
        for batch in &group {
            result = file.write_at(batch.buf.clone(), batch.start).await;
            if result.is_err() {
                break;
            }
        }
        if result.is_ok() {
            result = file.sync_data().await;
        }
        let sync_time = started.elapsed();
        match result {
            Ok(()) => complete(&inner, group, sync_time),
            Err(error) => poison(&inner, group, &error),
        }
        inner.state.borrow_mut().writing = false;
        inner.idle_wake.notify();
    }
}

/// A group of batches for one segment, in log order.
type Group<S> = Vec<Batch<<<S as Storage>::File as StorageFile>::Buffer>>;

/// Takes the queued batches of the front segment (bounded), trims their buffers to whole
/// blocks and remembers the last partly filled block for the next batch. The group comes
/// with the verdict of [`check_group`] (and of the queued-bytes bookkeeping): a group that
/// fails it is not written.
fn take_group<S: Storage>(inner: &Inner<S>) -> (Group<S>, Result<()>) {
    let mut state = inner.state.borrow_mut();
    let mut group = Vec::new();
    let mut bytes = 0;
    let mut checked = Ok(());
    while let Some(front) = state.queue.front() {
        if !group.is_empty()
            && (front.seq != group_seq(&group) || bytes + front.used > WRITE_GROUP_BYTES_MAX)
        {
            break;
        }
        let Some(mut batch) = state.queue.pop_front() else {
            break;
        };
        bytes += batch.used;
        let block = inner.block as usize;
        let padded = batch.used.div_ceil(block) * block;
        let tail_from = align_down(batch.used as u64, inner.block) as usize;
        if let Some(buf) = Rc::get_mut(&mut batch.buf) {
            let bytes = buf.bytes_mut();
            bytes[batch.used..padded].fill(0);
            buf.truncate(padded);
        }
        state.tail = TailBlock {
            seq: batch.seq,
            start: batch.start + tail_from as u64,
            bytes: batch.buf.bytes()[tail_from..batch.used].to_vec(),
        };
        let record_bytes: usize = batch.ops.iter().map(|(_, loc, _)| loc.len as usize).sum();
        let queued = state.queued_bytes;
        match queued.checked_sub(record_bytes) {
            Some(left) => state.queued_bytes = left,
            None => {
                state.queued_bytes = 0;
                if checked.is_ok() {
                    checked = Err(violated(
                        &inner.name,
                        format!("{queued} bytes queued, a batch of {record_bytes} bytes taken"),
                    ));
                }
            }
        }
        group.push(batch);
    }
    if checked.is_ok() {
        checked = check_group(inner, &state, &group);
    }
    // What groups hold lately (a moving average), for the size of the next batch buffers.
    state.group_bytes_recent = (state.group_bytes_recent * 7 + bytes) / 8;
    (group, checked)
}

/// What the writer is about to write: each batch starts on a block, covers whole blocks and
/// holds its records back to back up to where it ends; the group continues the log exactly
/// where its durable part ends (or at the first record of a new segment); no record lies
/// outside its segment.
fn check_group<S: Storage>(
    inner: &Inner<S>,
    state: &State<S::File>,
    group: &Group<S>,
) -> Result<()> {
    let block = inner.block;
    let mut expected: Option<(u32, u64)> = None;
    for batch in group {
        let written = batch.buf.bytes().len();
        let end = batch.start + batch.used as u64;
        invariant!(
            &inner.name,
            batch.start % block == 0 && written as u64 % block == 0 && written >= batch.used,
            "a batch of segment {} at {} writes {written} bytes for {} used (blocks of {block})",
            batch.seq,
            batch.start,
            batch.used
        )?;
        let first = batch.ops.first().map(|(_, loc, _)| u64::from(loc.offset));
        let mut at = first.unwrap_or(end);
        let expected_first = match expected {
            Some((seq, pos)) if seq == batch.seq => pos,
            _ if batch.seq == state.durable.0 => state.durable.1,
            _ => SEGMENT_HEADER_BYTES,
        };
        invariant!(
            &inner.name,
            batch.seq >= state.durable.0
                && at == expected_first
                && align_down(at, block) == batch.start,
            "a batch of segment {} starts its records at {at} (block {}), the log is at {:?} \
             (durable {:?})",
            batch.seq,
            batch.start,
            (batch.seq, expected_first),
            state.durable
        )?;
        for (_, loc, _) in &batch.ops {
            invariant!(
                &inner.name,
                loc.segment == batch.seq && u64::from(loc.offset) == at && loc.len > 0,
                "a record at {loc:?} in a batch of segment {} whose next record is at {at}",
                batch.seq
            )?;
            at += u64::from(loc.len);
        }
        invariant!(
            &inner.name,
            at == end && end <= inner.config.segment_bytes,
            "the records of a batch of segment {} end at {at}, the batch at {end} (segment of {} bytes)",
            batch.seq,
            inner.config.segment_bytes
        )?;
        expected = Some((batch.seq, end));
    }
    Ok(())
}

fn group_seq<B>(group: &[Batch<B>]) -> u32 {
    group.first().map_or(0, |b| b.seq)
}

/// The open file of segment `seq`, switching to the spare when the log moves to a new segment.
async fn file_for<S: Storage>(
    inner: &Rc<Inner<S>>,
    seq: u32,
) -> std::result::Result<Rc<S::File>, Failure> {
    loop {
        {
            let mut state = inner.state.borrow_mut();
            if let Some(slot) = state.segments.get(&seq) {
                return Ok(slot.file.clone());
            }
            match std::mem::replace(&mut state.spare, Spare::None) {
                Spare::Ready(spare_seq, file, unwritten_from) if spare_seq == seq => {
                    state.segments.insert(
                        seq,
                        crate::commit_queue::SegmentSlot {
                            file: file.clone(),
                            end: SEGMENT_HEADER_BYTES,
                            recyclable: true,
                            unwritten_from,
                        },
                    );
                    drop(state);
                    prepare_spare(inner);
                    return Ok(file);
                }
                Spare::Failed(spare_seq, failure) if spare_seq == seq => return Err(failure),
                Spare::Preparing(spare_seq) => {
                    state.spare = Spare::Preparing(spare_seq);
                }
                other => {
                    // A spare for another segment (cannot happen) or none: prepare this one.
                    drop(other);
                    drop(state);
                    start_spare(inner, seq);
                }
            }
        }
        inner.spare_wake.notified().await;
    }
}

/// Starts writing out the segment after the newest one, unless one is ready or on its way.
pub(crate) fn prepare_spare<S: Storage>(inner: &Rc<Inner<S>>) {
    let next = {
        let state = inner.state.borrow();
        if !matches!(state.spare, Spare::None) {
            return;
        }
        state.segments.keys().next_back().map_or(1, |s| s + 1)
    };
    start_spare(inner, next);
}

fn start_spare<S: Storage>(inner: &Rc<Inner<S>>, seq: u32) {
    let (hlc, recyclable) = {
        let mut state = inner.state.borrow_mut();
        state.spare = Spare::Preparing(seq);
        // Only a file nobody reads any more: a read begun before its segment was compacted
        // holds another reference until it is done.
        let free = state
            .recycle_pool
            .iter()
            .position(|r| Rc::strong_count(&r.file) == 1);
        let taken = free.map(|i| state.recycle_pool.remove(i));
        if state.recycle_pool.is_empty() {
            // The next segment should be recycled too: compaction need not wait for its timer.
            inner.compaction_wake.notify();
        }
        (state.clock.now(), taken)
    };
    let inner = inner.clone();
    crate::executor::spawn_local(async move {
        let mut result: Result<(Rc<S::File>, u64)> = Err(crate::error::EngineError::NotFound);
        if let Some(recyclable) = recyclable {
            let from = segment::recycle_path(&inner.dir, recyclable.old_seq);
            // Nobody reads the old file any more (see above); it is opened again by its name.
            drop(recyclable.file);
            // Every block of a recycled file is written: nothing for the zeroer.
            result = segment::recycle(
                &inner.storage,
                &inner.dir,
                &from,
                seq,
                inner.config.segment_bytes,
                hlc,
            )
            .await
            .map(|file| (file, inner.config.segment_bytes));
            match &result {
                Ok(_) => inner.metrics.borrow_mut().recycled_segments += 1,
                Err(error) => {
                    tracing::warn!(shard = %inner.name, seq, %error, from = %from.display(),
                        "could not recycle a segment; writing a new one out instead");
                    let _ = inner.storage.remove(&from).await;
                }
            }
        }
        if result.is_err() {
            result = segment::prepare(
                &inner.storage,
                &inner.dir,
                seq,
                inner.config.segment_bytes,
                hlc,
                inner.config.io_depth,
            )
            .await;
            if result.is_ok() {
                inner.metrics.borrow_mut().created_segments += 1;
            }
        }
        {
            let mut state = inner.state.borrow_mut();
            state.spare = match result {
                Ok((file, unwritten_from)) => Spare::Ready(seq, file, unwritten_from),
                Err(error) => {
                    tracing::warn!(shard = %inner.name, seq, %error, "could not prepare the next segment");
                    Spare::Failed(seq, Failure::from_error(&error))
                }
            };
        }
        inner.spare_wake.notify();
    });
}

/// The next segment could not be prepared (a full disk): fail the appends bound for it, leave
/// the shard healthy, and start the next append at the beginning of that segment again.
fn fail_segment<S: Storage>(
    inner: &Inner<S>,
    group: Vec<Batch<<S::File as StorageFile>::Buffer>>,
    seq: u32,
    failure: Failure,
) {
    let mut failed = group;
    {
        let mut state = inner.state.borrow_mut();
        while state.queue.front().is_some_and(|b| b.seq == seq) {
            if let Some(batch) = state.queue.pop_front() {
                let record_bytes: usize =
                    batch.ops.iter().map(|(_, loc, _)| loc.len as usize).sum();
                state.queued_bytes = state.queued_bytes.saturating_sub(record_bytes);
                failed.push(batch);
            }
        }
        if state.append_seq == seq && state.queue.is_empty() {
            state.append_pos = SEGMENT_HEADER_BYTES;
            state.tail = TailBlock {
                seq,
                start: SEGMENT_HEADER_BYTES,
                bytes: Vec::new(),
            };
        }
    }
    {
        let mut state = inner.state.borrow_mut();
        for batch in &failed {
            for (_, _, op) in &batch.ops {
                settle(&mut state, op);
            }
        }
    }
    inner.metrics.borrow_mut().failed_batches += failed.len() as u64;
    for batch in failed {
        batch.done.complete(Err(failure.clone()));
    }
    inner.space_wake.notify();
}

/// Stops the shard's writes after `error` (a failed write or sync, or a violated invariant,
/// already logged): `group` (taken, not written or not acknowledged) and every queued batch
/// fail with it, and later appends are refused until the shard is reopened.
pub(crate) fn poison<S: Storage>(inner: &Inner<S>, group: Group<S>, error: &EngineError) {
    if !matches!(error, EngineError::Invariant { .. }) {
        tracing::error!(shard = %inner.name, %error, "write or sync failed: the shard stops accepting writes");
    }
    let failure = Failure::from_error(error);
    let mut failed = group;
    {
        let mut state = inner.state.borrow_mut();
        if state.poisoned.is_none() {
            state.poisoned = Some(error.to_string());
        }
        failed.extend(state.queue.drain(..));
        state.queued_bytes = 0;
    }
    inner.writer_wake.notify();
    inner.metrics.borrow_mut().failed_batches += failed.len() as u64;
    for batch in failed {
        batch.done.complete(Err(failure.clone()));
    }
    inner.space_wake.notify();
}

/// The group is durable: update the index in log order, then wake its appends.
fn complete<S: Storage>(
    inner: &Rc<Inner<S>>,
    group: Vec<Batch<<S::File as StorageFile>::Buffer>>,
    sync_time: std::time::Duration,
) {
    let mut records = 0u64;
    let mut bytes = 0u64;
    let checkpoint_due = {
        let mut state = inner.state.borrow_mut();
        let before = state.durable;
        let after = group
            .last()
            .map_or(before, |b| (b.seq, b.start + b.used as u64));
        let checked = invariant!(
            &inner.name,
            after >= before,
            "the durable end would move back from {before:?} to {after:?}"
        );
        if let Err(error) = checked {
            drop(state);
            poison(inner, group, &error);
            return;
        }
        for batch in &group {
            let buf = batch.buf.bytes();
            for (span, location, op) in &batch.ops {
                let at = span.at as usize;
                let user = std::str::from_utf8(&buf[at..at + span.len as usize]).unwrap_or("");
                apply(&mut state, user, *location, *op);
                records += 1;
                bytes += u64::from(location.len);
            }
            let end = batch.start + batch.used as u64;
            state.recent.remember(
                batch.seq,
                batch.start,
                batch.buf.clone(),
                batch.used,
                batch.alloc_bytes,
            );
            if let Some(slot) = state.segments.get_mut(&batch.seq) {
                slot.end = slot.end.max(end);
            }
            state.durable = (batch.seq, end);
        }
        if let Some(what) = state.index.take_violation() {
            drop(state);
            // The group is durable, but what the index made of it is not to be trusted.
            poison(inner, group, &violated(&inner.name, what));
            return;
        }
        state.bytes_since_checkpoint += bytes;
        let due = state.bytes_since_checkpoint >= inner.config.checkpoint_every_bytes
            && !state.checkpoint_running;
        if due {
            state.checkpoint_running = true;
        }
        due
    };
    inner
        .metrics
        .borrow_mut()
        .record_batch(group.len() as u64, records, bytes, sync_time);
    for batch in group {
        batch.done.complete(Ok(()));
    }
    if checkpoint_due {
        let inner = inner.clone();
        crate::executor::spawn_local(async move {
            if let Err(error) = write_checkpoint(&inner).await {
                tracing::warn!(shard = %inner.name, %error, "index checkpoint failed; the next restart scans more log");
            }
            inner.state.borrow_mut().checkpoint_running = false;
        });
    }
}

/// A queued record is no longer queued (applied or failed).
fn settle<F: StorageFile>(state: &mut State<F>, op: &IndexOp) {
    state.queued.settle(op);
}

pub(crate) fn apply<F: StorageFile>(
    state: &mut State<F>,
    user: &str,
    location: Location,
    op: IndexOp,
) {
    settle(state, &op);
    match op {
        IndexOp::Put(entry) => state.index.put(user, entry),
        IndexOp::Relocate { id, from } => {
            state.index.relocate(user, id, from, location);
        }
        IndexOp::Remove { id, tomb } => {
            state.index.delete(user, id, tomb);
        }
        IndexOp::Flags {
            id,
            flags,
            filing: None,
        } => {
            state.index.set_flags(user, id, flags);
        }
        IndexOp::Flags {
            id,
            flags,
            filing: Some(filing),
        } => {
            state.index.set_filing(user, id, flags, filing);
        }
        IndexOp::Profile(entry) => state.index.put_profile(user, entry),
        IndexOp::RelocateProfile { from } => {
            state.index.relocate_profile(user, from, location);
        }
        IndexOp::Nothing => {}
    }
}

/// Snapshots the index at the durable position and writes it as the shard's checkpoint.
async fn write_checkpoint<S: Storage>(inner: &Inner<S>) -> Result<()> {
    let bytes = {
        let mut state = inner.state.borrow_mut();
        let segments: Vec<(u32, u64)> = state
            .segments
            .iter()
            .map(|(seq, slot)| (*seq, slot.end))
            .collect();
        let clock = state.clock.now();
        state.bytes_since_checkpoint = 0;
        checkpoint::encode(&state.index, &segments, state.durable, clock)
    };
    checkpoint::write(&inner.storage, &inner.dir, &bytes).await?;
    let mut metrics = inner.metrics.borrow_mut();
    metrics.checkpoints += 1;
    metrics.checkpoint_bytes += bytes.len() as u64;
    Ok(())
}

/// Writes a checkpoint unless one is being written (then waits for the writer to be idle).
pub(crate) async fn checkpoint<S: Storage>(inner: &Inner<S>) -> Result<()> {
    while inner.state.borrow().checkpoint_running {
        crate::executor::sleep(std::time::Duration::from_millis(5)).await;
    }
    inner.state.borrow_mut().checkpoint_running = true;
    let result = write_checkpoint(inner).await;
    inner.state.borrow_mut().checkpoint_running = false;
    result
}
