//! Crash test: a child process appends and deletes, printing each acknowledged operation, and
//! is SIGKILLed at a random moment; after every kill the log is reopened and every acknowledged
//! put must be there with its exact body, and every acknowledged delete must stay deleted —
//! across compaction, checkpoints and segment roll-over, which the child runs aggressively.
//!
//! `PORCUPINE_CRASH_CYCLES` sets the number of cycles (default 30).

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{body_for, run, small_config};
use porcupine_engine::{DmaStorage, EngineConfig, Shard};
use rand::{Rng, SeedableRng};

const CHILD_DIR_ENV: &str = "PORCUPINE_CRASH_CHILD_DIR";
const CHILD_SEED_ENV: &str = "PORCUPINE_CRASH_CHILD_SEED";

fn crash_config() -> EngineConfig {
    let mut config = small_config();
    config.segment_bytes = 1 << 20;
    config.checkpoint_every_bytes = 256 << 10;
    config.compaction.check_interval = Duration::from_millis(20);
    config.compaction.live_fraction_min = 0.6;
    config
}

fn user_of(id: u128) -> String {
    format!("user{}@crash", id % 7)
}

fn len_of(id: u128) -> usize {
    200 + (id as usize * 131) % 3000
}

/// The child's work: several concurrent writers append; one deleter removes older messages.
#[test]
#[ignore = "run by crash_cycles as a child process"]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_DIR_ENV) else {
        return;
    };
    let seed: u64 = std::env::var(CHILD_SEED_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    run(move || async move {
        let (shard, _) = Shard::open(
            DmaStorage::default(),
            Path::new(&dir),
            crash_config(),
            "crash",
        )
        .await
        .unwrap();
        println!("READY");
        let acked: std::rc::Rc<std::cell::RefCell<Vec<u128>>> = Default::default();
        let mut tasks = Vec::new();
        for writer in 0..8u128 {
            let shard = shard.clone();
            let acked = acked.clone();
            tasks.push(glommio::spawn_local(async move {
                for n in 0.. {
                    // Ids are unique across cycles: seed in the high bits.
                    let id = (u128::from(seed) << 64) | (writer << 32) | n;
                    shard
                        .append_message(&user_of(id), id, &body_for(id, len_of(id)), 0)
                        .await
                        .unwrap();
                    println!("P {id}");
                    acked.borrow_mut().push(id);
                }
            }));
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        loop {
            glommio::timer::sleep(Duration::from_micros(300)).await;
            let pick = {
                let acked = acked.borrow();
                if acked.len() < 20 {
                    None
                } else {
                    Some(acked[rng.gen_range(0..acked.len() - 10)])
                }
            };
            if let Some(id) = pick {
                // Announced first: a delete can become durable and the kill land before its ack.
                println!("X {id}");
                if shard.delete_message(&user_of(id), id).await.is_ok() {
                    println!("D {id}");
                }
            }
            let _ = std::io::stdout().flush();
        }
    });
}

fn child(dir: &Path, seed: u64) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash_child",
            "--ignored",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_DIR_ENV, dir)
        .env(CHILD_SEED_ENV, seed.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Checks the reopened log against what was acknowledged; returns (messages, from checkpoint).
/// `attempted` deletes were submitted but maybe not acknowledged: either outcome is correct.
fn verify(
    dir: PathBuf,
    puts: BTreeSet<u128>,
    deletes: BTreeSet<u128>,
    attempted: BTreeSet<u128>,
) -> (usize, bool) {
    run(move || async move {
        let (shard, report) = Shard::open(DmaStorage::default(), &dir, crash_config(), "verify")
            .await
            .unwrap();
        let mut present = BTreeSet::new();
        for u in 0..7 {
            for m in shard.messages(&format!("user{u}@crash")) {
                present.insert(m.id);
            }
        }
        for id in &puts {
            if deletes.contains(id) {
                assert!(
                    !present.contains(id),
                    "acknowledged delete of {id:#x} was undone"
                );
            } else if attempted.contains(id) && !present.contains(id) {
                continue;
            } else {
                if !present.contains(id) {
                    panic!(
                        "acknowledged put {id:#x} lost; {report:?}; on disk: {}",
                        find_on_disk(&dir, *id)
                    );
                }
                let record = shard.read_message(&user_of(*id), *id).await.unwrap();
                assert_eq!(
                    record.body(),
                    &body_for(*id, len_of(*id))[..],
                    "body of {id:#x}"
                );
            }
        }
        shard.close().await.unwrap();
        (present.len(), report.from_checkpoint)
    })
}

/// Every record of `id` in the raw segment files (a diagnostic for a failure).
fn find_on_disk(dir: &Path, id: u128) -> String {
    let mut found = Vec::new();
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    for name in names {
        let name = name.to_string_lossy().into_owned();
        let bytes = std::fs::read(dir.join(&name)).unwrap();
        let mut at = 0;
        while at + 64 <= bytes.len() {
            if let Ok(view) = porcupine_engine::record::decode(&bytes[at..]) {
                if view.meta.message_id == id {
                    found.push(format!(
                        "{name}@{at}:{:?}/aux{}",
                        view.meta.kind, view.meta.aux
                    ));
                }
            }
            at += 8;
        }
    }
    found.join(", ")
}

#[test]
fn crash_cycles() {
    let cycles: u64 = std::env::var("PORCUPINE_CRASH_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    let mut puts = BTreeSet::new();
    let mut deletes = BTreeSet::new();
    let mut attempted = BTreeSet::new();
    let mut checkpoint_opens = 0;
    for cycle in 1..=cycles {
        let mut process = child(dir.path(), cycle);
        let stdout = process.stdout.take().unwrap();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.ends_with("READY") {
                    let _ = ready_tx.send(());
                }
                lines.push(line);
            }
            lines
        });
        // Once the child has recovered, kill it at a random moment.
        let started = Instant::now();
        let _ = ready_rx.recv_timeout(Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(rng.gen_range(20..200)));
        let _ = process.kill();
        let _ = process.wait();
        let lines = reader.join().unwrap();
        let mut acked_this_cycle = 0;
        for line in lines {
            // Only complete lines count: a line cut by the kill was not fully reported.
            let Some((op, id)) = line.split_once(' ') else {
                continue;
            };
            let Ok(id) = id.parse::<u128>() else { continue };
            match op {
                "P" => {
                    puts.insert(id);
                    acked_this_cycle += 1;
                }
                "X" => {
                    attempted.insert(id);
                }
                "D" => {
                    deletes.insert(id);
                }
                _ => {}
            }
        }
        let (present, from_checkpoint) = verify(
            dir.path().to_path_buf(),
            puts.clone(),
            deletes.clone(),
            attempted.clone(),
        );
        checkpoint_opens += usize::from(from_checkpoint);
        eprintln!(
            "cycle {cycle}: {acked_this_cycle} puts acknowledged in {:?}; {} puts, {} deletes so far, {present} present",
            started.elapsed(),
            puts.len(),
            deletes.len()
        );
    }
    assert!(
        puts.len() as u64 > cycles * 10,
        "the child made too little progress: {}",
        puts.len()
    );
    assert!(!deletes.is_empty());
    eprintln!("{checkpoint_opens} of {cycles} reopens started from a checkpoint");
}
