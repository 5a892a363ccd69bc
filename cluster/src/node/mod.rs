//! One node: an executor per core, each owning its shards and serving the sessions its
//! listeners hand it (one exclusive socket per address, see [`listeners`]); the admin endpoint
//! on core 0. Cores share nothing but channels and a few relaxed counters.
//!
//! Start: every core opens (recovers) its shards, then all cores start listening. Stop
//! ([`NodeHandle::stop`]): listeners close, idle sessions get 421 / -ERR, sessions in DATA may
//! finish within the grace period, then every shard closes (queued writes finish, checkpoints
//! are written).

pub mod admin;
pub mod admin_auth;
pub mod anti_entropy;
pub mod client_limits;
pub mod client_start;
pub mod clock;
pub mod cluster_driver;
pub mod cluster_state;
pub mod config;
pub mod conn;
pub mod core_call;
pub mod core_calls;
pub mod core_context;
pub mod core_shards;
pub mod data_lock;
pub mod delivery;
pub mod healing;
pub mod imap_authority;
pub mod imap_conn;
pub mod listeners;
pub mod live_settings;
pub mod mail_transfer;
pub mod maildrop;
pub mod metrics;
pub mod metrics_text;
pub mod peer_calls;
pub mod pop3_conn;
pub mod quota;
pub mod removed_users;
pub mod replicas;
pub mod service;
pub mod smtp_conn;
pub mod status;
pub mod tls;
pub mod transfer;
pub mod user_removal;
pub mod user_usage;
pub mod users;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use porcupine_engine::{DmaStorage, Placement, Shard};
use porcupine_runtime as runtime;

use self::conn::SessionWatch;
use self::core_call::{Router, ToCore};
use self::core_calls::{ProfilesEver, PutProfile};
use self::core_context::CoreContext;
use self::listeners::{Bound, Handoff, SessionCounts};
use self::metrics::NodeMetrics;
use self::service::CoreService;

pub use self::config::{ConfigError, Fault, NodeConfig};

/// What every connection handler reads: configuration, routing, counters.
#[derive(Debug)]
pub struct NodeContext {
    pub config: NodeConfig,
    pub router: Router,
    pub cluster: cluster_state::ClusterShared,
    pub metrics: NodeMetrics,
    pub started: Instant,
    /// The storage of each data directory (throttled ones share one simulated disk).
    pub disks: Vec<DmaStorage>,
    /// Open client sessions per core: where an acceptor sends the next one.
    pub sessions: Arc<SessionCounts>,
    /// Each core's inbox of connections accepted on another core.
    pub handoffs: Vec<flume::Sender<Handoff>>,
    /// What admin requests must present ([`admin_auth`]).
    pub admin_token: admin_auth::AdminToken,
    /// The `Host` values that name this node's admin endpoint.
    pub admin_hosts: Vec<String>,
    /// TLS for clients (STARTTLS, STLS, POP3S).
    pub tls: tls::ServerTls,
    /// Per client address: connections, their rate, failed logins.
    pub clients: Arc<client_limits::ClientLimits>,
    /// Message bytes in transfer on the node, against `transfer_bytes_max`.
    pub transfer: transfer::TransferBudget,
    /// The settings SIGHUP can change ([`live_settings`]); read these, not `config`'s.
    pub live: arc_swap::ArcSwap<live_settings::LiveSettings>,
}

/// The storage of each data directory: a directory named in `throttles` gets one simulated
/// disk, shared by every core's shard on it.
fn disks(config: &NodeConfig) -> Result<Vec<DmaStorage>, NodeError> {
    for (dir, _) in &config.throttles {
        if !config.data_dirs.contains(dir) {
            return Err(NodeError::Start(format!(
                "a throttle names {}, which is not a data directory (--data)",
                dir.display()
            )));
        }
    }
    let eio = match &config.fault {
        Some(Fault::EioWhile { dir, trigger }) => {
            if !config.data_dirs.contains(dir) {
                return Err(NodeError::Start(format!(
                    "the EIO fault names {}, which is not a data directory (--data)",
                    dir.display()
                )));
            }
            Some((dir.clone(), eio_switch(trigger.clone())))
        }
        _ => None,
    };
    Ok(config
        .data_dirs
        .iter()
        .map(|dir| {
            let storage = match config.throttles.iter().find(|(d, _)| d == dir) {
                Some((_, limits)) if limits.is_limited() => {
                    tracing::warn!(dir = %dir.display(), %limits, "disk throttled (experiment mode)");
                    DmaStorage::throttled(Arc::new(porcupine_engine::DiskThrottle::new(*limits)))
                }
                _ => DmaStorage::default(),
            };
            match &eio {
                Some((faulty, switch)) if faulty == dir => storage.with_eio_switch(switch.clone()),
                _ => storage,
            }
        })
        .collect())
}

/// Tests only: an EIO switch that is on while `trigger` exists.
fn eio_switch(trigger: std::path::PathBuf) -> Arc<porcupine_engine::EioSwitch> {
    let switch = Arc::new(porcupine_engine::EioSwitch::default());
    let watched = switch.clone();
    let spawned = std::thread::Builder::new()
        .name("eio-fault".into())
        .spawn(move || {
            let mut was = false;
            loop {
                let on = trigger.exists();
                if on != was {
                    tracing::warn!(on, trigger = %trigger.display(), "fault injection: EIO on every write and sync of a data directory");
                    was = on;
                }
                watched.set(on);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
    if let Err(error) = spawned {
        tracing::error!(%error, "cannot watch the EIO fault's trigger");
    }
    switch
}

/// A running node.
#[derive(Debug)]
pub struct NodeHandle {
    stop: Option<flume::Sender<()>>,
    drained: flume::Receiver<()>,
    context: Arc<NodeContext>,
    executors: Vec<glommio::ExecutorJoinHandle<()>>,
    /// The first user's address and password, if this start created one.
    pub first_user: Option<(String, String)>,
    /// Held until the node is gone ([`data_lock`]).
    _locks: data_lock::DataLocks,
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Start(String),
}

fn start_error(e: impl std::fmt::Display) -> NodeError {
    NodeError::Start(e.to_string())
}

/// Starts a node and returns once it accepts connections.
pub fn start(mut config: NodeConfig) -> Result<NodeHandle, NodeError> {
    config.derive();
    config.validate()?;
    for dir in &config.data_dirs {
        std::fs::create_dir_all(dir).map_err(|e| {
            start_error(format!(
                "cannot create data directory {}: {e}",
                dir.display()
            ))
        })?;
    }
    let locks = data_lock::lock_all(
        config.data_dirs.iter().map(|d| d.as_path()),
        Duration::from_secs(10),
    )
    .map_err(start_error)?;
    check_cluster_security(&config)?;
    if !config.admin.ip().is_loopback() && !config.admin_public {
        return Err(start_error(format!(
            "the admin endpoint would listen on {}, off loopback, where anyone could try its \
             token: keep it on loopback, or give --admin-public to serve it there over HTTPS",
            config.admin
        )));
    }
    runtime::raise_fd_limit();
    // Every listener is bound (and listening) before anything else starts: a taken port is a
    // clear error, and no other process can slip in while the shards open.
    let bound = listeners::bind_all(&mut config)?;
    for (dir, weight) in &config.disk_weights {
        if !config.data_dirs.contains(dir) {
            return Err(start_error(format!(
                "a disk weight names {}, which is not a data directory (--data)",
                dir.display()
            )));
        }
        if !(weight.is_finite() && *weight > 0.0) {
            return Err(start_error(format!(
                "the weight of {} must be a positive number (got {weight})",
                dir.display()
            )));
        }
    }
    let weights: Vec<f64> = config
        .data_dirs
        .iter()
        .map(|dir| {
            config
                .disk_weights
                .iter()
                .find(|(d, _)| d == dir)
                .map_or(1.0, |(_, w)| *w)
        })
        .collect();
    let placement = Placement::weighted(config.cores, config.data_dirs.clone(), weights);
    let (request_txs, request_rxs): (Vec<_>, Vec<_>) = (0..config.cores)
        .map(|_| flume::unbounded::<ToCore>())
        .unzip();
    let first_dir = config
        .data_dirs
        .first()
        .ok_or_else(|| NodeError::Start("no data directory".into()))?;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    // Only a node with a cluster to rejoin gives up its data (a lone node keeps its own).
    let has_seeds = config.join.iter().any(|seed| Some(*seed) != config.cluster);
    let away = if has_seeds {
        cluster_state::retire_if_away_too_long(
            &config.data_dirs,
            config.replication.retention_ms,
            now_ms,
        )
    } else {
        Ok(false)
    };
    match away {
        Ok(true) => tracing::warn!(
            retention_ms = config.replication.retention_ms,
            "this node was away from its cluster longer than the log retention: its mail was \
             moved aside (stale-*/ in the data directories) and it rejoins as a new node"
        ),
        Ok(false) => {}
        Err(e) => return Err(start_error(format!("cannot retire stale data: {e}"))),
    }
    let token_path = config
        .admin_token_file
        .clone()
        .unwrap_or_else(|| first_dir.join("admin.token"));
    let admin_token = admin_auth::AdminToken::load_or_create(&token_path).map_err(|e| {
        start_error(format!(
            "cannot read or create the admin token {}: {e}",
            token_path.display()
        ))
    })?;
    let tls_files = match &config.tls_files {
        Some(files) => files.clone(),
        None => {
            let mut listening = vec![config.smtp.ip(), config.pop3.ip(), config.admin.ip()];
            listening.extend(config.pop3s.map(|a| a.ip()));
            tls::self_signed(&first_dir.join("tls"), &config.hostname, &listening)
                .map_err(start_error)?
        }
    };
    let server_tls = tls::ServerTls::new(tls_files).map_err(start_error)?;
    let node_id = cluster_state::node_id(first_dir).map_err(|e| {
        start_error(format!(
            "cannot read or create the node id in {}: {e}",
            first_dir.display()
        ))
    })?;
    // Every record names the node that wrote it (node ids fit in 32 bits by construction).
    config.engine.node_id = node_id as u32;
    // Each message is described for IMAP once, as it is stored, beside it: a FETCH of its
    // ENVELOPE or BODYSTRUCTURE reads the description and never parses the message again.
    config.engine.annotate = Some(porcupine_engine::Annotator(
        porcupine_protocols::imap::structure::annotate,
    ));
    let (core_zero_tx, core_zero_rx) = flume::unbounded();
    let (handoff_txs, handoff_rxs): (Vec<_>, Vec<_>) = (0..config.cores)
        .map(|_| flume::unbounded::<Handoff>())
        .unzip();
    let mut acceptors: Vec<Vec<Bound>> = (0..config.cores).map(|_| Vec::new()).collect();
    for (index, listener) in bound.into_iter().enumerate() {
        let core = listeners::acceptor_core(listener.protocol, index, config.cores);
        acceptors[core].push(listener);
    }
    let me = crate::membership::Member {
        id: node_id,
        addr: config
            .cluster
            .map_or_else(|| LONE_NODE_ADDR.to_owned(), |addr| addr.to_string()),
    };
    let context = Arc::new(NodeContext {
        config: config.clone(),
        router: Router::new(placement.clone(), request_txs),
        cluster: cluster_state::ClusterShared::new(
            me,
            config.membership.buckets,
            core_zero_tx,
            has_seeds,
            placement.shard_count(),
            config.cluster_security.clone(),
            Duration::from_millis(config.membership.suspect_after_ms),
        ),
        metrics: NodeMetrics::default(),
        started: Instant::now(),
        disks: disks(&config)?,
        sessions: Arc::new(SessionCounts::new(config.cores)),
        handoffs: handoff_txs,
        admin_hosts: admin_auth::own_hosts(config.admin, &config.hostname),
        admin_token,
        tls: server_tls,
        clients: Arc::new(client_limits::ClientLimits::new(config.abuse.clone())),
        live: arc_swap::ArcSwap::from_pointee(live_settings::LiveSettings::of(&config)),
        transfer: transfer::TransferBudget::new(config.transfer_bytes_max),
    });
    let (stop_tx, stop_rx) = flume::unbounded::<()>();
    let (ready_tx, ready_rx) = flume::unbounded::<Result<(), String>>();
    let (listen_tx, listen_rx) = flume::unbounded::<()>();
    let (drained_tx, drained_rx) = flume::unbounded::<()>();
    let mut executors = Vec::new();
    for (core, ((requests, handoffs), bound)) in request_rxs
        .into_iter()
        .zip(handoff_rxs)
        .zip(acceptors)
        .enumerate()
    {
        let builder =
            runtime::executor_builder(&format!("porcupine-{core}"), core, config.cores, config.pin)
                .map_err(start_error)?;
        let (context, placement, stop, ready, listen, drained) = (
            context.clone(),
            placement.clone(),
            stop_rx.clone(),
            ready_tx.clone(),
            listen_rx.clone(),
            drained_tx.clone(),
        );
        let cluster_inbox = (core == 0).then(|| core_zero_rx.clone());
        let handle = runtime::spawn(builder, move || async move {
            run_core(
                core,
                placement,
                context,
                requests,
                Listening { bound, handoffs },
                cluster_inbox,
                stop,
                ready,
                listen,
                drained,
            )
            .await
        })
        .map_err(start_error)?;
        executors.push(handle);
    }
    drop((ready_tx, drained_tx));
    let mut failure = None;
    for _ in 0..config.cores {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failure = Some(e),
            Err(_) => failure = Some("an executor stopped during start-up".into()),
        }
    }
    if let Some(error) = failure {
        drop(stop_tx);
        drop(listen_rx);
        let _ = context.router.clone();
        return Err(NodeError::Start(error));
    }
    let first_user = if config.first_user {
        ensure_first_user(&context)?
    } else {
        None
    };
    // Everything is open: start accepting, and return once every core listens (a client
    // told "serving" must not find a port closed).
    drop(listen_rx);
    let _ = &listen_tx;
    drop(listen_tx);
    for _ in 0..config.cores {
        if ready_rx.recv_timeout(Duration::from_secs(30)).is_err() {
            tracing::warn!("a core did not report its listeners within 30 s");
            break;
        }
    }
    Ok(NodeHandle {
        stop: Some(stop_tx),
        drained: drained_rx,
        context,
        executors,
        first_user,
        _locks: locks,
    })
}

/// The member address of a node with no cluster port (no other node ever dials it).
const LONE_NODE_ADDR: &str = "none";

/// A node that talks to others must hold the cluster key; the plaintext mode, for measuring
/// what encryption costs, is refused unless every cluster address is loopback.
fn check_cluster_security(config: &NodeConfig) -> Result<(), NodeError> {
    if config.cluster.is_none() && !config.join.is_empty() {
        return Err(NodeError::Start(
            "--join needs --cluster ADDR: the address where the other nodes reach this one".into(),
        ));
    }
    if !matches!(
        config.cluster_security,
        crate::secure::ClusterSecurity::Plaintext
    ) || config.cluster.is_none()
    {
        return Ok(());
    }
    let addresses = config.cluster.iter().chain(&config.join);
    if let Some(outside) = addresses.into_iter().find(|a| !a.ip().is_loopback()) {
        return Err(NodeError::Start(format!(
            "a cluster in plaintext is only for measurements on loopback, and {outside} is not: \
             give every node the cluster key (--cluster-key FILE)"
        )));
    }
    tracing::warn!("the cluster runs in plaintext, unauthenticated (measurements only)");
    Ok(())
}

/// Creates `postmaster@<first domain>` with a random password if the node has no user.
fn ensure_first_user(context: &Arc<NodeContext>) -> Result<Option<(String, String)>, NodeError> {
    let router = context.router.clone();
    let domain = context
        .config
        .domains
        .first()
        .cloned()
        .unwrap_or_else(|| "localhost".into());
    let done = runtime::run_local(move || async move {
        // Users deleted since count: a node whose users were all deleted is not new.
        if router.call_each(ProfilesEver).await.iter().sum::<usize>() > 0 {
            return Ok(None);
        }
        let password: String = {
            use rand::Rng;
            const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
            let mut rng = rand::thread_rng();
            (0..16)
                .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
                .collect()
        };
        let email = format!("postmaster@{domain}");
        let secrets = users::make_secrets(&password)?;
        router
            .call(PutProfile {
                user: email.clone(),
                profile: Arc::new(users::encode_profile(&secrets)),
                stamp: None,
            })
            .await
            .map_err(|e| format!("cannot store the first user: {e:?}"))?;
        Ok::<_, String>(Some((email, password)))
    })
    .map_err(start_error)?;
    done.map_err(NodeError::Start)
}

/// What a core listens for: the sockets it accepts from, and the sessions other cores hand it.
struct Listening {
    bound: Vec<Bound>,
    handoffs: flume::Receiver<Handoff>,
}

#[allow(clippy::too_many_arguments)]
async fn run_core(
    core: usize,
    placement: Placement,
    context: Arc<NodeContext>,
    requests: flume::Receiver<ToCore>,
    listening: Listening,
    cluster_inbox: Option<flume::Receiver<cluster_state::ToCoreZero>>,
    stop: flume::Receiver<()>,
    ready: flume::Sender<Result<(), String>>,
    listen: flume::Receiver<()>,
    drained: flume::Sender<()>,
) {
    let mut shards = HashMap::new();
    for address in placement.shards_of_core(core) {
        let name = format!("shard-{}", address.shard);
        let storage = context
            .disks
            .get(address.shard / placement.cores)
            .cloned()
            .unwrap_or_default();
        match Shard::open(storage, &address.dir, context.config.engine.clone(), &name).await {
            Ok((shard, report)) => {
                tracing::info!(
                    shard = name, dir = %address.dir.display(), messages = report.messages, segments = report.segments,
                    from_checkpoint = report.from_checkpoint, elapsed = ?report.elapsed, "shard open"
                );
                context
                    .cluster
                    .load
                    .register(address.shard, shard.load_gauge());
                shards.insert(address.shard, shard);
            }
            Err(error) => {
                let _ = ready.send(Err(format!(
                    "core {core}: cannot open {}: {error}",
                    address.dir.display()
                )));
                return;
            }
        }
    }
    let peers = context.cluster.connect_peers();
    let service = CoreService::new(core, placement, shards, context.clone(), peers.clone());
    glommio::spawn_local(service.replication().clone().run(stop.clone())).detach();
    glommio::spawn_local(healing::run(service.replication().clone(), stop.clone())).detach();
    let service_task = glommio::spawn_local(service.clone().run(requests));
    let context = CoreContext::new(core, context, service, peers);
    context.service.set_context(&context);
    let _ = ready.send(Ok(()));
    // Wait until every core is ready (the sender side is dropped), then listen.
    let _ = listen.recv_async().await;
    let config = &context.config;
    if let Some(inbox) = cluster_inbox {
        glommio::spawn_local(cluster_driver::run(context.clone(), inbox, stop.clone())).detach();
        glommio::spawn_local(anti_entropy::run(context.clone(), stop.clone())).detach();
    }
    glommio::spawn_local(removed_users::run(context.clone(), stop.clone())).detach();
    let watch = SessionWatch::default();
    glommio::spawn_local(watch.clone().run(stop.clone())).detach();
    if config.fault == Some(Fault::StallCore(core)) {
        glommio::spawn_local(async move {
            glommio::timer::sleep(Duration::from_secs(1)).await;
            tracing::warn!(core, "injected fault: this core's thread blocks for good");
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        })
        .detach();
    }
    if config.fault == Some(Fault::PanicOnCore(core)) {
        glommio::spawn_local(async move {
            glommio::timer::sleep(Duration::from_secs(1)).await;
            panic!("injected fault: a task on core {core} panics");
        })
        .detach();
    }
    let accept_tasks: Vec<_> = listening
        .bound
        .into_iter()
        .map(|bound| {
            glommio::spawn_local(listeners::accept(
                bound,
                context.clone(),
                stop.clone(),
                watch.clone(),
            ))
        })
        .collect();
    let receiving = glommio::spawn_local(listeners::receive(
        listening.handoffs,
        context.clone(),
        stop.clone(),
        watch.clone(),
    ));
    // Every listener of this core is taken: `start` returns once all cores have said so.
    let _ = ready.send(Ok(()));
    drop(ready);
    for task in accept_tasks {
        task.await;
    }
    receiving.await;
    // Listeners are closed; let sessions finish within the grace period.
    let deadline = Instant::now() + config.shutdown_grace;
    while context.sessions.open(core) > 0 && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(20)).await;
    }
    if context.sessions.open(core) > 0 {
        tracing::warn!(
            core,
            open = context.sessions.open(core),
            "sessions still open after the grace period"
        );
    }
    let _ = drained.send(());
    // The shard service keeps answering other cores until the node tells it to shut down.
    service_task.await;
}

/// What a reload of the settings did (by flag names).
#[derive(Debug, Default)]
pub struct Reloaded {
    pub changed: Vec<&'static str>,
    pub restart_needed: Vec<&'static str>,
}

impl NodeHandle {
    pub fn context(&self) -> &Arc<NodeContext> {
        &self.context
    }

    /// Takes the live settings of `new` (SIGHUP; `old` is the configuration in force): what
    /// changed, and what differs but needs a restart.
    pub fn reload_settings(&self, old: &NodeConfig, new: &NodeConfig) -> Reloaded {
        let fresh = live_settings::LiveSettings::of(new);
        let changed = self.context.live.load().changes(&fresh);
        if fresh.abuse != self.context.live.load().abuse {
            self.context.clients.set_settings(fresh.abuse.clone());
        }
        self.context.live.store(Arc::new(fresh));
        Reloaded {
            changed,
            restart_needed: live_settings::restart_needed(old, new),
        }
    }

    /// Reads the TLS certificate and key again (SIGHUP): new handshakes use them, sessions
    /// already in TLS go on; on failure the certificate in use stays.
    pub fn reload_tls(&self) -> Result<(), tls::TlsError> {
        self.context.tls.reload()
    }

    /// Stops accepting, lets sessions finish, closes every shard, joins the executors.
    pub fn stop(mut self) -> Result<(), NodeError> {
        drop(self.stop.take());
        for _ in 0..self.executors.len() {
            let _ = self.drained.recv();
        }
        // Every core has drained its sessions: now close the shards.
        for core in 0..self.context.router.cores() {
            let (tx, rx) = flume::bounded(1);
            if self.context.router.send_shutdown(core, tx) {
                let _ = rx.recv();
            }
        }
        for handle in self.executors.drain(..) {
            handle
                .join()
                .map_err(|e| start_error(format!("executor failed: {e}")))?;
        }
        Ok(())
    }
}
