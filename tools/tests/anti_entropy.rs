//! Damage costs one record, and a replica gives it back: three real `porcupine` processes
//! (127.0.0.101–103, `--replicas 2`, `--anti-entropy-s 1`). Node 2 is SIGKILLed, one
//! message's body in the middle of its log is flipped on disk (its checkpoint removed, so the
//! whole log is read again), and node 2 restarts: recovery skips that one record, keeps every
//! record after it, and says so; anti-entropy with the replica that holds the other copy finds
//! the difference and pushes the message back. Node 2 then holds exactly what it held before,
//! and every message reads back byte-exact from it, once.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::cluster::{start_member, status, wait_members, Ports};
use common::mail::{check, deliver};
use common::Node;

const USERS: u64 = 30;
const TAGS: [&str; 3] = ["a", "b", "c"];

fn start(dir: &Path, n: usize, ports: &Ports) -> Node {
    start_member(dir, "127.0.0", 100, n, ports, &["--anti-entropy-s", "1"])
}

fn files_named(dir: &Path, pick: &dyn Fn(&Path) -> bool, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files_named(&path, pick, found);
        } else if pick(&path) {
            found.push(path);
        }
    }
}

/// Flips one byte inside the body of the first "message a" record found in a segment of
/// `data`; returns the segment.
fn damage_one_record(data: &Path) -> PathBuf {
    let mut segments = Vec::new();
    files_named(
        data,
        &|p| p.extension().is_some_and(|e| e == "log"),
        &mut segments,
    );
    segments.sort();
    let needle = b"message a for user";
    for segment in segments {
        let mut bytes = std::fs::read(&segment).unwrap();
        if let Some(at) = bytes.windows(needle.len()).position(|w| w == needle) {
            bytes[at] ^= 0x20;
            std::fs::write(&segment, &bytes).unwrap();
            return segment;
        }
    }
    panic!("no record of tag a in {}", data.display());
}

#[test]
fn a_record_lost_to_damage_comes_back_from_its_replica() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().to_path_buf();
    let ports = Ports::free();
    let n1 = start(&dir, 1, &ports);
    let n2 = start(&dir, 2, &ports);
    let n3 = start(&dir, 3, &ports);
    wait_members(&[&n1, &n2, &n3], 3);
    n1.bulk_users(USERS, "user");
    for (tag, node) in TAGS.iter().zip([&n1, &n2, &n3]) {
        deliver(node, USERS, tag);
    }
    check(&n2, USERS, &TAGS);
    let held = status(&n2).messages;

    n2.kill();
    wait_members(&[&n1, &n3], 2);
    let data = dir.join("node2");
    let mut checkpoints = Vec::new();
    files_named(
        &data,
        &|p| p.file_name().is_some_and(|n| n == "index.ckpt"),
        &mut checkpoints,
    );
    for checkpoint in checkpoints {
        std::fs::remove_file(checkpoint).unwrap();
    }
    let segment = damage_one_record(&data);
    let log_before = std::fs::read_to_string(data.with_extension("log")).unwrap_or_default();

    let n2 = start(&dir, 2, &ports);
    wait_members(&[&n1, &n2, &n3], 3);
    let log = std::fs::read_to_string(data.with_extension("log")).unwrap_or_default();
    let recovery = &log[log_before.len().min(log.len())..];
    assert!(
        recovery.contains("damaged records skipped"),
        "recovery did not report the damage in {}:\n{recovery}",
        segment.display()
    );

    // The replica holding the other copy pushes it back within a few rounds.
    let started = Instant::now();
    loop {
        let now = status(&n2).messages;
        if now == held {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "node 2 holds {now} messages, {held} before the damage"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let repairs: u64 = [&n1, &n3]
        .iter()
        .map(|n| status(n).replication.anti_entropy_repairs)
        .sum();
    eprintln!(
        "the damaged record came back in {:?}; {repairs} copies pushed by anti-entropy",
        started.elapsed()
    );
    assert!(repairs >= 1, "nothing was pushed back");
    assert!(
        repairs <= 2,
        "anti-entropy pushed {repairs} copies for one lost record"
    );
    let metrics = n1.metrics();
    assert!(
        metrics.contains("# TYPE porcupine_anti_entropy_rounds counter"),
        "{metrics}"
    );
    check(&n2, USERS, &TAGS);
    for node in [n1, n2, n3] {
        assert!(node.terminate().success());
    }
}
