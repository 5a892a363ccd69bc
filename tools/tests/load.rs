//! `porcupine-load` against the real node: the paper's mix for a few seconds, by BDAT and by
//! DATA, every delivery accounted for by the final sweep, nothing lost, duplicated or corrupt.

mod common;

use std::process::Command;

use common::Node;

/// Replies with `code` the node has sent (0 if none yet).
fn replies(node: &Node, code: u16) -> u64 {
    node.metric(&format!("porcupine_smtp_replies_total{{code=\"{code}\"}}"))
        .map_or(0, |n| n as u64)
}

/// Runs the mix for a few seconds; checks the report; returns messages delivered.
fn run(node: &Node, extra: &[&str]) -> u64 {
    let out = Command::new(env!("CARGO_BIN_EXE_porcupine-load"))
        .args([
            "--smtp",
            &format!("127.0.0.1:{}", node.smtp),
            "--pop3",
            &format!("127.0.0.1:{}", node.pop3),
        ])
        .args([
            "--users",
            "200",
            "--password",
            common::PASSWORD,
            "--connections",
            "8",
            "--duration",
            "4s",
        ])
        .args(extra)
        .args(["--json", "-"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "porcupine-load failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().last().unwrap_or("");
    let report: serde_json::Value = serde_json::from_str(last).expect("last line is JSON");
    assert!(report["delivered"].as_u64().unwrap() > 100, "{report}");
    assert!(report["pop_sessions"].as_u64().unwrap() > 5, "{report}");
    assert_eq!(report["verified"], true);
    assert_eq!(report["lost"], 0, "{report}");
    assert_eq!(report["duplicated"], 0, "{report}");
    assert_eq!(report["corrupt"], 0, "{report}");
    assert!(report["smtp"]["p99_ms"].as_f64().unwrap() > 0.0);
    // Everything delivered was either retrieved during the run or by the sweep.
    assert_eq!(report["retrieved"], report["delivered"], "{report}");
    report["delivered"].as_u64().unwrap()
}

#[test]
fn the_paper_workload_runs_with_no_lost_or_corrupt_mail() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    node.bulk_users(200, "user");
    // The node offers CHUNKING: every message goes by BDAT, so no DATA is ever started.
    run(&node, &[]);
    assert_eq!(replies(&node, 354), 0);
    // The same with DATA.
    let delivered = run(&node, &["--no-chunking"]);
    assert!(
        replies(&node, 354) >= delivered,
        "354s: {}",
        replies(&node, 354)
    );
    assert!(node.terminate().success());
}
