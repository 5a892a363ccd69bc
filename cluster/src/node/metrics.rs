//! Node-wide counters for `/metrics`: relaxed atomics, one increment per event, no locks.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug)]
pub struct NodeMetrics {
    pub smtp_sessions: AtomicU64,
    pub pop3_sessions: AtomicU64,
    pub imap_sessions: AtomicU64,
    pub lmtp_sessions: AtomicU64,
    pub sessions_refused: AtomicU64,
    /// Cluster connections closed because they could not prove they hold the cluster key.
    pub peers_refused: AtomicU64,
    /// Messages from members refused as implausible (a broken view, a far-future stamp).
    pub peer_messages_refused: AtomicU64,
    /// TLS handshakes with clients (STARTTLS, STLS, POP3S) that succeeded, and that failed.
    pub tls_handshakes: AtomicU64,
    pub tls_failures: AtomicU64,
    /// Messages refused 451 4.3.1 because the node's transfer budget was spent.
    pub transfer_refused: AtomicU64,
    pub messages_accepted: AtomicU64,
    pub recipients_delivered: AtomicU64,
    pub bytes_accepted: AtomicU64,
    pub messages_retrieved: AtomicU64,
    pub messages_deleted: AtomicU64,
    /// Message descriptions (ENVELOPE, BODYSTRUCTURE) read as stored with the message, and
    /// made from its bytes at a FETCH (mail stored before descriptions were).
    pub descriptions_read: AtomicU64,
    pub descriptions_made: AtomicU64,
    /// SMTP replies by code (200–599); index = code.
    smtp_replies: Vec<AtomicU64>,
    pub pop3_errors: AtomicU64,
    /// IMAP `NO` and `BAD` replies.
    pub imap_errors: AtomicU64,
    /// Copies of a dead node's mail made again by this node (healing).
    pub copies_healed: AtomicU64,
    /// Copies here whose replica set has too few nodes that are not dead (a gauge, as of each
    /// core's last survey).
    pub copies_under_replicated: AtomicU64,
    pub heal_failures: AtomicU64,
    /// Anti-entropy rounds begun, digest buckets found to differ, copies pushed to a replica
    /// that lacked them.
    pub anti_entropy_rounds: AtomicU64,
    pub anti_entropy_buckets_differing: AtomicU64,
    pub anti_entropy_repairs: AtomicU64,
}

impl Default for NodeMetrics {
    fn default() -> Self {
        Self {
            smtp_sessions: AtomicU64::new(0),
            pop3_sessions: AtomicU64::new(0),
            imap_sessions: AtomicU64::new(0),
            lmtp_sessions: AtomicU64::new(0),
            sessions_refused: AtomicU64::new(0),
            peers_refused: AtomicU64::new(0),
            peer_messages_refused: AtomicU64::new(0),
            tls_handshakes: AtomicU64::new(0),
            tls_failures: AtomicU64::new(0),
            transfer_refused: AtomicU64::new(0),
            messages_accepted: AtomicU64::new(0),
            recipients_delivered: AtomicU64::new(0),
            bytes_accepted: AtomicU64::new(0),
            messages_retrieved: AtomicU64::new(0),
            messages_deleted: AtomicU64::new(0),
            descriptions_read: AtomicU64::new(0),
            descriptions_made: AtomicU64::new(0),
            smtp_replies: (0..600).map(|_| AtomicU64::new(0)).collect(),
            pop3_errors: AtomicU64::new(0),
            imap_errors: AtomicU64::new(0),
            copies_healed: AtomicU64::new(0),
            copies_under_replicated: AtomicU64::new(0),
            heal_failures: AtomicU64::new(0),
            anti_entropy_rounds: AtomicU64::new(0),
            anti_entropy_buckets_differing: AtomicU64::new(0),
            anti_entropy_repairs: AtomicU64::new(0),
        }
    }
}

pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl NodeMetrics {
    /// Counts the final reply lines ("NNN ") found in freshly written SMTP output.
    pub fn count_smtp_replies(&self, output: &[u8]) {
        for line in output.split(|&b| b == b'\n') {
            if line.len() >= 4 && line[3] == b' ' && line[..3].iter().all(u8::is_ascii_digit) {
                let code = usize::from(line[0] - b'0') * 100
                    + usize::from(line[1] - b'0') * 10
                    + usize::from(line[2] - b'0');
                if let Some(counter) = self.smtp_replies.get(code) {
                    add(counter, 1);
                }
            }
        }
    }

    /// (code, count) for every SMTP reply code seen.
    pub fn smtp_replies(&self) -> Vec<(usize, u64)> {
        self.smtp_replies
            .iter()
            .enumerate()
            .map(|(code, c)| (code, c.load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
