//! LMTP (RFC 2033) through the real binary: a raw socket and Python's `smtplib.LMTP` (an
//! unknown recipient refused alone, one reply per recipient after the data, BDAT), then a real
//! Postfix delivering to the node with `virtual_transport = lmtp:inet:…` (tests/py/lmtp.py).
//! Every copy is read back by POP3 and IMAP, byte for byte. Postfix must be installed
//! (`.ci/run` installs it) and the test run as root, as Postfix needs; a missing Postfix fails
//! the test with that reason, never a silent skip.

mod common;

use common::{python, Node, PASSWORD};

fn read_args(node: &Node) -> Vec<String> {
    vec![
        node.ip.clone(),
        node.lmtp.to_string(),
        node.pop3.to_string(),
        node.imap.to_string(),
        PASSWORD.into(),
    ]
}

#[test]
fn lmtp_replies_per_recipient_and_stores_byte_exact() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("data"), &[]);
    let (one, two) = ("lmtp-one@localhost", "lmtp-two@localhost");
    node.add_user(one);
    node.add_user(two);
    let out = python(
        "lmtp.py",
        &[
            vec!["direct".into()],
            read_args(&node),
            vec![one.into(), two.into()],
        ]
        .concat(),
    );
    assert!(out.contains("direct ok"), "{out}");
    let sessions = node.metric("porcupine_lmtp_sessions_total").unwrap_or(0.0);
    assert!(sessions >= 2.0, "LMTP sessions counted: {sessions}");
}

#[test]
fn postfix_delivers_to_the_node_over_lmtp() {
    let found = std::process::Command::new("sh")
        .args(["-c", "command -v postfix && id postfix"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "Postfix (and its `postfix` user) is needed for this test (.ci/run installs it)"
    );
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    assert!(
        root,
        "Postfix runs as root (it drops privileges itself): run the tests as root"
    );
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("data"), &[]);
    let (one, two) = ("via-postfix-1@localhost", "via-postfix-2@localhost");
    node.add_user(one);
    node.add_user(two);
    let out = python(
        "lmtp.py",
        &[
            vec!["postfix".into()],
            read_args(&node),
            vec![
                one.into(),
                two.into(),
                dir.path().join("postfix").display().to_string(),
            ],
        ]
        .concat(),
    );
    assert!(out.contains("postfix ok"), "{out}");
}
