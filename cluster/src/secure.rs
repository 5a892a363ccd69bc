//! The cluster's trust boundary: every connection between nodes proves, before any frame is
//! read, that both ends hold the cluster key, and every byte after that is encrypted and
//! authenticated.
//!
//! Why a shared key and Noise rather than certificates and mutual TLS: membership in a
//! porcupine cluster is all-or-nothing (any member may serve any user), so one secret that
//! every node holds says exactly what is needed, with one file to copy and nothing that
//! expires; a cluster CA would add a PKI to run for no finer distinction. The handshake is
//! Noise `NNpsk0` with X25519, AES-256-GCM and SHA-256 (the `snow` crate, its primitives from
//! `ring`): the key is mixed in from the first message, so a connection without it fails the
//! first authentication tag and is closed; each connection then gets fresh keys from its
//! ephemeral exchange.
//!
//! After the handshake the stream is a sequence of records, each one Noise transport message:
//!
//! | bytes | field        | meaning                                                    |
//! |------:|--------------|------------------------------------------------------------|
//! | 2     | `length`     | little-endian: bytes of `ciphertext`, 16 ..= 65,535        |
//! | n     | `ciphertext` | AES-256-GCM of up to 65,519 bytes of frames, then its tag  |
//!
//! Each direction numbers its records from 0 and the receiver only accepts the next number
//! (the nonce), so a record recorded and replayed later — in this connection or another, whose
//! keys differ — fails its tag, and the connection is dropped. The handshake messages use the
//! same 2-byte length framing. The prologue binds the protocol version: nodes that speak
//! another one cannot complete a handshake.
//!
//! The key file: `#` comment lines, then the 32-byte key as 64 hexadecimal digits. It must not
//! be readable by group or others (mode 0600), or the node refuses it.

use std::io;
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The Noise protocol of the cluster channel.
const NOISE: &str = "Noise_NNpsk0_25519_AESGCM_SHA256";
/// Bound into every handshake: a node of another cluster protocol version cannot connect.
const PROLOGUE: &[u8] = b"porcupine cluster v1";
const TAG_BYTES: usize = 16;
/// The largest Noise message, and so the largest record on the wire.
const RECORD_BYTES_MAX: usize = 65_535;
/// Frame bytes carried by one record.
pub const RECORD_PLAINTEXT_MAX: usize = RECORD_BYTES_MAX - TAG_BYTES;
/// How long a peer may take to complete the handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);

/// The secret every node of one cluster holds.
#[derive(Clone)]
pub struct ClusterKey([u8; 32]);

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKey(<secret>)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read the cluster key {path}: {error}")]
    Read { path: String, error: io::Error },
    #[error("the cluster key {path} can be read by others (mode {mode:o}): chmod 600 {path}")]
    Exposed { path: String, mode: u32 },
    #[error("{path} does not hold a cluster key (64 hexadecimal digits; `porcupine cluster-key FILE` makes one)")]
    Malformed { path: String },
    #[error("cannot write the cluster key {path}: {error}")]
    Write { path: String, error: io::Error },
}

impl ClusterKey {
    /// A fresh random key.
    pub fn generate() -> ClusterKey {
        let mut key = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut key);
        ClusterKey(key)
    }

    /// The key in `text` (the key file's content).
    pub fn parse(text: &str) -> Option<ClusterKey> {
        let digits: String = text
            .lines()
            .map(str::trim)
            .filter(|line| !line.starts_with('#'))
            .collect();
        if digits.len() != 64 {
            return None;
        }
        let mut key = [0u8; 32];
        for (i, byte) in key.iter_mut().enumerate() {
            *byte = u8::from_str_radix(digits.get(i * 2..i * 2 + 2)?, 16).ok()?;
        }
        Some(ClusterKey(key))
    }

    /// The key file's content.
    pub fn to_file_text(&self) -> String {
        let hex: String = self.0.iter().map(|b| format!("{b:02x}")).collect();
        format!(
            "# porcupine cluster key: every node of one cluster holds this same file, mode 0600.\n\
             # Anyone who has it can join the cluster and read all of its mail.\n{hex}\n"
        )
    }

    /// Reads a key file, refusing one that group or others can read.
    pub fn read(path: &Path) -> Result<ClusterKey, KeyError> {
        use std::os::unix::fs::PermissionsExt;
        let name = path.display().to_string();
        let meta = std::fs::metadata(path).map_err(|error| KeyError::Read {
            path: name.clone(),
            error,
        })?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Exposed { path: name, mode });
        }
        let text = std::fs::read_to_string(path).map_err(|error| KeyError::Read {
            path: name.clone(),
            error,
        })?;
        ClusterKey::parse(&text).ok_or(KeyError::Malformed { path: name })
    }

    /// Writes the key to a new file (never over an existing one), mode 0600.
    pub fn write_new(&self, path: &Path) -> Result<(), KeyError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let name = path.display().to_string();
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|error| KeyError::Write {
                path: name.clone(),
                error,
            })?;
        file.write_all(self.to_file_text().as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|error| KeyError::Write { path: name, error })
    }
}

/// How the cluster's connections are protected.
#[derive(Clone, Debug)]
pub enum ClusterSecurity {
    /// Authenticated and encrypted with the cluster key (the only mode for a real cluster).
    Key(ClusterKey),
    /// Frames in clear, no authentication: only for measuring what encryption costs, and only
    /// where every cluster address is loopback (the node refuses it otherwise).
    Plaintext,
}

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("the peer does not hold the cluster key, or speaks another protocol")]
    Handshake,
    #[error("a record failed its authentication (damaged, replayed or forged)")]
    Forged,
    #[error("the handshake did not complete in time")]
    Timeout,
}

fn noise_error(_: snow::Error) -> ChannelError {
    ChannelError::Handshake
}

/// Keys of an established connection, shared by its two directions.
#[derive(Debug)]
struct Keys(snow::StatelessTransportState);

async fn write_record<W: AsyncWrite + Unpin>(writer: &mut W, message: &[u8]) -> io::Result<()> {
    let mut out = Vec::with_capacity(2 + message.len());
    out.extend_from_slice(&(message.len() as u16).to_le_bytes());
    out.extend_from_slice(message);
    writer.write_all(&out).await?;
    writer.flush().await
}

/// Reads one record into `buf` (sized [`RECORD_BYTES_MAX`]); its length.
async fn read_record<R: AsyncRead + Unpin>(reader: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut length = [0u8; 2];
    reader.read_exact(&mut length).await?;
    let length = usize::from(u16::from_le_bytes(length));
    if length < TAG_BYTES || length > buf.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "a record shorter than its tag",
        ));
    }
    reader.read_exact(&mut buf[..length]).await?;
    Ok(length)
}

fn builder(key: &ClusterKey) -> Result<snow::Builder<'_>, ChannelError> {
    let params = NOISE.parse().map_err(noise_error)?;
    snow::Builder::new(params)
        .psk(0, &key.0)
        .and_then(|b| b.prologue(PROLOGUE))
        .map_err(noise_error)
}

/// The initiator's half of the handshake (the node that dialled).
pub async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    key: &ClusterKey,
) -> Result<(Opener, Sealer), ChannelError> {
    within_handshake(async {
        let mut noise = builder(key)?.build_initiator().map_err(noise_error)?;
        let mut buf = vec![0u8; RECORD_BYTES_MAX];
        let n = noise.write_message(&[], &mut buf).map_err(noise_error)?;
        write_record(stream, &buf[..n]).await?;
        let n = read_record(stream, &mut buf).await?;
        let mut payload = vec![0u8; RECORD_BYTES_MAX];
        noise
            .read_message(&buf[..n], &mut payload)
            .map_err(noise_error)?;
        established(noise)
    })
    .await
}

/// The responder's half of the handshake (the node that accepted).
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    key: &ClusterKey,
) -> Result<(Opener, Sealer), ChannelError> {
    within_handshake(async {
        let mut noise = builder(key)?.build_responder().map_err(noise_error)?;
        let mut buf = vec![0u8; RECORD_BYTES_MAX];
        let n = read_record(stream, &mut buf).await?;
        let mut payload = vec![0u8; RECORD_BYTES_MAX];
        noise
            .read_message(&buf[..n], &mut payload)
            .map_err(noise_error)?;
        let n = noise.write_message(&[], &mut buf).map_err(noise_error)?;
        write_record(stream, &buf[..n]).await?;
        established(noise)
    })
    .await
}

async fn within_handshake<T>(
    work: impl std::future::Future<Output = Result<T, ChannelError>>,
) -> Result<T, ChannelError> {
    let timeout = async {
        glommio::timer::sleep(HANDSHAKE_TIMEOUT).await;
        Err(ChannelError::Timeout)
    };
    futures_lite::future::or(work, timeout).await
}

fn established(noise: snow::HandshakeState) -> Result<(Opener, Sealer), ChannelError> {
    let keys = Rc::new(Keys(
        noise.into_stateless_transport_mode().map_err(noise_error)?,
    ));
    Ok((
        Opener {
            keys: keys.clone(),
            nonce: 0,
            record: vec![0; RECORD_BYTES_MAX],
            plain: vec![0; RECORD_BYTES_MAX],
            start: 0,
            end: 0,
        },
        Sealer {
            keys,
            nonce: 0,
            out: Vec::new(),
        },
    ))
}

/// The receiving direction: reads records, checks and decrypts them in order.
#[derive(Debug)]
pub struct Opener {
    keys: Rc<Keys>,
    nonce: u64,
    record: Vec<u8>,
    plain: Vec<u8>,
    start: usize,
    end: usize,
}

impl Opener {
    /// Fills `out` with the next plaintext bytes, reading records as needed.
    pub async fn read_exact<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut R,
        out: &mut [u8],
    ) -> Result<(), ChannelError> {
        let mut filled = 0;
        while filled < out.len() {
            if self.start == self.end {
                let n = read_record(reader, &mut self.record).await?;
                let plain = self
                    .keys
                    .0
                    .read_message(self.nonce, &self.record[..n], &mut self.plain)
                    .map_err(|_| ChannelError::Forged)?;
                self.nonce += 1;
                (self.start, self.end) = (0, plain);
                continue;
            }
            let take = (self.end - self.start).min(out.len() - filled);
            out[filled..filled + take].copy_from_slice(&self.plain[self.start..self.start + take]);
            self.start += take;
            filled += take;
        }
        Ok(())
    }
}

/// The sending direction: encrypts bytes into numbered records.
#[derive(Debug)]
pub struct Sealer {
    keys: Rc<Keys>,
    nonce: u64,
    out: Vec<u8>,
}

impl Sealer {
    /// `plaintext` as records, ready to write (valid until the next call).
    pub fn seal(&mut self, plaintext: &[u8]) -> Result<&[u8], ChannelError> {
        let records = plaintext.len().div_ceil(RECORD_PLAINTEXT_MAX).max(1);
        self.out.clear();
        self.out
            .resize(plaintext.len() + records * (2 + TAG_BYTES), 0);
        let mut at = 0;
        for chunk in plaintext.chunks(RECORD_PLAINTEXT_MAX) {
            let body = &mut self.out[at + 2..at + 2 + chunk.len() + TAG_BYTES];
            let n = self
                .keys
                .0
                .write_message(self.nonce, chunk, body)
                .map_err(|_| ChannelError::Forged)?;
            self.nonce += 1;
            self.out[at..at + 2].copy_from_slice(&(n as u16).to_le_bytes());
            at += 2 + n;
        }
        Ok(&self.out[..at])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_file_round_trips_and_a_bad_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.key");
        let key = ClusterKey::generate();
        key.write_new(&path).unwrap();
        assert_eq!(ClusterKey::read(&path).unwrap().0, key.0);
        // Never over an existing key.
        assert!(matches!(key.write_new(&path), Err(KeyError::Write { .. })));
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = ClusterKey::read(&path).unwrap_err().to_string();
        assert!(error.contains("chmod 600"), "{error}");
        assert!(ClusterKey::parse("# a comment\nabcd\n").is_none());
        assert!(ClusterKey::parse(&"zz".repeat(32)).is_none());
        assert!(format!("{key:?}").contains("secret"));
    }

    /// Runs the future `make` returns on a glommio executor.
    fn on_executor<T, F, Fut>(make: F) -> T
    where
        T: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = T> + 'static,
    {
        glommio::LocalExecutorBuilder::default()
            .spawn(make)
            .unwrap()
            .join()
            .unwrap()
    }

    #[test]
    fn members_talk_and_a_stranger_or_a_replay_is_refused() {
        on_executor(|| async {
            let key = ClusterKey::generate();
            let (mut left, mut right) = glommio_pair().await;
            let (k1, k2) = (key.clone(), key.clone());
            let dialling = async { connect(&mut left, &k1).await };
            let answering = async { accept(&mut right, &k2).await };
            let ((mut open_l, mut seal_l), (mut open_r, mut seal_r)) = {
                let (a, b) = futures_lite::future::zip(dialling, answering).await;
                (a.unwrap(), b.unwrap())
            };
            let big = vec![7u8; RECORD_PLAINTEXT_MAX * 2 + 100];
            let sealed = seal_l.seal(&big).unwrap().to_vec();
            left.write_all(&sealed).await.unwrap();
            let mut got = vec![0u8; big.len()];
            open_r.read_exact(&mut right, &mut got).await.unwrap();
            assert_eq!(got, big);
            // The other direction has its own numbering.
            let reply = seal_r.seal(b"hello").unwrap().to_vec();
            right.write_all(&reply).await.unwrap();
            let mut five = [0u8; 5];
            open_l.read_exact(&mut left, &mut five).await.unwrap();
            assert_eq!(&five, b"hello");
            // The same record again: its number is past, its tag fails.
            left.write_all(&sealed[..2 + RECORD_BYTES_MAX])
                .await
                .unwrap();
            let mut again = vec![0u8; 10];
            assert!(matches!(
                open_r.read_exact(&mut right, &mut again).await,
                Err(ChannelError::Forged)
            ));

            // A node with another key cannot complete a handshake.
            let (mut left, mut right) = glommio_pair().await;
            let other = ClusterKey::generate();
            let dialling = async { connect(&mut left, &other).await };
            let answering = async { accept(&mut right, &key).await };
            let (a, b) = futures_lite::future::zip(dialling, answering).await;
            assert!(b.is_err(), "the responder accepted a stranger");
            assert!(a.is_err(), "the stranger thinks it is in");
        });
    }

    /// Two connected TCP streams on loopback, on this executor.
    async fn glommio_pair() -> (glommio::net::TcpStream, glommio::net::TcpStream) {
        let listener = glommio::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (dialled, accepted) =
            futures_lite::future::zip(glommio::net::TcpStream::connect(addr), listener.accept())
                .await;
        (dialled.unwrap(), accepted.unwrap())
    }
}
