//! The paper's scale, by simulation: how a porcupine cluster would scale from 1 to 1,000 nodes,
//! from the real cluster machines and costs measured on this machine in the same run.
//!
//! - **Membership** ([`porcupine_cluster::membership`], the real machine on every node): N nodes
//!   boot on a simulated network (0.2 ms latency, each node's link 1 Gb/s, messages sized by
//!   their real encoding), then one node fails and returns. Per change: messages, bytes, time
//!   until every node installed the new view, and the machines' own CPU time (measured).
//! - **The mail map** ([`porcupine_cluster::manager`], the real bucket manager): the CPU to
//!   rebuild it after a change from the reports of 160,000 users per node, two fragments each.
//! - **The load exchange** ([`porcupine_cluster::loads`]): each node sends its whole table to
//!   its ring successor every 100 ms — N entries.
//! - **Placement** ([`porcupine_cluster::placement`], the real `candidates` and `choose`):
//!   a closed loop of 4 clients per node delivering to uniformly chosen users (the paper's
//!   workload), each copy a unit of one node's disk; the throughput each policy reaches
//!   against a perfectly balanced cluster.
//! - **A node's capacity**: real `porcupine` processes on this machine take SMTP deliveries
//!   from `porcupine-load` — one node with one copy, then three nodes with one and with two
//!   copies (the ratio is what a second copy costs).
//!
//! The cluster's throughput at N nodes is then N × capacity × placement balance × (1 − the
//! share of a node's CPU that the cluster's own work takes), with each node failing and
//! returning `--changes-per-node-day` times a day. Writes `bench/results/<name>.md` and
//! `<name>-throughput.svg`, `<name>-membership.svg`, `<name>-failure.svg`; with `--json` the
//! last stdout line holds the figures.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use porcupine_bench::cluster::{workspace_root, Bins, Layout, Workload};
use porcupine_bench::Servers;
use porcupine_cluster::loads::LoadEntry;
use porcupine_cluster::manager::{Manager, ManagerCall};
use porcupine_cluster::membership::{Action, Member, Membership, Msg, NodeId, Settings, View};
use porcupine_cluster::placement::{self, CandidateLoad, Choice, PlacementPolicy};
use porcupine_cluster::rpc::{OneWay, ReportFragments};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USERS_PER_NODE: usize = 160_000;
const LINK_BYTES_PER_US: u64 = 125; // 1 Gb/s
const LATENCY_US: u64 = 200;
const TICK_US: u64 = 5_000;
const LOAD_EXCHANGES_PER_S: f64 = 10.0;
const PASSWORD: &str = "pw";
const LAYOUT: Layout = Layout {
    net: "127.0.0",
    base: 110,
    smtp: 3725,
    pop3: 3310,
    admin: 3225,
    cluster: 4146,
    domain: "scale.test",
};

#[derive(Parser, Debug)]
struct Args {
    /// Cluster sizes to simulate.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1,2,4,8,16,32,64,128,256,512,1000"
    )]
    nodes: Vec<usize>,
    /// Seconds of load per capacity measurement (real nodes).
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Failures (each followed by a return) of each node per day.
    #[arg(long, default_value_t = 1.0)]
    changes_per_node_day: f64,
    #[arg(long, default_value = "scale")]
    name: String,
    #[arg(long)]
    json: bool,
    /// Take `porcupine` and `porcupine-load` from this directory instead of building them.
    #[arg(long)]
    bins: Option<std::path::PathBuf>,
}

/// What one membership change cost.
#[derive(Clone, Copy, Debug, Default)]
struct Change {
    messages: u64,
    bytes: u64,
    /// Simulated time until every live node installed the new view.
    took_ms: f64,
    /// The membership machines' CPU time on this machine, all nodes together.
    cpu_s: f64,
}

struct NetSim {
    nodes: Vec<Option<Membership>>,
    members: Vec<Member>,
    by_addr: HashMap<String, usize>,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    events: HashMap<u64, (usize, Option<Msg>)>,
    seq: u64,
    link_free: Vec<u64>,
    now: u64,
    change: Change,
}

impl NetSim {
    fn new(n: usize) -> Self {
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                id: 100 + i as NodeId,
                addr: format!("10.{}.{}.{}:7946", i / 65536, (i / 256) % 256, i % 256),
            })
            .collect();
        let by_addr = members
            .iter()
            .enumerate()
            .map(|(i, m)| (m.addr.clone(), i))
            .collect();
        let mut sim = Self {
            nodes: (0..n).map(|_| None).collect(),
            members,
            by_addr,
            queue: BinaryHeap::new(),
            events: HashMap::new(),
            seq: 0,
            link_free: vec![0; n],
            now: 0,
            change: Change::default(),
        };
        for i in 0..n {
            sim.boot(i);
        }
        sim
    }

    fn settings() -> Settings {
        Settings::default()
    }

    fn boot(&mut self, i: usize) {
        let seeds: Vec<String> = self
            .members
            .iter()
            .take(2)
            .map(|m| m.addr.clone())
            .collect();
        let started = Instant::now();
        self.nodes[i] = Some(Membership::new(
            self.members[i].clone(),
            &seeds,
            Self::settings(),
            self.now / 1000,
        ));
        self.change.cpu_s += started.elapsed().as_secs_f64();
        self.schedule(self.now + (i as u64 % 50) * 100, i, None);
    }

    fn schedule(&mut self, at: u64, node: usize, msg: Option<Msg>) {
        self.seq += 1;
        self.events.insert(self.seq, (node, msg));
        self.queue.push(Reverse((at, self.seq)));
    }

    fn apply(&mut self, from: usize, actions: Vec<Action>) {
        for action in actions {
            if let Action::Send { to, msg } = action {
                let Some(&to) = self.by_addr.get(&to) else {
                    continue;
                };
                let bytes = postcard::to_allocvec(&OneWay::Membership(msg.clone()))
                    .map_or(64, |b| b.len() as u64 + 32);
                let start = self.link_free[from].max(self.now);
                let sent = start + bytes.div_ceil(LINK_BYTES_PER_US);
                self.link_free[from] = sent;
                self.change.messages += 1;
                self.change.bytes += bytes;
                self.schedule(sent + LATENCY_US, to, Some(msg));
            }
        }
    }

    /// Whether every live node has installed the same settled view of the live nodes.
    fn converged(&self) -> bool {
        let live: Vec<&Membership> = self.nodes.iter().flatten().collect();
        let Some(first) = live.first() else {
            return true;
        };
        let epoch = first.view().epoch;
        live.iter()
            .all(|m| m.settled() && m.view().epoch == epoch && m.view().members.len() == live.len())
    }

    /// Runs until converged (checked every tick) or `limit_ms` of simulated time.
    fn run_until_converged(&mut self, limit_ms: u64) -> Option<f64> {
        let started = self.now;
        let end = self.now + limit_ms * 1000;
        let mut next_check = self.now + TICK_US;
        while let Some(Reverse((at, key))) = self.queue.pop() {
            if at > end {
                self.queue.push(Reverse((at, key)));
                return None;
            }
            self.now = at;
            let Some((node, msg)) = self.events.remove(&key) else {
                continue;
            };
            let mut out = Vec::new();
            let cpu = Instant::now();
            let ticking = msg.is_none();
            if let Some(m) = self.nodes[node].as_mut() {
                match msg {
                    Some(msg) => m.receive(at / 1000, msg, &mut out),
                    None => m.tick(at / 1000, &mut out),
                }
            } else {
                continue;
            }
            self.change.cpu_s += cpu.elapsed().as_secs_f64();
            self.apply(node, out);
            if ticking {
                self.schedule(at + TICK_US, node, None);
            }
            if at >= next_check {
                next_check = at + TICK_US;
                if self.converged() {
                    return Some((self.now - started) as f64 / 1000.0);
                }
            }
        }
        None
    }

    fn measure<F: FnOnce(&mut Self)>(&mut self, limit_ms: u64, fault: F) -> Option<Change> {
        self.change = Change::default();
        fault(self);
        let took = self.run_until_converged(limit_ms)?;
        Some(Change {
            took_ms: took,
            ..self.change
        })
    }
}

/// Boot, a failure and a return for `n` nodes; `None` where the simulation did not converge.
fn membership(n: usize) -> (Option<Change>, Option<Change>, Option<Change>) {
    let mut sim = NetSim::new(n);
    let limit = 60_000;
    let boot = sim.measure(limit, |_| {});
    if boot.is_none() || n < 2 {
        return (boot, None, None);
    }
    // Quiet for a second, then node n-1 fails (it is nobody's seed).
    sim.run_until_converged(1);
    let victim = n - 1;
    let fail = sim.measure(limit, |s| s.nodes[victim] = None);
    let back = sim.measure(limit, |s| s.boot(victim));
    (boot, fail, back)
}

/// Seconds of one core to rebuild a manager's share of the mail map after a change:
/// `users` reported, each by two fragment nodes.
fn rebuild_s(users: usize) -> f64 {
    let view: View = View {
        epoch: porcupine_cluster::membership::Epoch {
            clock: 1,
            coordinator: 1,
        },
        members: vec![
            Member {
                id: 1,
                addr: "10.0.0.1:7946".into(),
            },
            Member {
                id: 2,
                addr: "10.0.0.2:7946".into(),
            },
        ],
        map: porcupine_cluster::usermap::UserMap::single(
            1,
            1024,
            porcupine_cluster::membership::Epoch {
                clock: 1,
                coordinator: 1,
            },
        ),
    };
    let names: Vec<String> = (0..users).map(|u| format!("user{u}@scale.test")).collect();
    let mut manager = Manager::new(1, PlacementPolicy::default(), 7);
    manager.install(&view);
    let started = Instant::now();
    for node in [1, 2] {
        let report = ReportFragments {
            epoch: view.epoch,
            node,
            users: names.clone(),
            locks: Vec::new(),
        };
        let _ = report.serve(&mut manager);
    }
    started.elapsed().as_secs_f64()
}

/// Seconds of one core for one anti-entropy round's digest over `items` copies (each side
/// builds one, from its index), and the digest's bytes on the wire.
fn anti_entropy_round_s(items: usize) -> (f64, usize) {
    use porcupine_cluster::anti_entropy::{differing, Digest, BUCKETS};
    let users: Vec<String> = (0..items / 2)
        .map(|u| format!("user{u}@scale.test"))
        .collect();
    let started = Instant::now();
    let mut digest = Digest::default();
    for (k, user) in users.iter().enumerate() {
        let key = porcupine_engine::record::user_key(user);
        for copy in 0..2u128 {
            digest.add(key, (k as u128) << 8 | copy, k as u64, false);
        }
    }
    let other = Digest::default();
    let _ = differing(&digest, &other, 0, BUCKETS);
    let took = started.elapsed().as_secs_f64();
    let bytes = postcard::to_allocvec(&digest).map_or(0, |b| b.len());
    (took, bytes)
}

/// Seconds of CPU to encode and decode one load exchange of `n` entries.
fn load_exchange_s(n: usize) -> (f64, usize) {
    let entries: Vec<LoadEntry> = (0..n)
        .map(|i| LoadEntry {
            node: i as NodeId,
            load: 7,
            full: false,
            age_ms: 3,
        })
        .collect();
    let message = OneWay::Loads { entries };
    let rounds = 200;
    let started = Instant::now();
    let mut bytes = 0;
    for _ in 0..rounds {
        let encoded = postcard::to_allocvec(&message).unwrap_or_default();
        bytes = encoded.len();
        let _ = postcard::from_bytes::<OneWay>(&encoded);
    }
    (started.elapsed().as_secs_f64() / f64::from(rounds), bytes)
}

/// Throughput of a closed loop against a perfectly balanced cluster (1.0), for `n` nodes and
/// `replicas` copies under `policy`, with the real placement functions.
fn balance(n: usize, replicas: usize, policy: PlacementPolicy, seed: u64) -> f64 {
    let mut rng = StdRng::seed_from_u64(seed);
    let live: Vec<NodeId> = (1..=n as NodeId).collect();
    let users = 100 * n;
    let clients = 4 * n;
    let replicas = replicas.min(n);
    let mut holders: Vec<Vec<NodeId>> = vec![Vec::new(); users];
    // Per node: copies queued (its load), served one per step.
    let mut queue: Vec<std::collections::VecDeque<usize>> = vec![Default::default(); n];
    // Per client: copies of its message still to be written.
    let mut left: Vec<usize> = vec![0; clients];
    let mut done = 0u64;
    let steps = if n >= 256 { 60 } else { 200 };
    let warmup = steps / 4;
    let mut issue = |client: usize,
                     rng: &mut StdRng,
                     queue: &mut Vec<std::collections::VecDeque<usize>>,
                     left: &mut Vec<usize>| {
        let user = rng.gen_range(0..users);
        let key = (user as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let candidates =
            placement::candidates(policy, key, &live, &holders[user], replicas, &[], rng);
        let load_of = |node: NodeId| CandidateLoad {
            load: queue[(node - 1) as usize].len() as u32,
            full: false,
        };
        let nodes =
            match placement::choose(policy, &candidates, replicas, load_of, u32::MAX, false, rng) {
                Choice::Nodes(nodes) => nodes,
                Choice::Avoid(_) => candidates.iter().copied().take(replicas).collect(),
            };
        for node in &nodes {
            if !holders[user].contains(node) {
                holders[user].push(*node);
            }
            queue[(node - 1) as usize].push_back(client);
        }
        left[client] = nodes.len();
    };
    for client in 0..clients {
        issue(client, &mut rng, &mut queue, &mut left);
    }
    for step in 0..steps {
        let mut finished = Vec::new();
        for q in queue.iter_mut() {
            if let Some(client) = q.pop_front() {
                left[client] -= 1;
                if left[client] == 0 {
                    finished.push(client);
                }
            }
        }
        for client in finished {
            if step >= warmup {
                done += 1;
            }
            issue(client, &mut rng, &mut queue, &mut left);
        }
    }
    let ideal = (n as f64 / replicas as f64) * (steps - warmup) as f64;
    done as f64 / ideal
}

/// Delivered msgs/s of `nodes` real nodes with `replicas` copies (SMTP only, 4.7 KB).
fn capacity(bins: &Bins, work: &Path, args: &Args, nodes: usize, replicas: usize) -> Result<f64> {
    let base = work.join(format!("n{nodes}-r{replicas}"));
    let mut servers = Servers::default();
    let replicas_arg = replicas.to_string();
    for n in 1..=nodes {
        LAYOUT.start_node(
            bins,
            &mut servers,
            &base,
            n,
            nodes > 1,
            &["--replicas", &replicas_arg],
        )?;
    }
    LAYOUT.wait_members(
        &(1..=nodes).collect::<Vec<_>>(),
        nodes,
        Duration::from_secs(60),
    )?;
    LAYOUT.add_users(bins, 1, 1000, PASSWORD)?;
    let workload = Workload {
        mix: "100:0".into(),
        size: 4700,
        connections: 24 * nodes,
        seconds: args.seconds,
        extra: vec!["--no-sweep".into()],
    };
    let report = LAYOUT.load(bins, nodes, 1000, PASSWORD, &workload)?;
    servers.stop_all();
    report["msgs_per_s"]
        .as_f64()
        .context("the load report has no delivery rate")
}

struct Row {
    nodes: usize,
    fail: Option<Change>,
    back: Option<Change>,
    /// Per policy (static, random, dynamic, dynamic with spread 4) and replicas (1, 2): msgs/s
    /// of the cluster.
    throughput: [[f64; 2]; 4],
    overhead: f64,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let root = workspace_root()?;
    let bins = match &args.bins {
        Some(dir) => Bins::at(dir)?,
        None => Bins::build(&root)?,
    };
    let work = tempfile::Builder::new()
        .prefix("porcupine-scale")
        .tempdir_in("/var/tmp")?;
    let one = capacity(&bins, work.path(), &args, 1, 1)?;
    let three_r1 = capacity(&bins, work.path(), &args, 3, 1)?;
    let three_r2 = capacity(&bins, work.path(), &args, 3, 2)?;
    let second_copy = three_r2 / three_r1.max(1.0);
    eprintln!(
        "capacity: one node {one:.0} msg/s; three nodes {three_r1:.0} (1 copy), {three_r2:.0} (2 copies): a second copy leaves {second_copy:.2}"
    );
    let rebuild = rebuild_s(USERS_PER_NODE);
    eprintln!(
        "mail-map rebuild, 160,000 users × 2 fragments: {:.3} s of one core",
        rebuild
    );
    let (digest_s, digest_bytes) = anti_entropy_round_s(2 * USERS_PER_NODE);
    eprintln!(
        "anti-entropy digest over 320,000 copies: {:.1} ms of one core, {digest_bytes} B on the wire",
        digest_s * 1000.0
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let policies = [
        ("static", PlacementPolicy::Static),
        ("random", PlacementPolicy::Random),
        ("dynamic", PlacementPolicy::Dynamic { spread: 2 }),
        ("dynamic, spread 4", PlacementPolicy::Dynamic { spread: 4 }),
    ];
    let mut rows = Vec::new();
    for &n in &args.nodes {
        let started = Instant::now();
        let (boot, fail, back) = membership(n);
        let (exchange_s, exchange_bytes) = load_exchange_s(n);
        // Per node and second: its share of membership changes and their rebuilds, and the
        // load exchange (one sent, one received).
        let changes_per_s = 2.0 * args.changes_per_node_day * n as f64 / 86_400.0;
        let change_cpu = fail.map_or(0.0, |c| c.cpu_s) / n as f64 + rebuild;
        let overhead =
            ((changes_per_s * change_cpu + LOAD_EXCHANGES_PER_S * exchange_s) / cores).min(1.0);
        let mut throughput = [[0.0; 2]; 4];
        for (p, (_, policy)) in policies.iter().enumerate() {
            for (r, replicas) in [1usize, 2].into_iter().enumerate() {
                let b = balance(n, replicas, *policy, n as u64 * 31 + r as u64);
                let per_node = if replicas == 1 {
                    one
                } else {
                    one * second_copy
                };
                let per_node = if n == 1 { one } else { per_node };
                throughput[p][r] = n as f64 * per_node * b * (1.0 - overhead);
            }
        }
        eprintln!(
            "{n} nodes: boot {:?} ms, failure {:?}, return {:?}; load exchange {exchange_bytes} B; overhead {:.4}; dynamic r2 {:.0} msg/s ({:.1} s)",
            boot.map(|b| b.took_ms),
            fail.map(|c| (c.messages, c.bytes, c.took_ms)),
            back.map(|c| (c.messages, c.bytes, c.took_ms)),
            overhead,
            throughput[2][1],
            started.elapsed().as_secs_f64()
        );
        rows.push(Row {
            nodes: n,
            fail,
            back,
            throughput,
            overhead,
        });
    }
    let results = root.join("bench/results");
    std::fs::create_dir_all(&results)?;
    let mut md = markdown(&args, &rows, one, three_r1, three_r2, rebuild);
    let _ = writeln!(
        md,
        "\nAnti-entropy: one round's digest over 320,000 copies (160,000 users, two messages each) \
         takes {:.1} ms of one core on each side and {digest_bytes} B on the wire; at the default \
         round a minute that is {:.1} s of one core per hour per node, plus the items of the \
         buckets that differ (none in a healthy cluster).",
        digest_s * 1000.0,
        digest_s * 2.0 * 60.0
    );
    std::fs::write(results.join(format!("{}.md", args.name)), &md)?;
    plot_throughput(
        &rows,
        &results.join(format!("{}-throughput.svg", args.name)),
    )?;
    plot_membership(
        &rows,
        &results.join(format!("{}-membership.svg", args.name)),
    )?;
    plot_failure(
        &rows,
        one,
        second_copy,
        rebuild,
        &results.join(format!("{}-failure.svg", args.name)),
    )?;
    println!("{md}");
    if args.json {
        let json = serde_json::json!({
            "one_node_msgs_per_s": one,
            "second_copy": second_copy,
            "rebuild_s": rebuild,
            "anti_entropy_digest_s": digest_s,
            "nodes": rows.iter().map(|r| serde_json::json!({
                "nodes": r.nodes,
                "dynamic_r2_msgs_per_s": r.throughput[2][1],
                "overhead": r.overhead,
                "failure_messages": r.fail.map(|c| c.messages),
                "failure_bytes": r.fail.map(|c| c.bytes),
                "failure_ms": r.fail.map(|c| c.took_ms),
            })).collect::<Vec<_>>(),
        });
        println!("{json}");
    }
    Ok(())
}

fn markdown(
    args: &Args,
    rows: &[Row],
    one: f64,
    three_r1: f64,
    three_r2: f64,
    rebuild: f64,
) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# The paper's scale, by simulation\n");
    let _ = writeln!(
        md,
        "Machine: {} cores. Measured in this run: one real node takes {one:.0} msg/s (SMTP, \
         4.7 KB, one copy); three nodes on this machine {three_r1:.0} with one copy and \
         {three_r2:.0} with two (a second copy leaves {:.2} of the throughput); the real bucket \
         manager rebuilds its mail map from 160,000 users × 2 fragments in {rebuild:.3} s of one \
         core. Simulated: the real membership machine on every node (0.2 ms latency, 1 Gb/s \
         links, real message sizes), the real placement functions under a closed loop of 4 \
         clients per node to uniformly chosen users; each node fails and returns {} times a \
         day. Throughput = nodes × capacity × placement balance × (1 − the cluster's own CPU \
         share).\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        three_r2 / three_r1.max(1.0),
        args.changes_per_node_day
    );
    let _ = writeln!(
        md,
        "| nodes | static r1 | random r1 | dynamic r1 | static r2 | random r2 | dynamic r2 | dynamic r2 per node | failure: messages | bytes | ms | return: messages | bytes | ms | cluster CPU share |"
    );
    let _ = writeln!(
        md,
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let cell = |c: Option<Change>, f: fn(&Change) -> String| c.as_ref().map_or("–".into(), f);
    for r in rows {
        let _ = writeln!(
            md,
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {} | {} | {} | {} | {} | {:.2} % |",
            r.nodes,
            r.throughput[0][0],
            r.throughput[1][0],
            r.throughput[2][0],
            r.throughput[0][1],
            r.throughput[1][1],
            r.throughput[2][1],
            r.throughput[3][1],
            r.throughput[2][1] / r.nodes as f64,
            cell(r.fail, |c| c.messages.to_string()),
            cell(r.fail, |c| format!("{:.1} MB", c.bytes as f64 / 1e6)),
            cell(r.fail, |c| format!("{:.0}", c.took_ms)),
            cell(r.back, |c| c.messages.to_string()),
            cell(r.back, |c| format!("{:.1} MB", c.bytes as f64 / 1e6)),
            cell(r.back, |c| format!("{:.0}", c.took_ms)),
            r.overhead * 100.0
        );
    }
    md
}

fn plot_throughput(rows: &[Row], path: &Path) -> Result<()> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let max_n = rows.iter().map(|r| r.nodes).max().unwrap_or(1) as f64;
    let max_y = rows
        .iter()
        .flat_map(|r| r.throughput.iter().flatten().copied())
        .fold(1.0, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption("cluster msg/s against nodes (log–log)", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(70)
        .build_cartesian_2d((1.0..max_n * 1.1).log_scale(), (10.0..max_y).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("nodes")
        .y_desc("msg/s")
        .draw()?;
    let names = ["static", "random", "dynamic", "dynamic spread 4"];
    let colors = [BLUE, BLACK, RED, GREEN];
    for (p, (name, color)) in names.iter().zip(colors).enumerate() {
        for (r, label) in ["1 copy", "2 copies"].iter().enumerate() {
            let points: Vec<(f64, f64)> = rows
                .iter()
                .map(|row| (row.nodes as f64, row.throughput[p][r].max(10.0)))
                .collect();
            let style = if r == 0 {
                color.stroke_width(2)
            } else {
                color.mix(0.5).stroke_width(2)
            };
            chart
                .draw_series(LineSeries::new(points, style))?
                .label(format!("{name}, {label}"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], style));
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .border_style(BLACK)
        .background_style(WHITE)
        .draw()?;
    root.present()?;
    Ok(())
}

fn plot_membership(rows: &[Row], path: &Path) -> Result<()> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (1000, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(500);
    let max_n = rows.iter().map(|r| r.nodes).max().unwrap_or(2) as f64;
    type Pick = fn(&Change) -> f64;
    for (area, title, pick) in [
        (
            &left,
            "messages and MB per failure",
            (|c: &Change| c.messages as f64) as Pick,
        ),
        (
            &right,
            "ms from failure to every node's new view",
            |c: &Change| c.took_ms,
        ),
    ] {
        let max_y = rows
            .iter()
            .filter_map(|r| r.fail.map(|c| pick(&c).max(c.bytes as f64 / 1e6)))
            .fold(1.0, f64::max)
            * 1.5;
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d((2.0..max_n * 1.1).log_scale(), (0.1..max_y).log_scale())?;
        chart.configure_mesh().x_desc("nodes").draw()?;
        let points: Vec<(f64, f64)> = rows
            .iter()
            .filter_map(|r| r.fail.map(|c| (r.nodes as f64, pick(&c).max(0.1))))
            .collect();
        chart
            .draw_series(LineSeries::new(points, RED.stroke_width(2)))?
            .label("failure")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], RED));
        let back: Vec<(f64, f64)> = rows
            .iter()
            .filter_map(|r| r.back.map(|c| (r.nodes as f64, pick(&c).max(0.1))))
            .collect();
        chart
            .draw_series(LineSeries::new(back, BLUE.stroke_width(2)))?
            .label("return")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], BLUE));
        if std::ptr::eq(area, &left) {
            let mb: Vec<(f64, f64)> = rows
                .iter()
                .filter_map(|r| {
                    r.fail
                        .map(|c| (r.nodes as f64, (c.bytes as f64 / 1e6).max(0.1)))
                })
                .collect();
            chart
                .draw_series(LineSeries::new(mb, BLACK.stroke_width(1)))?
                .label("MB (failure)")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], BLACK));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .border_style(BLACK)
            .background_style(WHITE)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

/// Throughput over time for the row nearest 30 nodes (the paper's cluster): one node fails at
/// 10 s and returns at 40 s. Its share is lost from the failure until the new view; then each
/// node rebuilds its part of the mail map, and as the nodes are CPU-bound that time (the
/// measured rebuild over the cores) is taken from deliveries; then the others carry on.
fn plot_failure(rows: &[Row], one: f64, second_copy: f64, rebuild: f64, path: &Path) -> Result<()> {
    use plotters::prelude::*;
    let Some(row) = rows
        .iter()
        .filter(|r| r.fail.is_some())
        .min_by_key(|r| r.nodes.abs_diff(30))
    else {
        return Ok(());
    };
    let n = row.nodes as f64;
    let per_node = one * second_copy * (row.throughput[2][1] / (n * one * second_copy)).max(0.0);
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get()) as f64;
    let detect = row.fail.map_or(0.0, |c| c.took_ms) / 1000.0;
    let rejoin = row.back.map_or(0.0, |c| c.took_ms) / 1000.0;
    let rebuild_wall = rebuild / cores;
    let rate = |t: f64| -> f64 {
        if t < 10.0 {
            n * per_node
        } else if t < 10.0 + detect {
            (n - 1.0) * per_node
        } else if t < 10.0 + detect + rebuild_wall {
            // CPU-bound nodes: the mail map's rebuild takes its CPU from deliveries.
            0.0
        } else if t < 40.0 + rejoin {
            (n - 1.0) * per_node
        } else if t < 40.0 + rejoin + rebuild_wall {
            0.0
        } else {
            n * per_node
        }
    };
    let points: Vec<(f64, f64)> = (0..6000)
        .map(|k| k as f64 / 100.0)
        .map(|t| (t, rate(t)))
        .collect();
    let root = SVGBackend::new(path, (900, 400)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "{} nodes, two copies: one node fails at 10 s and returns at 40 s",
                row.nodes
            ),
            ("sans-serif", 16),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..60.0, 0.0..n * per_node * 1.1)?;
    chart.configure_mesh().x_desc("s").y_desc("msg/s").draw()?;
    chart.draw_series(LineSeries::new(points, RED.stroke_width(2)))?;
    root.present()?;
    Ok(())
}
