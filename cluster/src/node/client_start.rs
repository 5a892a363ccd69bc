//! How a client connection that can carry a password starts (POP3 and IMAP): in clear with
//! TLS offered, or TLS from the first byte (RFC 8314); and whether a password may cross in
//! clear on it.

use std::net::SocketAddr;

use glommio::net::TcpStream;
use porcupine_protocols::security::{Plaintext, Tls};

use super::core_context::CoreContext;
use super::metrics::add;
use super::tls::ClientStream;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// In clear, STLS / STARTTLS offered (ports 110 and 143 style).
    Plain,
    /// TLS from the first byte (POP3S, IMAPS).
    ImplicitTls,
}

/// The connection's stream and TLS state: an implicit-TLS handshake is run (and counted)
/// here. `None`: it failed, and the connection is dropped (`listener` names it in the log).
pub async fn open(
    stream: TcpStream,
    context: &CoreContext,
    start: Start,
    peer: Option<SocketAddr>,
    listener: &str,
) -> Option<(ClientStream, Tls)> {
    let stream = ClientStream::Plain(stream);
    match start {
        Start::Plain => Some((stream, Tls::Offered)),
        Start::ImplicitTls => match stream.start_tls(&context.tls).await {
            Ok(secure) => {
                add(&context.metrics.tls_handshakes, 1);
                Some((secure, Tls::Active))
            }
            Err(error) => {
                add(&context.metrics.tls_failures, 1);
                tracing::debug!(?peer, %error, "{listener} handshake failed");
                None
            }
        },
    }
}

/// A password may cross in clear only from loopback, or where the operator allows it.
pub fn plaintext_policy(context: &CoreContext, peer: Option<SocketAddr>) -> Plaintext {
    if context.live.load().allow_plaintext_auth || peer.is_some_and(|p| p.ip().is_loopback()) {
        Plaintext::Allowed
    } else {
        Plaintext::Refused
    }
}
