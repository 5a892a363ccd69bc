//! The engine side of replication: the log is the update log. Replicated puts and tombstones
//! stay pending until retired, across a reopen from the checkpoint or from the log alone;
//! deletes win over late puts; compaction keeps pending tombstones.

mod common;

use common::{body_for, run, small_config};
use porcupine_engine::index::supersedes;
use porcupine_engine::record::user_key;
use porcupine_engine::{
    DeleteOutcome, DmaStorage, PutOutcome, ReplicaSet, Retired, Shard, Stamp, UpdateKind,
};

/// A tombstone of message `id` of `a@x` pushed by node 9, whose set names 9 and 7.
async fn pushed_by_9(shard: &Shard, id: u128) -> porcupine_engine::Result<DeleteOutcome> {
    let stamp = Stamp {
        hlc: 1 << 41,
        origin: 9,
    };
    let set = ReplicaSet::new([9, 7]);
    shard
        .delete_replicated("a@x", id, Some((stamp, set)), ReplicaSet::NONE)
        .await
}

fn pending_kinds(shard: &Shard) -> Vec<(String, u128, UpdateKind)> {
    let mut pending: Vec<_> = shard
        .pending_updates()
        .into_iter()
        .map(|p| (p.user.to_string(), p.id, p.kind))
        .collect();
    pending.sort_by_key(|p| p.1);
    pending
}

#[test]
fn pending_updates_survive_reopen_until_retired_and_deletes_win() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (shard, _) = Shard::open(DmaStorage::default(), &path, small_config(), "t")
            .await
            .unwrap();
        let pair = ReplicaSet::new([7, 9]);
        // 1: coordinated here; 2: a copy pushed by node 9; 3: not replicated.
        let put = shard
            .put_message("a@x", 1, &body_for(1, 900), 0, pair, None)
            .await
            .unwrap();
        assert!(matches!(put, PutOutcome::Stored(_)));
        let pushed = Stamp {
            hlc: 1 << 40,
            origin: 9,
        };
        shard
            .put_message(
                "a@x",
                2,
                &body_for(2, 900),
                0,
                ReplicaSet::new([9, 7]),
                Some(pushed),
            )
            .await
            .unwrap();
        shard
            .put_message("a@x", 3, &body_for(3, 900), 0, ReplicaSet::NONE, None)
            .await
            .unwrap();
        // A second put of the same message writes nothing.
        let again = shard
            .put_message("a@x", 1, &body_for(1, 900), 0, pair, None)
            .await
            .unwrap();
        assert!(matches!(again, PutOutcome::AlreadyHere(_)));
        let copy = shard.message("a@x", 2).unwrap();
        assert_eq!((copy.hlc, copy.origin), (1 << 40, 9));
        let read = shard.read_message("a@x", 2).await.unwrap();
        assert_eq!(read.body(), &body_for(2, 900)[..]);
        assert_eq!(read.user(), "a@x");
        assert_eq!(read.meta.replicas, ReplicaSet::new([9, 7]));
        // A tombstone pushed for a message that never arrived: a late put of it is refused.
        let tomb_stamp = Stamp {
            hlc: (1 << 40) + 5,
            origin: 9,
        };
        let tomb = shard
            .delete_replicated("a@x", 4, Some((tomb_stamp, pair)), ReplicaSet::NONE)
            .await
            .unwrap();
        assert!(matches!(tomb, DeleteOutcome::Deleted(_)));
        let late = shard
            .put_message(
                "a@x",
                4,
                &body_for(4, 900),
                0,
                pair,
                Some(Stamp {
                    hlc: 1 << 40,
                    origin: 9,
                }),
            )
            .await
            .unwrap();
        assert_eq!(late, PutOutcome::Deleted);
        // A delete made here takes the message's own replica set.
        let DeleteOutcome::Deleted(local) = shard
            .delete_replicated("a@x", 1, None, ReplicaSet::NONE)
            .await
            .unwrap()
        else {
            panic!("message 1 was there")
        };
        assert_eq!(local.replicas, pair);
        assert_eq!(
            shard
                .delete_replicated("a@x", 1, None, ReplicaSet::NONE)
                .await
                .unwrap(),
            DeleteOutcome::AlreadyDeleted
        );
        assert_eq!(
            pending_kinds(&shard),
            vec![
                ("a@x".into(), 1, UpdateKind::Delete),
                ("a@x".into(), 2, UpdateKind::Put),
                ("a@x".into(), 4, UpdateKind::Delete),
            ]
        );
        // Retire the copy of 2 (with a stale entry for 1 that must not retire its tombstone).
        let put_hlc_2 = shard.message("a@x", 2).unwrap().hlc;
        shard
            .retire(&[
                Retired {
                    user_key: user_key("a@x"),
                    message_id: 2,
                    hlc: put_hlc_2,
                },
                Retired {
                    user_key: user_key("a@x"),
                    message_id: 1,
                    hlc: put.hlc(),
                },
            ])
            .await
            .unwrap();
        shard.close().await.unwrap();

        for round in 0..2 {
            if round == 1 {
                std::fs::remove_file(path.join("index.ckpt")).unwrap();
            }
            let (shard, report) = Shard::open(DmaStorage::default(), &path, small_config(), "t")
                .await
                .unwrap();
            assert_eq!(report.from_checkpoint, round == 0);
            assert_eq!(
                pending_kinds(&shard),
                vec![
                    ("a@x".into(), 1, UpdateKind::Delete),
                    ("a@x".into(), 4, UpdateKind::Delete),
                ],
                "round {round}"
            );
            let mut ids: Vec<u128> = shard.messages("a@x").iter().map(|m| m.id).collect();
            ids.sort_unstable();
            assert_eq!(ids, vec![2, 3], "round {round}");
            // Compaction of every sealed segment keeps the pending tombstones.
            while shard.compact_once().await.unwrap().is_some() {}
            shard.close().await.unwrap();
        }
        let (shard, _) = Shard::open(DmaStorage::default(), &path, small_config(), "t")
            .await
            .unwrap();
        std::fs::remove_file(path.join("index.ckpt")).unwrap();
        assert_eq!(pending_kinds(&shard).len(), 2);
        let tombs: Vec<Retired> = shard
            .pending_updates()
            .iter()
            .map(|p| Retired {
                user_key: user_key(&p.user),
                message_id: p.id,
                hlc: p.hlc,
            })
            .collect();
        shard.retire(&tombs).await.unwrap();
        assert!(shard.pending_updates().is_empty());
        shard.close().await.unwrap();
        let (shard, _) = Shard::open(DmaStorage::default(), &path, small_config(), "t")
            .await
            .unwrap();
        assert!(shard.pending_updates().is_empty());
        shard.close().await.unwrap();
    });
}

#[test]
fn profiles_keep_the_newest_stamp() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (shard, _) = Shard::open(DmaStorage::default(), &path, small_config(), "t")
            .await
            .unwrap();
        let hlc = shard
            .put_profile_stamped("p@x", b"new", None)
            .await
            .unwrap()
            .unwrap();
        let older = Stamp {
            hlc: hlc - 1,
            origin: 3,
        };
        assert_eq!(
            shard
                .put_profile_stamped("p@x", b"old", Some(older))
                .await
                .unwrap(),
            None
        );
        assert_eq!(shard.read_profile("p@x").await.unwrap().unwrap(), b"new");
        let newer = Stamp {
            hlc: hlc + 10,
            origin: 3,
        };
        assert_eq!(
            shard
                .put_profile_stamped("p@x", b"newer", Some(newer))
                .await
                .unwrap(),
            Some(hlc + 10)
        );
        assert_eq!(shard.read_profile("p@x").await.unwrap().unwrap(), b"newer");
        // The clock moved past what it saw.
        assert!(
            shard
                .put_profile_stamped("p@x", b"x", None)
                .await
                .unwrap()
                .unwrap()
                > hlc + 10
        );
        shard.close().await.unwrap();
    });
}

/// Random replicated puts, local and pushed deletes, retirements, compactions, checkpoints and
/// reopens (from the checkpoint or the log alone): after each reopen the pending set is what
/// it was, and every pending put is of a message that is there.
#[test]
fn random_replication_histories_recover_exactly() {
    use rand::{Rng, SeedableRng};
    for seed in 0..12u64 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        run(move || async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let (mut shard, _) = Shard::open(DmaStorage::default(), &path, small_config(), "t")
                .await
                .unwrap();
            let pair = ReplicaSet::new([7, 9]);
            let users = ["a@x", "b@x", "c@x"];
            let mut next = 1u128;
            let mut hlc = 1u64 << 45;
            for step in 0..400 {
                let user = users[rng.gen_range(0..users.len())];
                match rng.gen_range(0..10) {
                    0..=3 => {
                        let stamp = rng.gen_bool(0.5).then(|| {
                            hlc += 1;
                            Stamp { hlc, origin: 9 }
                        });
                        shard
                            .put_message(user, next, &body_for(next, 700), 0, pair, stamp)
                            .await
                            .unwrap();
                        next += 1;
                    }
                    4 | 5 => {
                        let id = rng.gen_range(1..next.max(2));
                        let pushed = rng.gen_bool(0.3).then(|| {
                            hlc += 1;
                            (Stamp { hlc, origin: 9 }, pair)
                        });
                        shard
                            .delete_replicated(user, id, pushed, ReplicaSet::new([7, 11]))
                            .await
                            .unwrap();
                    }
                    6 | 7 => {
                        let retire: Vec<Retired> = shard
                            .pending_updates()
                            .iter()
                            .filter(|_| rng.gen_bool(0.5))
                            .map(|p| Retired {
                                user_key: user_key(&p.user),
                                message_id: p.id,
                                hlc: p.hlc,
                            })
                            .collect();
                        shard.retire(&retire).await.unwrap();
                    }
                    8 => {
                        let _ = shard.compact_once().await.unwrap();
                    }
                    _ => {
                        let mut before = shard.pending_updates();
                        before.sort_by_key(|p| (p.id, p.user.clone()));
                        let messages: Vec<_> =
                            users.iter().map(|u| shard.messages(u).len()).collect();
                        if rng.gen_bool(0.5) {
                            shard.close().await.unwrap();
                        } else {
                            shard.checkpoint().await.unwrap();
                            // A crash: no checkpoint after the last records.
                            shard.close().await.unwrap();
                        }
                        if rng.gen_bool(0.4) {
                            let _ = std::fs::remove_file(path.join("index.ckpt"));
                        }
                        shard = Shard::open(DmaStorage::default(), &path, small_config(), "t")
                            .await
                            .unwrap()
                            .0;
                        let mut after = shard.pending_updates();
                        after.sort_by_key(|p| (p.id, p.user.clone()));
                        let after_messages: Vec<_> =
                            users.iter().map(|u| shard.messages(u).len()).collect();
                        assert_eq!(messages, after_messages, "seed {seed} step {step}");
                        // A full scan may find updates pending again whose retirement
                        // compaction dropped (harmless: they are pushed again), and such a
                        // tombstone may take the place of an older pending tombstone of the same
                        // message (a delete made here, then one pushed with an older stamp);
                        // nothing else may differ.
                        for p in &before {
                            let superseded = after.iter().any(|q| {
                                q.user == p.user
                                    && q.id == p.id
                                    && supersedes((p.kind, p.hlc), (q.kind, q.hlc))
                            });
                            assert!(
                                after.contains(p) || superseded,
                                "seed {seed} step {step}: lost {p:?}"
                            );
                        }
                    }
                }
                for p in shard.pending_updates() {
                    if p.kind == UpdateKind::Put {
                        assert!(
                            shard.message(&p.user, p.id).is_some(),
                            "seed {seed} step {step}: pending put of a missing message {p:?}"
                        );
                    }
                }
            }
            shard.close().await.unwrap();
        });
    }
}

#[test]
fn a_put_naming_new_replicas_widens_the_stored_copy() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (shard, _) = Shard::open(DmaStorage::default(), &path, small_config(), "t")
            .await
            .unwrap();
        let first = shard
            .put_message(
                "w@x",
                1,
                &body_for(1, 500),
                0,
                ReplicaSet::new([7, 9]),
                None,
            )
            .await
            .unwrap();
        // The same set again, or a subset: nothing is written.
        let again = shard
            .put_message(
                "w@x",
                1,
                &body_for(1, 500),
                0,
                ReplicaSet::new([9, 7]),
                None,
            )
            .await
            .unwrap();
        assert_eq!(
            again,
            PutOutcome::AlreadyHere(shard.message("w@x", 1).unwrap())
        );
        // A retry placed on 7 and 11: the copy is written again with the union, same stamp.
        let PutOutcome::AlreadyHere(wider) = shard
            .put_message(
                "w@x",
                1,
                &body_for(1, 500),
                0,
                ReplicaSet::new([7, 11]),
                None,
            )
            .await
            .unwrap()
        else {
            panic!("expected the copy that was here")
        };
        assert_eq!(wider.replicas, ReplicaSet::new([7, 9, 11]));
        assert_eq!(wider.hlc, first.hlc());
        let pending = shard.pending_updates();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].replicas, ReplicaSet::new([7, 9, 11]));
        assert_eq!(pending[0].hlc, first.hlc());
        // Its tombstone goes to all three.
        let DeleteOutcome::Deleted(tomb) = shard
            .delete_replicated("w@x", 1, None, ReplicaSet::NONE)
            .await
            .unwrap()
        else {
            panic!("message 1 was there")
        };
        assert_eq!(tomb.replicas, ReplicaSet::new([7, 9, 11]));
        shard.close().await.unwrap();
        std::fs::remove_file(path.join("index.ckpt")).unwrap();
        let (shard, _) = Shard::open(DmaStorage::default(), &path, small_config(), "t")
            .await
            .unwrap();
        let pending = shard.pending_updates();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].kind, UpdateKind::Delete);
        assert_eq!(pending[0].replicas, ReplicaSet::new([7, 9, 11]));
        shard.close().await.unwrap();
    });
}

#[test]
fn a_delete_made_here_of_a_message_not_here_leaves_a_pending_tombstone_when_it_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (shard, _) = Shard::open(DmaStorage::default(), &path, small_config(), "t")
            .await
            .unwrap();
        // Nowhere to send it: nothing is written.
        assert_eq!(
            shard
                .delete_replicated("s@x", 5, None, ReplicaSet::NONE)
                .await
                .unwrap(),
            DeleteOutcome::NotFound
        );
        // A stand-in for an absent replica (or a replica the put has not reached yet): the
        // tombstone is written, goes on to `also`, and refuses the late put.
        let also = ReplicaSet::new([3, 4, 1]);
        let DeleteOutcome::Deleted(tomb) =
            shard.delete_replicated("s@x", 5, None, also).await.unwrap()
        else {
            panic!("a tombstone is written")
        };
        assert_eq!(tomb.replicas, also);
        assert_eq!(shard.pending_tombstones("s@x"), vec![5]);
        assert!(shard.fragment_users().contains(&"s@x".to_string()));
        let late = shard
            .put_message(
                "s@x",
                5,
                &body_for(5, 300),
                0,
                ReplicaSet::new([3, 4]),
                Some(Stamp { hlc: 1, origin: 3 }),
            )
            .await
            .unwrap();
        assert_eq!(late, PutOutcome::Deleted);
        shard.close().await.unwrap();
        let (shard, _) = Shard::open(DmaStorage::default(), &path, small_config(), "t")
            .await
            .unwrap();
        assert_eq!(shard.pending_tombstones("s@x"), vec![5]);
    })
}

#[test]
fn a_set_rebuilt_by_healing_replaces_a_full_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (shard, _) = Shard::open(DmaStorage::default(), &path, small_config(), "t")
            .await
            .unwrap();
        let first = shard
            .put_message(
                "w@x",
                1,
                &body_for(1, 500),
                0,
                ReplicaSet::new([7, 9, 11]),
                None,
            )
            .await
            .unwrap();
        let first_entry = shard.message("w@x", 1).unwrap();
        // Healing after 9 and then 11 died: a set that the union would overflow is taken as
        // pushed (the newer one, without a dead node), never cut short of the new replicas.
        let stamp = Stamp {
            hlc: first.hlc(),
            origin: first_entry.origin,
        };
        for (pushed, kept) in [
            (vec![7, 9, 11, 13], vec![7, 9, 11, 13]),
            (vec![7, 11, 13, 15], vec![7, 11, 13, 15]),
        ] {
            let outcome = shard
                .put_message(
                    "w@x",
                    1,
                    &body_for(1, 500),
                    0,
                    ReplicaSet::new(pushed.iter().copied()),
                    Some(stamp),
                )
                .await
                .unwrap();
            let PutOutcome::AlreadyHere(entry) = outcome else {
                panic!("expected the copy that was here: {outcome:?}")
            };
            assert_eq!(entry.replicas.as_slice(), &kept[..], "pushed {pushed:?}");
            assert_eq!(entry.hlc, first.hlc());
        }
        shard.close().await.unwrap();
    });
}

#[test]
fn a_pushed_tombstone_over_a_wider_copy_names_the_copys_nodes_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (shard, _) = Shard::open(DmaStorage::default(), &path, small_config(), "t")
            .await
            .unwrap();
        // A delivery placed again widened the copy here to 7, 9 and 11; the tombstone pushed
        // by 9 names only 7 and 9. The answer tells 9 to send it on to 11.
        shard
            .put_message(
                "a@x",
                5,
                &body_for(5, 900),
                0,
                ReplicaSet::new([7, 9, 11]),
                None,
            )
            .await
            .unwrap();
        let DeleteOutcome::Deleted(tomb) = pushed_by_9(&shard, 5).await.unwrap() else {
            panic!("message 5 was there")
        };
        assert_eq!(tomb.replicas, ReplicaSet::new([9, 7, 11]));
        // Without a copy here, a pushed tombstone keeps the pusher's set.
        let DeleteOutcome::Deleted(tomb) = pushed_by_9(&shard, 6).await.unwrap() else {
            panic!("a tombstone for a message not here")
        };
        assert_eq!(tomb.replicas, ReplicaSet::new([9, 7]));
        shard.close().await.unwrap();
    });
}

#[test]
fn a_put_racing_a_queued_tombstone_of_its_message_does_not_land_behind_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (shard, _) = Shard::open(DmaStorage::default(), &path, small_config(), "t")
            .await
            .unwrap();
        // A tombstone pushed by 9 is queued and not yet durable when a retried delivery of
        // the same message is stored here: the index shows neither yet. The put must see the
        // queued tombstone, or its copy would land behind it, look deleted to every later
        // delete and be listed for ever.
        let body = body_for(8, 900);
        let (deleted, put) = futures_lite::future::zip(
            pushed_by_9(&shard, 8),
            shard.put_message("a@x", 8, &body, 0, ReplicaSet::new([7, 9, 11]), None),
        )
        .await;
        assert!(matches!(deleted.unwrap(), DeleteOutcome::Deleted(_)));
        assert!(matches!(put.unwrap(), PutOutcome::Deleted));
        assert!(shard.message("a@x", 8).is_none());
        assert!(shard.messages("a@x").is_empty());
        // The other order: a put still queued when a tombstone of it is decided. The tombstone
        // lands behind it, removes it, and names the put's replicas as if it had been durable.
        let (put, deleted) = futures_lite::future::zip(
            shard.put_message("a@x", 9, &body, 0, ReplicaSet::new([7, 9, 11]), None),
            pushed_by_9(&shard, 9),
        )
        .await;
        assert!(matches!(put.unwrap(), PutOutcome::Stored(_)));
        let DeleteOutcome::Deleted(tomb) = deleted.unwrap() else {
            panic!("the queued put counts as here")
        };
        assert_eq!(tomb.replicas, ReplicaSet::new([9, 7, 11]));
        assert!(shard.messages("a@x").is_empty());
        // Both hold after a reopen from the log.
        shard.close().await.unwrap();
        let (shard, _) = Shard::open(DmaStorage::default(), &path, small_config(), "t")
            .await
            .unwrap();
        assert!(shard.messages("a@x").is_empty());
        shard.close().await.unwrap();
    });
}
