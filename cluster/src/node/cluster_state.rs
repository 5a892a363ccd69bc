//! What every core knows of the cluster: this node's identity, the installed view (swapped
//! atomically by core 0, read lock-free by every session), this node's load, and the channel to
//! core 0, where membership and the bucket manager run. Also each core's [`Peers`].

use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::loads::{LoadTable, NodeLoad};
use crate::manager::{Manager, ManagerCall};
use crate::membership::{Member, Msg, NodeId, View};
use crate::rpc::CallError;
use crate::secure::ClusterSecurity;
use crate::transport::Peers;
use crate::usermap::UserMap;

/// Work for core 0.
pub enum ToCoreZero {
    Membership(Msg),
    /// A call for the bucket manager, which answers on the channel the closure holds.
    Manager(Box<dyn FnOnce(&mut Manager) + Send>),
}

impl std::fmt::Debug for ToCoreZero {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ToCoreZero::Membership(msg) => f.debug_tuple("Membership").field(msg).finish(),
            ToCoreZero::Manager(_) => f.write_str("Manager"),
        }
    }
}

#[derive(Debug)]
pub struct ClusterShared {
    pub me: Member,
    pub view: ArcSwap<View>,
    /// Operations under way on this node's disks (piggybacked on every frame).
    pub load: Arc<NodeLoad>,
    /// Every node's load as last heard.
    pub loads: Arc<LoadTable>,
    pub core_zero: flume::Sender<ToCoreZero>,
    /// POP session numbers, for maildrop lock owners.
    next_session: AtomicU64,
    /// Bumped each time this node snapshots its fragment users for the managers: a store that
    /// spans a snapshot may be missing from it and is noted to the manager separately.
    pub snapshots: AtomicU64,
    /// Maildrops locked by this node's POP sessions: user → lock owner. Reported to the bucket
    /// managers after every membership change, so a lock follows its bucket. Touched once per
    /// POP session, never per message.
    pub open_maildrops: std::sync::Mutex<std::collections::HashMap<String, (u64, u64)>>,
    /// Set while a node started with seeds has not joined them yet (sessions wait).
    joining: std::sync::atomic::AtomicBool,
    /// How connections to and from other nodes are protected.
    pub security: ClusterSecurity,
    /// Whether the view holds a majority of the known cluster (`Membership::majority`); a
    /// node without one shows no maildrop.
    majority: std::sync::atomic::AtomicBool,
    /// Bumped each time the majority is lost: a POP session that opened before a loss may
    /// have had its lock dropped by the other side's managers, and must not acknowledge its
    /// deletes.
    majority_losses: AtomicU64,
    /// When the cluster driver last ran (ms since `started`), and the longest gap that is not
    /// a stall: a node paused (SIGSTOP, a stalled VM) longer than its peers wait before
    /// suspecting it may have been dropped meanwhile without knowing it — its view is stale
    /// until it hears otherwise, so it counts as a loss of the majority.
    started: std::time::Instant,
    last_tick_ms: AtomicU64,
    stall_limit_ms: u64,
    /// Nodes declared dead by this node's membership (`--dead-after`), set by core 0.
    pub dead: ArcSwap<Vec<NodeId>>,
}

impl ClusterShared {
    pub fn new(
        me: Member,
        buckets: usize,
        core_zero: flume::Sender<ToCoreZero>,
        joining: bool,
        shards: usize,
        security: ClusterSecurity,
        stall_limit: std::time::Duration,
    ) -> Self {
        let epoch = crate::membership::Epoch {
            clock: 0,
            coordinator: me.id,
        };
        let view = View {
            epoch,
            members: vec![me.clone()],
            map: UserMap::single(me.id, buckets, epoch),
        };
        Self {
            me,
            view: ArcSwap::from_pointee(view),
            load: Arc::new(NodeLoad::new(shards)),
            loads: Arc::new(LoadTable::default()),
            core_zero,
            next_session: AtomicU64::new(1),
            snapshots: AtomicU64::new(0),
            open_maildrops: std::sync::Mutex::new(std::collections::HashMap::new()),
            joining: std::sync::atomic::AtomicBool::new(joining),
            security,
            majority: std::sync::atomic::AtomicBool::new(true),
            majority_losses: AtomicU64::new(0),
            started: std::time::Instant::now(),
            last_tick_ms: AtomicU64::new(0),
            stall_limit_ms: stall_limit.as_millis() as u64,
            dead: ArcSwap::from_pointee(Vec::new()),
        }
    }

    fn since_start_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Called by the cluster driver each time it runs: a gap longer than the stall limit
    /// since the last call was a stall, and counts as a loss of the majority.
    pub fn note_running(&self) {
        let now = self.since_start_ms();
        let last = self.last_tick_ms.swap(now, Ordering::AcqRel);
        let gap = now.saturating_sub(last);
        if last != 0 && gap > self.stall_limit_ms {
            self.majority_losses.fetch_add(1, Ordering::AcqRel);
            tracing::warn!(
                gap_ms = gap,
                "this node stalled longer than its peers wait before suspecting it: POP3 \
                 sessions opened before the stall acknowledge no deletes"
            );
        }
    }

    /// Records whether the membership holds a majority now (set by the cluster driver).
    pub fn set_majority(&self, majority: bool) {
        let was = self.majority.swap(majority, Ordering::AcqRel);
        if was && !majority {
            self.majority_losses.fetch_add(1, Ordering::AcqRel);
            tracing::warn!(
                "this node's view holds no majority of the cluster it knows: POP3 is refused \
                 here until it does (a partition's minority cannot know what the majority deleted)"
            );
        } else if !was && majority {
            tracing::info!("this node's view holds a majority of the cluster again");
        }
    }

    /// Whether the view holds a majority and the driver ran recently (a node resuming from
    /// a stall has not yet looked: its view may be stale).
    pub fn has_majority(&self) -> bool {
        let last = self.last_tick_ms.load(Ordering::Acquire);
        let fresh = self.since_start_ms().saturating_sub(last) <= self.stall_limit_ms;
        self.majority.load(Ordering::Acquire) && fresh
    }

    /// How many times the majority was lost since the node started.
    pub fn majority_losses(&self) -> u64 {
        self.majority_losses.load(Ordering::Acquire)
    }

    /// Whether other nodes are in the view (else everything is local, as on a lone node).
    pub fn clustered(&self) -> bool {
        self.view.load().members.len() > 1
    }

    /// Whether this node is still joining its seeds (see `cluster_driver::run`).
    pub fn is_joining(&self) -> bool {
        self.joining.load(Ordering::Acquire)
    }

    pub fn joined(&self) {
        self.joining.store(false, Ordering::Release);
    }

    /// Waits (bounded) while this node is still joining its seeds.
    pub async fn wait_joined(&self, patience: std::time::Duration) {
        let deadline = std::time::Instant::now() + patience;
        while self.is_joining() && std::time::Instant::now() < deadline {
            glommio::timer::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Remembers a maildrop lock granted to a session here (its node's reports carry it).
    pub fn note_maildrop(&self, user: &str, owner: (u64, u64)) {
        if let Ok(mut open) = self.open_maildrops.lock() {
            open.insert(user.to_owned(), owner);
        }
    }

    /// Forgets the lock of `owner`, and only that one: a session refused the maildrop must not
    /// forget the lock of the session here that holds it.
    pub fn forget_maildrop(&self, user: &str, owner: (u64, u64)) {
        if let Ok(mut open) = self.open_maildrops.lock() {
            if open.get(user) == Some(&owner) {
                open.remove(user);
            }
        }
    }

    /// The maildrop locks held by sessions here.
    pub fn maildrop_locks(&self) -> Vec<(String, (u64, u64))> {
        self.open_maildrops
            .lock()
            .map(|open| open.iter().map(|(u, o)| (u.clone(), *o)).collect())
            .unwrap_or_default()
    }

    pub fn session_id(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    /// Asks this node's bucket manager (on core 0).
    pub async fn ask_local_manager<C: ManagerCall>(&self, call: C) -> Result<C::Reply, CallError>
    where
        C::Reply: Send,
    {
        let (reply, answer) = flume::bounded(1);
        let work = ToCoreZero::Manager(Box::new(move |manager: &mut Manager| {
            let _ = reply.send(call.serve(manager));
        }));
        self.core_zero
            .send_async(work)
            .await
            .map_err(|_| CallError::Closed)?;
        answer
            .recv_async()
            .await
            .map_err(|_| CallError::Closed)?
            .map_err(CallError::Refused)
    }
}

impl ClusterShared {
    /// A core's connections to the other nodes; call once per core, on its executor.
    pub fn connect_peers(&self) -> Rc<Peers> {
        Peers::new(
            self.me.id,
            self.security.clone(),
            self.load.clone(),
            self.loads.clone(),
        )
    }
}

/// File in the first data directory: what the membership remembers across restarts (JSON,
/// see [`MemoryFile`]).
const MEMORY_FILE: &str = "cluster-memory.json";

/// The version of [`MemoryFile`] this build writes and reads.
const MEMORY_FILE_VERSION: u32 = 1;

/// `cluster-memory.json`: every node this one knew (cluster address, id once heard) and the
/// nodes it declared dead. JSON so that an operator can read it; an unreadable or newer file
/// is ignored with a warning (the node then counts only its seeds, as a new node does).
///
/// | key       | meaning                                                      |
/// |-----------|--------------------------------------------------------------|
/// | `version` | 1                                                            |
/// | `known`   | `[address, id or null]` for every other node known           |
/// | `dead`    | `[id, address]` for every node declared dead and not back    |
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct MemoryFile {
    version: u32,
    #[serde(flatten)]
    memory: crate::membership::Memory,
}

/// What an earlier run remembered of the cluster, if anything readable.
pub fn load_memory(dir: &Path) -> Option<crate::membership::Memory> {
    let path = dir.join(MEMORY_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "cannot read the cluster memory");
            return None;
        }
    };
    match serde_json::from_str::<MemoryFile>(&text) {
        Ok(file) if file.version == MEMORY_FILE_VERSION => Some(file.memory),
        Ok(file) => {
            tracing::warn!(path = %path.display(), version = file.version, "cluster memory of another version ignored");
            None
        }
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "unreadable cluster memory ignored");
            None
        }
    }
}

/// Writes what the membership remembers (a new file renamed over the old one).
pub fn save_memory(dir: &Path, memory: &crate::membership::Memory) -> std::io::Result<()> {
    let file = MemoryFile {
        version: MEMORY_FILE_VERSION,
        memory: memory.clone(),
    };
    let text = serde_json::to_string_pretty(&file).map_err(std::io::Error::other)?;
    let tmp = dir.join(format!("{MEMORY_FILE}.tmp"));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, dir.join(MEMORY_FILE))
}

/// File in the first data directory: when this node was last a member of a cluster of more
/// than one node (Unix milliseconds).
const LAST_MEMBER_FILE: &str = "last-member";

/// Records that this node is a member of a cluster now.
pub fn note_membership(dir: &Path, now_ms: u64) -> std::io::Result<()> {
    let tmp = dir.join(format!("{LAST_MEMBER_FILE}.tmp"));
    std::fs::write(&tmp, format!("{now_ms}\n"))?;
    std::fs::rename(&tmp, dir.join(LAST_MEMBER_FILE))
}

/// A node that was away from its cluster longer than the log retention may have missed
/// deletes and updates that no replica keeps for it any more: it rejoins as a new node. Its
/// mail (`shard-*` in every data directory) is moved aside to `stale-<time>/` (kept for an
/// operator, never served), and its node id is dropped so a fresh one is made; the cluster's
/// other replicas still hold the mail, and profiles come back with the join. Returns whether
/// that happened.
pub fn retire_if_away_too_long(
    dirs: &[std::path::PathBuf],
    retention_ms: u64,
    now_ms: u64,
) -> std::io::Result<bool> {
    let Some(first) = dirs.first() else {
        return Ok(false);
    };
    let Ok(text) = std::fs::read_to_string(first.join(LAST_MEMBER_FILE)) else {
        return Ok(false);
    };
    let Ok(last) = text.trim().parse::<u64>() else {
        return Ok(false);
    };
    if now_ms.saturating_sub(last) <= retention_ms {
        return Ok(false);
    }
    for dir in dirs {
        let aside = dir.join(format!("stale-{now_ms}"));
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with("shard-") {
                std::fs::create_dir_all(&aside)?;
                std::fs::rename(entry.path(), aside.join(entry.file_name()))?;
            }
        }
    }
    let _ = std::fs::remove_file(first.join("node-id"));
    let _ = std::fs::remove_file(first.join(MEMORY_FILE));
    std::fs::remove_file(first.join(LAST_MEMBER_FILE))?;
    Ok(true)
}

/// This node's id: kept in `node-id` in the first data directory, created at first start.
/// Ids fit in 32 bits so that every frame header can name its sender.
pub fn node_id(dir: &Path) -> std::io::Result<NodeId> {
    let path = dir.join("node-id");
    match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().parse().map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} does not hold a node id", path.display()),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id: NodeId = rand::Rng::gen_range(&mut rand::thread_rng(), 1..u64::from(u32::MAX));
            let tmp = dir.join("node-id.tmp");
            std::fs::write(&tmp, format!("{id}\n"))?;
            std::fs::File::open(&tmp)?.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(dir)?.sync_all()?;
            Ok(id)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_memory_reads_back_and_a_bad_file_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load_memory(dir.path()), None);
        let memory = crate::membership::Memory {
            known: vec![
                ("127.0.0.2:7946".into(), Some(5)),
                ("127.0.0.3:7946".into(), None),
            ],
            dead: vec![(9, "127.0.0.4:7946".into())],
        };
        save_memory(dir.path(), &memory).unwrap();
        assert_eq!(load_memory(dir.path()), Some(memory));
        let text = std::fs::read_to_string(dir.path().join(MEMORY_FILE)).unwrap();
        assert!(text.contains("\"version\": 1"), "{text}");
        std::fs::write(
            dir.path().join(MEMORY_FILE),
            "{\"version\": 2, \"known\": [], \"dead\": []}",
        )
        .unwrap();
        assert_eq!(load_memory(dir.path()), None);
        std::fs::write(dir.path().join(MEMORY_FILE), "garbage").unwrap();
        assert_eq!(load_memory(dir.path()), None);
    }

    #[test]
    fn a_node_away_longer_than_the_retention_rejoins_as_new() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        std::fs::create_dir_all(root.join("shard-0")).unwrap();
        std::fs::write(root.join("shard-0/1.log"), b"x").unwrap();
        let id = node_id(&root).unwrap();
        note_membership(&root, 1_000).unwrap();
        // Within the retention: nothing changes.
        assert!(!retire_if_away_too_long(std::slice::from_ref(&root), 500, 1_400).unwrap());
        assert!(root.join("shard-0").exists());
        assert_eq!(node_id(&root).unwrap(), id);
        // Away longer: the mail is set aside, and a new id is made.
        assert!(retire_if_away_too_long(std::slice::from_ref(&root), 500, 2_000).unwrap());
        assert!(!root.join("shard-0").exists());
        assert!(root.join("stale-2000/shard-0/1.log").exists());
        assert_ne!(node_id(&root).unwrap(), id);
        // Never recorded as a member: nothing to do.
        assert!(!retire_if_away_too_long(&[root], 500, 9_000).unwrap());
    }
}
