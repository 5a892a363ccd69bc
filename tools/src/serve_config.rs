//! `porcupine serve`'s settings: its flags, the TOML file that may give the same keys
//! (`--config`), and how the two combine (flags win).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};

/// Parses a `--config` file (the keys of the flags, kebab-case); unknown keys are refused.
pub fn parse(text: &str) -> Result<ServeArgs, toml::de::Error> {
    toml::from_str(text)
}

/// `--placement`: where new mail goes.
#[derive(clap::ValueEnum, Clone, Copy, Debug, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlacementArg {
    Static,
    Random,
    Dynamic,
}

/// `serve`'s flags; each may also come from the TOML file given by `--config` (flags win).
/// `--ack`: when a delivery is acknowledged.
#[derive(clap::ValueEnum, Clone, Copy, Debug, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AckArg {
    All,
    Coordinator,
}

#[derive(clap::Args, Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ServeArgs {
    /// A TOML file with the same keys as these flags (e.g. `smtp = "127.0.0.1:2525"`).
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Data directory; repeat for one per disk (each gets a shard per core). Default ./porcupine-data
    #[arg(long = "data")]
    #[serde(default)]
    pub data: Vec<PathBuf>,
    /// SMTP listen address [default: 127.0.0.1:2525]
    #[arg(long)]
    pub smtp: Option<SocketAddr>,
    /// POP3 listen address [default: 127.0.0.1:1110]
    #[arg(long)]
    pub pop3: Option<SocketAddr>,
    /// POP3S (TLS from the first byte, RFC 8314) listen address; 995 in production
    /// [default: 127.0.0.1:1995]
    #[arg(long)]
    pub pop3s: Option<SocketAddr>,
    /// Do not listen for POP3S
    #[arg(long)]
    #[serde(default)]
    pub no_pop3s: bool,
    /// TLS certificate chain (PEM) for STARTTLS, STLS and POP3S, reloaded on SIGHUP
    /// [default: a self-signed certificate made once in <data>/tls/]
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The TLS certificate's private key (PEM)
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Accept passwords in clear (USER/PASS, SASL PLAIN) from off loopback without TLS, as
    /// Dovecot's `disable_plaintext_auth = no` (refused with -ERR [PRIVACY] by default)
    #[arg(long)]
    #[serde(default)]
    pub allow_plaintext_auth: bool,
    /// IMAP listen address (accepted; IMAP is not implemented yet)
    #[arg(long)]
    pub imap: Option<SocketAddr>,
    /// Admin HTTP address [default: 127.0.0.1:8025]
    #[arg(long)]
    pub admin: Option<SocketAddr>,
    /// The admin token's file, made at first start if missing (mode 0600; several nodes may
    /// share one) [default: admin.token in the first data directory]
    #[arg(long)]
    pub admin_token_file: Option<PathBuf>,
    /// Allow an admin address off loopback; the endpoint then speaks only HTTPS, with the
    /// node's TLS certificate (the CLI needs --admin-ca)
    #[arg(long)]
    #[serde(default)]
    pub admin_public: bool,
    /// Cluster address: other nodes reach this one here. A lone node (no --cluster, no
    /// --join) listens for no other node [default: none]
    #[arg(long)]
    pub cluster: Option<SocketAddr>,
    /// The cluster key (`porcupine cluster-key FILE` makes one; the same file on every node,
    /// mode 0600): needed with --cluster or --join
    #[arg(long)]
    pub cluster_key: Option<PathBuf>,
    /// Measurements only: run the cluster in plaintext, unauthenticated (refused unless every
    /// cluster address is loopback)
    #[arg(long)]
    #[serde(default)]
    pub insecure_plaintext_cluster: bool,
    /// Cluster addresses of nodes to join (comma-separated); a node that joins others creates
    /// no first user (it receives the cluster's users)
    #[arg(long, value_delimiter = ',')]
    #[serde(default)]
    pub join: Vec<SocketAddr>,
    /// A local mail domain; repeat for several [default: localhost]
    #[arg(long = "domain")]
    #[serde(default)]
    pub domain: Vec<String>,
    /// Nodes each message is stored on, capped by the live node count (with a warning)
    /// [default: 2; a lone node stores one copy]
    #[arg(long)]
    pub replicas: Option<u32>,
    /// When a delivery gets its 250: `all` (every chosen replica has the message durably) or
    /// `coordinator` (the first replica has it; the others follow) [default: all]
    #[arg(long)]
    pub ack: Option<AckArg>,
    /// Hours a replicated update waits for a replica that is down before it is dropped; a node
    /// down longer rejoins as a new node [default: 168 (a week)]
    #[arg(long)]
    pub log_retention_h: Option<u64>,
    /// Where new mail goes: `dynamic` (the least loaded of the user's fragment nodes, topped up
    /// at random to the spread), `static` (fixed nodes per user, by hash) or `random` (any
    /// nodes, per message). Every node of a cluster should use the same [default: dynamic]
    #[arg(long)]
    pub placement: Option<PlacementArg>,
    /// Dynamic placement: nodes a user's mailbox is spread over before more are added (only
    /// when every one of them is down, full or overloaded) [default: 2]
    #[arg(long)]
    pub spread: Option<usize>,
    /// Operations under way on a node's disks at which it counts as overloaded [default: 256]
    #[arg(long)]
    pub overload_ops: Option<u32>,
    /// Experiments: make a data directory behave as a slower disk, `DIR=IOPS:MBPS` (0 leaves
    /// that limit off), e.g. `--throttle /data/a=200:20`; repeat for several directories
    #[arg(long)]
    #[serde(default)]
    pub throttle: Vec<String>,
    /// Relative capacity of a data directory, `DIR=WEIGHT` (as `porcupine-tune` measures it):
    /// new users go to each directory in proportion to its weight [default: 1 each]; repeat
    #[arg(long)]
    #[serde(default)]
    pub disk_weight: Vec<String>,
    /// Executors, one per core [default: every core]
    #[arg(long)]
    pub cores: Option<usize>,
    /// The host name in the SMTP banner and Received headers [default: the first domain]
    #[arg(long)]
    pub hostname: Option<String>,
    /// Largest message in bytes [default: 33554432]
    #[arg(long)]
    pub message_bytes_max: Option<usize>,
    /// Recipients per message [default: 100]
    #[arg(long)]
    pub recipients_max: Option<usize>,
    /// Open SMTP+POP3 connections per node [default: 4096]
    #[arg(long)]
    pub connections_max: Option<usize>,
    /// Seconds an idle SMTP session is kept [default: 300]
    #[arg(long)]
    pub smtp_idle_s: Option<u64>,
    /// Seconds a client may leave the node's output untaken before its session is dropped
    /// [default: 60]
    #[arg(long)]
    pub write_timeout_s: Option<u64>,
    /// Connections one client address may hold [default: 50]
    #[arg(long)]
    pub connections_per_ip: Option<u32>,
    /// New connections per second one client address may open (bursts of twice that)
    /// [default: 20]
    #[arg(long)]
    pub connection_rate_per_ip: Option<f64>,
    /// Addresses free of the per-address limits, comma-separated CIDRs, or `none`
    /// [default: 127.0.0.0/8,::1]
    #[arg(long, value_delimiter = ',')]
    #[serde(default)]
    pub limits_exempt: Vec<String>,
    /// MiB of messages in transfer on the whole node; past it a message gets 451 4.3.1
    /// [default: 1024]
    #[arg(long)]
    pub transfer_memory_mib: Option<usize>,
    /// Milliseconds between membership pings to the ring successor [default: 50]
    #[arg(long)]
    pub ping_ms: Option<u64>,
    /// Milliseconds of silence after which the successor is suspected dead [default: 200]
    #[arg(long)]
    pub suspect_ms: Option<u64>,
    /// Segment file size in MiB [default: 128]
    #[arg(long)]
    pub segment_mib: Option<u64>,
    /// Microseconds a group commit waits for more appends before writing [default: 0: write
    /// as soon as the previous group is durable]
    #[arg(long)]
    pub commit_window_us: Option<u64>,
    /// Largest group-commit batch in KiB (`porcupine-tune` finds the batch that saturates a
    /// disk) [default: 1024]
    #[arg(long)]
    pub batch_kib: Option<usize>,
    /// Writes in flight while a segment is written out ahead of the log [default: 1]
    #[arg(long)]
    pub io_depth: Option<usize>,
    /// MiB of each shard's newest log kept in memory, so mail fetched soon after delivery
    /// needs no disk read (0: none) [default: 64]
    #[arg(long)]
    pub read_cache_mib: Option<usize>,
    /// Do not pin executors to cores
    #[arg(long)]
    #[serde(default)]
    pub no_pin: bool,
    /// Do not create a first user on an empty node
    #[arg(long)]
    #[serde(default)]
    pub no_first_user: bool,
    /// Experiment only: acknowledge deliveries without storing them (the paper's "infinitely
    /// fast disk"); every message is lost
    #[arg(long)]
    #[serde(default)]
    pub discard_bodies: bool,
}

/// The flags, with what they leave unset taken from the `--config` file, if one was given.
pub fn merge(flags: ServeArgs) -> Result<ServeArgs> {
    let Some(path) = &flags.config else {
        return Ok(flags);
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let file = parse(&text).with_context(|| format!("invalid config file {}", path.display()))?;
    Ok(ServeArgs {
        config: flags.config,
        data: if flags.data.is_empty() {
            file.data
        } else {
            flags.data
        },
        smtp: flags.smtp.or(file.smtp),
        pop3: flags.pop3.or(file.pop3),
        pop3s: flags.pop3s.or(file.pop3s),
        no_pop3s: flags.no_pop3s || file.no_pop3s,
        tls_cert: flags.tls_cert.or(file.tls_cert),
        tls_key: flags.tls_key.or(file.tls_key),
        allow_plaintext_auth: flags.allow_plaintext_auth || file.allow_plaintext_auth,
        imap: flags.imap.or(file.imap),
        admin: flags.admin.or(file.admin),
        admin_token_file: flags.admin_token_file.or(file.admin_token_file),
        admin_public: flags.admin_public || file.admin_public,
        cluster: flags.cluster.or(file.cluster),
        cluster_key: flags.cluster_key.or(file.cluster_key),
        insecure_plaintext_cluster: flags.insecure_plaintext_cluster
            || file.insecure_plaintext_cluster,
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
        write_timeout_s: flags.write_timeout_s.or(file.write_timeout_s),
        connections_per_ip: flags.connections_per_ip.or(file.connections_per_ip),
        connection_rate_per_ip: flags.connection_rate_per_ip.or(file.connection_rate_per_ip),
        limits_exempt: if flags.limits_exempt.is_empty() {
            file.limits_exempt
        } else {
            flags.limits_exempt
        },
        transfer_memory_mib: flags.transfer_memory_mib.or(file.transfer_memory_mib),
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
