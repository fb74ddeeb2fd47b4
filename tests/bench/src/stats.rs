//! Latency percentiles from raw samples (microseconds). Runs keep every sample: a full
//! echo run is a few hundred thousand `u32`s, so there is no need for a histogram.

use serde::{Deserialize, Serialize};

/// Percentiles of a set of samples, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Number of samples.
    pub count: usize,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest.
    pub max_ms: f64,
    /// Mean.
    pub mean_ms: f64,
}

impl Percentiles {
    /// The percentiles of `samples_us` (sorted in place). All zero when empty.
    pub fn of(samples_us: &mut [u64]) -> Self {
        if samples_us.is_empty() {
            return Percentiles::default();
        }
        samples_us.sort_unstable();
        let ms = |us: u64| us as f64 / 1000.0;
        let sum: u128 = samples_us.iter().map(|&s| u128::from(s)).sum();
        Percentiles {
            count: samples_us.len(),
            p50_ms: ms(rank(samples_us, 50.0)),
            p99_ms: ms(rank(samples_us, 99.0)),
            p999_ms: ms(rank(samples_us, 99.9)),
            max_ms: ms(samples_us[samples_us.len() - 1]),
            mean_ms: sum as f64 / samples_us.len() as f64 / 1000.0,
        }
    }
}

/// The nearest-rank percentile `p` of sorted, non-empty `sorted`.
fn rank(sorted: &[u64], p: f64) -> u64 {
    let n = sorted.len();
    // In integer per-mille: 0.999 * 1000 is 999.0000000000001 in floating point.
    let permille = (p * 10.0).round() as usize;
    let idx = (permille * n).div_ceil(1000);
    sorted[idx.clamp(1, n) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let mut v: Vec<u64> = (1..=1000).rev().map(|x| x * 1000).collect();
        let p = Percentiles::of(&mut v);
        assert_eq!(p.count, 1000);
        assert_eq!(p.p50_ms, 500.0);
        assert_eq!(p.p99_ms, 990.0);
        assert_eq!(p.p999_ms, 999.0);
        assert_eq!(p.max_ms, 1000.0);
        assert_eq!(p.mean_ms, 500.5);
        let mut one = vec![2500];
        assert_eq!(Percentiles::of(&mut one).p999_ms, 2.5);
        assert_eq!(Percentiles::of(&mut []).count, 0);
    }
}
