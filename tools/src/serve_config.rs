//! `porcupine serve`'s settings, one schema for its flags and for the TOML file that may give
//! the same keys (`--config`, which `porcupine-tune` writes), and the one rule by which the two
//! combine: a flag that is given wins over the file's key, key by key.
//!
//! A setting left unset (an absent option, an empty list, a switch not given) is left out when
//! the schema is written ([`ServeArgs::to_table`]), so both the merge and `porcupine-tune` see
//! only what was set; a test checks that an unset schema writes nothing.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};

/// Parses a `--config` file (the keys of the flags, kebab-case); unknown keys are refused.
pub fn parse(text: &str) -> Result<ServeArgs, toml::de::Error> {
    toml::from_str(text)
}

/// `--placement`: where new mail goes.
#[derive(
    clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum PlacementArg {
    Static,
    Random,
    Dynamic,
}

/// `--ack`: when a delivery is acknowledged.
#[derive(
    clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum AckArg {
    All,
    Coordinator,
}

/// `serve`'s flags; each may also come from the TOML file given by `--config` (flags win).
#[derive(clap::Args, Clone, Debug, Default, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ServeArgs {
    /// A TOML file with the same keys as these flags (e.g. `smtp = "127.0.0.1:2525"`).
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Data directory; repeat for one per disk (each gets a shard per core). Default ./porcupine-data
    #[arg(long = "data")]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub data: Vec<PathBuf>,
    /// SMTP listen address [default: 127.0.0.1:2525]
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp: Option<SocketAddr>,
    /// POP3 listen address [default: 127.0.0.1:1110]
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pop3: Option<SocketAddr>,
    /// POP3S (TLS from the first byte, RFC 8314) listen address; 995 in production
    /// [default: 127.0.0.1:1995]
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pop3s: Option<SocketAddr>,
    /// Do not listen for POP3S
    #[arg(long)]
    #[serde(default, skip_serializing_if = "is_unset")]
    pub no_pop3s: bool,
    /// TLS certificate chain (PEM) for STARTTLS, STLS, POP3S and IMAPS, reloaded on SIGHUP
    /// [default: a self-signed certificate made once in <data>/tls/]
    #[arg(long, requires = "tls_key")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// The TLS certificate's private key (PEM)
    #[arg(long, requires = "tls_cert")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// Accept passwords in clear (USER/PASS, SASL PLAIN) from off loopback without TLS, as
    /// Dovecot's `disable_plaintext_auth = no` (refused with -ERR [PRIVACY] by default)
    #[arg(long)]
    #[serde(default, skip_serializing_if = "is_unset")]
    pub allow_plaintext_auth: bool,
    /// IMAP listen address (STARTTLS offered; 143 in production) [default: 127.0.0.1:1143]
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imap: Option<SocketAddr>,
    /// IMAPS (TLS from the first byte, RFC 8314) listen address; 993 in production
    /// [default: 127.0.0.1:1993]
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imaps: Option<SocketAddr>,
    /// Do not listen for IMAPS
    #[arg(long)]
    #[serde(default, skip_serializing_if = "is_unset")]
    pub no_imaps: bool,
    /// LMTP listen address, for an MTA in front (Postfix: `virtual_transport =
    /// lmtp:inet:127.0.0.1:2424`); it asks for no credentials, so keep it on loopback or a
    /// private network [default: 127.0.0.1:2424]
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lmtp: Option<SocketAddr>,
    /// Do not listen for LMTP
    #[arg(long)]
    #[serde(default, skip_serializing_if = "is_unset")]
    pub no_lmtp: bool,
    /// Admin HTTP address [default: 127.0.0.1:8025]
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<SocketAddr>,
    /// The admin token's file, made at first start if missing (mode 0600; several nodes may
    /// share one) [default: admin.token in the first data directory]
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_token_file: Option<PathBuf>,
    /// Allow an admin address off loopback; the endpoint then speaks only HTTPS, with the
    /// node's TLS certificate (the CLI needs --admin-ca)
    #[arg(long)]
    #[serde(default, skip_serializing_if = "is_unset")]
    pub admin_public: bool,
    /// Cluster address: other nodes reach this one here. A lone node (no --cluster, no
    /// --join) listens for no other node [default: none]
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<SocketAddr>,
    /// The cluster key (`porcupine cluster-key FILE` makes one; the same file on every node,
    /// mode 0600): needed with --cluster or --join
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_key: Option<PathBuf>,
    /// Measurements only: run the cluster in plaintext, unauthenticated (refused unless every
    /// cluster address is loopback)
    #[arg(long)]
    #[serde(default, skip_serializing_if = "is_unset")]
    pub insecure_plaintext_cluster: bool,
    /// Cluster addresses of nodes to join (comma-separated); a node that joins others creates
    /// no first user (it receives the cluster's users)
    #[arg(long, value_delimiter = ',')]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub join: Vec<SocketAddr>,
    /// A local mail domain; repeat for several [default: localhost]
    #[arg(long = "domain")]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub domain: Vec<String>,
    /// Nodes each message is stored on, capped by the live node count (with a warning)
    /// [default: 2; a lone node stores one copy]
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    /// When a delivery gets its 250: `all` (every chosen replica has the message durably) or
    /// `coordinator` (the first replica has it; the others follow) [default: all]
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack: Option<AckArg>,
    /// Hours a replicated update waits for a replica that is down before it is dropped; a node
    /// down longer rejoins as a new node [default: 168 (a week)]
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_retention_h: Option<u64>,
    /// How long a node may be gone before the cluster declares it dead and makes its copies
    /// again on other nodes, e.g. `4h`, `90m`; decided only by a majority [default: 4h]
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_after: Option<String>,
    /// Copies per second a node makes again once a node is declared dead [default: 200]
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heal_rate: Option<u32>,
    /// Seconds between anti-entropy rounds: each compares digests of the copies this node and
    /// the next member in turn hold for each other, and repairs what one lacks [default: 60]
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anti_entropy_s: Option<u64>,
    /// Where new mail goes: `dynamic` (the least loaded of the user's fragment nodes, topped up
    /// at random to the spread), `static` (fixed nodes per user, by hash) or `random` (any
    /// nodes, per message). Every node of a cluster should use the same [default: dynamic]
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<PlacementArg>,
    /// Dynamic placement: nodes a user's mailbox is spread over before more are added (only
    /// when every one of them is down, full or overloaded) [default: 2]
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spread: Option<usize>,
    /// Operations under way on a node's disks at which it counts as overloaded [default: 256]
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overload_ops: Option<u32>,
    /// Experiments: make a data directory behave as a slower disk, `DIR=IOPS:MBPS` (0 leaves
    /// that limit off), e.g. `--throttle /data/a=200:20`; repeat for several directories
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub throttle: Vec<String>,
    /// Relative capacity of a data directory, `DIR=WEIGHT` (as `porcupine-tune` measures it):
    /// new users go to each directory in proportion to its weight [default: 1 each]; repeat
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disk_weight: Vec<String>,
    /// Executors, one per core [default: every core]
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cores: Option<usize>,
    /// The host name in the SMTP banner and Received headers [default: the first domain]
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Largest message in bytes [default: 33554432]
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_bytes_max: Option<usize>,
    /// Every user's storage limit unless `porcupine user quota` sets their own: bytes, or with
    /// K, M, G or T (powers of 1024), or `none` [default: none]
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_storage: Option<String>,
    /// Every user's message-count limit unless `porcupine user quota` sets their own, or
    /// `none` [default: none]
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_messages: Option<String>,
    /// Recipients per message [default: 100]
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipients_max: Option<usize>,
    /// Open SMTP+POP3 connections per node [default: 4096]
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections_max: Option<usize>,
    /// Seconds an idle SMTP session is kept [default: 300]
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp_idle_s: Option<u64>,
    /// Seconds a client may leave the node's output untaken before its session is dropped
    /// [default: 60]
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_timeout_s: Option<u64>,
    /// Connections one client address may hold [default: 50]
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections_per_ip: Option<u32>,
    /// New connections per second one client address may open (bursts of twice that)
    /// [default: 20]
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_rate_per_ip: Option<f64>,
    /// Addresses free of the per-address limits, comma-separated CIDRs, or `none`
    /// [default: 127.0.0.0/8,::1]
    #[arg(long, value_delimiter = ',')]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub limits_exempt: Vec<String>,
    /// MiB of messages in transfer on the whole node; past it a message gets 451 4.3.1
    /// [default: 1024]
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer_memory_mib: Option<usize>,
    /// Milliseconds between membership pings to the ring successor [default: 50]
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ping_ms: Option<u64>,
    /// Milliseconds of silence after which the successor is suspected dead [default: 200]
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspect_ms: Option<u64>,
    /// Segment file size in MiB [default: 128]
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment_mib: Option<u64>,
    /// Microseconds a group commit waits for more appends before writing [default: 0: write
    /// as soon as the previous group is durable]
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit_window_us: Option<u64>,
    /// Largest group-commit batch in KiB (`porcupine-tune` finds the batch that saturates a
    /// disk) [default: 1024]
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_kib: Option<usize>,
    /// Writes in flight while a segment is written out ahead of the log [default: 1]
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_depth: Option<usize>,
    /// MiB of each shard's newest log kept in memory, so mail fetched soon after delivery
    /// needs no disk read (0: none) [default: 64]
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_cache_mib: Option<usize>,
    /// Do not pin executors to cores
    #[arg(long)]
    #[serde(default, skip_serializing_if = "is_unset")]
    pub no_pin: bool,
    /// Do not create a first user on an empty node
    #[arg(long)]
    #[serde(default, skip_serializing_if = "is_unset")]
    pub no_first_user: bool,
    /// Experiment only: acknowledge deliveries without storing them (the paper's "infinitely
    /// fast disk"); every message is lost
    #[arg(long)]
    #[serde(default, skip_serializing_if = "is_unset")]
    pub discard_bodies: bool,
}

/// A switch that was not given.
fn is_unset(switch: &bool) -> bool {
    !*switch
}

impl ServeArgs {
    /// The settings that are set, as a TOML table (keys as the flags).
    pub fn to_table(&self) -> Result<toml::Table, toml::ser::Error> {
        toml::Table::try_from(self)
    }

    /// The settings that are set, as the text of a `--config` file.
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string(self)
    }
}

/// The flags over the `--config` file, if one was given: each key a flag sets is the flag's,
/// every other key the file's.
pub fn merge(flags: ServeArgs) -> Result<ServeArgs> {
    let Some(path) = flags.config.clone() else {
        return Ok(flags);
    };
    let text = std::fs::read_to_string(path.as_path())
        .with_context(|| format!("cannot read {}", path.display()))?;
    let file = parse(&text).with_context(|| format!("invalid config file {}", path.display()))?;
    let mut merged = file.to_table().context("cannot merge the config file")?;
    merged.extend(flags.to_table().context("cannot merge the flags")?);
    let mut args: ServeArgs = merged
        .try_into()
        .with_context(|| format!("cannot merge {} with the flags", path.display()))?;
    args.config = Some(path);
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unset_schema_writes_nothing() {
        // Else an unset flag would override the file's key in the merge.
        let table = ServeArgs::default().to_table().unwrap();
        assert!(table.is_empty(), "written though unset: {table:?}");
    }

    #[test]
    fn what_is_written_reads_back_the_same() {
        let args = ServeArgs {
            data: vec!["/data/a".into(), "/data/b".into()],
            smtp: Some("127.0.0.1:25".parse().unwrap()),
            no_pop3s: true,
            replicas: Some(3),
            ack: Some(AckArg::Coordinator),
            placement: Some(PlacementArg::Random),
            connection_rate_per_ip: Some(2.5),
            disk_weight: vec!["/data/a=1".into(), "/data/b=0.5".into()],
            ..ServeArgs::default()
        };
        assert_eq!(parse(&args.to_toml().unwrap()).unwrap(), args);
    }

    #[test]
    fn a_given_flag_wins_over_the_file_key_by_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("porcupine.toml");
        std::fs::write(
            &path,
            "smtp = \"127.0.0.1:25\"\nreplicas = 3\ndomain = [\"a.example\"]\nno-pin = true\n",
        )
        .unwrap();
        let flags = ServeArgs {
            config: Some(path.clone()),
            replicas: Some(1),
            cores: Some(2),
            ..ServeArgs::default()
        };
        let merged = merge(flags).unwrap();
        assert_eq!(merged.smtp, Some("127.0.0.1:25".parse().unwrap()));
        assert_eq!(merged.replicas, Some(1));
        assert_eq!(merged.cores, Some(2));
        assert_eq!(merged.domain, vec!["a.example".to_owned()]);
        assert!(merged.no_pin);
        assert_eq!(merged.config, Some(path));
    }

    #[test]
    fn an_unknown_key_in_the_file_is_refused() {
        let error = parse("smtp-port = 25\n").unwrap_err();
        assert!(error.to_string().contains("smtp-port"), "{error}");
    }
}
