//! Per-disk scaling, on one machine, in one run: one node on 127.0.0.81 takes 4.7 KB deliveries
//! from `porcupine-load` with 1, 2 and 4 data directories, each a simulated disk of the same
//! speed (the engine's throttle), then with 4 directories unthrottled. Then two directories of
//! different speeds (one `--slow-factor` times slower): with equal weights, and with weights in
//! proportion to their speeds (as `porcupine-tune` would measure them).
//!
//! The disks are simulated because this machine has one real disk: directories on it would
//! share its bandwidth, and adding them could not add throughput.
//!
//! Writes `bench/results/<name>.md` and `<name>.svg`; with `--json` the last stdout line is
//! `{"d1", "d2", "d4", "unthrottled", "slow", "hetero_equal", "hetero_weighted", "hetero_sum",
//! "lost"}` (msgs/s; `hetero_sum` is one fast disk's rate plus one slow disk's); with `--only`,
//! the runs made.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::Parser;
use porcupine_bench::cluster::{workspace_root, Bins, Layout, Workload};
use porcupine_bench::Servers;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PASSWORD: &str = "pw";
const LAYOUT: Layout = Layout {
    net: "127.0.0",
    base: 80,
    smtp: 3825,
    pop3: 3410,
    admin: 3325,
    cluster: 4246,
    domain: "disks.test",
};

#[derive(Parser, Debug, Clone)]
struct Args {
    /// Seconds of load per run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Client connections: enough that every disk stays busy (fewer make the runs
    /// latency-bound, and more disks then look slower than they are).
    #[arg(long, default_value_t = 256)]
    connections: usize,
    /// Users, uniformly chosen. A user's mail lives on one disk, so the disks' shares follow
    /// how the users hash: 1,000 users over 8 shards leave the busiest disk about 7 % above
    /// its share, and a closed loop runs at the pace of the busiest disk. 10,000 (the paper
    /// had 160,000 per node) brings that within about 2 %.
    #[arg(long, default_value_t = 10_000)]
    users: usize,
    #[arg(long, default_value_t = 4700)]
    size: usize,
    /// The simulated disk: bandwidth in MB/s…
    #[arg(long, default_value_t = 4.0)]
    disk_mbps: f64,
    /// …and operations per second.
    #[arg(long, default_value_t = 400)]
    disk_iops: u32,
    /// How many times slower the slow disk of the heterogeneous runs is.
    #[arg(long, default_value_t = 4.0)]
    slow_factor: f64,
    /// Segment size of the node, MiB (zeros are written ahead of the log through the simulated
    /// disk while it is idle).
    #[arg(long, default_value_t = 4)]
    segment_mib: u64,
    /// Only these runs (keys: d1, d2, d4, unthrottled, slow, hetero_equal, hetero_weighted).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    #[arg(long, default_value = "disks")]
    name: String,
    #[arg(long)]
    json: bool,
}

/// One data directory of a run: its speed factor (1: the simulated disk; `None`: unthrottled)
/// and its weight.
#[derive(Clone, Copy, Debug)]
struct Disk {
    speed: Option<f64>,
    weight: f64,
}

struct Run {
    label: String,
    key: &'static str,
    disks: Vec<Disk>,
}

struct Measured {
    msgs_per_s: f64,
    /// The simulated disks' bandwidth bound: their bytes per second over the log bytes one
    /// stored message takes (record header, user, the node's Received header, padding), as
    /// appended in the run; `None` when a disk is unthrottled.
    bound_msgs_per_s: Option<f64>,
    p99_ms: f64,
    lost: u64,
    errors: serde_json::Value,
}

fn runs(args: &Args) -> Vec<Run> {
    let same = |n: usize, speed: Option<f64>| vec![Disk { speed, weight: 1.0 }; n];
    let slow = 1.0 / args.slow_factor;
    let all = vec![
        Run {
            label: "1 disk".into(),
            key: "d1",
            disks: same(1, Some(1.0)),
        },
        Run {
            label: "2 disks".into(),
            key: "d2",
            disks: same(2, Some(1.0)),
        },
        Run {
            label: "4 disks".into(),
            key: "d4",
            disks: same(4, Some(1.0)),
        },
        Run {
            label: "4 directories, unthrottled".into(),
            key: "unthrottled",
            disks: same(4, None),
        },
        Run {
            label: "1 slow disk".into(),
            key: "slow",
            disks: same(1, Some(slow)),
        },
        Run {
            label: "fast + slow, equal weights".into(),
            key: "hetero_equal",
            disks: vec![
                Disk {
                    speed: Some(1.0),
                    weight: 1.0,
                },
                Disk {
                    speed: Some(slow),
                    weight: 1.0,
                },
            ],
        },
        Run {
            label: "fast + slow, weights by speed".into(),
            key: "hetero_weighted",
            disks: vec![
                Disk {
                    speed: Some(1.0),
                    weight: 1.0,
                },
                Disk {
                    speed: Some(slow),
                    weight: slow,
                },
            ],
        },
    ];
    all.into_iter()
        .filter(|r| args.only.is_empty() || args.only.iter().any(|k| k == r.key))
        .collect()
}

fn measure(bins: &Bins, args: &Args, base: &Path, run: &Run) -> Result<Measured> {
    let mut servers = Servers::default();
    let mut flags: Vec<String> = [
        "--replicas",
        "1",
        "--segment-mib",
        &args.segment_mib.to_string(),
        "--message-bytes-max",
        "2097152",
    ]
    .map(String::from)
    .to_vec();
    for (i, disk) in run.disks.iter().enumerate() {
        // The first directory is the node's own (`base/node1`); the others beside it.
        let dir = if i == 0 {
            base.join("node1")
        } else {
            base.join(format!("node1-disk{}", i + 1))
        };
        if i > 0 {
            flags.push("--data".into());
            flags.push(dir.display().to_string());
        }
        if let Some(speed) = disk.speed {
            let iops = ((f64::from(args.disk_iops) * speed) as u32).max(1);
            flags.push("--throttle".into());
            flags.push(format!(
                "{}={iops}:{}",
                dir.display(),
                args.disk_mbps * speed
            ));
        }
        flags.push("--disk-weight".into());
        flags.push(format!("{}={}", dir.display(), disk.weight));
    }
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    LAYOUT.start_node(bins, &mut servers, base, 1, false, &flags)?;
    LAYOUT.add_users(bins, 1, args.users, PASSWORD)?;
    // The first segments' zeros go through the simulated disks: let them land.
    let slowest = run.disks.iter().filter_map(|d| d.speed).fold(1.0, f64::min);
    std::thread::sleep(Duration::from_secs_f64(
        (2.0 * 2.0 * args.segment_mib as f64 / (args.disk_mbps * slowest)).clamp(1.0, 40.0),
    ));
    let workload = Workload {
        mix: "100:0".into(),
        size: args.size,
        connections: args.connections,
        seconds: args.seconds,
        extra: vec!["--zipf".into(), "0".into(), "--no-sweep".into()],
    };
    let appended_before = appended_bytes()?;
    let report = LAYOUT.load(bins, 1, args.users, PASSWORD, &workload)?;
    let appended = appended_bytes()? - appended_before;
    drop(servers);
    let delivered = report["delivered"].as_f64().unwrap_or(0.0);
    let bandwidth: Option<f64> = run
        .disks
        .iter()
        .map(|d| d.speed.map(|s| args.disk_mbps * 1e6 * s))
        .sum();
    let bound_msgs_per_s = bandwidth
        .filter(|_| delivered > 0.0 && appended > 0.0)
        .map(|bytes_per_s| bytes_per_s / (appended / delivered));
    Ok(Measured {
        msgs_per_s: report["msgs_per_s"].as_f64().unwrap_or(0.0),
        bound_msgs_per_s,
        p99_ms: report["smtp"]["p99_ms"].as_f64().unwrap_or(0.0),
        lost: report["lost"].as_u64().unwrap_or(0) + report["corrupt"].as_u64().unwrap_or(0),
        errors: report["errors"].clone(),
    })
}

/// Log bytes the node has appended, from `/metrics`.
fn appended_bytes() -> Result<f64> {
    let metrics = LAYOUT.admin(1)?.metrics()?;
    Ok(metrics
        .lines()
        .filter(|l| l.starts_with("porcupine_shard_appended_bytes_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.disk_mbps <= 0.0 || args.disk_iops == 0 || args.slow_factor < 1.0 {
        bail!("--disk-mbps and --disk-iops must be positive, --slow-factor at least 1");
    }
    let root = workspace_root()?;
    let bins = Bins::build(&root)?;
    let work = tempfile::Builder::new()
        .prefix("porcupine-disks")
        .tempdir_in("/var/tmp")?;
    // A short run first, discarded, so no configuration meets a cold machine.
    let warm_up = Args {
        seconds: 3,
        ..args.clone()
    };
    if let Some(first) = runs(&args).first() {
        let m = measure(&bins, &warm_up, &work.path().join("warm-up"), first)?;
        eprintln!("warm-up (discarded): {:.0} msg/s", m.msgs_per_s);
    }
    let mut results = Vec::new();
    for (i, run) in runs(&args).into_iter().enumerate() {
        let m = measure(&bins, &args, &work.path().join(format!("run{i}")), &run)?;
        eprintln!(
            "{}: {:.0} msg/s (bound {:.0}), SMTP p99 {:.1} ms, lost {}, errors {}",
            run.label,
            m.msgs_per_s,
            m.bound_msgs_per_s.unwrap_or(0.0),
            m.p99_ms,
            m.lost,
            m.errors
        );
        results.push((run, m));
    }
    let rate = |key: &str| {
        results
            .iter()
            .find(|(r, _)| r.key == key)
            .map_or(0.0, |(_, m)| m.msgs_per_s)
    };
    let ran = |key: &str| results.iter().any(|(r, _)| r.key == key);
    let d1 = rate("d1").max(f64::MIN_POSITIVE);
    // Only when both were measured in this run.
    let hetero_sum = (ran("d1") && ran("slow")).then(|| rate("d1") + rate("slow"));
    let mut md = String::new();
    let _ = writeln!(md, "# Per-disk scaling\n");
    let _ = writeln!(
        md,
        "Machine: {} cores, one real disk. One node (127.0.0.81, every core), one copy per \
         message. Each throttled data directory is a simulated disk of {} MB/s and {} IOPS \
         (the slow one {}× slower). {} B messages from {} connections to {} users, uniformly, \
         {} s per run, a fresh node for each run.\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        args.disk_mbps,
        args.disk_iops,
        args.slow_factor,
        args.size,
        args.connections,
        args.users,
        args.seconds
    );
    let _ = writeln!(
        md,
        "| data directories | msgs/s | vs 1 disk | bandwidth bound msgs/s | of the bound | SMTP p99 ms | lost |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|");
    for (run, m) in &results {
        let _ = writeln!(
            md,
            "| {} | {:.0} | {} | {} | {} | {:.1} | {} |",
            run.label,
            m.msgs_per_s,
            if ran("d1") {
                format!("{:.2}", m.msgs_per_s / d1)
            } else {
                "–".into()
            },
            m.bound_msgs_per_s.map_or("–".into(), |b| format!("{b:.0}")),
            m.bound_msgs_per_s.map_or("–".into(), |b| format!(
                "{:.0} %",
                m.msgs_per_s / b * 100.0
            )),
            m.p99_ms,
            m.lost
        );
    }
    let _ = writeln!(
        md,
        "\nThe bandwidth bound is the simulated disks' bytes per second over the log bytes one \
         stored message took in the run (its record header, user name, the node's Received \
         header and padding): what the disks could take if every byte reached them once and \
         nothing else did."
    );
    if let Some(sum) = hetero_sum {
        let _ = writeln!(
            md,
            "\nA fast disk alone plus a slow disk alone: {sum:.0} msgs/s. Fast + slow reaches \
             {:.0} % of that with equal weights and {:.0} % with weights by speed.",
            rate("hetero_equal") / sum.max(f64::MIN_POSITIVE) * 100.0,
            rate("hetero_weighted") / sum.max(f64::MIN_POSITIVE) * 100.0
        );
    }
    let dir = root.join("bench/results");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(format!("{}.md", args.name)), &md)?;
    plot(&results, &dir.join(format!("{}.svg", args.name)))?;
    print!("{md}");
    let lost: u64 = results.iter().map(|(_, m)| m.lost).sum();
    if args.json {
        // The runs made (all unless `--only`), by key.
        let mut json = serde_json::Map::new();
        for (run, m) in &results {
            json.insert(run.key.into(), m.msgs_per_s.into());
            if let Some(bound) = m.bound_msgs_per_s {
                json.insert(
                    format!("{}_of_bound", run.key),
                    (m.msgs_per_s / bound).into(),
                );
            }
        }
        if let Some(sum) = hetero_sum {
            json.insert("hetero_sum".into(), sum.into());
        }
        json.insert("lost".into(), lost.into());
        println!("{}", serde_json::Value::Object(json));
    }
    if lost > 0 {
        bail!("{lost} messages lost or corrupt");
    }
    Ok(())
}

/// Throughput against the number of simulated disks, with the ideal linear scaling.
fn plot(results: &[(Run, Measured)], path: &Path) -> Result<()> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (600, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let scaling: Vec<(f64, f64)> = results
        .iter()
        .filter(|(r, _)| ["d1", "d2", "d4"].contains(&r.key))
        .map(|(r, m)| (r.disks.len() as f64, m.msgs_per_s))
        .collect();
    let d1 = scaling.first().map_or(1.0, |p| p.1);
    let max_y = results
        .iter()
        .map(|(_, m)| m.msgs_per_s)
        .fold(d1 * 4.0, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption("delivered msg/s vs simulated disks", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0.5..4.5, 0.0..max_y)?;
    chart.configure_mesh().x_desc("disks").draw()?;
    chart
        .draw_series(LineSeries::new(scaling.clone(), RED.stroke_width(2)))?
        .label("measured")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], RED));
    chart.draw_series(scaling.iter().map(|&p| Circle::new(p, 4, RED.filled())))?;
    chart
        .draw_series(LineSeries::new(
            [1.0, 2.0, 4.0].map(|n| (n, d1 * n)),
            BLACK.stroke_width(1),
        ))?
        .label("linear")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], BLACK));
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE)
        .draw()?;
    root.present()?;
    Ok(())
}
