//! The real `porcupine-tune` binary on a directory of this machine: it probes through io_uring,
//! prints its table, writes a TOML snippet with every setting, reports JSON, and leaves no
//! probe file behind; a missing directory is refused clearly.

use std::process::Command;

#[test]
fn probes_a_directory_and_writes_the_settings() {
    let temp = tempfile::tempdir().unwrap();
    let data = temp.path().join("disk");
    std::fs::create_dir_all(&data).unwrap();
    let out_file = temp.path().join("tune.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_porcupine-tune"))
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(&out_file)
        .args(["--step-s", "0.05", "--probe-mib", "16", "--json"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("append MB/s"), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_str(stdout.trim().lines().last().unwrap()).unwrap();
    let disk = &report["disks"][0];
    assert!(disk["append_mb_per_s"].as_f64().unwrap() > 0.0, "{report}");
    assert!(disk["sync_p50_us"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(disk["batches"].as_array().unwrap().len(), 6, "{report}");
    assert_eq!(disk["depths"].as_array().unwrap().len(), 6, "{report}");
    let rec = &report["recommendation"];
    assert!(rec["batch_kib"].as_u64().unwrap() >= 64, "{report}");
    assert!(
        (1..=64).contains(&rec["io_depth"].as_u64().unwrap()),
        "{report}"
    );
    let snippet = std::fs::read_to_string(&out_file).unwrap();
    let parsed: toml::Table = toml::from_str(&snippet).unwrap();
    for key in [
        "data",
        "disk-weight",
        "batch-kib",
        "commit-window-us",
        "io-depth",
    ] {
        assert!(parsed.contains_key(key), "{key} missing: {snippet}");
    }
    let leftovers: Vec<_> = std::fs::read_dir(&data).unwrap().collect();
    assert!(leftovers.is_empty(), "probe files left: {leftovers:?}");
}

#[test]
fn a_missing_directory_is_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_porcupine-tune"))
        .args(["--data", "/nonexistent/porcupine-tune-test"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a directory"));
}
