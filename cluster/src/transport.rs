//! The cluster transport edge: framed TCP between nodes, on the glommio executors.
//!
//! Each core keeps its own connection to each peer ([`Peers`], one per core, never shared):
//! requests carry ids and wait for their reply with a timeout; a connection that fails is
//! dropped with its waiters and redialled on demand, with exponential backoff per address.
//! Frames queued while a write is under way go out together (natural batching); the queue is
//! bounded, and a full one makes requesters wait (back-pressure). Every frame carries the sender's load; the loads heard from
//! peers are kept with their age. The server side reads frames from a peer and hands each to
//! a handler; a peer that sends garbage or another version is dropped with a log line.
//!
//! Every connection first proves both ends hold the cluster key and then carries its frames
//! encrypted ([`crate::secure`]); [`FrameReader`] and [`FrameWriter`] are the two directions.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::net::TcpStream;

use crate::loads::{Heard, LoadTable, NodeLoad};
use crate::rpc::{self, Call, CallError, OneWay, Request};
use crate::secure::{self, ChannelError, ClusterSecurity, Opener, Sealer};
use crate::wire::{self, FrameKind, Header, WireError, HEADER_BYTES};

const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_millis(500);
/// Frames queued to one peer before senders wait.
pub const QUEUED_FRAMES_MAX: usize = 4096;
/// Bytes of queued frames written in one go at most.
const WRITE_BATCH_BYTES: usize = 1 << 20;

/// Where a reply's payload goes, and when its asker gives up.
type Waiter = (flume::Sender<Vec<u8>>, Instant);

struct Conn {
    frames: flume::Sender<Vec<u8>>,
    /// Waiting requests and when they give up (a sweeper drops the expired ones, so no
    /// per-request timer has to be armed and cancelled).
    pending: RefCell<HashMap<u64, Waiter>>,
}

/// How often expired requests are dropped.
const SWEEP_EVERY: Duration = Duration::from_millis(25);

/// This core's connections to other nodes.
pub struct Peers {
    me: u64,
    security: ClusterSecurity,
    load: Arc<NodeLoad>,
    loads: Arc<LoadTable>,
    conns: RefCell<HashMap<String, Rc<Conn>>>,
    backoff: RefCell<HashMap<String, (Instant, Duration)>>,
    next_id: Cell<u64>,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers")
            .field("me", &self.me)
            .field("connections", &self.conns.borrow().len())
            .finish()
    }
}

impl Peers {
    /// This core's peers; call on an executor (it starts the timeout sweeper there).
    pub fn new(
        me: u64,
        security: ClusterSecurity,
        load: Arc<NodeLoad>,
        loads: Arc<LoadTable>,
    ) -> Rc<Self> {
        let peers = Rc::new(Self {
            me,
            security,
            load,
            loads,
            conns: RefCell::new(HashMap::new()),
            backoff: RefCell::new(HashMap::new()),
            next_id: Cell::new(1),
        });
        let weak = Rc::downgrade(&peers);
        glommio::spawn_local(async move {
            loop {
                glommio::timer::sleep(SWEEP_EVERY).await;
                let Some(peers) = weak.upgrade() else { return };
                let now = Instant::now();
                for conn in peers.conns.borrow().values() {
                    conn.pending
                        .borrow_mut()
                        .retain(|_, (_, deadline)| *deadline > now);
                }
            }
        })
        .detach();
        peers
    }

    /// Forgets a failed connection attempt: the node at `addr` was just heard from, so it is
    /// reachable again (a restarted node must not wait out a backoff from while it was down).
    pub fn clear_backoff(&self, addr: &str) {
        self.backoff.borrow_mut().remove(addr);
    }

    /// What is known of a node's load (node ids fit in the header's 32 bits).
    pub fn heard_load(&self, node: u64) -> Option<Heard> {
        self.loads.get(node, crate::node::clock::now_ms())
    }

    pub fn note_load(&self, header: &Header) {
        self.loads.heard(
            u64::from(header.sender),
            header.load,
            crate::node::clock::now_ms(),
        );
    }

    fn frame<T: serde::Serialize + ?Sized>(
        &self,
        kind: FrameKind,
        request_id: u64,
        body: &T,
    ) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        match wire::encode(&mut out, kind, request_id, self.load.total(), self.me, body) {
            Ok(()) => Some(out),
            Err(error) => {
                tracing::error!(%error, "cannot encode a cluster frame");
                None
            }
        }
    }

    fn conn(self: &Rc<Self>, addr: &str) -> Option<Rc<Conn>> {
        if let Some(conn) = self.conns.borrow().get(addr) {
            return Some(conn.clone());
        }
        if let Some((until, _)) = self.backoff.borrow().get(addr) {
            if Instant::now() < *until {
                return None;
            }
        }
        let target: SocketAddr = addr.parse().ok()?;
        let (frames, queue) = flume::bounded(QUEUED_FRAMES_MAX);
        let conn = Rc::new(Conn {
            frames,
            pending: RefCell::new(HashMap::new()),
        });
        self.conns
            .borrow_mut()
            .insert(addr.to_owned(), conn.clone());
        let peers = self.clone();
        let (addr, task_conn) = (addr.to_owned(), conn.clone());
        glommio::spawn_local(async move {
            peers.run(addr, target, task_conn, queue).await;
        })
        .detach();
        Some(conn)
    }

    async fn run(
        self: Rc<Self>,
        addr: String,
        target: SocketAddr,
        conn: Rc<Conn>,
        queue: flume::Receiver<Vec<u8>>,
    ) {
        let connected = match TcpStream::connect_timeout(target, CONNECT_TIMEOUT).await {
            Ok(mut stream) => {
                let _ = stream.set_nodelay(true);
                match dial(&mut stream, &self.security).await {
                    Ok(halves) => Ok((stream, halves)),
                    Err(error) => {
                        tracing::warn!(%addr, %error, "cannot open a cluster channel");
                        Err(error.to_string())
                    }
                }
            }
            Err(error) => Err(error.to_string()),
        };
        match connected {
            Ok((stream, (opener, sealer))) => {
                self.backoff.borrow_mut().remove(&addr);
                let (reader, writer) = futures_lite::io::split(stream);
                let writer = FrameWriter::new(writer, sealer);
                let reading = async {
                    let mut reader = FrameReader::new(reader, opener);
                    loop {
                        match read_frame(&mut reader).await {
                            Ok((header, payload)) => {
                                self.note_load(&header);
                                if header.kind == FrameKind::Reply {
                                    let waiter =
                                        conn.pending.borrow_mut().remove(&header.request_id);
                                    if let Some((waiter, _)) = waiter {
                                        let _ = waiter.send(payload);
                                    }
                                }
                            }
                            Err(error) => {
                                log_read_error(&addr, &error);
                                return;
                            }
                        }
                    }
                };
                futures_lite::future::or(reading, write_frames(writer, &queue)).await;
            }
            Err(error) => {
                let mut backoff = self.backoff.borrow_mut();
                let next = backoff
                    .get(&addr)
                    .map_or(BACKOFF_MIN, |(_, d)| (*d * 2).min(BACKOFF_MAX));
                backoff.insert(addr.clone(), (Instant::now() + next, next));
                tracing::debug!(%addr, %error, "cannot reach peer");
            }
        }
        let mut conns = self.conns.borrow_mut();
        if conns.get(&addr).is_some_and(|c| Rc::ptr_eq(c, &conn)) {
            conns.remove(&addr);
        }
        conn.pending.borrow_mut().clear();
    }

    /// Asks `addr` to carry out `call` and waits for its reply.
    pub async fn call<C: Call>(
        self: &Rc<Self>,
        addr: &str,
        call: C,
        timeout: Duration,
    ) -> Result<C::Reply, CallError> {
        let request: Request = call.into();
        let name = request.name();
        let payload = self.request(addr, &request, timeout).await?;
        let reply = rpc::read_reply::<C>(&payload);
        if matches!(reply, Err(CallError::BadReply)) {
            tracing::warn!(%addr, call = name, "a peer's reply did not decode");
        }
        reply
    }

    /// Sends a request and waits for its reply's payload.
    async fn request(
        self: &Rc<Self>,
        addr: &str,
        request: &Request,
        timeout: Duration,
    ) -> Result<Vec<u8>, CallError> {
        let conn = self.conn(addr).ok_or(CallError::Unreachable)?;
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let frame = self
            .frame(FrameKind::Request, id, request)
            .ok_or(CallError::Closed)?;
        let (tx, rx) = flume::bounded(1);
        let deadline = Instant::now() + timeout;
        conn.pending.borrow_mut().insert(id, (tx, deadline));
        // A full queue makes the caller wait: back-pressure from a slow peer.
        if conn.frames.send_async(frame).await.is_err() {
            conn.pending.borrow_mut().remove(&id);
            return Err(CallError::Closed);
        }
        // The sweeper (or a lost connection) drops the sender; which one, the clock tells.
        rx.recv_async().await.map_err(|_| {
            if Instant::now() >= deadline {
                CallError::Timeout
            } else {
                CallError::Closed
            }
        })
    }

    /// Sends a one-way frame; lost if the peer cannot be reached.
    pub fn send(self: &Rc<Self>, addr: &str, body: &OneWay) {
        if let (Some(conn), Some(frame)) = (self.conn(addr), self.frame(FrameKind::OneWay, 0, body))
        {
            // Membership traffic is periodic: a frame that does not fit is dropped.
            let _ = conn.frames.try_send(frame);
        }
    }

    /// The reply frame of operation `C` to the incoming request `request_id`.
    pub fn reply_frame<C: Call>(
        &self,
        request_id: u64,
        reply: &Result<C::Reply, rpc::Failure>,
    ) -> Option<Vec<u8>> {
        self.frame(FrameKind::Reply, request_id, reply)
    }
}

fn log_read_error(addr: &str, error: &FrameError) {
    match error {
        FrameError::Io(_) => tracing::debug!(%addr, %error, "cluster connection closed"),
        FrameError::Wire(_) | FrameError::Forged => {
            tracing::warn!(%addr, %error, "dropping a cluster connection that sent a bad frame")
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Wire(#[from] WireError),
    #[error("a record failed its authentication (damaged, replayed or forged)")]
    Forged,
}

impl From<ChannelError> for FrameError {
    fn from(error: ChannelError) -> Self {
        match error {
            ChannelError::Io(e) => FrameError::Io(e),
            ChannelError::Handshake | ChannelError::Forged | ChannelError::Timeout => {
                FrameError::Forged
            }
        }
    }
}

/// The dialling side's handshake: the two directions of the channel (none in clear).
pub async fn dial(
    stream: &mut TcpStream,
    security: &ClusterSecurity,
) -> Result<(Option<Opener>, Option<Sealer>), ChannelError> {
    match security {
        ClusterSecurity::Key(key) => {
            let (opener, sealer) = secure::connect(stream, key).await?;
            Ok((Some(opener), Some(sealer)))
        }
        ClusterSecurity::Plaintext => Ok((None, None)),
    }
}

/// The accepting side's handshake: the two directions of the channel (none in clear).
pub async fn answer(
    stream: &mut TcpStream,
    security: &ClusterSecurity,
) -> Result<(Option<Opener>, Option<Sealer>), ChannelError> {
    match security {
        ClusterSecurity::Key(key) => {
            let (opener, sealer) = secure::accept(stream, key).await?;
            Ok((Some(opener), Some(sealer)))
        }
        ClusterSecurity::Plaintext => Ok((None, None)),
    }
}

/// The receiving half of a peer connection.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    opener: Option<Opener>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R, opener: Option<Opener>) -> Self {
        Self { inner, opener }
    }

    async fn read_exact(&mut self, out: &mut [u8]) -> Result<(), FrameError> {
        match &mut self.opener {
            Some(opener) => Ok(opener.read_exact(&mut self.inner, out).await?),
            None => Ok(self.inner.read_exact(out).await?),
        }
    }
}

/// Payload bytes allocated at once: a longer payload grows as its bytes arrive, so a header
/// that announces more than the peer sends costs no more memory than what it sent.
const PAYLOAD_CHUNK_BYTES: usize = 256 << 10;

/// Reads one frame: its header and its payload, checked against the CRC (what the payload
/// holds, the header's kind says).
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut FrameReader<R>,
) -> Result<(Header, Vec<u8>), FrameError> {
    let mut header_bytes = [0u8; HEADER_BYTES];
    reader.read_exact(&mut header_bytes).await?;
    let header = wire::decode_header(&header_bytes)?;
    let mut payload = Vec::with_capacity(header.payload_len.min(PAYLOAD_CHUNK_BYTES));
    while payload.len() < header.payload_len {
        let at = payload.len();
        let take = (header.payload_len - at).min(PAYLOAD_CHUNK_BYTES);
        payload.resize(at + take, 0);
        reader.read_exact(&mut payload[at..]).await?;
    }
    wire::verify_payload(&header_bytes, &header, &payload)?;
    Ok((header, payload))
}

/// The sending half of a peer connection.
#[derive(Debug)]
pub struct FrameWriter<W> {
    inner: W,
    sealer: Option<Sealer>,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    pub fn new(inner: W, sealer: Option<Sealer>) -> Self {
        Self { inner, sealer }
    }

    async fn write(&mut self, frames: &[u8]) -> Result<(), FrameError> {
        match &mut self.sealer {
            Some(sealer) => self.inner.write_all(sealer.seal(frames)?).await?,
            None => self.inner.write_all(frames).await?,
        }
        Ok(self.inner.flush().await?)
    }
}

/// Writes queued frames until the queue closes or the socket fails.
pub async fn write_frames<W: AsyncWrite + Unpin>(
    mut writer: FrameWriter<W>,
    queue: &flume::Receiver<Vec<u8>>,
) {
    let mut batch = Vec::new();
    while let Ok(frame) = queue.recv_async().await {
        batch.extend_from_slice(&frame);
        while batch.len() < WRITE_BATCH_BYTES {
            match queue.try_recv() {
                Ok(frame) => batch.extend_from_slice(&frame),
                Err(_) => break,
            }
        }
        if writer.write(&batch).await.is_err() {
            return;
        }
        batch.clear();
    }
}
