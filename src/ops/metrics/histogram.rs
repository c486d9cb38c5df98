//! A latency histogram of atomics, cheap enough for a hot path (one
//! relaxed add per bucket, sum and count) and read whole at scrape time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds: 10 µs to 2.5 s.
pub const LATENCY_BUCKETS_SECONDS: [f64; 16] = [
    10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3,
    250e-3, 1.0, 2.5,
];

/// A latency histogram of atomics: a count per bucket (not cumulative; the
/// last slot counts what is above every bound), a sum and a count.
#[derive(Default)]
pub struct LatencyHistogram {
    buckets: [AtomicU64; LATENCY_BUCKETS_SECONDS.len() + 1],
    sum_nanos: AtomicU64,
}

/// A histogram as read at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HistogramSnapshot {
    /// Sum of the observations, seconds.
    pub sum_seconds: f64,
    /// Number of observations.
    pub count: u64,
    /// Count per bucket by upper bound, not cumulative (what
    /// `prometheus-client`'s encoder takes), the last one `+Inf`.
    pub buckets: Vec<(f64, u64)>,
}

impl LatencyHistogram {
    /// Counts one observation.
    pub fn observe(&self, latency: Duration) {
        let seconds = latency.as_secs_f64();
        let slot = LATENCY_BUCKETS_SECONDS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(LATENCY_BUCKETS_SECONDS.len());
        self.buckets[slot].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// The histogram now. Its count is the buckets' total, so the two
    /// always agree, whatever is observed while it is read.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut count = 0;
        let mut buckets = Vec::with_capacity(self.buckets.len());
        for (slot, bucket) in self.buckets.iter().enumerate() {
            let bucket = bucket.load(Ordering::Relaxed);
            count += bucket;
            let bound = LATENCY_BUCKETS_SECONDS
                .get(slot)
                .copied()
                .unwrap_or(f64::INFINITY);
            buckets.push((bound, bucket));
        }
        HistogramSnapshot {
            sum_seconds: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            count,
            buckets,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_count_their_own_range_and_end_at_inf() {
        let histogram = LatencyHistogram::default();
        histogram.observe(Duration::from_micros(5)); // first bucket
        histogram.observe(Duration::from_micros(10)); // on the bound: first
        histogram.observe(Duration::from_micros(11)); // second
        histogram.observe(Duration::from_secs(3)); // above every bound
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.count, 4);
        assert_eq!(snapshot.buckets[0], (10e-6, 2));
        assert_eq!(snapshot.buckets[1], (25e-6, 1));
        assert_eq!(snapshot.buckets[15], (2.5, 0));
        assert_eq!(snapshot.buckets[16], (f64::INFINITY, 1));
        assert!((snapshot.sum_seconds - 3.000_026).abs() < 1e-9);
    }
}
