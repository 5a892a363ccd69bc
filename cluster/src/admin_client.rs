//! The one client of a node's admin endpoint (`node/admin.rs`), beside it so the two change
//! together: blocking std sockets, HTTP/1.1, one request per connection, optional TLS (an
//! endpoint started with `--admin-public`). The `porcupine` CLI, the benchmarks and the tests
//! all speak to a node through it, and read `/status` back as the node's own [`Status`] type.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::node::status::Status;

/// What can go wrong talking to an admin endpoint.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(
        "cannot reach the node's admin endpoint at {addr} (is `porcupine serve` running? see --admin): {source}"
    )]
    Unreachable {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("talking to the admin endpoint at {addr}: {source}")]
    Io {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start TLS to the admin endpoint at {addr}: {source}")]
    Tls {
        addr: SocketAddr,
        source: rustls::Error,
    },
    #[error("cannot trust the certificates in {path}: {reason}")]
    Roots { path: PathBuf, reason: String },
    #[error("malformed answer from the admin endpoint at {addr}: {what}")]
    Malformed {
        addr: SocketAddr,
        what: &'static str,
    },
    #[error("the admin endpoint at {addr} answered {status} to {path}: {body}")]
    Refused {
        addr: SocketAddr,
        path: String,
        status: u16,
        body: String,
    },
    #[error("the admin endpoint at {addr} sent a {path} this client cannot read (a node of another version?): {source}")]
    Document {
        addr: SocketAddr,
        path: &'static str,
        source: serde_json::Error,
    },
}

/// One answer: the HTTP status and the body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

/// A node's admin endpoint and how to present oneself to it.
#[derive(Clone, Debug)]
pub struct AdminClient {
    addr: SocketAddr,
    /// The whole `Authorization` header value (`Bearer <token>` for a real caller).
    authorization: Option<String>,
    tls: Option<Arc<rustls::ClientConfig>>,
    timeout: Duration,
}

impl AdminClient {
    /// The endpoint at `addr`, with no credentials, over plain HTTP, answers awaited 30 s.
    pub fn new(addr: SocketAddr) -> AdminClient {
        AdminClient {
            addr,
            authorization: None,
            tls: None,
            timeout: Duration::from_secs(30),
        }
    }

    /// Presents the admin token (`Authorization: Bearer <token>`).
    pub fn with_token(self, token: &str) -> AdminClient {
        self.with_authorization(&format!("Bearer {}", token.trim()))
    }

    /// Sends this `Authorization` value as it is (tests of what the endpoint refuses).
    pub fn with_authorization(mut self, value: &str) -> AdminClient {
        self.authorization = Some(value.to_owned());
        self
    }

    /// Speaks HTTPS, trusting the roots of `config` (see [`trusting`]).
    pub fn with_tls(mut self, config: Arc<rustls::ClientConfig>) -> AdminClient {
        self.tls = Some(config);
        self
    }

    /// How long to wait for an answer (a bulk user import can take minutes).
    pub fn with_timeout(mut self, timeout: Duration) -> AdminClient {
        self.timeout = timeout;
        self
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends one request; any HTTP status is an answer.
    pub fn request(&self, method: &str, path: &str, body: &[u8]) -> Result<Response, AdminError> {
        let (status, body) = self.request_bytes(method, path, body)?;
        Ok(Response {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }

    /// As [`Self::request`], the body's bytes as they came (a message is not text).
    pub fn request_bytes(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Result<(u16, Vec<u8>), AdminError> {
        let addr = self.addr;
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(|source| AdminError::Unreachable { addr, source })?;
        stream
            .set_read_timeout(Some(self.timeout))
            .and_then(|()| stream.set_write_timeout(Some(self.timeout)))
            .map_err(|source| AdminError::Io { addr, source })?;
        let Some(tls) = &self.tls else {
            return self.exchange(stream, method, path, body);
        };
        let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
        let session = rustls::ClientConnection::new(tls.clone(), name)
            .map_err(|source| AdminError::Tls { addr, source })?;
        self.exchange(
            rustls::StreamOwned::new(session, stream),
            method,
            path,
            body,
        )
    }

    /// `GET path`, which must answer 200; the body.
    pub fn get(&self, path: &str) -> Result<String, AdminError> {
        let response = self.request("GET", path, b"")?;
        if response.status != 200 {
            return Err(AdminError::Refused {
                addr: self.addr,
                path: path.to_owned(),
                status: response.status,
                body: response.body.trim().to_owned(),
            });
        }
        Ok(response.body)
    }

    /// The node's `/status`, as the node's own type.
    pub fn status(&self) -> Result<Status, AdminError> {
        let body = self.get("/status")?;
        serde_json::from_str(&body).map_err(|source| AdminError::Document {
            addr: self.addr,
            path: "/status",
            source,
        })
    }

    /// The node's Prometheus text (`/metrics`, which needs no token).
    pub fn metrics(&self) -> Result<String, AdminError> {
        self.get("/metrics")
    }

    fn exchange(
        &self,
        mut stream: impl Read + Write,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Result<(u16, Vec<u8>), AdminError> {
        let addr = self.addr;
        let io = |source| AdminError::Io { addr, source };
        let authorization = self
            .authorization
            .as_ref()
            .map(|value| format!("Authorization: {value}\r\n"))
            .unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{authorization}Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).map_err(io)?;
        stream.write_all(body).map_err(io)?;
        stream.flush().map_err(io)?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).map_err(io)?;
        parse_response(&answer).map_err(|what| AdminError::Malformed { addr, what })
    }
}

/// An HTTP/1.x answer: the status from its status line and everything after the head.
fn parse_response(answer: &[u8]) -> Result<(u16, Vec<u8>), &'static str> {
    let end = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of the head")?;
    let head = String::from_utf8_lossy(&answer[..end]);
    let body = &answer[end + 4..];
    let status_line = head.lines().next().unwrap_or_default();
    let mut words = status_line.split(' ');
    if !words.next().is_some_and(|v| v.starts_with("HTTP/1.")) {
        return Err("no HTTP/1 status line");
    }
    let status = words
        .next()
        .and_then(|code| code.parse::<u16>().ok())
        .filter(|code| (100..600).contains(code))
        .ok_or("no status code")?;
    Ok((status, body.to_vec()))
}

/// A TLS client configuration that trusts the certificates in `ca` (PEM) and nothing else.
pub fn trusting(ca: &Path) -> Result<Arc<rustls::ClientConfig>, AdminError> {
    use rustls::pki_types::pem::PemObject;
    let refuse = |reason: String| AdminError::Roots {
        path: ca.to_owned(),
        reason,
    };
    let mut roots = rustls::RootCertStore::empty();
    let certs =
        rustls::pki_types::CertificateDer::pem_file_iter(ca).map_err(|e| refuse(e.to_string()))?;
    for cert in certs {
        let cert = cert.map_err(|e| refuse(format!("a bad certificate: {e}")))?;
        roots.add(cert).map_err(|e| refuse(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(refuse("no certificate in the file".into()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| refuse(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse_into_status_and_body() {
        let answer = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 5\r\n\r\nno\r\n\r\n";
        assert_eq!(parse_response(answer), Ok((403, b"no\r\n\r\n".to_vec())));
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\n"),
            Err("no end of the head")
        );
        assert_eq!(
            parse_response(b"SSH-2.0\r\n\r\n"),
            Err("no HTTP/1 status line")
        );
        assert_eq!(
            parse_response(b"HTTP/1.1 999 x\r\n\r\n"),
            Err("no status code")
        );
    }

    #[test]
    fn an_endpoint_that_is_not_there_is_named() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let error = AdminClient::new(addr).status().unwrap_err().to_string();
        assert!(error.contains(&addr.to_string()), "{error}");
        assert!(error.contains("porcupine serve"), "{error}");
    }

    #[test]
    fn a_refusal_carries_the_endpoints_words() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            // The whole request first: closing with unread bytes would reset the connection.
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap() == 1 {
                head.push(byte[0]);
            }
            conn.write_all(
                b"HTTP/1.1 401 Unauthorized\r\nConnection: close\r\n\r\nadmin token required\n",
            )
            .unwrap();
        });
        let error = AdminClient::new(addr).status().unwrap_err();
        server.join().unwrap();
        assert!(
            matches!(&error, AdminError::Refused { status: 401, body, .. } if body == "admin token required"),
            "{error}"
        );
    }
}
