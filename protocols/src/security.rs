//! What a session knows of its connection's protection, so that it offers STARTTLS / STLS
//! only where they can work and never asks for a password in clear where that is refused.

/// Whether a connection can have, or has, TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tls {
    /// The node has no certificate: STARTTLS / STLS are not offered.
    Unavailable,
    /// STARTTLS (RFC 3207) / STLS (RFC 2595) is offered.
    Offered,
    /// The connection is in TLS (after STARTTLS / STLS, or implicit TLS).
    Active,
}

/// Whether a password may travel on this connection as it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plaintext {
    /// USER/PASS and SASL PLAIN are accepted (TLS is on, the peer is on loopback, or the
    /// operator allowed it).
    Allowed,
    /// Only after STLS: a password sent now would cross the network in clear.
    Refused,
}
