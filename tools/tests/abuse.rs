//! Abuse limits through the real binary: connections and their rate per client address, a
//! growing wait after wrong passwords, a session dropped when its client stops reading, and a
//! message refused 451 4.3.1 when the node's memory for messages in transfer is spent. The
//! node keeps serving everyone else throughout. (Loopback is exempt by default; these nodes
//! are started with `--limits-exempt none`.)

mod common;

use common::{python, Node, PASSWORD};

#[test]
fn an_address_gets_its_share_of_connections_and_no_more() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(
        &dir.path().join("held"),
        &["--limits-exempt", "none", "--connections-per-ip", "5"],
    );
    let out = python(
        "abuse.py",
        &[
            "held".into(),
            node.ip.clone(),
            node.smtp.to_string(),
            "5".into(),
        ],
    );
    assert!(out.contains("held ok"), "{out}");
    assert!(node.metric("porcupine_sessions_refused_total").unwrap() >= 1.0);
    let fast = Node::start(
        &dir.path().join("fast"),
        &["--limits-exempt", "none", "--connection-rate-per-ip", "2"],
    );
    let out = python(
        "abuse.py",
        &[
            "rate".into(),
            fast.ip.clone(),
            fast.smtp.to_string(),
            "20".into(),
        ],
    );
    let words: Vec<&str> = out.split_whitespace().collect();
    let (admitted, refused): (u32, u32) = (words[2].parse().unwrap(), words[4].parse().unwrap());
    // A burst of 4, then 2 a second for the second or so the loop takes.
    assert!((4..=10).contains(&admitted) && refused >= 10, "{out}");
    // Loopback is exempt on a node with the default settings.
    let open = Node::start(&dir.path().join("open"), &[]);
    let out = python(
        "abuse.py",
        &[
            "rate".into(),
            open.ip.clone(),
            open.smtp.to_string(),
            "60".into(),
        ],
    );
    assert!(out.contains("admitted 60 refused 0"), "{out}");
}

#[test]
fn wrong_passwords_wait_longer_each_time_and_the_right_one_still_works() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("data"), &["--limits-exempt", "none"]);
    node.add_user("dave@localhost");
    let out = python(
        "abuse.py",
        &[
            "logins".into(),
            node.ip.clone(),
            node.pop3.to_string(),
            "dave@localhost".into(),
            PASSWORD.into(),
        ],
    );
    assert!(out.contains("logins ok"), "{out}");
}

#[test]
fn a_client_that_never_reads_loses_its_session() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("data"), &["--write-timeout-s", "2"]);
    node.add_user("erin@localhost");
    let big = python(
        "abuse.py",
        &[
            "big".into(),
            node.ip.clone(),
            node.smtp.to_string(),
            "erin@localhost".into(),
            "3000000".into(),
        ],
    );
    assert!(big.contains("big 250"), "{big}");
    let out = python(
        "abuse.py",
        &[
            "stall".into(),
            node.ip.clone(),
            node.pop3.to_string(),
            "erin@localhost".into(),
            PASSWORD.into(),
        ],
    );
    assert!(out.contains("stall dropped after"), "{out}");
    let received: u64 = out.split_whitespace().nth(3).unwrap().parse().unwrap();
    assert!(received < 40 * 3_000_000, "{out}");
    // Meanwhile and after, others are served.
    node.add_user("frank@localhost");
}

#[test]
fn past_the_transfer_memory_a_message_gets_451_and_the_next_one_goes_through() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("data"), &["--transfer-memory-mib", "1"]);
    node.add_user("gina@localhost");
    let out = python(
        "abuse.py",
        &[
            "big".into(),
            node.ip.clone(),
            node.smtp.to_string(),
            "gina@localhost".into(),
            "3000000".into(),
        ],
    );
    assert!(out.contains("big 451 4.3.1"), "{out}");
    assert!(out.contains("then small 250"), "{out}");
    assert!(node.metric("porcupine_transfer_refused_total").unwrap() >= 1.0);
}
