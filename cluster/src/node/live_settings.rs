//! The settings a running node takes anew on SIGHUP (from its config file), and the ones that
//! need a restart. Live: the quota defaults, the connection limits (per node and per client
//! address, with the exempt networks), the idle and write timeouts, and whether passwords may
//! be sent in clear. Everything else (addresses, data directories, cores, the engine's sizes,
//! replication, membership, the message size limit from which other limits derive) is bound
//! into state built at start; a changed value of one of those is named so the operator knows
//! to restart, and the value in use stays.
//!
//! Readers take the current settings with `context.live.load()` (an `ArcSwap`: no lock, and a
//! session that read them keeps a consistent set).

use std::time::Duration;

use super::config::NodeConfig;
use super::quota::Limits;
use crate::abuse::AbuseSettings;

/// What SIGHUP can change.
#[derive(Clone, Debug, PartialEq)]
pub struct LiveSettings {
    pub quota: Limits,
    pub connections_max: usize,
    pub smtp_idle_timeout: Duration,
    pub pop3_idle_timeout: Duration,
    pub imap_idle_timeout: Duration,
    pub write_timeout: Duration,
    pub allow_plaintext_auth: bool,
    pub abuse: AbuseSettings,
}

impl LiveSettings {
    pub fn of(config: &NodeConfig) -> Self {
        Self {
            quota: config.quota,
            connections_max: config.connections_max,
            smtp_idle_timeout: config.smtp_idle_timeout,
            pop3_idle_timeout: config.pop3_idle_timeout,
            imap_idle_timeout: config.imap_idle_timeout,
            write_timeout: config.write_timeout,
            allow_plaintext_auth: config.allow_plaintext_auth,
            abuse: config.abuse.clone(),
        }
    }

    /// The names of the settings that differ in `new`.
    pub fn changes(&self, new: &LiveSettings) -> Vec<&'static str> {
        let mut changed = Vec::new();
        let mut note = |differs: bool, name: &'static str| {
            if differs {
                changed.push(name);
            }
        };
        note(self.quota.storage != new.quota.storage, "quota-storage");
        note(self.quota.messages != new.quota.messages, "quota-messages");
        note(
            self.connections_max != new.connections_max,
            "connections-max",
        );
        note(
            self.smtp_idle_timeout != new.smtp_idle_timeout,
            "smtp-idle-s",
        );
        note(
            self.pop3_idle_timeout != new.pop3_idle_timeout,
            "pop3-idle-s",
        );
        note(
            self.imap_idle_timeout != new.imap_idle_timeout,
            "imap-idle-s",
        );
        note(self.write_timeout != new.write_timeout, "write-timeout-s");
        note(
            self.allow_plaintext_auth != new.allow_plaintext_auth,
            "allow-plaintext-auth",
        );
        note(
            self.abuse.connections_per_ip != new.abuse.connections_per_ip,
            "connections-per-ip",
        );
        note(
            self.abuse.connection_rate_per_ip != new.abuse.connection_rate_per_ip
                || self.abuse.connection_burst_per_ip != new.abuse.connection_burst_per_ip,
            "connection-rate-per-ip",
        );
        note(self.abuse.exempt != new.abuse.exempt, "limits-exempt");
        changed
    }
}

/// The settings that need a restart and differ between `old` and `new` (by their flag names).
pub fn restart_needed(old: &NodeConfig, new: &NodeConfig) -> Vec<&'static str> {
    let mut changed = Vec::new();
    let mut note = |differs: bool, name: &'static str| {
        if differs {
            changed.push(name);
        }
    };
    note(old.data_dirs != new.data_dirs, "data");
    note(old.cores != new.cores, "cores");
    note(old.smtp != new.smtp, "smtp");
    note(old.pop3 != new.pop3, "pop3");
    note(old.pop3s != new.pop3s, "pop3s");
    note(old.imap != new.imap, "imap");
    note(old.imaps != new.imaps, "imaps");
    note(old.lmtp != new.lmtp, "lmtp");
    note(old.admin != new.admin, "admin");
    note(old.cluster != new.cluster, "cluster");
    note(old.join != new.join, "join");
    note(old.domains != new.domains, "domain");
    note(old.hostname != new.hostname, "hostname");
    note(
        old.smtp_limits.message_bytes_max != new.smtp_limits.message_bytes_max,
        "message-bytes-max",
    );
    note(
        old.smtp_limits.recipients_max != new.smtp_limits.recipients_max,
        "recipients-max",
    );
    note(old.replicas != new.replicas, "replicas");
    note(old.placement != new.placement, "placement");
    note(old.tls_files != new.tls_files, "tls-cert/tls-key");
    note(old.admin_public != new.admin_public, "admin-public");
    note(
        old.transfer_bytes_max != new.transfer_bytes_max,
        "transfer-memory-mib",
    );
    // Compared by their debug form: they need no equality of their own for this.
    let differs =
        |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") != format!("{b:?}");
    note(
        differs(&old.cluster_security, &new.cluster_security),
        "cluster-key",
    );
    note(differs(&old.ack_policy, &new.ack_policy), "ack");
    note(
        differs(&old.replication, &new.replication),
        "log-retention-h",
    );
    note(
        differs(&old.membership, &new.membership),
        "dead-after/ping-ms/suspect-ms",
    );
    note(old.heal_rate != new.heal_rate, "heal-rate");
    note(old.anti_entropy_s != new.anti_entropy_s, "anti-entropy-s");
    note(old.overload_ops != new.overload_ops, "overload-ops");
    note(differs(&old.throttles, &new.throttles), "throttle");
    note(differs(&old.disk_weights, &new.disk_weights), "disk-weight");
    note(
        differs(&old.engine, &new.engine),
        "segment-mib/commit-window-us/batch-kib/io-depth/read-cache-mib",
    );
    note(old.pin != new.pin, "no-pin");
    note(old.first_user != new.first_user, "no-first-user");
    note(old.discard_bodies != new.discard_bodies, "discard-bodies");
    // Whatever else differs besides the live settings (a setting added later and not named
    // above) is still told.
    if changed.is_empty() {
        let mut applied = old.clone();
        applied.apply_live(new);
        if differs(&applied, new) {
            changed.push("other settings");
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_named_by_their_flags() {
        let old = NodeConfig::default();
        let mut new = old.clone();
        new.quota.storage = Some(1 << 30);
        new.abuse.connections_per_ip = 7;
        new.smtp = "127.0.0.1:25".parse().unwrap();
        assert_eq!(
            LiveSettings::of(&old).changes(&LiveSettings::of(&new)),
            vec!["quota-storage", "connections-per-ip"]
        );
        assert_eq!(restart_needed(&old, &new), vec!["smtp"]);
        let mut engine = old.clone();
        engine.engine.segment_bytes *= 2;
        engine.heal_rate += 1;
        engine.membership.dead_after_ms += 1;
        assert_eq!(
            restart_needed(&old, &engine),
            vec![
                "dead-after/ping-ms/suspect-ms",
                "heal-rate",
                "segment-mib/commit-window-us/batch-kib/io-depth/read-cache-mib"
            ]
        );
        let mut other = old.clone();
        other.shutdown_grace += Duration::from_secs(1);
        assert_eq!(restart_needed(&old, &other), vec!["other settings"]);
        let mut live_only = old.clone();
        live_only.quota.messages = Some(5);
        assert!(restart_needed(&old, &live_only).is_empty());
        assert!(LiveSettings::of(&old)
            .changes(&LiveSettings::of(&old))
            .is_empty());
    }
}
