//! The healing edge of one core: once the membership has declared a node dead
//! (`--dead-after`), every copy on this core's shards whose replica set names it is surveyed,
//! and those this node is to make again ([`crate::healing::plan`]) are pushed to new replicas
//! at a bounded rate (`--heal-rate`, copies per second per node), while the node keeps
//! serving. Each survey also counts the copies here that are still under-replicated, for
//! `/status` and `/metrics`.
//!
//! Surveys walk the shards' in-memory indexes (no log scan): at once when the dead set
//! changes, then every [`SURVEY_EVERY`] while there is work, [`SURVEY_IDLE`] when there is
//! none.

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use porcupine_engine::UpdateKind;

use super::clock::{now_ms, sleep_unless_stopping};
use super::metrics;
use super::replicas::{pending_update, put_update, CoreReplication};
use crate::healing::{plan, Candidate, Cluster, Plan};
use crate::membership::NodeId;
use crate::replication::Update;

/// Between surveys while copies remain to be made (the under-replicated count an operator
/// watches is as fresh as the last survey).
const SURVEY_EVERY: Duration = Duration::from_millis(250);
/// Between surveys once nothing is left to do (a dead node stays dead until it returns).
const SURVEY_IDLE: Duration = Duration::from_secs(30);
/// Copies being made again at once on one core.
const HEALS_IN_FLIGHT: usize = 16;

/// What one survey found.
#[derive(Default)]
struct Survey {
    /// Copies here with too few holders that are not dead.
    under_replicated: u64,
    /// Of those, the ones this node makes again: (update, flags).
    to_heal: Vec<(Update, u32)>,
}

/// Surveys and heals until the node stops.
pub async fn run(replication: Rc<CoreReplication>, stop: flume::Receiver<()>) {
    let context = replication.context.clone();
    let cores = context.config.cores.max(1) as f64;
    let per_core_rate = (f64::from(context.config.heal_rate.max(1)) / cores).max(0.01);
    let spacing = Duration::from_secs_f64(1.0 / per_core_rate);
    let pushes_max = context.config.replication.pushes_in_flight_max.max(2) / 2;
    let mut reported = 0u64;
    let healing = Rc::new(std::cell::Cell::new(0usize));
    let mut surveyed: Option<Arc<Vec<NodeId>>> = None;
    let mut next_survey = Instant::now();
    loop {
        let stopped = !sleep_unless_stopping(&stop, Duration::from_millis(200)).await;
        if stopped {
            break;
        }
        let dead = context.cluster.dead.load_full();
        let changed = surveyed.as_ref().is_none_or(|s| !Arc::ptr_eq(s, &dead));
        if !changed && Instant::now() < next_survey {
            continue;
        }
        surveyed = Some(dead.clone());
        if dead.is_empty() || !context.cluster.has_majority() {
            set_gauge(&context.metrics.copies_under_replicated, &mut reported, 0);
            next_survey = Instant::now() + SURVEY_IDLE;
            continue;
        }
        let survey = survey(&replication, &dead);
        set_gauge(
            &context.metrics.copies_under_replicated,
            &mut reported,
            survey.under_replicated,
        );
        let work = !survey.to_heal.is_empty();
        if work {
            tracing::info!(
                copies = survey.to_heal.len(),
                under_replicated = survey.under_replicated,
                dead = ?dead,
                "healing: making copies of a dead node's mail again"
            );
        }
        for (update, flags) in survey.to_heal {
            // The dead set changed, the majority was lost, or the node is stopping: survey
            // again from the start.
            if !Arc::ptr_eq(&context.cluster.dead.load(), &dead) || !context.cluster.has_majority()
            {
                break;
            }
            while replication.pushes_in_flight() >= pushes_max || healing.get() >= HEALS_IN_FLIGHT {
                if !sleep_unless_stopping(&stop, Duration::from_millis(5)).await {
                    return;
                }
            }
            // Several at once, so that their writes share group commits; the spacing keeps
            // the rate.
            healing.set(healing.get() + 1);
            let (edge, context, healing) = (replication.clone(), context.clone(), healing.clone());
            glommio::spawn_local(async move {
                match edge.heal(update, flags).await {
                    Ok(()) => metrics::add(&context.metrics.copies_healed, 1),
                    Err(error) => {
                        metrics::add(&context.metrics.heal_failures, 1);
                        tracing::warn!(?error, "healing: cannot make a copy again");
                    }
                }
                healing.set(healing.get().saturating_sub(1));
            })
            .detach();
            if !sleep_unless_stopping(&stop, spacing).await {
                return;
            }
        }
        next_survey = Instant::now() + if work { SURVEY_EVERY } else { SURVEY_IDLE };
    }
}

/// Moves this core's share of a node-wide gauge from what it reported last to `value`.
fn set_gauge(gauge: &std::sync::atomic::AtomicU64, reported: &mut u64, value: u64) {
    if value >= *reported {
        gauge.fetch_add(value - *reported, Ordering::Relaxed);
    } else {
        gauge.fetch_sub(*reported - value, Ordering::Relaxed);
    }
    *reported = value;
}

/// Plans every copy on this core's shards that names a dead node.
fn survey(replication: &CoreReplication, dead: &[NodeId]) -> Survey {
    let context = &replication.context;
    let view = context.cluster.view.load();
    let live: Vec<NodeId> = view.members.iter().map(|m| m.id).collect();
    let now = now_ms();
    let me = context.cluster.me.id;
    let candidates: Vec<Candidate> = live
        .iter()
        .map(|&node| {
            let heard = context.cluster.loads.get(node, now);
            Candidate {
                node,
                load: heard.map_or(0, |h| h.load),
                full: if node == me {
                    context.cluster.load.is_full(now)
                } else {
                    heard.is_some_and(|h| h.full)
                },
            }
        })
        .collect();
    let cluster = Cluster {
        me,
        live: &live,
        dead,
        target: context.config.replicas,
    };
    let dead32: Vec<u32> = dead.iter().map(|&n| n as u32).collect();
    let mut found = Survey::default();
    let consider = |update: Update, flags: u32, found: &mut Survey| {
        let tie = porcupine_engine::record::user_key(&update.user) ^ (update.id as u64);
        let planned = plan(&update.replicas, cluster, &candidates, tie);
        if planned.under_replicated() {
            found.under_replicated += 1;
        }
        if let Plan::Heal { replicas, .. } = planned {
            found.to_heal.push((Update { replicas, ..update }, flags));
        }
    };
    for shard in replication.shards.all() {
        for (user, entry) in shard.copies_naming(&dead32) {
            let update = put_update(user, &entry);
            consider(update, entry.flags, &mut found);
        }
        for pending in shard.pending_updates() {
            if pending.kind != UpdateKind::Delete
                || !pending
                    .replicas
                    .as_slice()
                    .iter()
                    .any(|n| dead32.contains(n))
            {
                continue;
            }
            // A tombstone healed before is widened in the replicator only (its record keeps
            // the set it was written with): plan from the wider set.
            let mut update = pending_update(&pending);
            if let Some(wider) =
                replication.pending_replicas(&pending.user, pending.id, pending.hlc)
            {
                update.replicas = wider;
            }
            consider(update, 0, &mut found);
        }
    }
    found
}
