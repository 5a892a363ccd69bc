//! A shard's replicated updates: puts and tombstones that carry their replica set and stay
//! pending in the index until every replica has them, and their retirement. The log is the
//! update log; the cluster's replication manager decides what to push and when to retire.

use super::*;

impl<S: Storage> Shard<S> {
    /// Stores a message unless it is here already or deleted: a put coordinated here
    /// (`stamp` `None`) or one pushed by its coordinator (its stamp). `replicas` is the
    /// update's replica set ([`ReplicaSet::NONE`] when not replicated); a replicated put stays
    /// pending in the index until [`Shard::retire`].
    pub async fn put_message(
        &self,
        user: &str,
        id: u128,
        body: &[u8],
        flags: u32,
        replicas: ReplicaSet,
        stamp: Option<Stamp>,
    ) -> Result<PutOutcome> {
        let _busy = self.busy();
        check_user(user)?;
        let started = Instant::now();
        let found = std::cell::Cell::new(None);
        let widened = std::cell::Cell::new(false);
        let decide = |state: &State<S::File>| {
            // A tombstone still queued counts: this put would land behind it.
            if state.index.is_tombstoned(user, id) || state.queued.delete(id) {
                found.set(Some(PutOutcome::Deleted));
                return None;
            }
            if let Some(entry) = state.index.message(user, id) {
                // Here already. If this put names replicas the stored copy does not, the copy
                // is written again, same timestamp, with the union: its tombstone must reach
                // every node a copy went to. A union too large for a record is a set that
                // healing rebuilt without a dead node: the pushed set is the newer one.
                let union = || {
                    entry
                        .replicas
                        .as_slice()
                        .iter()
                        .chain(replicas.as_slice())
                        .copied()
                };
                let mut distinct: Vec<u32> = Vec::with_capacity(2 * record::REPLICAS_MAX);
                for node in union() {
                    if !distinct.contains(&node) {
                        distinct.push(node);
                    }
                }
                let wider = if distinct.len() > record::REPLICAS_MAX {
                    replicas
                } else {
                    ReplicaSet::new(distinct)
                };
                if !replicas.is_replicated() || wider == entry.replicas {
                    found.set(Some(PutOutcome::AlreadyHere(*entry)));
                    return None;
                }
                widened.set(true);
                let stamp = Stamp {
                    hlc: entry.hlc,
                    origin: entry.origin,
                };
                return Some((entry.flags, wider, Some(stamp)));
            }
            Some((flags, replicas, None))
        };
        let entry = |location, meta| put_entry(id, body.len(), location, meta);
        let annex = self.annex_of(body);
        let submitted = self
            .inner
            .submit_with(
                RecordKind::Put,
                stamp,
                id,
                user,
                record::Payload {
                    annex: &annex,
                    body,
                },
                decide,
                |location, meta| IndexOp::Put(entry(location, meta)),
            )
            .await?;
        let Some((done, location, meta)) = submitted else {
            return found.take().ok_or(EngineError::NotFound);
        };
        self.inner.finish(done, started).await?;
        if widened.get() {
            return Ok(PutOutcome::AlreadyHere(entry(location, meta)));
        }
        Ok(PutOutcome::Stored(entry(location, meta)))
    }

    /// Deletes a message with a tombstone that replicates. `pushed` `None`: a delete made here,
    /// replicated to the message's own replica set and to the nodes in `also` (others that may
    /// hold a copy), as far as a set holds; a message not here gets a tombstone replicated to
    /// `also` (none if `also` names fewer than two nodes). `pushed` `Some`: a
    /// tombstone from another replica, written even if the put never arrived here so that a
    /// late put cannot land. A replicated tombstone stays pending until retired.
    pub async fn delete_replicated(
        &self,
        user: &str,
        id: u128,
        pushed: Option<(Stamp, ReplicaSet)>,
        also: ReplicaSet,
    ) -> Result<DeleteOutcome> {
        let _busy = self.busy();
        check_user(user)?;
        let started = Instant::now();
        let already = std::cell::Cell::new(false);
        let replicas = std::cell::Cell::new(ReplicaSet::NONE);
        let decide = |state: &State<S::File>| {
            if state.index.is_tombstoned(user, id) {
                already.set(true);
                return None;
            }
            // A put still queued is here for this purpose: the tombstone lands behind it and
            // must name its replicas.
            let message = state
                .index
                .message(user, id)
                .map(|m| (m.replicas, m.oldest_segment))
                .or_else(|| state.queued.put(id).map(|q| (q.replicas, q.segment)));
            match (pushed, message) {
                // Not here (a replica the put has not reached yet, or a stand-in for an absent
                // replica): a tombstone all the same, replicated to `also`, so a late copy
                // cannot land and the delete rests on more than one node.
                (None, None) if also.is_replicated() => {
                    replicas.set(also);
                    Some(state.append_seq)
                }
                (None, None) => None,
                (None, Some((held, oldest_segment))) => {
                    if held.is_replicated() {
                        replicas.set(ReplicaSet::new(
                            held.as_slice().iter().chain(also.as_slice()).copied(),
                        ));
                    }
                    Some(oldest_segment)
                }
                // A pushed tombstone over a copy whose replica set names more nodes (a delivery
                // placed again widened it): the record names them too, so the pusher, told
                // by the answer, sends them the tombstone as well.
                (Some((_, set)), Some((held, oldest_segment))) => {
                    replicas.set(ReplicaSet::new(
                        set.as_slice().iter().chain(held.as_slice()).copied(),
                    ));
                    Some(oldest_segment)
                }
                (Some((_, set)), None) => {
                    replicas.set(set);
                    Some(state.append_seq)
                }
            }
        };
        // The replica set is read from the index in the same borrow that encodes the record.
        let submitted = self
            .inner
            .submit_with(
                RecordKind::Delete,
                pushed.map(|(stamp, _)| stamp),
                id,
                user,
                record::Payload::default(),
                |state| decide(state).map(|aux| (aux, replicas.get(), None)),
                |_, meta| IndexOp::Remove {
                    id,
                    tomb: Tomb::of(&meta),
                },
            )
            .await?;
        let Some((done, _, meta)) = submitted else {
            return Ok(if already.get() {
                DeleteOutcome::AlreadyDeleted
            } else {
                DeleteOutcome::NotFound
            });
        };
        self.inner.finish(done, started).await?;
        Ok(DeleteOutcome::Deleted(Tomb::of(&meta)))
    }

    /// Marks replicated updates as acknowledged by every replica: they leave the pending set
    /// now and a retire record makes that durable (entries of updates no longer pending, or
    /// superseded by a newer one, are ignored).
    pub async fn retire(&self, entries: &[Retired]) -> Result<()> {
        let _busy = self.busy();
        let entries: Vec<Retired> = {
            let mut state = self.inner.state.borrow_mut();
            entries
                .iter()
                .filter(|e| state.index.retire(e))
                .copied()
                .collect()
        };
        let started = Instant::now();
        let mut waits = Vec::new();
        for chunk in entries.chunks(RETIRE_ENTRIES_PER_RECORD) {
            let body = record::encode_retired(chunk);
            let submitted = self
                .inner
                .submit(
                    RecordKind::Retire,
                    None,
                    ReplicaSet::NONE,
                    0,
                    "",
                    &body,
                    |_| Some(0),
                    |_, _| IndexOp::Nothing,
                )
                .await?;
            if let Some((done, _, _)) = submitted {
                waits.push(done);
            }
        }
        for done in waits {
            self.inner.finish(done, started).await?;
        }
        Ok(())
    }

    /// The replicated updates not yet acknowledged by every replica.
    pub fn pending_updates(&self) -> Vec<PendingUpdate> {
        self.inner
            .state
            .borrow()
            .index
            .pending_updates()
            .cloned()
            .collect()
    }

    /// Ids of the user's messages deleted here whose tombstones have not reached every replica.
    pub fn pending_tombstones(&self, user: &str) -> Vec<u128> {
        self.inner
            .state
            .borrow()
            .index
            .pending_tombstones(user)
            .to_vec()
    }

    /// Users with messages here, or with deletes here that not every replica has yet (their
    /// managers must ask this node, whose tombstones hide copies elsewhere).
    pub fn fragment_users(&self) -> Vec<String> {
        let state = self.inner.state.borrow();
        let mut users: Vec<String> = state.index.users().map(str::to_owned).collect();
        users.extend(
            state
                .index
                .tombstoned_users()
                .filter(|u| !state.index.has_messages(u))
                .map(str::to_owned),
        );
        users
    }

    /// Every copy here whose replica set names one of `nodes` (the nodes declared dead): what
    /// healing looks at. One pass over the index, in memory.
    pub fn copies_naming(&self, nodes: &[u32]) -> Vec<(String, MessageEntry)> {
        let state = self.inner.state.borrow();
        let mut found = Vec::new();
        for (user, _, messages) in state.index.mailboxes() {
            for entry in messages {
                if entry.replicas.as_slice().iter().any(|n| nodes.contains(n)) {
                    found.push((user.to_owned(), *entry));
                }
            }
        }
        found
    }

    /// What this shard holds for `node` (anti-entropy): every copy whose replica set names it,
    /// then every tombstone pending for it, as (user, id, HLC, tombstone). One pass over the
    /// index, in memory; `visit` must not call back into the shard.
    pub fn visit_held_for(&self, node: u32, mut visit: impl FnMut(&str, u128, u64, bool)) {
        let state = self.inner.state.borrow();
        for (user, _, messages) in state.index.mailboxes() {
            for entry in messages {
                if entry.replicas.contains(node) {
                    visit(user, entry.id, entry.hlc, false);
                }
            }
        }
        for pending in state.index.pending_updates() {
            if pending.kind == crate::index::UpdateKind::Delete && pending.replicas.contains(node) {
                visit(&pending.user, pending.id, pending.hlc, true);
            }
        }
    }

    /// How many replicated updates are pending here.
    pub fn pending_count(&self) -> usize {
        self.inner.state.borrow().index.pending_count()
    }
}
