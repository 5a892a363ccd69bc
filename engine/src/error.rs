//! The engine's typed errors: what a caller can act on (retry, 452, 451, report) without parsing text.

use std::io;
use std::path::PathBuf;

/// Everything the engine can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The disk is full; nothing was written and the shard is intact. SMTP maps this to 452.
    #[error("no space left on the device holding {path}")]
    NoSpace { path: PathBuf },
    /// An I/O operation failed (EIO and friends). SMTP maps this to 451.
    #[error("{op} failed on {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A write or sync failed earlier; the shard refuses writes rather than guess what reached
    /// the disk. Reopening the shard (a restart) recovers from what is durable.
    #[error("shard {shard} stopped accepting writes after a failed {cause}; restart the node to recover")]
    Poisoned { shard: String, cause: String },
    /// The engine's own bookkeeping broke one of its invariants (a bug, or memory damage):
    /// the shard stopped accepting writes, as after a failed write. Reopening the shard (a
    /// restart) rebuilds its state from what is durable.
    #[error("internal invariant violated in shard {shard}: {what}")]
    Invariant { shard: String, what: String },
    /// Bytes on disk failed a check; they are never served.
    #[error("corrupt data in {path} at offset {offset}: {reason}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("record of {size} bytes exceeds the limit of {max} bytes")]
    TooLarge { size: usize, max: usize },
    #[error("user name is empty, longer than {max} bytes or not valid")]
    BadUser { max: usize },
    #[error("no such message")]
    NotFound,
    /// Compaction of a segment met a concurrent change and left the segment for a later pass.
    #[error("segment {segment} changed while it was compacted; it will be compacted later")]
    Busy { segment: u32 },
    /// The shard is shutting down.
    #[error("shard is closed")]
    Closed,
    /// The I/O runtime could not start; the message says what to do.
    #[error("{0}")]
    Setup(String),
}

impl EngineError {
    /// Classifies an I/O error from a path and an operation.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        let path = path.into();
        // glommio's errors reach us re-wrapped: the errno is gone, the kind survives.
        let full = matches!(source.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
            || matches!(
                source.kind(),
                io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
            );
        if full {
            EngineError::NoSpace { path }
        } else {
            EngineError::Io { op, path, source }
        }
    }

    /// True when retrying later may succeed without operator action (SMTP 452 rather than 451).
    pub fn is_transient(&self) -> bool {
        matches!(self, EngineError::NoSpace { .. } | EngineError::Closed)
    }
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_told_by_errno_or_by_kind() {
        let by_errno = EngineError::io("write", "/d", io::Error::from_raw_os_error(libc::ENOSPC));
        assert!(matches!(by_errno, EngineError::NoSpace { .. }));
        // As glommio hands it on: a new error of the same kind, its errno only in the text.
        let rewrapped = io::Error::new(
            io::ErrorKind::StorageFull,
            "No space left on device (os error 28)",
        );
        assert!(matches!(
            EngineError::io("write", "/d", rewrapped),
            EngineError::NoSpace { .. }
        ));
        let quota = io::Error::new(io::ErrorKind::QuotaExceeded, "quota");
        assert!(EngineError::io("write", "/d", quota).is_transient());
        let eio = io::Error::from_raw_os_error(libc::EIO);
        assert!(matches!(
            EngineError::io("write", "/d", eio),
            EngineError::Io { .. }
        ));
    }
}
