//! The paper's load-balancing experiments, on one machine, in one run: three nodes on
//! 127.0.0.61–63, each on its own simulated disk (the engine's per-directory throttle), take
//! 4.7 KB deliveries from `porcupine-load` spread over the nodes, under each placement policy
//! (a fresh cluster for every run).
//!
//! - `skew`: equal disks; recipients Zipf-distributed with increasing skew (s = 0, i.e.
//!   uniform, then 1.0 and 1.5); static vs random vs dynamic.
//! - `heterogeneous`: one node's disk four times slower; uniform recipients; the three policies.
//! - `spread`: the heterogeneous cluster, recipients Zipf 1.0, the 90:10 mix (so the cost of a
//!   mailbox spread over more nodes shows in the POP sessions); dynamic with spread 1, 2, 4.
//!
//! The disks are simulated because every node here shares one real disk and two cores: with
//! real disks the nodes would be CPU-bound together, and no placement could matter. The
//! simulated disk (default 5 MB/s, 400 IOPS) keeps each node disk-bound, as the paper's were.
//! One copy per message (`--replicas 1`), so the comparison is of placement alone.
//!
//! Writes `bench/results/<name>.md` and `<name>.svg`; with `--json` the last stdout line holds
//! the msgs/s of each policy: `static`, `random`, `dynamic` (for `skew`, at the highest skew, and
//! under `uniform` the same keys at s = 0), or `spread_1`, `spread_2`, `spread_4`.

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
    base: 60,
    smtp: 3725,
    pop3: 3310,
    admin: 3225,
    cluster: 4146,
    domain: "balance.test",
};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    Skew,
    Heterogeneous,
    Spread,
}

#[derive(Parser, Debug, Clone)]
struct Args {
    #[arg(long, value_enum)]
    scenario: Scenario,
    /// Seconds of load per run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Client connections, spread over the three nodes: enough to keep every disk busy (the
    /// paper's clients saturated the cluster); fewer make the runs latency-bound.
    #[arg(long, default_value_t = 96)]
    connections: usize,
    #[arg(long, default_value_t = 1000)]
    users: usize,
    /// Message size in bytes.
    #[arg(long, default_value_t = 4700)]
    size: usize,
    /// The simulated disk every node has: bandwidth in MB/s…
    #[arg(long, default_value_t = 5.0)]
    disk_mbps: f64,
    /// …and operations per second.
    #[arg(long, default_value_t = 400)]
    disk_iops: u32,
    /// How many times slower the slow node's disk is (heterogeneous and spread).
    #[arg(long, default_value_t = 4.0)]
    slow_factor: f64,
    /// Zipf skews of the `skew` scenario.
    #[arg(long, value_delimiter = ',', default_values_t = [0.0, 1.0, 1.5])]
    skews: Vec<f64>,
    /// Placement policies of the `skew` and `heterogeneous` scenarios.
    #[arg(long, value_delimiter = ',', default_values_t = ["static".to_string(), "random".to_string(), "dynamic".to_string()])]
    policies: Vec<String>,
    /// Results file name under bench/results (default: balance-<scenario>).
    #[arg(long)]
    name: Option<String>,
    #[arg(long)]
    json: bool,
}

/// One run's settings.
#[derive(Clone, Debug)]
struct Run {
    /// The series it belongs to (a policy, or `dynamic` for spread runs).
    series: String,
    /// Its place on the x axis (Zipf skew, or spread).
    x: f64,
    placement: &'static str,
    spread: usize,
    zipf: f64,
    mix: &'static str,
    slow_node: bool,
}

struct Measured {
    msgs_per_s: f64,
    smtp_p99_ms: f64,
    pop_p99_ms: f64,
    lost: u64,
    errors: serde_json::Value,
    /// Messages stored on each node at the end, as shares of the total.
    shares: [f64; 3],
}

fn runs(args: &Args) -> Vec<Run> {
    let chosen: Vec<&'static str> = ["static", "random", "dynamic"]
        .into_iter()
        .filter(|p| args.policies.iter().any(|q| q == p))
        .collect();
    let policy = |p: &'static str, x: f64, zipf: f64, mix: &'static str, slow: bool| Run {
        series: p.to_owned(),
        x,
        placement: p,
        spread: 2,
        zipf,
        mix,
        slow_node: slow,
    };
    match args.scenario {
        Scenario::Skew => args
            .skews
            .iter()
            .flat_map(|&s| chosen.iter().map(move |&p| (p, s)))
            .map(|(p, s)| policy(p, s, s, "100:0", false))
            .collect(),
        Scenario::Heterogeneous => chosen
            .iter()
            .map(|&p| policy(p, 0.0, 0.0, "100:0", true))
            .collect(),
        Scenario::Spread => [1, 2, 4]
            .map(|spread| Run {
                series: "dynamic".into(),
                x: spread as f64,
                placement: "dynamic",
                spread,
                zipf: 1.0,
                mix: "90:10",
                slow_node: true,
            })
            .to_vec(),
    }
}

fn measure(bins: &Bins, args: &Args, base: &Path, run: &Run) -> Result<Measured> {
    let mut servers = Servers::default();
    let spread = run.spread.to_string();
    for n in 1..=3 {
        let data = base.join(format!("node{n}"));
        let slow = run.slow_node && n == 3;
        let mbps = if slow {
            args.disk_mbps / args.slow_factor
        } else {
            args.disk_mbps
        };
        let iops = if slow {
            ((f64::from(args.disk_iops) / args.slow_factor) as u32).max(1)
        } else {
            args.disk_iops
        };
        let throttle = format!("{}={iops}:{mbps}", data.display());
        LAYOUT.start_node(
            bins,
            &mut servers,
            base,
            n,
            true,
            &[
                "--replicas",
                "1",
                "--cores",
                "1",
                "--placement",
                run.placement,
                "--spread",
                &spread,
                "--throttle",
                &throttle,
                // Small segments: each is written out with zeros ahead of the log, through the
                // simulated disk, which would take minutes at 128 MiB.
                "--segment-mib",
                "4",
                "--message-bytes-max",
                "2097152",
            ],
        )?;
    }
    LAYOUT.wait_members(&[1, 2, 3], 3, Duration::from_secs(30))?;
    LAYOUT.add_users(bins, 1, args.users, PASSWORD)?;
    // The first segment's zeros go through the simulated disk: let them land.
    std::thread::sleep(Duration::from_secs_f64(
        (4.0 * args.slow_factor / args.disk_mbps.max(0.1)).clamp(1.0, 15.0),
    ));
    let workload = Workload {
        mix: run.mix.into(),
        size: args.size,
        connections: args.connections,
        seconds: args.seconds,
        extra: vec!["--zipf".into(), run.zipf.to_string(), "--no-sweep".into()],
    };
    let report = LAYOUT.load(bins, 3, args.users, PASSWORD, &workload)?;
    let stored: Vec<f64> = (1..=3)
        .map(|n| LAYOUT.status(n).map_or(0.0, |s| s.messages as f64))
        .collect();
    let total = stored.iter().sum::<f64>().max(1.0);
    let shares = [stored[0] / total, stored[1] / total, stored[2] / total];
    drop(servers);
    Ok(Measured {
        msgs_per_s: report["msgs_per_s"].as_f64().unwrap_or(0.0),
        smtp_p99_ms: report["smtp"]["p99_ms"].as_f64().unwrap_or(0.0),
        pop_p99_ms: report["pop"]["p99_ms"].as_f64().unwrap_or(0.0),
        lost: report["lost"].as_u64().unwrap_or(0) + report["corrupt"].as_u64().unwrap_or(0),
        errors: report["errors"].clone(),
        shares,
    })
}

fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(unknown) = args
        .policies
        .iter()
        .find(|p| !["static", "random", "dynamic"].contains(&p.as_str()))
    {
        bail!("--policies: unknown policy {unknown:?} (static, random, dynamic)");
    }
    if args.disk_mbps <= 0.0 || args.disk_iops == 0 || args.slow_factor < 1.0 {
        bail!("--disk-mbps and --disk-iops must be positive, --slow-factor at least 1");
    }
    let root = workspace_root()?;
    let bins = Bins::build(&root)?;
    let work = tempfile::Builder::new()
        .prefix("porcupine-balance")
        .tempdir_in("/var/tmp")?;
    // A short run first, discarded: the first cluster of a session meets a cold machine (page
    // cache, CPU frequency), which would handicap whichever policy runs first.
    if let Some(first) = runs(&args).into_iter().next() {
        let warm_up = Args {
            seconds: 3,
            ..args.clone()
        };
        let m = measure(&bins, &warm_up, &work.path().join("warm-up"), &first)?;
        eprintln!("warm-up (discarded): {:.0} msg/s", m.msgs_per_s);
    }
    let mut results = Vec::new();
    for (i, run) in runs(&args).into_iter().enumerate() {
        let m = measure(&bins, &args, &work.path().join(format!("run{i}")), &run)?;
        eprintln!(
            "{} spread {} zipf {}: {:.0} msg/s, SMTP p99 {:.1} ms, lost {}, errors {}, shares {:.2?}",
            run.placement, run.spread, run.zipf, m.msgs_per_s, m.smtp_p99_ms, m.lost, m.errors, m.shares
        );
        results.push((run, m));
    }
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| format!("balance-{}", format!("{:?}", args.scenario).to_lowercase()));
    let md = report(&args, &results);
    let dir = root.join("bench/results");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(format!("{name}.md")), &md)?;
    plot(&args, &results, &dir.join(format!("{name}.svg")))?;
    print!("{md}");
    if args.json {
        println!("{}", json(args.scenario, &results));
    }
    let lost: u64 = results.iter().map(|(_, m)| m.lost).sum();
    if lost > 0 {
        bail!("{lost} messages lost or corrupt");
    }
    Ok(())
}

fn rate(results: &[(Run, Measured)], series: &str, x: f64) -> f64 {
    results
        .iter()
        .find(|(r, _)| r.series == series && r.x == x)
        .map_or(0.0, |(_, m)| m.msgs_per_s)
}

fn json(scenario: Scenario, results: &[(Run, Measured)]) -> serde_json::Value {
    let lost: u64 = results.iter().map(|(_, m)| m.lost).sum();
    match scenario {
        Scenario::Spread => serde_json::json!({
            "spread_1": rate(results, "dynamic", 1.0),
            "spread_2": rate(results, "dynamic", 2.0),
            "spread_4": rate(results, "dynamic", 4.0),
            "lost": lost,
        }),
        Scenario::Heterogeneous => serde_json::json!({
            "static": rate(results, "static", 0.0),
            "random": rate(results, "random", 0.0),
            "dynamic": rate(results, "dynamic", 0.0),
            "lost": lost,
        }),
        Scenario::Skew => {
            let top = results.iter().map(|(r, _)| r.x).fold(0.0, f64::max);
            serde_json::json!({
                "static": rate(results, "static", top),
                "random": rate(results, "random", top),
                "dynamic": rate(results, "dynamic", top),
                "zipf": top,
                "uniform": {
                    "static": rate(results, "static", 0.0),
                    "random": rate(results, "random", 0.0),
                    "dynamic": rate(results, "dynamic", 0.0),
                },
                "lost": lost,
            })
        }
    }
}

fn report(args: &Args, results: &[(Run, Measured)]) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Load balancing: {:?}\n", args.scenario);
    let _ = writeln!(
        md,
        "Machine: {} cores, one disk; three nodes on 127.0.0.61–63 of this machine, one core \
         each, one copy per message. Every node's data directory is a simulated disk of {} MB/s \
         and {} IOPS (the engine's throttle){}. {} B messages from {} connections spread over \
         the nodes, {} users, {} s per run, a fresh cluster for each run.\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        args.disk_mbps,
        args.disk_iops,
        if args.scenario == Scenario::Skew {
            String::new()
        } else {
            format!(", except node 3's, {}× slower", args.slow_factor)
        },
        args.size,
        args.connections,
        args.users,
        args.seconds
    );
    let _ = writeln!(
        md,
        "| placement | spread | Zipf s | mix | msgs/s | vs static | SMTP p99 ms | POP p99 ms | mail on nodes 1/2/3 | lost |"
    );
    let _ = writeln!(md, "|---|---:|---:|---|---:|---:|---:|---:|---|---:|");
    for (run, m) in results {
        let baseline = if args.scenario == Scenario::Spread {
            rate(results, "dynamic", 1.0)
        } else {
            rate(results, "static", run.x)
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {:.0} | {:.2} | {:.1} | {} | {:.0} / {:.0} / {:.0} % | {} |",
            run.placement,
            if run.placement == "dynamic" {
                run.spread.to_string()
            } else {
                "–".into()
            },
            run.zipf,
            run.mix,
            m.msgs_per_s,
            m.msgs_per_s / baseline.max(f64::MIN_POSITIVE),
            m.smtp_p99_ms,
            if run.mix == "100:0" {
                "–".into()
            } else {
                format!("{:.1}", m.pop_p99_ms)
            },
            m.shares[0] * 100.0,
            m.shares[1] * 100.0,
            m.shares[2] * 100.0,
            m.lost
        );
    }
    if args.scenario == Scenario::Spread {
        let _ = writeln!(md, "\n(\"vs static\" is against spread 1 here.)");
    }
    let _ = writeln!(
        md,
        "\nstatic: each user's mail on a fixed node (hash of the user). random: any node, per \
         message. dynamic: the least loaded of the user's fragment nodes, topped up at random to \
         the spread (a node's load: operations under way on its disk)."
    );
    md
}

fn plot(args: &Args, results: &[(Run, Measured)], path: &Path) -> Result<()> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (1000, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(500);
    let x_desc = if args.scenario == Scenario::Spread {
        "spread"
    } else {
        "Zipf s"
    };
    let max_x = results.iter().map(|(r, _)| r.x).fold(1.0, f64::max);
    let series = ["static", "random", "dynamic"];
    let colors = [BLUE, BLACK, RED];
    for (area, title, value) in [
        (
            &left,
            "delivered msg/s",
            (|m: &Measured| m.msgs_per_s) as fn(&Measured) -> f64,
        ),
        (&right, "SMTP p99 latency (ms)", |m: &Measured| {
            m.smtp_p99_ms
        }),
    ] {
        let max_y = results.iter().map(|(_, m)| value(m)).fold(1.0, f64::max) * 1.15;
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(-0.2..max_x + 0.3, 0.0..max_y)?;
        chart.configure_mesh().x_desc(x_desc).draw()?;
        for (name, color) in series.iter().zip(colors) {
            let points: Vec<(f64, f64)> = results
                .iter()
                .filter(|(r, _)| r.series == *name)
                .map(|(r, m)| (r.x, value(m)))
                .collect();
            if points.is_empty() {
                continue;
            }
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
                .label(*name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], color));
            chart.draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, 4, color.filled())),
            )?;
        }
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE)
            .draw()?;
    }
    root.present()?;
    Ok(())
}
