//! IMAP through node failures: three nodes with two replicas (127.0.0.81–83), one IMAP
//! session per user appending, flagging and expunging through a random node while one node at
//! a time is SIGKILLed and restarted (tests/py/imap_chaos.py). Afterwards, through every node:
//! every APPEND answered OK is there under the UID it was given (unless its expunge was
//! answered OK), no UID names another message, nothing is shown twice, every flag change
//! answered OK holds, nothing expunged is back, and every node shows the same mailbox.
//! `PORCUPINE_IMAP_CHAOS_CYCLES` sets the number of kills (default 2).

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::cluster::{start_member, wait_members, Ports};
use common::{python, Node, PASSWORD};

const USERS: [&str; 4] = [
    "c1@localhost",
    "c2@localhost",
    "c3@localhost",
    "c4@localhost",
];

#[test]
fn imap_sessions_keep_uids_flags_and_expunges_through_sigkills() {
    let cycles: u64 = std::env::var("PORCUPINE_IMAP_CHAOS_CYCLES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(2);
    // PORCUPINE_CHAOS_KEEP=1 keeps the data, the node logs and the workload's log.
    let keep = std::env::var_os("PORCUPINE_CHAOS_KEEP").is_some();
    let dir = tempfile::Builder::new()
        .prefix("porcupine-imap-chaos")
        .disable_cleanup(keep)
        .tempdir()
        .unwrap();
    if keep {
        eprintln!("imap chaos: keeping {}", dir.path().display());
    }
    let wall = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    };
    let ports = Ports::free();
    let extra = ["--replicas", "2"];
    let start = |n: usize| start_member(dir.path(), "127.0.0", 80, n, &ports, &extra);
    let mut nodes: Vec<Option<Node>> = (1..=3).map(|n| Some(start(n))).collect();
    {
        let all: Vec<&Node> = nodes.iter().flatten().collect();
        wait_members(&all, 3);
        for user in USERS {
            all[0].add_user(user);
        }
    }
    let hosts = (81..=83)
        .map(|n| format!("127.0.0.{n}:{}", ports.imap))
        .collect::<Vec<_>>()
        .join(",");
    let users = USERS.join(",");
    let log = dir.path().join("imap-chaos.log");
    let seconds = 6 + cycles * 9;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/imap_chaos.py");
    let load = Command::new("python3")
        .args([
            script,
            "run",
            &hosts,
            &users,
            PASSWORD,
            &seconds.to_string(),
        ])
        .arg(&log)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    for cycle in 0..cycles {
        let victim = (cycle % 3) as usize;
        if let Some(node) = nodes[victim].take() {
            node.kill();
        }
        eprintln!("imap chaos: node {} killed @{:.3}", victim + 1, wall());
        {
            let others: Vec<&Node> = nodes.iter().flatten().collect();
            wait_members(&others, 2);
        }
        std::thread::sleep(Duration::from_secs(2));
        nodes[victim] = Some(start(victim + 1));
        let all: Vec<&Node> = nodes.iter().flatten().collect();
        wait_members(&all, 3);
        eprintln!(
            "imap chaos cycle {cycle}: node {} killed and back at {:?} @{:.3}",
            victim + 1,
            started.elapsed(),
            wall()
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    let out = load.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the IMAP workload failed:\n{text}");
    println!("{text}");
    let appends: u64 = text
        .split_whitespace()
        .find_map(|w| w.strip_prefix("append=")?.parse().ok())
        .unwrap_or(0);
    assert!(appends >= 50, "too little IMAP work to judge: {text}");
    let out = python(
        "imap_chaos.py",
        &[
            "check".into(),
            hosts,
            users,
            PASSWORD.into(),
            log.display().to_string(),
        ],
    );
    assert!(out.contains("chaos ok"), "{out}");
    println!("{out}");
    for node in nodes.into_iter().flatten() {
        assert!(node.terminate().success());
    }
}
