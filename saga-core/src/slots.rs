//! The orchestrator's slots: one per saga being driven, `Config::concurrency` in all.

use std::sync::Arc;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// The slots, and a signal raised each time one is given back.
///
/// The dispatcher waits for that signal rather than queueing for a permit itself: a queued
/// waiter would be handed every freed permit first, so a saga started meanwhile would find no
/// slot to be driven from at once, and would wait to be claimed instead.
#[derive(Debug)]
pub(crate) struct Slots {
    permits: Arc<Semaphore>,
    freed: Arc<Notify>,
}

impl Slots {
    pub(crate) fn new(count: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(count.max(1))),
            freed: Arc::new(Notify::new()),
        }
    }

    /// A free slot, if there is one.
    pub(crate) fn try_take(&self) -> Option<Slot> {
        let permit = Arc::clone(&self.permits).try_acquire_owned().ok()?;
        Some(Slot {
            permit: Some(permit),
            freed: Arc::clone(&self.freed),
        })
    }

    /// How many slots are free now.
    pub(crate) fn free(&self) -> usize {
        self.permits.available_permits()
    }

    /// Returns once a slot has been given back since the last call returned (at once if one
    /// was given back meanwhile; now and then without one, so callers check `free` again).
    pub(crate) async fn given_back(&self) {
        self.freed.notified().await;
    }
}

/// A taken slot; dropping it gives it back.
#[derive(Debug)]
pub(crate) struct Slot {
    permit: Option<OwnedSemaphorePermit>,
    freed: Arc<Notify>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        // The permit goes back before the signal, so whoever wakes finds it free.
        drop(self.permit.take());
        self.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_slot_given_back_is_free_to_take_at_once_and_signalled() {
        let slots = Slots::new(1);
        let taken = slots.try_take();
        assert!(taken.is_some());
        assert!(slots.try_take().is_none());
        let waiter = async {
            slots.given_back().await;
            slots.free()
        };
        let (free, ()) = tokio::join!(waiter, async { drop(taken) });
        assert_eq!(free, 1);
        // The waiter did not take the slot: a start can.
        assert!(slots.try_take().is_some());
    }
}
