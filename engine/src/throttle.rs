//! A simulated disk speed for one data directory: an IOPS and a bandwidth limit that every
//! read, write and sync of the directory's files passes through, so one machine can stand in
//! for slow and fast disks in experiments. Off unless configured.
//!
//! The disk is modelled as one server that takes each operation in turn: an operation of `b`
//! bytes occupies it for `max(1 / iops, b / bytes_per_s)`, and completes when the disk has
//! served everything before it and then it. The caller waits until that completion time, then
//! does the real I/O, so a throttled directory shows both the limit's throughput and its
//! latency (a queue forms when callers outrun it). Shared by every core's shard on the
//! directory, as a disk is: the state is one atomic, no lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Limits of a simulated disk; `None` leaves that dimension unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThrottleLimits {
    pub iops: Option<u32>,
    pub bytes_per_s: Option<u64>,
}

impl ThrottleLimits {
    /// Whether anything is limited.
    pub fn is_limited(&self) -> bool {
        self.iops.is_some() || self.bytes_per_s.is_some()
    }

    /// Nanoseconds the disk is busy with one operation of `bytes` bytes.
    fn service_ns(&self, bytes: u64) -> u64 {
        let per_op = self
            .iops
            .map_or(0, |iops| 1_000_000_000 / u64::from(iops.max(1)));
        let transfer = self.bytes_per_s.map_or(0, |rate| {
            (u128::from(bytes) * 1_000_000_000 / u128::from(rate.max(1))) as u64
        });
        per_op.max(transfer)
    }
}

impl std::fmt::Display for ThrottleLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.iops {
            Some(iops) => write!(f, "{iops} IOPS")?,
            None => write!(f, "unlimited IOPS")?,
        }
        match self.bytes_per_s {
            Some(rate) => write!(f, ", {:.1} MB/s", rate as f64 / 1e6),
            None => write!(f, ", unlimited MB/s"),
        }
    }
}

/// One simulated disk (see the module comment).
#[derive(Debug)]
pub struct DiskThrottle {
    limits: ThrottleLimits,
    started: Instant,
    /// When the simulated disk is next free, in nanoseconds since `started`.
    free_at_ns: AtomicU64,
}

impl DiskThrottle {
    pub fn new(limits: ThrottleLimits) -> Self {
        Self {
            limits,
            started: Instant::now(),
            free_at_ns: AtomicU64::new(0),
        }
    }

    pub fn limits(&self) -> ThrottleLimits {
        self.limits
    }

    /// Books an operation of `bytes` bytes arriving at `now_ns`; when it completes.
    fn book(&self, now_ns: u64, bytes: u64) -> u64 {
        let service = self.limits.service_ns(bytes);
        let mut free_at = self.free_at_ns.load(Ordering::Relaxed);
        loop {
            let done = free_at.max(now_ns) + service;
            match self.free_at_ns.compare_exchange_weak(
                free_at,
                done,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return done,
                Err(current) => free_at = current,
            }
        }
    }

    /// How long an operation of `bytes` bytes starting now must wait.
    pub fn delay(&self, bytes: u64) -> Duration {
        let now = self.started.elapsed().as_nanos() as u64;
        Duration::from_nanos(self.book(now, bytes).saturating_sub(now))
    }

    /// Waits as the simulated disk would take to serve an operation of `bytes` bytes.
    pub async fn admit(&self, bytes: u64) {
        let delay = self.delay(bytes);
        if !delay.is_zero() {
            glommio::timer::sleep(delay).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn operations_queue_behind_each_other_at_the_iops_limit() {
        let disk = DiskThrottle::new(ThrottleLimits {
            iops: Some(100),
            bytes_per_s: None,
        });
        // Ten small operations at once: the last completes after ten service times.
        let done: Vec<u64> = (0..10).map(|_| disk.book(0, 4096)).collect();
        assert_eq!(done.first(), Some(&(10 * MS)));
        assert_eq!(done.last(), Some(&(100 * MS)));
        // An idle disk serves a later operation at once.
        assert_eq!(disk.book(500 * MS, 4096), 510 * MS);
    }

    #[test]
    fn large_operations_are_bound_by_bandwidth() {
        let disk = DiskThrottle::new(ThrottleLimits {
            iops: Some(1000),
            bytes_per_s: Some(10_000_000),
        });
        // 1 MB at 10 MB/s: 100 ms, more than the 1 ms an operation takes at 1000 IOPS.
        assert_eq!(disk.book(0, 1_000_000), 100 * MS);
        // A sync (no bytes) costs one operation.
        assert_eq!(disk.book(0, 0), 101 * MS);
    }

    #[test]
    fn no_limits_never_delay() {
        let disk = DiskThrottle::new(ThrottleLimits::default());
        assert!(!disk.limits().is_limited());
        assert_eq!(disk.book(7, 1 << 30), 7);
        assert_eq!(disk.delay(1 << 20), Duration::ZERO);
    }
}
