//! porcupine's cluster logic, as pure state machines: events (and the time, and any randomness)
//! in, actions out. Nothing here touches a socket, a disk, a clock or an executor; the node
//! crate (`porcupine-cluster`, `cluster/src/node/`) drives these machines, and the seeded
//! simulators in `tests/` drive them the same way over crashes, loss and partitions.
//!
//! - [`membership`]: the three-round membership protocol; [`usermap`]: buckets of users and
//!   their managers; [`plausible`]: what even an authenticated peer may not send.
//! - [`manager`]: a bucket manager's mail map and maildrop locks; [`placement`]: where new mail
//!   goes (static, random or dynamic placement).
//! - [`delivery`]: the delivery policy (placement, retries under the same id, full nodes);
//!   [`maildrop`]: the maildrop policy (lock, list, dedupe, delete, unlock); [`mailbox`]: a
//!   user's IMAP mailboxes at their authority (folders, UIDs, flags, MODSEQs).
//! - [`replication`]: a core's replication manager: pushes, acks, retirement; [`healing`]:
//!   which copies are made again once a node is declared dead; [`anti_entropy`]: digests two
//!   holders compare, and what one pushes to the other.
//! - [`loads`]: this node's load and every node's load as last heard.
//! - [`abuse`]: connections per client address and the delay after failed logins.
//! - [`wire`]: the frame format between nodes, defined once; [`rpc`]: what frames carry, one
//!   request type per operation with its reply type.
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod abuse;
pub mod anti_entropy;
pub mod delivery;
pub mod healing;
pub mod loads;
pub mod mailbox;
pub mod maildrop;
pub mod manager;
pub mod membership;
pub mod placement;
pub mod plausible;
pub mod replication;
pub mod rpc;
pub mod usermap;
pub mod wire;
