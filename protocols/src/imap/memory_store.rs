//! A user's mailboxes in memory, answering an [`ImapSession`]'s steps the way the node does:
//! the session's unit tests and its fuzz target drive the session against it. Not storage:
//! nothing here is durable or shared between sessions.

use super::command::{Flag, StoreAction};
use super::session::{
    Counts, Folder, ImapSession, LoginOutcome, MailboxError, MailboxOp, MessageView, QuotaView,
    Snapshot, Step,
};

/// The quota of the user in memory: bytes, and messages.
pub const QUOTA_STORAGE: u64 = 1 << 20;
pub const QUOTA_MESSAGES: u64 = 1_000;

/// A user's mailboxes, answering the session's steps the way the node does.
#[derive(Debug, Clone)]
pub struct MemoryStore {
    folders: Vec<(String, u32, u32, bool)>, // name, uidvalidity, uidnext, subscribed
    messages: Vec<(String, MessageView, Vec<u8>)>,
    modseq: u64,
}

impl MemoryStore {
    /// Three folders (INBOX, Sent, Archive/2024) and three messages in INBOX.
    pub fn new() -> Self {
        let mut store = Self {
            folders: vec![
                ("INBOX".into(), 7, 1, true),
                ("Sent".into(), 8, 1, true),
                ("Archive/2024".into(), 9, 1, false),
            ],
            messages: Vec::new(),
            modseq: 1,
        };
        store.add("INBOX", b"From: A <a@x.org>\r\nSubject: first\r\nDate: Tue, 1 Jul 2003 10:52:37 +0200\r\n\r\nhello world\r\n", vec![]);
        store.add(
            "INBOX",
            b"From: B <b@y.org>\r\nSubject: second\r\n\r\nanother body\r\n",
            vec![Flag::Seen],
        );
        store.add(
            "INBOX",
            b"Subject: third\r\nContent-Type: multipart/mixed; boundary=q\r\n\r\n--q\r\n\r\npart one\r\n--q\r\nContent-Type: text/html\r\n\r\n<b>two</b>\r\n--q--\r\n",
            vec![Flag::Flagged],
        );
        store
    }

    /// Stores a message; returns its UID.
    pub fn add(&mut self, folder: &str, bytes: &[u8], flags: Vec<Flag>) -> u32 {
        self.modseq += 1;
        // A folder deleted meanwhile is made again (the store is a test double, not storage).
        if !self.folders.iter().any(|f| f.0 == folder) {
            self.folders.push((folder.to_owned(), 99, 1, false));
        }
        let Some(f) = self.folders.iter_mut().find(|f| f.0 == folder) else {
            return 0;
        };
        let uid = f.2;
        f.2 += 1;
        self.messages.push((
            folder.into(),
            MessageView {
                uid,
                flags,
                modseq: self.modseq,
                size: bytes.len() as u32,
                internal_date: 1_700_000_000,
            },
            bytes.to_vec(),
        ));
        uid
    }

    pub fn snapshot(&self, folder: &str) -> Result<Snapshot, MailboxError> {
        let f = self
            .folders
            .iter()
            .find(|f| f.0 == folder)
            .ok_or(MailboxError::NoSuchMailbox)?;
        Ok(Snapshot {
            uid_validity: f.1,
            uid_next: f.2,
            highest_modseq: self.modseq,
            messages: self
                .messages
                .iter()
                .filter(|m| m.0 == folder)
                .map(|m| m.1.clone())
                .collect(),
        })
    }

    /// Answers one step; returns the next step the session asked for.
    pub fn answer(
        &mut self,
        session: &mut ImapSession,
        step: Step,
        out: &mut Vec<u8>,
    ) -> Option<Step> {
        let selected = session.selected_mailbox().map(str::to_owned);
        match step {
            Step::Login { user, password } => {
                let outcome = if password == "secret" {
                    LoginOutcome::Ok
                } else {
                    LoginOutcome::BadCredentials
                };
                session.logged_in(&user, outcome, out);
                None
            }
            Step::Folders => session.folders(
                Ok(self
                    .folders
                    .iter()
                    .map(|f| Folder {
                        name: f.0.clone(),
                        subscribed: f.3,
                        special_use: (f.0 == "Sent").then(|| "\\Sent".to_owned()),
                    })
                    .collect()),
                out,
            ),
            Step::Counts { mailboxes } => {
                let counts = mailboxes
                    .iter()
                    .map(|m| {
                        self.snapshot(m).map(|s| Counts {
                            messages: s.messages.len() as u32,
                            unseen: s
                                .messages
                                .iter()
                                .filter(|m| !m.flags.contains(&Flag::Seen))
                                .count() as u32,
                            uid_next: s.uid_next,
                            uid_validity: s.uid_validity,
                            highest_modseq: s.highest_modseq,
                            size: 0,
                            deleted: s
                                .messages
                                .iter()
                                .filter(|m| m.flags.contains(&Flag::Deleted))
                                .count() as u32,
                        })
                    })
                    .collect();
                session.counts(counts, out)
            }
            Step::Select { mailbox, .. } => session.selected(self.snapshot(&mailbox), out),
            Step::Poll => {
                let snapshot = self.snapshot(selected.as_deref().unwrap_or(""));
                session.polled(snapshot, out)
            }
            Step::Load { uids } => {
                let folder = selected.unwrap_or_default();
                let bodies = uids
                    .iter()
                    .map(|uid| {
                        self.messages
                            .iter()
                            .find(|m| m.0 == folder && m.1.uid == *uid)
                            .map(|m| m.2.clone())
                    })
                    .collect();
                session.loaded(bodies, out)
            }
            Step::Describe { uids } => {
                // Described as the node's engine does when a message is stored.
                let folder = selected.unwrap_or_default();
                let described = uids
                    .iter()
                    .map(|uid| {
                        self.messages
                            .iter()
                            .find(|m| m.0 == folder && m.1.uid == *uid)
                            .map(|m| super::structure::describe(&m.2))
                    })
                    .collect();
                session.loaded(described, out)
            }
            Step::Store {
                uids,
                action,
                flags,
                ..
            } => {
                let folder = selected.unwrap_or_default();
                let mut views = Vec::new();
                for uid in uids {
                    self.modseq += 1;
                    let modseq = self.modseq;
                    if let Some(m) = self
                        .messages
                        .iter_mut()
                        .find(|m| m.0 == folder && m.1.uid == uid)
                    {
                        match action {
                            StoreAction::Replace => m.1.flags = flags.clone(),
                            StoreAction::Add => {
                                for f in &flags {
                                    if !m.1.flags.contains(f) {
                                        m.1.flags.push(f.clone());
                                    }
                                }
                            }
                            StoreAction::Remove => m.1.flags.retain(|f| !flags.contains(f)),
                        }
                        m.1.flags.sort();
                        m.1.modseq = modseq;
                        views.push(m.1.clone());
                    }
                }
                session.stored(Ok(views), out)
            }
            Step::Quota => {
                let bytes = self.messages.iter().map(|m| m.2.len() as u64).sum();
                let quota = QuotaView {
                    storage: Some((bytes, QUOTA_STORAGE)),
                    messages: Some((self.messages.len() as u64, QUOTA_MESSAGES)),
                };
                session.quota_told(Ok(quota), out);
                None
            }
            Step::Expunge { uids } => {
                let folder = selected.unwrap_or_default();
                self.messages
                    .retain(|m| !(m.0 == folder && uids.contains(&m.1.uid)));
                session.expunged(Ok(uids), out)
            }
            Step::Append {
                mailbox,
                flags,
                message,
                ..
            } => {
                if !self.folders.iter().any(|f| f.0 == mailbox) {
                    return session.appended(Err(MailboxError::NoSuchMailbox), out);
                }
                if self.messages.len() as u64 >= QUOTA_MESSAGES {
                    return session.appended(Err(MailboxError::OverQuota), out);
                }
                let uid = self.add(&mailbox, &message, flags);
                let validity = self
                    .folders
                    .iter()
                    .find(|f| f.0 == mailbox)
                    .map_or(0, |f| f.1);
                session.appended(Ok((validity, uid)), out)
            }
            Step::Copy {
                uids,
                mailbox,
                moving,
            } => {
                let folder = selected.unwrap_or_default();
                if !self.folders.iter().any(|f| f.0 == mailbox) {
                    return session.copied(Err(MailboxError::NoSuchMailbox), out);
                }
                let mut pairs = Vec::new();
                for uid in uids {
                    let found = self
                        .messages
                        .iter()
                        .find(|m| m.0 == folder && m.1.uid == uid)
                        .cloned();
                    if let Some((_, view, bytes)) = found {
                        let new = self.add(&mailbox, &bytes, view.flags.clone());
                        pairs.push((uid, new));
                        if moving {
                            self.messages.retain(|m| !(m.0 == folder && m.1.uid == uid));
                        }
                    }
                }
                let validity = self
                    .folders
                    .iter()
                    .find(|f| f.0 == mailbox)
                    .map_or(0, |f| f.1);
                session.copied(Ok((validity, pairs)), out)
            }
            Step::Mailbox(op) => {
                let result = match op {
                    MailboxOp::Create(name) => {
                        if self.folders.iter().any(|f| f.0 == name) {
                            Err(MailboxError::AlreadyExists)
                        } else {
                            self.folders.push((name, 99, 1, false));
                            Ok(())
                        }
                    }
                    MailboxOp::Delete(name) => {
                        let before = self.folders.len();
                        self.folders.retain(|f| f.0 != name);
                        if before == self.folders.len() {
                            Err(MailboxError::NoSuchMailbox)
                        } else {
                            Ok(())
                        }
                    }
                    MailboxOp::Rename { from, to } => {
                        match self.folders.iter_mut().find(|f| f.0 == from) {
                            Some(f) => {
                                f.0 = to;
                                Ok(())
                            }
                            None => Err(MailboxError::NoSuchMailbox),
                        }
                    }
                    MailboxOp::Subscribe(name, on) => {
                        match self.folders.iter_mut().find(|f| f.0 == name) {
                            Some(f) => {
                                f.3 = on;
                                Ok(())
                            }
                            None => Err(MailboxError::NoSuchMailbox),
                        }
                    }
                };
                session.mailbox_done(result, out)
            }
            Step::Idle => {
                // Deliver something while idling, then let the session poll.
                self.add("INBOX", b"Subject: while idle\r\n\r\nx\r\n", vec![]);
                let poll = session.poll_idle()?;
                self.answer(session, poll, out)
            }
            Step::NeedInput | Step::StartTls | Step::Close => Some(step),
        }
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}
