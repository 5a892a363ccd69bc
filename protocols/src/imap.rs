//! The IMAP server side, sans-IO: [`framer`] cuts input into commands within limits,
//! [`parser`] makes them [`command`]s, [`session`] runs them (asking the node for what it
//! needs through its steps), and [`mime`] computes the MIME structure FETCH answers from;
//! [`memory_store`] answers those steps in memory for the tests and the fuzz target.

pub mod command;
pub mod framer;
pub mod memory_store;
pub mod mime;
pub mod parser;
pub mod session;
pub mod sets;
pub mod structure;

pub use session::{
    Counts, Folder, ImapLimits, ImapSession, LoginOutcome, MailboxError, MailboxOp, MessageView,
    QuotaView, Snapshot, Step,
};
