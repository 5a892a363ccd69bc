//! What every connection edge shares: reading while watching for idleness and the node's stop
//! signal, and writing what a session produced.
//!
//! Idle timeouts are kept by one watcher task per core that looks at every session once a
//! second, not by a timer per read: a per-read io_uring timeout has to be cancelled each time
//! the read completes, and those cancellations cost several percent of a busy core.

use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};
use std::task::{Poll, Waker};
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};

/// What a read produced.
#[derive(Debug)]
pub enum Read {
    Bytes(usize),
    /// The peer closed, the read failed, or the session was idle too long.
    Closed,
    /// The node is stopping (reported once per session; later reads wait for input again).
    Stop,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Idle,
    Stop,
}

/// One session's activity as the watcher sees it.
#[derive(Debug)]
pub struct SessionClock {
    /// Bumped on every read and write; the watcher compares it between ticks.
    activity: Cell<u64>,
    idle_ticks_max: u32,
    /// Set while output waits for the client to take it.
    writing: Cell<bool>,
    /// Ticks a write may wait before the session is dropped (a client that sends and never
    /// reads fills its socket buffer and would hold the session for good).
    write_ticks_max: u32,
    verdict: Cell<Option<Verdict>>,
    waker: RefCell<Option<Waker>>,
}

impl SessionClock {
    /// Marks the session active (call after writing to the peer, too).
    pub fn touch(&self) {
        self.activity.set(self.activity.get().wrapping_add(1));
    }

    fn judge(&self, verdict: Verdict) {
        if self.verdict.get() != Some(Verdict::Idle) {
            self.verdict.set(Some(verdict));
        }
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }

    /// The pending verdict; a stop is reported once.
    fn take_verdict(&self) -> Option<Read> {
        match self.verdict.get() {
            None => None,
            Some(Verdict::Idle) => Some(Read::Closed),
            Some(Verdict::Stop) => {
                self.verdict.set(None);
                Some(Read::Stop)
            }
        }
    }
}

#[derive(Debug)]
struct Watched {
    clock: Weak<SessionClock>,
    seen: u64,
    idle_ticks: u32,
}

/// The per-core watcher of every open session.
#[derive(Clone, Debug, Default)]
pub struct SessionWatch {
    inner: Rc<WatchInner>,
}

#[derive(Debug, Default)]
struct WatchInner {
    sessions: RefCell<Vec<Watched>>,
    stopped: Cell<bool>,
}

const TICK: Duration = Duration::from_secs(1);

impl SessionWatch {
    /// Registers a session that is closed after `idle` without reads or writes, or after
    /// `write` with output the client does not take.
    pub fn register(&self, idle: Duration, write: Duration) -> Rc<SessionClock> {
        let ticks = |d: Duration| {
            d.as_secs()
                .div_ceil(TICK.as_secs())
                .clamp(1, u64::from(u32::MAX)) as u32
        };
        let clock = Rc::new(SessionClock {
            activity: Cell::new(0),
            idle_ticks_max: ticks(idle),
            writing: Cell::new(false),
            write_ticks_max: ticks(write),
            verdict: Cell::new(self.inner.stopped.get().then_some(Verdict::Stop)),
            waker: RefCell::new(None),
        });
        self.inner.sessions.borrow_mut().push(Watched {
            clock: Rc::downgrade(&clock),
            seen: 0,
            idle_ticks: 0,
        });
        clock
    }

    /// Runs until the node stops: ticks idle sessions out, then tells every session to stop.
    pub async fn run(self, stop: flume::Receiver<()>) {
        loop {
            let tick = async {
                glommio::timer::sleep(TICK).await;
                true
            };
            let stopping = async {
                let _ = stop.recv_async().await;
                false
            };
            if !futures_lite::future::or(tick, stopping).await {
                break;
            }
            self.tick();
        }
        self.inner.stopped.set(true);
        for watched in self.inner.sessions.borrow_mut().drain(..) {
            if let Some(clock) = watched.clock.upgrade() {
                clock.judge(Verdict::Stop);
            }
        }
    }

    fn tick(&self) {
        self.inner.sessions.borrow_mut().retain_mut(|watched| {
            let Some(clock) = watched.clock.upgrade() else {
                return false;
            };
            let activity = clock.activity.get();
            if activity != watched.seen {
                watched.seen = activity;
                watched.idle_ticks = 0;
                return true;
            }
            watched.idle_ticks += 1;
            let limit = if clock.writing.get() {
                clock.write_ticks_max.min(clock.idle_ticks_max)
            } else {
                clock.idle_ticks_max
            };
            if watched.idle_ticks >= limit {
                clock.judge(Verdict::Idle);
                return false;
            }
            true
        });
    }
}

pub async fn read<S: futures_lite::AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut [u8],
    clock: &SessionClock,
) -> Read {
    if let Some(verdict) = clock.take_verdict() {
        return verdict;
    }
    let reading = async {
        match stream.read(buf).await {
            Ok(0) | Err(_) => Read::Closed,
            Ok(n) => Read::Bytes(n),
        }
    };
    let result = futures_lite::future::or(reading, verdict(clock)).await;
    clock.touch();
    result
}

/// Resolves when the watcher judges the session (idle, stalled, or the node stopping).
fn verdict(clock: &SessionClock) -> impl std::future::Future<Output = Read> + '_ {
    futures_lite::future::poll_fn(|cx| match clock.take_verdict() {
        Some(verdict) => Poll::Ready(verdict),
        None => {
            let mut waker = clock.waker.borrow_mut();
            if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *waker = Some(cx.waker().clone());
            }
            Poll::Pending
        }
    })
}

/// Writes pending output (counted by `count` first); false if the peer is gone.
pub async fn flush<S: futures_lite::AsyncWrite + Unpin>(
    stream: &mut S,
    out: &mut Vec<u8>,
    clock: &SessionClock,
    count: impl FnOnce(&[u8]),
) -> bool {
    if out.is_empty() {
        return true;
    }
    clock.touch();
    count(out);
    clock.writing.set(true);
    let writing = async { stream.write_all(out).await.is_ok() && stream.flush().await.is_ok() };
    // An idle verdict (the write stalled) interrupts it; a stop does not (the reply goes
    // out, and the next read reports the stop).
    let stalled = futures_lite::future::poll_fn(|cx| {
        if clock.verdict.get() == Some(Verdict::Idle) {
            return Poll::Ready(false);
        }
        let mut waker = clock.waker.borrow_mut();
        if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *waker = Some(cx.waker().clone());
        }
        Poll::Pending
    });
    let ok = futures_lite::future::or(writing, stalled).await;
    clock.writing.set(false);
    clock.touch();
    out.clear();
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_sessions_are_judged_after_their_limit_and_active_ones_are_not() {
        let watch = SessionWatch::default();
        let idle = watch.register(Duration::from_secs(3), Duration::from_secs(60));
        let busy = watch.register(Duration::from_secs(3), Duration::from_secs(60));
        for _ in 0..5 {
            busy.touch();
            watch.tick();
        }
        assert!(matches!(idle.take_verdict(), Some(Read::Closed)));
        assert!(busy.take_verdict().is_none());
        assert_eq!(watch.inner.sessions.borrow().len(), 1);
    }

    #[test]
    fn a_stop_is_reported_once_and_idleness_for_good() {
        let watch = SessionWatch::default();
        let clock = watch.register(Duration::from_secs(60), Duration::from_secs(60));
        clock.judge(Verdict::Stop);
        assert!(matches!(clock.take_verdict(), Some(Read::Stop)));
        assert!(clock.take_verdict().is_none());
        clock.judge(Verdict::Idle);
        clock.judge(Verdict::Stop);
        assert!(matches!(clock.take_verdict(), Some(Read::Closed)));
        assert!(matches!(clock.take_verdict(), Some(Read::Closed)));
    }

    #[test]
    fn a_session_whose_output_is_not_taken_is_judged_after_the_write_limit() {
        let watch = SessionWatch::default();
        let stalled = watch.register(Duration::from_secs(300), Duration::from_secs(2));
        let reading = watch.register(Duration::from_secs(300), Duration::from_secs(2));
        stalled.writing.set(true);
        for _ in 0..2 {
            watch.tick();
        }
        assert!(matches!(stalled.take_verdict(), Some(Read::Closed)));
        assert!(reading.take_verdict().is_none());
    }

    #[test]
    fn dropped_sessions_leave_the_watch() {
        let watch = SessionWatch::default();
        drop(watch.register(Duration::from_secs(1), Duration::from_secs(1)));
        watch.tick();
        assert!(watch.inner.sessions.borrow().is_empty());
    }
}
