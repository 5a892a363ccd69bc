//! Clusters of real `porcupine` processes for experiments: each node on its own loopback
//! address with the same ports, started, watched through its admin endpoint, stopped by
//! [`crate::Servers`].

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use porcupine_cluster::admin_client::AdminClient;
use porcupine_cluster::node::status::Status;

use crate::Servers;

/// Where the CLI looks for the admin token first (after --admin-token-file).
const ADMIN_TOKEN_ENV: &str = "PORCUPINE_ADMIN_TOKEN";

/// The release binaries an experiment runs.
#[derive(Debug)]
pub struct Bins {
    pub porcupine: PathBuf,
    pub load: PathBuf,
}

/// A closed-loop `porcupine-load` workload.
#[derive(Clone, Debug)]
pub struct Workload {
    /// SMTP deliveries : POP sessions, e.g. `"90:10"`.
    pub mix: String,
    /// Message size in bytes.
    pub size: usize,
    pub connections: usize,
    pub seconds: u64,
    /// Other flags (`--zipf S`, `--no-sweep`, `--warm-logins`, …).
    pub extra: Vec<String>,
}

impl Workload {
    pub fn args(&self) -> Vec<String> {
        let mut args: Vec<String> = [
            "--mix",
            &self.mix,
            "--size",
            &self.size.to_string(),
            "--connections",
            &self.connections.to_string(),
            "--duration",
            &format!("{}s", self.seconds),
        ]
        .map(String::from)
        .to_vec();
        args.extend(self.extra.iter().cloned());
        args
    }
}

/// The workspace the benchmarks belong to (results go under its `bench/results`).
pub fn workspace_root() -> Result<PathBuf> {
    Ok(Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace root")?
        .to_path_buf())
}

impl Bins {
    /// The binaries in `dir` (built already, e.g. by `cargo test --workspace --release`).
    pub fn at(dir: &Path) -> Result<Bins> {
        let bins = Bins {
            porcupine: dir.join("porcupine"),
            load: dir.join("porcupine-load"),
        };
        for bin in [&bins.porcupine, &bins.load] {
            if !bin.is_file() {
                bail!(
                    "{} does not exist (build it, or leave out --bins)",
                    bin.display()
                );
            }
        }
        Ok(bins)
    }

    /// Builds `porcupine` and `porcupine-load` (release) in the workspace at `root`.
    pub fn build(root: &Path) -> Result<Bins> {
        eprintln!("building porcupine and porcupine-load (release)…");
        let built = Command::new("cargo")
            .current_dir(root)
            .args([
                "build",
                "--release",
                "-q",
                "-p",
                "porcupine-tools",
                "--bins",
            ])
            .status()?;
        if !built.success() {
            bail!("cargo build failed");
        }
        // Where cargo put them: CARGO_TARGET_DIR if set (relative to the workspace), else target/.
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(|dir| root.join(dir))
            .unwrap_or_else(|| root.join("target"));
        Ok(Bins {
            porcupine: target.join("release/porcupine"),
            load: target.join("release/porcupine-load"),
        })
    }
}

/// The admin token of every node this process starts, made once per process.
pub fn run_token() -> &'static str {
    static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TOKEN.get_or_init(|| {
        use std::io::Read;
        let mut bytes = [0u8; 32];
        let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
        if read.is_err() {
            // Only a benchmark's nodes on loopback use it; time is random enough there.
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            bytes[..16].copy_from_slice(&nanos.to_le_bytes());
        }
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    })
}

/// `base/admin.token` holding [`run_token`] (mode 0600), for the nodes' --admin-token-file.
fn admin_token_file(base: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = base.join("admin.token");
    if !path.exists() {
        std::fs::create_dir_all(base)?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        writeln!(file, "{}", run_token())?;
    }
    Ok(path)
}

/// The cluster key of an experiment's nodes, `base/cluster.key`, made the first time.
pub fn cluster_key(bins: &Bins, base: &Path) -> Result<PathBuf> {
    let path = base.join("cluster.key");
    if !path.exists() {
        std::fs::create_dir_all(base)?;
        let made = Command::new(&bins.porcupine)
            .arg("cluster-key")
            .arg(&path)
            .output()?;
        if !made.status.success() {
            bail!(
                "porcupine cluster-key failed: {}",
                String::from_utf8_lossy(&made.stderr)
            );
        }
    }
    Ok(path)
}

/// Where the nodes of one experiment listen: node `n` (1, 2, …) at `{net}.{base + n}`.
#[derive(Clone, Debug)]
pub struct Layout {
    pub net: &'static str,
    pub base: u8,
    pub smtp: u16,
    pub pop3: u16,
    pub admin: u16,
    pub cluster: u16,
    pub domain: &'static str,
}

impl Layout {
    pub fn ip(&self, n: usize) -> String {
        format!("{}.{}", self.net, usize::from(self.base) + n)
    }

    /// Starts node `n` with data in `base/node<n>` (log beside it); `join`: seeded with nodes
    /// 1 and 2. Returns once its admin endpoint answers.
    pub fn start_node(
        &self,
        bins: &Bins,
        servers: &mut Servers,
        base: &Path,
        n: usize,
        join: bool,
        extra: &[&str],
    ) -> Result<()> {
        let host = self.ip(n);
        let mut command = Command::new(&bins.porcupine);
        command
            .args([
                "serve",
                "--no-first-user",
                "--no-pin",
                "--domain",
                self.domain,
            ])
            .arg("--data")
            .arg(base.join(format!("node{n}")))
            .args(["--smtp", &format!("{host}:{}", self.smtp)])
            .args(["--pop3", &format!("{host}:{}", self.pop3)])
            .args(["--admin", &format!("{host}:{}", self.admin)])
            .args(["--cluster", &format!("{host}:{}", self.cluster)])
            .arg("--no-pop3s")
            .args(["--imap", &format!("{host}:0"), "--no-imaps", "--no-lmtp"])
            .arg("--admin-token-file")
            .arg(admin_token_file(base)?)
            .args(if extra.contains(&"--insecure-plaintext-cluster") {
                Vec::new()
            } else {
                vec![
                    "--cluster-key".to_owned(),
                    cluster_key(bins, base)?.display().to_string(),
                ]
            })
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(base.join(format!("node{n}.log")))
                    .map(Stdio::from)
                    .unwrap_or(Stdio::null()),
            );
        if join {
            command.args([
                "--join",
                &format!("{}:{2},{}:{2}", self.ip(1), self.ip(2), self.cluster),
            ]);
        }
        std::fs::create_dir_all(base)?;
        let child = command
            .spawn()
            .with_context(|| format!("starting node {n}"))?;
        servers.children.push((format!("node{n}"), child));
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect((host.as_str(), self.admin)).is_err() {
            if Instant::now() > deadline {
                bail!(
                    "node {n} did not start; see {}",
                    base.join(format!("node{n}.log")).display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// `porcupine-load` against nodes `1..=nodes` (their SMTP and POP3 ports), users
    /// `user1..user<users>@domain` with `password`, running `workload`. Its JSON report.
    pub fn load(
        &self,
        bins: &Bins,
        nodes: usize,
        users: usize,
        password: &str,
        workload: &Workload,
    ) -> Result<serde_json::Value> {
        let json = tempfile::NamedTempFile::new()?;
        let targets = |port: u16| {
            (1..=nodes)
                .map(|n| format!("{}:{port}", self.ip(n)))
                .collect::<Vec<_>>()
                .join(",")
        };
        let status = Command::new(&bins.load)
            .args(["--smtp", &targets(self.smtp), "--pop3", &targets(self.pop3)])
            .args(["--users", &users.to_string(), "--password", password])
            .args(["--user-format", &format!("user{{n}}@{}", self.domain)])
            .args(workload.args())
            .arg("--json")
            .arg(json.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        serde_json::from_str(&std::fs::read_to_string(json.path())?)
            .with_context(|| format!("porcupine-load wrote no report (exit {status})"))
    }

    /// Node `n`'s admin endpoint, with this run's token.
    pub fn admin(&self, n: usize) -> Result<AdminClient> {
        let addr = format!("{}:{}", self.ip(n), self.admin).parse()?;
        Ok(AdminClient::new(addr)
            .with_token(run_token())
            .with_timeout(Duration::from_secs(5)))
    }

    /// Node `n`'s `/status`; `None` while it does not answer.
    pub fn status(&self, n: usize) -> Option<Status> {
        self.admin(n).ok()?.status().ok()
    }

    pub fn members(&self, n: usize) -> usize {
        self.status(n).map_or(0, |s| s.members.len())
    }

    /// Waits until every node of `nodes` sees `count` members; how long that took.
    pub fn wait_members(&self, nodes: &[usize], count: usize, limit: Duration) -> Result<Duration> {
        let started = Instant::now();
        while nodes.iter().any(|&n| self.members(n) != count) {
            if started.elapsed() > limit {
                bail!("nodes {nodes:?} did not converge on {count} members");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(started.elapsed())
    }

    /// `porcupine user bulk` through node `n`: user1..user<count>@domain, password `password`.
    pub fn add_users(&self, bins: &Bins, n: usize, count: usize, password: &str) -> Result<()> {
        let out = Command::new(&bins.porcupine)
            .args([
                "user",
                "bulk",
                "--count",
                &count.to_string(),
                "--prefix",
                "user",
            ])
            .args(["--domain", self.domain, "--password", password])
            .args(["--admin", &format!("{}:{}", self.ip(n), self.admin)])
            .env(ADMIN_TOKEN_ENV, run_token())
            .output()?;
        if !out.status.success() {
            bail!("user bulk failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }
}
