//! The cluster layer and the node runtime that wires engine and protocols together.
//!
//! - [`node`]: one node — per-core executors, listeners, the shard service, users, admin HTTP.
//! - [`wire`]: the frame format between nodes.
//! - [`membership`]: the three-round membership protocol (sans-IO).
//! - [`usermap`]: buckets of users and their managers.
//! - [`loads`]: this node's load and every node's load as last heard.
//! - [`manager`]: a bucket manager's mail map and maildrop locks (sans-IO).
//! - [`placement`]: where new mail goes: static, random or dynamic placement (sans-IO).
//! - [`abuse`]: connections per client address, and the delay after failed logins (sans-IO).
//! - [`plausible`]: what even an authenticated peer may not send (views, stamps, epochs).
//! - [`transport`]: framed TCP connections between nodes (the glommio edge).
//! - [`secure`]: the cluster key, the handshake that proves it, the encrypted record stream.
//! - [`replication`]: the replication manager of a core: pushes, acks, retirement (sans-IO).
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod abuse;
pub mod loads;
pub mod manager;
pub mod membership;
pub mod node;
pub mod placement;
pub mod plausible;
pub mod replication;
pub mod secure;
pub mod transport;
pub mod usermap;
pub mod wire;
