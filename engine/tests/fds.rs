//! Open descriptors stay bounded: two per segment while a shard is open, none after close.

mod common;

use common::{body_for, run, small_config};
use porcupine_engine::{DmaStorage, Shard};

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn descriptors_are_two_per_segment_and_released_on_close() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let before = open_fds();
        let (shard, _) = Shard::open(DmaStorage::default(), &path, small_config(), "t")
            .await
            .unwrap();
        for id in 0..400u128 {
            shard
                .append_message("u@x", id, &body_for(id, 3000), 0)
                .await
                .unwrap();
        }
        let segments = shard.stats().segments;
        shard.close().await.unwrap();
        let (shard, _) = Shard::open(DmaStorage::default(), &path, small_config(), "t")
            .await
            .unwrap();
        glommio::timer::sleep(std::time::Duration::from_millis(100)).await;
        let during = open_fds() - before;
        shard.close().await.unwrap();
        glommio::timer::sleep(std::time::Duration::from_millis(100)).await;
        let after = open_fds() - before;
        eprintln!("segments {segments}: {during} descriptors open, {after} after close");
        assert!(
            during <= 2 * (segments + 2) + 4,
            "{during} descriptors for {segments} segments"
        );
        assert!(after <= 4, "{after} descriptors left after close");
    });
}
