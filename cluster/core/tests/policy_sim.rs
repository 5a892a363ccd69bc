//! Deterministic simulation of the delivery and maildrop policy: the real [`Delivery`],
//! [`Open`], [`Delete`] and [`Unlock`] machines in SMTP and POP3 sessions on every node, the
//! real bucket [`Manager`] on every node, with a model of each node's fragments (puts and
//! tombstones, pushed on to replicas and fragment nodes as the replication manager does, and
//! tombstones retired once nothing is left to push and their minimum age has passed), on
//! one thread with a simulated clock. Faults: message loss and delay, node crashes and
//! restarts, and memberships installed at different moments on different nodes (the window
//! where a maildrop lock could be granted twice).
//!
//! Checked on every POP3 listing: no message is shown after its delete was acknowledged to a
//! session that began before this one, and no message twice to one session. Checked once the
//! faults stop and every node is back: every message acknowledged with 250 and not deleted is
//! listed. A failing seed is printed; replay it with
//! `PORCUPINE_SIM_SEED=<seed> cargo test --release -p porcupine-cluster-core --test policy_sim`.
//! `PORCUPINE_SIM_SEEDS=N` runs more seeds (default 300).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};

use porcupine_cluster_core::delivery::{
    Delivery, DeliveryAction, DeliveryInput, DeliverySettings, Facts, StoreError,
};
use porcupine_cluster_core::maildrop::{
    delete_outcome, Delete, DeleteAction, DeleteInput, Listing, MaildropSettings, Open, OpenAction,
    OpenInput, Owner, Unlock, UnlockAction, UnlockInput,
};
use porcupine_cluster_core::manager::{Manager, ManagerCall};
use porcupine_cluster_core::membership::{Epoch, Member, NodeId, View};
use porcupine_cluster_core::placement::{CandidateLoad, PlacementPolicy};
use porcupine_cluster_core::rpc::{
    read_reply, reply_bytes, Call, CallError, DeleteMessages, Failure, ListFragment, ListedMessage,
    LockMaildrop, NoteFragment, PlaceMail, Placed, ReportFragments, Request, StoreMessage,
    UnlockMaildrop,
};
use porcupine_cluster_core::usermap::UserMap;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const FAULTS_END_MS: u64 = 8_000;
const SETTLE_MS: u64 = 20_000;
const REPLICATION_TICK_MS: u64 = 50;
const REQUEST_TIMEOUT_MS: u64 = 300;
const BUCKETS: usize = 16;
const REPLICAS: usize = 2;
/// As the replication manager's minimum tombstone age: longer than the delivery's patience
/// (2 s here) and a request's timeout together.
const TOMBSTONE_MIN_AGE_MS: u64 = 2_600;

/// What one node's disk holds for a message of a user.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Rec {
    /// A message and the replica set it was stored with.
    Put {
        size: u64,
        replicas: Vec<NodeId>,
    },
    Tomb,
}

#[derive(Debug, Default)]
struct Disk {
    records: HashMap<String, BTreeMap<u128, Rec>>,
    /// Updates still to push: (to, user, id, record). A delete supersedes a pending put of
    /// the same message, as in the replication manager.
    pushes: Vec<(NodeId, String, u128, Rec)>,
}

impl Disk {
    /// Writes `rec` unless it is a put over a tombstone (a delete supersedes any put);
    /// returns whether the message is deleted here (the put was refused for a tombstone).
    fn write(&mut self, user: &str, id: u128, rec: Rec) -> bool {
        if rec == Rec::Tomb {
            // A tombstone, made here or pushed, replaces a pending put of the message, as in
            // the replication manager.
            self.pushes
                .retain(|(_, u, i, r)| !(u == user && *i == id && matches!(r, Rec::Put { .. })));
        }
        let slot = self.records.entry(user.to_owned()).or_default();
        match (slot.get_mut(&id), rec) {
            (Some(Rec::Tomb), Rec::Put { .. }) => return true,
            // A copy here already: its replica set is widened to this attempt's nodes too,
            // as the engine does, so its tombstone will reach them all.
            (Some(Rec::Put { replicas, .. }), Rec::Put { replicas: more, .. }) => {
                for node in more {
                    if !replicas.contains(&node) {
                        replicas.push(node);
                    }
                }
            }
            (_, rec) => {
                slot.insert(id, rec);
            }
        }
        false
    }

    /// Deletes a message here: a tombstone, pushed to the message's replicas and to
    /// `fragments` (not to `me`); pending pushes of its put are superseded.
    fn delete(&mut self, me: NodeId, user: &str, id: u128, fragments: &[NodeId]) {
        let mut targets: Vec<NodeId> = fragments.to_vec();
        if let Some(Rec::Put { replicas, .. }) = self.records.get(user).and_then(|r| r.get(&id)) {
            targets.extend(replicas.iter().copied());
        }
        self.pushes
            .retain(|(_, u, i, rec)| !(u == user && *i == id && matches!(rec, Rec::Put { .. })));
        for (to, u, i, _) in self.pushes.iter() {
            if u == user && *i == id {
                targets.push(*to);
            }
        }
        targets.sort_unstable();
        targets.dedup();
        let _ = self.write(user, id, Rec::Tomb);
        for to in targets.into_iter().filter(|&t| t != me) {
            self.pushes.push((to, user.to_owned(), id, Rec::Tomb));
        }
    }

    fn listing(&self, user: &str) -> Listing {
        let mut listing = Listing::default();
        for (&id, rec) in self.records.get(user).into_iter().flatten() {
            match rec {
                Rec::Put { size, replicas } => listing.messages.push(ListedMessage {
                    hlc: 0,
                    meta: None,
                    id,
                    size: *size,
                    replicas: replicas.clone(),
                }),
                Rec::Tomb => listing.deleted.push(id),
            }
        }
        listing
    }
}

#[derive(Debug)]
struct Node {
    id: NodeId,
    up: bool,
    /// Bumped at every restart: requests and sessions of an older life are void.
    life: u64,
    view: View,
    manager: Manager,
    disk: Disk,
    /// Maildrop locks held by this node's sessions (what it reports to managers).
    locks: HashMap<String, Owner>,
    next_session: u64,
}

#[derive(Debug)]
enum Machine {
    Smtp {
        machine: Delivery,
        id: u128,
    },
    PopOpen(Open),
    PopDelete {
        machine: Delete,
        owner: Owner,
        ids: Vec<u128>,
    },
    PopUnlock(Unlock),
}

#[derive(Debug)]
struct Session {
    node: usize,
    life: u64,
    user: String,
    machine: Machine,
    started_ms: u64,
    /// The maildrop lock owner of a POP3 session.
    owner: Option<Owner>,
}

#[derive(Debug)]
enum Input {
    Delivery(DeliveryInput),
    Open(OpenInput),
    Delete(DeleteInput),
    Unlock(UnlockInput),
}

/// Turns the encoded answer to a call (or why there is none) into the session's input.
struct Reply(Box<dyn FnOnce(Result<Vec<u8>, CallError>) -> Input>);

impl Reply {
    /// Decodes the answer as `C`'s reply, as the node does.
    fn to<C: Call>(to_input: fn(Result<C::Reply, CallError>) -> Input) -> Self
    where
        C::Reply: 'static,
    {
        Reply(Box::new(move |answer| {
            to_input(answer.and_then(|bytes| read_reply::<C>(&bytes)))
        }))
    }
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reply")
    }
}

/// The encoded answer of `C`, as a node sends it.
fn answer<C: Call>(reply: Result<C::Reply, Failure>) -> Vec<u8> {
    reply_bytes::<C>(&reply).expect("a reply encodes")
}

#[derive(Debug)]
enum Event {
    Step {
        session: u64,
        input: Input,
    },
    /// A request from `session` arrives at `to`; `reply` turns the answer into the input.
    Request {
        session: u64,
        to: usize,
        request: Request,
        reply: Reply,
    },
    Install {
        node: usize,
        view: View,
    },
    Report {
        node: usize,
        epoch: Epoch,
        life: u64,
    },
    Crash(usize),
    Restart(usize),
    ReplicationTick,
    Workload,
}

/// `PORCUPINE_SIM_TRACE=1`: print memberships, reports and one user's POP3 sessions
/// (`PORCUPINE_SIM_TRACE_USER`, default the hot user); `PORCUPINE_SIM_TRACE_MESSAGE=ID`: also
/// every store and push of that message.
#[derive(Debug)]
struct Trace {
    user: String,
    message: Option<u128>,
}

impl Trace {
    fn from_env() -> Option<Self> {
        std::env::var_os("PORCUPINE_SIM_TRACE")?;
        Some(Self {
            user: std::env::var("PORCUPINE_SIM_TRACE_USER")
                .unwrap_or_else(|_| "user0@example.org".into()),
            message: std::env::var("PORCUPINE_SIM_TRACE_MESSAGE")
                .ok()
                .and_then(|v| v.parse().ok()),
        })
    }
}

struct Sim {
    rng: StdRng,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    events: HashMap<u64, Event>,
    nodes: Vec<Node>,
    sessions: HashMap<u64, Session>,
    next_session: u64,
    next_id: u128,
    view_clock: u64,
    users: Vec<String>,
    /// Acknowledged puts: id → user.
    acked: BTreeMap<u128, String>,
    /// Acknowledged deletes: id → when.
    deleted_at: HashMap<u128, u64>,
    /// Messages whose tombstone was retired somewhere (a delete that landed, acknowledged or
    /// not).
    retired: HashSet<u128>,
    /// When each node's tombstone was first seen by [`Sim::retire_tombstones`].
    tomb_seen: HashMap<(usize, String, u128), u64>,
    violations: Vec<String>,
    loss: f64,
    /// What to print as the run goes (read once from the environment).
    trace: Option<Trace>,
    pops_opened: u64,
}

fn member(id: NodeId) -> Member {
    Member {
        id,
        addr: format!("10.0.0.{id}:7000"),
    }
}

impl Sim {
    fn new(seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let count = rng.gen_range(3..=5);
        let epoch = Epoch {
            clock: 1,
            coordinator: 1,
        };
        let ids: Vec<NodeId> = (1..=count).collect();
        let view = View {
            epoch,
            members: ids.iter().map(|&id| member(id)).collect(),
            map: UserMap::single(1, BUCKETS, epoch).reassign(&ids, epoch),
        };
        let nodes = ids
            .iter()
            .map(|&id| {
                let mut manager = Manager::new(id, PlacementPolicy::default(), rng.gen());
                manager.install(&view);
                Node {
                    id,
                    up: true,
                    life: 0,
                    view: view.clone(),
                    manager,
                    disk: Disk::default(),
                    locks: HashMap::new(),
                    next_session: 1,
                }
            })
            .collect();
        let loss = [0.0, 0.01, 0.05][rng.gen_range(0..3)];
        let mut sim = Self {
            rng,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            events: HashMap::new(),
            nodes,
            sessions: HashMap::new(),
            next_session: 1,
            next_id: 1,
            view_clock: 1,
            users: (0..3).map(|u| format!("user{u}@example.org")).collect(),
            acked: BTreeMap::new(),
            deleted_at: HashMap::new(),
            retired: HashSet::new(),
            tomb_seen: HashMap::new(),
            violations: Vec::new(),
            loss,
            trace: Trace::from_env(),
            pops_opened: 0,
        };
        for node in 0..sim.nodes.len() {
            sim.at(
                0,
                Event::Report {
                    node,
                    epoch,
                    life: 0,
                },
            );
        }
        sim.at(1, Event::Workload);
        sim.at(REPLICATION_TICK_MS, Event::ReplicationTick);
        // One node down at a time, as the chaos test kills them: with two replicas, a message
        // (or a tombstone) whose every copy is down at once is beyond what the cluster
        // promises.
        let mut when = 500;
        while when < FAULTS_END_MS - 2_500 {
            when += sim.rng.gen_range(0..1_500);
            let node = sim.rng.gen_range(0..sim.nodes.len());
            sim.at(when, Event::Crash(node));
            when += sim.rng.gen_range(200..2_000);
            sim.at(when, Event::Restart(node));
            // The next crash may come before the restarted node has rejoined everywhere.
            when += sim.rng.gen_range(1..1_500);
        }
        sim
    }

    fn at(&mut self, when: u64, event: Event) {
        self.seq += 1;
        self.events.insert(self.seq, event);
        self.queue.push(Reverse((when, self.seq)));
    }

    fn delay(&mut self) -> u64 {
        self.rng.gen_range(1..15)
    }

    fn lost(&mut self) -> bool {
        self.now < FAULTS_END_MS && self.rng.gen_bool(self.loss)
    }

    fn run(&mut self) {
        while let Some(Reverse((when, seq))) = self.queue.pop() {
            if when > FAULTS_END_MS + SETTLE_MS {
                break;
            }
            self.now = when;
            let Some(event) = self.events.remove(&seq) else {
                continue;
            };
            self.handle(event);
        }
    }

    fn handle(&mut self, event: Event) {
        if let Some(trace) = &self.trace {
            match &event {
                Event::Workload | Event::ReplicationTick => {}
                Event::Install { node, view } => eprintln!(
                    "{} install node {} epoch {:?} members {:?}",
                    self.now,
                    self.nodes[*node].id,
                    view.epoch,
                    view.members.iter().map(|m| m.id).collect::<Vec<_>>()
                ),
                Event::Request {
                    session,
                    to,
                    request,
                    ..
                } => {
                    if let Some(s) = self.sessions.get(session) {
                        if s.user == trace.user
                            && !matches!(request, Request::StoreMessage(_) | Request::PlaceMail(_))
                        {
                            eprintln!(
                                "{} session {session} (node {}) -> node {}: {request:?}",
                                self.now, self.nodes[s.node].id, self.nodes[*to].id
                            );
                        }
                    }
                }
                Event::Step { session, input } => {
                    if let Some(s) = self.sessions.get(session) {
                        if s.user == trace.user && !matches!(s.machine, Machine::Smtp { .. }) {
                            eprintln!(
                                "{} session {session} (node {}) <- {input:?}",
                                self.now, self.nodes[s.node].id
                            );
                        }
                    }
                }
                other => eprintln!("{} {other:?}", self.now),
            }
        }
        match event {
            Event::Workload => {
                if self.now < FAULTS_END_MS {
                    let smtp = self.rng.gen_bool(0.7);
                    self.start_session(smtp);
                    let next = self.now + self.rng.gen_range(2..12);
                    self.at(next, Event::Workload);
                }
            }
            Event::Step { session, input } => self.step(session, input),
            Event::Request {
                session,
                to,
                request,
                reply,
            } => {
                let answer = self.serve(to, request);
                let answer_lost = self.lost();
                let (when, answer) = match answer {
                    Some(answer) if !answer_lost => (self.now + self.delay(), Ok(answer)),
                    _ => (self.now + REQUEST_TIMEOUT_MS, Err(CallError::Timeout)),
                };
                self.at(
                    when,
                    Event::Step {
                        session,
                        input: (reply.0)(answer),
                    },
                );
            }
            Event::Install { node, view } => {
                let n = &mut self.nodes[node];
                if n.up && view.epoch > n.view.epoch {
                    n.view = view.clone();
                    n.manager.install(&view);
                    let life = n.life;
                    self.at(
                        self.now,
                        Event::Report {
                            node,
                            epoch: view.epoch,
                            life,
                        },
                    );
                }
            }
            Event::Report { node, epoch, life } => self.report(node, epoch, life),
            Event::Crash(node) => {
                let n = &mut self.nodes[node];
                if n.up {
                    n.up = false;
                    n.locks.clear();
                    self.sessions.retain(|_, s| s.node != node);
                    let detect = self.now + self.rng.gen_range(100..600);
                    self.new_view(detect);
                }
            }
            Event::Restart(node) => {
                let n = &mut self.nodes[node];
                if !n.up {
                    n.up = true;
                    n.life += 1;
                    let lone = Epoch {
                        clock: 0,
                        coordinator: n.id,
                    };
                    n.view = View {
                        epoch: lone,
                        members: vec![member(n.id)],
                        map: UserMap::single(n.id, BUCKETS, lone),
                    };
                    n.manager = Manager::new(n.id, PlacementPolicy::default(), 9);
                    let join = self.now + self.rng.gen_range(100..600);
                    self.new_view(join);
                }
            }
            Event::ReplicationTick => {
                self.replicate();
                self.at(self.now + REPLICATION_TICK_MS, Event::ReplicationTick);
            }
        }
    }

    /// A new membership of the nodes up at `when`, installed on each at its own moment.
    fn new_view(&mut self, when: u64) {
        self.view_clock += 1;
        let ids: Vec<NodeId> = self.nodes.iter().filter(|n| n.up).map(|n| n.id).collect();
        let Some(&coordinator) = ids.first() else {
            return;
        };
        let epoch = Epoch {
            clock: self.view_clock,
            coordinator,
        };
        let previous = self
            .nodes
            .iter()
            .filter(|n| n.up)
            .map(|n| &n.view)
            .max_by_key(|v| v.epoch)
            .map(|v| v.map.clone())
            .unwrap_or_else(|| UserMap::single(coordinator, BUCKETS, epoch));
        let view = View {
            epoch,
            members: ids.iter().map(|&id| member(id)).collect(),
            map: previous.reassign(&ids, epoch),
        };
        for node in 0..self.nodes.len() {
            if self.nodes[node].up {
                let at = when + self.rng.gen_range(0..400);
                self.at(
                    at,
                    Event::Install {
                        node,
                        view: view.clone(),
                    },
                );
            }
        }
    }

    /// Sends `node`'s fragment report for `epoch` to every manager, again until each took it.
    fn report(&mut self, node: usize, epoch: Epoch, life: u64) {
        let n = &self.nodes[node];
        if !n.up || n.life != life || n.view.epoch != epoch {
            return;
        }
        let view = n.view.clone();
        let mut again = false;
        for manager in view.members.iter().map(|m| m.id) {
            let n = &self.nodes[node];
            let users: Vec<String> = n
                .disk
                .records
                .keys()
                .filter(|u| view.map.manager_of(u) == manager)
                .cloned()
                .collect();
            let locks: Vec<(String, Owner)> = n
                .locks
                .iter()
                .filter(|(u, _)| view.map.manager_of(u) == manager)
                .map(|(u, o)| (u.clone(), *o))
                .collect();
            let report = ReportFragments {
                epoch,
                node: n.id,
                users,
                locks,
            };
            let to = self.index_of(manager);
            if self.trace.is_some() {
                eprintln!("{} report {report:?} to {manager}", self.now);
            }
            if self.lost() {
                again = true;
                continue;
            }
            if self.ask_manager(to, report) != Some(Ok(())) {
                again = true;
            }
        }
        if again {
            self.at(self.now + 50, Event::Report { node, epoch, life });
        }
    }

    fn traces_message(&self, id: u128) -> bool {
        self.trace.as_ref().is_some_and(|t| t.message == Some(id))
    }

    fn index_of(&self, id: NodeId) -> usize {
        self.nodes.iter().position(|n| n.id == id).unwrap_or(0)
    }

    /// Node `to`'s bucket manager answers (`None`: the node is down).
    fn ask_manager<C: ManagerCall>(
        &mut self,
        to: usize,
        call: C,
    ) -> Option<Result<C::Reply, Failure>>
    where
        C::Reply: Send,
    {
        let node = &mut self.nodes[to];
        node.up.then(|| call.serve(&mut node.manager))
    }

    /// Node `to` serves one request, answering as a node does (`None`: it is down).
    fn serve(&mut self, to: usize, request: Request) -> Option<Vec<u8>> {
        if !self.nodes[to].up {
            return None;
        }
        let manager = &mut self.nodes[to].manager;
        Some(match request {
            Request::PlaceMail(call) => answer::<PlaceMail>(call.serve(manager)),
            Request::LockMaildrop(call) => answer::<LockMaildrop>(call.serve(manager)),
            Request::UnlockMaildrop(call) => answer::<UnlockMaildrop>(call.serve(manager)),
            Request::ReportFragments(call) => answer::<ReportFragments>(call.serve(manager)),
            Request::NoteFragment(call) => answer::<NoteFragment>(call.serve(manager)),
            Request::ListFragment(call) => {
                answer::<ListFragment>(Ok(self.nodes[to].disk.listing(&call.user)))
            }
            Request::DeleteMessages(call) => {
                let me = self.nodes[to].id;
                let disk = &mut self.nodes[to].disk;
                for id in call.ids {
                    disk.delete(me, &call.user, id, &call.fragments);
                }
                answer::<DeleteMessages>(Ok(()))
            }
            Request::StoreMessage(call) => {
                let size = call.message.len() as u64;
                let stored = self.store(
                    to,
                    &call.user,
                    call.id,
                    call.epoch,
                    &call.replicas,
                    &call.also,
                    size,
                );
                answer::<StoreMessage>(stored.map_err(Failure::from))
            }
            // Replication is modelled by each disk's pushes (anti-entropy has its own
            // property test), and sessions neither fetch nor log in remotely nor sync
            // profiles. The node's confirmation of a maildrop's view by a majority
            // (`CurrentEpoch`) is not modelled: the simulated views never overlap.
            request @ (Request::PushUpdate(_)
            | Request::FetchMessage(_)
            | Request::DescribeMessage(_)
            | Request::Authenticate(_)
            | Request::SyncProfiles(_)
            | Request::HeldDigest(_)
            | Request::HeldItems(_)
            | Request::CurrentEpoch(_)
            | Request::FileMessages(_)
            | Request::UserFragments(_)
            | Request::ImapRequest(_)
            | Request::UserUsage(_)) => {
                panic!("the simulated sessions do not send {}", request.name())
            }
        })
    }

    /// A coordinator stores and replicates: written here, pushed to every other replica; the
    /// store counts once every replica that is up has it (one that is down gets it later,
    /// and the delivery is placed again under the same id). `also` (where an earlier attempt
    /// may have left a copy) joins the replica set and gets its push later, not waited for.
    #[allow(clippy::too_many_arguments)]
    fn store(
        &mut self,
        at: usize,
        user: &str,
        id: u128,
        placed: Epoch,
        replicas: &[NodeId],
        also: &[NodeId],
        size: u64,
    ) -> Result<(), StoreError> {
        let me = self.nodes[at].id;
        let mut named = replicas.to_vec();
        named.extend(also.iter().copied().filter(|n| !replicas.contains(n)));
        let put = Rec::Put {
            size,
            replicas: named,
        };

        if self.nodes[at].disk.write(user, id, put.clone()) {
            // Deleted already: a retry of a message its owner has read and deleted.
            return Ok(());
        }
        for &node in also.iter().filter(|&&n| n != me && !replicas.contains(&n)) {
            self.nodes[at]
                .disk
                .pushes
                .push((node, user.to_owned(), id, put.clone()));
        }
        if self.traces_message(id) {
            eprintln!(
                "{} store {id} at {me}: replicas {replicas:?} placed {placed:?}",
                self.now
            );
        }
        let mut all = true;
        for &r in replicas.iter().filter(|&&r| r != me) {
            let index = self.index_of(r);
            if self.nodes[index].up && !self.lost() {
                if self.nodes[index].disk.write(user, id, put.clone()) {
                    // Deleted there: the retry's copy here is deleted too.
                    self.nodes[at].disk.delete(me, user, id, &[]);
                    continue;
                }
                self.note(index, user, placed);
            } else {
                all = false;
                self.nodes[at]
                    .disk
                    .pushes
                    .push((r, user.to_owned(), id, put.clone()));
            }
        }
        self.note(at, user, placed);
        if all {
            Ok(())
        } else {
            Err(StoreError::Unavailable)
        }
    }

    /// A fragment stored under an older placement is noted to the current manager.
    fn note(&mut self, at: usize, user: &str, placed: Epoch) {
        let view = self.nodes[at].view.clone();
        if view.epoch == placed {
            return;
        }
        let manager = self.index_of(view.map.manager_of(user));
        let note = NoteFragment {
            user: user.to_owned(),
            node: self.nodes[at].id,
            epoch: view.epoch,
        };
        let _ = self.ask_manager(manager, note);
    }

    fn replicate(&mut self) {
        self.retire_tombstones();
        for from in 0..self.nodes.len() {
            if !self.nodes[from].up {
                continue;
            }
            let pushes = std::mem::take(&mut self.nodes[from].disk.pushes);
            let mut kept = Vec::new();
            for (to, user, id, rec) in pushes {
                let index = self.index_of(to);
                // The replication manager pushes only to members of this node's view: a node
                // that restarted gets its updates once it has rejoined.
                let member = self.nodes[from].view.member(to).is_some();
                if member && self.nodes[index].up && !self.lost() {
                    if self.traces_message(id) {
                        eprintln!(
                            "{} push {id} from {} to {to}: {rec:?}",
                            self.now, self.nodes[from].id
                        );
                    }
                    let is_put = matches!(rec, Rec::Put { .. });
                    // A tombstone over a copy that names more nodes (a delivery placed again
                    // widened it): the answer names them, and the pusher sends it on to them.
                    let naming: Vec<NodeId> = match self.nodes[index]
                        .disk
                        .records
                        .get(&user)
                        .and_then(|r| r.get(&id))
                    {
                        Some(Rec::Put { replicas, .. }) if !is_put => replicas
                            .iter()
                            .copied()
                            .filter(|&n| n != to && n != self.nodes[from].id)
                            .collect(),
                        _ => Vec::new(),
                    };
                    for node in naming {
                        kept.push((node, user.clone(), id, Rec::Tomb));
                    }
                    if self.nodes[index].disk.write(&user, id, rec) {
                        let me = self.nodes[from].id;
                        self.nodes[from].disk.delete(me, &user, id, &[]);
                        continue;
                    }
                    if is_put {
                        let placed = Epoch::default();
                        self.note(index, &user, placed);
                    }
                } else {
                    kept.push((to, user, id, rec));
                }
            }
            self.nodes[from].disk.pushes.extend(kept);
        }
    }

    /// Retires every tombstone no node still has to push and that is older than
    /// [`TOMBSTONE_MIN_AGE_MS`], as the replication manager does once every node of its replica
    /// set acknowledged it and its minimum age passed: the record is gone, and a put of that id
    /// arriving later is stored again. A node that is down keeps its records until it is back.
    fn retire_tombstones(&mut self) {
        let pending: HashSet<(String, u128)> = self
            .nodes
            .iter()
            .flat_map(|n| n.disk.pushes.iter())
            .filter(|(_, _, _, rec)| matches!(rec, Rec::Tomb))
            .map(|(_, user, id, _)| (user.clone(), *id))
            .collect();
        let now = self.now;
        for (index, node) in self.nodes.iter_mut().enumerate().filter(|(_, n)| n.up) {
            for (user, records) in node.disk.records.iter_mut() {
                records.retain(|id, rec| {
                    if !matches!(rec, Rec::Tomb) {
                        return true;
                    }
                    let seen = *self
                        .tomb_seen
                        .entry((index, user.clone(), *id))
                        .or_insert(now);
                    let retire = now.saturating_sub(seen) >= TOMBSTONE_MIN_AGE_MS
                        && !pending.contains(&(user.clone(), *id));
                    if retire {
                        self.retired.insert(*id);
                        self.tomb_seen.remove(&(index, user.clone(), *id));
                    }
                    !retire
                });
            }
        }
    }

    fn start_session(&mut self, smtp: bool) {
        // Only nodes that are members of their own current view take sessions (a joining node
        // waits for its seeds).
        let ready: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].up && self.nodes[i].view.members.len() > 1)
            .collect();
        if ready.is_empty() {
            return;
        }
        let node = ready[self.rng.gen_range(0..ready.len())];
        // The first user is hot.
        let user = if self.rng.gen_bool(0.6) {
            self.users[0].clone()
        } else {
            self.users[self.rng.gen_range(0..self.users.len())].clone()
        };
        let mut lock_owner = None;
        let machine = if smtp {
            let settings = DeliverySettings {
                replicas: REPLICAS,
                placement: PlacementPolicy::default(),
                overload_ops: 256,
                patience_ms: 2_000,
                retry_pause_ms: 20,
            };
            self.next_id += 1;
            Machine::Smtp {
                machine: Delivery::new(settings, self.now),
                id: self.next_id,
            }
        } else {
            let n = &mut self.nodes[node];
            n.next_session += 1;
            let owner = (n.id, n.next_session);
            lock_owner = Some(owner);
            Machine::PopOpen(Open::new(&user, owner, settings(), self.now))
        };
        let session = self.next_session;
        self.next_session += 1;
        let life = self.nodes[node].life;
        self.sessions.insert(
            session,
            Session {
                node,
                life,
                user,
                machine,
                started_ms: self.now,
                owner: lock_owner,
            },
        );
        let input = if smtp {
            Input::Delivery(DeliveryInput::Start)
        } else {
            Input::Open(OpenInput::Start)
        };
        self.at(self.now, Event::Step { session, input });
    }

    /// One step of a session's machine, and the action it asks for.
    fn step(&mut self, id: u64, input: Input) {
        let Some(mut session) = self.sessions.remove(&id) else {
            return;
        };
        let node = session.node;
        if !self.nodes[node].up || self.nodes[node].life != session.life {
            return;
        }
        let view = self.nodes[node].view.clone();
        let me = self.nodes[node].id;
        let facts = Facts {
            me,
            view: &view,
            now_ms: self.now,
            // The sim knows the whole cluster: a view of most of it holds the majority.
            majority: view.members.len() * 2 > self.nodes.len(),
        };
        let manager = self.index_of(view.map.manager_of(&session.user));
        let user = session.user.clone();
        match (&mut session.machine, input) {
            (Machine::Smtp { machine, id: msg }, Input::Delivery(input)) => {
                let msg = *msg;
                let action =
                    machine.step(input, facts, |_| CandidateLoad::default(), &mut self.rng);
                match action {
                    DeliveryAction::Finish(result) => {
                        if result.is_ok() {
                            self.acked.insert(msg, user);
                        }
                        return;
                    }
                    DeliveryAction::StoreHere {
                        placed,
                        replicas,
                        also,
                    } => {
                        let result = self.store(node, &user, msg, placed, &replicas, &also, 100);
                        let input = Input::Delivery(DeliveryInput::Stored(result));
                        self.at(self.now + 1, Event::Step { session: id, input });
                    }
                    DeliveryAction::StoreAt {
                        coordinator,
                        placed,
                        replicas,
                        also,
                    } => {
                        let to = self.index_of(coordinator);
                        let store = StoreMessage {
                            user: user.clone(),
                            id: msg,
                            epoch: placed,
                            replicas,
                            also,
                            message: vec![0; 100],
                        };
                        self.call(id, to, store, |answer| {
                            Input::Delivery(DeliveryInput::Stored(StoreError::of_remote(answer)))
                        });
                    }
                    DeliveryAction::AskCandidates {
                        replicas, avoid, ..
                    } => {
                        let place = PlaceMail {
                            user: user.clone(),
                            replicas: replicas as u8,
                            avoid,
                        };
                        self.call(id, manager, place, |answer| {
                            Input::Delivery(DeliveryInput::Candidates(match answer {
                                Ok(Placed { nodes }) if !nodes.is_empty() => Some(nodes.into()),
                                _ => None,
                            }))
                        });
                    }
                    DeliveryAction::ForgetCandidates | DeliveryAction::MarkFull(_) => {
                        let input = Input::Delivery(DeliveryInput::Continue);
                        self.at(self.now, Event::Step { session: id, input });
                    }
                    DeliveryAction::Sleep { ms } => {
                        let input = Input::Delivery(DeliveryInput::Continue);
                        self.at(self.now + ms, Event::Step { session: id, input });
                    }
                }
            }
            (Machine::PopOpen(machine), Input::Open(input)) => match machine.step(input, facts) {
                OpenAction::Lock(lock) => {
                    self.call(id, manager, lock, |a| Input::Open(OpenInput::Locked(a)))
                }
                OpenAction::RecordLock(owner) => {
                    self.nodes[node].locks.insert(user.clone(), owner);
                    let input = Input::Open(OpenInput::Continue);
                    self.at(self.now, Event::Step { session: id, input });
                }
                OpenAction::List(target) => {
                    let to = self.index_of(target);
                    let list = ListFragment { user: user.clone() };
                    self.call(id, to, list, |a| Input::Open(OpenInput::Listed(a.ok())));
                }
                OpenAction::Sleep { ms } => {
                    let input = Input::Open(OpenInput::Continue);
                    self.at(self.now + ms, Event::Step { session: id, input });
                }
                OpenAction::Failed(_) => {
                    // The lock may have been granted: release it, as the node does.
                    if let Some(owner) = session.owner {
                        session.machine =
                            Machine::PopUnlock(Unlock::new(&user, owner, settings(), self.now));
                        let input = Input::Unlock(UnlockInput::Start);
                        self.at(self.now, Event::Step { session: id, input });
                    } else {
                        return;
                    }
                }
                OpenAction::Opened(opened) => {
                    self.pops_opened += 1;
                    let mut seen = HashSet::new();
                    for message in &opened.messages {
                        if !seen.insert(message.id) {
                            self.violations.push(format!(
                                "{user}: message {} shown twice to one session at {} ms",
                                message.id, self.now
                            ));
                        }
                        if let Some(&when) = self.deleted_at.get(&message.id) {
                            if when < session.started_ms {
                                self.violations.push(format!(
                                    "{user}: message {} shown at {} ms by a session on node {me} \
                                     begun at {} ms, after its delete was acknowledged at {when} ms",
                                    message.id, self.now, session.started_ms
                                ));
                            }
                        }
                    }
                    // The client retrieves everything and deletes most of it.
                    let indices: Vec<usize> = (0..opened.messages.len())
                        .filter(|_| self.rng.gen_bool(0.8))
                        .collect();
                    let ids = indices.iter().map(|&i| opened.messages[i].id).collect();
                    let members: Vec<NodeId> = view.members.iter().map(|m| m.id).collect();
                    let machine =
                        Delete::new(&opened.messages, &indices, &members, &opened.fragments);
                    session.machine = Machine::PopDelete {
                        machine,
                        owner: opened.owner,
                        ids,
                    };
                    let input = Input::Delete(DeleteInput::Start);
                    self.at(self.now, Event::Step { session: id, input });
                }
            },
            (
                Machine::PopDelete {
                    machine,
                    owner,
                    ids,
                },
                Input::Delete(input),
            ) => match machine.step(input) {
                DeleteAction::Finish(result) => {
                    if result.is_ok() {
                        for id in ids.iter() {
                            self.deleted_at.entry(*id).or_insert(self.now);
                        }
                    }
                    let owner = *owner;
                    session.machine =
                        Machine::PopUnlock(Unlock::new(&user, owner, settings(), self.now));
                    let input = Input::Unlock(UnlockInput::Start);
                    self.at(self.now, Event::Step { session: id, input });
                }
                DeleteAction::DeleteAt {
                    node: target,
                    ids,
                    also,
                } => {
                    let to = self.index_of(target);
                    let delete = DeleteMessages {
                        user: user.clone(),
                        ids,
                        fragments: also,
                    };
                    self.call(id, to, delete, |answer| {
                        Input::Delete(DeleteInput::Deleted(delete_outcome(answer)))
                    });
                }
            },
            (Machine::PopUnlock(machine), Input::Unlock(input)) => {
                match machine.step(input, facts) {
                    UnlockAction::ForgetLock(owner) => {
                        let locks = &mut self.nodes[node].locks;
                        if locks.get(&user) == Some(&owner) {
                            locks.remove(&user);
                        }
                        let input = Input::Unlock(UnlockInput::Continue);
                        self.at(self.now, Event::Step { session: id, input });
                    }
                    UnlockAction::Unlock(unlock) => self.call(id, manager, unlock, |a| {
                        Input::Unlock(UnlockInput::Unlocked(a))
                    }),
                    UnlockAction::Sleep { ms } => {
                        let input = Input::Unlock(UnlockInput::Continue);
                        self.at(self.now + ms, Event::Step { session: id, input });
                    }
                    UnlockAction::Released | UnlockAction::GaveUp => return,
                }
            }
            (machine, input) => panic!("input {input:?} for {machine:?}"),
        }
        self.sessions.insert(id, session);
    }

    /// A call from `session`'s node to node `to` (itself included), over the network.
    fn call<C: Call>(
        &mut self,
        session: u64,
        to: usize,
        call: C,
        to_input: fn(Result<C::Reply, CallError>) -> Input,
    ) where
        C::Reply: 'static,
    {
        let reply = Reply::to::<C>(to_input);
        if self.lost() {
            let when = self.now + REQUEST_TIMEOUT_MS;
            let input = (reply.0)(Err(CallError::Timeout));
            self.at(when, Event::Step { session, input });
            return;
        }
        let when = self.now + self.delay();
        let request = call.into();
        self.at(
            when,
            Event::Request {
                session,
                to,
                request,
                reply,
            },
        );
    }

    /// After the faults: every acknowledged message that was not deleted is listed by some
    /// node (every node is up by now, and replication has had time to finish).
    fn check_nothing_lost(&mut self) {
        for (id, user) in &self.acked {
            if self.deleted_at.contains_key(id) {
                continue;
            }
            let listed = self.nodes.iter().any(|n| {
                matches!(
                    n.disk.records.get(user).and_then(|r| r.get(id)),
                    Some(Rec::Put { .. })
                )
            });
            let tombstoned = self.nodes.iter().any(|n| {
                matches!(
                    n.disk.records.get(user).and_then(|r| r.get(id)),
                    Some(Rec::Tomb)
                )
            });
            // A delete that was not acknowledged (its session failed at QUIT) may have landed.
            if !listed && !tombstoned && !self.retired.contains(id) {
                self.violations.push(format!(
                    "{user}: message {id} acknowledged with 250 and lost"
                ));
            }
        }
    }
}

fn settings() -> MaildropSettings {
    MaildropSettings {
        patience_ms: 2_000,
        unlock_patience_ms: 5_000,
        retry_pause_ms: 20,
    }
}

fn run_seed(seed: u64) -> Result<(u64, u64, u64), Vec<String>> {
    let mut sim = Sim::new(seed);
    sim.run();
    for node in 0..sim.nodes.len() {
        if !sim.nodes[node].up {
            sim.violations
                .push(format!("node {node} is still down after the faults"));
        }
    }
    sim.check_nothing_lost();
    if sim.violations.is_empty() {
        Ok((
            sim.acked.len() as u64,
            sim.deleted_at.len() as u64,
            sim.pops_opened,
        ))
    } else {
        Err(sim.violations)
    }
}

#[test]
fn delivery_and_maildrop_policy_over_many_seeds() {
    let seeds: Vec<u64> = match std::env::var("PORCUPINE_SIM_SEED") {
        Ok(one) => vec![one.parse().expect("PORCUPINE_SIM_SEED is a number")],
        Err(_) => {
            let count = std::env::var("PORCUPINE_SIM_SEEDS")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(300);
            (0..count).collect()
        }
    };
    let mut failures = Vec::new();
    let (mut acked, mut deleted, mut opened) = (0, 0, 0);
    for &seed in &seeds {
        match run_seed(seed) {
            Ok((a, d, o)) => {
                acked += a;
                deleted += d;
                opened += o;
            }
            Err(violations) => failures.push((seed, violations)),
        }
    }
    eprintln!(
        "policy_sim: {} seeds, {acked} messages acknowledged, {deleted} deletes acknowledged, \
         {opened} maildrops opened, {} seeds failed",
        seeds.len(),
        failures.len()
    );
    if let Some((seed, violations)) = failures.first() {
        panic!(
            "{} of {} seeds failed; first: seed {seed} (replay: PORCUPINE_SIM_SEED={seed}): {:#?}",
            failures.len(),
            seeds.len(),
            &violations[..violations.len().min(10)]
        );
    }
    assert!(acked > seeds.len() as u64 * 50, "too little mail: {acked}");
    assert!(
        deleted > seeds.len() as u64 * 10,
        "too few deletes: {deleted}"
    );
}
