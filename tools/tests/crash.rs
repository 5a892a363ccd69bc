//! SIGKILL under concurrent delivery load: every message that got a 250 is there after a
//! restart, intact (checksum) and exactly once. Cycles: `PORCUPINE_NODE_CRASH_CYCLES` (default 3).

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Node, PASSWORD};

#[test]
fn every_acknowledged_message_survives_sigkill() {
    let cycles: usize = std::env::var("PORCUPINE_NODE_CRASH_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let acked_path = dir.path().join("acked.txt");
    let mut acked_all = String::new();
    let mut node = Node::start(&data, &[]);
    let (smtp, pop3, admin) = (node.smtp, node.pop3, node.admin);
    node.add_user("load@localhost");
    let script = |name: &str| format!("{}/tests/py/{name}", env!("CARGO_MANIFEST_DIR"));
    for cycle in 0..cycles {
        let load = Command::new("python3")
            .arg(script("load.py"))
            .args([&smtp.to_string(), "load@localhost", "30", "16"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(1500 + 500 * cycle as u64));
        node.kill();
        let out = load.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let acked = text.lines().filter(|l| l.starts_with("ACK ")).count();
        assert!(
            acked > 10,
            "cycle {cycle}: only {acked} acknowledged before the kill"
        );
        acked_all.push_str(&text);
        std::fs::write(&acked_path, &acked_all).unwrap();
        node = Node::start_on(&data, smtp, pop3, admin, &[]);
        let verdict = common::python(
            "verify.py",
            &[
                pop3.to_string(),
                "load@localhost".into(),
                PASSWORD.into(),
                acked_path.display().to_string(),
            ],
        );
        eprintln!("cycle {cycle}: {}", verdict.trim());
    }
    assert!(node.terminate().success());
}
