//! `porcupine-load`: the paper's workload against any SMTP + POP3 (+ IMAP) service.
//!
//! One glommio executor per thread (`--threads`, default every core), each running its share of
//! the `--connections` workers. A worker repeats, until the duration or message count is reached:
//! with probability `smtp/(smtp+pop+imap)` deliver one message over its persistent SMTP
//! connection to a Zipf-chosen user, with probability `pop/…` run a POP session for a
//! Zipf-chosen user (retrieve everything, verify, delete, quit), otherwise an IMAP session
//! (see [`imap`]: headers of new mail, some bodies checked, flags, one APPEND, an EXPUNGE).
//! Closed loop by default; `--rate` paces deliveries (open loop).
//!
//! Integrity: every acknowledged message is remembered; every message retrieved (during the run
//! and by the final sweep, which empties every mailbox that got mail) is checked against its
//! checksum. Lost = acknowledged but never retrieved; duplicated = retrieved twice; corrupt =
//! checksum mismatch. A POP session that fails after its QUIT was sent (the server died, or
//! answered -ERR) may or may not have deleted what it retrieved: those messages are
//! *uncertain*, neither lost if they never show up again nor duplicated if they do.
//! Mail an IMAP session appended (answered OK) is acknowledged mail like a delivery; mail it
//! expunged (answered OK) is gone on purpose, neither lost nor retrieved; mail it flagged
//! \Deleted without seeing EXPUNGE's OK is uncertain. Every IMAP body fetched is checked.

pub mod client;
pub mod dots;
pub mod greetings;
pub mod imap;
pub mod tls;
pub mod workload;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};

use self::client::{pop_login, pop_session, ClientError, SmtpClient, Transfer, IO_TIMEOUT};
use self::greetings::{Greetings, Service};
use self::workload::{Checked, SizeDistribution, Zipf};

/// What to run.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    pub smtp: Vec<SocketAddr>,
    pub pop3: Vec<SocketAddr>,
    pub users: usize,
    /// `{n}` is replaced by the user number (1-based).
    pub user_format: String,
    pub password: String,
    pub zipf: f64,
    pub smtp_share: u32,
    pub pop_share: u32,
    /// IMAP targets and the share of IMAP sessions in the mix.
    pub imap: Vec<SocketAddr>,
    pub imap_share: u32,
    /// Bodies an IMAP session fetches (and checks) at most.
    pub imap_bodies: usize,
    /// How long an IMAP session's IDLE lasts at most, and the percentage of sessions that
    /// IDLE (0: none).
    pub imap_idle: Duration,
    pub imap_idle_percent: u32,
    pub size: SizeDistribution,
    pub connections: usize,
    pub threads: usize,
    /// Deliveries per second in total (open loop); `None`: closed loop.
    pub rate: Option<f64>,
    pub duration: Option<Duration>,
    pub messages: Option<u64>,
    /// Empty every mailbox that received mail at the end, to count lost mail.
    pub sweep: bool,
    /// The most the whole sweep may take. Within it, mailboxes that still miss acknowledged
    /// mail are swept again (servers that deliver after their 250, like Postfix, need that);
    /// mailboxes it could not empty by then are reported as unswept, and their missing mail
    /// as unverified, not lost.
    pub sweep_timeout: Duration,
    pub sender: String,
    /// Before the timed run, log in once as every user (servers that cache verified
    /// credentials then run in their steady state, as a server with active users does).
    pub warm_logins: bool,
    /// BDAT (when offered) or always DATA.
    pub transfer: Transfer,
    /// STARTTLS on every SMTP connection and STLS on every POP3 one, with this configuration.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// Live counters the progress display reads.
#[derive(Debug, Default)]
pub struct Progress {
    pub delivered: AtomicU64,
    pub errors: AtomicU64,
    pub pop_sessions: AtomicU64,
    pub imap_sessions: AtomicU64,
    pub imap_ops: AtomicU64,
    pub started: AtomicU64,
    pub done: AtomicBool,
}

/// What one thread measured.
#[derive(Debug)]
struct ThreadResult {
    delivered: u64,
    delivered_bytes: u64,
    pop_sessions: u64,
    retrieved: u64,
    errors: BTreeMap<String, u64>,
    smtp_latency: Histogram<u64>,
    pop_latency: Histogram<u64>,
    acked: HashMap<u64, u32>,
    seen: HashMap<u64, u32>,
    /// Retrieved by sessions whose QUIT may or may not have taken effect.
    uncertain: HashSet<u64>,
    corrupt: u64,
    greetings: Greetings,
    /// Users whose mailbox a sweep pass could not empty (refused, or the deadline came), with
    /// the last error.
    unswept: HashMap<usize, String>,
    /// Users whose mailbox a sweep pass emptied.
    swept: HashSet<usize>,
    imap: ImapCounts,
    /// Messages of this run an IMAP session expunged (answered OK).
    expunged: HashSet<u64>,
}

/// What the IMAP sessions of a thread did.
#[derive(Debug)]
struct ImapCounts {
    sessions: u64,
    ops: u64,
    /// Every command answered OK, whole sessions, and each kind of command.
    op_latency: Histogram<u64>,
    session_latency: Histogram<u64>,
    commands: BTreeMap<imap::Command, Histogram<u64>>,
    headers: u64,
    bodies_checked: u64,
    bodies_foreign: u64,
    appended: u64,
    expunged: u64,
    idles: u64,
    idles_woken: u64,
}

impl ImapCounts {
    fn new() -> Self {
        Self {
            sessions: 0,
            ops: 0,
            op_latency: latency_histogram(),
            session_latency: latency_histogram(),
            commands: BTreeMap::new(),
            headers: 0,
            bodies_checked: 0,
            bodies_foreign: 0,
            appended: 0,
            expunged: 0,
            idles: 0,
            idles_woken: 0,
        }
    }

    fn merge(&mut self, other: ImapCounts) {
        self.sessions += other.sessions;
        self.ops += other.ops;
        self.op_latency.add(&other.op_latency).ok();
        self.session_latency.add(&other.session_latency).ok();
        for (command, h) in other.commands {
            match self.commands.get_mut(&command) {
                Some(mine) => {
                    mine.add(&h).ok();
                }
                None => {
                    self.commands.insert(command, h);
                }
            }
        }
        self.headers += other.headers;
        self.bodies_checked += other.bodies_checked;
        self.bodies_foreign += other.bodies_foreign;
        self.appended += other.appended;
        self.expunged += other.expunged;
        self.idles += other.idles;
        self.idles_woken += other.idles_woken;
    }
}

impl ThreadResult {
    fn new() -> Self {
        Self {
            delivered: 0,
            delivered_bytes: 0,
            pop_sessions: 0,
            retrieved: 0,
            errors: BTreeMap::new(),
            smtp_latency: latency_histogram(),
            pop_latency: latency_histogram(),
            acked: HashMap::new(),
            seen: HashMap::new(),
            uncertain: HashSet::new(),
            corrupt: 0,
            greetings: Greetings::default(),
            unswept: HashMap::new(),
            swept: HashSet::new(),
            imap: ImapCounts::new(),
            expunged: HashSet::new(),
        }
    }

    /// Accounts what an IMAP session did (also the part a failed session did).
    fn account_imap(&mut self, run: &str, tally: &imap::Tally, progress: &Progress) {
        let key = |id: &str| {
            id.strip_prefix(run)
                .and_then(|k| u64::from_str_radix(k, 16).ok())
        };
        for &(command, micros) in &tally.ops {
            self.imap.ops += 1;
            let _ = self.imap.op_latency.record(micros);
            let _ = self
                .imap
                .commands
                .entry(command)
                .or_insert_with(latency_histogram)
                .record(micros);
        }
        progress
            .imap_ops
            .fetch_add(tally.ops.len() as u64, Ordering::Relaxed);
        self.imap.headers += tally.headers;
        self.imap.bodies_checked += tally.bodies_checked;
        self.imap.bodies_foreign += tally.bodies_foreign;
        self.imap.idles += u64::from(tally.idled);
        self.imap.idles_woken += u64::from(tally.idle_woken);
        self.corrupt += tally.corrupt.len() as u64;
        self.imap.expunged += tally.expunged.len() as u64;
        self.expunged
            .extend(tally.expunged.iter().filter_map(|id| key(id)));
        self.uncertain
            .extend(tally.uncertain.iter().filter_map(|id| key(id)));
    }

    fn error(&mut self, e: &ClientError, progress: &Progress) {
        *self.errors.entry(e.label()).or_default() += 1;
        progress.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds another thread's (or a sweep's) result; `error_prefix` labels its errors.
    fn merge(&mut self, other: ThreadResult, error_prefix: &str) {
        self.delivered += other.delivered;
        self.delivered_bytes += other.delivered_bytes;
        self.pop_sessions += other.pop_sessions;
        self.retrieved += other.retrieved;
        self.corrupt += other.corrupt;
        for (label, count) in other.errors {
            *self
                .errors
                .entry(format!("{error_prefix}{label}"))
                .or_default() += count;
        }
        self.smtp_latency.add(&other.smtp_latency).ok();
        self.pop_latency.add(&other.pop_latency).ok();
        self.acked.extend(other.acked);
        self.uncertain.extend(other.uncertain);
        self.greetings.merge(other.greetings);
        self.unswept.extend(other.unswept);
        self.swept.extend(other.swept);
        self.imap.merge(other.imap);
        self.expunged.extend(other.expunged);
        for (key, count) in other.seen {
            *self.seen.entry(key).or_default() += count;
        }
    }

    /// Records messages of this run retrieved by a session whose QUIT may not have taken
    /// effect.
    fn account_uncertain(&mut self, run: &str, messages: &[Vec<u8>]) {
        for m in messages {
            if let Checked::Intact(id) | Checked::Corrupt(id) = workload::check(m) {
                if let Some(key) = id
                    .strip_prefix(run)
                    .and_then(|k| u64::from_str_radix(k, 16).ok())
                {
                    self.uncertain.insert(key);
                }
            }
        }
    }

    /// Records retrieved messages of this run (`run` is its id prefix).
    fn account(&mut self, run: &str, messages: &[Vec<u8>]) {
        for m in messages {
            self.retrieved += 1;
            let (id, intact) = match workload::check(m) {
                Checked::Intact(id) => (id, true),
                Checked::Corrupt(id) => (id, false),
                Checked::Foreign => continue,
            };
            let Some(key) = id
                .strip_prefix(run)
                .and_then(|k| u64::from_str_radix(k, 16).ok())
            else {
                continue; // an earlier run's mail
            };
            if !intact {
                self.corrupt += 1;
            }
            *self.seen.entry(key).or_default() += 1;
        }
    }
}

fn micros_since(began: Instant) -> u64 {
    (began.elapsed().as_micros() as u64).max(1)
}

fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).expect("histogram"))
}

/// Latency quantiles in milliseconds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

fn latency(h: &Histogram<u64>) -> Latency {
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    Latency {
        count: h.len(),
        p50_ms: ms(0.5),
        p90_ms: ms(0.9),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
        max_ms: h.max() as f64 / 1000.0,
    }
}

/// The run's outcome, printed as a table and as JSON.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub seconds: f64,
    pub connections: usize,
    pub threads: usize,
    pub delivered: u64,
    pub msgs_per_s: f64,
    pub mb_per_s: f64,
    pub mean_message_bytes: f64,
    pub pop_sessions: u64,
    pub retrieved: u64,
    pub smtp: Latency,
    pub pop: Latency,
    pub imap: ImapReport,
    pub errors: BTreeMap<String, u64>,
    /// Whether every acknowledged message was looked for (POP3 given and the sweep ran).
    pub verified: bool,
    pub lost: u64,
    pub duplicated: u64,
    pub corrupt: u64,
    /// Messages retrieved by POP sessions that failed after QUIT was sent, and messages IMAP
    /// sessions flagged \Deleted but failed before EXPUNGE was answered.
    pub uncertain: u64,
    /// Up to 20 lost messages: "<message id> user<n>", to look for them on the servers.
    pub lost_sample: Vec<String>,
    /// Up to 20 messages retrieved more than once: "<message id> user<n> ×<times>".
    pub duplicated_sample: Vec<String>,
    /// Mailboxes the sweep could not empty (every try refused, or `--sweep-timeout` passed).
    pub unswept: u64,
    /// Up to 20 of them: "<user>: <last error>".
    pub unswept_sample: Vec<String>,
    /// Acknowledged messages in those mailboxes, not yet retrieved: neither lost nor verified.
    pub unverified: u64,
    /// Per target ("smtp ADDR", "pop3 ADDR"): each distinct greeting and how often it came
    /// (digits blurred). More than one greeting on a target means two servers answered there.
    pub greetings: BTreeMap<String, BTreeMap<String, u64>>,
}

/// What the IMAP sessions did. An op is one command answered OK (LOGIN, SELECT, each FETCH,
/// STORE, APPEND, EXPUNGE, IDLE, LOGOUT, …).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ImapReport {
    pub sessions: u64,
    pub sessions_per_s: f64,
    pub ops: u64,
    pub ops_per_s: f64,
    /// Latency of every op, then of whole sessions (connect to LOGOUT's OK).
    pub op: Latency,
    pub session: Latency,
    /// Latency of each kind of command.
    pub commands: BTreeMap<String, Latency>,
    pub headers_fetched: u64,
    /// Bodies fetched and checked against their checksum and announced size (corrupt ones
    /// are counted in the report's `corrupt`); bodies of other mail are not checked.
    pub bodies_checked: u64,
    pub bodies_foreign: u64,
    pub appended: u64,
    pub expunged: u64,
    pub idles: u64,
    /// IDLEs ended by an EXISTS before their time was up.
    pub idles_woken: u64,
}

fn imap_report(counts: &ImapCounts, seconds: f64) -> ImapReport {
    ImapReport {
        sessions: counts.sessions,
        sessions_per_s: counts.sessions as f64 / seconds,
        ops: counts.ops,
        ops_per_s: counts.ops as f64 / seconds,
        op: latency(&counts.op_latency),
        session: latency(&counts.session_latency),
        commands: counts
            .commands
            .iter()
            .map(|(c, h)| (c.name().to_owned(), latency(h)))
            .collect(),
        headers_fetched: counts.headers,
        bodies_checked: counts.bodies_checked,
        bodies_foreign: counts.bodies_foreign,
        appended: counts.appended,
        expunged: counts.expunged,
        idles: counts.idles,
        idles_woken: counts.idles_woken,
    }
}

fn user_name(format: &str, n: usize) -> String {
    format.replace("{n}", &n.to_string())
}

/// Runs the workload; `progress` is updated as it goes.
pub fn run(config: LoadConfig, progress: Arc<Progress>) -> anyhow::Result<Report> {
    anyhow::ensure!(
        config.smtp_share == 0 || !config.smtp.is_empty(),
        "give at least one --smtp target (or a mix without deliveries)"
    );
    anyhow::ensure!(
        config.imap_share == 0 || !config.imap.is_empty(),
        "an IMAP share in the mix needs at least one --imap target"
    );
    anyhow::ensure!(
        config.smtp_share + config.pop_share + config.imap_share > 0,
        "the mix is empty"
    );
    anyhow::ensure!(
        config.connections >= 1 && config.threads >= 1,
        "--connections and --threads must be at least 1"
    );
    anyhow::ensure!(config.users >= 1, "--users must be at least 1");
    anyhow::ensure!(
        config.user_format.contains("{n}"),
        "--user-format must contain {{n}}"
    );
    anyhow::ensure!(
        config.duration.is_some() || config.messages.is_some(),
        "give --duration or --messages"
    );
    anyhow::ensure!(
        config.duration.is_some() || config.smtp_share > 0,
        "without deliveries in the mix, --messages never ends a run: give --duration"
    );
    let threads = config.threads.min(config.connections);
    let run_id = format!("{:08x}-", rand::thread_rng().gen::<u32>());
    let zipf = Arc::new(Zipf::new(config.users, config.zipf));
    let config = Arc::new(config);
    if config.warm_logins && !(config.pop3.is_empty() && config.imap.is_empty()) {
        let warm_started = Instant::now();
        let failed = warm_logins(&config, threads)?;
        eprintln!(
            "warm-up: {} logins in {:.1} s ({failed} failed)",
            config.users,
            warm_started.elapsed().as_secs_f64()
        );
    }
    let started = Instant::now();
    let results = {
        let (config, zipf, progress, run_id) = (
            config.clone(),
            zipf.clone(),
            progress.clone(),
            run_id.clone(),
        );
        on_executors("load", threads, move |thread| {
            let workers: Vec<usize> = (0..config.connections)
                .filter(|w| w % threads == thread)
                .collect();
            let (config, zipf, progress, run_id) = (
                config.clone(),
                zipf.clone(),
                progress.clone(),
                run_id.clone(),
            );
            async move { run_thread(thread, workers, config, zipf, progress, run_id, started).await }
        })?
    };
    let seconds = started.elapsed().as_secs_f64();
    progress.done.store(true, Ordering::Relaxed);

    // Merge, then sweep every mailbox that received mail.
    let mut total = ThreadResult::new();
    let mut recipients: HashSet<usize> = HashSet::new();
    for (result, users) in results {
        total.merge(result, "");
        recipients.extend(users);
    }
    let swept = config.sweep && !config.pop3.is_empty();
    // Users whose mailbox the sweep could not empty in time.
    let mut unswept: HashMap<usize, String> = HashMap::new();
    if swept {
        let deadline = Instant::now() + config.sweep_timeout;
        let mut users: Vec<usize> = recipients.into_iter().collect();
        // A mailbox emptied once is swept: mail still missing after the last pass is lost,
        // even if that pass (a retry for the missing mail) could not get in.
        let mut emptied: HashSet<usize> = HashSet::new();
        loop {
            let mut pass = sweep(&config, users, threads, &run_id, deadline)?;
            emptied.extend(pass.swept.iter().copied());
            unswept.retain(|user, _| !emptied.contains(user));
            unswept.extend(
                pass.unswept
                    .drain()
                    .filter(|(user, _)| !emptied.contains(user)),
            );
            total.merge(pass, "sweep:");
            // Users whose acknowledged mail has not shown up yet. Mail retrieved by a session
            // cut off after QUIT may be deleted already: waiting for it would last until the
            // deadline.
            let missing: HashSet<usize> = total
                .acked
                .iter()
                .filter(|(k, _)| {
                    !total.seen.contains_key(k)
                        && !total.uncertain.contains(k)
                        && !total.expunged.contains(k)
                })
                .map(|(_, user)| *user as usize)
                .collect();
            if missing.is_empty() || Instant::now() >= deadline {
                break;
            }
            users = missing.into_iter().collect();
            std::thread::sleep(Duration::from_millis(500).min(deadline - Instant::now()));
        }
    }
    let verified = swept && unswept.is_empty();
    let not_seen = |key: &u64| {
        !total.seen.contains_key(key)
            && !total.uncertain.contains(key)
            && !total.expunged.contains(key)
    };
    let unverified = total
        .acked
        .iter()
        .filter(|(k, user)| not_seen(k) && unswept.contains_key(&(**user as usize)))
        .count() as u64;
    let is_lost =
        |key: &u64, user: u32| swept && not_seen(key) && !unswept.contains_key(&(user as usize));
    let lost = total
        .acked
        .iter()
        .filter(|(k, user)| is_lost(k, **user))
        .count() as u64;
    let duplicated = total.seen.values().filter(|&&n| n > 1).count() as u64;
    let lost_sample = total
        .acked
        .iter()
        .filter(|(k, user)| is_lost(k, **user))
        .take(20)
        .map(|(key, user)| format!("{run_id}{key:x} user{user}"))
        .collect();
    Ok(Report {
        seconds,
        connections: config.connections,
        threads,
        delivered: total.delivered,
        msgs_per_s: total.delivered as f64 / seconds,
        mb_per_s: total.delivered_bytes as f64 / seconds / 1e6,
        mean_message_bytes: if total.delivered > 0 {
            total.delivered_bytes as f64 / total.delivered as f64
        } else {
            0.0
        },
        pop_sessions: total.pop_sessions,
        retrieved: total.retrieved,
        smtp: latency(&total.smtp_latency),
        pop: latency(&total.pop_latency),
        imap: imap_report(&total.imap, seconds),
        errors: total.errors,
        verified,
        lost,
        duplicated,
        corrupt: total.corrupt,
        uncertain: total.uncertain.len() as u64,
        lost_sample,
        duplicated_sample: total
            .seen
            .iter()
            .filter(|(_, &n)| n > 1)
            .take(20)
            .map(|(key, n)| {
                let user = total.acked.get(key).map_or(-1, |u| i64::from(*u));
                format!("{run_id}{key:x} user{user} x{n}")
            })
            .collect(),
        unswept: unswept.len() as u64,
        unswept_sample: {
            let mut sample: Vec<_> = unswept
                .iter()
                .map(|(n, why)| format!("{}: {why}", user_name(&config.user_format, *n)))
                .collect();
            sample.sort_unstable();
            sample.truncate(20);
            sample
        },
        unverified,
        greetings: total.greetings.by_target(),
    })
}

async fn run_thread(
    thread: usize,
    workers: Vec<usize>,
    config: Arc<LoadConfig>,
    zipf: Arc<Zipf>,
    progress: Arc<Progress>,
    run_id: String,
    started: Instant,
) -> (ThreadResult, HashSet<usize>) {
    let result = std::rc::Rc::new(std::cell::RefCell::new(ThreadResult::new()));
    let recipients = std::rc::Rc::new(std::cell::RefCell::new(HashSet::new()));
    // What this thread's IMAP clients remember of each mailbox (UIDVALIDITY, highest UID).
    let caches = std::rc::Rc::new(std::cell::RefCell::new(HashMap::new()));
    // One body source per thread (2 MiB of text), shared by its workers.
    let bodies = std::rc::Rc::new(workload::BodySource::new(
        &mut rand::rngs::SmallRng::seed_from_u64(rand::thread_rng().gen()),
    ));
    let mut tasks = Vec::new();
    for worker in workers {
        let bodies = bodies.clone();
        let (config, zipf, progress, run_id) = (
            config.clone(),
            zipf.clone(),
            progress.clone(),
            run_id.clone(),
        );
        let (result, recipients, caches) = (result.clone(), recipients.clone(), caches.clone());
        tasks.push(glommio::spawn_local(async move {
            worker_loop(
                thread,
                worker,
                &config,
                &zipf,
                &progress,
                &run_id,
                started,
                &bodies,
                &result,
                &recipients,
                &caches,
            )
            .await
        }));
    }
    for task in tasks {
        task.await;
    }
    let result = std::mem::replace(&mut *result.borrow_mut(), ThreadResult::new());
    let recipients = std::mem::take(&mut *recipients.borrow_mut());
    (result, recipients)
}

#[allow(clippy::too_many_arguments)]
async fn worker_loop(
    thread: usize,
    worker: usize,
    config: &LoadConfig,
    zipf: &Zipf,
    progress: &Progress,
    run_id: &str,
    started: Instant,
    bodies: &workload::BodySource,
    result: &std::cell::RefCell<ThreadResult>,
    recipients: &std::cell::RefCell<HashSet<usize>>,
    caches: &std::cell::RefCell<HashMap<usize, imap::Cache>>,
) {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(rand::thread_rng().gen());
    let smtp_target = config.smtp.get(worker % config.smtp.len().max(1)).copied();
    let pop_target = config.pop3.get(worker % config.pop3.len().max(1)).copied();
    let imap_target = config.imap.get(worker % config.imap.len().max(1)).copied();
    let share_total = (config.smtp_share + config.pop_share + config.imap_share).max(1);
    let mut smtp: Option<SmtpClient> = None;
    let mut message = Vec::new();
    let mut seq: u64 = 0;
    let mut deliveries: u64 = 0;
    loop {
        if config.duration.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
        let draw = rng.gen_range(0..share_total);
        let is_imap = imap_target.is_some() && draw >= config.smtp_share + config.pop_share;
        let is_pop = !is_imap && pop_target.is_some() && draw >= config.smtp_share;
        if is_imap {
            let Some(target) = imap_target else { continue };
            let user_number = zipf.sample(&mut rng);
            let user = user_name(&config.user_format, user_number);
            seq += 1;
            let key =
                ((thread as u64) << 56) | ((worker as u64 & 0xff_ffff) << 32) | (seq & 0xffff_ffff);
            let id = format!("{run_id}{key:x}");
            let size = config.size.sample(&mut rng);
            workload::message(&id, size, bodies, &mut rng, &mut message);
            let idle = (config.imap_idle_percent > 0
                && rng.gen_range(0..100) < config.imap_idle_percent)
                .then_some(config.imap_idle);
            let plan = imap::Plan {
                addr: target,
                user: &user,
                password: &config.password,
                tls: config.tls.as_ref(),
                cache: caches.borrow().get(&user_number).cloned(),
                pick: rng.gen(),
                bodies_max: config.imap_bodies,
                append: &message,
                expunge: true,
                idle,
                login_only: false,
            };
            let mut tally = imap::Tally::default();
            let began = Instant::now();
            let outcome = imap::session(&plan, IO_TIMEOUT, &mut tally).await;
            if let Some(cache) = tally.cache.take() {
                caches.borrow_mut().insert(user_number, cache);
            }
            let mut r = result.borrow_mut();
            if let Some(greeting) = &tally.greeting {
                r.greetings.record(Service::Imap, target, greeting);
            }
            r.account_imap(run_id, &tally, progress);
            if tally.appended {
                r.imap.appended += 1;
                r.acked.insert(key, user_number as u32);
                recipients.borrow_mut().insert(user_number);
            }
            match outcome {
                Ok(()) => {
                    let _ = r.imap.session_latency.record(micros_since(began));
                    r.imap.sessions += 1;
                    progress.imap_sessions.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => r.error(&e, progress),
            }
            continue;
        }
        if !is_pop {
            let n = progress.started.fetch_add(1, Ordering::Relaxed);
            if config.messages.is_some_and(|m| n >= m) {
                break;
            }
            if let Some(rate) = config.rate {
                // Open loop: delivery k of this worker is due at (k * connections + worker) / rate.
                let due = (deliveries as f64 * config.connections as f64 + worker as f64) / rate;
                let wait = due - started.elapsed().as_secs_f64();
                if wait > 0.0 {
                    glommio::timer::sleep(Duration::from_secs_f64(wait)).await;
                }
            }
            deliveries += 1;
        }
        let user_number = zipf.sample(&mut rng);
        let user = user_name(&config.user_format, user_number);
        if is_pop {
            let Some(target) = pop_target else { continue };
            let began = Instant::now();
            let mut greeting = None;
            let tls = config.tls.as_ref();
            let session = pop_session(
                target,
                &user,
                &config.password,
                IO_TIMEOUT,
                tls,
                &mut greeting,
            );
            let outcome = session.await;
            if let Some(greeting) = greeting {
                let mut r = result.borrow_mut();
                r.greetings.record(Service::Pop3, target, &greeting);
            }
            match outcome {
                Ok(messages) => {
                    let mut r = result.borrow_mut();
                    let _ = r
                        .pop_latency
                        .record((began.elapsed().as_micros() as u64).max(1));
                    r.pop_sessions += 1;
                    r.account(run_id, &messages);
                    progress.pop_sessions.fetch_add(1, Ordering::Relaxed);
                }
                Err(failure) => {
                    let mut r = result.borrow_mut();
                    r.error(&failure.error, progress);
                    if let Some(messages) = failure.after_quit {
                        r.account_uncertain(run_id, &messages);
                    }
                }
            }
            continue;
        }
        seq += 1;
        let key =
            ((thread as u64) << 56) | ((worker as u64 & 0xff_ffff) << 32) | (seq & 0xffff_ffff);
        let id = format!("{run_id}{key:x}");
        let size = config.size.sample(&mut rng);
        workload::message(&id, size, bodies, &mut rng, &mut message);
        let Some(smtp_target) = smtp_target else {
            continue;
        };
        if smtp.is_none() {
            let tls = config.tls.as_ref();
            match SmtpClient::connect(smtp_target, "porcupine-load", config.transfer, tls).await {
                Ok(client) => {
                    let mut r = result.borrow_mut();
                    r.greetings
                        .record(Service::Smtp, smtp_target, &client.greeting);
                    smtp = Some(client);
                }
                Err(e) => {
                    result.borrow_mut().error(&e, progress);
                    glommio::timer::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            }
        }
        let Some(client) = smtp.as_mut() else {
            continue;
        };
        let began = Instant::now();
        match client.send(&config.sender, &user, &message).await {
            Ok(()) => {
                let mut r = result.borrow_mut();
                let _ = r
                    .smtp_latency
                    .record((began.elapsed().as_micros() as u64).max(1));
                r.delivered += 1;
                r.delivered_bytes += message.len() as u64;
                r.acked.insert(key, user_number as u32);
                recipients.borrow_mut().insert(user_number);
                progress.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                let broken = matches!(e, ClientError::Io(_) | ClientError::Protocol(_));
                result.borrow_mut().error(&e, progress);
                if broken {
                    smtp = None;
                }
            }
        }
    }
    if let Some(client) = smtp {
        client.quit().await;
    }
}

/// Runs `task(thread)` on `threads` executors, one each, and returns their outputs in order.
fn on_executors<T, F, Fut>(name: &str, threads: usize, task: F) -> anyhow::Result<Vec<T>>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = T> + 'static,
{
    let task = Arc::new(task);
    let mut handles = Vec::new();
    for thread in 0..threads {
        let builder = porcupine_runtime::executor_builder(
            &format!("{name}-{thread}"),
            thread,
            threads,
            false,
        )?;
        let task = task.clone();
        handles.push(porcupine_runtime::spawn(builder, move || task(thread))?);
    }
    handles
        .into_iter()
        .map(|h| {
            h.join()
                .map_err(|e| anyhow::anyhow!("{name} thread failed: {e}"))
        })
        .collect()
}

/// Empties the mailboxes of `users`, accounting for what it finds; stops at `deadline`
/// (mailboxes not emptied by then are `unswept`).
fn sweep(
    config: &Arc<LoadConfig>,
    users: Vec<usize>,
    threads: usize,
    run_id: &str,
    deadline: Instant,
) -> anyhow::Result<ThreadResult> {
    /// The wait between tries of a mailbox that is locked (by a session that just ended, or
    /// one of a node that died, until its lock is taken over) or unavailable: it doubles from
    /// the first to the last, and the tries go on until the sweep's deadline.
    const RETRY_FIRST: Duration = Duration::from_millis(20);
    const RETRY_MAX: Duration = Duration::from_millis(500);
    let users = Arc::new(users);
    let (config, run_id) = (config.clone(), run_id.to_owned());
    let results = on_executors("sweep", threads, move |thread| {
        let (config, users, run_id) = (config.clone(), users.clone(), run_id.clone());
        async move {
            let mut result = ThreadResult::new();
            let progress = Progress::default();
            for (i, n) in users.iter().enumerate() {
                if i % threads != thread {
                    continue;
                }
                let user = user_name(&config.user_format, *n);
                let target = config.pop3[i % config.pop3.len()];
                let mut emptied = false;
                let mut pause = RETRY_FIRST;
                let mut last_error = None;
                while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                    let mut greeting = None;
                    let limit = left.min(IO_TIMEOUT);
                    let tls = config.tls.as_ref();
                    let session =
                        pop_session(target, &user, &config.password, limit, tls, &mut greeting);
                    let outcome = session.await;
                    if let Some(greeting) = greeting {
                        result.greetings.record(Service::Pop3, target, &greeting);
                    }
                    match outcome {
                        Ok(messages) => {
                            result.account(&run_id, &messages);
                            emptied = true;
                            break;
                        }
                        Err(failure) => {
                            if let Some(messages) = &failure.after_quit {
                                result.account_uncertain(&run_id, messages);
                            }
                            // A refused login will not get better: leave it unswept.
                            let refused = failure.error.label() == "pop3:[AUTH]";
                            last_error = Some(failure.error);
                            if refused {
                                break;
                            }
                            glommio::timer::sleep(pause.min(left)).await;
                            pause = (pause * 2).min(RETRY_MAX);
                        }
                    }
                }
                if let (false, Some(error)) = (emptied, &last_error) {
                    result.error(error, &progress);
                }
                // A mailbox that could not be read says nothing about its mail either way.
                if emptied {
                    result.swept.insert(*n);
                } else {
                    let why = last_error.as_ref().map_or("deadline".into(), |e| e.label());
                    result.unswept.insert(*n, why);
                }
            }
            result
        }
    })?;
    let mut total = ThreadResult::new();
    for result in results {
        total.merge(result, "");
    }
    Ok(total)
}

/// Logs in once as every user, a few sessions at a time per thread; returns the failures.
fn warm_logins(config: &Arc<LoadConfig>, threads: usize) -> anyhow::Result<u64> {
    const SESSIONS_PER_THREAD: usize = 8;
    let config = config.clone();
    let failures = on_executors("warm", threads, move |thread| {
        let config = config.clone();
        async move {
            let mut tasks = Vec::new();
            for lane in 0..SESSIONS_PER_THREAD {
                let config = config.clone();
                tasks.push(glommio::spawn_local(async move {
                    let mut failed = 0u64;
                    let stride = threads * SESSIONS_PER_THREAD;
                    let mut n = 1 + thread * SESSIONS_PER_THREAD + lane;
                    while n <= config.users {
                        let user = user_name(&config.user_format, n);
                        let tls = config.tls.as_ref();
                        let logged_in = match config.pop3.get(n % config.pop3.len().max(1)) {
                            Some(&target) => pop_login(target, &user, &config.password, tls)
                                .await
                                .is_ok(),
                            None => imap_login(&config, n, &user).await,
                        };
                        if !logged_in {
                            failed += 1;
                        }
                        n += stride;
                    }
                    failed
                }));
            }
            let mut failed = 0;
            for task in tasks {
                failed += task.await;
            }
            failed
        }
    })?;
    Ok(failures.into_iter().sum())
}

/// Logs in once by IMAP as `user` (the warm-up, when there is no POP3 target).
async fn imap_login(config: &LoadConfig, n: usize, user: &str) -> bool {
    let Some(&target) = config.imap.get(n % config.imap.len().max(1)) else {
        return false;
    };
    let plan = imap::Plan {
        addr: target,
        user,
        password: &config.password,
        tls: config.tls.as_ref(),
        cache: None,
        pick: 0,
        bodies_max: 0,
        append: &[],
        expunge: false,
        idle: None,
        login_only: true,
    };
    imap::session(&plan, IO_TIMEOUT, &mut imap::Tally::default())
        .await
        .is_ok()
}

/// The summary table.
pub fn table(report: &Report) -> String {
    let mut out = String::new();
    use std::fmt::Write;
    let _ = writeln!(
        out,
        "{} deliveries in {:.1} s over {} connections: {:.0} msg/s, {:.2} MB/s (mean {:.0} B)",
        report.delivered,
        report.seconds,
        report.connections,
        report.msgs_per_s,
        report.mb_per_s,
        report.mean_message_bytes
    );
    let _ = writeln!(
        out,
        "{:<6} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "", "count", "p50 ms", "p90 ms", "p99 ms", "p999 ms", "max ms"
    );
    for (name, l) in [("smtp", &report.smtp), ("pop", &report.pop)] {
        let _ = writeln!(
            out,
            "{name:<6} {:>9} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
            l.count, l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms
        );
    }
    let imap = &report.imap;
    if imap.sessions > 0 || imap.ops > 0 {
        let _ = writeln!(
            out,
            "{:<6} {:>9} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}  (one op: a command answered OK)",
            "imap",
            imap.op.count,
            imap.op.p50_ms,
            imap.op.p90_ms,
            imap.op.p99_ms,
            imap.op.p999_ms,
            imap.op.max_ms
        );
    }
    let _ = writeln!(
        out,
        "POP sessions {}, messages retrieved {}",
        report.pop_sessions, report.retrieved
    );
    if imap.sessions > 0 || imap.ops > 0 {
        let _ = writeln!(
            out,
            "IMAP: {} sessions ({:.1}/s), {} ops: {:.0} ops/s; {} headers, {} bodies checked \
             ({} other mail), {} appended, {} expunged, {} IDLEs ({} woken by EXISTS)",
            imap.sessions,
            imap.sessions_per_s,
            imap.ops,
            imap.ops_per_s,
            imap.headers_fetched,
            imap.bodies_checked,
            imap.bodies_foreign,
            imap.appended,
            imap.expunged,
            imap.idles,
            imap.idles_woken
        );
        let _ = writeln!(
            out,
            "{:<14} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "IMAP command", "count", "p50 ms", "p90 ms", "p99 ms", "p999 ms", "max ms"
        );
        let rows = std::iter::once(("session", &imap.session))
            .chain(imap.commands.iter().map(|(name, l)| (name.as_str(), l)));
        for (name, l) in rows {
            let _ = writeln!(
                out,
                "{name:<14} {:>9} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
                l.count, l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms
            );
        }
    }
    if report.errors.is_empty() {
        let _ = writeln!(out, "errors: none");
    } else {
        let _ = writeln!(out, "errors: {:?}", report.errors);
    }
    for (target, counts) in &report.greetings {
        for (greeting, count) in counts {
            let _ = writeln!(out, "greeting {target}: {count} × {greeting:?}");
        }
    }
    for (target, distinct) in greetings::mixed(&report.greetings) {
        let _ = writeln!(
            out,
            "WARNING: {target} answered with {distinct} different greetings: more than one server \
             listens there, and this run measured all of them"
        );
    }
    if report.unswept > 0 {
        let _ = writeln!(
            out,
            "integrity: NOT verified: the sweep could not empty {} mailboxes (refused, or \
             --sweep-timeout passed; {} acknowledged messages unverified); lost {}, duplicated {}, corrupt {}",
            report.unswept, report.unverified, report.lost, report.duplicated, report.corrupt
        );
        let _ = writeln!(out, "unswept: {}", report.unswept_sample.join(", "));
    } else if report.verified {
        let _ = writeln!(
            out,
            "integrity: lost {}, duplicated {}, corrupt {} (uncertain: {} retrieved by POP sessions cut off after QUIT, or flagged \\Deleted by IMAP sessions cut off before EXPUNGE's OK)",
            report.lost, report.duplicated, report.corrupt, report.uncertain
        );
    } else {
        let _ = writeln!(
            out,
            "integrity: not verified (no --pop3, or --no-sweep); corrupt among retrieved {}",
            report.corrupt
        );
    }
    out
}
