//! `porcupine`: the mail node (`serve`) and its administration (`user`, `status`).

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use porcupine_cluster::node::replicas::AckPolicy;
use porcupine_cluster::node::{self, NodeConfig};
use porcupine_cluster::placement::PlacementPolicy;
use porcupine_engine::ThrottleLimits;
use porcupine_tools::admin_client;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "porcupine",
    version,
    about = "A clustered mail service after Porcupine (SOSP '99)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a node: SMTP, POP3 and the admin endpoint, on every core, until SIGTERM/SIGINT.
    Serve(Box<ServeArgs>),
    /// Manage users on a running node.
    User {
        #[command(subcommand)]
        command: UserCommand,
        /// The node's admin endpoint.
        #[arg(long, global = true, default_value = "127.0.0.1:8025")]
        admin: SocketAddr,
    },
    /// Show a running node's state.
    Status {
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = "127.0.0.1:8025")]
        admin: SocketAddr,
    },
}

#[derive(Subcommand, Debug)]
enum UserCommand {
    /// Add a user; the password is read from standard input.
    Add {
        email: String,
        #[arg(long)]
        password_stdin: bool,
    },
    /// Change a user's password (on every node); the new one is read from standard input.
    Passwd {
        email: String,
        #[arg(long)]
        password_stdin: bool,
    },
    /// Add users from a file of `EMAIL PASSWORD` lines (`#` starts a comment).
    Import { file: PathBuf },
    /// Add COUNT users PREFIX<n>@DOMAIN (n = 1..=COUNT) sharing one password.
    Bulk {
        #[arg(long)]
        count: u64,
        #[arg(long)]
        prefix: String,
        #[arg(long)]
        domain: String,
        #[arg(long)]
        password: String,
    },
    /// List users.
    List,
}

/// `--placement`: where new mail goes.
#[derive(clap::ValueEnum, Clone, Copy, Debug, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
enum PlacementArg {
    Static,
    Random,
    Dynamic,
}

/// `serve`'s flags; each may also come from the TOML file given by `--config` (flags win).
/// `--ack`: when a delivery is acknowledged.
#[derive(clap::ValueEnum, Clone, Copy, Debug, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
enum AckArg {
    All,
    Coordinator,
}

#[derive(clap::Args, Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ServeArgs {
    /// A TOML file with the same keys as these flags (e.g. `smtp = "127.0.0.1:2525"`).
    #[arg(long)]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Data directory; repeat for one per disk (each gets a shard per core). Default ./porcupine-data
    #[arg(long = "data")]
    #[serde(default)]
    data: Vec<PathBuf>,
    /// SMTP listen address [default: 127.0.0.1:2525]
    #[arg(long)]
    smtp: Option<SocketAddr>,
    /// POP3 listen address [default: 127.0.0.1:1110]
    #[arg(long)]
    pop3: Option<SocketAddr>,
    /// IMAP listen address (accepted; IMAP is not implemented yet)
    #[arg(long)]
    imap: Option<SocketAddr>,
    /// Admin HTTP address [default: 127.0.0.1:8025]
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// Cluster address: other nodes reach this one here [default: 127.0.0.1:7946]
    #[arg(long)]
    cluster: Option<SocketAddr>,
    /// Cluster addresses of nodes to join (comma-separated); a node that joins others creates
    /// no first user (it receives the cluster's users)
    #[arg(long, value_delimiter = ',')]
    #[serde(default)]
    join: Vec<SocketAddr>,
    /// A local mail domain; repeat for several [default: localhost]
    #[arg(long = "domain")]
    #[serde(default)]
    domain: Vec<String>,
    /// Nodes each message is stored on, capped by the live node count (with a warning)
    /// [default: 2; a lone node stores one copy]
    #[arg(long)]
    replicas: Option<u32>,
    /// When a delivery gets its 250: `all` (every chosen replica has the message durably) or
    /// `coordinator` (the first replica has it; the others follow) [default: all]
    #[arg(long)]
    ack: Option<AckArg>,
    /// Hours a replicated update waits for a replica that is down before it is dropped; a node
    /// down longer rejoins as a new node [default: 168 (a week)]
    #[arg(long)]
    log_retention_h: Option<u64>,
    /// Where new mail goes: `dynamic` (the least loaded of the user's fragment nodes, topped up
    /// at random to the spread), `static` (fixed nodes per user, by hash) or `random` (any
    /// nodes, per message). Every node of a cluster should use the same [default: dynamic]
    #[arg(long)]
    placement: Option<PlacementArg>,
    /// Dynamic placement: nodes a user's mailbox is spread over before more are added (only
    /// when every one of them is down, full or overloaded) [default: 2]
    #[arg(long)]
    spread: Option<usize>,
    /// Operations under way on a node's disks at which it counts as overloaded [default: 256]
    #[arg(long)]
    overload_ops: Option<u32>,
    /// Experiments: make a data directory behave as a slower disk, `DIR=IOPS:MBPS` (0 leaves
    /// that limit off), e.g. `--throttle /data/a=200:20`; repeat for several directories
    #[arg(long)]
    #[serde(default)]
    throttle: Vec<String>,
    /// Relative capacity of a data directory, `DIR=WEIGHT` (as `porcupine-tune` measures it):
    /// new users go to each directory in proportion to its weight [default: 1 each]; repeat
    #[arg(long)]
    #[serde(default)]
    disk_weight: Vec<String>,
    /// Executors, one per core [default: every core]
    #[arg(long)]
    cores: Option<usize>,
    /// The host name in the SMTP banner and Received headers [default: the first domain]
    #[arg(long)]
    hostname: Option<String>,
    /// Largest message in bytes [default: 33554432]
    #[arg(long)]
    message_bytes_max: Option<usize>,
    /// Recipients per message [default: 100]
    #[arg(long)]
    recipients_max: Option<usize>,
    /// Open SMTP+POP3 connections per node [default: 4096]
    #[arg(long)]
    connections_max: Option<usize>,
    /// Seconds an idle SMTP session is kept [default: 300]
    #[arg(long)]
    smtp_idle_s: Option<u64>,
    /// Milliseconds between membership pings to the ring successor [default: 50]
    #[arg(long)]
    ping_ms: Option<u64>,
    /// Milliseconds of silence after which the successor is suspected dead [default: 200]
    #[arg(long)]
    suspect_ms: Option<u64>,
    /// Segment file size in MiB [default: 128]
    #[arg(long)]
    segment_mib: Option<u64>,
    /// Microseconds a group commit waits for more appends before writing [default: 0: write
    /// as soon as the previous group is durable]
    #[arg(long)]
    commit_window_us: Option<u64>,
    /// Largest group-commit batch in KiB (`porcupine-tune` finds the batch that saturates a
    /// disk) [default: 1024]
    #[arg(long)]
    batch_kib: Option<usize>,
    /// Writes in flight while a segment is written out ahead of the log [default: 1]
    #[arg(long)]
    io_depth: Option<usize>,
    /// MiB of each shard's newest log kept in memory, so mail fetched soon after delivery
    /// needs no disk read (0: none) [default: 64]
    #[arg(long)]
    read_cache_mib: Option<usize>,
    /// Do not pin executors to cores
    #[arg(long)]
    #[serde(default)]
    no_pin: bool,
    /// Do not create a first user on an empty node
    #[arg(long)]
    #[serde(default)]
    no_first_user: bool,
    /// Experiment only: acknowledge deliveries without storing them (the paper's "infinitely
    /// fast disk"); every message is lost
    #[arg(long)]
    #[serde(default)]
    discard_bodies: bool,
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(*args),
        Command::User { command, admin } => user(command, admin),
        Command::Status { json, admin } => status(json, admin),
    };
    if let Err(error) = result {
        eprintln!("porcupine: {error:#}");
        std::process::exit(1);
    }
}

fn merge(flags: ServeArgs) -> Result<ServeArgs> {
    let Some(path) = &flags.config else {
        return Ok(flags);
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let file: ServeArgs =
        toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))?;
    Ok(ServeArgs {
        config: flags.config,
        data: if flags.data.is_empty() {
            file.data
        } else {
            flags.data
        },
        smtp: flags.smtp.or(file.smtp),
        pop3: flags.pop3.or(file.pop3),
        imap: flags.imap.or(file.imap),
        admin: flags.admin.or(file.admin),
        cluster: flags.cluster.or(file.cluster),
        join: if flags.join.is_empty() {
            file.join
        } else {
            flags.join
        },
        domain: if flags.domain.is_empty() {
            file.domain
        } else {
            flags.domain
        },
        replicas: flags.replicas.or(file.replicas),
        ack: flags.ack.or(file.ack),
        log_retention_h: flags.log_retention_h.or(file.log_retention_h),
        placement: flags.placement.or(file.placement),
        disk_weight: if flags.disk_weight.is_empty() {
            file.disk_weight
        } else {
            flags.disk_weight
        },
        spread: flags.spread.or(file.spread),
        overload_ops: flags.overload_ops.or(file.overload_ops),
        throttle: if flags.throttle.is_empty() {
            file.throttle
        } else {
            flags.throttle
        },
        cores: flags.cores.or(file.cores),
        hostname: flags.hostname.or(file.hostname),
        message_bytes_max: flags.message_bytes_max.or(file.message_bytes_max),
        recipients_max: flags.recipients_max.or(file.recipients_max),
        connections_max: flags.connections_max.or(file.connections_max),
        smtp_idle_s: flags.smtp_idle_s.or(file.smtp_idle_s),
        ping_ms: flags.ping_ms.or(file.ping_ms),
        suspect_ms: flags.suspect_ms.or(file.suspect_ms),
        segment_mib: flags.segment_mib.or(file.segment_mib),
        commit_window_us: flags.commit_window_us.or(file.commit_window_us),
        batch_kib: flags.batch_kib.or(file.batch_kib),
        io_depth: flags.io_depth.or(file.io_depth),
        read_cache_mib: flags.read_cache_mib.or(file.read_cache_mib),
        no_pin: flags.no_pin || file.no_pin,
        no_first_user: flags.no_first_user || file.no_first_user,
        discard_bodies: flags.discard_bodies || file.discard_bodies,
    })
}

fn serve(flags: ServeArgs) -> Result<()> {
    let args = merge(flags)?;
    let defaults = NodeConfig::default();
    let available = defaults.cores;
    let cores = args.cores.unwrap_or(available);
    if cores == 0 || cores > available {
        bail!("--cores must be between 1 and {available} on this machine (got {cores})");
    }
    if args.imap.is_some() {
        tracing::warn!("--imap is accepted but IMAP is not implemented yet");
    }
    let replicas = args.replicas.unwrap_or(defaults.replicas as u32) as usize;
    if replicas == 0 || replicas > porcupine_engine::record::REPLICAS_MAX {
        bail!(
            "--replicas must be between 1 and {} (got {replicas})",
            porcupine_engine::record::REPLICAS_MAX
        );
    }
    let retention_h = args.log_retention_h.unwrap_or(7 * 24);
    if retention_h == 0 {
        bail!("--log-retention-h must be at least 1");
    }
    let spread = args.spread.unwrap_or(2);
    if spread == 0 || spread > 64 {
        bail!("--spread must be between 1 and 64 (got {spread})");
    }
    let placement = match args.placement.unwrap_or(PlacementArg::Dynamic) {
        PlacementArg::Static => PlacementPolicy::Static,
        PlacementArg::Random => PlacementPolicy::Random,
        PlacementArg::Dynamic => PlacementPolicy::Dynamic { spread },
    };
    if args.spread.is_some() && !matches!(placement, PlacementPolicy::Dynamic { .. }) {
        tracing::warn!("--spread applies to --placement dynamic only; ignored");
    }
    let overload_ops = args.overload_ops.unwrap_or(defaults.overload_ops);
    if overload_ops == 0 {
        bail!("--overload-ops must be at least 1");
    }
    let throttles = args
        .throttle
        .iter()
        .map(|spec| parse_throttle(spec))
        .collect::<Result<Vec<_>>>()?;
    let disk_weights = args
        .disk_weight
        .iter()
        .map(|spec| parse_weight(spec))
        .collect::<Result<Vec<_>>>()?;
    let domains: Vec<String> = if args.domain.is_empty() {
        defaults.domains.clone()
    } else {
        args.domain.iter().map(|d| d.to_lowercase()).collect()
    };
    let mut config = NodeConfig {
        data_dirs: if args.data.is_empty() {
            defaults.data_dirs.clone()
        } else {
            args.data.clone()
        },
        cores,
        pin: !args.no_pin,
        smtp: args.smtp.unwrap_or(defaults.smtp),
        pop3: args.pop3.unwrap_or(defaults.pop3),
        admin: args.admin.unwrap_or(defaults.admin),
        cluster: args.cluster.unwrap_or(defaults.cluster),
        join: args.join.clone(),
        hostname: args.hostname.clone().unwrap_or_else(|| domains[0].clone()),
        domains,
        // A node joining others gets its users from the cluster.
        first_user: !args.no_first_user
            && args
                .join
                .iter()
                .all(|seed| Some(*seed) == args.cluster.or(Some(defaults.cluster))),
        discard_bodies: args.discard_bodies,
        replicas,
        ack_policy: match args.ack.unwrap_or(AckArg::All) {
            AckArg::All => AckPolicy::AllReplicas,
            AckArg::Coordinator => AckPolicy::Coordinator,
        },
        replication: porcupine_cluster::replication::Settings {
            retention_ms: retention_h.saturating_mul(3600 * 1000),
            ..defaults.replication
        },
        placement,
        overload_ops,
        throttles,
        disk_weights,
        ..defaults
    };
    if config.discard_bodies {
        tracing::warn!(
            "--discard-bodies: deliveries are acknowledged and NOT stored (experiment mode)"
        );
    }
    if let Some(bytes) = args.message_bytes_max {
        config.smtp_limits.message_bytes_max = bytes;
    }
    if let Some(n) = args.recipients_max {
        if n < 100 {
            bail!("--recipients-max must be at least 100 (RFC 5321 §4.5.3.1.8)");
        }
        config.smtp_limits.recipients_max = n;
    }
    if let Some(n) = args.connections_max {
        config.connections_max = n;
    }
    if let Some(ms) = args.ping_ms {
        if ms == 0 {
            bail!("--ping-ms must be at least 1");
        }
        config.membership.ping_interval_ms = ms;
    }
    if let Some(ms) = args.suspect_ms {
        if ms <= config.membership.ping_interval_ms {
            bail!("--suspect-ms must exceed --ping-ms");
        }
        config.membership.suspect_after_ms = ms;
    }
    if let Some(s) = args.smtp_idle_s {
        config.smtp_idle_timeout = Duration::from_secs(s);
    }
    if let Some(mib) = args.segment_mib {
        config.engine.segment_bytes = mib << 20;
    }
    if let Some(us) = args.commit_window_us {
        config.engine.commit_window = Duration::from_micros(us);
    }
    if let Some(kib) = args.batch_kib {
        if !(4..=65536).contains(&kib) {
            bail!("--batch-kib must be between 4 and 65536 (got {kib})");
        }
        config.engine.batch_bytes_max = kib << 10;
        config.engine.queue_bytes_max = config.engine.queue_bytes_max.max(4 * (kib << 10));
    }
    if let Some(mib) = args.read_cache_mib {
        if mib > 65536 {
            bail!("--read-cache-mib must be at most 65536 (got {mib})");
        }
        config.engine.read_cache_bytes = mib << 20;
    }
    if let Some(depth) = args.io_depth {
        if !(1..=64).contains(&depth) {
            bail!("--io-depth must be between 1 and 64 (got {depth})");
        }
        config.engine.io_depth = depth;
    }
    // A stored message is the client's bytes plus the Received header the node prepends.
    config.engine.record_bytes_max = config.smtp_limits.message_bytes_max + (64 << 10);
    if config.engine.validate().is_err() {
        bail!(
            "--segment-mib ({} MiB) must hold the largest message (--message-bytes-max {} bytes) plus 1 MiB",
            config.engine.segment_bytes >> 20,
            config.smtp_limits.message_bytes_max
        );
    }
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .context("cannot install signal handlers")?;
    let handle = node::start(config.clone())?;
    if let Some((email, password)) = &handle.first_user {
        println!("created the first user: {email} with password {password}");
    }
    // The addresses bound (a port 0 in the configuration is the port the kernel chose).
    let bound = &handle.context().config;
    println!(
        "porcupine is serving on {} cores: SMTP {}, POP3 {}, admin http://{}, cluster {} (domains: {})",
        bound.cores,
        bound.smtp,
        bound.pop3,
        bound.admin,
        bound.cluster,
        bound.domains.join(", ")
    );
    use std::io::Write;
    let _ = std::io::stdout().flush();
    if let Some(signal) = signals.forever().next() {
        tracing::info!(
            signal,
            "stopping: closing listeners, finishing sessions, flushing"
        );
    }
    handle.stop()?;
    tracing::info!("stopped cleanly");
    Ok(())
}

/// `DIR=WEIGHT` → the directory and its weight (a positive number).
fn parse_weight(spec: &str) -> Result<(PathBuf, f64)> {
    let usage = || format!("--disk-weight {spec:?}: expected DIR=WEIGHT, e.g. /data/a=2.5");
    let (dir, weight) = spec.rsplit_once('=').with_context(usage)?;
    let weight: f64 = weight.trim().parse().with_context(usage)?;
    if dir.is_empty() || !weight.is_finite() || weight <= 0.0 {
        bail!(usage());
    }
    Ok((PathBuf::from(dir), weight))
}

/// `DIR=IOPS:MBPS` → the directory and its simulated disk (0 turns a limit off).
fn parse_throttle(spec: &str) -> Result<(PathBuf, ThrottleLimits)> {
    let usage = || format!("--throttle {spec:?}: expected DIR=IOPS:MBPS, e.g. /data/a=200:20");
    let (dir, limits) = spec.rsplit_once('=').with_context(usage)?;
    let (iops, mbps) = limits.split_once(':').with_context(usage)?;
    let iops: u32 = iops.trim().parse().with_context(usage)?;
    let mbps: f64 = mbps.trim().parse().with_context(usage)?;
    if dir.is_empty() || !mbps.is_finite() || mbps < 0.0 {
        bail!(usage());
    }
    Ok((
        PathBuf::from(dir),
        ThrottleLimits {
            iops: (iops > 0).then_some(iops),
            bytes_per_s: (mbps > 0.0).then_some((mbps * 1e6) as u64),
        },
    ))
}

/// The password given on standard input (never on a command line).
fn password_from_stdin(password_stdin: bool) -> Result<String> {
    if !password_stdin {
        bail!("give the password on standard input with --password-stdin (it never goes on a command line)");
    }
    let mut password = String::new();
    std::io::stdin()
        .read_to_string(&mut password)
        .context("reading the password from standard input")?;
    let password = password.trim_end_matches(['\r', '\n']).to_owned();
    if password.is_empty() {
        bail!("empty password on standard input");
    }
    Ok(password)
}

fn user(command: UserCommand, admin: SocketAddr) -> Result<()> {
    let long = Duration::from_secs(3600);
    let (status, body) = match command {
        UserCommand::Add {
            email,
            password_stdin,
        } => {
            let password = password_from_stdin(password_stdin)?;
            admin_client::request(
                admin,
                "POST",
                "/users",
                format!("{email}\n{password}").as_bytes(),
                long,
            )?
        }
        UserCommand::Passwd {
            email,
            password_stdin,
        } => {
            let password = password_from_stdin(password_stdin)?;
            admin_client::request(
                admin,
                "POST",
                "/users/password",
                format!("{email}\n{password}").as_bytes(),
                long,
            )?
        }
        UserCommand::Import { file } => {
            let body =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            admin_client::request(admin, "POST", "/users/import", &body, long)?
        }
        UserCommand::Bulk {
            count,
            prefix,
            domain,
            password,
        } => {
            let body = serde_json::json!({ "count": count, "prefix": prefix, "domain": domain, "password": password });
            admin_client::request(
                admin,
                "POST",
                "/users/bulk",
                body.to_string().as_bytes(),
                long,
            )?
        }
        UserCommand::List => admin_client::request(admin, "GET", "/users", b"", long)?,
    };
    print!("{body}");
    if !body.ends_with('\n') && !body.is_empty() {
        println!();
    }
    if !(200..300).contains(&status) {
        bail!("the node answered {status}");
    }
    Ok(())
}

fn status(json: bool, admin: SocketAddr) -> Result<()> {
    let (code, body) =
        admin_client::request(admin, "GET", "/status", b"", Duration::from_secs(30))?;
    if code != 200 {
        bail!("the node answered {code}: {body}");
    }
    if json {
        println!("{body}");
        return Ok(());
    }
    let v: serde_json::Value =
        serde_json::from_str(&body).context("the node's status is not JSON")?;
    let node = &v["node"];
    println!(
        "node {} (porcupine {}), {} cores, up {} s",
        node["hostname"].as_str().unwrap_or("?"),
        node["version"].as_str().unwrap_or("?"),
        node["cores"],
        node["uptime_s"]
    );
    println!(
        "SMTP {}  POP3 {}  admin {}",
        node["smtp"].as_str().unwrap_or("?"),
        node["pop3"].as_str().unwrap_or("?"),
        node["admin"].as_str().unwrap_or("?")
    );
    println!("domains: {}", node["domains"]);
    println!("users: {}  messages: {}", v["users"], v["messages"]);
    println!(
        "node id {}, epoch {} (coordinator {}), {} of {} buckets managed here",
        v["node_id"],
        v["epoch"]["clock"],
        v["epoch"]["coordinator"],
        v["buckets"]["owned"],
        v["buckets"]["total"]
    );
    let members = v["members"].as_array().cloned().unwrap_or_default();
    println!("members: {}", members.len());
    for member in &members {
        println!(
            "  {} {} load {}{}",
            member["id"],
            member["address"].as_str().unwrap_or("?"),
            member["load"],
            if member["self"] == true {
                "  (this node)"
            } else {
                ""
            }
        );
    }
    for shard in v["shards"].as_array().into_iter().flatten() {
        println!(
            "  {} core {} {}: {} messages, {} users, {} segments, {} fsyncs, ack p99 {} µs{}",
            shard["name"].as_str().unwrap_or("?"),
            shard["core"],
            shard["dir"].as_str().unwrap_or("?"),
            shard["messages"],
            shard["users"],
            shard["segments"],
            shard["fsyncs"],
            shard["ack_p99_us"],
            if shard["poisoned"].is_null() {
                String::new()
            } else {
                format!("  POISONED: {}", shard["poisoned"])
            }
        );
    }
    Ok(())
}
