//! What the device counts while it serves, per queue: requests and bytes by
//! type, errors by kind, latency histograms and the requests in flight.
//!
//! Plain atomics, updated with relaxed ordering by the queue's worker (one
//! thread per queue: no contention), read whenever someone scrapes them
//! (`lsvblk serve --metrics`). A request's latency runs from the moment the
//! worker takes it off the ring to the moment its completion is published.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::ops::metrics::histogram::LatencyHistogram;

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
