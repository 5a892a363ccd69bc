//! Recovery from a log cut, or corrupted, at every byte offset of its last records: a cut
//! (a torn tail: nothing valid after it) keeps exactly the records before it; a flipped byte
//! (damage with valid records after it) costs only the record it hits; and the log accepts
//! appends again.

mod common;

use std::path::Path;

use common::{body_for, run, small_config};
use porcupine_engine::record::HEADER_BYTES;
use porcupine_engine::segment::segment_path;
use porcupine_engine::{DmaStorage, Location, RecoveryReport, Shard};

const USER: &str = "u@x";
const RECORDS: u128 = 8;
const DAMAGED_TAIL_RECORDS: usize = 3;

fn body_len(id: u128) -> usize {
    40 + (id as usize * 23) % 170
}

#[derive(Clone, Copy, Debug)]
enum Damage {
    /// Everything from the offset on is gone (never written).
    Cut,
    /// One byte at the offset is flipped.
    Flip,
}

/// The ids a correct recovery keeps after `damage` at `offset`.
fn expected(records: &[(u128, Location)], damage: Damage, offset: u64) -> Vec<u128> {
    records
        .iter()
        .filter(|&&(id, loc)| {
            let start = u64::from(loc.offset);
            let covered_end = start + (HEADER_BYTES + USER.len() + body_len(id)) as u64;
            match damage {
                Damage::Cut => covered_end <= offset,
                Damage::Flip => !(start..covered_end).contains(&offset),
            }
        })
        .map(|&(id, _)| id)
        .collect()
}

async fn reopen(dir: &Path) -> (Vec<u128>, RecoveryReport) {
    let (shard, report) = Shard::open(DmaStorage::default(), dir, small_config(), "t")
        .await
        .unwrap();
    let ids = shard.messages(USER).iter().map(|m| m.id).collect();
    shard.close().await.unwrap();
    (ids, report)
}

async fn reopen_ids(dir: &Path) -> Vec<u128> {
    reopen(dir).await.0
}

#[test]
fn a_cut_keeps_the_records_before_it_and_a_flipped_byte_costs_only_its_record() {
    run(|| async {
        let pristine_dir = tempfile::tempdir().unwrap();
        let (shard, _) = Shard::open(
            DmaStorage::default(),
            pristine_dir.path(),
            small_config(),
            "t",
        )
        .await
        .unwrap();
        let mut records = Vec::new();
        for id in 1..=RECORDS {
            let entry = shard
                .append_message(USER, id, &body_for(id, body_len(id)), 0)
                .await
                .unwrap();
            records.push((id, entry.location));
        }
        shard.close().await.unwrap();
        let pristine = std::fs::read(segment_path(pristine_dir.path(), 1)).unwrap();

        let first_damaged = records[records.len() - DAMAGED_TAIL_RECORDS].1.offset as u64;
        let last = records[records.len() - 1].1;
        let end = u64::from(last.offset) + u64::from(last.len);
        let mut cases = 0;
        for damage in [Damage::Cut, Damage::Flip] {
            for offset in first_damaged..end {
                let mut bytes = pristine.clone();
                match damage {
                    Damage::Cut => bytes[offset as usize..].fill(0),
                    Damage::Flip => bytes[offset as usize] ^= 0xff,
                }
                let dir = tempfile::tempdir().unwrap();
                std::fs::write(segment_path(dir.path(), 1), &bytes).unwrap();
                let want = expected(&records, damage, offset);
                let (got, report) = reopen(dir.path()).await;
                assert_eq!(got, want, "{damage:?} at offset {offset}");
                let lost_before_last =
                    want.len() < records.len() && want.last() == records.last().map(|r| &r.0);
                match damage {
                    // Records follow the damage: it is reported as such, nothing is cut.
                    Damage::Flip if lost_before_last => {
                        assert_eq!(report.skipped.len(), 1, "{offset}: {report:?}");
                        assert!(report.truncated.is_none(), "{offset}: {report:?}");
                    }
                    // Nothing valid follows the flip: a torn tail, cut.
                    Damage::Flip if want.len() < records.len() => {
                        assert!(report.skipped.is_empty(), "{offset}: {report:?}");
                        assert!(report.truncated.is_some(), "{offset}: {report:?}");
                    }
                    // A cut leaves zeros or a partial record: never reported as inner damage.
                    _ => assert!(report.skipped.is_empty(), "{offset}: {report:?}"),
                }
                if offset % 61 == 0 {
                    // The repaired log takes new appends and keeps them.
                    let (shard, _) =
                        Shard::open(DmaStorage::default(), dir.path(), small_config(), "t")
                            .await
                            .unwrap();
                    shard
                        .append_message(USER, 1_000, b"after repair", 0)
                        .await
                        .unwrap();
                    shard.close().await.unwrap();
                    std::fs::remove_file(dir.path().join("index.ckpt")).unwrap();
                    let mut want_after = want.clone();
                    want_after.push(1_000);
                    assert_eq!(
                        reopen_ids(dir.path()).await,
                        want_after,
                        "append after {damage:?} at {offset}"
                    );
                }
                cases += 1;
            }
        }
        assert!(cases > 200, "only {cases} cases");
    });
}

#[test]
fn a_damaged_record_in_a_sealed_segment_loses_only_that_record() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let (shard, _) = Shard::open(DmaStorage::default(), dir.path(), small_config(), "t")
            .await
            .unwrap();
        let mut in_first = Vec::new();
        let mut id = 0u128;
        while shard.stats().active_segment < 2 || id < 40 {
            id += 1;
            let entry = shard
                .append_message(USER, id, &body_for(id, 3000), 0)
                .await
                .unwrap();
            if entry.location.segment == 1 {
                in_first.push((id, entry.location));
            }
        }
        shard.close().await.unwrap();
        std::fs::remove_file(dir.path().join("index.ckpt")).unwrap();
        let (victim, loc) = in_first[in_first.len() / 2];
        let path = segment_path(dir.path(), 1);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[loc.offset as usize + HEADER_BYTES + 10] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();

        let (shard, report) = Shard::open(DmaStorage::default(), dir.path(), small_config(), "t")
            .await
            .unwrap();
        assert_eq!(report.skipped.len(), 1, "{report:?}");
        let ids: Vec<u128> = shard.messages(USER).iter().map(|m| m.id).collect();
        let want: Vec<u128> = (1..=id).filter(|i| *i != victim).collect();
        assert_eq!(ids, want);
        shard.close().await.unwrap();
    });
}
