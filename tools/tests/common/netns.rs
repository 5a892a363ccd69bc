//! Network namespaces joined by a bridge, for tests whose network misbehaves: node `n` lives in
//! its own namespace at 10.77.x.n, the test itself (the clients) on the bridge at 10.77.x.254.
//! A node's link can be cut, and either direction of it made to lose packets at random
//! (nftables `numgen random`, in the node's namespace; a direction at 100 % is an asymmetric
//! partition), or impaired with `tc netem` (delay, reordering, duplication) where the kernel
//! has the netem scheduler. Everything is removed on drop.

use std::process::{Command, Stdio};

pub struct Netns {
    tag: String,
    bridge: String,
    subnet: u8,
    nodes: usize,
    /// Per node, the per-mille of packets dropped (from the node, to the node).
    loss: std::cell::RefCell<Vec<(u32, u32)>>,
}

/// Which way along a node's link an impairment applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// What node `n` sends.
    FromNode,
    /// What node `n` receives.
    ToNode,
}

fn ip_cmd(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Netns {
    /// `nodes` namespaces on a new bridge; why not, if this machine cannot (not root, no
    /// `ip netns`, veth or bridge).
    pub fn new(nodes: usize) -> Result<Netns, String> {
        let is_root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
        if !is_root {
            return Err("needs root (ip netns, veth, bridge)".into());
        }
        let pid = std::process::id();
        let tag = format!("pc{}", pid % 100_000);
        let net = Netns {
            bridge: format!("{tag}br"),
            subnet: (pid % 200) as u8 + 20,
            tag,
            nodes,
            loss: std::cell::RefCell::new(vec![(0, 0); nodes + 1]),
        };
        let subnet = net.subnet;
        let ok = ip_cmd(&["link", "add", &net.bridge, "type", "bridge"])
            && ip_cmd(&[
                "addr",
                "add",
                &format!("10.77.{subnet}.254/24"),
                "dev",
                &net.bridge,
            ])
            && ip_cmd(&["link", "set", &net.bridge, "up"]);
        if !ok {
            return Err("cannot create a bridge (ip link add … type bridge)".into());
        }
        for n in 1..=nodes {
            let (ns, host, inner) = (net.ns(n), net.veth(n), net.inner(n));
            let ok = ip_cmd(&["netns", "add", &ns])
                && ip_cmd(&["link", "add", &host, "type", "veth", "peer", "name", &inner])
                && ip_cmd(&["link", "set", &inner, "netns", &ns])
                && ip_cmd(&["link", "set", &host, "master", &net.bridge])
                && ip_cmd(&["link", "set", &host, "up"])
                && ip_cmd(&["netns", "exec", &ns, "ip", "link", "set", "lo", "up"])
                && ip_cmd(&[
                    "netns",
                    "exec",
                    &ns,
                    "ip",
                    "addr",
                    "add",
                    &format!("{}/24", net.ip(n)),
                    "dev",
                    &inner,
                ])
                && ip_cmd(&["netns", "exec", &ns, "ip", "link", "set", &inner, "up"]);
            if !ok {
                return Err("cannot create network namespaces and veth pairs".into());
            }
        }
        Ok(net)
    }

    pub fn ns(&self, n: usize) -> String {
        format!("{}n{n}", self.tag)
    }

    fn veth(&self, n: usize) -> String {
        format!("{}h{n}", self.tag)
    }

    fn inner(&self, n: usize) -> String {
        format!("{}i{n}", self.tag)
    }

    pub fn ip(&self, n: usize) -> String {
        format!("10.77.{}.{n}", self.subnet)
    }

    /// Cuts (or restores) node `n`'s link to everyone else.
    pub fn link(&self, n: usize, up: bool) {
        assert!(ip_cmd(&[
            "link",
            "set",
            &self.veth(n),
            if up { "up" } else { "down" }
        ]));
    }

    /// Impairs one direction of node `n`'s link with a `tc netem` specification
    /// (`["delay", "5ms", "loss", "2%"]`); an empty one clears it.
    pub fn netem(&self, n: usize, direction: Direction, spec: &[&str]) {
        // A qdisc shapes what leaves an interface: the bridge side of the pair carries what
        // the node receives, the node's side what it sends.
        let (prefix, dev): (Vec<String>, String) = match direction {
            Direction::ToNode => (Vec::new(), self.veth(n)),
            Direction::FromNode => (
                vec!["ip".into(), "netns".into(), "exec".into(), self.ns(n)],
                self.inner(n),
            ),
        };
        let run = |args: &[&str]| {
            let mut all: Vec<&str> = prefix.iter().map(String::as_str).collect();
            all.extend_from_slice(args);
            Command::new(all[0])
                .args(&all[1..])
                .output()
                .map(|o| {
                    (
                        o.status.success(),
                        String::from_utf8_lossy(&o.stderr).into_owned(),
                    )
                })
                .unwrap_or_else(|e| (false, e.to_string()))
        };
        if spec.is_empty() {
            // Nothing to clear is fine.
            let _ = run(&["tc", "qdisc", "del", "dev", &dev, "root"]);
            return;
        }
        let mut args = vec!["tc", "qdisc", "replace", "dev", &dev, "root", "netem"];
        args.extend_from_slice(spec);
        let (ok, stderr) = run(&args);
        assert!(ok, "tc {args:?} on node {n}: {stderr}");
    }

    /// `spec` on both directions of every node's link.
    pub fn netem_all(&self, spec: &[&str]) {
        for n in 1..=self.nodes {
            self.netem(n, Direction::ToNode, spec);
            self.netem(n, Direction::FromNode, spec);
        }
    }

    /// Drops `permille` of the packets in `direction` of node `n`'s link at random (1000:
    /// all of them, an asymmetric partition; 0: none).
    pub fn drop_packets(&self, n: usize, direction: Direction, permille: u32) {
        let (from, to) = {
            let mut loss = self.loss.borrow_mut();
            match direction {
                Direction::FromNode => loss[n].0 = permille,
                Direction::ToNode => loss[n].1 = permille,
            }
            loss[n]
        };
        let dev = self.inner(n);
        let rule = |permille: u32, iface: &str| {
            if permille == 0 {
                String::new()
            } else if permille >= 1000 {
                format!("{iface} \"{dev}\" drop")
            } else {
                format!("{iface} \"{dev}\" numgen random mod 1000 < {permille} drop")
            }
        };
        // Replaced whole, atomically: the add makes the delete safe when it does not exist.
        let script = format!(
            "add table inet pchaos\n\
             delete table inet pchaos\n\
             table inet pchaos {{\n\
               chain from_node {{\n type filter hook output priority 0; policy accept;\n {}\n }}\n\
               chain to_node {{\n type filter hook input priority 0; policy accept;\n {}\n }}\n\
             }}\n",
            rule(from, "oifname"),
            rule(to, "iifname")
        );
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.ns(n), "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nft");
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("nft's stdin")
            .write_all(script.as_bytes())
            .expect("writing the nft script");
        let out = child.wait_with_output().expect("nft");
        assert!(
            out.status.success(),
            "nft on node {n}: {}\n{script}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Whether nftables can drop packets here; why not otherwise.
    pub fn nft_available(&self) -> Result<(), String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns(1), "nft", "list", "tables"])
            .output()
            .map_err(|e| format!("nft: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "nftables is not usable: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// Whether this machine can run netem (the sch_netem module); why not otherwise.
    pub fn netem_available(&self) -> Result<(), String> {
        let dev = self.veth(1);
        let out = Command::new("tc")
            .args([
                "qdisc", "replace", "dev", &dev, "root", "netem", "delay", "1ms",
            ])
            .output()
            .map_err(|e| format!("tc: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "tc netem is not available: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let _ = Command::new("tc")
            .args(["qdisc", "del", "dev", &dev, "root"])
            .output();
        Ok(())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for n in 1..=self.nodes {
            ip_cmd(&["link", "del", &self.veth(n)]);
            ip_cmd(&["netns", "del", &self.ns(n)]);
        }
        ip_cmd(&["link", "del", &self.bridge]);
    }
}
