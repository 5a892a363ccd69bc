//! `fsck` of a shard directory: a clean store has nothing to say; a flipped byte in a sealed
//! segment is damage (a problem), a flipped byte in the newest record a torn tail (a note), a
//! damaged checkpoint is ignored (a note), a checkpoint entry pointing at another record is a
//! problem; and fsck changes no byte of what it reads.

mod common;

use std::path::Path;

use common::{body_for, run, small_config};
use porcupine_engine::fsck::{check_shard, CheckpointCheck, FsckReport};
use porcupine_engine::record::HEADER_BYTES;
use porcupine_engine::segment::segment_path;
use porcupine_engine::{DmaStorage, Location, Shard};

const USER: &str = "u@x";

/// A closed shard in `dir` spanning three segments; each message's location.
async fn store(dir: &Path) -> Vec<(u128, Location)> {
    let (shard, _) = Shard::open(DmaStorage::default(), dir, small_config(), "t")
        .await
        .unwrap();
    let mut written = Vec::new();
    let mut id = 0u128;
    while shard.stats().active_segment < 3 {
        id += 1;
        let entry = shard
            .append_message(USER, id, &body_for(id, 3000), 0)
            .await
            .unwrap();
        written.push((id, entry.location));
    }
    shard.close().await.unwrap();
    written
}

async fn fsck(dir: &Path) -> FsckReport {
    check_shard(&DmaStorage::default(), dir, &small_config())
        .await
        .unwrap()
}

/// Every file's bytes, to show fsck wrote nothing.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

fn flip(path: &Path, at: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at] ^= 0x01;
    std::fs::write(path, &bytes).unwrap();
}

#[test]
fn a_clean_store_has_nothing_to_say() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let written = store(dir.path()).await;
        let before = files(dir.path());
        let report = fsck(dir.path()).await;
        assert!(report.problems().is_empty(), "{:?}", report.problems());
        assert!(report.notes().is_empty(), "{:?}", report.notes());
        assert_eq!(report.messages, written.len() as u64);
        assert_eq!(report.users, 1);
        assert!(report.segments >= 3);
        match report.checkpoint {
            CheckpointCheck::Checked {
                entries, ref wrong, ..
            } => {
                assert_eq!(entries, written.len() as u64);
                assert!(wrong.is_empty(), "{wrong:?}");
            }
            ref other => panic!("{other:?}"),
        }
        assert_eq!(files(dir.path()), before, "fsck changed a file");
    });
}

#[test]
fn damage_in_a_sealed_segment_is_a_problem_and_nothing_is_repaired() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let written = store(dir.path()).await;
        let in_first: Vec<_> = written.iter().filter(|(_, l)| l.segment == 1).collect();
        let (_, loc) = in_first[in_first.len() / 2];
        flip(
            &segment_path(dir.path(), 1),
            loc.offset as usize + HEADER_BYTES + 10,
        );
        let before = files(dir.path());
        let report = fsck(dir.path()).await;
        let problems = report.problems();
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("segment 1:") && p.contains("damaged")),
            "{problems:?}"
        );
        // The checkpoint's entry for that message now points at a record that fails.
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("checkpoint: message")),
            "{problems:?}"
        );
        assert_eq!(report.messages, written.len() as u64 - 1);
        assert_eq!(files(dir.path()), before, "fsck changed a file");
    });
}

#[test]
fn a_torn_tail_and_a_damaged_checkpoint_are_notes() {
    run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let written = store(dir.path()).await;
        let (_, last) = written.last().copied().unwrap();
        flip(
            &segment_path(dir.path(), last.segment),
            last.offset as usize + HEADER_BYTES + 10,
        );
        flip(&dir.path().join("index.ckpt"), 100);
        let report = fsck(dir.path()).await;
        assert!(report.problems().is_empty(), "{:?}", report.problems());
        let notes = report.notes();
        assert!(notes.iter().any(|n| n.contains("torn tail")), "{notes:?}");
        assert!(
            notes.iter().any(|n| n.contains("checkpoint ignored")),
            "{notes:?}"
        );
        assert_eq!(report.messages, written.len() as u64 - 1);
    });
}
