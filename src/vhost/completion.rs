//! Publishing finished requests to the guest: status byte, used element,
//! the inflight region's completion steps, and the notification. The
//! queue's worker and its lane's job threads (`pipeline`) all publish
//! through one [`Completer`], which keeps each step sequence whole.

use std::io;
use std::time::Instant;

use vhost_user_backend::VringT;
use virtio_bindings::virtio_blk::VIRTIO_BLK_S_OK;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress};

use super::inflight::QueueInflight;
use super::metrics::{ErrorKind, Op, QueueMetrics};
use super::state::{GuestRam, Shared, Vring};
use crate::sync::LockOrRecover;

/// How one chain ends: its status and the bytes it put in guest buffers;
/// for the metrics, its type (`None` if it did not parse) and the bytes it
/// asked to move.
pub(crate) struct Outcome {
    pub(crate) head: u16,
    pub(crate) status_addr: Option<GuestAddress>,
    pub(crate) status: u8,
    pub(crate) data_len: u32,
    pub(crate) op: Option<Op>,
    pub(crate) bytes: u64,
    /// When the worker took it off the ring (for the latency metrics).
    pub(crate) started: Instant,
}

/// One queue's publisher for the length of a drain.
pub(crate) struct Completer<'a> {
    shared: &'a Shared,
    vring: &'a Vring,
    mem: &'a GuestRam,
    queue: usize,
    /// The queue's inflight region (when the frontend tracks inflight
    /// I/O), taken from the queue's state for the drain: marking and the
    /// completion steps of one request never interleave with another's.
    inflight: std::sync::Mutex<Option<QueueInflight>>,
}

impl<'a> Completer<'a> {
    /// A publisher for queue `queue` on `vring`, tracking with `inflight`.
    pub(crate) fn new(
        shared: &'a Shared,
        vring: &'a Vring,
        mem: &'a GuestRam,
        queue: usize,
        inflight: Option<QueueInflight>,
    ) -> Self {
        Self {
            shared,
            vring,
            mem,
            queue,
            inflight: std::sync::Mutex::new(inflight),
        }
    }

    /// The inflight region, handed back to the queue's state.
    pub(crate) fn into_inflight(self) -> Option<QueueInflight> {
        self.inflight
            .into_inner()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Marks `heads` in flight, in fetch order.
    pub(crate) fn mark(&self, heads: impl IntoIterator<Item = u16>) {
        if let Some(inflight) = self.inflight.lock_or_recover().as_mut() {
            heads.into_iter().for_each(|head| inflight.mark(head));
        }
    }

    fn metrics(&self) -> Option<&QueueMetrics> {
        self.shared.metrics.queue(self.queue)
    }

    /// Writes each status byte and publishes each used element, one at a
    /// time, each bracketed by the inflight region's completion steps;
    /// then notifies the guest if it asked to be.
    pub(crate) fn publish(&self, outcomes: &[Outcome]) -> io::Result<()> {
        if outcomes.is_empty() {
            return Ok(());
        }
        let metrics = self.metrics();
        // Held across the whole publication: the inflight region's "last
        // batch" and used index follow the used ring one element at a time.
        let inflight = self.inflight.lock_or_recover();
        for outcome in outcomes {
            let used_len = self.write_status(outcome);
            if let Some(inflight) = inflight.as_ref() {
                inflight.completing(outcome.head);
            }
            let used_idx = {
                let mut state = self.vring.get_mut();
                let q = state.get_queue_mut();
                q.add_used(self.mem, outcome.head, used_len)
                    .map_err(io::Error::other)?;
                q.next_used()
            };
            if let Some(inflight) = inflight.as_ref() {
                inflight.completed(outcome.head, used_idx);
            }
            if let Some(metrics) = metrics {
                let error = match (outcome.op, outcome.status == VIRTIO_BLK_S_OK as u8) {
                    (_, true) => None,
                    (None, false) => Some(ErrorKind::Guest),
                    (Some(_), false) => Some(ErrorKind::Host),
                };
                metrics.completed(outcome.op, outcome.bytes, outcome.started.elapsed(), error);
            }
        }
        self.shared.hold.completed(outcomes.len() as u64);
        if self.vring.needs_notification().map_err(io::Error::other)? {
            self.vring.signal_used_queue()?;
        }
        Ok(())
    }

    /// Writes the status byte; returns the used length (bytes written to
    /// device-writable buffers, status included), 0 without a status byte.
    fn write_status(&self, outcome: &Outcome) -> u32 {
        let Some(status_addr) = outcome.status_addr else {
            return 0; // nowhere to write a status: the driver sees length 0
        };
        if self.mem.write_obj(outcome.status, status_addr).is_err() {
            self.shared
                .guest_errors
                .log("status byte outside guest memory");
            return 0;
        }
        let data_len = if outcome.status == VIRTIO_BLK_S_OK as u8 {
            outcome.data_len
        } else {
            0
        };
        data_len.saturating_add(1)
    }
}
