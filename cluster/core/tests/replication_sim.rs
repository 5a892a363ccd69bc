//! Deterministic simulation of the replication manager: the real [`Replicator`] on every node,
//! with a model of what the engine keeps on disk (messages, tombstones, the pending set as the
//! put/delete and retire records leave it), on one thread with a simulated clock and a network
//! with loss, delay, reordering, partitions, crashes and restarts, many seeds.
//!
//! Clients deliver messages (acknowledged under the "all replicas" or the "coordinator" policy)
//! and delete acknowledged ones on one holder. In some seeds a node crashes and is declared
//! dead (`--dead-after`) while it is down, then returns. Checked once faults stop and every
//! node is back: every acknowledged put that was not deleted is on all of its replicas but a
//! node declared dead (healing, not modelled here, replaces those); no node — the returned
//! dead one included — shows a message whose delete was acknowledged; every pending update
//! has retired.
//! A failing seed is printed; replay it with
//! `PORCUPINE_SIM_SEED=<seed> cargo test -p porcupine-cluster-core --test replication_sim`.
//! `PORCUPINE_SIM_SEEDS=N` runs more seeds (default 300).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};

use porcupine_cluster_core::replication::{Action, Replicator, Settings, Update};
use porcupine_types::{supersedes, UpdateKind};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const FAULTS_END_MS: u64 = 6_000;
/// Everything must have converged this long after the faults stop.
const SETTLE_MS: u64 = 40_000;
const TICK_MS: u64 = 25;
/// A push without an answer by then has failed (the transport's request timeout).
const PUSH_TIMEOUT_MS: u64 = 400;

type Key = (String, u128);

/// What one node's disk holds for a message.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Stored {
    Put { replicas: Vec<u64> },
    Tomb,
}

#[derive(Debug)]
enum Event {
    Push {
        from: usize,
        to: usize,
        update: Update,
        serial: u64,
    },
    Answer {
        to: usize,
        from: usize,
        update: Update,
        serial: u64,
    },
    PushTimeout {
        node: usize,
        to: usize,
        update: Update,
        serial: u64,
    },
    Retired {
        to: usize,
        key: Key,
        hlc: u64,
    },
    Tick(usize),
    Crash(usize),
    /// Every node declares this (crashed) node dead.
    DeclareDead(usize),
    Restart(usize),
    Partition(Vec<u8>),
    Heal,
    Deliver,
    Delete,
}

struct Node {
    id: u64,
    alive: bool,
    /// Survives crashes: the log.
    disk: BTreeMap<Key, Stored>,
    pending: BTreeMap<Key, Update>,
    /// Lost in a crash.
    replicator: Replicator,
    /// Bumped at each restart: answers to pushes of an earlier life are ignored.
    life: u64,
}

struct Sim {
    rng: StdRng,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    events: HashMap<u64, Event>,
    nodes: Vec<Node>,
    side: Vec<u8>,
    loss: f64,
    settings: Settings,
    replicas: usize,
    all_policy: bool,
    /// Deliveries waiting for every replica: key → (coordinator, its life then).
    awaiting: BTreeMap<Key, (usize, u64, u64)>,
    acknowledged: BTreeMap<Key, Vec<u64>>,
    deleted: BTreeSet<Key>,
    next_message: u128,
    /// Push serial → the life of the pushing node when it pushed.
    push_life: HashMap<u64, u64>,
    hlc: u64,
    trace: bool,
    /// Nodes declared dead now, and every node declared dead during the run.
    dead: Vec<u64>,
    ever_dead: BTreeSet<u64>,
}

/// As the engine's index does (see `Index::note_pending`).
fn note_pending(pending: &mut BTreeMap<Key, Update>, update: &Update) {
    if update.replicas.len() < 2 {
        return;
    }
    let key = (update.user.clone(), update.id);
    let replace = pending
        .get(&key)
        .is_none_or(|old| supersedes((old.kind, old.hlc), (update.kind, update.hlc)));
    if replace {
        pending.insert(key, update.clone());
    }
}

impl Sim {
    fn schedule(&mut self, at: u64, event: Event) {
        self.seq += 1;
        self.events.insert(self.seq, event);
        self.queue.push(Reverse((at, self.seq)));
    }

    fn index_of(&self, id: u64) -> usize {
        self.nodes
            .iter()
            .position(|n| n.id == id)
            .expect("known node")
    }

    fn live_ids(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|n| n.alive)
            .map(|n| n.id)
            .collect()
    }

    fn reachable(&self, from: usize, to: usize) -> bool {
        self.nodes[to].alive && self.side[from] == self.side[to]
    }

    /// A message over the network: maybe lost, else delayed (so reordered).
    fn send(&mut self, from: usize, to: usize, event: Event) {
        if !self.reachable(from, to) || self.rng.gen_bool(self.loss) {
            return;
        }
        let delay = self.rng.gen_range(1..30);
        self.schedule(self.now + delay, event);
    }

    fn execute(&mut self, node: usize, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Push { to, update } => {
                    let to = self.index_of(to);
                    self.seq += 1;
                    let serial = self.seq;
                    self.push_life.insert(serial, self.nodes[node].life);
                    if self.trace {
                        eprintln!(
                            "{} n{node} push {:?} {} -> n{to}",
                            self.now, update.kind, update.id
                        );
                    }
                    self.schedule(
                        self.now + PUSH_TIMEOUT_MS,
                        Event::PushTimeout {
                            node,
                            to,
                            update: update.clone(),
                            serial,
                        },
                    );
                    self.send(
                        node,
                        to,
                        Event::Push {
                            from: node,
                            to,
                            update,
                            serial,
                        },
                    );
                }
                Action::Retire { update, notify } => {
                    let key = (update.user.clone(), update.id);
                    let n = &mut self.nodes[node];
                    if n.pending.get(&key).is_some_and(|p| p.hlc == update.hlc) {
                        n.pending.remove(&key);
                    }
                    if self.trace {
                        eprintln!(
                            "{} n{node} retire {} notify {notify:?}",
                            self.now, update.id
                        );
                    }
                    for to in notify {
                        let to = self.index_of(to);
                        self.send(
                            node,
                            to,
                            Event::Retired {
                                to,
                                key: key.clone(),
                                hlc: update.hlc,
                            },
                        );
                    }
                }
            }
        }
    }

    fn check_awaiting(&mut self, node: usize) {
        let life = self.nodes[node].life;
        let done: Vec<Key> = self
            .awaiting
            .iter()
            .filter(|(key, (coordinator, at_life, hlc))| {
                *coordinator == node
                    && *at_life == life
                    && self.nodes[node]
                        .replicator
                        .acked_by_all(&key.0, key.1, *hlc)
            })
            .map(|(key, _)| key.clone())
            .collect();
        for key in done {
            if let Some((_, _, hlc)) = self.awaiting.remove(&key) {
                let replicas = self.nodes[node]
                    .pending
                    .get(&key)
                    .filter(|p| p.hlc == hlc)
                    .map(|p| p.replicas.clone());
                if let Some(replicas) = replicas {
                    self.acknowledged.insert(key, replicas);
                }
            }
        }
    }

    /// A node applies a pushed update; returns whether it holds it (or something newer).
    fn apply(&mut self, node: usize, update: &Update) {
        let key = (update.user.clone(), update.id);
        let n = &mut self.nodes[node];
        let fresh = match (update.kind, n.disk.get(&key)) {
            (_, Some(Stored::Tomb)) => false,
            (UpdateKind::Put, Some(Stored::Put { .. })) => false,
            (UpdateKind::Put, None) => {
                n.disk.insert(
                    key.clone(),
                    Stored::Put {
                        replicas: update.replicas.clone(),
                    },
                );
                true
            }
            (UpdateKind::Delete, _) => {
                n.disk.insert(key.clone(), Stored::Tomb);
                true
            }
        };
        if fresh {
            note_pending(&mut n.pending, update);
            let origin = update.origin;
            let now = self.now;
            let actions = n.replicator.add(update.clone(), &[origin], now);
            self.execute(node, actions);
        }
    }

    fn restart(&mut self, node: usize) {
        let live = {
            let mut live = self.live_ids();
            live.push(self.nodes[node].id);
            live
        };
        let now = self.now;
        let n = &mut self.nodes[node];
        n.alive = true;
        n.life += 1;
        n.replicator = Replicator::new(n.id, self.settings);
        n.replicator.view_changed(&live, now);
        let id = n.id;
        self.dead.retain(|&d| d != id);
        let dead = self.dead.clone();
        let n = &mut self.nodes[node];
        n.replicator.dead_changed(&dead, now);
        let pending: Vec<Update> = n.pending.values().cloned().collect();
        let mut actions = Vec::new();
        for update in pending {
            actions.extend(n.replicator.add(update, &[], now));
        }
        self.execute(node, actions);
        self.view_changed();
    }

    fn view_changed(&mut self) {
        let live = self.live_ids();
        for node in 0..self.nodes.len() {
            if self.nodes[node].alive {
                let now = self.now;
                self.nodes[node].replicator.view_changed(&live, now);
                self.nodes[node].replicator.dead_changed(&self.dead, now);
            }
        }
    }

    fn deliver(&mut self) {
        let live: Vec<usize> = (0..self.nodes.len())
            .filter(|&n| self.nodes[n].alive)
            .collect();
        if live.is_empty() {
            return;
        }
        let coordinator = live[self.rng.gen_range(0..live.len())];
        let mut replicas = vec![self.nodes[coordinator].id];
        let mut others: Vec<u64> = live
            .iter()
            .filter(|&&n| n != coordinator)
            .map(|&n| self.nodes[n].id)
            .collect();
        while replicas.len() < self.replicas && !others.is_empty() {
            let at = self.rng.gen_range(0..others.len());
            replicas.push(others.swap_remove(at));
        }
        self.next_message += 1;
        self.hlc += 1;
        let user = format!("u{}", self.rng.gen_range(0..5));
        let update = Update {
            user: user.clone(),
            id: self.next_message,
            kind: UpdateKind::Put,
            hlc: self.hlc,
            origin: self.nodes[coordinator].id,
            replicas: replicas.clone(),
        };
        let key = (user, update.id);
        if self.trace {
            eprintln!(
                "{} n{coordinator} deliver {key:?} to {replicas:?}",
                self.now
            );
        }
        let now = self.now;
        let n = &mut self.nodes[coordinator];
        n.disk.insert(
            key.clone(),
            Stored::Put {
                replicas: replicas.clone(),
            },
        );
        note_pending(&mut n.pending, &update);
        let actions = n.replicator.add(update.clone(), &[], now);
        let life = n.life;
        if replicas.len() < 2 || !self.all_policy {
            // Durable on the coordinator: acknowledged under the coordinator policy (and
            // trivially under "all" with a single replica).
            self.acknowledged.insert(key, replicas);
        } else {
            self.awaiting.insert(key, (coordinator, life, update.hlc));
        }
        self.execute(coordinator, actions);
    }

    fn delete(&mut self) {
        let candidates: Vec<Key> = self
            .acknowledged
            .keys()
            .filter(|k| !self.deleted.contains(*k))
            .cloned()
            .collect();
        if candidates.is_empty() {
            return;
        }
        let key = candidates[self.rng.gen_range(0..candidates.len())].clone();
        let holders: Vec<usize> = (0..self.nodes.len())
            .filter(|&n| {
                self.nodes[n].alive
                    && matches!(self.nodes[n].disk.get(&key), Some(Stored::Put { .. }))
            })
            .collect();
        if holders.is_empty() {
            return;
        }
        let node = holders[self.rng.gen_range(0..holders.len())];
        let Some(Stored::Put { replicas }) = self.nodes[node].disk.get(&key).cloned() else {
            return;
        };
        self.hlc += 1;
        let update = Update {
            user: key.0.clone(),
            id: key.1,
            kind: UpdateKind::Delete,
            hlc: self.hlc,
            origin: self.nodes[node].id,
            replicas,
        };
        if self.trace {
            eprintln!(
                "{} n{node} delete {key:?} of {:?}",
                self.now, update.replicas
            );
        }
        let now = self.now;
        let n = &mut self.nodes[node];
        n.disk.insert(key.clone(), Stored::Tomb);
        note_pending(&mut n.pending, &update);
        let actions = n.replicator.add(update, &[], now);
        self.deleted.insert(key);
        self.execute(node, actions);
    }
}

fn run(seed: u64) -> Result<(), String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let count = rng.gen_range(3..=5);
    let replicas = rng.gen_range(2..=3);
    let all_policy = rng.gen_bool(0.7);
    let loss = [0.0, 0.02, 0.1, 0.2][rng.gen_range(0..4)];
    // The last node dies in some seeds: declared dead while down, back when faults stop.
    let doomed = rng.gen_bool(0.4).then_some(count - 1);
    let settings = Settings {
        retry_ms: 100,
        straggler_wait_ms: 200,
        takeover_after_ms: 3_000,
        retention_ms: u64::MAX / 4,
        tombstone_min_age_ms: 2_000,
        pushes_in_flight_max: 64,
    };
    let nodes = (0..count)
        .map(|n| {
            let id = 10 + n as u64 * 7;
            Node {
                id,
                alive: true,
                disk: BTreeMap::new(),
                pending: BTreeMap::new(),
                replicator: Replicator::new(id, settings),
                life: 0,
            }
        })
        .collect();
    let mut sim = Sim {
        rng,
        now: 0,
        seq: 0,
        queue: BinaryHeap::new(),
        events: HashMap::new(),
        nodes,
        side: vec![0; count],
        loss,
        settings,
        replicas,
        all_policy,
        awaiting: BTreeMap::new(),
        acknowledged: BTreeMap::new(),
        deleted: BTreeSet::new(),
        next_message: 0,
        push_life: HashMap::new(),
        hlc: 0,
        trace: std::env::var_os("PORCUPINE_SIM_TRACE").is_some(),
        dead: Vec::new(),
        ever_dead: BTreeSet::new(),
    };
    sim.view_changed();
    for node in 0..count {
        sim.schedule(node as u64, Event::Tick(node));
    }
    // Faults: crashes with restarts, partitions with heals; client work throughout.
    if let Some(doomed) = doomed {
        let down = sim.rng.gen_range(200..2_000);
        sim.schedule(down, Event::Crash(doomed));
        let declared = down + sim.rng.gen_range(300..1_500);
        sim.schedule(declared, Event::DeclareDead(doomed));
    }
    let mut t = 0;
    loop {
        t += sim.rng.gen_range(100..800);
        if t >= FAULTS_END_MS {
            break;
        }
        let node = sim.rng.gen_range(0..count - usize::from(doomed.is_some()));
        match sim.rng.gen_range(0..3) {
            0 => {
                sim.schedule(t, Event::Crash(node));
                let back = t + sim.rng.gen_range(50..2_000);
                sim.schedule(back.min(FAULTS_END_MS), Event::Restart(node));
            }
            1 => {
                let sides = (0..count).map(|_| sim.rng.gen_range(0..2)).collect();
                sim.schedule(t, Event::Partition(sides));
                let heal = t + sim.rng.gen_range(50..1_500);
                sim.schedule(heal.min(FAULTS_END_MS), Event::Heal);
            }
            _ => {}
        }
    }
    sim.schedule(FAULTS_END_MS, Event::Heal);
    for node in 0..count {
        sim.schedule(FAULTS_END_MS, Event::Restart(node));
    }
    let mut t = 0;
    while t < FAULTS_END_MS + 2_000 {
        t += sim.rng.gen_range(5..40);
        sim.schedule(t, Event::Deliver);
        if sim.rng.gen_bool(0.3) {
            sim.schedule(t + 1, Event::Delete);
        }
    }
    let end = FAULTS_END_MS + SETTLE_MS;
    while let Some(Reverse((at, key))) = sim.queue.pop() {
        if at > end {
            break;
        }
        sim.now = at;
        let Some(event) = sim.events.remove(&key) else {
            continue;
        };
        match event {
            Event::Tick(node) => {
                if sim.nodes[node].alive {
                    let now = sim.now;
                    let actions = sim.nodes[node].replicator.tick(now);
                    sim.execute(node, actions);
                }
                sim.schedule(at + TICK_MS, Event::Tick(node));
            }
            Event::Push {
                from,
                to,
                update,
                serial,
            } => {
                if !sim.nodes[to].alive {
                    continue;
                }
                sim.apply(to, &update);
                let answer = Event::Answer {
                    to: from,
                    from: to,
                    update,
                    serial,
                };
                sim.send(to, from, answer);
            }
            Event::Answer {
                to,
                from,
                update,
                serial,
            } => {
                if !sim.nodes[to].alive || sim.push_life.get(&serial) != Some(&sim.nodes[to].life) {
                    continue;
                }
                let now = sim.now;
                let from_id = sim.nodes[from].id;
                let actions = sim.nodes[to].replicator.acked(
                    &update.user,
                    update.id,
                    update.hlc,
                    from_id,
                    now,
                );
                sim.check_awaiting(to);
                sim.execute(to, actions);
            }
            Event::PushTimeout {
                node,
                to,
                update,
                serial,
            } => {
                // The transport reports a timeout even if an answer came (the replicator
                // must cope with both).
                if !sim.nodes[node].alive
                    || sim.push_life.get(&serial) != Some(&sim.nodes[node].life)
                {
                    continue;
                }
                let now = sim.now;
                let to_id = sim.nodes[to].id;
                sim.nodes[node]
                    .replicator
                    .failed(&update.user, update.id, to_id, now);
            }
            Event::Retired { to, key, hlc } => {
                if !sim.nodes[to].alive {
                    continue;
                }
                let n = &mut sim.nodes[to];
                if n.replicator.retired(&key.0, key.1, hlc)
                    && n.pending.get(&key).is_some_and(|p| p.hlc == hlc)
                {
                    n.pending.remove(&key);
                }
            }
            Event::Crash(node) => {
                if sim.nodes[node].alive {
                    sim.nodes[node].alive = false;
                    // Deliveries it coordinated are not acknowledged (the client retries).
                    sim.awaiting.retain(|_, (c, _, _)| *c != node);
                    if sim.trace {
                        eprintln!("{} crash n{node}", sim.now);
                    }
                    sim.view_changed();
                }
            }
            Event::DeclareDead(node) => {
                if !sim.nodes[node].alive {
                    let id = sim.nodes[node].id;
                    sim.dead = vec![id];
                    sim.ever_dead.insert(id);
                    if sim.trace {
                        eprintln!("{} n{node} declared dead", sim.now);
                    }
                    sim.view_changed();
                }
            }
            Event::Restart(node) => {
                if !sim.nodes[node].alive {
                    if sim.trace {
                        eprintln!("{} restart n{node}", sim.now);
                    }
                    sim.restart(node);
                }
            }
            Event::Partition(sides) => sim.side = sides,
            Event::Heal => sim.side = vec![0; count],
            Event::Deliver => sim.deliver(),
            Event::Delete => sim.delete(),
        }
    }
    // Checks.
    let mut problems = Vec::new();
    for (key, replicas) in &sim.acknowledged {
        if sim.deleted.contains(key) {
            continue;
        }
        for id in replicas.iter().filter(|id| !sim.ever_dead.contains(id)) {
            let node = &sim.nodes[sim.index_of(*id)];
            if !matches!(node.disk.get(key), Some(Stored::Put { .. })) {
                problems.push(format!(
                    "acknowledged {key:?} is not on its replica {id}: {:?}",
                    node.disk.get(key)
                ));
            }
        }
    }
    for key in &sim.deleted {
        for node in &sim.nodes {
            if matches!(node.disk.get(key), Some(Stored::Put { .. })) {
                problems.push(format!("deleted {key:?} is visible on node {}", node.id));
            }
        }
    }
    for node in &sim.nodes {
        if !node.pending.is_empty() {
            let sample: BTreeMap<_, _> = node.pending.iter().take(3).collect();
            problems.push(format!(
                "node {} still has {} pending updates, e.g. {sample:?}",
                node.id,
                node.pending.len()
            ));
        }
        if node.replicator.pending() != 0 {
            problems.push(format!(
                "node {}'s replicator still has {} entries",
                node.id,
                node.replicator.pending()
            ));
        }
    }
    if sim.acknowledged.is_empty() {
        problems.push("no delivery was ever acknowledged".into());
    }
    if problems.is_empty() {
        Ok(())
    } else {
        problems.truncate(5);
        Err(format!(
            "{count} nodes, replicas {replicas}, all-policy {all_policy}, loss {loss}: {}",
            problems.join("; ")
        ))
    }
}

#[test]
fn acknowledged_puts_reach_every_replica_and_deletes_never_resurrect() {
    if let Ok(seed) = std::env::var("PORCUPINE_SIM_SEED") {
        let seed: u64 = seed.parse().expect("PORCUPINE_SIM_SEED is a number");
        if let Err(problem) = run(seed) {
            panic!("seed {seed}: {problem}");
        }
        return;
    }
    let seeds: u64 = std::env::var("PORCUPINE_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    for seed in 0..seeds {
        if let Err(problem) = run(seed) {
            panic!(
                "replication simulation failed for seed {seed}: {problem}; replay with PORCUPINE_SIM_SEED={seed}"
            );
        }
    }
}
