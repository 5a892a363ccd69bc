//! A node's ports belong to it alone: no other process can bind them, whatever socket options
//! it sets, a second node is refused with one clear line, and every connection reaches the
//! node, spread over its cores.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use common::{binary, free_port, python, Node};

#[test]
fn no_other_process_can_take_a_share_of_a_nodes_listeners() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = free_port();
    let pop3s = free_port();
    let node = Node::start(
        &dir.path().join("data"),
        &[
            "--cluster",
            &format!("127.0.0.1:{cluster}"),
            "--pop3s",
            &format!("127.0.0.1:{pop3s}"),
        ],
    );
    let ports = [node.smtp, node.pop3, node.imap, pop3s, node.admin, cluster];
    let mut args = vec!["intrude".to_owned(), node.ip.clone()];
    args.extend(ports.iter().map(u16::to_string));
    assert!(python("ports.py", &args).contains("intrude ok"));

    // A second node on the same SMTP address is refused before it starts, in one line.
    let second = Command::new(binary())
        .args(["serve", "--no-first-user", "--data"])
        .arg(dir.path().join("second"))
        .args(["--smtp", &format!("127.0.0.1:{}", node.smtp)])
        .args(["--pop3", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .args(["--imap", "127.0.0.1:0", "--no-imaps", "--no-lmtp"])
        .output()
        .unwrap();
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].contains(&format!(
            "cannot listen for SMTP on 127.0.0.1:{}: another process listens there",
            node.smtp
        )),
        "{stderr}"
    );

    // 200 connections at once: every one greeted by the node, spread over both cores.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/ports.py");
    let mut held = Command::new("python3")
        .args([script, "banners", &node.ip, &node.smtp.to_string(), "200"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(held.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "banners ok 200", "{line}");
    let per_core: Vec<f64> = (0..2)
        .map(|core| {
            node.metric(&format!("porcupine_sessions_open{{core=\"{core}\"}}"))
                .expect("porcupine_sessions_open is exported per core")
        })
        .collect();
    // The admin request that reads the gauge is a session too (on core 0).
    assert!(
        per_core.iter().all(|&n| (95.0..=106.0).contains(&n)),
        "sessions per core: {per_core:?}"
    );
    held.stdin.take().unwrap().write_all(b"\n").unwrap();
    assert!(held.wait().unwrap().success());
    assert!(node.terminate().success());
}

#[test]
fn a_node_refuses_to_start_where_another_process_listens() {
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = squatter.local_addr().unwrap().port();
    let flags = [
        "--smtp",
        "--pop3",
        "--imap",
        "--lmtp",
        "--admin",
        "--cluster",
    ];
    for flag in flags {
        let dir = tempfile::tempdir().unwrap();
        let key = common::cluster_key(dir.path());
        let mut args: Vec<String> = flags
            .iter()
            .flat_map(|f| [f.to_string(), "127.0.0.1:0".to_owned()])
            .collect();
        args.extend(["--cluster-key".to_owned(), key.display().to_string()]);
        args.extend(["--pop3s".to_owned(), "127.0.0.1:0".to_owned()]);
        args.extend(["--imaps".to_owned(), "127.0.0.1:0".to_owned()]);
        let at = args.iter().position(|a| a == flag).unwrap();
        args[at + 1] = format!("127.0.0.1:{port}");
        let out = Command::new(binary())
            .args(["serve", "--no-first-user", "--data"])
            .arg(dir.path().join("data"))
            .args(&args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{flag}: started beside a listener");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("127.0.0.1:{port}: another process listens there")),
            "{flag}: {stderr}"
        );
    }
    drop(squatter);
}
