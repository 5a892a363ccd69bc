//! Side by side, one machine, one run: the same `porcupine-load` workload against
//! (a) porcupine, (b) Postfix + Dovecot (Maildir), (c) Postfix's `smtp-sink` (SMTP only, no disk:
//! the protocol ceiling) and (d) porcupine with `--discard-bodies` (the paper's "infinitely fast
//! disk"), for several connection counts; then, each round, (e) Postfix's own `smtp-source`
//! against the durable SMTP-only porcupine and smtp-sink at 1, 20 and 100 sessions with 1 and 4
//! recipients (`porcupine_bench::stock`), so the headline never rests on our generator alone.
//! Then (f) IMAP: porcupine's IMAP against Dovecot's over the same number of mailboxes given
//! the same amount of mail, at a few connection counts (`porcupine_bench::imap_side`);
//! `--only imap` runs that part alone, `--only mail` the rest alone.
//! Writes `<results>/<name>.md` and `<name>.svg`; with `--json` its last line holds the best
//! delivered rates, the smtp-source medians and ratios, the IMAP ops/s and their ratio, and
//! the total of lost or corrupt mail.
//!
//! Hermetic: every server is a private instance in the run's directory on ports chosen free at
//! start (see `porcupine_bench::peers` and `ports`); nothing of the machine's own Postfix or
//! Dovecot is touched. Before each measured run it checks that only the server it started
//! listens on each port the run uses; after it, that every connection met that server's
//! greeting, and for porcupine that the node counted the deliveries the generator was
//! acknowledged. SIGINT, SIGTERM or an error stops every server it started, by pid, and
//! removes the run's directory unless `--keep`.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use porcupine_bench::imap_side::{self, ImapRun};
use porcupine_bench::peers::{self, Mailboxes, Postfix};
use porcupine_bench::ports::{check_owned, free_ports};
use porcupine_bench::run::Run as RunDir;
use porcupine_bench::stock::{self, Shape, StockRun, StockTarget};
use porcupine_cluster::admin_client::{AdminClient, AdminError};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const DOMAIN: &str = "sbs.test";
const PASSWORD: &str = "pw";
/// The local part smtp-source's recipients are made from (`stock`, `2stock`, …).
const STOCK_LOCAL: &str = "stock";
/// The local part of the IMAP runs' mailboxes (`imap1`, `imap2`, …), apart from the others.
const IMAP_PREFIX: &str = "imap";
/// The IMAP runs' systems, in the order of their table.
const IMAP_SYSTEMS: [&str; 2] = ["porcupine-imap", "dovecot-imap"];
/// Every system measured, in the order of the tables and the plot (the last two with --tls).
const SYSTEMS: [&str; 8] = [
    "porcupine",
    "porcupine-data",
    "postfix+dovecot",
    "porcupine-smtp",
    "smtp-sink",
    "porcupine-discard",
    "porcupine-tls",
    "postfix+dovecot-tls",
];

/// Which parts of the comparison run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Only {
    /// Everything: the SMTP/POP3 runs, smtp-source, then IMAP.
    All,
    /// The SMTP/POP3 runs and smtp-source, no IMAP (needs no dovecot-imapd).
    Mail,
    /// Only the IMAP runs.
    Imap,
}

#[derive(Parser, Debug)]
struct Args {
    /// Which parts to run.
    #[arg(long, value_enum, default_value = "all")]
    only: Only,
    /// Connection counts of the IMAP runs.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    imap_connections: Vec<usize>,
    /// Mailboxes of the IMAP runs (`imap1` …, apart from the SMTP/POP3 runs' users).
    #[arg(long, default_value_t = 200)]
    imap_users: usize,
    /// Messages each IMAP mailbox gets (on average) before the IMAP runs.
    #[arg(long, default_value_t = 10)]
    imap_preload: usize,
    /// Run Dovecot's IMAP in its "high-performance" process mode (login processes serve many
    /// connections, imap processes are reused) instead of its default (new processes for
    /// every connection).
    #[arg(long)]
    dovecot_reuse_processes: bool,
    /// Users (the same in every system).
    #[arg(long, default_value_t = 1000)]
    users: usize,
    /// Connection counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,10,50,100")]
    connections: Vec<usize>,
    /// Rounds: each measures every system at every connection count, the systems' order rotated
    /// from round to round. The tables and ratios use each system's median over the rounds, so
    /// one noisy run does not decide a ratio.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds of load per run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Message size: `paper` (mean 4.7 KB, heavy tail) or bytes.
    #[arg(long, default_value = "4700")]
    size: String,
    /// Name of the result files.
    #[arg(long, default_value = "side-by-side")]
    name: String,
    /// Where the result files go [default: bench/results in the workspace].
    #[arg(long)]
    results: Option<PathBuf>,
    /// Where the run's directory is made (a disk-backed file system: porcupine's log uses
    /// O_DIRECT, which tmpfs lacks).
    #[arg(long, default_value = "/var/tmp")]
    run_parent: PathBuf,
    /// Keep the run's directory (servers' data, configuration and logs) instead of removing it.
    #[arg(long)]
    keep: bool,
    /// Also measure the 90:10 mix encrypted: STARTTLS on every SMTP connection and STLS on
    /// every POP3 one, against porcupine (its own self-signed certificate) and Postfix +
    /// Dovecot (one made with openssl); the generator does not check certificates.
    #[arg(long)]
    tls: bool,
    /// Sessions of Postfix's `smtp-source -d` to measure against porcupine-smtp and smtp-sink
    /// (each at every `--stock-recipients`), once per round after the generator's runs.
    #[arg(long, value_delimiter = ',', default_value = "1,20,100")]
    stock_sessions: Vec<usize>,
    /// Recipients per message of the smtp-source runs.
    #[arg(long, value_delimiter = ',', default_value = "1,4")]
    stock_recipients: Vec<usize>,
    /// Messages per smtp-source run [default: 200 per session, at least 2,000].
    #[arg(long)]
    stock_messages: Option<usize>,
    /// Skip the smtp-source runs.
    #[arg(long)]
    no_stock: bool,
    /// Take `porcupine` and `porcupine-load` from this directory instead of building them.
    #[arg(long)]
    bins: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Debug)]
struct Run {
    system: &'static str,
    round: usize,
    connections: usize,
    msgs_per_s: f64,
    accepted_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    lost: u64,
    corrupt: u64,
    verified: bool,
}

/// What a run does.
#[derive(Clone, Copy, Debug)]
enum Mix {
    /// 90:10 deliveries : POP sessions that retrieve and delete.
    Paper(Transfer),
    /// Deliveries only (what smtp-sink can take), by DATA: smtp-sink offers no CHUNKING. A POP3
    /// port, if given, serves the final sweep.
    SmtpOnly,
}

/// How messages go in.
#[derive(Clone, Copy, Debug)]
enum Transfer {
    /// One `BDAT … LAST` chunk pipelined with the envelope (the server offers CHUNKING).
    Chunking,
    /// DATA. Postfix offers CHUNKING too, but it answers a pipelined BDAT tens of
    /// milliseconds late (21 msg/s on one connection, against 318 with DATA, on this machine),
    /// so it runs at its best, with DATA.
    Data,
}

/// A server of this run on one port: the pid that owns the port (it or its children hold
/// the listener) and what its greeting contains.
#[derive(Clone, Copy, Debug)]
struct Endpoint {
    port: u16,
    owner: u32,
    greeting: &'static str,
}

/// A system to load.
#[derive(Clone, Copy, Debug)]
struct Target<'a> {
    system: &'static str,
    smtp: Endpoint,
    pop3: Option<Endpoint>,
    mix: Mix,
    /// A porcupine node's admin port: its counters are compared with the generator's.
    admin: Option<u16>,
    /// Postfix: delivered means drained from its queue, not only acknowledged.
    postfix: Option<&'a Postfix>,
    /// STARTTLS and STLS on every connection.
    tls: bool,
}

/// A porcupine node of this run.
#[derive(Clone, Copy, Debug)]
struct Node {
    pid: u32,
    smtp: u16,
    pop3: u16,
    admin: u16,
    /// Its IMAP port (0: an ephemeral one nobody uses).
    imap: u16,
}

/// What the IMAP part measured.
#[derive(Debug, Default)]
struct ImapResult {
    filled: Vec<imap_side::Filled>,
    runs: Vec<ImapRun>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.rounds == 0 || args.connections.is_empty() || args.imap_connections.is_empty() {
        bail!("--rounds, --connections and --imap-connections need at least one value each");
    }
    if args.imap_users == 0 || args.imap_preload == 0 {
        bail!("--imap-users and --imap-preload must be at least 1");
    }
    peers::require_programs()?;
    if args.only != Only::Mail {
        peers::require_dovecot_imap()?;
    }
    let root = workspace_root()?;
    let bins = match &args.bins {
        Some(dir) => porcupine_bench::cluster::Bins::at(dir)?,
        None => porcupine_bench::cluster::Bins::build(&root)?,
    };
    let results = args
        .results
        .clone()
        .unwrap_or_else(|| root.join("bench/results"));
    let run = RunDir::start(
        &args.run_parent,
        "porcupine-side-by-side-",
        args.keep,
        "side-by-side",
    )?;
    let outcome = measure(&args, &bins, &run);
    // Every server stops (and the directory goes) before the report is written.
    run.finish();
    let (runs, stock_runs, imap) = outcome?;
    report(&args, &runs, &stock_runs, &imap, &results)
}

/// The smtp-source shapes to measure (none with `--no-stock`).
fn stock_shapes(args: &Args) -> Vec<Shape> {
    if args.no_stock || args.only == Only::Imap {
        return Vec::new();
    }
    let bytes = args.size.parse().unwrap_or(4700);
    let mut shapes = Vec::new();
    for &recipients in &args.stock_recipients {
        for &sessions in &args.stock_sessions {
            let mut shape = Shape::sized(sessions, recipients, bytes);
            if let Some(messages) = args.stock_messages {
                shape.messages = messages.max(sessions);
            }
            shapes.push(shape);
        }
    }
    shapes
}

/// Starts every system, measures them all, round after round.
fn measure(
    args: &Args,
    bins: &porcupine_bench::cluster::Bins,
    run: &RunDir,
) -> Result<(Vec<Run>, Vec<StockRun>, ImapResult)> {
    let base = run.dir().to_path_buf();
    let mut ports = free_ports(18)?.into_iter();
    let mut port = || ports.next().context("ran out of chosen ports");
    let (mail, imap) = (args.only != Only::Imap, args.only != Only::Mail);

    // (a) porcupine, (a') porcupine for the SMTP-only workload smtp-sink gets (its own data, so
    // its mailboxes never weigh on the mixed runs), and (d) porcupine discarding bodies; for
    // the IMAP runs, (f) porcupine-imap with its own data and users.
    let mut nodes = Vec::new();
    let mut imap_node = None;
    let mut names = Vec::new();
    if mail {
        names.extend([
            ("porcupine", false),
            ("porcupine-smtp", false),
            ("porcupine-discard", true),
        ]);
    }
    if imap {
        names.push((IMAP_SYSTEMS[0], false));
    }
    for (name, discard) in names {
        let (smtp, pop3, admin) = (port()?, port()?, port()?);
        let imap_port = if name == IMAP_SYSTEMS[0] { port()? } else { 0 };
        let log = std::fs::File::create(base.join(format!("{name}.log")))?;
        let mut command = Command::new(&bins.porcupine);
        command
            .args(["serve", "--no-first-user", "--domain", DOMAIN, "--data"])
            .arg(base.join(name))
            .args(["--smtp", &format!("127.0.0.1:{smtp}")])
            .args(["--pop3", &format!("127.0.0.1:{pop3}")])
            .args(["--admin", &format!("127.0.0.1:{admin}")])
            .arg("--no-pop3s")
            .args(["--imap", &format!("127.0.0.1:{imap_port}"), "--no-imaps"])
            .arg("--no-lmtp")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if discard {
            command.arg("--discard-bodies");
        }
        let pid = run.spawn(name, &mut command)?;
        let log_path = base.join(format!("{name}.log"));
        wait_admin(admin, pid, name).with_context(|| {
            format!(
                "{name} did not start; its log ends:\n{}",
                log_tail(&log_path)
            )
        })?;
        if imap_port != 0 {
            wait_listening(imap_port, pid)?;
        }
        let (count, prefix) = if imap_port != 0 {
            (args.imap_users, IMAP_PREFIX)
        } else {
            (args.users, "user")
        };
        let added = Command::new(&bins.porcupine)
            .args(["user", "bulk", "--count", &count.to_string()])
            .args(["--prefix", prefix])
            .args(["--domain", DOMAIN, "--password", PASSWORD])
            .args(["--admin", &format!("127.0.0.1:{admin}")])
            .arg("--data")
            .arg(base.join(name))
            .output()?;
        if !added.status.success() {
            bail!(
                "user bulk on {name} failed: {}",
                String::from_utf8_lossy(&added.stderr)
            );
        }
        if name == "porcupine-smtp" {
            // smtp-source's recipients: `stock`, `2stock`, … (see porcupine_bench::stock).
            let most = args.stock_recipients.iter().copied().max().unwrap_or(1);
            for user in stock::recipients(STOCK_LOCAL, DOMAIN, most) {
                add_user(bins, &base.join(name), admin, &user)?;
            }
        }
        let node = Node {
            pid,
            smtp,
            pop3,
            admin,
            imap: imap_port,
        };
        if imap_port != 0 {
            imap_node = Some(node);
        } else {
            nodes.push(node);
        }
    }

    // (b) Postfix + Dovecot with the same users, and (c) smtp-sink.
    let mut sets = Vec::new();
    if mail {
        sets.push(("user", args.users));
    }
    if imap {
        sets.push((IMAP_PREFIX, args.imap_users));
    }
    let mailboxes = Mailboxes {
        domain: DOMAIN,
        sets,
        password: PASSWORD,
    };
    let owner = peers::mail_owner()?;
    let (postfix_smtp, dovecot_pop3, sink_smtp) = (port()?, port()?, port()?);
    let dovecot_imap = if imap { Some(port()?) } else { None };
    let certificate = args
        .tls
        .then(|| peers::certificate(run.dir()))
        .transpose()?;
    let postfix = Postfix::start(run, postfix_smtp, &mailboxes, owner, certificate.as_ref())?;
    let dovecot = peers::start_dovecot(
        run,
        dovecot_pop3,
        dovecot_imap.map(|port| peers::DovecotImap {
            port,
            reuse_processes: args.dovecot_reuse_processes,
        }),
        &mailboxes,
        owner,
        certificate.as_ref(),
    )?;
    let sink = if mail {
        Some(peers::start_sink(run, sink_smtp)?)
    } else {
        None
    };
    let mut listening = vec![(postfix_smtp, postfix.master), (dovecot_pop3, dovecot)];
    listening.extend(sink.map(|pid| (sink_smtp, pid)));
    listening.extend(dovecot_imap.map(|port| (port, dovecot)));
    for (port, pid) in listening {
        wait_listening(port, pid)?;
    }
    let mut runs = Vec::new();
    let mut stock_runs = Vec::new();
    if let Some(sink) = sink {
        measure_mail(
            args,
            bins,
            run,
            &nodes,
            &postfix,
            dovecot,
            (postfix_smtp, dovecot_pop3, sink_smtp, sink),
            &mut runs,
            &mut stock_runs,
        )?;
    }
    let mut imap_result = ImapResult::default();
    if let (Some(node), Some(dovecot_imap)) = (imap_node, dovecot_imap) {
        let targets = [
            imap_side::Target {
                system: IMAP_SYSTEMS[0],
                smtp: imap_side::Endpoint {
                    port: node.smtp,
                    owner: node.pid,
                    greeting: "ESMTP porcupine",
                },
                imap: imap_side::Endpoint {
                    port: node.imap,
                    owner: node.pid,
                    greeting: "porcupine",
                },
                postfix: None,
            },
            imap_side::Target {
                system: IMAP_SYSTEMS[1],
                smtp: imap_side::Endpoint {
                    port: postfix_smtp,
                    owner: postfix.master,
                    greeting: "ESMTP Postfix",
                },
                imap: imap_side::Endpoint {
                    port: dovecot_imap,
                    owner: dovecot,
                    greeting: "Dovecot",
                },
                postfix: Some(&postfix),
            },
        ];
        let (filled, runs) = imap_side::measure(run, &imap_settings(args, &bins.load), &targets)?;
        imap_result = ImapResult { filled, runs };
    }
    Ok((runs, stock_runs, imap_result))
}

/// The IMAP part's settings (`load`: the porcupine-load binary; the report needs none).
fn imap_settings<'a>(args: &'a Args, load: &'a Path) -> imap_side::Settings<'a> {
    imap_side::Settings {
        dovecot_reuse_processes: args.dovecot_reuse_processes,
        load,
        domain: DOMAIN,
        prefix: IMAP_PREFIX,
        users: args.imap_users,
        password: PASSWORD,
        preload: args.imap_preload,
        connections: &args.imap_connections,
        rounds: args.rounds,
        seconds: args.seconds,
        size: &args.size,
    }
}

/// The SMTP/POP3 runs and smtp-source, round after round.
#[allow(clippy::too_many_arguments)]
fn measure_mail(
    args: &Args,
    bins: &porcupine_bench::cluster::Bins,
    run: &RunDir,
    nodes: &[Node],
    postfix: &Postfix,
    dovecot: u32,
    (postfix_smtp, dovecot_pop3, sink_smtp, sink): (u16, u16, u16, u32),
    runs: &mut Vec<Run>,
    stock_runs: &mut Vec<StockRun>,
) -> Result<()> {
    let porcupine = |node: &Node, pop3: bool| {
        (
            Endpoint {
                port: node.smtp,
                owner: node.pid,
                greeting: "ESMTP porcupine",
            },
            pop3.then_some(Endpoint {
                port: node.pop3,
                owner: node.pid,
                greeting: "porcupine",
            }),
        )
    };
    let (mixed, mixed_pop3) = porcupine(&nodes[0], true);
    let (smtp_only, smtp_only_pop3) = porcupine(&nodes[1], true);
    let (discard, _) = porcupine(&nodes[2], false);
    let mut plan: Vec<Target> = vec![
        Target {
            system: "porcupine",
            smtp: mixed,
            pop3: mixed_pop3,
            mix: Mix::Paper(Transfer::Chunking),
            admin: Some(nodes[0].admin),
            postfix: None,
            tls: false,
        },
        Target {
            system: "porcupine-data",
            smtp: mixed,
            pop3: mixed_pop3,
            mix: Mix::Paper(Transfer::Data),
            admin: Some(nodes[0].admin),
            postfix: None,
            tls: false,
        },
        Target {
            system: "postfix+dovecot",
            smtp: Endpoint {
                port: postfix_smtp,
                owner: postfix.master,
                greeting: "ESMTP Postfix",
            },
            pop3: Some(Endpoint {
                port: dovecot_pop3,
                owner: dovecot,
                greeting: "Dovecot",
            }),
            mix: Mix::Paper(Transfer::Data),
            admin: None,
            postfix: Some(postfix),
            tls: false,
        },
        Target {
            system: "porcupine-smtp",
            smtp: smtp_only,
            pop3: smtp_only_pop3,
            mix: Mix::SmtpOnly,
            admin: Some(nodes[1].admin),
            postfix: None,
            tls: false,
        },
        Target {
            system: "smtp-sink",
            smtp: Endpoint {
                port: sink_smtp,
                owner: sink,
                greeting: "smtp-sink",
            },
            pop3: None,
            mix: Mix::SmtpOnly,
            admin: None,
            postfix: None,
            tls: false,
        },
        Target {
            system: "porcupine-discard",
            smtp: discard,
            pop3: None,
            mix: Mix::SmtpOnly,
            admin: Some(nodes[2].admin),
            postfix: None,
            tls: false,
        },
    ];
    if args.tls {
        // The same servers and workload, every connection encrypted.
        let encrypted: Vec<Target> = plan
            .iter()
            .filter(|t| matches!(t.system, "porcupine" | "postfix+dovecot"))
            .map(|t| Target {
                system: if t.system == "porcupine" {
                    "porcupine-tls"
                } else {
                    "postfix+dovecot-tls"
                },
                tls: true,
                ..*t
            })
            .collect();
        plan.extend(encrypted);
    }
    let shapes = stock_shapes(args);
    let stored_on_smtp_node = || stored_copies(nodes[1].admin);
    let stock_targets = [
        StockTarget {
            system: "porcupine-smtp",
            port: nodes[1].smtp,
            stored: Some(&stored_on_smtp_node),
        },
        StockTarget {
            system: "smtp-sink",
            port: sink_smtp,
            stored: None,
        },
    ];
    for round in 0..args.rounds {
        for &c in &args.connections {
            for i in 0..plan.len() {
                // Rotated, so that no system always runs first (or right after Postfix's drain).
                let target = plan[(i + round) % plan.len()];
                let r = load(bins, run, &target, c, args, round)?;
                eprintln!(
                    "round {} {:>18} c={:<3} {:>9.0} msg/s (accepted {:>9.0}/s) p99 {:>8.2} ms lost {} corrupt {}",
                    round + 1, r.system, r.connections, r.msgs_per_s, r.accepted_per_s, r.p99_ms, r.lost, r.corrupt
                );
                runs.push(r);
            }
        }
        if !shapes.is_empty() {
            check_owned(nodes[1].smtp, nodes[1].pid, "porcupine-smtp")?;
            check_owned(sink_smtp, sink, "smtp-sink")?;
            stock_runs.extend(stock::measure_round(
                &stock_targets,
                &shapes,
                round,
                STOCK_LOCAL,
                DOMAIN,
            )?);
        }
    }
    Ok(())
}

/// Adds `user` (password [`PASSWORD`]) on the node with admin port `admin`.
fn add_user(
    bins: &porcupine_bench::cluster::Bins,
    data: &Path,
    admin: u16,
    user: &str,
) -> Result<()> {
    use std::io::Write as _;
    let mut child = Command::new(&bins.porcupine)
        .args(["user", "add", user, "--password-stdin"])
        .args(["--admin", &format!("127.0.0.1:{admin}")])
        .arg("--data")
        .arg(data)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        writeln!(stdin, "{PASSWORD}")?;
    }
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!(
            "user add {user} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// Writes the tables and the plot; prints the report (and the JSON line).
fn report(
    args: &Args,
    runs: &[Run],
    stock_runs: &[StockRun],
    imap: &ImapResult,
    results: &Path,
) -> Result<()> {
    std::fs::create_dir_all(results)?;
    let medians = medians(runs, &args.connections);
    let mut report = String::new();
    let shapes = stock_shapes(args);
    if args.only != Only::Imap {
        report.push_str(&table(runs, &medians, args));
        if !shapes.is_empty() {
            report.push('\n');
            report.push_str(&stock::table(
                stock_runs,
                &shapes,
                "porcupine-smtp",
                "smtp-sink",
            ));
        }
    } else {
        let machine = std::thread::available_parallelism().map_or(0, |n| n.get());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let _ = writeln!(
            report,
            "# Side by side, IMAP only: porcupine and Dovecot\n\nMachine: {machine} cores, \
             `uname -r` {}.",
            kernel.trim()
        );
    }
    let settings = imap_settings(args, Path::new(""));
    if args.only != Only::Mail {
        report.push('\n');
        report.push_str(&imap_side::table(
            &settings,
            &imap.filled,
            &imap.runs,
            IMAP_SYSTEMS,
        ));
    }
    std::fs::write(results.join(format!("{}.md", args.name)), &report)?;
    if !runs.is_empty() {
        plot(&medians, &results.join(format!("{}.svg", args.name)))?;
    }
    eprintln!(
        "wrote {0}/{1}.md{2}",
        results.display(),
        args.name,
        if runs.is_empty() {
            String::new()
        } else {
            format!(" and {}/{}.svg", results.display(), args.name)
        }
    );
    let best = |system: &str| best_rate(&medians, system);
    let lost: u64 = runs.iter().map(|r| r.lost + r.corrupt).sum::<u64>()
        + imap.runs.iter().map(|r| r.corrupt).sum::<u64>();
    print!("{report}");
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "porcupine": best("porcupine"),
                "porcupine_smtp_only": best("porcupine-smtp"),
                "porcupine_data": best("porcupine-data"),
                "postfix_dovecot": best("postfix+dovecot"),
                "smtp_sink": best("smtp-sink"),
                "porcupine_discard": best("porcupine-discard"),
                "porcupine_tls": best("porcupine-tls"),
                "postfix_dovecot_tls": best("postfix+dovecot-tls"),
                "smtp_source": stock::summary(stock_runs, &shapes, "porcupine-smtp", "smtp-sink"),
                "imap": if args.only == Only::Mail {
                    serde_json::Value::Null
                } else {
                    imap_side::summary(&settings, &imap.runs, IMAP_SYSTEMS)
                },
                "lost": lost,
                "rounds": args.rounds,
            })
        );
    }
    Ok(())
}

fn workspace_root() -> Result<PathBuf> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    Ok(manifest
        .parent()
        .context("bench/ has a parent")?
        .to_path_buf())
}

/// How long a server of the run may take to start listening: generous, because a node
/// preallocates its first segments and a slow or shared disk (CI's) can take a minute for it.
const START_WAIT: Duration = Duration::from_secs(180);

/// Waits until `port` is listened on by `pid` (or its children), and by nothing else; stops
/// early if `pid` has exited.
fn wait_listening(port: u16, pid: u32) -> Result<()> {
    let deadline = Instant::now() + START_WAIT;
    loop {
        match check_owned(port, pid, &porcupine_bench::ports::command_name(pid)) {
            Ok(()) => return Ok(()),
            Err(e) if !porcupine_bench::alive(pid) => {
                return Err(e.context(format!("pid {pid} exited before it listened")))
            }
            Err(e) if Instant::now() > deadline => {
                return Err(e.context(format!("still not listening after {START_WAIT:?}")))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// The last lines of a server's log, for an error that says why it did not start.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Waits until the node `pid` answers on its admin port (it has opened its shards).
fn wait_admin(admin: u16, pid: u32, name: &str) -> Result<()> {
    wait_listening(admin, pid)?;
    let deadline = Instant::now() + START_WAIT;
    while metrics(admin).is_err() {
        if Instant::now() > deadline {
            bail!("{name} (pid {pid}) does not answer on its admin port {admin}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// GET `path` (one that needs no token) from the admin endpoint on `port`: the body of a 200
/// answer.
/// The node's `/metrics` (which needs no token) on loopback `port`.
fn metrics(port: u16) -> Result<String, AdminError> {
    AdminClient::new(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
        .with_timeout(Duration::from_secs(10))
        .metrics()
}

/// The value of the node's unlabelled counter `name` in its `/metrics`.
fn node_counter(admin: u16, name: &str) -> Result<u64> {
    metrics(admin)
        .context("the node's /metrics did not answer")?
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .with_context(|| format!("no {name} in /metrics"))
}

/// The node's count of mailbox copies stored (one per recipient of each message).
fn stored_copies(admin: u16) -> Result<u64> {
    node_counter(admin, "porcupine_recipients_delivered_total")
}

/// The node's count of messages it acknowledged with 250.
fn node_deliveries(admin: u16) -> Result<u64> {
    node_counter(admin, "porcupine_deliveries_total")
}

/// Every greeting of `service` ("smtp", "pop3") on `endpoint`'s port must be its server's.
fn check_greetings(
    report: &serde_json::Value,
    service: &str,
    endpoint: &Endpoint,
    system: &str,
) -> Result<()> {
    let key = format!("{service} 127.0.0.1:{}", endpoint.port);
    let Some(seen) = report["greetings"][&key].as_object() else {
        return Ok(()); // no connection of that kind in this run
    };
    let strangers: Vec<&String> = seen
        .keys()
        .filter(|g| !g.contains(endpoint.greeting))
        .collect();
    if seen.len() != 1 || !strangers.is_empty() {
        bail!(
            "{system}: the {service} port {} answered with {:?}; only greetings with {:?} are \
             this run's server: another server took part of the connections",
            endpoint.port,
            seen,
            endpoint.greeting
        );
    }
    Ok(())
}

/// Runs porcupine-load against one system. For Postfix, "delivered" counts until the queue has
/// drained into the Maildirs, not until the 250.
fn load(
    bins: &porcupine_bench::cluster::Bins,
    run: &RunDir,
    target: &Target,
    connections: usize,
    args: &Args,
    round: usize,
) -> Result<Run> {
    let system = target.system;
    for endpoint in std::iter::once(&target.smtp).chain(&target.pop3) {
        check_owned(endpoint.port, endpoint.owner, system)
            .with_context(|| format!("before measuring {system}"))?;
    }
    let counted_before = target.admin.map(node_deliveries).transpose()?;
    let json = run
        .dir()
        .join(format!("load-{system}-{connections}-{round}.json"));
    let mut command = Command::new(&bins.load);
    command
        .args(["--smtp", &format!("127.0.0.1:{}", target.smtp.port)])
        .args(["--users", &args.users.to_string()])
        .args([
            "--user-format",
            &format!("user{{n}}@{DOMAIN}"),
            "--password",
            PASSWORD,
        ])
        .args(["--connections", &connections.to_string()])
        .args(["--duration", &format!("{}s", args.seconds)])
        .arg("--json")
        .arg(&json)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if args.size != "paper" {
        command.args(["--size", &args.size]);
    }
    if target.tls {
        command.args(["--tls", "--tls-no-verify"]);
    }
    match target.pop3 {
        // Postfix delivers after its 250: its sweep may wait for the queue.
        Some(pop3) => {
            let sweep = if target.postfix.is_some() {
                "300s"
            } else {
                "120s"
            };
            command
                .args(["--pop3", &format!("127.0.0.1:{}", pop3.port)])
                .args(["--sweep-timeout", sweep]);
        }
        None => {
            command.arg("--no-sweep");
        }
    }
    match target.mix {
        // Steady state: every user has logged in once, so servers that cache verified
        // credentials (porcupine) do not spend the short run hashing first logins.
        Mix::Paper(Transfer::Chunking) => command.args(["--mix", "90:10", "--warm-logins"]),
        Mix::Paper(Transfer::Data) => {
            command.args(["--mix", "90:10", "--warm-logins", "--no-chunking"])
        }
        Mix::SmtpOnly => command.args(["--mix", "100:0", "--no-chunking"]),
    };
    let started = Instant::now();
    let pid = run.spawn("porcupine-load", &mut command)?;
    let mut drained_at = None;
    if let Some(postfix) = target.postfix {
        // The queue drains into the Maildirs after the 250s; delivered = when it is empty.
        std::thread::sleep(Duration::from_secs(args.seconds));
        let deadline = Instant::now() + Duration::from_secs(300);
        while Instant::now() < deadline {
            if postfix.queue_is_empty() {
                drained_at = Some(started.elapsed());
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let status = run.wait(pid)?;
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&json).unwrap_or_default(),
    )
    .with_context(|| format!("porcupine-load against {system} wrote no report (exit {status})"))?;
    check_greetings(&report, "smtp", &target.smtp, system)?;
    if let Some(pop3) = &target.pop3 {
        check_greetings(&report, "pop3", pop3, system)?;
    }
    let delivered = report["delivered"].as_f64().unwrap_or(0.0);
    if let (Some(admin), Some(before)) = (target.admin, counted_before) {
        let counted = node_deliveries(admin)?.saturating_sub(before);
        if counted != delivered as u64 {
            eprintln!(
                "{system} c={connections}: the generator was acknowledged {} messages, the node \
                 counted {counted} deliveries",
                delivered as u64
            );
        }
    }
    if !status.success() {
        eprintln!(
            "porcupine-load against {system} exited {status}: lost {}, corrupt {}, unswept {}",
            report["lost"], report["corrupt"], report["unswept"]
        );
    }
    let seconds = report["seconds"].as_f64().unwrap_or(1.0);
    let accepted_per_s = delivered / seconds;
    let msgs_per_s = match drained_at {
        Some(t) => delivered / t.as_secs_f64().max(seconds),
        None => accepted_per_s,
    };
    Ok(Run {
        system,
        round,
        connections,
        msgs_per_s,
        accepted_per_s,
        p50_ms: report["smtp"]["p50_ms"].as_f64().unwrap_or(0.0),
        p99_ms: report["smtp"]["p99_ms"].as_f64().unwrap_or(0.0),
        lost: report["lost"].as_u64().unwrap_or(0),
        corrupt: report["corrupt"].as_u64().unwrap_or(0),
        verified: report["verified"].as_bool().unwrap_or(false),
    })
}

fn table(runs: &[Run], medians: &[Run], args: &Args) -> String {
    let mut out = String::new();
    let machine = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let _ = writeln!(
        out,
        "# Side by side: porcupine, Postfix + Dovecot, smtp-sink\n"
    );
    let _ = writeln!(
        out,
        "Machine: {machine} cores, `uname -r` {}. Workload: `porcupine-load`, {} users (Zipf 1.0), \
         size {}, {} s per run, {} rounds (each system at each connection count once per round, \
         the systems' order rotated each round; the tables give medians). Mix 90:10 (deliveries : POP sessions that retrieve and delete) for \
         porcupine and Postfix + Dovecot, after one warm-up login per user; SMTP only for \
         smtp-sink, porcupine-smtp (a separate durable porcupine, swept by POP3 afterwards to \
         count lost mail) and porcupine-discard. porcupine / Postfix+Dovecot compares the mixed \
         runs; porcupine / smtp-sink compares the SMTP-only runs, the only workload smtp-sink \
         can take.\n",
        kernel.trim(),
        args.users,
        args.size,
        args.seconds,
        args.rounds
    );
    let _ = writeln!(
        out,
        "Transfer: `porcupine` sends each message as one `BDAT … LAST` chunk pipelined with \
         its envelope (RFC 3030 CHUNKING: one round trip per message). `porcupine-data` is the \
         same node and workload by DATA. Postfix offers CHUNKING too, but answers a pipelined \
         BDAT tens of milliseconds late (21 msg/s on one connection against 318 by DATA, on \
         this machine), so Postfix + Dovecot runs with DATA, its faster way. The SMTP-only runs \
         use DATA for every target, because smtp-sink does not offer CHUNKING.\n"
    );
    let _ = writeln!(out, "How each system syncs before its 250:");
    let _ = writeln!(out, "- porcupine: the message is appended to the user's shard log and `fdatasync`ed (group commit) before the 250; POP3 deletes are durable tombstones before `+OK`.");
    let _ = writeln!(out, "- Postfix: fsyncs the queue file before the 250; the local/virtual delivery agent fsyncs the Maildir file before moving it into `new/` (delivered = when the queue has drained). Dovecot reads those Maildirs.");
    let _ = writeln!(out, "- smtp-sink: no disk at all (the protocol ceiling).");
    let _ = writeln!(out, "- porcupine-discard: `--discard-bodies`, nothing stored (the paper's \"infinitely fast disk\").");
    let _ = writeln!(out, "- Passwords: porcupine stores argon2id hashes and verifies one at a user's first login (then cached per core, which the warm-up reaches); Dovecot was given PLAIN passwords and does no hashing.\n");
    let _ = writeln!(
        out,
        "Medians over the rounds (the range is the lowest and highest delivered rate):\n"
    );
    let _ = writeln!(out, "| system | connections | delivered msg/s | range | accepted msg/s | SMTP p50 ms | SMTP p99 ms | lost | corrupt | verified |");
    let _ = writeln!(out, "|---|---:|---:|---|---:|---:|---:|---:|---:|---|");
    for m in medians {
        let rates = runs
            .iter()
            .filter(|r| r.system == m.system && r.connections == m.connections)
            .map(|r| r.msgs_per_s);
        let low = rates.clone().fold(f64::INFINITY, f64::min);
        let high = rates.fold(0.0, f64::max);
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {:.0}–{:.0} | {:.0} | {:.2} | {:.2} | {} | {} | {} |",
            m.system,
            m.connections,
            m.msgs_per_s,
            low,
            high,
            m.accepted_per_s,
            m.p50_ms,
            m.p99_ms,
            m.lost,
            m.corrupt,
            m.verified
        );
    }
    let ratio = |a: f64, b: f64| a / b.max(f64::MIN_POSITIVE);
    let _ = writeln!(
        out,
        "\n| connections | porcupine / Postfix+Dovecot (90:10) | porcupine-data / Postfix+Dovecot (90:10, both DATA) | porcupine-smtp / smtp-sink (SMTP only) |"
    );
    let _ = writeln!(out, "|---:|---:|---:|---:|");
    for &c in &args.connections {
        let rate = |system: &str| median_rate(medians, system, c);
        let _ = writeln!(
            out,
            "| {c} | {:.2}× | {:.2}× | {:.2}× |",
            ratio(rate("porcupine"), rate("postfix+dovecot")),
            ratio(rate("porcupine-data"), rate("postfix+dovecot")),
            ratio(rate("porcupine-smtp"), rate("smtp-sink"))
        );
    }
    let _ = writeln!(
        out,
        "\nBest against best (each system at its best connection count), from the medians, then \
         from each round on its own:\n"
    );
    let _ = writeln!(
        out,
        "| | porcupine / Postfix+Dovecot (90:10) | porcupine-data / Postfix+Dovecot | porcupine-smtp / smtp-sink (SMTP only) |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|");
    let best_ratios = |set: &[Run]| {
        (
            ratio(
                best_rate(set, "porcupine"),
                best_rate(set, "postfix+dovecot"),
            ),
            ratio(
                best_rate(set, "porcupine-data"),
                best_rate(set, "postfix+dovecot"),
            ),
            ratio(
                best_rate(set, "porcupine-smtp"),
                best_rate(set, "smtp-sink"),
            ),
        )
    };
    let (mixed, by_data, smtp) = best_ratios(medians);
    let _ = writeln!(
        out,
        "| medians | {mixed:.2}× | {by_data:.2}× | {smtp:.2}× |"
    );
    for round in 0..args.rounds {
        let this: Vec<Run> = runs.iter().filter(|r| r.round == round).cloned().collect();
        let (mixed, by_data, smtp) = best_ratios(&this);
        let _ = writeln!(
            out,
            "| round {} | {mixed:.2}× | {by_data:.2}× | {smtp:.2}× |",
            round + 1
        );
    }
    if runs.iter().any(|r| r.system == "porcupine-tls") {
        let _ = writeln!(
            out,
            "\nEncrypted (`--tls`): the same 90:10 mix with STARTTLS on every SMTP connection \
             and STLS on every POP3 one, on both sides (porcupine with its self-signed \
             certificate, Postfix + Dovecot with one made by openssl), beside the plaintext \
             runs of the same round:\n"
        );
        let _ = writeln!(
            out,
            "| connections | porcupine-tls | Postfix+Dovecot TLS | ratio, TLS | ratio, plaintext | porcupine TLS / plaintext |"
        );
        let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|");
        for &c in &args.connections {
            let rate = |system: &str| median_rate(medians, system, c);
            let _ = writeln!(
                out,
                "| {c} | {:.0} | {:.0} | {:.2}× | {:.2}× | {:.2} |",
                rate("porcupine-tls"),
                rate("postfix+dovecot-tls"),
                ratio(rate("porcupine-tls"), rate("postfix+dovecot-tls")),
                ratio(rate("porcupine"), rate("postfix+dovecot")),
                ratio(rate("porcupine-tls"), rate("porcupine"))
            );
        }
        let _ = writeln!(
            out,
            "\nBest against best, medians: encrypted {:.2}×, plaintext {:.2}×.",
            ratio(
                best_rate(medians, "porcupine-tls"),
                best_rate(medians, "postfix+dovecot-tls")
            ),
            ratio(
                best_rate(medians, "porcupine"),
                best_rate(medians, "postfix+dovecot")
            )
        );
    }
    let fastest = ["smtp-sink", "porcupine-discard"]
        .map(|s| best_rate(medians, s))
        .into_iter()
        .fold(0.0, f64::max);
    let _ = writeln!(
        out,
        "\nThe load generator's headroom: it drove a target at {fastest:.0} msg/s (the faster of \
         smtp-sink and porcupine-discard, medians), {:.2}× porcupine's best 90:10 rate and {:.2}× \
         porcupine-smtp's. It shares the machine's cores with the server it measures.",
        ratio(fastest, best_rate(medians, "porcupine")),
        ratio(fastest, best_rate(medians, "porcupine-smtp"))
    );
    let _ = writeln!(out, "\nEvery run, in the order they ran:\n");
    let _ = writeln!(out, "| round | system | connections | delivered msg/s | accepted msg/s | SMTP p50 ms | SMTP p99 ms | lost | corrupt | verified |");
    let _ = writeln!(out, "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|");
    for r in runs {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.0} | {:.0} | {:.2} | {:.2} | {} | {} | {} |",
            r.round + 1,
            r.system,
            r.connections,
            r.msgs_per_s,
            r.accepted_per_s,
            r.p50_ms,
            r.p99_ms,
            r.lost,
            r.corrupt,
            r.verified
        );
    }
    out
}

/// The highest delivered rate of `system` over the connection counts in `runs`.
/// A system's median delivered rate at `connections` (0 if it did not run there).
fn median_rate(medians: &[Run], system: &str, connections: usize) -> f64 {
    medians
        .iter()
        .find(|r| r.system == system && r.connections == connections)
        .map_or(0.0, |r| r.msgs_per_s)
}

fn best_rate(runs: &[Run], system: &str) -> f64 {
    runs.iter()
        .filter(|r| r.system == system)
        .map(|r| r.msgs_per_s)
        .fold(0.0, f64::max)
}

/// One row per system and connection count: the median of each figure over the rounds (lost and
/// corrupt are summed, verified must hold in every round).
fn medians(runs: &[Run], connections: &[usize]) -> Vec<Run> {
    let mut out = Vec::new();
    for system in SYSTEMS {
        for &c in connections {
            let same: Vec<&Run> = runs
                .iter()
                .filter(|r| r.system == system && r.connections == c)
                .collect();
            if same.is_empty() {
                continue;
            }
            let median = |value: fn(&Run) -> f64| {
                let mut values: Vec<f64> = same.iter().map(|r| value(r)).collect();
                values.sort_by(f64::total_cmp);
                let n = values.len();
                if n % 2 == 1 {
                    values[n / 2]
                } else {
                    (values[n / 2 - 1] + values[n / 2]) / 2.0
                }
            };
            out.push(Run {
                system,
                round: 0,
                connections: c,
                msgs_per_s: median(|r| r.msgs_per_s),
                accepted_per_s: median(|r| r.accepted_per_s),
                p50_ms: median(|r| r.p50_ms),
                p99_ms: median(|r| r.p99_ms),
                lost: same.iter().map(|r| r.lost).sum(),
                corrupt: same.iter().map(|r| r.corrupt).sum(),
                verified: same.iter().all(|r| r.verified),
            });
        }
    }
    out
}

fn plot(runs: &[Run], path: &Path) -> Result<()> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (1000, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(500);
    let systems = SYSTEMS;
    let colors = [
        RED,
        RGBColor(255, 140, 0),
        BLUE,
        GREEN,
        BLACK,
        MAGENTA,
        RGBColor(140, 0, 0),
        RGBColor(0, 0, 140),
    ];
    let max_c = runs.iter().map(|r| r.connections).max().unwrap_or(1) as f64;
    for (area, title, value) in [
        (
            &left,
            "delivered msg/s vs connections",
            (|r: &Run| r.msgs_per_s) as fn(&Run) -> f64,
        ),
        (&right, "SMTP p99 latency (ms) vs connections", |r: &Run| {
            r.p99_ms
        }),
    ] {
        let max_y = runs.iter().map(value).fold(1.0, f64::max) * 1.1;
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..max_c * 1.05, 0.0..max_y)?;
        chart.configure_mesh().x_desc("connections").draw()?;
        for (system, color) in systems.iter().zip(colors) {
            let points: Vec<(f64, f64)> = runs
                .iter()
                .filter(|r| r.system == *system)
                .map(|r| (r.connections as f64, value(r)))
                .collect();
            if points.is_empty() {
                continue;
            }
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
                .label(*system)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], color));
            chart.draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, 3, color.filled())),
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
