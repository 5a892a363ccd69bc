//! Placement policies in the real binary: three nodes on 127.0.0.71–73 (one copy per message)
//! take a user's mail through every node, and each policy keeps it where it says: `static` on
//! one node, `dynamic` on at most `--spread` nodes, `random` on any. Also: every node learns
//! every other's load (with its age) through frames and the ring exchange, a throttled data
//! directory shows in the status, and bad placement or throttle settings are refused clearly.

mod common;

use common::cluster::{start_member, status, try_status, wait_members, Ports};
use common::{assert_refused, python, Node, PASSWORD};
use porcupine_cluster::node::status::PlacementName;
use std::path::Path;

const MESSAGES_PER_NODE: usize = 12;

fn cluster(dir: &Path, ports: &Ports, extra: &[&str]) -> Vec<Node> {
    let nodes: Vec<Node> = (1..=3)
        .map(|n| {
            let data = dir.join(format!("node{n}"));
            let throttle = format!("{}=5000:200", data.display());
            let mut args = vec!["--replicas", "1"];
            args.extend_from_slice(extra);
            if n == 3 {
                args.extend_from_slice(&["--throttle", &throttle]);
            }
            start_member(dir, "127.0.0", 70, n, ports, &args)
        })
        .collect();
    wait_members(&nodes.iter().collect::<Vec<_>>(), 3);
    nodes
}

/// Delivers mail to user1 through every node; returns how many nodes store some of it.
fn spread_of_one_mailbox(nodes: &[Node]) -> usize {
    nodes[0].bulk_users(1, "user");
    for (i, node) in nodes.iter().enumerate() {
        let out = python(
            "cluster_mail.py",
            &[
                "repeat".into(),
                node.ip.clone(),
                node.smtp.to_string(),
                format!("n{i}"),
                MESSAGES_PER_NODE.to_string(),
            ],
        );
        assert!(out.contains("delivered"), "{out}");
    }
    // Every message is readable through any node, once.
    let out = python(
        "cluster_mail.py",
        &[
            "count".into(),
            nodes[1].ip.clone(),
            nodes[1].pop3.to_string(),
            PASSWORD.into(),
            "user1@localhost".into(),
        ],
    );
    assert!(
        out.contains(&format!("count {}", MESSAGES_PER_NODE * nodes.len())),
        "{out}"
    );
    nodes.iter().filter(|n| status(n).messages > 0).count()
}

#[test]
fn each_placement_policy_keeps_a_mailbox_where_it_says() {
    for (flags, check) in [
        (
            &["--placement", "static"][..],
            (|holders: usize| holders == 1) as fn(usize) -> bool,
        ),
        (
            &["--placement", "dynamic", "--spread", "2"][..],
            |holders| (1..=2).contains(&holders),
        ),
        // 36 messages over 3 nodes at random: all three hold some (fails with p < 1e-5).
        (&["--placement", "random"][..], |holders| holders == 3),
    ] {
        let temp = tempfile::tempdir().unwrap();
        let ports = Ports::free();
        let nodes = cluster(temp.path(), &ports, flags);
        let view = status(&nodes[0]);
        let policy = serde_json::to_value(view.placement.policy).unwrap();
        assert_eq!(policy, flags[1], "{view:?}");
        let holders = spread_of_one_mailbox(&nodes);
        assert!(
            check(holders),
            "{flags:?}: the mailbox is on {holders} nodes"
        );
    }
}

#[test]
fn loads_travel_around_the_ring_and_a_throttled_disk_shows() {
    let temp = tempfile::tempdir().unwrap();
    let ports = Ports::free();
    let nodes = cluster(temp.path(), &ports, &[]);
    // Within a few exchange periods every node knows every member's load, fresh.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let fresh = nodes.iter().all(|node| {
            try_status(node).is_some_and(|view| {
                view.members.len() == 3
                    && view
                        .members
                        .iter()
                        .all(|m| m.load.is_some() && m.load_age_ms.is_some_and(|age| age < 2000))
            })
        });
        if fresh {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "loads did not spread: {:?}",
            nodes
                .iter()
                .map(|n| try_status(n).map(|view| view.members))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let view = status(&nodes[2]);
    assert_eq!(view.placement.policy, PlacementName::Dynamic);
    assert_eq!(view.placement.spread, Some(2));
    assert!(
        view.shards
            .iter()
            .all(|s| s.throttle.as_deref() == Some("5000 IOPS, 200.0 MB/s")),
        "{view:?}"
    );
    assert!(status(&nodes[0]).shards[0].throttle.is_none());
    let metrics = nodes[0].metrics();
    assert!(metrics.contains("porcupine_shard_load{"), "{metrics}");
}

#[test]
fn bad_placement_and_throttle_settings_are_refused_clearly() {
    for (args, expected) in [
        (vec!["--spread", "0"], "--spread must be between 1 and 64"),
        (vec!["--placement", "nearest"], "invalid value 'nearest'"),
        (vec!["--throttle", "nonsense"], "expected DIR=IOPS:MBPS"),
        (
            vec!["--throttle", "/elsewhere=100:1"],
            "not a data directory",
        ),
        (
            vec!["--overload-ops", "0"],
            "--overload-ops must be at least 1",
        ),
    ] {
        assert_refused(&args, expected);
    }
}
