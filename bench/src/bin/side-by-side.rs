//! Side by side, one machine, one run: the same `porcupine-load` workload against
//! (a) porcupine, (b) Postfix + Dovecot (Maildir), (c) Postfix's `smtp-sink` (SMTP only, no disk:
//! the protocol ceiling) and (d) porcupine with `--discard-bodies` (the paper's "infinitely fast
//! disk"), for several connection counts. Writes `bench/results/<name>.md` and `<name>.svg`; with
//! `--json` its last line holds the best delivered rates and the total of lost or corrupt mail.
//!
//! It installs Postfix and Dovecot (Debian packages) if missing, configures them on loopback
//! high ports only (Postfix's system instance is reconfigured: run it on a test machine), and
//! stops every server it started, by pid.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use porcupine_bench::Servers;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const DOMAIN: &str = "sbs.test";
const PASSWORD: &str = "pw";
const PORCUPINE: (u16, u16, u16) = (2525, 1110, 8025);
const DISCARD: (u16, u16, u16) = (2535, 1120, 8035);
const SMTP_ONLY: (u16, u16, u16) = (2545, 1130, 8045);
const POSTFIX_SMTP: u16 = 2626;
const DOVECOT_POP3: u16 = 1210;
const SINK_SMTP: u16 = 2727;
/// Every system measured, in the order of the tables and the plot.
const SYSTEMS: [&str; 6] = [
    "porcupine",
    "porcupine-data",
    "postfix+dovecot",
    "porcupine-smtp",
    "smtp-sink",
    "porcupine-discard",
];

#[derive(Parser, Debug)]
struct Args {
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
    /// Name of the result files in bench/results/.
    #[arg(long, default_value = "side-by-side")]
    name: String,
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

fn sh(command: &str) -> Result<String> {
    let out = Command::new("sh")
        .args(["-c", command])
        .output()
        .with_context(|| format!("running {command}"))?;
    if !out.status.success() {
        bail!(
            "`{command}` failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Starts a daemon that detaches: its stdio must not be our pipes, or we would wait on them forever.
fn start_daemon(command: &str) -> Result<()> {
    let status = Command::new("sh")
        .args(["-c", command])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .with_context(|| format!("running {command}"))?;
    if !status.success() {
        bail!("`{command}` failed ({status})");
    }
    Ok(())
}

fn wait_port(port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("nothing listens on port {port} after 30 s")
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.rounds == 0 || args.connections.is_empty() {
        bail!("--rounds and --connections need at least one value each");
    }
    let root = workspace_root()?;
    let bins = root.join("target/release");
    eprintln!("building porcupine and porcupine-load (release)…");
    sh(&format!(
        "cd {} && cargo build --release -q -p porcupine-tools --bins",
        root.display()
    ))?;
    ensure_packages()?;
    let work = tempfile::Builder::new()
        .prefix("porcupine-side-by-side")
        .tempdir_in("/var/tmp")?;
    let base = work.path().to_path_buf();
    let mut servers = Servers::default();

    // (a) porcupine, (a') porcupine for the SMTP-only workload smtp-sink gets (its own data, so
    // its mailboxes never weigh on the mixed runs), and (d) porcupine discarding bodies.
    for (name, (smtp, pop3, admin), discard) in [
        ("porcupine", PORCUPINE, false),
        ("porcupine-smtp", SMTP_ONLY, false),
        ("porcupine-discard", DISCARD, true),
    ] {
        let mut command = Command::new(bins.join("porcupine"));
        command
            .args(["serve", "--no-first-user", "--domain", DOMAIN, "--data"])
            .arg(base.join(name))
            .args([
                "--smtp",
                &format!("127.0.0.1:{smtp}"),
                "--pop3",
                &format!("127.0.0.1:{pop3}"),
            ])
            .args(["--admin", &format!("127.0.0.1:{admin}")])
            .args(["--cluster", &format!("127.0.0.1:{}", admin + 1000)])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if discard {
            command.arg("--discard-bodies");
        }
        servers.children.push((
            name.into(),
            command
                .spawn()
                .with_context(|| format!("starting {name}"))?,
        ));
        wait_port(admin)?;
        sh(&format!(
            "{} user bulk --count {} --prefix user --domain {DOMAIN} --password {PASSWORD} --admin 127.0.0.1:{admin}",
            bins.join("porcupine").display(),
            args.users
        ))?;
    }

    // (b) Postfix + Dovecot with the same users.
    let (uid, gid) = vmail_user()?;
    configure_postfix_dovecot(&base, args.users, uid, gid)?;
    start_daemon("postfix start")?;
    let master = sh("cat /var/spool/postfix/pid/master.pid")?
        .trim()
        .parse::<u32>()
        .context("postfix master pid")?;
    servers.pids.push(("postfix".into(), master));
    start_daemon(&format!("dovecot -c {}/dovecot.conf", base.display()))?;
    // dovecot daemonizes before it writes its pid file.
    let pid_file = base.join("dovecot-run/master.pid");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !pid_file.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let dovecot = match std::fs::read_to_string(&pid_file) {
        Ok(pid) => pid.trim().parse::<u32>().context("dovecot pid")?,
        Err(_) => {
            let _ = start_daemon(&format!("doveadm -c {}/dovecot.conf stop", base.display()));
            let log = std::fs::read_to_string(base.join("dovecot.log")).unwrap_or_default();
            bail!("dovecot did not start; its log:\n{log}");
        }
    };
    servers.pids.push(("dovecot".into(), dovecot));
    wait_port(POSTFIX_SMTP)?;
    wait_port(DOVECOT_POP3)?;

    // (c) smtp-sink.
    let sink = Command::new("smtp-sink")
        .args([
            "-u",
            "nobody",
            "-c",
            &format!("127.0.0.1:{SINK_SMTP}"),
            "1000",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting smtp-sink")?;
    servers.children.push(("smtp-sink".into(), sink));
    wait_port(SINK_SMTP)?;

    let plan: [Target; 6] = [
        (
            "porcupine",
            PORCUPINE.0,
            Some(PORCUPINE.1),
            Mix::Paper(Transfer::Chunking),
            None,
        ),
        (
            "porcupine-data",
            PORCUPINE.0,
            Some(PORCUPINE.1),
            Mix::Paper(Transfer::Data),
            None,
        ),
        (
            "postfix+dovecot",
            POSTFIX_SMTP,
            Some(DOVECOT_POP3),
            Mix::Paper(Transfer::Data),
            Some(&base),
        ),
        (
            "porcupine-smtp",
            SMTP_ONLY.0,
            Some(SMTP_ONLY.1),
            Mix::SmtpOnly,
            None,
        ),
        ("smtp-sink", SINK_SMTP, None, Mix::SmtpOnly, None),
        ("porcupine-discard", DISCARD.0, None, Mix::SmtpOnly, None),
    ];
    let mut runs = Vec::new();
    for round in 0..args.rounds {
        for &c in &args.connections {
            for i in 0..plan.len() {
                // Rotated, so that no system always runs first (or right after Postfix's drain).
                let (system, smtp, pop3, mix, postfix) = plan[(i + round) % plan.len()];
                let r = load(&bins, system, smtp, pop3, mix, c, &args, postfix, round)?;
                eprintln!(
                    "round {} {:>18} c={:<3} {:>9.0} msg/s (accepted {:>9.0}/s) p99 {:>8.2} ms lost {} corrupt {}",
                    round + 1, r.system, r.connections, r.msgs_per_s, r.accepted_per_s, r.p99_ms, r.lost, r.corrupt
                );
                runs.push(r);
            }
        }
    }
    drop(servers);
    let _ = start_daemon("postfix stop");

    let results = root.join("bench/results");
    std::fs::create_dir_all(&results)?;
    let medians = medians(&runs, &args.connections);
    let report = table(&runs, &medians, &args);
    std::fs::write(results.join(format!("{}.md", args.name)), &report)?;
    plot(&medians, &results.join(format!("{}.svg", args.name)))?;
    eprintln!("wrote bench/results/{0}.md and {0}.svg", args.name);
    let best = |system: &str| best_rate(&medians, system);
    let lost: u64 = runs.iter().map(|r| r.lost + r.corrupt).sum();
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

fn ensure_packages() -> Result<()> {
    let have = |bin: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {bin}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if have("postfix") && have("dovecot") && have("smtp-sink") {
        return Ok(());
    }
    eprintln!("installing postfix, dovecot-core, dovecot-pop3d…");
    sh("echo 'postfix postfix/main_mailer_type select Local only' | debconf-set-selections")?;
    sh("echo 'postfix postfix/mailname string localhost' | debconf-set-selections")?;
    sh("apt-get update -qq")?;
    sh("DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postfix dovecot-core dovecot-pop3d")?;
    Ok(())
}

fn vmail_user() -> Result<(u32, u32)> {
    if sh("id -u porcupine-vmail").is_err() {
        sh("useradd --system --no-create-home --shell /usr/sbin/nologin porcupine-vmail")?;
    }
    let uid = sh("id -u porcupine-vmail")?.trim().parse()?;
    let gid = sh("id -g porcupine-vmail")?.trim().parse()?;
    Ok((uid, gid))
}

fn configure_postfix_dovecot(base: &Path, users: usize, uid: u32, gid: u32) -> Result<()> {
    let b = base.display();
    std::fs::create_dir_all(base.join("mail"))?;
    std::fs::create_dir_all(base.join("dovecot-run"))?;
    std::fs::create_dir_all(base.join("dovecot-state"))?;
    let mut vmailbox = String::new();
    let mut passwd = String::new();
    for n in 1..=users {
        let _ = writeln!(vmailbox, "user{n}@{DOMAIN} {DOMAIN}/user{n}/");
        let _ = writeln!(passwd, "user{n}@{DOMAIN}:{{PLAIN}}{PASSWORD}");
    }
    std::fs::write(base.join("vmailbox"), vmailbox)?;
    std::fs::write(base.join("users"), passwd)?;
    sh(&format!("chown -R {uid}:{gid} {b}/mail && chmod 755 {b}"))?;
    let settings = [
        "inet_interfaces = loopback-only".to_string(),
        "inet_protocols = ipv4".into(),
        "mydestination = localhost".into(),
        format!("virtual_mailbox_domains = {DOMAIN}"),
        format!("virtual_mailbox_base = {b}/mail"),
        format!("virtual_mailbox_maps = texthash:{b}/vmailbox"),
        format!("virtual_uid_maps = static:{uid}"),
        format!("virtual_gid_maps = static:{gid}"),
        format!("maillog_file = {b}/postfix.log"),
        "message_size_limit = 33554432".into(),
        "smtpd_recipient_restrictions = permit_mynetworks, reject_unauth_destination".into(),
    ];
    for s in settings {
        sh(&format!("postconf -e '{s}'"))?;
    }
    let _ = sh("postconf -MX smtp/inet");
    let _ = sh(&format!("postconf -MX 127.0.0.1:{POSTFIX_SMTP}/inet"));
    sh(&format!(
        "postconf -M '127.0.0.1:{POSTFIX_SMTP}/inet=127.0.0.1:{POSTFIX_SMTP} inet n - n - - smtpd'"
    ))?;
    sh("postconf -F '*/*/chroot = n'")?;
    let _ = start_daemon("postfix stop");
    let conf = format!(
        "protocols = pop3\nlisten = 127.0.0.1\nbase_dir = {b}/dovecot-run\nstate_dir = {b}/dovecot-state\n\
         log_path = {b}/dovecot.log\nssl = no\ndisable_plaintext_auth = no\nauth_mechanisms = plain\n\
         mail_location = maildir:{b}/mail/%d/%n\nfirst_valid_uid = {uid}\n\
         passdb {{\n  driver = passwd-file\n  args = scheme=PLAIN username_format=%u {b}/users\n}}\n\
         userdb {{\n  driver = static\n  args = uid={uid} gid={gid} home={b}/mail/%d/%n\n}}\n\
         service pop3-login {{\n  inet_listener pop3 {{\n    address = 127.0.0.1\n    port = {DOVECOT_POP3}\n  }}\n}}\n\
         service imap-login {{\n  inet_listener imap {{\n    port = 0\n  }}\n  inet_listener imaps {{\n    port = 0\n  }}\n}}\n"
    );
    std::fs::write(base.join("dovecot.conf"), conf)?;
    Ok(())
}

/// A system to load: name, SMTP port, POP3 port, workload, Postfix base dir (drain wait).
type Target<'a> = (&'static str, u16, Option<u16>, Mix, Option<&'a Path>);

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

/// Runs porcupine-load against one system. For Postfix, "delivered" counts until the queue has
/// drained into the Maildirs, not until the 250.
#[allow(clippy::too_many_arguments)]
fn load(
    bins: &Path,
    system: &'static str,
    smtp: u16,
    pop3: Option<u16>,
    mix: Mix,
    connections: usize,
    args: &Args,
    postfix: Option<&Path>,
    round: usize,
) -> Result<Run> {
    let json = tempfile::NamedTempFile::new()?;
    let mut command = Command::new(bins.join("porcupine-load"));
    command
        .args([
            "--smtp",
            &format!("127.0.0.1:{smtp}"),
            "--users",
            &args.users.to_string(),
        ])
        .args([
            "--user-format",
            &format!("user{{n}}@{DOMAIN}"),
            "--password",
            PASSWORD,
        ])
        .args([
            "--connections",
            &connections.to_string(),
            "--duration",
            &format!("{}s", args.seconds),
        ])
        .arg("--json")
        .arg(json.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if args.size != "paper" {
        command.args(["--size", &args.size]);
    }
    match pop3 {
        Some(port) => {
            command.args([
                "--pop3",
                &format!("127.0.0.1:{port}"),
                "--sweep-timeout",
                "300s",
            ]);
        }
        None => {
            command.arg("--no-sweep");
        }
    }
    match mix {
        // Steady state: every user has logged in once, so servers that cache verified
        // credentials (porcupine) do not spend the short run hashing first logins.
        Mix::Paper(Transfer::Chunking) => command.args(["--mix", "90:10", "--warm-logins"]),
        Mix::Paper(Transfer::Data) => {
            command.args(["--mix", "90:10", "--warm-logins", "--no-chunking"])
        }
        Mix::SmtpOnly => command.args(["--mix", "100:0", "--no-chunking"]),
    };
    let started = Instant::now();
    let mut child = command.spawn().context("starting porcupine-load")?;
    let mut drained_at = None;
    if postfix.is_some() {
        // The queue drains into the Maildirs after the 250s; delivered = when it is empty.
        std::thread::sleep(Duration::from_secs(args.seconds));
        let deadline = Instant::now() + Duration::from_secs(300);
        while Instant::now() < deadline {
            let queue = sh("postqueue -p").unwrap_or_default();
            if queue.contains("Mail queue is empty") {
                drained_at = Some(started.elapsed());
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let status = child.wait()?;
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(json.path())?)
        .with_context(|| {
            format!("porcupine-load against {system} wrote no report (exit {status})")
        })?;
    let delivered = report["delivered"].as_f64().unwrap_or(0.0);
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
    let machine = sh("nproc").unwrap_or_default().trim().to_owned();
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
        sh("uname -r").unwrap_or_default().trim(),
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
        let rate = |s: &str| {
            medians
                .iter()
                .find(|r| r.system == s && r.connections == c)
                .map_or(0.0, |r| r.msgs_per_s)
        };
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
    let colors = [RED, RGBColor(255, 140, 0), BLUE, GREEN, BLACK, MAGENTA];
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
