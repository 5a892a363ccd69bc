//! The mail servers porcupine is compared with, each a private instance inside the run's
//! directory: Postfix with its own `config_directory`, `queue_directory` and
//! `data_directory` (`postfix -c DIR`), Dovecot (POP3, and IMAP when asked) with its own
//! configuration, `base_dir` and `state_dir`, and `smtp-sink`. Nothing outside the run's directory is written: not
//! `/etc/postfix`, not the system's queue, not `/etc/passwd` (mail is stored as the existing
//! user `nobody`). Every listener is on a port the run chose, and the system's own Postfix or
//! Dovecot, running or not, is left alone.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::run::Run;

/// Dovecot's IMAP server (Debian's dovecot-imapd), needed for the IMAP runs.
pub const DOVECOT_IMAP: &str = "/usr/lib/dovecot/imap";

/// Whether Dovecot's IMAP server is installed; an error saying what to install if not.
pub fn require_dovecot_imap() -> Result<()> {
    if !Path::new(DOVECOT_IMAP).exists() {
        bail!(
            "missing {DOVECOT_IMAP}: install the Debian package dovecot-imapd for the IMAP \
             runs (or leave them out with --only mail)"
        );
    }
    Ok(())
}

/// The programs a comparison needs, and where they come from.
pub fn require_programs() -> Result<()> {
    let missing: Vec<&str> = ["postfix", "postconf", "dovecot", "smtp-sink"]
        .into_iter()
        .filter(|program| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {program}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .collect();
    if !missing.is_empty() {
        bail!(
            "missing {}: install the Debian packages postfix, dovecot-core and dovecot-pop3d \
             (the bench runs private instances of them and leaves the system's own alone)",
            missing.join(", ")
        );
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("Postfix and Dovecot run as root (they drop privileges themselves): run as root");
    }
    Ok(())
}

/// The uid and gid mail is stored as: the system's `nobody`, which every Debian has (adding
/// a user of our own would change `/etc/passwd`).
pub fn mail_owner() -> Result<(u32, u32)> {
    user_ids("nobody")
}

/// The same mailboxes in every system: for each `(prefix, count)` of `sets`,
/// `<prefix>1@domain` … `<prefix><count>@domain`.
#[derive(Debug)]
pub struct Mailboxes<'a> {
    pub domain: &'a str,
    pub sets: Vec<(&'a str, usize)>,
    pub password: &'a str,
}

impl Mailboxes<'_> {
    /// Every mailbox's local part.
    pub fn locals(&self) -> impl Iterator<Item = String> + '_ {
        self.sets
            .iter()
            .flat_map(|&(prefix, count)| (1..=count).map(move |n| format!("{prefix}{n}")))
    }
}

/// A certificate and key (PEM) for the peers' TLS, made with `openssl` in `dir` (self-signed,
/// EC P-256 like porcupine's own; the generator does not check it).
pub fn certificate(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let (cert, key) = (dir.join("peers-cert.pem"), dir.join("peers-key.pem"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "30", "-subj", "/CN=localhost"])
        .args([
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running openssl")?;
    if !made.success() {
        bail!("openssl could not make a certificate for the peers ({made})");
    }
    Ok((cert, key))
}

/// A private Postfix instance: its master's pid and its queue.
#[derive(Debug)]
pub struct Postfix {
    pub master: u32,
    queue: PathBuf,
}

/// The services of the private `master.cf`: the standard set, and one SMTP listener.
const MASTER_SERVICES: &str = "\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
postlog   unix-dgram n  -       n       -       1       postlogd
";

impl Postfix {
    /// Writes a private configuration under `<run>/postfix`, starts it (`postfix -c`), and
    /// returns once its master runs. Mail goes to Maildirs under `<run>/mail`.
    /// `tls`: a certificate and key, to offer STARTTLS with.
    pub fn start(
        run: &Run,
        smtp_port: u16,
        mailboxes: &Mailboxes,
        owner: (u32, u32),
        tls: Option<&(PathBuf, PathBuf)>,
    ) -> Result<Postfix> {
        let base = run.dir().join("postfix");
        let (config, queue, data) = (base.join("etc"), base.join("queue"), base.join("data"));
        let mail = run.dir().join("mail");
        for dir in [&config, &queue, &data, &mail] {
            std::fs::create_dir_all(dir)?;
        }
        let mut vmailbox = String::new();
        for local in mailboxes.locals() {
            let domain = mailboxes.domain;
            let _ = writeln!(vmailbox, "{local}@{domain} {domain}/{local}/");
        }
        std::fs::write(config.join("vmailbox"), vmailbox)?;
        let (uid, gid) = owner;
        let (b, c) = (base.display(), config.display());
        let main_cf = format!(
            "compatibility_level = 3.6\n\
             queue_directory = {queue}\n\
             data_directory = {data}\n\
             mail_owner = postfix\n\
             setgid_group = postdrop\n\
             inet_interfaces = 127.0.0.1\n\
             inet_protocols = ipv4\n\
             myhostname = postfix.side-by-side.test\n\
             mydestination =\n\
             mynetworks = 127.0.0.0/8\n\
             alias_maps =\n\
             alias_database =\n\
             biff = no\n\
             append_dot_mydomain = no\n\
             maillog_file = {b}/postfix.log\n\
             maillog_file_prefixes = {b}\n\
             virtual_mailbox_domains = {domain}\n\
             virtual_mailbox_base = {mail}\n\
             virtual_mailbox_maps = texthash:{c}/vmailbox\n\
             virtual_uid_maps = static:{uid}\n\
             virtual_gid_maps = static:{gid}\n\
             mailbox_size_limit = 0\n\
             message_size_limit = 33554432\n\
             smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination\n\
             smtpd_recipient_restrictions = permit_mynetworks, reject_unauth_destination\n{tls}",
            tls = match tls {
                Some((cert, key)) => format!(
                    "smtpd_tls_security_level = may\nsmtpd_tls_cert_file = {}\n\
                     smtpd_tls_key_file = {}\nsmtpd_tls_session_cache_database =\n",
                    cert.display(),
                    key.display()
                ),
                None => String::new(),
            },
            queue = queue.display(),
            data = data.display(),
            domain = mailboxes.domain,
            mail = mail.display(),
        );
        std::fs::write(config.join("main.cf"), main_cf)?;
        std::fs::write(
            config.join("master.cf"),
            format!("127.0.0.1:{smtp_port} inet n - n - - smtpd\n{MASTER_SERVICES}"),
        )?;
        chown(&mail, uid, gid)?;
        // The master's lock and the daemons' state live here; Postfix insists on owning it.
        let (postfix_uid, postfix_gid) = user_ids("postfix")?;
        chown(&data, postfix_uid, postfix_gid)?;
        let started = Command::new("postfix")
            .arg("-c")
            .arg(&config)
            .arg("start")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("running postfix start")?;
        let log = base.join("postfix.log");
        if !started.success() {
            bail!(
                "the private Postfix did not start ({started}); its log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        let master = read_pid(&queue.join("pid/master.pid"), Duration::from_secs(15))
            .with_context(|| {
                format!(
                    "Postfix's master did not write its pid; see {}",
                    log.display()
                )
            })?;
        run.adopt("postfix", master)?;
        Ok(Postfix { master, queue })
    }

    /// Whether every message Postfix accepted has left its queue (been delivered).
    pub fn queue_is_empty(&self) -> bool {
        ["maildrop", "incoming", "active", "deferred", "hold"]
            .iter()
            .all(|dir| count_files(&self.queue.join(dir)) == 0)
    }
}

/// Regular files under `dir`, at any depth (Postfix hashes queue files into subdirectories).
fn count_files(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(t) if t.is_dir() => count_files(&entry.path()),
            Ok(t) if t.is_file() => 1,
            _ => 0,
        })
        .sum()
}

/// Dovecot's IMAP listener and how its processes are used.
#[derive(Clone, Copy, Debug)]
pub struct DovecotImap {
    pub port: u16,
    /// Dovecot's "high-performance" login (one `imap-login` process serves many connections,
    /// two kept ready) and `imap` processes reused for up to 1,000 sessions (eight kept
    /// ready), instead of its default of a new login process and a new `imap` process per
    /// connection.
    pub reuse_processes: bool,
}

/// A private Dovecot POP3 server over the Maildirs Postfix writes, and IMAP if asked; its
/// master's pid. Dovecot's defaults otherwise (`mail_fsync = optimized`: a
/// saved message is fsynced, flag changes and expunges are not), except that one user may
/// have any number of IMAP connections from one address (the load generator's sessions of
/// one popular user all come from 127.0.0.1).
pub fn start_dovecot(
    run: &Run,
    pop3_port: u16,
    imap: Option<DovecotImap>,
    mailboxes: &Mailboxes,
    owner: (u32, u32),
    tls: Option<&(PathBuf, PathBuf)>,
) -> Result<u32> {
    let base = run.dir().join("dovecot");
    let (runtime, state) = (base.join("run"), base.join("state"));
    for dir in [&runtime, &state] {
        std::fs::create_dir_all(dir)?;
    }
    let mut users = String::new();
    for local in mailboxes.locals() {
        let _ = writeln!(
            users,
            "{local}@{}:{{PLAIN}}{}",
            mailboxes.domain, mailboxes.password
        );
    }
    std::fs::write(base.join("users"), users)?;
    let (uid, gid) = owner;
    let (b, mail) = (base.display(), run.dir().join("mail"));
    let mail = mail.display();
    let (protocols, imap) = match imap {
        Some(DovecotImap {
            port,
            reuse_processes,
        }) => (
            "pop3 imap",
            format!(
                "service imap-login {{\n  inet_listener imap {{\n    address = 127.0.0.1\n    \
                 port = {port}\n  }}\n  inet_listener imaps {{\n    port = 0\n  }}\n{login}}}\n\
                 {imap}protocol imap {{\n  mail_max_userip_connections = 100000\n}}\n",
                login = if reuse_processes {
                    "  service_count = 0\n  process_min_avail = 2\n"
                } else {
                    ""
                },
                imap = if reuse_processes {
                    "service imap {\n  service_count = 1000\n  process_min_avail = 8\n}\n"
                } else {
                    ""
                },
            ),
        ),
        None => (
            "pop3",
            "service imap-login {\n  inet_listener imap {\n    port = 0\n  }\n  \
             inet_listener imaps {\n    port = 0\n  }\n}\n"
                .to_owned(),
        ),
    };
    let conf = format!(
        "protocols = {protocols}\nlisten = 127.0.0.1\nbase_dir = {runtime}\nstate_dir = {state}\n\
         log_path = {b}/dovecot.log\n{ssl}disable_plaintext_auth = no\nauth_mechanisms = plain\n\
         mail_location = maildir:{mail}/%d/%n\nfirst_valid_uid = {uid}\n\
         passdb {{\n  driver = passwd-file\n  args = scheme=PLAIN username_format=%u {b}/users\n}}\n\
         userdb {{\n  driver = static\n  args = uid={uid} gid={gid} home={mail}/%d/%n\n}}\n\
         service pop3-login {{\n  inet_listener pop3 {{\n    address = 127.0.0.1\n    port = {pop3_port}\n  }}\n}}\n\
         {imap}",
        runtime = runtime.display(),
        state = state.display(),
        ssl = match tls {
            Some((cert, key)) => format!(
                "ssl = yes\nssl_cert = <{}\nssl_key = <{}\n",
                cert.display(),
                key.display()
            ),
            None => "ssl = no\n".to_owned(),
        },
    );
    let conf_path = base.join("dovecot.conf");
    std::fs::write(&conf_path, conf)?;
    let started = Command::new("dovecot")
        .arg("-c")
        .arg(&conf_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running dovecot")?;
    let log = base.join("dovecot.log");
    if !started.success() {
        bail!(
            "the private Dovecot did not start ({started}); its log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
    // Dovecot detaches before it writes its pid file.
    let master = read_pid(&runtime.join("master.pid"), Duration::from_secs(15))
        .with_context(|| format!("Dovecot did not write its pid; see {}", log.display()))?;
    run.adopt("dovecot", master)?;
    Ok(master)
}

/// Postfix's `smtp-sink` on `port` (SMTP only, nothing stored); its pid.
pub fn start_sink(run: &Run, port: u16) -> Result<u32> {
    run.spawn(
        "smtp-sink",
        Command::new("smtp-sink")
            .args(["-u", "nobody", "-c", &format!("127.0.0.1:{port}"), "1000"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
}

fn read_pid(path: &Path, wait: Duration) -> Result<u32> {
    let deadline = Instant::now() + wait;
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if let Ok(pid) = text.trim().parse() {
                return Ok(pid);
            }
        }
        if Instant::now() > deadline {
            bail!("no pid in {} after {wait:?}", path.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn user_ids(user: &str) -> Result<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").context("reading /etc/passwd")?;
    passwd
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.first() != Some(&user) {
                return None;
            }
            Some((fields.get(2)?.parse().ok()?, fields.get(3)?.parse().ok()?))
        })
        .with_context(|| format!("no user {user} in /etc/passwd"))
}

fn chown(path: &Path, uid: u32, gid: u32) -> Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .with_context(|| format!("chown {uid}:{gid} {}", path.display()))
}
