//! Where the engine's background tasks run and how they wait: glommio's executor (the node,
//! every test on a real disk), or a [`PlainExecutor`] — single-threaded, no io_uring, virtual
//! time — for tests of engine logic over [`crate::memory_storage::MemoryStorage`].
//!
//! The engine spawns its writer, spare-segment preparation, checkpoints and compaction with
//! [`spawn_local`] and sleeps with [`sleep`]: on a thread running a [`PlainExecutor`] these go
//! to it, everywhere else to glommio, exactly as before (a thread-local check, nothing more).
//! [`crate::storage::DmaStorage`] and [`crate::throttle`] still need glommio.
//!
//! A [`PlainExecutor`]'s clock stands still while any task can run and jumps to the next timer
//! when none can, so timed loops (compaction's interval, its rate limit, a commit window) take
//! no wall time. Seeded, it picks the next task to poll at random among the ready ones, giving
//! other interleavings from run to run; [`PlainExecutor::run_for`] stops after a number of
//! polls, and dropping the executor then drops every task where it stood, which is what a
//! power cut does to a process.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

type Task = Pin<Box<dyn Future<Output = ()>>>;

thread_local! {
    static CURRENT: RefCell<Option<Rc<Core>>> = const { RefCell::new(None) };
}

fn current() -> Option<Rc<Core>> {
    CURRENT.with(|c| c.borrow().clone())
}

/// Spawns a detached task on this thread's executor: a [`PlainExecutor`] if one is running
/// here, glommio otherwise (which panics outside a glommio executor, as it always did).
pub(crate) fn spawn_local(future: impl Future<Output = ()> + 'static) {
    match current() {
        Some(core) => core.spawn(Box::pin(future)),
        None => {
            glommio::spawn_local(future).detach();
        }
    }
}

/// Sleeps on this thread's executor's clock (virtual time on a [`PlainExecutor`]).
pub(crate) async fn sleep(duration: Duration) {
    if current().is_some() {
        Sleep {
            duration,
            timer: None,
        }
        .await
    } else {
        glommio::timer::sleep(duration).await;
    }
}

/// Task ids woken and not yet polled, in wake order (shared with wakers, which must be `Send`).
#[derive(Debug, Default)]
struct ReadyQueue {
    order: VecDeque<u64>,
    queued: HashSet<u64>,
}

#[derive(Debug)]
struct TaskWaker {
    id: u64,
    ready: Arc<Mutex<ReadyQueue>>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        // A poisoned lock only means a task panicked while waking: the queue is still sound.
        let mut ready = self.ready.lock().unwrap_or_else(|e| e.into_inner());
        if ready.queued.insert(self.id) {
            ready.order.push_back(self.id);
        }
    }
}

/// The main future's task id.
const MAIN: u64 = 0;

struct Core {
    tasks: RefCell<HashMap<u64, Task>>,
    ready: Arc<Mutex<ReadyQueue>>,
    /// (deadline, timer id) → the waker of the sleep that set it.
    timers: RefCell<BTreeMap<(Duration, u64), Waker>>,
    now: Cell<Duration>,
    next_id: Cell<u64>,
    rng: Cell<Option<u64>>,
    polls: Cell<u64>,
}

impl Core {
    fn id(&self) -> u64 {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        id
    }

    fn waker(&self, id: u64) -> Waker {
        Waker::from(Arc::new(TaskWaker {
            id,
            ready: self.ready.clone(),
        }))
    }

    fn spawn(&self, task: Task) {
        let id = self.id();
        self.tasks.borrow_mut().insert(id, task);
        self.waker(id).wake();
    }

    /// The next ready task id: the oldest, or a seeded random one.
    fn next_ready(&self) -> Option<u64> {
        let mut ready = self.ready.lock().unwrap_or_else(|e| e.into_inner());
        let at = match self.rng.get() {
            Some(state) if ready.order.len() > 1 => {
                let next = splitmix(state);
                self.rng.set(Some(next));
                (next % ready.order.len() as u64) as usize
            }
            _ => 0,
        };
        let id = ready.order.remove(at)?;
        ready.queued.remove(&id);
        Some(id)
    }

    /// Moves the clock to the earliest timer and wakes every sleep due then; false if none.
    fn advance(&self) -> bool {
        let mut timers = self.timers.borrow_mut();
        let Some((&(deadline, _), _)) = timers.iter().next() else {
            return false;
        };
        self.now.set(self.now.get().max(deadline));
        let later = timers.split_off(&(deadline, u64::MAX));
        let due = std::mem::replace(&mut *timers, later);
        drop(timers);
        for waker in due.into_values() {
            waker.wake();
        }
        true
    }
}

fn splitmix(state: u64) -> u64 {
    let mut z = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A single-threaded executor with virtual time; see the [module documentation](self).
///
/// While [`PlainExecutor::run`] or [`PlainExecutor::run_for`] runs, the engine's tasks spawned
/// on this thread go to it. Dropping it drops every task it still holds.
pub struct PlainExecutor {
    core: Rc<Core>,
    /// Virtual time after which a run that has not finished is taken for a hang.
    patience: Duration,
}

impl std::fmt::Debug for PlainExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlainExecutor")
            .field("now", &self.core.now.get())
            .field("tasks", &self.core.tasks.borrow().len())
            .field("polls", &self.core.polls.get())
            .finish()
    }
}

impl Default for PlainExecutor {
    fn default() -> Self {
        Self::new()
    }
}

impl PlainExecutor {
    /// Polls ready tasks oldest first.
    pub fn new() -> Self {
        Self {
            core: Rc::new(Core {
                tasks: RefCell::new(HashMap::new()),
                ready: Arc::default(),
                timers: RefCell::new(BTreeMap::new()),
                now: Cell::new(Duration::ZERO),
                next_id: Cell::new(MAIN + 1),
                rng: Cell::new(None),
                polls: Cell::new(0),
            }),
            patience: Duration::from_secs(24 * 3600),
        }
    }

    /// Polls a random ready task each time, chosen by `seed`: the same seed, the same order.
    pub fn seeded(seed: u64) -> Self {
        let executor = Self::new();
        executor.core.rng.set(Some(splitmix(seed)));
        executor
    }

    /// Spawns a detached task (it runs during the next `run`).
    pub fn spawn(&self, future: impl Future<Output = ()> + 'static) {
        self.core.spawn(Box::pin(future));
    }

    /// The virtual time: how long this executor's timers have run.
    pub fn now(&self) -> Duration {
        self.core.now.get()
    }

    /// Task polls so far (the unit of [`PlainExecutor::run_for`]'s budget).
    pub fn polls(&self) -> u64 {
        self.core.polls.get()
    }

    /// Runs `future` and every spawned task until `future` completes.
    ///
    /// # Panics
    /// If nothing can run, no timer is set and `future` is not done (a hang), or a day of
    /// virtual time passes; and if a task panics.
    pub fn run<T>(&self, future: impl Future<Output = T>) -> T {
        match self.run_for(future, u64::MAX) {
            Some(value) => value,
            None => unreachable!("an unbounded run ends only when its future does"),
        }
    }

    /// Like [`PlainExecutor::run`], but stops after `polls` task polls; `None` if `future`
    /// had not completed by then (the tasks stay where they were, to be dropped or resumed).
    pub fn run_for<T>(&self, future: impl Future<Output = T>, polls: u64) -> Option<T> {
        let _entered = Entered::new(self.core.clone());
        let mut future = std::pin::pin!(future);
        let main_waker = self.core.waker(MAIN);
        main_waker.wake_by_ref();
        let budget_end = self.core.polls.get().saturating_add(polls);
        let started = self.core.now.get();
        loop {
            let Some(id) = self.core.next_ready() else {
                if self.core.now.get().saturating_sub(started) > self.patience {
                    panic!(
                        "PlainExecutor: no progress within {:?} of virtual time",
                        self.patience
                    );
                }
                if !self.core.advance() {
                    panic!("PlainExecutor: every task waits and no timer is set: a hang");
                }
                continue;
            };
            if self.core.polls.get() >= budget_end {
                // Not polled: put it back for a later run.
                self.core.waker(id).wake();
                return None;
            }
            self.core.polls.set(self.core.polls.get() + 1);
            if id == MAIN {
                let mut cx = Context::from_waker(&main_waker);
                if let Poll::Ready(value) = future.as_mut().poll(&mut cx) {
                    return Some(value);
                }
                continue;
            }
            let Some(mut task) = self.core.tasks.borrow_mut().remove(&id) else {
                continue; // woken after it finished
            };
            let waker = self.core.waker(id);
            let mut cx = Context::from_waker(&waker);
            if task.as_mut().poll(&mut cx).is_pending() {
                self.core.tasks.borrow_mut().insert(id, task);
            }
        }
    }
}

impl Drop for PlainExecutor {
    fn drop(&mut self) {
        // Tasks may own timers and wakers of this core: take them out before dropping them.
        let tasks = std::mem::take(&mut *self.core.tasks.borrow_mut());
        drop(tasks);
        self.core.timers.borrow_mut().clear();
    }
}

/// Makes a core this thread's executor while a run lasts (restoring what was there before).
struct Entered {
    previous: Option<Rc<Core>>,
}

impl Entered {
    fn new(core: Rc<Core>) -> Self {
        let previous = CURRENT.with(|c| c.borrow_mut().replace(core));
        Self { previous }
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        let previous = self.previous.take();
        CURRENT.with(|c| *c.borrow_mut() = previous);
    }
}

/// A sleep on a [`PlainExecutor`]'s clock.
struct Sleep {
    duration: Duration,
    timer: Option<(Weak<Core>, (Duration, u64))>,
}

impl Future for Sleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let Some(core) = current() else {
            // Polled outside its executor (it was created inside one): never wakes there.
            return Poll::Pending;
        };
        let key = match &self.timer {
            Some((_, key)) => *key,
            None => {
                let key = (core.now.get().saturating_add(self.duration), core.id());
                self.timer = Some((Rc::downgrade(&core), key));
                key
            }
        };
        if core.now.get() >= key.0 {
            self.timer = None;
            core.timers.borrow_mut().remove(&key);
            return Poll::Ready(());
        }
        core.timers.borrow_mut().insert(key, cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some((core, key)) = self.timer.take() {
            if let Some(core) = core.upgrade() {
                if let Ok(mut timers) = core.timers.try_borrow_mut() {
                    timers.remove(&key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_timers_and_a_budget() {
        let executor = PlainExecutor::seeded(7);
        let log = Rc::new(RefCell::new(Vec::new()));
        let out = executor.run({
            let log = log.clone();
            async move {
                for i in 0..3u64 {
                    let log = log.clone();
                    spawn_local(async move {
                        sleep(Duration::from_secs(10 - i)).await;
                        log.borrow_mut().push(i);
                    });
                }
                sleep(Duration::from_secs(20)).await;
                42
            }
        });
        assert_eq!(out, 42);
        assert_eq!(
            *log.borrow(),
            vec![2, 1, 0],
            "timers fire in deadline order"
        );
        assert_eq!(executor.now(), Duration::from_secs(20));
        // A run stopped by its budget leaves the rest undone.
        let stopped = executor.run_for(sleep(Duration::from_secs(1)), 0);
        assert!(stopped.is_none());
    }

    #[test]
    #[should_panic(expected = "a hang")]
    fn a_hang_is_reported() {
        PlainExecutor::new().run(std::future::pending::<()>());
    }
}
