//! Mail a deleted user left behind: copies that `user delete` could not reach (a node that
//! was down and held the only copies, or every holder of some). Each core looks over the
//! users with mail on its shards now and then and removes, by the same replicated tombstones
//! as any delete, the messages stored before the user was deleted:
//! - the user's newest profile is a removed one (HLC `R`): their messages up to `R`;
//! - the address was added again: the new profile says when it was deleted before
//!   (`not-before R`, [`super::users`]), and the messages up to `R` are the earlier user's.
//!
//! Messages newer than `R` are left: mail for a user added again is stamped after the
//! removal it saw (the HLC moves past every timestamp a node receives). A node whose clock
//! ran ahead while it was away may keep an old message whose stamp passes `R`; it is the
//! user's to delete then.

use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::time::Duration;

use super::core_call::CoreCall;
use super::core_calls::DeleteHere;
use super::core_context::CoreContext;
use super::imap_authority::is_internal;
use super::users;
use crate::membership::NodeId;

/// The first look, after a start (the membership and the profiles have settled by then).
const FIRST_AFTER: Duration = Duration::from_secs(20);
/// Between looks.
const EVERY: Duration = Duration::from_secs(60);
/// Profiles a core remembers having read.
const READ_KEPT_MAX: usize = 1 << 20;
/// Profiles changed this long before a look's start are looked at again by the next.
const MARGIN_MS: u64 = 60_000;

/// Runs on every core until `stop`.
pub async fn run(context: Rc<CoreContext>, stop: flume::Receiver<()>) {
    let mut read: HashMap<String, (u64, Option<u64>)> = HashMap::new();
    let mut wait = FIRST_AFTER;
    // The first look takes every user with mail here (what this node held while it was
    // away); later ones, the removed users, those whose profile changed since the look
    // before (an address given again), and those whose profile another node sent since (made
    // long ago, perhaps, while this node was cut off), so a look costs little however many
    // users there are.
    let mut since_ms: Option<u64> = None;
    loop {
        if !super::clock::sleep_unless_stopping(&stop, wait).await {
            return;
        }
        wait = EVERY;
        let started_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let removed = sweep(&context, &mut read, since_ms).await;
        // A margin for clocks that differ between members.
        since_ms = Some(started_ms.saturating_sub(MARGIN_MS));
        if removed > 0 {
            tracing::info!(
                removed,
                "removed messages that deleted users left behind on this node"
            );
        }
    }
}

/// One look over this core's shards; the number of messages removed. `read` remembers each
/// user's profile as last read (its HLC, and its `not-before`), so a profile is read again
/// only when it changed. `since_ms`: only removed users and profiles changed since then
/// (`None`: every user with mail).
pub async fn sweep(
    context: &Rc<CoreContext>,
    read: &mut HashMap<String, (u64, Option<u64>)>,
    since_ms: Option<u64>,
) -> u64 {
    let mut removed = 0u64;
    let mut looked = HashSet::new();
    let arrived = context.service.take_profiles_arrived();
    let since_ms = since_ms.filter(|_| arrived.is_some());
    let arrived = arrived.unwrap_or_default();
    let shards: Vec<_> = context.service.shards().all().cloned().collect();
    for shard in &shards {
        let users = match since_ms {
            None => shard.fragment_users(),
            Some(since) => {
                let mut users = shard.users_with_mail_where(|p| {
                    p.is_removed() || porcupine_engine::hlc::millis_of(p.hlc) >= since
                });
                users.extend(arrived.iter().filter(|u| shard.has_messages(u)).cloned());
                users
            }
        };
        for (n, user) in users.into_iter().enumerate() {
            if n % 256 == 0 {
                glommio::yield_if_needed().await;
            }
            if is_internal(&user) || !looked.insert(user.clone()) {
                continue;
            }
            let Some(home) = context.service.shard(&user) else {
                continue;
            };
            // No profile here yet (a member that is still catching up): nothing to judge by.
            let Some(profile_hlc) = home.profile_hlc(&user) else {
                continue;
            };
            let cutoff = if !home.has_live_profile(&user) {
                Some(profile_hlc)
            } else {
                // Only a profile newer than some message here can postdate that message's
                // user: the others need no reading.
                let oldest = shards
                    .iter()
                    .filter_map(|s| s.oldest_message_hlc(&user))
                    .min();
                if oldest.is_none_or(|oldest| oldest > profile_hlc) {
                    continue;
                }
                match read.get(&user) {
                    Some((hlc, not_before)) if *hlc == profile_hlc => *not_before,
                    _ => {
                        let Ok(Some(profile)) = home.read_profile(&user).await else {
                            continue;
                        };
                        let not_before = users::not_before_of(&profile);
                        // A bound on memory, not on correctness: a forgotten one is read again.
                        if read.len() >= READ_KEPT_MAX {
                            read.clear();
                        }
                        read.insert(user.clone(), (profile_hlc, not_before));
                        not_before
                    }
                }
            };
            let Some(cutoff) = cutoff else {
                continue;
            };
            let mut ids = Vec::new();
            let mut holders: Vec<NodeId> = Vec::new();
            for s in &shards {
                for m in s.messages(&user).into_iter().filter(|m| m.hlc <= cutoff) {
                    ids.push(m.id);
                    for &node in m.replicas.as_slice() {
                        if !holders.contains(&u64::from(node)) {
                            holders.push(u64::from(node));
                        }
                    }
                }
            }
            if ids.is_empty() {
                continue;
            }
            let count = ids.len() as u64;
            let delete = DeleteHere {
                user: user.clone(),
                ids,
                fragments: holders,
            };
            match delete.serve(&context.service).await {
                Ok(()) => removed += count,
                Err(error) => {
                    tracing::warn!(%user, ?error, "could not remove a deleted user's messages; trying again later")
                }
            }
        }
    }
    removed
}
