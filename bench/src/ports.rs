//! Ports for a benchmark's servers, and who listens on them.
//!
//! Every port is chosen free when the run starts, never a fixed one and never one of
//! porcupine's or a mail system's well-known ports, so a run cannot collide with the servers
//! the machine already has. Before each measured run, [`check_owned`] reads the kernel's table
//! of listening sockets (`/proc/net/tcp`, `/proc/net/tcp6`) and which processes hold them
//! (`/proc/*/fd`): only the server the run started (or its children) may listen on the port.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};

use anyhow::{bail, Context, Result};

/// Ports a run never takes: porcupine's defaults and the mail ports a machine may serve.
const RESERVED: [u16; 14] = [
    25, 110, 143, 465, 587, 993, 995, 2525, 1110, 1143, 8025, 7946, 24, 4190,
];

/// `count` free loopback ports, distinct within this process (see [`free_port`]).
pub fn free_ports(count: usize) -> Result<Vec<u16>> {
    (0..count).map(|_| free_port()).collect()
}

/// A free loopback port, never one of [`RESERVED`] and never in the kernel's ephemeral range:
/// a client connection made during a run (a `user add`, a generator's session) takes its local
/// port from that range, and could otherwise take a port chosen for a server that has not
/// started yet, which then fails to bind.
///
/// A port is free only when nothing listens there *and* no other live process has claimed it:
/// between choosing a port and the server binding it there is a window in which a second run
/// (another test, another benchmark) could choose the same one. Each claim is an exclusive lock
/// on `<temp>/porcupine-ports/<port>.lock`, held until this process exits (the kernel drops it
/// then, however the process ends), so no two live processes ever hand out the same port.
pub fn free_port() -> Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    // A step coprime with any span of the range this large walks all of it.
    const STEP: u32 = 7919;
    static CALLS: AtomicU32 = AtomicU32::new(0);
    let (low, high) = below_ephemeral_range();
    let span = u32::from(high - low);
    let claims = claim_dir()?;
    // A starting point that differs between processes, so concurrent runs rarely contend.
    let start = process_seed() % span;
    for _ in 0..span {
        let call = CALLS.fetch_add(1, Ordering::Relaxed);
        let offset = start.wrapping_add(call.wrapping_mul(STEP)) % span;
        let Ok(port) = u16::try_from(u32::from(low) + offset) else {
            continue;
        };
        if RESERVED.contains(&port) || !claim(&claims, port)? {
            continue;
        }
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port below the ephemeral range")
}

/// The directory of port claims, shared by every process on the machine.
fn claim_dir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join("porcupine-ports");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Claims `port` for this process's lifetime; false if another live process holds it.
fn claim(dir: &std::path::Path, port: u16) -> Result<bool> {
    use std::sync::Mutex;
    static HELD: Mutex<Vec<std::fs::File>> = Mutex::new(Vec::new());
    let path = dir.join(format!("{port}.lock"));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    if !try_lock_exclusive(&file).with_context(|| format!("locking {}", path.display()))? {
        return Ok(false);
    }
    HELD.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(file);
    Ok(true)
}

/// `flock(LOCK_EX | LOCK_NB)`: true if taken, false if another open file holds it.
/// (`File::try_lock` is newer than the workspace's rust-version.)
fn try_lock_exclusive(file: &std::fs::File) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock only reads the descriptor, which `file` keeps open for the call.
    let result = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if result == 0 {
        return Ok(true);
    }
    let error = std::io::Error::last_os_error();
    if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(error)
    }
}

/// A per-process number that is not a linear function of the pid: consecutive pids (two runs
/// started together) would otherwise walk the same sequence shifted by one step.
fn process_seed() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mixed = (u64::from(std::process::id()) << 32 | u64::from(nanos))
        .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (mixed >> 32) as u32
}

/// The ports a run picks from: from 10,000 up to where the kernel's ephemeral range starts
/// (`/proc/sys/net/ipv4/ip_local_port_range`).
fn below_ephemeral_range() -> (u16, u16) {
    const LOW: u16 = 10_000;
    let start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    (LOW, start.max(LOW + 1_000))
}

/// One listening TCP socket on the machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listening {
    pub addr: SocketAddr,
    pub inode: u64,
}

/// Every socket listening on `port`, on any address.
pub fn listening_on(port: u16) -> Result<Vec<Listening>> {
    let mut found = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = match std::fs::read_to_string(table) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {table}")),
        };
        found.extend(
            parse_table(&text)
                .into_iter()
                .filter(|l| l.addr.port() == port),
        );
    }
    Ok(found)
}

/// The listening sockets of a `/proc/net/tcp{,6}` table.
fn parse_table(text: &str) -> Vec<Listening> {
    const LISTEN: &str = "0A";
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.get(3) != Some(&LISTEN) {
                return None;
            }
            let addr = parse_addr(fields.get(1)?)?;
            let inode = fields.get(9)?.parse().ok()?;
            Some(Listening { addr, inode })
        })
        .collect()
}

/// `0100007F:0A2A` (IPv4) or 32 hex digits and a port (IPv6); addresses are in the kernel's
/// byte order, 32 bits at a time.
fn parse_addr(text: &str) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words: Vec<u32> = (0..ip.len() / 8)
        .map(|i| u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16).ok())
        .collect::<Option<_>>()?;
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    match bytes.len() {
        4 => Some(SocketAddr::from((<[u8; 4]>::try_from(bytes).ok()?, port))),
        16 => Some(SocketAddr::from((<[u8; 16]>::try_from(bytes).ok()?, port))),
        _ => None,
    }
}

/// For each socket inode of `inodes`, the processes holding it open.
fn holders(inodes: &HashSet<u64>) -> Result<HashMap<u64, Vec<u32>>> {
    let mut holders: HashMap<u64, Vec<u32>> = HashMap::new();
    for entry in std::fs::read_dir("/proc").context("reading /proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // Processes come and go while we look, and some fds are not ours to read.
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let target = target.to_string_lossy();
            let Some(inode) = target
                .strip_prefix("socket:[")
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse::<u64>().ok())
            else {
                continue;
            };
            if inodes.contains(&inode) {
                let pids = holders.entry(inode).or_default();
                if !pids.contains(&pid) {
                    pids.push(pid);
                }
            }
        }
    }
    Ok(holders)
}

/// The parent of `pid`, from `/proc/<pid>/stat` (the field after the parenthesised name).
fn parent(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = stat.rsplit_once(')')?.1;
    after_name.split_whitespace().nth(1)?.parse().ok()
}

/// Whether `pid` is `root` or one of its descendants.
pub fn descends_from(pid: u32, root: u32) -> bool {
    let mut current = pid;
    for _ in 0..64 {
        if current == root {
            return true;
        }
        match parent(current) {
            Some(p) if p != 0 && p != current => current = p,
            _ => return false,
        }
    }
    false
}

/// A process's name, for messages.
pub fn command_name(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim().to_owned())
        .unwrap_or_else(|_| "?".into())
}

/// Checks that something listens on `port` and that every listener there is held only by
/// `root` (the server this run started) or its children; `what` names it in errors.
pub fn check_owned(port: u16, root: u32, what: &str) -> Result<()> {
    let listening = listening_on(port)?;
    if listening.is_empty() {
        bail!("nothing listens on port {port}, where {what} (pid {root}) should");
    }
    let inodes: HashSet<u64> = listening.iter().map(|l| l.inode).collect();
    let holders = holders(&inodes)?;
    for socket in &listening {
        let pids = holders.get(&socket.inode).map(Vec::as_slice).unwrap_or(&[]);
        if pids.is_empty() {
            bail!(
                "a socket listens on {} that no process this run can see holds: it is not {what}",
                socket.addr
            );
        }
        if let Some(stranger) = pids.iter().find(|&&pid| !descends_from(pid, root)) {
            bail!(
                "pid {stranger} ({}) listens on {} too, beside {what} (pid {root}): another \
                 server shares the port, so a run there would measure both",
                command_name(*stranger),
                socket.addr
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_give_listening_sockets_with_their_addresses() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
            0: 0100007F:09DD 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 31337 1 0000000000000000 100 0 0 10 0\n\
            1: 0100007F:09DD 0100007F:A1B2 01 00000000:00000000 00:00000000 00000000     0        0 31338 1 0000000000000000 100 0 0 10 0\n";
        let found = parse_table(text);
        assert_eq!(
            found,
            vec![Listening {
                addr: "127.0.0.1:2525".parse().unwrap(),
                inode: 31337
            }]
        );
        let v6 = parse_addr("00000000000000000000000001000000:0050").unwrap();
        assert_eq!(v6, "[::1]:80".parse().unwrap());
    }

    #[test]
    fn ports_are_free_distinct_and_never_well_known() {
        let ports = free_ports(20).unwrap();
        let distinct: HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), 20);
        assert!(ports.iter().all(|p| !RESERVED.contains(p)));
        for port in ports {
            TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap();
        }
    }

    #[test]
    fn a_claimed_port_is_refused_until_its_holder_exits() {
        let dir =
            std::env::temp_dir().join(format!("porcupine-claims-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Another process holds the claim on 20000: `flock` keeps it while `sleep` runs (`-o`:
        // the lock stays with flock itself, so killing it releases the claim).
        let lock = dir.join("20000.lock");
        let mut holder = std::process::Command::new("flock")
            .arg("-o")
            .arg(&lock)
            .args(["sleep", "30"])
            .spawn()
            .expect("flock(1) from util-linux");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while claim_probe(&lock) {
            assert!(
                std::time::Instant::now() < deadline,
                "flock never took the lock"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(
            !claim(&dir, 20000).unwrap(),
            "a port another process holds was claimed"
        );
        holder.kill().unwrap();
        holder.wait().unwrap();
        // `sleep`, forked by flock, closes its inherited copy of the lock's descriptor before it
        // runs; on a loaded machine it may not have yet when flock is killed.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !claim(&dir, 20000).unwrap() {
            assert!(
                std::time::Instant::now() < deadline,
                "the claim outlived its holder"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // Held now by this process: a second claim here is refused too.
        assert!(!claim(&dir, 20000).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Whether the lock file is free right now (taken and released at once).
    fn claim_probe(lock: &std::path::Path) -> bool {
        let Ok(file) = std::fs::File::open(lock) else {
            return true;
        };
        try_lock_exclusive(&file).unwrap()
    }

    #[test]
    fn a_listener_of_another_process_is_named_and_ours_is_accepted() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let me = std::process::id();
        check_owned(port, me, "this test").unwrap();
        // Seen from a server that is not this process (no process has pid u32::MAX), this
        // process is the stranger on the port.
        let error = check_owned(port, u32::MAX, "the server")
            .unwrap_err()
            .to_string();
        assert!(error.contains(&format!("pid {me}")), "{error}");
        drop(listener);
        let error = check_owned(port, me, "the server").unwrap_err().to_string();
        assert!(error.contains("nothing listens"), "{error}");
    }
}
