//! One benchmark run: the directory it keeps everything in and every server it started,
//! stopped (by pid) and removed on every way out — the normal end, an error (drop), and
//! SIGINT, SIGTERM or SIGHUP (a watcher thread) — unless asked to keep the directory.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::Servers;

#[derive(Debug)]
struct State {
    servers: Servers,
    dir: PathBuf,
    keep: bool,
    finished: bool,
}

impl State {
    /// Stops every server and removes (or keeps) the directory; only the first call acts.
    fn finish(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        self.servers.stop_all();
        if self.keep {
            eprintln!("kept the run directory {}", self.dir.display());
        } else if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("could not remove {}: {e}", self.dir.display());
        }
    }
}

/// A run's directory and servers.
#[derive(Debug)]
pub struct Run {
    state: Arc<Mutex<State>>,
    dir: PathBuf,
}

fn locked(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Run {
    /// Creates a fresh directory `<parent>/<prefix>XXXX` (readable by the servers' own users)
    /// and starts watching for signals. `name` prefixes what the watcher prints.
    pub fn start(parent: &Path, prefix: &str, keep: bool, name: &'static str) -> Result<Run> {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(parent)
            .with_context(|| format!("cannot create a run directory in {}", parent.display()))?
            .keep();
        // Postfix, Dovecot and their mail users must be able to reach their files inside.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
        let state = Arc::new(Mutex::new(State {
            servers: Servers::default(),
            dir: dir.clone(),
            keep,
            finished: false,
        }));
        let mut signals = signal_hook::iterator::Signals::new([
            signal_hook::consts::SIGINT,
            signal_hook::consts::SIGTERM,
            signal_hook::consts::SIGHUP,
        ])
        .context("cannot watch for signals")?;
        let watched = state.clone();
        std::thread::spawn(move || {
            if let Some(signal) = signals.forever().next() {
                eprintln!("{name}: signal {signal}: stopping every server this run started");
                locked(&watched).finish();
                std::process::exit(128 + signal);
            }
        });
        eprintln!("run directory: {}", dir.display());
        Ok(Run { state, dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Starts `command` as a server (or any process) of this run; its pid.
    pub fn spawn(&self, name: &str, command: &mut Command) -> Result<u32> {
        let mut state = locked(&self.state);
        if state.finished {
            bail!("the run is stopping: {name} not started");
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let pid = child.id();
        eprintln!("started {name} pid {pid}");
        state.servers.children.push((name.to_owned(), child));
        Ok(pid)
    }

    /// Takes charge of a daemon this run started that detached itself (found by its pid
    /// file): it is stopped with the others.
    pub fn adopt(&self, name: &str, pid: u32) -> Result<()> {
        let mut state = locked(&self.state);
        if state.finished {
            bail!("the run is stopping");
        }
        eprintln!("started {name} pid {pid}");
        state.servers.pids.push((name.to_owned(), pid));
        Ok(())
    }

    /// Waits for the process `pid` started by [`Run::spawn`] to exit, and forgets it.
    pub fn wait(&self, pid: u32) -> Result<ExitStatus> {
        loop {
            {
                let mut state = locked(&self.state);
                let Some(at) = state
                    .servers
                    .children
                    .iter()
                    .position(|(_, child)| child.id() == pid)
                else {
                    bail!("pid {pid} is not a process of this run (or the run stopped it)");
                };
                if let Some(status) = state.servers.children[at].1.try_wait()? {
                    state.servers.children.remove(at);
                    return Ok(status);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops every server and removes the directory (unless kept). Also done on drop.
    pub fn finish(&self) {
        locked(&self.state).finish();
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        self.finish();
    }
}
