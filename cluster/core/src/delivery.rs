//! The delivery policy (sans-IO): how one copy of a message reaches a user's fragments,
//! wherever the cluster places them. This is where double or lost mail would come from, so it
//! is one state machine that the node drives with real requests and the seeded simulator with
//! simulated ones (`tests/policy_sim.rs`).
//!
//! The sequence: on a lone node, store here. In a cluster, ask the user's bucket manager for
//! candidates (the driver may answer from a per-core cache of the manager's last answer), pick
//! the replicas among them by load under the placement policy (asking again without the
//! overloaded ones when too few are usable), and store at the first of them, the coordinator
//! (this node when it is one of them, to save a hop). A coordinator that cannot be reached or
//! answers "try again" makes the message placed again with a fresh answer, **under the same
//! id**, so a copy that did land is replaced, never doubled. A coordinator whose disk is full
//! is avoided from then on; when every member was full the answer is "no space". The whole
//! sequence is bounded by the patience: then the client gets a temporary failure and retries.
//!
//! A store that failed as "unavailable" may have left copies on its nodes (the coordinator
//! stored it, then a replica or the answer was lost). The next attempt's replica set names
//! those nodes too ([`DeliveryAction::StoreAt::also`]; the answer does not wait for them): a
//! session that deletes the message then sends its tombstone to them as well, and a copy the
//! new attempt lands is pushed to them, where a tombstone made meanwhile deletes it again.
//! Placed elsewhere without them, the retry's copy would outlive the first copy's delete once
//! that tombstone retired, and show the deleted message again (`tests/policy_sim.rs` found it
//! once tombstones retired there as they do on a node).
//!
//! Events in ([`DeliveryInput`]), one action out per step ([`DeliveryAction`]); the time, the
//! view, the loads and the randomness are the caller's ([`Facts`]).

use std::rc::Rc;

use rand::Rng;

use crate::membership::{Epoch, NodeId, View};
use crate::placement::{self, CandidateLoad, Choice, PlacementPolicy};
use crate::rpc::{CallError, Failure};

/// What a storage request can fail with, as a protocol needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreError {
    /// Full disk: SMTP 452.
    NoSpace,
    /// Any other failure: SMTP 451, POP3 -ERR [SYS/TEMP].
    Failed,
    /// A replica could not take the message in time: placed again by the proxy, else 451.
    Unavailable,
}

impl StoreError {
    /// What a remote store's answer means to the delivery: a full disk, a placement worth
    /// trying again (asked again, or no answer), or a failure.
    pub fn of_remote(answer: Result<(), CallError>) -> Result<(), StoreError> {
        answer.map_err(|error| match error {
            CallError::Refused(Failure::NoSpace) => StoreError::NoSpace,
            CallError::Refused(Failure::TryAgain)
            | CallError::Unreachable
            | CallError::Timeout
            | CallError::Closed => StoreError::Unavailable,
            CallError::Refused(Failure::Failed | Failure::InUse | Failure::BadCredentials)
            | CallError::BadReply => StoreError::Failed,
        })
    }
}

impl From<StoreError> for Failure {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NoSpace => Failure::NoSpace,
            StoreError::Failed => Failure::Failed,
            StoreError::Unavailable => Failure::TryAgain,
        }
    }
}

/// The settings the delivery policy runs under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeliverySettings {
    /// Copies of each message (capped by the live node count).
    pub replicas: usize,
    pub placement: PlacementPolicy,
    /// A node with this many operations under way counts as overloaded.
    pub overload_ops: u32,
    /// How long one delivery may take before the client is told to retry.
    pub patience_ms: u64,
    /// Pause before asking again after the cluster could not answer.
    pub retry_pause_ms: u64,
}

/// What the node knows when the machine takes a step.
#[derive(Clone, Copy, Debug)]
pub struct Facts<'a> {
    pub me: NodeId,
    /// The view this node has installed now.
    pub view: &'a View,
    pub now_ms: u64,
    /// Whether `view` holds a majority of the cluster this node knows
    /// ([`crate::membership::Membership::majority`]).
    pub majority: bool,
}

/// An event for the delivery machine: the answer to its last action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeliveryInput {
    /// The first step.
    Start,
    /// The manager's candidates for the user's new mail (`None`: it could not answer).
    Candidates(Option<Rc<[NodeId]>>),
    /// The outcome of the store the machine asked for.
    Stored(Result<(), StoreError>),
    /// A fire-and-forget action was carried out, or a pause is over.
    Continue,
}

/// What the driver does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeliveryAction {
    /// Store in this node's fragment, replicated to `replicas` (this node first; empty: not
    /// replicated); `placed`: the epoch the placement was made in. Answer: `Stored`.
    StoreHere {
        placed: Epoch,
        replicas: Vec<NodeId>,
        /// Nodes an earlier attempt may have left a copy on: named in the replica set after
        /// `replicas`, pushed to, not waited for.
        also: Vec<NodeId>,
    },
    /// Ask `coordinator` to store and replicate to `replicas` (the coordinator first). Answer:
    /// `Stored` (`Unavailable` when it cannot be reached or is not a member).
    StoreAt {
        coordinator: NodeId,
        placed: Epoch,
        replicas: Vec<NodeId>,
        /// As [`DeliveryAction::StoreHere::also`].
        also: Vec<NodeId>,
    },
    /// Candidates for `replicas` copies from the user's manager, without the nodes in
    /// `avoid`. With `avoid` empty the driver may answer from its cache of the manager's last
    /// answer in this epoch. Answer: `Candidates`.
    AskCandidates {
        epoch: Epoch,
        replicas: usize,
        avoid: Vec<NodeId>,
    },
    /// Drop the cached candidates of the user (they failed). Answer: `Continue`.
    ForgetCandidates,
    /// Count `node` as full until its next load report. Answer: `Continue`.
    MarkFull(NodeId),
    /// Pause, then `Continue`.
    Sleep { ms: u64 },
    /// Done: the reply to give.
    Finish(Result<(), StoreError>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Phase {
    Begin,
    /// Waiting for candidates, asked without `avoid`.
    Placing {
        avoid: Vec<NodeId>,
    },
    /// Waiting for a store at `coordinator`.
    Storing {
        coordinator: NodeId,
        lone: bool,
        /// Every node the attempt named.
        named: Vec<NodeId>,
    },
    /// After a full coordinator was marked: its candidates are forgotten next.
    MarkedFull,
    /// After the candidates were forgotten: placed again, at once or after a pause.
    Forgot {
        then: Recovery,
    },
    /// Waiting out a pause.
    Pausing,
    Finished,
}

/// One delivery of one copy of a message to one user.
#[derive(Clone, Debug)]
pub struct Delivery {
    settings: DeliverySettings,
    deadline_ms: u64,
    /// Coordinators that answered "no space" (each count once per answer, as before).
    full_answers: usize,
    /// Nodes of attempts that ended "unavailable": they may hold a copy.
    may_hold: Vec<NodeId>,
    phase: Phase,
}

impl Delivery {
    pub fn new(settings: DeliverySettings, now_ms: u64) -> Self {
        Self {
            settings,
            deadline_ms: now_ms.saturating_add(settings.patience_ms),
            full_answers: 0,
            may_hold: Vec::new(),
            phase: Phase::Begin,
        }
    }

    /// Copies wanted in `view`: the setting, capped by the live node count.
    pub fn replicas_wanted(&self, view: &View) -> usize {
        self.settings.replicas.max(1).min(view.members.len().max(1))
    }

    /// Whether the machine has finished.
    pub fn finished(&self) -> bool {
        self.phase == Phase::Finished
    }

    /// One step: `input` is the answer to the last action. `load_of` is each node's load as
    /// this node knows it, `rng` the placement's randomness.
    pub fn step<R: Rng>(
        &mut self,
        input: DeliveryInput,
        facts: Facts<'_>,
        load_of: impl Fn(NodeId) -> CandidateLoad,
        rng: &mut R,
    ) -> DeliveryAction {
        let phase = std::mem::replace(&mut self.phase, Phase::Finished);
        match (phase, input) {
            (Phase::Finished, _) => DeliveryAction::Finish(Err(StoreError::Failed)),
            (Phase::Begin, _) | (Phase::Pausing, _) => self.attempt(facts),
            (Phase::Placing { avoid }, DeliveryInput::Candidates(Some(candidates)))
                if !candidates.is_empty() =>
            {
                let wanted = self.replicas_wanted(facts.view);
                let choice = placement::choose(
                    self.settings.placement,
                    &candidates,
                    wanted,
                    load_of,
                    self.settings.overload_ops,
                    avoid.is_empty(),
                    rng,
                );
                match choice {
                    Choice::Nodes(mut nodes) if !nodes.is_empty() => {
                        if let Some(at) = nodes.iter().position(|&n| n == facts.me) {
                            nodes.swap(0, at);
                        }
                        let coordinator = nodes[0];
                        let also = self.also_naming(&nodes);
                        self.phase = Phase::Storing {
                            coordinator,
                            lone: false,
                            named: nodes.iter().chain(&also).copied().collect(),
                        };
                        if coordinator == facts.me {
                            DeliveryAction::StoreHere {
                                placed: facts.view.epoch,
                                replicas: nodes,
                                also,
                            }
                        } else {
                            DeliveryAction::StoreAt {
                                coordinator,
                                placed: facts.view.epoch,
                                replicas: nodes,
                                also,
                            }
                        }
                    }
                    Choice::Nodes(_) => self.pause_or_give_up(facts),
                    Choice::Avoid(nodes) => {
                        self.phase = Phase::Placing {
                            avoid: nodes.clone(),
                        };
                        DeliveryAction::AskCandidates {
                            epoch: facts.view.epoch,
                            replicas: wanted,
                            avoid: nodes,
                        }
                    }
                }
            }
            (Phase::Placing { .. }, _) => self.pause_or_give_up(facts),
            (
                Phase::Storing {
                    coordinator,
                    lone,
                    named,
                },
                DeliveryInput::Stored(outcome),
            ) => {
                match outcome {
                    Ok(()) => self.finish(Ok(())),
                    Err(StoreError::Unavailable) if lone => self.pause_or_give_up(facts),
                    // Placed again with a fresh answer from the manager, under the same id.
                    Err(StoreError::Unavailable) => {
                        for node in named {
                            if !self.may_hold.contains(&node) {
                                self.may_hold.push(node);
                            }
                        }
                        if facts.now_ms >= self.deadline_ms {
                            return self.finish(Err(StoreError::Failed));
                        }
                        self.phase = Phase::Forgot {
                            then: Recovery::Pause,
                        };
                        DeliveryAction::ForgetCandidates
                    }
                    // A full disk there: placement avoids that node now; another may have room.
                    Err(StoreError::NoSpace) if !lone => {
                        self.full_answers = self.full_answers.saturating_add(1);
                        if self.full_answers >= facts.view.members.len() {
                            return self.finish(Err(StoreError::NoSpace));
                        }
                        if coordinator != facts.me {
                            self.phase = Phase::MarkedFull;
                            return DeliveryAction::MarkFull(coordinator);
                        }
                        self.phase = Phase::Forgot {
                            then: Recovery::AtOnce,
                        };
                        DeliveryAction::ForgetCandidates
                    }
                    Err(error) => self.finish(Err(error)),
                }
            }
            (Phase::Storing { .. }, _) => self.finish(Err(StoreError::Failed)),
            (Phase::MarkedFull, _) => {
                self.phase = Phase::Forgot {
                    then: Recovery::AtOnce,
                };
                DeliveryAction::ForgetCandidates
            }
            (Phase::Forgot { then }, _) => match then {
                Recovery::AtOnce => self.attempt(facts),
                Recovery::Pause => {
                    self.phase = Phase::Pausing;
                    DeliveryAction::Sleep {
                        ms: self.settings.retry_pause_ms,
                    }
                }
            },
        }
    }

    /// A new attempt under the view this node has now.
    fn attempt(&mut self, facts: Facts<'_>) -> DeliveryAction {
        let view = facts.view;
        if view.members.len() <= 1 {
            // Alone (or cut off from the others) after an attempt that may have left a copy on
            // a node out of reach (a store that timed out in a partition lands when it heals):
            // a second copy made here would be named by no replica set of that one, so a
            // session deleting either would never delete the other, and once the tombstone
            // retired the other would be shown again. Wait for those nodes, then give up (451:
            // the client sends again, at worst delivering twice, never showing a deleted
            // message again).
            if !self.may_hold.is_empty() {
                return self.pause_or_give_up(facts);
            }
            self.phase = Phase::Storing {
                coordinator: facts.me,
                lone: true,
                named: Vec::new(),
            };
            return DeliveryAction::StoreHere {
                placed: view.epoch,
                replicas: Vec::new(),
                also: Vec::new(),
            };
        }
        self.phase = Phase::Placing { avoid: Vec::new() };
        DeliveryAction::AskCandidates {
            epoch: view.epoch,
            replicas: self.replicas_wanted(view),
            avoid: Vec::new(),
        }
    }

    fn pause_or_give_up(&mut self, facts: Facts<'_>) -> DeliveryAction {
        if facts.now_ms >= self.deadline_ms {
            return self.finish(Err(StoreError::Failed));
        }
        self.phase = Phase::Pausing;
        DeliveryAction::Sleep {
            ms: self.settings.retry_pause_ms,
        }
    }

    /// The nodes that may hold a copy and are not among `nodes`, as many as a replica set
    /// has room for (the earliest attempts' first: they are the likeliest to have stored it).
    fn also_naming(&self, nodes: &[NodeId]) -> Vec<NodeId> {
        let room = porcupine_types::REPLICAS_MAX.saturating_sub(nodes.len());
        let also: Vec<NodeId> = self
            .may_hold
            .iter()
            .copied()
            .filter(|n| !nodes.contains(n))
            .collect();
        if also.len() > room {
            tracing::warn!(
                ?also,
                room,
                "a delivery placed again names only some of the nodes earlier attempts may have left a copy on"
            );
        }
        also.into_iter().take(room).collect()
    }

    fn finish(&mut self, result: Result<(), StoreError>) -> DeliveryAction {
        self.phase = Phase::Finished;
        DeliveryAction::Finish(result)
    }
}

/// How a delivery goes on after a failed store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Recovery {
    /// Another node may have room: place again at once.
    AtOnce,
    /// The cluster could not take it: place again after a pause.
    Pause,
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn view(members: &[NodeId]) -> View {
        crate::membership::test_view(5, members)
    }

    fn settings(replicas: usize) -> DeliverySettings {
        DeliverySettings {
            replicas,
            placement: PlacementPolicy::Static,
            overload_ops: 100,
            patience_ms: 1_000,
            retry_pause_ms: 20,
        }
    }

    fn idle(_: NodeId) -> CandidateLoad {
        CandidateLoad::default()
    }

    /// Runs the machine against scripted answers; returns every action it took.
    fn run(
        machine: &mut Delivery,
        view: &View,
        me: NodeId,
        mut answer: impl FnMut(&DeliveryAction, u64) -> DeliveryInput,
    ) -> Vec<DeliveryAction> {
        let mut rng = StdRng::seed_from_u64(1);
        let mut now = 0;
        let mut input = DeliveryInput::Start;
        let mut actions = Vec::new();
        for _ in 0..1_000 {
            let facts = Facts {
                me,
                view,
                now_ms: now,
                majority: true,
            };
            let action = machine.step(input, facts, idle, &mut rng);
            actions.push(action.clone());
            if let DeliveryAction::Finish(_) = action {
                return actions;
            }
            if let DeliveryAction::Sleep { ms } = action {
                now += ms;
            }
            input = answer(&action, now);
        }
        panic!("the delivery never finished: {actions:?}");
    }

    #[test]
    fn a_lone_node_stores_here_unreplicated() {
        let v = view(&[1]);
        let mut m = Delivery::new(settings(2), 0);
        let actions = run(&mut m, &v, 1, |_, _| DeliveryInput::Stored(Ok(())));
        assert_eq!(
            actions,
            vec![
                DeliveryAction::StoreHere {
                    placed: v.epoch,
                    replicas: vec![],
                    also: vec![]
                },
                DeliveryAction::Finish(Ok(()))
            ]
        );
        assert!(m.finished());
    }

    #[test]
    fn a_node_left_alone_after_a_timed_out_store_makes_no_second_copy() {
        let (all, alone) = (view(&[1, 2, 3]), view(&[2]));
        let mut rng = StdRng::seed_from_u64(1);
        let facts = |view, now_ms| Facts {
            me: 2,
            view,
            now_ms,
            majority: true,
        };
        let mut m = Delivery::new(settings(2), 0);
        let asked = m.step(DeliveryInput::Start, facts(&all, 0), idle, &mut rng);
        assert!(matches!(asked, DeliveryAction::AskCandidates { .. }));
        let candidates = DeliveryInput::Candidates(Some(vec![1, 3].into()));
        let first = m.step(candidates, facts(&all, 1), idle, &mut rng);
        assert!(matches!(
            first,
            DeliveryAction::StoreAt { coordinator: 1, .. }
        ));
        // The store at node 1 times out (a partition begins; it may land when that heals),
        // and this node is left alone: it waits for the others and never stores a copy that
        // no replica set of node 1's copy names.
        let timed_out = DeliveryInput::Stored(Err(StoreError::Unavailable));
        let forgot = m.step(timed_out, facts(&alone, 2), idle, &mut rng);
        assert_eq!(forgot, DeliveryAction::ForgetCandidates);
        let mut resumed = m.clone();
        let mut now = 3;
        let outcome = loop {
            match m.step(DeliveryInput::Continue, facts(&alone, now), idle, &mut rng) {
                DeliveryAction::StoreHere { .. } => panic!("stored a second, unlinked copy"),
                DeliveryAction::Sleep { ms } => now += ms,
                DeliveryAction::Finish(result) => break result,
                _ => {}
            }
        };
        assert_eq!(
            outcome,
            Err(StoreError::Failed),
            "451 once its patience is over"
        );
        // Back with the others in time, it places the message again, naming where the first
        // attempt may have left it.
        let mut input = DeliveryInput::Continue;
        let placed = loop {
            match resumed.step(input, facts(&all, 30), idle, &mut rng) {
                DeliveryAction::AskCandidates { .. } => {
                    input = DeliveryInput::Candidates(Some(vec![2, 3].into()))
                }
                action @ DeliveryAction::StoreHere { .. } => break action,
                DeliveryAction::Finish(result) => panic!("gave up: {result:?}"),
                _ => input = DeliveryInput::Continue,
            }
        };
        assert_eq!(
            placed,
            DeliveryAction::StoreHere {
                placed: all.epoch,
                replicas: vec![2, 3],
                also: vec![1]
            }
        );
    }

    #[test]
    fn this_node_coordinates_when_it_is_a_candidate() {
        let v = view(&[1, 2, 3]);
        let mut m = Delivery::new(settings(2), 0);
        let actions = run(&mut m, &v, 2, |action, _| match action {
            DeliveryAction::AskCandidates { .. } => {
                DeliveryInput::Candidates(Some(vec![1, 2].into()))
            }
            _ => DeliveryInput::Stored(Ok(())),
        });
        assert_eq!(
            actions[1],
            DeliveryAction::StoreHere {
                placed: v.epoch,
                replicas: vec![2, 1],
                also: vec![]
            }
        );
    }

    #[test]
    fn an_attempt_after_an_unavailable_one_names_its_nodes_too() {
        let v = view(&[1, 2, 3, 4, 5]);
        let mut m = Delivery::new(settings(2), 0);
        let mut stores = Vec::new();
        let mut asked = 0;
        let actions = run(&mut m, &v, 9, |action, _| match action {
            DeliveryAction::AskCandidates { .. } => {
                asked += 1;
                let first = if asked == 1 { vec![1, 2] } else { vec![3, 4] };
                DeliveryInput::Candidates(Some(first.into()))
            }
            DeliveryAction::StoreAt { replicas, also, .. } => {
                stores.push((replicas.clone(), also.clone()));
                DeliveryInput::Stored(if stores.len() == 1 {
                    Err(StoreError::Unavailable)
                } else {
                    Ok(())
                })
            }
            _ => DeliveryInput::Continue,
        });
        assert_eq!(actions.last(), Some(&DeliveryAction::Finish(Ok(()))));
        assert_eq!(stores.len(), 2, "{stores:?}");
        assert!(stores[0].1.is_empty());
        let (mut first, second) = (stores[0].0.clone(), &stores[1]);
        first.sort_unstable();
        let mut also = second.1.clone();
        also.sort_unstable();
        assert_eq!(
            also, first,
            "the second attempt names the first one's nodes: {stores:?}"
        );
        assert!(second.0.iter().all(|n| [3, 4].contains(n)));
    }

    #[test]
    fn an_unreachable_coordinator_is_placed_again_under_the_same_delivery() {
        let v = view(&[1, 2, 3]);
        let mut m = Delivery::new(settings(2), 0);
        let mut stores = 0;
        let actions = run(&mut m, &v, 3, |action, _| match action {
            DeliveryAction::AskCandidates { .. } => {
                DeliveryInput::Candidates(Some(vec![1, 2].into()))
            }
            DeliveryAction::StoreAt { .. } => {
                stores += 1;
                DeliveryInput::Stored(if stores == 1 {
                    Err(StoreError::Unavailable)
                } else {
                    Ok(())
                })
            }
            _ => DeliveryInput::Continue,
        });
        assert_eq!(stores, 2);
        assert!(actions.contains(&DeliveryAction::ForgetCandidates));
        assert!(actions
            .iter()
            .any(|a| matches!(a, DeliveryAction::Sleep { .. })));
        assert_eq!(actions.last(), Some(&DeliveryAction::Finish(Ok(()))));
    }

    #[test]
    fn full_coordinators_are_avoided_until_every_member_was_full() {
        let v = view(&[1, 2, 3]);
        let mut m = Delivery::new(settings(1), 0);
        let actions = run(&mut m, &v, 9, |action, _| match action {
            DeliveryAction::AskCandidates { .. } => DeliveryInput::Candidates(Some(vec![1].into())),
            DeliveryAction::StoreAt { .. } => DeliveryInput::Stored(Err(StoreError::NoSpace)),
            _ => DeliveryInput::Continue,
        });
        let marked = actions
            .iter()
            .filter(|a| matches!(a, DeliveryAction::MarkFull(1)))
            .count();
        assert_eq!(marked, 2, "{actions:?}");
        assert_eq!(
            actions.last(),
            Some(&DeliveryAction::Finish(Err(StoreError::NoSpace)))
        );
        // No pause between a full answer and the next placement.
        assert!(!actions
            .iter()
            .any(|a| matches!(a, DeliveryAction::Sleep { .. })));
    }

    #[test]
    fn a_manager_that_never_answers_runs_out_the_patience() {
        let v = view(&[1, 2]);
        let mut m = Delivery::new(settings(2), 0);
        let actions = run(&mut m, &v, 1, |_, _| DeliveryInput::Candidates(None));
        assert_eq!(
            actions.last(),
            Some(&DeliveryAction::Finish(Err(StoreError::Failed)))
        );
        let sleeps = actions
            .iter()
            .filter(|a| matches!(a, DeliveryAction::Sleep { .. }))
            .count();
        assert_eq!(sleeps, 50, "1,000 ms of patience in 20 ms pauses");
    }

    #[test]
    fn a_failed_store_is_not_retried() {
        let v = view(&[1, 2]);
        let mut m = Delivery::new(settings(2), 0);
        let actions = run(&mut m, &v, 1, |action, _| match action {
            DeliveryAction::AskCandidates { .. } => {
                DeliveryInput::Candidates(Some(vec![1, 2].into()))
            }
            _ => DeliveryInput::Stored(Err(StoreError::Failed)),
        });
        assert_eq!(actions.len(), 3);
        assert_eq!(
            actions.last(),
            Some(&DeliveryAction::Finish(Err(StoreError::Failed)))
        );
    }
}
