//! Chaos: three nodes with two replicas per message (127.0.0.41–43) take the paper's workload
//! from `porcupine-load` while one node at a time is SIGKILLed and restarted. Afterwards every
//! message that got a 250 has been retrieved, byte-exact (during the run or by the load
//! generator's final sweep, after the faults): nothing is lost or corrupt; and through every
//! node every maildrop is then empty: nothing deleted came back. Messages seen twice during
//! the faults are counted and bounded (see below).
//!
//! `PORCUPINE_CHAOS_CYCLES` sets the number of kills (default 3; `.ci/run` runs 50 with
//! `PORCUPINE_LONG=1`).

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::cluster::{start_member, wait_members, Ports};
use common::{Node, PASSWORD};

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
    let load = Command::new(env!("CARGO_BIN_EXE_porcupine-load"))
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
    let all: Vec<&Node> = nodes.iter().flatten().collect();
    common::chaos::check_after_faults(
        "chaos",
        load,
        &report_path,
        Duration::from_secs(seconds + 180),
        &all,
        USERS,
    );
    for node in nodes.into_iter().flatten() {
        assert!(node.terminate().success());
    }
}
