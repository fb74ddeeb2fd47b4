//! Slots: a bound on how many of something the public listener holds at once. Two are
//! used: connections held or being admitted (`limits.max_connections`; a [`Slot`] is
//! claimed before admission and released when its connection's cleanup is done), and
//! connections that are not WebSockets yet (`limits.max_pending_connections`; claimed at
//! accept, released once admitted or when the connection ends).
//!
//! Refusals at capacity come in floods when someone tries to fill the listener, so they
//! are counted here and reported at most once per [`REPORT_EVERY`] ([`Slots::refused`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The shortest time between two reports of refusals at capacity.
pub(crate) const REPORT_EVERY: Duration = Duration::from_secs(10);

/// One bounded set of slots.
#[derive(Debug)]
pub(crate) struct Slots {
    max: usize,
    taken: AtomicUsize,
    refusals: Mutex<Refusals>,
}

/// Refusals not reported yet, and when the last report was.
#[derive(Debug, Default)]
struct Refusals {
    unreported: u64,
    last_report: Option<Instant>,
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
            refusals: Mutex::new(Refusals::default()),
        }
    }

    /// The most slots.
    pub fn max(&self) -> usize {
        self.max
    }

    /// How many slots are claimed now.
    pub fn taken(&self) -> usize {
        self.taken.load(Ordering::Acquire)
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

    /// Counts one refusal at capacity. When a report is due (the first refusal, then at
    /// most once per [`REPORT_EVERY`]), returns how many refusals it covers.
    pub fn refused(&self) -> Option<u64> {
        self.refused_at(Instant::now())
    }

    fn refused_at(&self, now: Instant) -> Option<u64> {
        let mut refusals = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
        refusals.unreported += 1;
        let due = refusals
            .last_report
            .is_none_or(|last| now.saturating_duration_since(last) >= REPORT_EVERY);
        if !due {
            return None;
        }
        refusals.last_report = Some(now);
        Some(std::mem::take(&mut refusals.unreported))
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

    #[test]
    fn a_flood_of_refusals_is_reported_once_per_interval() {
        let slots = Slots::new(1);
        let start = Instant::now();
        assert_eq!(slots.refused_at(start), Some(1), "the first one at once");
        for _ in 0..1000 {
            assert_eq!(slots.refused_at(start + Duration::from_secs(1)), None);
        }
        assert_eq!(
            slots.refused_at(start + REPORT_EVERY),
            Some(1001),
            "then all of them in one report"
        );
        assert_eq!(slots.refused_at(start + REPORT_EVERY), None);
    }
}
