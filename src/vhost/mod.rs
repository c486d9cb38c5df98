//! The vhost-user-blk device: it serves a [`Volume`](crate::volume::Volume)
//! to a VMM (QEMU, cloud-hypervisor, libblkio, ...) over a UNIX socket.
//!
//! `request` parses descriptor chains (guest input: typed errors, no panics),
//! `chain` walks a chain from its head (for resubmitted requests), `worker`
//! drains a queue against the volume (`batch` its batches of reads and
//! writes, `pipeline` several of them in flight at once, `completion`
//! publishing what finished), `state` is what a connection's backend
//! and workers share, `backend` is the `VhostUserBackend` (features, config
//! space, one thread per queue), `inflight` the inflight I/O tracking area
//! that lets a restarted daemon finish what its predecessor left in flight,
//! `hold` a test-only hook, `metrics` what the device
//! counts (requests, bytes, errors, latency, in flight, per queue), `poll`
//! the short spin on a queue after a drain (`--poll-us`), `server` accepts
//! connections one after another and stops on a signal.

mod backend;
mod batch;
mod chain;
mod completion;
pub mod config;
mod hold;
pub mod inflight;
pub mod metrics;
pub mod peer_check;
mod pipeline;
mod poll;
pub mod request;
mod server;
pub mod socket_access;
mod state;
mod worker;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

pub use backend::BlockBackend;
pub use hold::HOLD_VARIABLE;
pub use poll::{POLL_US_DEFAULT, POLL_US_MAX};
pub use server::{ServeError, Server, StopHandle};
pub use state::{GuestMemory, GuestRam};

use crate::limits::{QUEUE_SIZE_MAX, QUEUES_MAX};

/// How the device presents itself to the guest.
#[derive(Clone, Debug)]
pub struct DeviceOptions {
    /// Virtqueues (one worker thread each).
    pub num_queues: u16,
    /// Largest virtqueue size accepted.
    pub queue_size: u16,
    /// Refuse writes and offer VIRTIO_BLK_F_RO.
    pub read_only: bool,
    /// Device id returned by GET_ID (zero-padded to 20 bytes).
    pub serial: [u8; request::SERIAL_BYTES],
    /// Logical block size offered to the guest (512 or 4096).
    pub logical_block_bytes: u32,
    /// Microseconds a queue's worker polls the queue for the next request
    /// after draining it, before it sleeps until a kick (0: no polling).
    pub poll_us: u32,
}

impl DeviceOptions {
    /// Checks the options against the device's limits.
    pub fn validate(&self) -> Result<(), String> {
        if self.num_queues == 0 || usize::from(self.num_queues) > QUEUES_MAX {
            return Err(format!(
                "--num-queues {} must be 1..={QUEUES_MAX}",
                self.num_queues
            ));
        }
        if !self.queue_size.is_power_of_two() || self.queue_size > QUEUE_SIZE_MAX {
            return Err(format!(
                "--queue-size {} must be a power of two up to {QUEUE_SIZE_MAX}",
                self.queue_size
            ));
        }
        if self.poll_us > POLL_US_MAX {
            return Err(format!(
                "--poll-us {} must be at most {POLL_US_MAX}",
                self.poll_us
            ));
        }
        if !matches!(self.logical_block_bytes, 512 | 4096) {
            return Err(format!(
                "--block-size {} must be 512 or 4096",
                self.logical_block_bytes
            ));
        }
        Ok(())
    }

    /// The serial as GET_ID returns it: `text` truncated to 20 bytes, padded
    /// with zeros.
    pub fn serial_from(text: &str) -> [u8; request::SERIAL_BYTES] {
        let mut serial = [0u8; request::SERIAL_BYTES];
        let bytes = text.as_bytes();
        let len = bytes.len().min(serial.len());
        serial[..len].copy_from_slice(&bytes[..len]);
        serial
    }
}

/// A warning that is logged at most once a second, with a count of the
/// repeats it swallowed: a misbehaving guest must not flood the log.
pub(crate) struct RateLimitedLog {
    what: &'static str,
    next_log_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl RateLimitedLog {
    pub(crate) fn new(what: &'static str) -> Self {
        Self {
            what,
            next_log_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    pub(crate) fn log(&self, message: &str) {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let next = self.next_log_ms.load(Ordering::Relaxed);
        if now_ms >= next
            && self
                .next_log_ms
                .compare_exchange(next, now_ms + 1000, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let suppressed = self.suppressed.swap(0, Ordering::Relaxed);
            tracing::warn!(suppressed, "{}: {message}", self.what);
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
        }
    }
}
