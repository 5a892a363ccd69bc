//! `porcupine fsck DATA…`: checks a stopped node's data directories offline, shard by shard
//! ([`porcupine_engine::fsck`]), says what it found in plain words (or as JSON), and exits 0
//! when nothing lost or would misread data, 1 when something did. It writes nothing; a node
//! running on a directory (or starting while fsck runs) is refused by the directory's lock.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use porcupine_cluster::node::data_lock;
use porcupine_engine::fsck::{check_shard, CheckpointCheck, FsckReport};
use porcupine_engine::{DmaStorage, EngineConfig};

/// The shard directories (`shard-N`) of a data directory, in order.
fn shard_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut shards = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type()?.is_dir() && name.starts_with("shard-") {
            shards.push(entry.path());
        }
    }
    shards.sort_by_key(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("shard-"))
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(u64::MAX)
    });
    Ok(shards)
}

/// Runs the check; the process's exit status (0 clean, 1 problems found).
pub fn run(dirs: &[PathBuf], json: bool) -> Result<i32> {
    if dirs.is_empty() {
        bail!("name the data directories to check: porcupine fsck DIR…");
    }
    let mut shards = Vec::new();
    for dir in dirs {
        if !dir.is_dir() {
            bail!("{} is not a directory", dir.display());
        }
        let found = shard_dirs(dir)?;
        if found.is_empty() {
            bail!(
                "{} holds no shard (shard-N) directory: not a porcupine data directory",
                dir.display()
            );
        }
        shards.extend(found);
    }
    // Held while checking: a node cannot start on these directories meanwhile.
    let _locks = data_lock::lock_all(dirs.iter().map(PathBuf::as_path), std::time::Duration::ZERO)
        .map_err(|why| anyhow::anyhow!("{why}; stop the node first (fsck reads a quiet log)"))?;
    let reports = porcupine_runtime::run_local(move || async move {
        let storage = DmaStorage::default();
        let config = EngineConfig::default();
        let mut reports = Vec::new();
        for shard in shards {
            let report = check_shard(&storage, &shard, &config)
                .await
                .with_context(|| format!("reading {}", shard.display()));
            reports.push(report);
        }
        reports
    })
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let reports: Vec<FsckReport> = reports.into_iter().collect::<Result<_>>()?;
    let problems: usize = reports.iter().map(|r| r.problems().len()).sum();
    let notes: usize = reports.iter().map(|r| r.notes().len()).sum();
    if json {
        let shards: Vec<serde_json::Value> = reports.iter().map(to_json).collect();
        let out = serde_json::json!({
            "shards": shards,
            "problems": problems,
            "notes": notes,
            "clean": problems == 0,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        for report in &reports {
            print_report(report);
        }
        let messages: u64 = reports.iter().map(|r| r.messages).sum();
        println!(
            "fsck: {} shards, {messages} messages: {}",
            reports.len(),
            match (problems, notes) {
                (0, 0) => "clean".to_owned(),
                (0, n) => format!("clean ({n} notes: nothing lost)"),
                (p, n) => format!("{p} problems, {n} notes"),
            }
        );
    }
    Ok(if problems == 0 { 0 } else { 1 })
}

fn checkpoint_text(check: &CheckpointCheck) -> String {
    match check {
        CheckpointCheck::Absent => "none (the next start scans the whole log)".to_owned(),
        CheckpointCheck::Ignored(why) => format!("ignored: {why}"),
        CheckpointCheck::Checked {
            covered, entries, ..
        } => format!(
            "{entries} entries read back from the log (covers up to segment {} offset {})",
            covered.0, covered.1
        ),
    }
}

fn print_report(report: &FsckReport) {
    println!(
        "{}: {} segments, {} records ({} bytes) verified; {} messages of {} users, {} profiles \
         ({} removed); checkpoint: {}",
        report.dir.display(),
        report.segments,
        report.records,
        report.bytes,
        report.messages,
        report.users,
        report.profiles,
        report.removed_profiles,
        checkpoint_text(&report.checkpoint)
    );
    for problem in report.problems() {
        println!("  PROBLEM {problem}");
    }
    for note in report.notes() {
        println!("  note    {note}");
    }
}

fn to_json(report: &FsckReport) -> serde_json::Value {
    serde_json::json!({
        "dir": report.dir.display().to_string(),
        "segments": report.segments,
        "records": report.records,
        "bytes": report.bytes,
        "messages": report.messages,
        "users": report.users,
        "profiles": report.profiles,
        "removed_profiles": report.removed_profiles,
        "checkpoint": checkpoint_text(&report.checkpoint),
        "problems": report.problems(),
        "notes": report.notes(),
    })
}
