//! The document `GET /status` answers, as types: the node writes a [`Status`] and every reader
//! (`porcupine status`, the benches, the tests) reads one back, so a renamed or retyped field is
//! a compile error on both sides instead of a `null` read by string key.
//!
//! The JSON is the types' serde form; field names are the document's keys.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Everything `/status` reports about a node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub node: NodeInfo,
    pub node_id: u64,
    /// The membership view installed here.
    pub epoch: EpochInfo,
    pub members: Vec<MemberStatus>,
    pub buckets: Buckets,
    /// Users with a profile on this node.
    pub users: usize,
    /// Messages stored on this node.
    pub messages: u64,
    pub replication: ReplicationStatus,
    pub placement: PlacementStatus,
    pub engine: EngineStatus,
    pub disks: Vec<DiskStatus>,
    pub shards: Vec<ShardReport>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub hostname: String,
    pub version: String,
    pub cores: usize,
    pub domains: Vec<String>,
    pub smtp: String,
    pub pop3: String,
    pub admin: String,
    pub uptime_s: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochInfo {
    pub clock: u64,
    pub coordinator: u64,
}

/// A member of the view, with its load as this node knows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub id: u64,
    pub address: String,
    /// Operations under way on its disks (`None`: not heard from yet).
    pub load: Option<u32>,
    pub load_age_ms: Option<u64>,
    /// Its disks refused a write for want of space lately.
    pub full: bool,
    /// This node itself.
    #[serde(rename = "self")]
    pub is_self: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Buckets {
    pub total: usize,
    /// Buckets this node manages.
    pub owned: usize,
    /// Buckets each node manages.
    pub by_node: BTreeMap<u64, usize>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReplicationStatus {
    pub replicas: usize,
    pub ack: AckName,
    /// Replicated updates here not yet acknowledged by every replica.
    pub pending_updates: usize,
    /// `--dead-after`, in seconds.
    #[serde(default)]
    pub dead_after_s: u64,
    /// Nodes this node declared dead; their copies are made again elsewhere.
    #[serde(default)]
    pub dead_nodes: Vec<u64>,
    /// Copies here with fewer holders than `replicas` that are not dead (healing's work
    /// left, as of the last survey).
    #[serde(default)]
    pub under_replicated: u64,
    /// Copies this node made again since it started.
    #[serde(default)]
    pub healed: u64,
    #[serde(default)]
    pub heal_failures: u64,
    /// Copies anti-entropy pushed to a member that lacked them, since the node started.
    #[serde(default)]
    pub anti_entropy_repairs: u64,
}

/// When a delivery is acknowledged (`--ack`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AckName {
    All,
    Coordinator,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlacementStatus {
    pub policy: PlacementName,
    /// Dynamic placement's spread.
    pub spread: Option<usize>,
    pub overload_ops: u32,
}

/// Where new mail goes (`--placement`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlacementName {
    Static,
    Random,
    Dynamic,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineStatus {
    pub batch_kib: usize,
    pub commit_window_us: u64,
    pub io_depth: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DiskStatus {
    pub dir: String,
    pub weight: f64,
    /// The simulated disk the directory is throttled to, if it is.
    pub throttle: Option<String>,
}

/// Summary of one shard for `/status` and `/metrics`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShardReport {
    pub name: String,
    pub core: usize,
    pub dir: String,
    pub messages: u64,
    pub users: usize,
    pub segments: usize,
    pub poisoned: Option<String>,
    pub appended_records: u64,
    pub appended_bytes: u64,
    /// New segments made from compacted ones, and created (blocks reserved); zeros written
    /// ahead of the log in idle time (a second write of those bytes).
    #[serde(default)]
    pub segments_recycled: u64,
    #[serde(default)]
    pub segments_created: u64,
    #[serde(default)]
    pub zeroed_bytes: u64,
    /// Bytes compaction copied forward, and index checkpoint bytes written.
    #[serde(default)]
    pub compacted_bytes: u64,
    #[serde(default)]
    pub checkpoint_bytes: u64,
    pub fsyncs: u64,
    pub records_per_fsync_mean: f64,
    pub fsync_p50_us: u64,
    pub fsync_p99_us: u64,
    pub ack_p50_us: u64,
    pub ack_p99_us: u64,
    pub ack_p999_us: u64,
    /// Replicated updates here not yet acknowledged by every replica.
    pub pending_updates: usize,
    /// Operations under way that may touch the shard's disk (what placement balances on).
    pub load: u32,
    /// The simulated disk of the shard's directory, if it is throttled (experiments).
    pub throttle: Option<String>,
    /// Latency histograms since the shard opened (`/metrics`).
    #[serde(default)]
    pub fsync_histogram: Histogram,
    #[serde(default)]
    pub ack_histogram: Histogram,
}

/// A latency histogram: the count in each bucket (upper bounds in `bounds_seconds`, then one
/// more above the last), their sum and count.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    pub bounds_seconds: Vec<f64>,
    pub counts: Vec<u64>,
    pub sum_seconds: f64,
    pub count: u64,
}

impl Histogram {
    pub fn of(buckets: &porcupine_engine::metrics::LatencyBuckets) -> Self {
        Self {
            bounds_seconds: porcupine_engine::metrics::LATENCY_BOUNDS_US
                .iter()
                .map(|us| *us as f64 / 1e6)
                .collect(),
            counts: buckets.counts.clone(),
            sum_seconds: buckets.sum_micros / 1e6,
            count: buckets.count,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_reads_back_as_written() {
        let status = Status {
            node: NodeInfo {
                hostname: "mx.example".into(),
                version: "0.1.0".into(),
                cores: 2,
                domains: vec!["example.org".into()],
                smtp: "127.0.0.1:2525".into(),
                pop3: "127.0.0.1:1110".into(),
                admin: "127.0.0.1:8025".into(),
                uptime_s: 5,
            },
            node_id: 7,
            epoch: EpochInfo {
                clock: 3,
                coordinator: 7,
            },
            members: vec![MemberStatus {
                id: 7,
                address: "127.0.0.1:7946".into(),
                load: Some(1),
                load_age_ms: Some(0),
                full: false,
                is_self: true,
            }],
            buckets: Buckets {
                total: 1024,
                owned: 1024,
                by_node: BTreeMap::from([(7, 1024)]),
            },
            users: 1,
            messages: 2,
            replication: ReplicationStatus {
                replicas: 2,
                ack: AckName::All,
                pending_updates: 0,
                dead_after_s: 14_400,
                dead_nodes: vec![3],
                under_replicated: 10,
                healed: 5,
                heal_failures: 0,
                anti_entropy_repairs: 1,
            },
            placement: PlacementStatus {
                policy: PlacementName::Dynamic,
                spread: Some(2),
                overload_ops: 256,
            },
            engine: EngineStatus {
                batch_kib: 1024,
                commit_window_us: 0,
                io_depth: 1,
            },
            disks: vec![DiskStatus {
                dir: "/data".into(),
                weight: 1.0,
                throttle: None,
            }],
            shards: Vec::new(),
        };
        let text = serde_json::to_string(&status).unwrap();
        // The keys readers outside Rust (scripts, dashboards) rely on.
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["members"][0]["self"], true);
        assert_eq!(value["buckets"]["by_node"]["7"], 1024);
        assert_eq!(value["placement"]["policy"], "dynamic");
        assert_eq!(value["replication"]["ack"], "all");
        assert_eq!(serde_json::from_str::<Status>(&text).unwrap(), status);
    }
}
