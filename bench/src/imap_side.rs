//! The IMAP part of `side-by-side`: the same mailboxes given the same amount of mail on
//! porcupine (through its SMTP) and on Dovecot (through Postfix, drained into the Maildirs),
//! then `porcupine-load`'s IMAP sessions (`--mix 0:0:100`: LOGIN, SELECT INBOX, new headers,
//! some bodies checked, \Seen, one APPEND, STORE \Deleted + EXPUNGE, now and then a short
//! IDLE, LOGOUT) against each IMAP server at several connection counts, the two systems
//! alternating within each round; ops/s (commands answered OK) and the ratio at each system's
//! best connection count.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::peers::Postfix;
use crate::ports::check_owned;
use crate::run::Run;

/// A server's port, the pid that owns it and what its greeting contains.
#[derive(Clone, Copy, Debug)]
pub struct Endpoint {
    pub port: u16,
    pub owner: u32,
    pub greeting: &'static str,
}

/// One system: where its mail goes in, where IMAP reads it.
#[derive(Clone, Copy, Debug)]
pub struct Target<'a> {
    pub system: &'static str,
    pub smtp: Endpoint,
    pub imap: Endpoint,
    /// Postfix: mail is in the mailboxes once its queue has drained, not at the 250.
    pub postfix: Option<&'a Postfix>,
}

/// What to run.
#[derive(Debug)]
pub struct Settings<'a> {
    /// Dovecot's processes reused (its "high-performance" mode) rather than its default.
    pub dovecot_reuse_processes: bool,
    pub load: &'a Path,
    pub domain: &'a str,
    /// Mailboxes `<prefix>1` … `<prefix><users>`.
    pub prefix: &'a str,
    pub users: usize,
    pub password: &'a str,
    /// Messages delivered per mailbox (on average: recipients drawn uniformly) before timing.
    pub preload: usize,
    pub connections: &'a [usize],
    pub rounds: usize,
    pub seconds: u64,
    /// `paper` or bytes: the preloaded and the appended messages.
    pub size: &'a str,
}

impl Settings<'_> {
    fn user_format(&self) -> String {
        format!("{}{{n}}@{}", self.prefix, self.domain)
    }
}

/// One measured IMAP run.
#[derive(Clone, Debug)]
pub struct ImapRun {
    pub system: &'static str,
    pub round: usize,
    pub connections: usize,
    pub ops_per_s: f64,
    pub sessions_per_s: f64,
    pub op_p50_ms: f64,
    pub op_p99_ms: f64,
    pub session_p50_ms: f64,
    pub session_p99_ms: f64,
    pub corrupt: u64,
    pub errors: u64,
    /// Each command's p50 and p99 (ms), for the slowest-command breakdown.
    pub commands: Vec<(String, f64, f64)>,
}

/// How the mailboxes were filled.
#[derive(Clone, Debug)]
pub struct Filled {
    pub system: &'static str,
    pub delivered: u64,
    /// Until the mail was in the mailboxes (for Postfix: its queue drained).
    pub seconds: f64,
}

/// Fills both systems' mailboxes, warms each up (one login per user and a short untimed IMAP
/// run that opens most mailboxes once), then measures, round after round.
pub fn measure(
    run: &Run,
    settings: &Settings,
    targets: &[Target],
) -> Result<(Vec<Filled>, Vec<ImapRun>)> {
    let mut filled = Vec::new();
    for target in targets {
        filled.push(fill(run, settings, target)?);
    }
    for target in targets {
        let warm = load(run, settings, target, 4, 0, Warm::Yes)?;
        eprintln!(
            "imap warm-up {:>10}: {:.0} ops/s, {} errors",
            target.system, warm.ops_per_s, warm.errors
        );
    }
    let mut runs = Vec::new();
    for round in 0..settings.rounds {
        for (i, &c) in settings.connections.iter().enumerate() {
            for k in 0..targets.len() {
                // Alternating: neither system always goes first.
                let target = &targets[(k + round + i) % targets.len()];
                let r = load(run, settings, target, c, round, Warm::No)?;
                eprintln!(
                    "round {} imap {:>10} c={:<3} {:>8.0} ops/s {:>7.1} sessions/s op p50 {:.2} ms p99 {:.2} ms, corrupt {}, errors {}",
                    round + 1, r.system, c, r.ops_per_s, r.sessions_per_s, r.op_p50_ms, r.op_p99_ms, r.corrupt, r.errors
                );
                runs.push(r);
            }
        }
    }
    Ok((filled, runs))
}

/// Delivers `users × preload` messages to the mailboxes (uniformly drawn) by SMTP, and waits
/// until they are in the mailboxes.
fn fill(run: &Run, settings: &Settings, target: &Target) -> Result<Filled> {
    check_owned(target.smtp.port, target.smtp.owner, target.system)?;
    let messages = settings.users * settings.preload;
    let json = run.dir().join(format!("imap-fill-{}.json", target.system));
    let mut command = Command::new(settings.load);
    command
        .args(["--smtp", &format!("127.0.0.1:{}", target.smtp.port)])
        .args(["--users", &settings.users.to_string()])
        .args(["--user-format", &settings.user_format()])
        .args(["--password", settings.password])
        .args([
            "--zipf",
            "0",
            "--mix",
            "100:0",
            "--no-chunking",
            "--no-sweep",
        ])
        .args(["--connections", "8", "--messages", &messages.to_string()])
        .arg("--json")
        .arg(&json)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if settings.size != "paper" {
        command.args(["--size", settings.size]);
    }
    let started = Instant::now();
    let pid = run.spawn("porcupine-load", &mut command)?;
    let status = run.wait(pid)?;
    let report = read_report(&json, target.system, status)?;
    let delivered = report["delivered"].as_u64().unwrap_or(0);
    if delivered < messages as u64 {
        bail!(
            "filling {}'s mailboxes: {delivered} of {messages} messages accepted (errors {})",
            target.system,
            report["errors"]
        );
    }
    if let Some(postfix) = target.postfix {
        let deadline = Instant::now() + Duration::from_secs(600);
        while !postfix.queue_is_empty() {
            if Instant::now() > deadline {
                bail!("Postfix's queue did not drain in 600 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "imap fill {:>10}: {delivered} messages in the mailboxes in {seconds:.1} s",
        target.system
    );
    Ok(Filled {
        system: target.system,
        delivered,
        seconds,
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Warm {
    Yes,
    No,
}

/// One IMAP run of `porcupine-load` against `target`.
fn load(
    run: &Run,
    settings: &Settings,
    target: &Target,
    connections: usize,
    round: usize,
    warm: Warm,
) -> Result<ImapRun> {
    check_owned(target.imap.port, target.imap.owner, target.system)
        .with_context(|| format!("before measuring {}'s IMAP", target.system))?;
    let name = match warm {
        Warm::Yes => format!("imap-warm-{}", target.system),
        Warm::No => format!("imap-{}-{connections}-{round}", target.system),
    };
    let json = run.dir().join(format!("{name}.json"));
    let mut command = Command::new(settings.load);
    command
        .args(["--imap", &format!("127.0.0.1:{}", target.imap.port)])
        .args(["--users", &settings.users.to_string()])
        .args(["--user-format", &settings.user_format()])
        .args(["--password", settings.password])
        .args(["--mix", "0:0:100", "--no-sweep"])
        .args(["--connections", &connections.to_string()])
        .arg("--json")
        .arg(&json)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    match warm {
        // Every mailbox opened about once (uniform users), every password checked once.
        Warm::Yes => command.args([
            "--zipf",
            "0",
            "--warm-logins",
            "--duration",
            &format!("{}s", settings.seconds.clamp(1, 3)),
        ]),
        Warm::No => command.args(["--duration", &format!("{}s", settings.seconds)]),
    };
    if settings.size != "paper" {
        command.args(["--size", settings.size]);
    }
    let pid = run.spawn("porcupine-load", &mut command)?;
    let status = run.wait(pid)?;
    let report = read_report(&json, target.system, status)?;
    check_greetings(&report, &target.imap, target.system)?;
    let imap = &report["imap"];
    let f = |v: &serde_json::Value| v.as_f64().unwrap_or(0.0);
    let errors: u64 = report["errors"]
        .as_object()
        .map_or(0, |e| e.values().filter_map(|v| v.as_u64()).sum());
    if errors > 0 {
        eprintln!(
            "{} imap c={connections}: errors {}",
            target.system, report["errors"]
        );
    }
    let commands = imap["commands"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(name, l)| (name.clone(), f(&l["p50_ms"]), f(&l["p99_ms"])))
                .collect()
        })
        .unwrap_or_default();
    Ok(ImapRun {
        system: target.system,
        round,
        connections,
        ops_per_s: f(&imap["ops_per_s"]),
        sessions_per_s: f(&imap["sessions_per_s"]),
        op_p50_ms: f(&imap["op"]["p50_ms"]),
        op_p99_ms: f(&imap["op"]["p99_ms"]),
        session_p50_ms: f(&imap["session"]["p50_ms"]),
        session_p99_ms: f(&imap["session"]["p99_ms"]),
        corrupt: report["corrupt"].as_u64().unwrap_or(0),
        errors,
        commands,
    })
}

fn read_report(
    json: &Path,
    system: &str,
    status: std::process::ExitStatus,
) -> Result<serde_json::Value> {
    serde_json::from_str(&std::fs::read_to_string(json).unwrap_or_default())
        .with_context(|| format!("porcupine-load against {system} wrote no report (exit {status})"))
}

/// Every IMAP greeting on the endpoint's port must be its server's.
fn check_greetings(report: &serde_json::Value, endpoint: &Endpoint, system: &str) -> Result<()> {
    let key = format!("imap 127.0.0.1:{}", endpoint.port);
    let Some(seen) = report["greetings"][&key].as_object() else {
        bail!(
            "{system}: no IMAP session got a greeting on port {}",
            endpoint.port
        );
    };
    if seen.len() != 1 || seen.keys().any(|g| !g.contains(endpoint.greeting)) {
        bail!(
            "{system}: the IMAP port {} answered with {seen:?}; only greetings with {:?} are \
             this run's server",
            endpoint.port,
            endpoint.greeting
        );
    }
    Ok(())
}

/// One row per system and connection count: medians over the rounds (corrupt and errors
/// summed).
pub fn medians(runs: &[ImapRun], systems: &[&'static str], connections: &[usize]) -> Vec<ImapRun> {
    let mut out = Vec::new();
    for &system in systems {
        for &c in connections {
            let same: Vec<&ImapRun> = runs
                .iter()
                .filter(|r| r.system == system && r.connections == c)
                .collect();
            if same.is_empty() {
                continue;
            }
            let median = |value: fn(&ImapRun) -> f64| {
                let mut values: Vec<f64> = same.iter().map(|r| value(r)).collect();
                values.sort_by(f64::total_cmp);
                let n = values.len();
                if n % 2 == 1 {
                    values[n / 2]
                } else {
                    (values[n / 2 - 1] + values[n / 2]) / 2.0
                }
            };
            out.push(ImapRun {
                system,
                round: 0,
                connections: c,
                ops_per_s: median(|r| r.ops_per_s),
                sessions_per_s: median(|r| r.sessions_per_s),
                op_p50_ms: median(|r| r.op_p50_ms),
                op_p99_ms: median(|r| r.op_p99_ms),
                session_p50_ms: median(|r| r.session_p50_ms),
                session_p99_ms: median(|r| r.session_p99_ms),
                corrupt: same.iter().map(|r| r.corrupt).sum(),
                errors: same.iter().map(|r| r.errors).sum(),
                commands: same
                    .iter()
                    .max_by(|a, b| a.ops_per_s.total_cmp(&b.ops_per_s))
                    .map(|r| r.commands.clone())
                    .unwrap_or_default(),
            });
        }
    }
    out
}

/// The best median ops/s of `system` over the connection counts, and where.
pub fn best(medians: &[ImapRun], system: &str) -> (f64, usize) {
    medians
        .iter()
        .filter(|r| r.system == system)
        .map(|r| (r.ops_per_s, r.connections))
        .fold((0.0, 0), |a, b| if b.0 > a.0 { b } else { a })
}

/// The markdown section.
pub fn table(
    settings: &Settings,
    filled: &[Filled],
    runs: &[ImapRun],
    systems: [&'static str; 2],
) -> String {
    let medians = medians(runs, &systems, settings.connections);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## IMAP side by side: {} and {}\n",
        systems[0], systems[1]
    );
    let _ = writeln!(
        out,
        "{} mailboxes ({}1…) given {} messages each on average by SMTP (recipients drawn \
         uniformly; porcupine through its own SMTP, Dovecot through Postfix, timing starts once \
         Postfix's queue has drained), size {}. Then `porcupine-load --mix 0:0:100` for {} s per \
         run, users Zipf 1.0, {} rounds, the systems alternating at each connection count; \
         before the rounds, one untimed warm-up run per system (one login per user, every \
         mailbox opened about once). One session: LOGIN, SELECT INBOX, UID FETCH of the \
         headers not seen before by this client, UID FETCH BODY.PEEK[] of the newest 3 of \
         them (each checked against its checksum and RFC822.SIZE), UID STORE +FLAGS (\\Seen), \
         APPEND of one message, UID STORE +FLAGS (\\Deleted) and EXPUNGE of one message the \
         client knows, at random (two while the mailbox is larger than the client first found \
         it, so that hot mailboxes keep their size), 5 % of sessions IDLE up to 50 ms, LOGOUT. An op is a command answered OK.\n",
        settings.users,
        settings.prefix,
        settings.preload,
        settings.size,
        settings.seconds,
        settings.rounds,
    );
    let _ = writeln!(out, "Durability: porcupine makes every APPEND and STORE durable (fdatasync, group commit) before its OK. Dovecot runs with its defaults (`mail_fsync = optimized`: a saved message is fsynced before APPEND's OK; flag changes and expunges are renames and index updates, not fsynced), {}.\n", if settings.dovecot_reuse_processes { "and with `--dovecot-reuse-processes`: its \"high-performance\" login (`service imap-login { service_count = 0, process_min_avail = 2 }`) and imap processes reused (`service imap { service_count = 1000, process_min_avail = 8 }`)" } else { "and its default process model (a new login process and a new imap process for every connection)" });
    for f in filled {
        let _ = writeln!(
            out,
            "- filled {}: {} messages in the mailboxes after {:.1} s",
            f.system, f.delivered, f.seconds
        );
    }
    let _ = writeln!(
        out,
        "\nMedians over the rounds (range: lowest and highest ops/s):\n"
    );
    let _ = writeln!(out, "| system | connections | IMAP ops/s | range | sessions/s | op p50 ms | op p99 ms | session p50 ms | session p99 ms | corrupt | errors |");
    let _ = writeln!(
        out,
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"
    );
    for m in &medians {
        let rates = runs
            .iter()
            .filter(|r| r.system == m.system && r.connections == m.connections)
            .map(|r| r.ops_per_s);
        let low = rates.clone().fold(f64::INFINITY, f64::min);
        let high = rates.fold(0.0, f64::max);
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {:.0}–{:.0} | {:.1} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} |",
            m.system,
            m.connections,
            m.ops_per_s,
            low,
            high,
            m.sessions_per_s,
            m.op_p50_ms,
            m.op_p99_ms,
            m.session_p50_ms,
            m.session_p99_ms,
            m.corrupt,
            m.errors
        );
    }
    let ratio = |a: f64, b: f64| a / b.max(f64::MIN_POSITIVE);
    let rate = |system: &str, c: usize| {
        medians
            .iter()
            .find(|r| r.system == system && r.connections == c)
            .map_or(0.0, |r| r.ops_per_s)
    };
    let _ = writeln!(
        out,
        "\n| connections | {} / {} (IMAP ops/s) |",
        systems[0], systems[1]
    );
    let _ = writeln!(out, "|---:|---:|");
    for &c in settings.connections {
        let _ = writeln!(
            out,
            "| {c} | {:.2}× |",
            ratio(rate(systems[0], c), rate(systems[1], c))
        );
    }
    let (a, ca) = best(&medians, systems[0]);
    let (b, cb) = best(&medians, systems[1]);
    let _ = writeln!(
        out,
        "\nBest against best (medians): {} {a:.0} ops/s at {ca} connections, {} {b:.0} ops/s \
         at {cb}: **{:.2}×**.",
        systems[0],
        systems[1],
        ratio(a, b)
    );
    for round in 0..settings.rounds {
        let this: Vec<ImapRun> = runs.iter().filter(|r| r.round == round).cloned().collect();
        let (a, _) = best(&this, systems[0]);
        let (b, _) = best(&this, systems[1]);
        let _ = writeln!(out, "- round {}: {:.2}×", round + 1, ratio(a, b));
    }
    let _ = writeln!(
        out,
        "\nEach command's latency (p50 / p99 ms) in each system's fastest run at its best \
         connection count:\n"
    );
    let _ = writeln!(out, "| command | {} | {} |", systems[0], systems[1]);
    let _ = writeln!(out, "|---|---:|---:|");
    let commands = |system: &str, c: usize| {
        medians
            .iter()
            .find(|r| r.system == system && r.connections == c)
            .map(|r| r.commands.clone())
            .unwrap_or_default()
    };
    let (left, right) = (commands(systems[0], ca), commands(systems[1], cb));
    let mut names: Vec<&String> = left.iter().chain(&right).map(|(n, _, _)| n).collect();
    names.sort();
    names.dedup();
    for name in names {
        let cell = |list: &[(String, f64, f64)]| {
            list.iter()
                .find(|(n, _, _)| n == name)
                .map_or("–".to_owned(), |(_, p50, p99)| {
                    format!("{p50:.2} / {p99:.2}")
                })
        };
        let _ = writeln!(out, "| {name} | {} | {} |", cell(&left), cell(&right));
    }
    let _ = writeln!(out, "\nEvery run, in the order they ran:\n");
    let _ = writeln!(out, "| round | system | connections | IMAP ops/s | sessions/s | op p50 ms | op p99 ms | corrupt | errors |");
    let _ = writeln!(out, "|---:|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in runs {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.0} | {:.1} | {:.2} | {:.2} | {} | {} |",
            r.round + 1,
            r.system,
            r.connections,
            r.ops_per_s,
            r.sessions_per_s,
            r.op_p50_ms,
            r.op_p99_ms,
            r.corrupt,
            r.errors
        );
    }
    out
}

/// The JSON summary: each system's best median ops/s, the ratio, corrupt mail and errors.
pub fn summary(
    settings: &Settings,
    runs: &[ImapRun],
    systems: [&'static str; 2],
) -> serde_json::Value {
    let medians = medians(runs, &systems, settings.connections);
    let (a, ca) = best(&medians, systems[0]);
    let (b, cb) = best(&medians, systems[1]);
    serde_json::json!({
        systems[0]: a,
        format!("{}_connections", systems[0]): ca,
        systems[1]: b,
        format!("{}_connections", systems[1]): cb,
        "ratio": a / b.max(f64::MIN_POSITIVE),
        "corrupt": runs.iter().map(|r| r.corrupt).sum::<u64>(),
        "errors": runs.iter().map(|r| r.errors).sum::<u64>(),
    })
}
