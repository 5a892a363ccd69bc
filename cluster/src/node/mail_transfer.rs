//! Moving a user's mail in and out (`porcupine import` and `porcupine export`), through the
//! user's IMAP authority like any client's APPEND and FETCH: the user's messages as a list
//! (folder, UID, id, flags, date, size, holders), one message's bytes, and a folder's messages
//! stored together (the folder made if missing), each with its flags, date and an id the
//! caller chose, so a run repeated after an interruption stores nothing twice.

use std::rc::Rc;

use porcupine_protocols::imap::command::Flag;
use serde::{Deserialize, Serialize};

use super::core_context::CoreContext;
use super::imap_authority;
use super::imap_conn::{bits_of, flags_of, read};
use crate::mailbox::{ImapAnswer, ImapOp};

/// One message of the user, as export and import see it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredMail {
    pub folder: String,
    /// The folder's UIDVALIDITY (0 from a node that did not say).
    #[serde(default)]
    pub uid_validity: u32,
    /// The folder's next UID (0 from a node that did not say).
    #[serde(default)]
    pub uid_next: u32,
    pub uid: u32,
    /// The message id, 32 hex digits.
    pub id: String,
    /// IMAP flags and keywords (`\Seen`, `$Forwarded`, …).
    pub flags: Vec<String>,
    /// INTERNALDATE, Unix seconds.
    pub date: i64,
    pub size: u64,
    pub holders: Vec<u64>,
}

/// Several messages for one folder ([`store_many`]): each one's flags, date, id and length;
/// their bytes follow the request line, one after another.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NewMails {
    pub user: String,
    pub folder: String,
    pub items: Vec<NewItem>,
    /// The folder's UIDVALIDITY where the messages come from, if their UIDs should be kept.
    #[serde(default)]
    pub uid_validity: Option<u32>,
    /// With a folder's last batch: the next UID where the messages come from (Dovecot's `N`),
    /// so the folder's next UID here is at least that.
    #[serde(default)]
    pub uid_next: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NewItem {
    pub flags: Vec<String>,
    pub date: i64,
    pub id: String,
    pub len: usize,
    /// The message's UID where it comes from.
    #[serde(default)]
    pub uid: Option<u32>,
}

/// Most messages of one [`store_many`] call, and most bytes (it travels in one frame).
pub const MANY_MESSAGES_MAX: usize = 256;
pub const MANY_BYTES_MAX: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("no user {0}")]
    NoSuchUser(String),
    #[error("{0}")]
    Refused(String),
    #[error(
        "the user's mailbox could not be reached now (a node or a majority unreachable); try again"
    )]
    Unavailable,
}

async fn known_user(context: &Rc<CoreContext>, user: &str) -> Result<(), TransferError> {
    match context.user_exists(user).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(TransferError::NoSuchUser(user.to_owned())),
        Err(_) => Err(TransferError::Unavailable),
    }
}

/// Every message of `user`, folder by folder, in UID order.
pub async fn list(context: &Rc<CoreContext>, user: &str) -> Result<Vec<StoredMail>, TransferError> {
    known_user(context, user).await?;
    let folders = imap_authority::every_folder(context, user)
        .await
        .ok_or(TransferError::Unavailable)?;
    let mut out = Vec::new();
    for (info, folder) in folders {
        for message in &folder.messages {
            out.push(StoredMail {
                folder: info.name.clone(),
                uid_validity: folder.uid_validity,
                uid_next: folder.uid_next,
                uid: message.uid,
                id: format!("{:032x}", message.id),
                flags: flags_of(message)
                    .iter()
                    .map(|f| f.as_str().to_owned())
                    .collect(),
                date: message.date,
                size: message.size,
                holders: message.holders.clone(),
            });
        }
    }
    Ok(out)
}

/// The bytes of message `id` (hex), read from one of `holders`.
pub async fn fetch(
    context: &Rc<CoreContext>,
    user: &str,
    id: &str,
    holders: &[u64],
) -> Result<Vec<u8>, TransferError> {
    let id = parse_id(id)?;
    read(context, user, id, holders)
        .await
        .ok_or(TransferError::Unavailable)
}

fn parse_id(id: &str) -> Result<u128, TransferError> {
    if id.len() != 32 {
        return Err(TransferError::Refused(format!(
            "bad message id {id:?}: 32 hex digits"
        )));
    }
    u128::from_str_radix(id, 16)
        .ok()
        .filter(|id| *id != 0)
        .ok_or_else(|| TransferError::Refused(format!("bad message id {id:?}: 32 hex digits")))
}

/// A flag as IMAP writes it (the IMAP parser's rule): a system flag, or a keyword.
fn parse_flag(text: &str) -> Result<Flag, TransferError> {
    porcupine_protocols::imap::parser::parse_flag(text)
        .filter(|flag| *flag != Flag::Recent)
        .ok_or_else(|| TransferError::Refused(format!("bad flag {text:?}")))
}

/// Stores several messages into one folder (made if missing) together, their writes sharing
/// group commits; their UIDs in order.
pub async fn store_many(
    context: &Rc<CoreContext>,
    mails: NewMails,
    bytes: &[u8],
) -> Result<Vec<u32>, TransferError> {
    known_user(context, &mails.user).await?;
    if mails.items.len() > MANY_MESSAGES_MAX || bytes.len() > MANY_BYTES_MAX {
        return Err(TransferError::Refused(format!(
            "at most {MANY_MESSAGES_MAX} messages and {MANY_BYTES_MAX} bytes per call"
        )));
    }
    let mut messages = Vec::with_capacity(mails.items.len());
    let mut at = 0usize;
    for item in &mails.items {
        let end = at
            .checked_add(item.len)
            .filter(|end| *end <= bytes.len())
            .ok_or_else(|| {
                TransferError::Refused("the messages are shorter than their lengths say".into())
            })?;
        if item.len > context.config.smtp_limits.message_bytes_max {
            return Err(TransferError::Refused(format!(
                "message {} of {} bytes, over --message-bytes-max",
                item.id, item.len
            )));
        }
        let flags = item
            .flags
            .iter()
            .map(|f| parse_flag(f))
            .collect::<Result<Vec<Flag>, _>>()?;
        let (bits, keywords) = bits_of(&flags);
        messages.push(crate::mailbox::NewMessage {
            id: parse_id(&item.id)?,
            flags: bits,
            keywords,
            date: item.date,
            message: bytes[at..end].to_vec(),
            uid: item.uid,
        });
        at = end;
    }
    if at != bytes.len() {
        return Err(TransferError::Refused(
            "bytes left after the last message".into(),
        ));
    }
    for attempt in 0..2 {
        let op = ImapOp::AppendMany {
            folder: mails.folder.clone(),
            messages: messages.clone(),
            uid_validity: mails.uid_validity,
            uid_next: mails.uid_next,
        };
        match imap_authority::call(context, &mails.user, op).await {
            ImapAnswer::PlacedMany { uids, .. } => return Ok(uids),
            ImapAnswer::NoSuchMailbox if attempt == 0 => {
                let create = ImapOp::Create {
                    folder: mails.folder.clone(),
                };
                match imap_authority::call(context, &mails.user, create).await {
                    ImapAnswer::Done | ImapAnswer::AlreadyExists => {}
                    ImapAnswer::NotAllowed(why) => return Err(TransferError::Refused(why)),
                    _ => return Err(TransferError::Unavailable),
                }
            }
            ImapAnswer::NotAllowed(why) => return Err(TransferError::Refused(why)),
            _ => return Err(TransferError::Unavailable),
        }
    }
    Err(TransferError::Unavailable)
}
