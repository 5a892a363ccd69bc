//! One user's IMAP mailboxes at their authority, as a pure state machine: folders, UIDs, flags
//! and MODSEQs over the user's mail, wherever its copies lie.
//!
//! Who decides what (DESIGN §11):
//! - The **authority** of a user (this machine, run by one core of one node at a time) gives
//!   out UIDs and MODSEQs and applies every flag change, so concurrent sessions on any nodes are
//!   serialized in one place, flag by flag (`+FLAGS \Seen` and `+FLAGS \Flagged` made at once by
//!   two sessions both stay).
//! - A message's IMAP state — folder, UID, flags, MODSEQ — is [`MessageMeta`], stored with the
//!   message on every node holding a copy (the node writes it there before the authority's
//!   answer goes out), so it survives any one node's death with the copies themselves.
//! - The folder list, keywords, each folder's UIDVALIDITY and the UIDs and MODSEQs *reserved*
//!   so far are the user's [`MailboxProfile`], stored like a profile (on every node). A UID is
//!   given out only below its folder's reservation, and a reservation is stored before any UID
//!   from it is given out, so an authority started anew (after its node died, or moved) starts
//!   above every UID the old one could have given: **a UID is never given twice** within a
//!   folder's UIDVALIDITY. It also starts above every UID it finds on the copies.
//! - New mail arrives without meta (SMTP, LMTP, POP3 know nothing of it): it is in INBOX and
//!   gets its UID when the authority first sees it, in arrival order, so UIDs grow in the
//!   order clients can see messages (what sync clients like mbsync rely on).
//!
//! UIDVALIDITY is set when a folder is made (the time, in seconds) and never changes for it;
//! a folder deleted and made again under the same name gets a new one.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::membership::NodeId;

/// Flag bits of [`MessageMeta::flags`]; bits 5 and up are keywords (`MailboxProfile::keywords`).
pub const SEEN: u32 = 1;
pub const ANSWERED: u32 = 1 << 1;
pub const FLAGGED: u32 = 1 << 2;
pub const DELETED: u32 = 1 << 3;
pub const DRAFT: u32 = 1 << 4;
/// How many keywords a user may have (one bit each).
pub const KEYWORDS_MAX: usize = 27;
/// INBOX's folder id (mail without meta is in it).
pub const INBOX: u32 = 0;
/// UIDs (and MODSEQs) are reserved this many at a time.
pub const RESERVE_BLOCK: u32 = 256;
/// The largest UID an import keeps: far below `u32::MAX`, so a folder whose source reached it
/// still has UIDs to give (RFC 3501 §2.3.1.1: UIDs only grow).
pub const KEPT_UID_MAX: u32 = 1 << 31;
/// Most folders a user may have.
pub const FOLDERS_MAX: usize = 1000;

/// The IMAP state of one message, stored with each copy of it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageMeta {
    pub folder: u32,
    /// 0: not given yet.
    pub uid: u32,
    pub flags: u32,
    pub modseq: u64,
    /// INTERNALDATE override (APPEND's date), Unix seconds; 0: the delivery time.
    pub date: i64,
}

/// One folder, as the profile keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FolderRecord {
    pub id: u32,
    pub name: String,
    pub uid_validity: u32,
    /// Every UID below this may have been given out.
    pub uid_reserved: u32,
    pub subscribed: bool,
    pub special_use: Option<String>,
}

/// The user's mailbox list and reservations, stored as a profile (every node has it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailboxProfile {
    pub version: u32,
    pub folders: Vec<FolderRecord>,
    pub keywords: Vec<String>,
    pub next_folder_id: u32,
    /// Every MODSEQ below this may have been given out.
    pub modseq_reserved: u64,
}

impl MailboxProfile {
    pub const VERSION: u32 = 1;

    /// A new user's: INBOX and the special-use folders (RFC 6154), subscribed.
    pub fn new(now_secs: u64) -> Self {
        let validity = u32::try_from(now_secs).unwrap_or(u32::MAX).max(1);
        let folders = [
            ("INBOX", None),
            ("Sent", Some("\\Sent")),
            ("Drafts", Some("\\Drafts")),
            ("Trash", Some("\\Trash")),
            ("Junk", Some("\\Junk")),
            ("Archive", Some("\\Archive")),
        ]
        .iter()
        .enumerate()
        .map(|(i, (name, special))| FolderRecord {
            id: i as u32,
            name: (*name).to_owned(),
            uid_validity: validity,
            uid_reserved: 1,
            subscribed: true,
            special_use: special.map(str::to_owned),
        })
        .collect::<Vec<_>>();
        Self {
            version: Self::VERSION,
            next_folder_id: folders.len() as u32,
            folders,
            keywords: Vec::new(),
            modseq_reserved: 1,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        postcard::from_bytes::<Self>(bytes)
            .ok()
            .filter(|p| p.version == Self::VERSION && p.folders.len() <= FOLDERS_MAX)
    }
}

/// A message as a listing of the user's fragments shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub id: u128,
    pub size: u64,
    /// Delivery time, Unix seconds.
    pub delivered: i64,
    pub holders: Vec<NodeId>,
    /// `None`: never given IMAP state (new mail).
    pub meta: Option<MessageMeta>,
    /// The node whose copy this is, with `meta` as that copy has it (`None`: not a copy's
    /// listing, a message just stored).
    pub listed_by: Option<NodeId>,
}

/// A message as the authority knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub id: u128,
    pub meta: MessageMeta,
    pub size: u64,
    pub delivered: i64,
    pub holders: Vec<NodeId>,
}

impl Message {
    /// INTERNALDATE: APPEND's date, else the delivery time.
    pub fn internal_date(&self) -> i64 {
        if self.meta.date != 0 {
            self.meta.date
        } else {
            self.delivered
        }
    }
}

/// Something the node must make durable before the authority's answer goes out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Persist {
    /// Store the profile (a reservation grew, or the folders changed).
    Profile(MailboxProfile),
    /// Store this meta with every copy of the message.
    Meta {
        id: u128,
        meta: MessageMeta,
        holders: Vec<NodeId>,
    },
    /// Delete the message (expunge).
    Delete { id: u128, holders: Vec<NodeId> },
}

/// Why an operation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MailboxError {
    #[error("no such mailbox")]
    NoSuchMailbox,
    #[error("mailbox already exists")]
    AlreadyExists,
    #[error("{0}")]
    NotAllowed(String),
}

/// How STORE changes flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlagChange {
    Replace,
    Add,
    Remove,
}

/// One user's mailboxes (see the module comment).
#[derive(Debug)]
pub struct Mailboxes {
    profile: MailboxProfile,
    /// Reservations that must be stored before what they cover is given out.
    profile_dirty: bool,
    messages: HashMap<u128, Message>,
    /// folder → uid → message id.
    by_folder: HashMap<u32, BTreeMap<u32, u128>>,
    /// The next UID of each folder (below its reservation, or the reservation grows).
    next_uid: HashMap<u32, u32>,
    next_modseq: u64,
    /// Ids being placed by APPEND or COPY (see [`Mailboxes::expect`]).
    expected: std::collections::HashSet<u128>,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('/')
        && !name.ends_with('/')
        && !name.contains("//")
        && !name.chars().any(|c| c.is_control() || c == '*' || c == '%')
}

impl Mailboxes {
    /// The user's mailboxes from their stored profile (`None`: a new user's, made now; the
    /// node stores it before answering).
    pub fn new(profile: Option<MailboxProfile>, now_secs: u64) -> Self {
        let (profile, dirty) = match profile {
            Some(p) => (p, false),
            None => (MailboxProfile::new(now_secs), true),
        };
        let next_uid = profile
            .folders
            .iter()
            .map(|f| (f.id, f.uid_reserved))
            .collect();
        let next_modseq = profile.modseq_reserved.max(1);
        let mut boxes = Self {
            profile,
            profile_dirty: dirty,
            messages: HashMap::new(),
            by_folder: HashMap::new(),
            next_uid,
            next_modseq,
            expected: std::collections::HashSet::new(),
        };
        // Start above every reservation: what the last authority reserved may have been given.
        let folders: Vec<u32> = boxes.profile.folders.iter().map(|f| f.id).collect();
        for id in folders {
            boxes.by_folder.entry(id).or_default();
        }
        boxes
    }

    pub fn profile(&self) -> &MailboxProfile {
        &self.profile
    }

    fn folder_id(&self, name: &str) -> Option<u32> {
        self.profile
            .folders
            .iter()
            .find(|f| f.name == name || (f.id == INBOX && name.eq_ignore_ascii_case("INBOX")))
            .map(|f| f.id)
    }

    fn folder(&self, id: u32) -> Option<&FolderRecord> {
        self.profile.folders.iter().find(|f| f.id == id)
    }

    /// A UID for folder `id`, reserving more if needed.
    fn take_uid(&mut self, id: u32) -> u32 {
        let next = self.next_uid.get(&id).copied().unwrap_or(1).max(1);
        if let Some(folder) = self.profile.folders.iter_mut().find(|f| f.id == id) {
            if next >= folder.uid_reserved {
                folder.uid_reserved = next.saturating_add(RESERVE_BLOCK);
                self.profile_dirty = true;
            }
        }
        self.next_uid.insert(id, next.saturating_add(1));
        next
    }

    fn take_modseq(&mut self) -> u64 {
        let next = self.next_modseq;
        if next >= self.profile.modseq_reserved {
            self.profile.modseq_reserved = next.saturating_add(u64::from(RESERVE_BLOCK));
            self.profile_dirty = true;
        }
        self.next_modseq = next.saturating_add(1);
        next
    }

    /// The profile, if it changed since it was last handed out for storing.
    fn take_profile(&mut self) -> Option<Persist> {
        std::mem::take(&mut self.profile_dirty).then(|| Persist::Profile(self.profile.clone()))
    }

    fn index(&mut self, message: Message) {
        self.by_folder
            .entry(message.meta.folder)
            .or_default()
            .insert(message.meta.uid, message.id);
        self.messages.insert(message.id, message);
    }

    fn unindex(&mut self, id: u128) -> Option<Message> {
        let message = self.messages.remove(&id)?;
        if let Some(folder) = self.by_folder.get_mut(&message.meta.folder) {
            if folder.get(&message.meta.uid) == Some(&id) {
                folder.remove(&message.meta.uid);
            }
        }
        Some(message)
    }

    /// Adopts a fresh listing of every copy of the user's mail: messages gone are dropped,
    /// new ones get UIDs (in arrival order), conflicting ones are settled. Returns what to
    /// persist before anything learnt here is shown (the profile first, if it is in it).
    pub fn refresh(&mut self, listing: Vec<Listed>) -> Vec<Persist> {
        let mut listed: BTreeMap<u128, Listed> = BTreeMap::new();
        // Each copy's MODSEQ (0: no meta), to bring copies that missed changes up to date.
        let mut copies: BTreeMap<u128, Vec<(NodeId, u64)>> = BTreeMap::new();
        for item in listing {
            if let Some(node) = item.listed_by {
                let modseq = item.meta.map_or(0, |m| m.modseq);
                copies.entry(item.id).or_default().push((node, modseq));
            }
            match listed.get_mut(&item.id) {
                Some(known) => {
                    for h in item.holders {
                        if !known.holders.contains(&h) {
                            known.holders.push(h);
                        }
                    }
                    // Copies may disagree (one missed a change): the newest meta wins.
                    if item.meta.map(|m| m.modseq) > known.meta.map(|m| m.modseq) {
                        known.meta = item.meta;
                    }
                }
                None => {
                    listed.insert(item.id, item);
                }
            }
        }
        let gone: Vec<u128> = self
            .messages
            .keys()
            .filter(|id| !listed.contains_key(id) && !self.expected.contains(id))
            .copied()
            .collect();
        for id in gone {
            self.unindex(id);
        }
        let mut persist = Vec::new();
        // Meta already stored: keep it, and keep the counters above it.
        for item in listed.values() {
            let Some(meta) = item.meta.filter(|m| m.uid != 0) else {
                continue;
            };
            let next = self.next_uid.entry(meta.folder).or_insert(1);
            *next = (*next).max(meta.uid.saturating_add(1));
            self.next_modseq = self.next_modseq.max(meta.modseq.saturating_add(1));
        }
        for (id, item) in listed {
            if self.expected.contains(&id) {
                continue;
            }
            if let Some(known) = self.messages.get_mut(&id) {
                known.holders = item.holders.clone();
                if let Some(meta) = item.meta.filter(|m| m.modseq > known.meta.modseq) {
                    let id = known.id;
                    let mut message = self.unindex(id).unwrap_or_else(|| unreachable_message(id));
                    message.meta = meta;
                    self.index(message);
                }
                continue;
            }
            let mut meta = item.meta.filter(|m| m.uid != 0).unwrap_or_default();
            // A folder that is gone (deleted while a copy was away): back to INBOX.
            if self.folder(meta.folder).is_none() {
                meta = MessageMeta {
                    folder: INBOX,
                    uid: 0,
                    ..meta
                };
            }
            // Two messages with one UID (an authority that did not know of the other): the
            // later keeps it, as it can only have been shown by the newer authority.
            let clash = self
                .by_folder
                .get(&meta.folder)
                .and_then(|f| f.get(&meta.uid))
                .is_some_and(|_| meta.uid != 0);
            if meta.uid == 0 || clash {
                meta.uid = self.take_uid(meta.folder);
                meta.modseq = self.take_modseq();
                persist.push(Persist::Meta {
                    id,
                    meta,
                    holders: item.holders.clone(),
                });
            }
            self.index(Message {
                id,
                meta,
                size: item.size,
                delivered: item.delivered,
                holders: item.holders,
            });
        }
        // A copy whose node missed changes (it was down, or its copy arrived after them) is
        // given the current state now: otherwise it would be the only state left if the
        // up-to-date copies' nodes failed later.
        let written: std::collections::HashSet<u128> = persist
            .iter()
            .filter_map(|p| match p {
                Persist::Meta { id, .. } => Some(*id),
                _ => None,
            })
            .collect();
        for (id, listed_copies) in copies {
            let Some(message) = self.messages.get(&id) else {
                continue;
            };
            if written.contains(&id) || message.meta.uid == 0 {
                continue;
            }
            let stale: Vec<NodeId> = listed_copies
                .iter()
                .filter(|(_, modseq)| *modseq != message.meta.modseq)
                .map(|(node, _)| *node)
                .collect();
            if !stale.is_empty() {
                persist.push(Persist::Meta {
                    id,
                    meta: message.meta,
                    holders: stale,
                });
            }
        }
        if let Some(profile) = self.take_profile() {
            persist.insert(0, profile);
        }
        persist
    }

    /// A folder's messages in UID order, with its UIDVALIDITY, UIDNEXT and HIGHESTMODSEQ.
    pub fn folder_view(&self, name: &str) -> Result<FolderView<'_>, MailboxError> {
        let id = self.folder_id(name).ok_or(MailboxError::NoSuchMailbox)?;
        let folder = self.folder(id).ok_or(MailboxError::NoSuchMailbox)?;
        let messages: Vec<&Message> = self
            .by_folder
            .get(&id)
            .into_iter()
            .flat_map(|f| f.values())
            .filter_map(|mid| self.messages.get(mid))
            .collect();
        let highest_modseq = messages.iter().map(|m| m.meta.modseq).max().unwrap_or(0);
        Ok(FolderView {
            uid_validity: folder.uid_validity,
            uid_next: self.next_uid.get(&id).copied().unwrap_or(1).max(1),
            highest_modseq: highest_modseq.max(self.next_modseq.saturating_sub(1)),
            messages,
        })
    }

    /// Every folder, for LIST.
    pub fn folders(&self) -> &[FolderRecord] {
        &self.profile.folders
    }

    /// The message `uid` of folder `name`.
    pub fn message(&self, name: &str, uid: u32) -> Option<&Message> {
        let id = self.folder_id(name)?;
        let mid = self.by_folder.get(&id)?.get(&uid)?;
        self.messages.get(mid)
    }

    /// The bit of a keyword, adding it to the user's keywords if there is room.
    fn keyword_bit(&mut self, keyword: &str) -> Option<u32> {
        if let Some(i) = self
            .profile
            .keywords
            .iter()
            .position(|k| k.eq_ignore_ascii_case(keyword))
        {
            return Some(1 << (5 + i));
        }
        if self.profile.keywords.len() >= KEYWORDS_MAX || keyword.len() > 100 {
            return None;
        }
        self.profile.keywords.push(keyword.to_owned());
        self.profile_dirty = true;
        Some(1 << (4 + self.profile.keywords.len()))
    }

    /// The bits of system flags and keywords (`None` if a keyword does not fit).
    pub fn flag_bits(&mut self, system: u32, keywords: &[String]) -> Option<u32> {
        let mut bits = system & 0x1f;
        for k in keywords {
            bits |= self.keyword_bit(k)?;
        }
        Some(bits)
    }

    /// The keywords of a flag word.
    pub fn keywords_of(&self, flags: u32) -> Vec<String> {
        self.profile
            .keywords
            .iter()
            .enumerate()
            .filter(|(i, _)| flags & (1 << (5 + i)) != 0)
            .map(|(_, k)| k.clone())
            .collect()
    }

    /// STORE: changes the flags of these UIDs of folder `name`, one flag at a time (only
    /// messages whose flags change get a new MODSEQ). Returns the changed messages' ids and
    /// what to persist.
    pub fn store(
        &mut self,
        name: &str,
        uids: &[u32],
        change: FlagChange,
        bits: u32,
    ) -> Result<(Vec<u128>, Vec<Persist>), MailboxError> {
        let folder = self.folder_id(name).ok_or(MailboxError::NoSuchMailbox)?;
        let mut changed = Vec::new();
        let mut persist = Vec::new();
        for &uid in uids {
            let Some(&id) = self.by_folder.get(&folder).and_then(|f| f.get(&uid)) else {
                continue;
            };
            let Some(current) = self.messages.get(&id).map(|m| m.meta.flags) else {
                continue;
            };
            let flags = match change {
                FlagChange::Replace => bits,
                FlagChange::Add => current | bits,
                FlagChange::Remove => current & !bits,
            };
            if flags == current {
                changed.push(id);
                continue;
            }
            let modseq = self.take_modseq();
            if let Some(message) = self.messages.get_mut(&id) {
                message.meta.flags = flags;
                message.meta.modseq = modseq;
                persist.push(Persist::Meta {
                    id,
                    meta: message.meta,
                    holders: message.holders.clone(),
                });
                changed.push(id);
            }
        }
        if let Some(profile) = self.take_profile() {
            persist.insert(0, profile);
        }
        Ok((changed, persist))
    }

    /// EXPUNGE: removes these UIDs of folder `name`. Returns the UIDs removed and the deletes.
    pub fn expunge(
        &mut self,
        name: &str,
        uids: &[u32],
    ) -> Result<(Vec<u32>, Vec<Persist>), MailboxError> {
        let folder = self.folder_id(name).ok_or(MailboxError::NoSuchMailbox)?;
        let mut gone = Vec::new();
        let mut persist = Vec::new();
        for &uid in uids {
            let Some(&id) = self.by_folder.get(&folder).and_then(|f| f.get(&uid)) else {
                continue;
            };
            if let Some(message) = self.unindex(id) {
                gone.push(uid);
                persist.push(Persist::Delete {
                    id,
                    holders: message.holders,
                });
            }
        }
        if !gone.is_empty() {
            // An expunge is a change: HIGHESTMODSEQ moves, so a client that compares it
            // (CONDSTORE, QRESYNC) knows to look, and learns what vanished.
            self.take_modseq();
            if let Some(profile) = self.take_profile() {
                persist.insert(0, profile);
            }
        }
        Ok((gone, persist))
    }

    /// A message stored anew (APPEND, COPY) into folder `name` with these flags (and
    /// APPEND's date, 0 for none): the folder's UIDVALIDITY, the message's UID, and what to
    /// persist.
    pub fn place(
        &mut self,
        name: &str,
        message: Listed,
        flags: u32,
        date: i64,
    ) -> Result<(u32, u32, Vec<Persist>), MailboxError> {
        self.place_as(name, message, flags, date, None)
    }

    /// Whether messages brought in from another server under its `uid_validity` may keep
    /// their UIDs in folder `name`: yes if the folder has that UIDVALIDITY already, or if it
    /// has never given out a UID, when it takes that UIDVALIDITY (a client that knew the empty
    /// folder sees the change and starts over, losing nothing). Then
    /// [`Mailboxes::place_as`] keeps each UID above every one the folder gave, and
    /// [`Mailboxes::raise_uid_next`] carries on where the other server would have.
    pub fn adopt_validity(&mut self, name: &str, uid_validity: u32) -> bool {
        let Some(folder) = self.folder_id(name) else {
            return false;
        };
        if uid_validity == 0 {
            return false;
        }
        if self.folder(folder).map(|f| f.uid_validity) == Some(uid_validity) {
            return true;
        }
        // A folder that gave UIDs under its own UIDVALIDITY (even to messages since
        // expunged) keeps it: another would let those UIDs name other messages.
        if self.by_folder.get(&folder).is_some_and(|m| !m.is_empty())
            || self.folder(folder).is_some_and(|f| f.uid_reserved > 1)
        {
            return false;
        }
        if let Some(record) = self.profile.folders.iter_mut().find(|f| f.id == folder) {
            record.uid_validity = uid_validity;
            record.uid_reserved = 1;
        }
        self.next_uid.insert(folder, 1);
        self.profile_dirty = true;
        true
    }

    /// After an import that kept its UIDs (see [`Mailboxes::adopt_validity`]): the folder's
    /// next UID is at least `uid_next`, the other server's next UID, so no UID it gave (to a
    /// message expunged there since) names another message here. Called once a folder's
    /// messages are all placed, as a kept UID must be above the folder's next.
    pub fn raise_uid_next(&mut self, name: &str, uid_next: u32) -> Vec<Persist> {
        let Some(folder) = self.folder_id(name) else {
            return Vec::new();
        };
        let uid_next = uid_next.min(KEPT_UID_MAX);
        let next = self.next_uid.get(&folder).copied().unwrap_or(1).max(1);
        if uid_next > next {
            self.next_uid.insert(folder, uid_next);
            // Reserved now, so a restart's rebuild starts above it too.
            if let Some(record) = self.profile.folders.iter_mut().find(|f| f.id == folder) {
                if uid_next > record.uid_reserved {
                    record.uid_reserved = uid_next;
                    self.profile_dirty = true;
                }
            }
        }
        self.take_profile().into_iter().collect()
    }

    /// [`Mailboxes::place`], with the UID the message had on another server when it is above
    /// every UID the folder gave and at most [`KEPT_UID_MAX`] (see
    /// [`Mailboxes::adopt_validity`]); else a new one.
    pub fn place_as(
        &mut self,
        name: &str,
        message: Listed,
        flags: u32,
        date: i64,
        kept_uid: Option<u32>,
    ) -> Result<(u32, u32, Vec<Persist>), MailboxError> {
        let Listed {
            id,
            size,
            delivered,
            holders,
            ..
        } = message;
        let folder = self.folder_id(name).ok_or(MailboxError::NoSuchMailbox)?;
        self.expected.remove(&id);
        if let Some(old) = self.messages.get(&id) {
            // Listed already by a refresh that ran before its meta was stored: place it anew.
            let old_id = old.id;
            self.unindex(old_id);
        }
        let next = self.next_uid.get(&folder).copied().unwrap_or(1).max(1);
        let uid = match kept_uid {
            Some(kept) if kept >= next && kept <= KEPT_UID_MAX => {
                self.next_uid.insert(folder, kept);
                self.take_uid(folder)
            }
            _ => self.take_uid(folder),
        };
        let meta = MessageMeta {
            folder,
            uid,
            flags,
            modseq: self.take_modseq(),
            date,
        };
        let validity = self.folder(folder).map_or(1, |f| f.uid_validity);
        let mut persist = vec![Persist::Meta {
            id,
            meta,
            holders: holders.clone(),
        }];
        self.index(Message {
            id,
            meta,
            size,
            delivered,
            holders,
        });
        if let Some(profile) = self.take_profile() {
            persist.insert(0, profile);
        }
        Ok((validity, meta.uid, persist))
    }

    /// MOVE: gives these UIDs of `from` new UIDs in `to` (the copies stay where they are).
    pub fn relocate(&mut self, from: &str, uids: &[u32], to: &str) -> Result<Moved, MailboxError> {
        let source = self.folder_id(from).ok_or(MailboxError::NoSuchMailbox)?;
        let target = self.folder_id(to).ok_or(MailboxError::NoSuchMailbox)?;
        let validity = self.folder(target).map_or(1, |f| f.uid_validity);
        let mut pairs = Vec::new();
        let mut persist = Vec::new();
        for &uid in uids {
            let Some(&id) = self.by_folder.get(&source).and_then(|f| f.get(&uid)) else {
                continue;
            };
            let Some(mut message) = self.unindex(id) else {
                continue;
            };
            message.meta.folder = target;
            message.meta.uid = self.take_uid(target);
            message.meta.modseq = self.take_modseq();
            pairs.push((uid, message.meta.uid));
            persist.push(Persist::Meta {
                id,
                meta: message.meta,
                holders: message.holders.clone(),
            });
            self.index(message);
        }
        if let Some(profile) = self.take_profile() {
            persist.insert(0, profile);
        }
        Ok(Moved {
            uid_validity: validity,
            pairs,
            persist,
        })
    }

    /// CREATE.
    pub fn create(&mut self, name: &str, now_secs: u64) -> Result<Vec<Persist>, MailboxError> {
        let name = name.trim_end_matches('/');
        if !valid_name(name) {
            return Err(MailboxError::NotAllowed("invalid mailbox name".into()));
        }
        if self.folder_id(name).is_some() {
            return Err(MailboxError::AlreadyExists);
        }
        if self.profile.folders.len() >= FOLDERS_MAX {
            return Err(MailboxError::NotAllowed("too many mailboxes".into()));
        }
        let id = self.profile.next_folder_id;
        self.profile.next_folder_id = id.saturating_add(1);
        // A new UIDVALIDITY, never an old one of the same name.
        let validity = u32::try_from(now_secs).unwrap_or(u32::MAX).max(
            self.profile
                .folders
                .iter()
                .map(|f| f.uid_validity)
                .max()
                .unwrap_or(0)
                + 1,
        );
        self.profile.folders.push(FolderRecord {
            id,
            name: name.to_owned(),
            uid_validity: validity,
            uid_reserved: 1,
            subscribed: false,
            special_use: None,
        });
        self.next_uid.insert(id, 1);
        self.by_folder.entry(id).or_default();
        self.profile_dirty = false;
        Ok(vec![Persist::Profile(self.profile.clone())])
    }

    /// DELETE: the folder and its messages (INBOX cannot be deleted).
    pub fn delete(&mut self, name: &str) -> Result<Vec<Persist>, MailboxError> {
        let id = self.folder_id(name).ok_or(MailboxError::NoSuchMailbox)?;
        if id == INBOX {
            return Err(MailboxError::NotAllowed("INBOX cannot be deleted".into()));
        }
        let ids: Vec<u128> = self
            .by_folder
            .remove(&id)
            .map(|f| f.into_values().collect())
            .unwrap_or_default();
        let mut persist = Vec::new();
        for mid in ids {
            if let Some(message) = self.messages.remove(&mid) {
                persist.push(Persist::Delete {
                    id: mid,
                    holders: message.holders,
                });
            }
        }
        self.profile.folders.retain(|f| f.id != id);
        self.next_uid.remove(&id);
        self.profile_dirty = false;
        persist.insert(0, Persist::Profile(self.profile.clone()));
        Ok(persist)
    }

    /// The user is deleted: every message in every folder is expunged, and the mailbox list
    /// starts again as a new user's, each folder's UIDVALIDITY above every one it had (a
    /// client that kept the old state must not take the new mailboxes for the old ones).
    /// Returns how many messages go, and the profile (first) and the deletes to persist.
    pub fn remove_everything(&mut self, now_secs: u64) -> (u64, Vec<Persist>) {
        let old_validity = self
            .profile
            .folders
            .iter()
            .map(|f| f.uid_validity)
            .max()
            .unwrap_or(0);
        let mut fresh = MailboxProfile::new(now_secs);
        let validity = fresh.folders.first().map_or(1, |f| f.uid_validity);
        if validity <= old_validity {
            for folder in &mut fresh.folders {
                folder.uid_validity = old_validity.saturating_add(1);
            }
        }
        // MODSEQs only grow, whoever asks.
        fresh.modseq_reserved = self.profile.modseq_reserved.max(self.next_modseq);
        let mut persist = vec![Persist::Profile(fresh.clone())];
        let mut ids: Vec<u128> = self.messages.keys().copied().collect();
        ids.sort_unstable();
        let removed = ids.len() as u64;
        for id in ids {
            if let Some(message) = self.messages.remove(&id) {
                persist.push(Persist::Delete {
                    id,
                    holders: message.holders,
                });
            }
        }
        *self = Mailboxes::new(Some(fresh), now_secs);
        (removed, persist)
    }

    /// RENAME (of INBOX: its messages move to the new folder, INBOX stays, empty).
    pub fn rename(
        &mut self,
        from: &str,
        to: &str,
        now_secs: u64,
    ) -> Result<Vec<Persist>, MailboxError> {
        let to = to.trim_end_matches('/');
        let id = self.folder_id(from).ok_or(MailboxError::NoSuchMailbox)?;
        if !valid_name(to) || to.eq_ignore_ascii_case("INBOX") {
            return Err(MailboxError::NotAllowed("invalid mailbox name".into()));
        }
        if self.folder_id(to).is_some() {
            return Err(MailboxError::AlreadyExists);
        }
        if id == INBOX {
            let mut persist = self.create(to, now_secs)?;
            let uids: Vec<u32> = self
                .by_folder
                .get(&INBOX)
                .map(|f| f.keys().copied().collect())
                .unwrap_or_default();
            persist.extend(self.relocate("INBOX", &uids, to)?.persist);
            return Ok(persist);
        }
        // The folder and those below it.
        let prefix = format!("{from}/");
        for folder in &mut self.profile.folders {
            if folder.id == id {
                folder.name = to.to_owned();
            } else if let Some(rest) = folder.name.strip_prefix(&prefix) {
                folder.name = format!("{to}/{rest}");
            }
        }
        self.profile_dirty = false;
        Ok(vec![Persist::Profile(self.profile.clone())])
    }

    /// SUBSCRIBE / UNSUBSCRIBE.
    pub fn subscribe(&mut self, name: &str, on: bool) -> Result<Vec<Persist>, MailboxError> {
        let id = self.folder_id(name).ok_or(MailboxError::NoSuchMailbox)?;
        if let Some(folder) = self.profile.folders.iter_mut().find(|f| f.id == id) {
            folder.subscribed = on;
        }
        self.profile_dirty = false;
        Ok(vec![Persist::Profile(self.profile.clone())])
    }
}

fn unreachable_message(id: u128) -> Message {
    Message {
        id,
        meta: MessageMeta::default(),
        size: 0,
        delivered: 0,
        holders: Vec::new(),
    }
}

// ---- The authority's calls, as they cross between nodes ----

/// A message as a session learns it from the authority.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireMessage {
    pub id: u128,
    pub uid: u32,
    /// System flag bits ([`SEEN`], …) and keywords by name.
    pub flags: u32,
    pub keywords: Vec<String>,
    pub modseq: u64,
    pub size: u64,
    /// INTERNALDATE, Unix seconds.
    pub date: i64,
    pub holders: Vec<NodeId>,
}

/// A folder's state for a session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireFolder {
    pub uid_validity: u32,
    pub uid_next: u32,
    pub highest_modseq: u64,
    pub messages: Vec<WireMessage>,
}

/// A folder in the user's list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireFolderInfo {
    pub name: String,
    pub subscribed: bool,
    pub special_use: Option<String>,
}

/// A folder's counts (STATUS).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireCounts {
    pub messages: u32,
    pub unseen: u32,
    pub uid_next: u32,
    pub uid_validity: u32,
    pub highest_modseq: u64,
    pub size: u64,
    /// Messages flagged `\Deleted`.
    pub deleted: u32,
}

/// One message of [`ImapOp::AppendMany`], as [`ImapOp::Append`] carries one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewMessage {
    pub id: u128,
    pub flags: u32,
    pub keywords: Vec<String>,
    pub date: i64,
    pub message: Vec<u8>,
    /// The UID it had on the server it comes from (an import), kept where it can be.
    pub uid: Option<u32>,
}

/// What a session asks of the authority.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ImapOp {
    /// From a new authority to every other member, before it builds its state: finish the
    /// user's operation under way here and take no more for the user until this node's view
    /// is at `epoch` or later (so the new authority's listing sees everything answered here).
    Fence {
        epoch: crate::membership::Epoch,
    },
    /// The folder's messages (after a fresh listing of the copies when `refresh`).
    Folder {
        folder: String,
        refresh: bool,
    },
    Store {
        folder: String,
        uids: Vec<u32>,
        /// 0 replace, 1 add, 2 remove.
        change: u8,
        flags: u32,
        keywords: Vec<String>,
    },
    Expunge {
        folder: String,
        uids: Vec<u32>,
    },
    /// Store `message` in `folder` (APPEND): answered `Placed`.
    Append {
        /// The message's id, chosen by the session's node: an operation asked again (its
        /// authority died before answering) stores the same message, never a second one.
        id: u128,
        folder: String,
        flags: u32,
        keywords: Vec<String>,
        date: i64,
        #[serde(with = "serde_bytes")]
        message: Vec<u8>,
    },
    /// Several APPENDs into one folder, stored together so their writes share group commits
    /// (an import): answered `PlacedMany`, the UIDs in the order given.
    AppendMany {
        folder: String,
        messages: Vec<NewMessage>,
        /// The UIDVALIDITY the messages' UIDs were given under (an import from a server
        /// that keeps them, as Dovecot's `dovecot-uidlist`): see `Mailboxes::adopt_validity`.
        uid_validity: Option<u32>,
        /// With a folder's last messages: the next UID the server they come from would have
        /// given (`N` of the uidlist), see `Mailboxes::raise_uid_next`.
        uid_next: Option<u32>,
    },
    /// Copy (or move) UIDs of `from` into `to`: answered `Copied`.
    Copy {
        from: String,
        uids: Vec<u32>,
        to: String,
        moving: bool,
        /// The copies' ids, one per UID of `uids` in order (chosen by the session's node,
        /// as Append's).
        ids: Vec<u128>,
    },
    Folders,
    Counts {
        folders: Vec<String>,
    },
    Create {
        folder: String,
    },
    Delete {
        folder: String,
    },
    Rename {
        from: String,
        to: String,
    },
    Subscribe {
        folder: String,
        on: bool,
    },
    /// The user is deleted (`user delete`): every message goes, the folders start again as a
    /// new user's. Answered `Removed`.
    RemoveAll,
}

/// The authority's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ImapAnswer {
    Folder(WireFolder),
    Changed(Vec<WireMessage>),
    Expunged(Vec<u32>),
    Placed {
        uid_validity: u32,
        uid: u32,
    },
    PlacedMany {
        uid_validity: u32,
        uids: Vec<u32>,
    },
    Copied {
        uid_validity: u32,
        pairs: Vec<(u32, u32)>,
    },
    Folders(Vec<WireFolderInfo>),
    Counts(Vec<Option<WireCounts>>),
    Done,
    /// What `RemoveAll` expunged.
    Removed {
        messages: u64,
    },
    NoSuchMailbox,
    AlreadyExists,
    NotAllowed(String),
    /// Storage or a node could not be reached: try again.
    Unavailable,
}

impl From<MailboxError> for ImapAnswer {
    fn from(error: MailboxError) -> Self {
        match error {
            MailboxError::NoSuchMailbox => ImapAnswer::NoSuchMailbox,
            MailboxError::AlreadyExists => ImapAnswer::AlreadyExists,
            MailboxError::NotAllowed(why) => ImapAnswer::NotAllowed(why),
        }
    }
}

impl Mailboxes {
    /// A message as sessions see it.
    pub fn wire(&self, message: &Message) -> WireMessage {
        WireMessage {
            id: message.id,
            uid: message.meta.uid,
            flags: message.meta.flags & 0x1f,
            keywords: self.keywords_of(message.meta.flags),
            modseq: message.meta.modseq,
            size: message.size,
            date: message.internal_date(),
            holders: message.holders.clone(),
        }
    }

    /// A folder's state as sessions see it.
    pub fn wire_folder(&self, name: &str) -> Result<WireFolder, MailboxError> {
        let view = self.folder_view(name)?;
        Ok(WireFolder {
            uid_validity: view.uid_validity,
            uid_next: view.uid_next,
            highest_modseq: view.highest_modseq,
            messages: view.messages.iter().map(|m| self.wire(m)).collect(),
        })
    }

    /// A folder's counts.
    pub fn counts(&self, name: &str) -> Option<WireCounts> {
        let view = self.folder_view(name).ok()?;
        Some(WireCounts {
            messages: view.messages.len() as u32,
            unseen: view
                .messages
                .iter()
                .filter(|m| m.meta.flags & SEEN == 0)
                .count() as u32,
            uid_next: view.uid_next,
            uid_validity: view.uid_validity,
            highest_modseq: view.highest_modseq,
            size: view.messages.iter().map(|m| m.size).sum(),
            deleted: view
                .messages
                .iter()
                .filter(|m| m.meta.flags & DELETED != 0)
                .count() as u32,
        })
    }

    /// The messages with these ids, as sessions see them.
    pub fn wire_ids(&self, ids: &[u128]) -> Vec<WireMessage> {
        ids.iter()
            .filter_map(|id| self.messages.get(id))
            .map(|m| self.wire(m))
            .collect()
    }

    /// Folders for LIST.
    pub fn folder_infos(&self) -> Vec<WireFolderInfo> {
        let mut folders: Vec<WireFolderInfo> = self
            .profile
            .folders
            .iter()
            .map(|f| WireFolderInfo {
                name: f.name.clone(),
                subscribed: f.subscribed,
                special_use: f.special_use.clone(),
            })
            .collect();
        folders.sort_by(|a, b| (a.name != "INBOX", &a.name).cmp(&(b.name != "INBOX", &b.name)));
        folders
    }

    /// Messages that arrive through APPEND or COPY while their placement is under way: a
    /// refresh in the meantime leaves them alone (they are not new mail for INBOX).
    pub fn expect(&mut self, id: u128) {
        self.expected.insert(id);
    }

    pub fn unexpect(&mut self, id: u128) {
        self.expected.remove(&id);
    }
}

/// What MOVE did: the target's UIDVALIDITY, (old, new) UID pairs, what to persist.
#[derive(Debug)]
pub struct Moved {
    pub uid_validity: u32,
    pub pairs: Vec<(u32, u32)>,
    pub persist: Vec<Persist>,
}

/// A folder's messages, in UID order.
#[derive(Debug)]
pub struct FolderView<'a> {
    pub uid_validity: u32,
    pub uid_next: u32,
    pub highest_modseq: u64,
    pub messages: Vec<&'a Message>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(id: u128, meta: Option<MessageMeta>) -> Listed {
        Listed {
            id,
            size: 100,
            delivered: 1000 + id as i64,
            holders: vec![1, 2],
            meta,
            listed_by: None,
        }
    }

    fn uids(boxes: &Mailboxes, folder: &str) -> Vec<(u32, u128)> {
        boxes
            .folder_view(folder)
            .unwrap()
            .messages
            .iter()
            .map(|m| (m.meta.uid, m.id))
            .collect()
    }

    #[test]
    fn a_copy_that_missed_changes_is_brought_up_to_date() {
        let mut boxes = Mailboxes::new(None, 1_700_000_000);
        let copy = |node: NodeId, meta: Option<MessageMeta>| Listed {
            holders: vec![node],
            listed_by: Some(node),
            ..listed(10, meta)
        };
        boxes.refresh(vec![copy(1, None), copy(2, None)]);
        let current = boxes.messages[&10].meta;
        let older = MessageMeta {
            modseq: current.modseq.saturating_sub(1),
            flags: 0,
            ..current
        };
        let newer = MessageMeta {
            modseq: current.modseq + 5,
            flags: SEEN,
            ..current
        };
        // Node 2 was down while the change was made on node 1; node 3 got its copy late,
        // without meta.
        let persist = boxes.refresh(vec![
            copy(1, Some(newer)),
            copy(2, Some(older)),
            copy(3, None),
        ]);
        let repaired: Vec<(u128, MessageMeta, Vec<NodeId>)> = persist
            .into_iter()
            .filter_map(|p| match p {
                Persist::Meta { id, meta, holders } => Some((id, meta, holders)),
                _ => None,
            })
            .collect();
        assert_eq!(repaired, vec![(10, newer, vec![2, 3])]);
        // Copies that agree need nothing.
        let persist = boxes.refresh(vec![copy(1, Some(newer)), copy(2, Some(newer))]);
        assert!(
            persist.iter().all(|p| !matches!(p, Persist::Meta { .. })),
            "{persist:?}"
        );
    }

    #[test]
    fn new_mail_gets_uids_in_arrival_order_after_the_profile_is_stored() {
        let mut boxes = Mailboxes::new(None, 1_700_000_000);
        let persist = boxes.refresh(vec![listed(30, None), listed(10, None), listed(20, None)]);
        assert!(matches!(persist[0], Persist::Profile(_)), "{persist:?}");
        assert_eq!(uids(&boxes, "INBOX"), vec![(1, 10), (2, 20), (3, 30)]);
        assert_eq!(persist.len(), 4);
        // Seen again: nothing new to store; later mail goes above.
        assert!(boxes
            .refresh(vec![listed(10, None), listed(20, None), listed(30, None)])
            .iter()
            .all(|p| !matches!(p, Persist::Profile(_))));
    }

    #[test]
    fn a_new_authority_starts_above_every_reservation_and_every_uid_it_finds() {
        let mut first = Mailboxes::new(None, 1_700_000_000);
        let persist = first.refresh((1..=5).map(|id| listed(id, None)).collect());
        let Persist::Profile(profile) = persist[0].clone() else {
            panic!()
        };
        let metas: Vec<(u128, MessageMeta)> = persist
            .iter()
            .filter_map(|p| match p {
                Persist::Meta { id, meta, .. } => Some((*id, *meta)),
                _ => None,
            })
            .collect();
        // The first authority dies; the next has the stored profile and the copies.
        let mut second = Mailboxes::new(Some(profile.clone()), 1_700_000_100);
        let mut listing: Vec<Listed> = metas.iter().map(|(id, m)| listed(*id, Some(*m))).collect();
        listing.push(listed(6, None));
        second.refresh(listing);
        let got = uids(&second, "INBOX");
        assert_eq!(&got[..5], &[(1, 1), (2, 2), (3, 3), (4, 4), (5, 5)]);
        let inbox = profile.folders.iter().find(|f| f.id == INBOX).unwrap();
        assert!(got[5].0 >= inbox.uid_reserved, "{got:?} {inbox:?}");
        // Without the copies (their nodes down), still never a UID of the old reservation.
        let mut third = Mailboxes::new(Some(profile.clone()), 1_700_000_200);
        third.refresh(vec![listed(7, None)]);
        assert!(uids(&third, "INBOX")[0].0 >= inbox.uid_reserved);
    }

    #[test]
    fn flags_change_one_by_one_and_modseqs_only_grow() {
        let mut boxes = Mailboxes::new(None, 1);
        boxes.refresh(vec![listed(1, None), listed(2, None)]);
        let before = boxes.folder_view("INBOX").unwrap().highest_modseq;
        boxes.store("INBOX", &[1], FlagChange::Add, SEEN).unwrap();
        boxes
            .store("INBOX", &[1], FlagChange::Add, FLAGGED)
            .unwrap();
        let m = boxes.message("INBOX", 1).unwrap();
        assert_eq!(m.meta.flags, SEEN | FLAGGED);
        assert!(m.meta.modseq > before);
        let (changed, persist) = boxes
            .store("INBOX", &[1, 2], FlagChange::Remove, SEEN)
            .unwrap();
        assert_eq!(changed.len(), 2);
        assert_eq!(persist.len(), 1, "only message 1 changed: {persist:?}");
        assert_eq!(boxes.message("INBOX", 1).unwrap().meta.flags, FLAGGED);
        let kw = boxes.flag_bits(0, &["$Junk".into()]).unwrap();
        assert_eq!(boxes.keywords_of(kw), vec!["$Junk".to_owned()]);
    }

    #[test]
    fn an_expunge_moves_highestmodseq() {
        let mut boxes = Mailboxes::new(None, 1);
        boxes.refresh(vec![listed(1, None), listed(2, None)]);
        let before = boxes.folder_view("INBOX").unwrap().highest_modseq;
        let (gone, _) = boxes.expunge("INBOX", &[2]).unwrap();
        assert_eq!(gone, vec![2]);
        let after = boxes.folder_view("INBOX").unwrap().highest_modseq;
        assert!(after > before, "{before} -> {after}");
        // Expunging nothing changes nothing.
        boxes.expunge("INBOX", &[2, 9]).unwrap();
        assert_eq!(boxes.folder_view("INBOX").unwrap().highest_modseq, after);
    }

    #[test]
    fn imported_uids_are_kept_in_an_empty_folder_and_only_above_what_was_given() {
        let mut boxes = Mailboxes::new(None, 1_000);
        let placed_in = |boxes: &mut Mailboxes, folder: &str, id: u128, uid: u32| {
            let (validity, uid, _) = boxes
                .place_as(folder, listed(id, None), 0, 0, Some(uid))
                .unwrap();
            (validity, uid)
        };
        let placed = |boxes: &mut Mailboxes, id: u128, uid: u32| placed_in(boxes, "Sent", id, uid);
        assert!(boxes.adopt_validity("Sent", 77));
        assert_eq!(placed(&mut boxes, 1, 5), (77, 5));
        assert_eq!(placed(&mut boxes, 2, 9), (77, 9));
        // Not above what the folder gave: a new UID.
        assert_eq!(placed(&mut boxes, 3, 7), (77, 10));
        // Not empty and another UIDVALIDITY: not adopted, UIDs are the folder's own.
        assert!(!boxes.adopt_validity("Sent", 78));
        assert!(boxes.adopt_validity("Sent", 77));
        assert_eq!(uids(&boxes, "Sent"), vec![(5, 1), (9, 2), (10, 3)]);
        // The folder carries on where the source would have: no UID below its next, even
        // those of messages expunged there, is given again.
        // Within the UIDs reserved already: nothing to store.
        assert!(boxes.raise_uid_next("Sent", 40).is_empty());
        assert_eq!(placed(&mut boxes, 4, 12), (77, 40));
        assert!(boxes.raise_uid_next("Sent", 20).is_empty());
        // Beyond them: reserved in the stored profile, so a rebuild starts above it too.
        assert_eq!(boxes.raise_uid_next("Sent", 5_000).len(), 1);
        assert_eq!(placed(&mut boxes, 40, 13), (77, 5_000));
        // A UID near the top of the range is not kept: the folder would have none left.
        assert!(boxes.adopt_validity("Drafts", 78));
        assert_eq!(placed_in(&mut boxes, "Drafts", 5, u32::MAX - 1), (78, 1));
        boxes.raise_uid_next("Drafts", u32::MAX);
        assert_eq!(placed_in(&mut boxes, "Drafts", 6, 7), (78, KEPT_UID_MAX));
        // A folder that gave UIDs keeps its UIDVALIDITY, even with every message expunged.
        boxes.create("Work", 1_000).unwrap();
        let (validity, _, _) = boxes.place_as("Work", listed(7, None), 0, 0, None).unwrap();
        boxes.expunge("Work", &[1]).unwrap();
        assert!(!boxes.adopt_validity("Work", 79));
        assert_eq!(boxes.folder_view("Work").unwrap().uid_validity, validity);
        // INBOX has had mail under its own UIDVALIDITY: it keeps it.
        let mut inbox = Mailboxes::new(None, 1_000);
        inbox.refresh(vec![listed(4, None)]);
        assert!(!inbox.adopt_validity("INBOX", 77));
        assert_eq!(inbox.folder_view("INBOX").unwrap().uid_validity, 1_000);
    }

    #[test]
    fn removing_everything_expunges_all_and_starts_a_new_validity() {
        let mut boxes = Mailboxes::new(None, 1_000);
        boxes.refresh(vec![listed(1, None), listed(2, None), listed(3, None)]);
        boxes.create("Work", 1_000).unwrap();
        boxes.relocate("INBOX", &[3], "Work").unwrap();
        let modseq_before = boxes.folder_view("INBOX").unwrap().highest_modseq;
        // Within the same second as the old mailboxes were made.
        let (removed, persist) = boxes.remove_everything(1_000);
        assert_eq!(removed, 3);
        let Persist::Profile(profile) = &persist[0] else {
            panic!("the profile goes first: {persist:?}");
        };
        assert!(profile.folders.iter().all(|f| f.uid_validity > 1_000));
        assert!(profile.folders.iter().all(|f| f.name != "Work"));
        assert!(profile.modseq_reserved >= modseq_before);
        let mut deleted: Vec<u128> = persist
            .iter()
            .filter_map(|p| match p {
                Persist::Delete { id, .. } => Some(*id),
                _ => None,
            })
            .collect();
        deleted.sort_unstable();
        assert_eq!(deleted, vec![1, 2, 3]);
        assert!(uids(&boxes, "INBOX").is_empty());
        assert!(boxes.folder_view("Work").is_err());
    }

    #[test]
    fn move_expunge_and_folders() {
        let mut boxes = Mailboxes::new(None, 1_000);
        boxes.refresh(vec![listed(1, None), listed(2, None), listed(3, None)]);
        boxes.create("Work", 1_001).unwrap();
        assert_eq!(
            boxes.create("Work", 1_002),
            Err(MailboxError::AlreadyExists)
        );
        let moved = boxes.relocate("INBOX", &[2, 3], "Work").unwrap();
        assert_eq!(moved.pairs, vec![(2, 1), (3, 2)]);
        assert_eq!(uids(&boxes, "INBOX"), vec![(1, 1)]);
        let (gone, persist) = boxes.expunge("Work", &[1, 9]).unwrap();
        assert_eq!(gone, vec![1]);
        assert!(matches!(persist[0], Persist::Delete { id: 2, .. }));
        // A listing that still shows the expunged copy (its tombstone not yet everywhere)
        // would bring it back: the node lists after the deletes are durable.
        boxes.rename("Work", "Play", 1_003).unwrap();
        assert!(boxes.folder_view("Play").is_ok());
        assert!(boxes.delete("INBOX").is_err());
        let persist = boxes.delete("Play").unwrap();
        assert!(persist
            .iter()
            .any(|p| matches!(p, Persist::Delete { id: 3, .. })));
        assert_eq!(
            boxes.folder_view("Play").err(),
            Some(MailboxError::NoSuchMailbox)
        );
        // Made again: a new UIDVALIDITY.
        boxes.create("Play", 1_003).unwrap();
        let old = 1_001;
        assert!(boxes.folder_view("Play").unwrap().uid_validity > old);
    }

    #[test]
    fn renaming_inbox_moves_its_mail() {
        let mut boxes = Mailboxes::new(None, 1_000);
        boxes.refresh(vec![listed(1, None), listed(2, None)]);
        boxes.rename("INBOX", "Old", 1_001).unwrap();
        assert!(uids(&boxes, "INBOX").is_empty());
        assert_eq!(uids(&boxes, "Old").len(), 2);
    }

    #[test]
    fn copies_that_disagree_settle_on_the_newest_and_clashing_uids_are_redone() {
        let mut boxes = Mailboxes::new(None, 1_000);
        let older = MessageMeta {
            folder: INBOX,
            uid: 1,
            flags: 0,
            modseq: 5,
            date: 0,
        };
        let newer = MessageMeta {
            flags: SEEN,
            modseq: 9,
            ..older
        };
        let clash = MessageMeta { modseq: 7, ..older };
        let persist = boxes.refresh(vec![
            listed(1, Some(older)),
            listed(1, Some(newer)),
            listed(2, Some(clash)),
        ]);
        assert_eq!(boxes.message("INBOX", 1).unwrap().meta.flags, SEEN);
        let redone = persist
            .iter()
            .find_map(|p| match p {
                Persist::Meta { id: 2, meta, .. } => Some(*meta),
                _ => None,
            })
            .unwrap();
        assert!(redone.uid > 1, "{redone:?}");
        assert!(MailboxProfile::decode(&boxes.profile().encode()).is_some());
    }
}
