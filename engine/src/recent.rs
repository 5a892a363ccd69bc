//! The log bytes a shard wrote last, kept in memory: a bounded copy of its newest group-commit
//! batches, so that a record read soon after it became durable is served without a disk read.
//!
//! Why: mail is mostly fetched soon after it arrives (a POP client polls its maildrop), and the
//! log is written with O_DIRECT, so the kernel's page cache never holds it. Each durable batch
//! is copied once (one allocation per group commit, not per message); the oldest are dropped
//! past the budget. Log bytes never change once durable (a later batch rewrites its first
//! block with the same bytes), and segment numbers are never reused, so nothing here goes
//! stale. Reads still decode and check every record's CRC.

use std::collections::{BTreeMap, VecDeque};

use crate::index::Location;

/// Copies of the newest durable batches of one shard, at most `budget_bytes` of them.
#[derive(Debug, Default)]
pub struct RecentWrites {
    budget_bytes: usize,
    held_bytes: usize,
    /// (segment, offset of the batch's first byte) → (when it was kept, the batch's bytes).
    batches: BTreeMap<(u32, u64), (u64, Vec<u8>)>,
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

    /// Keeps a copy of `bytes`, durable at `start` of segment `seq`, dropping the oldest copies
    /// beyond the budget. A batch larger than the whole budget is not kept.
    pub fn remember(&mut self, seq: u32, start: u64, bytes: &[u8]) {
        if bytes.is_empty() || bytes.len() > self.budget_bytes {
            return;
        }
        // A batch smaller than a block is followed by one that starts at the same block and
        // carries its bytes too: that one replaces it.
        if let Some((_, replaced)) = self.batches.remove(&(seq, start)) {
            self.held_bytes -= replaced.len();
        }
        while self.held_bytes + bytes.len() > self.budget_bytes {
            let Some((oldest, stamp)) = self.order.pop_front() else {
                break;
            };
            if self
                .batches
                .get(&oldest)
                .is_some_and(|(kept, _)| *kept == stamp)
            {
                if let Some((_, dropped)) = self.batches.remove(&oldest) {
                    self.held_bytes -= dropped.len();
                }
            }
        }
        self.kept += 1;
        self.batches
            .insert((seq, start), (self.kept, bytes.to_vec()));
        self.held_bytes += bytes.len();
        self.order.push_back(((seq, start), self.kept));
    }

    /// The bytes at `location`, if one kept batch holds all of them.
    pub fn get(&self, location: Location) -> Option<&[u8]> {
        let offset = u64::from(location.offset);
        let ((seq, start), (_, bytes)) = self
            .batches
            .range(..=(location.segment, offset))
            .next_back()?;
        if *seq != location.segment {
            return None;
        }
        let from = usize::try_from(offset - start).ok()?;
        bytes.get(from..from.checked_add(location.len as usize)?)
    }

    pub fn held_bytes(&self) -> usize {
        self.held_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        recent.remember(3, 4096, &batch);
        assert_eq!(recent.get(at(3, 4096, 16)), Some(&batch[..16]));
        assert_eq!(recent.get(at(3, 8000, 100)), Some(&batch[3904..4004]));
        // Past its end, before its start, another segment: not here.
        assert_eq!(recent.get(at(3, 4096 + 8190, 10)), None);
        assert_eq!(recent.get(at(3, 0, 10)), None);
        assert_eq!(recent.get(at(2, 4096, 10)), None);
        assert_eq!(recent.get(at(4, 4096, 10)), None);
    }

    #[test]
    fn the_oldest_batches_go_first_and_the_budget_holds() {
        let mut recent = RecentWrites::new(10_000);
        for i in 0..10u32 {
            recent.remember(1, u64::from(i) * 4096, &vec![i as u8; 3000]);
            assert!(recent.held_bytes() <= 10_000);
        }
        // Three batches fit: the last three.
        assert_eq!(recent.get(at(1, 6 * 4096, 1)), None);
        assert_eq!(recent.get(at(1, 7 * 4096, 1)), Some(&[7u8][..]));
        assert_eq!(recent.get(at(1, 9 * 4096 + 2999, 1)), Some(&[9u8][..]));
        // Larger than the budget: not kept, nothing dropped for it.
        recent.remember(2, 4096, &vec![0; 20_000]);
        assert_eq!(recent.get(at(2, 4096, 1)), None);
        assert_eq!(recent.get(at(1, 9 * 4096, 1)), Some(&[9u8][..]));
        // No budget: nothing kept.
        let mut off = RecentWrites::new(0);
        off.remember(1, 4096, &[1, 2, 3]);
        assert_eq!(off.get(at(1, 4096, 1)), None);
    }

    #[test]
    fn a_place_written_again_keeps_the_newer_bytes() {
        let mut recent = RecentWrites::new(100);
        recent.remember(1, 4096, &[1; 10]);
        recent.remember(1, 4096, &[2; 20]);
        assert_eq!(recent.held_bytes(), 20);
        assert_eq!(recent.get(at(1, 4096 + 15, 2)), Some(&[2u8, 2][..]));
        // Its older entry in the eviction order drops nothing: the newer copy stays until its
        // own turn.
        recent.remember(1, 8192, &[3; 70]);
        assert_eq!(recent.get(at(1, 4096, 20)), Some(&[2u8; 20][..]));
        recent.remember(1, 12288, &[4; 30]);
        assert_eq!(recent.get(at(1, 4096, 1)), None);
        assert_eq!(recent.get(at(1, 8192, 70)), Some(&[3u8; 70][..]));
        assert_eq!(recent.held_bytes(), 100);
    }
}
