//! Chaos: three nodes with two replicas per message (127.0.0.41–43) take the paper's workload
//! from `porcupine-load` while one node at a time is SIGKILLed and restarted. Afterwards every
//! message that got a 250 has been retrieved, byte-exact (during the run or by the load
//! generator's final sweep, after the faults): nothing is lost or corrupt; and through every
//! node every maildrop is then empty: nothing deleted came back. Messages seen twice during
//! the faults are counted and bounded (see below).
//!
//! `PORCUPINE_CHAOS_CYCLES` sets the number of kills (default 3; `.ci/run` runs 8 with
//! `PORCUPINE_LONG=1`).

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::cluster::{start_member, wait_members, Ports};
use common::{python, Node, PASSWORD};

const USERS: u64 = 200;

#[test]
fn acknowledged_mail_survives_nodes_killed_one_at_a_time() {
    let cycles: u64 = std::env::var("PORCUPINE_CHAOS_CYCLES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(3);
    // PORCUPINE_CHAOS_KEEP=1 keeps the data and the node logs for a post-mortem.
    let keep = std::env::var_os("PORCUPINE_CHAOS_KEEP").is_some();
    let dir = tempfile::Builder::new()
        .prefix("porcupine-chaos")
        .disable_cleanup(keep)
        .tempdir()
        .unwrap();
    if keep {
        eprintln!("chaos: keeping {}", dir.path().display());
    }
    let ports = Ports::free();
    let extra = ["--replicas", "2"];
    let start = |n: usize| start_member(dir.path(), "127.0.0", 40, n, &ports, &extra);
    let mut nodes: Vec<Option<Node>> = (1..=3).map(|n| Some(start(n))).collect();
    {
        let all: Vec<&Node> = nodes.iter().flatten().collect();
        wait_members(&all, 3);
        all[0].bulk_users(USERS, "user");
    }
    let addrs = |port: u16| {
        (41..=43)
            .map(|n| format!("127.0.0.{n}:{port}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    // Long enough that every kill and restart happens while mail flows.
    let seconds = 6 + cycles * 8;
    let report_path = dir.path().join("load.json");
    let mut load = Command::new(env!("CARGO_BIN_EXE_porcupine-load"))
        .args(["--smtp", &addrs(ports.smtp), "--pop3", &addrs(ports.pop3)])
        .args(["--users", &USERS.to_string(), "--password", PASSWORD])
        .args(["--mix", "90:10", "--size", "4700", "--connections", "12"])
        .args(["--threads", "1", "--duration", &format!("{seconds}s")])
        .args(["--sweep-timeout", "60s", "--json"])
        .arg(&report_path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start porcupine-load");
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    for cycle in 0..cycles {
        let victim = (cycle % 3) as usize;
        if let Some(node) = nodes[victim].take() {
            node.kill();
        }
        {
            let others: Vec<&Node> = nodes.iter().flatten().collect();
            wait_members(&others, 2);
        }
        std::thread::sleep(Duration::from_secs(2));
        nodes[victim] = Some(start(victim + 1));
        let all: Vec<&Node> = nodes.iter().flatten().collect();
        wait_members(&all, 3);
        eprintln!(
            "cycle {cycle}: node {} killed and back at {:?}",
            victim + 1,
            started.elapsed()
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    let deadline = Instant::now() + Duration::from_secs(seconds + 180);
    let status = loop {
        if let Some(status) = load.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "porcupine-load did not finish");
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = load.stderr.take() {
        use std::io::Read;
        let _ = pipe.read_to_string(&mut stderr);
    }
    assert!(status.success(), "porcupine-load failed:\n{stderr}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report_path).unwrap()).unwrap();
    eprintln!(
        "chaos: {cycles} kills; delivered {}, retrieved {}, POP sessions {}, lost {}, corrupt {}, \
         seen twice {} {}, uncertain {}, errors {}",
        report["delivered"],
        report["retrieved"],
        report["pop_sessions"],
        report["lost"],
        report["corrupt"],
        report["duplicated"],
        report["duplicated_sample"],
        report["uncertain"],
        report["errors"]
    );
    assert_eq!(report["verified"], true, "{report}");
    assert!(report["delivered"].as_u64().unwrap() > 200, "{report}");
    assert_eq!(report["lost"], 0, "{report}");
    assert_eq!(report["corrupt"], 0, "{report}");
    // Nothing deleted comes back: no message is retrieved again after a session's QUIT was
    // answered +OK (the policy simulator, `cluster/core/tests/policy_sim.rs`, found the
    // interleavings that used to show 0–3 per ~50,000 here; see the maildrop module).
    let duplicated = report["duplicated"].as_u64().unwrap_or(u64::MAX);
    assert_eq!(
        duplicated, 0,
        "messages seen again after their delete was acknowledged: {report}"
    );
    // Through every node: every maildrop is empty.
    for node in nodes.iter().flatten() {
        let out = python(
            "cluster_mail.py",
            &[
                "empty".into(),
                node.ip.clone(),
                node.pop3.to_string(),
                PASSWORD.into(),
                USERS.to_string(),
            ],
        );
        assert!(out.contains("empty ok"), "{out}");
    }
    for node in nodes.into_iter().flatten() {
        assert!(node.terminate().success());
    }
}
