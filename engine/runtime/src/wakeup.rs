//! A guard against lost wakeups in the I/O runtime: every executor thread is interrupted by a
//! no-op signal every [`KICK_EVERY`], so a thread asleep in `io_uring_enter` re-examines its
//! rings at least that often.
//!
//! Why: glommio 0.9 sleeps on its main ring with a poll on its latency ring's descriptor, and
//! on this kernel (6.x, a KVM guest) a completion sometimes reaches neither: the thread stays
//! parked although its I/O is done (`engine/tests/replicated.rs` ran into it about once in six
//! runs under CPU contention; a debugger attaching to the stuck process released it, which is
//! what the signal does). glommio's upstream reports of the same hang are unresolved, so
//! the guard lives here, at the runtime's edge. The handler does nothing and is installed
//! with `SA_RESTART`: interrupted system calls restart, and glommio treats `EINTR` from its
//! ring wait as a reason to poll again. Cost: a few microseconds per thread per kick.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once};
use std::time::Duration;

/// How long a lost wakeup can stall an executor at most.
pub const KICK_EVERY: Duration = Duration::from_millis(20);

/// Executor threads to kick: (registration key, kernel thread id).
static THREADS: Mutex<Vec<(u64, libc::pid_t)>> = Mutex::new(Vec::new());
static NEXT_KEY: AtomicU64 = AtomicU64::new(0);
static START: Once = Once::new();

fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN() + 2
}

extern "C" fn ignore(_signal: libc::c_int) {}

/// Keeps the calling thread on the kick list while it lives.
#[derive(Debug)]
pub struct Registration {
    key: u64,
}

/// Puts the calling (executor) thread on the kick list; starts the kicker on first use.
pub fn register() -> Registration {
    START.call_once(start_kicker);
    let key = NEXT_KEY.fetch_add(1, Ordering::Relaxed);
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    threads().push((key, tid));
    Registration { key }
}

impl Drop for Registration {
    fn drop(&mut self) {
        // Under the lock, so no kick can reach this thread's id once it is gone.
        threads().retain(|(key, _)| *key != self.key);
    }
}

fn threads() -> std::sync::MutexGuard<'static, Vec<(u64, libc::pid_t)>> {
    // The list stays consistent whatever a panicking holder did: it only pushes and retains.
    THREADS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn start_kicker() {
    // SAFETY: a handler that does nothing is async-signal-safe; the struct is fully set.
    let installed = unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = ignore as extern "C" fn(libc::c_int) as usize;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(kick_signal(), &action, std::ptr::null_mut()) == 0
    };
    if !installed {
        tracing::warn!("could not install the executor wakeup guard's signal handler");
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("porcupine-kick".into())
        .spawn(|| loop {
            std::thread::sleep(KICK_EVERY);
            // SAFETY: getpid has no preconditions.
            let pid = unsafe { libc::getpid() };
            for (_, tid) in threads().iter() {
                // SAFETY: tgkill with a thread of this process that is still registered
                // (registrations end under the same lock, before the thread exits).
                unsafe {
                    libc::syscall(libc::SYS_tgkill, pid, *tid, kick_signal());
                }
            }
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, "could not start the executor wakeup guard");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kicks_interrupt_a_blocked_thread_without_harm() {
        let _registration = register();
        // A blocking read restarts after each kick (SA_RESTART) and still gets its data.
        let mut fds = [0; 2];
        // SAFETY: pipe writes two descriptors into the array we pass.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let writer = fds[1];
        let feeder = std::thread::spawn(move || {
            std::thread::sleep(KICK_EVERY * 5);
            // SAFETY: writing one byte from a live buffer to our pipe.
            unsafe { libc::write(writer, b"x".as_ptr().cast(), 1) }
        });
        let mut byte = [0u8; 1];
        // SAFETY: reading into a live one-byte buffer from our pipe.
        let n = unsafe { libc::read(fds[0], byte.as_mut_ptr().cast(), 1) };
        assert_eq!(n, 1);
        assert_eq!(&byte, b"x");
        assert_eq!(feeder.join().ok(), Some(1));
        // SAFETY: closing our own descriptors.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
        assert!(threads().iter().any(|(key, _)| *key == _registration.key));
    }
}
