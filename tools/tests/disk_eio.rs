//! A disk that starts failing under a running node: one of its two data directories gets EIO
//! on every write and sync from a moment on (`PORCUPINE_FAULT=eio:DIR:TRIGGER`, the engine's
//! own I/O path switched at runtime: this kernel has no device mapper for `dm-error`). Mail
//! flows to users on both disks; once the fault is on, the users on the failing disk are
//! refused with 451 4.3.0 while the users on the other disk are still accepted; the node
//! restarts on the repaired disk (SIGKILL, then start without the fault) and every
//! acknowledged message is there, byte-exact, exactly once.

mod common;

use common::{python, Node, PASSWORD};

#[test]
fn a_disk_failing_with_eio_refuses_its_users_with_451_serves_the_others_and_loses_nothing() {
    let temp = tempfile::tempdir().unwrap();
    let big = temp.path().join("good");
    let failing = temp.path().join("failing");
    std::fs::create_dir_all(&big).unwrap();
    std::fs::create_dir_all(&failing).unwrap();
    let trigger = temp.path().join("eio.on");
    let args = [
        "--data".to_owned(),
        failing.display().to_string(),
        "--cores".to_owned(),
        "1".to_owned(),
    ];
    let extra: Vec<&str> = args.iter().map(String::as_str).collect();
    let fault = format!("eio:{}:{}", failing.display(), trigger.display());
    std::env::set_var("PORCUPINE_FAULT", &fault);
    let node = Node::start(&big, &extra);
    std::env::remove_var("PORCUPINE_FAULT");
    node.bulk_users(20, "user");
    let report = temp.path().join("fill.json");
    let out = python(
        "disk_full.py",
        &[
            "fill".into(),
            node.ip.clone(),
            node.smtp.to_string(),
            "20".into(),
            "8192".into(),
            "12".into(),
            report.display().to_string(),
            "451".into(),
            trigger.display().to_string(),
            "3".into(),
        ],
    );
    let run: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let failed_round = run["full_round"]
        .as_u64()
        .unwrap_or_else(|| panic!("nothing was refused after the disk failed: {out}"));
    assert!(
        common::filled_after_round(&run, "accepted", failed_round) > 0,
        "nobody was served after the disk failed: {out}"
    );
    assert!(
        common::filled_after_round(&run, "refused", failed_round) > 0,
        "the failing disk accepted again: {out}"
    );
    let metrics = node.metrics();
    assert!(
        metrics.contains("porcupine_smtp_replies_total{code=\"451\"}"),
        "no 451 counted: {metrics}"
    );
    let (smtp, pop3, admin) = (node.smtp, node.pop3, node.admin);
    // The disk is repaired; the node restarts and every acknowledged message is there.
    node.kill();
    std::fs::remove_file(&trigger).unwrap();
    let node = Node::start_on(&big, smtp, pop3, admin, &extra);
    let check = python(
        "disk_full.py",
        &[
            "check".into(),
            node.ip.clone(),
            node.pop3.to_string(),
            PASSWORD.into(),
            report.display().to_string(),
            "1".into(),
        ],
    );
    assert!(check.contains("check ok"), "{check}");
    eprintln!("disk_eio: {out}; after restart: {check}");
    assert!(node.terminate().success());
}
