//! The node's monotonic clock in milliseconds, the time the pure machines are given (loads,
//! membership, replication). One origin for the whole process, so times taken on different
//! cores compare. Also the one sleep a periodic duty takes, which a stop cuts short.

use std::sync::OnceLock;
use std::time::Instant;

static ORIGIN: OnceLock<Instant> = OnceLock::new();

/// Milliseconds since the process first asked.
pub fn now_ms() -> u64 {
    let origin = ORIGIN.get_or_init(Instant::now);
    u64::try_from(origin.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Sleeps `duration` on this core's executor; false if the node began to stop meanwhile (a
/// duty's loop then ends).
pub async fn sleep_unless_stopping(
    stop: &flume::Receiver<()>,
    duration: std::time::Duration,
) -> bool {
    let sleeping = async {
        glommio::timer::sleep(duration).await;
        true
    };
    let stopping = async {
        let _ = stop.recv_async().await;
        false
    };
    futures_lite::future::or(sleeping, stopping).await
}
