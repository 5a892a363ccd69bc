//! The zeroer: writes zeros over the reserved but never written blocks of the log's current
//! and next segment, ahead of the log, and only while the shard's disk has nothing else to do.
//!
//! Why: a created segment ([`crate::segment::prepare`]) has its blocks reserved by
//! `fallocate`, and the first `fdatasync` after a write into such a block must also commit the
//! file system's journal (the extent becomes "written"), about halving the commit rate. Zeros
//! written ahead of the log spare the commits that cost, at the price of a second write of
//! those bytes — made only in idle time. A saturated disk is never idle: there the log writes
//! each byte once, and the journal commit rides on a large batch. Recycled segments have no
//! unwritten blocks at all.
//!
//! Safety: zeros are only written past the block holding the log's queued end, and the writer
//! waits for a zero write in flight before it writes over the same range, so zeros never land
//! on records. Nothing is synced for the zeros: an unwritten block reads as zeros anyway, and
//! the log's next `fdatasync` makes their extents durable along with its own data.

use std::rc::Rc;

use crate::commit_queue::{Inner, Spare, State};
use crate::storage::{IoBuffer, Storage, StorageFile};

/// One zero write: small enough that a commit arriving meanwhile waits little behind it
/// (16 ms on a 4 MB/s disk, tens of microseconds on an SSD); a sixteenth of a small segment.
fn chunk_bytes(segment_bytes: u64) -> u64 {
    (segment_bytes / 16).clamp(4096, 64 << 10) / 4096 * 4096
}

/// The next range to zero and its file, if any, given the log's position.
fn next_chunk<F: StorageFile>(
    state: &mut State<F>,
    segment_bytes: u64,
) -> Option<(u32, Rc<F>, u64, u64)> {
    let chunk = chunk_bytes(segment_bytes);
    let (append_seq, append_pos) = (state.append_seq, state.append_pos);
    // Past the block holding the log's queued end; a whole chunk-aligned piece at a time.
    let floor = |seq: u32| {
        if seq == append_seq {
            append_pos.next_multiple_of(chunk)
        } else {
            0
        }
    };
    let mut found = None;
    for (&seq, slot) in state.segments.iter_mut() {
        if slot.unwritten_from >= segment_bytes {
            continue;
        }
        if seq < append_seq {
            // Sealed: the log never writes there again.
            slot.unwritten_from = segment_bytes;
            continue;
        }
        let start = slot.unwritten_from.max(floor(seq)).next_multiple_of(chunk);
        if start >= segment_bytes {
            slot.unwritten_from = segment_bytes;
            continue;
        }
        found = Some((seq, slot.file.clone(), start));
        break;
    }
    if found.is_none() {
        if let Spare::Ready(seq, file, unwritten_from) = &mut state.spare {
            let start = (*unwritten_from).max(floor(*seq)).next_multiple_of(chunk);
            if start >= segment_bytes {
                *unwritten_from = segment_bytes;
            } else {
                found = Some((*seq, file.clone(), start));
            }
        }
    }
    found.map(|(seq, file, start)| (seq, file, start, (start + chunk).min(segment_bytes)))
}

/// Whether the zeroer would write now if the shard were idle (benchmarks wait for it).
pub(crate) fn has_work<S: Storage>(inner: &Inner<S>) -> bool {
    let mut state = inner.state.borrow_mut();
    state.zeroing.is_some() || next_chunk(&mut state, inner.config.segment_bytes).is_some()
}

/// Marks segment `seq` written up to `end`, wherever the segment now is (the spare may have
/// become the log's segment meanwhile). Below the chunk's start lies only what the log writes
/// itself.
fn note_written<F: StorageFile>(state: &mut State<F>, seq: u32, end: u64) {
    if let Some(slot) = state.segments.get_mut(&seq) {
        slot.unwritten_from = slot.unwritten_from.max(end);
    } else if let Spare::Ready(spare, _, unwritten_from) = &mut state.spare {
        if *spare == seq {
            *unwritten_from = (*unwritten_from).max(end);
        }
    }
}

/// Runs until the shard closes or fails.
pub(crate) async fn run<S: Storage>(inner: Rc<Inner<S>>) {
    let segment_bytes = inner.config.segment_bytes;
    loop {
        let job = loop {
            {
                let mut state = inner.state.borrow_mut();
                if state.closing || state.poisoned.is_some() {
                    return;
                }
                if state.queue.is_empty() && !state.writing {
                    if let Some(job) = next_chunk(&mut state, segment_bytes) {
                        state.zeroing = Some((job.0, job.2, job.3));
                        break job;
                    }
                }
            }
            inner.idle_wake.notified().await;
        };
        let (seq, file, start, end) = job;
        let len = (end - start) as usize;
        let mut zeros = file.alloc_buffer(len);
        zeros.bytes_mut()[..len].fill(0);
        zeros.truncate(len);
        let result = file.write_at(Rc::new(zeros), start).await;
        drop(file);
        {
            let mut state = inner.state.borrow_mut();
            state.zeroing = None;
            match &result {
                Ok(()) => {
                    note_written(&mut state, seq, end);
                    inner.metrics.borrow_mut().zeroed_bytes += len as u64;
                }
                Err(error) => {
                    // Left to the log: its own writes there report the disk's trouble.
                    tracing::warn!(shard = %inner.name, seq, start, %error,
                        "could not write zeros ahead of the log; the log will write there unzeroed");
                    note_written(&mut state, seq, segment_bytes);
                }
            }
        }
        inner.zero_done.notify();
    }
}
