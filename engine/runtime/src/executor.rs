//! Starting the thread-per-core executors, with one clear message when io_uring or locked
//! memory is not available instead of a panic deep inside the runtime.

use std::time::Duration;

use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement as CpuPlacement};

use crate::{Result, RuntimeError};

/// glommio refuses to start below this much lockable memory.
const MEMLOCK_MIN_BYTES: u64 = 512 << 10;
/// Registered I/O memory per executor never exceeds this.
const IO_MEMORY_MAX_BYTES: u64 = 4 << 20;

/// The soft `RLIMIT_MEMLOCK` of this process, in bytes (`u64::MAX` if unlimited).
pub fn memlock_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) };
    if rc != 0 || limit.rlim_cur == libc::RLIM_INFINITY {
        u64::MAX
    } else {
        limit.rlim_cur
    }
}

/// How much registered I/O memory each of `executors` gets so all of them fit the limit.
pub fn io_memory_per_executor(executors: usize) -> Result<usize> {
    let limit = memlock_limit();
    if limit < MEMLOCK_MIN_BYTES {
        return Err(RuntimeError(format!(
            "locked-memory limit is {} KiB; io_uring needs at least {} KiB. Raise it with \
             `ulimit -l {}` (or LimitMEMLOCK= in the systemd unit) and start again.",
            limit / 1024,
            MEMLOCK_MIN_BYTES / 1024,
            MEMLOCK_MIN_BYTES / 1024 * 16
        )));
    }
    // Half the limit for registered buffers; the rings themselves need the rest.
    let share = (limit / 2 / executors.max(1) as u64).min(IO_MEMORY_MAX_BYTES);
    Ok(share.max(64 << 10) as usize)
}

/// An executor builder for `core` of `executors`, pinned when `pin` is set.
pub fn executor_builder(
    name: &str,
    core: usize,
    executors: usize,
    pin: bool,
) -> Result<LocalExecutorBuilder> {
    let placement = if pin {
        CpuPlacement::Fixed(core)
    } else {
        CpuPlacement::Unbound
    };
    Ok(LocalExecutorBuilder::new(placement)
        .name(name)
        .io_memory(io_memory_per_executor(executors)?)
        .preempt_timer(Duration::from_millis(10)))
}

/// Starts an executor from `builder` running `f`, its thread guarded against lost wakeups
/// ([`crate::wakeup`]). Every executor of the project starts here.
pub fn spawn<T, F, Fut>(builder: LocalExecutorBuilder, f: F) -> Result<ExecutorJoinHandle<T>>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T> + 'static,
{
    builder
        .spawn(move || async move {
            let _guard = crate::wakeup::register();
            f().await
        })
        .map_err(explain_start_failure)
}

/// Turns an executor start-up failure into advice an operator can act on.
pub fn explain_start_failure(error: impl std::fmt::Display) -> RuntimeError {
    let text = error.to_string();
    let hint = if text.contains("memlock") || text.contains("MemLock") || text.contains("ENOMEM") {
        "raise the locked-memory limit (`ulimit -l`, or LimitMEMLOCK= for a systemd unit)"
    } else if text.contains("ENOSYS") || text.contains("EPERM") || text.contains("not permitted") {
        "io_uring is unavailable: use Linux 5.8 or newer, and allow io_uring_setup in the \
         container's seccomp profile (or set kernel.io_uring_disabled=0)"
    } else {
        "check that io_uring is available (Linux 5.8+, kernel.io_uring_disabled=0) and the locked-memory limit"
    };
    RuntimeError(format!("cannot start the I/O runtime ({text}): {hint}"))
}

/// Raises the open-file limit to its hard maximum: each segment holds two descriptors (a
/// direct one for writes, a buffered one for reads). Returns the new soft limit.
pub fn raise_fd_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        if limit.rlim_cur < limit.rlim_max {
            let wanted = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) == 0 {
                return wanted.rlim_cur;
            }
        }
    }
    limit.rlim_cur
}

/// Runs `f` on a single, unpinned executor and returns its output: for tools and tests.
pub fn run_local<T, F, Fut>(f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T> + 'static,
{
    raise_fd_limit();
    let builder = executor_builder("porcupine-local", 0, 1, false)?;
    let handle = spawn(builder, f)?;
    handle
        .join()
        .map_err(|e| RuntimeError(format!("executor stopped abnormally: {e}")))
}
