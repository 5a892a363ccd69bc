//! Reconfiguration and node scaling, on one machine, in one run:
//!
//! 1. Three nodes on 127.0.0.31–33 form a cluster; `--users` users are created through one
//!    node and mail is delivered so that their fragments spread over all three.
//! 2. One node is killed with SIGKILL. `detect_s`: until a survivor's status shows the smaller
//!    membership (detection + the three rounds). `all_served_s`: until a delivery has
//!    succeeded, after the kill, for a user of every one of the 1024 buckets (every bucket's
//!    manager rebuilt its mail map and serves again) — that is, every user can take mail.
//! 3. `porcupine-load` (the paper's 90:10 mix) against one node, then against three nodes
//!    with connections spread over them: `one_node_msgs_per_s`, `three_nodes_msgs_per_s`.
//!
//! Writes `bench/results/<name>.md`; with `--json` the last stdout line is
//! `{"detect_s", "all_served_s", "one_node_msgs_per_s", "three_nodes_msgs_per_s", "lost"}`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use porcupine_bench::cluster::{Bins, Layout, Workload};
use porcupine_bench::Servers;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const DOMAIN: &str = "reconfig.test";
const PASSWORD: &str = "pw";
const SMTP: u16 = 3525;
const POP3: u16 = 3110;
const ADMIN: u16 = 3025;
const CLUSTER: u16 = 3946;
const BUCKETS: usize = 1024;

#[derive(Parser, Debug)]
struct Args {
    /// Users in the cluster.
    #[arg(long, default_value_t = 100_000)]
    users: usize,
    /// Messages delivered before the kill (spread over the users).
    #[arg(long, default_value_t = 50_000)]
    messages: u64,
    /// Seconds of load per throughput run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Connections per throughput run.
    #[arg(long, default_value_t = 48)]
    connections: usize,
    #[arg(long, default_value = "reconfig")]
    name: String,
    #[arg(long)]
    json: bool,
}

const LAYOUT: Layout = Layout {
    net: "127.0.0",
    base: 30,
    smtp: SMTP,
    pop3: POP3,
    admin: ADMIN,
    cluster: CLUSTER,
    domain: DOMAIN,
};

fn ip(n: usize) -> String {
    LAYOUT.ip(n)
}

fn start_node(bins: &Bins, servers: &mut Servers, base: &Path, n: usize, join: bool) -> Result<()> {
    LAYOUT.start_node(bins, servers, base, n, join, &[])
}

fn wait_members(nodes: &[usize], count: usize, limit: Duration) -> Result<Duration> {
    LAYOUT.wait_members(nodes, count, limit)
}

/// One blocking SMTP delivery (a fresh connection); true on 250.
fn deliver_once(host: &str, user: &str) -> bool {
    let attempt = || -> std::io::Result<bool> {
        let stream = TcpStream::connect((host, SMTP))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut writer = stream;
        let mut line = String::new();
        let mut expect = |reader: &mut BufReader<TcpStream>, code: &str| -> std::io::Result<bool> {
            loop {
                line.clear();
                if reader.read_line(&mut line)? == 0 {
                    return Ok(false);
                }
                if line.as_bytes().get(3) != Some(&b'-') {
                    return Ok(line.starts_with(code));
                }
            }
        };
        if !expect(&mut reader, "220")? {
            return Ok(false);
        }
        writer.write_all(b"HELO probe\r\n")?;
        if !expect(&mut reader, "250")? {
            return Ok(false);
        }
        write!(
            writer,
            "MAIL FROM:<probe@example.org>\r\nRCPT TO:<{user}>\r\nDATA\r\n"
        )?;
        if !(expect(&mut reader, "250")?
            && expect(&mut reader, "250")?
            && expect(&mut reader, "354")?)
        {
            return Ok(false);
        }
        writer.write_all(b"Subject: probe\r\n\r\nreconfiguration probe\r\n.\r\nQUIT\r\n")?;
        expect(&mut reader, "250")
    };
    attempt().unwrap_or(false)
}

/// A user name in each bucket.
fn one_user_per_bucket(users: usize) -> Vec<String> {
    let mut by_bucket: BTreeMap<usize, String> = BTreeMap::new();
    for n in 1..=users {
        let user = format!("user{n}@{DOMAIN}");
        by_bucket
            .entry(porcupine_cluster::usermap::bucket_of(&user, BUCKETS))
            .or_insert(user);
        if by_bucket.len() == BUCKETS {
            break;
        }
    }
    by_bucket.into_values().collect()
}

/// The 90:10 mix against nodes `1..=nodes`, after warm-up logins.
fn load(bins: &Bins, nodes: usize, args: &Args, users: usize) -> Result<serde_json::Value> {
    let workload = Workload {
        mix: "90:10".into(),
        size: 4700,
        connections: args.connections,
        seconds: args.seconds,
        extra: vec!["--warm-logins".into()],
    };
    LAYOUT.load(bins, nodes, users, PASSWORD, &workload)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace root")?
        .to_path_buf();
    let bins = Bins::build(&root)?;
    let work = tempfile::Builder::new()
        .prefix("porcupine-reconfig")
        .tempdir_in("/var/tmp")?;
    let base = work.path();

    // Throughput of one node.
    let mut servers = Servers::default();
    start_node(&bins, &mut servers, &base.join("single"), 1, false)?;
    add_users(&bins, 1, 1000)?;
    let one = load(&bins, 1, &args, 1000)?;
    drop(servers);
    eprintln!(
        "one node: {:.0} msg/s",
        one["msgs_per_s"].as_f64().unwrap_or(0.0)
    );

    // Three nodes.
    let mut servers = Servers::default();
    for n in 1..=3 {
        start_node(&bins, &mut servers, &base.join("cluster"), n, true)?;
    }
    wait_members(&[1, 2, 3], 3, Duration::from_secs(30))?;
    let started = Instant::now();
    add_users(&bins, 1, args.users)?;
    eprintln!(
        "{} users in {:.1} s",
        args.users,
        started.elapsed().as_secs_f64()
    );
    let three = load(&bins, 3, &args, 1000)?;
    eprintln!(
        "three nodes: {:.0} msg/s",
        three["msgs_per_s"].as_f64().unwrap_or(0.0)
    );
    let lost = one["lost"].as_u64().unwrap_or(0)
        + one["corrupt"].as_u64().unwrap_or(0)
        + three["lost"].as_u64().unwrap_or(0)
        + three["corrupt"].as_u64().unwrap_or(0);

    // Fragments for many users, then the kill.
    let spread = Command::new(&bins.load)
        .args([
            "--smtp",
            &format!("{}:{SMTP},{}:{SMTP},{}:{SMTP}", ip(1), ip(2), ip(3)),
        ])
        .args(["--users", &args.users.to_string(), "--zipf", "0"])
        .args([
            "--user-format",
            &format!("user{{n}}@{DOMAIN}"),
            "--mix",
            "100:0",
        ])
        .args(["--size", "2000", "--connections", "48", "--no-sweep"])
        .args(["--messages", &args.messages.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    if !spread.success() {
        bail!("delivering the initial mail failed");
    }
    let probes = one_user_per_bucket(args.users);
    let victim = servers
        .children
        .iter_mut()
        .find(|(name, _)| name == "node3")
        .context("node 3")?;
    let killed_at = Instant::now();
    victim.1.kill()?;
    let _ = victim.1.wait();

    // Probe every bucket from the survivors while the cluster reconfigures.
    let threads = 32;
    let mut handles = Vec::new();
    for t in 0..threads {
        let mine: Vec<String> = probes.iter().skip(t).step_by(threads).cloned().collect();
        handles.push(std::thread::spawn(move || {
            let host = ip(1 + t % 2);
            let mut last = Duration::ZERO;
            for user in mine {
                let deadline = Instant::now() + Duration::from_secs(60);
                while !deliver_once(&host, &user) {
                    if Instant::now() > deadline {
                        return None;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                last = last.max(killed_at.elapsed());
            }
            Some(last)
        }));
    }
    wait_members(&[1, 2], 2, Duration::from_secs(30))?;
    let detect_s = killed_at.elapsed().as_secs_f64();
    let mut all_served = Duration::ZERO;
    for handle in handles {
        match handle.join() {
            Ok(Some(last)) => all_served = all_served.max(last),
            _ => bail!("some bucket took no mail within 60 s after the kill"),
        }
    }
    drop(servers);

    let report = serde_json::json!({
        "detect_s": detect_s,
        "all_served_s": all_served.as_secs_f64(),
        "one_node_msgs_per_s": one["msgs_per_s"],
        "three_nodes_msgs_per_s": three["msgs_per_s"],
        "lost": lost,
    });
    let mut md = String::new();
    let _ = writeln!(md, "# Reconfiguration and node scaling\n");
    let _ = writeln!(
        md,
        "Machine: {} cores. Three nodes on 127.0.0.31–33, {} users, {} messages delivered before \
         one node is killed with SIGKILL; {} probes (one user per bucket) delivered through the \
         survivors from the moment of the kill.\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        args.users,
        args.messages,
        probes.len()
    );
    let _ = writeln!(md, "| measure | value |\n|---|---:|");
    let _ = writeln!(
        md,
        "| death → new membership seen (detect_s) | {detect_s:.3} s |"
    );
    let _ = writeln!(
        md,
        "| death → every bucket takes mail (all_served_s) | {:.3} s |",
        all_served.as_secs_f64()
    );
    let _ = writeln!(
        md,
        "| 1 node, 90:10, {} connections | {:.0} msg/s |",
        args.connections,
        one["msgs_per_s"].as_f64().unwrap_or(0.0)
    );
    let _ = writeln!(
        md,
        "| 3 nodes (same 2-core machine), 90:10, {} connections spread | {:.0} msg/s |",
        args.connections,
        three["msgs_per_s"].as_f64().unwrap_or(0.0)
    );
    let _ = writeln!(md, "| lost or corrupt messages in the load runs | {lost} |");
    let results = root.join("bench/results");
    std::fs::create_dir_all(&results)?;
    std::fs::write(results.join(format!("{}.md", args.name)), &md)?;
    print!("{md}");
    if args.json {
        println!("{report}");
    }
    Ok(())
}

fn add_users(bins: &Bins, node: usize, count: usize) -> Result<()> {
    LAYOUT.add_users(bins, node, count, PASSWORD)
}
