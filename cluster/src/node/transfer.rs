//! The node-wide budget for message bytes in transfer: what SMTP sessions hold of messages
//! being received and not yet stored. Thousands of clients each sending the largest message
//! at once would otherwise add up to more memory than the machine has; with the budget, the
//! message that would pass it is answered 451 4.3.1 (try again later) and dropped as it
//! arrives. Sessions reserve in chunks, so the shared counter moves once per chunk, not per
//! read.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Granularity of reservations.
pub const CHUNK_BYTES: usize = 256 << 10;

#[derive(Clone, Debug)]
pub struct TransferBudget {
    used: Arc<AtomicUsize>,
    max: usize,
}

/// What one session has reserved; dropping it gives the bytes back.
#[derive(Debug)]
pub struct Reservation {
    used: Arc<AtomicUsize>,
    held: usize,
}

impl TransferBudget {
    pub fn new(max: usize) -> Self {
        Self {
            used: Arc::new(AtomicUsize::new(0)),
            max,
        }
    }

    /// An empty reservation for one session.
    pub fn reservation(&self) -> Reservation {
        Reservation {
            used: self.used.clone(),
            held: 0,
        }
    }

    /// Bytes reserved on the node now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Makes `reservation` cover `bytes` (growing in chunks, shrinking when the session holds
    /// less); false if the budget cannot cover it (the reservation is left as it was).
    pub fn cover(&self, reservation: &mut Reservation, bytes: usize) -> bool {
        let wanted = bytes.div_ceil(CHUNK_BYTES) * CHUNK_BYTES;
        if wanted <= reservation.held {
            if wanted + CHUNK_BYTES <= reservation.held {
                self.used
                    .fetch_sub(reservation.held - wanted, Ordering::Relaxed);
                reservation.held = wanted;
            }
            return true;
        }
        let more = wanted - reservation.held;
        let taken = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(more).filter(|&total| total <= self.max)
            });
        if taken.is_ok() {
            reservation.held = wanted;
        }
        taken.is_ok()
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.used.fetch_sub(self.held, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_share_the_budget_and_give_it_back() {
        let budget = TransferBudget::new(4 * CHUNK_BYTES);
        let (mut a, mut b) = (budget.reservation(), budget.reservation());
        assert!(budget.cover(&mut a, 3 * CHUNK_BYTES - 1));
        assert_eq!(budget.used(), 3 * CHUNK_BYTES);
        assert!(!budget.cover(&mut b, 2 * CHUNK_BYTES));
        assert!(budget.cover(&mut b, CHUNK_BYTES));
        assert!(!budget.cover(&mut a, 4 * CHUNK_BYTES));
        // A message stored: the session holds little again and gives the rest back.
        assert!(budget.cover(&mut a, 10));
        assert_eq!(budget.used(), 2 * CHUNK_BYTES);
        drop(a);
        drop(b);
        assert_eq!(budget.used(), 0);
    }
}
