//! Writes the binary seeds of the fuzz corpus (frames, records, checkpoints, segment
//! headers), made with the real encoders so the fuzzer starts from valid inputs:
//! `cargo run --manifest-path tools/fuzz/Cargo.toml --bin make_seeds` (from the workspace).

use std::path::Path;

use porcupine_cluster::membership::{Epoch, Member, Msg, View};
use porcupine_cluster::rpc::{
    FetchMessage, LockMaildrop, OneWay, PushUpdate, ReplicaUpdate, Request, StoreMessage,
    SyncProfiles, UnlockMaildrop,
};
use porcupine_cluster::usermap::UserMap;
use porcupine_cluster::wire::{self, FrameKind, HEADER_BYTES};
use porcupine_engine::index::Index;
use porcupine_engine::record::{self, RecordKind, RecordMeta, Retired};
use porcupine_engine::segment::SegmentHeader;
use porcupine_engine::ReplicaSet;
use zerocopy::IntoBytes;

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).expect("corpus dir");
    std::fs::write(dir.join(name), bytes).expect("seed written");
}

fn main() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let epoch = Epoch {
        clock: 1_800_000_000_000,
        coordinator: 2,
    };
    let members = vec![
        Member {
            id: 1,
            addr: "127.0.0.1:7946".into(),
        },
        Member {
            id: 2,
            addr: "127.0.0.2:7946".into(),
        },
    ];
    let view = View {
        epoch,
        map: UserMap::single(1, 1024, epoch).reassign(&[1, 2], epoch),
        members: members.clone(),
    };
    let one_way = |body: &OneWay| {
        let mut frame = Vec::new();
        wire::encode(&mut frame, FrameKind::OneWay, 0, 3, 1, body).expect("encodes");
        frame
    };
    let request = |request: Request| {
        let mut frame = Vec::new();
        wire::encode(&mut frame, FrameKind::Request, 1, 3, 1, &request).expect("encodes");
        frame
    };
    let frames = [
        ("commit", one_way(&OneWay::Membership(Msg::Commit { view }))),
        (
            "ping",
            one_way(&OneWay::Membership(Msg::Ping {
                from: members[1].clone(),
                epoch,
            })),
        ),
        (
            "store",
            request(
                StoreMessage {
                    user: "a@x".into(),
                    id: 7,
                    epoch,
                    replicas: vec![1, 2],
                    also: vec![3],
                    message: b"Subject: hi\r\n\r\nbody\r\n".to_vec(),
                }
                .into(),
            ),
        ),
        (
            "replicate",
            request(
                PushUpdate {
                    user: "a@x".into(),
                    id: 7,
                    hlc: 1 << 40,
                    origin: 1,
                    replicas: vec![1, 2],
                    update: ReplicaUpdate::Delete,
                }
                .into(),
            ),
        ),
        (
            "profiles",
            request(
                SyncProfiles {
                    profiles: vec![("a@x".into(), 1 << 40, b"porcupine-profile 1\n".to_vec())],
                }
                .into(),
            ),
        ),
        (
            "fetch",
            request(
                FetchMessage {
                    user: "a@x".into(),
                    id: 9,
                }
                .into(),
            ),
        ),
        (
            "lock",
            request(
                LockMaildrop {
                    user: "a@x".into(),
                    owner: (1, 4),
                }
                .into(),
            ),
        ),
        (
            "unlock",
            request(
                UnlockMaildrop {
                    user: "a@x".into(),
                    owner: (1, 4),
                }
                .into(),
            ),
        ),
    ];
    for (name, frame) in &frames {
        write(&corpus.join("cluster_frame"), name, frame);
        write(
            &corpus.join("cluster_payload"),
            name,
            &frame[HEADER_BYTES..],
        );
    }
    let meta = |kind, id| RecordMeta {
        kind,
        hlc: 1 << 40,
        message_id: id,
        node_id: 1,
        aux: 0,
        replicas: ReplicaSet::new([1, 2]),
    };
    write(
        &corpus.join("record"),
        "put",
        &record::encode(
            1,
            &meta(RecordKind::Put, 7),
            "a@x",
            b"Subject: hi\r\n\r\nbody\r\n",
        ),
    );
    let described_message = b"Subject: hi\r\nFrom: a@x\r\n\r\nbody\r\n";
    write(
        &corpus.join("record"),
        "put-described",
        &record::encode_payload(
            1,
            &meta(RecordKind::Put, 8),
            "a@x",
            record::Payload {
                annex: &porcupine_protocols::imap::structure::describe(described_message),
                body: described_message,
            },
        ),
    );
    write(
        &corpus.join("record"),
        "delete",
        &record::encode(1, &meta(RecordKind::Delete, 7), "a@x", b""),
    );
    let retired = record::encode_retired(&[Retired {
        user_key: record::user_key("a@x"),
        message_id: 7,
        hlc: 1 << 40,
    }]);
    write(
        &corpus.join("record"),
        "retire",
        &record::encode(1, &meta(RecordKind::Retire, 0), "", &retired),
    );
    let index = Index::new();
    write(
        &corpus.join("checkpoint"),
        "empty",
        &porcupine_engine::checkpoint::encode(&index, &[(1, 4096)], (1, 4096), 1 << 40),
    );
    write(
        &corpus.join("segment_header"),
        "header",
        SegmentHeader::new(3, 128 << 20, 1 << 40).as_bytes(),
    );
    println!("seeds written under {}", corpus.display());
}
