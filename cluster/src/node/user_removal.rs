//! `porcupine user delete`: removes a user from the whole cluster. In order:
//! 1. the user's profile is replaced by a removed one (an empty profile, see the engine's
//!    `ProfileEntry::is_removed`) here and on every member; it is newer than every copy of
//!    the old profile, so a member that was away and comes back with the old one loses to it
//!    (anti-entropy sends the newest profile everywhere): the address is refused at RCPT and
//!    its logins fail on every node from then on;
//! 2. every core of this node forgets that the user exists (the other members forget when
//!    the removal reaches them), and a message already past RCPT is refused at the end of its
//!    data, when the recipient is checked again;
//! 3. the user's IMAP authority expunges every message in every folder, each by a tombstone
//!    sent to every node holding a copy (the tombstones POP3 and IMAP deletes use, pending until
//!    every replica has them), and starts the folder list again, UIDVALIDITY raised.
//!
//! A member that does not take the removal in step 1, or a holder unreachable in step 3,
//! makes the command fail saying so; running it again repeats every step (each is idempotent).

use std::rc::Rc;

use serde::{Deserialize, Serialize};

use super::core_calls::RemovedAt;
use super::core_context::CoreContext;
use super::imap_authority;
use crate::mailbox::{ImapAnswer, ImapOp};

/// What a removal did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removal {
    pub user: String,
    /// Messages expunged (every folder).
    pub messages: u64,
    /// Whether this run removed the profile (`false`: an earlier run had; this one finished
    /// removing the mail).
    pub profile_removed: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RemovalError {
    #[error("no user {0}")]
    NoSuchUser(String),
    #[error("storage unavailable: {0}")]
    Storage(String),
    #[error(
        "{0} can no longer receive mail or log in, but their messages could not all be \
         removed now (a node holding copies is unreachable); run the command again"
    )]
    MailRemains(String),
    #[error(
        "{0} is removed here, but members {1:?} did not take the removal (they still take \
         the user's mail until they do); run the command again"
    )]
    NotEverywhere(String, Vec<u64>),
}

pub async fn remove(context: &Rc<CoreContext>, user: &str) -> Result<Removal, RemovalError> {
    let user = user.to_lowercase();
    let profile_removed = match context.user_exists(&user).await {
        Ok(true) => true,
        Ok(false) => {
            // Only a user removed before (whose mail may remain) is removed again.
            let removed = context
                .call(RemovedAt { user: user.clone() })
                .await
                .map_err(|e| RemovalError::Storage(format!("{e:?}")))?;
            if removed.is_none() {
                return Err(RemovalError::NoSuchUser(user));
            }
            false
        }
        Err(e) => return Err(RemovalError::Storage(format!("{e:?}"))),
    };
    // Sent again by a second run: a member that missed it the first time gets it now. A
    // per-user quota goes with the user.
    let mut missed = Vec::new();
    for name in [user.clone(), super::quota::profile_name(&user)] {
        missed.extend(
            super::admin::store_profile_everywhere(context, name, Vec::new())
                .await
                .map_err(|(_, why)| RemovalError::Storage(why.trim().to_owned()))?,
        );
    }
    context.forget_users(vec![user.clone()]).await;
    let messages = match imap_authority::call(context, &user, ImapOp::RemoveAll).await {
        ImapAnswer::Removed { messages } => messages,
        _ => return Err(RemovalError::MailRemains(user)),
    };
    if !missed.is_empty() {
        missed.sort_unstable();
        missed.dedup();
        return Err(RemovalError::NotEverywhere(user, missed));
    }
    Ok(Removal {
        user,
        messages,
        profile_removed,
    })
}
