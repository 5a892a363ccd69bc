//! Replication cost, on one machine, in one run: three nodes on 127.0.0.51–53 take SMTP
//! deliveries of 4.7 KB messages from `porcupine-load` (connections spread over the nodes),
//! once with `--replicas 1`, once with 2, once with 3 (a fresh cluster each time).
//!
//! For each factor: delivered msgs/s, and write amplification = bytes the nodes appended to
//! their logs (every record: the copies, their headers and replica sets, the Received header
//! the node adds, retire records) per byte the clients sent. The goal (issue 6) is replicas ×
//! message bytes + under 5 %. Also reported: `disk_write_amplification`, what the kernel
//! counted as written by the node processes (`/proc/<pid>/io` write_bytes), which adds segment
//! preparation (zeros written ahead of the log) and index checkpoints.
//!
//! The cost of the cluster's encryption: `--replicas 2` again with the cluster in plaintext
//! (`--insecure-plaintext-cluster`), alternating with the encrypted runs `--cost-pairs` times;
//! `encryption_cost` is 1 − encrypted / plaintext msgs/s, on the medians.
//!
//! Steady state (`--steady-seconds N`, issue 20): one replica, the paper's 90:10 mix (POP
//! sessions retrieve and delete), 64 MiB segments, a warm-up of `--steady-warmup-seconds` first
//! so that segments roll over, are compacted and come back recycled; then the disk bytes per
//! accepted byte over the next N seconds, beside how many segments were recycled and how many
//! written out with zeros in that time.
//!
//! Writes `bench/results/<name>.md`; with `--json` the last stdout line is
//! `{"r1": {"msgs_per_s", "write_amplification", "disk_write_amplification"}, "r2": …, "r3": …,
//! "r2_plaintext": …, "encryption_cost", "steady": {…} (with `--steady-seconds`)}`.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use porcupine_bench::cluster::{workspace_root, Bins, Layout, Workload};
use porcupine_bench::Servers;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PASSWORD: &str = "pw";
const USERS: usize = 1000;
const LAYOUT: Layout = Layout {
    net: "127.0.0",
    base: 50,
    smtp: 3625,
    pop3: 3210,
    admin: 3125,
    cluster: 4046,
    domain: "replication.test",
};

#[derive(Parser, Debug)]
struct Args {
    /// Seconds of load per replication factor.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Client connections, spread over the three nodes.
    #[arg(long, default_value_t = 48)]
    connections: usize,
    /// Message size in bytes.
    #[arg(long, default_value_t = 4700)]
    size: usize,
    /// Encrypted and plaintext `--replicas 2` runs, alternating, for the encryption's cost.
    #[arg(long, default_value_t = 1)]
    cost_pairs: usize,
    /// Seconds of the steady-state measurement (0: none); see the module comment.
    #[arg(long, default_value_t = 0)]
    steady_seconds: u64,
    /// Seconds of load before the steady-state measurement starts.
    #[arg(long, default_value_t = 60)]
    steady_warmup_seconds: u64,
    /// Only the steady-state measurement.
    #[arg(long)]
    steady_only: bool,
    #[arg(long, default_value = "replication")]
    name: String,
    /// Take `porcupine` and `porcupine-load` from this directory instead of building them (to
    /// measure another build, e.g. before and after a change, in one session).
    #[arg(long)]
    bins: Option<std::path::PathBuf>,
    #[arg(long)]
    json: bool,
}

/// What one node has appended to its logs, from `/metrics`.
fn appended_bytes(n: usize) -> Result<f64> {
    let metrics = LAYOUT
        .admin(n)?
        .metrics()
        .with_context(|| format!("node {n}: no /metrics"))?;
    Ok(metrics
        .lines()
        .filter(|l| l.starts_with("porcupine_shard_appended_bytes_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// Bytes the kernel counted as written by a process (to storage, including O_DIRECT).
fn process_write_bytes(pid: u32) -> Result<f64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io"))
        .with_context(|| format!("reading /proc/{pid}/io"))?;
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes: "))
        .and_then(|v| v.trim().parse().ok())
        .context("no write_bytes in /proc/<pid>/io")
}

/// CPU seconds a process has used (user + system), from `/proc/<pid>/stat`.
fn process_cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // After the name: state is field 0, utime 11 and stime 12 (clock ticks).
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok((ticks(11) + ticks(12)) / hz)
}

/// Segments the nodes recycled and wrote out with zeros, bytes compaction copied and bytes
/// of checkpoints, from `/metrics`.
fn segment_counts(n: usize) -> Result<[f64; 4]> {
    let metrics = LAYOUT
        .admin(n)?
        .metrics()
        .with_context(|| format!("node {n}: no /metrics"))?;
    let sum = |name: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    Ok([
        sum("porcupine_shard_segments_recycled_total"),
        sum("porcupine_shard_segments_created_total"),
        sum("porcupine_shard_compacted_bytes_total"),
        sum("porcupine_shard_checkpoint_bytes_total"),
    ])
}

struct Measured {
    msgs_per_s: f64,
    /// Node CPU (all three processes) per delivered message, microseconds.
    cpu_us_per_msg: f64,
    accepted_bytes: f64,
    appended_bytes: f64,
    disk_bytes: f64,
    /// Segments recycled and written out with zeros during the measurement, bytes compaction
    /// copied, checkpoint bytes.
    recycled: f64,
    prepared: f64,
    compacted_bytes: f64,
    checkpoint_bytes: f64,
    lost: u64,
    errors: serde_json::Value,
}

/// What a measurement runs: the load's mix, and a warm-up before it (the steady state).
struct Shape {
    replicas: usize,
    channel: Channel,
    mix: &'static str,
    warmup_seconds: u64,
    seconds: u64,
    extra: Vec<String>,
}

/// How the cluster's connections are protected in a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Channel {
    Encrypted,
    Plaintext,
}

fn measure(
    bins: &Bins,
    args: &Args,
    base: &std::path::Path,
    replicas: usize,
    channel: Channel,
) -> Result<Measured> {
    measure_shape(
        bins,
        args,
        base,
        &Shape {
            replicas,
            channel,
            mix: "100:0",
            warmup_seconds: 0,
            seconds: args.seconds,
            extra: Vec::new(),
        },
    )
}

fn measure_shape(
    bins: &Bins,
    args: &Args,
    base: &std::path::Path,
    shape: &Shape,
) -> Result<Measured> {
    let (replicas, channel) = (shape.replicas, shape.channel);
    let mut servers = Servers::default();
    let flag = replicas.to_string();
    let mut extra = vec!["--replicas", &flag];
    if channel == Channel::Plaintext {
        extra.push("--insecure-plaintext-cluster");
    }
    extra.extend(shape.extra.iter().map(String::as_str));
    let dir = base.join(format!("r{replicas}-{channel:?}-{}", rand_suffix()));
    for n in 1..=3 {
        LAYOUT.start_node(bins, &mut servers, &dir, n, true, &extra)?;
    }
    LAYOUT.wait_members(&[1, 2, 3], 3, Duration::from_secs(30))?;
    LAYOUT.add_users(bins, 1, USERS, PASSWORD)?;
    if shape.warmup_seconds > 0 {
        let warmup = Workload {
            mix: shape.mix.into(),
            size: args.size,
            connections: args.connections,
            seconds: shape.warmup_seconds,
            extra: vec!["--no-sweep".into()],
        };
        LAYOUT.load(bins, 3, USERS, PASSWORD, &warmup)?;
    }
    // Segments are prepared at start: let that finish before the baseline is read.
    std::thread::sleep(Duration::from_secs(2));
    let segments_before = (1..=3).map(segment_counts).collect::<Result<Vec<_>>>()?;
    let pids: Vec<u32> = servers.children.iter().map(|(_, c)| c.id()).collect();
    let appended_before: f64 = (1..=3).map(appended_bytes).sum::<Result<f64>>()?;
    let disk_before: f64 = pids
        .iter()
        .map(|&p| process_write_bytes(p))
        .sum::<Result<f64>>()?;
    let cpu_before: f64 = pids
        .iter()
        .map(|&p| process_cpu_seconds(p))
        .sum::<Result<f64>>()?;
    let workload = Workload {
        mix: shape.mix.into(),
        size: args.size,
        connections: args.connections,
        seconds: shape.seconds,
        extra: vec!["--no-sweep".into()],
    };
    let report = LAYOUT.load(bins, 3, USERS, PASSWORD, &workload)?;
    let cpu_after: f64 = pids
        .iter()
        .map(|&p| process_cpu_seconds(p))
        .sum::<Result<f64>>()?;
    // Retirements follow the acknowledgements by the straggler wait: let them land.
    std::thread::sleep(Duration::from_secs(2));
    let appended_after: f64 = (1..=3).map(appended_bytes).sum::<Result<f64>>()?;
    let disk_after: f64 = pids
        .iter()
        .map(|&p| process_write_bytes(p))
        .sum::<Result<f64>>()?;
    let segments_after = (1..=3).map(segment_counts).collect::<Result<Vec<_>>>()?;
    let mut counts = [0.0; 4];
    for (before, after) in segments_before.iter().zip(&segments_after) {
        for (i, count) in counts.iter_mut().enumerate() {
            *count += after[i] - before[i];
        }
    }
    let [recycled, prepared, compacted_bytes, checkpoint_bytes] = counts;
    let delivered = report["delivered"].as_f64().unwrap_or(0.0);
    let accepted_bytes = delivered * report["mean_message_bytes"].as_f64().unwrap_or(0.0);
    drop(servers);
    Ok(Measured {
        msgs_per_s: report["msgs_per_s"].as_f64().unwrap_or(0.0),
        cpu_us_per_msg: (cpu_after - cpu_before) * 1e6 / delivered.max(1.0),
        accepted_bytes,
        appended_bytes: appended_after - appended_before,
        disk_bytes: disk_after - disk_before,
        recycled,
        prepared,
        compacted_bytes,
        checkpoint_bytes,
        lost: report["lost"].as_u64().unwrap_or(0) + report["corrupt"].as_u64().unwrap_or(0),
        errors: report["errors"].clone(),
    })
}

/// A fresh directory name for each cluster of the run.
fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let root = workspace_root()?;
    let bins = match &args.bins {
        Some(dir) => Bins::at(dir)?,
        None => Bins::build(&root)?,
    };
    let work = tempfile::Builder::new()
        .prefix("porcupine-replication")
        .tempdir_in("/var/tmp")?;
    let mut json = serde_json::Map::new();
    let mut steady_md = String::new();
    if args.steady_seconds > 0 {
        let m = measure_shape(
            &bins,
            &args,
            work.path(),
            &Shape {
                replicas: 1,
                channel: Channel::Encrypted,
                mix: "90:10",
                warmup_seconds: args.steady_warmup_seconds,
                seconds: args.steady_seconds,
                extra: vec!["--segment-mib".into(), "64".into()],
            },
        )?;
        let per = |bytes: f64| bytes / m.accepted_bytes.max(1.0);
        let disk = per(m.disk_bytes);
        let log = per(m.appended_bytes);
        let (compacted, checkpoints) = (per(m.compacted_bytes), per(m.checkpoint_bytes));
        eprintln!(
            "steady state, 1 replica, 90:10: {:.0} msg/s, log bytes / accepted {log:.3} (of \
             which compaction's copies {compacted:.3}), checkpoints {checkpoints:.3}, disk \
             {disk:.3}, segments recycled {} and created {}, errors {}",
            m.msgs_per_s, m.recycled, m.prepared, m.errors
        );
        json.insert(
            "steady".into(),
            serde_json::json!({
                "msgs_per_s": m.msgs_per_s,
                "write_amplification": log,
                "disk_write_amplification": disk,
                "segments_recycled": m.recycled,
                "segments_created": m.prepared,
                "compaction_copies": compacted,
                "checkpoints": checkpoints,
                "lost": m.lost,
            }),
        );
        let _ =
            writeln!(
            steady_md,
            "\n## Steady state\n\nOne replica, the 90:10 mix (POP sessions retrieve and delete), \
             64 MiB segments, after {} s of the same load: over the next {} s, {:.0} msg/s \
             delivered, **{disk:.3} disk bytes per accepted byte**: log bytes {log:.3} (of \
             which compaction's copies {compacted:.3}), index checkpoints {checkpoints:.3}, the \
             rest zeros written ahead of the log in idle time and the partial block each \
             commit rewrites; {} segments recycled, {} created; lost {}.",
            args.steady_warmup_seconds, args.steady_seconds, m.msgs_per_s, m.recycled,
            m.prepared, m.lost
        );
    }
    if args.steady_only {
        let results = root.join("bench/results");
        std::fs::create_dir_all(&results)?;
        let md = format!("# Replication: steady state\n{steady_md}");
        std::fs::write(results.join(format!("{}.md", args.name)), &md)?;
        print!("{md}");
        if args.json {
            println!("{}", serde_json::Value::Object(json));
        }
        return Ok(());
    }
    let mut rows = Vec::new();
    // The encryption's cost: r2 encrypted and in plaintext, alternating.
    let (mut encrypted, mut plaintext) = (Vec::new(), Vec::new());
    let (mut encrypted_cpu, mut plaintext_cpu) = (Vec::new(), Vec::new());
    let mut plaintext_lost = 0;
    for pair in 0..args.cost_pairs.max(1) {
        for channel in [Channel::Encrypted, Channel::Plaintext] {
            let m = measure(&bins, &args, work.path(), 2, channel)?;
            eprintln!(
                "replicas 2, {channel:?} cluster (pair {}): {:.0} msg/s, {:.0} µs CPU per message, errors {}",
                pair + 1,
                m.msgs_per_s,
                m.cpu_us_per_msg,
                m.errors
            );
            match channel {
                Channel::Encrypted => {
                    encrypted.push(m.msgs_per_s);
                    encrypted_cpu.push(m.cpu_us_per_msg);
                }
                Channel::Plaintext => {
                    plaintext.push(m.msgs_per_s);
                    plaintext_cpu.push(m.cpu_us_per_msg);
                    plaintext_lost += m.lost;
                }
            }
        }
    }
    let (encrypted_rate, plaintext_rate) = (median(encrypted.clone()), median(plaintext.clone()));
    let (encrypted_us, plaintext_us) =
        (median(encrypted_cpu.clone()), median(plaintext_cpu.clone()));
    let cost = 1.0 - encrypted_rate / plaintext_rate.max(1.0);
    let cpu_cost = encrypted_us / plaintext_us.max(1.0) - 1.0;
    json.insert(
        "r2_plaintext".into(),
        serde_json::json!({ "msgs_per_s": plaintext_rate, "cpu_us_per_msg": plaintext_us, "lost": plaintext_lost }),
    );
    json.insert("encryption_cost".into(), serde_json::json!(cost));
    json.insert("encryption_cpu_cost".into(), serde_json::json!(cpu_cost));
    for replicas in 1..=3 {
        let m = measure(&bins, &args, work.path(), replicas, Channel::Encrypted)?;
        let amplification = m.appended_bytes / m.accepted_bytes.max(1.0);
        let disk = m.disk_bytes / m.accepted_bytes.max(1.0);
        eprintln!(
            "replicas {replicas}: {:.0} msg/s, log bytes / accepted {amplification:.3}, disk {disk:.3}, errors {}",
            m.msgs_per_s, m.errors
        );
        json.insert(
            format!("r{replicas}"),
            serde_json::json!({
                "msgs_per_s": m.msgs_per_s,
                "write_amplification": amplification,
                "disk_write_amplification": disk,
                "lost": m.lost,
            }),
        );
        rows.push((replicas, m, amplification, disk));
    }
    let mut md = String::new();
    let _ = writeln!(md, "# Replication: throughput and write amplification\n");
    let _ = writeln!(
        md,
        "Machine: {} cores; three nodes on 127.0.0.51–53 of this one machine. SMTP only, {} B \
         messages, {} connections spread over the nodes, {} s per factor, a fresh cluster each \
         time. Every 250 waits for every replica (`--ack all`).\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        args.size,
        args.connections,
        args.seconds
    );
    let _ = writeln!(
        md,
        "| replicas | msgs/s | vs 1 replica | log bytes / accepted byte | over replicas × 1 | disk bytes / accepted byte | lost |"
    );
    let _ = writeln!(md, "|---:|---:|---:|---:|---:|---:|---:|");
    let base = rows.first().map_or(1.0, |r| r.1.msgs_per_s.max(1.0));
    for (replicas, m, amplification, disk) in &rows {
        let _ = writeln!(
            md,
            "| {replicas} | {:.0} | {:.2} | {amplification:.3} | {:+.1} % | {disk:.3} | {} |",
            m.msgs_per_s,
            m.msgs_per_s / base,
            (amplification / *replicas as f64 - 1.0) * 100.0,
            m.lost
        );
    }
    let _ = writeln!(
        md,
        "\nThe cluster's encryption (Noise NNpsk0, AES-256-GCM), `--replicas 2`, {} alternating \
         pairs: {encrypted_rate:.0} msg/s encrypted against {plaintext_rate:.0} in plaintext \
         (medians; {:+.1} % msgs/s; every run: encrypted {encrypted:.0?}, plaintext \
         {plaintext:.0?}), and {encrypted_us:.0} µs of node CPU per message against \
         {plaintext_us:.0} ({:+.1} %; encrypted {encrypted_cpu:.0?}, plaintext \
         {plaintext_cpu:.0?}). CPU per message is the steadier figure here: the disk moves \
         msgs/s by tens of percent from run to run.",
        args.cost_pairs.max(1),
        -cost * 100.0,
        cpu_cost * 100.0,
    );
    let _ = writeln!(
        md,
        "\nLog bytes are every record the nodes appended: each copy with its 64-byte header, user \
         name and replica set, the Received header the receiving node prepends, and the retire \
         records. Disk bytes are the node processes' write_bytes in /proc: they add the zeros \
         written ahead of the log when a segment is prepared, and index checkpoints."
    );
    md.push_str(&steady_md);
    let results = root.join("bench/results");
    std::fs::create_dir_all(&results)?;
    std::fs::write(results.join(format!("{}.md", args.name)), &md)?;
    print!("{md}");
    if args.json {
        println!("{}", serde_json::Value::Object(json));
    }
    Ok(())
}
