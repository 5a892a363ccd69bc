//! porcupine's benchmarks and experiments (see `bench/README.md`); each binary in `src/bin`
//! measures one thing against a baseline taken in the same run and reports the ratio.
//!
//! - [`cluster`]: clusters of real `porcupine` processes on loopback addresses;
//! - [`imap_side`]: the IMAP part of `side-by-side` (porcupine's IMAP against Dovecot's);
//! - [`peers`]: private Postfix, Dovecot and smtp-sink instances to compare with;
//! - [`ports`]: free ports, and who listens on them;
//! - [`run`]: a run's directory and servers, cleaned up on every way out;
//! - [`stock`]: Postfix's `smtp-source` against a server, the shapes a stock MTA produces.

pub mod cluster;
pub mod imap_side;
pub mod peers;
pub mod ports;
pub mod run;
pub mod stock;

use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// How long a server may take to stop after SIGTERM before it gets SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// Servers to stop at the end, whatever happens: children of this process, and daemons that
/// detached (known by pid).
#[derive(Debug, Default)]
pub struct Servers {
    pub children: Vec<(String, Child)>,
    pub pids: Vec<(String, u32)>,
}

/// Whether `pid` is a live process (a zombie is not).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status();
}

impl Servers {
    /// Stops every server: SIGTERM, up to [`STOP_GRACE`] to exit, then SIGKILL. Each is
    /// stopped once; later calls find nothing to stop.
    pub fn stop_all(&mut self) {
        for (name, mut child) in self.children.drain(..) {
            signal(child.id(), "TERM");
            let deadline = Instant::now() + STOP_GRACE;
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
            eprintln!("stopped {name} (pid {})", child.id());
        }
        for (name, pid) in self.pids.drain(..) {
            signal(pid, "TERM");
            let deadline = Instant::now() + STOP_GRACE;
            while Instant::now() < deadline && alive(pid) {
                std::thread::sleep(Duration::from_millis(50));
            }
            if alive(pid) {
                signal(pid, "KILL");
                eprintln!("killed {name} (pid {pid}): it did not stop on SIGTERM");
            } else {
                eprintln!("stopped {name} (pid {pid})");
            }
        }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop_all();
    }
}
