//! A shard: one core's log in one data directory, its index, and the operations on mail.
//!
//! A shard lives on one executor thread and is reached only from there (other cores send it
//! requests by channel). Appends are encoded straight into the pending group-commit batch
//! (the body's one copy), then wait until the writer ([`crate::writer`]) has made the batch
//! durable and applied it to the index. Reads go to the segment file by location and verify
//! the record's CRC before returning it.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::config::EngineConfig;
use crate::error::{EngineError, Result};
use crate::hlc::HybridClock;
use crate::index::{Index, Location, MessageEntry, ProfileEntry};
use crate::index::{PendingUpdate, Tomb};
use crate::metrics::{MetricsSnapshot, ShardMetrics};
use crate::record::{self, RecordKind, RecordMeta, ReplicaSet, Retired, USER_BYTES_MAX};
use crate::recovery::{self, RecoveryReport};
use crate::signal::{Completion, Notify};
use crate::storage::{DmaStorage, Storage, StorageFile};

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
    Relocate { id: u128, from: Location },
    Remove { id: u128, tomb: Tomb },
    Flags { id: u128, flags: u32 },
    Profile(ProfileEntry),
    RelocateProfile { from: Location },
    Nothing,
}

/// A group-commit batch: records for one segment, encoded in one aligned buffer.
pub(crate) struct Batch<B> {
    pub seq: u32,
    /// Aligned file offset of `buf[0]`; the buffer starts with the bytes already in that block.
    pub start: u64,
    pub buf: Rc<B>,
    pub capacity: usize,
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
}

/// The spare segment prepared ahead of the writer.
pub(crate) enum Spare<F> {
    None,
    Preparing(u32),
    Ready(u32, Rc<F>),
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
    pub tail: TailBlock,
    pub spare: Spare<F>,
    pub poisoned: Option<String>,
    pub closing: bool,
    pub bytes_since_checkpoint: u64,
    pub checkpoint_running: bool,
    /// A group commit's write or sync is in flight.
    pub writing: bool,
    pub recent: crate::recent::RecentWrites,
    pub compacting: bool,
    /// Messages with a delete or flag update queued but not yet durable (count per id): the
    /// index does not show those changes yet, so compaction must not copy such a message now.
    pub pending_changes: std::collections::HashMap<u128, u32>,
}

pub(crate) struct Inner<S: Storage> {
    pub name: String,
    pub dir: PathBuf,
    pub config: EngineConfig,
    pub storage: S,
    pub state: RefCell<State<S::File>>,
    pub writer_wake: Notify,
    pub space_wake: Notify,
    pub spare_wake: Notify,
    /// Wakes a paced spare preparation (see `writer::SparePace`): a commit ended, or the log
    /// waits for the spare, or the shard stops.
    pub pace_wake: Notify,
    pub writer_done: Completion<()>,
    pub metrics: RefCell<ShardMetrics>,
    /// Operations under way that may touch the disk (see [`Shard::load`]).
    pub in_flight: Arc<AtomicU32>,
}

/// Counts one operation in [`Inner::in_flight`] while it lives.
struct InFlight(Arc<AtomicU32>);

impl InFlight {
    fn new(gauge: &Arc<AtomicU32>) -> Self {
        gauge.fetch_add(1, Ordering::Relaxed);
        Self(gauge.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The bytes of a record read back: from the disk, or from the copy of a recent batch.
#[derive(Debug)]
pub enum ReadBytes<B> {
    Disk(B),
    Memory(Vec<u8>),
}

impl<B: std::ops::Deref<Target = [u8]>> std::ops::Deref for ReadBytes<B> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Self::Disk(bytes) => bytes,
            Self::Memory(bytes) => bytes,
        }
    }
}

/// A record read back from the log, verified.
#[derive(Debug)]
pub struct StoredRecord<R> {
    buf: R,
    pub meta: RecordMeta,
    user: Range<usize>,
    body: Range<usize>,
}

impl<R: std::ops::Deref<Target = [u8]>> StoredRecord<R> {
    pub fn body(&self) -> &[u8] {
        &self.buf[self.body.clone()]
    }
    pub fn user(&self) -> &str {
        std::str::from_utf8(&self.buf[self.user.clone()]).unwrap_or("")
    }
}

/// Who made an update and when: given for an update made on another node (a replica's copy
/// keeps its coordinator's timestamp), absent for one made here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub hlc: u64,
    pub origin: u32,
}

/// How [`Shard::put_message`] went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutOutcome {
    /// Written now.
    Stored(MessageEntry),
    /// The message was here already; nothing was written.
    AlreadyHere(MessageEntry),
    /// The message was deleted here (its tombstone is pending): a late put, not written.
    Deleted,
}

impl PutOutcome {
    /// The timestamp of the stored message (0 if it was deleted).
    pub fn hlc(&self) -> u64 {
        match self {
            Self::Stored(entry) | Self::AlreadyHere(entry) => entry.hlc,
            Self::Deleted => 0,
        }
    }
}

/// How [`Shard::delete_replicated`] went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeleteOutcome {
    Deleted(Tomb),
    /// A tombstone of the message is here already.
    AlreadyDeleted,
    /// No such message here (a delete made here only).
    NotFound,
}

/// Retire entries per retire record (32 KiB of body).
const RETIRE_ENTRIES_PER_RECORD: usize = 1024;

/// Counts describing a shard now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardStats {
    pub messages: u64,
    pub users: usize,
    pub segments: usize,
    pub active_segment: u32,
    pub durable_offset: u64,
    pub queued_bytes: usize,
    pub poisoned: Option<String>,
}

/// A handle to a shard; cheap to clone, usable only on the thread that opened it.
pub struct Shard<S: Storage = DmaStorage> {
    pub(crate) inner: Rc<Inner<S>>,
}

impl<S: Storage> Clone for Shard<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<S: Storage> std::fmt::Debug for Shard<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard")
            .field("name", &self.inner.name)
            .finish()
    }
}

/// The index entry of a put record written at `location`: its flags are the record's `aux`.
fn put_entry(id: u128, body_len: usize, location: Location, meta: RecordMeta) -> MessageEntry {
    MessageEntry {
        id,
        location,
        body_len: body_len as u32,
        hlc: meta.hlc,
        flags: meta.aux,
        oldest_segment: location.segment,
        origin: meta.node_id,
        replicas: meta.replicas,
    }
}

fn check_user(user: &str) -> Result<()> {
    if user.is_empty() || user.len() > USER_BYTES_MAX || user.contains(['\0', '\r', '\n']) {
        return Err(EngineError::BadUser {
            max: USER_BYTES_MAX,
        });
    }
    Ok(())
}

impl<S: Storage> Shard<S> {
    /// Opens (creating if needed) the shard in `dir`: recovers the log, then starts its writer
    /// and, if configured, its background compaction. Must run inside a glommio executor.
    pub async fn open(
        storage: S,
        dir: &Path,
        config: EngineConfig,
        name: &str,
    ) -> Result<(Self, RecoveryReport)> {
        config.validate().map_err(EngineError::Setup)?;
        // glommio cannot open a directory by a relative path (EBADF): work with absolute ones.
        let dir = &std::path::absolute(dir).map_err(|e| EngineError::io("resolve path", dir, e))?;
        let recovered = recovery::recover(&storage, dir, &config).await?;
        let report = recovered.report.clone();
        let mut clock = HybridClock::new();
        clock.observe(recovered.clock);
        let state = State {
            index: recovered.index,
            segments: recovered.segments,
            clock,
            append_seq: recovered.active,
            append_pos: recovered.end,
            durable: (recovered.active, recovered.end),
            queue: VecDeque::new(),
            queued_bytes: 0,
            tail: recovered.tail,
            spare: Spare::None,
            poisoned: None,
            closing: false,
            bytes_since_checkpoint: 0,
            checkpoint_running: false,
            writing: false,
            recent: crate::recent::RecentWrites::new(config.read_cache_bytes),
            compacting: false,
            pending_changes: std::collections::HashMap::new(),
        };
        let inner = Rc::new(Inner {
            name: name.to_owned(),
            dir: dir.to_path_buf(),
            config,
            storage,
            state: RefCell::new(state),
            writer_wake: Notify::default(),
            space_wake: Notify::default(),
            spare_wake: Notify::default(),
            pace_wake: Notify::default(),
            writer_done: Completion::default(),
            metrics: RefCell::new(ShardMetrics::new()),
            in_flight: Arc::new(AtomicU32::new(0)),
        });
        glommio::spawn_local(crate::writer::run(inner.clone())).detach();
        crate::writer::prepare_spare(&inner);
        if !inner.config.compaction.check_interval.is_zero() {
            glommio::spawn_local(crate::compaction::run(inner.clone())).detach();
        }
        Ok((Self { inner }, report))
    }

    /// Waits until background preparation of the next segment has finished (benchmarks use
    /// this so a measurement does not start while 128 MiB of zeros are still being written).
    pub async fn settled(&self) {
        while matches!(self.inner.state.borrow().spare, Spare::Preparing(_)) {
            self.inner.spare_wake.notified().await;
        }
    }

    /// The shard's load: operations under way that may touch its disk (appends until they are
    /// durable, deletes, reads). The cluster balances on it; a slow disk shows as a high load.
    pub fn load(&self) -> u32 {
        self.inner.in_flight.load(Ordering::Relaxed)
    }

    /// The counter behind [`Shard::load`], readable from any thread.
    pub fn load_gauge(&self) -> Arc<AtomicU32> {
        self.inner.in_flight.clone()
    }

    fn busy(&self) -> InFlight {
        InFlight::new(&self.inner.in_flight)
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The storage the shard's files go through.
    pub fn storage(&self) -> &S {
        &self.inner.storage
    }

    /// Stores a message durably; returns its index entry once it is on disk.
    pub async fn append_message(
        &self,
        user: &str,
        id: u128,
        body: &[u8],
        flags: u32,
    ) -> Result<MessageEntry> {
        let _busy = self.busy();
        check_user(user)?;
        let started = Instant::now();
        let entry = |location, meta| put_entry(id, body.len(), location, meta);
        let submitted = self
            .inner
            .submit(
                RecordKind::Put,
                None,
                ReplicaSet::NONE,
                id,
                user,
                body,
                |_| Some(flags),
                |location, meta| IndexOp::Put(entry(location, meta)),
            )
            .await?;
        let (done, location, meta) = submitted.ok_or(EngineError::NotFound)?;
        self.inner.finish(done, started).await?;
        Ok(entry(location, meta))
    }

    /// Deletes a message durably (a tombstone); `NotFound` if the user has no such message.
    pub async fn delete_message(&self, user: &str, id: u128) -> Result<()> {
        let _busy = self.busy();
        check_user(user)?;
        let started = Instant::now();
        // The tombstone carries the oldest segment that may hold the put (see compaction).
        let oldest =
            |state: &State<S::File>| state.index.message(user, id).map(|m| m.oldest_segment);
        let submitted = self
            .inner
            .submit(
                RecordKind::Delete,
                None,
                ReplicaSet::NONE,
                id,
                user,
                &[],
                oldest,
                |_, meta| IndexOp::Remove {
                    id,
                    tomb: Tomb::of(&meta),
                },
            )
            .await?;
        let (done, _, _) = submitted.ok_or(EngineError::NotFound)?;
        self.inner.finish(done, started).await
    }

    /// Replaces a message's flags durably.
    pub async fn set_flags(&self, user: &str, id: u128, flags: u32) -> Result<()> {
        let _busy = self.busy();
        check_user(user)?;
        let started = Instant::now();
        let present = |state: &State<S::File>| state.index.message(user, id).map(|_| flags);
        let submitted = self
            .inner
            .submit(
                RecordKind::FlagUpdate,
                None,
                ReplicaSet::NONE,
                id,
                user,
                &[],
                present,
                |_, _| IndexOp::Flags { id, flags },
            )
            .await?;
        let (done, _, _) = submitted.ok_or(EngineError::NotFound)?;
        self.inner.finish(done, started).await
    }

    /// Stores a user's profile (opaque bytes) durably; the newest one wins.
    pub async fn put_profile(&self, user: &str, profile: &[u8]) -> Result<()> {
        self.put_profile_stamped(user, profile, None)
            .await
            .map(|_| ())
    }

    /// Stores a profile made here (`stamp` `None`: a fresh timestamp) or on another node (its
    /// stamp), unless the profile here is newer. Returns the stored update's timestamp, or
    /// `None` if the profile here was newer or the same.
    pub async fn put_profile_stamped(
        &self,
        user: &str,
        profile: &[u8],
        stamp: Option<Stamp>,
    ) -> Result<Option<u64>> {
        let _busy = self.busy();
        check_user(user)?;
        let started = Instant::now();
        let newer = |state: &State<S::File>| match (stamp, state.index.profile(user)) {
            (Some(stamp), Some(here)) if here.hlc >= stamp.hlc => None,
            _ => Some(0),
        };
        let submitted = self
            .inner
            .submit(
                RecordKind::ProfilePut,
                stamp,
                ReplicaSet::NONE,
                0,
                user,
                profile,
                newer,
                |location, meta| {
                    IndexOp::Profile(ProfileEntry {
                        location,
                        hlc: meta.hlc,
                        body_len: profile.len() as u32,
                    })
                },
            )
            .await?;
        let Some((done, _, meta)) = submitted else {
            return Ok(None);
        };
        self.inner.finish(done, started).await?;
        Ok(Some(meta.hlc))
    }

    /// The timestamp of the user's profile here, if any.
    pub fn profile_hlc(&self, user: &str) -> Option<u64> {
        self.inner.state.borrow().index.profile(user).map(|p| p.hlc)
    }

    /// Stores a message unless it is here already or deleted: a put coordinated here
    /// (`stamp` `None`) or one pushed by its coordinator (its stamp). `replicas` is the
    /// update's replica set ([`ReplicaSet::NONE`] when not replicated); a replicated put stays
    /// pending in the index until [`Shard::retire`].
    pub async fn put_message(
        &self,
        user: &str,
        id: u128,
        body: &[u8],
        flags: u32,
        replicas: ReplicaSet,
        stamp: Option<Stamp>,
    ) -> Result<PutOutcome> {
        let _busy = self.busy();
        check_user(user)?;
        let started = Instant::now();
        let found = std::cell::Cell::new(None);
        let widened = std::cell::Cell::new(false);
        let decide = |state: &State<S::File>| {
            if state.index.is_tombstoned(user, id) {
                found.set(Some(PutOutcome::Deleted));
                return None;
            }
            if let Some(entry) = state.index.message(user, id) {
                // Here already. If this put names replicas the stored copy does not, the copy
                // is written again, same timestamp, with the union: its tombstone must reach
                // every node a copy went to.
                let wider = ReplicaSet::new(
                    entry
                        .replicas
                        .as_slice()
                        .iter()
                        .chain(replicas.as_slice())
                        .copied(),
                );
                if !replicas.is_replicated() || wider == entry.replicas {
                    found.set(Some(PutOutcome::AlreadyHere(*entry)));
                    return None;
                }
                widened.set(true);
                let stamp = Stamp {
                    hlc: entry.hlc,
                    origin: entry.origin,
                };
                return Some((entry.flags, wider, Some(stamp)));
            }
            Some((flags, replicas, None))
        };
        let entry = |location, meta| put_entry(id, body.len(), location, meta);
        let submitted = self
            .inner
            .submit_with(
                RecordKind::Put,
                stamp,
                id,
                user,
                body,
                decide,
                |location, meta| IndexOp::Put(entry(location, meta)),
            )
            .await?;
        let Some((done, location, meta)) = submitted else {
            return found.take().ok_or(EngineError::NotFound);
        };
        self.inner.finish(done, started).await?;
        if widened.get() {
            return Ok(PutOutcome::AlreadyHere(entry(location, meta)));
        }
        Ok(PutOutcome::Stored(entry(location, meta)))
    }

    /// Deletes a message with a tombstone that replicates. `pushed` `None`: a delete made here,
    /// replicated to the message's own replica set and to the nodes in `also` (others that may
    /// hold a copy), as far as a set holds; a message not here gets a tombstone replicated to
    /// `also` (none if `also` names fewer than two nodes). `pushed` `Some`: a
    /// tombstone from another replica, written even if the put never arrived here so that a
    /// late put cannot land. A replicated tombstone stays pending until retired.
    pub async fn delete_replicated(
        &self,
        user: &str,
        id: u128,
        pushed: Option<(Stamp, ReplicaSet)>,
        also: ReplicaSet,
    ) -> Result<DeleteOutcome> {
        let _busy = self.busy();
        check_user(user)?;
        let started = Instant::now();
        let already = std::cell::Cell::new(false);
        let replicas = std::cell::Cell::new(ReplicaSet::NONE);
        let decide = |state: &State<S::File>| {
            if state.index.is_tombstoned(user, id) {
                already.set(true);
                return None;
            }
            let message = state.index.message(user, id);
            match (pushed, message) {
                // Not here (a replica the put has not reached yet, or a stand-in for an absent
                // replica): a tombstone all the same, replicated to `also`, so a late copy
                // cannot land and the delete rests on more than one node.
                (None, None) if also.is_replicated() => {
                    replicas.set(also);
                    Some(state.append_seq)
                }
                (None, None) => None,
                (None, Some(m)) => {
                    if m.replicas.is_replicated() {
                        replicas.set(ReplicaSet::new(
                            m.replicas.as_slice().iter().chain(also.as_slice()).copied(),
                        ));
                    }
                    Some(m.oldest_segment)
                }
                (Some((_, set)), m) => {
                    replicas.set(set);
                    Some(m.map_or(state.append_seq, |m| m.oldest_segment))
                }
            }
        };
        // The replica set is read from the index in the same borrow that encodes the record.
        let submitted = self
            .inner
            .submit_with(
                RecordKind::Delete,
                pushed.map(|(stamp, _)| stamp),
                id,
                user,
                &[],
                |state| decide(state).map(|aux| (aux, replicas.get(), None)),
                |_, meta| IndexOp::Remove {
                    id,
                    tomb: Tomb::of(&meta),
                },
            )
            .await?;
        let Some((done, _, meta)) = submitted else {
            return Ok(if already.get() {
                DeleteOutcome::AlreadyDeleted
            } else {
                DeleteOutcome::NotFound
            });
        };
        self.inner.finish(done, started).await?;
        Ok(DeleteOutcome::Deleted(Tomb::of(&meta)))
    }

    /// Marks replicated updates as acknowledged by every replica: they leave the pending set
    /// now and a retire record makes that durable (entries of updates no longer pending, or
    /// superseded by a newer one, are ignored).
    pub async fn retire(&self, entries: &[Retired]) -> Result<()> {
        let _busy = self.busy();
        let entries: Vec<Retired> = {
            let mut state = self.inner.state.borrow_mut();
            entries
                .iter()
                .filter(|e| state.index.retire(e))
                .copied()
                .collect()
        };
        let started = Instant::now();
        let mut waits = Vec::new();
        for chunk in entries.chunks(RETIRE_ENTRIES_PER_RECORD) {
            let body = record::encode_retired(chunk);
            let submitted = self
                .inner
                .submit(
                    RecordKind::Retire,
                    None,
                    ReplicaSet::NONE,
                    0,
                    "",
                    &body,
                    |_| Some(0),
                    |_, _| IndexOp::Nothing,
                )
                .await?;
            if let Some((done, _, _)) = submitted {
                waits.push(done);
            }
        }
        for done in waits {
            self.inner.finish(done, started).await?;
        }
        Ok(())
    }

    /// The replicated updates not yet acknowledged by every replica.
    pub fn pending_updates(&self) -> Vec<PendingUpdate> {
        self.inner
            .state
            .borrow()
            .index
            .pending_updates()
            .cloned()
            .collect()
    }

    /// Ids of the user's messages deleted here whose tombstones have not reached every replica.
    pub fn pending_tombstones(&self, user: &str) -> Vec<u128> {
        self.inner
            .state
            .borrow()
            .index
            .pending_tombstones(user)
            .to_vec()
    }

    /// Users with messages here, or with deletes here that not every replica has yet (their
    /// managers must ask this node, whose tombstones hide copies elsewhere).
    pub fn fragment_users(&self) -> Vec<String> {
        let state = self.inner.state.borrow();
        let mut users: Vec<String> = state.index.users().map(str::to_owned).collect();
        users.extend(
            state
                .index
                .tombstoned_users()
                .filter(|u| !state.index.has_messages(u))
                .map(str::to_owned),
        );
        users
    }

    /// How many replicated updates are pending here.
    pub fn pending_count(&self) -> usize {
        self.inner.state.borrow().index.pending_count()
    }

    /// The message's index entry, if it is here.
    pub fn message(&self, user: &str, id: u128) -> Option<MessageEntry> {
        self.inner.state.borrow().index.message(user, id).copied()
    }

    /// The user's messages, oldest first.
    pub fn messages(&self, user: &str) -> Vec<MessageEntry> {
        self.inner.state.borrow().index.messages(user)
    }

    /// Users with messages or a profile on this shard.
    pub fn users(&self) -> Vec<String> {
        let state = self.inner.state.borrow();
        let mut users: Vec<String> = state.index.users().map(str::to_owned).collect();
        users.extend(
            state
                .index
                .profile_users()
                .filter(|(u, _)| !state.index.has_messages(u))
                .map(|(u, _)| u.to_owned()),
        );
        users
    }

    /// Reads and verifies the record at `location`.
    pub async fn read(
        &self,
        location: Location,
    ) -> Result<StoredRecord<ReadBytes<<S::File as StorageFile>::ReadBuf>>> {
        let (file, kept) = {
            let state = self.inner.state.borrow();
            let file = state
                .segments
                .get(&location.segment)
                .map(|slot| slot.file.clone())
                .ok_or(EngineError::NotFound)?;
            (file, state.recent.get(location).map(<[u8]>::to_vec))
        };
        let buf = match kept {
            Some(bytes) => ReadBytes::Memory(bytes),
            None => {
                let _busy = self.busy();
                ReadBytes::Disk(
                    file.read_at(u64::from(location.offset), location.len as usize)
                        .await?,
                )
            }
        };
        let corrupt = |reason: String| EngineError::Corrupt {
            path: file.path().to_path_buf(),
            offset: u64::from(location.offset),
            reason,
        };
        let view = record::decode(&buf).map_err(|e| corrupt(e.to_string()))?;
        if view.encoded_len != location.len as usize {
            return Err(corrupt("record length differs from the index".into()));
        }
        let meta = view.meta;
        let user_start = record::HEADER_BYTES;
        let user_end = user_start + view.user.len();
        let body_start = user_end + 4 * meta.replicas.len();
        let body_end = body_start + view.body.len();
        Ok(StoredRecord {
            buf,
            meta,
            user: user_start..user_end,
            body: body_start..body_end,
        })
    }

    /// Reads one message of a user by id.
    pub async fn read_message(
        &self,
        user: &str,
        id: u128,
    ) -> Result<StoredRecord<ReadBytes<<S::File as StorageFile>::ReadBuf>>> {
        let location = {
            let state = self.inner.state.borrow();
            state.index.message(user, id).map(|m| m.location)
        }
        .ok_or(EngineError::NotFound)?;
        self.read(location).await
    }

    /// Whether the user has at least one message on this shard.
    pub fn has_messages(&self, user: &str) -> bool {
        self.inner.state.borrow().index.has_messages(user)
    }

    /// Whether the user has a profile on this shard (that is, exists), without reading it.
    pub fn has_profile(&self, user: &str) -> bool {
        self.inner.state.borrow().index.profile(user).is_some()
    }

    /// Number of users with a profile on this shard.
    pub fn profile_count(&self) -> usize {
        self.inner.state.borrow().index.profile_users().count()
    }

    /// The user's newest profile, if any.
    pub async fn read_profile(&self, user: &str) -> Result<Option<Vec<u8>>> {
        let _busy = self.busy();
        let location = self
            .inner
            .state
            .borrow()
            .index
            .profile(user)
            .map(|p| p.location);
        match location {
            None => Ok(None),
            Some(location) => Ok(Some(self.read(location).await?.body().to_vec())),
        }
    }

    pub fn stats(&self) -> ShardStats {
        let state = self.inner.state.borrow();
        ShardStats {
            messages: state.index.message_count(),
            users: state.index.user_count(),
            segments: state.segments.len(),
            active_segment: state.durable.0,
            durable_offset: state.durable.1,
            queued_bytes: state.queued_bytes,
            poisoned: state.poisoned.clone(),
        }
    }

    pub fn metrics(&self) -> MetricsSnapshot {
        self.inner.metrics.borrow().snapshot()
    }

    /// Writes an index checkpoint now.
    pub async fn checkpoint(&self) -> Result<()> {
        crate::writer::checkpoint(&self.inner).await
    }

    /// Compacts the emptiest eligible segment, if any; what background compaction does.
    pub async fn compact_once(&self) -> Result<Option<crate::compaction::CompactionReport>> {
        crate::compaction::compact_once(&self.inner).await
    }

    /// Stops accepting appends, lets queued ones finish, writes a checkpoint.
    pub async fn close(&self) -> Result<()> {
        self.inner.state.borrow_mut().closing = true;
        self.inner.writer_wake.notify();
        self.inner.pace_wake.notify();
        self.inner.space_wake.notify();
        self.inner.writer_done.wait().await;
        // No background file work may outlive the shard (glommio cannot cope with a directory
        // removed under a file it is opening).
        self.settled().await;
        while self.inner.state.borrow().compacting {
            glommio::timer::sleep(std::time::Duration::from_millis(2)).await;
        }
        let poisoned = self.inner.state.borrow().poisoned.is_some();
        let result = if poisoned {
            Ok(())
        } else {
            self.checkpoint().await
        };
        // Release files and memory now: a background task asleep on a timer may hold the
        // shard until its executor is gone.
        let mut state = self.inner.state.borrow_mut();
        state.segments.clear();
        state.spare = Spare::None;
        state.index = Index::new();
        result
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
        body: &[u8],
        decide: impl FnOnce(&State<S::File>) -> Option<u32>,
        op: impl FnOnce(Location, RecordMeta) -> IndexOp,
    ) -> Result<Option<(Rc<Completion<Outcome>>, Location, RecordMeta)>> {
        self.submit_with(
            kind,
            stamp,
            id,
            user,
            body,
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
        body: &[u8],
        decide: impl FnOnce(&State<S::File>) -> Option<(u32, ReplicaSet, Option<Stamp>)>,
        op: impl FnOnce(Location, RecordMeta) -> IndexOp,
    ) -> Result<Option<(Rc<Completion<Outcome>>, Location, RecordMeta)>> {
        if body.len() + user.len() > self.config.record_bytes_max {
            return Err(EngineError::TooLarge {
                size: body.len() + user.len(),
                max: self.config.record_bytes_max,
            });
        }
        // Room for the largest replica set: the set is decided only once there is room.
        let len = record::encoded_len(user.len(), record::REPLICAS_MAX, body.len());
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
        let (done, location) =
            crate::writer::enqueue(self, &mut state, &meta, user, body, |loc| op(loc, meta))?;
        drop(state);
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
