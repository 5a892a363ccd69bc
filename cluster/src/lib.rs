//! The node runtime: one porcupine node on glommio, driving the pure cluster logic of
//! `porcupine-cluster-core` (re-exported here under the same module names) with real sockets,
//! disks and clocks.
//!
//! - [`admin_client`]: the one client of a node's admin endpoint (CLI, benches, tests).
//! - [`node`]: one node — per-core executors, listeners, the shard service, users, admin HTTP.
//! - [`transport`]: framed TCP connections between nodes (the glommio edge).
//! - [`secure`]: the cluster key, the handshake that proves it, the encrypted record stream.
//! - From the pure crate: [`membership`], [`usermap`], [`plausible`], [`manager`],
//!   [`placement`], [`delivery`], [`maildrop`], [`replication`], [`loads`], [`abuse`], [`wire`],
//!   [`rpc`].
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub use porcupine_cluster_core::{
    abuse, anti_entropy, delivery, healing, loads, mailbox, maildrop, manager, membership,
    placement, plausible, replication, rpc, usermap, wire,
};

pub mod admin_client;
pub mod node;
pub mod secure;
pub mod transport;
