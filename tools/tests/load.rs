//! `porcupine-load` against the real node: the paper's mix for a few seconds, every delivery
//! accounted for by the final sweep, nothing lost, duplicated or corrupt.

mod common;

use std::process::Command;

use common::Node;

#[test]
fn the_paper_workload_runs_with_no_lost_or_corrupt_mail() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    node.bulk_users(200, "user");
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
    assert!(node.terminate().success());
}
