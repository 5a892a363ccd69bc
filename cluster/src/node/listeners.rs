//! A node's listening sockets and the core that serves each connection they accept.
//!
//! Every address the node listens on (SMTP, POP3, admin, cluster, and those to come) is one
//! socket, bound and listening from [`bind_all`] on, **without SO_REUSEPORT**. A reuse-port
//! group admits any socket of the same user that asks to join it, and the kernel then hands
//! that stranger a share of the node's connections, and with them mail and passwords. A
//! socket of our own, with no reuse-port, makes every later bind of the address fail with
//! EADDRINUSE, whatever options the other process sets. SO_REUSEADDR stays on: it lets a
//! restarted node bind beside the connections a crashed one left in TIME_WAIT, and Linux never
//! lets it put a second listener on a listening address.
//!
//! Each socket is accepted from on one core, its acceptor ([`acceptor_core`]). Cores do not
//! all accept from the one socket because glommio's accept flips O_NONBLOCK on the socket's
//! shared file description around a non-blocking attempt: two cores doing that at once can
//! leave one of them in a blocking accept(2) that stalls its whole executor. The acceptor
//! hands each client session to the core with the fewest open sessions ([`least_loaded`]),
//! so the cores share sessions evenly, as the reuse-port hash used to spread them; cluster
//! peers go to the cores in turn.

use std::net::SocketAddr;
use std::os::fd::IntoRawFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use glommio::net::{AcceptedTcpStream, TcpListener, TcpStream};

use porcupine_protocols::smtp::Dialect;

use super::conn::SessionWatch;
use super::core_context::CoreContext;
use super::metrics;
use super::{NodeConfig, NodeError};

/// What a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Smtp,
    Pop3,
    /// POP3 in TLS from the first byte.
    Pop3s,
    Imap,
    /// IMAP in TLS from the first byte.
    Imaps,
    Lmtp,
    /// The admin HTTP endpoint, served on core 0.
    Admin,
    /// Other nodes (framed TCP).
    Cluster,
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Protocol::Smtp => "SMTP",
            Protocol::Pop3 => "POP3",
            Protocol::Pop3s => "POP3S",
            Protocol::Imap => "IMAP",
            Protocol::Imaps => "IMAPS",
            Protocol::Lmtp => "LMTP",
            Protocol::Admin => "admin",
            Protocol::Cluster => "the cluster",
        }
    }

    /// Client sessions count against `--connections-max` and are balanced by open sessions.
    fn is_client_session(self) -> bool {
        matches!(
            self,
            Protocol::Smtp
                | Protocol::Pop3
                | Protocol::Pop3s
                | Protocol::Imap
                | Protocol::Imaps
                | Protocol::Lmtp
                | Protocol::Admin
        )
    }
}

/// A socket bound and listening, not yet given to its acceptor core.
#[derive(Debug)]
pub struct Bound {
    pub protocol: Protocol,
    pub listener: std::net::TcpListener,
}

/// Binds every listener of `config`, exclusively (see the module docs), and writes the
/// addresses actually bound back into `config` (a port 0 becomes the port the kernel chose).
pub fn bind_all(config: &mut NodeConfig) -> Result<Vec<Bound>, NodeError> {
    bind_all_within(config, PORT_RELEASE_WAIT)
}

/// [`bind_all`], waiting up to `wait` for a port in use.
fn bind_all_within(config: &mut NodeConfig, wait: Duration) -> Result<Vec<Bound>, NodeError> {
    let mut bound = Vec::new();
    let mut wanted = vec![
        (Protocol::Smtp, &mut config.smtp),
        (Protocol::Pop3, &mut config.pop3),
        (Protocol::Imap, &mut config.imap),
        (Protocol::Admin, &mut config.admin),
    ];
    if let Some(pop3s) = &mut config.pop3s {
        wanted.push((Protocol::Pop3s, pop3s));
    }
    if let Some(imaps) = &mut config.imaps {
        wanted.push((Protocol::Imaps, imaps));
    }
    if let Some(lmtp) = &mut config.lmtp {
        wanted.push((Protocol::Lmtp, lmtp));
    }
    if let Some(cluster) = &mut config.cluster {
        wanted.push((Protocol::Cluster, cluster));
    }
    for (protocol, addr) in wanted {
        let listener = bind_waiting(*addr, wait).map_err(|e| {
            let why = match e.kind() {
                std::io::ErrorKind::AddrInUse if someone_listens(*addr) => {
                    "another process listens there (a node never shares its ports)".to_owned()
                }
                // A program that did not set SO_REUSEADDR (porcupine did not, before its
                // listeners were exclusive) leaves its closed connections blocking the port.
                std::io::ErrorKind::AddrInUse => "the address is still held by closed \
                    connections of a program that stopped (TIME_WAIT); try again within a minute"
                    .to_owned(),
                _ => e.to_string(),
            };
            NodeError::Start(format!(
                "cannot listen for {} on {addr}: {why}",
                protocol.name()
            ))
        })?;
        *addr = listener.local_addr().map_err(|e| {
            NodeError::Start(format!("{} listener has no address: {e}", protocol.name()))
        })?;
        bound.push(Bound { protocol, listener });
    }
    Ok(bound)
}

/// How long a start waits for a port that is still in use. A process killed while its
/// io_uring had I/O in flight keeps its listening sockets open until that I/O completes (the
/// ring is torn down after the process is gone), which on a busy or full disk takes a moment:
/// a restart right after a crash would otherwise fail on its own ports.
const PORT_RELEASE_WAIT: Duration = Duration::from_secs(10);

/// [`bind_exclusive`], retried while the address is in use, for up to `wait`.
fn bind_waiting(addr: SocketAddr, wait: Duration) -> std::io::Result<std::net::TcpListener> {
    let started = std::time::Instant::now();
    let mut waited = false;
    loop {
        match bind_exclusive(addr) {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && started.elapsed() < wait => {
                waited = true;
                std::thread::sleep(Duration::from_millis(50));
            }
            // Said only when it helped: a refusal stays the one line that names the holder.
            Ok(listener) if waited => {
                tracing::warn!(%addr, waited_ms = started.elapsed().as_millis() as u64,
                    "the port was still held by a stopped process's socket; taken after waiting");
                return Ok(listener);
            }
            result => return result,
        }
    }
}

/// Whether a process accepts connections on `addr` (to tell a listener from leftovers).
fn someone_listens(addr: SocketAddr) -> bool {
    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// Connections the kernel queues for a listener before its acceptor takes them.
const BACKLOG: i32 = 1024;

/// One listening socket on `addr` that no other socket can join.
pub fn bind_exclusive(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// The core that accepts from the `index`-th listener: listeners are spread over the cores,
/// except the admin endpoint, which lives on core 0.
pub fn acceptor_core(protocol: Protocol, index: usize, cores: usize) -> usize {
    match protocol {
        Protocol::Admin => 0,
        _ => index % cores.max(1),
    }
}

/// The core with the fewest open sessions; among equals, the first at or after `turn`
/// (so ties rotate instead of always landing on core 0).
pub fn least_loaded(open: &[usize], turn: usize) -> usize {
    let cores = open.len().max(1);
    (0..cores)
        .map(|i| (turn + i) % cores)
        .min_by_key(|&core| open.get(core).copied().unwrap_or(usize::MAX))
        .unwrap_or(0)
}

/// Open client sessions per core, read by every acceptor and changed only when a session
/// starts or ends (relaxed atomics, no lock).
#[derive(Debug)]
pub struct SessionCounts {
    open: Box<[AtomicUsize]>,
    turn: AtomicUsize,
    /// Cluster connections from other nodes, on every core.
    peers: AtomicUsize,
}

/// Cluster connections other nodes may have open to this one (a node dials one per core; 30
/// nodes of 8 cores need 240).
pub const PEER_CONNECTIONS_MAX: usize = 1024;

impl SessionCounts {
    pub fn new(cores: usize) -> Self {
        Self {
            open: (0..cores.max(1)).map(|_| AtomicUsize::new(0)).collect(),
            turn: AtomicUsize::new(0),
            peers: AtomicUsize::new(0),
        }
    }

    /// A slot for one more cluster connection, if fewer than `max` are open.
    fn enter_peer(counts: &Arc<SessionCounts>, max: usize) -> Option<Slot> {
        counts
            .peers
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(Slot::Peer(counts.clone()))
    }

    /// Sessions open on `core`.
    pub fn open(&self, core: usize) -> usize {
        self.open
            .get(core)
            .map_or(0, |count| count.load(Ordering::Relaxed))
    }

    pub fn total(&self) -> usize {
        self.open.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// The next turn for breaking ties (and for placing cluster peers).
    fn next_turn(&self) -> usize {
        self.turn.fetch_add(1, Ordering::Relaxed)
    }

    /// The least loaded core, counted at once as one session busier.
    fn enter_least_loaded(counts: &Arc<SessionCounts>) -> SessionGuard {
        let open: Vec<usize> = counts
            .open
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let core = least_loaded(&open, counts.next_turn());
        Self::enter(counts, core)
    }

    fn enter(counts: &Arc<SessionCounts>, core: usize) -> SessionGuard {
        if let Some(count) = counts.open.get(core) {
            count.fetch_add(1, Ordering::Relaxed);
        }
        SessionGuard {
            counts: counts.clone(),
            core,
        }
    }
}

/// One open session on `core`; dropping it counts the session closed.
#[derive(Debug)]
pub struct SessionGuard {
    counts: Arc<SessionCounts>,
    core: usize,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        if let Some(count) = self.counts.open.get(self.core) {
            let _ = count.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_sub(1))
            });
        }
    }
}

/// What an open connection counts against: a client session on a core, or a cluster
/// connection. Dropped when the connection ends.
#[derive(Debug)]
enum Slot {
    // Held for its Drop, which counts the session closed.
    #[allow(dead_code)]
    Session(SessionGuard),
    Peer(Arc<SessionCounts>),
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Slot::Peer(counts) = self {
            let _ = counts
                .peers
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    Some(n.saturating_sub(1))
                });
        }
    }
}

/// A connection accepted on one core for another to serve.
#[derive(Debug)]
pub struct Handoff {
    protocol: Protocol,
    stream: AcceptedTcpStream,
    slot: Slot,
}

/// Takes a bound socket onto the calling core's executor.
fn on_this_executor(listener: std::net::TcpListener) -> TcpListener {
    // SAFETY: the descriptor comes from `into_raw_fd`, so nothing else owns or closes it; it
    // is a bound, listening TCP socket, which is what glommio's listener expects.
    unsafe { std::os::fd::FromRawFd::from_raw_fd(listener.into_raw_fd()) }
}

/// Accepts from `bound` until the node stops, handing each connection to the core that
/// serves it (this one included). Runs on the listener's acceptor core.
pub async fn accept(
    bound: Bound,
    context: Rc<CoreContext>,
    stop: flume::Receiver<()>,
    watch: SessionWatch,
) {
    let Bound { protocol, listener } = bound;
    let listener = on_this_executor(listener);
    let counts = &context.sessions;
    loop {
        let accepting = async { Some(listener.shared_accept().await) };
        let stopping = async {
            let _ = stop.recv_async().await;
            None
        };
        let Some(accepted) = futures_lite::future::or(accepting, stopping).await else {
            return;
        };
        let stream = match accepted {
            Ok(stream) => stream,
            Err(error) => {
                // EMFILE and the like: back off instead of spinning on the same error.
                tracing::warn!(?protocol, %error, "accept failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if !protocol.is_client_session() {
            let Some(slot) = SessionCounts::enter_peer(counts, PEER_CONNECTIONS_MAX) else {
                metrics::add(&context.metrics.peers_refused, 1);
                tracing::warn!("refused a cluster connection: {PEER_CONNECTIONS_MAX} are open");
                drop(stream.bind_to_executor());
                continue;
            };
            let target = counts.next_turn() % context.handoffs.len().max(1);
            let handoff = Handoff {
                protocol,
                stream,
                slot,
            };
            hand_to(target, handoff, &context, &watch);
            continue;
        }
        if protocol != Protocol::Admin && counts.total() >= context.live.load().connections_max {
            metrics::add(&context.metrics.sessions_refused, 1);
            refuse(protocol, stream.bind_to_executor());
            continue;
        }
        let guard = if protocol == Protocol::Admin {
            SessionCounts::enter(counts, 0)
        } else {
            SessionCounts::enter_least_loaded(counts)
        };
        let target = guard.core;
        let handoff = Handoff {
            protocol,
            stream,
            slot: Slot::Session(guard),
        };
        hand_to(target, handoff, &context, &watch);
    }
}

/// Serves `handoff` here if `target` is this core, else sends it there.
fn hand_to(target: usize, handoff: Handoff, context: &Rc<CoreContext>, watch: &SessionWatch) {
    if target == context.core {
        serve(handoff, context.clone(), watch);
        return;
    }
    match context.handoffs.get(target) {
        Some(inbox) => {
            if let Err(flume::SendError(handoff)) = inbox.send(handoff) {
                // That core has stopped: the node is going down, close the connection.
                drop(handoff.stream.bind_to_executor());
            }
        }
        None => serve(handoff, context.clone(), watch),
    }
}

/// Serves the connections other cores hand to this one, until the node stops; any left
/// over are closed.
pub async fn receive(
    inbox: flume::Receiver<Handoff>,
    context: Rc<CoreContext>,
    stop: flume::Receiver<()>,
    watch: SessionWatch,
) {
    loop {
        let receiving = async { inbox.recv_async().await.ok() };
        let stopping = async {
            let _ = stop.recv_async().await;
            None
        };
        match futures_lite::future::or(receiving, stopping).await {
            Some(handoff) => serve(handoff, context.clone(), &watch),
            None => break,
        }
    }
    // An accepted stream owns its descriptor only once bound to an executor: bind and drop.
    for handoff in inbox.try_iter() {
        drop(handoff.stream.bind_to_executor());
    }
}

/// Starts the session of `handoff` on this core.
fn serve(handoff: Handoff, context: Rc<CoreContext>, watch: &SessionWatch) {
    let Handoff {
        protocol,
        stream,
        slot,
    } = handoff;
    let stream = stream.bind_to_executor();
    // Client sessions count against their address ([`crate::abuse`]; loopback is exempt).
    let address_slot = match (protocol, stream.peer_addr()) {
        (
            Protocol::Smtp | Protocol::Pop3 | Protocol::Pop3s | Protocol::Imap | Protocol::Imaps,
            Ok(peer),
        ) => match context.clients.admit(peer.ip()) {
            Ok(slot) => slot,
            Err(why) => {
                metrics::add(&context.metrics.sessions_refused, 1);
                refuse_address(protocol, why, stream);
                return;
            }
        },
        _ => None,
    };
    let live = context.live.load();
    let idle = match protocol {
        Protocol::Pop3 | Protocol::Pop3s => live.pop3_idle_timeout,
        Protocol::Imap | Protocol::Imaps => live.imap_idle_timeout,
        _ => live.smtp_idle_timeout,
    };
    let clock = watch.register(idle, live.write_timeout);
    drop(live);
    glommio::spawn_local(async move {
        match protocol {
            Protocol::Smtp => super::smtp_conn::serve(stream, context, clock, Dialect::Smtp).await,
            // One MTA delivers from one address over many connections: no per-address share.
            Protocol::Lmtp => super::smtp_conn::serve(stream, context, clock, Dialect::Lmtp).await,
            Protocol::Pop3 => {
                super::pop3_conn::serve(stream, context, clock, super::client_start::Start::Plain)
                    .await
            }
            Protocol::Pop3s => {
                let start = super::client_start::Start::ImplicitTls;
                super::pop3_conn::serve(stream, context, clock, start).await
            }
            Protocol::Imap => {
                let start = super::client_start::Start::Plain;
                super::imap_conn::serve(stream, context, clock, start).await
            }
            Protocol::Imaps => {
                let start = super::client_start::Start::ImplicitTls;
                super::imap_conn::serve(stream, context, clock, start).await
            }
            Protocol::Admin => super::admin::serve(stream, context).await,
            Protocol::Cluster => super::cluster_driver::serve_peer(stream, context).await,
        }
        drop((slot, address_slot));
    })
    .detach();
}

/// Tells a client over its address's share to come back later, and closes.
fn refuse_address(protocol: Protocol, why: crate::abuse::Admission, stream: TcpStream) {
    use crate::abuse::Admission;
    let refusal: &'static [u8] = match (protocol, why) {
        (Protocol::Smtp, Admission::TooFast) => {
            b"421 4.7.0 Too many connections from your address too fast, slow down\r\n"
        }
        (Protocol::Smtp, _) => b"421 4.7.0 Too many connections from your address\r\n",
        (Protocol::Lmtp, _) => b"421 4.7.0 Too many connections from your address\r\n",
        (Protocol::Pop3, _) => b"-ERR [SYS/TEMP] too many connections from your address\r\n",
        (Protocol::Imap, _) => b"* BYE [UNAVAILABLE] too many connections from your address\r\n",
        _ => b"",
    };
    write_and_close(stream, refusal);
}

/// Tells a client over the connection limit to come back later, and closes.
fn refuse(protocol: Protocol, stream: TcpStream) {
    let refusal: &'static [u8] = match protocol {
        Protocol::Smtp | Protocol::Lmtp => b"421 4.7.0 Too many connections, try again later\r\n",
        Protocol::Pop3 => b"-ERR [SYS/TEMP] too many connections\r\n",
        Protocol::Imap => b"* BYE [UNAVAILABLE] too many connections\r\n",
        Protocol::Pop3s | Protocol::Imaps | Protocol::Admin | Protocol::Cluster => b"",
    };
    write_and_close(stream, refusal);
}

fn write_and_close(mut stream: TcpStream, refusal: &'static [u8]) {
    glommio::spawn_local(async move {
        use futures_lite::AsyncWriteExt;
        let _ = stream.write_all(refusal).await;
        let _ = stream.close().await;
    })
    .detach();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_go_to_the_least_loaded_core_and_ties_rotate() {
        assert_eq!(least_loaded(&[3, 1, 2], 0), 1);
        assert_eq!(least_loaded(&[3, 1, 2], 2), 1);
        assert_eq!(least_loaded(&[0, 0], 0), 0);
        assert_eq!(least_loaded(&[0, 0], 1), 1);
        assert_eq!(least_loaded(&[0, 0, 0], 5), 2);
        assert_eq!(least_loaded(&[], 7), 0);
    }

    #[test]
    fn counted_sessions_spread_evenly_and_are_released() {
        let counts = Arc::new(SessionCounts::new(3));
        let guards: Vec<SessionGuard> = (0..9)
            .map(|_| SessionCounts::enter_least_loaded(&counts))
            .collect();
        assert_eq!(
            (0..3).map(|c| counts.open(c)).collect::<Vec<_>>(),
            [3, 3, 3]
        );
        assert_eq!(counts.total(), 9);
        drop(guards);
        assert_eq!(counts.total(), 0);
    }

    #[test]
    fn the_admin_endpoint_is_accepted_on_core_zero_and_others_spread() {
        assert_eq!(acceptor_core(Protocol::Admin, 2, 4), 0);
        assert_eq!(acceptor_core(Protocol::Smtp, 0, 2), 0);
        assert_eq!(acceptor_core(Protocol::Pop3, 1, 2), 1);
        assert_eq!(acceptor_core(Protocol::Cluster, 3, 2), 1);
        assert_eq!(acceptor_core(Protocol::Pop3, 1, 1), 0);
    }

    #[test]
    fn leftovers_of_a_program_without_reuse_address_are_told_from_a_listener() {
        use std::io::Read;
        // A server that sets no SO_REUSEADDR and closes first leaves TIME_WAIT behind.
        let old = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        old.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .unwrap();
        old.listen(4).unwrap();
        let addr = old.local_addr().unwrap().as_socket().unwrap();
        let mut client = std::net::TcpStream::connect(addr).unwrap();
        let (served, _) = old.accept().unwrap();
        drop(served);
        let _ = client.read(&mut [0; 1]);
        drop(old);
        let mut config = NodeConfig {
            smtp: addr,
            pop3: "127.0.0.1:0".parse().unwrap(),
            admin: "127.0.0.1:0".parse().unwrap(),
            cluster: Some("127.0.0.1:0".parse().unwrap()),
            ..NodeConfig::default()
        };
        let error = bind_all_within(&mut config, Duration::ZERO)
            .unwrap_err()
            .to_string();
        assert!(error.contains("TIME_WAIT"), "{error}");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        config.smtp = listener.local_addr().unwrap();
        let error = bind_all_within(&mut config, Duration::ZERO)
            .unwrap_err()
            .to_string();
        assert!(error.contains("another process listens there"), "{error}");
        // A port that frees itself while the start waits is taken.
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = held.local_addr().unwrap();
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            drop(held);
        });
        assert!(bind_waiting(addr, Duration::from_secs(10)).is_ok());
        release.join().unwrap();
    }

    #[test]
    fn a_bound_address_cannot_be_bound_again_even_with_reuse_port() {
        let first = bind_exclusive("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = first.local_addr().unwrap();
        let intruder =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        intruder.set_reuse_address(true).unwrap();
        intruder.set_reuse_port(true).unwrap();
        let err = intruder.bind(&addr.into()).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
        let wildcard =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        wildcard.set_reuse_address(true).unwrap();
        let any: SocketAddr = format!("0.0.0.0:{}", addr.port()).parse().unwrap();
        assert_eq!(
            wildcard.bind(&any.into()).unwrap_err().kind(),
            std::io::ErrorKind::AddrInUse
        );
        assert_eq!(
            bind_exclusive(addr).unwrap_err().kind(),
            std::io::ErrorKind::AddrInUse
        );
    }
}
