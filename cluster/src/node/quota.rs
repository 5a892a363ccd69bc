//! Quotas: how much mail a user may keep (bytes and messages), what they keep now, and the
//! check made before mail is taken in (SMTP RCPT and end of data, LMTP per recipient, IMAP
//! APPEND and COPY).
//!
//! - **Limits**: the node's default (`--quota-storage`, `--quota-messages`; unlimited unless
//!   set), overridden per user by `porcupine user quota`, which stores a quota profile
//!   (`\u{1}quota:<user>`, on every node like every profile; format below).
//! - **Usage** is never counted by reading the mailbox: each shard's index keeps, per user,
//!   the messages and bytes of each replica set ([`porcupine_engine::Usage`]), changed by
//!   every put and tombstone. Every holder of a replica set counts the same messages, so the
//!   user's usage is, over the replica sets reported by the live members, the largest count
//!   of each set, added up: exact when the copies agree, whichever holder is down. A member
//!   that does not answer is left out (its unreplicated mail uncounted): a check lets mail in
//!   rather than refuse it for a node's absence.
//! - **Checks** are made only for a user with a limit. They count the usage afresh (this
//!   node's cores, and every live member at once), except while the user stays well within
//!   every limit: a count made less than [`USAGE_FRESH_FOR`] ago on this core, plus what this
//!   core has admitted since, stands in for a new one as long as it and the message stay
//!   under [`USAGE_TRUSTED_PERCENT`] % of each limit. A core cannot see what the others take
//!   in meanwhile, so to pass a limit through that window, more than the rest of the limit
//!   would have to arrive elsewhere within it; near a limit every check counts afresh.
//!   Messages taken in at the same moment through several sessions may each pass the check
//!   before any is stored, so a limit can be passed by those few, as with any MTA's.
//!   A core keeps users' own limits until they change; the node's default is read at each
//!   check (SIGHUP changes it, [`super::live_settings`]).
//!
//! Quota profile, version 1 (unknown lines are ignored; `default`: the node's default):
//!
//! | line                               | meaning                                   |
//! |------------------------------------|-------------------------------------------|
//! | `porcupine-quota 1`                | the format and its version                |
//! | `storage <bytes>\|none\|default`    | the storage limit                         |
//! | `messages <count>\|none\|default`   | the message-count limit                   |

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::core_calls::{ReadProfile, UsageHere};
use super::core_context::CoreContext;
use super::service::StoreError;
use crate::rpc::{UsageEntry, UserUsage};

/// How long a core trusts a user's own limits: a change is sent to every member, which forgets
/// them at once ([`super::core_context::CoreContext::forget_users`]); this bounds what a
/// member that missed it keeps until anti-entropy brings it.
pub const LIMITS_FRESH_FOR: Duration = Duration::from_secs(600);
/// How long a core may answer a check from a user's last count (see the module docs).
pub const USAGE_FRESH_FOR: Duration = Duration::from_secs(2);
/// The share of each limit (percent) under which a recent count is trusted.
pub const USAGE_TRUSTED_PERCENT: u64 = 90;
/// Users whose quota a core remembers before it forgets them all.
const CACHED_MAX: usize = 1 << 20;
const HEADER: &str = "porcupine-quota 1\n";

/// The profile name under which a user's own limits are stored.
pub fn profile_name(user: &str) -> String {
    format!("\u{1}quota:{user}")
}

/// The user a quota profile name belongs to.
pub fn user_of_profile(name: &str) -> Option<&str> {
    name.strip_prefix("\u{1}quota:")
}

/// Limits in force (`None`: unlimited).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub storage: Option<u64>,
    pub messages: Option<u64>,
}

impl Limits {
    pub fn is_unlimited(&self) -> bool {
        self.storage.is_none() && self.messages.is_none()
    }

    /// `percent` % of each limit (rounded down).
    pub fn share(&self, percent: u64) -> Limits {
        let part = |max: u64| {
            u64::try_from(u128::from(max) * u128::from(percent) / 100).unwrap_or(u64::MAX)
        };
        Limits {
            storage: self.storage.map(part),
            messages: self.messages.map(part),
        }
    }
}

/// One limit of a user's own: the node's default, none, or a number.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Setting {
    #[default]
    Default,
    Unlimited,
    Limit(u64),
}

impl Setting {
    fn resolve(self, default: Option<u64>) -> Option<u64> {
        match self {
            Setting::Default => default,
            Setting::Unlimited => None,
            Setting::Limit(n) => Some(n),
        }
    }

    fn text(self) -> String {
        match self {
            Setting::Default => "default".into(),
            Setting::Unlimited => "none".into(),
            Setting::Limit(n) => n.to_string(),
        }
    }

    /// `default`, `none`, or a number (`parse` reads it: bytes with K/M/G/T, or a count).
    pub fn parse(text: &str, parse: impl Fn(&str) -> Result<u64, String>) -> Result<Self, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "default" => Ok(Setting::Default),
            "none" | "unlimited" => Ok(Setting::Unlimited),
            other => parse(other).map(Setting::Limit),
        }
    }
}

/// A user's own settings, as stored in their quota profile.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserQuota {
    pub storage: Setting,
    pub messages: Setting,
}

impl UserQuota {
    pub fn encode(&self) -> Vec<u8> {
        format!(
            "{HEADER}storage {}\nmessages {}\n",
            self.storage.text(),
            self.messages.text()
        )
        .into_bytes()
    }

    /// The settings in a stored quota profile; all default for an empty (removed) or foreign
    /// one.
    pub fn decode(bytes: &[u8]) -> Self {
        let mut quota = UserQuota::default();
        let Some(rest) = std::str::from_utf8(bytes)
            .ok()
            .and_then(|t| t.strip_prefix(HEADER))
        else {
            return quota;
        };
        for line in rest.lines() {
            let Some((key, value)) = line.split_once(' ') else {
                continue;
            };
            match key {
                "storage" => quota.storage = Setting::parse(value, parse_count).unwrap_or_default(),
                "messages" => {
                    quota.messages = Setting::parse(value, parse_count).unwrap_or_default()
                }
                _ => {}
            }
        }
        quota
    }

    pub fn resolve(&self, default: Limits) -> Limits {
        Limits {
            storage: self.storage.resolve(default.storage),
            messages: self.messages.resolve(default.messages),
        }
    }
}

/// A count: digits only.
pub fn parse_count(text: &str) -> Result<u64, String> {
    text.trim()
        .parse()
        .map_err(|_| format!("expected a number, got {text:?}"))
}

/// Bytes as operators write them: `500M`, `2G`, `1.5T`, `4096` (K, M, G, T are powers of 1024;
/// a trailing `B` or `iB` is allowed).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let lower = text.to_ascii_lowercase();
    let unit_at = lower
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(lower.len());
    let (number, unit) = lower.split_at(unit_at);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("bad size {text:?} (write it as 500M, 2G, or a number of bytes)"))?;
    let scale: f64 = match unit.trim_end_matches("ib").trim_end_matches('b') {
        "" => 1.0,
        "k" => 1024.0,
        "m" => 1024.0 * 1024.0,
        "g" => 1024.0 * 1024.0 * 1024.0,
        "t" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return Err(format!("bad size unit in {text:?} (use K, M, G or T)")),
    };
    let bytes = value * scale;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(format!("size out of range: {text:?}"));
    }
    Ok(bytes as u64)
}

/// What a user keeps now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    pub messages: u64,
    pub bytes: u64,
}

/// Which limit a message would pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Over {
    Storage,
    Messages,
}

impl Tally {
    /// One message of `size` bytes.
    pub fn one(size: u64) -> Self {
        Tally {
            messages: 1,
            bytes: size,
        }
    }

    /// This and `other` added up.
    pub fn plus(&self, other: Tally) -> Tally {
        Tally {
            messages: self.messages.saturating_add(other.messages),
            bytes: self.bytes.saturating_add(other.bytes),
        }
    }

    /// Whether `adding` more stays within `limits`.
    pub fn admits_adding(&self, adding: Tally, limits: Limits) -> Result<(), Over> {
        if limits
            .storage
            .is_some_and(|max| self.bytes.saturating_add(adding.bytes) > max)
        {
            return Err(Over::Storage);
        }
        if limits
            .messages
            .is_some_and(|max| self.messages.saturating_add(adding.messages) > max)
        {
            return Err(Over::Messages);
        }
        Ok(())
    }
}

/// Adds up the reports of several nodes: each replica set counted once, at its largest.
pub fn merge(reports: impl IntoIterator<Item = (u64, Vec<UsageEntry>)>) -> Tally {
    let mut sets: BTreeMap<Vec<u64>, (u64, u64)> = BTreeMap::new();
    for (node, entries) in reports {
        for entry in entries {
            let key = if entry.replicas.is_empty() {
                vec![node]
            } else {
                entry.replicas
            };
            let best = sets.entry(key).or_default();
            if (entry.messages, entry.bytes) > *best {
                *best = (entry.messages, entry.bytes);
            }
        }
    }
    sets.values().fold(Tally::default(), |t, (m, b)| Tally {
        messages: t.messages.saturating_add(*m),
        bytes: t.bytes.saturating_add(*b),
    })
}

/// A core's cache of users' limits.
#[derive(Debug, Default)]
pub struct QuotaCache {
    users: RefCell<HashMap<String, Cached>>,
}

/// A user's own settings, as read when; their usage as last counted here, and when, plus
/// what this core admitted since.
#[derive(Debug, Default, Clone, Copy)]
struct Cached {
    own: Option<(Instant, UserQuota)>,
    usage: Option<(Instant, Tally)>,
}

impl QuotaCache {
    fn with<T>(&self, user: &str, f: impl FnOnce(&mut Cached) -> T) -> T {
        let mut users = self.users.borrow_mut();
        // Looked up before inserting: the usual case allocates nothing.
        if let Some(cached) = users.get_mut(user) {
            return f(cached);
        }
        if users.len() >= CACHED_MAX {
            users.clear();
        }
        f(users.entry(user.to_owned()).or_default())
    }

    pub fn forget(&self, user: &str) {
        self.users.borrow_mut().remove(user);
    }
}

fn fresh<T: Copy>(slot: Option<(Instant, T)>, trust: Duration) -> Option<T> {
    slot.filter(|(at, _)| at.elapsed() < trust).map(|(_, v)| v)
}

/// The limits in force for `user`: their own, else the node's default (as SIGHUP last set it).
pub async fn limits_of(context: &Rc<CoreContext>, user: &str) -> Result<Limits, StoreError> {
    let default = context.live.load().quota;
    if let Some(own) = context
        .quota_cache
        .with(user, |c| fresh(c.own, LIMITS_FRESH_FOR))
    {
        return Ok(own.resolve(default));
    }
    let own = context
        .call(ReadProfile {
            user: profile_name(user),
        })
        .await?
        .map(|bytes| UserQuota::decode(&bytes))
        .unwrap_or_default();
    context
        .quota_cache
        .with(user, |c| c.own = Some((Instant::now(), own)));
    Ok(own.resolve(default))
}

/// What `user` keeps now, over the whole cluster, asked afresh of this node's cores and every
/// live member (see the module docs).
pub async fn usage_of(context: &Rc<CoreContext>, user: &str) -> Tally {
    let me = context.cluster.me.id;
    let here: Vec<UsageEntry> = context
        .call_each(UsageHere {
            user: user.to_owned(),
        })
        .await;
    let mut reports = vec![(me, here)];
    if context.cluster.clustered() {
        let members: Vec<(u64, String)> = context
            .cluster
            .view
            .load()
            .members
            .iter()
            .filter(|m| m.id != me)
            .map(|m| (m.id, m.addr.clone()))
            .collect();
        let tasks: Vec<_> = members
            .into_iter()
            .map(|(node, addr)| {
                let context = context.clone();
                let call = UserUsage {
                    user: user.to_owned(),
                };
                glommio::spawn_local(async move {
                    let answer = context
                        .peers
                        .call(&addr, call, super::cluster_driver::PEER_TIMEOUT)
                        .await;
                    (node, answer)
                })
            })
            .collect();
        for task in tasks {
            match task.await {
                (node, Ok(entries)) => reports.push((node, entries)),
                (node, Err(error)) => {
                    tracing::debug!(node, ?error, "a member did not report a user's usage")
                }
            }
        }
    }
    merge(reports)
}

/// Whether `user` may take in `adding` more: what SMTP, LMTP and IMAP ask before they store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    Admitted,
    /// No such user (or deleted since the session began).
    NoSuchUser,
    OverQuota(Over),
    /// The user directory or storage could not answer.
    Unavailable,
}

/// Whether `user` exists and may take in `adding` more. No usage is asked for when no limit
/// applies (the usual case costs two cache lookups).
pub async fn admit(context: &Rc<CoreContext>, user: &str, adding: Tally) -> Admission {
    match context.user_exists(user).await {
        Ok(true) => {}
        Ok(false) => return Admission::NoSuchUser,
        Err(_) => return Admission::Unavailable,
    }
    let limits = match limits_of(context, user).await {
        Ok(limits) => limits,
        Err(_) => return Admission::Unavailable,
    };
    if limits.is_unlimited() {
        return Admission::Admitted;
    }
    let cache = &context.quota_cache;
    let recent = cache.with(user, |c| fresh(c.usage, USAGE_FRESH_FOR));
    let usage = match recent {
        Some(usage)
            if usage
                .admits_adding(adding, limits.share(USAGE_TRUSTED_PERCENT))
                .is_ok() =>
        {
            usage
        }
        _ => {
            let counted = usage_of(context, user).await;
            cache.with(user, |c| c.usage = Some((Instant::now(), counted)));
            counted
        }
    };
    match usage.admits_adding(adding, limits) {
        Ok(()) => {
            // Counted as stored at once: a later check here errs on the side of the limit.
            cache.with(user, |c| {
                if let Some((_, counted)) = &mut c.usage {
                    *counted = counted.plus(adding);
                }
            });
            Admission::Admitted
        }
        Err(over) => Admission::OverQuota(over),
    }
}

/// A user's quota as `porcupine user quota` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaReport {
    pub user: String,
    /// The user's own settings (`Default`: the node's).
    pub own: UserQuota,
    /// The limits in force.
    pub limits: Limits,
    /// What the user keeps now, counted afresh.
    pub usage: Tally,
}

/// Why a quota could not be shown or set.
#[derive(Debug, thiserror::Error)]
pub enum QuotaError {
    #[error("no user {0}")]
    NoSuchUser(String),
    #[error("{0}")]
    Invalid(String),
    #[error("storage unavailable: {0}")]
    Storage(String),
}

/// The user's own settings as stored.
async fn own_of(context: &Rc<CoreContext>, user: &str) -> Result<UserQuota, QuotaError> {
    Ok(context
        .call(ReadProfile {
            user: profile_name(user),
        })
        .await
        .map_err(|e| QuotaError::Storage(format!("{e:?}")))?
        .map(|bytes| UserQuota::decode(&bytes))
        .unwrap_or_default())
}

/// Shows the user's quota, after changing the settings given (`storage=…`, `messages=…`,
/// each a number, `none` or `default`) on every member.
pub async fn show_or_set(
    context: &Rc<CoreContext>,
    user: &str,
    settings: &str,
) -> Result<QuotaReport, QuotaError> {
    let user = user.to_lowercase();
    match context.user_exists(&user).await {
        Ok(true) => {}
        Ok(false) => return Err(QuotaError::NoSuchUser(user)),
        Err(e) => return Err(QuotaError::Storage(format!("{e:?}"))),
    }
    let mut own = own_of(context, &user).await?;
    let mut changed = false;
    for word in settings.split_whitespace() {
        let (key, value) = word.split_once('=').ok_or_else(|| {
            QuotaError::Invalid(format!("expected storage=… or messages=…, got {word:?}"))
        })?;
        match key {
            "storage" => {
                own.storage = Setting::parse(value, parse_bytes)
                    .map_err(|e| QuotaError::Invalid(format!("storage: {e}")))?
            }
            "messages" => {
                own.messages = Setting::parse(value, parse_count)
                    .map_err(|e| QuotaError::Invalid(format!("messages: {e}")))?
            }
            _ => {
                return Err(QuotaError::Invalid(format!(
                    "unknown quota setting {key:?}"
                )))
            }
        }
        changed = true;
    }
    if changed {
        super::admin::store_profile(context, profile_name(&user), own.encode())
            .await
            .map_err(|(_, why)| QuotaError::Storage(why.trim().to_owned()))?;
        context.forget_users(vec![user.clone()]).await;
    }
    Ok(QuotaReport {
        limits: own.resolve(context.live.load().quota),
        usage: usage_of(context, &user).await,
        own,
        user,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(replicas: &[u64], messages: u64, bytes: u64) -> UsageEntry {
        UsageEntry {
            replicas: replicas.to_vec(),
            messages,
            bytes,
        }
    }

    #[test]
    fn a_share_of_limits_rounds_down_and_never_overflows() {
        let limits = Limits {
            storage: Some(20_480),
            messages: Some(3),
        };
        assert_eq!(
            limits.share(USAGE_TRUSTED_PERCENT),
            Limits {
                storage: Some(18_432),
                messages: Some(2),
            }
        );
        let huge = Limits {
            storage: Some(u64::MAX),
            messages: None,
        };
        assert_eq!(huge.share(90).storage, Some(16_602_069_666_338_596_453));
        assert_eq!(huge.share(90).messages, None);
        // A recent count near a limit is not trusted, far from it it is.
        let near = Tally {
            messages: 2,
            bytes: 100,
        };
        assert!(near
            .admits_adding(Tally::one(10), limits.share(USAGE_TRUSTED_PERCENT))
            .is_err());
        assert!(near.admits_adding(Tally::one(10), limits).is_ok());
        assert_eq!(
            near.plus(Tally::one(u64::MAX)),
            Tally {
                messages: 3,
                bytes: u64::MAX
            }
        );
    }

    #[test]
    fn each_replica_set_counts_once_and_unreplicated_mail_counts_per_node() {
        let tally = merge([
            (1, vec![entry(&[1, 2], 3, 300), entry(&[], 1, 10)]),
            // Node 2 lags one message behind on {1,2}: the larger count is taken.
            (2, vec![entry(&[1, 2], 2, 200), entry(&[2, 3], 4, 40)]),
            (3, vec![entry(&[2, 3], 4, 40), entry(&[], 2, 20)]),
        ]);
        assert_eq!(
            tally,
            Tally {
                messages: 3 + 1 + 4 + 2,
                bytes: 300 + 10 + 40 + 20
            }
        );
        // Node 1 down: {1,2} still counted through node 2 (its unreplicated mail is not).
        let without_1 = merge([(2, vec![entry(&[1, 2], 3, 300)])]);
        assert_eq!(without_1.messages, 3);
    }

    #[test]
    fn limits_admit_up_to_and_not_past() {
        let limits = Limits {
            storage: Some(1_000),
            messages: Some(3),
        };
        let tally = Tally {
            messages: 2,
            bytes: 900,
        };
        assert_eq!(tally.admits_adding(Tally::one(100), limits), Ok(()));
        assert_eq!(
            tally.admits_adding(Tally::one(101), limits),
            Err(Over::Storage)
        );
        let full = Tally {
            messages: 3,
            bytes: 0,
        };
        assert_eq!(
            full.admits_adding(Tally::one(1), limits),
            Err(Over::Messages)
        );
        assert_eq!(
            full.admits_adding(Tally::one(u64::MAX), Limits::default()),
            Ok(())
        );
    }

    #[test]
    fn a_user_quota_round_trips_and_falls_back_to_the_default() {
        let quota = UserQuota {
            storage: Setting::Limit(5 << 20),
            messages: Setting::Unlimited,
        };
        assert_eq!(UserQuota::decode(&quota.encode()), quota);
        let default = Limits {
            storage: Some(1),
            messages: Some(2),
        };
        assert_eq!(
            quota.resolve(default),
            Limits {
                storage: Some(5 << 20),
                messages: None
            }
        );
        assert_eq!(UserQuota::decode(b"").resolve(default), default);
        assert_eq!(
            UserQuota::decode(b"garbage\nstorage 1\n"),
            UserQuota::default()
        );
    }

    #[test]
    fn sizes_read_as_operators_write_them() {
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("500M"), Ok(500 << 20));
        assert_eq!(parse_bytes("2GiB"), Ok(2 << 30));
        assert_eq!(parse_bytes("1.5k"), Ok(1536));
        assert!(parse_bytes("12X").is_err());
        assert!(parse_bytes("").is_err());
        assert_eq!(Setting::parse("none", parse_bytes), Ok(Setting::Unlimited));
    }
}
