//! The IMAP edge: a glommio socket on one side, the sans-IO [`ImapSession`] on the other, the
//! user's IMAP authority ([`super::imap_authority`], wherever it runs) behind every mailbox
//! step, and the nodes holding the copies behind every message read.

use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;
use porcupine_protocols::imap::command::{Flag, StoreAction};
use porcupine_protocols::imap::{
    Counts, Folder, ImapSession, LoginOutcome, MailboxError, MailboxOp, MessageView, QuotaView,
    Snapshot, Step,
};

use super::client_start::{self, Start};
use super::conn::{self, Read, SessionClock};
use super::core_calls::ReadMessage;
use super::core_context::CoreContext;
use super::imap_authority;
use super::maildrop;
use super::metrics::add;
use super::quota::{Admission, Tally};
use crate::mailbox::{self, ImapAnswer, ImapOp, WireFolder, WireMessage};
use crate::maildrop::OpenFailure;
use crate::membership::NodeId;
use crate::rpc::FetchMessage;

/// How often an idling session asks for changes.
const IDLE_POLL: Duration = Duration::from_millis(500);

pub(super) fn flags_of(message: &WireMessage) -> Vec<Flag> {
    let mut flags = Vec::new();
    for (bit, flag) in [
        (mailbox::SEEN, Flag::Seen),
        (mailbox::ANSWERED, Flag::Answered),
        (mailbox::FLAGGED, Flag::Flagged),
        (mailbox::DELETED, Flag::Deleted),
        (mailbox::DRAFT, Flag::Draft),
    ] {
        if message.flags & bit != 0 {
            flags.push(flag);
        }
    }
    flags.extend(message.keywords.iter().cloned().map(Flag::Keyword));
    flags
}

/// System flag bits and keywords of IMAP flags.
pub(super) fn bits_of(flags: &[Flag]) -> (u32, Vec<String>) {
    let mut bits = 0;
    let mut keywords = Vec::new();
    for flag in flags {
        match flag {
            Flag::Seen => bits |= mailbox::SEEN,
            Flag::Answered => bits |= mailbox::ANSWERED,
            Flag::Flagged => bits |= mailbox::FLAGGED,
            Flag::Deleted => bits |= mailbox::DELETED,
            Flag::Draft => bits |= mailbox::DRAFT,
            Flag::Recent => {}
            Flag::Keyword(k) => keywords.push(k.clone()),
        }
    }
    (bits, keywords)
}

fn view_of(message: &WireMessage) -> MessageView {
    MessageView {
        uid: message.uid,
        flags: flags_of(message),
        modseq: message.modseq.max(1),
        size: u32::try_from(message.size).unwrap_or(u32::MAX),
        internal_date: message.date,
    }
}

/// The selected folder's state now, learnt by `selected` (after a fresh listing of the
/// copies when `refresh`).
async fn poll_selected(
    context: &Rc<CoreContext>,
    user: &str,
    selected: &mut Selected,
    refresh: bool,
) -> Result<Snapshot, MailboxError> {
    let op = ImapOp::Folder {
        folder: selected.folder.clone(),
        refresh,
    };
    match imap_authority::call(context, user, op).await {
        ImapAnswer::Folder(folder) => Ok(selected.learn(&folder)),
        other => Err(error_of(other)),
    }
}

fn error_of(answer: ImapAnswer) -> MailboxError {
    match answer {
        ImapAnswer::NoSuchMailbox => MailboxError::NoSuchMailbox,
        ImapAnswer::AlreadyExists => MailboxError::AlreadyExists,
        ImapAnswer::NotAllowed(why) => MailboxError::NotAllowed(why),
        _ => MailboxError::Unavailable,
    }
}

/// The selected folder's messages as the node needs them: UID → (id, holders, size).
#[derive(Debug, Default)]
struct Selected {
    folder: String,
    messages: HashMap<u32, (u128, Vec<NodeId>, u64)>,
}

impl Selected {
    fn learn(&mut self, folder: &WireFolder) -> Snapshot {
        self.messages = folder
            .messages
            .iter()
            .map(|m| (m.uid, (m.id, m.holders.clone(), m.size)))
            .collect();
        Snapshot {
            uid_validity: folder.uid_validity,
            uid_next: folder.uid_next,
            highest_modseq: folder.highest_modseq,
            messages: folder.messages.iter().map(view_of).collect(),
        }
    }
}

/// What a session wants of a message from its holders.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wanted {
    /// Its bytes.
    Bytes,
    /// Its description (ENVELOPE, BODYSTRUCTURE; see `porcupine_protocols::imap::structure`).
    Description,
}

/// Reads message `id` from the first of its holders that answers.
pub(super) async fn read(
    context: &CoreContext,
    user: &str,
    id: u128,
    holders: &[NodeId],
) -> Option<Vec<u8>> {
    from_holders(context, user, id, holders, Wanted::Bytes).await
}

/// What is `wanted` of message `id`, from the first of its holders that answers.
async fn from_holders(
    context: &CoreContext,
    user: &str,
    id: u128,
    holders: &[NodeId],
    wanted: Wanted,
) -> Option<Vec<u8>> {
    for node in maildrop::read_order(context, holders) {
        if node == context.cluster.me.id {
            let here = match wanted {
                Wanted::Bytes => {
                    context
                        .call(ReadMessage {
                            user: user.to_owned(),
                            id,
                        })
                        .await
                }
                Wanted::Description => {
                    let describe = super::core_calls::DescribeMessage {
                        user: user.to_owned(),
                        id,
                    };
                    context.call(describe).await
                }
            };
            if let Ok(bytes) = here {
                return Some(bytes);
            }
            continue;
        }
        let addr = context
            .cluster
            .view
            .load()
            .member(node)
            .map(|m| m.addr.clone());
        let Some(addr) = addr else { continue };
        let timeout = super::cluster_driver::PEER_TIMEOUT;
        let there = match wanted {
            Wanted::Bytes => {
                let call = FetchMessage {
                    user: user.to_owned(),
                    id,
                };
                context.peers.call(&addr, call, timeout).await
            }
            Wanted::Description => {
                let call = crate::rpc::DescribeMessage {
                    user: user.to_owned(),
                    id,
                };
                context.peers.call(&addr, call, timeout).await
            }
        };
        if let Ok(fetched) = there {
            return Some(fetched.message);
        }
    }
    None
}

/// Whether the address logged in as is still the account the session logged in to: not
/// removed, and not given to another user since (a session never acts for the next user of
/// an address). Storage that cannot answer now does not end the session.
async fn same_account(
    context: &CoreContext,
    user: &str,
    account: Option<super::core_calls::Incarnation>,
) -> bool {
    match context.user_incarnation(user).await {
        Ok(now) => now == account,
        Err(_) => true,
    }
}

pub async fn serve(
    stream: TcpStream,
    context: Rc<CoreContext>,
    clock: Rc<SessionClock>,
    start: Start,
) {
    add(&context.metrics.imap_sessions, 1);
    let peer = stream.peer_addr().ok();
    let Some((mut stream, tls)) = client_start::open(stream, &context, start, peer, "IMAPS").await
    else {
        return;
    };
    let mut session = ImapSession::new(context.config.imap_limits.clone());
    session.set_security(tls, client_start::plaintext_policy(&context, peer));
    let mut out = Vec::with_capacity(4096);
    session.greeting(&mut out);
    let mut buf = vec![0u8; 16 << 10];
    let mut user = String::new();
    let mut account = None;
    let mut selected = Selected::default();
    let mut errors_counted = 0;
    'session: loop {
        let mut step = session.step(&mut out);
        loop {
            if !user.is_empty()
                && !matches!(step, Step::NeedInput | Step::Close)
                && !same_account(&context, &user, account).await
            {
                out.extend_from_slice(b"* BYE [UNAVAILABLE] this account was removed\r\n");
                let _ = conn::flush(&mut stream, &mut out, &clock, |_| {}).await;
                break 'session;
            }
            let next = match step {
                Step::NeedInput => break,
                Step::Close => break 'session,
                Step::Idle => None,
                Step::StartTls => {
                    if !conn::flush(&mut stream, &mut out, &clock, |_| {}).await {
                        break 'session;
                    }
                    match stream.start_tls(&context.tls).await {
                        Ok(secure) => {
                            stream = secure;
                            add(&context.metrics.tls_handshakes, 1);
                            session.tls_started();
                            None
                        }
                        Err(error) => {
                            add(&context.metrics.tls_failures, 1);
                            tracing::debug!(?peer, %error, "STARTTLS handshake failed");
                            return;
                        }
                    }
                }
                Step::Login {
                    user: name,
                    password,
                } => {
                    let name = name.to_lowercase();
                    if let Some(ip) = peer.map(|p| p.ip()) {
                        let wait = context.clients.login_penalty(ip);
                        if !wait.is_zero() {
                            glommio::timer::sleep(wait).await;
                        }
                    }
                    let checked = maildrop::authenticate(&context, &name, &password).await;
                    if let Some(ip) = peer.map(|p| p.ip()) {
                        match &checked {
                            Err(OpenFailure::BadCredentials) => context.clients.login_failed(ip),
                            Ok(()) => context.clients.login_succeeded(ip),
                            Err(_) => {}
                        }
                    }
                    let checked = match checked {
                        Ok(()) => match context.user_incarnation(&name).await {
                            Ok(Some(incarnation)) => Ok(incarnation),
                            // Removed since the password was checked.
                            Ok(None) => Err(OpenFailure::BadCredentials),
                            Err(_) => Err(OpenFailure::Unavailable),
                        },
                        Err(failure) => Err(failure),
                    };
                    let outcome = match checked {
                        Ok(incarnation) => {
                            user = name.clone();
                            account = Some(incarnation);
                            LoginOutcome::Ok
                        }
                        Err(OpenFailure::BadCredentials) => LoginOutcome::BadCredentials,
                        Err(_) => LoginOutcome::Unavailable,
                    };
                    session.logged_in(&name, outcome, &mut out);
                    None
                }
                Step::Folders => {
                    let answer = imap_authority::call(&context, &user, ImapOp::Folders).await;
                    let folders = match answer {
                        ImapAnswer::Folders(list) => Ok(list
                            .into_iter()
                            .map(|f| Folder {
                                name: f.name,
                                subscribed: f.subscribed,
                                special_use: f.special_use,
                            })
                            .collect()),
                        other => Err(error_of(other)),
                    };
                    session.folders(folders, &mut out)
                }
                Step::Counts { mailboxes } => {
                    let count = mailboxes.len();
                    let op = ImapOp::Counts { folders: mailboxes };
                    let counts = match imap_authority::call(&context, &user, op).await {
                        ImapAnswer::Counts(list) => list
                            .into_iter()
                            .map(|c| {
                                c.map(|c| Counts {
                                    messages: c.messages,
                                    unseen: c.unseen,
                                    uid_next: c.uid_next,
                                    uid_validity: c.uid_validity,
                                    highest_modseq: c.highest_modseq,
                                    size: c.size,
                                    deleted: c.deleted,
                                })
                                .ok_or(MailboxError::NoSuchMailbox)
                            })
                            .collect(),
                        other => vec![Err(error_of(other)); count],
                    };
                    session.counts(counts, &mut out)
                }
                Step::Select { mailbox, .. } => {
                    let op = ImapOp::Folder {
                        folder: mailbox.clone(),
                        refresh: true,
                    };
                    let snapshot = match imap_authority::call(&context, &user, op).await {
                        ImapAnswer::Folder(folder) => {
                            selected.folder = mailbox;
                            Ok(selected.learn(&folder))
                        }
                        other => Err(error_of(other)),
                    };
                    session.selected(snapshot, &mut out)
                }
                Step::Poll => {
                    // A client's NOOP or CHECK asks for what changed: the copies are listed
                    // again (an idling session's polls share one listing per moment instead).
                    let snapshot = poll_selected(&context, &user, &mut selected, true).await;
                    session.polled(snapshot, &mut out)
                }
                Step::Load { uids } => {
                    let mut bodies = Vec::with_capacity(uids.len());
                    for uid in uids {
                        let body = match selected.messages.get(&uid) {
                            Some((id, holders, _)) => read(&context, &user, *id, holders).await,
                            None => None,
                        };
                        if body.is_some() {
                            add(&context.metrics.messages_retrieved, 1);
                        }
                        bodies.push(body);
                    }
                    session.loaded(bodies, &mut out)
                }
                Step::Describe { uids } => {
                    let mut described = Vec::with_capacity(uids.len());
                    for uid in uids {
                        described.push(match selected.messages.get(&uid) {
                            Some((id, holders, _)) => {
                                from_holders(&context, &user, *id, holders, Wanted::Description)
                                    .await
                            }
                            None => None,
                        });
                    }
                    session.loaded(described, &mut out)
                }
                Step::Store {
                    uids,
                    action,
                    flags,
                    ..
                } => {
                    let (bits, keywords) = bits_of(&flags);
                    let op = ImapOp::Store {
                        folder: selected.folder.clone(),
                        uids,
                        change: match action {
                            StoreAction::Replace => 0,
                            StoreAction::Add => 1,
                            StoreAction::Remove => 2,
                        },
                        flags: bits,
                        keywords,
                    };
                    let result = match imap_authority::call(&context, &user, op).await {
                        ImapAnswer::Changed(messages) => Ok(messages.iter().map(view_of).collect()),
                        other => Err(error_of(other)),
                    };
                    session.stored(result, &mut out)
                }
                Step::Expunge { uids } => {
                    let op = ImapOp::Expunge {
                        folder: selected.folder.clone(),
                        uids,
                    };
                    let result = match imap_authority::call(&context, &user, op).await {
                        ImapAnswer::Expunged(gone) => {
                            add(&context.metrics.messages_deleted, gone.len() as u64);
                            Ok(gone)
                        }
                        other => Err(error_of(other)),
                    };
                    session.expunged(result, &mut out)
                }
                Step::Append {
                    mailbox,
                    flags,
                    date,
                    message,
                } => {
                    let size = message.len() as u64;
                    let result = match refusal(&context, &user, Tally::one(size)).await {
                        Some(refusal) => Err(refusal),
                        None => {
                            let (bits, keywords) = bits_of(&flags);
                            let op = ImapOp::Append {
                                id: context.new_message_id(),
                                folder: mailbox,
                                flags: bits,
                                keywords,
                                date: date.unwrap_or(0),
                                message,
                            };
                            match imap_authority::call(&context, &user, op).await {
                                ImapAnswer::Placed { uid_validity, uid } => {
                                    add(&context.metrics.messages_accepted, 1);
                                    Ok((uid_validity, uid))
                                }
                                other => Err(error_of(other)),
                            }
                        }
                    };
                    session.appended(result, &mut out)
                }
                Step::Copy {
                    uids,
                    mailbox,
                    moving,
                } => {
                    // A copy adds messages (a move does not): refused if they would pass
                    // the quota, all of them together.
                    let refusal = if moving {
                        None
                    } else {
                        let adding = uids
                            .iter()
                            .filter_map(|uid| selected.messages.get(uid))
                            .fold(Tally::default(), |t, (_, _, size)| Tally {
                                messages: t.messages.saturating_add(1),
                                bytes: t.bytes.saturating_add(*size),
                            });
                        refusal(&context, &user, adding).await
                    };
                    let result = match refusal {
                        Some(refusal) => Err(refusal),
                        None => {
                            let ids = uids.iter().map(|_| context.new_message_id()).collect();
                            let op = ImapOp::Copy {
                                from: selected.folder.clone(),
                                uids,
                                to: mailbox,
                                moving,
                                ids,
                            };
                            match imap_authority::call(&context, &user, op).await {
                                ImapAnswer::Copied {
                                    uid_validity,
                                    pairs,
                                } => Ok((uid_validity, pairs)),
                                other => Err(error_of(other)),
                            }
                        }
                    };
                    session.copied(result, &mut out)
                }
                Step::Quota => {
                    let told = quota_view(&context, &user).await;
                    session.quota_told(told, &mut out);
                    None
                }
                Step::Mailbox(op) => {
                    let op = match op {
                        MailboxOp::Create(folder) => ImapOp::Create { folder },
                        MailboxOp::Delete(folder) => ImapOp::Delete { folder },
                        MailboxOp::Rename { from, to } => ImapOp::Rename { from, to },
                        MailboxOp::Subscribe(folder, on) => ImapOp::Subscribe { folder, on },
                    };
                    let result = match imap_authority::call(&context, &user, op).await {
                        ImapAnswer::Done => Ok(()),
                        other => Err(error_of(other)),
                    };
                    session.mailbox_done(result, &mut out)
                }
            };
            step = match next {
                Some(next) => next,
                None => session.step(&mut out),
            };
        }
        add(
            &context.metrics.imap_errors,
            session.errors_sent() - errors_counted,
        );
        errors_counted = session.errors_sent();
        if !conn::flush(&mut stream, &mut out, &clock, |_| {}).await {
            break;
        }
        let read = if session.is_idling() {
            // While idling, look for changes now and then as well as for DONE.
            let reading = conn::read(&mut stream, &mut buf, &clock);
            let waiting = async {
                glommio::timer::sleep(IDLE_POLL).await;
                None
            };
            futures_lite::future::or(async { Some(reading.await) }, waiting).await
        } else {
            Some(conn::read(&mut stream, &mut buf, &clock).await)
        };
        match read {
            None => {
                if let Some(poll) = session.poll_idle() {
                    // Answered on the next turn of the loop.
                    let mut step = poll;
                    if let Step::Poll = step {
                        let snapshot = poll_selected(&context, &user, &mut selected, false).await;
                        if let Some(next) = session.polled(snapshot, &mut out) {
                            step = next;
                            if step == Step::Close {
                                break;
                            }
                        }
                    }
                }
            }
            Some(Read::Bytes(n)) => session.push(&buf[..n]),
            Some(Read::Closed) => break,
            Some(Read::Stop) => {
                session.goodbye(&mut out, "server shutting down");
                break;
            }
        }
    }
    conn::flush(&mut stream, &mut out, &clock, |_| {}).await;
    let _ = stream.close().await;
}

/// The refusal of messages that would take `user` past their quota, or that a deleted user
/// (a session opened before `user delete`) would store.
async fn refusal(context: &Rc<CoreContext>, user: &str, adding: Tally) -> Option<MailboxError> {
    match super::quota::admit(context, user, adding).await {
        Admission::Admitted => None,
        Admission::NoSuchUser => Some(MailboxError::NotAllowed("the user was deleted".into())),
        Admission::OverQuota(_) => Some(MailboxError::OverQuota),
        Admission::Unavailable => Some(MailboxError::Unavailable),
    }
}

/// The user's quota as GETQUOTA tells it.
async fn quota_view(context: &Rc<CoreContext>, user: &str) -> Result<QuotaView, MailboxError> {
    let limits = super::quota::limits_of(context, user)
        .await
        .map_err(|_| MailboxError::Unavailable)?;
    if limits.is_unlimited() {
        return Ok(QuotaView::default());
    }
    let usage = super::quota::usage_of(context, user).await;
    Ok(QuotaView {
        storage: limits.storage.map(|limit| (usage.bytes, limit)),
        messages: limits.messages.map(|limit| (usage.messages, limit)),
    })
}
