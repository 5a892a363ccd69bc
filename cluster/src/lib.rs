//! The cluster layer and the node runtime that wires engine and protocols together.
//!
//! - [`node`]: one node — per-core executors, listeners, the shard service, users, admin HTTP.
//!
//! Membership, user map, replication and load balancing arrive with issues 5–7.
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod node;
