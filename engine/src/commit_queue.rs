//! The commit queue: the state a shard's appenders and its writer ([`crate::writer`]) share
//! — the batch being filled, the sealed batches behind it, the open segments and the spare
//! one, the index — and how an append joins it and waits for its batch to be durable
//! ([`Inner::submit`], [`Inner::finish`]). A shard ([`crate::shard`]) is the API in front of
//! it; the writer drains it.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::config::EngineConfig;
use crate::error::{EngineError, Result};
use crate::hlc::HybridClock;
use crate::index::{Index, Location, MessageEntry, ProfileEntry, Tomb};
use crate::metrics::ShardMetrics;
use crate::record::{self, Payload, RecordKind, RecordMeta, ReplicaSet};
use crate::shard::Stamp;
use crate::signal::{Completion, Notify};
use crate::storage::{Storage, StorageFile};

/// A failure shared by every append of a batch (errors themselves are not `Clone`).
#[derive(Clone, Debug)]
pub(crate) enum Failure {
    NoSpace(PathBuf),
    Io {
        op: &'static str,
        path: PathBuf,
        errno: Option<i32>,
        message: String,
    },
    Poisoned(String),
    Invariant {
        shard: String,
        what: String,
    },
    Closed,
}

impl Failure {
    pub(crate) fn from_error(error: &EngineError) -> Self {
        match error {
            EngineError::NoSpace { path } => Failure::NoSpace(path.clone()),
            EngineError::Io { op, path, source } => Failure::Io {
                op,
                path: path.clone(),
                errno: source.raw_os_error(),
                message: source.to_string(),
            },
            EngineError::Closed => Failure::Closed,
            EngineError::Invariant { shard, what } => Failure::Invariant {
                shard: shard.clone(),
                what: what.clone(),
            },
            other => Failure::Poisoned(other.to_string()),
        }
    }

    pub(crate) fn to_error(&self, shard: &str) -> EngineError {
        match self {
            Failure::NoSpace(path) => EngineError::NoSpace { path: path.clone() },
            Failure::Io {
                op,
                path,
                errno,
                message,
            } => EngineError::Io {
                op,
                path: path.clone(),
                source: match errno {
                    Some(errno) => io::Error::from_raw_os_error(*errno),
                    None => io::Error::other(message.clone()),
                },
            },
            Failure::Poisoned(cause) => EngineError::Poisoned {
                shard: shard.to_owned(),
                cause: cause.clone(),
            },
            Failure::Invariant { shard, what } => EngineError::Invariant {
                shard: shard.clone(),
                what: what.clone(),
            },
            Failure::Closed => EngineError::Closed,
        }
    }
}

pub(crate) type Outcome = std::result::Result<(), Failure>;

/// Where the user name of an op lies inside its batch buffer.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Span {
    pub at: u32,
    pub len: u16,
}

/// What the writer does to the index once a record is durable.
#[derive(Clone, Copy, Debug)]
pub(crate) enum IndexOp {
    Put(MessageEntry),
    Relocate {
        id: u128,
        from: Location,
    },
    Remove {
        id: u128,
        tomb: Tomb,
    },
    /// New flags, and a new filing if `Some`.
    Flags {
        id: u128,
        flags: u32,
        filing: Option<crate::index::Filing>,
    },
    Profile(ProfileEntry),
    RelocateProfile {
        from: Location,
    },
    Nothing,
}

/// A group-commit batch: records for one segment, encoded in one aligned buffer.
pub(crate) struct Batch<B> {
    pub seq: u32,
    /// Aligned file offset of `buf[0]`; the buffer starts with the bytes already in that block.
    pub start: u64,
    pub buf: Rc<B>,
    pub capacity: usize,
    /// Bytes of the buffer's allocation (what keeping it costs).
    pub alloc_bytes: usize,
    pub used: usize,
    pub ops: Vec<(Span, Location, IndexOp)>,
    pub done: Rc<Completion<Outcome>>,
}

/// The bytes of the partly filled block at the end of what was handed to the writer.
#[derive(Debug, Default, Clone)]
pub(crate) struct TailBlock {
    pub seq: u32,
    pub start: u64,
    pub bytes: Vec<u8>,
}

#[derive(Debug)]
pub(crate) struct SegmentSlot<F> {
    pub file: Rc<F>,
    /// Offset just past the last durable record.
    pub end: u64,
    /// The file may hold an earlier life's records (a version-2 segment header): only records
    /// naming this segment belong to it.
    pub recyclable: bool,
    /// Blocks from here to the segment's end may be reserved but never written (a created
    /// segment the zeroer has not finished); the segment's length once all are written.
    pub unwritten_from: u64,
}

/// A segment compaction emptied, kept as `<seq>.recycle` to become a later segment
/// ([`crate::segment::recycle`]). The open file is kept so that a read begun before the
/// segment left the map (holding another reference) is waited out: a file is recycled only
/// when this is its last reference.
pub(crate) struct Recyclable<F> {
    pub old_seq: u32,
    pub file: Rc<F>,
}

/// At most this many emptied segments wait to be recycled per shard; more are deleted (each
/// holds a whole segment's disk space).
pub(crate) const RECYCLE_POOL_MAX: usize = 2;

/// The spare segment prepared ahead of the writer.
pub(crate) enum Spare<F> {
    None,
    Preparing(u32),
    /// Ready: its file, and where its unwritten blocks start (see [`SegmentSlot`]).
    Ready(u32, Rc<F>, u64),
    Failed(u32, Failure),
}

pub(crate) struct State<F: StorageFile> {
    pub index: Index,
    pub segments: BTreeMap<u32, SegmentSlot<F>>,
    pub clock: HybridClock,
    pub append_seq: u32,
    pub append_pos: u64,
    pub durable: (u32, u64),
    pub queue: VecDeque<Batch<F::Buffer>>,
    pub queued_bytes: usize,
    /// Bytes a write group held lately (moving average): new batch buffers are sized to it.
    pub group_bytes_recent: usize,
    pub tail: TailBlock,
    pub spare: Spare<F>,
    /// Emptied segments waiting to become the next spare.
    pub recycle_pool: Vec<Recyclable<F>>,
    /// The zeroer's write in flight: segment, start, end (see [`crate::zeroer`]).
    pub zeroing: Option<(u32, u64, u64)>,
    pub poisoned: Option<String>,
    pub closing: bool,
    pub bytes_since_checkpoint: u64,
    pub checkpoint_running: bool,
    /// A group commit's write or sync is in flight.
    pub writing: bool,
    pub recent: crate::recent::RecentWrites,
    pub compacting: bool,
    /// Puts, deletes and flag updates queued but not yet durable: what the index does not
    /// show yet (see [`crate::queued`]).
    pub queued: crate::queued::QueuedChanges,
}

pub(crate) struct Inner<S: Storage> {
    pub name: String,
    pub dir: PathBuf,
    pub config: EngineConfig,
    /// The unit of the log's writes (see [`EngineConfig::write_block_bytes`]), resolved at open.
    pub block: u64,
    pub storage: S,
    pub state: RefCell<State<S::File>>,
    pub writer_wake: Notify,
    pub space_wake: Notify,
    pub spare_wake: Notify,
    /// Wakes the zeroer ([`crate::zeroer`]): a commit ended, a segment was created, or the
    /// shard stops.
    pub idle_wake: Notify,
    /// The zeroer's write finished (the writer may be waiting to write where it wrote).
    pub zero_done: Notify,
    /// Wakes background compaction early: the log took a new segment and none was left to
    /// recycle.
    pub compaction_wake: Notify,
    pub writer_done: Completion<()>,
    pub metrics: RefCell<ShardMetrics>,
    /// Operations under way that may touch the disk (see [`Shard::load`]).
    pub in_flight: Arc<AtomicU32>,
}

/// Counts one operation in [`Inner::in_flight`] while it lives.
pub(crate) struct InFlight(Arc<AtomicU32>);

impl InFlight {
    pub(crate) fn new(gauge: &Arc<AtomicU32>) -> Self {
        gauge.fetch_add(1, Ordering::Relaxed);
        Self(gauge.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<S: Storage> Inner<S> {
    /// Queues a record (waiting for queue space first) and returns what to wait on.
    ///
    /// `decide` runs in the same borrow that encodes the record, after any wait, and returns
    /// the record's `aux` field, or `None` to write nothing. A check of the index made there
    /// cannot be overtaken by another record: a compaction copy can never land behind the
    /// tombstone of the message it copies.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn submit(
        &self,
        kind: RecordKind,
        stamp: Option<Stamp>,
        replicas: ReplicaSet,
        id: u128,
        user: &str,
        payload: impl Into<Payload<'_>>,
        decide: impl FnOnce(&State<S::File>) -> Option<u32>,
        op: impl FnOnce(Location, RecordMeta) -> IndexOp,
    ) -> Result<Option<(Rc<Completion<Outcome>>, Location, RecordMeta)>> {
        self.submit_with(
            kind,
            stamp,
            id,
            user,
            payload.into(),
            |state| decide(state).map(|aux| (aux, replicas, None)),
            op,
        )
        .await
    }

    /// [`Inner::submit`], with the replica set decided alongside `aux`, and a stamp that, if
    /// decided, replaces `stamp`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn submit_with(
        &self,
        kind: RecordKind,
        stamp: Option<Stamp>,
        id: u128,
        user: &str,
        payload: Payload<'_>,
        decide: impl FnOnce(&State<S::File>) -> Option<(u32, ReplicaSet, Option<Stamp>)>,
        op: impl FnOnce(Location, RecordMeta) -> IndexOp,
    ) -> Result<Option<(Rc<Completion<Outcome>>, Location, RecordMeta)>> {
        // The annex is the engine's own addition: only the body counts against the limit.
        if payload.body.len() + user.len() > self.config.record_bytes_max {
            return Err(EngineError::TooLarge {
                size: payload.body.len() + user.len(),
                max: self.config.record_bytes_max,
            });
        }
        // Room for the largest replica set: the set is decided only once there is room.
        let len = record::encoded_len(user.len(), record::REPLICAS_MAX, payload.len());
        loop {
            let has_space = {
                let state = self.state.borrow();
                if let Some(cause) = &state.poisoned {
                    return Err(Failure::Poisoned(cause.clone()).to_error(&self.name));
                }
                if state.closing {
                    return Err(EngineError::Closed);
                }
                state.queued_bytes == 0 || state.queued_bytes + len <= self.config.queue_bytes_max
            };
            if has_space {
                break;
            }
            self.space_wake.notified().await;
        }
        let mut state = self.state.borrow_mut();
        let Some((aux, replicas, decided_stamp)) = decide(&state) else {
            return Ok(None);
        };
        let (hlc, node_id) = match decided_stamp.or(stamp) {
            Some(stamp) => {
                state.clock.observe(stamp.hlc);
                (stamp.hlc, stamp.origin)
            }
            None => (state.clock.now(), self.config.node_id),
        };
        let meta = RecordMeta {
            kind,
            hlc,
            message_id: id,
            node_id,
            aux,
            replicas,
        };
        let enqueued =
            crate::writer::enqueue(self, &mut state, &meta, user, payload, |loc| op(loc, meta));
        drop(state);
        let (done, location) = match enqueued {
            Ok(enqueued) => enqueued,
            Err(error) => {
                if matches!(error, EngineError::Invariant { .. }) {
                    crate::writer::poison(self, Vec::new(), &error);
                }
                return Err(error);
            }
        };
        self.writer_wake.notify();
        Ok(Some((done, location, meta)))
    }

    /// Waits for a submitted record's batch and records the ack latency.
    pub(crate) async fn finish(
        &self,
        done: Rc<Completion<Outcome>>,
        started: Instant,
    ) -> Result<()> {
        let outcome = done.wait().await;
        self.metrics.borrow_mut().record_ack(started.elapsed());
        outcome.map_err(|f| f.to_error(&self.name))
    }
}
