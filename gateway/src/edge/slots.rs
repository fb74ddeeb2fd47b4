//! Connection slots: at most `limits.max_connections` connections held or being admitted
//! at once. A [`Slot`] is claimed before admission and released when its connection's
//! cleanup is done.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The node's connection slots.
#[derive(Debug)]
pub(crate) struct Slots {
    max: usize,
    taken: AtomicUsize,
}

/// A claim on one slot, released on drop.
#[derive(Debug)]
pub(crate) struct Slot(Arc<Slots>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.taken.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Slots {
    pub fn new(max: usize) -> Self {
        Slots {
            max,
            taken: AtomicUsize::new(0),
        }
    }

    /// The most slots.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Claims a slot, or `None` at capacity.
    pub fn try_claim(self: &Arc<Self>) -> Option<Slot> {
        self.taken
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(self.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_and_come_back_on_drop() {
        let slots = Arc::new(Slots::new(2));
        let a = slots.try_claim().unwrap();
        let _b = slots.try_claim().unwrap();
        assert!(slots.try_claim().is_none());
        drop(a);
        assert!(slots.try_claim().is_some());
    }
}
