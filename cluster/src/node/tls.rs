//! TLS for clients (rustls, with `ring`): the node's certificate and key, and the streams
//! sessions run over.
//!
//! The certificate comes from `--tls-cert` / `--tls-key` (PEM), or, when neither is given, from
//! a self-signed one the node makes once for its host name (`<first data dir>/tls/`), so that
//! STARTTLS, STLS and POP3S work out of the box. [`ServerTls::reload`] reads the files again
//! (the node does on SIGHUP): sessions already in TLS keep theirs, new handshakes use the new
//! certificate; a reload that fails keeps the old one and says why.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the TLS certificate {path}: {reason}")]
    Certificate { path: String, reason: String },
    #[error("cannot read the TLS key {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("the TLS certificate and key do not go together: {0}")]
    Mismatch(String),
    #[error("cannot make a self-signed certificate in {path}: {reason}")]
    SelfSigned { path: String, reason: String },
}

/// Where the certificate and key are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The server side of TLS: the current configuration, swapped whole on reload.
#[derive(Debug)]
pub struct ServerTls {
    files: TlsFiles,
    config: ArcSwap<rustls::ServerConfig>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server configuration from PEM files.
pub fn load(files: &TlsFiles) -> Result<rustls::ServerConfig, TlsError> {
    let cert_path = files.cert.display().to_string();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|e| TlsError::Certificate {
            path: cert_path.clone(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Certificate {
            path: cert_path,
            reason: "no certificate in it".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| TlsError::Key {
        path: files.key.display().to_string(),
        reason: e.to_string(),
    })?;
    rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Mismatch(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Mismatch(e.to_string()))
}

/// The self-signed certificate for `hostname` in `dir` (`cert.pem`, `key.pem`), made the
/// first time (the key with mode 0600), valid for ten years from the day before. Its names:
/// the host name, `localhost`, 127.0.0.1, ::1 and the addresses in `addresses` (those the
/// node listens on), so clients that check the name against the address they dialled pass.
pub fn self_signed(
    dir: &Path,
    hostname: &str,
    addresses: &[std::net::IpAddr],
) -> Result<TlsFiles, TlsError> {
    let files = TlsFiles {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    if files.cert.exists() && files.key.exists() {
        return Ok(files);
    }
    let failed = |reason: String| TlsError::SelfSigned {
        path: dir.display().to_string(),
        reason,
    };
    let mut names = vec![hostname.to_owned(), "localhost".to_owned()];
    names.extend(["127.0.0.1".to_owned(), "::1".to_owned()]);
    for address in addresses.iter().filter(|a| !a.is_unspecified()) {
        names.push(address.to_string());
    }
    names.sort();
    names.dedup();
    let mut params = rcgen::CertificateParams::new(names).map_err(|e| failed(e.to_string()))?;
    let mut subject = rcgen::DistinguishedName::new();
    subject.push(rcgen::DnType::CommonName, hostname);
    params.distinguished_name = subject;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (year, month, day) = porcupine_protocols::date::civil(now.saturating_sub(86_400));
    let year = i32::try_from(year).unwrap_or(2026);
    params.not_before = rcgen::date_time_ymd(year, month as u8, day as u8);
    params.not_after = rcgen::date_time_ymd(year + 10, month as u8, day.min(28) as u8);
    let key = rcgen::KeyPair::generate().map_err(|e| failed(e.to_string()))?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| failed(e.to_string()))?;
    std::fs::create_dir_all(dir).map_err(|e| failed(e.to_string()))?;
    write_private(&files.key, key.serialize_pem().as_bytes()).map_err(|e| failed(e.to_string()))?;
    std::fs::write(&files.cert, cert.pem()).map_err(|e| failed(e.to_string()))?;
    tracing::info!(cert = %files.cert.display(), hostname, "made a self-signed TLS certificate");
    Ok(files)
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

impl ServerTls {
    pub fn new(files: TlsFiles) -> Result<ServerTls, TlsError> {
        let config = load(&files)?;
        Ok(ServerTls {
            files,
            config: ArcSwap::from_pointee(config),
        })
    }

    /// Reads the files again; on failure the current certificate stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = load(&self.files)?;
        self.config.store(Arc::new(config));
        Ok(())
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Runs the server side of a handshake on `stream`.
    pub async fn accept(&self, stream: TcpStream) -> std::io::Result<ClientStream> {
        let acceptor = futures_rustls::TlsAcceptor::from(self.config.load_full());
        let tls = acceptor.accept(stream).await?;
        Ok(ClientStream::Tls(Box::new(tls)))
    }
}

/// A client connection, in clear or in TLS.
#[derive(Debug)]
pub enum ClientStream {
    Plain(TcpStream),
    Tls(Box<futures_rustls::server::TlsStream<TcpStream>>),
}

impl ClientStream {
    pub fn is_tls(&self) -> bool {
        matches!(self, ClientStream::Tls(_))
    }

    /// Upgrades a plain stream to TLS (STARTTLS, STLS); a TLS stream stays as it is.
    pub async fn start_tls(self, tls: &ServerTls) -> std::io::Result<ClientStream> {
        match self {
            ClientStream::Plain(stream) => tls.accept(stream).await,
            already => Ok(already),
        }
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_close(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_close(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_self_signed_certificate_is_made_once_and_loads() {
        let dir = tempfile::tempdir().unwrap();
        let files = self_signed(dir.path(), "mail.example.org", &[]).unwrap();
        let first = std::fs::read(&files.cert).unwrap();
        let again = self_signed(dir.path(), "mail.example.org", &[]).unwrap();
        assert_eq!(std::fs::read(&again.cert).unwrap(), first);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&files.key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let tls = ServerTls::new(files.clone()).unwrap();
        tls.reload().unwrap();
        // A broken file fails the reload and keeps the certificate in use.
        std::fs::write(&files.cert, "not a certificate").unwrap();
        assert!(tls.reload().is_err());
        assert!(matches!(load(&files), Err(TlsError::Certificate { .. })));
    }
}
