//! Starting the real `porcupine` binary for tests: free ports, a fresh data directory,
//! users added through the CLI, and Python clients.
#![allow(dead_code)]

pub mod chaos;
pub mod cluster;
pub mod mail;
pub mod netns;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const PASSWORD: &str = "correct horse";

/// A free loopback port outside the kernel's ephemeral range, distinct within the test process
/// (the benches' chooser, [`porcupine_bench::ports::free_port`]).
pub fn free_port() -> u16 {
    porcupine_bench::ports::free_port().expect("a free port")
}

pub struct Node {
    pub child: Child,
    pub ip: String,
    pub smtp: u16,
    pub pop3: u16,
    pub imap: u16,
    /// 0: none (`--no-imaps`).
    pub imaps: u16,
    /// 0: none (`--no-lmtp`).
    pub lmtp: u16,
    pub admin: u16,
    pub data: PathBuf,
    /// The admin endpoint speaks HTTPS (`--admin-public`): the CLI trusts the node's cert.
    pub admin_https: bool,
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_porcupine")
}

/// The cluster key in `dir/cluster.key`, made with `porcupine cluster-key` the first time.
pub fn cluster_key(dir: &Path) -> PathBuf {
    let path = dir.join("cluster.key");
    if !path.exists() {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new(binary())
            .arg("cluster-key")
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success() || path.exists(),
            "cluster-key failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    path
}

impl Node {
    /// Starts a node on fresh ports with `data` as its data directory and waits until it serves.
    pub fn start(data: &Path, extra: &[&str]) -> Node {
        let (smtp, pop3, admin) = (free_port(), free_port(), free_port());
        Self::start_on(data, smtp, pop3, admin, extra)
    }

    pub fn start_on(data: &Path, smtp: u16, pop3: u16, admin: u16, extra: &[&str]) -> Node {
        Self::start_in(None, data, "127.0.0.1", smtp, pop3, admin, extra)
    }

    /// Starts a node listening on `ip` (each node of a cluster test has its own address, the
    /// same ports), inside network namespace `netns` if given (`ip netns exec`).
    pub fn start_in(
        netns: Option<&str>,
        data: &Path,
        ip: &str,
        smtp: u16,
        pop3: u16,
        admin: u16,
        extra: &[&str],
    ) -> Node {
        let mut command = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, binary()]);
                c
            }
            None => Command::new(binary()),
        };
        // The test's own value of a flag replaces the helper's default.
        let default = |flag: &'static str, value: &'static str| {
            if extra.contains(&flag) {
                Vec::new()
            } else {
                vec![flag, value]
            }
        };
        let imap = match extra.iter().position(|a| *a == "--imap") {
            Some(at) => extra
                .get(at + 1)
                .and_then(|addr| addr.rsplit(':').next())
                .and_then(|port| port.parse().ok())
                .expect("--imap ADDR:PORT"),
            None => free_port(),
        };
        let imaps = match extra.iter().position(|a| *a == "--imaps") {
            Some(at) => extra
                .get(at + 1)
                .and_then(|addr| addr.rsplit(':').next())
                .and_then(|port| port.parse().ok())
                .expect("--imaps ADDR:PORT"),
            None if extra.contains(&"--no-imaps") => 0,
            None => free_port(),
        };
        let lmtp = match extra.iter().position(|a| *a == "--lmtp") {
            Some(at) => extra
                .get(at + 1)
                .and_then(|addr| addr.rsplit(':').next())
                .and_then(|port| port.parse().ok())
                .expect("--lmtp ADDR:PORT"),
            None if extra.contains(&"--no-lmtp") => 0,
            None => free_port(),
        };
        let mut child = command
            .args(["serve", "--no-pin", "--no-first-user"])
            .args(default("--segment-mib", "40"))
            .args(default("--cores", "2"))
            .arg("--data")
            .arg(data)
            .args([
                "--smtp",
                &format!("{ip}:{smtp}"),
                "--pop3",
                &format!("{ip}:{pop3}"),
            ])
            .args(["--admin", &format!("{ip}:{admin}")])
            .args(if extra.contains(&"--imap") {
                Vec::new()
            } else {
                vec!["--imap".to_owned(), format!("{ip}:{imap}")]
            })
            .args(
                if extra.contains(&"--imaps") || extra.contains(&"--no-imaps") {
                    Vec::new()
                } else {
                    vec!["--imaps".to_owned(), format!("{ip}:{imaps}")]
                },
            )
            .args(
                if extra.contains(&"--lmtp") || extra.contains(&"--no-lmtp") {
                    Vec::new()
                } else {
                    vec!["--lmtp".to_owned(), format!("{ip}:{lmtp}")]
                },
            )
            .args(
                if extra.contains(&"--pop3s") || extra.contains(&"--no-pop3s") {
                    Vec::new()
                } else {
                    vec!["--pop3s".to_owned(), format!("{ip}:{}", free_port())]
                },
            )
            .args(
                if extra.contains(&"--cluster") && !extra.contains(&"--cluster-key") {
                    // Nodes started side by side share the key beside their data directories.
                    let key = cluster_key(data.parent().unwrap_or(data));
                    vec!["--cluster-key".to_owned(), key.display().to_string()]
                } else {
                    Vec::new()
                },
            )
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(data.with_extension("log"))
                    .map(Stdio::from)
                    .unwrap_or(Stdio::null()),
            )
            .spawn()
            .expect("start porcupine");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.contains("porcupine is serving") {
                    let _ = tx.send(());
                }
            }
        });
        if rx.recv_timeout(Duration::from_secs(60)).is_err() {
            let log = std::fs::read_to_string(data.with_extension("log")).unwrap_or_default();
            panic!("node did not start:\n{log}");
        }
        Node {
            child,
            ip: ip.to_owned(),
            smtp,
            pop3,
            imap,
            imaps,
            lmtp,
            admin,
            data: data.to_path_buf(),
            admin_https: extra.contains(&"--admin-public"),
        }
    }

    pub fn admin_addr(&self) -> String {
        format!("{}:{}", self.ip, self.admin)
    }

    /// The CLI's flags to reach this node's admin endpoint (its token is in its data dir).
    pub fn admin_args(&self) -> Vec<String> {
        let mut args = vec![
            "--admin".into(),
            self.admin_addr(),
            "--data".into(),
            self.data.display().to_string(),
        ];
        if self.admin_https {
            let ca = self.data.join("tls/cert.pem");
            args.extend(["--admin-ca".to_owned(), ca.display().to_string()]);
        }
        args
    }

    /// `method path` on the admin endpoint with `authorization` (None: no token) and `body`:
    /// (status, body).
    pub fn admin_request(
        &self,
        method: &str,
        path: &str,
        authorization: Option<&str>,
        body: &[u8],
    ) -> (u16, String) {
        let addr = self.admin_addr().parse().expect("an admin address");
        let client = porcupine_cluster::admin_client::AdminClient::new(addr);
        let client = match authorization {
            Some(value) => client.with_authorization(value),
            None => client,
        };
        let response = client
            .request(method, path, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        (response.status, response.body)
    }

    /// `porcupine ARGS…` with this node's admin flags: (success, stdout + stderr).
    pub fn cli(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new(binary())
            .args(args)
            .args(self.admin_args())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// The node's admin token (from its data directory).
    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.data.join("admin.token"))
            .unwrap()
            .trim()
            .to_owned()
    }

    /// The node's Prometheus text (`GET /metrics`).
    pub fn metrics(&self) -> String {
        self.admin_request("GET", "/metrics", None, b"").1
    }

    /// The value of the metric line that starts with `key` (name and labels), if there is one.
    pub fn metric(&self, key: &str) -> Option<f64> {
        self.metrics()
            .lines()
            .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
    }

    /// `porcupine user add EMAIL --password-stdin`
    pub fn add_user(&self, email: &str) {
        let mut cli = Command::new(binary())
            .args(["user", "add", email, "--password-stdin"])
            .args(self.admin_args())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        cli.stdin
            .take()
            .unwrap()
            .write_all(format!("{PASSWORD}\n").as_bytes())
            .unwrap();
        let out = cli.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "user add failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    /// `porcupine user bulk --count N --prefix P --domain localhost --password PASSWORD`
    pub fn bulk_users(&self, count: u64, prefix: &str) -> String {
        let out = Command::new(binary())
            .args([
                "user",
                "bulk",
                "--count",
                &count.to_string(),
                "--prefix",
                prefix,
                "--domain",
                "localhost",
            ])
            .args(["--password", PASSWORD])
            .args(self.admin_args())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "user bulk failed: {text}");
        text
    }

    /// `porcupine user passwd EMAIL --password-stdin`
    pub fn set_password(&self, email: &str, password: &str) {
        let mut child = Command::new(binary())
            .args(["user", "passwd", email, "--password-stdin"])
            .args(self.admin_args())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(password.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "user passwd failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends `signal` (`-STOP`, `-CONT`, `-HUP`, …) to the node's process.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args([signal, &pid]).status().unwrap();
        assert!(sent.success(), "kill {signal} {pid}");
    }

    /// SIGTERM; returns the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "node did not stop after SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `tests/py/<script>` with `args`; panics with its output if it fails.
pub fn python(script: &str, args: &[String]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/py")
        .join(script);
    let out = Command::new("python3")
        .arg(&path)
        .args(args)
        .output()
        .expect("python3");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{script} failed:\n{text}");
    text
}

/// Starts `porcupine serve` with `args` (on a fresh data directory, ports chosen by the OS) and
/// checks that it refuses them with a message containing `expected`.
pub fn assert_refused(args: &[&str], expected: &str) {
    let temp = tempfile::tempdir().unwrap();
    let out = Command::new(binary())
        .args(["serve", "--no-first-user", "--data"])
        .arg(temp.path().join("data"))
        .args(["--smtp", "127.0.0.1:0", "--pop3", "127.0.0.1:0"])
        .args(["--admin", "127.0.0.1:0", "--pop3s", "127.0.0.1:0"])
        .args(["--imap", "127.0.0.1:0", "--imaps", "127.0.0.1:0"])
        .args(["--lmtp", "127.0.0.1:0"])
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} was accepted");
    assert!(stderr.contains(expected), "{args:?}: {stderr}");
}

/// Of a `disk_full.py fill` report, how many messages of `list` ("accepted" or "refused") were
/// sent in rounds after `round`.
pub fn filled_after_round(run: &serde_json::Value, list: &str, round: u64) -> usize {
    run[list]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .filter(|entry| {
                    let tag = entry[1].as_str().unwrap_or("");
                    let sent: u64 = tag
                        .get(1..tag.find('-').unwrap_or(1))
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(0);
                    sent > round
                })
                .count()
        })
        .unwrap_or(0)
}
