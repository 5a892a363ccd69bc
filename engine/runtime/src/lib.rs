//! The executors porcupine runs on: one glommio executor per core, started with one clear
//! message when io_uring or locked memory is missing ([`executor`]), each thread guarded
//! against glommio's lost wakeups ([`wakeup`]). The storage engine, the node, the load
//! generator, the benches and the tests all start their executors here.
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod executor;
pub mod wakeup;

pub use executor::{
    executor_builder, explain_start_failure, io_memory_per_executor, memlock_limit, raise_fd_limit,
    run_local, spawn,
};

/// Why an executor could not start, worded for the operator who has to fix it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RuntimeError(pub String);

pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;
