//! Replicas heal: four real `porcupine` processes (127.0.0.91–94, `--replicas 2`, `--dead-after
//! 4s`). A node is SIGKILLed and stays away past `--dead-after`: the others declare it dead
//! (status and metrics say so), make its copies again, and report nothing under-replicated.
//! Then a second node is killed at once — without healing, mail that had its two copies on
//! those two nodes would be out of reach — and every message is read back, exactly once and
//! byte-exact, from the two left. Mail deleted while the dead node is away stays deleted when
//! it returns, and when the second node returns; every message is shown once from every node.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::cluster::{start_member, status, try_status, wait_members, Ports, Status};
use common::mail::{check, deliver, gone, take};
use common::Node;

const USERS: u64 = 40;
const TAGS: [&str; 3] = ["a", "b", "c"];

/// `PORCUPINE_HEAL_EXTRA=N` delivers N more rounds of mail before the death, to measure the
/// repair rate on more copies (the figure is printed); the test's checks are the same.
fn extra_rounds() -> usize {
    std::env::var("PORCUPINE_HEAL_EXTRA")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn start(dir: &Path, n: usize, ports: &Ports) -> Node {
    start_member(
        dir,
        "127.0.0",
        90,
        n,
        ports,
        &["--dead-after", "4s", "--heal-rate", "400"],
    )
}

/// Waits until every node reports `dead` as its dead nodes and nothing under-replicated;
/// returns the statuses then.
fn wait_healed(nodes: &[&Node], dead: &[u64], patience: Duration) -> Vec<Status> {
    let deadline = Instant::now() + patience;
    loop {
        let statuses: Vec<Option<Status>> = nodes.iter().map(|n| try_status(n)).collect();
        let healed = statuses.iter().all(|s| {
            s.as_ref().is_some_and(|s| {
                let mut seen = s.replication.dead_nodes.clone();
                seen.sort_unstable();
                seen == dead && s.replication.under_replicated == 0
            })
        });
        if healed {
            return statuses.into_iter().flatten().collect();
        }
        assert!(
            Instant::now() < deadline,
            "not healed in {patience:?}: {:?}",
            statuses
                .iter()
                .map(|s| s.as_ref().map(|s| &s.replication))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_dead_nodes_copies_are_made_again_and_a_second_death_loses_nothing() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().to_path_buf();
    let ports = Ports::free();
    let n1 = start(&dir, 1, &ports);
    let n2 = start(&dir, 2, &ports);
    let n3 = start(&dir, 3, &ports);
    let n4 = start(&dir, 4, &ports);
    wait_members(&[&n1, &n2, &n3, &n4], 4);
    n1.bulk_users(USERS, "user");
    for (tag, node) in TAGS.iter().zip([&n1, &n2, &n3]) {
        deliver(node, USERS, tag);
    }
    check(&n4, USERS, &TAGS);
    for round in 0..extra_rounds() {
        deliver([&n1, &n2, &n3][round % 3], USERS, &format!("extra{round}"));
    }
    let id4 = status(&n4).node_id;
    let held_by_4 = status(&n4).messages;
    assert!(
        held_by_4 > 0,
        "node 4 holds no mail: the test would prove nothing"
    );

    // Node 4 dies for good: after --dead-after the three left make its copies again.
    n4.kill();
    wait_members(&[&n1, &n2, &n3], 3);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(60);
    while ![&n1, &n2, &n3]
        .iter()
        .any(|n| try_status(n).is_some_and(|s| !s.replication.dead_nodes.is_empty()))
    {
        assert!(Instant::now() < deadline, "node 4 was never declared dead");
        std::thread::sleep(Duration::from_millis(20));
    }
    let declared = started.elapsed();
    let healed = wait_healed(&[&n1, &n2, &n3], &[id4], Duration::from_secs(120));
    let copies: u64 = healed.iter().map(|s| s.replication.healed).sum();
    let repair = started.elapsed().saturating_sub(declared);
    eprintln!(
        "declared dead {declared:?} after the membership dropped it; {copies} copies made again \
         (node 4 held {held_by_4}) in {repair:?}: {:.0} copies/s at --heal-rate 400 per node",
        copies as f64 / repair.as_secs_f64().max(0.001)
    );
    assert!(copies > 0, "nothing was made again: {healed:?}");
    assert!(
        copies <= held_by_4,
        "more copies made ({copies}) than node 4 held ({held_by_4})"
    );
    for node in [&n1, &n2, &n3] {
        let text = node.metrics();
        assert!(text.contains("porcupine_dead_nodes 1"), "{text}");
        assert!(
            text.contains("porcupine_copies_under_replicated 0"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE porcupine_copies_healed counter"),
            "{text}"
        );
    }

    // A second death right away: every message still has a copy on the two left, which are
    // two of the three nodes not dead — a majority, so they serve maildrops.
    n3.kill();
    wait_members(&[&n1, &n2], 2);
    check(&n1, USERS, &TAGS);
    check(&n2, USERS, &TAGS);
    // Deleted while node 4 is dead and node 3 is away.
    take(&n1, USERS, "a");
    gone(&n2, USERS, "a");

    // The dead node returns: it rejoins, learns of the deletes, and shows nothing twice.
    let n4 = start(&dir, 4, &ports);
    wait_members(&[&n1, &n2, &n4], 3);
    let back = status(&n1);
    assert!(
        !back.replication.dead_nodes.contains(&id4),
        "a member again is not dead: {:?}",
        back.replication
    );
    check(&n4, USERS, &["b", "c"]);
    gone(&n4, USERS, "a");
    let n3 = start(&dir, 3, &ports);
    wait_members(&[&n1, &n2, &n3, &n4], 4);
    for node in [&n1, &n2, &n3, &n4] {
        check(node, USERS, &["b", "c"]);
        gone(node, USERS, "a");
    }
    for node in [n1, n2, n3, n4] {
        assert!(node.terminate().success());
    }
}
