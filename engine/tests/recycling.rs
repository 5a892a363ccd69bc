//! Recycled segments: a segment that compaction emptied becomes a later one without being
//! zeroed, so its earlier life's records stay on disk behind the new ones. They must never pass
//! for records of the new segment — in memory, after a reopen from the checkpoint, after a
//! full scan without it — and a log written by the previous format (version-1 segments holding
//! version-2 records) is still read.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{body_for, run, small_config};
use porcupine_engine::record::{self, RecordKind, RecordMeta, HEADER_BYTES};
use porcupine_engine::segment::{self, SegmentHeader, SEGMENT_HEADER_BYTES};
use porcupine_engine::{DmaStorage, ReplicaSet, Shard};
use zerocopy::IntoBytes;

const USERS: [&str; 3] = ["a@x", "b@x", "c@x"];

fn len_of(id: u128) -> usize {
    400 + (id as usize * 131) % 2000
}

fn user_of(id: u128) -> &'static str {
    USERS[(id % 3) as usize]
}

async fn expect_exactly(shard: &Shard, live: &BTreeMap<u128, usize>) {
    let mut found = BTreeMap::new();
    for user in USERS {
        for entry in shard.messages(user) {
            found.insert(entry.id, entry.body_len as usize);
            let stored = shard.read_message(user, entry.id).await.unwrap();
            assert_eq!(
                stored.body(),
                &body_for(entry.id, entry.body_len as usize)[..]
            );
        }
    }
    assert_eq!(
        &found, live,
        "the shard holds other messages than were left"
    );
}

/// Appends messages until the log ends exactly on a block boundary: the earlier life's bytes
/// then follow the last record with no zeros between (the hard case for a scan).
async fn end_on_a_block(shard: &Shard, live: &mut BTreeMap<u128, usize>, next: &mut u128) {
    const BLOCK: u64 = 4096;
    let fixed = (record::HEADER_BYTES + "a@x".len()) as u64;
    while shard.stats().durable_offset % BLOCK != 0 {
        let room =
            shard.stats().durable_offset.next_multiple_of(BLOCK) - shard.stats().durable_offset;
        // Exactly the room left (records are padded to 8 bytes, and the room is a multiple of
        // 8), or, if too little is left for a record, a record that crosses into the next block.
        let len = if room >= fixed + 8 {
            room - fixed
        } else {
            room + 1000
        } as usize;
        let id = next.next_multiple_of(3); // a message of "a@x"
        *next = id + 1;
        shard
            .append_message("a@x", id, &body_for(id, len), 0)
            .await
            .unwrap();
        live.insert(id, len);
    }
}

/// Non-zero bytes in the block after `end`: the earlier life, not zeroed.
fn stale_bytes_after(path: &Path, end: u64) -> usize {
    let bytes = std::fs::read(path).unwrap();
    let end = end as usize;
    bytes[end..(end + 4096).min(bytes.len())]
        .iter()
        .filter(|&&b| b != 0)
        .count()
}

#[test]
fn recycled_segments_never_serve_their_earlier_life() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let open = |with_checkpoint: bool| {
            let path = path.clone();
            async move {
                if !with_checkpoint {
                    let _ = std::fs::remove_file(path.join("index.ckpt"));
                }
                Shard::open(DmaStorage::default(), &path, small_config(), "t")
                    .await
                    .unwrap()
            }
        };
        let (shard, _) = open(true).await;
        let mut live = BTreeMap::new();
        let mut next = 0u128;
        // Mail comes and goes at about the same pace, compaction keeping up: after the first
        // segments, new ones come from the recycle pool.
        for step in 0..60 {
            for _ in 0..40 {
                let id = next;
                next += 1;
                shard
                    .append_message(user_of(id), id, &body_for(id, len_of(id)), 0)
                    .await
                    .unwrap();
                live.insert(id, len_of(id));
            }
            let doomed: Vec<u128> = live
                .keys()
                .copied()
                .filter(|id| id % 7 != 0 && *id + 80 < next)
                .collect();
            for id in doomed {
                shard.delete_message(user_of(id), id).await.unwrap();
                live.remove(&id);
            }
            while shard.compact_once().await.unwrap().is_some() {}
            if step % 10 == 9 {
                expect_exactly(&shard, &live).await;
            }
        }
        let recycled = shard.metrics().recycled_segments;
        let prepared = shard.metrics().created_segments;
        assert!(
            recycled > prepared,
            "once deletes keep up, most new segments are recycled ({recycled} recycled, \
             {prepared} created)"
        );
        end_on_a_block(&shard, &mut live, &mut next).await;
        let stats = shard.stats();
        let active = segment::segment_path(&path, stats.active_segment);
        shard.close().await.unwrap();
        // The active segment is a recycled one whose earlier life follows the log's last
        // record directly.
        assert!(
            stale_bytes_after(&active, stats.durable_offset) > 0,
            "the active segment holds zeros past its end at {}",
            stats.durable_offset
        );
        for with_checkpoint in [true, false] {
            let (shard, report) = open(with_checkpoint).await;
            assert!(report.skipped.is_empty(), "{report:?}");
            assert!(report.truncated.is_none(), "{report:?}");
            expect_exactly(&shard, &live).await;
            // And it keeps going: more appends into the recycled segment, read back.
            for _ in 0..50 {
                let id = next;
                next += 1;
                shard
                    .append_message(user_of(id), id, &body_for(id, len_of(id)), 0)
                    .await
                    .unwrap();
                live.insert(id, len_of(id));
            }
            expect_exactly(&shard, &live).await;
            shard.close().await.unwrap();
        }
    });
}

/// The bytes of a version-2 record in a version-1 segment, as the previous build wrote them.
fn version_two_record(id: u128, user: &str, body: &[u8]) -> Vec<u8> {
    let meta = RecordMeta {
        kind: RecordKind::Put,
        hlc: 1 << 40,
        message_id: id,
        node_id: 1,
        aux: 0,
        replicas: ReplicaSet::NONE,
    };
    let mut bytes = record::encode(1, &meta, user, body);
    bytes[4] = 2;
    bytes[60..64].fill(0);
    bytes[12..16].fill(0);
    let payload_end = HEADER_BYTES + user.len() + body.len();
    let crc = crc32fast::hash(&bytes[..payload_end]);
    bytes[12..16].copy_from_slice(&crc.to_le_bytes());
    bytes
}

#[test]
fn a_log_of_the_previous_format_is_read_and_continued() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let config = small_config();
    let mut file = vec![0u8; config.segment_bytes as usize];
    let mut header = SegmentHeader::new(1, config.segment_bytes, 1 << 40);
    header.version = 1;
    header.crc32 = 0.into();
    header.crc32 = crc32fast::hash(header.as_bytes()).into();
    file[..48].copy_from_slice(header.as_bytes());
    let mut at = SEGMENT_HEADER_BYTES as usize;
    for id in 0..20u128 {
        let bytes = version_two_record(id, user_of(id), &body_for(id, len_of(id)));
        file[at..at + bytes.len()].copy_from_slice(&bytes);
        at += bytes.len();
    }
    std::fs::write(segment::segment_path(&path, 1), &file).unwrap();
    run(move || async move {
        let (shard, report) = Shard::open(DmaStorage::default(), &path, config, "old")
            .await
            .unwrap();
        assert_eq!(report.messages, 20, "{report:?}");
        let mut live: BTreeMap<u128, usize> = (0..20u128).map(|id| (id, len_of(id))).collect();
        expect_exactly(&shard, &live).await;
        // New records (version 3) follow the old ones in the old segment and beyond it.
        for id in 20..200u128 {
            shard
                .append_message(user_of(id), id, &body_for(id, len_of(id)), 0)
                .await
                .unwrap();
            live.insert(id, len_of(id));
        }
        shard.close().await.unwrap();
        let (shard, _) = Shard::open(DmaStorage::default(), &path, small_config(), "old")
            .await
            .unwrap();
        expect_exactly(&shard, &live).await;
        shard.close().await.unwrap();
    });
}
