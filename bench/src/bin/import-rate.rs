//! How fast a Maildir comes in: `porcupine import maildir` into a running node beside
//! `doveadm import` into Dovecot's own Maildir storage, same Maildir, same machine, one run.
//!
//! The Maildir is made here, laid out as Dovecot keeps one: `--messages` messages of `--size`
//! bytes over INBOX and three Maildir++ folders, a quarter of them flagged, file times a minute
//! apart. porcupine stores every message durably (`fdatasync`ed) before the next one is sent;
//! Dovecot (`mail_fsync = optimized`, its default) syncs once per transaction, which for an
//! import is one per folder. Both rates are printed, with their ratio.

use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Parser;
use porcupine_bench::cluster::{workspace_root, Bins};
use porcupine_bench::run::Run;
use porcupine_cluster::admin_client::AdminClient;

#[derive(Parser, Debug)]
#[command(about = "Maildir import rate: porcupine import beside doveadm import")]
struct Args {
    /// Messages in the Maildir.
    #[arg(long, default_value_t = 100_000)]
    messages: usize,
    /// Bytes per message.
    #[arg(long, default_value_t = 4_700)]
    size: usize,
    /// Where the run directory goes.
    #[arg(long, default_value = "/tmp")]
    run_parent: PathBuf,
    /// Keep the run directory.
    #[arg(long)]
    keep: bool,
    /// Use the binaries in this directory instead of building them.
    #[arg(long)]
    bins: Option<PathBuf>,
}

const USER: &str = "importer@localhost";
const FOLDERS: [&str; 4] = ["", ".Sent", ".Archive", ".Archive.2024"];

fn make_maildir(root: &Path, messages: usize, size: usize) -> Result<u64> {
    for folder in FOLDERS {
        for sub in ["cur", "new", "tmp"] {
            std::fs::create_dir_all(root.join(folder).join(sub))?;
        }
    }
    let filler: Vec<u8> = (0..size)
        .map(|i| b"abcdefghijklmnopqrstuvwxyz "[i % 27])
        .collect();
    let mut bytes = 0;
    for n in 0..messages {
        let folder = FOLDERS[n % FOLDERS.len()];
        let head = format!(
            "From: sender{n}@example.org\r\nTo: {USER}\r\nSubject: message {n}\r\n\
             Message-ID: <{n}@example.org>\r\n\r\n"
        );
        let body_len = size.saturating_sub(head.len() + 2);
        let mut message = head.into_bytes();
        for line in filler[..body_len].chunks(76) {
            message.extend_from_slice(line);
            message.extend_from_slice(b"\r\n");
        }
        let flags = if n % 4 == 0 { "FS" } else { "S" };
        let name = format!(
            "{}.M{n}P1.import-bench,S={}:2,{flags}",
            1_700_000_000 + n,
            message.len()
        );
        let path = root.join(folder).join("cur").join(name);
        let mut file = std::fs::File::create(&path)?;
        file.write_all(&message)?;
        file.set_modified(UNIX_EPOCH + Duration::from_secs(1_700_000_000 + 60 * n as u64))?;
        bytes += message.len() as u64;
    }
    Ok(bytes)
}

fn chown_tree(path: &Path, uid: u32, gid: u32) -> Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
    if path.is_dir() {
        for entry in std::fs::read_dir(path)? {
            chown_tree(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}

fn porcupine_rate(bins: &Bins, run: &Run, source: &Path) -> Result<(f64, String)> {
    let data = run.dir().join("porcupine");
    let ports = porcupine_bench::ports::free_ports(3)?;
    let (smtp, pop3, admin) = (ports[0], ports[1], ports[2]);
    let log = std::fs::File::create(run.dir().join("porcupine.log"))?;
    let mut command = Command::new(&bins.porcupine);
    command
        .args(["serve", "--no-first-user", "--data"])
        .arg(&data)
        .args(["--smtp", &format!("127.0.0.1:{smtp}")])
        .args(["--pop3", &format!("127.0.0.1:{pop3}")])
        .args(["--admin", &format!("127.0.0.1:{admin}")])
        .args([
            "--no-pop3s",
            "--imap",
            "127.0.0.1:0",
            "--no-imaps",
            "--no-lmtp",
        ])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    run.spawn("porcupine", &mut command)?;
    let client = AdminClient::new(SocketAddr::from((Ipv4Addr::LOCALHOST, admin)))
        .with_timeout(Duration::from_secs(5));
    let deadline = Instant::now() + Duration::from_secs(60);
    while client.metrics().is_err() {
        if Instant::now() > deadline {
            bail!(
                "porcupine did not start; see {}",
                run.dir().join("porcupine.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let admin_args = [
        "--admin".to_owned(),
        format!("127.0.0.1:{admin}"),
        "--data".to_owned(),
        data.display().to_string(),
    ];
    let mut add = Command::new(&bins.porcupine)
        .args(["user", "add", USER, "--password-stdin"])
        .args(&admin_args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()?;
    add.stdin.take().context("stdin")?.write_all(b"secret\n")?;
    if !add.wait()?.success() {
        bail!("porcupine user add failed");
    }
    let started = Instant::now();
    let out = Command::new(&bins.porcupine)
        .args(["import", "maildir"])
        .arg(source)
        .args(["--user", USER])
        .args(&admin_args)
        .output()?;
    let seconds = started.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() {
        bail!(
            "porcupine import failed: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Counted back through the user's IMAP view: every message is there.
    let shown = Command::new(&bins.porcupine)
        .args(["user", "show", USER, "--json"])
        .args(&admin_args)
        .output()?;
    let usage: serde_json::Value = serde_json::from_slice(&shown.stdout)
        .with_context(|| format!("user show: {}", String::from_utf8_lossy(&shown.stdout)))?;
    Ok((
        seconds,
        format!("{text}; user show counts {} messages", usage["messages"]),
    ))
}

fn dovecot_rate(run: &Run, source: &Path) -> Result<f64> {
    let (uid, gid) = porcupine_bench::peers::mail_owner()?;
    let base = run.dir().join("dovecot");
    let mail = base.join("mail");
    for dir in [&base, &mail, &base.join("run"), &base.join("state")] {
        std::fs::create_dir_all(dir)?;
    }
    chown_tree(&mail, uid, gid)?;
    chown_tree(source, uid, gid)?;
    let conf = base.join("dovecot.conf");
    std::fs::write(
        &conf,
        format!(
            "protocols = none\nbase_dir = {b}/run\nstate_dir = {b}/state\nlog_path = {b}/dovecot.log\n\
             ssl = no\nmail_location = maildir:{m}/%n\nfirst_valid_uid = {uid}\n\
             passdb {{\n  driver = static\n  args = password=secret\n}}\n\
             userdb {{\n  driver = static\n  args = uid={uid} gid={gid} home={m}/%n\n}}\n",
            b = base.display(),
            m = mail.display(),
        ),
    )?;
    // doveadm looks users up through the server's auth service: the server runs, serving
    // no protocol.
    let up = Command::new("dovecot")
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running dovecot")?;
    if !up.success() {
        bail!(
            "Dovecot did not start; see {}",
            base.join("dovecot.log").display()
        );
    }
    let socket = base.join("run/auth-userdb");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !socket.exists() {
        if Instant::now() > deadline {
            bail!(
                "Dovecot's auth service did not start; see {}",
                base.join("dovecot.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if let Ok(pid) = std::fs::read_to_string(base.join("run/master.pid")) {
        if let Ok(pid) = pid.trim().parse() {
            run.adopt("dovecot", pid)?;
        }
    }
    let started = Instant::now();
    let out = Command::new("doveadm")
        .arg("-c")
        .arg(&conf)
        .args(["import", "-u", USER])
        .arg(format!("maildir:{}", source.display()))
        .args(["", "all"])
        .output()
        .context("running doveadm")?;
    let seconds = started.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "doveadm import failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(seconds)
}

fn count_files(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            let path = e.path();
            if path.is_dir() {
                count_files(&path)
            } else if path
                .parent()
                .and_then(|p| p.file_name())
                .is_some_and(|n| n == "cur" || n == "new")
            {
                1
            } else {
                0
            }
        })
        .sum()
}

fn main() -> Result<()> {
    let args = Args::parse();
    if Command::new("doveadm").arg("help").output().is_err() {
        bail!("doveadm is needed (Debian: dovecot-core)");
    }
    let root = workspace_root()?;
    let bins = match &args.bins {
        Some(dir) => Bins::at(dir)?,
        None => Bins::build(&root)?,
    };
    let run = Run::start(
        &args.run_parent,
        "porcupine-import-",
        args.keep,
        "import-rate",
    )?;
    let source = run.dir().join("Maildir");
    let made = Instant::now();
    let bytes = make_maildir(&source, args.messages, args.size)?;
    println!(
        "a Maildir of {} messages ({:.0} MB) in {} folders made in {:.1} s",
        args.messages,
        bytes as f64 / 1e6,
        FOLDERS.len(),
        made.elapsed().as_secs_f64()
    );
    let result = (|| -> Result<()> {
        let (porcupine_s, summary) = porcupine_rate(&bins, &run, &source)?;
        if !summary.contains(&format!("counts {} messages", args.messages)) {
            bail!("porcupine does not hold every message: {summary}");
        }
        let porcupine = args.messages as f64 / porcupine_s;
        println!(
            "porcupine import maildir: {porcupine_s:.1} s, {porcupine:.0} messages/s ({summary})"
        );
        let dovecot_s = dovecot_rate(&run, &source)?;
        let stored = count_files(&run.dir().join("dovecot/mail"));
        if stored != args.messages {
            bail!(
                "Dovecot's Maildir holds {stored} messages, not {}",
                args.messages
            );
        }
        let dovecot = args.messages as f64 / dovecot_s;
        println!("doveadm import:            {dovecot_s:.1} s, {dovecot:.0} messages/s");
        println!("ratio porcupine/Dovecot:   {:.2}", porcupine / dovecot);
        Ok(())
    })();
    run.finish();
    result
}
