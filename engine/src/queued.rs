//! What a shard has queued but not yet made durable, per message id: the changes the index
//! does not show yet.
//!
//! The index is updated when a record's batch is durable, in log order, but an append decides
//! what to write when it is queued. Without this, a decision could miss a record queued just
//! before it: a put queued after a not-yet-durable tombstone of the same message would land
//! behind it and leave a copy that every later delete takes for deleted already (the chaos
//! test showed one message in twelve sessions in a row that way); a tombstone queued after a
//! not-yet-durable put would not name the put's replicas. Compaction must not copy a message
//! with a delete or flag update queued either (the copy could land after it).
//!
//! Ids are unique per message across users (they carry the arrival time and the node), so
//! the user is not part of the key.

use std::collections::HashMap;

use crate::commit_queue::IndexOp;
use crate::record::ReplicaSet;

/// The queued records of one message.
#[derive(Clone, Copy, Debug, Default)]
struct Queued {
    puts: u32,
    deletes: u32,
    flag_updates: u32,
    /// The replica set and segment of the newest queued put.
    put_replicas: ReplicaSet,
    put_segment: u32,
}

/// Queued records by message id (see the module comment).
#[derive(Debug, Default)]
pub(crate) struct QueuedChanges {
    by_id: HashMap<u128, Queued>,
}

/// A queued put the index does not show yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct QueuedPut {
    pub replicas: ReplicaSet,
    pub segment: u32,
}

impl QueuedChanges {
    /// `op` was queued.
    pub fn note(&mut self, op: &IndexOp) {
        let Some(id) = message_of(op) else {
            return;
        };
        let queued = self.by_id.entry(id).or_default();
        match op {
            IndexOp::Put(entry) => {
                queued.puts = queued.puts.saturating_add(1);
                queued.put_replicas = entry.replicas;
                queued.put_segment = entry.location.segment;
            }
            IndexOp::Remove { .. } => queued.deletes = queued.deletes.saturating_add(1),
            IndexOp::Flags { .. } => queued.flag_updates = queued.flag_updates.saturating_add(1),
            _ => {}
        }
    }

    /// `op` was applied to the index, or its batch failed.
    pub fn settle(&mut self, op: &IndexOp) {
        let Some(id) = message_of(op) else {
            return;
        };
        let Some(queued) = self.by_id.get_mut(&id) else {
            return;
        };
        match op {
            IndexOp::Put(_) => queued.puts = queued.puts.saturating_sub(1),
            IndexOp::Remove { .. } => queued.deletes = queued.deletes.saturating_sub(1),
            IndexOp::Flags { .. } => queued.flag_updates = queued.flag_updates.saturating_sub(1),
            _ => {}
        }
        if queued.puts == 0 && queued.deletes == 0 && queued.flag_updates == 0 {
            self.by_id.remove(&id);
        }
    }

    /// A tombstone of `id` is queued.
    pub fn delete(&self, id: u128) -> bool {
        self.by_id.get(&id).is_some_and(|q| q.deletes > 0)
    }

    /// A tombstone or a flag update of `id` is queued (compaction must not copy it now).
    pub fn change(&self, id: u128) -> bool {
        self.by_id
            .get(&id)
            .is_some_and(|q| q.deletes > 0 || q.flag_updates > 0)
    }

    /// The newest put of `id` that is queued, if any.
    pub fn put(&self, id: u128) -> Option<QueuedPut> {
        self.by_id
            .get(&id)
            .filter(|q| q.puts > 0)
            .map(|q| QueuedPut {
                replicas: q.put_replicas,
                segment: q.put_segment,
            })
    }
}

fn message_of(op: &IndexOp) -> Option<u128> {
    match op {
        IndexOp::Put(entry) => Some(entry.id),
        IndexOp::Remove { id, .. } | IndexOp::Flags { id, .. } => Some(*id),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::{Location, MessageEntry, Tomb};

    fn put(id: u128, nodes: &[u32], segment: u32) -> IndexOp {
        IndexOp::Put(MessageEntry {
            filing: crate::index::Filing::default(),
            id,
            location: Location {
                segment,
                offset: 4096,
                len: 128,
            },
            body_len: 10,
            hlc: 1,
            flags: 0,
            oldest_segment: segment,
            origin: 1,
            replicas: ReplicaSet::new(nodes.iter().copied()),
        })
    }

    fn remove(id: u128) -> IndexOp {
        IndexOp::Remove {
            id,
            tomb: Tomb {
                hlc: 2,
                origin: 1,
                replicas: ReplicaSet::NONE,
            },
        }
    }

    #[test]
    fn a_queued_record_is_seen_until_it_settles() {
        let mut queued = QueuedChanges::default();
        let (p, d) = (put(7, &[1, 2], 3), remove(7));
        queued.note(&p);
        queued.note(&d);
        assert!(queued.delete(7) && queued.change(7));
        assert_eq!(
            queued.put(7),
            Some(QueuedPut {
                replicas: ReplicaSet::new([1, 2]),
                segment: 3
            })
        );
        assert!(!queued.delete(8) && queued.put(8).is_none());
        queued.settle(&p);
        assert!(queued.put(7).is_none() && queued.delete(7));
        queued.settle(&d);
        assert!(!queued.delete(7) && !queued.change(7));
        assert!(
            queued.by_id.is_empty(),
            "nothing left once every record settled"
        );
    }

    #[test]
    fn a_flag_update_is_a_change_but_not_a_delete() {
        let mut queued = QueuedChanges::default();
        let flags = IndexOp::Flags {
            id: 5,
            flags: 1,
            filing: None,
        };
        queued.note(&flags);
        assert!(queued.change(5) && !queued.delete(5));
        queued.settle(&flags);
        // Settling what was never noted changes nothing.
        queued.settle(&flags);
        assert!(!queued.change(5));
    }
}
