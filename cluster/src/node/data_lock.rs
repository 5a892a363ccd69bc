//! One node per data directory: each is locked (`flock` on `<dir>/porcupine.lock`) for as long
//! as the node runs, so a second node started on the same directories, or `porcupine fsck`
//! while a node writes them, is refused with a clear message instead of two writers sharing
//! one log. The kernel drops the lock when the process ends, however it ends.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

/// `flock(2)` without waiting: `Ok(true)` taken, `Ok(false)` another holds it.
fn try_flock(file: &File, exclusive: bool) -> std::io::Result<bool> {
    let operation = if exclusive {
        libc::LOCK_EX
    } else {
        libc::LOCK_SH
    } | libc::LOCK_NB;
    // SAFETY: flock on a descriptor this function borrows; no memory is passed.
    if unsafe { libc::flock(file.as_raw_fd(), operation) } == 0 {
        return Ok(true);
    }
    let error = std::io::Error::last_os_error();
    if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(error)
    }
}

/// The lock file inside a data directory.
pub const LOCK_FILE: &str = "porcupine.lock";

/// Held locks; dropping them unlocks.
#[derive(Debug)]
pub struct DataLocks {
    _files: Vec<File>,
}

/// Whether a running process holds `dir`'s lock (`Ok(false)` if it has no lock file).
pub fn is_locked(dir: &Path) -> std::io::Result<bool> {
    let path = dir.join(LOCK_FILE);
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    // A shared lock taken (and dropped with the file) means no process holds it exclusively.
    try_flock(&file, false).map(|taken| !taken)
}

/// Locks every directory, waiting up to `wait` for a lock that a stopping process still
/// holds; the error names the directory.
pub fn lock_all<'a>(
    dirs: impl IntoIterator<Item = &'a Path>,
    wait: Duration,
) -> Result<DataLocks, String> {
    let mut files = Vec::new();
    for dir in dirs {
        let path = dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let started = Instant::now();
        loop {
            match try_flock(&file, true) {
                Ok(true) => break,
                Ok(false) if started.elapsed() < wait => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Ok(false) => {
                    return Err(format!(
                        "data directory {} is in use by another porcupine process (a node, or \
                         `porcupine fsck`): one process per data directory",
                        dir.display()
                    ))
                }
                Err(e) => return Err(format!("cannot lock {}: {e}", path.display())),
            }
        }
        files.push(file);
    }
    Ok(DataLocks { _files: files })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_locked_directory_is_refused_and_freed_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!is_locked(dir.path()).unwrap());
        let held = lock_all([dir.path()], Duration::ZERO).unwrap();
        assert!(is_locked(dir.path()).unwrap());
        let refused = lock_all([dir.path()], Duration::from_millis(100)).unwrap_err();
        assert!(refused.contains("in use by another porcupine"), "{refused}");
        drop(held);
        assert!(!is_locked(dir.path()).unwrap());
        lock_all([dir.path()], Duration::ZERO).unwrap();
    }
}
