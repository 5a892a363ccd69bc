//! What a shard's operations answer: the bytes of a record read back, a stored record, the
//! stamp of a replicated update, how a put or a delete went, and a shard's counts.

use std::ops::Range;
use std::rc::Rc;

use crate::index::{MessageEntry, Tomb};
use crate::record::RecordMeta;
use crate::storage::IoBuffer;

/// The bytes of a record read back: from the disk, or from a recent batch's buffer, shared.
#[derive(Debug)]
pub enum ReadBytes<B> {
    Disk(B),
    Memory(Shared),
}

/// A range of a buffer the writer wrote from, shared with the shard's recent writes.
pub struct Shared {
    pub(crate) buf: Rc<dyn IoBuffer>,
    pub(crate) range: Range<usize>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("range", &self.range)
            .finish()
    }
}

impl<B: std::ops::Deref<Target = [u8]>> std::ops::Deref for ReadBytes<B> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Self::Disk(bytes) => bytes,
            Self::Memory(shared) => &shared.buf.bytes()[shared.range.clone()],
        }
    }
}

/// A record read back from the log, verified.
#[derive(Debug)]
pub struct StoredRecord<R> {
    pub(crate) buf: R,
    pub meta: RecordMeta,
    pub(crate) user: Range<usize>,
    pub(crate) annex: Range<usize>,
    pub(crate) body: Range<usize>,
}

impl<R: std::ops::Deref<Target = [u8]>> StoredRecord<R> {
    pub fn body(&self) -> &[u8] {
        &self.buf[self.body.clone()]
    }
    /// What the annotator made of the body when it was stored (empty: nothing, or stored
    /// before annexes or without an annotator).
    pub fn annex(&self) -> &[u8] {
        &self.buf[self.annex.clone()]
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
