//! A node's configuration: every setting with its default (DESIGN.md §6), the values derived
//! from others, and the rules they must keep. [`NodeConfig::validate`] is the one place those
//! rules live: `node::start` applies it, so every caller — `porcupine serve`, the benches,
//! the tests — gets the same checks and the same messages (named after the `serve` flags).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use porcupine_engine::record::REPLICAS_MAX;
use porcupine_engine::EngineConfig;
use porcupine_protocols::imap::ImapLimits;
use porcupine_protocols::pop3::Pop3Limits;
use porcupine_protocols::smtp::SmtpLimits;

use super::{replicas, tls};

/// Room in a record beyond the client's message: the `Received:` header the node prepends.
pub const RECORD_OVERHEAD_BYTES: usize = 64 << 10;

/// A setting out of range, or two that contradict each other.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Everything a node needs to know; defaults as in DESIGN.md §6.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub data_dirs: Vec<PathBuf>,
    pub cores: usize,
    pub pin: bool,
    pub smtp: SocketAddr,
    pub pop3: SocketAddr,
    /// POP3 over TLS from the first byte (RFC 8314; 995 in production).
    pub pop3s: Option<SocketAddr>,
    pub imap: SocketAddr,
    /// IMAP over TLS from the first byte (RFC 8314; 993 in production).
    pub imaps: Option<SocketAddr>,
    /// LMTP (RFC 2033), for an MTA in front of the store (Postfix's `lmtp:` transport). It
    /// asks for no credentials, like SMTP's port 25: keep it on loopback or a private network.
    pub lmtp: Option<SocketAddr>,
    pub admin: SocketAddr,
    /// The cluster port (framed TCP between nodes); other nodes reach this node there. A lone
    /// node (no cluster port and no seeds) listens for no other node.
    pub cluster: Option<SocketAddr>,
    /// How connections between nodes prove membership (the cluster key) and are protected.
    pub cluster_security: crate::secure::ClusterSecurity,
    /// Seeds: cluster addresses of nodes to join.
    pub join: Vec<SocketAddr>,
    /// Membership timing and the number of user-map buckets.
    pub membership: crate::membership::Settings,
    pub domains: Vec<String>,
    pub hostname: String,
    pub engine: EngineConfig,
    pub smtp_limits: SmtpLimits,
    pub pop3_limits: Pop3Limits,
    pub imap_limits: ImapLimits,
    pub smtp_idle_timeout: Duration,
    pub pop3_idle_timeout: Duration,
    /// At least 30 minutes (RFC 9051 5.4): an IDLE client says nothing for 29.
    pub imap_idle_timeout: Duration,
    /// Open SMTP + POP3 connections per node.
    pub connections_max: usize,
    /// How long sessions may take to finish after a stop.
    pub shutdown_grace: Duration,
    /// Create a first user (and print its password) when the node has none.
    pub first_user: bool,
    /// The paper's "infinitely fast disk" experiment: acknowledge deliveries without storing
    /// them. Mail is lost by design; never for production.
    pub discard_bodies: bool,
    /// Nodes each message is stored on (capped by the live node count); 1 on a lone node.
    pub replicas: usize,
    /// When a delivery is acknowledged: once every replica has it, or once the coordinator has.
    pub ack_policy: replicas::AckPolicy,
    /// Replication timing and the log retention.
    pub replication: crate::replication::Settings,
    /// Copies per second a node makes again once a node is declared dead (`--heal-rate`):
    /// healing's share of the disks and the network, beside the mail it serves.
    pub heal_rate: u32,
    /// Seconds between anti-entropy rounds, each with the next member in turn
    /// (`--anti-entropy-s`).
    pub anti_entropy_s: u64,
    /// Where new mail goes (see [`crate::placement`]).
    pub placement: crate::placement::PlacementPolicy,
    /// A node with this many operations under way on its disks counts as overloaded: dynamic
    /// placement then prefers other candidates, beyond the spread if need be.
    pub overload_ops: u32,
    /// Simulated disk speeds, for experiments: (data directory, limits); others unthrottled.
    pub throttles: Vec<(PathBuf, porcupine_engine::ThrottleLimits)>,
    /// Relative capacity of data directories: (directory, weight); others weigh 1. New users
    /// go to each directory in proportion to its weight.
    pub disk_weights: Vec<(PathBuf, f64)>,
    /// The admin endpoint's token file; `None`: `admin.token` in the first data directory
    /// (created at first start).
    pub admin_token_file: Option<PathBuf>,
    /// Tests only: a fault to inject, to check how the node takes it.
    pub fault: Option<Fault>,
    /// The TLS certificate and key; `None`: a self-signed certificate made once in
    /// `<first data dir>/tls/`.
    pub tls_files: Option<tls::TlsFiles>,
    /// Accept passwords in clear (USER/PASS, SASL PLAIN) off loopback without TLS, as
    /// Dovecot's `disable_plaintext_auth = no`; refused by default.
    pub allow_plaintext_auth: bool,
    /// Serve the admin endpoint off loopback, over HTTPS only; without it an admin address
    /// off loopback is refused.
    pub admin_public: bool,
    /// Connections and new connections per second per client address; loopback exempt.
    pub abuse: crate::abuse::AbuseSettings,
    /// A client that has not taken the node's output for this long loses its session (one
    /// that pipelines and never reads must not hold a connection slot for good).
    pub write_timeout: Duration,
    /// Bytes of messages in transfer (being received, not yet stored) on the whole node; past
    /// it a message gets 451 4.3.1 and is dropped, instead of the node running out of memory.
    pub transfer_bytes_max: usize,
    /// Every user's limits unless `porcupine user quota` set their own (unlimited by default).
    pub quota: super::quota::Limits,
}

impl NodeConfig {
    /// Takes the settings that can change live from `new` (see [`super::live_settings`]).
    pub fn apply_live(&mut self, new: &NodeConfig) {
        self.quota = new.quota;
        self.connections_max = new.connections_max;
        self.smtp_idle_timeout = new.smtp_idle_timeout;
        self.pop3_idle_timeout = new.pop3_idle_timeout;
        self.imap_idle_timeout = new.imap_idle_timeout;
        self.write_timeout = new.write_timeout;
        self.allow_plaintext_auth = new.allow_plaintext_auth;
        self.abuse = new.abuse.clone();
    }
}

/// A fault a test can inject into a running node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// A task on this core panics a second after the node starts serving.
    PanicOnCore(usize),
    /// A task on this core blocks its thread for good a second after the node starts
    /// serving: a core that is alive but answers nothing (the watchdog must notice).
    StallCore(usize),
    /// Every write and sync of data directory `dir` fails with EIO while the file `trigger`
    /// exists (looked at every 50 ms): a disk that starts failing under a running node.
    EioWhile { dir: PathBuf, trigger: PathBuf },
}

impl Default for NodeConfig {
    fn default() -> Self {
        let addr = |text: &str| {
            text.parse()
                .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
        };
        Self {
            data_dirs: vec![PathBuf::from("./porcupine-data")],
            cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            pin: true,
            smtp: addr("127.0.0.1:2525"),
            pop3: addr("127.0.0.1:1110"),
            imap: addr("127.0.0.1:1143"),
            imaps: addr("127.0.0.1:1993").into(),
            lmtp: addr("127.0.0.1:2424").into(),
            admin: addr("127.0.0.1:8025"),
            cluster: None,
            cluster_security: crate::secure::ClusterSecurity::Plaintext,
            join: Vec::new(),
            membership: crate::membership::Settings::default(),
            domains: vec!["localhost".into()],
            hostname: "localhost".into(),
            engine: EngineConfig::default(),
            smtp_limits: SmtpLimits::default(),
            pop3_limits: Pop3Limits::default(),
            imap_limits: ImapLimits::default(),
            smtp_idle_timeout: Duration::from_secs(300),
            pop3_idle_timeout: Duration::from_secs(600),
            imap_idle_timeout: Duration::from_secs(31 * 60),
            connections_max: 4096,
            shutdown_grace: Duration::from_secs(20),
            first_user: true,
            discard_bodies: false,
            replicas: 2,
            ack_policy: replicas::AckPolicy::AllReplicas,
            replication: crate::replication::Settings::default(),
            heal_rate: 200,
            anti_entropy_s: 60,
            placement: crate::placement::PlacementPolicy::default(),
            overload_ops: 256,
            throttles: Vec::new(),
            disk_weights: Vec::new(),
            admin_token_file: None,
            fault: None,
            tls_files: None,
            allow_plaintext_auth: false,
            admin_public: false,
            abuse: crate::abuse::AbuseSettings::default(),
            write_timeout: Duration::from_secs(60),
            transfer_bytes_max: 1 << 30,
            quota: Default::default(),
            pop3s: addr("127.0.0.1:1995").into(),
        }
    }
}

impl NodeConfig {
    /// Sets what follows from other settings: a record holds the largest message a client may
    /// send plus the header the node prepends.
    pub fn derive(&mut self) {
        self.engine.record_bytes_max = self
            .smtp_limits
            .message_bytes_max
            .saturating_add(RECORD_OVERHEAD_BYTES);
        // APPEND takes what SMTP takes (APPENDLIMIT).
        self.imap_limits.frame.literal_bytes_max = self.smtp_limits.message_bytes_max;
        self.imap_limits.frame.command_bytes_max = self
            .smtp_limits
            .message_bytes_max
            .saturating_add(self.imap_limits.frame.line_bytes_max * 4);
    }

    /// Checks every rule; the message names the `serve` flag of the setting at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |message: String| Err(ConfigError(message));
        if self.data_dirs.is_empty() {
            return fail("give at least one data directory (--data DIR)".into());
        }
        if self.cores == 0 {
            return fail("--cores must be at least 1".into());
        }
        if self.replicas == 0 || self.replicas > REPLICAS_MAX {
            return fail(format!(
                "--replicas must be between 1 and {REPLICAS_MAX} (got {})",
                self.replicas
            ));
        }
        if self.membership.ping_interval_ms == 0 {
            return fail("--ping-ms must be at least 1".into());
        }
        if self.membership.suspect_after_ms <= self.membership.ping_interval_ms {
            return fail(format!(
                "--suspect-ms ({}) must exceed --ping-ms ({})",
                self.membership.suspect_after_ms, self.membership.ping_interval_ms
            ));
        }
        if let crate::placement::PlacementPolicy::Dynamic { spread } = self.placement {
            if spread == 0 || spread > 64 {
                return fail(format!("--spread must be between 1 and 64 (got {spread})"));
            }
        }
        if self.overload_ops == 0 {
            return fail("--overload-ops must be at least 1".into());
        }
        if self.replication.retention_ms < 3600 * 1000 {
            return fail("--log-retention-h must be at least 1".into());
        }
        let dead_after = self.membership.dead_after_ms;
        let dead_after_min = self
            .membership
            .suspect_after_ms
            .saturating_mul(10)
            .max(1000);
        if dead_after < dead_after_min {
            return fail(format!(
                "--dead-after ({dead_after} ms) must be at least ten times --suspect-ms and at \
                 least 1 s ({dead_after_min} ms): a node paused for a moment is not dead"
            ));
        }
        if dead_after >= self.replication.retention_ms {
            return fail(format!(
                "--dead-after ({} h) must be shorter than --log-retention-h ({} h): tombstones \
                 wait for a dead node only that long",
                dead_after as f64 / 3_600_000.0,
                self.replication.retention_ms / 3_600_000
            ));
        }
        if self.anti_entropy_s == 0 {
            return fail("--anti-entropy-s must be at least 1".into());
        }
        if self.heal_rate == 0 {
            return fail("--heal-rate must be at least 1 copy per second".into());
        }
        if self.smtp_limits.recipients_max < 100 {
            return fail(format!(
                "--recipients-max must be at least 100 (RFC 5321 §4.5.3.1.8; got {})",
                self.smtp_limits.recipients_max
            ));
        }
        if self.transfer_bytes_max < 1 << 20 {
            return fail("--transfer-memory-mib must be at least 1".into());
        }
        if self.abuse.connections_per_ip == 0 {
            return fail("--connections-per-ip must be at least 1".into());
        }
        let rate = self.abuse.connection_rate_per_ip;
        if !(rate.is_finite() && rate > 0.0) {
            return fail(format!(
                "--connection-rate-per-ip must be a positive number (got {rate})"
            ));
        }
        if self.write_timeout.is_zero() {
            return fail("--write-timeout-s must be at least 1".into());
        }
        if self.cluster.is_none() && !self.join.is_empty() {
            return fail(
                "--join needs --cluster ADDR: the address where the other nodes reach this one"
                    .into(),
            );
        }
        if self.engine.record_bytes_max
            < self
                .smtp_limits
                .message_bytes_max
                .saturating_add(RECORD_OVERHEAD_BYTES)
        {
            return fail(format!(
                "records of {} bytes cannot hold the largest message (--message-bytes-max {} \
                 bytes) and its Received header",
                self.engine.record_bytes_max, self.smtp_limits.message_bytes_max
            ));
        }
        if self.engine.segment_bytes > porcupine_engine::segment::SEGMENT_BYTES_MAX {
            return fail(format!(
                "--segment-mib ({} MiB) may be at most 4096 (a record's location is a 32-bit \
                 offset into its segment)",
                self.engine.segment_bytes >> 20
            ));
        }
        if let Err(why) = self.engine.validate() {
            return fail(format!(
                "--segment-mib ({} MiB) must hold the largest message (--message-bytes-max {} \
                 bytes) plus 1 MiB ({why})",
                self.engine.segment_bytes >> 20,
                self.smtp_limits.message_bytes_max
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(change: impl FnOnce(&mut NodeConfig)) -> String {
        let mut config = NodeConfig::default();
        change(&mut config);
        config.derive();
        config.validate().expect_err("refused").0
    }

    #[test]
    fn the_defaults_are_valid() {
        let mut config = NodeConfig::default();
        config.derive();
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn more_replicas_than_a_record_can_name_are_refused_not_truncated() {
        assert!(refused(|c| c.replicas = REPLICAS_MAX + 2).contains("--replicas must be between"));
        assert!(refused(|c| c.replicas = 0).contains("--replicas"));
    }

    #[test]
    fn contradicting_timers_and_ranges_are_refused() {
        assert!(
            refused(|c| c.membership.suspect_after_ms = c.membership.ping_interval_ms)
                .contains("--suspect-ms")
        );
        assert!(
            refused(|c| c.placement = crate::placement::PlacementPolicy::Dynamic { spread: 0 })
                .contains("--spread must be between 1 and 64")
        );
        assert!(refused(|c| c.overload_ops = 0).contains("--overload-ops"));
        assert!(refused(|c| c.smtp_limits.recipients_max = 99).contains("--recipients-max"));
        assert!(refused(|c| c.join = vec![([127, 0, 0, 1], 1).into()]).contains("--join needs"));
        assert!(refused(|c| c.cores = 0).contains("--cores"));
        assert!(refused(|c| c.membership.dead_after_ms = 1999).contains("--dead-after"));
        assert!(
            refused(|c| c.membership.dead_after_ms = c.replication.retention_ms)
                .contains("shorter than --log-retention-h")
        );
        assert!(refused(|c| c.heal_rate = 0).contains("--heal-rate"));
    }

    #[test]
    fn the_record_size_follows_the_message_size() {
        let mut config = NodeConfig::default();
        config.smtp_limits.message_bytes_max = 40 << 20;
        config.engine.segment_bytes = 256 << 20;
        config.derive();
        assert_eq!(config.validate(), Ok(()));
        assert!(config.engine.record_bytes_max >= (40 << 20) + RECORD_OVERHEAD_BYTES);
        // A segment smaller than the largest message cannot hold it.
        assert!(refused(|c| {
            c.smtp_limits.message_bytes_max = 100 << 20;
            c.engine.segment_bytes = 64 << 20;
        })
        .contains("--segment-mib"));
        // A segment larger than a 32-bit offset can address is refused by name.
        assert!(refused(|c| c.engine.segment_bytes = 8 << 30).contains("at most 4096"));
    }
}
