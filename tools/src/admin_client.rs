//! A minimal HTTP/1.1 client for the node's admin endpoint (loopback; one request per
//! connection), so the CLI needs no HTTP stack; and where it finds the admin token.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// The environment variable that may hold the admin token.
pub const TOKEN_ENV: &str = "PORCUPINE_ADMIN_TOKEN";

/// A node's admin endpoint and the token it wants.
#[derive(Clone, Debug)]
pub struct Admin {
    pub addr: SocketAddr,
    token: String,
    /// HTTPS, trusting these roots (an endpoint started with --admin-public).
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

/// A TLS client configuration that trusts the certificates in `ca` (PEM).
fn client_config(ca: &Path) -> Result<std::sync::Arc<rustls::ClientConfig>> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let certs = rustls::pki_types::CertificateDer::pem_file_iter(ca)
        .with_context(|| format!("cannot read {}", ca.display()))?;
    for cert in certs {
        roots
            .add(cert.with_context(|| format!("a bad certificate in {}", ca.display()))?)
            .with_context(|| format!("cannot trust the certificate in {}", ca.display()))?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(std::sync::Arc::new(config))
}

impl Admin {
    /// The token from `token_file`, else from `$PORCUPINE_ADMIN_TOKEN`, else from
    /// `<data>/admin.token` (the node's first data directory).
    pub fn new(
        addr: SocketAddr,
        token_file: Option<&Path>,
        data: &Path,
        ca: Option<&Path>,
    ) -> Result<Admin> {
        let read = |path: &Path| -> Result<String> {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the admin token {}", path.display()))?;
            text.lines()
                .map(str::trim)
                .find(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_owned)
                .with_context(|| format!("{} holds no admin token", path.display()))
        };
        let token = match (token_file, std::env::var(TOKEN_ENV)) {
            (Some(file), _) => read(file)?,
            (None, Ok(token)) if !token.trim().is_empty() => token.trim().to_owned(),
            _ => {
                let path: PathBuf = data.join("admin.token");
                read(&path).with_context(|| {
                    format!(
                        "no admin token: give --admin-token-file FILE, set {TOKEN_ENV}, or \
                         --data DIR (the node's data directory, which holds admin.token)"
                    )
                })?
            }
        };
        let tls = ca.map(client_config).transpose()?;
        Ok(Admin { addr, token, tls })
    }

    /// Sends a request; returns (status, body).
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        timeout: Duration,
    ) -> Result<(u16, String)> {
        let Some(tls) = &self.tls else {
            return request(self.addr, Some(&self.token), method, path, body, timeout);
        };
        let stream = connect(self.addr, timeout)?;
        let name = rustls::pki_types::ServerName::IpAddress(self.addr.ip().into());
        let session = rustls::ClientConnection::new(tls.clone(), name)
            .context("cannot start TLS to the admin endpoint")?;
        let mut secure = rustls::StreamOwned::new(session, stream);
        exchange(
            &mut secure,
            self.addr,
            Some(&self.token),
            method,
            path,
            body,
        )
    }
}

fn connect(admin: SocketAddr, timeout: Duration) -> Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&admin, Duration::from_secs(5))
        .with_context(|| format!("cannot reach the node's admin endpoint at {admin} (is `porcupine serve` running? see --admin)"))?;
    stream.set_read_timeout(Some(timeout))?;
    Ok(stream)
}

/// Sends a request (with the token, if given); returns (status, body).
pub fn request(
    admin: SocketAddr,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<(u16, String)> {
    let mut stream = connect(admin, timeout)?;
    exchange(&mut stream, admin, token, method, path, body)
}

/// One request and its answer over `stream`.
fn exchange(
    stream: &mut (impl Read + Write),
    admin: SocketAddr,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<(u16, String)> {
    let authorization = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {admin}\r\n{authorization}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .context("reading the admin endpoint's answer")?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("malformed answer from the admin endpoint");
    };
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("malformed status line from the admin endpoint")?;
    Ok((status, body.to_owned()))
}
