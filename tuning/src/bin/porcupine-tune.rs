//! `porcupine-tune --data DIR [--data DIR]… [--out FILE] [--json]`: probes each data directory
//! through io_uring (`O_DIRECT` writes and `fdatasync` on a glommio executor, as the engine does
//! them), prints a table, and writes the settings as a TOML snippet that `porcupine serve
//! --config FILE` reads. The probe file is written inside the directory and removed after.

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use glommio::io::DmaFile;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use porcupine_tune::{recommend, to_toml, DiskProbe};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(about = "Probe data directories and recommend porcupine's disk settings")]
struct Args {
    /// A data directory to probe; repeat for each disk.
    #[arg(long = "data", required = true)]
    data: Vec<PathBuf>,
    /// Where the settings go (a TOML snippet for `porcupine serve --config`).
    #[arg(long, default_value = "porcupine-tune.toml")]
    out: PathBuf,
    /// Seconds per probe step (each directory takes about 14 steps).
    #[arg(long, default_value_t = 0.7)]
    step_s: f64,
    /// Largest probe file, MiB (written once, then overwritten in place, as a segment is).
    #[arg(long, default_value_t = 256)]
    probe_mib: u64,
    /// Print the measurements and settings as one JSON object on the last line.
    #[arg(long)]
    json: bool,
}

const PROBE_FILE: &str = ".porcupine-tune.probe";
const BATCHES: [usize; 6] = [4 << 10, 16 << 10, 64 << 10, 256 << 10, 512 << 10, 1 << 20];
const DEPTHS: [usize; 6] = [1, 2, 4, 8, 16, 32];
const DEPTH_WRITE_BYTES: usize = 128 << 10;
const SYNC_SAMPLES_MAX: u64 = 2000;
const STEPS_PER_DIR: u64 = 2 + BATCHES.len() as u64 + DEPTHS.len() as u64;

fn main() {
    if let Err(error) = run() {
        eprintln!("porcupine-tune: {error:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args = Args::parse();
    if !(0.05..=60.0).contains(&args.step_s) {
        bail!("--step-s must be between 0.05 and 60");
    }
    if args.probe_mib < 16 {
        bail!("--probe-mib must be at least 16");
    }
    for dir in &args.data {
        if !dir.is_dir() {
            bail!("{} is not a directory", dir.display());
        }
    }
    let progress = ProgressBar::new(STEPS_PER_DIR * args.data.len() as u64);
    progress.set_draw_target(ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("{bar:40} {pos}/{len} {msg}") {
        progress.set_style(style);
    }
    let mut probes = Vec::new();
    for dir in &args.data {
        let dir = std::path::absolute(dir).context("resolving the data directory")?;
        let (step, limit, bar) = (
            Duration::from_secs_f64(args.step_s),
            args.probe_mib << 20,
            progress.clone(),
        );
        let probing = dir.clone();
        let probe = porcupine_runtime::run_local(move || async move {
            probe_dir(&probing, step, limit, &bar).await
        })?;
        let _ = std::fs::remove_file(dir.join(PROBE_FILE));
        probes.push(probe.with_context(|| format!("probing {}", dir.display()))?);
    }
    progress.finish_and_clear();
    let rec = recommend(&probes);
    print_table(&probes);
    for (i, p) in probes.iter().enumerate() {
        if probes[..i].iter().any(|q| q.device == p.device) {
            println!(
                "note: {} is on the same device as another directory: they share one disk, \
                 so they get one weight, and adding it adds no throughput",
                p.dir.display()
            );
        }
    }
    let header = format!(
        "porcupine-tune on {} (Linux {}), {} directories.\nUse it with: porcupine serve --config {}",
        hostname(),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim(),
        probes.len(),
        args.out.display()
    );
    let snippet = to_toml(&rec, &header).context("cannot write the settings as TOML")?;
    std::fs::write(&args.out, &snippet)
        .with_context(|| format!("writing {}", args.out.display()))?;
    println!("\nwrote {}:\n{snippet}", args.out.display());
    if args.json {
        println!(
            "{}",
            serde_json::json!({ "disks": probes, "recommendation": rec })
        );
    }
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "this machine".into())
}

fn print_table(probes: &[DiskProbe]) {
    println!(
        "{:<32} {:>10} {:>9} {:>9} {:>9} {:>12} {:>12}",
        "directory", "append MB/s", "sync p50", "sync p99", "sync max", "commit MB/s", "depth MB/s"
    );
    for p in probes {
        let best = |points: &[(usize, f64)]| points.iter().map(|x| x.1).fold(0.0, f64::max);
        println!(
            "{:<32} {:>10.1} {:>7}µs {:>7}µs {:>7}µs {:>12.1} {:>12.1}",
            p.dir.display(),
            p.append_mb_per_s,
            p.sync_p50_us,
            p.sync_p99_us,
            p.sync_max_us,
            best(&p.batches),
            best(&p.depths)
        );
        let batches: Vec<String> = p
            .batches
            .iter()
            .map(|(b, r)| format!("{} KiB {r:.1}", b >> 10))
            .collect();
        println!("    group commit (batch → MB/s): {}", batches.join(", "));
        let depths: Vec<String> = p
            .depths
            .iter()
            .map(|(d, r)| format!("{d} → {r:.1}"))
            .collect();
        println!("    writes in flight (depth → MB/s): {}", depths.join(", "));
    }
}

fn io(
    op: &str,
    path: &Path,
    r: std::result::Result<impl Sized, glommio::GlommioError<()>>,
) -> Result<()> {
    r.map(|_| ())
        .map_err(|e| anyhow::anyhow!("{op} {}: {e}", path.display()))
}

async fn write_at(file: &DmaFile, path: &Path, len: usize, pos: u64) -> Result<()> {
    let mut buf = file.alloc_dma_buffer(len);
    buf.as_bytes_mut().fill(0xa5);
    io("write", path, file.write_at(buf, pos).await)
}

fn mb_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / 1e6 / elapsed.as_secs_f64().max(1e-9)
}

async fn probe_dir(
    dir: &Path,
    step: Duration,
    limit: u64,
    progress: &ProgressBar,
) -> Result<DiskProbe> {
    let path = dir.join(PROBE_FILE);
    // Opened as the engine opens its segments, so the probe completes writes as it will.
    let file = porcupine_engine::storage::direct_write_options(&path)
        .create(true)
        .truncate(true)
        .dma_open(&path)
        .await
        .map_err(|e| anyhow::anyhow!("cannot open {} for O_DIRECT writes: {e}", path.display()))?;
    let file = Rc::new(file);
    let name = dir.display().to_string();

    // 1. Sequential appends: the region later steps overwrite in place, as the engine does.
    progress.set_message(format!("{name}: sequential appends"));
    let started = Instant::now();
    let mut written = 0u64;
    while written < limit && (written < 16 << 20 || started.elapsed() < step * 4) {
        write_at(&file, &path, 1 << 20, written).await?;
        written += 1 << 20;
    }
    io("fdatasync", &path, file.fdatasync().await)?;
    let append_mb_per_s = mb_per_s(written, started.elapsed());
    let region = written;
    progress.inc(1);

    // 2. Sync latency: 4 KiB then fdatasync.
    progress.set_message(format!("{name}: fdatasync latency"));
    let mut histogram = hdrhistogram::Histogram::<u64>::new(3)?;
    let started = Instant::now();
    let mut pos = 0u64;
    while histogram.len() < SYNC_SAMPLES_MAX
        && (histogram.len() < 20 || started.elapsed() < step * 2)
    {
        let t = Instant::now();
        write_at(&file, &path, 4096, pos).await?;
        io("fdatasync", &path, file.fdatasync().await)?;
        histogram.record(t.elapsed().as_micros() as u64)?;
        pos = (pos + 4096) % region;
    }
    progress.inc(1);

    // 3. Group commits: one write of the batch, one fdatasync.
    let mut batches = Vec::new();
    for batch in BATCHES {
        progress.set_message(format!("{name}: group commits of {} KiB", batch >> 10));
        let started = Instant::now();
        let mut bytes = 0u64;
        let mut pos = 0u64;
        while bytes == 0 || started.elapsed() < step {
            if pos + batch as u64 > region {
                pos = 0;
            }
            write_at(&file, &path, batch, pos).await?;
            io("fdatasync", &path, file.fdatasync().await)?;
            pos += batch as u64;
            bytes += batch as u64;
        }
        batches.push((batch, mb_per_s(bytes, started.elapsed())));
        progress.inc(1);
    }

    // 4. Writes in flight: `depth` writers over disjoint parts of the region, one sync at the end.
    let mut depths = Vec::new();
    for depth in DEPTHS {
        progress.set_message(format!("{name}: {depth} writes in flight"));
        let started = Instant::now();
        let share = (region / depth as u64) / DEPTH_WRITE_BYTES as u64 * DEPTH_WRITE_BYTES as u64;
        let writers: Vec<_> = (0..depth as u64)
            .map(|w| {
                let (file, path) = (file.clone(), path.clone());
                glommio::spawn_local(async move {
                    let mut bytes = 0u64;
                    let base = w * share;
                    let mut offset = 0u64;
                    while bytes == 0 || started.elapsed() < step {
                        if offset + DEPTH_WRITE_BYTES as u64 > share {
                            offset = 0;
                        }
                        write_at(&file, &path, DEPTH_WRITE_BYTES, base + offset).await?;
                        offset += DEPTH_WRITE_BYTES as u64;
                        bytes += DEPTH_WRITE_BYTES as u64;
                    }
                    Ok::<u64, anyhow::Error>(bytes)
                })
            })
            .collect();
        let mut bytes = 0u64;
        for writer in writers {
            bytes += writer.await?;
        }
        io("fdatasync", &path, file.fdatasync().await)?;
        depths.push((depth, mb_per_s(bytes, started.elapsed())));
        progress.inc(1);
    }
    if let Ok(file) = Rc::try_unwrap(file) {
        let _ = file.close().await;
    }
    let device = std::os::unix::fs::MetadataExt::dev(
        &std::fs::metadata(dir).with_context(|| format!("stat {}", dir.display()))?,
    );
    Ok(DiskProbe {
        dir: dir.to_path_buf(),
        device,
        append_mb_per_s,
        sync_p50_us: histogram.value_at_quantile(0.5),
        sync_p99_us: histogram.value_at_quantile(0.99),
        sync_max_us: histogram.max(),
        batches,
        depths,
    })
}
