//! The shard service: each core owns its shards and answers requests about the users they
//! hold, from any core, over a flume channel. Nothing is shared between cores but channels.
//!
//! A user's mail and profile live on one of the shards of core `placement.core_of(user)`, one
//! per data directory (which one: [`super::core_shards`]). [`Router`] sends a request to that
//! core and awaits the answer. The service
//! runs each request in its own task so concurrent deliveries share group commits. A request
//! for a user of the asking core itself is served in place, in the asking task: no channel
//! hop, no cross-thread wakeup. Each core also remembers which users it has seen exist (users
//! are never removed), so a recipient check costs a hop only the first time.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;

use porcupine_engine::{DeleteOutcome, EngineError, Placement, ReplicaSet, Shard, Stamp};

use super::core_shards::CoreShards;
use super::replicas::CoreReplication;
use super::users;
use super::NodeContext;
use crate::membership::NodeId;
use crate::replication::Update;
use porcupine_protocols::sasl::ScramCredentials;

pub use super::replicas::Applied;
pub use crate::delivery::StoreError;
pub use crate::rpc::ListedMessage;

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

/// Summary of one shard for `/status` and `/metrics`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ShardReport {
    pub name: String,
    pub core: usize,
    pub dir: String,
    pub messages: u64,
    pub users: usize,
    pub segments: usize,
    pub poisoned: Option<String>,
    pub appended_records: u64,
    pub appended_bytes: u64,
    pub fsyncs: u64,
    pub records_per_fsync_mean: f64,
    pub fsync_p50_us: u64,
    pub fsync_p99_us: u64,
    pub ack_p50_us: u64,
    pub ack_p99_us: u64,
    pub ack_p999_us: u64,
    /// Replicated updates here not yet acknowledged by every replica.
    pub pending_updates: usize,
    /// Operations under way that may touch the shard's disk (what placement balances on).
    pub load: u32,
    /// The simulated disk of the shard's directory, if it is throttled (experiments).
    pub throttle: Option<String>,
}

type Reply<T> = flume::Sender<T>;

/// A user's mail on this node: oldest first, each with its replica set, and the messages
/// deleted here whose tombstones are still on their way to other replicas.
pub use crate::rpc::Listed as Fragment;

/// A request to the core that owns `user`'s shard.
pub enum Request {
    /// Store a message here and coordinate its replication to `replicas` (this node first;
    /// empty or this node alone: not replicated).
    Deliver {
        user: String,
        id: u128,
        message: Arc<Vec<u8>>,
        replicas: Vec<NodeId>,
        reply: Reply<Result<(), StoreError>>,
    },
    /// A replicated update pushed by another node.
    Replicate {
        update: Update,
        message: Option<Vec<u8>>,
        reply: Reply<Result<Applied, StoreError>>,
    },
    /// Updates the node driving them retired: (user, id, HLC).
    Retired {
        entries: Vec<(String, u128, u64)>,
    },
    UserExists {
        user: String,
        reply: Reply<Result<bool, StoreError>>,
    },
    Login {
        user: String,
        credential: Credential,
        lock: LockMode,
        reply: Reply<Login>,
    },
    /// The user's stored SCRAM-SHA-256 credentials (`None`: no such user, or none stored).
    ScramCredentials {
        user: String,
        reply: Reply<Result<Option<ScramCredentials>, StoreError>>,
    },
    /// The user's local fragment.
    List {
        user: String,
        reply: Reply<Fragment>,
    },
    /// Users with messages, or with deletes not yet on every replica, on this core's shards.
    FragmentUsers {
        reply: Reply<Vec<String>>,
    },
    /// Every profile on this core's shards, with the timestamp of its update.
    Profiles {
        reply: Reply<Vec<(String, u64, Vec<u8>)>>,
    },
    Unlock {
        user: String,
        reply: Reply<()>,
    },
    Fetch {
        user: String,
        id: u128,
        reply: Reply<Result<Vec<u8>, StoreError>>,
    },
    /// Delete messages here; their tombstones also go to `fragments` (nodes that may hold
    /// copies), beside each message's replica set.
    Delete {
        user: String,
        ids: Vec<u128>,
        fragments: Vec<NodeId>,
        reply: Reply<Result<(), StoreError>>,
    },
    /// Store a profile: made here (`stamp` `None`) or on another node; the newest wins.
    /// The answer is the stored update's timestamp (`None`: the profile here was newer).
    PutProfile {
        user: String,
        profile: Arc<Vec<u8>>,
        stamp: Option<Stamp>,
        reply: Reply<Result<Option<u64>, StoreError>>,
    },
    ListUsers {
        reply: Reply<Vec<String>>,
    },
    Report {
        reply: Reply<Vec<ShardReport>>,
    },
    /// Stop: close the shards (finishing queued writes) and answer when done.
    Shutdown {
        reply: Reply<()>,
    },
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Request")
    }
}

/// Users a core remembers as existing before it forgets them all (a bound on memory, not a
/// correctness limit: a forgotten user is asked about again).
const KNOWN_USERS_MAX: usize = 1 << 20;

thread_local! {
    /// The service of the core this thread runs, while it serves ([`CoreService::run`]).
    static LOCAL_SERVICE: RefCell<Option<(usize, Rc<CoreService>)>> = const { RefCell::new(None) };
    /// Users this core has been told exist.
    static KNOWN_USERS: RefCell<HashSet<String>> = RefCell::new(HashSet::new());
}

/// This thread's core service, if it is `core`'s.
fn local_service(core: usize) -> Option<Rc<CoreService>> {
    LOCAL_SERVICE.with(|local| match &*local.borrow() {
        Some((mine, service)) if *mine == core => Some(service.clone()),
        _ => None,
    })
}

/// Sends requests to the core that owns a user. Cheap to clone; `Send`.
#[derive(Clone, Debug)]
pub struct Router {
    placement: Placement,
    cores: Vec<flume::Sender<Request>>,
}

impl Router {
    pub fn new(placement: Placement, cores: Vec<flume::Sender<Request>>) -> Self {
        Self { placement, cores }
    }

    pub fn cores(&self) -> usize {
        self.cores.len()
    }

    fn core_of(&self, user: &str) -> usize {
        self.placement.core_of(user) % self.cores.len()
    }

    async fn ask<T>(&self, core: usize, make: impl FnOnce(Reply<T>) -> Request) -> Option<T> {
        let (tx, rx) = flume::bounded(1);
        if let Some(service) = local_service(core) {
            // Every handler replies before it returns.
            service.handle(make(tx)).await;
            return rx.try_recv().ok();
        }
        self.cores.get(core)?.send_async(make(tx)).await.ok()?;
        rx.recv_async().await.ok()
    }

    /// Stores a message here, replicated to `replicas` (this node first) if there are others.
    pub async fn deliver(
        &self,
        user: &str,
        id: u128,
        message: Arc<Vec<u8>>,
        replicas: Vec<NodeId>,
    ) -> Result<(), StoreError> {
        let user = user.to_owned();
        self.ask(self.core_of(&user), |reply| Request::Deliver {
            user,
            id,
            message,
            replicas,
            reply,
        })
        .await
        .unwrap_or(Err(StoreError::Failed))
    }

    /// Applies an update pushed by the node driving it.
    pub async fn replicate(
        &self,
        update: Update,
        message: Option<Vec<u8>>,
    ) -> Result<Applied, StoreError> {
        let core = self.core_of(&update.user);
        self.ask(core, |reply| Request::Replicate {
            update,
            message,
            reply,
        })
        .await
        .unwrap_or(Err(StoreError::Failed))
    }

    /// Retires updates that the node driving them retired.
    pub fn retired(&self, entries: Vec<(String, u128, u64)>) {
        let mut by_core: HashMap<usize, Vec<(String, u128, u64)>> = HashMap::new();
        for entry in entries {
            by_core
                .entry(self.core_of(&entry.0))
                .or_default()
                .push(entry);
        }
        for (core, entries) in by_core {
            if let Some(sender) = self.cores.get(core) {
                let _ = sender.send(Request::Retired { entries });
            }
        }
    }

    pub async fn user_exists(&self, user: &str) -> Result<bool, StoreError> {
        if KNOWN_USERS.with(|known| known.borrow().contains(user)) {
            return Ok(true);
        }
        let owned = user.to_owned();
        let exists = self
            .ask(self.core_of(user), |reply| Request::UserExists {
                user: owned,
                reply,
            })
            .await
            .unwrap_or(Err(StoreError::Failed))?;
        if exists {
            KNOWN_USERS.with(|known| {
                let mut known = known.borrow_mut();
                if known.len() >= KNOWN_USERS_MAX {
                    known.clear();
                }
                known.insert(user.to_owned());
            });
        }
        Ok(exists)
    }

    pub async fn login(&self, user: &str, credential: &Credential, lock: LockMode) -> Login {
        let (user, credential) = (user.to_owned(), credential.clone());
        self.ask(self.core_of(&user), |reply| Request::Login {
            user,
            credential,
            lock,
            reply,
        })
        .await
        .unwrap_or(Login::Unavailable)
    }

    /// The user's stored SCRAM-SHA-256 credentials, from the profile on this node.
    pub async fn scram_credentials(
        &self,
        user: &str,
    ) -> Result<Option<ScramCredentials>, StoreError> {
        let user = user.to_owned();
        self.ask(self.core_of(&user), |reply| Request::ScramCredentials {
            user,
            reply,
        })
        .await
        .unwrap_or(Err(StoreError::Failed))
    }

    /// The user's fragment on this node.
    pub async fn list(&self, user: &str) -> Result<Fragment, StoreError> {
        let user = user.to_owned();
        self.ask(self.core_of(&user), |reply| Request::List { user, reply })
            .await
            .ok_or(StoreError::Failed)
    }

    /// Users with mail on this node.
    pub async fn fragment_users(&self) -> Vec<String> {
        let mut users = Vec::new();
        for core in 0..self.cores.len() {
            users.extend(
                self.ask(core, |reply| Request::FragmentUsers { reply })
                    .await
                    .unwrap_or_default(),
            );
        }
        users
    }

    /// Every profile on this node, with the timestamp of its update.
    pub async fn profiles(&self) -> Vec<(String, u64, Vec<u8>)> {
        let mut profiles = Vec::new();
        for core in 0..self.cores.len() {
            profiles.extend(
                self.ask(core, |reply| Request::Profiles { reply })
                    .await
                    .unwrap_or_default(),
            );
        }
        profiles
    }

    /// Releases a maildrop lock; returns once the owning core has released it.
    pub async fn unlock(&self, user: &str) {
        let user = user.to_owned();
        let _ = self
            .ask(self.core_of(&user), |reply| Request::Unlock { user, reply })
            .await;
    }

    pub async fn fetch(&self, user: &str, id: u128) -> Result<Vec<u8>, StoreError> {
        let user = user.to_owned();
        self.ask(self.core_of(&user), |reply| Request::Fetch {
            user,
            id,
            reply,
        })
        .await
        .unwrap_or(Err(StoreError::Failed))
    }

    pub async fn delete(
        &self,
        user: &str,
        ids: Vec<u128>,
        fragments: Vec<NodeId>,
    ) -> Result<(), StoreError> {
        let user = user.to_owned();
        self.ask(self.core_of(&user), |reply| Request::Delete {
            user,
            ids,
            fragments,
            reply,
        })
        .await
        .unwrap_or(Err(StoreError::Failed))
    }

    /// Stores a profile made here (`stamp` `None`) or elsewhere; the newest update wins.
    /// Returns the stored update's timestamp, `None` if the profile here was newer.
    pub async fn put_profile(
        &self,
        user: &str,
        profile: Arc<Vec<u8>>,
        stamp: Option<Stamp>,
    ) -> Result<Option<u64>, StoreError> {
        let user = user.to_owned();
        self.ask(self.core_of(&user), |reply| Request::PutProfile {
            user,
            profile,
            stamp,
            reply,
        })
        .await
        .unwrap_or(Err(StoreError::Failed))
    }

    pub async fn list_users(&self) -> Vec<String> {
        let mut users = Vec::new();
        for core in 0..self.cores.len() {
            users.extend(
                self.ask(core, |reply| Request::ListUsers { reply })
                    .await
                    .unwrap_or_default(),
            );
        }
        users.sort();
        users
    }

    pub async fn reports(&self) -> Vec<ShardReport> {
        let mut reports = Vec::new();
        for core in 0..self.cores.len() {
            reports.extend(
                self.ask(core, |reply| Request::Report { reply })
                    .await
                    .unwrap_or_default(),
            );
        }
        reports
    }

    /// Asks `core` to close its shards; the answer arrives on `reply` (usable from any thread).
    pub fn send_shutdown(&self, core: usize, reply: Reply<()>) -> bool {
        self.cores
            .get(core)
            .is_some_and(|c| c.send(Request::Shutdown { reply }).is_ok())
    }
}

/// The shards of one core and the maildrop locks of their users.
#[derive(Debug)]
pub struct CoreService {
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
}

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
    ) -> Rc<Self> {
        let shards = Rc::new(CoreShards::new(placement, shards));
        let replication = CoreReplication::new(context, shards.clone());
        Rc::new(Self {
            core,
            shards,
            locked: RefCell::new(HashSet::new()),
            verified: RefCell::new(HashMap::new()),
            verified_key: rand::random(),
            account_failures: RefCell::new(HashMap::new()),
            started: std::time::Instant::now(),
            replication,
        })
    }

    /// This core's replication edge (its timer task runs beside the service).
    pub fn replication(&self) -> Rc<CoreReplication> {
        self.replication.clone()
    }

    fn shard(&self, user: &str) -> Option<&Shard> {
        self.shards.for_user(user)
    }

    /// Serves requests until a `Shutdown` has been handled.
    pub async fn run(self: Rc<Self>, requests: flume::Receiver<Request>) {
        LOCAL_SERVICE.with(|local| *local.borrow_mut() = Some((self.core, self.clone())));
        while let Ok(request) = requests.recv_async().await {
            if let Request::Shutdown { reply } = request {
                LOCAL_SERVICE.with(|local| local.borrow_mut().take());
                for shard in self.shards.all() {
                    if let Err(error) = shard.close().await {
                        tracing::error!(shard = shard.name(), %error, "closing shard");
                    }
                }
                let _ = reply.send(());
                return;
            }
            let service = self.clone();
            glommio::spawn_local(async move { service.handle(request).await }).detach();
        }
        LOCAL_SERVICE.with(|local| local.borrow_mut().take());
    }

    async fn handle(&self, request: Request) {
        match request {
            Request::Deliver {
                user,
                id,
                message,
                replicas,
                reply,
            } => {
                let result = self
                    .replication
                    .coordinate_put(&user, id, message, &replicas)
                    .await;
                let _ = reply.send(result);
            }
            Request::Replicate {
                update,
                message,
                reply,
            } => {
                let _ = reply.send(self.replication.apply(update, message).await);
            }
            Request::Retired { entries } => self.replication.retired(entries).await,
            Request::UserExists { user, reply } => {
                let _ = reply.send(
                    self.shard(&user)
                        .map(|s| s.has_profile(&user))
                        .ok_or(StoreError::Failed),
                );
            }
            Request::Login {
                user,
                credential,
                lock,
                reply,
            } => {
                let _ = reply.send(self.login(&user, &credential, lock).await);
            }
            Request::ScramCredentials { user, reply } => {
                let result = match self.shard(&user) {
                    Some(shard) => match shard.read_profile(&user).await {
                        Ok(profile) => Ok(profile.and_then(|p| users::scram_of(&p))),
                        Err(e) => Err(store_error(&e)),
                    },
                    None => Err(StoreError::Failed),
                };
                let _ = reply.send(result);
            }
            Request::List { user, reply } => {
                let _ = reply.send(self.shard(&user).map_or_else(Fragment::default, |shard| {
                    Fragment {
                        messages: shard
                            .messages(&user)
                            .iter()
                            .map(|m| ListedMessage {
                                id: m.id,
                                size: u64::from(m.body_len),
                                replicas: m.replicas.as_slice().iter().map(|&n| n.into()).collect(),
                            })
                            .collect(),
                        deleted: shard.pending_tombstones(&user),
                    }
                }));
            }
            Request::FragmentUsers { reply } => {
                let mut users = Vec::new();
                for shard in self.shards.all() {
                    users.extend(shard.fragment_users());
                }
                let _ = reply.send(users);
            }
            Request::Profiles { reply } => {
                let mut profiles = Vec::new();
                for shard in self.shards.all() {
                    for user in shard.users() {
                        let Some(hlc) = shard.profile_hlc(&user) else {
                            continue;
                        };
                        if let Ok(Some(profile)) = shard.read_profile(&user).await {
                            profiles.push((user, hlc, profile));
                        }
                    }
                }
                let _ = reply.send(profiles);
            }
            Request::Unlock { user, reply } => {
                self.locked.borrow_mut().remove(&user);
                let _ = reply.send(());
            }
            Request::Fetch { user, id, reply } => {
                let result = match self.shard(&user) {
                    Some(shard) => shard
                        .read_message(&user, id)
                        .await
                        .map(|r| r.body().to_vec())
                        .map_err(|e| {
                            tracing::warn!(%user, error = %e, "read failed");
                            store_error(&e)
                        }),
                    None => Err(StoreError::Failed),
                };
                let _ = reply.send(result);
            }
            Request::Delete {
                user,
                ids,
                fragments,
                reply,
            } => {
                let also = ReplicaSet::new(fragments.iter().map(|&n| n as u32));
                let result = match self.shard(&user) {
                    Some(shard) => {
                        // All at once, so one group commit (one fdatasync) carries them.
                        let user = Rc::new(user);
                        let tasks: Vec<_> = ids
                            .into_iter()
                            .map(|id| {
                                let (shard, user) = (shard.clone(), user.clone());
                                glommio::spawn_local(async move {
                                    (id, shard.delete_replicated(&user, id, None, also).await)
                                })
                            })
                            .collect();
                        let mut result = Ok(());
                        for task in tasks {
                            match task.await {
                                (id, Ok(DeleteOutcome::Deleted(tomb))) => {
                                    self.replication.deleted(&user, id, tomb);
                                }
                                (_, Ok(_)) | (_, Err(EngineError::NotFound)) => {}
                                (_, Err(e)) => result = Err(store_error(&e)),
                            }
                        }
                        result
                    }
                    None => Err(StoreError::Failed),
                };
                let _ = reply.send(result);
            }
            Request::PutProfile {
                user,
                profile,
                stamp,
                reply,
            } => {
                let result = match self.shard(&user) {
                    Some(shard) => shard
                        .put_profile_stamped(&user, &profile, stamp)
                        .await
                        .map_err(|e| store_error(&e)),
                    None => Err(StoreError::Failed),
                };
                let _ = reply.send(result);
            }
            Request::ListUsers { reply } => {
                let mut users = Vec::new();
                for shard in self.shards.all() {
                    users.extend(shard.users().into_iter().filter(|u| shard.has_profile(u)));
                }
                let _ = reply.send(users);
            }
            Request::Report { reply } => {
                let _ = reply.send(self.reports());
            }
            Request::Shutdown { .. } => {}
        }
    }

    async fn login(&self, user: &str, credential: &Credential, lock: LockMode) -> Login {
        let Some(shard) = self.shard(user) else {
            return Login::Unavailable;
        };
        if let Credential::Password(password) = credential {
            if let Err(refused) = self.check_password(shard, user, password).await {
                return refused;
            }
        } else if !shard.has_profile(user) {
            return Login::BadCredentials;
        }
        if lock == LockMode::Local && !self.locked.borrow_mut().insert(user.to_owned()) {
            return Login::InUse;
        }
        Login::Ok(
            shard
                .messages(user)
                .iter()
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
            Ok(Some(profile)) => profile,
            Ok(None) => {
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

    fn reports(&self) -> Vec<ShardReport> {
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
                    users: shard.profile_count(),
                    segments: stats.segments,
                    poisoned: stats.poisoned,
                    appended_records: m.records,
                    appended_bytes: m.bytes,
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
                }
            })
            .collect();
        reports.sort_by(|a, b| a.name.cmp(&b.name));
        reports
    }
}

/// A valid argon2id hash of a random password, verified against when a user does not exist.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$+ZSbd0Eo3mHNJ1SL9ZFfbN3IaudrldSkHQsHs2YeHhk";
