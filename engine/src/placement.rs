//! Which shard holds a user: one shard per (core, data directory). The core is fixed by the
//! user's key; the directory is chosen by weighted rendezvous hashing, so each disk gets new
//! users in proportion to its weight (its measured capacity), and a change of weights or a
//! disk left out moves only the users whose best disk changed.

use std::path::{Path, PathBuf};

use crate::record::user_key;

/// The shard layout of a node: `cores` executors × `data_dirs.len()` directories, each
/// directory with a weight (relative capacity; 1.0 each unless configured).
#[derive(Clone, Debug, PartialEq)]
pub struct Placement {
    pub cores: usize,
    pub data_dirs: Vec<PathBuf>,
    pub weights: Vec<f64>,
}

/// One shard's address in the layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardAddress {
    /// Index in `0..cores * data_dirs`.
    pub shard: usize,
    pub core: usize,
    /// Index of its data directory.
    pub disk: usize,
    pub dir: PathBuf,
}

impl Placement {
    /// Equal weights.
    pub fn new(cores: usize, data_dirs: Vec<PathBuf>) -> Self {
        let weights = vec![1.0; data_dirs.len()];
        Self::weighted(cores, data_dirs, weights)
    }

    /// `weights[i]` is directory `i`'s share of new users relative to the others; a missing,
    /// non-finite or non-positive weight counts as 1.
    pub fn weighted(cores: usize, data_dirs: Vec<PathBuf>, weights: Vec<f64>) -> Self {
        let weights = (0..data_dirs.len())
            .map(|i| {
                weights
                    .get(i)
                    .copied()
                    .filter(|w| w.is_finite() && *w > 0.0)
                    .unwrap_or(1.0)
            })
            .collect();
        Self {
            cores: cores.max(1),
            data_dirs,
            weights,
        }
    }

    pub fn disks(&self) -> usize {
        self.data_dirs.len().max(1)
    }

    pub fn shard_count(&self) -> usize {
        self.cores * self.disks()
    }

    /// Shard `shard` lives on core `shard % cores`, in directory `shard / cores`.
    pub fn address(&self, shard: usize) -> ShardAddress {
        let core = shard % self.cores;
        let disk = shard / self.cores;
        let root = self
            .data_dirs
            .get(disk)
            .map(PathBuf::as_path)
            .unwrap_or(Path::new("."));
        ShardAddress {
            shard,
            core,
            disk,
            dir: root.join(format!("shard-{core}")),
        }
    }

    /// The core that serves `user` (whatever the disks and their weights).
    pub fn core_of(&self, user: &str) -> usize {
        (user_key(user) % self.cores as u64) as usize
    }

    /// The shards that may hold `user`: the user's core on every disk, the disk a new user
    /// goes to first, then the next choices in order.
    pub fn shards_for(&self, user: &str) -> Vec<usize> {
        let key = user_key(user);
        let core = (key % self.cores as u64) as usize;
        let mut disks: Vec<(f64, usize)> = (0..self.disks())
            .map(|disk| {
                let weight = self.weights.get(disk).copied().unwrap_or(1.0);
                (rendezvous_score(key, disk, weight), disk)
            })
            .collect();
        disks.sort_by(|a, b| b.0.total_cmp(&a.0));
        disks
            .into_iter()
            .map(|(_, disk)| disk * self.cores + core)
            .collect()
    }

    /// The shard a new user goes to when every disk has room.
    pub fn shard_of(&self, user: &str) -> usize {
        self.shards_for(user)
            .first()
            .copied()
            .unwrap_or_else(|| self.core_of(user))
    }

    /// The shards owned by `core`.
    pub fn shards_of_core(&self, core: usize) -> Vec<ShardAddress> {
        (0..self.shard_count())
            .filter(|s| s % self.cores == core)
            .map(|s| self.address(s))
            .collect()
    }
}

/// Weighted rendezvous score (Schindelhauer & Schomaker's logarithmic method): the disk with the
/// highest `weight / -ln(u)`, `u` uniform in (0, 1) from the user and the disk, wins with
/// probability proportional to its weight.
fn rendezvous_score(key: u64, disk: usize, weight: f64) -> f64 {
    let mut x = key ^ (disk as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    // 53 random bits, strictly inside (0, 1).
    let u = ((x >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    weight / -u.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shard_has_one_core_and_one_dir() {
        let p = Placement::new(2, vec!["/a".into(), "/b".into()]);
        assert_eq!(p.shard_count(), 4);
        assert_eq!(p.address(3).dir, Path::new("/b/shard-1"));
        assert_eq!(p.address(3).disk, 1);
        assert_eq!(p.shards_of_core(0).len(), 2);
        assert!(p.shard_of("alice@localhost") < 4);
    }

    #[test]
    fn a_user_stays_on_one_core_and_tries_every_disk() {
        let p = Placement::new(2, vec!["/a".into(), "/b".into(), "/c".into()]);
        for n in 0..200 {
            let user = format!("user{n}@x");
            let shards = p.shards_for(&user);
            assert_eq!(shards.len(), 3);
            assert!(shards.iter().all(|s| s % 2 == p.core_of(&user)));
            let mut disks: Vec<usize> = shards.iter().map(|s| s / 2).collect();
            disks.sort_unstable();
            assert_eq!(disks, vec![0, 1, 2]);
            assert_eq!(p.shard_of(&user), shards[0]);
        }
    }

    #[test]
    fn new_users_spread_in_proportion_to_the_weights() {
        let dirs: Vec<PathBuf> = vec!["/fast".into(), "/slow".into(), "/mid".into()];
        let p = Placement::weighted(1, dirs.clone(), vec![4.0, 1.0, 2.0]);
        let mut counts = [0usize; 3];
        let users = 70_000;
        for n in 0..users {
            counts[p.shard_of(&format!("user{n}@x"))] += 1;
        }
        for (disk, expected) in [(0, 4.0 / 7.0), (1, 1.0 / 7.0), (2, 2.0 / 7.0)] {
            let share = counts[disk] as f64 / users as f64;
            assert!((share - expected).abs() < 0.01, "disk {disk}: {share}");
        }
        // Changing one weight moves users only to or from that disk.
        let heavier = Placement::weighted(1, dirs, vec![4.0, 3.0, 2.0]);
        for n in 0..5_000 {
            let user = format!("user{n}@x");
            let (before, after) = (p.shard_of(&user), heavier.shard_of(&user));
            assert!(before == after || after == 1, "{user}: {before} → {after}");
        }
    }

    #[test]
    fn bad_weights_count_as_one() {
        let p = Placement::weighted(1, vec!["/a".into(), "/b".into()], vec![f64::NAN]);
        assert_eq!(p.weights, vec![1.0, 1.0]);
    }
}
