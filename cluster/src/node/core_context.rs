//! One core's context: what every task on a core reads — the node's shared context, this
//! core's shard service and peer connections, and the small caches that are this core's alone
//! (users known to exist, the manager's recent placements, the message-id counter). Built once
//! per core when its shards are open and handed to every session and duty on it as an
//! `Rc<CoreContext>`; nothing here is reached through a thread-local.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::ops::Deref;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use super::core_call::{CoreCall, UserCall};
use super::core_calls::{Incarnation, UserIncarnation};
use super::delivery::PlacementCache;
use super::service::{CoreService, StoreError};
use super::NodeContext;
use crate::membership::Epoch;
use crate::transport::Peers;

/// Users a core remembers as existing before it forgets them all (a bound on memory, not a
/// correctness limit: a forgotten user is asked about again).
const KNOWN_USERS_MAX: usize = 1 << 20;

pub struct CoreContext {
    /// Which core this is.
    pub core: usize,
    pub node: Arc<NodeContext>,
    pub service: Rc<CoreService>,
    /// This core's connections to the other nodes.
    pub peers: Rc<Peers>,
    /// Users this core has been told exist, and which of their address's users each is (a
    /// deleted user is forgotten on every core of every member when their removal arrives:
    /// [`CoreContext::forget_users`]).
    known_users: RefCell<HashMap<String, Incarnation>>,
    /// Users' quota limits and usage, briefly ([`super::quota`]).
    pub(super) quota_cache: super::quota::QuotaCache,
    /// Candidates the manager gave this core recently ([`super::delivery`]).
    pub(super) placements: RefCell<PlacementCache>,
    /// The epoch in which this core last warned that there are fewer nodes than replicas.
    pub(super) warned_few_nodes: Cell<Option<Epoch>>,
    /// The low bits of the next message id made on this core.
    next_message: Cell<u32>,
}

impl std::fmt::Debug for CoreContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoreContext")
            .field("core", &self.core)
            .finish_non_exhaustive()
    }
}

impl Deref for CoreContext {
    type Target = NodeContext;
    fn deref(&self) -> &NodeContext {
        &self.node
    }
}

impl CoreContext {
    pub fn new(
        core: usize,
        node: Arc<NodeContext>,
        service: Rc<CoreService>,
        peers: Rc<Peers>,
    ) -> Rc<Self> {
        Rc::new(Self {
            core,
            node,
            service,
            peers,
            known_users: RefCell::new(HashMap::new()),
            quota_cache: Default::default(),
            placements: RefCell::new(PlacementCache::default()),
            warned_few_nodes: Cell::new(None),
            next_message: Cell::new(0),
        })
    }

    /// Serves `call` on the core of its user: here, in the calling task, if that is this core.
    pub async fn call<C: UserCall>(&self, call: C) -> C::Reply {
        let core = self.router.core_of(call.user());
        if core == self.core {
            return call.serve(&self.service).await;
        }
        self.router.call_on(core, call).await
    }

    /// Serves `call` on every core (this one in place): every core's answers, in core order.
    pub async fn call_each<C, T>(&self, call: C) -> Vec<T>
    where
        C: CoreCall<Reply = Vec<T>> + Clone,
    {
        let mut gathered = Vec::new();
        for core in 0..self.router.cores() {
            gathered.extend(if core == self.core {
                call.clone().serve(&self.service).await
            } else {
                self.router.call_on(core, call.clone()).await
            });
        }
        gathered
    }

    /// Whether `user` exists; a user seen to exist is not asked about again.
    pub async fn user_exists(&self, user: &str) -> Result<bool, StoreError> {
        Ok(self.user_incarnation(user).await?.is_some())
    }

    /// Which of the address's users has it now (`None`: no user has).
    pub async fn user_incarnation(&self, user: &str) -> Result<Option<Incarnation>, StoreError> {
        if let Some(known) = self.known_users.borrow().get(user) {
            return Ok(Some(*known));
        }
        let incarnation = self
            .call(UserIncarnation {
                user: user.to_owned(),
            })
            .await?;
        if let Some(incarnation) = incarnation {
            let mut known = self.known_users.borrow_mut();
            if known.len() >= KNOWN_USERS_MAX {
                known.clear();
            }
            known.insert(user.to_owned(), incarnation);
        }
        Ok(incarnation)
    }

    /// Forgets what this node's cores know of these users (they were deleted, or their quota
    /// changed), on every core of this node.
    pub async fn forget_users(&self, users: Vec<String>) {
        if users.is_empty() {
            return;
        }
        let _: Vec<()> = self
            .call_each(super::core_calls::ForgetUsers { users })
            .await;
    }

    /// This core's part of [`Self::forget_users`].
    pub(super) fn forget_here(&self, users: &[String]) {
        let mut known = self.known_users.borrow_mut();
        for user in users {
            known.remove(user);
            self.quota_cache.forget(user);
        }
    }

    /// A cluster-unique message id: microseconds since the epoch (high bits, so ids sort by
    /// arrival time), then the node id, the core and a per-core counter. Copies of one message
    /// on several replicas share it, and retrieval deduplicates by it, so two messages must
    /// never share one.
    pub fn new_message_id(&self) -> u128 {
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros())
            .unwrap_or(0);
        let counter = self.next_message.get();
        self.next_message.set(counter.wrapping_add(1));
        (micros << 64)
            | (u128::from(self.cluster.me.id as u32) << 32)
            | ((self.core as u128 & 0xff) << 24)
            | u128::from(counter & 0x00ff_ffff)
    }
}
