//! Single-threaded wakeups: a [`Notify`] that wakes a loop when work arrives, and a
//! [`Completion`] shared by every append of one group-commit batch.
//!
//! Everything in a shard runs on one executor thread, so these need no atomics or locks.

use std::cell::{Cell, RefCell};
use std::future::{poll_fn, Future};
use std::task::{Poll, Waker};

/// Wakes every waiter. Single-threaded, so a waiter that checked its condition and then
/// waits cannot miss a notification sent in between: nothing runs in between.
#[derive(Debug, Default)]
pub struct Notify {
    generation: Cell<u64>,
    waiters: RefCell<Vec<Waker>>,
}

impl Notify {
    pub fn notify(&self) {
        self.generation.set(self.generation.get().wrapping_add(1));
        for waker in self.waiters.borrow_mut().drain(..) {
            waker.wake();
        }
    }

    /// Resolves at the next `notify` after this call.
    pub async fn notified(&self) {
        let seen = self.generation.get();
        poll_fn(|cx| {
            if self.generation.get() != seen {
                Poll::Ready(())
            } else {
                self.waiters.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

/// Waits for whichever of two futures finishes first (the other is dropped).
pub(crate) async fn either<A: Future, B: Future>(a: A, b: B) {
    let (mut a, mut b) = (std::pin::pin!(a), std::pin::pin!(b));
    poll_fn(|cx| {
        if a.as_mut().poll(cx).is_ready() || b.as_mut().poll(cx).is_ready() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await
}

/// The outcome of one batch, awaited by each of its appends.
#[derive(Debug)]
pub struct Completion<T: Clone> {
    outcome: RefCell<Option<T>>,
    waiters: RefCell<Vec<Waker>>,
}

impl<T: Clone> Default for Completion<T> {
    fn default() -> Self {
        Self {
            outcome: RefCell::new(None),
            waiters: RefCell::new(Vec::new()),
        }
    }
}

impl<T: Clone> Completion<T> {
    pub fn complete(&self, outcome: T) {
        *self.outcome.borrow_mut() = Some(outcome);
        for waker in self.waiters.borrow_mut().drain(..) {
            waker.wake();
        }
    }

    pub async fn wait(&self) -> T {
        poll_fn(|cx| match &*self.outcome.borrow() {
            Some(outcome) => Poll::Ready(outcome.clone()),
            None => {
                self.waiters.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}
