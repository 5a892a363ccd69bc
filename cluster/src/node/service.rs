//! The shard service: each core owns its shards, the maildrop locks and the credential cache
//! of their users, and serves the calls about them ([`super::core_calls`]) that reach it from
//! any core ([`super::core_call::Router`]) or from its own ([`super::core_context`]). Nothing is
//! shared between cores but channels.
//!
//! A user's mail and profile live on one of the shards of core `placement.core_of(user)`, one
//! per data directory (which one: [`super::core_shards`]). Each call runs in its own task, so
//! concurrent deliveries share group commits.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;

use porcupine_engine::{EngineError, Placement, Shard};

use super::core_call::ToCore;
use super::core_shards::CoreShards;
use super::replicas::CoreReplication;
use super::users;
use super::NodeContext;
use crate::transport::Peers;

pub use super::replicas::Applied;
pub use super::status::ShardReport;
pub use crate::delivery::StoreError;

/// What an engine failure means to a protocol: a full disk is 452, anything else 451.
pub fn store_error(error: &EngineError) -> StoreError {
    if matches!(error, EngineError::NoSpace { .. }) {
        StoreError::NoSpace
    } else {
        StoreError::Failed
    }
}

/// The answer to a login.
#[derive(Debug)]
pub enum Login {
    /// Authenticated and locked: the maildrop (message id, size), oldest first.
    Ok(Vec<(u128, u64)>),
    BadCredentials,
    InUse,
    Unavailable,
}

/// How a login proves who the user is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credential {
    /// A password, checked against the stored argon2 hash (USER/PASS, SASL PLAIN).
    Password(String),
    /// Already proven on this node's session (SASL SCRAM, checked against the stored keys).
    Proven,
}

/// Where a POP3 login takes the maildrop lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockMode {
    /// On the core that owns the user (a node alone).
    Local,
    /// Not here: the cluster's bucket manager holds it.
    Elsewhere,
}

/// The shards of one core and the maildrop locks of their users.
#[derive(Debug)]
pub struct CoreService {
    /// This core's context (set once it exists): for the calls that reach other nodes.
    context: RefCell<std::rc::Weak<super::core_context::CoreContext>>,
    /// The IMAP authorities this core runs, by user ([`super::imap_authority`]).
    pub(super) imap: RefCell<HashMap<String, Rc<super::imap_authority::Authority>>>,
    core: usize,
    shards: Rc<CoreShards>,
    locked: RefCell<HashSet<String>>,
    /// Credentials verified recently. Argon2 costs tens of milliseconds of CPU by design; paying
    /// it on every POP login would stall this core. Keyed by the profile's HLC, which the index
    /// holds, so a repeated login reads nothing from disk and any new profile (a changed
    /// password, from this node or pushed by another) misses.
    verified: RefCell<HashMap<String, VerifiedCredential>>,
    /// Secret key of those hashes, fresh per process.
    verified_key: u64,
    /// Recent wrong passwords per account verified on this core.
    account_failures: RefCell<HashMap<String, crate::abuse::Failures>>,
    /// When this service started (the clock of `account_failures`).
    started: std::time::Instant,
    replication: Rc<CoreReplication>,
    /// Users whose profile another node sent, stored here since the removed-users sweep last
    /// looked ([`super::removed_users`]): a profile's timestamp is when it was made, not when
    /// it arrived. `None` when there were too many to list: the next look takes every user.
    profiles_arrived: RefCell<Option<HashSet<String>>>,
}

/// Arrived profiles a core lists before its next look takes every user instead.
const PROFILES_ARRIVED_MAX: usize = 1 << 16;

/// Accounts whose failures a core remembers before it drops the forgotten ones.
const ACCOUNT_FAILURES_MAX: usize = 1 << 16;

/// A password that matched a user's profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct VerifiedCredential {
    /// The HLC of the profile it was verified against.
    profile_hlc: u64,
    /// Keyed hash of the password.
    tag: u64,
}

/// Entries kept in the verified-credentials cache before it is cleared.
const VERIFIED_CACHE_MAX: usize = 1 << 20;

impl CoreService {
    pub fn new(
        core: usize,
        placement: Placement,
        shards: HashMap<usize, Shard>,
        context: Arc<NodeContext>,
        peers: Rc<Peers>,
    ) -> Rc<Self> {
        let shards = Rc::new(CoreShards::new(placement, shards));
        let replication = CoreReplication::new(context, peers, shards.clone());
        Rc::new(Self {
            context: RefCell::new(std::rc::Weak::new()),
            imap: RefCell::new(HashMap::new()),
            core,
            shards,
            locked: RefCell::new(HashSet::new()),
            verified: RefCell::new(HashMap::new()),
            verified_key: rand::random(),
            account_failures: RefCell::new(HashMap::new()),
            started: std::time::Instant::now(),
            replication,
            profiles_arrived: RefCell::new(Some(HashSet::new())),
        })
    }

    /// Notes that another node's profile for `user` was stored here.
    pub fn note_profile_arrived(&self, user: &str) {
        let mut arrived = self.profiles_arrived.borrow_mut();
        if let Some(users) = arrived.as_mut() {
            if users.len() >= PROFILES_ARRIVED_MAX {
                *arrived = None;
            } else {
                users.insert(user.to_owned());
            }
        }
    }

    /// The users whose profile arrived since the last call (`None`: too many to list).
    pub fn take_profiles_arrived(&self) -> Option<HashSet<String>> {
        self.profiles_arrived.replace(Some(HashSet::new()))
    }

    /// Remembers this core's context (once, when it is made).
    pub fn set_context(&self, context: &Rc<super::core_context::CoreContext>) {
        *self.context.borrow_mut() = Rc::downgrade(context);
    }

    /// This core's context, if the core is running.
    pub fn context(&self) -> Option<Rc<super::core_context::CoreContext>> {
        self.context.borrow().upgrade()
    }

    /// This core's replication edge (its timer task runs beside the service).
    pub fn replication(&self) -> &Rc<CoreReplication> {
        &self.replication
    }

    /// This core's shards.
    pub fn shards(&self) -> &CoreShards {
        &self.shards
    }

    /// The shard that holds `user`.
    pub fn shard(&self, user: &str) -> Option<&Shard> {
        self.shards.for_user(user)
    }

    /// Releases `user`'s maildrop lock on this core.
    pub fn unlock(&self, user: &str) {
        self.locked.borrow_mut().remove(user);
    }

    /// Serves calls until a `Shutdown` has been handled.
    pub async fn run(self: Rc<Self>, calls: flume::Receiver<ToCore>) {
        while let Ok(call) = calls.recv_async().await {
            match call {
                ToCore::Call(job) => job(&self),
                ToCore::Shutdown(reply) => {
                    for shard in self.shards.all() {
                        if let Err(error) = shard.close().await {
                            tracing::error!(shard = shard.name(), %error, "closing shard");
                        }
                    }
                    let _ = reply.send(());
                    return;
                }
            }
        }
    }

    pub async fn login(&self, user: &str, credential: &Credential, lock: LockMode) -> Login {
        let Some(shard) = self.shard(user) else {
            return Login::Unavailable;
        };
        if let Credential::Password(password) = credential {
            if let Err(refused) = self.check_password(shard, user, password).await {
                return refused;
            }
        } else if !shard.has_live_profile(user) {
            return Login::BadCredentials;
        }
        if lock == LockMode::Local && !self.locked.borrow_mut().insert(user.to_owned()) {
            return Login::InUse;
        }
        // POP3 and IMAP share INBOX: mail an IMAP client filed elsewhere is not listed.
        Login::Ok(
            shard
                .messages(user)
                .iter()
                .filter(|m| m.filing.folder == crate::mailbox::INBOX)
                .map(|m| (m.id, u64::from(m.body_len)))
                .collect(),
        )
    }

    /// Checks a password, from the verified-credentials cache or against the stored hash.
    async fn check_password(&self, shard: &Shard, user: &str, password: &str) -> Result<(), Login> {
        let hlc = shard.profile_hlc(user);
        let tag = xxhash_rust::xxh3::xxh3_64_with_seed(password.as_bytes(), self.verified_key);
        let known = hlc.is_some_and(|profile_hlc| {
            self.verified.borrow().get(user) == Some(&VerifiedCredential { profile_hlc, tag })
        });
        if !known {
            self.verify(shard, user, password).await?;
            // Cached only if the profile did not change while it was read and verified.
            if let Some(profile_hlc) = hlc.filter(|&h| shard.profile_hlc(user) == Some(h)) {
                let mut verified = self.verified.borrow_mut();
                if verified.len() >= VERIFIED_CACHE_MAX {
                    verified.clear();
                }
                verified.insert(user.to_owned(), VerifiedCredential { profile_hlc, tag });
            }
        }
        Ok(())
    }

    /// Reads the user's profile and checks the password against its argon2 hash; the refusal
    /// (`BadCredentials` or `Unavailable`) if it does not match. A wrong password waits, the
    /// longer the more this account failed lately ([`crate::abuse::penalty`]): the account's
    /// logins are all verified here, whichever node the client is on.
    async fn verify(&self, shard: &Shard, user: &str, password: &str) -> Result<(), Login> {
        let outcome = self.verify_once(shard, user, password).await;
        let now = self.started.elapsed().as_millis() as u64;
        match outcome {
            Err(Login::BadCredentials) => {
                let wait = {
                    let mut failures = self.account_failures.borrow_mut();
                    if failures.len() >= ACCOUNT_FAILURES_MAX {
                        failures.retain(|_, f| !f.forgotten(now));
                    }
                    let record = failures.entry(user.to_owned()).or_default();
                    record.failed(now);
                    crate::abuse::penalty(record.count(now))
                };
                glommio::timer::sleep(wait).await;
            }
            Ok(()) => {
                self.account_failures.borrow_mut().remove(user);
            }
            Err(_) => {}
        }
        outcome
    }

    async fn verify_once(&self, shard: &Shard, user: &str, password: &str) -> Result<(), Login> {
        let profile = match shard.read_profile(user).await {
            // A removed user (`user delete`) is refused as one that never existed.
            Ok(Some(profile)) if !profile.is_empty() => profile,
            Ok(_) => {
                // Spend comparable time so a missing user is not told apart by timing.
                let password = password.to_owned();
                let _ = glommio::executor()
                    .spawn_blocking(move || users::verify_password(DUMMY_HASH, &password))
                    .await;
                return Err(Login::BadCredentials);
            }
            Err(_) => return Err(Login::Unavailable),
        };
        let Some(phc) = users::password_of(&profile) else {
            return Err(Login::Unavailable);
        };
        // Verify off the executor: argon2 would otherwise stall every session on this core.
        let password = password.to_owned();
        let ok = glommio::executor()
            .spawn_blocking(move || users::verify_password(&phc, &password))
            .await;
        if ok {
            Ok(())
        } else {
            Err(Login::BadCredentials)
        }
    }

    pub fn reports(&self) -> Vec<ShardReport> {
        let mut reports: Vec<ShardReport> = self
            .shards
            .all()
            .map(|shard| {
                let stats = shard.stats();
                let m = shard.metrics();
                ShardReport {
                    name: shard.name().to_owned(),
                    core: self.core,
                    dir: shard.dir().display().to_string(),
                    messages: stats.messages,
                    // Users, not the profiles the node keeps for itself (IMAP, quotas).
                    users: shard.profile_count(|name| !super::imap_authority::is_internal(name)),
                    segments: stats.segments,
                    poisoned: stats.poisoned,
                    appended_records: m.records,
                    appended_bytes: m.bytes,
                    segments_recycled: m.recycled_segments,
                    segments_created: m.created_segments,
                    zeroed_bytes: m.zeroed_bytes,
                    compacted_bytes: m.compacted_bytes,
                    checkpoint_bytes: m.checkpoint_bytes,
                    fsyncs: m.syncs,
                    records_per_fsync_mean: m.records_per_sync.mean,
                    fsync_p50_us: m.sync_micros.p50,
                    fsync_p99_us: m.sync_micros.p99,
                    ack_p50_us: m.ack_micros.p50,
                    ack_p99_us: m.ack_micros.p99,
                    ack_p999_us: m.ack_micros.p999,
                    pending_updates: shard.pending_count(),
                    load: shard.load(),
                    throttle: shard.storage().throttle().map(|t| t.to_string()),
                    fsync_histogram: super::status::Histogram::of(&m.sync_buckets),
                    ack_histogram: super::status::Histogram::of(&m.ack_buckets),
                }
            })
            .collect();
        reports.sort_by(|a, b| a.name.cmp(&b.name));
        reports
    }
}

/// A valid argon2id hash of a random password, verified against when a user does not exist.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$+ZSbd0Eo3mHNJ1SL9ZFfbN3IaudrldSkHQsHs2YeHhk";
