//! The user lifecycle and quotas through the real binary and stock clients
//! (tests/py/user_lifecycle.py):
//! - `porcupine user delete` on a three-node cluster (`--replicas 2`): the address is refused
//!   at RCPT and its logins fail on every node, every copy of its mail and its folders are
//!   gone, a node killed with SIGKILL and restarted brings nothing back, and the address added
//!   again is a new user (empty, a new UIDVALIDITY) whom an IMAP session of the deleted user,
//!   idle through it all, is never shown; with one copy per message, the mail a
//!   node held while it was down at the delete is removed when it returns, and never shows
//!   up for the next user given the address;
//! - quotas on one node: the node's default and a user's own, met at RCPT, at the end of the
//!   data, per recipient by LMTP, at IMAP APPEND, told by GETQUOTA, freed by a POP3 delete;
//! - SIGHUP: a new quota default from the config file takes effect, a changed setting that
//!   needs a restart is named, a broken file changes nothing.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{start_member, status, wait_settled, Ports};
use common::{python, Node, PASSWORD};

/// Messages held on all `nodes` together (each copy counted).
fn copies(nodes: &[&Node]) -> u64 {
    nodes.iter().map(|n| status(n).messages).sum()
}

fn wait_copies(nodes: &[&Node], expected: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let held = copies(nodes);
        if held == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{held} copies held, expected {expected}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_deleted_user_is_gone_from_every_node_and_stays_gone() {
    let dir = tempfile::tempdir().unwrap();
    let ports = Ports::free();
    let start =
        |n: usize| start_member(dir.path(), "127.0.0", 130, n, &ports, &["--replicas", "2"]);
    let mut nodes = vec![start(1), start(2), start(3)];
    wait_settled(&nodes.iter().collect::<Vec<_>>(), 3);
    let (user, other) = ("leaver@localhost", "stayer@localhost");
    nodes[0].add_user(user);
    nodes[0].add_user(other);
    let fill = python(
        "user_lifecycle.py",
        &[
            "fill".into(),
            nodes[0].ip.clone(),
            nodes[0].smtp.to_string(),
            nodes[1].imap.to_string(),
            PASSWORD.into(),
            user.into(),
            other.into(),
        ],
    );
    let validity: serde_json::Value =
        serde_json::from_str(fill.lines().last().unwrap_or("")).expect("fill's report");
    // Six messages, each on two nodes.
    wait_copies(&nodes.iter().collect::<Vec<_>>(), 12);
    let (ok, shown) = nodes[2].cli(&["user", "show", user, "--json"]);
    assert!(ok, "{shown}");
    assert!(shown.contains("\"messages\":5"), "{shown}");

    // A session logged in before the delete, idle through it and through the address being
    // given to a new user, is never served the new user's mailbox.
    let trigger = dir.path().join("stale-trigger");
    let stale_args = vec![
        "stale".to_string(),
        nodes[0].ip.clone(),
        nodes[0].imap.to_string(),
        PASSWORD.into(),
        user.into(),
        trigger.display().to_string(),
    ];
    let stale = std::thread::spawn(move || python("user_lifecycle.py", &stale_args));
    std::thread::sleep(Duration::from_millis(1500));

    let (ok, said) = nodes[2].cli(&["user", "delete", user]);
    assert!(ok, "{said}");
    assert!(
        said.contains(&format!("deleted {user}: 5 messages removed")),
        "{said}"
    );
    // Only the other user's message is left, on its two nodes.
    wait_copies(&nodes.iter().collect::<Vec<_>>(), 2);
    for node in &nodes {
        let out = python(
            "user_lifecycle.py",
            &[
                "gone".into(),
                node.ip.clone(),
                node.smtp.to_string(),
                node.pop3.to_string(),
                node.imap.to_string(),
                PASSWORD.into(),
                user.into(),
                other.into(),
            ],
        );
        assert!(out.contains("gone ok"), "{out}");
        // `gone` gave the other user one more message each time.
        let (ok, list) = node.cli(&["user", "list"]);
        assert!(ok && list.contains(other) && !list.contains(user), "{list}");
        let (ok, shown) = node.cli(&["user", "show", user]);
        assert!(!ok && shown.contains(&format!("no user {user}")), "{shown}");
    }
    wait_copies(&nodes.iter().collect::<Vec<_>>(), 2 + 2 * 3);

    // A node killed and started again brings back neither the user nor their mail.
    let second = nodes.remove(1);
    second.kill();
    nodes.insert(1, start(2));
    wait_settled(&nodes.iter().collect::<Vec<_>>(), 3);
    wait_copies(&nodes.iter().collect::<Vec<_>>(), 2 + 2 * 3);
    let (ok, shown) = nodes[1].cli(&["user", "show", user]);
    assert!(!ok && shown.contains("no user"), "{shown}");

    // Deleting again says there is no such user; the address added again is a new user.
    let (ok, said) = nodes[0].cli(&["user", "delete", "nobody-here@localhost"]);
    assert!(
        !ok && said.contains("no user nobody-here@localhost"),
        "{said}"
    );
    nodes[1].add_user(user);
    let out = python(
        "user_lifecycle.py",
        &[
            "fresh".into(),
            nodes[2].ip.clone(),
            nodes[2].imap.to_string(),
            PASSWORD.into(),
            user.into(),
            validity["uidvalidity"].to_string(),
        ],
    );
    assert!(out.contains("fresh ok"), "{out}");
    std::fs::write(&trigger, b"").unwrap();
    let out = stale.join().unwrap();
    assert!(out.contains("stale refused"), "{out}");
}

#[test]
fn quotas_refuse_at_every_door_and_a_delete_frees_room() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("data"), &["--quota-storage", "20K"]);
    let (a, b, c) = (
        "quota-a@localhost",
        "quota-b@localhost",
        "quota-c@localhost",
    );
    for user in [a, b, c] {
        node.add_user(user);
    }
    let (ok, said) = node.cli(&["user", "quota", b, "--storage", "none", "--messages", "3"]);
    assert!(ok, "{said}");
    assert!(said.contains("messages:        0 of 3"), "{said}");
    assert!(said.contains("(no limit)  [the user's own]"), "{said}");
    let (ok, said) = node.cli(&["user", "quota", a, "--storage", "lots"]);
    assert!(!ok && said.contains("bad size"), "{said}");
    let out = python(
        "user_lifecycle.py",
        &[
            "quota".into(),
            node.ip.clone(),
            node.smtp.to_string(),
            node.lmtp.to_string(),
            node.pop3.to_string(),
            node.imap.to_string(),
            PASSWORD.into(),
            a.into(),
            b.into(),
            c.into(),
        ],
    );
    assert!(out.contains("quota ok"), "{out}");
    // A: two big messages and a small one left, then the big one sent after the deletes.
    let (ok, report) = node.cli(&["user", "quota", a, "--json"]);
    assert!(ok, "{report}");
    let report: serde_json::Value = serde_json::from_str(&report).expect("JSON");
    assert_eq!(report["usage"]["messages"], 3, "{report}");
    assert_eq!(report["limits"]["storage"], 20 * 1024, "{report}");
    let (ok, shown) = node.cli(&["user", "show", a]);
    assert!(ok && shown.contains("quota: storage "), "{shown}");
    assert!(shown.contains(" of 20480 ("), "{shown}");
}

fn send(node: &Node, rcpt: &str, expected: &str) {
    let out = python(
        "user_lifecycle.py",
        &[
            "send".into(),
            node.ip.clone(),
            node.smtp.to_string(),
            rcpt.into(),
            expected.into(),
        ],
    );
    assert!(out.contains(expected), "{out}");
}

/// Sends SIGHUP and waits until the node's log has said `expected` once more than before.
fn hangup(node: &Node, log: &std::path::Path, expected: &str) -> String {
    let before = std::fs::read_to_string(log)
        .unwrap_or_default()
        .matches(expected)
        .count();
    node.signal("-HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.matches(expected).count() > before {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "no {expected:?} in the log:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn sighup_takes_live_settings_from_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("porcupine.toml");
    std::fs::write(&file, "quota-messages = \"2\"\n").unwrap();
    let file_arg = file.display().to_string();
    let node = Node::start(&dir.path().join("data"), &["--config", &file_arg]);
    let log = dir.path().join("data.log");
    let user = "reload@localhost";
    node.add_user(user);
    let (ok, said) = node.cli(&["user", "quota", user]);
    assert!(
        ok && said.contains("0 of 2 (0.0%)  [the node's default]"),
        "{said}"
    );
    send(&node, user, "sent 250");
    send(&node, user, "sent 250");
    send(&node, user, "refused 552");

    // A larger default, and a setting that needs a restart.
    std::fs::write(
        &file,
        "quota-messages = \"5\"\nhostname = \"elsewhere.example\"\n",
    )
    .unwrap();
    let text = hangup(&node, &log, "configuration reloaded");
    assert!(text.contains("quota-messages"), "{text}");
    assert!(text.contains("take effect only at a restart"), "{text}");
    assert!(text.contains("hostname"), "{text}");
    // Nothing else is named: a reload of the same file differs only where the file does.
    assert!(!text.contains("other settings"), "{text}");
    let (ok, said) = node.cli(&["user", "quota", user]);
    assert!(ok && said.contains("2 of 5 ("), "{said}");
    send(&node, user, "sent 250");

    // A file that does not read changes nothing.
    std::fs::write(&file, "quota-messages = \"many\"\n").unwrap();
    hangup(&node, &log, "the configuration was not reloaded");
    let (ok, said) = node.cli(&["user", "quota", user]);
    assert!(ok && said.contains("3 of 5 ("), "{said}");

    // Back to the start's hostname, with a live change only: nothing needs a restart.
    let warned = |text: &str| text.matches("take effect only at a restart").count();
    let before = warned(&std::fs::read_to_string(&log).unwrap_or_default());
    std::fs::write(&file, "quota-messages = \"6\"\n").unwrap();
    let text = hangup(&node, &log, "configuration reloaded");
    assert_eq!(warned(&text), before, "{text}");
    assert!(node.terminate().success());
}

#[test]
fn mail_left_on_a_node_that_was_down_at_the_delete_never_reaches_the_next_user() {
    let dir = tempfile::tempdir().unwrap();
    let ports = Ports::free();
    // One copy of each message: the node that is down holds the only copies of some.
    let start =
        |n: usize| start_member(dir.path(), "127.0.0", 150, n, &ports, &["--replicas", "1"]);
    let mut nodes = vec![start(1), start(2), start(3)];
    wait_settled(&nodes.iter().collect::<Vec<_>>(), 3);
    let user = "away@localhost";
    nodes[0].add_user(user);
    for node in &nodes {
        for _ in 0..4 {
            send(node, user, "sent 250");
        }
    }
    wait_copies(&nodes.iter().collect::<Vec<_>>(), 12);
    // The node holding the most of the user's mail goes away.
    let held: Vec<u64> = nodes.iter().map(|n| status(n).messages).collect();
    let away = (0..3).max_by_key(|&i| held[i]).unwrap_or(0);
    assert!(held[away] > 0, "{held:?}");
    let here = (away + 1) % 3;
    nodes.remove(away).kill();
    let live: Vec<&Node> = nodes.iter().collect();
    wait_settled(&live, 2);
    // The delete may say that mail could not all be removed; either way the user is gone.
    let (_, said) = live[here.min(1)].cli(&["user", "delete", user]);
    assert!(said.contains(user), "{said}");
    wait_copies(&live, 0);
    // The address is given again, to a new user, who gets one message, before the node that
    // was away returns with the earlier user's mail.
    live[0].add_user(user);
    send(live[0], user, "sent 250");
    wait_copies(&live, 1);
    nodes.insert(away, start(away + 1));
    wait_settled(&nodes.iter().collect::<Vec<_>>(), 3);
    // The node that was away removes what it held of the earlier user (its first look is
    // 20 s after its start); the new user's message stays.
    let deadline = Instant::now() + Duration::from_secs(60);
    while copies(&nodes.iter().collect::<Vec<_>>()) > 1 {
        assert!(
            Instant::now() < deadline,
            "the deleted user's mail stayed: {:?}",
            nodes.iter().map(|n| status(n).messages).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let log = std::fs::read_to_string(dir.path().join(format!("node{}.log", away + 1)))
        .unwrap_or_default();
    assert!(
        log.contains("removed messages that deleted users left behind"),
        "{log}"
    );
    let (ok, shown) = nodes[0].cli(&["user", "show", user, "--json"]);
    assert!(ok && shown.contains("\"messages\":1,"), "{shown}");
}
