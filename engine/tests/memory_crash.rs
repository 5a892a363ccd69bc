//! Power cuts over the in-memory storage: a shard runs on a [`PlainExecutor`] (no io_uring,
//! virtual time) over a [`MemoryStorage`]; clients put, delete, re-flag and read concurrently
//! while checkpoints, compaction and segment roll-over happen; the run is cut after a random
//! number of task polls (anywhere: inside a group commit, between a write and its sync, in
//! the middle of a checkpoint or a compaction) and the storage is replaced by what a power cut
//! leaves of it — only what was synced, or (seeded) some torn mixture of unsynced sectors and
//! directory changes. The shard is reopened and checked against what was acknowledged:
//!
//! - every put acknowledged (returned `Ok` after its group commit) is there with its body and
//!   its last acknowledged flags, unless an acknowledged delete followed;
//! - nothing whose delete was acknowledged comes back;
//! - nothing appears that was never put; an operation cut before its acknowledgement may have
//!   happened or not, and the reopened shard decides which (the model follows it);
//! - no operation fails and nothing panics — except in rounds that inject EIO into writes or
//!   syncs (`FaultyStorage` over the memory): there the failed operations count as cut, and
//!   the poisoned shard must come back whole when reopened.
//!
//! Scenarios vary the device (512 or 4096-byte alignment), the write depth of segment
//! preparation, a commit window (virtual time), and background compaction.
//!
//! A proptest drives random sequences of rounds; a seeded sweep runs a fixed set (300 seeds;
//! `PORCUPINE_MEMORY_CRASH_SEEDS` and `PORCUPINE_MEMORY_CRASH_FIRST_SEED` choose others). Both
//! run in seconds: the executor's clock is virtual, the disk is memory.

mod common;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

use common::{body_for, small_config};
use porcupine_engine::storage::FaultyStorage;
use porcupine_engine::{
    EngineConfig, EngineError, Filing, MemoryStorage, PlainExecutor, Shard, Storage,
};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const DIR: &str = "/data/shard-0";
const USERS: u128 = 5;

fn user_of(id: u128) -> String {
    format!("user{}@mem", id % USERS)
}

/// A message as the model knows it.
#[derive(Clone, Copy, Debug)]
struct Msg {
    len: usize,
    flags: u32,
}

/// What was acknowledged, and what was under way when the power went.
#[derive(Clone, Debug, Default)]
struct Model {
    next_id: u128,
    /// Acknowledged puts not (yet) deleted.
    present: BTreeMap<u128, Msg>,
    /// Acknowledged deletes.
    deleted: BTreeSet<u128>,
    /// Puts submitted, not acknowledged.
    putting: BTreeMap<u128, Msg>,
    /// Deletes submitted, not acknowledged (of present messages).
    deleting: BTreeSet<u128>,
    /// Flag updates submitted, not acknowledged: id → the new flags.
    flagging: BTreeMap<u128, u32>,
    acked_ops: u64,
    /// Over the scenario: rounds cut before they finished, reopenings that cut a torn tail or
    /// started from a checkpoint, segments compacted, most segments seen.
    cut_rounds: u64,
    truncated: u64,
    from_checkpoint: u64,
    compacted: u64,
    /// Segments made from compacted ones (their old records still on the "disk").
    recycled: u64,
    /// Zeros written ahead of the log into created segments, while the log writes there too.
    zeroed_bytes: u64,
    segments_max: usize,
    poisoned: u64,
}

/// One round's settings.
#[derive(Clone, Copy, Debug)]
struct Round {
    /// Operations per client.
    ops: usize,
    /// When the power goes, in thousandths of the round's expected length in task polls
    /// (about 4 per operation of each of the 4 clients); `None`: the round ends on its own first.
    cut: Option<u16>,
    /// Torn power loss (a seed) or a clean one (only what was synced).
    torn: Option<u64>,
    /// Close the shard cleanly if the round finishes before the cut.
    close: bool,
    /// Damage the index checkpoint after the power cut (a bad sector): the next open must
    /// rebuild everything from the log, and come to the same answer.
    damage_checkpoint: bool,
    /// Once the shard is open and checked, fail every write (or sync) after this many.
    fault: Option<Fault>,
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    WritesBeforeEio(u64),
    SyncsBeforeEio(u64),
}

/// A scenario's device and engine settings.
#[derive(Clone, Copy, Debug)]
struct Setup {
    alignment: usize,
    background_compaction: bool,
    io_depth: usize,
    commit_window: bool,
}

impl Setup {
    fn of(seed: u64) -> Self {
        Self {
            alignment: if seed % 2 == 0 { 512 } else { 4096 },
            background_compaction: seed % 3 == 0,
            io_depth: if seed % 5 == 0 { 4 } else { 1 },
            commit_window: seed % 7 == 0,
        }
    }
}

fn config(setup: Setup) -> EngineConfig {
    let mut config = small_config();
    config.checkpoint_every_bytes = 24 << 10;
    config.read_cache_bytes = 16 << 10;
    config.compaction.live_fraction_min = 0.6;
    config.io_depth = setup.io_depth;
    if setup.background_compaction {
        config.compaction.check_interval = Duration::from_millis(30);
    }
    if setup.commit_window {
        config.commit_window = Duration::from_millis(1);
    }
    config
}

/// Polls every future to completion (on the caller's task).
async fn join_all(mut futures: Vec<Pin<Box<dyn Future<Output = ()> + '_>>>) {
    std::future::poll_fn(|cx| {
        futures.retain_mut(|f| f.as_mut().poll(cx).is_pending());
        if futures.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await
}

/// Checks a reopened shard against the model, then settles what was under way (all at once at
/// the end: a power cut in the middle of this leaves the model as it was).
async fn verify<S: Storage>(shard: &Shard<S>, model: &RefCell<Model>) {
    let mut m = model.borrow().clone();
    // Nothing that was never put, nothing deleted and acknowledged.
    for u in 0..USERS {
        let user = format!("user{u}@mem");
        for entry in shard.messages(&user) {
            let id = entry.id;
            assert_eq!(user_of(id), user, "message {id} under the wrong user");
            assert!(
                !m.deleted.contains(&id),
                "acknowledged delete of {id} came back"
            );
            assert!(
                m.present.contains_key(&id) || m.putting.contains_key(&id),
                "message {id} was never put"
            );
        }
    }
    for id in &m.deleted {
        assert!(
            shard.message(&user_of(*id), *id).is_none(),
            "{id} resurrected"
        );
    }
    // Acknowledged puts are there, unless a delete of them was under way.
    let present: Vec<(u128, Msg)> = m.present.iter().map(|(id, msg)| (*id, *msg)).collect();
    for (id, msg) in present {
        let user = user_of(id);
        let Some(entry) = shard.message(&user, id) else {
            assert!(m.deleting.remove(&id), "acknowledged put of {id} lost");
            m.present.remove(&id);
            m.deleted.insert(id);
            m.flagging.remove(&id);
            continue;
        };
        m.deleting.remove(&id);
        let flags = match m.flagging.remove(&id) {
            Some(new) if entry.flags == new => new,
            _ => msg.flags,
        };
        assert_eq!(entry.flags, flags, "flags of {id}");
        // Flags were always set with the filing made from them (compaction carries it too).
        assert_eq!(entry.filing, filing_of(flags), "filing of {id}");
        m.present.insert(id, Msg { flags, ..msg });
        let stored = shard.read_message(&user, id).await.expect("read");
        assert_eq!(stored.body(), &body_for(id, msg.len)[..], "body of {id}");
    }
    // Puts under way: there (with their body) or not, as the reopened shard says.
    for (id, msg) in std::mem::take(&mut m.putting) {
        let user = user_of(id);
        if shard.message(&user, id).is_some() {
            let stored = shard.read_message(&user, id).await.expect("read");
            assert_eq!(stored.body(), &body_for(id, msg.len)[..], "body of {id}");
            m.present.insert(id, msg);
        }
    }
    assert!(m.deleting.is_empty() && m.flagging.is_empty());
    assert_eq!(shard.stats().messages, m.present.len() as u64);
    assert!(shard.stats().poisoned.is_none());
    *model.borrow_mut() = m;
}

/// An operation failed: fine only where faults are injected, and only as a disk error (or
/// the poisoned shard refusing); the client stops and the operation stays under way.
fn failed(error: EngineError, faults: bool, what: &str) {
    let expected = matches!(
        error,
        EngineError::Io { .. } | EngineError::Poisoned { .. } | EngineError::NoSpace { .. }
    );
    assert!(faults && expected, "{what}: {error}");
}

/// The filing set with `flags` (none for a message never flagged).
fn filing_of(flags: u32) -> Filing {
    if flags == 0 {
        return Filing::default();
    }
    Filing {
        folder: flags % 7,
        uid: flags,
        modseq: u64::from(flags) * 3,
        date: -i64::from(flags),
    }
}

/// One client: a random mix of puts, deletes, flag updates, reads, checkpoints, compactions.
async fn client<S: Storage>(
    shard: &Shard<S>,
    model: &RefCell<Model>,
    mut rng: StdRng,
    ops: usize,
    faults: bool,
) {
    for _ in 0..ops {
        let roll = rng.gen_range(0..100);
        let pick = |m: &Model, rng: &mut StdRng| {
            let ids: Vec<u128> = m
                .present
                .keys()
                .filter(|id| !m.deleting.contains(id) && !m.flagging.contains_key(id))
                .copied()
                .collect();
            (!ids.is_empty()).then(|| ids[rng.gen_range(0..ids.len())])
        };
        if roll < 50 {
            let len = if rng.gen_bool(0.1) {
                rng.gen_range(8_000..30_000)
            } else {
                rng.gen_range(0..2_000)
            };
            let id = {
                let mut m = model.borrow_mut();
                m.next_id += 1;
                let id = m.next_id;
                m.putting.insert(id, Msg { len, flags: 0 });
                id
            };
            let put = shard
                .append_message(&user_of(id), id, &body_for(id, len), 0)
                .await;
            if let Err(error) = put {
                return failed(error, faults, "append");
            }
            let mut m = model.borrow_mut();
            let msg = m.putting.remove(&id).expect("putting");
            m.present.insert(id, msg);
            m.acked_ops += 1;
        } else if roll < 75 {
            let Some(id) = pick(&model.borrow(), &mut rng) else {
                continue;
            };
            model.borrow_mut().deleting.insert(id);
            if let Err(error) = shard.delete_message(&user_of(id), id).await {
                return failed(error, faults, "delete");
            }
            let mut m = model.borrow_mut();
            m.deleting.remove(&id);
            m.present.remove(&id);
            m.deleted.insert(id);
            m.acked_ops += 1;
        } else if roll < 85 {
            let Some(id) = pick(&model.borrow(), &mut rng) else {
                continue;
            };
            let flags = rng.gen_range(1..1000);
            model.borrow_mut().flagging.insert(id, flags);
            if let Err(error) = shard
                .set_filing(&user_of(id), id, flags, filing_of(flags))
                .await
            {
                return failed(error, faults, "set flags");
            }
            let mut m = model.borrow_mut();
            m.flagging.remove(&id);
            if let Some(msg) = m.present.get_mut(&id) {
                msg.flags = flags;
            }
            m.acked_ops += 1;
        } else if roll < 95 {
            let Some(id) = pick(&model.borrow(), &mut rng) else {
                continue;
            };
            let len = model.borrow().present[&id].len;
            match shard.read_message(&user_of(id), id).await {
                Ok(stored) => assert_eq!(stored.body(), &body_for(id, len)[..]),
                // Deleted meanwhile by another client.
                Err(EngineError::NotFound) => {
                    let m = model.borrow();
                    assert!(m.deleting.contains(&id) || m.deleted.contains(&id));
                }
                Err(error) => panic!("read {id}: {error}"),
            }
        } else if roll < 98 {
            if let Err(error) = shard.checkpoint().await {
                return failed(error, faults, "checkpoint");
            }
        } else {
            match shard.compact_once().await {
                Ok(_) | Err(EngineError::Busy { .. }) => {}
                Err(error) => return failed(error, faults, "compaction"),
            }
        }
    }
}

/// Runs rounds of work, each cut by a power loss, and a last reopening to check.
fn scenario(seed: u64, rounds: &[Round], setup: Setup) -> Model {
    let model = RefCell::new(Model::default());
    let mut memory = MemoryStorage::with_alignment(setup.alignment);
    let config = config(setup);
    for (r, round) in rounds.iter().enumerate() {
        let executor = PlainExecutor::seeded(seed ^ ((r as u64) << 32));
        let storage = FaultyStorage::new(memory.clone());
        let work = async {
            let (shard, report) =
                Shard::open(storage.clone(), Path::new(DIR), config.clone(), "mem")
                    .await
                    .expect("open");
            note_recovery(&model, &report);
            verify(&shard, &model).await;
            match round.fault {
                Some(Fault::WritesBeforeEio(n)) => storage.plan.writes_before_eio.set(Some(n)),
                Some(Fault::SyncsBeforeEio(n)) => storage.plan.syncs_before_eio.set(Some(n)),
                None => {}
            }
            let faults = round.fault.is_some();
            let clients: Vec<Pin<Box<dyn Future<Output = ()> + '_>>> = (0..4u64)
                .map(|c| {
                    let rng = StdRng::seed_from_u64(seed.wrapping_mul(31) ^ ((r as u64) << 8) ^ c);
                    Box::pin(client(&shard, &model, rng, round.ops, faults)) as Pin<Box<_>>
                })
                .collect();
            join_all(clients).await;
            {
                let mut m = model.borrow_mut();
                m.compacted += shard.metrics().compacted_segments;
                m.recycled += shard.metrics().recycled_segments;
                m.zeroed_bytes += shard.metrics().zeroed_bytes;
                m.segments_max = m.segments_max.max(shard.stats().segments);
                m.poisoned += u64::from(shard.stats().poisoned.is_some());
            }
            if round.close {
                if let Err(error) = shard.close().await {
                    failed(error, faults, "close");
                }
            }
        };
        let expected = 40 + 4 * 4 * round.ops as u64;
        let budget = round
            .cut
            .map_or(u64::MAX, |permille| expected * u64::from(permille) / 1000);
        let finished = executor.run_for(work, budget);
        // The power goes: every task stops where it stood.
        drop(executor);
        if finished.is_none() {
            model.borrow_mut().cut_rounds += 1;
        }
        memory = match round.torn {
            Some(torn) => memory.power_loss_seeded(torn),
            None => memory.power_loss(),
        };
        let checkpoint = Path::new(DIR).join(porcupine_engine::checkpoint::CHECKPOINT_FILE);
        if round.damage_checkpoint && memory.contents(&checkpoint).is_some() {
            memory.damage(&checkpoint, 100, b"bad sector");
        }
    }
    let executor = PlainExecutor::new();
    executor.run(async {
        let (shard, report) = Shard::open(memory.clone(), Path::new(DIR), config.clone(), "mem")
            .await
            .expect("open");
        note_recovery(&model, &report);
        verify(&shard, &model).await;
        shard.close().await.expect("close");
    });
    model.into_inner()
}

fn note_recovery(model: &RefCell<Model>, report: &porcupine_engine::RecoveryReport) {
    let mut m = model.borrow_mut();
    m.truncated += u64::from(report.truncated.is_some());
    m.from_checkpoint += u64::from(report.from_checkpoint);
}

fn random_rounds(seed: u64) -> Vec<Round> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..rng.gen_range(1..6))
        .map(|_| Round {
            ops: rng.gen_range(0..60),
            cut: rng.gen_bool(0.85).then(|| rng.gen_range(0..1000)),
            torn: rng.gen_bool(0.7).then(|| rng.gen()),
            close: rng.gen_bool(0.3),
            damage_checkpoint: rng.gen_bool(0.2),
            fault: match rng.gen_range(0..10) {
                0 => Some(Fault::WritesBeforeEio(rng.gen_range(0..40))),
                1 => Some(Fault::SyncsBeforeEio(rng.gen_range(0..40))),
                _ => None,
            },
        })
        .collect()
}

#[test]
fn a_shard_runs_on_memory_storage_without_io_uring() {
    let storage = MemoryStorage::new();
    let executor = PlainExecutor::new();
    executor.run(async {
        let (shard, report) =
            Shard::open(storage.clone(), Path::new(DIR), config(Setup::of(1)), "mem")
                .await
                .unwrap();
        assert_eq!(report.segments, 1);
        for id in 1..=50u128 {
            shard
                .append_message(&user_of(id), id, &body_for(id, 700), 0)
                .await
                .unwrap();
        }
        shard.delete_message(&user_of(7), 7).await.unwrap();
        let stored = shard.read_message(&user_of(8), 8).await.unwrap();
        assert_eq!(stored.body(), &body_for(8, 700)[..]);
        shard.close().await.unwrap();
    });
    assert_eq!(
        storage.unsynced_bytes(),
        0,
        "a closed shard has synced everything"
    );
    // Only what was synced survives: after a clean close, everything.
    let storage = storage.power_loss();
    PlainExecutor::new().run(async {
        let (shard, report) = Shard::open(storage, Path::new(DIR), config(Setup::of(1)), "mem")
            .await
            .unwrap();
        assert!(report.from_checkpoint);
        assert_eq!(shard.stats().messages, 49);
        assert!(shard.message(&user_of(7), 7).is_none());
    });
}

#[test]
fn acknowledged_work_survives_power_cuts_seeded_sweep() {
    let seeds: u64 = std::env::var("PORCUPINE_MEMORY_CRASH_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let first: u64 = std::env::var("PORCUPINE_MEMORY_CRASH_FIRST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut total = Model::default();
    for seed in first..first + seeds {
        let model = scenario(seed, &random_rounds(seed), Setup::of(seed));
        total.acked_ops += model.acked_ops;
        total.poisoned += model.poisoned;
        total.cut_rounds += model.cut_rounds;
        total.truncated += model.truncated;
        total.from_checkpoint += model.from_checkpoint;
        total.compacted += model.compacted;
        total.recycled += model.recycled;
        total.zeroed_bytes += model.zeroed_bytes;
        total.segments_max = total.segments_max.max(model.segments_max);
    }
    eprintln!(
        "sweep: {} operations acknowledged, {} rounds cut, {} torn tails cut, {} reopenings \
         from a checkpoint, {} segments compacted, {} recycled, {} bytes zeroed ahead, up to {} \
         segments, {} shards poisoned",
        total.acked_ops,
        total.cut_rounds,
        total.truncated,
        total.from_checkpoint,
        total.compacted,
        total.recycled,
        total.zeroed_bytes,
        total.segments_max,
        total.poisoned
    );
    // The sweep must reach what it is for.
    assert!(total.acked_ops > 1_000, "{total:?}");
    assert!(
        total.cut_rounds > 50 && total.truncated > 5 && total.from_checkpoint > 20,
        "{total:?}"
    );
    assert!(total.compacted > 0 && total.poisoned > 5, "{total:?}");
    // Power cuts while recycled segments are written: their earlier life must never pass for
    // records (the checks above would find it as a message never put or one deleted).
    assert!(total.recycled > 10, "{total:?}");
    // And while created segments are zeroed ahead of the log in idle moments.
    assert!(total.zeroed_bytes > 1 << 20, "{total:?}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn acknowledged_work_survives_power_cuts(
        seed in any::<u64>(),
        rounds in prop::collection::vec(
            (
                0usize..60,
                prop::option::weighted(0.85, 0u16..1000),
                prop::option::weighted(0.7, any::<u64>()),
                any::<bool>(),
                prop::bool::weighted(0.2),
                prop::option::weighted(0.2, (any::<bool>(), 0u64..40)),
            ),
            1..6,
        ),
        setup in any::<u64>(),
    ) {
        let rounds: Vec<Round> = rounds
            .into_iter()
            .map(|(ops, cut, torn, close, damage_checkpoint, fault)| Round {
                ops,
                cut,
                torn,
                close,
                damage_checkpoint,
                fault: fault.map(|(writes, n)| {
                    if writes { Fault::WritesBeforeEio(n) } else { Fault::SyncsBeforeEio(n) }
                }),
            })
            .collect();
        scenario(seed, &rounds, Setup::of(setup));
    }
}
