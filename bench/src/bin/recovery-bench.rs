//! Restart time: stores `count` messages in one shard, closes it, and times reopening it from
//! the index checkpoint and, as the baseline in the same run, by a full scan of the log without
//! the checkpoint. Goal (issue 2): 1,000,000 messages reopen in under 3 s.

use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use porcupine_engine::{DmaStorage, EngineConfig, Shard};
use porcupine_runtime as runtime;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug, Clone)]
struct Args {
    #[arg(long, default_value_t = 1_000_000)]
    count: usize,
    /// Message body bytes.
    #[arg(long, default_value_t = 200)]
    size: usize,
    /// Distinct users the messages are spread over.
    #[arg(long, default_value_t = 100_000)]
    users: usize,
    #[arg(long, default_value = ".")]
    dir: std::path::PathBuf,
    #[arg(long)]
    json: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let work = tempfile::Builder::new()
        .prefix("porcupine-recovery-bench")
        .tempdir_in(&args.dir)
        .with_context(|| format!("cannot create a directory in {}", args.dir.display()))?;
    let dir = work.path().to_path_buf();
    let a = args.clone();
    let (fill, from_checkpoint, full_scan) = runtime::run_local(move || async move {
        let config = EngineConfig {
            compaction: porcupine_engine::CompactionConfig {
                check_interval: Duration::ZERO,
                ..Default::default()
            },
            ..EngineConfig::default()
        };
        let started = Instant::now();
        let (shard, _) = Shard::open(DmaStorage::default(), &dir, config.clone(), "bench").await?;
        let body = Rc::new(vec![b'r'; a.size]);
        let writers = 256;
        let mut tasks = Vec::new();
        for w in 0..writers {
            let shard = shard.clone();
            let body = body.clone();
            let (count, users) = (a.count, a.users);
            tasks.push(glommio::spawn_local(async move {
                let mut n = w;
                while n < count {
                    let user = format!("user{}@bench", n % users);
                    shard.append_message(&user, n as u128, &body, 0).await?;
                    n += writers;
                }
                Ok::<_, porcupine_engine::EngineError>(())
            }));
        }
        for t in tasks {
            t.await?;
        }
        shard.close().await?;
        let fill = started.elapsed();

        let started = Instant::now();
        let (shard, report) =
            Shard::open(DmaStorage::default(), &dir, config.clone(), "bench").await?;
        let from_checkpoint = (started.elapsed(), report);
        anyhow::ensure!(shard.stats().messages == a.count as u64, "lost messages");
        shard.close().await?;

        std::fs::remove_file(dir.join("index.ckpt"))?;
        let started = Instant::now();
        let (shard, report) = Shard::open(DmaStorage::default(), &dir, config, "bench").await?;
        let full_scan = (started.elapsed(), report);
        anyhow::ensure!(shard.stats().messages == a.count as u64, "lost messages");
        shard.close().await?;
        Ok::<_, anyhow::Error>((fill, from_checkpoint, full_scan))
    })??;
    println!(
        "recovery-bench: {} messages of {} bytes over {} users (filled in {:.1?})",
        args.count, args.size, args.users, fill
    );
    println!(
        "reopen from checkpoint: {:.3} s ({} records scanned after it)",
        from_checkpoint.0.as_secs_f64(),
        from_checkpoint.1.records_scanned
    );
    println!(
        "reopen by full scan:    {:.3} s ({} records, {:.0} MB)",
        full_scan.0.as_secs_f64(),
        full_scan.1.records_scanned,
        full_scan.1.bytes_scanned as f64 / 1e6
    );
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "count": args.count,
                "checkpoint_open_s": from_checkpoint.0.as_secs_f64(),
                "full_scan_open_s": full_scan.0.as_secs_f64(),
                "ratio": from_checkpoint.0.as_secs_f64() / full_scan.0.as_secs_f64(),
            })
        );
    }
    Ok(())
}
