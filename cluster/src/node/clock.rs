//! The node's monotonic clock in milliseconds, the time the pure machines are given (loads,
//! membership, replication). One origin for the whole process, so times taken on different
//! cores compare.

use std::sync::OnceLock;
use std::time::Instant;

static ORIGIN: OnceLock<Instant> = OnceLock::new();

/// Milliseconds since the process first asked.
pub fn now_ms() -> u64 {
    let origin = ORIGIN.get_or_init(Instant::now);
    u64::try_from(origin.elapsed().as_millis()).unwrap_or(u64::MAX)
}
