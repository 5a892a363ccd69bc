//! Hybrid logical clock: timestamps that follow wall time but never go backwards.
//!
//! A timestamp is `milliseconds since the Unix epoch << 16 | counter`. It orders updates even
//! when the wall clock steps back or two updates fall in the same millisecond; the node id in
//! each record breaks the remaining ties across nodes.

use std::time::{SystemTime, UNIX_EPOCH};

const COUNTER_BITS: u32 = 16;

/// One clock per shard (cores never share it, so no atomics are needed).
#[derive(Debug, Default)]
pub struct HybridClock {
    last: u64,
}

impl HybridClock {
    pub fn new() -> Self {
        Self::default()
    }

    /// A timestamp greater than every one this clock has issued or observed.
    pub fn now(&mut self) -> u64 {
        let wall = wall_millis() << COUNTER_BITS;
        self.last = wall.max(self.last + 1);
        self.last
    }

    /// Moves the clock past a timestamp seen elsewhere (a recovered record, a peer's update).
    pub fn observe(&mut self, seen: u64) {
        self.last = self.last.max(seen);
    }
}

/// Milliseconds since the Unix epoch encoded in a timestamp.
pub fn millis_of(timestamp: u64) -> u64 {
    timestamp >> COUNTER_BITS
}

fn wall_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strictly_increasing_even_past_a_future_observation() {
        let mut clock = HybridClock::new();
        let a = clock.now();
        let future = a + (10_000 << COUNTER_BITS);
        clock.observe(future);
        let b = clock.now();
        assert!(b > future);
        let c = clock.now();
        assert!(c > b);
        assert!(millis_of(a) > 1_600_000_000_000);
    }
}
