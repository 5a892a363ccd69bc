//! The IMAP authority's edge: runs a user's [`Mailboxes`] machine on the user's core of the
//! node that manages the user (the bucket manager), one operation at a time per user, and makes
//! what it decides durable before answering: the mailbox list (a profile, on every node), each
//! message's IMAP state (with every copy of it), expunges (tombstones, as POP3 deletes).
//!
//! Sessions on any node reach it through [`call`]: in place or across cores on the managing
//! node, by `ImapRequest` from other nodes. Its state is soft: built from the stored mailbox
//! list and a listing of the user's fragments, and built again when the membership changes
//! (another node may have been the authority meanwhile) or after a quiet minute.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use porcupine_engine::{Filing, MessageEntry};

use super::core_calls::{DeleteHere, FileHere, ListHere, PutProfile, ReadMessage, ReadProfile};
use super::core_context::CoreContext;
use super::delivery::{PATIENCE, RETRY_PAUSE};
use crate::mailbox::{
    FlagChange, ImapAnswer, ImapOp, Listed, MailboxProfile, Mailboxes, MessageMeta, Persist,
    WireFolder, WireFolderInfo,
};
use crate::membership::{Epoch, NodeId};
use crate::rpc::{
    CallError, DeleteMessages, FetchMessage, FileMessages, ImapRequest, ListFragment, UserFragments,
};

/// A listing of the copies older than this is taken again before a poll is answered.
const REFRESH_AFTER: Duration = Duration::from_millis(200);
/// An authority's state unused this long is dropped (built again when next needed).
const IDLE_DROP: Duration = Duration::from_secs(60);
/// Authorities one core keeps at most (the least recently used are dropped).
const AUTHORITIES_MAX: usize = 10_000;

/// The profile name under which a user's mailbox list is stored.
pub fn profile_name(user: &str) -> String {
    format!("\u{1}imap:{user}")
}

/// Whether a profile name is one of ours, not a user.
pub fn is_internal(name: &str) -> bool {
    name.starts_with('\u{1}')
}

/// A message's IMAP state as a listing reports it (`None`: never filed).
pub fn meta_of(entry: &MessageEntry) -> Option<MessageMeta> {
    (entry.filing != Filing::default()).then_some(MessageMeta {
        folder: entry.filing.folder,
        uid: entry.filing.uid,
        flags: entry.flags,
        modseq: entry.filing.modseq,
        date: entry.filing.date,
    })
}

/// The engine's filing of a message's IMAP state.
pub fn filing_of(meta: &MessageMeta) -> Filing {
    Filing {
        folder: meta.folder,
        uid: meta.uid,
        modseq: meta.modseq,
        date: meta.date,
    }
}

/// One user's authority on this core.
#[derive(Debug)]
pub struct Authority {
    state: RefCell<Option<(Mailboxes, Epoch)>>,
    /// One operation at a time.
    busy: Cell<bool>,
    waiters: RefCell<Vec<std::task::Waker>>,
    refreshed: Cell<Option<Instant>>,
    used: Cell<Instant>,
    /// A newer authority elsewhere fenced this one off until this node's view reaches it.
    fenced: Cell<Option<Epoch>>,
}

impl Authority {
    fn new() -> Self {
        Self {
            state: RefCell::new(None),
            busy: Cell::new(false),
            waiters: RefCell::new(Vec::new()),
            refreshed: Cell::new(None),
            used: Cell::new(Instant::now()),
            fenced: Cell::new(None),
        }
    }

    async fn lock(self: &Rc<Self>) -> Turn {
        std::future::poll_fn(|cx| {
            if self.busy.get() {
                self.waiters.borrow_mut().push(cx.waker().clone());
                std::task::Poll::Pending
            } else {
                self.busy.set(true);
                std::task::Poll::Ready(())
            }
        })
        .await;
        Turn(self.clone())
    }
}

/// The authority's turn; the next operation may run once it is dropped.
struct Turn(Rc<Authority>);

impl Drop for Turn {
    fn drop(&mut self) {
        self.0.busy.set(false);
        for waker in self.0.waiters.borrow_mut().drain(..) {
            waker.wake();
        }
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Every folder of the user with its messages, after one fresh listing of the copies (what
/// `user show` and export read); `None` if the authority could not answer.
pub async fn every_folder(
    context: &Rc<CoreContext>,
    user: &str,
) -> Option<Vec<(WireFolderInfo, WireFolder)>> {
    let ImapAnswer::Folders(infos) = call(context, user, ImapOp::Folders).await else {
        return None;
    };
    let mut out = Vec::with_capacity(infos.len());
    for (i, info) in infos.into_iter().enumerate() {
        let op = ImapOp::Folder {
            folder: info.name.clone(),
            refresh: i == 0,
        };
        match call(context, user, op).await {
            ImapAnswer::Folder(folder) => out.push((info, folder)),
            // Deleted since it was listed.
            ImapAnswer::NoSuchMailbox => {}
            _ => return None,
        }
    }
    Some(out)
}

/// Runs `op` at the user's authority, wherever it is.
pub async fn call(context: &Rc<CoreContext>, user: &str, op: ImapOp) -> ImapAnswer {
    let shared = &context.cluster;
    let deadline = Instant::now() + PATIENCE;
    loop {
        // A node that has not yet joined, or that sees no majority, would route every user to
        // itself and answer from its own copies, which miss what was expunged while it was away.
        if shared.is_joining() || !shared.has_majority() {
            if Instant::now() >= deadline {
                return ImapAnswer::Unavailable;
            }
            glommio::timer::sleep(RETRY_PAUSE).await;
            continue;
        }
        let view = shared.view.load_full();
        let manager = view.map.manager_of(user);
        let remote = view
            .member(manager)
            .filter(|_| shared.clustered() && manager != shared.me.id);
        let Some(member) = remote else {
            return context
                .call(super::core_calls::ImapCall {
                    user: user.to_owned(),
                    op,
                })
                .await;
        };
        let request = ImapRequest {
            user: user.to_owned(),
            op: op.clone(),
        };
        match context
            .peers
            .call(&member.addr, request, Duration::from_secs(30))
            .await
        {
            Ok(answer) => return answer,
            Err(_) if Instant::now() >= deadline => return ImapAnswer::Unavailable,
            Err(_) => glommio::timer::sleep(RETRY_PAUSE).await,
        }
    }
}

/// Serves `op` for `user` on this core (the user's core on the managing node).
pub async fn serve(context: &Rc<CoreContext>, user: &str, op: ImapOp) -> ImapAnswer {
    let shared = &context.cluster;
    if let ImapOp::Fence { epoch } = op {
        return fence(context, user, epoch).await;
    }
    // A node on a partition's minority side may still think it manages the user while the
    // majority has moved the bucket: it must not give out UIDs the new authority gives too.
    // A node back from a restart is alone in its view until it merges: it too thinks it manages
    // everyone, and its copies miss the expunges made meanwhile (a lone node without peers
    // always holds its majority).
    if shared.is_joining() || !shared.has_majority() {
        return ImapAnswer::Unavailable;
    }
    let authority = {
        let mut all = context.service.imap.borrow_mut();
        if all.len() >= AUTHORITIES_MAX {
            let idle: Vec<String> = all
                .iter()
                .filter(|(_, a)| !a.busy.get() && a.used.get().elapsed() > IDLE_DROP)
                .map(|(u, _)| u.clone())
                .collect();
            for u in idle {
                all.remove(&u);
            }
        }
        all.entry(user.to_owned())
            .or_insert_with(|| Rc::new(Authority::new()))
            .clone()
    };
    let _turn = authority.lock().await;
    authority.used.set(Instant::now());
    if authority
        .fenced
        .get()
        .is_some_and(|fenced| shared.view.load().epoch < fenced)
    {
        return ImapAnswer::Unavailable;
    }
    match run(context, &authority, user, op).await {
        Ok(answer) => answer,
        Err(Unavailable) => {
            // Whatever was half done is built again from what is stored.
            *authority.state.borrow_mut() = None;
            ImapAnswer::Unavailable
        }
    }
}

/// Fences this node's authority for `user` off (see [`ImapOp::Fence`]): waits for the
/// operation under way, forgets the state, refuses operations until the view reaches `epoch`.
async fn fence(context: &Rc<CoreContext>, user: &str, epoch: Epoch) -> ImapAnswer {
    let authority = context
        .service
        .imap
        .borrow_mut()
        .entry(user.to_owned())
        .or_insert_with(|| Rc::new(Authority::new()))
        .clone();
    let _turn = authority.lock().await;
    if authority.fenced.get().is_none_or(|old| old < epoch) {
        authority.fenced.set(Some(epoch));
    }
    *authority.state.borrow_mut() = None;
    ImapAnswer::Done
}

/// Before a new authority builds its state: every other member finishes what it was doing
/// for the user as an authority and stops, so the listing that follows sees all of it. A
/// member that does not answer is asked again until it answers or leaves the view.
async fn fence_others(
    context: &Rc<CoreContext>,
    user: &str,
    epoch: Epoch,
) -> Result<(), Unavailable> {
    let shared = &context.cluster;
    if !shared.clustered() {
        return Ok(());
    }
    let deadline = Instant::now() + PATIENCE;
    let others: Vec<NodeId> = shared
        .view
        .load()
        .members
        .iter()
        .map(|m| m.id)
        .filter(|&id| id != shared.me.id)
        .collect();
    let calls = others.into_iter().map(|node| {
        let context = context.clone();
        let user = user.to_owned();
        async move {
            loop {
                let Some(addr) = member_addr(&context, node) else {
                    return Ok(());
                };
                let request = ImapRequest {
                    user: user.clone(),
                    op: ImapOp::Fence { epoch },
                };
                match context
                    .peers
                    .call(&addr, request, super::cluster_driver::PEER_TIMEOUT)
                    .await
                {
                    Ok(ImapAnswer::Done) => return Ok(()),
                    _ if Instant::now() >= deadline => return Err(Unavailable),
                    _ => glommio::timer::sleep(RETRY_PAUSE).await,
                }
            }
        }
    });
    for result in join_all(calls).await {
        result?;
    }
    Ok(())
}

/// Runs these futures concurrently on this executor; their outputs in order.
async fn join_all<F: std::future::Future + 'static>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: 'static,
{
    let tasks: Vec<_> = futures.map(glommio::spawn_local).collect();
    let mut out = Vec::with_capacity(tasks.len());
    for task in tasks {
        out.push(task.await);
    }
    out
}

/// Storage or a node could not be reached.
#[derive(Debug)]
struct Unavailable;

impl From<CallError> for Unavailable {
    fn from(_: CallError) -> Self {
        Unavailable
    }
}

async fn run(
    context: &Rc<CoreContext>,
    authority: &Rc<Authority>,
    user: &str,
    op: ImapOp,
) -> Result<ImapAnswer, Unavailable> {
    let epoch = context.cluster.view.load().epoch;
    let stale = match &*authority.state.borrow() {
        None => true,
        Some((_, at)) => *at != epoch,
    } || authority
        .refreshed
        .get()
        .is_some_and(|at| at.elapsed() > IDLE_DROP);
    if stale {
        fence_others(context, user, epoch).await?;
        let profile = context
            .call(ReadProfile {
                user: profile_name(user),
            })
            .await
            .map_err(|_| Unavailable)?
            .and_then(|bytes| MailboxProfile::decode(&bytes));
        *authority.state.borrow_mut() = Some((Mailboxes::new(profile, now_secs()), epoch));
        authority.refreshed.set(None);
    }
    let needs_listing = match &op {
        ImapOp::Folder { refresh, .. } => {
            *refresh
                || authority
                    .refreshed
                    .get()
                    .is_none_or(|at| at.elapsed() > REFRESH_AFTER)
        }
        // Every copy that exists must be listed, or one would outlive its user.
        ImapOp::RemoveAll => true,
        ImapOp::Counts { .. } | ImapOp::Copy { .. } => authority
            .refreshed
            .get()
            .is_none_or(|at| at.elapsed() > REFRESH_AFTER),
        _ => authority.refreshed.get().is_none(),
    };
    if needs_listing {
        refresh(context, authority, user).await?;
    }
    let change = |c: u8| match c {
        1 => FlagChange::Add,
        2 => FlagChange::Remove,
        _ => FlagChange::Replace,
    };
    let answer = match op {
        // Served by `serve` before any state is built.
        ImapOp::Fence { .. } => ImapAnswer::Done,
        ImapOp::Folder { folder, .. } => with(authority, |boxes| {
            boxes
                .wire_folder(&folder)
                .map_or_else(ImapAnswer::from, ImapAnswer::Folder)
        }),
        ImapOp::Folders => with(authority, |boxes| ImapAnswer::Folders(boxes.folder_infos())),
        ImapOp::Counts { folders } => with(authority, |boxes| {
            ImapAnswer::Counts(folders.iter().map(|f| boxes.counts(f)).collect())
        }),
        ImapOp::Store {
            folder,
            uids,
            change: how,
            flags,
            keywords,
        } => {
            let decided = with(authority, |boxes| {
                let Some(bits) = boxes.flag_bits(flags, &keywords) else {
                    return Err(ImapAnswer::NotAllowed("too many keywords".into()));
                };
                boxes
                    .store(&folder, &uids, change(how), bits)
                    .map_err(ImapAnswer::from)
            });
            match decided {
                Ok((changed, persist)) => {
                    execute(context, user, persist).await?;
                    with(authority, |boxes| {
                        ImapAnswer::Changed(boxes.wire_ids(&changed))
                    })
                }
                Err(answer) => answer,
            }
        }
        ImapOp::RemoveAll => {
            let (messages, persist) = with(authority, |boxes| boxes.remove_everything(now_secs()));
            execute(context, user, persist).await?;
            ImapAnswer::Removed { messages }
        }
        ImapOp::Expunge { folder, uids } => {
            match with(authority, |boxes| boxes.expunge(&folder, &uids)) {
                Ok((gone, persist)) => {
                    execute(context, user, persist).await?;
                    ImapAnswer::Expunged(gone)
                }
                Err(error) => error.into(),
            }
        }
        ImapOp::AppendMany {
            folder,
            messages,
            uid_validity,
            uid_next,
        } => {
            if with(authority, |boxes| boxes.folder_view(&folder).is_err()) {
                return Ok(ImapAnswer::NoSuchMailbox);
            }
            // An import that brings its UIDs keeps them where the folder allows.
            let keep_uids = uid_validity
                .is_some_and(|v| with(authority, |boxes| boxes.adopt_validity(&folder, v)));
            let mut bits = Vec::with_capacity(messages.len());
            for m in &messages {
                match with(authority, |boxes| boxes.flag_bits(m.flags, &m.keywords)) {
                    Some(b) => bits.push(b),
                    None => return Ok(ImapAnswer::NotAllowed("too many keywords".into())),
                }
            }
            for m in &messages {
                with(authority, |boxes| boxes.expect(m.id));
            }
            // Every copy is written at once: the writes share the shards' group commits.
            let tasks: Vec<_> = messages
                .iter()
                .map(|m| {
                    let (context, user, id) = (context.clone(), user.to_owned(), m.id);
                    let message = Arc::new(m.message.clone());
                    glommio::spawn_local(async move {
                        super::delivery::deliver_to_holders(&context, &user, id, message).await
                    })
                })
                .collect();
            let mut stored = Vec::with_capacity(tasks.len());
            for task in tasks {
                stored.push(task.await);
            }
            if stored.iter().any(Result::is_err) {
                for m in &messages {
                    with(authority, |boxes| boxes.unexpect(m.id));
                }
                return Err(Unavailable);
            }
            let mut persist_all = Vec::new();
            let mut uids = Vec::with_capacity(messages.len());
            let mut validity = 0;
            for ((m, holders), bits) in messages.iter().zip(stored).zip(bits) {
                let holders = holders.map_err(|_| Unavailable)?;
                let placed = with(authority, |boxes| {
                    boxes.place_as(
                        &folder,
                        Listed {
                            id: m.id,
                            size: m.message.len() as u64,
                            delivered: now_secs() as i64,
                            holders,
                            meta: None,
                            listed_by: None,
                        },
                        bits,
                        m.date,
                        m.uid.filter(|_| keep_uids),
                    )
                });
                match placed {
                    Ok((uid_validity, uid, persist)) => {
                        validity = uid_validity;
                        uids.push(uid);
                        persist_all.extend(persist);
                    }
                    Err(error) => {
                        execute(context, user, persist_all).await?;
                        return Ok(error.into());
                    }
                }
            }
            if let Some(next) = uid_next.filter(|_| keep_uids) {
                persist_all.extend(with(authority, |boxes| boxes.raise_uid_next(&folder, next)));
            }
            // Every filing goes to each holder in one call.
            execute(context, user, persist_all).await?;
            ImapAnswer::PlacedMany {
                uid_validity: validity,
                uids,
            }
        }
        ImapOp::Append {
            id,
            folder,
            flags,
            keywords,
            date,
            message,
        } => {
            if with(authority, |boxes| boxes.folder_view(&folder).is_err()) {
                return Ok(ImapAnswer::NoSuchMailbox);
            }
            let Some(bits) = with(authority, |boxes| boxes.flag_bits(flags, &keywords)) else {
                return Ok(ImapAnswer::NotAllowed("too many keywords".into()));
            };
            let size = message.len() as u64;
            with(authority, |boxes| boxes.expect(id));
            let stored =
                super::delivery::deliver_to_holders(context, user, id, Arc::new(message)).await;
            let Ok(holders) = stored else {
                with(authority, |boxes| boxes.unexpect(id));
                return Err(Unavailable);
            };
            let placed = with(authority, |boxes| {
                boxes.place(
                    &folder,
                    Listed {
                        id,
                        size,
                        delivered: now_secs() as i64,
                        holders,
                        meta: None,
                        listed_by: None,
                    },
                    bits,
                    date,
                )
            });
            match placed {
                Ok((uid_validity, uid, persist)) => {
                    execute(context, user, persist).await?;
                    ImapAnswer::Placed { uid_validity, uid }
                }
                Err(error) => error.into(),
            }
        }
        ImapOp::Copy {
            from,
            uids,
            to,
            moving: true,
            ..
        } => match with(authority, |boxes| boxes.relocate(&from, &uids, &to)) {
            Ok(moved) => {
                execute(context, user, moved.persist).await?;
                ImapAnswer::Copied {
                    uid_validity: moved.uid_validity,
                    pairs: moved.pairs,
                }
            }
            Err(error) => error.into(),
        },
        ImapOp::Copy {
            from,
            uids,
            to,
            moving: false,
            ids,
        } => copy(context, authority, user, &from, &uids, &ids, &to).await?,
        ImapOp::Create { folder } => {
            let result = with(authority, |boxes| boxes.create(&folder, now_secs()));
            persisted(context, user, result).await?
        }
        ImapOp::Delete { folder } => {
            let result = with(authority, |boxes| boxes.delete(&folder));
            persisted(context, user, result).await?
        }
        ImapOp::Rename { from, to } => {
            let result = with(authority, |boxes| boxes.rename(&from, &to, now_secs()));
            persisted(context, user, result).await?
        }
        ImapOp::Subscribe { folder, on } => {
            let result = with(authority, |boxes| boxes.subscribe(&folder, on));
            persisted(context, user, result).await?
        }
    };
    Ok(answer)
}

fn with<T>(authority: &Authority, f: impl FnOnce(&mut Mailboxes) -> T) -> T {
    let mut state = authority.state.borrow_mut();
    // The state is made before any operation runs (see `run`).
    let (boxes, _) =
        state.get_or_insert_with(|| (Mailboxes::new(None, now_secs()), Epoch::default()));
    f(boxes)
}

async fn persisted(
    context: &Rc<CoreContext>,
    user: &str,
    result: Result<Vec<Persist>, crate::mailbox::MailboxError>,
) -> Result<ImapAnswer, Unavailable> {
    match result {
        Ok(persist) => {
            execute(context, user, persist).await?;
            Ok(ImapAnswer::Done)
        }
        Err(error) => Ok(error.into()),
    }
}

/// COPY: each message stored again (a new id, in `to`), then placed.
async fn copy(
    context: &Rc<CoreContext>,
    authority: &Rc<Authority>,
    user: &str,
    from: &str,
    uids: &[u32],
    ids: &[u128],
    to: &str,
) -> Result<ImapAnswer, Unavailable> {
    if ids.len() != uids.len() {
        return Ok(ImapAnswer::NotAllowed("one id per message to copy".into()));
    }
    let copy_ids: std::collections::HashMap<u32, u128> =
        uids.iter().copied().zip(ids.iter().copied()).collect();
    let target = with(authority, |boxes| {
        boxes.folder_view(to).map(|view| view.uid_validity)
    });
    let uid_validity = match target {
        Ok(validity) => validity,
        Err(error) => return Ok(error.into()),
    };
    let sources: Vec<(u32, u128, u32, i64, Vec<NodeId>)> = match with(authority, |boxes| {
        boxes.folder_view(from).map(|_| {
            uids.iter()
                .filter_map(|&uid| boxes.message(from, uid))
                .map(|m| {
                    (
                        m.meta.uid,
                        m.id,
                        m.meta.flags,
                        m.internal_date(),
                        m.holders.clone(),
                    )
                })
                .collect()
        })
    }) {
        Ok(sources) => sources,
        Err(error) => return Ok(error.into()),
    };
    let mut pairs = Vec::new();
    for (uid, id, flags, date, holders) in sources {
        let body = read_body(context, user, id, &holders).await?;
        let Some(&copy_id) = copy_ids.get(&uid) else {
            continue;
        };
        let size = body.len() as u64;
        with(authority, |boxes| boxes.expect(copy_id));
        let stored =
            super::delivery::deliver_to_holders(context, user, copy_id, Arc::new(body)).await;
        let Ok(holders) = stored else {
            with(authority, |boxes| boxes.unexpect(copy_id));
            return Err(Unavailable);
        };
        let placed = with(authority, |boxes| {
            boxes.place(
                to,
                Listed {
                    id: copy_id,
                    size,
                    delivered: now_secs() as i64,
                    holders,
                    meta: None,
                    listed_by: None,
                },
                flags,
                date,
            )
        });
        match placed {
            Ok((_, new_uid, persist)) => {
                execute(context, user, persist).await?;
                pairs.push((uid, new_uid));
            }
            Err(error) => return Ok(error.into()),
        }
    }
    Ok(ImapAnswer::Copied {
        uid_validity,
        pairs,
    })
}

/// The nodes holding the user's mail: the manager's mail map, or this node alone.
async fn fragment_nodes(context: &Rc<CoreContext>, user: &str) -> Result<Vec<NodeId>, Unavailable> {
    let shared = &context.cluster;
    if !shared.clustered() {
        return Ok(vec![shared.me.id]);
    }
    let deadline = Instant::now() + PATIENCE;
    loop {
        let view = shared.view.load_full();
        let call = UserFragments {
            user: user.to_owned(),
        };
        match super::delivery::ask_manager(&context.node, &context.peers, &view, user, call).await {
            Ok(fragments) => return Ok(fragments.nodes),
            Err(_) if Instant::now() < deadline => glommio::timer::sleep(RETRY_PAUSE).await,
            Err(_) => return Err(Unavailable),
        }
    }
}

fn member_addr(context: &CoreContext, node: NodeId) -> Option<String> {
    context
        .cluster
        .view
        .load()
        .member(node)
        .map(|m| m.addr.clone())
}

/// Every copy of the user's mail, listed (copies deleted but not yet everywhere left out).
async fn list_all(context: &Rc<CoreContext>, user: &str) -> Result<Vec<Listed>, Unavailable> {
    let mut listing = Vec::new();
    let mut deleted = std::collections::HashSet::new();
    for node in fragment_nodes(context, user).await? {
        let listed = if node == context.cluster.me.id {
            context
                .call(ListHere {
                    user: user.to_owned(),
                })
                .await
                .map_err(|_| Unavailable)?
        } else {
            let addr = member_addr(context, node).ok_or(Unavailable)?;
            let call = ListFragment {
                user: user.to_owned(),
            };
            context
                .peers
                .call(&addr, call, super::cluster_driver::PEER_TIMEOUT)
                .await?
        };
        deleted.extend(listed.deleted);
        for m in listed.messages {
            // Every node the message was stored on holds (or is about to hold) a copy that
            // must carry its IMAP state, not only the nodes that listed it just now.
            let mut holders = vec![node];
            for replica in m.replicas {
                if !holders.contains(&replica) {
                    holders.push(replica);
                }
            }
            listing.push(Listed {
                id: m.id,
                size: m.size,
                delivered: (porcupine_engine::hlc::millis_of(m.hlc) / 1000) as i64,
                holders,
                meta: m.meta,
                listed_by: Some(node),
            });
        }
    }
    listing.retain(|m| !deleted.contains(&m.id));
    Ok(listing)
}

/// Lists every copy and lets the machine adopt it; persists what that decides.
async fn refresh(
    context: &Rc<CoreContext>,
    authority: &Rc<Authority>,
    user: &str,
) -> Result<(), Unavailable> {
    let listing = list_all(context, user).await?;
    let persist = with(authority, |boxes| boxes.refresh(listing));
    execute(context, user, persist).await?;
    authority.refreshed.set(Some(Instant::now()));
    Ok(())
}

/// Reads a message's body from the first holder that answers.
async fn read_body(
    context: &Rc<CoreContext>,
    user: &str,
    id: u128,
    holders: &[NodeId],
) -> Result<Vec<u8>, Unavailable> {
    for &node in holders {
        if node == context.cluster.me.id {
            let read = ReadMessage {
                user: user.to_owned(),
                id,
            };
            if let Ok(body) = context.call(read).await {
                return Ok(body);
            }
            continue;
        }
        let Some(addr) = member_addr(context, node) else {
            continue;
        };
        let call = FetchMessage {
            user: user.to_owned(),
            id,
        };
        if let Ok(fetched) = context
            .peers
            .call(&addr, call, super::cluster_driver::PEER_TIMEOUT)
            .await
        {
            return Ok(fetched.message);
        }
    }
    Err(Unavailable)
}

/// Makes what the machine decided durable, in order.
async fn execute(
    context: &Rc<CoreContext>,
    user: &str,
    persist: Vec<Persist>,
) -> Result<(), Unavailable> {
    // Meta for many messages goes to each holder in one call.
    let mut filings: std::collections::BTreeMap<NodeId, Vec<(u128, MessageMeta)>> =
        Default::default();
    let mut deletes: std::collections::BTreeMap<NodeId, Vec<u128>> = Default::default();
    let mut all_holders: Vec<NodeId> = Vec::new();
    for item in persist {
        match item {
            Persist::Profile(profile) => {
                // Before any UID it reserves is shown.
                flush_filings(context, user, &mut filings).await?;
                let name = profile_name(user);
                let bytes = profile.encode();
                let hlc = context
                    .call(PutProfile {
                        user: name.clone(),
                        profile: Arc::new(bytes.clone()),
                        stamp: None,
                    })
                    .await
                    .map_err(|_| Unavailable)?;
                if let Some(hlc) = hlc {
                    if context.cluster.clustered() {
                        let _ = super::cluster_driver::replicate_profiles(
                            context,
                            vec![(name, hlc, bytes)],
                        )
                        .await;
                    }
                }
            }
            Persist::Meta { id, meta, holders } => {
                for node in holders {
                    filings.entry(node).or_default().push((id, meta));
                }
            }
            Persist::Delete { id, holders } => {
                for node in &holders {
                    if !all_holders.contains(node) {
                        all_holders.push(*node);
                    }
                    deletes.entry(*node).or_default().push(id);
                }
            }
        }
    }
    flush_filings(context, user, &mut filings).await?;
    for (node, ids) in deletes {
        let also: Vec<NodeId> = all_holders.iter().copied().filter(|&n| n != node).collect();
        if node == context.cluster.me.id {
            context
                .call(DeleteHere {
                    user: user.to_owned(),
                    ids,
                    fragments: also,
                })
                .await
                .map_err(|_| Unavailable)?;
        } else {
            // A holder that is not a member: the tombstones on the others stay pending for it
            // (it is in their `fragments`) and reach it when it is back.
            let Some(addr) = member_addr(context, node) else {
                continue;
            };
            let call = DeleteMessages {
                user: user.to_owned(),
                ids,
                fragments: also,
            };
            context
                .peers
                .call(&addr, call, super::cluster_driver::PEER_TIMEOUT)
                .await?;
        }
    }
    Ok(())
}

async fn flush_filings(
    context: &Rc<CoreContext>,
    user: &str,
    filings: &mut std::collections::BTreeMap<NodeId, Vec<(u128, MessageMeta)>>,
) -> Result<(), Unavailable> {
    // A copy still on its way to a replica (the push follows the first holder's fsync) is
    // filed when it has arrived: the answer waits for it, within the patience.
    let deadline = Instant::now() + PATIENCE;
    for (node, mut items) in std::mem::take(filings) {
        loop {
            let missing = if node == context.cluster.me.id {
                context
                    .call(FileHere {
                        user: user.to_owned(),
                        items: items.clone(),
                    })
                    .await
                    .map_err(|_| Unavailable)?
            } else {
                // A node that is not a member is filed by the newest-meta rule when it is
                // back: its copy's older meta loses to the ones written now.
                let Some(addr) = member_addr(context, node) else {
                    break;
                };
                let call = FileMessages {
                    user: user.to_owned(),
                    items: items.clone(),
                };
                context
                    .peers
                    .call(&addr, call, super::cluster_driver::PEER_TIMEOUT)
                    .await?
            };
            if missing.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                tracing::warn!(%user, node, missing = missing.len(), "copies never arrived to be filed");
                return Err(Unavailable);
            }
            items.retain(|(id, _)| missing.contains(id));
            glommio::timer::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}
