//! The node under a service manager: the unit in `tools/systemd/` passes `systemd-analyze
//! verify`, and the node speaks `sd_notify(3)` to a socket standing in for systemd's (as
//! `NOTIFY_SOCKET` names it): READY=1 once it serves, WATCHDOG=1 twice per `WATCHDOG_USEC`
//! while every core runs tasks and none once a core is stuck, RELOADING=1 and READY=1 around
//! SIGHUP, STOPPING=1 at SIGTERM. Logs as JSON lines with `--log-format json`.
//! `systemd-analyze` must be installed (`.ci/run` installs systemd): missing, the test fails
//! with that reason, never a silent skip.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::binary;

fn start(dir: &std::path::Path, socket: &std::path::Path, env: &[(&str, &str)]) -> Child {
    // systemd names the process the watchdog is for (WATCHDOG_PID): `exec` keeps the shell's.
    let mut command = Command::new("sh");
    command
        .args(["-c", "WATCHDOG_PID=$$ exec \"$0\" \"$@\"", binary()])
        .args([
            "--log-format",
            "json",
            "serve",
            "--no-pin",
            "--no-first-user",
        ])
        .args(["--cores", "2", "--segment-mib", "40", "--data"])
        .arg(dir.join("data"))
        .args(["--smtp", "127.0.0.1:0", "--pop3", "127.0.0.1:0", "--pop3s"])
        .args([
            "127.0.0.1:0",
            "--imap",
            "127.0.0.1:0",
            "--imaps",
            "127.0.0.1:0",
        ])
        .args(["--lmtp", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .env("NOTIFY_SOCKET", socket)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(
            std::fs::File::create(dir.join("stderr.log"))
                .map(Stdio::from)
                .unwrap(),
        );
    for (key, value) in env {
        command.env(key, value);
    }
    command.spawn().expect("start porcupine")
}

/// The notifications that arrive within `wait`.
fn receive(socket: &UnixDatagram, wait: Duration) -> Vec<String> {
    let deadline = Instant::now() + wait;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return got;
        }
        socket.set_read_timeout(Some(left)).unwrap();
        match socket.recv(&mut buf) {
            Ok(n) => got.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(_) => return got,
        }
    }
}

/// Whether a notification has the line `what` (each assignment is a line of its own).
fn says(message: &str, what: &str) -> bool {
    message.lines().any(|l| l == what)
}

/// Waits for a notification containing `what`; returns every one received meanwhile.
fn until(socket: &UnixDatagram, what: &str, wait: Duration) -> Vec<String> {
    let deadline = Instant::now() + wait;
    let mut got = Vec::new();
    while Instant::now() < deadline {
        let more = receive(socket, Duration::from_millis(100));
        let found = more.iter().any(|m| says(m, what));
        got.extend(more);
        if found {
            return got;
        }
    }
    panic!("no {what} within {wait:?}; received {got:?}");
}

fn signal(child: &Child, name: &str) {
    let sent = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
}

#[test]
fn readiness_watchdog_reload_and_stop_reach_the_service_manager() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    let mut child = start(dir.path(), &path, &[("WATCHDOG_USEC", "400000")]);
    let got = until(&socket, "READY=1", Duration::from_secs(60));
    assert!(
        got.iter().any(|m| m.contains("STATUS=serving SMTP")),
        "{got:?}"
    );
    // Keep-alives every 200 ms while the cores run.
    let pings = receive(&socket, Duration::from_secs(2));
    let count = pings.iter().filter(|m| says(m, "WATCHDOG=1")).count();
    assert!(count >= 5, "{count} keep-alives in 2 s: {pings:?}");
    signal(&child, "HUP");
    let got = until(&socket, "READY=1", Duration::from_secs(10));
    assert!(
        got.iter()
            .any(|m| says(m, "RELOADING=1") && m.lines().any(|l| l.starts_with("MONOTONIC_USEC="))),
        "{got:?}"
    );
    signal(&child, "TERM");
    until(&socket, "STOPPING=1", Duration::from_secs(30));
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    // Every log line is one JSON object with a level and a message.
    let log = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap();
    let mut lines = 0;
    for line in log.lines() {
        let value: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(value["level"].is_string(), "{line}");
        assert!(value["message"].is_string(), "{line}");
        lines += 1;
    }
    assert!(log.contains("watchdog is on"), "{log}");
    assert!(log.contains("stopped cleanly"), "{log}");
    assert!(lines >= 3, "{log}");
}

#[test]
fn a_stuck_core_stops_the_keepalive() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    let mut child = start(
        dir.path(),
        &path,
        &[
            ("WATCHDOG_USEC", "400000"),
            ("PORCUPINE_FAULT", "stall-core:1"),
        ],
    );
    until(&socket, "READY=1", Duration::from_secs(60));
    // Core 1 blocks a second after serving; from then on no keep-alive may go out.
    std::thread::sleep(Duration::from_millis(1_600));
    let _ = receive(&socket, Duration::from_millis(10));
    let pings = receive(&socket, Duration::from_secs(2));
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        !pings.iter().any(|m| says(m, "WATCHDOG=1")),
        "keep-alives sent with a core stuck: {pings:?}"
    );
    let log = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("a core did not run a task") && l.contains("\"core\":1")),
        "{log}"
    );
}

#[test]
fn the_systemd_unit_verifies() {
    let found = Command::new("sh")
        .args(["-c", "command -v systemd-analyze"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "systemd-analyze is needed for this test (.ci/run installs systemd)"
    );
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/porcupine.service"
    ))
    .unwrap();
    assert!(unit.contains("Type=notify") && unit.contains("WatchdogSec="));
    assert!(unit.contains("LimitMEMLOCK=") && unit.contains("NoNewPrivileges=yes"));
    // Verified with the binary this build made where the unit expects it installed.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("porcupine.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/porcupine", binary())).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify: {stderr}");
    assert!(
        !stderr.contains("porcupine.service"),
        "systemd-analyze complains about the unit: {stderr}"
    );
}
