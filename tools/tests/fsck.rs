//! `porcupine fsck` on a real node's data directory: refused while the node runs (the data
//! directory's lock, exit 2), clean after a stop (exit 0), and after a byte of a stored
//! message is flipped it names the damage (exit 1, plain text and JSON) and changes nothing,
//! and a restarted node still serves the mail the damage did not touch.

mod common;

use std::process::Command;

use common::{binary, mail, Node};

fn fsck(data: &std::path::Path, json: bool) -> (i32, String) {
    let mut command = Command::new(binary());
    command.arg("fsck").arg(data);
    if json {
        command.arg("--json");
    }
    let out = command.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// The segment file holding `needle`, and where.
fn find(data: &std::path::Path, needle: &[u8]) -> Option<(std::path::PathBuf, usize)> {
    for shard in std::fs::read_dir(data).unwrap().flatten() {
        if !shard.file_name().to_string_lossy().starts_with("shard-") {
            continue;
        }
        for file in std::fs::read_dir(shard.path()).unwrap().flatten() {
            if !file.file_name().to_string_lossy().ends_with(".log") {
                continue;
            }
            let bytes = std::fs::read(file.path()).unwrap();
            if let Some(at) = bytes.windows(needle.len()).position(|w| w == needle) {
                return Some((file.path(), at));
            }
        }
    }
    None
}

#[test]
fn fsck_finds_damage_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let node = Node::start(&data, &[]);
    for n in 1..=4 {
        node.add_user(&format!("user{n}@localhost"));
    }
    mail::deliver(&node, 4, "first");
    mail::deliver(&node, 4, "second");
    let (code, text) = fsck(&data, false);
    assert_eq!(code, 2, "fsck while the node runs: {text}");
    assert!(
        text.contains("in use by another porcupine process"),
        "{text}"
    );
    let (smtp, pop3, admin) = (node.smtp, node.pop3, node.admin);
    assert!(node.terminate().success());

    let (code, text) = fsck(&data, false);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("messages: clean"), "{text}");
    assert!(
        text.contains("8 messages") || text.contains(", 8 messages"),
        "{text}"
    );

    // A flipped byte inside "first 2": that record is damaged, the records after it are not.
    let (path, at) = find(&data, b"first 2").expect("a stored message");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[at] ^= 0x20;
    std::fs::write(&path, &bytes).unwrap();
    let before = std::fs::read(&path).unwrap();
    let (code, text) = fsck(&data, false);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("PROBLEM segment 1:") && text.contains("damaged bytes"),
        "{text}"
    );
    let (code, json) = fsck(&data, true);
    assert_eq!(code, 1, "{json}");
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(report["clean"], false, "{json}");
    assert_eq!(
        report["problems"].as_u64(),
        Some(2),
        "damage and the checkpoint entry: {json}"
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "fsck changed the log"
    );

    // The node starts on it and serves what the damage did not touch (user1's mail; user2's
    // damaged message is refused when read, as fsck warned, and a replica would have it).
    let node = Node::start_on(&data, smtp, pop3, admin, &[]);
    mail::check(&node, 1, &["first", "second"]);
}
