//! A shard: one core's log in one data directory, its index, and the operations on mail.
//!
//! A shard lives on one executor thread and is reached only from there (other cores send it
//! requests by channel). Appends are encoded straight into the pending group-commit batch
//! (the body's one copy), then wait until the writer ([`crate::writer`]) has made the batch
//! durable and applied it to the index. Reads go to the segment file by location and verify
//! the record's CRC before returning it.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::config::EngineConfig;
use crate::error::{EngineError, Result};
use crate::hlc::HybridClock;
use crate::index::{Filing, Index, Location, MessageEntry, ProfileEntry};
use crate::index::{PendingUpdate, Tomb};
use crate::metrics::{MetricsSnapshot, ShardMetrics};
use crate::record::{self, RecordKind, RecordMeta, ReplicaSet, Retired, USER_BYTES_MAX};
use crate::recovery::{self, RecoveryReport};
use crate::signal::{Completion, Notify};
use crate::storage::{DmaStorage, Storage, StorageFile};

mod replicated;
use crate::commit_queue::{InFlight, IndexOp, Inner, Spare, State};
pub use crate::outcomes::{DeleteOutcome, PutOutcome, ReadBytes, ShardStats, Stamp, StoredRecord};

/// Retire entries per retire record (32 KiB of body).
const RETIRE_ENTRIES_PER_RECORD: usize = 1024;

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
        filing: Filing::default(),
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
    /// and, if configured, its background compaction. Must run inside a glommio executor, or
    /// a [`crate::PlainExecutor`] (with a storage that needs no io_uring, such as
    /// [`crate::MemoryStorage`]).
    pub async fn open(
        storage: S,
        dir: &Path,
        config: EngineConfig,
        name: &str,
    ) -> Result<(Self, RecoveryReport)> {
        config.validate().map_err(EngineError::Setup)?;
        // glommio cannot open a directory by a relative path (EBADF): work with absolute ones.
        let dir = &std::path::absolute(dir).map_err(|e| EngineError::io("resolve path", dir, e))?;
        let mut recovered = recovery::recover(&storage, dir, &config).await?;
        let report = recovered.report.clone();
        // Rebuilt from the log, the index must be consistent; if not, the shard serves reads
        // but takes no writes.
        let poisoned = recovered
            .index
            .take_violation()
            .map(|what| crate::invariant::violated(name, what).to_string());
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
            group_bytes_recent: 0,
            tail: recovered.tail,
            spare: Spare::None,
            recycle_pool: recovered.recycle_pool,
            zeroing: None,
            poisoned,
            closing: false,
            bytes_since_checkpoint: 0,
            checkpoint_running: false,
            writing: false,
            recent: crate::recent::RecentWrites::new(config.read_cache_bytes),
            compacting: false,
            queued: crate::queued::QueuedChanges::default(),
        };
        let inner = Rc::new(Inner {
            name: name.to_owned(),
            dir: dir.to_path_buf(),
            block: recovered.write_block,
            config,
            storage,
            state: RefCell::new(state),
            writer_wake: Notify::default(),
            space_wake: Notify::default(),
            spare_wake: Notify::default(),
            idle_wake: Notify::default(),
            zero_done: Notify::default(),
            compaction_wake: Notify::default(),
            writer_done: Completion::default(),
            metrics: RefCell::new(ShardMetrics::new()),
            in_flight: Arc::new(AtomicU32::new(0)),
        });
        crate::executor::spawn_local(crate::writer::run(inner.clone()));
        crate::executor::spawn_local(crate::zeroer::run(inner.clone()));
        crate::writer::prepare_spare(&inner);
        if !inner.config.compaction.check_interval.is_zero() {
            crate::executor::spawn_local(crate::compaction::run(inner.clone()));
        }
        Ok((Self { inner }, report))
    }

    /// Waits until background preparation of the next segment has finished and the zeroer
    /// has nothing left to write while the shard is idle (benchmarks use this so a measurement
    /// does not start while zeros are still being written).
    pub async fn settled(&self) {
        while matches!(self.inner.state.borrow().spare, Spare::Preparing(_)) {
            self.inner.spare_wake.notified().await;
        }
        while !self.inner.state.borrow().closing && crate::zeroer::has_work(&self.inner) {
            crate::executor::sleep(std::time::Duration::from_millis(2)).await;
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
        let annex = self.annex_of(body);
        let submitted = self
            .inner
            .submit(
                RecordKind::Put,
                None,
                ReplicaSet::NONE,
                id,
                user,
                record::Payload {
                    annex: &annex,
                    body,
                },
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
                |_, _| IndexOp::Flags {
                    id,
                    flags,
                    filing: None,
                },
            )
            .await?;
        let (done, _, _) = submitted.ok_or(EngineError::NotFound)?;
        self.inner.finish(done, started).await
    }

    /// Sets a message's flags and where it is filed, durably (`NotFound` if the message is
    /// not here).
    pub async fn set_filing(&self, user: &str, id: u128, flags: u32, filing: Filing) -> Result<()> {
        let _busy = self.busy();
        check_user(user)?;
        let started = Instant::now();
        let present = |state: &State<S::File>| state.index.message(user, id).map(|_| flags);
        let body = record::encode_filing(&filing);
        let submitted = self
            .inner
            .submit(
                RecordKind::FlagUpdate,
                None,
                ReplicaSet::NONE,
                id,
                user,
                &body,
                present,
                |_, _| IndexOp::Flags {
                    id,
                    flags,
                    filing: Some(filing),
                },
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

    /// Reads and verifies the record at `location`, which comes from this shard's index (an
    /// entry's location): `NotFound` if its segment is gone (compacted since), an
    /// [`EngineError::Invariant`] (the shard poisoned) if it lies outside what its segment holds.
    pub async fn read(
        &self,
        location: Location,
    ) -> Result<StoredRecord<ReadBytes<<S::File as StorageFile>::ReadBuf>>> {
        let (file, kept) = {
            let state = self.inner.state.borrow();
            let slot = state
                .segments
                .get(&location.segment)
                .ok_or(EngineError::NotFound)?;
            let (start, end) = (u64::from(location.offset), slot.end);
            let inside = invariant!(
                &self.inner.name,
                start >= crate::segment::SEGMENT_HEADER_BYTES
                    && start + u64::from(location.len) <= end
                    && location.len as usize >= record::HEADER_BYTES,
                "the index points at {location:?}, beyond the {end} bytes written to its segment"
            );
            if let Err(error) = inside {
                drop(state);
                return Err(self.poison(error));
            }
            (
                slot.file.clone(),
                state
                    .recent
                    .get(location)
                    .map(|(buf, range)| crate::outcomes::Shared { buf, range }),
            )
        };
        let buf = match kept {
            Some(shared) => ReadBytes::Memory(shared),
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
        // A record of this segment's file's earlier life is never served as this one.
        view.check_segment(location.segment, false)
            .map_err(|e| corrupt(e.to_string()))?;
        if view.encoded_len != location.len as usize {
            return Err(corrupt("record length differs from the index".into()));
        }
        let meta = view.meta;
        let user_start = record::HEADER_BYTES;
        let user_end = user_start + view.user.len();
        let annex_start = user_end + 4 * meta.replicas.len();
        let body_start = annex_start + view.annex.len();
        let body_end = body_start + view.body.len();
        Ok(StoredRecord {
            buf,
            meta,
            user: user_start..user_end,
            annex: annex_start..body_start,
            body: body_start..body_end,
        })
    }

    /// The annex the configured annotator makes of `body` (empty without one, or if it would
    /// not fit a record: a record of at most `record_bytes_max` is what a segment is sized for).
    fn annex_of(&self, body: &[u8]) -> Vec<u8> {
        let Some(annotate) = self.inner.config.annotate else {
            return Vec::new();
        };
        let mut annex = Vec::new();
        (annotate.0)(body, &mut annex);
        if annex.len() > record::ANNEX_BYTES_MAX
            || body.len().saturating_add(annex.len()) > self.inner.config.record_bytes_max
        {
            annex.clear();
        }
        annex
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
        let stored = self.read(location).await?;
        self.check_record(&stored, RecordKind::Put, user, id, location)?;
        Ok(stored)
    }

    /// The record the index pointed at is the one it was asked for: never serve another.
    fn check_record<B: std::ops::Deref<Target = [u8]>>(
        &self,
        stored: &StoredRecord<B>,
        kind: RecordKind,
        user: &str,
        id: u128,
        location: Location,
    ) -> Result<()> {
        let found = (stored.meta.kind, stored.user(), stored.meta.message_id);
        invariant!(
            &self.inner.name,
            found == (kind, user, id),
            "the index points {kind:?} {id} of {user} at {location:?}, which holds {found:?}"
        )
        .map_err(|error| self.poison(error))
    }

    /// Poisons the shard after a violated invariant; returns the error for the caller.
    fn poison(&self, error: EngineError) -> EngineError {
        crate::writer::poison(&self.inner, Vec::new(), &error);
        error
    }

    /// Whether the user has at least one message on this shard.
    pub fn has_messages(&self, user: &str) -> bool {
        self.inner.state.borrow().index.has_messages(user)
    }

    /// Users with messages on this shard whose profile here `picked` takes (a removed one
    /// included), without reading any profile.
    pub fn users_with_mail_where(&self, picked: impl Fn(&ProfileEntry) -> bool) -> Vec<String> {
        let state = self.inner.state.borrow();
        state
            .index
            .profile_users()
            .filter(|(user, profile)| picked(profile) && state.index.has_messages(user))
            .map(|(user, _)| user.to_owned())
            .collect()
    }

    /// The timestamp (HLC) of the user's oldest message on this shard.
    pub fn oldest_message_hlc(&self, user: &str) -> Option<u64> {
        self.inner.state.borrow().index.oldest_hlc(user)
    }

    /// What the user's messages on this shard add up to, by replica set (from the index: no
    /// message is read).
    pub fn usage(&self, user: &str) -> Vec<crate::index::Usage> {
        self.inner.state.borrow().index.usage(user).to_vec()
    }

    /// Whether the user has a profile record on this shard, a removed one included (where
    /// the user's records live), without reading it.
    pub fn has_profile(&self, user: &str) -> bool {
        self.inner.state.borrow().index.profile(user).is_some()
    }

    /// Whether the user exists here: their newest profile is not a removed one (an empty
    /// profile is the tombstone of a deleted user; it wins by timestamp like any profile).
    pub fn has_live_profile(&self, user: &str) -> bool {
        self.inner
            .state
            .borrow()
            .index
            .profile(user)
            .is_some_and(|p| !p.is_removed())
    }

    /// Number of profiles on this shard that `counted` takes (removed ones never are).
    pub fn profile_count(&self, counted: impl Fn(&str) -> bool) -> usize {
        self.inner
            .state
            .borrow()
            .index
            .profile_users()
            .filter(|(name, p)| !p.is_removed() && counted(name))
            .count()
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
            Some(location) => {
                let stored = self.read(location).await?;
                self.check_record(&stored, RecordKind::ProfilePut, user, 0, location)?;
                Ok(Some(stored.body().to_vec()))
            }
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
        self.inner.idle_wake.notify();
        self.inner.space_wake.notify();
        self.inner.writer_done.wait().await;
        // No background file work may outlive the shard (glommio cannot cope with a directory
        // removed under a file it is opening).
        self.settled().await;
        while self.inner.state.borrow().compacting {
            crate::executor::sleep(std::time::Duration::from_millis(2)).await;
        }
        while self.inner.state.borrow().zeroing.is_some() {
            self.inner.zero_done.notified().await;
        }
        // Zeros written ahead of the log since its last commit: synced too, so a closed shard
        // leaves nothing unsynced (they would read as zeros anyway).
        let files: Vec<_> = {
            let state = self.inner.state.borrow();
            let mut files: Vec<_> = state
                .segments
                .values()
                .next_back()
                .map(|s| s.file.clone())
                .into_iter()
                .collect();
            if let Spare::Ready(_, file, _) = &state.spare {
                files.push(file.clone());
            }
            files
        };
        if self.inner.state.borrow().poisoned.is_none() {
            for file in files {
                file.sync_data().await?;
            }
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
