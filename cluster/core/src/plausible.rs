//! What a peer may send even once it has proved it holds the cluster key: a member that is
//! buggy, old or half-broken must not be able to bring another node down or poison its state
//! for good. Views are checked before they are installed, and epochs and timestamps may not be
//! absurdly far ahead of this node's clock (one from the far future would win every later
//! comparison forever). Pure functions: the caller passes the time in.

use std::collections::BTreeSet;

use crate::membership::{Epoch, NodeId, View};

/// How far ahead of this node's clock a peer's epoch or timestamp may be: clock skew between
/// servers is seconds at worst; ten minutes leaves room for a badly set clock without letting
/// a stamp from the far future win every comparison for good.
pub const FUTURE_MAX_MS: u64 = 10 * 60 * 1000;
/// Members a view may have (the paper ran 30 nodes).
pub const MEMBERS_MAX: usize = 1024;
/// Node ids fit in 32 bits (every frame header names its sender in 32 bits).
const NODE_ID_MAX: NodeId = u32::MAX as NodeId;

/// Why a view was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ViewProblem {
    #[error("it has no members")]
    NoMembers,
    #[error("it has {0} members (at most {MEMBERS_MAX})")]
    TooManyMembers(usize),
    #[error("its members are not sorted by id without repeats")]
    Unsorted,
    #[error("member {0} has an id beyond 32 bits")]
    BadId(NodeId),
    #[error("member {id} has no usable address ({addr:?})")]
    BadAddress { id: NodeId, addr: String },
    #[error("its user map has {got} buckets (this cluster has {want})")]
    Buckets { got: usize, want: usize },
    #[error("its user map has {managers} managers but {moved} move epochs")]
    Lengths { managers: usize, moved: usize },
    #[error("bucket {bucket} is managed by {manager}, which is not a member")]
    StrangeManager { bucket: usize, manager: NodeId },
    #[error("its coordinator {0} is not a member")]
    StrangeCoordinator(NodeId),
    #[error("its epoch is {ahead_ms} ms ahead of this node's clock")]
    Ahead { ahead_ms: u64 },
    #[error("bucket {0} moved in an epoch after the view's own")]
    MovedLater(usize),
}

/// Whether an epoch is not too far ahead of `now_ms`.
pub fn epoch_plausible(epoch: &Epoch, now_ms: u64) -> bool {
    epoch.clock <= now_ms.saturating_add(FUTURE_MAX_MS)
}

/// Whether a timestamp whose wall-clock part is `millis` is not too far ahead of `now_ms`.
pub fn stamp_plausible(millis: u64, now_ms: u64) -> bool {
    millis <= now_ms.saturating_add(FUTURE_MAX_MS)
}

/// Whether `addr` can be dialled: `host:port` with a numeric address.
pub fn address_plausible(addr: &str) -> bool {
    addr.len() <= 64 && addr.parse::<std::net::SocketAddr>().is_ok()
}

/// Checks a view from a peer before it is installed: `buckets` is this cluster's bucket count.
pub fn check_view(view: &View, buckets: usize, now_ms: u64) -> Result<(), ViewProblem> {
    let members = &view.members;
    if members.is_empty() {
        return Err(ViewProblem::NoMembers);
    }
    if members.len() > MEMBERS_MAX {
        return Err(ViewProblem::TooManyMembers(members.len()));
    }
    if members.windows(2).any(|pair| pair[0].id >= pair[1].id) {
        return Err(ViewProblem::Unsorted);
    }
    for member in members {
        if member.id == 0 || member.id > NODE_ID_MAX {
            return Err(ViewProblem::BadId(member.id));
        }
        if !address_plausible(&member.addr) {
            return Err(ViewProblem::BadAddress {
                id: member.id,
                addr: member.addr.chars().take(80).collect(),
            });
        }
    }
    let ids: BTreeSet<NodeId> = members.iter().map(|m| m.id).collect();
    if !ids.contains(&view.epoch.coordinator) {
        return Err(ViewProblem::StrangeCoordinator(view.epoch.coordinator));
    }
    if !epoch_plausible(&view.epoch, now_ms) {
        return Err(ViewProblem::Ahead {
            ahead_ms: view.epoch.clock.saturating_sub(now_ms),
        });
    }
    let map = &view.map;
    if map.managers.len() != buckets {
        return Err(ViewProblem::Buckets {
            got: map.managers.len(),
            want: buckets,
        });
    }
    if map.moved.len() != map.managers.len() {
        return Err(ViewProblem::Lengths {
            managers: map.managers.len(),
            moved: map.moved.len(),
        });
    }
    if let Some((bucket, &manager)) = map
        .managers
        .iter()
        .enumerate()
        .find(|(_, m)| !ids.contains(m))
    {
        return Err(ViewProblem::StrangeManager { bucket, manager });
    }
    if let Some(bucket) = map.moved.iter().position(|moved| *moved > view.epoch) {
        return Err(ViewProblem::MovedLater(bucket));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::Member;
    use crate::usermap::UserMap;

    const NOW: u64 = 1_800_000_000_000;

    fn view(ids: &[NodeId], buckets: usize) -> View {
        let epoch = Epoch {
            clock: NOW,
            coordinator: ids[0],
        };
        let members: Vec<Member> = ids
            .iter()
            .map(|&id| Member {
                id,
                addr: format!("127.0.0.{id}:7946"),
            })
            .collect();
        View {
            epoch,
            map: UserMap::single(ids[0], buckets, epoch).reassign(ids, epoch),
            members,
        }
    }

    #[test]
    fn a_sound_view_passes() {
        assert_eq!(check_view(&view(&[1, 2, 3], 64), 64, NOW), Ok(()));
    }

    #[test]
    fn every_kind_of_broken_view_is_refused() {
        let sound = view(&[1, 2, 3], 64);
        let refuse = |change: &dyn Fn(&mut View), buckets: usize| {
            let mut v = sound.clone();
            change(&mut v);
            check_view(&v, buckets, NOW).unwrap_err()
        };
        assert_eq!(refuse(&|v| v.members.clear(), 64), ViewProblem::NoMembers);
        assert_eq!(
            refuse(&|_| {}, 128),
            ViewProblem::Buckets { got: 64, want: 128 }
        );
        assert_eq!(
            refuse(
                &|v| {
                    v.map.moved.pop();
                },
                64
            ),
            ViewProblem::Lengths {
                managers: 64,
                moved: 63
            }
        );
        assert!(matches!(
            refuse(&|v| v.map.managers[5] = 9, 64),
            ViewProblem::StrangeManager {
                bucket: 5,
                manager: 9
            }
        ));
        assert_eq!(refuse(&|v| v.members.swap(0, 1), 64), ViewProblem::Unsorted);
        assert!(matches!(
            refuse(&|v| v.members[2].addr = "nowhere".into(), 64),
            ViewProblem::BadAddress { id: 3, .. }
        ));
        assert_eq!(
            refuse(&|v| v.epoch.coordinator = 7, 64),
            ViewProblem::StrangeCoordinator(7)
        );
        assert!(matches!(
            refuse(&|v| v.epoch.clock = u64::MAX, 64),
            ViewProblem::Ahead { .. }
        ));
        assert_eq!(
            refuse(&|v| v.map.moved[3].clock = v.epoch.clock + 1, 64),
            ViewProblem::MovedLater(3)
        );
        assert_eq!(
            refuse(&|v| v.members[2].id = u64::MAX, 64),
            ViewProblem::BadId(u64::MAX)
        );
        // The empty map of the issue: no managers at all.
        assert_eq!(
            refuse(
                &|v| v.map = UserMap {
                    managers: vec![],
                    moved: vec![]
                },
                64
            ),
            ViewProblem::Buckets { got: 0, want: 64 }
        );
    }

    #[test]
    fn stamps_and_epochs_from_the_far_future_are_implausible() {
        assert!(stamp_plausible(NOW + 1000, NOW));
        assert!(!stamp_plausible(u64::MAX, NOW));
        assert!(epoch_plausible(
            &Epoch {
                clock: NOW,
                coordinator: 1
            },
            NOW
        ));
        assert!(!epoch_plausible(
            &Epoch {
                clock: u64::MAX,
                coordinator: 1
            },
            NOW
        ));
        assert!(address_plausible("10.0.0.1:7946"));
        assert!(!address_plausible("example.org:7946"));
        assert!(!address_plausible(&"1".repeat(100)));
    }
}
