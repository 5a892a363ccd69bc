//! The log bytes a shard wrote last, kept in memory: its newest group-commit batches, so that
//! a record read soon after it became durable is served without a disk read.
//!
//! Why: mail is mostly fetched soon after it arrives (a POP client polls its maildrop), and the
//! log is written with O_DIRECT, so the kernel's page cache never holds it. The batch buffers
//! the writer wrote from are kept themselves, shared, not copied (a body is copied into its
//! batch once, and a read from here copies nothing); the oldest are dropped past the budget,
//! which counts each buffer's whole allocation. Log bytes never change once durable (a later
//! batch rewrites its first block with the same bytes), and segment numbers are never reused,
//! so nothing here goes stale. Reads still decode and check every record's CRC.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Range;
use std::rc::Rc;

use crate::index::Location;
use crate::storage::IoBuffer;

/// A kept batch: the buffer the writer wrote, how many of its bytes are log, and what it costs.
struct Kept {
    stamp: u64,
    buf: Rc<dyn IoBuffer>,
    used: usize,
    charge: usize,
}

impl std::fmt::Debug for Kept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kept")
            .field("used", &self.used)
            .field("charge", &self.charge)
            .finish()
    }
}

/// The newest durable batches of one shard, at most `budget_bytes` of allocations.
#[derive(Debug, Default)]
pub struct RecentWrites {
    budget_bytes: usize,
    held_bytes: usize,
    /// (segment, offset of the batch's first byte) → the kept batch.
    batches: BTreeMap<(u32, u64), Kept>,
    /// Keys with when they were kept, oldest first. A key kept again stays here with its
    /// older stamp too; that entry no longer matches and drops nothing.
    order: VecDeque<((u32, u64), u64)>,
    kept: u64,
}

impl RecentWrites {
    pub fn new(budget_bytes: usize) -> Self {
        Self {
            budget_bytes,
            ..Self::default()
        }
    }

    /// Keeps `buf`, whose first `used` bytes are durable at `start` of segment `seq` and whose
    /// allocation is `charge` bytes, dropping the oldest beyond the budget. A batch costing more
    /// than the whole budget is not kept.
    pub fn remember(
        &mut self,
        seq: u32,
        start: u64,
        buf: Rc<dyn IoBuffer>,
        used: usize,
        charge: usize,
    ) {
        let charge = charge.max(used);
        if used == 0 || charge > self.budget_bytes || buf.bytes().len() < used {
            return;
        }
        // A batch smaller than a block is followed by one that starts at the same block and
        // carries its bytes too: that one replaces it.
        if let Some(replaced) = self.batches.remove(&(seq, start)) {
            self.held_bytes -= replaced.charge;
        }
        while self.held_bytes + charge > self.budget_bytes {
            let Some((oldest, stamp)) = self.order.pop_front() else {
                break;
            };
            if self.batches.get(&oldest).is_some_and(|k| k.stamp == stamp) {
                if let Some(dropped) = self.batches.remove(&oldest) {
                    self.held_bytes -= dropped.charge;
                }
            }
        }
        self.kept += 1;
        self.batches.insert(
            (seq, start),
            Kept {
                stamp: self.kept,
                buf,
                used,
                charge,
            },
        );
        self.held_bytes += charge;
        self.order.push_back(((seq, start), self.kept));
    }

    /// The buffer holding `location` and the record's range in it, if one kept batch holds all
    /// of it.
    pub fn get(&self, location: Location) -> Option<(Rc<dyn IoBuffer>, Range<usize>)> {
        let offset = u64::from(location.offset);
        let ((seq, start), kept) = self
            .batches
            .range(..=(location.segment, offset))
            .next_back()?;
        if *seq != location.segment {
            return None;
        }
        let from = usize::try_from(offset - start).ok()?;
        let to = from.checked_add(location.len as usize)?;
        (to <= kept.used).then(|| (kept.buf.clone(), from..to))
    }

    pub fn held_bytes(&self) -> usize {
        self.held_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plain byte buffer standing in for a DMA buffer.
    struct Plain(Vec<u8>);

    impl IoBuffer for Plain {
        fn bytes(&self) -> &[u8] {
            &self.0
        }
        fn bytes_mut(&mut self) -> &mut [u8] {
            &mut self.0
        }
        fn truncate(&mut self, len: usize) {
            self.0.truncate(len);
        }
    }

    fn keep(recent: &mut RecentWrites, seq: u32, start: u64, bytes: &[u8]) {
        let len = bytes.len();
        recent.remember(seq, start, Rc::new(Plain(bytes.to_vec())), len, len);
    }

    fn read(recent: &RecentWrites, location: Location) -> Option<Vec<u8>> {
        recent
            .get(location)
            .map(|(buf, range)| buf.bytes()[range].to_vec())
    }

    fn at(segment: u32, offset: u32, len: u32) -> Location {
        Location {
            segment,
            offset,
            len,
        }
    }

    #[test]
    fn serves_what_a_kept_batch_holds_and_nothing_else() {
        let mut recent = RecentWrites::new(1 << 20);
        let batch: Vec<u8> = (0..8192u32).map(|i| i as u8).collect();
        keep(&mut recent, 3, 4096, &batch);
        assert_eq!(read(&recent, at(3, 4096, 16)), Some(batch[..16].to_vec()));
        assert_eq!(
            read(&recent, at(3, 8000, 100)),
            Some(batch[3904..4004].to_vec())
        );
        // Past its end, before its start, another segment: not here.
        assert_eq!(read(&recent, at(3, 4096 + 8190, 10)), None);
        assert_eq!(read(&recent, at(3, 0, 10)), None);
        assert_eq!(read(&recent, at(2, 4096, 10)), None);
        assert_eq!(read(&recent, at(4, 4096, 10)), None);
    }

    #[test]
    fn the_oldest_batches_go_first_and_the_budget_holds() {
        let mut recent = RecentWrites::new(10_000);
        for i in 0..10u32 {
            keep(&mut recent, 1, u64::from(i) * 4096, &vec![i as u8; 3000]);
            assert!(recent.held_bytes() <= 10_000);
        }
        // Three batches fit: the last three.
        assert_eq!(read(&recent, at(1, 6 * 4096, 1)), None);
        assert_eq!(read(&recent, at(1, 7 * 4096, 1)), Some(vec![7u8]));
        assert_eq!(read(&recent, at(1, 9 * 4096 + 2999, 1)), Some(vec![9u8]));
        // Larger than the budget: not kept, nothing dropped for it.
        keep(&mut recent, 2, 4096, &vec![0; 20_000]);
        assert_eq!(read(&recent, at(2, 4096, 1)), None);
        assert_eq!(read(&recent, at(1, 9 * 4096, 1)), Some(vec![9u8]));
        // No budget: nothing kept.
        let mut off = RecentWrites::new(0);
        keep(&mut off, 1, 4096, &[1, 2, 3]);
        assert_eq!(read(&off, at(1, 4096, 1)), None);
    }

    #[test]
    fn a_place_written_again_keeps_the_newer_bytes() {
        let mut recent = RecentWrites::new(100);
        keep(&mut recent, 1, 4096, &[1; 10]);
        keep(&mut recent, 1, 4096, &[2; 20]);
        assert_eq!(recent.held_bytes(), 20);
        assert_eq!(read(&recent, at(1, 4096 + 15, 2)), Some(vec![2u8, 2]));
        // Its older entry in the eviction order drops nothing: the newer copy stays until its
        // own turn.
        keep(&mut recent, 1, 8192, &[3; 70]);
        assert_eq!(read(&recent, at(1, 4096, 20)), Some(vec![2u8; 20]));
        keep(&mut recent, 1, 12288, &[4; 30]);
        assert_eq!(read(&recent, at(1, 4096, 1)), None);
        assert_eq!(read(&recent, at(1, 8192, 70)), Some(vec![3u8; 70]));
        assert_eq!(recent.held_bytes(), 100);
    }
}
