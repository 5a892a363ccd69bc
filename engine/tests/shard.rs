//! A shard's operations end to end on a real file system: append, read, delete, flags,
//! profiles, reopen, checkpoints, segment roll-over, and injected disk faults.

mod common;

use common::{body_for, run, small_config};
use porcupine_engine::storage::FaultyStorage;
use porcupine_engine::{DmaStorage, EngineError, Shard};

#[test]
fn append_read_delete_flags_profile_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (shard, report) = Shard::open(DmaStorage::default(), &path, small_config(), "t")
            .await
            .unwrap();
        assert_eq!(report.messages, 0);
        for id in 1..=50u128 {
            let user = if id % 2 == 0 { "even@x" } else { "odd@x" };
            shard
                .append_message(user, id, &body_for(id, 100 + id as usize * 70), 0)
                .await
                .unwrap();
        }
        assert_eq!(shard.messages("even@x").len(), 25);
        let record = shard.read_message("odd@x", 7).await.unwrap();
        assert_eq!(record.body(), &body_for(7, 100 + 7 * 70)[..]);
        assert_eq!(record.user(), "odd@x");
        shard.delete_message("odd@x", 7).await.unwrap();
        assert!(matches!(
            shard.delete_message("odd@x", 7).await,
            Err(EngineError::NotFound)
        ));
        assert!(matches!(
            shard.read_message("odd@x", 7).await,
            Err(EngineError::NotFound)
        ));
        shard.set_flags("even@x", 8, 0b101).await.unwrap();
        shard.put_profile("even@x", b"v1").await.unwrap();
        shard.put_profile("even@x", b"v2").await.unwrap();
        assert!(
            shard.stats().segments >= 2,
            "50 messages of ~2 KiB cross 64 KiB segments"
        );
        shard.close().await.unwrap();

        for round in 0..2 {
            if round == 1 {
                // Without the checkpoint the whole log is scanned; the result must be the same.
                std::fs::remove_file(path.join("index.ckpt")).unwrap();
            }
            let (shard, report) = Shard::open(DmaStorage::default(), &path, small_config(), "t")
                .await
                .unwrap();
            assert_eq!(report.from_checkpoint, round == 0);
            assert_eq!(report.messages, 49);
            assert!(shard.messages("odd@x").iter().all(|m| m.id != 7));
            let flagged = shard
                .messages("even@x")
                .into_iter()
                .find(|m| m.id == 8)
                .unwrap();
            assert_eq!(flagged.flags, 0b101);
            assert_eq!(
                shard.read_profile("even@x").await.unwrap().as_deref(),
                Some(&b"v2"[..])
            );
            for m in shard.messages("even@x") {
                let len = 100 + m.id as usize * 70;
                assert_eq!(
                    shard.read(m.location).await.unwrap().body(),
                    &body_for(m.id, len)[..]
                );
            }
            shard.close().await.unwrap();
        }
    });
}

#[test]
fn concurrent_appends_share_syncs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let mut config = small_config();
        config.segment_bytes = 4 << 20;
        config.batch_bytes_max = 1 << 20;
        config.queue_bytes_max = 4 << 20;
        let (shard, _) = Shard::open(DmaStorage::default(), &path, config, "t")
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for writer in 0..32u128 {
            let shard = shard.clone();
            tasks.push(glommio::spawn_local(async move {
                for n in 0..20u128 {
                    let id = writer * 1000 + n;
                    shard
                        .append_message("u@x", id, &body_for(id, 4700), 0)
                        .await
                        .unwrap();
                }
            }));
        }
        for task in tasks {
            task.await;
        }
        let metrics = shard.metrics();
        assert_eq!(metrics.records, 640);
        assert!(
            metrics.syncs < 640 / 4,
            "expected group commit, got {} syncs for 640 records",
            metrics.syncs
        );
        assert_eq!(metrics.ack_micros.count, 640);
        shard.close().await.unwrap();
    });
}

#[test]
fn limits_give_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (shard, _) = Shard::open(DmaStorage::default(), &path, small_config(), "t")
            .await
            .unwrap();
        let big = vec![b'x'; 40 << 10];
        assert!(matches!(
            shard.append_message("u@x", 1, &big, 0).await,
            Err(EngineError::TooLarge { .. })
        ));
        assert!(matches!(
            shard.append_message("", 1, b"x", 0).await,
            Err(EngineError::BadUser { .. })
        ));
        assert!(matches!(
            shard.append_message("a\r\nb", 1, b"x", 0).await,
            Err(EngineError::BadUser { .. })
        ));
        shard.append_message("u@x", 2, b"fine", 0).await.unwrap();
        shard.close().await.unwrap();
        assert!(matches!(
            shard.append_message("u@x", 3, b"late", 0).await,
            Err(EngineError::Closed)
        ));
    });
}

#[test]
fn failed_sync_poisons_the_shard_and_reopen_recovers_what_was_durable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let storage = FaultyStorage::new(DmaStorage::default());
        let plan = storage.plan.clone();
        let (shard, _) = Shard::open(storage, &path, small_config(), "t")
            .await
            .unwrap();
        // Let the spare segment's own sync happen first.
        glommio::timer::sleep(std::time::Duration::from_millis(50)).await;
        for id in 1..=5u128 {
            shard
                .append_message("u@x", id, &body_for(id, 300), 0)
                .await
                .unwrap();
        }
        plan.syncs_before_eio.set(Some(0));
        let failed = shard.append_message("u@x", 6, &body_for(6, 300), 0).await;
        assert!(matches!(failed, Err(EngineError::Io { .. })), "{failed:?}");
        let refused = shard.append_message("u@x", 7, b"x", 0).await;
        assert!(
            matches!(refused, Err(EngineError::Poisoned { .. })),
            "{refused:?}"
        );
        assert!(shard.stats().poisoned.is_some());
        // Reads still work.
        assert_eq!(
            shard.read_message("u@x", 3).await.unwrap().body(),
            &body_for(3, 300)[..]
        );
        shard.close().await.unwrap();

        let (shard, _) = Shard::open(DmaStorage::default(), &path, small_config(), "t")
            .await
            .unwrap();
        let ids: Vec<u128> = shard.messages("u@x").iter().map(|m| m.id).collect();
        // 6 was written but never acknowledged: it may or may not be there; 1..=5 must be.
        assert!(ids.starts_with(&[1, 2, 3, 4, 5]), "{ids:?}");
        shard.append_message("u@x", 8, b"after", 0).await.unwrap();
        shard.close().await.unwrap();
    });
}

#[test]
fn a_full_disk_fails_appends_with_no_space_without_poisoning() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let storage = FaultyStorage::new(DmaStorage::default());
        let plan = storage.plan.clone();
        plan.disk_full.set(true);
        // The first segment is created before the disk fills.
        plan.disk_full.set(false);
        let (shard, _) = Shard::open(storage, &path, small_config(), "t")
            .await
            .unwrap();
        glommio::timer::sleep(std::time::Duration::from_millis(50)).await;
        // Fill segment 1 and the ready spare (2); segment 3 cannot be created.
        plan.disk_full.set(true);
        let mut id = 0u128;
        let error = loop {
            id += 1;
            match shard
                .append_message("u@x", id, &body_for(id, 2000), 0)
                .await
            {
                Ok(_) => continue,
                Err(error) => break error,
            }
        };
        assert!(matches!(error, EngineError::NoSpace { .. }), "{error:?}");
        assert!(error.is_transient());
        assert!(shard.stats().poisoned.is_none());
        let acked = id - 1;
        plan.disk_full.set(false);
        shard
            .append_message("u@x", 1_000, b"space again", 0)
            .await
            .unwrap();
        shard.close().await.unwrap();
        let (shard, _) = Shard::open(DmaStorage::default(), &path, small_config(), "t")
            .await
            .unwrap();
        let ids: Vec<u128> = shard.messages("u@x").iter().map(|m| m.id).collect();
        let expected: Vec<u128> = (1..=acked).chain([1_000]).collect();
        assert_eq!(ids, expected);
        shard.close().await.unwrap();
    });
}

#[test]
fn a_throttled_disk_shows_its_queue_as_load() {
    use porcupine_engine::{DiskThrottle, ThrottleLimits};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        // A disk that takes 20 ms per operation: appends queue behind each other.
        let disk = Arc::new(DiskThrottle::new(ThrottleLimits {
            iops: Some(50),
            bytes_per_s: None,
        }));
        let storage = DmaStorage::throttled(disk);
        assert_eq!(storage.throttle().and_then(|l| l.iops), Some(50));
        let (shard, _) = Shard::open(storage, &path, small_config(), "t")
            .await
            .unwrap();
        shard.settled().await;
        assert_eq!(shard.load(), 0);
        let writers: Vec<_> = (1..=8u128)
            .map(|id| {
                let shard = shard.clone();
                glommio::spawn_local(async move {
                    shard
                        .append_message("a@x", id, &body_for(id, 500), 0)
                        .await
                        .unwrap();
                })
            })
            .collect();
        // Let every writer enqueue: they wait on the simulated disk, and count as load.
        glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
        assert_eq!(shard.load(), 8);
        assert_eq!(
            shard
                .load_gauge()
                .load(std::sync::atomic::Ordering::Relaxed),
            8
        );
        for writer in writers {
            writer.await;
        }
        assert_eq!(shard.load(), 0);
        assert_eq!(shard.messages("a@x").len(), 8);
        // Reads pass through the throttle too, and come back intact.
        let record = shard.read_message("a@x", 3).await.unwrap();
        assert_eq!(record.body(), &body_for(3, 500)[..]);
        shard.close().await.unwrap();
    });
}

#[test]
fn segments_written_out_with_several_writes_in_flight_hold_their_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        // 1 MiB segments are written out in several pieces, 4 at a time.
        let config = porcupine_engine::EngineConfig {
            segment_bytes: 1 << 20,
            io_depth: 4,
            ..small_config()
        };
        let (shard, _) = Shard::open(DmaStorage::default(), &path, config.clone(), "t")
            .await
            .unwrap();
        for id in 1..=300u128 {
            shard
                .append_message("a@x", id, &body_for(id, 9000), 0)
                .await
                .unwrap();
        }
        assert!(shard.stats().segments >= 3, "{:?}", shard.stats());
        shard.close().await.unwrap();
        let (shard, report) = Shard::open(DmaStorage::default(), &path, config, "t")
            .await
            .unwrap();
        assert_eq!(report.messages, 300);
        for id in [1u128, 150, 300] {
            let record = shard.read_message("a@x", id).await.unwrap();
            assert_eq!(record.body(), &body_for(id, 9000)[..]);
        }
        shard.close().await.unwrap();
    });
}

#[test]
fn reads_give_the_same_bytes_from_the_recent_batches_and_from_the_disk() {
    // A budget smaller than what is written: the newest records come from memory, the oldest
    // from the disk; with no budget, all from the disk. Every body must be exact either way,
    // also after the recent copies are gone with a reopen.
    for cache_bytes in [0usize, 48 << 10, 64 << 20] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        run(move || async move {
            let config = porcupine_engine::EngineConfig {
                read_cache_bytes: cache_bytes,
                ..small_config()
            };
            let (shard, _) = Shard::open(DmaStorage::default(), &path, config.clone(), "t")
                .await
                .unwrap();
            let len = |id: u128| 50 + (id as usize * 37) % 3000;
            let tasks: Vec<_> = (1..=120u128)
                .map(|id| {
                    let shard = shard.clone();
                    glommio::spawn_local(async move {
                        shard
                            .append_message("u@x", id, &body_for(id, len(id)), 0)
                            .await
                            .unwrap();
                    })
                })
                .collect();
            for task in tasks {
                task.await;
            }
            for id in (1..=120u128).rev() {
                let record = shard.read_message("u@x", id).await.unwrap();
                assert_eq!(record.body(), &body_for(id, len(id))[..], "id {id}");
                assert_eq!(record.user(), "u@x");
            }
            shard.close().await.unwrap();
            let (shard, _) = Shard::open(DmaStorage::default(), &path, config, "t")
                .await
                .unwrap();
            for id in 1..=120u128 {
                let record = shard.read_message("u@x", id).await.unwrap();
                assert_eq!(
                    record.body(),
                    &body_for(id, len(id))[..],
                    "id {id} after reopen"
                );
            }
            shard.close().await.unwrap();
        });
    }
}

/// The annotator's annex: the body's first 3 bytes and its length.
fn first_bytes(body: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&body[..body.len().min(3)]);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
}

fn annex_for(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    first_bytes(body, &mut out);
    out
}

#[test]
fn a_put_keeps_its_annex_through_compaction_and_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let config = || porcupine_engine::EngineConfig {
        annotate: Some(porcupine_engine::Annotator(first_bytes)),
        ..small_config()
    };
    run(move || async move {
        let (shard, _) = Shard::open(DmaStorage::default(), &path, config(), "t")
            .await
            .unwrap();
        for id in 1..=80u128 {
            shard
                .append_message("a@x", id, &body_for(id, 2000), 0)
                .await
                .unwrap();
        }
        let stored = shard.read_message("a@x", 5).await.unwrap();
        assert_eq!(stored.body(), &body_for(5, 2000)[..]);
        assert_eq!(stored.annex(), &annex_for(&body_for(5, 2000))[..]);
        // The index counts the body only.
        assert!(shard.messages("a@x").iter().all(|m| m.body_len == 2000));
        // Most of the first segments deleted: compaction copies the rest forward.
        for id in (1..=60u128).filter(|id| id % 10 != 0) {
            shard.delete_message("a@x", id).await.unwrap();
        }
        let mut copied = 0;
        while let Some(report) = shard.compact_once().await.unwrap() {
            copied += report.records_copied;
        }
        assert!(copied > 0, "nothing was compacted");
        shard.close().await.unwrap();
        for round in 0..2 {
            if round == 1 {
                let _ = std::fs::remove_file(path.join("index.ckpt"));
            }
            let (shard, report) = Shard::open(DmaStorage::default(), &path, config(), "t")
                .await
                .unwrap();
            assert_eq!(report.messages, 26);
            for entry in shard.messages("a@x") {
                let body = body_for(entry.id, 2000);
                let stored = shard.read_message("a@x", entry.id).await.unwrap();
                assert_eq!(stored.body(), &body[..], "message {}", entry.id);
                assert_eq!(
                    stored.annex(),
                    &annex_for(&body)[..],
                    "message {}",
                    entry.id
                );
            }
            shard.close().await.unwrap();
        }
        // Without an annotator, puts carry no annex and the old ones are still read.
        let (shard, _) = Shard::open(DmaStorage::default(), &path, small_config(), "t")
            .await
            .unwrap();
        shard
            .append_message("a@x", 500, &body_for(500, 100), 0)
            .await
            .unwrap();
        assert_eq!(shard.read_message("a@x", 500).await.unwrap().annex(), b"");
        assert_eq!(
            shard.read_message("a@x", 70).await.unwrap().annex().len(),
            7
        );
        shard.close().await.unwrap();
    });
}
