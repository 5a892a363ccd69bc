//! The wall between the cluster's logic and its I/O, checked: this crate's dependency tree
//! holds no executor, socket or channel crate, and its source reads no clock, no entropy, no
//! file and no socket (time and randomness are the caller's, see the crate doc).

use std::path::Path;
use std::process::Command;

/// Crates that would let I/O, threads or wall-clock time into the pure machines.
const FORBIDDEN_CRATES: &[&str] = &[
    "glommio",
    "io-uring",
    "socket2",
    "flume",
    "crossbeam",
    "crossbeam-channel",
    "futures-lite",
    "tokio",
    "async-std",
    "mio",
    "porcupine-engine",
    "porcupine-runtime",
];

/// Calls that read the clock, entropy, the disk or the network.
const FORBIDDEN_CALLS: &[&str] = &[
    "Instant::now",
    "SystemTime::now",
    "from_entropy",
    "thread_rng",
    "rand::random",
    "OsRng",
    "std::fs",
    "std::net::Tcp",
    "std::net::Udp",
    "std::thread",
];

#[test]
fn the_pure_crate_has_no_runtime_in_its_dependency_tree() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args([
            "tree",
            "--offline",
            "-p",
            "porcupine-cluster-core",
            "-e",
            "normal",
            "--prefix",
            "none",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(
        output.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let tree = String::from_utf8_lossy(&output.stdout);
    assert!(
        tree.contains("porcupine-cluster-core"),
        "unexpected tree: {tree}"
    );
    for line in tree.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        assert!(
            !FORBIDDEN_CRATES.contains(&name),
            "porcupine-cluster-core depends on {name}: the pure crate must stay free of I/O \
             (tree:\n{tree})"
        );
    }
}

#[test]
fn the_pure_crate_reads_no_clock_entropy_file_or_socket() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut checked = 0;
    for entry in std::fs::read_dir(&src).expect("src is readable") {
        let path = entry.expect("a directory entry").path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("a source file");
        // Unit tests may use what they like; the check ends where they begin.
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        for call in FORBIDDEN_CALLS {
            assert!(
                !code.contains(call),
                "{} uses {call}: pass time or randomness in instead",
                path.display()
            );
        }
        checked += 1;
    }
    assert!(
        checked >= 9,
        "only {checked} source files found in {}",
        src.display()
    );
}
