//! Core 0's anti-entropy rounds ([`crate::anti_entropy`]): every `--anti-entropy-s` seconds
//! this node compares, with the next live member in turn, the digest of what each holds for
//! the other; for the buckets that differ it fetches the member's items, and pushes each copy
//! the member lacks (a push that never arrived, a record the member lost to damage). The
//! member repairs the other direction in its own rounds.
//!
//! Cost per round: one pass over every core's in-memory index here and on the member (no log
//! scan), two digests of [`BUCKETS`] × 12 bytes on the wire, and the items of at most
//! [`BUCKETS_PER_ROUND_MAX`] differing buckets.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use super::cluster_driver::PEER_TIMEOUT;
use super::core_calls::{DigestHeldFor, ItemsHeldFor, PushMissing};
use super::core_context::CoreContext;
use super::metrics;
use crate::anti_entropy::{
    differing, missing_there, Digest, BUCKETS, BUCKETS_PER_ROUND_MAX, ITEMS_PER_ANSWER_MAX,
};
use crate::membership::NodeId;
use crate::rpc::{HeldDigest, HeldItems};

/// Pushes of missing copies in flight at once during a round.
const PUSHES_IN_FLIGHT: usize = 32;

/// Runs rounds until the node stops.
pub async fn run(context: Rc<CoreContext>, stop: flume::Receiver<()>) {
    let every = Duration::from_secs(context.config.anti_entropy_s.max(1));
    let mut turn = 0usize;
    // Where the last round with a member stopped, when differences exceeded one round.
    let mut resume_after = std::collections::HashMap::<NodeId, u16>::new();
    loop {
        if !super::clock::sleep_unless_stopping(&stop, every).await {
            return;
        }
        let me = context.cluster.me.id;
        let view = context.cluster.view.load_full();
        let others: Vec<_> = view.members.iter().filter(|m| m.id != me).collect();
        if others.is_empty() {
            continue;
        }
        turn = turn.wrapping_add(1);
        let member = others[turn % others.len()];
        let from = resume_after.get(&member.id).copied().unwrap_or(u16::MAX);
        match round(&context, member.id, &member.addr, from).await {
            Ok(Some(last)) => {
                resume_after.insert(member.id, last);
            }
            Ok(None) => {
                resume_after.remove(&member.id);
            }
            Err(why) => tracing::debug!(peer = member.id, why, "anti-entropy round given up"),
        }
    }
}

/// One round with `peer`; the last bucket looked at when there were more differences than
/// one round takes.
async fn round(
    context: &Rc<CoreContext>,
    peer: NodeId,
    addr: &str,
    from: u16,
) -> Result<Option<u16>, &'static str> {
    let me = context.cluster.me.id;
    let metrics = &context.metrics;
    metrics::add(&metrics.anti_entropy_rounds, 1);
    let theirs = context
        .peers
        .call(addr, HeldDigest { from: me }, PEER_TIMEOUT)
        .await
        .map_err(|_| "no digest from the peer")?;
    if !theirs.well_formed() {
        return Err("a malformed digest");
    }
    let mut mine = Digest::default();
    for part in context.call_each(DigestHeldFor { node: peer }).await {
        mine.merge(&part.ok_or("a core did not answer")?);
    }
    let candidates = differing(&mine, &theirs, from, BUCKETS);
    if candidates.is_empty() {
        return Ok(None);
    }
    // As many differing buckets as one answer holds (by the peer's own counts).
    let mut buckets = Vec::new();
    let mut expected = 0usize;
    for bucket in &candidates {
        let count = theirs.buckets[usize::from(*bucket)].1 as usize;
        if !buckets.is_empty()
            && (buckets.len() == BUCKETS_PER_ROUND_MAX
                || expected.saturating_add(count) > ITEMS_PER_ANSWER_MAX)
        {
            break;
        }
        expected = expected.saturating_add(count);
        buckets.push(*bucket);
    }
    metrics::add(
        &metrics.anti_entropy_buckets_differing,
        buckets.len() as u64,
    );
    let held = context
        .peers
        .call(
            addr,
            HeldItems {
                from: me,
                buckets: buckets.clone(),
            },
            PEER_TIMEOUT,
        )
        .await
        .map_err(|_| "no items from the peer")?;
    if held.truncated {
        // What it holds beyond the answer is unknown: pushing "missing" copies now would
        // push copies it has. The bucket is too large for one answer; it waits.
        return Err("the peer's answer was truncated");
    }
    let asked = ItemsHeldFor {
        node: peer,
        buckets: Arc::new(buckets.clone()),
    };
    let mut items = Vec::new();
    for part in context.call_each(asked).await {
        items.extend(part.ok_or("a core did not answer")?);
    }
    let missing = missing_there(&items, &held.items);
    if !missing.is_empty() {
        tracing::info!(
            peer,
            copies = missing.len(),
            buckets = buckets.len(),
            "anti-entropy: pushing copies a replica lacks"
        );
    }
    for chunk in missing.chunks(PUSHES_IN_FLIGHT) {
        let pushes: Vec<_> = chunk
            .iter()
            .map(|item| {
                let (context, user, id) = (context.clone(), item.user.clone(), item.id);
                glommio::spawn_local(async move {
                    context.call(PushMissing { user, id, to: peer }).await
                })
            })
            .collect();
        for push in pushes {
            if push.await {
                metrics::add(&metrics.anti_entropy_repairs, 1);
            }
        }
    }
    let more = candidates.len() > buckets.len();
    Ok(buckets.last().copied().filter(|_| more))
}
