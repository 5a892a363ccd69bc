//! porcupine's storage engine: per-core, append-only logs of mailbox fragments on io_uring.
//!
//! Layout of the crate, from the disk up:
//! - [`storage`]: the disk edge (glommio DMA files) behind one small trait; fault injection;
//!   [`throttle`]: a simulated disk speed per data directory, for experiments;
//!   [`memory_storage`]: files in memory with power loss modelled, for tests.
//! - [`executor`]: where background tasks run (glommio, or a plain executor with virtual time
//!   for tests without io_uring).
//! - [`record`]: the on-disk record format, defined once. [`segment`]: segment files.
//! - [`writer`]: group commit, draining the commit queue (`commit_queue.rs`) it shares with
//!   the shard's appenders; `zeroer.rs`: zeros ahead of the log in idle time. [`scan`] and
//!   [`recovery`]: reading the log back after a crash.
//! - [`index`] and [`checkpoint`]: the in-memory index and its snapshot.
//! - `invariant.rs`: the index's and the writer's invariants, checked in release builds too;
//!   a violation poisons the shard with [`EngineError::Invariant`] instead of panicking.
//! - [`compaction`]: reclaiming dead space without losing or resurrecting anything.
//! - [`shard`]: the API the node uses, answering with [`outcomes`]; [`placement`]: which shard holds a user.
//!
//! The executors it runs on are `porcupine-runtime`'s (glommio), or in tests without io_uring
//! its own [`PlainExecutor`] over a [`MemoryStorage`]; the types it shares with the cluster's
//! pure logic (update kinds, which update wins, user keys) are `porcupine-types`'.
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

// First: its macro is used by the modules below.
#[macro_use]
mod invariant;

pub mod checkpoint;
mod commit_queue;
pub mod compaction;
pub mod config;
pub mod error;
pub mod executor;
pub mod fsck;
pub mod hlc;
pub mod index;
pub mod memory_storage;
pub mod metrics;
pub mod outcomes;
pub mod placement;
mod queued;
pub mod recent;
pub mod record;
pub mod recovery;
pub mod scan;
pub mod segment;
pub mod shard;
mod signal;
pub mod storage;
pub mod throttle;
pub mod writer;
mod zeroer;

pub use config::{Annotator, CompactionConfig, EngineConfig};
pub use error::{EngineError, Result};
pub use executor::PlainExecutor;
pub use index::{Filing, Location, MessageEntry, ProfileEntry, Usage};
pub use index::{PendingUpdate, Tomb, UpdateKind};
pub use memory_storage::MemoryStorage;
pub use placement::Placement;
pub use record::{ReplicaSet, Retired};
pub use recovery::RecoveryReport;
pub use shard::{DeleteOutcome, PutOutcome, ReadBytes, Shard, ShardStats, Stamp, StoredRecord};
pub use storage::{DmaStorage, EioSwitch, FaultyStorage, Storage};
pub use throttle::{DiskThrottle, ThrottleLimits};
