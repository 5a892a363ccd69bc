//! `porcupine`: the mail node (`serve`) and its administration (`user`, `status`, `import`,
//! `export`, `fsck`, `cluster-key`).

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use porcupine_cluster::node::replicas::AckPolicy;
use porcupine_cluster::node::{self, NodeConfig};
use porcupine_cluster::placement::PlacementPolicy;
use porcupine_cluster::secure::{ClusterKey, ClusterSecurity};
use porcupine_engine::ThrottleLimits;
use porcupine_tools::admin_client;
use porcupine_tools::serve_config::{merge, AckArg, PlacementArg, ServeArgs};
use porcupine_tools::service_manager;

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
    /// Log lines as text, or as one JSON object per line (for journald or a log shipper);
    /// also $PORCUPINE_LOG_FORMAT. The filter is $RUST_LOG (default: info)
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

/// Logs to standard error in the format asked for (the flag, else $PORCUPINE_LOG_FORMAT).
fn init_logging(flag: Option<LogFormat>) -> Result<()> {
    use clap::ValueEnum;
    let format = match (flag, std::env::var("PORCUPINE_LOG_FORMAT")) {
        (Some(format), _) => format,
        (None, Ok(text)) => LogFormat::from_str(&text, true)
            .map_err(|_| anyhow::anyhow!("PORCUPINE_LOG_FORMAT={text:?}: expected text or json"))?,
        (None, Err(_)) => LogFormat::Text,
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
    Ok(())
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a node: SMTP, LMTP, POP3, IMAP and the admin endpoint, on every core, until
    /// SIGTERM/SIGINT.
    Serve(Box<ServeArgs>),
    /// Manage users on a running node.
    User {
        #[command(subcommand)]
        command: UserCommand,
        #[command(flatten)]
        access: AdminAccess,
    },
    /// Create a cluster key in FILE (mode 0600; never over an existing file): copy it to
    /// every node of the cluster and start each with `--cluster-key FILE`.
    ClusterKey { file: PathBuf },
    /// Check a stopped node's data directories offline: every record's checksum, the index
    /// checkpoint against the log. Writes nothing; exit status 0 clean, 1 problems found.
    Fsck {
        /// The data directories (as given to `serve --data`)
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        /// The report as JSON
        #[arg(long)]
        json: bool,
    },
    /// Bring a user's mail in from a Maildir (Maildir++ folders, Dovecot's flags and
    /// keywords) or an mbox, through a running node; a second run stores nothing twice.
    Import {
        #[command(subcommand)]
        what: ImportCommand,
        #[command(flatten)]
        access: AdminAccess,
    },
    /// Take a user's mail out as a Maildir (folders as Maildir++, flags in the file names)
    /// that Dovecot can serve; a second run writes only what is new.
    Export {
        #[command(subcommand)]
        what: ExportCommand,
        #[command(flatten)]
        access: AdminAccess,
    },
    /// Show a running node's state.
    Status {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        access: AdminAccess,
    },
}

#[derive(Subcommand, Debug)]
enum ImportCommand {
    /// A Maildir: its cur/ and new/ are INBOX, each .Folder.Sub/ is Folder/Sub.
    Maildir {
        dir: PathBuf,
        #[arg(long)]
        user: String,
    },
    /// An mbox file (mboxrd), into one folder.
    Mbox {
        file: PathBuf,
        #[arg(long)]
        user: String,
        #[arg(long, default_value = "INBOX")]
        folder: String,
    },
}

#[derive(Subcommand, Debug)]
enum ExportCommand {
    /// Into DIR (made if missing): INBOX in DIR, each folder in DIR/.Folder.Sub.
    Maildir {
        #[arg(long)]
        user: String,
        dir: PathBuf,
    },
}

/// How the CLI reaches a node's admin endpoint.
#[derive(clap::Args, Debug)]
struct AdminAccess {
    /// The node's admin endpoint.
    #[arg(long, global = true, default_value = "127.0.0.1:8025")]
    admin: SocketAddr,
    /// The file holding the node's admin token [default: $PORCUPINE_ADMIN_TOKEN, else
    /// admin.token in --data]
    #[arg(long, global = true)]
    admin_token_file: Option<PathBuf>,
    /// The node's (first) data directory, where its admin.token is.
    #[arg(long, global = true, default_value = "./porcupine-data")]
    data: PathBuf,
    /// Speak HTTPS to the admin endpoint (one started with --admin-public), trusting this
    /// certificate (PEM; the node's self-signed one is <data>/tls/cert.pem)
    #[arg(long, global = true)]
    admin_ca: Option<PathBuf>,
}

impl AdminAccess {
    fn admin(&self) -> Result<admin_client::AdminClient> {
        admin_client::connect(
            self.admin,
            self.admin_token_file.as_deref(),
            &self.data,
            self.admin_ca.as_deref(),
        )
    }
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
    /// Add COUNT users PREFIX<n>@DOMAIN (n = 1..=COUNT, at most 10,000,000) sharing one
    /// password, read from standard input (or given with --password, visible to `ps`).
    Bulk {
        #[arg(long)]
        count: u64,
        #[arg(long)]
        prefix: String,
        #[arg(long)]
        domain: String,
        #[arg(long)]
        password_stdin: bool,
        #[arg(long, conflicts_with = "password_stdin")]
        password: Option<String>,
    },
    /// List users.
    List,
    /// Delete a user on every node: the address is refused from then on, the password no
    /// longer logs in, every message and folder is removed (tombstones on every copy).
    Delete { email: String },
    /// Show a user's quota and what they use; with --storage or --messages, set their own
    /// limits first (a number, `none` for no limit, or `default` for the node's default).
    Quota {
        email: String,
        /// Storage limit: bytes, or with K, M, G or T (powers of 1024), `none` or `default`
        #[arg(long)]
        storage: Option<String>,
        /// Message-count limit: a number, `none` or `default`
        #[arg(long)]
        messages: Option<String>,
        /// The report as JSON
        #[arg(long)]
        json: bool,
    },
    /// Show a user's folders (messages, unseen, bytes), quota, and the nodes holding the copies.
    Show {
        email: String,
        /// The report as JSON
        #[arg(long)]
        json: bool,
    },
}

fn main() {
    let cli = Cli::parse();
    if let Err(error) = init_logging(cli.log_format) {
        eprintln!("porcupine: {error:#}");
        std::process::exit(2);
    }
    let result = match cli.command {
        Command::Serve(args) => serve(*args),
        Command::User { command, access } => user(command, &access),
        Command::ClusterKey { file } => cluster_key(&file),
        Command::Status { json, access } => status(json, &access),
        Command::Import { what, access } => migrate_import(what, &access),
        Command::Export { what, access } => migrate_export(what, &access),
        // 0 clean, 1 problems found, 2 could not check (as e2fsck tells them apart).
        Command::Fsck { dirs, json } => match porcupine_tools::fsck::run(&dirs, json) {
            Ok(code) => std::process::exit(code),
            Err(error) => {
                eprintln!("porcupine fsck: {error:#}");
                std::process::exit(2);
            }
        },
    };
    if let Err(error) = result {
        eprintln!("porcupine: {error:#}");
        std::process::exit(1);
    }
}

/// A panic kills the thread it happens on, and glommio lets it: the core's sessions and
/// shards would be gone while the other cores run on, half a node. So the first panic, on any
/// thread, says where it happened and ends the process, with status 70 (EX_SOFTWARE), for a
/// supervisor to restart it (the systemd unit does).
fn exit_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        tracing::error!(%info, "a thread panicked: stopping the node (its supervisor restarts it)");
        eprintln!("porcupine: a thread panicked; the node stops rather than run with a core gone");
        std::process::exit(70);
    }));
}

/// `PORCUPINE_FAULT` (tests only): `panic-core:N`, a task on core N panics once serving;
/// `stall-core:N`, a task on core N blocks its thread for good once serving;
/// `eio:DIR:TRIGGER`, every write and sync of data directory DIR fails with EIO while the
/// file TRIGGER exists.
fn fault_from_env() -> Result<Option<node::Fault>> {
    let Ok(spec) = std::env::var("PORCUPINE_FAULT") else {
        return Ok(None);
    };
    if let Some(rest) = spec.strip_prefix("eio:") {
        let (dir, trigger) = rest
            .split_once(':')
            .with_context(|| format!("PORCUPINE_FAULT={spec:?}: expected eio:DIR:TRIGGER"))?;
        tracing::warn!(
            dir,
            trigger,
            "fault injection: EIO on a data directory while the trigger exists"
        );
        return Ok(Some(node::Fault::EioWhile {
            dir: dir.into(),
            trigger: trigger.into(),
        }));
    }
    if let Some(core) = spec.strip_prefix("stall-core:") {
        let core = core
            .parse()
            .with_context(|| format!("PORCUPINE_FAULT={spec:?}: expected stall-core:N"))?;
        tracing::warn!(core, "fault injection: this core will stop answering");
        return Ok(Some(node::Fault::StallCore(core)));
    }
    let core = spec
        .strip_prefix("panic-core:")
        .and_then(|n| n.parse().ok())
        .with_context(|| {
            format!(
                "PORCUPINE_FAULT={spec:?}: expected panic-core:N, stall-core:N or eio:DIR:TRIGGER"
            )
        })?;
    tracing::warn!(core, "fault injection: a task on this core will panic");
    Ok(Some(node::Fault::PanicOnCore(core)))
}

/// The per-address limits from the flags.
fn abuse_settings(args: &ServeArgs) -> Result<porcupine_cluster::abuse::AbuseSettings> {
    use porcupine_cluster::abuse::{AbuseSettings, Cidr};
    let defaults = AbuseSettings::default();
    let rate = args
        .connection_rate_per_ip
        .unwrap_or(defaults.connection_rate_per_ip);
    if !(rate.is_finite() && rate > 0.0) {
        bail!("--connection-rate-per-ip must be a positive number (got {rate})");
    }
    let exempt = match args.limits_exempt.as_slice() {
        [] => defaults.exempt,
        [none] if none == "none" => Vec::new(),
        ranges => ranges
            .iter()
            .map(|r| {
                Cidr::parse(r.trim())
                    .with_context(|| format!("--limits-exempt {r:?}: expected ADDR/BITS"))
            })
            .collect::<Result<_>>()?,
    };
    let per_ip = args
        .connections_per_ip
        .unwrap_or(defaults.connections_per_ip);
    if per_ip == 0 {
        bail!("--connections-per-ip must be at least 1");
    }
    Ok(AbuseSettings {
        connections_per_ip: per_ip,
        connection_rate_per_ip: rate,
        connection_burst_per_ip: rate * 2.0,
        exempt,
    })
}

/// `porcupine cluster-key FILE`.
fn cluster_key(file: &std::path::Path) -> Result<()> {
    ClusterKey::generate().write_new(file)?;
    println!(
        "wrote a new cluster key to {} (mode 0600): copy it to every node of the cluster \
         and start each with --cluster-key {0}",
        file.display()
    );
    Ok(())
}

/// The cluster key, or the plaintext measurement mode; a node that talks to others needs one.
fn cluster_security(args: &ServeArgs) -> Result<ClusterSecurity> {
    if args.cluster.is_none() && !args.join.is_empty() {
        bail!("--join needs --cluster ADDR: the address where the other nodes reach this one");
    }
    let clustered = args.cluster.is_some();
    match (&args.cluster_key, args.insecure_plaintext_cluster) {
        (Some(_), true) => bail!("give --cluster-key or --insecure-plaintext-cluster, not both"),
        (Some(path), false) => Ok(ClusterSecurity::Key(ClusterKey::read(path)?)),
        (None, true) => Ok(ClusterSecurity::Plaintext),
        (None, false) if clustered => bail!(
            "a node in a cluster needs the cluster key: create one with `porcupine cluster-key \
             FILE`, copy it to every node, and start each with --cluster-key FILE"
        ),
        // A lone node dials and admits no other node.
        (None, false) => Ok(ClusterSecurity::Plaintext),
    }
}

fn serve(flags: ServeArgs) -> Result<()> {
    let mut config = node_config(merge(flags.clone())?)?;
    config.fault = fault_from_env()?;
    exit_on_panic();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ])
    .context("cannot install signal handlers")?;
    let handle = node::start(config.clone())?;
    if let Some((email, password)) = &handle.first_user {
        println!("created the first user: {email} with password {password}");
    }
    // The addresses bound (a port 0 in the configuration is the port the kernel chose).
    let bound = &handle.context().config;
    println!(
        "porcupine is serving on {} cores: SMTP {}, POP3 {}, POP3S {}, IMAP {}, IMAPS {}, LMTP {}, admin http://{}, cluster {} (domains: {})",
        bound.cores,
        bound.smtp,
        bound.pop3,
        bound.pop3s.map_or_else(|| "none".to_owned(), |a| a.to_string()),
        bound.imap,
        bound.imaps.map_or_else(|| "none".to_owned(), |a| a.to_string()),
        bound.lmtp.map_or_else(|| "none".to_owned(), |a| a.to_string()),
        bound.admin,
        bound
            .cluster
            .map_or_else(|| "none (a lone node)".to_owned(), |a| a.to_string()),
        bound.domains.join(", ")
    );
    use std::io::Write;
    let _ = std::io::stdout().flush();
    service_manager::ready(&format!(
        "serving SMTP {}, IMAP {} on {} cores",
        bound.smtp, bound.imap, bound.cores
    ));
    service_manager::start_watchdog(handle.context().router.clone());
    for signal in signals.forever() {
        if signal == signal_hook::consts::SIGHUP {
            service_manager::reloading();
            reload(&handle, &flags, &mut config);
            service_manager::reloaded();
            continue;
        }
        tracing::info!(
            signal,
            "stopping: closing listeners, finishing sessions, flushing"
        );
        break;
    }
    service_manager::stopping();
    handle.stop()?;
    tracing::info!("stopped cleanly");
    Ok(())
}

/// SIGHUP: the TLS certificate is read again, and so is the config file, whose settings that
/// can change live take effect (the flags given at start still win); a changed setting that
/// needs a restart is named in the log and left as it is.
fn reload(handle: &node::NodeHandle, flags: &ServeArgs, config: &mut NodeConfig) {
    // New handshakes take the new certificate; sessions in TLS keep theirs.
    match handle.reload_tls() {
        Ok(()) => {
            tracing::info!(cert = %handle.context().tls.files().cert.display(), "TLS certificate reloaded")
        }
        Err(error) => tracing::error!(%error, "TLS reload failed; the certificate in use stays"),
    }
    let fresh = match merge(flags.clone()).and_then(node_config) {
        Ok(fresh) => fresh,
        Err(error) => {
            tracing::error!(error = %format!("{error:#}"), "the configuration was not reloaded; the settings in use stay");
            return;
        }
    };
    let reloaded = handle.reload_settings(config, &fresh);
    if !reloaded.restart_needed.is_empty() {
        tracing::warn!(
            settings = %reloaded.restart_needed.join(", "),
            "changed settings that take effect only at a restart; the values in use stay"
        );
    }
    if reloaded.changed.is_empty() {
        tracing::info!("configuration reloaded: no live setting changed");
    } else {
        tracing::info!(settings = %reloaded.changed.join(", "), "configuration reloaded");
    }
    // What later reloads compare with: the settings now in force.
    config.apply_live(&fresh);
}

/// The node's configuration from the flags merged with the config file.
fn node_config(args: ServeArgs) -> Result<NodeConfig> {
    let defaults = NodeConfig::default();
    let available = defaults.cores;
    let cores = args.cores.unwrap_or(available);
    if cores == 0 || cores > available {
        bail!("--cores must be between 1 and {available} on this machine (got {cores})");
    }
    // Ranges and the rules between settings are the node's (`NodeConfig::validate`), checked
    // below once the flags are in.
    let replicas = args.replicas.unwrap_or(defaults.replicas as u32) as usize;
    let retention_h = args.log_retention_h.unwrap_or(7 * 24);
    let spread = args.spread.unwrap_or(2);
    let placement = match args.placement.unwrap_or(PlacementArg::Dynamic) {
        PlacementArg::Static => PlacementPolicy::Static,
        PlacementArg::Random => PlacementPolicy::Random,
        PlacementArg::Dynamic => PlacementPolicy::Dynamic { spread },
    };
    if args.spread.is_some() && !matches!(placement, PlacementPolicy::Dynamic { .. }) {
        tracing::warn!("--spread applies to --placement dynamic only; ignored");
    }
    let overload_ops = args.overload_ops.unwrap_or(defaults.overload_ops);
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
        cluster: args.cluster,
        cluster_security: cluster_security(&args)?,
        admin_token_file: args.admin_token_file.clone(),
        pop3s: if args.no_pop3s {
            None
        } else {
            args.pop3s.or(defaults.pop3s)
        },
        imap: args.imap.unwrap_or(defaults.imap),
        imaps: if args.no_imaps {
            None
        } else {
            args.imaps.or(defaults.imaps)
        },
        lmtp: if args.no_lmtp {
            None
        } else {
            args.lmtp.or(defaults.lmtp)
        },
        tls_files: match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => Some(node::tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
            (None, None) => None,
            _ => bail!("give both --tls-cert and --tls-key"),
        },
        allow_plaintext_auth: args.allow_plaintext_auth,
        admin_public: args.admin_public,
        abuse: abuse_settings(&args)?,
        write_timeout: Duration::from_secs(args.write_timeout_s.unwrap_or(60).max(1)),
        transfer_bytes_max: match args.transfer_memory_mib {
            Some(0) => bail!("--transfer-memory-mib must be at least 1"),
            Some(mib) => mib.saturating_mul(1 << 20),
            None => defaults.transfer_bytes_max,
        },
        join: args.join.clone(),
        hostname: args.hostname.clone().unwrap_or_else(|| domains[0].clone()),
        domains,
        // A node joining others gets its users from the cluster.
        first_user: !args.no_first_user && args.join.iter().all(|seed| Some(*seed) == args.cluster),
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
    if let Some(lmtp) = config.lmtp.filter(|a| !a.ip().is_loopback()) {
        tracing::warn!(
            %lmtp,
            "LMTP listens off loopback: it asks for no credentials, so anyone who reaches it \
             can deliver to local users; firewall it to the MTA's address"
        );
    }
    if config.discard_bodies {
        tracing::warn!(
            "--discard-bodies: deliveries are acknowledged and NOT stored (experiment mode)"
        );
    }
    if let Some(bytes) = args.message_bytes_max {
        config.smtp_limits.message_bytes_max = bytes;
    }
    {
        use porcupine_cluster::node::quota::{parse_bytes, parse_count, Setting};
        let limit =
            |text: &Option<String>, flag: &str, parse: fn(&str) -> Result<u64, String>| match text
                .as_deref()
                .map(|t| Setting::parse(t, parse))
            {
                None => Ok(None),
                Some(Ok(Setting::Limit(n))) => Ok(Some(n)),
                Some(Ok(_)) => Ok(None),
                Some(Err(e)) => Err(anyhow::anyhow!("--{flag}: {e}")),
            };
        config.quota.storage = limit(&args.quota_storage, "quota-storage", parse_bytes)?;
        config.quota.messages = limit(&args.quota_messages, "quota-messages", parse_count)?;
    }
    if let Some(n) = args.recipients_max {
        config.smtp_limits.recipients_max = n;
    }
    if let Some(n) = args.connections_max {
        config.connections_max = n;
    }
    if let Some(ms) = args.ping_ms {
        config.membership.ping_interval_ms = ms;
    }
    if let Some(ms) = args.suspect_ms {
        config.membership.suspect_after_ms = ms;
    }
    if let Some(text) = &args.dead_after {
        let dead_after = porcupine_tools::duration::parse_duration(text)
            .map_err(|e| anyhow::anyhow!("--dead-after: {e}"))?;
        config.membership.dead_after_ms = dead_after.as_millis().min(u128::from(u64::MAX)) as u64;
    }
    if let Some(rate) = args.heal_rate {
        config.heal_rate = rate;
    }
    if let Some(seconds) = args.anti_entropy_s {
        config.anti_entropy_s = seconds;
    }
    if let Some(s) = args.smtp_idle_s {
        config.smtp_idle_timeout = Duration::from_secs(s);
    }
    if let Some(mib) = args.segment_mib {
        // Saturates, so an absurd value reaches validate() as too large, not wrapped around.
        config.engine.segment_bytes = mib.saturating_mul(1 << 20);
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
    config.derive();
    config.validate()?;
    Ok(config)
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

fn user(command: UserCommand, access: &AdminAccess) -> Result<()> {
    // A bulk import of many users takes its time.
    let admin = access.admin()?.with_timeout(Duration::from_secs(3600));
    let admin_client::Response { status, body } = match command {
        UserCommand::Add {
            email,
            password_stdin,
        } => {
            let password = password_from_stdin(password_stdin)?;
            admin.request("POST", "/users", format!("{email}\n{password}").as_bytes())?
        }
        UserCommand::Passwd {
            email,
            password_stdin,
        } => {
            let password = password_from_stdin(password_stdin)?;
            admin.request(
                "POST",
                "/users/password",
                format!("{email}\n{password}").as_bytes(),
            )?
        }
        UserCommand::Import { file } => {
            let body =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            admin.request("POST", "/users/import", &body)?
        }
        UserCommand::Bulk {
            count,
            prefix,
            domain,
            password_stdin,
            password,
        } => {
            let password = match password {
                Some(password) => password,
                None if password_stdin => password_from_stdin(true)?,
                None => bail!("give the users' password with --password-stdin (or --password)"),
            };
            let body = serde_json::json!({ "count": count, "prefix": prefix, "domain": domain, "password": password });
            admin.request("POST", "/users/bulk", body.to_string().as_bytes())?
        }
        UserCommand::List => admin.request("GET", "/users", b"")?,
        UserCommand::Delete { email } => {
            let response = admin.request("POST", "/users/delete", email.as_bytes())?;
            if response.status == 200 {
                let removal: porcupine_cluster::node::user_removal::Removal =
                    serde_json::from_str(&response.body)
                        .with_context(|| format!("unexpected answer: {}", response.body))?;
                println!(
                    "deleted {}: {} messages removed{}",
                    removal.user,
                    removal.messages,
                    if removal.profile_removed {
                        ""
                    } else {
                        " (the user was deleted before; this run finished removing the mail)"
                    }
                );
                return Ok(());
            }
            response
        }
        UserCommand::Quota {
            email,
            storage,
            messages,
            json,
        } => {
            let mut settings = Vec::new();
            if let Some(storage) = storage {
                settings.push(format!("storage={storage}"));
            }
            if let Some(messages) = messages {
                settings.push(format!("messages={messages}"));
            }
            let body = format!("{email}\n{}", settings.join(" "));
            let response = admin.request("POST", "/users/quota", body.as_bytes())?;
            if response.status == 200 && !json {
                return print_quota(&response.body);
            }
            response
        }
        UserCommand::Show { email, json } => {
            let response = admin.request("POST", "/users/show", email.as_bytes())?;
            if response.status == 200 && !json {
                return print_usage(&response.body);
            }
            response
        }
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

fn migrate_import(what: ImportCommand, access: &AdminAccess) -> Result<()> {
    use porcupine_tools::migrate;
    let admin = access.admin()?.with_timeout(Duration::from_secs(600));
    let summary = match what {
        ImportCommand::Maildir { dir, user } => {
            migrate::import_maildir(&admin, &dir, &user.to_lowercase())?
        }
        ImportCommand::Mbox { file, user, folder } => {
            migrate::import_mbox(&admin, &file, &user.to_lowercase(), &folder)?
        }
    };
    println!("{}", summary.line("imported"));
    if summary.failed > 0 {
        bail!(
            "{} messages were not imported (see above); run again to retry them",
            summary.failed
        );
    }
    Ok(())
}

fn migrate_export(what: ExportCommand, access: &AdminAccess) -> Result<()> {
    let admin = access.admin()?.with_timeout(Duration::from_secs(600));
    let ExportCommand::Maildir { user, dir } = what;
    let summary = porcupine_tools::migrate::export_maildir(&admin, &user.to_lowercase(), &dir)?;
    println!("{}", summary.line("exported"));
    if summary.failed > 0 {
        bail!(
            "{} messages were not exported (see above); run again to retry them",
            summary.failed
        );
    }
    Ok(())
}

/// A limit and how much of it is used, for people.
fn of_limit(used: u64, limit: Option<u64>) -> String {
    match limit {
        Some(limit) => {
            let percent = if limit == 0 {
                100.0
            } else {
                used as f64 * 100.0 / limit as f64
            };
            format!("{used} of {limit} ({percent:.1}%)")
        }
        None => format!("{used} (no limit)"),
    }
}

/// `user quota` for people.
fn print_quota(body: &str) -> Result<()> {
    use porcupine_cluster::node::quota::{QuotaReport, Setting};
    let report: QuotaReport =
        serde_json::from_str(body).with_context(|| format!("unexpected answer: {body}"))?;
    let whose = |setting: Setting| match setting {
        Setting::Default => "the node's default",
        Setting::Unlimited | Setting::Limit(_) => "the user's own",
    };
    println!("{}", report.user);
    println!(
        "  storage (bytes): {}  [{}]",
        of_limit(report.usage.bytes, report.limits.storage),
        whose(report.own.storage)
    );
    println!(
        "  messages:        {}  [{}]",
        of_limit(report.usage.messages, report.limits.messages),
        whose(report.own.messages)
    );
    Ok(())
}

/// `user show` as a table.
fn print_usage(body: &str) -> Result<()> {
    use porcupine_cluster::node::user_usage::UserUsage;
    let usage: UserUsage =
        serde_json::from_str(body).with_context(|| format!("unexpected answer: {body}"))?;
    println!(
        "{}: {} messages, {} bytes",
        usage.user, usage.messages, usage.bytes
    );
    println!(
        "  {:<24} {:>9} {:>9} {:>12}",
        "folder", "messages", "unseen", "bytes"
    );
    for f in &usage.folders {
        let name = match &f.special_use {
            Some(special) => format!("{} {special}", f.name),
            None => f.name.clone(),
        };
        println!(
            "  {:<24} {:>9} {:>9} {:>12}",
            name, f.messages, f.unseen, f.bytes
        );
    }
    println!(
        "  quota: storage {}, messages {}",
        of_limit(usage.bytes, usage.quota.storage),
        of_limit(usage.messages, usage.quota.messages)
    );
    println!("  {:<24} {:>9} {:>12}", "copies on node", "copies", "bytes");
    for n in &usage.nodes {
        let name = match &n.addr {
            Some(addr) => format!("{} ({addr})", n.node),
            None => format!("{} (not a member)", n.node),
        };
        println!("  {:<24} {:>9} {:>12}", name, n.copies, n.bytes);
    }
    Ok(())
}

fn status(json: bool, access: &AdminAccess) -> Result<()> {
    let admin = access.admin()?;
    if json {
        println!("{}", admin.get("/status")?);
        return Ok(());
    }
    let status = admin.status()?;
    let node = &status.node;
    println!(
        "node {} (porcupine {}), {} cores, up {} s",
        node.hostname, node.version, node.cores, node.uptime_s
    );
    println!(
        "SMTP {}  POP3 {}  admin {}",
        node.smtp, node.pop3, node.admin
    );
    println!("domains: {}", node.domains.join(", "));
    println!("users: {}  messages: {}", status.users, status.messages);
    println!(
        "node id {}, epoch {} (coordinator {}), {} of {} buckets managed here",
        status.node_id,
        status.epoch.clock,
        status.epoch.coordinator,
        status.buckets.owned,
        status.buckets.total
    );
    println!("members: {}", status.members.len());
    for member in &status.members {
        println!(
            "  {} {} load {}{}",
            member.id,
            member.address,
            member
                .load
                .map_or_else(|| "?".to_owned(), |l| l.to_string()),
            if member.is_self { "  (this node)" } else { "" }
        );
    }
    let replication = &status.replication;
    println!(
        "replication: {} copies ({} ack), {} updates pending",
        replication.replicas,
        match replication.ack {
            porcupine_cluster::node::status::AckName::All => "all",
            porcupine_cluster::node::status::AckName::Coordinator => "coordinator",
        },
        replication.pending_updates
    );
    if replication.dead_nodes.is_empty() {
        println!(
            "dead nodes: none (a node gone longer than {} s is declared dead)",
            replication.dead_after_s
        );
    } else {
        println!(
            "dead nodes: {:?}; copies here under-replicated: {}, made again by this node: {}{}",
            replication.dead_nodes,
            replication.under_replicated,
            replication.healed,
            if replication.heal_failures > 0 {
                format!(", failed: {}", replication.heal_failures)
            } else {
                String::new()
            }
        );
    }
    for shard in &status.shards {
        println!(
            "  {} core {} {}: {} messages, {} users, {} segments, {} fsyncs, ack p99 {} µs{}",
            shard.name,
            shard.core,
            shard.dir,
            shard.messages,
            shard.users,
            shard.segments,
            shard.fsyncs,
            shard.ack_p99_us,
            shard
                .poisoned
                .as_ref()
                .map_or_else(String::new, |why| format!("  POISONED: {why}"))
        );
    }
    Ok(())
}
