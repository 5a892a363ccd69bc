//! Which shard holds a user: one shard per (core, data directory), chosen by the user's key.

use std::path::{Path, PathBuf};

use crate::record::user_key;

/// The shard layout of a node: `cores` executors × `data_dirs.len()` directories.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    pub cores: usize,
    pub data_dirs: Vec<PathBuf>,
}

/// One shard's address in the layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardAddress {
    /// Index in `0..cores * data_dirs`.
    pub shard: usize,
    pub core: usize,
    pub dir: PathBuf,
}

impl Placement {
    pub fn new(cores: usize, data_dirs: Vec<PathBuf>) -> Self {
        Self {
            cores: cores.max(1),
            data_dirs,
        }
    }

    pub fn shard_count(&self) -> usize {
        self.cores * self.data_dirs.len().max(1)
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
            dir: root.join(format!("shard-{core}")),
        }
    }

    /// The shard that holds `user`'s mail on this node.
    pub fn shard_of(&self, user: &str) -> usize {
        (user_key(user) % self.shard_count() as u64) as usize
    }

    /// The shards owned by `core`.
    pub fn shards_of_core(&self, core: usize) -> Vec<ShardAddress> {
        (0..self.shard_count())
            .filter(|s| s % self.cores == core)
            .map(|s| self.address(s))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shard_has_one_core_and_one_dir() {
        let p = Placement::new(2, vec!["/a".into(), "/b".into()]);
        assert_eq!(p.shard_count(), 4);
        assert_eq!(p.address(3).dir, Path::new("/b/shard-1"));
        assert_eq!(p.shards_of_core(0).len(), 2);
        assert!(p.shard_of("alice@localhost") < 4);
    }
}
