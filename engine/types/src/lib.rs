//! The vocabulary that the storage engine and the pure cluster logic share, kept in a crate of
//! its own so that the cluster's state machines can use it without pulling in the engine (and
//! with it glommio and io_uring).
//!
//! - [`UpdateKind`] and [`supersedes`]: what a replicated update did to a message, and which of
//!   two updates of one message wins.
//! - [`user_key`]: the stable 64-bit key of a user name, which also places a user on a shard.
//! - [`REPLICAS_MAX`]: the most nodes one update's replica set can name.

/// Largest replica set an update can carry (the log record's limit): shared with the cluster
/// so that a set rebuilt by healing is never cut short on its way to the log.
pub const REPLICAS_MAX: usize = 4;

/// What a replicated update did to its message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UpdateKind {
    Put,
    Delete,
}

/// Whether update `new` of a message replaces update `old` of it (kind, HLC): a delete
/// supersedes a put; a put never supersedes a delete; otherwise the newer wins.
pub fn supersedes(old: (UpdateKind, u64), new: (UpdateKind, u64)) -> bool {
    match (old.0, new.0) {
        (UpdateKind::Delete, UpdateKind::Put) => false,
        (UpdateKind::Put, UpdateKind::Delete) => true,
        _ => new.1 > old.1,
    }
}

/// Stable 64-bit key of a user name; also what places a user on a shard. Stored in records and
/// checkpoints: changing it is a format change.
pub fn user_key(user: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(user.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delete_beats_any_put_and_otherwise_the_newer_wins() {
        assert!(supersedes((UpdateKind::Put, 9), (UpdateKind::Delete, 1)));
        assert!(!supersedes((UpdateKind::Delete, 1), (UpdateKind::Put, 9)));
        assert!(supersedes((UpdateKind::Put, 1), (UpdateKind::Put, 2)));
        assert!(!supersedes((UpdateKind::Put, 2), (UpdateKind::Put, 2)));
        assert!(!supersedes(
            (UpdateKind::Delete, 3),
            (UpdateKind::Delete, 2)
        ));
    }

    #[test]
    fn the_user_key_is_the_stored_one() {
        // Records and checkpoints on disk carry this value: it must never change.
        assert_eq!(user_key(""), 0x2d06800538d394c2);
    }
}
