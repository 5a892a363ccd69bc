//! Code shared by the `porcupine` and `porcupine-load` binaries.
//!
//! - [`admin_client`]: the CLI's HTTP client for a node's admin endpoint.
//! - [`duration`]: durations as `90s`, `15m`, `4h`.
//! - [`load`]: the load generator (workload, SMTP and POP3 clients, integrity accounting, report).
//! - [`serve_config`]: `porcupine serve`'s flags and config file.
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod admin_client;
pub mod duration;
pub mod fsck;
pub mod load;
pub mod migrate;
pub mod serve_config;
pub mod service_manager;
