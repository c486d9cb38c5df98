//! What the device counts while it serves, per queue: requests and bytes by
//! type, errors by kind, latency histograms and the requests in flight.
//!
//! Plain atomics, updated with relaxed ordering by the queue's worker (one
//! thread per queue: no contention), read whenever someone scrapes them
//! (`lsvblk serve --metrics`). A request's latency runs from the moment the
//! worker takes it off the ring to the moment its completion is published.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Request types the device counts separately.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `VIRTIO_BLK_T_IN`.
    Read,
    /// `VIRTIO_BLK_T_OUT`.
    Write,
    /// `VIRTIO_BLK_T_FLUSH`.
    Flush,
    /// `VIRTIO_BLK_T_DISCARD`.
    Discard,
    /// `VIRTIO_BLK_T_WRITE_ZEROES`.
    WriteZeroes,
    /// `VIRTIO_BLK_T_GET_ID`.
    GetId,
}

impl Op {
    /// Every type, in the order of their counters.
    pub const ALL: [Op; 6] = [
        Op::Read,
        Op::Write,
        Op::Flush,
        Op::Discard,
        Op::WriteZeroes,
        Op::GetId,
    ];

    /// The label value (`op="read"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
            Op::Flush => "flush",
            Op::Discard => "discard",
            Op::WriteZeroes => "write_zeroes",
            Op::GetId => "get_id",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Why a request did not succeed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The guest's fault: a malformed chain, out of range, a write to a
    /// read-only device, an unsupported type (status IOERR or UNSUPP).
    Guest,
    /// The host's fault: the volume failed the request (I/O error, a block
    /// whose checksum failed, ...; status IOERR).
    Host,
}

impl ErrorKind {
    /// Every kind, in the order of their counters.
    pub const ALL: [ErrorKind; 2] = [ErrorKind::Guest, ErrorKind::Host];

    /// The label value (`kind="guest"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Guest => "guest",
            ErrorKind::Host => "host",
        }
    }
}

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
    count: AtomicU64,
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
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// The histogram now.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut total = 0;
        let mut buckets = Vec::with_capacity(self.buckets.len());
        for (slot, count) in self.buckets.iter().enumerate() {
            let count = count.load(Ordering::Relaxed);
            total += count;
            let bound = LATENCY_BUCKETS_SECONDS
                .get(slot)
                .copied()
                .unwrap_or(f64::INFINITY);
            buckets.push((bound, count));
        }
        HistogramSnapshot {
            sum_seconds: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            // The buckets' total, not `count`: read at another instant, it
            // could disagree with them by a request in progress.
            count: total,
            buckets,
        }
    }
}

/// One request type's counters on one queue.
#[derive(Default)]
pub struct OpMetrics {
    /// Requests completed.
    pub requests: AtomicU64,
    /// Bytes moved by completed requests (read or written; for discard and
    /// write-zeroes, the bytes of the ranges).
    pub bytes: AtomicU64,
    /// Latency of completed requests.
    pub latency: LatencyHistogram,
}

/// One queue's counters.
#[derive(Default)]
pub struct QueueMetrics {
    ops: [OpMetrics; Op::ALL.len()],
    errors: [AtomicU64; ErrorKind::ALL.len()],
    invalid: AtomicU64,
    in_flight: AtomicU64,
}

impl QueueMetrics {
    /// The counters of `op`.
    pub fn op(&self, op: Op) -> &OpMetrics {
        &self.ops[op.index()]
    }

    /// Requests that failed for `kind`.
    pub fn errors(&self, kind: ErrorKind) -> u64 {
        self.errors[kind as usize].load(Ordering::Relaxed)
    }

    /// Requests taken off the ring and not completed yet.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Requests so malformed that their type is unknown.
    pub fn invalid(&self) -> u64 {
        self.invalid.load(Ordering::Relaxed)
    }

    pub(crate) fn started(&self, requests: usize) {
        self.in_flight.fetch_add(requests as u64, Ordering::Relaxed);
    }

    /// Counts a completed request: `op` if it parsed, its bytes, its
    /// latency, and its error kind if it failed.
    pub(crate) fn completed(
        &self,
        op: Option<Op>,
        bytes: u64,
        latency: Duration,
        error: Option<ErrorKind>,
    ) {
        match op {
            Some(op) => {
                let counters = &self.ops[op.index()];
                counters.requests.fetch_add(1, Ordering::Relaxed);
                if error.is_none() {
                    counters.bytes.fetch_add(bytes, Ordering::Relaxed);
                }
                counters.latency.observe(latency);
            }
            None => {
                self.invalid.fetch_add(1, Ordering::Relaxed);
            }
        }
        if let Some(kind) = error {
            self.errors[kind as usize].fetch_add(1, Ordering::Relaxed);
        }
        // Saturating: a request started before the counters were reset by
        // a reconnect never takes the gauge below zero.
        let _ = self
            .in_flight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_sub(1))
            });
    }
}

/// The counters of a device, one [`QueueMetrics`] per queue. They live as
/// long as the daemon (across the frontend's reconnects).
pub struct DeviceMetrics {
    queues: Vec<QueueMetrics>,
}

impl DeviceMetrics {
    /// Counters for `num_queues` queues, all zero.
    pub fn new(num_queues: u16) -> Self {
        DeviceMetrics {
            queues: (0..num_queues).map(|_| QueueMetrics::default()).collect(),
        }
    }

    /// Queue `index`'s counters (`None` past the last queue).
    pub fn queue(&self, index: usize) -> Option<&QueueMetrics> {
        self.queues.get(index)
    }

    /// Every queue's counters, by index.
    pub fn queues(&self) -> &[QueueMetrics] {
        &self.queues
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_count_their_own_range_and_end_at_inf() {
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

    #[test]
    fn a_completion_counts_its_op_bytes_error_and_leaves_flight() {
        let queue = QueueMetrics::default();
        queue.started(3);
        assert_eq!(queue.in_flight(), 3);
        let ms = Duration::from_millis(1);
        queue.completed(Some(Op::Write), 4096, ms, None);
        queue.completed(Some(Op::Read), 512, ms, Some(ErrorKind::Host));
        queue.completed(None, 0, ms, Some(ErrorKind::Guest));
        assert_eq!(queue.in_flight(), 0);
        assert_eq!(queue.op(Op::Write).bytes.load(Ordering::Relaxed), 4096);
        assert_eq!(queue.op(Op::Write).requests.load(Ordering::Relaxed), 1);
        // A failed read moved nothing.
        assert_eq!(queue.op(Op::Read).bytes.load(Ordering::Relaxed), 0);
        assert_eq!(queue.op(Op::Read).requests.load(Ordering::Relaxed), 1);
        assert_eq!(queue.errors(ErrorKind::Host), 1);
        assert_eq!(queue.errors(ErrorKind::Guest), 1);
        assert_eq!(queue.invalid(), 1);
        queue.completed(None, 0, ms, None);
        assert_eq!(queue.in_flight(), 0, "never below zero");
    }
}
