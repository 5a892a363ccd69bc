//! The cluster layer and the node runtime that wires engine and protocols together.
//!
//! - [`node`]: one node — per-core executors, listeners, the shard service, users, admin HTTP.
//! - [`wire`]: the frame format between nodes.
//! - [`membership`]: the three-round membership protocol (sans-IO).
//! - [`usermap`]: buckets of users and their managers.
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod membership;
pub mod node;
pub mod usermap;
pub mod wire;
