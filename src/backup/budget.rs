//! The read-ahead budget: how many bytes of new chunks' plaintext may be read and not yet
//! encrypted.
//!
//! The reader takes from it before it hands a chunk on, the packer gives back what it
//! finds already stored, and the encryption pool gives back what it has encrypted. So the
//! reader reads ahead while a pack is sealed or the pool is busy, but plaintext in memory
//! stays bounded whatever the chunks' sizes (a bound on the number of messages would stall
//! on small files and allow gigabytes of large chunks).

use std::sync::{Condvar, Mutex};
use std::time::Duration;

use crate::cancel::Cancel;

/// How often a wait looks at the cancellation flag.
const WAKE: Duration = Duration::from_millis(50);

/// Bytes in flight, bounded by `limit` (one chunk larger than the limit may always go).
pub(super) struct Budget {
    used: Mutex<u64>,
    freed: Condvar,
    limit: u64,
    cancel: Cancel,
}

impl Budget {
    pub(super) fn new(limit: u64, cancel: Cancel) -> Self {
        Budget {
            used: Mutex::new(0),
            freed: Condvar::new(),
            limit,
            cancel,
        }
    }

    /// Waits until `bytes` more may be in flight; `false` if the run was cancelled.
    pub(super) fn acquire(&self, bytes: u64) -> bool {
        let Ok(mut used) = self.used.lock() else {
            return false;
        };
        while *used > 0 && used.saturating_add(bytes) > self.limit {
            if self.cancel.is_cancelled() {
                return false;
            }
            used = match self.freed.wait_timeout(used, WAKE) {
                Ok((u, _)) => u,
                Err(_) => return false,
            };
        }
        *used = used.saturating_add(bytes);
        !self.cancel.is_cancelled()
    }

    /// Takes `bytes` if that needs no wait; `false` (and nothing taken) otherwise.
    pub(super) fn try_acquire(&self, bytes: u64) -> bool {
        let Ok(mut used) = self.used.lock() else {
            return false;
        };
        if *used > 0 && used.saturating_add(bytes) > self.limit {
            return false;
        }
        *used = used.saturating_add(bytes);
        true
    }

    /// Gives `bytes` back.
    pub(super) fn release(&self, bytes: u64) {
        if let Ok(mut used) = self.used.lock() {
            *used = used.saturating_sub(bytes);
            self.freed.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_for_room_and_never_for_a_cancelled_run() {
        let budget = std::sync::Arc::new(Budget::new(100, Cancel::new()));
        assert!(
            budget.acquire(500),
            "a chunk over the limit goes when nothing else is in flight"
        );
        let waiter = {
            let budget = budget.clone();
            std::thread::spawn(move || budget.acquire(10))
        };
        std::thread::sleep(Duration::from_millis(100));
        assert!(!waiter.is_finished(), "it waits while 500 are in flight");
        budget.release(500);
        assert!(waiter.join().unwrap());
        assert!(budget.acquire(90), "10 + 90 fit the limit");
        budget.release(100);
        let cancel = Cancel::new();
        let budget = std::sync::Arc::new(Budget::new(100, cancel.clone()));
        assert!(budget.acquire(100));
        let waiter = {
            let budget = budget.clone();
            std::thread::spawn(move || budget.acquire(10))
        };
        cancel.cancel();
        assert!(!waiter.join().unwrap(), "a cancelled run stops waiting");
    }
}
