//! Engine vs raw disk: appends/s, MB/s and ack latency of the engine with W concurrent writers,
//! against a raw baseline measured in the same run — the same bytes written sequentially with
//! O_DIRECT through io_uring (glommio DMA file, pre-written like a segment), with the same
//! number of fdatasyncs, and no engine logic. Prints a table, or with `--json` a last line
//! holding one JSON object.

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use hdrhistogram::Histogram;
use porcupine_engine::{DmaStorage, EngineConfig, Shard};
use porcupine_runtime as runtime;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug, Clone)]
#[command(about = "Engine appends vs raw O_DIRECT io_uring appends, same bytes and fsync cadence")]
struct Args {
    /// Message body bytes.
    #[arg(long, default_value_t = 4700)]
    size: usize,
    /// Messages to append.
    #[arg(long, default_value_t = 50_000)]
    count: usize,
    /// Concurrent writers (on one core).
    #[arg(long, default_value_t = 64)]
    writers: usize,
    /// Directory on the disk to measure (a temporary directory inside it is used and removed).
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Alternating engine and raw runs; medians are reported (the machine is noisy).
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Print one JSON object as the last line.
    #[arg(long)]
    json: bool,
    /// Seconds to wait after the engine's segment is written out, before its timed run (to
    /// attach a profiler to the timed part alone: `perf record --delay`).
    #[arg(long, default_value_t = 0.0)]
    pause_s: f64,
}

#[derive(Debug, Clone, Copy)]
struct Measured {
    seconds: f64,
    syncs: u64,
    p50_us: u64,
    p99_us: u64,
    p999_us: u64,
}

fn main() -> Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.writers > 0 && args.count >= args.writers,
        "need --count >= --writers > 0"
    );
    let work = tempfile::Builder::new()
        .prefix("porcupine-engine-bench")
        .tempdir_in(&args.dir)
        .with_context(|| format!("cannot create a directory in {}", args.dir.display()))?;
    let root = work.path().to_path_buf();
    let bench_args = args.clone();
    let runs = runtime::run_local(move || async move {
        let mut runs = Vec::new();
        for round in 0..bench_args.repeat.max(1) {
            let engine_dir = root.join(format!("engine-{round}"));
            let engine = engine_run(&bench_args, &engine_dir).await?;
            std::fs::remove_dir_all(&engine_dir)?;
            let raw_path = root.join(format!("raw-{round}.dat"));
            let raw = raw_run(&bench_args, &raw_path, engine.syncs).await?;
            std::fs::remove_file(&raw_path)?;
            runs.push((engine, raw));
        }
        Ok::<_, anyhow::Error>(runs)
    })??;
    for (round, (engine, raw)) in runs.iter().enumerate() {
        eprintln!(
            "round {round}: engine {:.3} s, raw {:.3} s, ratio {:.3}",
            engine.seconds,
            raw.seconds,
            raw.seconds / engine.seconds
        );
    }
    let engine = median(runs.iter().map(|r| r.0).collect());
    let raw = median(runs.iter().map(|r| r.1).collect());
    report(&args, engine, raw);
    Ok(())
}

/// The run with the median time.
fn median(mut runs: Vec<Measured>) -> Measured {
    runs.sort_by(|a, b| a.seconds.total_cmp(&b.seconds));
    runs[runs.len() / 2]
}

async fn engine_run(args: &Args, dir: &Path) -> Result<Measured> {
    // One segment holds the whole run, written out before timing (`settled`), as the raw
    // baseline's file is: both write into written blocks, and neither rolls over.
    let record = porcupine_engine::record::encoded_len("user0000@bench".len(), 0, args.size);
    let segment_bytes = ((args.count * record) as u64 * 21 / 20 + (16 << 20))
        .next_multiple_of(1 << 20)
        .clamp(256 << 20, porcupine_engine::segment::SEGMENT_BYTES_MAX);
    let config = EngineConfig {
        segment_bytes,
        compaction: porcupine_engine::CompactionConfig {
            check_interval: Duration::ZERO,
            ..Default::default()
        },
        ..EngineConfig::default()
    };
    let (shard, _) = Shard::open(DmaStorage::default(), dir, config, "bench").await?;
    // Let the segment's zeros be written before timing, as on a running node between bursts.
    shard.settled().await;
    if args.pause_s > 0.0 {
        eprintln!(
            "engine segment written out; timing starts in {} s",
            args.pause_s
        );
        glommio::timer::sleep(Duration::from_secs_f64(args.pause_s)).await;
    }
    let body = Rc::new(vec![b'm'; args.size]);
    let per_writer = args.count / args.writers;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for writer in 0..args.writers {
        let shard = shard.clone();
        let body = body.clone();
        tasks.push(glommio::spawn_local(async move {
            for n in 0..per_writer {
                let id = ((writer as u128) << 64) | n as u128;
                let user = format!("user{}@bench", (writer * 7919 + n) % 10_000);
                shard.append_message(&user, id, &body, 0).await?;
            }
            Ok::<_, porcupine_engine::EngineError>(())
        }));
    }
    for task in tasks {
        task.await?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let metrics = shard.metrics();
    shard.close().await?;
    Ok(Measured {
        seconds,
        syncs: metrics.syncs,
        p50_us: metrics.ack_micros.p50,
        p99_us: metrics.ack_micros.p99,
        p999_us: metrics.ack_micros.p999,
    })
}

/// The same record bytes (header + user + body, padded as the engine pads) written in `syncs`
/// equal sequential batches, each one aligned write then one fdatasync.
async fn raw_run(args: &Args, path: &Path, syncs: u64) -> Result<Measured> {
    let user_len = "user0000@bench".len();
    let record = porcupine_engine::record::encoded_len(user_len, 0, args.size);
    let per_writer = args.count / args.writers;
    let total_records = per_writer * args.writers;
    let syncs = syncs.max(1) as usize;
    let per_batch = total_records.div_ceil(syncs);
    let batch_bytes = (per_batch * record).div_ceil(4096) * 4096;
    let file_bytes = (batch_bytes * syncs + (1 << 20)) as u64;
    // Opened as the engine opens its segments, so both complete their writes the same way.
    let file = porcupine_engine::storage::direct_write_options(path)
        .create(true)
        .dma_open(path)
        .await
        .map_err(io)?;
    // Written out ahead, like a segment, so fdatasync touches no metadata.
    let chunk = 1 << 20;
    let mut at = 0u64;
    while at < file_bytes {
        let mut buf = file.alloc_dma_buffer(chunk);
        buf.as_bytes_mut().fill(0);
        file.write_at(buf, at).await.map_err(io)?;
        at += chunk as u64;
    }
    file.fdatasync().await.map_err(io)?;
    let mut latency = Histogram::<u64>::new(3)?;
    let started = Instant::now();
    let mut written = 0usize;
    let mut pos = 0u64;
    let mut batches = 0u64;
    while written < total_records {
        let n = per_batch.min(total_records - written);
        let len = (n * record).div_ceil(4096) * 4096;
        let began = Instant::now();
        let mut buf = file.alloc_dma_buffer(len);
        buf.as_bytes_mut().fill(b'm');
        file.write_at(buf, pos).await.map_err(io)?;
        file.fdatasync().await.map_err(io)?;
        let micros = began.elapsed().as_micros() as u64;
        // Every record of the batch waited for the batch.
        latency.record_n(micros.max(1), n as u64)?;
        pos += len as u64;
        written += n;
        batches += 1;
    }
    let seconds = started.elapsed().as_secs_f64();
    file.close().await.map_err(io)?;
    Ok(Measured {
        seconds,
        syncs: batches,
        p50_us: latency.value_at_quantile(0.5),
        p99_us: latency.value_at_quantile(0.99),
        p999_us: latency.value_at_quantile(0.999),
    })
}

fn io(error: glommio::GlommioError<()>) -> std::io::Error {
    error.into()
}

fn report(args: &Args, engine: Measured, raw: Measured) {
    let records = (args.count / args.writers * args.writers) as f64;
    let record_bytes =
        porcupine_engine::record::encoded_len("user0000@bench".len(), 0, args.size) as f64;
    let engine_rate = records / engine.seconds;
    let raw_rate = records / raw.seconds;
    let mb = |rate: f64| rate * record_bytes / 1e6;
    println!(
        "engine-bench: {records} records of {} body bytes, {} writers, one core",
        args.size, args.writers
    );
    println!(
        "{:<8} {:>12} {:>9} {:>8} {:>9} {:>9} {:>9}",
        "", "msgs/s", "MB/s", "syncs", "p50 ms", "p99 ms", "p999 ms"
    );
    for (name, m, rate) in [("engine", engine, engine_rate), ("raw", raw, raw_rate)] {
        println!(
            "{:<8} {:>12.0} {:>9.1} {:>8} {:>9.3} {:>9.3} {:>9.3}",
            name,
            rate,
            mb(rate),
            m.syncs,
            m.p50_us as f64 / 1e3,
            m.p99_us as f64 / 1e3,
            m.p999_us as f64 / 1e3
        );
    }
    let ratio = engine_rate / raw_rate;
    println!("ratio engine/raw: {ratio:.3}");
    if args.json {
        let json = serde_json::json!({
            "size": args.size,
            "count": records as u64,
            "writers": args.writers,
            "repeat": args.repeat.max(1),
            "engine_msgs_per_s": engine_rate,
            "engine_mb_per_s": mb(engine_rate),
            "raw_msgs_per_s": raw_rate,
            "raw_mb_per_s": mb(raw_rate),
            "ratio": ratio,
            "syncs": engine.syncs,
            "p50_ms": engine.p50_us as f64 / 1e3,
            "p99_ms": engine.p99_us as f64 / 1e3,
            "p999_ms": engine.p999_us as f64 / 1e3,
            "raw_p99_ms": raw.p99_us as f64 / 1e3,
        });
        println!("{json}");
    }
}
