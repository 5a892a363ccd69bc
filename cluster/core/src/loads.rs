//! Loads: this node's own (the sum of its shards' operations that may touch disk, and whether a
//! disk is full), and the table of every node's load as last heard, with its age.
//!
//! A node hears loads first-hand on every frame (each header carries the sender's load) and
//! second-hand from the periodic exchange around the ring (each node sends its table to its
//! successor), so every node knows every other's load within a few exchange periods. Both are
//! shared by all cores without a lock: fixed slots of atomics, written on every frame.
//!
//! Time is the caller's: every method that needs it takes `now_ms`, milliseconds on one
//! monotonic clock of the caller's choosing (the node's: since it started).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::membership::NodeId;

/// How long a node counts as full after one of its disks refused a write for lack of space
/// (then it is tried again: compaction or an operator may have made room).
pub const FULL_FOR: Duration = Duration::from_secs(10);

/// A load heard longer ago than this is not trusted: the node counts as idle, and the entry
/// is no longer passed on.
pub const LOAD_MAX_AGE: Duration = Duration::from_secs(5);

/// This node's load.
#[derive(Debug)]
pub struct NodeLoad {
    shards: Vec<OnceLock<Arc<AtomicU32>>>,
    /// The time (`now_ms`) until which this node counts as full (0: never was).
    full_until_ms: AtomicU64,
}

impl NodeLoad {
    pub fn new(shards: usize) -> Self {
        Self {
            shards: (0..shards).map(|_| OnceLock::new()).collect(),
            full_until_ms: AtomicU64::new(0),
        }
    }

    /// Counts shard `index`'s gauge (see `porcupine_engine::Shard::load`) in this node's load.
    pub fn register(&self, index: usize, gauge: Arc<AtomicU32>) {
        if let Some(slot) = self.shards.get(index) {
            let _ = slot.set(gauge);
        }
    }

    /// Operations under way on this node's disks.
    pub fn total(&self) -> u32 {
        self.shards
            .iter()
            .filter_map(OnceLock::get)
            .map(|g| g.load(Ordering::Relaxed))
            .fold(0u32, u32::saturating_add)
    }

    /// A disk of this node just refused a write for lack of space.
    pub fn note_full(&self, now_ms: u64) {
        let until = now_ms.saturating_add(FULL_FOR.as_millis() as u64).max(1);
        self.full_until_ms.store(until, Ordering::Relaxed);
    }

    pub fn is_full(&self, now_ms: u64) -> bool {
        let until = self.full_until_ms.load(Ordering::Relaxed);
        until != 0 && now_ms < until
    }
}

/// One node's load as carried by the ring exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadEntry {
    pub node: NodeId,
    pub load: u32,
    pub full: bool,
    /// How long ago the sender's information was fresh.
    pub age_ms: u32,
}

/// A node's load as this node knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heard {
    pub load: u32,
    pub full: bool,
    pub age: Duration,
}

/// Most nodes the table tracks (a cluster larger than this balances on partial knowledge).
pub const TABLE_NODES_MAX: usize = 256;

const FULL_BIT: u64 = 1 << 32;

/// Larger than any age an entry can carry (`u32::MAX` ms).
const CLOCK_OFFSET_MS: u64 = 1 << 33;

#[derive(Debug, Default)]
struct Slot {
    /// The node's id + 1 (0: a free slot).
    key: AtomicU64,
    /// Load in the low 32 bits, [`FULL_BIT`] when full.
    state: AtomicU64,
    /// When the state was fresh, on the table's clock (0: never set).
    fresh_ms: AtomicU64,
}

/// Every node's load as last heard (see the module comment).
#[derive(Debug)]
pub struct LoadTable {
    slots: Box<[Slot]>,
}

impl Default for LoadTable {
    fn default() -> Self {
        Self {
            slots: (0..TABLE_NODES_MAX).map(|_| Slot::default()).collect(),
        }
    }
}

impl LoadTable {
    /// The caller's time, offset so that an age can always be subtracted and no time is 0.
    fn table_time(now_ms: u64) -> u64 {
        now_ms.saturating_add(CLOCK_OFFSET_MS)
    }

    fn slot(&self, node: NodeId, create: bool) -> Option<&Slot> {
        let key = node.wrapping_add(1);
        for slot in self.slots.iter() {
            let current = slot.key.load(Ordering::Acquire);
            if current == key {
                return Some(slot);
            }
            if current == 0 {
                if !create {
                    return None;
                }
                match slot
                    .key
                    .compare_exchange(0, key, Ordering::AcqRel, Ordering::Acquire)
                {
                    Ok(_) => return Some(slot),
                    Err(taken) if taken == key => return Some(slot),
                    Err(_) => continue,
                }
            }
        }
        None
    }

    /// The load a node just sent in a frame header (its full flag is kept from the last
    /// exchange).
    pub fn heard(&self, node: NodeId, load: u32, now_ms: u64) {
        if let Some(slot) = self.slot(node, true) {
            let full = slot.state.load(Ordering::Relaxed) & FULL_BIT;
            slot.state.store(u64::from(load) | full, Ordering::Relaxed);
            slot.fresh_ms
                .store(Self::table_time(now_ms), Ordering::Relaxed);
        }
    }

    /// A load known first-hand now, with its full flag (this node's own, when it sends).
    pub fn set(&self, node: NodeId, load: u32, full: bool, now_ms: u64) {
        self.merge(
            &[LoadEntry {
                node,
                load,
                full,
                age_ms: 0,
            }],
            now_ms,
        );
    }

    /// Entries from another node's table: each replaces what is here if it is fresher.
    pub fn merge(&self, entries: &[LoadEntry], now_ms: u64) {
        let now = Self::table_time(now_ms);
        for entry in entries {
            let Some(slot) = self.slot(entry.node, true) else {
                continue;
            };
            let fresh = now.saturating_sub(u64::from(entry.age_ms));
            if slot.fresh_ms.load(Ordering::Relaxed) > fresh {
                continue;
            }
            let full = if entry.full { FULL_BIT } else { 0 };
            slot.state
                .store(u64::from(entry.load) | full, Ordering::Relaxed);
            slot.fresh_ms.store(fresh, Ordering::Relaxed);
        }
    }

    /// What is known of `node`'s load.
    pub fn get(&self, node: NodeId, now_ms: u64) -> Option<Heard> {
        let slot = self.slot(node, false)?;
        let fresh = slot.fresh_ms.load(Ordering::Relaxed);
        if fresh == 0 {
            return None;
        }
        let state = slot.state.load(Ordering::Relaxed);
        Some(Heard {
            load: state as u32,
            full: state & FULL_BIT != 0,
            age: Duration::from_millis(Self::table_time(now_ms).saturating_sub(fresh)),
        })
    }

    /// Every entry no older than `max_age`, for the exchange and for status.
    pub fn entries(&self, max_age: Duration, now_ms: u64) -> Vec<LoadEntry> {
        let now = Self::table_time(now_ms);
        self.slots
            .iter()
            .filter_map(|slot| {
                let key = slot.key.load(Ordering::Acquire);
                if key == 0 {
                    return None;
                }
                let fresh = slot.fresh_ms.load(Ordering::Relaxed);
                if fresh == 0 {
                    return None;
                }
                let state = slot.state.load(Ordering::Relaxed);
                let age = now.saturating_sub(fresh);
                (age <= max_age.as_millis() as u64).then_some(LoadEntry {
                    node: key - 1,
                    load: state as u32,
                    full: state & FULL_BIT != 0,
                    age_ms: age.min(u64::from(u32::MAX)) as u32,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_load_sums_its_shards_and_remembers_a_full_disk() {
        let load = NodeLoad::new(3);
        let a = Arc::new(AtomicU32::new(4));
        let b = Arc::new(AtomicU32::new(5));
        load.register(0, a.clone());
        load.register(2, b);
        load.register(7, Arc::new(AtomicU32::new(100))); // no such shard: ignored
        assert_eq!(load.total(), 9);
        load.register(1, Arc::new(AtomicU32::new(2)));
        assert_eq!(load.total(), 11);
        a.store(0, Ordering::Relaxed);
        assert_eq!(load.total(), 7);
        assert!(!load.is_full(1_000));
        load.note_full(1_000);
        assert!(load.is_full(1_000));
        assert!(load.is_full(1_000 + FULL_FOR.as_millis() as u64 - 1));
        assert!(!load.is_full(1_000 + FULL_FOR.as_millis() as u64));
    }

    #[test]
    fn the_fresher_knowledge_wins() {
        let table = LoadTable::default();
        assert_eq!(table.get(7, 0), None);
        table.heard(7, 10, 0);
        let heard = table.get(7, 400).unwrap();
        assert_eq!((heard.load, heard.full), (10, false));
        assert_eq!(heard.age, Duration::from_millis(400));
        // Second-hand and older than what was heard directly: ignored.
        table.merge(
            &[LoadEntry {
                node: 7,
                load: 99,
                full: true,
                age_ms: 5_000,
            }],
            400,
        );
        assert_eq!(table.get(7, 400).unwrap().load, 10);
        // Second-hand but fresh: taken, with its full flag, which a frame header keeps.
        table.merge(
            &[LoadEntry {
                node: 7,
                load: 3,
                full: true,
                age_ms: 0,
            }],
            500,
        );
        assert_eq!(table.get(7, 500).map(|h| (h.load, h.full)), Some((3, true)));
        table.heard(7, 4, 600);
        assert_eq!(table.get(7, 600).map(|h| (h.load, h.full)), Some((4, true)));
        // An unknown node learned second-hand is taken whatever its age.
        table.merge(
            &[LoadEntry {
                node: 8,
                load: 1,
                full: false,
                age_ms: 2_000,
            }],
            600,
        );
        assert_eq!(table.get(8, 700).unwrap().age, Duration::from_millis(2_100));
        let mut nodes: Vec<NodeId> = table
            .entries(Duration::from_secs(60), 700)
            .iter()
            .map(|e| e.node)
            .collect();
        nodes.sort_unstable();
        assert_eq!(nodes, vec![7, 8]);
        assert_eq!(table.entries(Duration::from_secs(1), 700).len(), 1);
    }

    #[test]
    fn a_full_table_ignores_more_nodes() {
        let table = LoadTable::default();
        for node in 0..(TABLE_NODES_MAX as u64 + 10) {
            table.heard(node, 1, 0);
        }
        assert!(table.get(TABLE_NODES_MAX as u64 + 5, 0).is_none());
        assert_eq!(
            table.entries(Duration::from_secs(60), 0).len(),
            TABLE_NODES_MAX
        );
    }
}
