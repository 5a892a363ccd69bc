//! Sans-IO mail protocol sessions: bytes in, replies and storage requests out, no sockets.
//!
//! - [`smtp`]: the SMTP server session (RFC 5321 with PIPELINING, SIZE, 8BITMIME,
//!   ENHANCEDSTATUSCODES, SMTPUTF8).
//! - [`pop3`]: the POP3 server session (RFC 1939, RFC 2449 CAPA, RESP-CODES, RFC 2595 STLS,
//!   RFC 5034 SASL).
//! - [`imap`]: the IMAP server session (RFC 3501 IMAP4rev1 with LITERAL+, IDLE, UIDPLUS, MOVE,
//!   CONDSTORE and more), its framer, parser and MIME structure.
//! - [`sasl`]: the SASL mechanisms PLAIN and SCRAM-SHA-256, and base64.
//! - [`security`]: what a session knows of its connection's protection (TLS, plaintext).
//! - [`address`]: mail addresses as SMTP carries them.
//! - [`date`]: RFC 5322 dates, for `Received:` headers.
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod address;
pub mod date;
pub mod imap;
pub mod pop3;
pub mod sasl;
pub mod security;
pub mod smtp;
