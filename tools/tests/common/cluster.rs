//! Test clusters of real `porcupine` processes, each node on its own loopback address with the
//! same ports: starting members, reading their status, waiting for the membership to settle.

use std::path::Path;
use std::time::{Duration, Instant};

pub use porcupine_cluster::node::status::Status;

use super::{free_port, Node};

/// The ports every node of a test cluster uses (each node has its own address).
pub struct Ports {
    pub smtp: u16,
    pub pop3: u16,
    pub admin: u16,
    pub cluster: u16,
    pub imap: u16,
}

impl Ports {
    pub fn free() -> Ports {
        Ports {
            smtp: free_port(),
            pop3: free_port(),
            admin: free_port(),
            cluster: free_port(),
            imap: free_port(),
        }
    }
}

/// Starts member `n` (1, 2, …) at `{net}.{base + n}` in `dir/node{n}`, seeded with members 1
/// and 2.
pub fn start_member(
    dir: &Path,
    net: &str,
    base: u8,
    n: usize,
    ports: &Ports,
    extra: &[&str],
) -> Node {
    let ip = format!("{net}.{}", usize::from(base) + n);
    let cluster = format!("{ip}:{}", ports.cluster);
    let seeds = format!(
        "{net}.{}:{2},{net}.{}:{2}",
        base + 1,
        base + 2,
        ports.cluster
    );
    let imap = format!("{ip}:{}", ports.imap);
    let mut args = vec!["--cluster", &cluster, "--join", &seeds];
    if !extra.contains(&"--imap") {
        args.extend(["--imap", imap.as_str()]);
    }
    args.extend_from_slice(extra);
    Node::start_in(
        None,
        &dir.join(format!("node{n}")),
        &ip,
        ports.smtp,
        ports.pop3,
        ports.admin,
        &args,
    )
}

/// Starts member `n` at `{net}.{base + n}` in `dir/node{n}`, knowing of no other node: the
/// whole cluster, so it holds the majority (a member seeded with an absent peer does not, and
/// shows no maildrop).
pub fn start_lone_member(
    dir: &Path,
    net: &str,
    base: u8,
    n: usize,
    ports: &Ports,
    extra: &[&str],
) -> Node {
    let ip = format!("{net}.{}", usize::from(base) + n);
    let cluster = format!("{ip}:{}", ports.cluster);
    let mut args = vec!["--cluster", &cluster];
    args.extend_from_slice(extra);
    Node::start_in(
        None,
        &dir.join(format!("node{n}")),
        &ip,
        ports.smtp,
        ports.pop3,
        ports.admin,
        &args,
    )
}

/// The node's status through `porcupine status --json`, read back as the node's own type;
/// `None` while the node does not answer (starting, stopped).
pub fn try_status(node: &Node) -> Option<Status> {
    let out = std::process::Command::new(super::binary())
        .args(["status", "--json"])
        .args(node.admin_args())
        .output()
        .expect("porcupine status");
    if !out.status.success() {
        return None;
    }
    let status = serde_json::from_slice(&out.stdout);
    Some(status.unwrap_or_else(|e| {
        panic!(
            "porcupine status --json printed what Status cannot read ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    }))
}

/// The node's status; the node must answer.
pub fn status(node: &Node) -> Status {
    try_status(node).unwrap_or_else(|| panic!("node {} does not answer /status", node.admin_addr()))
}

pub fn member_count(node: &Node) -> usize {
    try_status(node).map_or(0, |s| s.members.len())
}

fn members(node: &Node) -> Option<Vec<porcupine_cluster::node::status::MemberStatus>> {
    try_status(node).map(|s| s.members)
}

/// Waits until every node in `nodes` sees exactly `count` members; returns how long it took.
pub fn wait_members(nodes: &[&Node], count: usize) -> Duration {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(30);
    while nodes.iter().any(|n| member_count(n) != count) {
        assert!(
            Instant::now() < deadline,
            "nodes did not converge on {count} members: {:?}",
            nodes.iter().map(|n| members(n)).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = started.elapsed();
    wait_settled(nodes, count);
    took
}

/// Waits until the nodes have shared one epoch of `count` members for half a second (a node
/// that was slow to answer a ping on a loaded machine may be dropped and merged back).
pub fn wait_settled(nodes: &[&Node], count: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut since: Option<(porcupine_cluster::node::status::EpochInfo, Instant)> = None;
    loop {
        let views: Vec<Option<Status>> = nodes.iter().map(|n| try_status(n)).collect();
        let epoch = views[0].as_ref().map(|v| v.epoch);
        let agreed = views.iter().all(|v| {
            v.as_ref()
                .is_some_and(|v| Some(v.epoch) == epoch && v.members.len() == count)
        });
        let epoch = epoch.unwrap_or(porcupine_cluster::node::status::EpochInfo {
            clock: 0,
            coordinator: 0,
        });
        match (&since, agreed) {
            (Some((e, at)), true) if *e == epoch => {
                if at.elapsed() >= Duration::from_millis(500) {
                    return;
                }
            }
            (_, true) => since = Some((epoch, Instant::now())),
            (_, false) => since = None,
        }
        assert!(
            Instant::now() < deadline,
            "membership did not settle: {views:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
