//! Compaction under concurrent deletes: live records survive with their bytes and flags,
//! deleted ones never come back — in memory, after a reopen from the checkpoint, and after a
//! full scan of the log without it.

mod common;

use std::collections::BTreeMap;

use common::{body_for, run, small_config};
use porcupine_engine::{DmaStorage, Shard};

fn len_of(id: u128) -> usize {
    300 + (id as usize * 97) % 2500
}

#[test]
fn compaction_with_concurrent_deletes_loses_nothing_and_resurrects_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (shard, _) = Shard::open(DmaStorage::default(), &path, small_config(), "t")
            .await
            .unwrap();
        let users = ["a@x", "b@x", "c@x"];
        for id in 0..1500u128 {
            let user = users[(id % 3) as usize];
            shard
                .append_message(user, id, &body_for(id, len_of(id)), 0)
                .await
                .unwrap();
        }
        // Flags on some survivors, so compaction must carry them forward.
        for id in (0..1500u128).filter(|id| id % 10 == 1) {
            shard
                .set_flags(users[(id % 3) as usize], id, 7)
                .await
                .unwrap();
        }
        // Deletes run concurrently with repeated compaction.
        let deletes_done = std::rc::Rc::new(std::cell::Cell::new(false));
        let deleter = {
            let shard = shard.clone();
            let deletes_done = deletes_done.clone();
            glommio::spawn_local(async move {
                for id in (0..1500u128).filter(|id| id % 10 != 1 && id % 10 != 5) {
                    shard
                        .delete_message(users[(id % 3) as usize], id)
                        .await
                        .unwrap();
                    if id % 50 == 0 {
                        glommio::yield_if_needed().await;
                    }
                }
                deletes_done.set(true);
            })
        };
        let mut compacted = 0;
        let mut rounds = 0;
        loop {
            rounds += 1;
            match shard.compact_once().await {
                Ok(Some(_)) => compacted += 1,
                Err(porcupine_engine::EngineError::Busy { .. }) => {}
                Err(error) => panic!("{error}"),
                Ok(None) if deletes_done.get() => break,
                Ok(None) => glommio::timer::sleep(std::time::Duration::from_millis(1)).await,
            }
            assert!(rounds < 100_000, "compaction did not settle");
        }
        deleter.await;
        loop {
            match shard.compact_once().await {
                Ok(Some(_)) => compacted += 1,
                Ok(None) => break,
                Err(porcupine_engine::EngineError::Busy { .. }) => {}
                Err(error) => panic!("{error}"),
            }
        }
        assert!(compacted >= 3, "only {compacted} segments compacted");
        assert!(shard.metrics().compacted_segments >= 3);

        let expect: BTreeMap<u128, u32> = (0..1500u128)
            .filter(|id| id % 10 == 1 || id % 10 == 5)
            .map(|id| (id, if id % 10 == 1 { 7 } else { 0 }))
            .collect();
        let check = |shard: Shard| async move {
            let mut seen = BTreeMap::new();
            for user in users {
                for m in shard.messages(user) {
                    let record = shard.read(m.location).await.unwrap();
                    assert_eq!(
                        record.body(),
                        &body_for(m.id, len_of(m.id))[..],
                        "body of {}",
                        m.id
                    );
                    seen.insert(m.id, m.flags);
                }
            }
            seen
        };
        assert_eq!(check(shard.clone()).await, expect);
        let segments_after = shard.stats().segments;
        shard.close().await.unwrap();

        let (shard, report) = Shard::open(DmaStorage::default(), &path, small_config(), "t")
            .await
            .unwrap();
        assert!(report.from_checkpoint);
        assert_eq!(
            check(shard.clone()).await,
            expect,
            "after reopen from the checkpoint"
        );
        shard.close().await.unwrap();

        std::fs::remove_file(path.join("index.ckpt")).unwrap();
        let (shard, report) = Shard::open(DmaStorage::default(), &path, small_config(), "t")
            .await
            .unwrap();
        assert!(!report.from_checkpoint);
        // Each reopen promotes the spare segment and prepares another: one more per reopen.
        assert!(
            report.segments <= segments_after + 2,
            "{} segments after compaction to {segments_after}",
            report.segments
        );
        assert_eq!(
            check(shard.clone()).await,
            expect,
            "after a full scan without the checkpoint"
        );
        shard.close().await.unwrap();
    });
}
