//! A disk that really fills: one of a node's two data directories is a small ext4 file system
//! on a loop device. Mail flows to users on both disks until the small one is full; then the
//! users on the full disk are refused with 452 4.3.1 while the users on the other disk are
//! still accepted; the node restarts on the full disk (SIGKILL, then start) and every
//! acknowledged message is there, byte-exact, exactly once, and nothing refused was stored.
//!
//! Needs root and a free loop device (`losetup`, `mkfs.ext4`, `mount`); without them the test
//! says loudly that it skipped.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{python, Node, PASSWORD};

/// A small ext4 file system on a loop device, mounted for the test's life.
struct SmallDisk {
    mount: PathBuf,
    device: String,
}

impl SmallDisk {
    fn create(dir: &Path, mib: u64) -> Result<SmallDisk, String> {
        let image = dir.join("disk.img");
        let file = std::fs::File::create(&image).map_err(|e| e.to_string())?;
        file.set_len(mib << 20).map_err(|e| e.to_string())?;
        let run = |program: &str, args: &[&str]| -> Result<String, String> {
            let out = Command::new(program)
                .args(args)
                .output()
                .map_err(|e| format!("{program}: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "{program} {args:?}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        };
        let image = image.display().to_string();
        let device = run("losetup", &["--find", "--show", &image])?;
        let mount = dir.join("small");
        std::fs::create_dir_all(&mount).map_err(|e| e.to_string())?;
        let disk = SmallDisk {
            mount: mount.clone(),
            device: device.clone(),
        };
        run("mkfs.ext4", &["-q", "-F", "-m", "0", &device])?;
        run("mount", &[&device, &mount.display().to_string()])?;
        Ok(disk)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mount).status();
        let _ = Command::new("losetup").args(["-d", &self.device]).status();
    }
}

#[test]
fn a_full_disk_refuses_its_users_with_452_serves_the_others_and_loses_nothing() {
    // PORCUPINE_DISK_FULL_KEEP=1 keeps the data and the node's log (big.log) for a post-mortem.
    let keep = std::env::var_os("PORCUPINE_DISK_FULL_KEEP").is_some();
    let temp = tempfile::Builder::new()
        .prefix("porcupine-disk-full")
        .disable_cleanup(keep)
        .tempdir()
        .unwrap();
    if keep {
        eprintln!("disk_full: keeping {}", temp.path().display());
    }
    let disk = match SmallDisk::create(temp.path(), 32) {
        Ok(disk) => disk,
        Err(why) => {
            eprintln!(
                "\n*** SKIPPED disk_full: cannot make a small file system on a loop device \
                 ({why}); run as root on a machine with loop devices ***\n"
            );
            return;
        }
    };
    let big = temp.path().join("big");
    std::fs::create_dir_all(&big).unwrap();
    let small = disk.mount.join("data");
    let args = [
        "--data".to_owned(),
        small.display().to_string(),
        "--cores".to_owned(),
        "1".to_owned(),
        "--segment-mib".to_owned(),
        "4".to_owned(),
        "--message-bytes-max".to_owned(),
        "1048576".to_owned(),
    ];
    let extra: Vec<&str> = args.iter().map(String::as_str).collect();
    let node = Node::start(&big, &extra);
    node.bulk_users(20, "user");
    let report = temp.path().join("fill.json");
    let out = python(
        "disk_full.py",
        &[
            "fill".into(),
            node.ip.clone(),
            node.smtp.to_string(),
            "20".into(),
            (64 << 10).to_string(),
            "200".into(),
            report.display().to_string(),
        ],
    );
    let run: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let full_round = run["full_round"]
        .as_u64()
        .unwrap_or_else(|| panic!("the small disk never filled: {out}"));
    // After the disk filled, the users on the other disk were still accepted.
    assert!(
        common::filled_after_round(&run, "accepted", full_round) > 0,
        "nobody was served after the disk filled: {out}"
    );
    assert!(
        common::filled_after_round(&run, "refused", full_round) > 0,
        "the full disk accepted again: {out}"
    );
    let (smtp, pop3, admin) = (node.smtp, node.pop3, node.admin);
    // The node restarts on the full disk and every acknowledged message is there.
    node.kill();
    let node = Node::start_on(&big, smtp, pop3, admin, &extra);
    let check = python(
        "disk_full.py",
        &[
            "check".into(),
            node.ip.clone(),
            node.pop3.to_string(),
            PASSWORD.into(),
            report.display().to_string(),
        ],
    );
    assert!(check.contains("check ok"), "{check}");
    eprintln!("disk_full: {out}; after restart: {check}");
    assert!(node.terminate().success());
    drop(disk);
}
