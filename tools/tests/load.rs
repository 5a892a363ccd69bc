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
    // Encrypted: STARTTLS on every SMTP connection, STLS on every POP3 one.
    let handshakes = node.metric("porcupine_tls_handshakes_total").unwrap_or(0.0);
    let ca = node.data.join("tls/cert.pem");
    run(&node, &["--tls", "--tls-ca", ca.to_str().unwrap()]);
    assert!(
        node.metric("porcupine_tls_handshakes_total").unwrap() > handshakes + 10.0,
        "porcupine-load --tls did not use TLS"
    );
    // The same with DATA.
    let delivered = run(&node, &["--no-chunking"]);
    assert!(
        replies(&node, 354) >= delivered,
        "354s: {}",
        replies(&node, 354)
    );
    assert!(node.terminate().success());
}

/// A stand-in server from `tests/py/stub_servers.py`, killed when dropped.
struct Stub(std::process::Child);

impl Stub {
    fn start(args: &[&str]) -> Stub {
        use std::io::BufRead;
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/stub_servers.py");
        let mut child = Command::new("python3")
            .arg(script)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "listening", "stub {args:?} did not start");
        Stub(child)
    }
}

impl Drop for Stub {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs porcupine-load to its end; (exit success, JSON report, stderr, seconds taken).
fn run_against(args: &[&str]) -> (bool, serde_json::Value, String, f64) {
    let began = std::time::Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_porcupine-load"))
        .args(args)
        .args(["--json", "-"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap_or_default();
    (
        out.status.success(),
        report,
        format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)),
        began.elapsed().as_secs_f64(),
    )
}

#[test]
fn two_servers_behind_one_target_are_named_as_such() {
    let port = common::free_port().to_string();
    let _a = Stub::start(&["smtp", &port, "220 first.test ESMTP one"]);
    let _b = Stub::start(&["smtp", &port, "220 second.test ESMTP two"]);
    let (ok, report, output, _) = run_against(&[
        "--smtp",
        &format!("127.0.0.1:{port}"),
        "--connections",
        "16",
        "--duration",
        "1s",
        "--size",
        "1000",
    ]);
    assert!(!ok, "a mixed target must fail the run:\n{output}");
    let greetings = &report["greetings"][format!("smtp 127.0.0.1:{port}")];
    assert_eq!(greetings.as_object().map(|g| g.len()), Some(2), "{report}");
    assert!(
        output.contains("answered with 2 different greetings"),
        "{output}"
    );
    assert!(output.contains("more than one server answered"), "{output}");
}

#[test]
fn the_sweep_ends_at_its_timeout_and_says_what_it_could_not_verify() {
    let smtp = common::free_port().to_string();
    let pop3 = common::free_port().to_string();
    let _smtp = Stub::start(&["smtp", &smtp, "220 stub.test ESMTP"]);
    let _pop3 = Stub::start(&["pop3-stall", &pop3]);
    let (ok, report, output, seconds) = run_against(&[
        "--smtp",
        &format!("127.0.0.1:{smtp}"),
        "--pop3",
        &format!("127.0.0.1:{pop3}"),
        "--mix",
        "100:0",
        "--connections",
        "4",
        "--duration",
        "1s",
        "--sweep-timeout",
        "3s",
        "--size",
        "1000",
    ]);
    assert!(!ok, "an unverified run must not pass:\n{output}");
    assert!(seconds < 10.0, "took {seconds:.1} s:\n{output}");
    assert_eq!(report["verified"], false, "{report}");
    assert_eq!(report["lost"], 0, "{report}");
    assert!(report["unswept"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(report["unverified"], report["delivered"], "{report}");
    assert!(output.contains("NOT verified"), "{output}");
}
