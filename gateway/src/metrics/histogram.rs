//! A histogram that observes with two relaxed atomic adds and no lock.
//!
//! `prometheus-client`'s own `Histogram` takes a mutex on every observation; the
//! transport call of every client message observes one, so this one counts in atomics
//! instead: one per bucket and one for the sum, kept in whole units (nanoseconds for
//! durations, members for a fan-out) so that it needs no compare-and-swap loop on an
//! `f64`. It is encoded by the crate's own encoder (`MetricEncoder::encode_histogram`),
//! so the exposition format stays the crate's.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::family::MetricConstructor;
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Bucket bounds of the request and call durations, in seconds: 1 ms to 10 s.
pub(crate) const DURATION_BOUNDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Bucket bounds of the store operations, in seconds: 100 µs to 5 s.
pub(crate) const STORE_BOUNDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0,
];

/// Bucket bounds of a group send's fan-out, in members reached.
pub(crate) const FANOUT_BOUNDS: &[f64] = &[
    0.0, 1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 10000.0, 100000.0,
];

/// How many whole units one exposed unit holds: nanoseconds per second for durations.
const NANOS_PER_SECOND: u64 = 1_000_000_000;

/// What a histogram's buckets are and which unit it counts in.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Buckets {
    /// Upper bounds in the exposed unit (seconds, members), ascending.
    bounds: &'static [f64],
    /// Whole units per exposed unit (1e9 for seconds counted in nanoseconds).
    scale: u64,
}

impl Buckets {
    /// Durations, exposed in seconds, counted in nanoseconds.
    pub const fn seconds(bounds: &'static [f64]) -> Self {
        Buckets {
            bounds,
            scale: NANOS_PER_SECOND,
        }
    }

    /// Counts (members), exposed as they are.
    pub const fn count(bounds: &'static [f64]) -> Self {
        Buckets { bounds, scale: 1 }
    }
}

impl MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(*self)
    }
}

/// A histogram; clones share their counts.
#[derive(Debug, Clone)]
pub(crate) struct Histogram {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    buckets: Buckets,
    /// The bounds in whole units.
    limits: Box<[u64]>,
    /// Observations per bucket (not cumulative); the last one is `+Inf`.
    counts: Box<[AtomicU64]>,
    /// The sum of observations, in whole units.
    sum: AtomicU64,
}

impl Histogram {
    pub fn new(buckets: Buckets) -> Self {
        let limits = buckets
            .bounds
            .iter()
            // Bounds are small literals: the cast is exact for every one above.
            .map(|b| (b * buckets.scale as f64).round() as u64)
            .collect();
        let counts = (0..=buckets.bounds.len())
            .map(|_| AtomicU64::new(0))
            .collect();
        Histogram {
            inner: Arc::new(Inner {
                buckets,
                limits,
                counts,
                sum: AtomicU64::new(0),
            }),
        }
    }

    /// Observes `value` whole units.
    pub fn observe_units(&self, value: u64) {
        let inner = &*self.inner;
        let bucket = inner
            .limits
            .iter()
            .position(|&limit| value <= limit)
            .unwrap_or(inner.limits.len());
        if let Some(count) = inner.counts.get(bucket) {
            count.fetch_add(1, Ordering::Relaxed);
        }
        inner.sum.fetch_add(value, Ordering::Relaxed);
    }

    /// Observes a duration (a histogram made with [`Buckets::seconds`]).
    pub fn observe_duration(&self, elapsed: Duration) {
        self.observe_units(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX));
    }

    /// How many observations it holds.
    #[cfg(test)]
    pub fn count(&self) -> u64 {
        self.inner
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        let inner = &*self.inner;
        let counts: Vec<u64> = inner
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let buckets: Vec<(f64, u64)> = inner
            .buckets
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(counts.iter().copied())
            .collect();
        // The count is the buckets' total, so the two always agree in one scrape.
        let count = counts.iter().sum();
        let sum = inner.sum.load(Ordering::Relaxed) as f64 / inner.buckets.scale as f64;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;

    #[test]
    fn observations_land_in_their_bucket_and_encode_cumulatively() {
        let histogram = Histogram::new(Buckets::seconds(&[0.01, 0.1]));
        histogram.observe_duration(Duration::from_millis(5));
        histogram.observe_duration(Duration::from_millis(10));
        histogram.observe_duration(Duration::from_millis(50));
        histogram.observe_duration(Duration::from_secs(3));
        assert_eq!(histogram.count(), 4);
        let mut registry = Registry::default();
        registry.register("t_seconds", "test", histogram);
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).unwrap();
        for line in [
            "t_seconds_bucket{le=\"0.01\"} 2\n",
            "t_seconds_bucket{le=\"0.1\"} 3\n",
            "t_seconds_bucket{le=\"+Inf\"} 4\n",
            "t_seconds_sum 3.065\n",
            "t_seconds_count 4\n",
        ] {
            assert!(text.contains(line), "{line:?} in:\n{text}");
        }
    }

    #[test]
    fn counts_are_exposed_as_they_are() {
        let histogram = Histogram::new(Buckets::count(FANOUT_BOUNDS));
        histogram.observe_units(0);
        histogram.observe_units(7);
        let mut registry = Registry::default();
        registry.register("f", "test", histogram);
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).unwrap();
        assert!(text.contains("f_bucket{le=\"0\"} 1\n"), "{text}");
        assert!(text.contains("f_bucket{le=\"10\"} 2\n"), "{text}");
        assert!(text.contains("f_sum 7.0\n"), "{text}");
    }
}
