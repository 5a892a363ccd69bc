//! `side-by-side` is hermetic: on a machine whose ports (porcupine's defaults, the bench's old
//! fixed ones) are taken by another "Postfix", it measures only its own servers, writes
//! nothing outside its run directory, and after SIGTERM leaves no server running and no
//! directory behind.
//!
//! These need Postfix and Dovecot installed (`.ci/run` installs them) and root; without them
//! the tests fail and say what is missing.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BENCH: &str = env!("CARGO_BIN_EXE_side-by-side");

/// `side-by-side`, given the node binaries beside it when this build made them (as
/// `cargo test --workspace` does), so that it does not run cargo itself.
fn bench() -> Command {
    let mut command = Command::new(BENCH);
    if let Some(dir) = Path::new(BENCH).parent() {
        if dir.join("porcupine").is_file() && dir.join("porcupine-load").is_file() {
            command.arg("--bins").arg(dir);
        }
    }
    command
}

/// Everything of the machine a run could touch: each file's path, size, mode, owner and a
/// hash of its content.
fn snapshot() -> BTreeMap<PathBuf, String> {
    fn walk(path: &Path, out: &mut BTreeMap<PathBuf, String>) {
        use std::os::unix::fs::MetadataExt;
        let Ok(meta) = std::fs::symlink_metadata(path) else {
            return;
        };
        let content = if meta.is_file() {
            std::fs::read(path).map_or(0, |bytes| crc32fast::hash(&bytes))
        } else {
            0
        };
        out.insert(
            path.to_path_buf(),
            format!(
                "{} {:o} {}:{} {content:08x}",
                meta.len(),
                meta.mode(),
                meta.uid(),
                meta.gid()
            ),
        );
        if meta.is_dir() {
            if let Ok(entries) = std::fs::read_dir(path) {
                for entry in entries.flatten() {
                    walk(&entry.path(), out);
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    for root in [
        "/etc/postfix",
        "/etc/dovecot",
        "/etc/passwd",
        "/etc/group",
        "/etc/shadow",
        "/etc/aliases",
        "/var/spool/postfix",
        "/var/lib/postfix",
        "/var/lib/dovecot",
        "/run/dovecot",
    ] {
        walk(Path::new(root), &mut out);
    }
    out
}

fn require_peers() {
    let have = |program: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {program}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let missing: Vec<&str> = ["postfix", "dovecot", "smtp-sink"]
        .into_iter()
        .filter(|p| !have(p))
        .collect();
    assert!(
        missing.is_empty(),
        "these tests need {missing:?} (apt-get install postfix dovecot-core dovecot-pop3d; \
         .ci/run does) and root"
    );
}

/// A stranger on a port: answers every connection as a Postfix would, and counts them.
struct Squatter {
    port: u16,
    connections: Arc<AtomicU64>,
}

fn squat(port: u16) -> Option<Squatter> {
    let listener = TcpListener::bind(("127.0.0.1", port)).ok()?;
    let connections = Arc::new(AtomicU64::new(0));
    let counted = connections.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            counted.fetch_add(1, Ordering::Relaxed);
            let mut stream = stream;
            let _ = stream.write_all(b"220 localhost ESMTP Postfix\r\n");
        }
    });
    Some(Squatter { port, connections })
}

/// The directories the bench made in `parent` that are still there.
fn run_dirs(parent: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(parent)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("porcupine-side-by-side-"))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Processes with their working directory or an open file under `dir`.
fn processes_using(dir: &Path) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let inside = |link: PathBuf| std::fs::read_link(link).is_ok_and(|t| t.starts_with(dir));
        let fds = std::fs::read_dir(entry.path().join("fd"))
            .map(|fds| fds.flatten().any(|fd| inside(fd.path())))
            .unwrap_or(false);
        if fds || inside(entry.path().join("cwd")) {
            found.push(pid);
        }
    }
    found
}

/// A scratch directory on a disk (not tmpfs: porcupine's log needs O_DIRECT).
fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("sbs-test")
        .tempdir_in("/var/tmp")
        .unwrap()
}

#[test]
fn a_run_measures_only_its_own_servers_and_changes_nothing_outside_its_directory() {
    require_peers();
    // Porcupine's defaults and the ports this bench once used, held by a "system Postfix".
    let squatters: Vec<Squatter> = [2525, 1110, 8025, 7946, 2626, 1210, 2727, 2535, 2545]
        .into_iter()
        .filter_map(squat)
        .collect();
    let before = snapshot();
    let scratch = scratch();
    let out = bench()
        .args(["--rounds", "1", "--connections", "2", "--seconds", "1"])
        .args(["--users", "30", "--name", "hermetic", "--json"])
        .args(["--stock-sessions", "2", "--stock-recipients", "1,2"])
        .args(["--stock-messages", "200"])
        .arg("--results")
        .arg(scratch.path().join("results"))
        .arg("--run-parent")
        .arg(scratch.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "side-by-side failed:\n{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or("")).expect("a JSON last line");
    assert_eq!(report["lost"], 0, "{report}");
    for system in [
        "porcupine",
        "porcupine_data",
        "postfix_dovecot",
        "porcupine_smtp_only",
        "smtp_sink",
        "porcupine_discard",
    ] {
        assert!(
            report[system].as_f64().unwrap_or(0.0) > 0.0,
            "{system}: {report}"
        );
    }
    // Postfix's smtp-source ran against porcupine and smtp-sink at each shape asked for.
    let stock = report["smtp_source"]
        .as_array()
        .expect("smtp_source in the report");
    assert_eq!(stock.len(), 2, "{report}");
    for shape in stock {
        assert!(shape["porcupine"].as_f64().unwrap_or(0.0) > 0.0, "{shape}");
        assert!(shape["smtp_sink"].as_f64().unwrap_or(0.0) > 0.0, "{shape}");
    }
    assert!(
        !stderr.contains("counted"),
        "the node and the generator disagree:\n{stderr}"
    );
    for squatter in &squatters {
        assert_eq!(
            squatter.connections.load(Ordering::Relaxed),
            0,
            "the bench connected to the stranger on port {}",
            squatter.port
        );
    }
    let after = snapshot();
    let changed: Vec<&PathBuf> = before
        .keys()
        .chain(after.keys())
        .filter(|path| before.get(*path) != after.get(*path))
        .collect();
    assert!(changed.is_empty(), "the run changed {changed:?}");
    assert!(
        run_dirs(scratch.path()).is_empty(),
        "the run directory was left behind"
    );
    assert!(scratch.path().join("results/hermetic.md").exists());
}

#[test]
fn sigterm_stops_every_server_it_started_and_removes_its_directory() {
    require_peers();
    let scratch = scratch();
    let mut bench = bench()
        .args(["--rounds", "1", "--connections", "1", "--seconds", "60"])
        .args(["--users", "20", "--name", "stopped"])
        .arg("--results")
        .arg(scratch.path().join("results"))
        .arg("--run-parent")
        .arg(scratch.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pids = Vec::new();
    let mut lines = BufReader::new(bench.stderr.take().unwrap()).lines();
    let mut log = String::new();
    // Once the first load runs, every server has started.
    for line in lines.by_ref() {
        let line = line.unwrap();
        log.push_str(&line);
        log.push('\n');
        if let Some((name, pid)) = line
            .strip_prefix("started ")
            .and_then(|rest| rest.rsplit_once(" pid "))
        {
            pids.push((name.to_owned(), pid.trim().parse::<u32>().unwrap()));
            if name == "porcupine-load" {
                break;
            }
        }
    }
    let names: Vec<&str> = pids.iter().map(|(n, _)| n.as_str()).collect();
    for expected in [
        "porcupine",
        "postfix",
        "dovecot",
        "smtp-sink",
        "porcupine-load",
    ] {
        assert!(names.contains(&expected), "{expected} not started:\n{log}");
    }
    let run_dir = run_dirs(scratch.path());
    assert_eq!(run_dir.len(), 1, "{log}");
    Command::new("kill")
        .args(["-TERM", &bench.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(status) = bench.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "side-by-side did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    for line in lines.map_while(Result::ok) {
        log.push_str(&line);
        log.push('\n');
    }
    assert_eq!(status.code(), Some(128 + 15), "{log}");
    for (name, pid) in &pids {
        assert!(
            !porcupine_bench::alive(*pid),
            "{name} (pid {pid}) still runs:\n{log}"
        );
    }
    assert!(
        run_dirs(scratch.path()).is_empty(),
        "the run directory was left behind:\n{log}"
    );
    // Children of the daemons (Postfix's smtpd and qmgr, Dovecot's logins) work in there.
    let users = processes_using(&run_dir[0]);
    assert!(
        users.is_empty(),
        "processes {users:?} still use the run directory:\n{log}"
    );
    assert!(!scratch.path().join("results/stopped.md").exists());
}
