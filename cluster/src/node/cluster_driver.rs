//! Core 0's cluster duties: it drives the membership state machine (ticks, messages from
//! every core's peer connections), answers as bucket manager, publishes each installed view
//! to every core, and after each commit reports this node's fragments to the new managers and
//! sends its profiles to nodes that just joined; keeps the membership's memory of the cluster
//! (`cluster-memory.json`) and publishes the nodes it declared dead. Also the reading side of peer connections
//! (every core), which hands requests to [`super::peer_calls`].

use std::collections::{BTreeMap, HashSet};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use glommio::net::TcpStream;

use super::cluster_state::ToCoreZero;
use super::core_calls::{AllProfiles, FragmentUsers, RetireUpdates};
use super::core_context::CoreContext;
use super::{metrics, NodeContext};
use crate::manager::Manager;
use crate::membership::{Action, Membership, Msg, NodeId, View};
use crate::node::clock::now_ms;
use crate::rpc::{OneWay, ReportFragments, Request, SyncProfiles};
use crate::transport::{answer, read_frame, write_frames, FrameReader, FrameWriter};
use crate::wire::{self, FrameKind};

const TICK: Duration = Duration::from_millis(5);
const REPORT_RETRY: Duration = Duration::from_millis(20);
pub const PEER_TIMEOUT: Duration = Duration::from_secs(2);
const PROFILE_BATCH: usize = 2000;
/// Members remembered as having left (when), for the profile sync at their return.
const LEFT_AT_MAX: usize = 4096;
/// A returning member gets the profiles stamped since it left less this (clock skew between
/// nodes, updates in flight as it left).
const PROFILE_SKEW_MARGIN_MS: u64 = 60_000;

/// Whether a peer's HLC timestamp is plausible ([`crate::plausible`]): one from the far
/// future would beat every later update of its object, for good. An implausible one is
/// counted and logged; the caller refuses what carried it.
pub(super) fn stamp_ok(context: &NodeContext, hlc: u64) -> bool {
    let millis = porcupine_engine::hlc::millis_of(hlc);
    if crate::plausible::stamp_plausible(millis, wall_ms()) {
        return true;
    }
    metrics::add(&context.metrics.peer_messages_refused, 1);
    tracing::warn!(hlc, "refused a peer's update stamped in the far future");
    false
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

enum Event {
    Tick,
    Work(ToCoreZero),
    Stop,
}

/// Runs on core 0 until the node stops.
pub async fn run(
    context: Rc<CoreContext>,
    inbox: flume::Receiver<ToCoreZero>,
    stop: flume::Receiver<()>,
) {
    let shared = &context.cluster;
    let peers = context.peers.clone();
    let seeds: Vec<String> = context.config.join.iter().map(|a| a.to_string()).collect();
    let mut membership = Membership::new(
        shared.me.clone(),
        &seeds,
        context.config.membership.clone(),
        wall_ms(),
    );
    let memory_dir = context.config.data_dirs.first().cloned();
    if let Some(memory) = memory_dir
        .as_deref()
        .and_then(super::cluster_state::load_memory)
    {
        membership.restore(memory);
    }
    let mut memory_saved = None;
    let mut manager = Manager::new(shared.me.id, context.config.placement, rand::random());
    // Members a profile sync is under way to (one at a time each), and when members left the
    // view (a member back after a short absence gets only the profiles changed since).
    let syncing: Rc<std::cell::RefCell<HashSet<NodeId>>> = Rc::default();
    let mut left_at: std::collections::HashMap<NodeId, u64> = std::collections::HashMap::new();
    let mut last_exchange = Instant::now();
    let mut out = vec![Action::Installed(membership.view().clone())];
    // A node told to join others serves no session on its own until it has joined, or until
    // no seed has answered for a while (it is alone): sessions on a one-node view that is
    // about to merge would take maildrop locks and place mail behind the cluster's back.
    let started = Instant::now();
    let mut last_noted = Instant::now();
    let alone_after = ALONE_AFTER.max(Duration::from_millis(
        3 * context
            .config
            .membership
            .probe_interval_ms
            .max(context.config.membership.suspect_after_ms),
    ));
    // Kept across iterations: a timer or a channel wait dropped half-way would be cancelled
    // and re-armed for every message.
    let mut tick = Box::pin(glommio::timer::sleep(TICK));
    let mut stopping = Box::pin(stop.recv_async());
    let mut next = Box::pin(inbox.recv_async());
    loop {
        shared.note_running();
        // A majority is published only after the view holding it (below): a session that
        // reads the flag and then the view must never see a majority beside a view of this
        // node alone, or it would open a maildrop locally, without the cluster's lock. A loss
        // is published at once, before the view that lost it.
        let majority = membership.majority();
        if !majority {
            shared.set_majority(false);
        }
        if memory_saved != Some(membership.memory_version()) {
            memory_saved = Some(membership.memory_version());
            shared.dead.store(Arc::new(membership.dead()));
            if let Some(dir) = &memory_dir {
                if let Err(error) = super::cluster_state::save_memory(dir, &membership.memory()) {
                    tracing::warn!(%error, "cannot record the cluster memory");
                }
            }
        }
        for action in out.drain(..) {
            match action {
                Action::Send { to, msg } => peers.send(&to, &OneWay::Membership(msg)),
                Action::Installed(view) => {
                    if view.members.len() > 1 && shared.is_joining() {
                        shared.joined();
                    }
                    if view.members.len() > 1 {
                        note_membership(&context, &mut last_noted);
                    }
                    let previous = shared.view.swap(Arc::new(view.clone()));
                    manager.install(&view);
                    let now = wall_ms();
                    for member in &previous.members {
                        if view.member(member.id).is_none() && left_at.len() < LEFT_AT_MAX {
                            left_at.insert(member.id, now);
                        }
                    }
                    // Profiles stamped since a returning member left (less a margin for
                    // clock skew); everything for one never seen leave.
                    let since = view
                        .members
                        .iter()
                        .filter(|m| m.id != shared.me.id && previous.member(m.id).is_none())
                        .map(|m| {
                            left_at
                                .remove(&m.id)
                                .map(|at| at.saturating_sub(PROFILE_SKEW_MARGIN_MS))
                        })
                        .try_fold(u64::MAX, |earliest, since| since.map(|s| earliest.min(s)));
                    glommio::spawn_local(after_install(
                        context.clone(),
                        previous,
                        view,
                        syncing.clone(),
                        since,
                    ))
                    .detach();
                }
            }
        }
        if majority {
            shared.set_majority(true);
        }
        let event = futures_lite::future::poll_fn(|cx| {
            use std::future::Future;
            use std::task::Poll;
            if stopping.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::Stop);
            }
            if tick.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::Tick);
            }
            match next.as_mut().poll(cx) {
                Poll::Ready(Ok(work)) => Poll::Ready(Event::Work(work)),
                Poll::Ready(Err(_)) => Poll::Ready(Event::Stop),
                Poll::Pending => Poll::Pending,
            }
        })
        .await;
        match event {
            Event::Tick => {
                tick = Box::pin(glommio::timer::sleep(TICK));
                if shared.clustered() && last_noted.elapsed() >= MEMBERSHIP_NOTE_EVERY {
                    note_membership(&context, &mut last_noted);
                }
                if last_exchange.elapsed() >= LOAD_EXCHANGE_EVERY {
                    last_exchange = Instant::now();
                    exchange_loads(&context, &peers);
                }
                if shared.is_joining() && started.elapsed() >= alone_after {
                    tracing::warn!(
                        seeds = ?seeds,
                        "no seed answered: serving alone (the cluster merges when they do)"
                    );
                    shared.joined();
                }
            }
            Event::Work(ToCoreZero::Membership(msg)) => {
                next = Box::pin(inbox.recv_async());
                match &msg {
                    Msg::Ping { from, .. }
                    | Msg::Pong { from, .. }
                    | Msg::Probe { from, .. }
                    | Msg::Accept { from, .. }
                    | Msg::NewGroup {
                        coordinator: from, ..
                    } => peers.clear_backoff(&from.addr),
                    Msg::Commit { view } => {
                        for member in &view.members {
                            peers.clear_backoff(&member.addr);
                        }
                    }
                }
                let refused = membership.refused();
                membership.receive(wall_ms(), msg, &mut out);
                metrics::add(
                    &context.metrics.peer_messages_refused,
                    membership.refused().saturating_sub(refused),
                );
            }
            Event::Work(ToCoreZero::Manager(call)) => {
                next = Box::pin(inbox.recv_async());
                call(&mut manager);
            }
            Event::Stop => return,
        }
        membership.tick(wall_ms(), &mut out);
    }
}

/// How often a node sends the loads it knows to its ring successor.
const LOAD_EXCHANGE_EVERY: Duration = Duration::from_millis(100);

/// Sends this node's own load, fresh, and every load it knows to its ring successor (the next
/// member by id), so each node's load travels around the ring.
fn exchange_loads(context: &CoreContext, peers: &std::rc::Rc<crate::transport::Peers>) {
    let shared = &context.cluster;
    let me = shared.me.id;
    shared.loads.set(
        me,
        shared.load.total(),
        shared.load.is_full(now_ms()),
        now_ms(),
    );
    let view = shared.view.load();
    let successor = view
        .members
        .iter()
        .filter(|m| m.id > me)
        .min_by_key(|m| m.id)
        .or_else(|| {
            view.members
                .iter()
                .filter(|m| m.id != me)
                .min_by_key(|m| m.id)
        });
    if let Some(successor) = successor {
        let entries = shared.loads.entries(crate::loads::LOAD_MAX_AGE, now_ms());
        peers.send(&successor.addr, &OneWay::Loads { entries });
    }
}

/// How long a node started with seeds waits for one of them before it serves alone. Generous:
/// a restarted node on a busy machine may take a while to be let back in, and serving alone
/// meanwhile would show maildrops without the cluster's locks and tombstones.
const ALONE_AFTER: Duration = Duration::from_secs(3);

/// How often a member records that it still is one (see `retire_if_away_too_long`).
const MEMBERSHIP_NOTE_EVERY: Duration = Duration::from_secs(60);

/// Records in the first data directory that this node is a cluster member now.
fn note_membership(context: &CoreContext, last: &mut Instant) {
    *last = Instant::now();
    if let Some(dir) = context.config.data_dirs.first() {
        if let Err(error) = super::cluster_state::note_membership(dir, wall_ms()) {
            tracing::warn!(%error, "cannot record the membership time");
        }
    }
}

/// A maildrop locked by a POP session of this node: (user, lock owner).
type MaildropLock = (String, (u64, u64));

/// After a commit: report fragments to the managers, send profiles to newcomers.
async fn after_install(
    context: Rc<CoreContext>,
    previous: Arc<View>,
    view: View,
    syncing: Rc<std::cell::RefCell<HashSet<NodeId>>>,
    since_ms: Option<u64>,
) {
    let shared = &context.cluster;
    let me = shared.me.id;
    let started = Instant::now();
    shared.snapshots.fetch_add(1, Ordering::SeqCst);
    let users: Vec<String> = context.call_each(FragmentUsers).await;
    let mut by_manager: BTreeMap<NodeId, Vec<String>> =
        view.members.iter().map(|m| (m.id, Vec::new())).collect();
    for user in users {
        if let Some(list) = by_manager.get_mut(&view.map.manager_of(&user)) {
            list.push(user);
        }
    }
    let mut locks_by_manager: BTreeMap<NodeId, Vec<MaildropLock>> = BTreeMap::new();
    for (user, owner) in shared.maildrop_locks() {
        locks_by_manager
            .entry(view.map.manager_of(&user))
            .or_default()
            .push((user, owner));
    }
    let mut reports = Vec::new();
    for (manager, users) in by_manager {
        let context = context.clone();
        let view = view.clone();
        let locks = locks_by_manager.remove(&manager).unwrap_or_default();
        reports.push(glommio::spawn_local(async move {
            report(&context, &view, manager, users, locks).await;
        }));
    }
    for task in reports {
        task.await;
    }
    tracing::info!(epoch = ?view.epoch, elapsed = ?started.elapsed(), "fragments reported to bucket managers");

    let before: HashSet<NodeId> = previous.members.iter().map(|m| m.id).collect();
    // A member a sync is still under way to (it left and came back meanwhile) gets the rest
    // of that one, not a second copy of every profile.
    let newcomers: Vec<_> = view
        .members
        .iter()
        .filter(|m| m.id != me && !before.contains(&m.id) && !syncing.borrow().contains(&m.id))
        .cloned()
        .collect();
    if newcomers.is_empty() {
        return;
    }
    // A newcomer that has left again gets every profile when it next joins: a sync to it
    // stops (with many users and a flapping member, syncs of every profile would otherwise
    // pile up, each holding them all).
    let gone = |id: NodeId| !shared.view.load().members.iter().any(|m| m.id == id);
    if newcomers.iter().all(|n| gone(n.id)) {
        return;
    }
    syncing.borrow_mut().extend(newcomers.iter().map(|n| n.id));
    let _done = SyncsDone {
        syncing: syncing.clone(),
        nodes: newcomers.iter().map(|n| n.id).collect(),
    };
    let profiles: Vec<_> = context.call_each(AllProfiles { since_ms }).await;
    let peers = &context.peers;
    for newcomer in newcomers {
        for chunk in profiles.chunks(PROFILE_BATCH) {
            if gone(newcomer.id) {
                tracing::info!(
                    node = newcomer.id,
                    "profile sync stopped: the member left again (it gets them when it rejoins)"
                );
                break;
            }
            let sync = SyncProfiles {
                profiles: chunk.to_vec(),
            };
            if peers
                .call(&newcomer.addr, sync, Duration::from_secs(30))
                .await
                .is_err()
            {
                tracing::warn!(node = newcomer.id, "profile sync to a new member failed");
                break;
            }
        }
    }
}

/// Forgets the syncs of a finished (or dropped) `after_install`.
struct SyncsDone {
    syncing: Rc<std::cell::RefCell<HashSet<NodeId>>>,
    nodes: Vec<NodeId>,
}

impl Drop for SyncsDone {
    fn drop(&mut self) {
        let mut syncing = self.syncing.borrow_mut();
        for node in &self.nodes {
            syncing.remove(node);
        }
    }
}

/// Reports `users` to `manager`, retrying until it takes them or a newer view replaces `view`.
async fn report(
    context: &CoreContext,
    view: &View,
    manager: NodeId,
    users: Vec<String>,
    locks: Vec<MaildropLock>,
) {
    let shared = &context.cluster;
    let report = ReportFragments {
        epoch: view.epoch,
        node: shared.me.id,
        users,
        locks,
    };
    loop {
        if shared.view.load().epoch != view.epoch {
            return;
        }
        let answer = if manager == shared.me.id {
            shared.ask_local_manager(report.clone()).await
        } else {
            match view.member(manager) {
                Some(m) => {
                    context
                        .peers
                        .call(&m.addr, report.clone(), PEER_TIMEOUT)
                        .await
                }
                None => return,
            }
        };
        if answer.is_ok() {
            return;
        }
        glommio::timer::sleep(REPORT_RETRY).await;
    }
}

/// Serves one peer connection (accepted by [`super::listeners`]) until it closes.
pub async fn serve_peer(mut stream: TcpStream, context: Rc<CoreContext>) {
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let _ = stream.set_nodelay(true);
    // Nothing is read as a frame before the peer has proved it holds the cluster key.
    let (opener, sealer) = match answer(&mut stream, &context.cluster.security).await {
        Ok(halves) => halves,
        Err(error) => {
            metrics::add(&context.metrics.peers_refused, 1);
            tracing::warn!(%peer, %error, "refused a cluster connection");
            let _ = futures_lite::AsyncWriteExt::close(&mut stream).await;
            return;
        }
    };
    let peers = context.peers.clone();
    let (reader, writer) = futures_lite::io::split(stream);
    let mut reader = FrameReader::new(reader, opener);
    let writer = FrameWriter::new(writer, sealer);
    let (replies, queue) = flume::bounded::<Vec<u8>>(crate::transport::QUEUED_FRAMES_MAX);
    // Requests of this connection being answered: at the cap, reading waits for one to end.
    let in_flight = std::rc::Rc::new(glommio::sync::Semaphore::new(PEER_REQUESTS_MAX));
    let last_frame = std::cell::Cell::new(Instant::now());
    let idle = async {
        loop {
            glommio::timer::sleep(PEER_IDLE_CHECK).await;
            if last_frame.get().elapsed() > PEER_IDLE_MAX {
                tracing::info!(%peer, "closing a cluster connection idle for too long");
                return;
            }
        }
    };
    let reading = async {
        loop {
            let frame = read_frame(&mut reader).await;
            last_frame.set(Instant::now());
            let (header, payload) = match frame {
                Ok(frame) => frame,
                Err(crate::transport::FrameError::Io(_)) => return,
                Err(error) => {
                    tracing::warn!(%peer, %error, "dropping a peer that sent a bad frame");
                    return;
                }
            };
            peers.note_load(&header);
            match header.kind {
                FrameKind::OneWay => match wire::decode::<OneWay>(&payload) {
                    Ok(OneWay::Membership(msg)) => {
                        let _ = context.cluster.core_zero.send(ToCoreZero::Membership(msg));
                    }
                    Ok(OneWay::Retired { mut entries }) => {
                        entries.retain(|(_, _, hlc)| stamp_ok(&context, *hlc));
                        retire(&context, entries);
                    }
                    Ok(OneWay::Loads { entries }) => {
                        // This node's own entry comes back around the ring: only it knows
                        // better.
                        let me = context.cluster.me.id;
                        let others: Vec<_> = entries.into_iter().filter(|e| e.node != me).collect();
                        context.cluster.loads.merge(&others, now_ms());
                    }
                    Err(error) => {
                        tracing::warn!(%peer, %error, "dropping a peer that sent a bad message");
                        return;
                    }
                },
                FrameKind::Request => {
                    let request = match wire::decode::<Request>(&payload) {
                        Ok(request) => request,
                        Err(error) => {
                            tracing::warn!(%peer, %error, "dropping a peer that sent a bad request");
                            return;
                        }
                    };
                    let Ok(permit) = in_flight.acquire_static_permit(1).await else {
                        return;
                    };
                    let (context, replies) = (context.clone(), replies.clone());
                    glommio::spawn_local(async move {
                        let frame =
                            super::peer_calls::answer(&context, header.request_id, request).await;
                        if let Some(frame) = frame {
                            let _ = replies.send_async(frame).await;
                        }
                        drop(permit);
                    })
                    .detach();
                }
                // A reply on a connection this node did not open: nothing waits for it.
                FrameKind::Reply => {}
            }
        }
    };
    let serving = futures_lite::future::or(reading, write_frames(writer, &queue));
    futures_lite::future::or(serving, idle).await;
}

/// Retires, on the core of each user, the updates another node retired: (user, id, HLC).
fn retire(context: &CoreContext, entries: Vec<(String, u128, u64)>) {
    let mut by_core: BTreeMap<usize, Vec<(String, u128, u64)>> = BTreeMap::new();
    for entry in entries {
        by_core
            .entry(context.router.core_of(&entry.0))
            .or_default()
            .push(entry);
    }
    for (core, entries) in by_core {
        context.router.tell_on(core, RetireUpdates { entries });
    }
}

/// Requests one peer connection may have being answered at once.
const PEER_REQUESTS_MAX: u64 = 1024;
/// A peer connection with no frame for this long is closed (members ping every 50 ms and
/// exchange loads every 100 ms; a connection this quiet is a leftover or a stranger).
const PEER_IDLE_MAX: Duration = Duration::from_secs(120);
const PEER_IDLE_CHECK: Duration = Duration::from_secs(10);

/// Sends new or changed profiles, each with the timestamp of its update, to every other member
/// (each node holds every profile; the newest update wins). A member that misses them gets
/// them when it next joins: every member sends its profiles to a node that (re)joins.
/// Returns the members that did not take them.
pub async fn replicate_profiles(
    context: &CoreContext,
    profiles: Vec<(String, u64, Vec<u8>)>,
) -> Vec<u64> {
    let shared = &context.cluster;
    let view = shared.view.load_full();
    let peers = &context.peers;
    let mut missed = Vec::new();
    for member in view.members.iter().filter(|m| m.id != shared.me.id) {
        for chunk in profiles.chunks(PROFILE_BATCH) {
            let sync = SyncProfiles {
                profiles: chunk.to_vec(),
            };
            if peers
                .call(&member.addr, sync, Duration::from_secs(30))
                .await
                .is_err()
            {
                tracing::warn!(
                    node = member.id,
                    "a member did not take new profiles; it gets them when it next joins"
                );
                missed.push(member.id);
                break;
            }
        }
    }
    missed
}
