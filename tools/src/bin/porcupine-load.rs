//! `porcupine-load`: the paper's workload (90% SMTP deliveries, 10% POP sessions, Zipf users,
//! sizes with mean 4.7 KB) against any SMTP + POP3 service, counting lost and corrupt mail;
//! with `--imap` and a three-part `--mix`, IMAP sessions too (or only them).

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use porcupine_tools::duration::parse_duration;
use porcupine_tools::load::{
    self, client::Transfer, workload::SizeDistribution, LoadConfig, Progress,
};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "porcupine-load",
    version,
    about = "The Porcupine workload against any SMTP + POP3 (+ IMAP) service"
)]
struct Args {
    /// SMTP targets (connections are spread over them); needed when the mix has deliveries.
    #[arg(long, value_delimiter = ',')]
    smtp: Vec<SocketAddr>,
    /// POP3 targets; without them only deliveries run and lost mail is not counted.
    #[arg(long, value_delimiter = ',')]
    pop3: Vec<SocketAddr>,
    #[arg(long, default_value_t = 1000)]
    users: usize,
    #[arg(long, default_value = "user{n}@localhost")]
    user_format: String,
    #[arg(long, default_value = "pw")]
    password: String,
    /// IMAP targets: sessions that log in, SELECT INBOX, fetch new headers and some bodies
    /// (checked), set \Seen, APPEND one message, expunge one, sometimes IDLE, LOG OUT.
    #[arg(long, value_delimiter = ',')]
    imap: Vec<SocketAddr>,
    /// SMTP deliveries : POP sessions [: IMAP sessions], e.g. 90:10, 0:0:100.
    #[arg(long, default_value = "90:10")]
    mix: String,
    /// Bodies an IMAP session fetches at most (the newest of its new messages).
    #[arg(long, default_value_t = 3)]
    imap_bodies: usize,
    /// Percentage of IMAP sessions that IDLE before LOGOUT.
    #[arg(long, default_value_t = 5)]
    imap_idle_percent: u32,
    /// How long such an IDLE lasts at most (it ends at once when EXISTS arrives).
    #[arg(long, value_parser = parse_duration, default_value = "50ms")]
    imap_idle: Duration,
    /// Zipf exponent for choosing users (0 = uniform).
    #[arg(long, default_value_t = 1.0)]
    zipf: f64,
    /// Fixed message size in bytes; default: the paper's distribution (mean 4.7 KB, tail to 1 MB).
    #[arg(long)]
    size: Option<usize>,
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Load threads (one executor each) [default: every core].
    #[arg(long)]
    threads: Option<usize>,
    /// Deliveries per second in total (open loop); default closed loop.
    #[arg(long)]
    rate: Option<f64>,
    /// Run time, e.g. 30s, 2m.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Stop after this many deliveries.
    #[arg(long)]
    messages: Option<u64>,
    /// Skip the final sweep that empties the mailboxes and counts lost mail.
    #[arg(long)]
    no_sweep: bool,
    /// The most the final sweep may take. Within it, mailboxes still missing acknowledged
    /// mail are swept again (servers that deliver after the 250, like Postfix, need this);
    /// mailboxes not emptied by then are reported as unswept, their mail as unverified.
    #[arg(long, value_parser = parse_duration, default_value = "120s")]
    sweep_timeout: Duration,
    /// Before timing, log in once as every user (steady state for servers that cache
    /// verified credentials).
    #[arg(long)]
    warm_logins: bool,
    /// Send every message with DATA, even to servers that offer CHUNKING (by default a
    /// message goes as one `BDAT … LAST` chunk pipelined with its envelope when the server
    /// offers CHUNKING and PIPELINING: one round trip instead of two).
    #[arg(long)]
    no_chunking: bool,
    /// STARTTLS on every SMTP connection and STLS on every POP3 one (the server's certificate
    /// checked against --tls-ca, or not at all with --tls-no-verify)
    #[arg(long)]
    tls: bool,
    /// The certificates (PEM) to trust for --tls
    #[arg(long)]
    tls_ca: Option<std::path::PathBuf>,
    /// With --tls, accept any certificate (benchmarks against test servers only)
    #[arg(long, conflicts_with = "tls_ca")]
    tls_no_verify: bool,
    /// Write the report as JSON to FILE, or `-` for the last line of standard output.
    #[arg(long)]
    json: Option<String>,
}

fn main() {
    if let Err(error) = real_main() {
        eprintln!("porcupine-load: {error:#}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    let args = Args::parse();
    let shares: Vec<u32> = args
        .mix
        .split(':')
        .map(|part| part.parse().ok())
        .collect::<Option<_>>()
        .filter(|parts: &Vec<u32>| (2..=3).contains(&parts.len()))
        .context("--mix must look like 90:10 or 80:10:10 (SMTP : POP [: IMAP])")?;
    let (smtp_share, pop_share) = (shares[0], shares[1]);
    let imap_share = shares.get(2).copied().unwrap_or(0);
    if imap_share > 0 && args.imap.is_empty() {
        bail!("an IMAP share in --mix needs --imap");
    }
    if smtp_share > 0 && args.smtp.is_empty() {
        bail!("deliveries in --mix need --smtp");
    }
    if args.duration.is_none() && smtp_share == 0 {
        bail!("without deliveries in --mix, give --duration");
    }
    if args.duration.is_none() && args.messages.is_none() {
        bail!("give --duration or --messages");
    }
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let tls = match (args.tls, &args.tls_ca, args.tls_no_verify) {
        (false, None, false) => None,
        (false, _, _) => bail!("--tls-ca and --tls-no-verify go with --tls"),
        (true, Some(ca), _) => Some(load::tls::client_config(&load::tls::Trust::Ca(ca.clone()))?),
        (true, None, true) => Some(load::tls::client_config(&load::tls::Trust::Anything)?),
        (true, None, false) => bail!("--tls needs --tls-ca FILE (or --tls-no-verify)"),
    };
    let config = LoadConfig {
        tls,
        smtp: args.smtp,
        pop_share: if args.pop3.is_empty() { 0 } else { pop_share },
        pop3: args.pop3,
        imap_share: if args.imap.is_empty() { 0 } else { imap_share },
        imap: args.imap,
        imap_bodies: args.imap_bodies,
        imap_idle: args.imap_idle,
        imap_idle_percent: args.imap_idle_percent.min(100),
        users: args.users,
        user_format: args.user_format,
        password: args.password,
        zipf: args.zipf,
        smtp_share,
        size: args
            .size
            .map_or(SizeDistribution::Paper, SizeDistribution::Fixed),
        connections: args.connections,
        threads,
        rate: args.rate,
        duration: args.duration,
        messages: args.messages,
        sweep: !args.no_sweep,
        sweep_timeout: args.sweep_timeout,
        sender: "load@porcupine-load.invalid".into(),
        warm_logins: args.warm_logins,
        transfer: if args.no_chunking {
            Transfer::Data
        } else {
            Transfer::ChunkingWhenOffered
        },
    };
    let progress = Arc::new(Progress::default());
    let display = std::thread::spawn({
        let progress = progress.clone();
        let (duration, messages) = (config.duration, config.messages);
        move || show_progress(&progress, duration, messages)
    });
    let report = load::run(config, progress.clone());
    progress.done.store(true, Ordering::Relaxed);
    let _ = display.join();
    let report = report?;
    print!("{}", load::table(&report));
    if let Some(target) = args.json {
        let json = serde_json::to_string(&report)?;
        if target == "-" {
            println!("{json}");
        } else {
            std::fs::write(&target, json).with_context(|| format!("cannot write {target}"))?;
        }
    }
    if report.lost > 0 || report.corrupt > 0 {
        bail!(
            "{} lost and {} corrupt messages",
            report.lost,
            report.corrupt
        );
    }
    if report.unverified > 0 {
        bail!(
            "the sweep could not empty {} mailboxes: {} acknowledged messages were not verified",
            report.unswept,
            report.unverified
        );
    }
    let mixed = load::greetings::mixed(&report.greetings);
    if !mixed.is_empty() {
        bail!("more than one server answered on {mixed:?}: the figures mix them");
    }
    Ok(())
}

/// A progress bar on a terminal; a plain line every 5 s otherwise.
fn show_progress(progress: &Progress, duration: Option<Duration>, messages: Option<u64>) {
    let started = std::time::Instant::now();
    let terminal = std::io::stderr().is_terminal();
    let bar = terminal.then(|| {
        let total = messages.unwrap_or_else(|| duration.map_or(0, |d| d.as_secs()));
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{elapsed_precise} [{bar:40}] {pos}/{len} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let mut last_print = started;
    while !progress.done.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(200));
        let delivered = progress.delivered.load(Ordering::Relaxed);
        let rate = delivered as f64 / started.elapsed().as_secs_f64().max(0.001);
        let errors = progress.errors.load(Ordering::Relaxed);
        let imap_ops = progress.imap_ops.load(Ordering::Relaxed);
        let imap = if imap_ops > 0 {
            format!(
                ", {imap_ops} IMAP ops, {:.0}/s",
                imap_ops as f64 / started.elapsed().as_secs_f64().max(0.001)
            )
        } else {
            String::new()
        };
        match &bar {
            Some(bar) => {
                bar.set_position(if messages.is_some() {
                    delivered
                } else {
                    started.elapsed().as_secs()
                });
                bar.set_message(format!(
                    "{delivered} delivered, {rate:.0}/s{imap}, {errors} errors"
                ));
            }
            None if last_print.elapsed() >= Duration::from_secs(5) => {
                last_print = std::time::Instant::now();
                eprintln!(
                    "[{:>5.1}s] {delivered} delivered, {rate:.0}/s{imap}, {errors} errors",
                    started.elapsed().as_secs_f64()
                );
            }
            None => {}
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
}
