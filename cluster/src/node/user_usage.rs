//! What `porcupine user show` reports of one user: each folder's messages, unseen and bytes,
//! the totals, the quota's limits, and where the copies lie (node by node), from the user's IMAP authority after a
//! fresh listing of every fragment; the same view a client's SELECT gets.

use std::collections::BTreeMap;
use std::rc::Rc;

use crate::mailbox::SEEN;
use serde::{Deserialize, Serialize};

use super::core_context::CoreContext;
use super::imap_authority;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FolderUsage {
    pub name: String,
    pub special_use: Option<String>,
    pub messages: u64,
    pub unseen: u64,
    pub bytes: u64,
}

/// The copies one node holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeUsage {
    pub node: u64,
    /// Its cluster address, if it is a member of this node's view.
    pub addr: Option<String>,
    pub copies: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UserUsage {
    pub user: String,
    pub messages: u64,
    pub bytes: u64,
    pub folders: Vec<FolderUsage>,
    pub nodes: Vec<NodeUsage>,
    /// The quota's limits in force (unlimited when absent: a report from an older node).
    #[serde(default)]
    pub quota: super::quota::Limits,
}

/// Why a user's usage could not be told.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error("no user {0}")]
    NoSuchUser(String),
    #[error(
        "the user's mailbox could not be listed now (a node or a majority unreachable); try again"
    )]
    Unavailable,
}

pub async fn usage(context: &Rc<CoreContext>, user: &str) -> Result<UserUsage, UsageError> {
    match context.user_exists(user).await {
        Ok(true) => {}
        Ok(false) => return Err(UsageError::NoSuchUser(user.to_owned())),
        Err(_) => return Err(UsageError::Unavailable),
    }
    let folders = imap_authority::every_folder(context, user)
        .await
        .ok_or(UsageError::Unavailable)?;
    let members: BTreeMap<u64, String> = context
        .cluster
        .view
        .load()
        .members
        .iter()
        .map(|m| (m.id, m.addr.clone()))
        .collect();
    let mut report = UserUsage {
        user: user.to_owned(),
        messages: 0,
        bytes: 0,
        folders: Vec::new(),
        nodes: Vec::new(),
        quota: super::quota::limits_of(context, user)
            .await
            .map_err(|_| UsageError::Unavailable)?,
    };
    let mut nodes: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for (info, folder) in folders {
        let mut usage = FolderUsage {
            name: info.name,
            special_use: info.special_use,
            messages: 0,
            unseen: 0,
            bytes: 0,
        };
        for message in &folder.messages {
            usage.messages += 1;
            usage.bytes = usage.bytes.saturating_add(message.size);
            if message.flags & SEEN == 0 {
                usage.unseen += 1;
            }
            for holder in &message.holders {
                let entry = nodes.entry(*holder).or_default();
                entry.0 += 1;
                entry.1 = entry.1.saturating_add(message.size);
            }
        }
        report.messages += usage.messages;
        report.bytes = report.bytes.saturating_add(usage.bytes);
        report.folders.push(usage);
    }
    report.nodes = nodes
        .into_iter()
        .map(|(node, (copies, bytes))| NodeUsage {
            node,
            addr: members.get(&node).cloned(),
            copies,
            bytes,
        })
        .collect();
    Ok(report)
}
