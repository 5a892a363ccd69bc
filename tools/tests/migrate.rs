//! Migration through the real binary: a Maildir laid out as Dovecot keeps one (Maildir++
//! folders, `:2,` flags, keyword letters in `dovecot-keywords`, `dovecot-uidlist`, file times)
//! and an mbox are imported with `porcupine import`, seen by IMAP in their folders with their
//! flags, dates, and Dovecot's UIDs and UIDVALIDITY, imported again storing nothing twice, and exported with `porcupine export
//! maildir` byte for byte, flags and dates kept.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, UNIX_EPOCH};

use common::{python, Node, PASSWORD};

const USER: &str = "migrated@localhost";

fn message(n: usize, folder: &str) -> Vec<u8> {
    format!(
        "From: someone{n}@example.org\r\nTo: {USER}\r\nSubject: {folder} message {n}\r\n\
         Date: Mon, 1 Jan 2024 10:00:{:02} +0000\r\nMessage-ID: <m{n}.{folder}@example.org>\r\n\r\n\
         Body of {n} in {folder}.\r\n.leading dot\r\nété\r\n",
        n % 60
    )
    .into_bytes()
    .into_iter()
    .chain(std::iter::repeat_n(b'x', n * 7))
    .chain(*b"\r\n")
    .collect()
}

/// Writes a message file with its time.
fn put(path: &Path, bytes: &[u8], unix: u64) {
    std::fs::write(path, bytes).unwrap();
    let file = std::fs::File::options().write(true).open(path).unwrap();
    file.set_modified(UNIX_EPOCH + Duration::from_secs(unix))
        .unwrap();
}

/// A Dovecot-style Maildir: INBOX (cur and new), Sent, Archive/2024; what each folder holds as
/// (content, flags letters, time).
fn dovecot_maildir(root: &Path) -> BTreeMap<String, Vec<(Vec<u8>, String, u64)>> {
    let mut made = BTreeMap::new();
    for (folder, dir, count) in [
        ("INBOX", root.to_path_buf(), 12),
        ("Sent", root.join(".Sent"), 5),
        ("Archive/2024", root.join(".Archive.2024"), 7),
    ] {
        for sub in ["cur", "new", "tmp"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        std::fs::write(dir.join("dovecot-keywords"), "0 $Work\n1 Junk\n").unwrap();
        let mut uidlist = String::from("3 V1700000000 N100 G0123\n");
        let mut here = Vec::new();
        for n in 0..count {
            let bytes = message(n, folder);
            let unique = format!("17000{n:05}.M{n}P42.mail.example.org,S={}", bytes.len());
            let time = 1_700_000_000 + n as u64 * 3600;
            let letters = match n % 4 {
                0 => "",
                1 => "S",
                2 => "FRSa",
                _ => "DSb",
            };
            // The newest message of INBOX is still in new/ (never seen by a client).
            let path = if folder == "INBOX" && n == count - 1 {
                dir.join("new").join(&unique)
            } else {
                dir.join("cur").join(format!("{unique}:2,{letters}"))
            };
            put(&path, &bytes, time);
            uidlist.push_str(&format!("{} :{unique}\n", 100 + n));
            let letters = if path.starts_with(dir.join("new")) {
                ""
            } else {
                letters
            };
            here.push((bytes, letters.to_owned(), time));
        }
        std::fs::write(dir.join("dovecot-uidlist"), uidlist).unwrap();
        made.insert(folder.to_owned(), here);
    }
    made
}

/// What an exported Maildir holds per folder: (content, sorted flag letters, time), sorted.
fn exported(root: &Path) -> BTreeMap<String, Vec<(Vec<u8>, String, u64)>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(root).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let folder = match name.as_str() {
            "cur" => "INBOX".to_owned(),
            n if n.starts_with('.') => n[1..].replace('.', "/"),
            _ => continue,
        };
        let dir = if folder == "INBOX" {
            root.to_path_buf()
        } else {
            entry.path()
        };
        let mut here = Vec::new();
        for file in std::fs::read_dir(dir.join("cur")).unwrap().flatten() {
            let name = file.file_name().to_string_lossy().into_owned();
            let letters = name.split_once(":2,").map_or("", |(_, l)| l).to_owned();
            let time = file
                .metadata()
                .unwrap()
                .modified()
                .unwrap()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs();
            here.push((std::fs::read(file.path()).unwrap(), letters, time));
        }
        here.sort();
        out.insert(folder, here);
    }
    out
}

#[test]
fn a_dovecot_maildir_and_an_mbox_come_in_and_go_out_byte_exact() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("data"), &[]);
    node.add_user(USER);
    let maildir = dir.path().join("Maildir");
    let mut made = dovecot_maildir(&maildir);
    let maildir_arg = maildir.display().to_string();
    let (ok, out) = node.cli(&["import", "maildir", &maildir_arg, "--user", USER]);
    assert!(ok, "{out}");
    assert!(out.contains("imported 24 messages"), "{out}");
    assert!(
        out.contains("in 3 folders, 0 already there, 0 failed"),
        "{out}"
    );
    // Again: nothing is stored twice.
    let (ok, out) = node.cli(&["import", "maildir", &maildir_arg, "--user", USER]);
    assert!(ok, "{out}");
    assert!(
        out.contains("imported 0 messages") && out.contains("24 already there"),
        "{out}"
    );

    // An mbox into a folder of its own (mboxrd: a `>From ` line loses one `>`).
    let mbox = dir.path().join("old.mbox");
    std::fs::write(
        &mbox,
        "From a@example.org Tue Jul  1 10:52:37 2003\nSubject: one\nStatus: RO\n\nfirst\n>From the start\n\n\
         From b@example.org Wed Jul  2 11:00:00 2003\nSubject: two\nX-Status: F\n\nsecond\n",
    )
    .unwrap();
    let mbox_arg = mbox.display().to_string();
    let (ok, out) = node.cli(&[
        "import", "mbox", &mbox_arg, "--user", USER, "--folder", "Old",
    ]);
    assert!(ok && out.contains("imported 2 messages"), "{out}");
    made.insert(
        "Old".into(),
        vec![
            (
                b"Subject: one\r\nStatus: RO\r\n\r\nfirst\r\nFrom the start\r\n".to_vec(),
                "S".into(),
                1_057_056_757,
            ),
            (
                b"Subject: two\r\nX-Status: F\r\n\r\nsecond\r\n".to_vec(),
                "F".into(),
                1_057_143_600,
            ),
        ],
    );

    // IMAP sees the folders, the flags (keyword letters by name) and the dates.
    let out = python(
        "imap.py",
        &[
            "snapshot".into(),
            node.ip.clone(),
            node.imap.to_string(),
            USER.into(),
            PASSWORD.into(),
        ],
    );
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("snapshot "))
        .unwrap();
    let snapshot: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(
        snapshot["INBOX"]["messages"].as_array().unwrap().len(),
        12,
        "{snapshot}"
    );
    assert_eq!(
        snapshot["Archive/2024"]["messages"]
            .as_array()
            .unwrap()
            .len(),
        7,
        "{snapshot}"
    );
    // Dovecot's UIDs and UIDVALIDITY are kept (each folder was new or empty here), so a
    // client that synced with Dovecot downloads nothing again; the mbox has none to keep.
    for (folder, count) in [("INBOX", 12), ("Sent", 5), ("Archive/2024", 7)] {
        assert_eq!(snapshot[folder]["uidvalidity"], "1700000000", "{snapshot}");
        let uids: Vec<u64> = snapshot[folder]["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m[0].as_u64().unwrap())
            .collect();
        assert_eq!(uids, (100..100 + count).collect::<Vec<u64>>(), "{folder}");
    }
    assert_eq!(snapshot["Old"]["messages"][0][0], 1, "{snapshot}");
    let flags: Vec<String> = snapshot["Sent"]["messages"][2][1]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        flags,
        ["$Work", "\\Answered", "\\Flagged", "\\Seen"],
        "{snapshot}"
    );

    // Out again: every message byte for byte, with its flags and its date.
    let export = dir.path().join("export");
    let export_arg = export.display().to_string();
    let (ok, out) = node.cli(&["export", "maildir", "--user", USER, &export_arg]);
    assert!(ok && out.contains("exported 26 messages"), "{out}");
    let (ok, out) = node.cli(&["export", "maildir", "--user", USER, &export_arg]);
    assert!(
        ok && out.contains("exported 0 messages") && out.contains("26 already there"),
        "{out}"
    );
    let got = exported(&export);
    for (folder, messages) in &made {
        let mut want: Vec<(Vec<u8>, String, u64)> = messages
            .iter()
            .map(|(bytes, letters, time)| {
                // Dovecot's letters a/b are $Work/Junk; the export numbers keywords as it
                // meets them, so compare them as the names they stand for.
                let mut l: Vec<char> = letters.chars().collect();
                l.sort_unstable();
                (bytes.clone(), l.into_iter().collect(), *time)
            })
            .collect();
        want.sort();
        let keywords = std::fs::read_to_string(
            if folder == "INBOX" {
                export.clone()
            } else {
                export.join(format!(".{}", folder.replace('/', ".")))
            }
            .join("dovecot-keywords"),
        )
        .unwrap_or_default();
        let name_of = |c: char| -> String {
            let n = (c as u8 - b'a') as usize;
            keywords
                .lines()
                .nth(n)
                .and_then(|l| l.split_whitespace().nth(1))
                .unwrap_or("?")
                .to_owned()
        };
        let normal = |letters: &str, dovecot: bool| -> Vec<String> {
            let mut names: Vec<String> = letters
                .chars()
                .map(|c| match c {
                    'a' if dovecot => "$Work".to_owned(),
                    'b' if dovecot => "Junk".to_owned(),
                    'a'..='z' => name_of(c),
                    other => other.to_string(),
                })
                .collect();
            names.sort();
            names
        };
        let have = got
            .get(folder)
            .unwrap_or_else(|| panic!("no {folder} exported: {:?}", got.keys()));
        assert_eq!(have.len(), want.len(), "{folder}");
        for ((hb, hl, ht), (wb, wl, wt)) in have.iter().zip(&want) {
            assert_eq!(hb, wb, "{folder}: bytes differ");
            assert_eq!(normal(hl, false), normal(wl, true), "{folder}: flags");
            assert_eq!(ht, wt, "{folder}: date");
        }
    }
}

/// The view `migrate_dovecot.py view` prints of a user's INBOX and Work.
fn imap_view(port: u16, user: &str) -> serde_json::Value {
    let out = python(
        "migrate_dovecot.py",
        &[
            "view".into(),
            port.to_string(),
            user.into(),
            PASSWORD.into(),
        ],
    );
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("view "))
        .unwrap_or_else(|| panic!("no view: {out}"));
    serde_json::from_str(line).unwrap()
}

/// A Maildir that a real Postfix delivered into and a real Dovecot's IMAP changed (folders,
/// moves, flags, keywords) comes into porcupine and goes out again to Dovecot: every client
/// sees the same mailboxes from all three — UIDVALIDITY, UIDs, flags, and each message byte
/// for byte. Postfix and Dovecot are private instances (bench/src/peers.rs); a missing one
/// fails the test saying what to install, never a silent skip.
#[test]
fn a_maildir_postfix_and_dovecot_wrote_comes_in_and_dovecot_serves_the_export_alike() {
    use porcupine_bench::peers::{self, DovecotImap, Mailboxes, Postfix};
    peers::require_programs().expect("Postfix and Dovecot for this test (.ci/run installs them)");
    peers::require_dovecot_imap().expect("Dovecot's IMAP for this test");
    let parent = tempfile::tempdir().unwrap();
    let run =
        porcupine_bench::run::Run::start(parent.path(), "migrate-", false, "migrate test").unwrap();
    let owner = peers::mail_owner().unwrap();
    let mailboxes = Mailboxes {
        domain: "dovecot.test",
        sets: vec![("mover", 1), ("back", 1)],
        password: PASSWORD,
    };
    let (smtp, pop3, imap) = (
        common::free_port(),
        common::free_port(),
        common::free_port(),
    );
    let _postfix = Postfix::start(&run, smtp, &mailboxes, owner, None).unwrap();
    let dovecot = DovecotImap {
        port: imap,
        reuse_processes: false,
    };
    peers::start_dovecot(&run, pop3, Some(dovecot), &mailboxes, owner, None).unwrap();
    let (mover, back) = ("mover1@dovecot.test", "back1@dovecot.test");
    let out = python(
        "migrate_dovecot.py",
        &[
            "prepare".into(),
            smtp.to_string(),
            imap.to_string(),
            mover.into(),
            PASSWORD.into(),
        ],
    );
    assert!(out.contains("prepared"), "{out}");
    let before = imap_view(imap, mover);
    assert_eq!(
        before["INBOX"]["messages"].as_array().unwrap().len(),
        3,
        "{before}"
    );
    let text = before.to_string();
    for flag in ["$Work", "Later", "\\\\Answered", "\\\\Flagged"] {
        assert!(text.contains(flag), "{flag} in {text}");
    }

    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("data"), &[]);
    node.add_user(USER);
    let maildir = run.dir().join("mail/dovecot.test/mover1");
    let maildir_arg = maildir.display().to_string();
    let (ok, out) = node.cli(&["import", "maildir", &maildir_arg, "--user", USER]);
    assert!(ok && out.contains("imported 5 messages"), "{out}");
    let ours = imap_view(node.imap, USER);
    assert_eq!(ours, before, "porcupine's view differs from Dovecot's");

    // Out into the Maildir of another Dovecot user, and Dovecot serves it.
    let export = run.dir().join("mail/dovecot.test/back1");
    let export_arg = export.display().to_string();
    let (ok, out) = node.cli(&["export", "maildir", "--user", USER, &export_arg]);
    assert!(ok && out.contains("exported 5 messages"), "{out}");
    let owned = Command::new("chown")
        .args(["-R", &format!("{}:{}", owner.0, owner.1), &export_arg])
        .status()
        .unwrap();
    assert!(owned.success());
    let served = imap_view(imap, back);
    assert_eq!(served, before, "Dovecot serves the export differently");
}
