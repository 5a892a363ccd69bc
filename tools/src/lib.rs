//! Code shared by the `porcupine` and `porcupine-load` binaries.
//!
//! - [`admin_client`]: the CLI's HTTP client for a node's admin endpoint.
//! - [`load`]: the load generator (workload, SMTP and POP3 clients, integrity accounting, report).
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod admin_client;
pub mod load;
