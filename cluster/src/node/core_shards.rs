//! The shards of one core (one per data directory) and which of them holds each user.
//!
//! A user's data (profile, mail, tombstones) lives on one shard, so every read, delete and
//! replicated update finds it in one place. A user already known here stays where they are; a
//! new user goes to the disk weighted rendezvous hashing picks first (see
//! `porcupine_engine::Placement`), or, if that disk recently refused a write for lack of space,
//! to the next one: a full disk stops taking new users while it keeps serving its own.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use porcupine_engine::{Placement, Shard};

/// How long a disk that returned ENOSPC takes no new users before it is tried again.
const FULL_FOR: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct CoreShards {
    placement: Placement,
    /// Shard index → shard, for the shards this core owns.
    shards: HashMap<usize, Shard>,
    full_until: RefCell<HashMap<usize, Instant>>,
}

impl CoreShards {
    pub fn new(placement: Placement, shards: HashMap<usize, Shard>) -> Self {
        Self {
            placement,
            shards,
            full_until: RefCell::new(HashMap::new()),
        }
    }

    pub fn all(&self) -> impl Iterator<Item = &Shard> {
        self.shards.values()
    }

    fn is_full(&self, index: usize) -> bool {
        self.full_until
            .borrow()
            .get(&index)
            .is_some_and(|until| Instant::now() < *until)
    }

    /// The shard holding `user` (see the module comment).
    pub fn for_user(&self, user: &str) -> Option<&Shard> {
        self.index_for(user).and_then(|i| self.shards.get(&i))
    }

    fn index_for(&self, user: &str) -> Option<usize> {
        // One data directory: nothing to choose (and nothing to allocate per request).
        if self.shards.len() == 1 {
            return self.shards.keys().next().copied();
        }
        let order: Vec<usize> = self
            .placement
            .shards_for(user)
            .into_iter()
            .filter(|i| self.shards.contains_key(i))
            .collect();
        choose(
            &order,
            |i| {
                self.shards
                    .get(&i)
                    .is_some_and(|s| s.has_profile(user) || s.has_messages(user))
            },
            |i| self.is_full(i),
        )
    }

    /// `shard` refused a write for lack of space: new users go to the other disks for a while.
    pub fn note_full(&self, shard: &Shard) {
        let index = self
            .shards
            .iter()
            .find(|(_, s)| s.name() == shard.name())
            .map(|(i, _)| *i);
        if let Some(index) = index {
            tracing::warn!(
                shard = shard.name(),
                "disk full: new users go to the other data directories"
            );
            self.full_until
                .borrow_mut()
                .insert(index, Instant::now() + FULL_FOR);
        }
    }
}

/// The shard for a user among `order` (the user's preference): the one that `holds` them, else
/// the first not `full`, else the first.
fn choose(
    order: &[usize],
    holds: impl Fn(usize) -> bool,
    full: impl Fn(usize) -> bool,
) -> Option<usize> {
    order
        .iter()
        .copied()
        .find(|&i| holds(i))
        .or_else(|| order.iter().copied().find(|&i| !full(i)))
        .or_else(|| order.first().copied())
}

#[cfg(test)]
mod tests {
    use super::choose;

    #[test]
    fn a_user_stays_where_they_are_and_new_users_skip_full_disks() {
        let order = [4, 0, 2];
        // New user, room everywhere: the first choice.
        assert_eq!(choose(&order, |_| false, |_| false), Some(4));
        // New user, first choice full: the next.
        assert_eq!(choose(&order, |_| false, |i| i == 4), Some(0));
        // Known user on a full disk: stays (reads go on; the write gets ENOSPC and the
        // cluster places the message on another node).
        assert_eq!(choose(&order, |i| i == 2, |i| i == 2), Some(2));
        // Every disk full: the first choice (its write reports ENOSPC).
        assert_eq!(choose(&order, |_| false, |_| true), Some(4));
        assert_eq!(choose(&[], |_| false, |_| false), None);
    }
}
