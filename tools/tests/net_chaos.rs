//! Network chaos: three nodes with two replicas per message, each in its own network namespace
//! (10.77.x.1–3, joined by a bridge), take the paper's workload from `porcupine-load` while the
//! network misbehaves and the nodes with it, one fault after another:
//!
//! 1. every link loses 3 % of its packets both ways (and, where the kernel has `tc netem`,
//!    is delayed 2–8 ms with reordering and 1 % duplication);
//! 2. an asymmetric partition: node 2 hears everyone, nobody hears node 2; then it heals;
//! 3. node 3 is paused (SIGSTOP) long enough to be suspected, then resumed (SIGCONT) — the
//!    hardest case for failure detection: it comes back believing nothing happened;
//! 4. node 1 is SIGKILLed and restarted on a clean network.
//!
//! Afterwards, as in the chaos test: every message that got a 250 was retrieved byte-exact,
//! nothing deleted came back, and every maildrop is empty through every node.
//!
//! Needs root, `ip netns` and nftables (`nft`); without them it says loudly that it skipped.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::cluster::wait_members;
use common::netns::{Direction, Netns};
use common::{Node, PASSWORD};

const USERS: u64 = 100;
const LOAD_SECONDS: u64 = 40;

#[test]
fn acknowledged_mail_survives_loss_asymmetric_partitions_pauses_and_kills() {
    let net = match Netns::new(3) {
        Ok(net) => net,
        Err(why) => {
            eprintln!("\n*** SKIPPED net_chaos: {why} ***\n");
            return;
        }
    };
    if let Err(why) = net.nft_available() {
        eprintln!("\n*** SKIPPED net_chaos: {why} (install nftables) ***\n");
        return;
    }
    let netem = net.netem_available();
    if let Err(why) = &netem {
        eprintln!(
            "\n*** net_chaos: delay, reordering and duplication are NOT injected: {why} \
             (the kernel lacks sch_netem); loss, partitions, pauses and kills are ***\n"
        );
    }
    // PORCUPINE_NET_CHAOS_FAULTS=loss,partition,pause,kill (the default: all) runs only those,
    // to tell which fault an anomaly follows; PORCUPINE_CHAOS_KEEP=1 keeps data and logs.
    let faults = std::env::var("PORCUPINE_NET_CHAOS_FAULTS")
        .unwrap_or_else(|_| "loss,partition,pause,kill".into());
    let fault = |name: &str| faults.split(',').any(|f| f.trim() == name);
    let keep = std::env::var_os("PORCUPINE_CHAOS_KEEP").is_some();
    let dir = tempfile::Builder::new()
        .prefix("porcupine-net-chaos")
        .disable_cleanup(keep)
        .tempdir()
        .unwrap();
    let ports = common::cluster::Ports::free();
    let seeds = format!("{}:{2},{}:{2}", net.ip(1), net.ip(2), ports.cluster);
    let start = |n: usize| {
        let cluster = format!("{}:{}", net.ip(n), ports.cluster);
        Node::start_in(
            Some(&net.ns(n)),
            &dir.path().join(format!("node{n}")),
            &net.ip(n),
            ports.smtp,
            ports.pop3,
            ports.admin,
            // Clients reach the nodes over the bridge: this private network takes passwords
            // in clear, the load generator is exempt from per-address limits, and the admin
            // endpoint off loopback speaks HTTPS.
            &[
                "--cluster",
                &cluster,
                "--join",
                &seeds,
                "--replicas",
                "2",
                "--allow-plaintext-auth",
                "--limits-exempt",
                "10.77.0.0/16",
                "--admin-public",
            ],
        )
    };
    let mut nodes: Vec<Option<Node>> = (1..=3).map(|n| Some(start(n))).collect();
    {
        let all: Vec<&Node> = nodes.iter().flatten().collect();
        wait_members(&all, 3);
        all[0].bulk_users(USERS, "user");
    }
    let addrs = |port: u16| {
        (1..=3)
            .map(|n| format!("{}:{port}", net.ip(n)))
            .collect::<Vec<_>>()
            .join(",")
    };
    let report_path = dir.path().join("load.json");
    let load = Command::new(env!("CARGO_BIN_EXE_porcupine-load"))
        .args(["--smtp", &addrs(ports.smtp), "--pop3", &addrs(ports.pop3)])
        .args(["--users", &USERS.to_string(), "--password", PASSWORD])
        .args(["--mix", "90:10", "--size", "4700", "--connections", "12"])
        .args(["--threads", "1", "--duration", &format!("{LOAD_SECONDS}s")])
        .args(["--sweep-timeout", "90s", "--json"])
        .arg(&report_path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start porcupine-load");
    let started = Instant::now();
    let at = |second: u64| {
        let when = Duration::from_secs(second);
        if let Some(left) = when.checked_sub(started.elapsed()) {
            std::thread::sleep(left);
        }
    };
    let lossy = |permille: u32| {
        for n in 1..=3 {
            net.drop_packets(n, Direction::FromNode, permille);
            net.drop_packets(n, Direction::ToNode, permille);
        }
    };

    if keep {
        eprintln!("net_chaos: keeping {}", dir.path().display());
    }
    at(3);
    let base_loss = if fault("loss") { 30 } else { 0 };
    lossy(base_loss);
    if netem.is_ok() && fault("loss") {
        net.netem_all(&[
            "delay",
            "5ms",
            "3ms",
            "reorder",
            "10%",
            "50%",
            "duplicate",
            "1%",
        ]);
    }
    eprintln!("net_chaos {:?}: 3 % loss on every link", started.elapsed());

    if fault("partition") {
        at(11);
        net.drop_packets(2, Direction::FromNode, 1000);
        eprintln!(
            "net_chaos {:?}: node 2 partitioned one way (it hears, nobody hears it)",
            started.elapsed()
        );
        at(18);
        net.drop_packets(2, Direction::FromNode, base_loss);
        eprintln!("net_chaos {:?}: node 2 heard again", started.elapsed());
    }

    if fault("pause") {
        at(21);
        let paused = nodes[2].as_ref().expect("node 3");
        paused.signal("-STOP");
        eprintln!("net_chaos {:?}: node 3 paused", started.elapsed());
        at(27);
        paused.signal("-CONT");
        eprintln!("net_chaos {:?}: node 3 resumed", started.elapsed());
    }

    at(29);
    lossy(0);
    if netem.is_ok() {
        net.netem_all(&[]);
    }
    eprintln!("net_chaos {:?}: network clean", started.elapsed());
    if fault("kill") {
        if let Some(node) = nodes[0].take() {
            node.kill();
        }
        eprintln!("net_chaos {:?}: node 1 killed", started.elapsed());
        std::thread::sleep(Duration::from_secs(2));
        nodes[0] = Some(start(1));
        let all: Vec<&Node> = nodes.iter().flatten().collect();
        wait_members(&all, 3);
        eprintln!("net_chaos {:?}: node 1 back", started.elapsed());
    }

    let all: Vec<&Node> = nodes.iter().flatten().collect();
    common::chaos::check_after_faults(
        "net_chaos",
        load,
        &report_path,
        Duration::from_secs(LOAD_SECONDS + 240),
        &all,
        USERS,
    );
    for node in nodes.into_iter().flatten() {
        assert!(node.terminate().success());
    }
}
