//! IMAP through the real binary with Python's imaplib: on one node, byte-exact APPEND and
//! FETCH, one INBOX shared with POP3, IDLE, folders, TLS and hostile input; UIDs, UIDVALIDITY
//! and flags unchanged across a restart and a SIGKILL; on three nodes, a session on one node
//! sees mail delivered through another and flags set on a third, and a flag change answered
//! OK survives the SIGKILL of a node holding a copy; an expunge made through one node is
//! announced to a session on another; IMAP4rev2 and QRESYNC resynchronise a client (VANISHED,
//! changed flags, SEARCHRES, BINARY) and what it knew holds across a SIGKILL; a member back
//! from a SIGKILL whose peers do not answer yet refuses IMAP rather than show, from its own
//! copies, what was expunged while it was away.

mod common;

use std::path::Path;
use std::time::Duration;

use common::cluster::{start_member, wait_members, Ports};
use common::{free_port, python, Node, PASSWORD};

const USER: &str = "alice@localhost";

fn imap_args(node: &Node) -> Vec<String> {
    vec![
        node.ip.clone(),
        node.imap.to_string(),
        USER.into(),
        PASSWORD.into(),
    ]
}

fn snapshot(node: &Node) -> serde_json::Value {
    let out = python(
        "imap.py",
        &[vec!["snapshot".into()], imap_args(node)].concat(),
    );
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("snapshot "))
        .unwrap_or_else(|| panic!("no snapshot in {out}"));
    serde_json::from_str(line).unwrap()
}

fn inbox_uids(snapshot: &serde_json::Value) -> Vec<u64> {
    snapshot["INBOX"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row[0].as_u64().unwrap())
        .collect()
}

#[test]
fn stock_imap_clients_share_one_mailbox_with_pop3_on_one_node() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("data"), &[]);
    node.add_user(USER);
    let ca = node.data.join("tls/cert.pem");
    let out = python(
        "imap.py",
        &[
            "basics".into(),
            node.ip.clone(),
            node.smtp.to_string(),
            node.imap.to_string(),
            node.imaps.to_string(),
            node.pop3.to_string(),
            ca.display().to_string(),
            USER.into(),
            PASSWORD.into(),
        ],
    );
    assert!(out.contains("basics ok"), "{out}");
    println!("{out}");
    let sessions = node.metric("porcupine_imap_sessions_total").unwrap_or(0.0);
    assert!(sessions >= 10.0, "IMAP sessions counted: {sessions}");
    let errors = node.metric("porcupine_imap_errors_total").unwrap_or(0.0);
    assert!(errors >= 5.0, "IMAP BAD/NO counted: {errors}");
    // ENVELOPE and BODYSTRUCTURE came from the description stored with the message.
    let read = node
        .metric("porcupine_imap_descriptions_read_total")
        .unwrap_or(0.0);
    let made = node
        .metric("porcupine_imap_descriptions_made_total")
        .unwrap_or(-1.0);
    assert!(
        read >= 1.0 && made == 0.0,
        "descriptions read {read}, made {made}"
    );
}

#[test]
fn uids_uidvalidity_and_flags_survive_restart_and_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let imap = free_port();
    let imap_addr = format!("127.0.0.1:{imap}");
    let args = ["--imap", imap_addr.as_str()];
    let node = Node::start(&data, &args);
    let (smtp, pop3, admin) = (node.smtp, node.pop3, node.admin);
    node.add_user(USER);
    let out = python(
        "imap.py",
        &[
            vec!["populate".into()],
            imap_args(&node),
            vec!["first".into(), "70".into()],
        ]
        .concat(),
    );
    // 70 APPENDs on one connection: more literals than one command may have (64).
    assert!(out.contains("populated 70"), "{out}");
    let before = snapshot(&node);
    assert_eq!(inbox_uids(&before).len(), 46, "{before}");

    // A clean restart.
    assert!(node.terminate().success());
    let node = Node::start_on(&data, smtp, pop3, admin, &args);
    let after_restart = snapshot(&node);
    assert_eq!(before, after_restart, "a restart changed the mailbox");

    // A flag change answered OK, then SIGKILL at once.
    let uid = inbox_uids(&before)[5].to_string();
    let out = python(
        "imap.py",
        &[
            vec!["store".into()],
            imap_args(&node),
            vec![uid.clone(), "$AfterKill".into()],
        ]
        .concat(),
    );
    assert!(out.contains("stored"), "{out}");
    node.kill();
    let node = Node::start_on(&data, smtp, pop3, admin, &args);
    let after_kill = snapshot(&node);
    let row = after_kill["INBOX"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row[0].as_u64().map(|u| u.to_string()).as_deref() == Some(uid.as_str()))
        .cloned()
        .unwrap_or_else(|| panic!("UID {uid} gone after SIGKILL: {after_kill}"));
    assert!(
        row[1].as_array().unwrap().iter().any(|f| f == "$AfterKill"),
        "the flag change answered OK was lost: {row}"
    );
    for folder in ["INBOX", "Archive", "Sent"] {
        assert_eq!(
            before[folder]["uidvalidity"], after_kill[folder]["uidvalidity"],
            "UIDVALIDITY of {folder} changed"
        );
    }
    // New mail takes a UID above every one given before the crash.
    let out = python(
        "imap.py",
        &[
            "deliver".into(),
            node.ip.clone(),
            smtp.to_string(),
            USER.into(),
            "after-kill".into(),
        ],
    );
    assert!(out.contains("delivered"), "{out}");
    let last = snapshot(&node);
    let uids = inbox_uids(&last);
    let newest = *uids.last().unwrap();
    assert!(
        inbox_uids(&before).iter().all(|&u| u < newest),
        "a UID was given again: {uids:?} after {:?}",
        inbox_uids(&before)
    );
    assert_eq!(uids.len(), 47, "{last}");
}

#[test]
fn user_show_reports_folders_counts_and_copies() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("data"), &[]);
    node.add_user(USER);
    let out = python(
        "imap.py",
        &[
            vec!["populate".into()],
            imap_args(&node),
            vec!["show".into(), "30".into()],
        ]
        .concat(),
    );
    assert!(out.contains("populated 30"), "{out}");
    let show = |args: &[&str]| {
        std::process::Command::new(common::binary())
            .args(["user", "show"])
            .args(args)
            .args(node.admin_args())
            .output()
            .unwrap()
    };
    let out = show(&[USER, "--json"]);
    assert!(out.status.success(), "{out:?}");
    let usage: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let folder = |name: &str| {
        usage["folders"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} in {usage}"))
    };
    // populate puts every third message in Archive, the rest in INBOX.
    assert_eq!(folder("INBOX")["messages"], 20, "{usage}");
    assert_eq!(folder("Archive")["messages"], 10, "{usage}");
    assert_eq!(folder("Sent")["messages"], 0, "{usage}");
    assert_eq!(usage["messages"], 30, "{usage}");
    let unseen = folder("INBOX")["unseen"].as_u64().unwrap();
    assert!(unseen > 0 && unseen < 20, "{usage}");
    let nodes = usage["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 1, "{usage}");
    assert_eq!(nodes[0]["copies"], 30, "{usage}");
    assert_eq!(nodes[0]["bytes"], usage["bytes"], "{usage}");
    let text = show(&[USER]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("30 messages") && text.contains("Archive"),
        "{text}"
    );
    let unknown = show(&["nobody@localhost"]);
    assert!(!unknown.status.success());
    assert!(
        String::from_utf8_lossy(&unknown.stdout).contains("no user nobody@localhost"),
        "{unknown:?}"
    );
}

#[test]
fn imap4rev2_and_qresync_resynchronise_a_client_and_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let imap = free_port();
    let imap_addr = format!("127.0.0.1:{imap}");
    let args = ["--imap", imap_addr.as_str()];
    let node = Node::start(&data, &args);
    let (smtp, pop3, admin) = (node.smtp, node.pop3, node.admin);
    node.add_user(USER);
    let out = python(
        "imap.py",
        &[vec!["resync".into()], imap_args(&node)].concat(),
    );
    let state: Vec<String> = out
        .lines()
        .find_map(|l| l.strip_prefix("resync state "))
        .unwrap_or_else(|| panic!("no state in {out}"))
        .split(' ')
        .map(str::to_owned)
        .collect();
    assert_eq!(state.len(), 3, "{out}");
    // A client that knew this state finds it intact after a SIGKILL: nothing vanished,
    // nothing changed, HIGHESTMODSEQ not lower.
    node.kill();
    let node = Node::start_on(&data, smtp, pop3, admin, &args);
    let out = python(
        "imap.py",
        &[vec!["resync-check".into()], imap_args(&node), state].concat(),
    );
    assert!(out.contains("resync unchanged"), "{out}");
}

fn start(dir: &Path, n: usize, ports: &Ports) -> Node {
    start_member(dir, "127.0.0", 70, n, ports, &["--replicas", "2"])
}

/// Waits until the user can log in over IMAP on every node (profiles replicate in the
/// background).
fn wait_user_everywhere(nodes: &[&Node]) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let ok = nodes.iter().all(|n| {
            std::process::Command::new("python3")
                .args(["-c", &format!(
                    "import imaplib;m=imaplib.IMAP4('{}',{});m.login('{USER}','{PASSWORD}');m.logout()",
                    n.ip, n.imap
                )])
                .output()
                .is_ok_and(|o| o.status.success())
        });
        if ok {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the user never reached every node"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn three_nodes_show_one_mailbox_live_and_keep_answered_flags_through_a_sigkill() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().to_path_buf();
    let ports = Ports::free();
    let n1 = start(&dir, 1, &ports);
    let n2 = start(&dir, 2, &ports);
    let n3 = start(&dir, 3, &ports);
    wait_members(&[&n1, &n2, &n3], 3);
    n1.add_user(USER);
    wait_user_everywhere(&[&n1, &n2, &n3]);

    // A session IDLEs on node 1; mail arrives through node 2.
    let idle_args = [vec!["idle-for".into()], imap_args(&n1), vec!["10".into()]].concat();
    let idler = std::thread::spawn(move || python("imap.py", &idle_args));
    std::thread::sleep(Duration::from_millis(1500));
    let out = python(
        "imap.py",
        &[
            "deliver".into(),
            n2.ip.clone(),
            n2.smtp.to_string(),
            USER.into(),
            "via-n2".into(),
        ],
    );
    assert!(out.contains("delivered"), "{out}");
    let idle = idler.join().unwrap();
    assert!(idle.contains("idle saw 1 EXISTS"), "{idle}");
    println!("{idle}");

    // A session on node 1 sees a flag set through node 3.
    let uid = inbox_uids(&snapshot(&n1))[0].to_string();
    let watch_args = [
        vec!["flags-of".into()],
        imap_args(&n1),
        vec![uid.clone(), "10".into()],
    ]
    .concat();
    let watcher = std::thread::spawn(move || python("imap.py", &watch_args));
    std::thread::sleep(Duration::from_millis(1000));
    let out = python(
        "imap.py",
        &[
            vec!["store".into()],
            imap_args(&n3),
            vec![uid.clone(), "\\Flagged".into()],
        ]
        .concat(),
    );
    assert!(out.contains("stored"), "{out}");
    let seen = watcher.join().unwrap();
    assert!(seen.contains("\\\\Flagged"), "{seen}");

    // A session on node 1 is told of an expunge made through node 3.
    let out = python(
        "imap.py",
        &[
            "deliver".into(),
            n2.ip.clone(),
            n2.smtp.to_string(),
            USER.into(),
            "to-expunge".into(),
        ],
    );
    assert!(out.contains("delivered"), "{out}");
    let doomed = inbox_uids(&snapshot(&n1))
        .last()
        .copied()
        .expect("the second message")
        .to_string();
    let watch_args = [
        vec!["expunge-seen".into()],
        imap_args(&n1),
        vec![doomed.clone(), "10".into()],
    ]
    .concat();
    let watcher = std::thread::spawn(move || python("imap.py", &watch_args));
    std::thread::sleep(Duration::from_millis(1000));
    let out = python(
        "imap.py",
        &[vec!["expunge".into()], imap_args(&n3), vec![doomed]].concat(),
    );
    assert!(out.contains("expunged"), "{out}");
    let seen = watcher.join().unwrap();
    assert!(seen.contains("expunge seen"), "{seen}");

    // Every node shows the same mailbox.
    let view = snapshot(&n2);
    assert_eq!(view, snapshot(&n3));
    assert_eq!(view, snapshot(&n1));

    // A flag change answered OK survives the SIGKILL of whichever node ran it.
    let out = python(
        "imap.py",
        &[
            vec!["store".into()],
            imap_args(&n2),
            vec![uid.clone(), "$Kept".into()],
        ]
        .concat(),
    );
    assert!(out.contains("stored"), "{out}");
    n2.kill();
    wait_members(&[&n1, &n3], 2);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let after = loop {
        let out = std::process::Command::new("python3")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/imap.py"))
            .arg("snapshot")
            .args(imap_args(&n1))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if let Some(line) = text.lines().find_map(|l| l.strip_prefix("snapshot ")) {
            break serde_json::from_str::<serde_json::Value>(line).unwrap();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "node 1 never served the mailbox again: {text}"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    let flags = &after["INBOX"]["messages"][0][1];
    assert!(
        flags.as_array().unwrap().iter().any(|f| f == "$Kept"),
        "a flag change answered OK was lost with its node: {after}"
    );
    assert_eq!(after["INBOX"]["uidvalidity"], view["INBOX"]["uidvalidity"]);
    assert_eq!(
        inbox_uids(&after),
        inbox_uids(&view),
        "UIDs changed after a node's death"
    );
}

#[test]
fn a_member_back_from_a_sigkill_shows_imap_nothing_before_it_has_merged() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().to_path_buf();
    let ports = Ports::free();
    let member = |n: usize| start_member(&dir, "127.0.0", 76, n, &ports, &["--replicas", "2"]);
    let n1 = member(1);
    let n2 = member(2);
    let n3 = member(3);
    wait_members(&[&n1, &n2, &n3], 3);
    n1.add_user(USER);
    wait_user_everywhere(&[&n1, &n2, &n3]);
    for subject in ["kept", "doomed"] {
        let out = python(
            "imap.py",
            &[
                "deliver".into(),
                n1.ip.clone(),
                n1.smtp.to_string(),
                USER.into(),
                subject.into(),
            ],
        );
        assert!(out.contains("delivered"), "{out}");
    }
    let uids = inbox_uids(&snapshot(&n1));
    assert_eq!(uids.len(), 2, "{uids:?}");
    let doomed = uids[1];

    // Node 3 dies; while it is away a message is expunged.
    n3.kill();
    wait_members(&[&n1, &n2], 2);
    let out = python(
        "imap.py",
        &[
            vec!["expunge".into()],
            imap_args(&n1),
            vec![doomed.to_string()],
        ]
        .concat(),
    );
    assert!(out.contains("expunged"), "{out}");

    // Node 3 comes back while its peers cannot answer: alone, it holds no majority, and its
    // copies do not know of the expunge. It must not serve the mailbox from them.
    n1.signal("-STOP");
    n2.signal("-STOP");
    let n3 = member(3);
    let out = python(
        "imap.py",
        &[vec!["inbox-or-refusal".into()], imap_args(&n3)].concat(),
    );
    println!("node 3 alone: {out}");
    if let Some(line) = out.lines().find_map(|l| l.strip_prefix("inbox ")) {
        assert!(
            !line.split(',').any(|u| u == doomed.to_string()),
            "a restarted node alone showed the expunged UID {doomed}: {out}"
        );
    }
    assert!(
        out.contains("refused") && out.contains("UNAVAILABLE"),
        "node 3 served IMAP alone, without a majority: {out}"
    );

    // Once the peers answer again, node 3 merges and shows what they do.
    n1.signal("-CONT");
    n2.signal("-CONT");
    wait_members(&[&n1, &n2, &n3], 3);
    let view = snapshot(&n1);
    assert_eq!(inbox_uids(&view), vec![uids[0]]);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let out = python(
            "imap.py",
            &[vec!["inbox-or-refusal".into()], imap_args(&n3)].concat(),
        );
        if out.contains(&format!("inbox {}\n", uids[0])) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "node 3 never showed the mailbox as its peers do: {out}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(snapshot(&n3), view);
}
