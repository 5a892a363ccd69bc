//! Helpers shared by the engine's integration tests.
#![allow(dead_code)]

use std::time::Duration;

use porcupine_engine::{CompactionConfig, EngineConfig};

/// Small segments so tests cross segment boundaries; background compaction off unless asked.
pub fn small_config() -> EngineConfig {
    EngineConfig {
        segment_bytes: 64 << 10,
        batch_bytes_max: 16 << 10,
        queue_bytes_max: 256 << 10,
        record_bytes_max: 32 << 10,
        checkpoint_every_bytes: u64::MAX,
        compaction: CompactionConfig {
            check_interval: Duration::ZERO,
            rate_bytes_per_s: 1 << 30,
            ..CompactionConfig::default()
        },
        ..EngineConfig::default()
    }
}

/// A deterministic body for message `id`, `len` bytes long, so content can be checked later.
pub fn body_for(id: u128, len: usize) -> Vec<u8> {
    let mut state = (id as u64) ^ 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            b'a' + (state % 26) as u8
        })
        .collect()
}

/// Runs an async test body on a glommio executor.
pub fn run<T: Send + 'static, Fut: std::future::Future<Output = T> + 'static>(
    f: impl FnOnce() -> Fut + Send + 'static,
) -> T {
    porcupine_runtime::run_local(f).expect("executor")
}
