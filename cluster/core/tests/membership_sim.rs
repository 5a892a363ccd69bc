//! Deterministic simulation of the membership state machine: one thread, a simulated clock and
//! network with loss, delay, reordering, partitions and crashes, many seeds.
//!
//! Checked: (safety) no two nodes ever install different memberships or maps for one epoch;
//! (liveness) once faults stop, every live node converges on one epoch, the live node set and
//! one user map within a bound. A failing seed is printed; replay it with
//! `PORCUPINE_SIM_SEED=<seed> cargo test -p porcupine-cluster-core --test membership_sim`.
//! `PORCUPINE_SIM_SEEDS=N` runs more seeds (default 300).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};

use porcupine_cluster_core::membership::{Action, Epoch, Member, Membership, Msg, Settings, View};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const FAULTS_END_MS: u64 = 4_000;
/// Convergence must happen within this long after the faults stop.
const CONVERGE_BOUND_MS: u64 = 3_000;
const TICK_MS: u64 = 5;

#[derive(Debug)]
enum Event {
    Deliver { to: usize, msg: Msg },
    Tick(usize),
    Crash(usize),
    Restart(usize),
    Partition(Vec<u8>),
    Heal,
}

struct Sim {
    rng: StdRng,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64, usize)>>,
    events: HashMap<usize, Event>,
    nodes: Vec<Option<Membership>>,
    members: Vec<Member>,
    /// Partition side of each node (same side = can talk).
    side: Vec<u8>,
    loss: f64,
    installed: HashMap<Epoch, View>,
}

impl Sim {
    fn schedule(&mut self, at: u64, event: Event) {
        self.seq += 1;
        let key = self.seq as usize;
        self.events.insert(key, event);
        self.queue.push(Reverse((at, self.seq, key)));
    }

    fn index_of(&self, addr: &str) -> Option<usize> {
        self.members.iter().position(|m| m.addr == addr)
    }

    fn apply(&mut self, from: usize, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Send { to, msg } => {
                    let Some(to) = self.index_of(&to) else {
                        continue;
                    };
                    let faulty = self.now < FAULTS_END_MS;
                    if faulty && self.rng.gen_bool(self.loss) {
                        continue;
                    }
                    if self.side[from] != self.side[to] {
                        continue;
                    }
                    let delay = self.rng.gen_range(1..=if faulty { 40 } else { 10 });
                    self.schedule(self.now + delay, Event::Deliver { to, msg });
                }
                Action::Installed(view) => {
                    if let Some(seen) = self.installed.get(&view.epoch) {
                        assert_eq!(
                            seen, &view,
                            "two different views were installed for epoch {:?}",
                            view.epoch
                        );
                    } else {
                        self.installed.insert(view.epoch, view);
                    }
                }
            }
        }
    }

    fn live(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_some())
            .collect()
    }

    /// Whether every live node has the same view, of exactly the live nodes.
    fn converged(&self) -> bool {
        let live = self.live();
        let Some(first) = live.first().and_then(|&i| self.nodes[i].as_ref()) else {
            return true;
        };
        let want: BTreeSet<u64> = live.iter().map(|&i| self.members[i].id).collect();
        let view = first.view();
        let ids: BTreeSet<u64> = view.members.iter().map(|m| m.id).collect();
        ids == want
            && live.iter().all(|&i| {
                self.nodes[i]
                    .as_ref()
                    .is_some_and(|n| n.view() == view && n.settled())
            })
            && view.map.managers.iter().all(|m| want.contains(m))
    }
}

/// Runs one seed; returns the milliseconds from the end of faults to convergence.
fn run(seed: u64) -> u64 {
    let mut rng = StdRng::seed_from_u64(seed);
    let n = rng.gen_range(3..=9usize);
    let mut ids = BTreeSet::new();
    while ids.len() < n {
        ids.insert(rng.gen_range(1..u64::from(u32::MAX)));
    }
    let members: Vec<Member> = ids
        .into_iter()
        .enumerate()
        .map(|(i, id)| Member {
            id,
            addr: format!("10.0.0.{i}:7946"),
        })
        .collect();
    let loss = rng.gen_range(0.0..0.3);
    let mut sim = Sim {
        rng,
        now: 0,
        seq: 0,
        queue: BinaryHeap::new(),
        events: HashMap::new(),
        nodes: (0..n).map(|_| None).collect(),
        members,
        side: vec![0; n],
        loss,
        installed: HashMap::new(),
    };
    // Boots at random times.
    for i in 0..n {
        let at = sim.rng.gen_range(0..500);
        sim.schedule(at, Event::Restart(i));
    }
    // Faults before FAULTS_END_MS: crashes and restarts, partitions and heals.
    let faults = sim.rng.gen_range(0..8);
    for _ in 0..faults {
        let at = sim.rng.gen_range(500..FAULTS_END_MS);
        match sim.rng.gen_range(0..3) {
            0 => {
                let node = sim.rng.gen_range(0..n);
                sim.schedule(at, Event::Crash(node));
                // Most crashed nodes come back; some stay down, but not the two seeds (a
                // node whose every seed is gone for good cannot find the cluster).
                if node < 2 || sim.rng.gen_bool(0.7) {
                    let back = sim.rng.gen_range(at + 1..FAULTS_END_MS + 500);
                    sim.schedule(back, Event::Restart(node));
                }
            }
            1 => {
                let sides = (0..n).map(|_| sim.rng.gen_range(0..2u8)).collect();
                sim.schedule(at, Event::Partition(sides));
            }
            _ => sim.schedule(at, Event::Heal),
        }
    }
    sim.schedule(FAULTS_END_MS, Event::Heal);
    let settings = Settings::default();
    // Nodes 0 and 1 are everyone's `--join` seeds; the rest of the cluster is learned.
    let seeds = vec![sim.members[0].addr.clone(), sim.members[1].addr.clone()];
    let end = FAULTS_END_MS + 500 + CONVERGE_BOUND_MS;
    let mut converged_at = None;
    let trace = std::env::var_os("PORCUPINE_SIM_TRACE").is_some();
    while let Some(Reverse((at, _, key))) = sim.queue.pop() {
        if at > end {
            break;
        }
        sim.now = at;
        let Some(event) = sim.events.remove(&key) else {
            continue;
        };
        let mut out = Vec::new();
        if trace {
            match &event {
                Event::Tick(_) => {}
                Event::Deliver {
                    to,
                    msg: Msg::Commit { view },
                } => eprintln!(
                    "{at:>6} to {to}: Commit {:?} {:?}",
                    view.epoch,
                    view.members.iter().map(|m| m.id).collect::<Vec<_>>()
                ),
                Event::Deliver { to, msg } => eprintln!("{at:>6} to {to}: {msg:?}"),
                other => eprintln!("{at:>6} {other:?}"),
            }
        }
        match event {
            Event::Deliver { to, msg } => {
                if let Some(node) = sim.nodes[to].as_mut() {
                    node.receive(at, msg, &mut out);
                    sim.apply(to, out);
                }
            }
            Event::Tick(i) => {
                if let Some(node) = sim.nodes[i].as_mut() {
                    node.tick(at, &mut out);
                    sim.apply(i, out);
                    sim.schedule(at + TICK_MS, Event::Tick(i));
                }
            }
            Event::Crash(i) => sim.nodes[i] = None,
            Event::Restart(i) => {
                if sim.nodes[i].is_none() {
                    sim.nodes[i] = Some(Membership::new(
                        sim.members[i].clone(),
                        &seeds,
                        settings.clone(),
                        at,
                    ));
                    sim.schedule(at + TICK_MS, Event::Tick(i));
                }
            }
            Event::Partition(sides) => sim.side = sides,
            Event::Heal => sim.side = vec![0; n],
        }
        let quiet_from = FAULTS_END_MS + 500;
        if at >= quiet_from && converged_at.is_none() && sim.converged() {
            converged_at = Some(at - FAULTS_END_MS);
        }
        if at >= quiet_from && converged_at.is_some() && !sim.converged() {
            let views: Vec<_> = sim
                .live()
                .into_iter()
                .filter_map(|i| sim.nodes[i].as_ref())
                .map(|n| (n.me().id, n.view().epoch, n.settled()))
                .collect();
            panic!("seed {seed}: converged, then diverged at {at} ms with no faults: {views:?}");
        }
    }
    match converged_at {
        Some(ms) => ms,
        None => {
            let views: BTreeMap<u64, (Epoch, Vec<u64>)> = sim
                .live()
                .into_iter()
                .filter_map(|i| sim.nodes[i].as_ref())
                .map(|n| {
                    (
                        n.me().id,
                        (
                            n.view().epoch,
                            n.view().members.iter().map(|m| m.id).collect(),
                        ),
                    )
                })
                .collect();
            panic!(
                "seed {seed}: {n} nodes did not converge within {CONVERGE_BOUND_MS} ms after faults stopped; views: {views:?}"
            )
        }
    }
}

#[test]
fn membership_converges_and_never_splits_an_epoch() {
    if let Ok(seed) = std::env::var("PORCUPINE_SIM_SEED") {
        let seed: u64 = seed.parse().expect("PORCUPINE_SIM_SEED is a number");
        println!(
            "seed {seed}: converged {} ms after faults stopped",
            run(seed)
        );
        return;
    }
    let seeds: u64 = std::env::var("PORCUPINE_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let mut worst = 0;
    for seed in 0..seeds {
        let result = std::panic::catch_unwind(|| run(seed));
        match result {
            Ok(ms) => worst = worst.max(ms),
            Err(_) => panic!(
                "membership simulation failed for seed {seed}; replay with PORCUPINE_SIM_SEED={seed}"
            ),
        }
    }
    println!("{seeds} seeds: worst convergence {worst} ms after faults stopped");
}
